//! Validation steps (WORKER-4300-4305): tables of bad requests that must each
//! be refused with INVALID_PARAMS naming the field, and a burst of malformed
//! requests after which nothing may have changed.

use crate::steps::http::{assert_error_body, send, Auth};
use crate::steps::sse::exec_body;
use crate::steps::world::World;
use cucumber::gherkin::Step;
use cucumber::{then, when};
use serde_json::{json, Value};

/// The rows of the step's table, its header left out.
pub fn rows(w: &World, step: &Step) -> Vec<Vec<String>> {
    match step.table.as_ref() {
        Some(t) => t.rows.iter().skip(1).cloned().collect(),
        None => w.fail("this step needs a table"),
    }
}

fn check_refusal(w: &World, r: &crate::steps::world::Response, field: &str, what: &str) {
    w.check(
        r.status == 400,
        format!("{what}: expected HTTP 400, got {}: {}", r.status, r.text),
    );
    assert_error_body(w, r, "INVALID_PARAMS");
    let msg = crate::steps::http::error_message(r);
    w.check(
        msg.contains(field),
        format!("{what}: the message {msg:?} does not name {field:?}"),
    );
}

#[then("each of these execute params is refused with INVALID_PARAMS naming the field:")]
async fn bad_params(w: &mut World, step: &Step) {
    let handle = w.handle_id().await;
    for row in rows(w, step) {
        let params: Value = serde_json::from_str(&row[0])
            .unwrap_or_else(|e| w.fail(format!("bad JSON in the table: {e}")));
        let r = send(
            w,
            "POST",
            "/worker/execute",
            Some(exec_body(&handle, "Hello", params)),
            Auth::Token,
        )
        .await;
        check_refusal(w, &r, &row[1], &row[0]);
    }
}

#[then(
    regex = r#"^each of these commit shard ids is refused with INVALID_PARAMS naming "([a-z_]+)":$"#
)]
async fn bad_ids(w: &mut World, field: String, step: &Step) {
    let model = w.model_name.clone();
    for row in rows(w, step) {
        let body = json!({"model_ref": model, "shard_id": row[0], "shard_index": 0});
        let r = crate::steps::http::post_commit(w, body).await;
        check_refusal(w, &r, &field, &row[0]);
    }
}

/// Bodies that no endpoint may accept.
fn malformed(handle: &str) -> Vec<(&'static str, String)> {
    let long = "x".repeat(300);
    vec![
        ("/worker/plan", "not json".into()),
        ("/worker/plan", "{}".into()),
        (
            "/worker/plan",
            json!({"model_ref": 1, "shard_layout": "single"}).to_string(),
        ),
        (
            "/worker/plan",
            json!({"model_ref": "../../etc/passwd", "shard_layout": "single"}).to_string(),
        ),
        (
            "/worker/plan",
            json!({"model_ref": long, "shard_layout": "single"}).to_string(),
        ),
        ("/worker/commit", "[1,2,3]".into()),
        (
            "/worker/commit",
            json!({"model_ref": "tiny.gguf"}).to_string(),
        ),
        (
            "/worker/commit",
            json!({"model_ref": "tiny.gguf", "shard_id": "a b", "shard_index": 0}).to_string(),
        ),
        (
            "/worker/commit",
            json!({"model_ref": "tiny.gguf", "shard_id": "s", "shard_index": -1}).to_string(),
        ),
        ("/worker/execute", "{".into()),
        ("/worker/execute", json!({"handle_id": handle}).to_string()),
        (
            "/worker/execute",
            exec_body(handle, "Hel\u{0}lo", json!({"max_tokens": 2})),
        ),
        (
            "/worker/execute",
            exec_body(handle, "Hello", json!({"max_tokens": 0})),
        ),
        (
            "/worker/execute",
            exec_body(handle, "Hello", json!({"max_tokens": 2, "temperature": 9})),
        ),
        (
            "/worker/execute",
            exec_body(handle, "Hello", json!({"max_tokens": 2, "top_p": 0})),
        ),
        (
            "/worker/execute",
            exec_body(handle, "Hello", json!({"max_tokens": 2, "mystery": true})),
        ),
        (
            "/worker/execute",
            exec_body("no such/handle", "Hello", json!({"max_tokens": 2})),
        ),
        ("/worker/cancel", "null".into()),
        ("/worker/cancel", json!({"job_id": 5}).to_string()),
        ("/worker/cancel", json!({"job_id": "bad id!"}).to_string()),
    ]
}

#[when(regex = r"^I send (\d+) malformed requests to every endpoint$")]
async fn burst(w: &mut World, n: usize) {
    let before = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    w.prev_json = before.json.clone();
    let handle = w.handle_id().await;
    let bodies = malformed(&handle);
    for path in [
        "/worker/plan",
        "/worker/commit",
        "/worker/execute",
        "/worker/cancel",
    ] {
        let mine: Vec<&String> = bodies
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, b)| b)
            .collect();
        // n requests per endpoint, cycling through its malformed bodies.
        for body in mine.iter().cycle().take(n) {
            let r = send(w, "POST", path, Some((*body).clone()), Auth::Token).await;
            w.check(
                (400..500).contains(&r.status),
                format!("POST {path} {body:?} answered {}: {}", r.status, r.text),
            );
        }
    }
}

