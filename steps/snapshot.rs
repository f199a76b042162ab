//! Reviewed snapshots (insta) of the API's answer shapes and of one
//! deterministic SSE transcript of the tiny generated model (issue 2 item 6,
//! WORKER-4997, 4710). Values that differ per run (ids, digests of generated
//! files, times, byte counts of free memory) are redacted before comparing.
//! Snapshots live in `tests/snapshots/`; accept changes with
//! `INSTA_UPDATE=always cargo test --test bdd` and review the diff. With
//! `CI=true` insta only compares.

use crate::steps::world::{ctx, World};
use cucumber::then;
use serde_json::{Map, Value};

/// Keys whose values change from run to run.
const VOLATILE: &[&str] = &[
    "job_id",
    "shard_id",
    "handle_id",
    "digest",
    "seal",
    "sealed_at",
    "vram_available",
    "decode_time_ms",
    "queue_time_ms",
    "prefill_time_ms",
    "time_to_first_token_ms",
    "tokens_per_second",
    "predicted_start_ms",
    "worker_id",
    // Changes with every change to the sources that decide the arithmetic.
    "numerics_version",
];

pub fn redact_volatile(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let y = if VOLATILE.contains(&k.as_str()) && !x.is_null() {
                    Value::String(format!("[{k}]"))
                } else {
                    redact_volatile(x)
                };
                out.insert(k.clone(), y);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(redact_volatile).collect()),
        other => other.clone(),
    }
}

fn assert_snapshot(w: &World, name: &str, value: &Value) {
    let dir = ctx().repo_path("tests/snapshots");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(format!("{} › {}", w.feature, w.scenario));
    settings.bind(|| {
        insta::assert_json_snapshot!(name, value);
    });
}

#[then(
    regex = r#"^the response JSON matches the snapshot "([a-z_]+)" with ids, digests and times redacted$"#
)]
fn response_snapshot(w: &mut World, name: String) {
    let v = redact_volatile(w.last_json());
    assert_snapshot(w, &name, &v);
}

#[then(regex = r#"^the SSE transcript matches the snapshot "([a-z_]+)"$"#)]
fn transcript_snapshot(w: &mut World, name: String) {
    let s = w.stream().clone();
    w.check(
        s.status == 200,
        format!("the execute call answered HTTP {}", s.status),
    );
    let events: Vec<Value> = s
        .events
        .iter()
        .map(|e| {
            let data =
                serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data.clone()));
            serde_json::json!({"event": e.name, "data": redact_volatile(&data)})
        })
        .collect();
    assert_snapshot(w, &name, &Value::Array(events));
}
