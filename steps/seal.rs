//! Sealed shards and the readiness / status callbacks (WORKER-4023, 4110-4122,
//! 4232, 4245, 4612, 4961). Faults are injected through the test-hooks-only
//! `POST /debug/fault` endpoint.

use crate::steps::http::{check_fields, check_kind, send, Auth};
use crate::steps::world::World;
use cucumber::{then, when};
use serde_json::{json, Value};

#[when(regex = r#"^I inject the fault "([a-z_]+)" at offset (\d+)$"#)]
async fn inject(w: &mut World, kind: String, offset: u64) {
    let r = send(
        w,
        "POST",
        "/debug/fault",
        Some(json!({"kind": kind, "offset": offset}).to_string()),
        Auth::Token,
    )
    .await;
    w.check(
        r.status == 200,
        format!(
            "POST /debug/fault answered {}: {} (is this a test-hooks build?)",
            r.status, r.text
        ),
    );
}

#[when("I inject a device error")]
async fn inject_device(w: &mut World) {
    let r = send(
        w,
        "POST",
        "/debug/fault",
        Some(json!({"kind": "device_error"}).to_string()),
        Auth::Token,
    )
    .await;
    w.check(
        r.status == 200,
        format!("POST /debug/fault answered {}: {}", r.status, r.text),
    );
}

#[when(regex = r"^I make the next engine step hang for (\d+) ms$")]
async fn inject_hang(w: &mut World, ms: u64) {
    let r = send(
        w,
        "POST",
        "/debug/fault",
        Some(json!({"kind": "hang_next_step", "ms": ms}).to_string()),
        Auth::Token,
    )
    .await;
    w.check(
        r.status == 200,
        format!("POST /debug/fault answered {}: {}", r.status, r.text),
    );
}

#[then("the worker no longer reports ready")]
async fn not_ready(w: &mut World) {
    let url = format!("{}/worker/ready", w.base_url());
    match w.http.get(&url).bearer_auth(&w.token).send().await {
        Ok(r) => {
            let j: Value = r.json().await.unwrap_or(Value::Null);
            w.check(j["ready"] == false, format!("/worker/ready still says {j}"));
        }
        // A worker that has already stopped claims nothing: check that it did stop, with the seal code.
        Err(_) => {
            let code = crate::steps::process::wait_exit(w, 15).await;
            w.check(
                code == Some(5),
                format!("the worker is unreachable but exited with {code:?}, expected 5"),
            );
        }
    }
}

fn announcement(w: &World, state: &str) -> Value {
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver")
    };
    match cb.all().into_iter().find(|c| c.body["state"] == state) {
        Some(c) => c.body,
        None => w.fail(format!(
            "no callback with state {state:?}; received: {:?}",
            cb.all()
        )),
    }
}

#[then(regex = r#"^the readiness callback received a "ready" announcement$"#)]
async fn got_ready(w: &mut World) {
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver")
    };
    if cb.wait_for_state("ready", 15).await.is_none() {
        let all = cb.all();
        w.fail(format!(
            "no readiness announcement within 15 s; received: {all:?}"
        ));
    }
}

#[then(
    regex = r#"^the readiness callback received a "stopped" status with error code "([A-Z_]+)"$"#
)]
async fn got_stopped(w: &mut World, code: String) {
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver")
    };
    let Some(c) = cb.wait_for_state("stopped", 20).await else {
        let all = cb.all();
        w.fail(format!(
            "no stopped status callback within 20 s; received: {all:?}"
        ))
    };
    w.check(
        c.body.pointer("/error/code").and_then(Value::as_str) == Some(code.as_str()),
        format!("status callback: {}", c.body),
    );
}

#[then(regex = r#"^the status callback has an "exit_code" of (\d+)$"#)]
fn status_exit_code(w: &mut World, n: u64) {
    let b = announcement(w, "stopped");
    w.check(
        b["exit_code"].as_u64() == Some(n),
        format!("status callback exit_code is {}", b["exit_code"]),
    );
}

fn ann_at(w: &World, ptr: &str) -> Value {
    let b = announcement(w, "ready");
    match b.pointer(ptr) {
        Some(v) => v.clone(),
        None => w.fail(format!("the announcement has nothing at {ptr}: {b}")),
    }
}