#[then(regex = r#"^the response JSON of "([^"]+)" at "([^"]+)" is unchanged$"#)]
async fn unchanged_after(w: &mut World, path: String, ptr: String) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("nothing was recorded before")
    };
    let r = send(w, "GET", &path, None, Auth::Token).await;
    let now = r.json.clone().unwrap_or(Value::Null);
    let (a, b) = (before.pointer(&ptr).cloned(), now.pointer(&ptr).cloned());
    w.check(
        a.is_some() && a == b,
        format!("{path} {ptr} changed: {a:?} then {b:?}"),
    );
}

/// The control token the context scenarios build prompts from: the tokenizer
/// parses it as exactly one token wherever it appears, so a prompt of `n`
/// copies is `n` tokens, known without asking the worker.
const ONE_TOKEN: &str = "<|im_start|>";

/// A prompt of exactly `n` tokens for the served model, checked against the
/// model file: [`ONE_TOKEN`] must be in its vocabulary as a control token.
fn prompt_of_tokens(w: &World, n: usize) -> String {
    let path = w.model_root().join(&w.model_name);
    let (_, ty) = crate::steps::gguf_meta::token(&path, ONE_TOKEN).unwrap_or_else(|e| w.fail(e));
    w.check(
        ty == 3,
        format!("{ONE_TOKEN} has token type {ty} in the model, expected 3 (control)"),
    );
    ONE_TOKEN.repeat(n)
}

#[when(regex = r"^I execute a prompt of exactly (\d+) tokens with max_tokens (\d+)$")]
async fn exec_n_tokens(w: &mut World, n: usize, max: u64) {
    let prompt = prompt_of_tokens(w, n);
    crate::steps::sse::execute(w, &prompt, crate::steps::sse::greedy(max)).await;
}

fn configured_context(w: &World) -> u64 {
    match w.config.get("max_context").and_then(Value::as_u64) {
        Some(c) => c,
        None => w.fail("this step needs max_context set in the configuration"),
    }
}

/// WORKER-4422/4413: generation runs up to the last position of the
/// configured context and stops there: prompt tokens + generated tokens ==
/// max_context, finish_reason "length", and the worker's own count of the
/// prompt agrees with the harness's.
#[then(
    regex = r"^the (\d+) prompt tokens and the generated tokens fill the configured max_context exactly$"
)]
fn fills_context(w: &mut World, n_prompt: u64) {
    let ctx = configured_context(w);
    let s = w.stream().clone();
    w.check(
        s.status == 200,
        format!(
            "the execute call answered HTTP {}: {}",
            s.status,
            w.last().text
        ),
    );
    let n_out = s.tokens().len() as u64;
    let ev = |name: &str| s.events.iter().find(|e| e.name == name).map(|e| e.json());
    let end = ev("end").unwrap_or_else(|| {
        w.fail(format!(
            "the stream has no end event: {:?}",
            s.terminal().map(|(_, e)| e.data.clone())
        ))
    });
    w.check(
        n_prompt + n_out == ctx,
        format!(
            "{n_prompt} prompt tokens + {n_out} generated = {}, expected the configured max_context {ctx}",
            n_prompt + n_out
        ),
    );
    w.check(
        end["finish_reason"] == "length",
        format!(
            "finish_reason is {}, expected \"length\"",
            end["finish_reason"]
        ),
    );
    w.check(
        end["tokens_out"].as_u64() == Some(n_out),
        format!(
            "tokens_out is {}, but {n_out} token events arrived",
            end["tokens_out"]
        ),
    );
    let tokens_in = ev("metrics").map(|m| m["tokens_in"].clone());
    w.check(
        tokens_in.as_ref().and_then(Value::as_u64) == Some(n_prompt),
        format!("the worker counted {tokens_in:?} prompt tokens, the harness {n_prompt}"),
    );
}

/// A prompt that leaves no room for one generated token is refused before
/// any work: HTTP 400, INVALID_PARAMS, naming the context limit.
#[then(
    regex = r"^a prompt of exactly (\d+) tokens is refused with INVALID_PARAMS naming max_context$"
)]
async fn too_long_refused(w: &mut World, n: usize) {
    let prompt = prompt_of_tokens(w, n);
    let handle = w.handle_id().await;
    let r = send(
        w,
        "POST",
        "/worker/execute",
        Some(exec_body(&handle, &prompt, crate::steps::sse::greedy(4))),
        Auth::Token,
    )
    .await;
    check_refusal(w, &r, "max_context", &format!("a prompt of {n} tokens"));
}
