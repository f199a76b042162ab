//! Golden conformance through the [`Engine`] trait: one test body that runs
//! on the CPU reference path (tests/golden.rs) and on the CUDA backend
//! (engine::cuda::tests), so both are held to the same rule on the real GGUF
//! files (issue 3 point 7, issue 5 point 6; WORKER-4700, 4710).
//!
//! The inputs are two recordings of independent implementations for the same
//! prompts: llama.cpp's greedy continuation (`*-greedy.jsonl`, with its
//! top-1/top-2 gap per position) and `tools/reference_f64.py`'s float64
//! forward pass over the same teacher-forced sequence (`*-f64.jsonl`: argmax,
//! gap and top-8 logits per position). The engine is driven the way a job
//! drives it: prefill the prompt, then one decode step per golden token
//! (teacher forcing), reading the logits after each step.
//!
//! The rule, stated once for every backend:
//! - wherever the f64 gap is >= [`F64_TIE`], our argmax is the f64 argmax
//!   (a smaller gap is a tie for any f32 implementation);
//! - our logits are within [`MAX_LOGIT_ERR`] (absolute) of the f64 logits over
//!   the f64 top 8 at every position, so no gap >= F64_TIE can flip;
//! - overall agreement with f64 is >= [`MIN_F64_AGREEMENT`], and with
//!   llama.cpp >= [`MIN_LLAMA_AGREEMENT`] (llama.cpp rounds activations to 8
//!   bits, and f64 shows its token is not the exact argmax where we differ).
//!
//! Compiled for tests and test-hooks builds only.

use super::{sampler, Engine, SamplingParams};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// An f64 top-1/top-2 gap below this is a tie for an f32 implementation.
pub const F64_TIE: f64 = 1e-2;
/// Largest allowed |our logit - f64 logit| over the f64 top 8 (F64_TIE / 2).
pub const MAX_LOGIT_ERR: f64 = F64_TIE / 2.0;
pub const MIN_F64_AGREEMENT: f64 = 0.99;
pub const MIN_LLAMA_AGREEMENT: f64 = 0.95;

/// One prompt of a golden pair: llama.cpp's recording joined with f64's.
pub struct GoldenCase {
    pub prompt_tokens: Vec<u32>,
    /// llama.cpp's greedy tokens, fed back as the teacher-forced sequence.
    pub llama: Vec<u32>,
    pub f64_argmax: Vec<u32>,
    pub f64_gap: Vec<f64>,
    pub f64_top_ids: Vec<Vec<u32>>,
    pub f64_top_logits: Vec<Vec<f64>>,
}

/// What one engine did on one model's golden set.
#[derive(Debug, Default)]
pub struct Conformance {
    pub positions: usize,
    pub agree_f64: usize,
    pub agree_llama: usize,
    /// Positions with an f64 gap >= F64_TIE, and how many of them we matched.
    pub decisive: usize,
    pub decisive_ok: usize,
    pub max_logit_err: f64,
    pub failures: Vec<String>,
}

impl Conformance {
    /// Err with every broken rule, in words.
    pub fn check(&self) -> Result<(), String> {
        let mut bad = self.failures.clone();
        let rate = |n: usize| n as f64 / self.positions.max(1) as f64;
        if self.positions == 0 {
            bad.push("no positions were compared".into());
        }
        if self.max_logit_err >= MAX_LOGIT_ERR {
            bad.push(format!(
                "largest logit error against f64 {:.2e} is not below {MAX_LOGIT_ERR:.0e}",
                self.max_logit_err
            ));
        }
        if rate(self.agree_f64) < MIN_F64_AGREEMENT {
            bad.push(format!(
                "agreement with f64 {}/{} is below {MIN_F64_AGREEMENT}",
                self.agree_f64, self.positions
            ));
        }
        if rate(self.agree_llama) < MIN_LLAMA_AGREEMENT {
            bad.push(format!(
                "agreement with llama.cpp {}/{} is below {MIN_LLAMA_AGREEMENT}",
                self.agree_llama, self.positions
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("\n"))
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{}/{} positions = f64 argmax ({}/{} where the f64 gap >= {F64_TIE}), {}/{} = llama.cpp, \
             max |logit - f64| {:.2e} (limit {MAX_LOGIT_ERR:.0e})",
            self.agree_f64,
            self.positions,
            self.decisive_ok,
            self.decisive,
            self.agree_llama,
            self.positions,
            self.max_logit_err
        )
    }
}

/// Folders searched for golden files: `$WORKER_ORCD_GOLDEN_DIR`,
/// `$WORKER_ORCD_GOLDEN`, then the committed `tests/golden_data`.
pub fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [crate::env::GOLDEN_DIR, crate::env::GOLDEN]
        .iter()
        .filter_map(|v| v.get().map(PathBuf::from))
        .collect();
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden_data"));
    dirs
}

