//! Validation steps (WORKER-4300-4305): tables of bad requests that must each
//! be refused with INVALID_PARAMS naming the field, and a burst of malformed
//! requests after which nothing may have changed.

use crate::steps::http::{assert_error_body, send, Auth};
use crate::steps::sse::exec_body;
use crate::steps::world::World;
use cucumber::gherkin::Step;
use cucumber::{then, when};
use serde_json::{json, Value};

fn rows(w: &World, step: &Step) -> Vec<Vec<String>> {
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
    let msg = r
        .json
        .as_ref()
        .and_then(|j| j["message"].as_str())
        .unwrap_or_default();
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
        let r = send(
            w,
            "POST",
            "/worker/commit",
            Some(body.to_string()),
            Auth::Token,
        )
        .await;
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
