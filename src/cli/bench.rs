//! `worker-orcd bench`: prefill and decode speed of one model on one backend
//! (issue 3 point 10). Prints a table and writes the same numbers as CSV and
//! JSON. When the model file has the exact size of a file in the peer table
//! (`shared/GUIDE.md` §4: llama.cpp on an H200), the ratio to those figures is
//! printed too, labelled with the card they were measured on. Measurements
//! only: nothing here asserts a speed.
//!
//! Protocol (the peer's, llama-bench pp512 / tg128): prefill of a
//! `--prompt-tokens` prompt from an empty cache; decode of `--gen-tokens`
//! tokens from an empty context (position 0), which is the figure compared
//! with the peer. Decode right after the prompt (positions 512..640, where
//! attention reads a longer cache) is reported beside it, not compared.
//!
//! With `--concurrency 1,8,32,64` the same run then measures many sequences
//! at once through continuous batching (issue 11 point 7): see
//! [`super::bench_sweep`], which defines its figures and writes its own files.

use super::bench_sweep;
use super::generate::{check_root, exit_code_for, make_engine, open_model, BackendArg};
use crate::engine::sequence::{EventSink, GenerationParams, Prompt, Sequence};
use crate::engine::{BackendKind, LoadOptions, SamplingParams};
use crate::error::{Result, WorkerError};
use serde::Serialize;
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
    /// Prompt length for the prefill measurement (synthetic token ids).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time (from an empty context, and after the prompt).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the table reports the median.
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

/// A published peer measurement (GUIDE.md §4).
struct Peer {
    file_bytes: u64,
    label: &'static str,
    decode: f64,
    prefill: f64,
}

const PEERS: &[Peer] = &[
    Peer {
        file_bytes: 491_400_064,
        label: "Qwen2.5-0.5B Q4_K_M",
        decode: 829.0,
        prefill: 38_711.0,
    },
    Peer {
        file_bytes: 98_362_432,
        label: "SmolLM2-135M Q4_1",
        decode: 884.0,
        prefill: 44_805.0,
    },
];
const PEER_CARD: &str =
    "llama.cpp (CUDA graphs, flash attention) on one NVIDIA H200, measured 2026-11-28";

#[derive(Debug, Serialize)]
struct BenchResult {
    model: String,
    file_bytes: u64,
    backend: &'static str,
    device: String,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    load_s: f64,
    seal_verify_s: f64,
    prefill_tok_s: f64,
    /// From an empty context (the peer's tg128).
    decode_tok_s: f64,
    /// Right after the prompt.
    decode_after_prompt_tok_s: f64,
    peer: Option<PeerRatio>,
}