fn find(name: &str) -> Option<PathBuf> {
    golden_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn ids(v: &Value) -> Result<Vec<u32>, String> {
    v.as_array()
        .ok_or("expected an array of token ids")?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| format!("bad token id {x}"))
        })
        .collect()
}

fn floats(v: &Value) -> Result<Vec<f64>, String> {
    v.as_array()
        .ok_or("expected an array of numbers")?
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| format!("bad number {x}")))
        .collect()
}

fn lines(path: &Path) -> Result<Vec<Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

/// The joined golden set `golden` + `f64_name` for the model file with
/// SHA-256 `model_sha256`; None (with the reason) when a file is absent.
pub fn load(
    golden: &str,
    f64_name: &str,
    model_sha256: &str,
) -> Result<Option<Vec<GoldenCase>>, String> {
    let (Some(gp), Some(fp)) = (find(golden), find(f64_name)) else {
        return Ok(None);
    };
    let (g, f) = (lines(&gp)?, lines(&fp)?);
    if g.len() != f.len() {
        return Err(format!(
            "{golden} and {f64_name} hold different numbers of cases"
        ));
    }
    let mut cases = Vec::new();
    for (ci, (g, f)) in g.iter().zip(&f).enumerate() {
        let sha = f["model_sha256"].as_str().unwrap_or_default();
        if sha != model_sha256 {
            return Err(format!(
                "{f64_name} case {ci} was recorded for model SHA-256 {sha}, not this file's {model_sha256}"
            ));
        }
        let case = GoldenCase {
            prompt_tokens: ids(&g["prompt_tokens"])?,
            llama: ids(&g["greedy_tokens"])?,
            f64_argmax: ids(&f["argmax"])?,
            f64_gap: floats(&f["gap"])?,
            f64_top_ids: f["top_ids"]
                .as_array()
                .ok_or("top_ids")?
                .iter()
                .map(ids)
                .collect::<Result<_, _>>()?,
            f64_top_logits: f["top_logits"]
                .as_array()
                .ok_or("top_logits")?
                .iter()
                .map(floats)
                .collect::<Result<_, _>>()?,
        };
        let n = case.llama.len();
        if ids(&f["prompt_tokens"])? != case.prompt_tokens
            || ids(&f["greedy_tokens"])? != case.llama
            || [
                case.f64_argmax.len(),
                case.f64_gap.len(),
                case.f64_top_ids.len(),
                case.f64_top_logits.len(),
            ]
            .iter()
            .any(|&l| l != n)
        {
            return Err(format!(
                "case {ci}: {f64_name} does not describe the sequence of {golden}"
            ));
        }
        cases.push(case);
    }
    Ok(Some(cases))
}

/// Teacher-force every case through `engine` and score it against the rule.
pub fn run(engine: &mut dyn Engine, cases: &[GoldenCase]) -> crate::error::Result<Conformance> {
    let mut c = Conformance::default();
    for (ci, case) in cases.iter().enumerate() {
        engine.reset();
        engine.forward(&case.prompt_tokens, 0)?;
        let mut pos = case.prompt_tokens.len();
        for i in 0..case.llama.len() {
            let logits = engine.logits()?;
            let ours = sampler::argmax(&logits);
            c.positions += 1;
            c.agree_f64 += usize::from(ours == case.f64_argmax[i]);
            c.agree_llama += usize::from(ours == case.llama[i]);
            for (&t, &want) in case.f64_top_ids[i].iter().zip(&case.f64_top_logits[i]) {
                let got = logits.get(t as usize).copied().unwrap_or(f32::NAN);
                let err = (f64::from(got) - want).abs();
                // NaN must fail, not vanish in a max().
                c.max_logit_err = if err.is_nan() {
                    f64::INFINITY
                } else {
                    c.max_logit_err.max(err)
                };
            }
            if case.f64_gap[i] >= F64_TIE {
                c.decisive += 1;
                if ours == case.f64_argmax[i] {
                    c.decisive_ok += 1;
                } else {
                    c.failures.push(format!(
                        "case {ci} pos {i}: ours {ours} but f64 picks {} with a gap of {:.4}",
                        case.f64_argmax[i], case.f64_gap[i]
                    ));
                }
            }
            if i + 1 < case.llama.len() {
                engine.forward(&[case.llama[i]], pos)?;
                pos += 1;
            }
        }
    }
    Ok(c)
}

