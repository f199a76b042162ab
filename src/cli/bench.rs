//! `worker-orcd bench`: prefill and decode speed of one model on one backend
//! (issue 3 point 10, made honest by issue 12 point 5). Prints a table and
//! writes CSV, JSON and an SVG plot of tokens/s against context length.
//! Measurements only: nothing here asserts a speed.
//!
//! Protocol (the peer's, llama-bench pp / tg): at each context point C of
//! `--context-points` (default 0, P/4, P/2 and P for `--prompt-tokens` P),
//! a prompt of C synthetic tokens is prefilled from an empty cache (prefill
//! tokens/s: C over the time to the first sampled token) and `--gen-tokens`
//! tokens are decoded after it (decode tokens/s); C = 0 is decode from an
//! empty context, llama-bench's tg128. Each point runs `--warmup` untimed
//! repetitions, then `--reps` measured ones; the table prints the median,
//! mean and standard deviation of the measured ones. Every result names the
//! card, the commit and the time, and files never overwrite an earlier run
//! ([`super::bench_report`]). A ratio to the peer (`../shared/GUIDE.md` §4)
//! is printed only for the CUDA backend on the card the peer ran on, for the
//! same file and protocol: never a GPU ratio on a CPU run.
//!
//! With `--concurrency 1,8,32,64` the same run then measures many sequences
//! at once through continuous batching (issue 11 point 7): see
//! [`super::bench_sweep`], which defines its figures and writes its own files.

use super::bench_output::{self, BenchResult, PointResult};
use super::bench_report::{self as report, Measure, RunStamp, Stats};
use super::bench_sweep;
use super::generate::{check_root, exit_code_for, make_engine, open_model, BackendArg};
use crate::engine::sequence::{EventSink, GenerationParams, Prompt, Sequence};
use crate::engine::{BackendKind, Engine, LoadOptions, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::model::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Prompt length (synthetic token ids): the largest default context
    /// point, and each sequence's prompt in the concurrency sweep.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Context lengths to measure at, e.g. 0,512,1024,2048,4096: a prompt of
    /// that many tokens is prefilled, then --gen-tokens are decoded after it
    /// (0: decode from an empty context). Default: 0, P/4, P/2, P for
    /// --prompt-tokens P.
    #[arg(long)]
    pub context_points: Option<String>,
    /// Tokens decoded one at a time at each context point.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Untimed repetitions before the measured ones, at each point and level.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Measured repetitions; the table reports their median, mean and
    /// standard deviation.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Where the CSV and JSON files go (created when missing).
    #[arg(long, default_value = "bench-results")]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub gpu_device: u32,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Run even as root (not recommended).
    #[arg(long)]
    pub allow_root: bool,
    /// Also measure many sequences at once: a comma-separated list of levels
    /// (sequences submitted together), e.g. 1,8,32,64. Not run unless given.
    #[arg(long)]
    pub concurrency: Option<String>,
    /// KV pool positions for the concurrency sweep (0 = enough for the
    /// largest level to run at once); a smaller pool makes sequences wait.
    #[arg(long, default_value_t = 0)]
    pub kv_pool_tokens: usize,
}

/// Most context points one `--context-points` list may name.
const MAX_CONTEXT_POINTS: usize = 16;

pub fn run(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error [{}]: {}", e.code(), e.message());
            exit_code_for(&e)
        }
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The card (or CPU) the run measures.
fn device_name(kind: BackendKind, gpu_device: u32, threads: usize) -> String {
    match kind {
        BackendKind::Cpu => format!("{} ({threads} threads)", cpu_name()),
        BackendKind::Cuda => match crate::gpu::probe(gpu_device) {
            Ok(d) => format!(
                "{} (GPU {}, cc {}.{}, driver {})",
                d.name, d.ordinal, d.compute_capability.0, d.compute_capability.1, d.driver_version
            ),
            Err(_) => format!("CUDA device {gpu_device}"),
        },
    }
}

