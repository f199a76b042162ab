//! Prometheus metrics steps (WORKER-4810-4812, 4305, SCHEDULER-M0-002).
//! The exposition text is parsed into sample name → summed value, so a
//! counter is compared across a job without caring about its labels.

use crate::steps::http::{quoted_list, send, Auth};
use crate::steps::world::World;
use cucumber::{then, when};
use std::collections::BTreeMap;

pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *m.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

async fn scrape(w: &mut World) -> (String, BTreeMap<String, f64>) {
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    w.check(
        r.status == 200,
        format!("GET /metrics answered {}", r.status),
    );
    let m = parse(&r.text);
    (r.text, m)
}

#[when("I read the metrics")]
async fn read(w: &mut World) {
    let (_, m) = scrape(w).await;
    w.metrics_before = Some(m);
}

fn has_family(text: &str, m: &BTreeMap<String, f64>, fam: &str) -> bool {
    let base = fam.strip_suffix("_total").unwrap_or(fam);
    m.contains_key(fam)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| m.contains_key(&format!("{fam}{s}")))
        || text.lines().any(|l| {
            l.starts_with(&format!("# TYPE {base} ")) || l.starts_with(&format!("# TYPE {fam} "))
        })
}

#[then(regex = r#"^the metrics text has the families (.+)$"#)]
fn families(w: &mut World, list: String) {
    let text = w.last().text.clone();
    let m = parse(&text);
    for f in quoted_list(&list) {
        w.check(
            has_family(&text, &m, &f),
            format!("/metrics has no family {f}"),
        );
    }
}

