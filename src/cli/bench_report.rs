//! What every bench result carries so it can be trusted later (issue 12
//! point 5): the spread of the samples, not one number; the card, commit and
//! time of the run; a ratio to the peer only where the peer was measured on
//! the same card with the same protocol; and files that never overwrite an
//! earlier run. Shared by `bench` (context points) and its concurrency sweep.

use crate::engine::BackendKind;
use crate::error::{Result, WorkerError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The spread of one figure over the measured repetitions (warm-up runs are
/// never among them).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    /// Nearest-rank 50th percentile: the middle sample for an odd count.
    pub median: f64,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single sample.
    pub std_dev: f64,
    pub samples: usize,
}

impl Stats {
    /// None when there are no samples.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let median = super::bench_sweep::nearest_rank(samples, 50.0)?;
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = if samples.len() > 1 {
            samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Some(Stats {
            median,
            mean,
            std_dev: var.sqrt(),
            samples: samples.len(),
        })
    }

    /// "median (mean ± sd)" for the table.
    pub fn cell(&self) -> String {
        format!(
            "{:.1} ({:.1} ± {:.1})",
            self.median, self.mean, self.std_dev
        )
    }
}

/// Where and from what a run was made.
#[derive(Debug, Clone, Serialize)]
pub struct RunStamp {
    /// UTC, RFC 3339, at the start of the measurements.
    pub timestamp: String,
    /// The git commit the binary was built from (build.rs; "unknown" when
    /// it was built outside a git checkout).
    pub commit: &'static str,
    /// SHA-256 of the sources (build.rs), exact even for uncommitted edits.
    pub source_sha256: &'static str,
    /// The CPU model or the GPU's name, driver and compute capability.
    pub device: String,
}

impl RunStamp {
    pub fn now(device: String) -> RunStamp {
        RunStamp {
            timestamp: crate::shard::handle::rfc3339_now(),
            commit: env!("WORKER_ORCD_GIT_COMMIT"),
            source_sha256: env!("WORKER_ORCD_SOURCE_SHA256"),
            device,
        }
    }

    /// One line for the head of a table.
    pub fn line(&self) -> String {
        format!(
            "{} · commit {} · {}",
            self.device, self.commit, self.timestamp
        )
    }

    /// The timestamp as it goes into file names: `20261204T221530Z`.
    pub fn file_time(&self) -> String {
        let t: String = self
            .timestamp
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        // "20261204T221530000Z" → drop the milliseconds.
        match t.len() {
            19 => format!("{}Z", &t[..15]),
            _ => t,
        }
    }
}

/// What a peer figure measures, in the peer's own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Prefill of a prompt of this many tokens from an empty cache (pp).
    Prefill { prompt: usize },
    /// Decode of `gen` tokens after a context of `after` tokens (tg).
    Decode { after: usize, gen: usize },
    /// Decode tokens/s of `seqs` sequences together, each `prompt` + `gen`
    /// tokens (llama-batched-bench's S_TG).
    Batched {
        seqs: usize,
        prompt: usize,
        gen: usize,
    },
}

/// One published peer figure.
struct PeerFigure {
    file_bytes: u64,
    measure: Measure,
    tok_s: f64,
}

/// A row of a peer table.
const fn figure(file_bytes: u64, measure: Measure, tok_s: f64) -> PeerFigure {
    PeerFigure {
        file_bytes,
        measure,
        tok_s,
    }
}

/// llama-bench's tg128 after `after` tokens of context.
const fn tg128_after(after: usize) -> Measure {
    Measure::Decode { after, gen: 128 }
}

/// llama-batched-bench's S_TG for `seqs` sequences of 128 + 128 tokens.
const fn batched(seqs: usize) -> Measure {
    Measure::Batched {
        seqs,
        prompt: 128,
        gen: 128,
    }
}

const QWEN_Q4KM: u64 = 491_400_064;
const SMOLLM2_Q4_1: u64 = 98_362_432;

/// `../shared/GUIDE.md` §4: llama.cpp on one NVIDIA H200, medians of 5
/// samples (llama-bench -r 5, the slow first sample not averaged in), and
/// llama-batched-bench for many sequences.
const H200_FIGURES: &[PeerFigure] = &[
    figure(QWEN_Q4KM, tg128_after(0), 870.0),
    figure(QWEN_Q4KM, Measure::Prefill { prompt: 512 }, 50_200.0),
    figure(QWEN_Q4KM, tg128_after(4096), 783.0),
    figure(QWEN_Q4KM, Measure::Prefill { prompt: 4096 }, 48_100.0),
    figure(QWEN_Q4KM, batched(1), 775.0),
    figure(QWEN_Q4KM, batched(4), 2_332.0),
    figure(QWEN_Q4KM, batched(16), 4_304.0),
    figure(QWEN_Q4KM, batched(32), 7_247.0),
    figure(QWEN_Q4KM, batched(64), 10_979.0),
    figure(SMOLLM2_Q4_1, tg128_after(0), 930.0),
    figure(SMOLLM2_Q4_1, Measure::Prefill { prompt: 512 }, 58_600.0),
];

/// The files `make-model --like qwen2.5-0.5b` and `--like smollm2-135m`
/// write (2026-12-06). The H200 figures are keyed by the sizes of the real
/// Qwen2.5-Coder and SmolLM2 release files, which GUIDE §4's files share;
/// make-model's carry less tokenizer metadata, so their sizes differ.
const QWEN_LIKE: u64 = 488_855_360;
const SMOL_LIKE: u64 = 97_666_368;

