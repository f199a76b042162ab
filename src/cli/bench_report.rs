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

const QWEN_Q4KM: u64 = 491_400_064;
const SMOLLM2_Q4_1: u64 = 98_362_432;

/// `../shared/GUIDE.md` §4: llama.cpp on one NVIDIA H200, medians of 5
/// samples (llama-bench -r 5, the slow first sample not averaged in), and
/// llama-batched-bench for many sequences. One table; every lookup reads it.
const PEER_FIGURES: &[PeerFigure] = &[
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Decode { after: 0, gen: 128 },
        tok_s: 870.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Prefill { prompt: 512 },
        tok_s: 50_200.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Decode {
            after: 4096,
            gen: 128,
        },
        tok_s: 783.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Prefill { prompt: 4096 },
        tok_s: 48_100.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Batched {
            seqs: 1,
            prompt: 128,
            gen: 128,
        },
        tok_s: 775.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Batched {
            seqs: 4,
            prompt: 128,
            gen: 128,
        },
        tok_s: 2_332.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Batched {
            seqs: 16,
            prompt: 128,
            gen: 128,
        },
        tok_s: 4_304.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Batched {
            seqs: 32,
            prompt: 128,
            gen: 128,
        },
        tok_s: 7_247.0,
    },
    PeerFigure {
        file_bytes: QWEN_Q4KM,
        measure: Measure::Batched {
            seqs: 64,
            prompt: 128,
            gen: 128,
        },
        tok_s: 10_979.0,
    },
    PeerFigure {
        file_bytes: SMOLLM2_Q4_1,
        measure: Measure::Decode { after: 0, gen: 128 },
        tok_s: 930.0,
    },
    PeerFigure {
        file_bytes: SMOLLM2_Q4_1,
        measure: Measure::Prefill { prompt: 512 },
        tok_s: 58_600.0,
    },
];

/// The card the peer figures were measured on.
pub const PEER_CARD: &str = "NVIDIA H200";
/// Said beside every ratio.
pub const PEER_SOURCE: &str =
    "llama.cpp on one NVIDIA H200, medians (../shared/GUIDE.md §4, measured 2026-12-03)";

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
    // The card's own name, exactly: not an H200 NVL, not a MIG slice.
    let card = device.split(" (").next().unwrap_or(device);
    if backend != BackendKind::Cuda || card != PEER_CARD {
        return None;
    }
    PEER_FIGURES
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
