//! `worker-orcd bench --concurrency 1,8,32,64`: many sequences at once
//! through continuous batching (issue 11 point 7, engine level). Prints a
//! table and writes CSV and JSON beside the single-sequence bench's files.
//! Measurements only: nothing here asserts a speed.
//!
//! A level of N submits N sequences at one instant t0, each with its own
//! `--prompt-tokens` synthetic prompt (the bench's scheme, shifted per
//! sequence so no two prompts are equal) and `--gen-tokens` greedy tokens
//! generated through end-of-generation tokens, so every length is fixed.
//! They run through `engine::sched::Batch`, prompts cut into the engine's
//! own prefill chunks, as the daemon cuts them: as many are admitted as the engine accepts
//! and the rest wait in order, joining as running ones leave. An engine that
//! holds fewer than N at once (its pool or its step buffers are smaller)
//! therefore runs the level as admission allows, and the table says how
//! many ran together at most; the peer's figure is shown only for levels
//! that ran all at once, as the peer's did. Each level runs `--warmup` repetitions that are not reported, then
//! `--reps` measured ones; the table shows each figure's median over them,
//! and decode tokens/s also with its mean and standard deviation. Where the
//! peer ran the same level on the same card (llama-batched-bench, 128 + 128
//! tokens, `../shared/GUIDE.md` §4), its figure and the ratio stand beside
//! ours; an SVG plots decode tokens/s against concurrency.
//!
//! Definitions (the same in the table, the CSV and the JSON):
//! - TTFT of a sequence: from t0 to the instant its first token is sampled,
//!   so time spent waiting for admission counts.
//! - Inter-token latency (ITL): every gap between two consecutive sampled
//!   tokens of one sequence, pooled over all sequences of the level.
//! - Decode tokens/s: the tokens sampled after each sequence's first one
//!   (N × (gen − 1)) divided by the decode phase, which runs from the
//!   earliest first token of the level to its last sampled token. When the
//!   engine holds all N at once the first tokens come from one step and this
//!   is llama-batched-bench's S_TG; when sequences wait, the later ones'
//!   prefills fall inside the phase, as they do for a server under that load.
//! - Wall time: from t0 until the last sequence leaves the batch.
//! - Percentiles are nearest-rank ([`nearest_rank`]); the median of the
//!   repetitions is the nearest-rank 50th percentile, the middle one for an
//!   odd number of repetitions.

use super::bench_plot::{Panel, Series};
use super::bench_report::RunStamp;
use crate::engine::sched::{Batch, StepPhases};
use crate::engine::sequence::{EventSink, GenerationParams, Prompt, Sequence};
use crate::engine::{Engine, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::model::tokenizer::Tokenizer;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest level `--concurrency` accepts.
pub const MAX_LEVEL: usize = 1024;
/// Most levels one `--concurrency` list may name.
pub const MAX_LEVELS: usize = 16;

/// The bench's synthetic prompt for sequence `seq`: ids spread over the
/// vocabulary, deterministic. Sequence 0 is the single-sequence bench's
/// prompt; every further sequence is shifted by a prime so prompts differ.
pub fn synthetic_prompt(n_tokens: usize, vocab: usize, seq: usize) -> Vec<u32> {
    let vocab = vocab.max(1) as u64;
    let shift = seq as u64 * 104_729;
    (0..n_tokens as u64)
        .map(|i| ((i * 7919 + 1000 + shift) % vocab) as u32)
        .collect()
}

/// Parse a `--concurrency` list such as `1,8,32,64`: 1..=[`MAX_LEVELS`]
/// levels, each in 1..=[`MAX_LEVEL`] (INVALID_PARAMS otherwise).
pub fn parse_levels(text: &str) -> Result<Vec<usize>> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.len() > MAX_LEVELS {
        return Err(WorkerError::invalid(format!(
            "--concurrency names {} levels; at most {MAX_LEVELS} are accepted",
            items.len()
        )));
    }
    items.iter().map(|s| parse_level(s)).collect()
}