/// llama.cpp 0c1e570 built for sm_90, on one NVIDIA H100 80GB HBM3 beside
/// worker-orcd in the same device call (2026-12-06): `llama-bench -ngl 99
/// -fa 1 -r 5` (pp512, pp4096, tg128, tg128 after `-d 4096`), medians of
/// the 5 samples; `llama-batched-bench -fa on -npp 128 -ntg 128 -npl
/// 1,4,8,16,32,64`, one run, S_TG.
const H100_FIGURES: &[PeerFigure] = &[
    figure(QWEN_LIKE, tg128_after(0), 907.3),
    figure(QWEN_LIKE, Measure::Prefill { prompt: 512 }, 51_210.4),
    figure(QWEN_LIKE, tg128_after(4096), 852.0),
    figure(QWEN_LIKE, Measure::Prefill { prompt: 4096 }, 51_820.1),
    figure(QWEN_LIKE, batched(1), 822.8),
    figure(QWEN_LIKE, batched(4), 2_361.5),
    figure(QWEN_LIKE, batched(8), 3_979.9),
    figure(QWEN_LIKE, batched(16), 4_320.6),
    figure(QWEN_LIKE, batched(32), 6_973.2),
    figure(QWEN_LIKE, batched(64), 10_671.4),
    figure(SMOL_LIKE, tg128_after(0), 966.0),
    figure(SMOL_LIKE, Measure::Prefill { prompt: 512 }, 60_173.3),
];

/// Said beside every ratio to [`H100_FIGURES`].
const H100_SOURCE: &str =
    "llama.cpp 0c1e570 on one NVIDIA H100 80GB HBM3, medians of 5 (llama-bench) \
     and one llama-batched-bench run, measured beside worker-orcd on 2026-12-06 (README)";

/// One card's peer measurements.
struct PeerRun {
    /// The card's name as the driver gives it, exactly: an H200 NVL or a
    /// MIG slice is another card.
    card: &'static str,
    /// Said beside every ratio to these figures.
    source: &'static str,
    figures: &'static [PeerFigure],
}

/// Every card the peer was measured on. One table; every lookup reads it.
const PEER_RUNS: &[PeerRun] = &[
    PeerRun {
        card: "NVIDIA H200",
        source:
            "llama.cpp on one NVIDIA H200, medians (../shared/GUIDE.md §4, measured 2026-12-03)",
        figures: H200_FIGURES,
    },
    PeerRun {
        card: "NVIDIA H100 80GB HBM3",
        source: H100_SOURCE,
        figures: H100_FIGURES,
    },
];

/// The peer run on this backend and card, if any: a CPU run has none.
fn peer_run(backend: BackendKind, device: &str) -> Option<&'static PeerRun> {
    let card = device.split(" (").next().unwrap_or(device);
    if backend != BackendKind::Cuda {
        return None;
    }
    PEER_RUNS.iter().find(|r| r.card == card)
}

/// Where the peer figures for this backend and card come from.
pub fn peer_source(backend: BackendKind, device: &str) -> Option<&'static str> {
    peer_run(backend, device).map(|r| r.source)
}

/// The cards the peer was measured on, for a table that shows no ratio.
pub fn peer_cards() -> String {
    let cards: Vec<&str> = PEER_RUNS.iter().map(|r| r.card).collect();
    cards.join(" or ")
}

/// The peer's figure for this measurement, only where comparing is honest:
/// the CUDA backend on the card the peer ran on, the same file (by size,
/// which the peer table's files have exactly) and the same protocol. A CPU
/// run never gets a GPU ratio.
pub fn peer_figure(
    backend: BackendKind,
    device: &str,
    file_bytes: u64,
    measure: Measure,
) -> Option<f64> {
    peer_run(backend, device)?
        .figures
        .iter()
        .find(|p| p.file_bytes == file_bytes && p.measure == measure)
        .map(|p| p.tok_s)
}

/// `<dir>/<stem>-<time>`, with `-2`, `-3`, … added when a run in the same
/// second already wrote there: a run never overwrites an earlier one. The
/// `.json` file is created here (empty) to claim the name.
pub fn claim_stem(dir: &Path, stem: &str, file_time: &str) -> Result<PathBuf> {
    let io = |e: std::io::Error| {
        WorkerError::internal(format!("could not write results to {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    for n in 1..1000 {
        let name = match n {
            1 => format!("{stem}-{file_time}"),
            _ => format!("{stem}-{file_time}-{n}"),
        };
        let base = dir.join(&name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(with_ext(&base, "json"))
        {
            Ok(_) => return Ok(base),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e)),
        }
    }
    Err(WorkerError::internal(format!(
        "{}: 999 result files named {stem}-{file_time} already exist",
        dir.display()
    )))
}

/// Write `<base>.<ext>` (the base from [`claim_stem`]).
pub fn write_beside(base: &Path, ext: &str, contents: &str) -> Result<PathBuf> {
    let path = with_ext(base, ext);
    std::fs::write(&path, contents)
        .map_err(|e| WorkerError::internal(format!("could not write {}: {e}", path.display())))?;
    Ok(path)
}

/// `<base>.<ext>`. Not `Path::with_extension`: model names hold dots
/// (`SmolLM2-135M-Instruct.Q4_1`), which it would cut at.
pub fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

#[cfg(test)]
#[path = "bench_report_tests.rs"]
mod tests;
