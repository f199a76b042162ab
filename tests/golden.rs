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
//!     incremental decoding give the same bits);
//! (d) which of us is right: `tools/reference_f64.py` (numpy + gguf-py, no
//!     code shared with this crate) runs the same teacher-forced sequences in
//!     float64 and records, per position, its argmax, top-1/top-2 gap and top
//!     8 logits (`golden_data/*-f64.jsonl`). When that file exists the test
//!     prints the pairwise agreement of ours (exact f32), llama.cpp and f64,
//!     lists every disagreement with our margin, llama.cpp's gap and f64's
//!     gap, and asserts: our largest |f32 - f64| logit error over the f64 top
//!     8 is < F64_TIE/2 (so a gap >= F64_TIE cannot flip under our rounding),
//!     ours equals the f64 argmax wherever the f64 gap is >= F64_TIE, and
//!     overall >= 99%. Measured: ours = f64 at 150/150 (SmolLM2) and 104/104
//!     (Qwen) positions, max logit error 3.0e-5 / 1.3e-5; llama.cpp = f64 at
//!     143/150 and 103/104. At the 3 SmolLM2 positions above f64's margin for
//!     our token over llama.cpp's is 0.082, 0.069, 0.178, the same as ours:
//!     llama.cpp's token there is not the exact model's argmax. Gap
//!     errors |gap - f64 gap| (half of one bounds the logit error from
//!     below) on SmolLM2: ours max 2.7e-5, llama.cpp median 0.073, max 1.34. The
//!     mimicked rounding is not a replica of llama.cpp (its gaps differ from
//!     llama.cpp's by median 0.09): it shows the size of that rounding noise.
//!
//! Run with `cargo test --release --features test-hooks --test golden -- --nocapture`. Models are
//! found in `$WORKER_ORCD_TEST_MODELS` (default `<repo>/models`); golden files
//! in `$WORKER_ORCD_GOLDEN_DIR` or `$WORKER_ORCD_GOLDEN` (default `<repo>/tests/golden_data`, then
//! `<repo>/../shared/golden`). A test whose model is absent is ignored, with
//! that reason, by the build (build.rs); with `CI=true` SmolLM2 is required.

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

/// f64 reference (`tools/reference_f64.py`): an f64 top-1/top-2 gap below this
/// is a tie for an f32 implementation. Justified, not assumed: the test measures
/// our largest |f32 logit - f64 logit| over the f64 top-8 at every position and
/// requires it below F64_TIE / 2, so that no gap >= F64_TIE can flip.
const F64_TIE: f64 = 1e-2;
/// Required agreement of our exact f32 argmax with the f64 argmax.
const MIN_F64_AGREEMENT: f64 = 0.99;

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
    model_sha256: String,
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
                model_sha256: v["model_sha256"].as_str().unwrap_or_default().to_string(),
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

/// One line of `*-f64.jsonl` (see `tools/reference_f64.py`).
struct F64Case {
    model_sha256: String,
    prompt_tokens: Vec<u32>,
    greedy: Vec<u32>,
    argmax: Vec<u32>,
    gap: Vec<f64>,
    top_ids: Vec<Vec<u32>>,
    top_logits: Vec<Vec<f64>>,
    golden_logit: Vec<f64>,
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn load_f64(path: &Path) -> Vec<F64Case> {
    let text = std::fs::read_to_string(path).expect("read f64 reference file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("f64 line is JSON");
            let rows = |k: &str| v[k].as_array().expect("rows").clone();
            F64Case {
                model_sha256: v["model_sha256"].as_str().expect("sha").to_string(),
                prompt_tokens: ids(&v["prompt_tokens"]),
                greedy: ids(&v["greedy_tokens"]),
                argmax: ids(&v["argmax"]),
                gap: floats(&v["gap"]),
                top_ids: rows("top_ids").iter().map(ids).collect(),
                top_logits: rows("top_logits").iter().map(floats).collect(),
                golden_logit: floats(&v["golden_logit"]),
            }
        })
        .collect()
}

