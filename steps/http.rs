//! HTTP steps: plain requests to the worker and assertions on their JSON
//! (WORKER-4200-4233, 4300-4303, 4950-4951). Bodies in feature files may use
//! `{placeholders}` (see `World::expand`).

use crate::steps::world::{Response, World};
use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Token,
    Second,
    Wrong,
}

impl Auth {
    fn parse(s: &str) -> Self {
        match s.trim() {
            "" => Auth::Token,
            "without a token" => Auth::None,
            "with the second token" => Auth::Second,
            "with a wrong token" => Auth::Wrong,
            other => panic!("unknown auth phrase {other:?}"),
        }
    }
}

pub async fn send_full(
    w: &mut World,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    auth: Auth,
    headers: &[(&str, &str)],
) -> Response {
    send_with(
        w,
        method,
        path,
        body.map(reqwest::Body::from),
        auth,
        headers,
    )
    .await
}

/// As [`send_full`] with any body (a stream is sent chunked, without a
/// Content-Length). The body is sent as JSON unless `headers` name a content
/// type; an empty one sends the body without a Content-Type.
pub async fn send_with(
    w: &mut World,
    method: &str,
    path: &str,
    body: Option<reqwest::Body>,
    auth: Auth,
    headers: &[(&str, &str)],
) -> Response {
    let url = format!("{}{}", w.base_url(), path);
    let mut req = match method {
        "GET" => w.http.get(&url),
        "POST" => w.http.post(&url),
        other => panic!("unsupported method {other}"),
    };
    let bearer = match auth {
        Auth::None => None,
        Auth::Token => Some(w.token.clone()),
        Auth::Second => Some(
            w.token2
                .clone()
                .unwrap_or_else(|| w.fail("no second token was configured")),
        ),
        Auth::Wrong => Some("wrong-token-0123456789abcdef".to_string()),
    };
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        // An empty Content-Type means: send the body without one.
        if !(k.eq_ignore_ascii_case("content-type") && v.is_empty()) {
            req = req.header(*k, *v);
        }
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => w.fail(format!("{method} {path} failed to get an answer: {e}")),
    };
    let status = resp.status().as_u16();
    let mut hdrs = BTreeMap::new();
    for (k, v) in resp.headers() {
        hdrs.insert(
            k.as_str().to_ascii_lowercase(),
            v.to_str().unwrap_or_default().to_string(),
        );
    }
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).ok();
    w.bodies.push(text.clone());
    let r = Response {
        status,
        headers: hdrs,
        text,
        json,
    };
    w.last = Some(r.clone());
    r
}

pub async fn send(
    w: &mut World,
    method: &str,
    path: &str,
    body: Option<String>,
    auth: Auth,
) -> Response {
    send_full(w, method, path, body.map(String::into_bytes), auth, &[]).await
}

fn docstring(w: &World, step: &Step) -> String {
    match &step.docstring {
        Some(d) => d.trim().to_string(),
        None => w.fail("this step needs a docstring body"),
    }
}

#[when(
    regex = r#"^I GET "([^"]+)"\s*(without a token|with a wrong token|with the second token)?$"#
)]
#[then(
    regex = r#"^I GET "([^"]+)"\s*(without a token|with a wrong token|with the second token)?$"#
)]
async fn get(w: &mut World, path: String, auth: String) {
    send(w, "GET", &path, None, Auth::parse(&auth)).await;
}

#[when(regex = r#"^I GET "([^"]+)" with correlation id "([^"]+)"$"#)]
async fn get_corr(w: &mut World, path: String, corr: String) {
    send_full(
        w,
        "GET",
        &path,
        None,
        Auth::Token,
        &[("X-Correlation-Id", corr.as_str())],
    )
    .await;
}

#[when(
    regex = r#"^I POST to "([^"]+)"\s*(without a token|with a wrong token|with the second token)? with body:$"#
)]
#[then(
    regex = r#"^I POST to "([^"]+)"\s*(without a token|with a wrong token|with the second token)? with body:$"#
)]
async fn post(w: &mut World, path: String, auth: String, step: &Step) {
    let body = docstring(w, step);
    let body = w.expand(&body).await;
    send(w, "POST", &path, Some(body), Auth::parse(&auth)).await;
}