#[then(regex = r#"^the announcement JSON at "([^"]*)" is (true|false|null|-?\d+|"[^"]*")$"#)]
fn ann_is(w: &mut World, ptr: String, lit: String) {
    let want: Value = serde_json::from_str(&lit).expect("literal");
    let got = ann_at(w, &ptr);
    w.check(
        got == want,
        format!("announcement {ptr}: expected {want}, got {got}"),
    );
}

#[then(
    regex = r#"^the announcement JSON at "([^"]*)" is (a non-empty string|a positive integer|a non-empty array|a SHA-256 in hex)$"#
)]
fn ann_kind(w: &mut World, ptr: String, kind: String) {
    let v = ann_at(w, &ptr);
    check_kind(w, &v, &kind, &ptr);
}

#[then(regex = r#"^the announcement JSON at "([^"]*)" is the configured (worker id|max_context)$"#)]
fn ann_configured(w: &mut World, ptr: String, what: String) {
    let v = ann_at(w, &ptr);
    let key = if what == "worker id" {
        "worker_id"
    } else {
        "max_context"
    };
    match w.config.get(key).cloned() {
        Some(want) => w.check(
            v == want,
            format!("announcement {ptr} is {v}, configured {want}"),
        ),
        // Not configured: the worker's default applies; it must still be a positive number or a name.
        None => w.check(
            v.as_u64().is_some_and(|n| n > 0) || v.as_str().is_some_and(|s| !s.is_empty()),
            format!("{ptr} is {v}"),
        ),
    }
}

#[then(regex = r#"^the announcement JSON at "([^"]*)" has the fields (.+)$"#)]
fn ann_fields(w: &mut World, ptr: String, fields: String) {
    let v = ann_at(w, &ptr);
    check_fields(w, &v, &fields, &ptr);
}

#[then(regex = r#"^the announcement JSON at "([^"]*)" contains "([^"]+)"$"#)]
fn ann_contains(w: &mut World, ptr: String, item: String) {
    let v = ann_at(w, &ptr);
    let ok = v.as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.eq_ignore_ascii_case(&item)))
    });
    w.check(
        ok,
        format!("announcement {ptr} = {v} does not contain {item:?}"),
    );
}

#[then(
    regex = r#"^the response JSON at "([^"]*)" is the tiny model's (digest|tensor-data digest)$"#
)]
fn is_tiny_digest(w: &mut World, ptr: String, _which: String) {
    let path = w.model_root().join(&w.model_name);
    let want = crate::steps::models::resident_digest_of_file(&path).unwrap_or_else(|e| w.fail(e));
    let got = crate::steps::http::pointer(w, w.last_json(), &ptr).clone();
    w.check(
        got == want.as_str(),
        format!("{ptr} is {got}, the resident digest of the tiny model's tensor data is {want}"),
    );
}

#[then("the worker log mentions the tiny model's file digest")]
fn log_file_digest(w: &mut World) {
    let d = crate::steps::world::file_sha256(&w.model_root().join(&w.model_name));
    w.check(
        w.log_text().contains(&d),
        format!("the worker log does not mention the file's SHA-256 {d}"),
    );
}

#[then("the worker log mentions the tiny model's file digest before the shard's resident digest")]
async fn file_digest_before(w: &mut World) {
    let d = crate::steps::world::file_sha256(&w.model_root().join(&w.model_name));
    let r = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let resident = r
        .json
        .as_ref()
        .and_then(|j| j.pointer("/handles/0/digest"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let log = w.log_text();
    let (a, b) = (log.find(&d), log.find(&resident));
    w.check(
        matches!((a, b), (Some(a), Some(b)) if a < b),
        format!("the file digest (at {a:?}) should be logged before the resident digest {resident} (at {b:?})"),
    );
}

#[when("I remember the shard handle")]
fn remember_handle(w: &mut World) {
    let h = crate::steps::http::pointer(w, w.last_json(), "/handles/0").clone();
    w.prev_json = Some(h);
}

#[then("the shard handle's digest is unchanged and its seal is different")]
fn digest_same_seal_differs(w: &mut World) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("no shard handle was remembered")
    };
    let now = crate::steps::http::pointer(w, w.last_json(), "/handles/0").clone();
    w.check(
        now["digest"] == before["digest"],
        format!(
            "the digest changed across a restart: {} then {}",
            before["digest"], now["digest"]
        ),
    );
    w.check(
        now["seal"] != before["seal"],
        "the seal is the same after a restart: it does not look keyed per process",
    );
}