#[derive(Debug, Serialize)]
struct PeerRatio {
    peer: &'static str,
    measured_on: &'static str,
    peer_prefill_tok_s: f64,
    peer_decode_tok_s: f64,
    prefill_ratio: f64,
    decode_ratio: f64,
}

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
    let file_bytes = std::fs::metadata(&a.model)
        .map_err(|e| WorkerError::model_load(format!("cannot read {}: {e}", a.model.display())))?
        .len();
    let kind: BackendKind = a.backend.into();
    let t0 = Instant::now();
    let m = open_model(&a.model)?;
    let need = a.prompt_tokens + a.gen_tokens;
    if need > m.cfg.context_length {
        return Err(WorkerError::invalid(format!(
            "{need} tokens exceed the model's context of {}",
            m.cfg.context_length
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
        kv_pool_tokens: sweep_pool_tokens(a, levels.as_deref(), need),
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

    // Synthetic prompt: spread over the vocabulary, deterministic.
    let prompt = bench_sweep::synthetic_prompt(a.prompt_tokens, m.cfg.vocab_size, 0);
    let (mut pre, mut dec, mut dec0) = (Vec::new(), Vec::new(), Vec::new());
    // Greedy sequences through the daemon's decode loop (engine::sequence),
    // through end-of-generation tokens so that every run has the same length.
    // Each phase ends with a sample, which waits for the device: prefill is
    // the prompt's forward plus choosing the first token, a decode step is one
    // forward plus choosing the next. Sampling stays on the engine (on the
    // GPU for cuda) so no full logits vector crosses to the host per token.
    let greedy = |max_tokens: usize| GenerationParams {
        max_tokens: max_tokens as u32,
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop: Vec::new(),
    };
    let max_ctx = eng.max_context();
    for _ in 0..a.reps {
        // pp512, then 128 decode steps after the prompt.
        let mut seq = Sequence::new(
            &m.tokenizer,
            Prompt::new(prompt.clone(), max_ctx)?,
            greedy(a.gen_tokens + 1),
            Discard,
        )?
        .ignoring_eos();
        let (_, t) = seq.run(eng.as_mut())?;
        pre.push(a.prompt_tokens as f64 / t.first_token.as_secs_f64().max(1e-9));
        dec.push(a.gen_tokens as f64 / (t.end - t.first_token).as_secs_f64().max(1e-9));
        // tg128: generation from an empty context, one token per step from position 0.
        let mut seq = Sequence::new(
            &m.tokenizer,
            Prompt::new(vec![prompt[0]], max_ctx)?,
            greedy(a.gen_tokens),
            Discard,
        )?
        .ignoring_eos();
        let (_, t) = seq.run(eng.as_mut())?;
        dec0.push(a.gen_tokens as f64 / t.end.as_secs_f64().max(1e-9));
    }
    let (prefill_tok_s, decode_tok_s, decode_after_prompt_tok_s) =
        (median(pre), median(dec0), median(dec));
    let device = match kind {
        BackendKind::Cpu => format!("{} ({threads} threads)", cpu_name()),
        BackendKind::Cuda => match crate::gpu::probe(a.gpu_device) {
            Ok(d) => format!(
                "{} (GPU {}, cc {}.{}, driver {})",
                d.name, d.ordinal, d.compute_capability.0, d.compute_capability.1, d.driver_version
            ),
            Err(_) => format!("CUDA device {}", a.gpu_device),
        },
    };
    let peer = PEERS
        .iter()
        .find(|p| p.file_bytes == file_bytes)
        .map(|p| PeerRatio {
            peer: p.label,
            measured_on: PEER_CARD,
            peer_prefill_tok_s: p.prefill,
            peer_decode_tok_s: p.decode,
            prefill_ratio: prefill_tok_s / p.prefill,
            decode_ratio: decode_tok_s / p.decode,
        });
    let r = BenchResult {
        model: a
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file_bytes,
        backend: kind.as_str(),
        device,
        threads,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        reps: a.reps,
        load_s,
        seal_verify_s,
        prefill_tok_s,
        decode_tok_s,
        decode_after_prompt_tok_s,
        peer,
    };
    print_table(&r);
    write_files(a, &r)?;
    match levels {
        Some(levels) => sweep(a, &r, eng.as_mut(), &m.tokenizer, m.cfg.vocab_size, &levels),
        None => Ok(()),
    }
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

/// The concurrency sweep on the engine the bench just measured.
fn sweep(
    a: &BenchArgs,
    r: &BenchResult,
    eng: &mut dyn crate::engine::Engine,
    tok: &crate::model::tokenizer::Tokenizer,
    vocab: usize,
    levels: &[usize],
) -> Result<()> {
    let cfg = bench_sweep::SweepConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        reps: a.reps,
        vocab,
    };
    let summary = bench_sweep::run_sweep(eng, tok, levels, &cfg)?;
    bench_sweep::print_table(&summary, &cfg);
    let report = bench_sweep::SweepReport {
        model: &r.model,
        backend: r.backend,
        device: &r.device,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        max_prefill: bench_sweep::MAX_PREFILL,
        warmup_reps: 1,
        levels: &summary,
    };
    let stem = format!(
        "bench-{}-{}-concurrency",
        r.model.trim_end_matches(".gguf"),
        r.backend
    );
    bench_sweep::write_files(&a.out_dir, &stem, &report)
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

fn print_table(r: &BenchResult) {
    let rows = [
        ("model", r.model.clone()),
        ("file size", format!("{} bytes", r.file_bytes)),
        ("backend", r.backend.to_string()),
        ("device", r.device.clone()),
        ("load time", format!("{:.3} s", r.load_s)),
        (
            "seal verification (resident digest)",
            format!("{:.3} s", r.seal_verify_s),
        ),
        (
            &*format!("prefill ({} tokens, median of {})", r.prompt_tokens, r.reps),
            format!("{:.1} tok/s", r.prefill_tok_s),
        ),
        (
            &*format!(
                "decode ({} tokens from an empty context, median of {})",
                r.gen_tokens, r.reps
            ),
            format!("{:.1} tok/s", r.decode_tok_s),
        ),
        (
            &*format!(
                "decode ({} tokens after the {}-token prompt)",
                r.gen_tokens, r.prompt_tokens
            ),
            format!("{:.1} tok/s", r.decode_after_prompt_tok_s),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("{k:<w$}  {v}");
    }
    if let Some(p) = &r.peer {
        println!(
            "vs {} — {}: prefill {:.0} tok/s (ours {:.4}×), decode {:.0} tok/s (ours {:.4}×)",
            p.peer,
            p.measured_on,
            p.peer_prefill_tok_s,
            p.prefill_ratio,
            p.peer_decode_tok_s,
            p.decode_ratio
        );
    }
}

fn write_files(a: &BenchArgs, r: &BenchResult) -> Result<()> {
    let io = |e: std::io::Error| {
        WorkerError::internal(format!(
            "could not write results to {}: {e}",
            a.out_dir.display()
        ))
    };
    std::fs::create_dir_all(&a.out_dir).map_err(io)?;
    let stem = format!("bench-{}-{}", r.model.trim_end_matches(".gguf"), r.backend);
    let json = serde_json::to_string_pretty(r).map_err(|e| WorkerError::internal(e.to_string()))?;
    std::fs::write(a.out_dir.join(format!("{stem}.json")), json + "\n").map_err(io)?;
    let (pp, ppre, pd, rp, rd) = match &r.peer {
        Some(p) => (
            p.peer,
            p.peer_prefill_tok_s.to_string(),
            p.peer_decode_tok_s.to_string(),
            format!("{:.6}", p.prefill_ratio),
            format!("{:.6}", p.decode_ratio),
        ),
        None => (
            "",
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
    };
    let csv = format!(
        "model,file_bytes,backend,device,threads,prompt_tokens,gen_tokens,reps,load_s,seal_verify_s,prefill_tok_s,decode_tok_s,decode_after_prompt_tok_s,peer,peer_prefill_tok_s,peer_decode_tok_s,prefill_ratio,decode_ratio\n\
         {},{},{},\"{}\",{},{},{},{},{:.4},{:.4},{:.2},{:.2},{:.2},{},{},{},{},{}\n",
        r.model, r.file_bytes, r.backend, r.device.replace('"', "'"), r.threads, r.prompt_tokens, r.gen_tokens, r.reps,
        r.load_s, r.seal_verify_s, r.prefill_tok_s, r.decode_tok_s, r.decode_after_prompt_tok_s, pp, ppre, pd, rp, rd
    );
    std::fs::write(a.out_dir.join(format!("{stem}.csv")), csv).map_err(io)?;
    eprintln!(
        "wrote {0}/{stem}.csv and {0}/{stem}.json",
        a.out_dir.display()
    );
    Ok(())
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
}