#[when(
    regex = r#"^I POST to "([^"]+)" (?:with content type "([^"]*)"|without a content type) and body:$"#
)]
async fn post_typed(w: &mut World, path: String, content_type: String, step: &Step) {
    let body = docstring(w, step);
    let body = w.expand(&body).await.into_bytes();
    let headers = [("content-type", content_type.as_str())];
    send_full(w, "POST", &path, Some(body), Auth::Token, &headers).await;
}

#[when(regex = r#"^I POST to "([^"]+)" a body of (\d+) bytes$"#)]
async fn post_big(w: &mut World, path: String, n: usize) {
    // Valid JSON all the way, so only the size can be the reason for refusal.
    let filler = "a".repeat(n.saturating_sub(64));
    let body = json!({"handle_id": "x", "prompt": filler, "params": {"max_tokens": 1}}).to_string();
    send(w, "POST", &path, Some(body), Auth::Token).await;
}

#[when(regex = r#"^I POST to "([^"]+)" a body with invalid UTF-8 in the prompt$"#)]
async fn post_bad_utf8(w: &mut World, path: String) {
    let handle = w.handle_id().await;
    let mut body = format!(r#"{{"handle_id": "{handle}", "prompt": "Hel"#).into_bytes();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"lo", "params": {"max_tokens": 2}}"#);
    send_full(w, "POST", &path, Some(body), Auth::Token, &[]).await;
}

#[when("I plan the tiny test model")]
#[then("I plan the tiny test model")]
async fn plan_tiny(w: &mut World) {
    let body = json!({"model_ref": w.model_name, "shard_layout": "single"}).to_string();
    send(w, "POST", "/worker/plan", Some(body), Auth::Token).await;
}

#[when("I plan that model")]
#[then("I plan that model")]
async fn plan_that(w: &mut World) {
    let Some(m) = w.that_model.clone() else {
        w.fail("no earlier step named a model")
    };
    if let Some(r) = &w.last {
        w.prev_json = r.json.clone();
    }
    let body = json!({"model_ref": m, "shard_layout": "single"}).to_string();
    send(w, "POST", "/worker/plan", Some(body), Auth::Token).await;
}

#[when(regex = r#"^I commit the (tiny test|second tiny) model as shard "([^"]+)"$"#)]
async fn commit_named(w: &mut World, which: String, shard: String) {
    let m = if which == "tiny test" {
        w.model_name.clone()
    } else {
        w.that_model
            .clone()
            .unwrap_or_else(|| w.fail("no second model was placed"))
    };
    post_commit(
        w,
        json!({"model_ref": m, "shard_id": shard, "shard_index": 0}),
    )
    .await;
}

#[when(regex = r#"^I commit that model as shard "([^"]+)"$"#)]
async fn commit_that(w: &mut World, shard: String) {
    let Some(m) = w.that_model.clone() else {
        w.fail("no earlier step named a model")
    };
    post_commit(
        w,
        json!({"model_ref": m, "shard_id": shard, "shard_index": 0}),
    )
    .await;
}

#[then(regex = r"^the response status is (\d+)$")]
fn status_is(w: &mut World, code: u16) {
    let r = w.last();
    w.check(
        r.status == code,
        format!("expected HTTP {code}, got {}: {}", r.status, r.text),
    );
}

/// POST /worker/commit with the token: the request of every commit step.
pub async fn post_commit(w: &mut World, body: Value) -> Response {
    send(
        w,
        "POST",
        "/worker/commit",
        Some(body.to_string()),
        Auth::Token,
    )
    .await
}

/// The `message` of an error body ("" when there is none).
pub fn error_message(r: &Response) -> &str {
    r.json
        .as_ref()
        .and_then(|j| j["message"].as_str())
        .unwrap_or_default()
}

pub fn assert_error_body(w: &World, r: &Response, code: &str) {
    let Some(j) = &r.json else {
        w.fail(format!(
            "expected an error body with code {code}, got HTTP {}: {}",
            r.status, r.text
        ))
    };
    for k in ["code", "message", "retriable", "retry_after_ms"] {
        w.check(
            j.get(k).is_some(),
            format!("the error body lacks {k:?}: {j}"),
        );
    }
    w.check(
        j["code"] == code,
        format!(
            "expected error code {code}, got {} (HTTP {})",
            j["code"], r.status
        ),
    );
    w.check(
        !(200..300).contains(&r.status),
        format!("an error body came with success status {}", r.status),
    );
    w.check(
        j["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
        "the error message is empty",
    );
    w.check(j["retriable"].is_boolean(), "retriable is not a boolean");
}

#[then(regex = r#"^the error code is "([A-Z_]+)"$"#)]
fn error_code(w: &mut World, code: String) {
    let r = w.last().clone();
    assert_error_body(w, &r, &code);
}

#[then(regex = r#"^the error message mentions "([^"]+)"$"#)]
fn error_mentions(w: &mut World, text: String) {
    let m = w
        .last_json()
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    w.check(
        m.to_lowercase().contains(&text.to_lowercase()),
        format!("the error message {m:?} does not mention {text:?}"),
    );
}

#[then("the error message mentions the model root")]
fn error_mentions_root(w: &mut World) {
    let m = w
        .last_json()
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let root = w
        .model_root()
        .canonicalize()
        .unwrap_or_else(|_| w.model_root());
    let named = m.contains(&root.display().to_string())
        || m.contains(&w.model_root().display().to_string());
    w.check(
        named,
        format!(
            "the error message {m:?} does not name the model root {}",
            root.display()
        ),
    );
}

pub fn pointer<'a>(w: &World, j: &'a Value, ptr: &str) -> &'a Value {
    match j.pointer(ptr) {
        Some(v) => v,
        None => w.fail(format!("the JSON has nothing at {ptr}: {j}")),
    }
}

