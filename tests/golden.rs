//! Correctness against an independent implementation (issue 3 point 7):
//! llama.cpp's greedy continuations for real GGUF files, recorded in
//! `golden/*-greedy.jsonl` (see the README next to them).
//!
//! For every prompt of a model:
//! (a) our tokenizer gives exactly llama.cpp's `prompt_tokens`, and our
//!     byte-exact detokenizer gives its `pieces_hex` and `text`;
//! (b) teacher forcing: llama.cpp's tokens are fed and our argmax compared
//!     with its token at every position, twice: with our exact f32 path, and
//!     with llama.cpp's CPU rounding mimicked (activations rounded to 8-bit
//!     blocks before each quantized matmul, Q/K/V at f16:
//!     `CpuEngine::set_llamacpp_rounding`, a diagnostic). Every disagreement
//!     of the exact path prints our logit margin and must be *explained*:
//!     llama.cpp's own gap (top-1 minus top-2) was < NEAR_TIE, or mimicking
//!     its rounding gives its token. Measured on SmolLM2: the exact path
//!     disagrees at 3 positions whose llama.cpp gap is 0.15–0.24 and all
//!     three flip to llama.cpp's token when its rounding is mimicked, so the
//!     README's 0.1 near-tie is too tight for an exact-f32 implementation.
//!     Agreement: >= 97% with rounding mimicked, >= 95% exact;
//! (c) free-running greedy through the `Engine` trait reproduces the golden
//!     tokens up to the first explained disagreement, and prints where and why
//!     it diverges; it must also equal the teacher-forced argmax (batch and
//!     incremental decoding give the same bits).
//!
//! Run with `cargo test --release --test golden -- --nocapture`. Models are
//! found in `$WORKER_ORCD_TEST_MODELS` (default `<repo>/models`); golden files
//! in `$WORKER_ORCD_GOLDEN_DIR` or `$WORKER_ORCD_GOLDEN` (default `<repo>/tests/golden_data`, then
//! `<repo>/../shared/golden`). A missing model prints `SKIPPED: <why>`, except
//! SmolLM2 when `CI=true`, which fails.

use serde_json::Value;
use std::path::{Path, PathBuf};
use worker_orcd::engine::cpu::CpuEngine;
use worker_orcd::engine::{sampler, Engine, LoadOptions, SamplingParams};
use worker_orcd::model::arch;
use worker_orcd::model::gguf::{GgufFile, GgufLimits};
use worker_orcd::model::tokenizer::Tokenizer;

/// llama.cpp quantizes activations to 8 bits in quantized matmuls; below this
/// top-1/top-2 gap an exact f32 implementation may legitimately pick the other token.
const NEAR_TIE: f64 = 0.1;
/// Required agreement when llama.cpp's rounding is mimicked.
const MIN_AGREEMENT: f64 = 0.97;
/// Required agreement of the exact f32 path (measured: SmolLM2 95.3%, Qwen2.5-Coder 99.0%).
const MIN_EXACT_AGREEMENT: f64 = 0.95;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    std::env::var_os("WORKER_ORCD_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"))
}

