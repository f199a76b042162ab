//! Engine capability profile steps (WORKER-4610-4613). The profile a worker
//! announces must be computed from the configuration it was started with
//! and from what its build supports, so a scenario restarts the worker with
//! other settings and compares each announced profile with the values the
//! harness itself configured, and with the tensor types the harness read
//! from the served model file.

use crate::steps::world::World;
use cucumber::then;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The `n`-th (1-based) "ready" announcement, waiting up to 15 s for it.
async fn ready_announcement(w: &World, n: usize) -> Value {
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver")
    };
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let ready: Vec<Value> = cb
            .all()
            .into_iter()
            .map(|c| c.body)
            .filter(|b| b["state"] == "ready")
            .collect();
        if let Some(b) = ready.get(n - 1) {
            return b.clone();
        }
        if Instant::now() > until {
            w.fail(format!(
                "only {} ready announcements arrived within 15 s, expected at least {n}",
                ready.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn configured(w: &World, key: &str) -> Value {
    match w.config.get(key) {
        Some(v) => v.clone(),
        None => w.fail(format!("this step needs {key} set in the configuration")),
    }
}

/// The profile names the configured worker_id and max_context, and lists
/// every tensor type of the served model among the supported quant types.
#[then(
    regex = r"^ready announcement (\d+) carries an engine profile built from the configuration$"
)]
async fn ecp_from_config(w: &mut World, n: usize) {
    let ann = ready_announcement(w, n).await;
    let ecp = &ann["ecp"];
    for key in ["worker_id", "max_context"] {
        let want = configured(w, key);
        w.check(
            ecp[key] == want,
            format!(
                "announcement {n}: ecp.{key} is {}, configured {want}",
                ecp[key]
            ),
        );
    }
    let path = w.model_root().join(&w.model_name);
    let needed = crate::steps::gguf_meta::tensor_types(&path).unwrap_or_else(|e| w.fail(e));
    let listed: Vec<&str> = ecp["supports_quant"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for t in &needed {
        w.check(
            listed.contains(&t.as_str()),
            format!(
                "announcement {n}: the served model has {t} tensors, which it runs, but ecp.supports_quant is {listed:?}"
            ),
        );
    }
}

/// Between two starts only what the configuration changed may differ
/// (`vram_bytes` on the CPU path is free host memory, which moves on its own).
#[then(
    regex = r"^the engine profiles of ready announcements (\d+) and (\d+) differ exactly in worker_id and max_context$"
)]
async fn ecp_diff(w: &mut World, a: usize, b: usize) {
    let ea = ready_announcement(w, a).await["ecp"].clone();
    let eb = ready_announcement(w, b).await["ecp"].clone();
    let (Some(ma), Some(mb)) = (ea.as_object(), eb.as_object()) else {
        w.fail(format!("an announcement has no ecp object: {ea} / {eb}"))
    };
    let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
    keys.sort();
    keys.dedup();
    let differ: Vec<&str> = keys
        .into_iter()
        .filter(|k| k.as_str() != "vram_bytes" && ma.get(*k) != mb.get(*k))
        .map(String::as_str)
        .collect();
    w.check(
        differ == ["max_context", "worker_id"],
        format!("the profiles differ in {differ:?}, expected exactly [max_context, worker_id]: {ea} vs {eb}"),
    );
}
