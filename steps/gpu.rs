//! GPU comparisons (WORKER-4700-4711, 4972, 5000, KERNEL-*): a second worker
//! in the same scenario — the CPU reference path on the same model, or the
//! same backend on another GPU — and the device's free memory around a
//! worker's life. Only @gpu scenarios use these; they run with REQUIRE_REAL_GPU=1.
//!
//! Also the backend-dependent expectations of backend-independent scenarios
//! (WORKER-4100, 4103, 4702, 4952): the memory a run's backend reports and its
//! out-of-memory code (VRAM_OOM on cuda, HOST_OOM on cpu), fixed by the run,
//! so one scenario shows the behaviour on either backend without an either/or.

use crate::steps::http::{send, Auth};
use crate::steps::process::{prepare, start_ready};
use crate::steps::sse::execute;
use crate::steps::world::{ctx, World};
use cucumber::{given, then, when};
use serde_json::{json, Value};

async fn second_worker(w: &mut World, backend: &str, device: u32) {
    let model = w.model_name.trim_end_matches(".gguf").to_string();
    let model = if model.starts_with("SmolLM2") {
        "smollm2".to_string()
    } else {
        model
    };
    let mut o = Box::new(World::new().await.unwrap_or_else(|e| match e {}));
    o.feature = w.feature.clone();
    o.scenario = format!("{} (second worker)", w.scenario);
    prepare(&mut o, &model).await;
    o.config.insert("backend".into(), json!(backend));
    o.config.insert("gpu_device".into(), json!(device));
    start_ready(&mut o).await;
    w.other = Some(o);
}

#[given("a CPU reference worker serving the same model")]
async fn cpu_reference(w: &mut World) {
    second_worker(w, "cpu", 0).await;
}

#[given("two workers serving the tiny test model on GPU 0 and GPU 1")]
async fn two_gpus(w: &mut World) {
    prepare(w, "tiny").await;
    start_ready(w).await;
    second_worker(w, "cuda", 1).await;
}

async fn both(w: &mut World, prompt: &str, params: Value) {
    execute(w, prompt, params.clone()).await;
    let Some(mut o) = w.other.take() else {
        w.fail("no second worker was started")
    };
    execute(&mut o, prompt, params).await;
    w.other = Some(o);
}

fn greedy(max: u64) -> Value {
    json!({"max_tokens": max, "temperature": 0, "seed": 1})
}

#[when(regex = r#"^both workers execute "([^"]*)" greedily with max_tokens (\d+)$"#)]
async fn both_greedy(w: &mut World, prompt: String, max: u64) {
    both(w, &prompt, greedy(max)).await;
}

#[when(
    regex = r#"^both workers execute the chat prompt "([^"]*)" greedily with max_tokens (\d+)$"#
)]
async fn both_chat(w: &mut World, q: String, max: u64) {
    let prompt = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    both(w, &prompt, greedy(max)).await;
}

#[when(regex = r#"^both workers execute a (\d+)-token prompt greedily with max_tokens (\d+)$"#)]
async fn both_long(w: &mut World, words: usize, max: u64) {
    // Roughly one token per short word for these tokenizers; the exact count does not matter.
    let prompt: String = ["the", "cat", "sat", "on", "a", "mat", "and", "then"]
        .iter()
        .cycle()
        .take(words)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    both(w, &prompt, greedy(max)).await;
}

#[when(
    regex = r#"^both workers execute "([^"]*)" with seed (\d+), temperature ([0-9.]+), top_k (\d+), top_p ([0-9.]+) and max_tokens (\d+)$"#
)]
async fn both_sampled(
    w: &mut World,
    prompt: String,
    seed: u64,
    temp: f64,
    top_k: u64,
    top_p: f64,
    max: u64,
) {
    both(w, &prompt, json!({"max_tokens": max, "temperature": temp, "seed": seed, "top_k": top_k, "top_p": top_p})).await;
}

