//! Plan's memory arithmetic at its exact boundaries (WORKER-4210, 4214):
//! the worker is told how much memory is free (the test-hooks-only
//! `available_bytes` fault), and the harness derives every expected number
//! from the model file on disk or from an earlier answer of the same kind.

use crate::steps::http::{pointer, send, Auth};
use crate::steps::world::World;
use cucumber::{then, when};
use serde_json::json;

/// The served model file's size on disk, read by the harness.
fn served_file_len(w: &World) -> u64 {
    let p = w.model_root().join(&w.model_name);
    std::fs::metadata(&p)
        .unwrap_or_else(|e| w.fail(format!("cannot stat {}: {e}", p.display())))
        .len()
}

async fn tell_free_memory(w: &mut World, bytes: u64) {
    let r = send(
        w,
        "POST",
        "/debug/fault",
        Some(json!({"kind": "available_bytes", "bytes": bytes}).to_string()),
        Auth::Token,
    )
    .await;
    w.check(
        r.status == 200,
        format!(
            "POST /debug/fault (available_bytes {bytes}) answered {}: {} (is this a test-hooks build?)",
            r.status, r.text
        ),
    );
}

#[when(regex = r"^the worker is told it has (\d+) bytes of free memory$")]
async fn told_bytes(w: &mut World, bytes: u64) {
    tell_free_memory(w, bytes).await;
}

#[when(
    regex = r"^the worker is told its free memory is (the served model file's size|the last plan's vram_required)( minus one)?$"
)]
async fn told_derived(w: &mut World, what: String, minus_one: String) {
    let base = if what.contains("file") {
        served_file_len(w)
    } else {
        last_u64(w, "/vram_required")
    };
    let bytes = if minus_one.is_empty() { base } else { base - 1 };
    tell_free_memory(w, bytes).await;
}

#[when(regex = r#"^I plan "([^"]+)"$"#)]
async fn plan_named(w: &mut World, model_ref: String) {
    let body = json!({"model_ref": model_ref, "shard_layout": "single"}).to_string();
    send(w, "POST", "/worker/plan", Some(body), Auth::Token).await;
}

#[then(r#"the response JSON at "/vram_required" equals the served model file's size"#)]
fn required_is_file_len(w: &mut World) {
    let want = served_file_len(w);
    let got = last_u64(w, "/vram_required");
    w.check(
        got == want,
        format!("vram_required is {got}, expected the file's {want} bytes"),
    );
}

/// The served model's own memory counts as free for itself: what the
/// worker told it was free plus every byte the engine holds, as /metrics
/// reports it by kind.
#[then(
    r#"the response JSON at "/vram_available" equals the memory the worker reports in its metrics"#
)]
async fn available_is_own_memory(w: &mut World) {
    let got = last_u64(w, "/vram_available");
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    let held: f64 = r
        .text
        .lines()
        .filter(|l| l.starts_with("worker_orcd_memory_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    w.check(
        held > 0.0 && got as f64 == held,
        format!(
            "vram_available is {got}, expected the {held} bytes the served model holds (/metrics)"
        ),
    );
}

fn last_u64(w: &World, ptr: &str) -> u64 {
    let last = w
        .last
        .clone()
        .unwrap_or_else(|| w.fail("no answer was recorded"));
    let Some(j) = last.json.as_ref() else {
        w.fail(format!("the last answer is not JSON: {}", last.text))
    };
    pointer(w, j, ptr)
        .as_u64()
        .unwrap_or_else(|| w.fail(format!("{ptr} is not an integer in {j}")))
}