fn golden_file(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["WORKER_ORCD_GOLDEN_DIR", "WORKER_ORCD_GOLDEN"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(d.into());
        }
    }
    dirs.push(repo().join("tests/golden_data"));
    dirs.push(repo().join("../shared/golden"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

struct Case {
    prompt: String,
    prompt_tokens: Vec<u32>,
    greedy: Vec<u32>,
    pieces: Vec<Vec<u8>>,
    gaps: Vec<f64>,
    text: String,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn load_cases(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).expect("read golden file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("golden line is JSON");
            Case {
                prompt: v["prompt"].as_str().expect("prompt").to_string(),
                prompt_tokens: ids(&v["prompt_tokens"]),
                greedy: ids(&v["greedy_tokens"]),
                pieces: v["pieces_hex"]
                    .as_array()
                    .expect("pieces")
                    .iter()
                    .map(|p| hex::decode(p.as_str().expect("hex")).expect("hex"))
                    .collect(),
                gaps: v["top1_minus_top2_logit"]
                    .as_array()
                    .expect("gaps")
                    .iter()
                    .map(|g| g.as_f64().expect("gap"))
                    .collect(),
                text: v["text"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// Runs (a), (b), (c) for one model; returns false when skipped.
fn check_model(model_file: &str, golden: &str, required_in_ci: bool) -> bool {
    let path = models_dir().join(model_file);
    if !path.is_file() {
        let why = format!(
            "model {} not found (set WORKER_ORCD_TEST_MODELS)",
            path.display()
        );
        assert!(
            !(required_in_ci && in_ci()),
            "{why}, and CI=true requires it"
        );
        println!("SKIPPED: {why}");
        return false;
    }
    let Some(gpath) = golden_file(golden) else {
        let why = format!("golden file {golden} not found (set WORKER_ORCD_GOLDEN_DIR)");
        assert!(
            !(required_in_ci && in_ci()),
            "{why}, and CI=true requires it"
        );
        println!("SKIPPED: {why}");
        return false;
    };
    let cases = load_cases(&gpath);
    assert!(!cases.is_empty(), "{} holds no cases", gpath.display());
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open model");
    let (cfg, w) = arch::from_gguf(&g).expect("architecture");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let opts = LoadOptions {
        max_context: 512,
        gpu_device: 0,
        threads: 0,
    };
    let mut eng = CpuEngine::load(&g, &cfg, &w, &opts).expect("engine");
    println!(
        "== {model_file}: {:?}, {} layers, d_model {}, vocab {}",
        cfg.arch, cfg.n_layers, cfg.d_model, cfg.vocab_size
    );

    let (mut agree, mut total) = (0usize, 0usize);
    let mut hard_failures = Vec::new();
    let (mut mimic_agree, mut mimic_total) = (0usize, 0usize);
    for (ci, c) in cases.iter().enumerate() {
        // (a) tokenization and detokenization.
        let got = tok.encode(&c.prompt, true).expect("encode");
        assert_eq!(
            got, c.prompt_tokens,
            "case {ci}: prompt tokenization differs from llama.cpp"
        );
        for (i, (&id, piece)) in c.greedy.iter().zip(&c.pieces).enumerate() {
            assert_eq!(
                tok.token_bytes(id).as_ref(),
                Some(piece),
                "case {ci}: bytes of token #{i} ({id})"
            );
        }
        let mut stream = tok.stream();
        let mut streamed = String::new();
        for &id in &c.greedy {
            let part = stream.push(id).expect("stream");
            assert!(
                !part.contains('\u{FFFD}'),
                "case {ci}: streaming emitted a broken character"
            );
            streamed.push_str(&part);
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, c.text, "case {ci}: streamed text");
        assert_eq!(
            tok.decode(&c.greedy).expect("decode"),
            c.text,
            "case {ci}: decoded text"
        );

        // (b) teacher forcing over prompt + golden tokens, exact f32 and with
        // llama.cpp's rounding mimicked (see the module header).
        let n = c.greedy.len();
        let p = c.prompt_tokens.len();
        let mut seq = c.prompt_tokens.clone();
        seq.extend_from_slice(&c.greedy[..n.saturating_sub(1)]);
        eng.reset();
        let exact = eng.forward_all(&seq, 0).expect("forward");
        eng.reset();
        eng.set_llamacpp_rounding(true);
        let mimic = eng
            .forward_all(&seq, 0)
            .expect("forward (llama.cpp rounding)");
        eng.set_llamacpp_rounding(false);
        let ours: Vec<u32> = (0..n).map(|i| sampler::argmax(&exact[p - 1 + i])).collect();
        let mimic_ids: Vec<u32> = (0..n).map(|i| sampler::argmax(&mimic[p - 1 + i])).collect();
        // A disagreement is explained when llama.cpp itself saw a near-tie, or
        // when mimicking its rounding reproduces its token.
        let explained = |i: usize| c.gaps[i] < NEAR_TIE || mimic_ids[i] == c.greedy[i];
        for i in 0..n {
            total += 1;
            mimic_total += 1;
            mimic_agree += usize::from(mimic_ids[i] == c.greedy[i]);
            let (mine, theirs) = (ours[i], c.greedy[i]);
            if mine == theirs {
                agree += 1;
                continue;
            }
            let logits = &exact[p - 1 + i];
            let margin = logits[mine as usize] - logits[theirs as usize];
            let msg = format!(
                "case {ci} pos {i}: ours {mine} vs llama.cpp {theirs}; our margin {margin:.4}, llama.cpp gap {:.4}, \
                 with llama.cpp rounding we pick {}",
                c.gaps[i], mimic_ids[i]
            );
            println!("  teacher-forced disagreement: {msg}");
            if !explained(i) {
                hard_failures.push(msg);
            }
        }

        // (c) free-running greedy through the Engine trait.
        eng.reset();
        eng.forward(&c.prompt_tokens, 0).expect("prefill");
        let mut free = Vec::with_capacity(n);
        for i in 0..n {
            let t = eng.sample(&SamplingParams::GREEDY, 0.5).expect("sample");
            free.push(t);
            if i + 1 < n {
                eng.forward(&[t], p + i).expect("decode");
            }
        }
        // Up to and including the first divergence from the golden tokens the
        // inputs of both runs are identical, so batch and incremental decoding must agree.
        let same_inputs = free
            .iter()
            .zip(&c.greedy)
            .position(|(a, b)| a != b)
            .map_or(n, |d| d + 1);
        assert_eq!(
            free[..same_inputs],
            ours[..same_inputs],
            "case {ci}: incremental decode differs from batch"
        );
        match free.iter().zip(&c.greedy).position(|(a, b)| a != b) {
            None => println!("  case {ci}: free-running greedy matches all {n} golden tokens"),
            Some(at) => {
                let why = if c.gaps[at] < NEAR_TIE {
                    "a near-tie in llama.cpp"
                } else {
                    "llama.cpp's rounding (reproduced when mimicked)"
                };
                println!("  case {ci}: free-running matches {at}/{n} golden tokens, then diverges (gap {:.4}): {why}", c.gaps[at]);
                if !explained(at) {
                    hard_failures.push(format!(
                        "case {ci}: free-running greedy diverged at {at} without a near-tie"
                    ));
                }
            }
        }
    }
    let rate = agree as f64 / total as f64;
    println!(
        "== {model_file}: teacher-forced agreement {agree}/{total} = {:.2}%",
        rate * 100.0
    );
    let mimic_rate = mimic_agree as f64 / mimic_total as f64;
    println!(
        "== {model_file}: with llama.cpp's rounding mimicked {mimic_agree}/{mimic_total} = {:.2}%",
        mimic_rate * 100.0
    );
    assert!(
        hard_failures.is_empty(),
        "unexplained disagreements with llama.cpp:\n{}",
        hard_failures.join("\n")
    );
    assert!(
        rate >= MIN_EXACT_AGREEMENT,
        "exact teacher-forced agreement {:.2}% is below {:.0}%",
        rate * 100.0,
        MIN_EXACT_AGREEMENT * 100.0
    );
    assert!(
        mimic_rate >= MIN_AGREEMENT,
        "agreement with llama.cpp's rounding {:.2}% is below {:.0}%",
        mimic_rate * 100.0,
        MIN_AGREEMENT * 100.0
    );
    true
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smol-greedy.jsonl", true);
}

#[test]
fn qwen25_coder_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen-greedy.jsonl",
        false,
    );
}
