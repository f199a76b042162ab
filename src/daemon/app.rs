//! The shared state of a running worker: configuration, lifecycle, the
//! loaded model and its sealed handle, the scheduler, the engine thread and
//! the metrics (WORKER-4030, 4112, 4232).

use crate::config::Config;
use crate::daemon::engine_thread::EngineHandle;
use crate::daemon::scheduler::Scheduler;
use crate::daemon::state::{Lifecycle, StateCell};
use crate::engine::MemoryReport;
use crate::error::WorkerError;
use crate::model::tokenizer::Tokenizer;
use crate::shard::handle::ModelShardHandle;
use crate::shard::seal::SealKey;
use crate::shard::signature::ModelSigning;
use crate::telemetry::Metrics;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Checks a presented bearer token; returns the caller's fp6 when valid.
pub trait Authenticator: Send + Sync {
    fn verify(&self, presented: &str) -> Option<String>;
    /// fp6 of every accepted token (readiness callback, narration).
    fn fingerprints(&self) -> Vec<String>;
}

impl Authenticator for crate::config::Credentials {
    fn verify(&self, presented: &str) -> Option<String> {
        crate::config::Credentials::verify(self, presented).map(|id| id.fp6)
    }
    fn fingerprints(&self) -> Vec<String> {
        self.fp6_list()
    }
}

/// How many retired shard ids are remembered (so a client holding an old
/// handle is told the new id); older ones get the plain NOT_FOUND.
pub const RETIRED_IDS: usize = 64;

/// The model this process serves (one per process, WORKER-4022).
#[derive(Debug)]
pub struct LoadedModel {
    /// Canonical path of the GGUF file, under model_root.
    pub path: PathBuf,
    pub model_ref: String,
    /// SHA-256 of the whole file (compared with `expected_digest`, 4223).
    pub file_sha256: [u8; 32],
    pub file_len: u64,
    pub tokenizer: Arc<Tokenizer>,
    pub mcd: serde_json::Value,
    pub ecp: serde_json::Value,
    pub memory: MemoryReport,
    /// Tokens one sequence may hold (prompt + generated), planned at load.
    pub max_context: usize,
    /// The engine's numerics version (`engine::numerics`): streams are
    /// promised identical only between workers that report the same one.
    pub numerics_version: String,
    /// Digest of the file's tensor data (`shard::digest` over the GGUF data
    /// section): what the resident bytes must equal before any seal (4113).
    pub data_digest: [u8; 32],
    /// The sealed handle; `sealed` turns false when a seal check fails.
    pub handle: RwLock<ModelShardHandle>,
    /// Shard ids this model was sealed under before a commit re-sealed it
    /// under a new one, newest last, at most [`RETIRED_IDS`] (4227).
    pub retired: Mutex<VecDeque<String>>,
    /// Held by a commit from its identity check to its seal, so two commits
    /// cannot re-seal at once.
    pub commit_lock: Mutex<()>,
    /// Duration of the latest seal check (recomputing the resident digest),
    /// in ms rounded up (a sub-ms GPU check reads 1, never 0): measured at load, then by every job. Each job waits for one seal
    /// check before its prefill, and with one slot and no queue nothing else
    /// waits, so this is the `started` event's `predicted_start_ms`.
    pub seal_check_ms: AtomicU64,
    /// The file's identity when it was read and its header, so that Plans
    /// of the served model read nothing ([`super::model_scans`]).
    pub scan: Option<(
        crate::model::file::FileIdentity,
        Arc<crate::model::gguf::GgufHeader>,
    )>,
}

impl LoadedModel {
    pub fn handle(&self) -> ModelShardHandle {
        self.handle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the handle with `new` (a fresh seal of the same resident
    /// bytes) and retire the old shard id; returns the old handle.
    pub fn reseal(&self, new: ModelShardHandle) -> ModelShardHandle {
        let old = std::mem::replace(
            &mut *self.handle.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|id| *id != old.shard_id);
        if retired.len() >= RETIRED_IDS {
            retired.pop_front();
        }
        retired.push_back(old.shard_id.clone());
        old
    }

    /// Whether `shard_id` was this model's id before a re-seal.
    pub fn is_retired(&self, shard_id: &str) -> bool {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|id| id == shard_id)
    }

    pub fn mark_unsealed(&self) {
        self.handle
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .sealed = false;
    }
}

/// A fatal error reported to the supervisor task, which stops the worker.
pub type FatalTx = tokio::sync::mpsc::UnboundedSender<WorkerError>;

pub struct AppState {
    pub cfg: Config,
    pub state: StateCell,
    pub auth: Box<dyn Authenticator>,
    pub metrics: Arc<Metrics>,
    pub seal_key: SealKey,
    /// The trusted model-signing key, if any, and the start-up signature (4222, 4313).
    pub signing: ModelSigning,
    pub scheduler: Arc<Scheduler>,
    pub model: OnceLock<Arc<LoadedModel>>,
    pub engine: OnceLock<EngineHandle>,
    pub fatal: FatalTx,
    /// When the engine's current step began (the step watchdog reads it).
    pub step_clock: super::watchdog::StepClock,
    /// Budgets of the log lines clients can cause (access lines).
    pub log_limit: crate::telemetry::log_limit::LogLimiter,
    /// Model files Plan has read, by identity; one read at a time.
    pub scans: super::model_scans::ModelScans,
    /// Test builds: the free memory Plan sees, once a test fault set it.
    #[cfg(feature = "test-hooks")]
    pub available_override: std::sync::Mutex<Option<u64>>,
}

impl AppState {
    pub fn lifecycle(&self) -> Lifecycle {
        self.state.get()
    }

    /// Move the lifecycle (if the graph allows), keep the state gauge in
    /// step and log the transition as a structured event (4030, 4031, 4227).
    pub fn set_state(&self, s: Lifecycle) -> bool {
        match self.state.transition(s) {
            Ok(prev) => {
                self.metrics.set_state(s.as_str());
                if prev != s {
                    crate::narrate!(
                        human = s.describe(),
                        event = "lifecycle",
                        state = s.as_str(),
                        from = prev.as_str(),
                        worker_id = %self.cfg.worker_id
                    );
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Log the state the worker starts in; it is entered without a transition.
    pub fn announce_start(&self) {
        let s = self.state.get();
        self.metrics.set_state(s.as_str());
        crate::narrate!(
            human = s.describe(),
            event = "lifecycle",
            state = s.as_str(),
            worker_id = %self.cfg.worker_id
        );
    }

    /// Executing → Ready after a job, unless draining or stopped meanwhile.
    pub fn job_done(&self) {
        if self.state.get() == Lifecycle::Executing {
            self.set_state(Lifecycle::Ready);
        }
    }

    /// Ready per WORKER-4232: serving, a model loaded and still sealed.
    pub fn is_ready(&self) -> bool {
        self.lifecycle().is_serving() && self.model.get().is_some_and(|m| m.handle().sealed)
    }

    /// The error a request gets when the worker cannot take work now.
    pub fn unavailable(&self) -> WorkerError {
        let st = self.lifecycle();
        let (why, retry) = match st {
            Lifecycle::Starting | Lifecycle::Loading => ("is still loading its model", 1000),
            Lifecycle::Draining => ("is draining before shutdown and takes no new jobs", 1000),
            _ => ("has stopped", 5000),
        };
        WorkerError::Unavailable {
            message: format!(
                "the worker {why} (state {}); send the request to another worker",
                st.as_str()
            ),
            retry_after_ms: retry,
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}
