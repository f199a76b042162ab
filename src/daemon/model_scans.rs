//! What Plan knows about model files, kept by file identity (issue 13
//! point 3; WORKER-4210, 4314).
//!
//! Why: a Plan must read and hash the whole file it names (its SHA-256 is
//! the model's identity), and a model can be 100 GB. Without a cache every
//! Plan re-reads it; without a bound, 16 concurrent Plans read 16 files at
//! once and starve a running job of CPU and disk. So:
//! - a scanned header is kept under the file's [`FileIdentity`] (device,
//!   inode, size and modification time); a Plan of a file whose
//!   identity is unchanged reads nothing, and any change to the file changes
//!   its identity, so the entry is no longer found and is dropped;
//! - a refusal that comes from the file's bytes (not a GGUF, a NaN weight)
//!   is kept the same way, so a bad file is not re-read either;
//! - one file is scanned at a time. A Plan that would start a second scan
//!   gets 429 WORKER_BUSY with `retry_after_ms` estimated from the scan in
//!   progress; Plans answered from the cache never wait for it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Result, WorkerError};
use crate::model::arch::{self, ModelConfig};
use crate::model::file::FileIdentity;
use crate::model::gguf::{GgufHeader, GgufLimits};
use crate::telemetry::metrics::Metrics;

/// Files remembered; the oldest is forgotten first.
const MAX_ENTRIES: usize = 8;
/// Read rate assumed for the retry hint before any scan has been timed.
const DEFAULT_BYTES_PER_SEC: f64 = 500e6;
/// Bounds of the retry hint a refused Plan gets.
const RETRY_MS: (u64, u64) = (100, 60_000);

/// What a scan found out about a file, all of it derived from its bytes.
#[derive(Debug)]
pub struct ScannedModel {
    pub header: Arc<GgufHeader>,
    /// The architecture's configuration (`arch::from_gguf`).
    pub config: ModelConfig,
}

impl ScannedModel {
    fn from_header(header: Arc<GgufHeader>) -> Result<Self> {
        let (config, _) = arch::from_gguf(&header)?;
        Ok(Self { header, config })
    }
}

type Scanned = std::result::Result<Arc<ScannedModel>, WorkerError>;

/// The cache and the one-scan-at-a-time gate.
#[derive(Default)]
pub struct ModelScans {
    entries: Mutex<Vec<(FileIdentity, Scanned)>>,
    in_progress: Mutex<Option<ScanInProgress>>,
    /// Measured read rate of the last scan, bytes per second.
    last_rate: Mutex<Option<f64>>,
}

struct ScanInProgress {
    started: Instant,
    len: u64,
    path: String,
}

impl std::fmt::Debug for ModelScans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        write!(f, "ModelScans({n} files)")
    }
}

impl ModelScans {
    /// What Plan needs of the model file at `path`: from the cache when the
    /// file is unchanged since it was scanned, else scanned now (one at a time).
    pub fn scan(
        &self,
        path: &Path,
        limits: &GgufLimits,
        metrics: &Metrics,
    ) -> Result<Arc<ScannedModel>> {
        let identity = FileIdentity::stat(path)?;
        if let Some(hit) = self.lookup(&identity) {
            return hit;
        }
        let _gate = self.enter(path, identity.len)?;
        // A Plan that held the gate just before may have scanned this very file.
        if let Some(hit) = self.lookup(&identity) {
            return hit;
        }
        let started = Instant::now();
        let scanned = GgufHeader::scan(path, limits);
        metrics.model_file_scanned();
        self.note_rate(identity.len, started);
        match scanned {
            Ok((header, read_identity)) => {
                let model = ScannedModel::from_header(Arc::new(header)).map(Arc::new);
                self.remember(read_identity, model.clone());
                model
            }
            // A file caught changing says nothing about its next version.
            Err(e @ WorkerError::ModelFileChanged { .. }) => Err(e),
            Err(e) => {
                self.remember(identity, Err(e.clone()));
                Err(e)
            }
        }
    }

    /// Remember a header read by a load (the model this worker serves), so
    /// that Plans of it read nothing.
    pub fn remember_loaded(&self, identity: FileIdentity, header: Arc<GgufHeader>) {
        self.remember(identity, ScannedModel::from_header(header).map(Arc::new));
    }

    fn lookup(&self, identity: &FileIdentity) -> Option<Scanned> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|(id, _)| id == identity)
            .map(|(_, s)| s.clone())
    }

    fn remember(&self, identity: FileIdentity, scanned: Scanned) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // An older version of the same file (same device and inode) is dropped.
        entries.retain(|(id, _)| (id.dev, id.ino) != (identity.dev, identity.ino));
        if entries.len() >= MAX_ENTRIES {
            drop(entries.remove(0));
        }
        entries.push((identity, scanned));
    }

    /// Take the scan gate, or refuse with WORKER_BUSY while another scan runs.
    fn enter(&self, path: &Path, len: u64) -> Result<Gate<'_>> {
        let mut slot = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = slot.as_ref() {
            let rate = self.rate();
            let total_ms = busy.len as f64 / rate * 1e3;
            let left = total_ms - busy.started.elapsed().as_secs_f64() * 1e3;
            let retry_after_ms = (left.max(0.0) as u64).clamp(RETRY_MS.0, RETRY_MS.1);
            return Err(WorkerError::Busy {
                message: format!(
                    "another Plan is reading and hashing model file {} ({}); this worker reads one new \
                     model file at a time so that running jobs keep their speed. Retry in about {} ms; \
                     a Plan of a file already read is answered at once",
                    busy.path,
                    crate::telemetry::human_bytes(busy.len),
                    retry_after_ms
                ),
                retry_after_ms,
            });
        }
        *slot = Some(ScanInProgress {
            started: Instant::now(),
            len,
            path: path.display().to_string(),
        });
        Ok(Gate(&self.in_progress))
    }

    fn rate(&self) -> f64 {
        let last = *self.last_rate.lock().unwrap_or_else(|p| p.into_inner());
        last.unwrap_or(DEFAULT_BYTES_PER_SEC)
    }

    fn note_rate(&self, len: u64, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        // Only a scan long enough to time says anything about the disk.
        if secs > 0.05 {
            *self.last_rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(len as f64 / secs);
        }
    }
}

/// The scan gate, released when dropped (also on error or panic).
struct Gate<'a>(&'a Mutex<Option<ScanInProgress>>);

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
#[path = "model_scans_tests.rs"]
mod tests;