/// The real models with committed golden sets: (file, golden, f64).
pub const REAL_MODELS: [(&str, &str, &str); 2] = [
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smol-greedy.jsonl",
        "smol-f64.jsonl",
    ),
    (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen-greedy.jsonl",
        "qwen-f64.jsonl",
    ),
];

/// The engine contract's edge cases, held the same on every backend (issue
/// 11, "make the engines agree"): logits or a sample before any forward, an
/// empty forward, a position that does not continue the sequence, a token
/// outside the vocabulary and a step past the context are each refused with
/// INVALID_PARAMS and change nothing, so a valid step still works after them.
/// Returns every broken rule, in words; empty when the engine holds them all.
pub fn edge_cases(e: &mut dyn Engine) -> Vec<String> {
    use crate::engine::SamplingParams;
    let mut bad = Vec::new();
    fn expect_invalid(bad: &mut Vec<String>, what: &str, r: crate::error::Result<()>) {
        match r {
            Err(err) if err.code() == "INVALID_PARAMS" => {}
            Err(err) => bad.push(format!(
                "{what}: refused with {} instead of INVALID_PARAMS",
                err.code()
            )),
            Ok(()) => bad.push(format!("{what}: accepted")),
        }
    }
    let vocab = e.config().vocab_size;
    let ctx = e.max_context();
    e.reset();
    expect_invalid(&mut bad, "logits before any forward", e.logits().map(drop));
    expect_invalid(
        &mut bad,
        "a sample before any forward",
        e.sample(&SamplingParams::GREEDY, 0.0).map(drop),
    );
    expect_invalid(&mut bad, "an empty forward", e.forward(&[], 0));
    expect_invalid(
        &mut bad,
        "a forward at position 1 of an empty sequence",
        e.forward(&[1], 1),
    );
    expect_invalid(
        &mut bad,
        "a token id equal to the vocabulary size",
        e.forward(&[vocab as u32], 0),
    );
    let past: Vec<u32> = vec![1; ctx + 1];
    expect_invalid(
        &mut bad,
        "a forward longer than the context",
        e.forward(&past, 0),
    );
    // Nothing above changed the sequence: a valid step still starts at 0.
    match e.forward(&[1, 2], 0).and_then(|()| e.forward(&[3], 2)) {
        Ok(()) => {}
        Err(err) => bad.push(format!(
            "a valid step after the refusals failed: {}",
            err.message()
        )),
    }
    match e.logits() {
        Ok(l) if l.len() == vocab => {}
        Ok(l) => bad.push(format!(
            "logits have {} values for a vocabulary of {vocab}",
            l.len()
        )),
        Err(err) => bad.push(format!(
            "logits after a valid step failed: {}",
            err.message()
        )),
    }
    expect_invalid(
        &mut bad,
        "a forward that skips a position",
        e.forward(&[4], 4),
    );
    e.reset();
    expect_invalid(&mut bad, "logits after a reset", e.logits().map(drop));
    bad
}