impl F64Case {
    /// The f64 logit of `tok` when it is llama.cpp's token or among the 8 best.
    fn logit(&self, i: usize, tok: u32) -> Option<f64> {
        if tok == self.greedy[i] {
            return Some(self.golden_logit[i]);
        }
        let at = self.top_ids[i].iter().position(|&t| t == tok)?;
        Some(self.top_logits[i][at])
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a (not in f64 top 8)".into(), |x| format!("{x:.4}"))
}

/// Pairwise agreement of ours (exact f32), llama.cpp and the f64 reference.
#[derive(Default)]
struct F64Tally {
    total: usize,
    ours_f64: usize,
    llama_f64: usize,
    ours_llama: usize,
    /// Positions where llama.cpp agrees with f64, and ours agrees there too.
    llama_right: usize,
    ours_at_llama_right: usize,
    /// Largest |our f32 logit - f64 logit| over the f64 top 8 of every position.
    max_err: f64,
    /// |gap - f64 gap| per position for ours and for llama.cpp's recorded gap,
    /// and |mimic gap - llama.cpp gap|. The top-1/top-2 gap moves by at most
    /// twice the largest logit error, so half of each bounds that side's
    /// logit error from below, whichever token is second.
    ours_gap_err: Vec<f64>,
    llama_gap_err: Vec<f64>,
    mimic_llama_gap_diff: Vec<f64>,
    failures: Vec<String>,
}

/// Top-1 minus top-2 of a logit vector.
fn gap_of(l: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in l {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    f64::from(a) - f64::from(b)
}

/// "median m, max x" of a list of non-negative numbers.
fn med_max(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = s.get(s.len() / 2).copied().unwrap_or(0.0);
    format!(
        "median {med:.2e}, max {:.2e}",
        s.last().copied().unwrap_or(0.0)
    )
}

impl F64Tally {
    /// `logits(i)`: our exact-f32 logits at teacher-forced position `i`.
    fn case<'a>(
        &mut self,
        ci: usize,
        c: &Case,
        r: &F64Case,
        ours: &[u32],
        logits: impl Fn(usize) -> &'a [f32],
        mimic: impl Fn(usize) -> &'a [f32],
    ) {
        assert!(
            r.model_sha256 == c.model_sha256
                && r.prompt_tokens == c.prompt_tokens
                && r.greedy == c.greedy
                && r.argmax.len() == c.greedy.len(),
            "case {ci}: the f64 reference was made for another model or golden case; \
             rerun tools/reference_f64.py (see its header)"
        );
        for (i, &o) in ours.iter().enumerate() {
            let (l, f) = (c.greedy[i], r.argmax[i]);
            let lg = logits(i);
            self.ours_gap_err.push((gap_of(lg) - r.gap[i]).abs());
            self.llama_gap_err.push((c.gaps[i] - r.gap[i]).abs());
            self.mimic_llama_gap_diff
                .push((gap_of(mimic(i)) - c.gaps[i]).abs());
            for (&t, &fl) in r.top_ids[i].iter().zip(&r.top_logits[i]) {
                self.max_err = self.max_err.max((f64::from(lg[t as usize]) - fl).abs());
            }
            self.total += 1;
            self.ours_f64 += usize::from(o == f);
            self.llama_f64 += usize::from(l == f);
            self.ours_llama += usize::from(o == l);
            if l == f {
                self.llama_right += 1;
                self.ours_at_llama_right += usize::from(o == l);
            }
            if o == l && l == f {
                continue;
            }
            let our_margin = lg[o as usize] - lg[l as usize];
            let f64_ours_minus_llama = r.logit(i, o).map(|x| x - r.golden_logit[i]);
            let msg = format!(
                "case {ci} pos {i}: ours {o}, llama.cpp {l}, f64 {f}; ours-minus-llama.cpp-token logit: \
                 ours {our_margin:.4}, f64 {}; top1-top2 gap: llama.cpp {:.4}, f64 {:.4}",
                fmt_opt(f64_ours_minus_llama),
                c.gaps[i],
                r.gap[i]
            );
            println!("  f64 three-way disagreement: {msg}");
            if o != f && r.gap[i] >= F64_TIE {
                self.failures.push(msg);
            }
        }
    }

    fn report(&self, model_file: &str) {
        let pct = |a: usize, b: usize| format!("{a}/{b} = {:.2}%", 100.0 * a as f64 / b as f64);
        println!("== {model_file}: agreement with the f64 reference (tools/reference_f64.py)");
        println!("   ours vs f64        {}", pct(self.ours_f64, self.total));
        println!("   llama.cpp vs f64   {}", pct(self.llama_f64, self.total));
        println!("   ours vs llama.cpp  {}", pct(self.ours_llama, self.total));
        println!(
            "   ours vs llama.cpp where llama.cpp agrees with f64: {}",
            pct(self.ours_at_llama_right, self.llama_right)
        );
        println!(
            "   max |our f32 logit - f64 logit| over the f64 top 8: {:.2e} (must be < {:.0e})",
            self.max_err,
            F64_TIE / 2.0
        );
        println!(
            "   |top1-top2 gap - f64 gap|: ours {}; llama.cpp {}",
            med_max(&self.ours_gap_err),
            med_max(&self.llama_gap_err)
        );
        println!(
            "   |gap with llama.cpp's rounding mimicked - llama.cpp gap|: {}",
            med_max(&self.mimic_llama_gap_diff)
        );
        assert!(
            self.failures.is_empty(),
            "our argmax differs from the f64 reference where its gap is >= {F64_TIE}:\n{}",
            self.failures.join("\n")
        );
        assert!(
            self.max_err < F64_TIE / 2.0,
            "our logits differ from the f64 reference by {:.2e}, which no longer justifies the \
             f64 tie threshold {F64_TIE}",
            self.max_err
        );
        let rate = self.ours_f64 as f64 / self.total as f64;
        assert!(
            rate >= MIN_F64_AGREEMENT,
            "agreement with the f64 reference {:.2}% is below {:.0}%",
            rate * 100.0,
            MIN_F64_AGREEMENT * 100.0
        );
    }
}

/// Runs (a) to (d) for one model. The build ignores the calling test when
/// the model is absent (build.rs), and the golden and f64 files are
/// committed, so anything missing here is a failure.
fn check_model(model_file: &str, golden: &str, f64_name: &str, required_in_ci: bool) -> bool {
    let path = models_dir().join(model_file);
    assert!(
        path.is_file(),
        "model {} not found{} (set WORKER_ORCD_TEST_MODELS and rebuild)",
        path.display(),
        if required_in_ci && in_ci() {
            ", and CI=true requires it"
        } else {
            ""
        }
    );
    let gpath = golden_file(golden)
        .unwrap_or_else(|| panic!("golden file {golden} not found (set WORKER_ORCD_GOLDEN_DIR)"));
    let cases = load_cases(&gpath);
    assert!(!cases.is_empty(), "{} holds no cases", gpath.display());
    // (d) the f64 reference, when its file exists (it is committed for both models).
    let f64_cases = golden_file(f64_name).map(|p| load_f64(&p));
    match &f64_cases {
        Some(r) => assert_eq!(
            r.len(),
            cases.len(),
            "{f64_name} and {golden} hold different numbers of cases; rerun tools/reference_f64.py"
        ),
        None => panic!("{f64_name} not found; it is committed under tests/golden_data (see tools/reference_f64.py)"),
    }
    let mut tally = F64Tally::default();
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open model");
    let (cfg, w) = arch::from_gguf(&g).expect("architecture");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let opts = LoadOptions {
        max_context: 512,
        kv_pool_tokens: 0,
        max_sequences: 1,
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
        if let Some(r) = &f64_cases {
            tally.case(
                ci,
                c,
                &r[ci],
                &ours,
                |i| &exact[p - 1 + i],
                |i| &mimic[p - 1 + i],
            );
        }
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
    if f64_cases.is_some() {
        tally.report(model_file);
    }
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
#[cfg_attr(
    not(test_model_smollm2),
    ignore = "SmolLM2-135M-Instruct.Q4_1.gguf is not in WORKER_ORCD_TEST_MODELS (ci/fetch-models.sh)"
)]
fn smollm2_matches_llama_cpp() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smol-greedy.jsonl",
        "smol-f64.jsonl",
        true,
    );
}

#[test]
#[cfg_attr(
    not(test_model_qwen),
    ignore = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf is not in WORKER_ORCD_TEST_MODELS"
)]
fn qwen25_coder_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen-greedy.jsonl",
        "qwen-f64.jsonl",
        false,
    );
}
