//! The engine thread: one dedicated OS thread owns the `Engine` (not Sync,
//! compute-heavy) and runs jobs sent over a channel (WORKER-4121, 4245,
//! 4252, 4421, 4710, 4712, 4800, 4820).
//!
//! Per job: verify the seal by recomputing the resident digest → prefill →
//! decode loop (cancel and deadline checked before every step, cancel again
//! before every token send) → `end` or `error`. Token events go back over a
//! bounded tokio channel; when the receiver is gone (client disconnected) the
//! job stops at the next step and frees the slot. A fatal error (seal
//! mismatch, CUDA error) is reported to the supervisor after the job's error
//! event was queued, so the client sees why before the process stops.

use crate::daemon::app::AppState;
use crate::daemon::scheduler::{JobCtl, SlotGuard};
use crate::daemon::state::Lifecycle;
use crate::engine::sequence::{EventSink, Finish, GenerationParams, Prompt, Sequence};
use crate::engine::Engine;
use crate::error::{Result, WorkerError};
use crate::telemetry::whole_ms_up;
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
    pub events: tmpsc::Sender<JobEvent>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

/// What `generate` needs of a job (the slot stays with `run_job`).
struct JobRef<'a> {
    /// Moved into the job's sequence.
    prompt: Prompt,
    params: &'a GenerationParams,
    deadline: Instant,
    events: &'a tmpsc::Sender<JobEvent>,
    enqueued: Instant,
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

fn cancelled() -> WorkerError {
    WorkerError::Cancelled {
        message: "the job was cancelled by its owner or its client disconnected".into(),
    }
}

impl EngineLoop {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Run(job) => self.run_job(*job),
                #[cfg(feature = "test-hooks")]
                Cmd::Fault(f, reply) => {
                    let r = match self.engine.as_mut() {
                        Some(e) => e.inject_fault(f),
                        None => Err(WorkerError::internal("the engine was already released")),
                    };
                    let _ = reply.send(r);
                }
                Cmd::ResidentDigest(reply) => {
                    let r = match self.engine.as_mut() {
                        Some(e) => e.resident_digest(),
                        None => Err(WorkerError::internal("the engine was already released")),
                    };
                    let _ = reply.send(r);
                }
                Cmd::Shutdown(done) => {
                    self.engine = None;
                    tracing::info!(
                        human = "Released the model and its memory.",
                        "engine released"
                    );
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Run one job. Everything a client may look at after the final event
    /// (counters, readiness, the free slot) is settled before that event is
    /// sent, so a client that reacts to `end` at once never sees stale state.
    fn run_job(&mut self, job: Job) {
        let span =
            tracing::info_span!("job", job_id = %job.id, correlation_id = %job.correlation_id);
        let _e = span.enter();
        let Job {
            slot,
            events,
            prompt,
            enqueued,
            params,
            deadline,
            ..
        } = job;
        let ctl = Arc::clone(slot.ctl());
        let tokens_in = prompt.len();
        let started = Instant::now();
        self.app.metrics.set_running(1);
        let result = self.generate(
            JobRef {
                prompt,
                params: &params,
                deadline,
                events: &events,
                enqueued,
            },
            &ctl,
        );
        let app = Arc::clone(&self.app);
        app.metrics.set_running(0);
        let last = match result {
            Ok((finish, m)) => {
                let tokens_out = m.tokens_out;
                let decode_time_ms = m.decode_time_ms;
                let _ = events.blocking_send(JobEvent::Metrics(m));
                app.metrics.job_finished(None, Some(finish.as_str()));
                app.metrics
                    .e2e((started - enqueued).as_secs_f64() + started.elapsed().as_secs_f64());
                tracing::info!(
                    worker_id = %app.cfg.worker_id, gpu_device = app.cfg.gpu_device,
                    model_ref = %self.model_ref(), tokens_in, tokens_out,
                    decode_time_ms, finish_reason = finish.as_str(),
                    human = %format!(
                        "Finished a job: generated {tokens_out} tokens in {decode_time_ms} ms, stopped because of {}.",
                        finish.phrase()
                    ),
                    "job finished"
                );
                JobEvent::End(EndInfo {
                    tokens_out,
                    decode_time_ms,
                    finish_reason: finish.as_str(),
                })
            }
            Err(e) => {
                let e = if ctl.is_cancelled() && !e.is_fatal() {
                    cancelled()
                } else {
                    e
                };
                app.metrics.job_finished(Some(e.code()), None);
                if e.is_fatal() {
                    tracing::error!(code = e.code(), human = %format!("The job failed fatally: {} The worker stops now.", e.message()), "job failed fatally");
                    if matches!(e, WorkerError::SealVerificationFailed { .. }) {
                        if let Some(m) = app.model.get() {
                            m.mark_unsealed();
                        }
                    }
                    if matches!(e, WorkerError::CudaError { .. }) {
                        app.metrics.cuda_error();
                    }
                    app.set_state(Lifecycle::Stopped);
                } else {
                    tracing::warn!(code = e.code(), human = %format!("A job ended with an error: {}", e.message()), "job failed");
                }
                JobEvent::Error(e)
            }
        };
        app.job_done();
        drop(slot);
        let fatal = match &last {
            JobEvent::Error(e) if e.is_fatal() => Some(e.clone()),
            _ => None,
        };
        let _ = events.blocking_send(last);
        if let Some(e) = fatal {
            // After the client's error event was queued: the supervisor stops the process.
            let _ = app.fatal.send(e);
        }
    }

    fn model_ref(&self) -> String {
        self.app
            .model
            .get()
            .map(|m| m.model_ref.clone())
            .unwrap_or_default()
    }

    /// Recompute the resident digest and check it against the seal (4121, 4245).
    fn verify_seal(&mut self) -> Result<()> {
        let app = Arc::clone(&self.app);
        let model = app
            .model
            .get()
            .ok_or_else(|| WorkerError::internal("no model is loaded"))?;
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| WorkerError::internal("the engine was released"))?;
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

    fn generate(&mut self, job: JobRef<'_>, ctl: &JobCtl) -> Result<(Finish, JobMetrics)> {
        self.verify_seal()?;
        let app = Arc::clone(&self.app);
        let model = app
            .model
            .get()
            .ok_or_else(|| WorkerError::internal("no model is loaded"))?;
        let tok = Arc::clone(&model.tokenizer);
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| WorkerError::internal("the engine was released"))?;
        let p = &job.params;
        let n_in = job.prompt.len();
        let queue = job.enqueued.elapsed();
        app.metrics.queue(queue.as_secs_f64());
        tracing::info!(
            worker_id = %app.cfg.worker_id, gpu_device = app.cfg.gpu_device, model_ref = %model.model_ref,
            tokens_in = n_in, max_tokens = p.max_tokens, seed = p.seed, fp6 = %ctl.owner_fp6,
            human = %format!(
                "Starting a job for the client with token fingerprint {}: {n_in} prompt tokens, up to {} new tokens, seed {}.",
                ctl.owner_fp6, p.max_tokens, p.seed
            ),
            "job started"
        );
        let sink = JobSink {
            ctl,
            events: job.events,
            deadline: job.deadline,
            app: &app,
            queue,
            started: Instant::now(),
            first: None,
            last: Instant::now(),
        };
        let mut seq = Sequence::new(&tok, job.prompt, job.params.clone(), sink)?;
        // Pages are reserved for the whole request before its first step,
        // and /metrics shows them while it runs.
        seq.admit(engine.as_mut())?;
        publish_kv(&app, engine.as_ref());
        let result = seq.run(engine.as_mut());
        publish_kv(&app, engine.as_ref());
        let (finish, times) = result?;
        let n_out = seq.tokens_out();
        app.metrics.prompt_tokens(n_in as u64);
        app.metrics.tokens(n_out);
        let decode = times.end.saturating_sub(times.prefill);
        let m = JobMetrics {
            tokens_in: n_in as u64,
            tokens_out: n_out,
            // Rounded up: a client never reads 0 ms for a sub-ms time (issue 10).
            queue_time_ms: whole_ms_up(queue),
            prefill_time_ms: whole_ms_up(times.prefill),
            time_to_first_token_ms: whole_ms_up(times.first_token + queue),
            decode_time_ms: whole_ms_up(decode),
            tokens_per_second: if decode.as_secs_f64() > 0.0 {
                n_out as f64 / decode.as_secs_f64()
            } else {
                0.0
            },
        };
        Ok((finish, m))
    }
}

