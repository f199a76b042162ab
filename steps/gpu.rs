//! GPU comparisons (WORKER-4700-4711, 4972, 5000, KERNEL-*): a second worker
//! in the same scenario — the CPU reference path on the same model, or the
//! same backend on another GPU — and the device's free memory around a
//! worker's life. Only @gpu scenarios use these; they run with REQUIRE_REAL_GPU=1.

use crate::steps::process::{prepare, start_ready};
use crate::steps::sse::execute;
use crate::steps::world::World;
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