/// The batched interface's contract, held the same on every backend (issue
/// 11 points 3-5): admission beyond the context or of nothing is refused
/// with INVALID_PARAMS and takes no page; a step over a sequence that is not
/// admitted is refused; an admitted sequence stepped through its prompt and
/// one decode token has, bit for bit, the logits the single-sequence calls
/// give for the same tokens; after release its pages are free again and its
/// logits are gone. Returns every broken rule, in words.
pub fn batched_contract(e: &mut dyn Engine) -> Vec<String> {
    use crate::engine::batch::{SeqSlot, StepChunk};
    let mut bad = Vec::new();
    let ctx = e.max_context();
    let free_before = e.kv_usage().free_tokens();
    for (what, positions) in [
        ("more positions than the context", ctx + 1),
        ("no positions", 0),
    ] {
        match e.admit(positions) {
            Err(err) if err.code() == "INVALID_PARAMS" => {}
            Err(err) => bad.push(format!(
                "admitting {what}: {} instead of INVALID_PARAMS",
                err.code()
            )),
            Ok(s) => {
                bad.push(format!("admitting {what}: accepted"));
                e.release(s);
            }
        }
    }
    if e.kv_usage().free_tokens() != free_before {
        bad.push("a refused admission took pages".into());
    }
    let ghost = [StepChunk {
        seq: SeqSlot(u32::MAX),
        tokens: &[1],
        pos: 0,
    }];
    match e.step(&ghost) {
        Err(err) if err.code() == "INVALID_PARAMS" => {}
        other => bad.push(format!("a step over a sequence never admitted: {other:?}")),
    }
    // The single-sequence reference for the same tokens.
    let (prompt, next) = ([3u32, 1, 4, 1], 5u32);
    e.reset();
    let reference = (|| {
        e.forward(&prompt, 0)?;
        let first = e.logits()?;
        e.forward(&[next], prompt.len())?;
        Ok::<_, crate::error::WorkerError>((first, e.logits()?))
    })();
    e.reset();
    let batched = (|| {
        let s = e.admit(prompt.len() + 1)?;
        let out = (|| {
            e.step(&[StepChunk {
                seq: s,
                tokens: &prompt,
                pos: 0,
            }])?;
            let first = e.seq_logits(s)?;
            e.step(&[StepChunk {
                seq: s,
                tokens: &[next],
                pos: prompt.len(),
            }])?;
            Ok::<_, crate::error::WorkerError>((first, e.seq_logits(s)?))
        })();
        e.release(s);
        match e.seq_logits(s) {
            Err(err) if err.code() == "INVALID_PARAMS" => {}
            other => bad.push(format!(
                "logits of a released sequence: {:?}",
                other.map(|l| l.len())
            )),
        }
        out
    })();
    match (reference, batched) {
        (Ok(a), Ok(b)) => {
            let same = |x: &[f32], y: &[f32]| {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
            };
            if !same(&a.0, &b.0) || !same(&a.1, &b.1) {
                bad.push("the batched interface's logits differ from the single-sequence calls' for the same tokens".into());
            }
        }
        (a, b) => bad.push(format!(
            "a valid run failed: single-sequence {:?}, batched {:?}",
            a.err().map(|e| e.message().to_string()),
            b.err().map(|e| e.message().to_string())
        )),
    }
    if e.kv_usage().free_tokens() != free_before {
        bad.push(format!(
            "pages were not all returned: {} positions free, {free_before} before",
            e.kv_usage().free_tokens()
        ));
    }
    bad
}

/// Sampling after [`Engine::prefetch_samples`] picks what it picks without
/// it (issue 11 point 7): `n` sequences take one prompt step together, then
/// each samples with its own parameters (greedy, small top-k, the full
/// candidate pool, nucleus) and several draws, once without a prefetch and
/// once after one for all of them. Returns the broken rules (none = pass).
pub fn prefetch_samples_match(e: &mut dyn Engine, n: usize) -> Vec<String> {
    use crate::engine::batch::StepChunk;
    let vocab = e.config().vocab_size as u32;
    let params = [
        SamplingParams::GREEDY,
        SamplingParams {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 1.2,
            top_k: 40,
            top_p: 0.9,
        },
    ];
    let draws = [0.03f32, 0.41, 0.77, 0.999];
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            (0..2 + i)
                .map(|j| ((i * 31 + j * 7919 + 1) as u32) % vocab)
                .collect()
        })
        .collect();
    let run = |e: &mut dyn Engine| -> crate::error::Result<(Vec<u32>, Vec<u32>)> {
        let slots = prompts
            .iter()
            .map(|p| e.admit(p.len() + 1))
            .collect::<crate::error::Result<Vec<_>>>()?;
        let chunks: Vec<StepChunk> = slots
            .iter()
            .zip(&prompts)
            .map(|(&seq, p)| StepChunk {
                seq,
                tokens: p,
                pos: 0,
            })
            .collect();
        e.step(&chunks)?;
        let pick = |e: &mut dyn Engine| -> crate::error::Result<Vec<u32>> {
            let mut out = Vec::new();
            for (i, &s) in slots.iter().enumerate() {
                for d in draws {
                    out.push(e.seq_sample(s, &params[i % params.len()], d)?);
                }
            }
            Ok(out)
        };
        let plain = pick(e)?;
        let wants: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, sampler::candidates_needed(&params[i % params.len()])))
            .collect();
        e.prefetch_samples(&wants)?;
        let prefetched = pick(e)?;
        for s in slots {
            e.release(s);
        }
        Ok((plain, prefetched))
    };
    match run(e) {
        Ok((plain, prefetched)) if plain == prefetched => Vec::new(),
        Ok((plain, prefetched)) => vec![format!(
            "sampling after a prefetch differs: without {plain:?}, with {prefetched:?}"
        )],
        Err(err) => vec![format!("the prefetch run failed: {}", err.message())],
    }
}