async fn delta(w: &mut World, name: &str) -> f64 {
    let Some(before) = w.metrics_before.clone() else {
        w.fail("the metrics were not read before")
    };
    let (_, now) = scrape(w).await;
    w.check(
        now.contains_key(name),
        format!("/metrics has no sample {name}"),
    );
    now.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

#[then(regex = r#"^the metric "([^"]+)" increased by (\d+)$"#)]
async fn increased(w: &mut World, name: String, n: f64) {
    let d = delta(w, &name).await;
    w.check(d == n, format!("{name} changed by {d}, expected {n}"));
}

#[then(regex = r#"^the metric "([^"]+)" increased by the number of token events$"#)]
async fn increased_tokens(w: &mut World, name: String) {
    let n = w.stream().tokens().len() as f64;
    let d = delta(w, &name).await;
    w.check(
        d == n,
        format!("{name} changed by {d}, but {n} token events arrived"),
    );
}

#[then(regex = r#"^the metric "([^"]+)" increased by the number of token events less one$"#)]
async fn increased_gaps(w: &mut World, name: String) {
    let n = w.stream().tokens().len() as f64 - 1.0;
    let d = delta(w, &name).await;
    w.check(
        d == n,
        format!(
            "{name} changed by {d}, but {} token events arrived",
            n + 1.0
        ),
    );
}

/// tokens_per_second is computed from the exact decode time, and
/// decode_time_ms is that time rounded up: so tokens_out / tokens_per_second
/// lies within the millisecond below decode_time_ms.
#[then("the metrics event's tokens_per_second is its tokens_out over its decode_time_ms")]
fn tokens_per_second(w: &mut World) {
    let m = w
        .stream()
        .events
        .iter()
        .find(|e| e.name == "metrics")
        .map(|e| e.json())
        .unwrap_or_else(|| w.fail("the stream has no metrics event"));
    let (n, ms, tps) = (
        m["tokens_out"].as_f64().unwrap_or(-1.0),
        m["decode_time_ms"].as_f64().unwrap_or(-1.0),
        m["tokens_per_second"].as_f64().unwrap_or(-1.0),
    );
    let secs = if tps > 0.0 { n / tps } else { f64::INFINITY };
    w.check(
        n > 0.0 && secs * 1000.0 <= ms && secs * 1000.0 > ms - 1.0,
        format!("tokens_out {n} at {tps} tokens/s is {secs} s, but decode_time_ms is {ms}"),
    );
}

#[then(regex = r#"^the metric "([^"]+)" is unchanged$"#)]
async fn unchanged(w: &mut World, name: String) {
    let d = delta(w, &name).await;
    w.check(d == 0.0, format!("{name} changed by {d}"));
}

#[then(regex = r#"^the metric "([^"]+)" is positive$"#)]
async fn positive(w: &mut World, name: String) {
    let (_, m) = scrape(w).await;
    let v = m.get(&name).copied();
    w.check(v.is_some_and(|v| v > 0.0), format!("{name} is {v:?}"));
}

#[then(regex = r#"^the metrics have a positive "([^"]+)" sample labelled "([^"]+)"$"#)]
async fn labelled_positive(w: &mut World, name: String, label: String) {
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    let ok = r.text.lines().any(|l| {
        l.starts_with(&format!("{name}{{"))
            && l.contains(&format!("\"{label}\""))
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    });
    w.check(ok, format!("no positive {name} sample labelled {label:?}"));
}

/// The value of the one `name` sample whose labels include `label="value"`.
fn labelled_sample(w: &World, text: &str, name: &str, label: &str, value: &str) -> f64 {
    let want = format!("{label}=\"{value}\"");
    let hits: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            let labels = l.split_once('{').and_then(|(_, r)| r.split_once('}'));
            labels.is_some_and(|(ls, _)| ls.split(',').any(|kv| kv.trim() == want))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .collect();
    match hits.as_slice() {
        [v] => *v,
        other => w.fail(format!(
            "expected exactly one {name} sample with {want}, found {}: {other:?}",
            other.len()
        )),
    }
}

/// WORKER-4422: the KV cache is planned from the configured `max_context`.
/// The expectation is the harness's own arithmetic over the model's shape,
/// read from the served GGUF file by `gguf_meta` (not from the worker): f32
/// keys and values, `2 * n_layers * max_context * n_kv_heads * head_dim * 4`
/// bytes, as both engines allocate them (`engine/cpu`, `engine/cuda/plan.rs`).
#[then("the KV cache memory in the metrics is exactly what the configured max_context needs")]
async fn kv_bytes_exact(w: &mut World) {
    let path = w.model_root().join(&w.model_name);
    let s = crate::steps::gguf_meta::shape(&path).unwrap_or_else(|e| w.fail(e));
    let Some(ctx) = w.config.get("max_context").and_then(|v| v.as_u64()) else {
        w.fail("this step needs max_context set in the configuration")
    };
    w.check(
        ctx < s.context_length,
        format!(
            "max_context {ctx} must be below the model's trained context {} for this check to mean anything",
            s.context_length
        ),
    );
    let want = 2 * s.n_layers * ctx * s.n_kv_heads * s.head_dim * 4;
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    let got = labelled_sample(w, &r.text, "worker_orcd_memory_bytes", "kind", "kv_cache");
    w.check(
        got == want as f64,
        format!(
            "worker_orcd_memory_bytes{{kind=\"kv_cache\"}} is {got}, expected {want} \
             (2 x {} layers x {ctx} positions x {} KV heads x {} head dims x 4 bytes)",
            s.n_layers, s.n_kv_heads, s.head_dim
        ),
    );
}

/// The KV pool's gauges (issue 11 point 3): pages reserved, pages in all,
/// and their ratio, as one consistent triple. The pool's page count is the
/// harness's arithmetic from the documented page sizes: the CPU engine's
/// pages hold 16 positions, the CUDA engine's 32 (one attention chunk).
#[then(
    regex = r"^the metrics show (no|every) KV cache page in use, of a pool for (\d+) positions$"
)]
async fn kv_pages(w: &mut World, which: String, positions: u64) {
    let backend = crate::steps::world::ctx().backend();
    let page = if backend == "cuda" { 32 } else { 16 };
    let total = positions.div_ceil(page) as f64;
    let used = if which == "no" { 0.0 } else { total };
    let (_, m) = scrape(w).await;
    let get = |name: &str| m.get(name).copied();
    let got = (
        get("worker_orcd_kv_cache_pages_used"),
        get("worker_orcd_kv_cache_pages_total"),
        get("worker_orcd_kv_cache_usage_ratio"),
    );
    let want = (Some(used), Some(total), Some(used / total));
    w.check(
        got == want,
        format!(
            "KV pages (used, total, ratio) are {got:?}, expected {want:?} on the {} backend",
            backend
        ),
    );
}