#[then(regex = r#"^the response JSON at "([^"]*)" is (true|false|null|-?\d+(?:\.\d+)?|"[^"]*")$"#)]
fn json_is(w: &mut World, ptr: String, lit: String) {
    let want: Value = serde_json::from_str(&lit).expect("literal JSON");
    let got = pointer(w, w.last_json(), &ptr).clone();
    let equal = match (got.as_f64(), want.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => got == want,
    };
    w.check(equal, format!("at {ptr}: expected {want}, got {got}"));
}

#[then(
    regex = r#"^the response JSON at "([^"]*)" is (a non-empty string|a positive integer|a non-empty array|a SHA-256 in hex)$"#
)]
fn json_kind(w: &mut World, ptr: String, kind: String) {
    let v = pointer(w, w.last_json(), &ptr).clone();
    check_kind(w, &v, &kind, &ptr);
}

pub fn check_kind(w: &World, v: &Value, kind: &str, what: &str) {
    let ok = match kind {
        "a non-empty string" => v.as_str().is_some_and(|s| !s.is_empty()),
        "a positive integer" => v.as_u64().is_some_and(|n| n > 0),
        "a non-empty array" => v.as_array().is_some_and(|a| !a.is_empty()),
        "a SHA-256 in hex" => v
            .as_str()
            .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())),
        _ => w.fail(format!("unknown kind {kind}")),
    };
    w.check(ok, format!("{what} should be {kind}, got {v}"));
}

#[then(regex = r#"^the response JSON at "([^"]*)" is an array of (\d+)$"#)]
fn json_array_len(w: &mut World, ptr: String, n: usize) {
    let v = pointer(w, w.last_json(), &ptr).clone();
    let len = v.as_array().map(Vec::len);
    w.check(
        len == Some(n),
        format!("{ptr} should be an array of {n}, got {v}"),
    );
}

#[then(regex = r#"^the response JSON at "([^"]*)" has the fields (.+)$"#)]
fn json_fields(w: &mut World, ptr: String, fields: String) {
    let v = pointer(w, w.last_json(), &ptr).clone();
    check_fields(w, &v, &fields, &ptr);
}

