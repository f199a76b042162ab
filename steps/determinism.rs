//! Determinism (WORKER-4710-4713, 4999, 5000, PB-DETERMINISM): the same
//! request gives byte-identical token streams, twice in a row and across a
//! restart. Each comparison writes its pair and diff into
//! `<root>/determinism/<run_id>/` with a `run_config.json`.

use crate::steps::sse::execute;
use crate::steps::world::{ctx, slug, World};
use cucumber::{then, when};
use serde_json::{json, Value};

/// Record two runs' tokens as a pair and their diff; true when identical.
pub(crate) fn record_pair(w: &World, label: &str, a: &[String], b: &[String]) -> bool {
    let dir = ctx().bundle.determinism_dir();
    let name = format!("{}__{}__{label}", slug(&w.feature), slug(&w.scenario));
    let meta = json!({"feature": w.feature, "scenario": w.scenario, "label": label});
    crate::steps::proof::append_ndjson(
        &dir.join("pairs").join(format!("{name}.ndjson")),
        meta.clone(),
        &[
            json!({"run": "a", "tokens": a}),
            json!({"run": "b", "tokens": b}),
        ],
    );
    let mut diff = String::from("\n| index | run a | run b |\n|---|---|---|\n");
    let n = a.len().max(b.len());
    let mut same = a.len() == b.len();
    for i in 0..n {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            same = false;
            diff.push_str(&format!("| {i} | {:?} | {:?} |\n", x, y));
        }
    }
    let body = if same {
        format!("\n{name}: identical ({} tokens)\n", a.len())
    } else {
        format!("\n{name}: DIFFERENT\n{diff}")
    };
    crate::steps::proof::write_with_header(&dir.join("diffs").join(format!("{name}.md")), &body);
    let version = std::process::Command::new(&ctx().bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    crate::steps::proof::write_json(
        &dir.join("run_config.json"),
        json!({
            "engine_version": version,
            "backend": ctx().backend(),
            "model_digests": *ctx().model_digests.lock().expect("digests lock"),
            "seeds": *ctx().seeds.lock().expect("seeds lock"),
            "gpu": crate::steps::proof::gpu_name().unwrap_or_else(|| "none".into()),
        }),
    );
    same
}

fn params(seed: u64, temp: f64, top_k: Option<u64>, top_p: Option<f64>, max: u64) -> Value {
    let mut p = json!({"max_tokens": max, "temperature": temp, "seed": seed});
    if let Some(k) = top_k {
        p["top_k"] = json!(k);
    }
    if let Some(t) = top_p {
        p["top_p"] = json!(t);
    }
    p
}

#[when(
    regex = r#"^I execute "([^"]*)" with seed (\d+), temperature ([0-9.]+) and max_tokens (\d+) twice$"#
)]
async fn twice(w: &mut World, prompt: String, seed: u64, temp: f64, max: u64) {
    for _ in 0..2 {
        execute(w, &prompt, params(seed, temp, None, None, max)).await;
    }
}

#[when(
    regex = r#"^I execute "([^"]*)" with seed (\d+), temperature ([0-9.]+) and max_tokens (\d+) (\d+) times$"#
)]
async fn many(w: &mut World, prompt: String, seed: u64, temp: f64, max: u64, n: usize) {
    for _ in 0..n {
        execute(w, &prompt, params(seed, temp, None, None, max)).await;
    }
}

fn ok_stream(w: &World, s: &crate::steps::sse::Stream) {
    let end = s.terminal().map(|(_, e)| e.name.clone());
    w.check(
        s.status == 200 && end.as_deref() == Some("end"),
        format!(
            "a stream did not complete: HTTP {}, final event {end:?}",
            s.status
        ),
    );
}

#[then("the two token streams are byte-identical")]
fn two_identical(w: &mut World) {
    let n = w.streams.len();
    w.check(n >= 2, "fewer than two streams were recorded");
    let (a, b) = (w.streams[n - 2].clone(), w.streams[n - 1].clone());
    ok_stream(w, &a);
    ok_stream(w, &b);
    w.check(!a.tokens().is_empty(), "the streams have no tokens");
    let same = record_pair(w, "twice", &a.token_texts(), &b.token_texts());
    w.check(
        same,
        format!(
            "the streams differ: {:?} vs {:?}",
            a.token_texts(),
            b.token_texts()
        ),
    );
}

#[then("all the token streams are byte-identical")]
fn all_identical(w: &mut World) {
    let first = w
        .streams
        .first()
        .cloned()
        .unwrap_or_else(|| w.fail("no streams"));
    ok_stream(w, &first);
    for (i, s) in w.streams.clone().iter().enumerate().skip(1) {
        ok_stream(w, s);
        if s.token_texts() != first.token_texts() {
            record_pair(
                w,
                &format!("repeat-{i}"),
                &first.token_texts(),
                &s.token_texts(),
            );
            w.fail(format!("stream {i} differs from stream 0"));
        }
    }
}

#[then("the determinism bundle holds the pair and an empty diff")]
fn bundle_has_pair(w: &mut World) {
    let dir = ctx().bundle.determinism_dir();
    let name = format!("{}__{}__twice", slug(&w.feature), slug(&w.scenario));
    let pair = dir.join("pairs").join(format!("{name}.ndjson"));
    let diff =
        std::fs::read_to_string(dir.join("diffs").join(format!("{name}.md"))).unwrap_or_default();
    w.check(pair.is_file(), format!("{} is missing", pair.display()));
    w.check(
        diff.starts_with(crate::steps::proof::MD_HEADER) && diff.contains("identical"),
        format!("the diff says: {diff}"),
    );
    w.check(
        dir.join("run_config.json").is_file(),
        "determinism run_config.json is missing",
    );
}

#[when("I remember the tokens of that stream")]
fn remember(w: &mut World) {
    let s = w.stream().clone();
    ok_stream(w, &s);
    w.remembered = Some(s.token_texts());
}

#[then("the token stream equals the remembered one")]
fn equals_remembered(w: &mut World) {
    let Some(before) = w.remembered.clone() else {
        w.fail("nothing was remembered")
    };
    let s = w.stream().clone();
    ok_stream(w, &s);
    let same = record_pair(w, "remembered", &before, &s.token_texts());
    w.check(
        same,
        format!("the stream changed: {before:?} then {:?}", s.token_texts()),
    );
}

#[then(regex = r"^the seeds (\d+) and (\d+) gave different token streams$")]
fn seeds_differ(w: &mut World, _a: u64, _b: u64) {
    let n = w.streams.len();
    w.check(
        n >= 3,
        "expected two runs with the first seed and one with the second",
    );
    let (a1, a2, b) = (
        w.streams[n - 3].token_texts(),
        w.streams[n - 2].token_texts(),
        w.streams[n - 1].token_texts(),
    );
    w.check(a1 == a2, "the same seed gave different streams");
    w.check(
        a1 != b,
        "a different seed gave the very same sampled stream: the seed seems ignored",
    );
}