#[then("both token streams are identical")]
fn both_identical(w: &mut World) {
    let a = w.stream().clone();
    let Some(o) = w.other.as_ref() else {
        w.fail("no second worker")
    };
    let b = o.stream().clone();
    for s in [&a, &b] {
        let end = s.terminal().map(|(_, e)| e.name.clone());
        w.check(
            s.status == 200 && end.as_deref() == Some("end"),
            format!("a stream did not complete: HTTP {}, {end:?}", s.status),
        );
    }
    let (ta, tb) = (a.token_texts(), b.token_texts());
    w.check(!ta.is_empty(), "no tokens were generated");
    w.check(
        ta == tb,
        format!("the streams differ:\n  this worker:  {ta:?}\n  second worker: {tb:?}"),
    );
}

fn free_mib(w: &World, gpu: u32) -> u64 {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            "-i",
            &gpu.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| w.fail(format!("nvidia-smi: {e}")));
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    s.parse()
        .unwrap_or_else(|_| w.fail(format!("nvidia-smi gave {s:?}")))
}

#[given(regex = r"^the free memory of GPU (\d+) is recorded$")]
fn record_free(w: &mut World, gpu: u32) {
    w.gpu_free_before = Some(free_mib(w, gpu));
}

#[then(regex = r"^the free memory of GPU (\d+) is back to the recorded value within (\d+) MiB$")]
fn free_back(w: &mut World, gpu: u32, slack: u64) {
    let Some(before) = w.gpu_free_before else {
        w.fail("the free memory was not recorded")
    };
    let now = free_mib(w, gpu);
    w.check(
        now + slack >= before,
        format!("GPU {gpu} had {before} MiB free before the worker, {now} MiB after it exited"),
    );
}

/// The out-of-memory code of this run's backend (WORKER-4952).
fn backend_oom_code() -> &'static str {
    if ctx().backend() == "cuda" {
        "VRAM_OOM"
    } else {
        "HOST_OOM"
    }
}

#[then(
    "the readiness callback received a \"stopped\" status with the backend's out-of-memory code"
)]
async fn stopped_with_oom(w: &mut World) {
    let code = backend_oom_code();
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver")
    };
    let Some(c) = cb.wait_for_state("stopped", 20).await else {
        let all = cb.all();
        w.fail(format!(
            "expected a stopped status callback with {code} within 20 s; received: {all:?}"
        ))
    };
    let got = c
        .body
        .pointer("/error/code")
        .cloned()
        .unwrap_or(Value::Null);
    w.check(
        got == json!(code),
        format!(
            "expected error code {code} on the {} backend, the status callback says {got}: {}",
            ctx().backend(),
            c.body
        ),
    );
}

#[then("the worker's out-of-memory log line names the bytes needed and the bytes available")]
fn oom_line_bytes(w: &mut World) {
    let code = backend_oom_code();
    let log = w.log_text();
    let line = log.lines().find(|l| l.contains(code));
    let Some(line) = line else {
        w.fail(format!(
            "expected a log line with {code} on the {} backend; none",
            ctx().backend()
        ))
    };
    // "need…" and "available", and two byte counts (integers of 7+ digits) in the line.
    let counts = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| t.len() >= 7)
        .count();
    w.check(
        line.contains("need") && line.contains("available") && counts >= 2,
        format!("expected the {code} line to name the bytes needed and available (two byte counts), saw: {line}"),
    );
}

#[then(regex = r#"^the metrics have a positive "([a-z_]+)" memory sample on device "([a-z]+)"$"#)]
async fn memory_on_device(w: &mut World, kind: String, device: String) {
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    let want = "worker_orcd_memory_bytes{";
    let sample = r.text.lines().find(|l| {
        l.starts_with(want)
            && l.contains(&format!("kind=\"{kind}\""))
            && l.contains(&format!("device=\"{device}\""))
    });
    let value = sample
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    w.check(
        value.is_some_and(|v| v > 0.0),
        format!("expected a positive worker_orcd_memory_bytes{{kind=\"{kind}\",device=\"{device}\"}}, saw {sample:?}"),
    );
}