/// `"a", "b", "c"` → ["a", "b", "c"].
pub fn quoted_list(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

pub fn check_fields(w: &World, v: &Value, fields: &str, what: &str) {
    for f in quoted_list(fields) {
        w.check(
            v.get(&f).is_some(),
            format!("{what} lacks the field {f:?}: {v}"),
        );
    }
}

#[then(regex = r#"^the response JSON at "([^"]*)" mentions "([^"]+)"$"#)]
fn json_mentions(w: &mut World, ptr: String, text: String) {
    let v = pointer(w, w.last_json(), &ptr).clone();
    let s = v
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    w.check(
        s.to_lowercase().contains(&text.to_lowercase()),
        format!("{ptr} = {s:?} does not mention {text:?}"),
    );
}

#[then(regex = r#"^the response JSON at "([^"]*)" is at most the value at "([^"]*)"$"#)]
fn json_at_most(w: &mut World, a: String, b: String) {
    let j = w.last_json().clone();
    let x = pointer(w, &j, &a).as_f64();
    let y = pointer(w, &j, &b).as_f64();
    w.check(
        matches!((x, y), (Some(x), Some(y)) if x <= y),
        format!("{a} ({x:?}) should be at most {b} ({y:?})"),
    );
}

#[then(regex = r#"^the response JSON at "([^"]*)" is the same as the previous answer's$"#)]
fn json_same_as_prev(w: &mut World, ptr: String) {
    let Some(prev) = w.prev_json.clone() else {
        w.fail("no previous answer was kept")
    };
    let now = pointer(w, w.last_json(), &ptr).clone();
    let before = pointer(w, &prev, &ptr).clone();
    w.check(
        now == before,
        format!("{ptr} changed between two identical requests: {before} then {now}"),
    );
}

#[then(regex = r#"^the response header "([^"]+)" is "([^"]*)"$"#)]
fn header_is(w: &mut World, name: String, value: String) {
    let got = w.last().headers.get(&name.to_ascii_lowercase()).cloned();
    w.check(
        got.as_deref() == Some(value.as_str()),
        format!("header {name}: expected {value:?}, got {got:?}"),
    );
}

#[then(regex = r#"^the response header "([^"]+)" is present$"#)]
fn header_present(w: &mut World, name: String) {
    let got = w.last().headers.get(&name.to_ascii_lowercase()).cloned();
    w.check(
        got.as_deref().is_some_and(|v| !v.is_empty()),
        format!("header {name} is missing"),
    );
    w.corr_echo = got;
}

#[then(regex = r#"^every protected endpoint answers 401 "([A-Z_]+)" to a wrong token$"#)]
async fn all_protected(w: &mut World, code: String) {
    let calls: [(&str, &str, Option<&str>); 6] = [
        ("GET", "/worker/ready", None),
        ("GET", "/openapi.json", None),
        (
            "POST",
            "/worker/plan",
            Some(r#"{"model_ref":"x.gguf","shard_layout":"single"}"#),
        ),
        (
            "POST",
            "/worker/commit",
            Some(r#"{"model_ref":"x.gguf","shard_id":"s","shard_index":0}"#),
        ),
        (
            "POST",
            "/worker/execute",
            Some(r#"{"handle_id":"h","prompt":"hi","params":{"max_tokens":1}}"#),
        ),
        ("POST", "/worker/cancel", Some(r#"{"job_id":"j"}"#)),
    ];
    for (m, p, b) in calls {
        for auth in [Auth::Wrong, Auth::None] {
            let r = send(w, m, p, b.map(str::to_string), auth).await;
            w.check(
                r.status == 401,
                format!("{m} {p} with {auth:?} answered {}: {}", r.status, r.text),
            );
            assert_error_body(w, &r, &code);
        }
    }
}

#[then("no response body so far contains something that looks like a memory address")]
fn no_pointer_in_bodies(w: &mut World) {
    for b in &w.bodies {
        if let Some(p) = crate::steps::logs::find_pointer(b) {
            w.fail(format!(
                "a response body contains {p:?}, which looks like a device or host pointer: {b}"
            ));
        }
    }
}

#[given("a second tiny model in the model root")]
async fn second_model(w: &mut World) {
    let src = crate::steps::process::test_model("tiny2").unwrap_or_else(|e| w.fail(e));
    crate::steps::process::place_in_root(&src, &w.model_root(), "tiny2.gguf");
    w.that_model = Some("tiny2.gguf".into());
}

#[then("the request is refused with a client error naming the model root")]
fn refused_naming_root(w: &mut World) {
    let r = w.last().clone();
    w.check(
        (400..500).contains(&r.status),
        format!("expected a 4xx refusal, got HTTP {}: {}", r.status, r.text),
    );
    let code = r
        .json
        .as_ref()
        .and_then(|j| j["code"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_error_body(w, &r, &code);
    error_mentions_root(w);
}