fn parse_level(item: &str) -> Result<usize> {
    let bad = || {
        WorkerError::invalid(format!(
            "--concurrency: `{item}` is not a level; give whole numbers from 1 to {MAX_LEVEL} \
             separated by commas, like 1,8,32,64"
        ))
    };
    match item.parse::<usize>() {
        Ok(n) if (1..=MAX_LEVEL).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

/// The nearest-rank `p`th percentile of `values` (in any order): the value
/// of rank ⌈p·n/100⌉ once sorted, so always one of the values. None when
/// there are none or `p` is outside (0, 100].
pub fn nearest_rank(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    // p·n first, so whole-number percentiles of whole counts stay exact.
    let rank = (p * v.len() as f64 / 100.0).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

/// What the sweep needs besides the engine and its levels.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Untimed repetitions per level, before the measured ones.
    pub warmup: usize,
    /// Measured repetitions per level.
    pub reps: usize,
    pub vocab: usize,
    /// Most prompt tokens one sequence feeds a step: the engine's prefill
    /// chunk, which the daemon's batcher uses too.
    pub prefill_chunk: usize,
}

/// Records when each token of one sequence was sampled.
#[derive(Debug, Default)]
struct Stamps {
    sampled: Vec<Instant>,
}

impl EventSink for Stamps {
    fn check(&mut self) -> Result<()> {
        Ok(())
    }

    fn token(&mut self, _index: u64, _text: String) -> Result<()> {
        Ok(())
    }

    fn sampled(&mut self) {
        self.sampled.push(Instant::now());
    }
}

/// One repetition of one level, as measured.
#[derive(Debug, Clone)]
pub struct LevelRun {
    pub concurrency: usize,
    /// Token events each sequence delivered, in submission order.
    pub tokens_out: Vec<u64>,
    /// Most sequences in the batch at once.
    pub max_running: usize,
    pub wall: Duration,
    pub ttft: Vec<Duration>,
    pub itl: Vec<Duration>,
    /// Tokens sampled after each sequence's first one.
    pub decode_tokens: usize,
    /// Earliest first token to last sampled token.
    pub decode_phase: Duration,
    /// Where the batch's steps spent their time.
    pub phases: StepPhases,
}

/// One level's figures: each the median over the measured repetitions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LevelSummary {
    pub concurrency: usize,
    pub reps: usize,
    /// Most sequences running at once (the largest seen in any repetition).
    pub max_running: usize,
    pub wall_s: f64,
    /// Median over the repetitions; its mean and standard deviation follow.
    pub decode_tok_s: f64,
    pub decode_tok_s_mean: f64,
    pub decode_tok_s_std_dev: f64,
    /// The peer's figure for this level, where it ran it on the same card
    /// (filled in by the bench, which knows the card and file).
    pub peer_decode_tok_s: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    /// Mean per step, in ms, of handing the step to the engine, of selecting
    /// the samples (waiting for the device on CUDA) and of the host's work
    /// per sequence ([`StepPhases`]).
    pub step_ms: [f64; 3],
}

/// Run every level: `cfg.warmup` untimed repetitions, then `cfg.reps` measured ones.
pub fn run_sweep(
    eng: &mut dyn Engine,
    tok: &Tokenizer,
    levels: &[usize],
    cfg: &SweepConfig,
) -> Result<Vec<LevelSummary>> {
    let mut out = Vec::with_capacity(levels.len());
    for &n in levels {
        for _ in 0..cfg.warmup {
            run_level(eng, tok, n, cfg)?;
        }
        let runs = (0..cfg.reps)
            .map(|_| run_level(eng, tok, n, cfg))
            .collect::<Result<Vec<_>>>()?;
        out.push(summarize(n, &runs));
    }
    Ok(out)
}

/// The N sequences of one level, in submission order.
fn level_sequences<'t>(
    tok: &'t Tokenizer,
    n: usize,
    cfg: &SweepConfig,
    max_ctx: usize,
) -> Result<VecDeque<Sequence<'t, Stamps>>> {
    (0..n)
        .map(|s| {
            let params = GenerationParams {
                max_tokens: cfg.gen_tokens as u32,
                sampling: SamplingParams::GREEDY,
                seed: s as u64,
                stop: Vec::new(),
            };
            let prompt = Prompt::new(synthetic_prompt(cfg.prompt_tokens, cfg.vocab, s), max_ctx)?;
            Ok(Sequence::new(tok, prompt, params, Stamps::default())?.ignoring_eos())
        })
        .collect()
}

