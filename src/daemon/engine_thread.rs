//! The engine thread: one dedicated OS thread owns the `Engine` (not Sync,
//! compute-heavy) and serves the jobs sent over a channel (WORKER-4121,
//! 4245, 4252, 4421, 4710, 4712, 4800, 4820).
//!
//! This file holds the thread, its commands and the events a job sends to
//! its SSE stream; `daemon::batcher` runs the jobs, many at once. Between
//! jobs the thread answers the other commands (test faults, the resident
//! digest for a re-sealing commit, shutdown); while jobs run it answers
//! them between two engine steps.

use crate::daemon::app::AppState;
use crate::daemon::batcher::{self, Exit};
use crate::daemon::scheduler::SlotGuard;
use crate::daemon::state::Lifecycle;
use crate::engine::sequence::{GenerationParams, Prompt};
use crate::engine::Engine;
use crate::error::{Result, WorkerError};
use serde::Serialize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// Events a job sends to its SSE stream, in order; `End` or `Error` is last.
#[derive(Debug)]
pub enum JobEvent {
    Token { t: String, i: u64 },
    Metrics(JobMetrics),
    End(EndInfo),
    Error(WorkerError),
}

#[derive(Debug, Clone, Serialize)]
pub struct EndInfo {
    pub tokens_out: u64,
    pub decode_time_ms: u64,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobMetrics {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub queue_time_ms: u64,
    pub prefill_time_ms: u64,
    pub time_to_first_token_ms: u64,
    pub decode_time_ms: u64,
    pub tokens_per_second: f64,
}

pub struct Job {
    pub id: String,
    pub correlation_id: String,
    pub prompt: Prompt,
    pub params: GenerationParams,
    pub slot: SlotGuard,
    /// Holds every event the job can send (max_tokens + 2), so the engine
    /// thread never waits for a slow client.
    pub events: tmpsc::Sender<JobEvent>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

pub enum Cmd {
    Run(Box<Job>),
    #[cfg(feature = "test-hooks")]
    Fault(crate::engine::Fault, oneshot::Sender<Result<()>>),
    /// Recompute the resident digest, for a commit that re-seals the
    /// resident model under a new shard id (WORKER-4113, 4227).
    ResidentDigest(oneshot::Sender<Result<[u8; 32]>>),
    /// Drop the engine (releasing its memory, WORKER-4972) and end the thread.
    Shutdown(oneshot::Sender<()>),
}

/// The rest of the process talks to the engine only through this.
pub struct EngineHandle {
    tx: Mutex<mpsc::Sender<Cmd>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineHandle")
    }
}

impl EngineHandle {
    pub fn spawn(app: Arc<AppState>, engine: Box<dyn Engine>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let join = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                EngineLoop {
                    app,
                    engine: Some(engine),
                }
                .run(rx)
            })
            .map_err(|e| {
                WorkerError::internal(format!("could not start the engine thread: {e}"))
            })?;
        Ok(Self {
            tx: Mutex::new(tx),
            join: Mutex::new(Some(join)),
        })
    }

    pub fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(cmd)
            .map_err(|_| WorkerError::internal("the engine thread is no longer running"))
    }

    /// The resident digest, recomputed by the engine thread after any job
    /// ahead of it. Blocking: call it off the async threads.
    pub fn resident_digest_blocking(&self) -> Result<[u8; 32]> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::ResidentDigest(tx))?;
        rx.blocking_recv()
            .map_err(|_| WorkerError::internal("the engine thread ended before answering"))?
    }

    /// False once the thread has ended (shut down or panicked): /health turns 503.
    pub fn is_alive(&self) -> bool {
        self.join
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|j| !j.is_finished())
    }

    /// Release the engine and wait (bounded) for the thread to end.
    pub async fn shutdown(&self, within: Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.send(Cmd::Shutdown(done_tx)).is_ok() {
            let _ = tokio::time::timeout(within, done_rx).await;
        }
    }
}

struct EngineLoop {
    app: Arc<AppState>,
    engine: Option<Box<dyn Engine>>,
}

impl Drop for EngineLoop {
    fn drop(&mut self) {
        // A panic inside the engine leaves it in an unknown state: stop the worker (exit 1).
        if std::thread::panicking() {
            self.app.set_state(Lifecycle::Stopped);
            let _ = self.app.fatal.send(WorkerError::internal(
                "the engine thread crashed (a bug); the worker stops so that its supervisor restarts it",
            ));
        }
    }
}

impl EngineLoop {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            let Some(engine) = self.engine.as_deref_mut() else {
                return;
            };
            let cmd = match cmd {
                Cmd::Run(job) => match batcher::serve(&self.app, engine, *job, &rx) {
                    Exit::Idle => continue,
                    Exit::Shutdown(done) => Cmd::Shutdown(done),
                },
                other => other,
            };
            match cmd {
                Cmd::Shutdown(done) => {
                    self.engine = None;
                    tracing::info!(
                        human = "Released the model and its memory.",
                        "engine released"
                    );
                    let _ = done.send(());
                    return;
                }
                other => answer(engine, other),
            }
        }
    }
}

/// Answer a command other than a job or a shutdown.
pub(super) fn answer(engine: &mut dyn Engine, cmd: Cmd) {
    match cmd {
        #[cfg(feature = "test-hooks")]
        Cmd::Fault(f, reply) => {
            let _ = reply.send(engine.inject_fault(f));
        }
        Cmd::ResidentDigest(reply) => {
            let _ = reply.send(engine.resident_digest());
        }
        Cmd::Run(_) | Cmd::Shutdown(_) => {
            tracing::error!(human = "The engine thread was handed a job or a shutdown where it answers only queries (a bug); ignored.", "command misrouted");
        }
    }
}

/// Recompute the resident digest and check it against the seal (4121,
/// 4245); done once per engine step that admits jobs.
pub(super) fn verify_seal(app: &AppState, engine: &mut dyn Engine) -> Result<()> {
    let model = app
        .model
        .get()
        .ok_or_else(|| WorkerError::internal("no model is loaded"))?;
    let t0 = Instant::now();
    let digest = engine.resident_digest()?;
    let handle = model.handle();
    let ok = handle.sealed && handle.verify(&digest, &app.seal_key);
    let took = t0.elapsed();
    app.metrics.seal_verification(ok, took.as_secs_f64());
    // The next job's predicted_start_ms (see LoadedModel::seal_check_ms).
    model.seal_check_ms.store(
        crate::telemetry::whole_ms_up(took),
        std::sync::atomic::Ordering::Relaxed,
    );
    if ok {
        return Ok(());
    }
    Err(WorkerError::SealVerificationFailed {
        message: format!(
            "the resident bytes of shard {} no longer match its seal (sealed digest {}, recomputed {}); \
             the model in memory was altered, so the worker refuses to run it and stops. Restart the worker.",
            handle.shard_id,
            handle.digest,
            hex::encode(digest)
        ),
    })
}

/// The KV pool's use, for /metrics and capacity (issue 11 point 3).
pub(crate) fn publish_kv(app: &AppState, engine: &dyn crate::engine::Engine) {
    let kv = engine.kv_usage();
    app.metrics.set_kv_pages(kv.used_pages, kv.total_pages);
    app.scheduler.set_kv(kv);
}