/// Batch invariance, held the same on every backend (issue 11 point 5;
/// WORKER-4710 under batching): `n` sequences of different prompt lengths,
/// teacher-forced through `decode` tokens each, give every sequence the same
/// logits, bit for bit, whether it runs alone or beside the others, arriving
/// one step apart so prompt chunks and decode rows of different lengths
/// share steps. Returns every broken rule, in words.
pub fn batch_invariance(e: &mut dyn Engine, n: usize, decode: usize) -> Vec<String> {
    use crate::engine::batch::{SeqSlot, StepChunk};
    let vocab = e.config().vocab_size as u32;
    // Request i: a prompt of 1 + 5i tokens (capped to half the context), then
    // `decode` forced tokens; all ids spread over the vocabulary.
    let half = (e.max_context() / 2).max(1);
    let requests: Vec<(Vec<u32>, Vec<u32>)> = (0..n)
        .map(|i| {
            let len = (1 + 5 * i).min(half).min(e.prefill_chunk());
            let tok = |j: usize| ((i * 7919 + j * 104_729 + 3) as u32) % vocab;
            let prompt = (0..len).map(tok).collect();
            let forced = (len..len + decode).map(tok).collect();
            (prompt, forced)
        })
        .collect();
    type Logits = Vec<Vec<f32>>;
    // Run the requests that arrive at step `arrive[i]` through one schedule;
    // returns each request's logits after its prompt and each forced token.
    let mut run = |only: Option<usize>| -> crate::error::Result<Vec<Logits>> {
        let ids: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..n).collect(),
        };
        let mut slots: Vec<Option<SeqSlot>> = vec![None; n];
        let mut done: Vec<usize> = vec![0; n];
        let mut out: Vec<Logits> = vec![Vec::new(); n];
        let mut step_no = 0;
        let result = (|| loop {
            for &i in &ids {
                // Alone, a request starts at once; together, request i at step i.
                if slots[i].is_none() && (only.is_some() || step_no >= i) && done[i] == 0 {
                    let (p, f) = &requests[i];
                    slots[i] = Some(e.admit(p.len() + f.len())?);
                }
            }
            let mut chunks = Vec::new();
            for &i in &ids {
                let Some(s) = slots[i] else { continue };
                let (p, f) = &requests[i];
                let k = done[i];
                if k > decode {
                    continue;
                }
                chunks.push(if k == 0 {
                    StepChunk {
                        seq: s,
                        tokens: p,
                        pos: 0,
                    }
                } else {
                    StepChunk {
                        seq: s,
                        tokens: &f[k - 1..k],
                        pos: p.len() + k - 1,
                    }
                });
            }
            if chunks.is_empty() {
                if ids.iter().all(|&i| done[i] > decode) {
                    return Ok(());
                }
                step_no += 1;
                continue;
            }
            e.step(&chunks)?;
            for c in &chunks {
                let i = ids
                    .iter()
                    .copied()
                    .find(|&i| slots[i] == Some(c.seq))
                    .unwrap_or(0);
                out[i].push(e.seq_logits(c.seq)?);
                done[i] += 1;
            }
            step_no += 1;
        })();
        for s in slots.into_iter().flatten() {
            e.release(s);
        }
        result.map(|()| out)
    };
    let together = match run(None) {
        Ok(v) => v,
        Err(err) => return vec![format!("the batched run failed: {}", err.message())],
    };
    let mut bad = Vec::new();
    for i in 0..n {
        let alone = match run(Some(i)) {
            Ok(mut v) => v.swap_remove(i),
            Err(err) => {
                bad.push(format!("request {i} alone failed: {}", err.message()));
                continue;
            }
        };
        let same = alone.len() == together[i].len()
            && alone.iter().zip(&together[i]).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            });
        if !same {
            let first = alone
                .iter()
                .zip(&together[i])
                .position(|(a, b)| a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits()));
            bad.push(format!(
                "request {i} (prompt of {} tokens): logits alone and batched differ (first at output {first:?} of {})",
                requests[i].0.len(),
                alone.len()
            ));
        }
    }
    bad
}