/// Admit waiting sequences in order until the engine says it is full.
fn admit_waiting<'t>(
    batch: &mut Batch<'t, Stamps>,
    eng: &mut dyn Engine,
    waiting: &mut VecDeque<Sequence<'t, Stamps>>,
) -> Result<()> {
    while let Some(seq) = waiting.pop_front() {
        match batch.admit(eng, seq) {
            Ok(()) => {}
            // Full for now: it waits for a running sequence to leave.
            Err((seq, WorkerError::Busy { .. })) if !batch.is_empty() => {
                waiting.push_front(seq);
                break;
            }
            Err((_, WorkerError::Busy { message, .. })) => {
                return Err(WorkerError::internal(format!(
                    "the engine refused a sequence while none was running ({message})"
                )));
            }
            Err((_, e)) => return Err(e),
        }
    }
    Ok(())
}

/// One repetition of level `n`: submit all at t0, step until all have left.
pub fn run_level(
    eng: &mut dyn Engine,
    tok: &Tokenizer,
    n: usize,
    cfg: &SweepConfig,
) -> Result<LevelRun> {
    let mut waiting = level_sequences(tok, n, cfg, eng.max_context())?;
    let mut batch = Batch::new(cfg.prefill_chunk);
    let mut finished: Vec<(u64, Vec<Instant>)> = Vec::with_capacity(n);
    let mut max_running = 0;
    let t0 = Instant::now();
    while !(waiting.is_empty() && batch.is_empty()) {
        admit_waiting(&mut batch, eng, &mut waiting)?;
        max_running = max_running.max(batch.len());
        for (seq, outcome) in batch.step(eng) {
            outcome?;
            finished.push((seq.tokens_out(), seq.into_sink().sampled));
        }
    }
    let wall = t0.elapsed();
    let mut run = measure(n, t0, wall, max_running, finished);
    run.phases = batch.phases();
    Ok(run)
}