/// The context points: `--context-points` when given (0..=the model's
/// context, at most [`MAX_CONTEXT_POINTS`]), else 0, P/4, P/2 and P.
/// Sorted, without repeats.
fn context_points(a: &BenchArgs) -> Result<Vec<usize>> {
    let mut points = match a.context_points.as_deref() {
        None => {
            let p = a.prompt_tokens;
            vec![0, p / 4, p / 2, p]
        }
        Some(text) => {
            let items: Vec<&str> = text.split(',').map(str::trim).collect();
            if items.len() > MAX_CONTEXT_POINTS {
                return Err(WorkerError::invalid(format!(
                    "--context-points names {} points; at most {MAX_CONTEXT_POINTS} are accepted",
                    items.len()
                )));
            }
            items
                .iter()
                .map(|i| {
                    i.parse::<usize>().map_err(|_| {
                        WorkerError::invalid(format!(
                            "--context-points: `{i}` is not a token count; give whole numbers \
                             separated by commas, like 0,512,1024,2048,4096"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    points.sort_unstable();
    points.dedup();
    Ok(points)
}

fn bench(a: &BenchArgs) -> Result<()> {
    check_root(a.allow_root)?;
    if a.prompt_tokens == 0 || a.gen_tokens == 0 || a.reps == 0 {
        return Err(WorkerError::invalid(
            "--prompt-tokens, --gen-tokens and --reps must be at least 1",
        ));
    }
    let levels = a
        .concurrency
        .as_deref()
        .map(bench_sweep::parse_levels)
        .transpose()?;
    if levels.is_none() && a.kv_pool_tokens > 0 {
        return Err(WorkerError::invalid(
            "--kv-pool-tokens sizes the concurrency sweep; give --concurrency with it",
        ));
    }
    let points = context_points(a)?;
    let file_bytes = std::fs::metadata(&a.model)
        .map_err(|e| WorkerError::model_load(format!("cannot read {}: {e}", a.model.display())))?
        .len();
    let kind: BackendKind = a.backend.into();
    let t0 = Instant::now();
    let m = open_model(&a.model)?;
    let longest = points.last().copied().unwrap_or(0).max(a.prompt_tokens);
    let need = longest + a.gen_tokens;
    if need >= m.cfg.context_length {
        return Err(WorkerError::invalid(format!(
            "a {longest}-token context plus {} generated tokens does not fit the model's context of {}",
            a.gen_tokens, m.cfg.context_length
        )));
    }
    let threads = if a.threads == 0 {
        rayon::current_num_threads()
    } else {
        a.threads
    };
    let opts = LoadOptions {
        // One position more than the tokens forwarded: the sequence samples
        // its last token where a further one would still fit.
        max_context: need + 1,
        kv_pool_tokens: sweep_pool_tokens(a, levels.as_deref(), a.prompt_tokens + a.gen_tokens),
        max_sequences: levels
            .as_deref()
            .and_then(|l| l.iter().copied().max())
            .unwrap_or(1),
        gpu_device: a.gpu_device,
        threads: a.threads,
    };
    let mut eng = make_engine(kind, &m, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    eng.resident_digest()?;
    let seal_verify_s = t.elapsed().as_secs_f64();
    let stamp = RunStamp::now(device_name(kind, a.gpu_device, threads));

    let model = a
        .model
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut results = Vec::with_capacity(points.len());
    for &c in &points {
        let (prefill, decode) = measure_point(a, eng.as_mut(), &m.tokenizer, m.cfg.vocab_size, c)?;
        let peer = |measure| report::peer_figure(kind, &stamp.device, file_bytes, measure);
        results.push(PointResult {
            context: c,
            prefill_tok_s: Stats::of(&prefill),
            decode_tok_s: Stats::of(&decode).unwrap_or(Stats {
                median: 0.0,
                mean: 0.0,
                std_dev: 0.0,
                samples: 0,
            }),
            peer_prefill_tok_s: (c > 0)
                .then(|| peer(Measure::Prefill { prompt: c }))
                .flatten(),
            peer_decode_tok_s: peer(Measure::Decode {
                after: c,
                gen: a.gen_tokens,
            }),
        });
    }
    let has_peer = results
        .iter()
        .any(|p| p.peer_prefill_tok_s.is_some() || p.peer_decode_tok_s.is_some());
    let peer_source = has_peer
        .then(|| report::peer_source(kind, &stamp.device))
        .flatten();
    let r = BenchResult {
        run: stamp,
        model,
        file_bytes,
        backend: kind,
        threads,
        gen_tokens: a.gen_tokens,
        warmup_reps: a.warmup,
        reps: a.reps,
        load_s,
        seal_verify_s,
        points: results,
        peer_source,
    };
    bench_output::print_table(&r);
    bench_output::write_files(&a.out_dir, &r)?;
    match levels {
        Some(levels) => sweep(a, &r, eng.as_mut(), &m.tokenizer, m.cfg.vocab_size, &levels),
        None => Ok(()),
    }
}

/// Prefill and decode samples (tokens/s) at context `c`: `--warmup` untimed
/// repetitions, then `--reps` measured ones. Greedy sequences through the
/// daemon's decode loop (engine::sequence), through end-of-generation tokens
/// so every run has the same length. Each phase ends with a sample, which
/// waits for the device: prefill is the prompt's forward plus choosing the
/// first token, a decode step one forward plus choosing the next. Sampling
/// stays on the engine (on the GPU for cuda), so no logits cross per token.
fn measure_point(
    a: &BenchArgs,
    eng: &mut dyn Engine,
    tok: &Tokenizer,
    vocab: usize,
    c: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let greedy = |max_tokens: usize| GenerationParams {
        max_tokens: max_tokens as u32,
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop: Vec::new(),
    };
    let prompt = bench_sweep::synthetic_prompt(c.max(1), vocab, 0);
    let max_ctx = eng.max_context();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for rep in 0..a.warmup + a.reps {
        let measured = rep >= a.warmup;
        if c == 0 {
            // tg: one token per step from position 0.
            let mut seq = Sequence::new(
                tok,
                Prompt::new(prompt.clone(), max_ctx)?,
                greedy(a.gen_tokens),
                Discard,
            )?
            .ignoring_eos();
            let (_, t) = seq.run(eng)?;
            if measured {
                decode.push(a.gen_tokens as f64 / t.end.as_secs_f64().max(1e-9));
            }
        } else {
            // pp of c tokens, then gen tokens decoded after it.
            let mut seq = Sequence::new(
                tok,
                Prompt::new(prompt.clone(), max_ctx)?,
                greedy(a.gen_tokens + 1),
                Discard,
            )?
            .ignoring_eos();
            let (_, t) = seq.run(eng)?;
            if measured {
                prefill.push(c as f64 / t.first_token.as_secs_f64().max(1e-9));
                decode.push(a.gen_tokens as f64 / (t.end - t.first_token).as_secs_f64().max(1e-9));
            }
        }
    }
    Ok((prefill, decode))
}

/// The KV pool to load with: the single-sequence bench needs none beyond
/// one context; the sweep needs its largest level's sequences, each rounded
/// up to whole pages, unless `--kv-pool-tokens` chooses.
fn sweep_pool_tokens(a: &BenchArgs, levels: Option<&[usize]>, need: usize) -> usize {
    match levels {
        None => 0,
        Some(_) if a.kv_pool_tokens > 0 => a.kv_pool_tokens,
        Some(l) => {
            let per_seq = crate::engine::kv::pool_tokens(need, crate::engine::cpu::PAGE_TOKENS);
            l.iter().max().copied().unwrap_or(1).saturating_mul(per_seq)
        }
    }
}

/// The concurrency sweep on the engine the bench just measured, with the
/// peer's figure beside each level the peer ran (same card and protocol).
fn sweep(
    a: &BenchArgs,
    r: &BenchResult,
    eng: &mut dyn Engine,
    tok: &Tokenizer,
    vocab: usize,
    levels: &[usize],
) -> Result<()> {
    let cfg = bench_sweep::SweepConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        warmup: a.warmup,
        reps: a.reps,
        vocab,
        prefill_chunk: eng.prefill_chunk(),
    };
    let mut summary = bench_sweep::run_sweep(eng, tok, levels, &cfg)?;
    for l in &mut summary {
        let measure = Measure::Batched {
            seqs: l.concurrency,
            prompt: a.prompt_tokens,
            gen: a.gen_tokens,
        };
        // The peer ran every sequence of a level at once; a level whose
        // sequences waited for admission is another protocol.
        l.peer_decode_tok_s = (l.max_running == l.concurrency)
            .then(|| report::peer_figure(r.backend, &r.run.device, r.file_bytes, measure))
            .flatten();
    }
    let peer_source = summary
        .iter()
        .any(|l| l.peer_decode_tok_s.is_some())
        .then(|| report::peer_source(r.backend, &r.run.device))
        .flatten();
    bench_sweep::print_table(&summary, &cfg, &r.run, peer_source);
    let report = bench_sweep::SweepReport {
        run: &r.run,
        model: &r.model,
        backend: r.backend.as_str(),
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        max_prefill: cfg.prefill_chunk,
        warmup_reps: a.warmup,
        levels: &summary,
        peer_source,
    };
    let stem = format!(
        "bench-{}-{}-concurrency",
        r.model.trim_end_matches(".gguf"),
        r.backend.as_str()
    );
    let base = report::claim_stem(&a.out_dir, &stem, &r.run.file_time())?;
    bench_sweep::write_files(&base, &report)
}

/// A benchmark's tokens go nowhere, and nothing stops it.
struct Discard;

impl EventSink for Discard {
    fn check(&mut self) -> Result<()> {
        Ok(())
    }

    fn token(&mut self, _index: u64, _text: String) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::BenchArgs;
    use clap::{Args, FromArgMatches};

    /// Results land in their own folder unless told otherwise (issue 13
    /// point 8: a bench run must not litter the repository root).
    #[test]
    fn results_go_to_their_own_folder_by_default() {
        let cmd = BenchArgs::augment_args(clap::Command::default());
        let m = cmd
            .try_get_matches_from(["bench", "--model", "m.gguf"])
            .unwrap();
        let a = BenchArgs::from_arg_matches(&m).unwrap();
        assert_eq!(a.out_dir, std::path::PathBuf::from("bench-results"));
    }

    fn args(model: &std::path::Path, out: &std::path::Path) -> BenchArgs {
        let cmd = BenchArgs::augment_args(clap::Command::default());
        let m = cmd
            .try_get_matches_from([
                "bench",
                "--model",
                model.to_str().unwrap(),
                "--out-dir",
                out.to_str().unwrap(),
                "--prompt-tokens",
                "16",
                "--gen-tokens",
                "4",
                "--reps",
                "2",
                "--warmup",
                "1",
                "--concurrency",
                "1,2",
                "--threads",
                "2",
                "--allow-root",
            ])
            .unwrap();
        BenchArgs::from_arg_matches(&m).unwrap()
    }

    /// A whole bench run on a tiny model (issue 12 point 5): every context
    /// point has exactly --reps samples (the warm-up is not among them), a
    /// CPU run carries no peer ratio, each run names its commit, and a
    /// second run writes new files beside the first instead of over them.
    #[test]
    fn a_run_reports_its_spread_and_never_overwrites_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        crate::model::test_model::write_test_model(
            &crate::model::test_model::TestModelSpec::tiny_llama(),
            &model,
        )
        .unwrap();
        let out = dir.path().join("results");
        for _ in 0..2 {
            super::bench(&args(&model, &out)).expect("bench");
        }
        let mut files: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let of = |suffix: &str| files.iter().filter(|f| f.ends_with(suffix)).count();
        // Two runs × (context points + concurrency sweep) × json, csv, svg.
        assert_eq!(
            (of(".json"), of(".csv"), of(".svg")),
            (4, 4, 4),
            "{files:?}"
        );
        let main: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(".json") && !f.contains("concurrency"))
            .collect();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(main[0])).unwrap()).unwrap();
        let contexts: Vec<u64> = r["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["context"].as_u64().unwrap())
            .collect();
        assert_eq!(contexts, vec![0, 4, 8, 16], "0, P/4, P/2, P");
        for p in r["points"].as_array().unwrap() {
            assert_eq!(p["decode_tok_s"]["samples"], 2, "warm-up excluded: {p}");
            assert_eq!(
                p["peer_decode_tok_s"],
                serde_json::Value::Null,
                "no GPU ratio on a CPU run"
            );
            let prefill = &p["prefill_tok_s"];
            match p["context"].as_u64() {
                Some(0) => assert!(prefill.is_null()),
                _ => assert_eq!(prefill["samples"], 2),
            }
        }
        assert_eq!(r["peer_source"], serde_json::Value::Null);
        assert_eq!(r["run"]["commit"], env!("WORKER_ORCD_GIT_COMMIT"));
        let sweep: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(".json") && f.contains("concurrency"))
            .collect();
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(sweep[0])).unwrap()).unwrap();
        assert_eq!(s["levels"][1]["concurrency"], 2);
        assert_eq!(s["levels"][1]["reps"], 2);
        assert_eq!(s["warmup_reps"], 1);
    }
}