/// Where a daemon job's tokens go: its SSE stream, through a bounded
/// channel. The job stops at the next step when it is cancelled, its client
/// is gone or its deadline has passed (4252, 4421).
struct JobSink<'a> {
    ctl: &'a JobCtl,
    events: &'a tmpsc::Sender<JobEvent>,
    deadline: Instant,
    app: &'a AppState,
    /// Time the job waited before it started, part of its time to first token.
    queue: Duration,
    started: Instant,
    first: Option<Instant>,
    last: Instant,
}

impl EventSink for JobSink<'_> {
    fn check(&mut self) -> Result<()> {
        if self.ctl.is_cancelled() {
            return Err(cancelled());
        }
        if Instant::now() >= self.deadline {
            return Err(WorkerError::Timeout {
                message:
                    "the job ran past execution_timeout_ms and was stopped; ask for fewer tokens \
                          or raise the timeout"
                        .into(),
            });
        }
        Ok(())
    }

    fn token(&mut self, index: u64, text: String) -> Result<()> {
        // Checked right before the send so that no token follows an acknowledged cancel (4252).
        if self.ctl.is_cancelled() {
            return Err(cancelled());
        }
        self.events
            .blocking_send(JobEvent::Token { t: text, i: index })
            .map_err(|_| {
                self.ctl
                    .cancel
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                cancelled()
            })
    }

    fn sampled(&mut self) {
        let now = Instant::now();
        match self.first {
            None => {
                self.first = Some(now);
                self.app
                    .metrics
                    .ttft((now - self.started + self.queue).as_secs_f64());
            }
            Some(_) => self.app.metrics.itl((now - self.last).as_secs_f64()),
        }
        self.last = now;
    }
}

/// The KV pool's use, for /metrics (issue 11 point 3).
pub(crate) fn publish_kv(app: &AppState, engine: &dyn crate::engine::Engine) {
    let kv = engine.kv_usage();
    app.metrics.set_kv_pages(kv.used_pages, kv.total_pages);
}