/// The figures of one repetition from each sequence's sampling instants.
fn measure(
    n: usize,
    t0: Instant,
    wall: Duration,
    max_running: usize,
    finished: Vec<(u64, Vec<Instant>)>,
) -> LevelRun {
    let firsts: Vec<Instant> = finished
        .iter()
        .filter_map(|(_, s)| s.first().copied())
        .collect();
    let last = finished.iter().filter_map(|(_, s)| s.last().copied()).max();
    let decode_phase = match (firsts.iter().min(), last) {
        (Some(&a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    LevelRun {
        concurrency: n,
        tokens_out: finished.iter().map(|(t, _)| *t).collect(),
        max_running,
        wall,
        ttft: firsts
            .iter()
            .map(|f| f.saturating_duration_since(t0))
            .collect(),
        itl: finished
            .iter()
            .flat_map(|(_, s)| s.windows(2).map(|w| w[1].saturating_duration_since(w[0])))
            .collect(),
        decode_tokens: finished
            .iter()
            .map(|(_, s)| s.len().saturating_sub(1))
            .sum(),
        decode_phase,
        phases: StepPhases::default(),
    }
}

fn ms(d: &[Duration]) -> Vec<f64> {
    d.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// Medians over repetitions of each repetition's figures.
fn summarize(n: usize, runs: &[LevelRun]) -> LevelSummary {
    let med = |f: &dyn Fn(&LevelRun) -> Option<f64>| -> Option<f64> {
        let v: Option<Vec<f64>> = runs.iter().map(f).collect();
        nearest_rank(&v?, 50.0)
    };
    let rates: Vec<f64> = runs
        .iter()
        .map(|r| {
            let s = r.decode_phase.as_secs_f64();
            if s > 0.0 {
                r.decode_tokens as f64 / s
            } else {
                0.0
            }
        })
        .collect();
    let decode = super::bench_report::Stats::of(&rates);
    LevelSummary {
        concurrency: n,
        reps: runs.len(),
        max_running: runs.iter().map(|r| r.max_running).max().unwrap_or(0),
        wall_s: med(&|r| Some(r.wall.as_secs_f64())).unwrap_or(0.0),
        decode_tok_s: decode.map_or(0.0, |d| d.median),
        decode_tok_s_mean: decode.map_or(0.0, |d| d.mean),
        decode_tok_s_std_dev: decode.map_or(0.0, |d| d.std_dev),
        peer_decode_tok_s: None,
        ttft_p50_ms: med(&|r| nearest_rank(&ms(&r.ttft), 50.0)),
        ttft_p99_ms: med(&|r| nearest_rank(&ms(&r.ttft), 99.0)),
        itl_p50_ms: med(&|r| nearest_rank(&ms(&r.itl), 50.0)),
        itl_p99_ms: med(&|r| nearest_rank(&ms(&r.itl), 99.0)),
        step_ms: [0, 1, 2].map(|i| {
            med(&|r| {
                let p = r.phases;
                let d = [p.enqueue, p.select, p.host][i];
                Some(d.as_secs_f64() * 1e3 / p.steps.max(1) as f64)
            })
            .unwrap_or(0.0)
        }),
    }
}

/// A figure for the table: `-` where there is none (one generated token
/// has no inter-token gap).
pub fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// A figure for the CSV: empty where there is none.
pub fn csv_cell(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.4}"))
}

/// Print the sweep's table, with a note on levels that waited for admission
/// and the peer's source when a level has a peer figure.
pub fn print_table(
    levels: &[LevelSummary],
    cfg: &SweepConfig,
    run: &RunStamp,
    peer_source: Option<&str>,
) {
    println!();
    println!(
        "concurrency sweep: {} prompt + {} generated tokens per sequence, all submitted at once, \
         prefill chunks of {}, median of {} after {} warm-up",
        cfg.prompt_tokens, cfg.gen_tokens, cfg.prefill_chunk, cfg.reps, cfg.warmup
    );
    println!("{}", run.line());
    println!(
        "{:>6} {:>11} {:>9} {:>24} {:>18} {:>13} {:>13} {:>12} {:>12} {:>24}",
        "seqs",
        "max running",
        "wall s",
        "decode tok/s (mean ± sd)",
        "peer decode",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "ms/step enq/select/host"
    );
    for l in levels {
        let [enq, select, host] = l.step_ms;
        let peer = l.peer_decode_tok_s.map_or_else(
            || "-".to_string(),
            |p| format!("{p:.0} ({:.2}x)", l.decode_tok_s / p),
        );
        println!(
            "{:>6} {:>11} {:>9.3} {:>24} {:>18} {:>13} {:>13} {:>12} {:>12} {:>24}",
            l.concurrency,
            l.max_running,
            l.wall_s,
            format!(
                "{:.1} ({:.1} ± {:.1})",
                l.decode_tok_s, l.decode_tok_s_mean, l.decode_tok_s_std_dev
            ),
            peer,
            cell(l.ttft_p50_ms, 2),
            cell(l.ttft_p99_ms, 2),
            cell(l.itl_p50_ms, 3),
            cell(l.itl_p99_ms, 3),
            format!("{enq:.3}/{select:.3}/{host:.3}")
        );
    }
    if let Some(l) = levels.iter().find(|l| l.max_running < l.concurrency) {
        println!(
            "note: the engine ran at most {} sequences at once; at {} and above the others waited \
             for admission, and their waiting time is part of their TTFT",
            l.max_running, l.concurrency
        );
    }
    if let Some(source) = peer_source {
        println!("peer: {source}");
    }
}

/// Everything the sweep's JSON file holds.
#[derive(Debug, Serialize)]
pub struct SweepReport<'a> {
    pub run: &'a RunStamp,
    pub model: &'a str,
    pub backend: &'a str,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub max_prefill: usize,
    pub warmup_reps: usize,
    pub levels: &'a [LevelSummary],
    pub peer_source: Option<&'static str>,
}

/// Decode tokens/s against the number of sequences, ours and the peer's.
pub fn plot(r: &SweepReport<'_>) -> String {
    let ours = Series {
        name: "worker-orcd".into(),
        points: r
            .levels
            .iter()
            .map(|l| (l.concurrency as f64, l.decode_tok_s))
            .collect(),
    };
    let peer = Series {
        name: "llama.cpp (same card)".into(),
        points: r
            .levels
            .iter()
            .filter_map(|l| Some((l.concurrency as f64, l.peer_decode_tok_s?)))
            .collect(),
    };
    let mut series = vec![ours];
    if !peer.points.is_empty() {
        series.push(peer);
    }
    super::bench_plot::svg(&[Panel {
        title: format!(
            "decode, all sequences together: {} on {}",
            r.model, r.backend
        ),
        x_label: format!(
            "sequences at once ({} + {} tokens each)",
            r.prompt_tokens, r.gen_tokens
        ),
        y_label: "tokens/s (median)".into(),
        series,
    }])
}

/// Write `<base>.json`, `<base>.csv` and `<base>.svg` (the base from
/// [`super::bench_report::claim_stem`], so no earlier run is overwritten).
pub fn write_files(base: &Path, r: &SweepReport<'_>) -> Result<()> {
    use super::bench_report::write_beside;
    let json = serde_json::to_string_pretty(r).map_err(|e| WorkerError::internal(e.to_string()))?;
    write_beside(base, "json", &(json + "\n"))?;
    let mut csv = String::from(
        "timestamp,commit,source_sha256,model,backend,device,prompt_tokens,gen_tokens,max_prefill,warmup_reps,\
         concurrency,reps,max_running,wall_s,decode_tok_s,decode_tok_s_mean,decode_tok_s_std_dev,peer_decode_tok_s,\
         ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,step_enqueue_ms,step_select_ms,step_host_ms\n",
    );
    for l in r.levels {
        csv += &format!(
            "{},{},{},{},{},\"{}\",{},{},{},{},{},{},{},{:.4},{:.2},{:.2},{:.2},{},{},{},{},{},{:.4},{:.4},{:.4}\n",
            r.run.timestamp,
            r.run.commit,
            r.run.source_sha256,
            r.model,
            r.backend,
            r.run.device.replace('"', "'"),
            r.prompt_tokens,
            r.gen_tokens,
            r.max_prefill,
            r.warmup_reps,
            l.concurrency,
            l.reps,
            l.max_running,
            l.wall_s,
            l.decode_tok_s,
            l.decode_tok_s_mean,
            l.decode_tok_s_std_dev,
            csv_cell(l.peer_decode_tok_s),
            csv_cell(l.ttft_p50_ms),
            csv_cell(l.ttft_p99_ms),
            csv_cell(l.itl_p50_ms),
            csv_cell(l.itl_p99_ms),
            l.step_ms[0],
            l.step_ms[1],
            l.step_ms[2]
        );
    }
    write_beside(base, "csv", &csv)?;
    write_beside(base, "svg", &plot(r))?;
    eprintln!("wrote {}.json, .csv and .svg", base.display());
    Ok(())
}

#[cfg(test)]
#[path = "bench_sweep_tests.rs"]
mod tests;
