//! The engine thread's serving loop: continuous batching of the daemon's
//! jobs (issue 11 points 3, 4 and 6; WORKER-4113, 4121, 4245, 4252, 4420,
//! 4421, 4710, 4722, 4970).
//!
//! Jobs arrive over the engine channel and wait in arrival order. Between
//! two engine steps the loop admits waiting jobs while a slot is free and
//! the KV pool can reserve every page the job may need, then verifies the
//! resident digest once for everyone admitted at that step: no job runs a
//! step on an unverified model, and jobs arriving within
//! `admission_window_ms` of each other share one verification. Each step
//! carries one decode row per running job and a prompt chunk of the
//! engine's size per prefilling one, so a long prompt delays the others by
//! one chunk, and a cancelled or disconnected job leaves (its pages
//! returned) before the next step. While the worker drains, waiting jobs
//! get a retriable refusal at once and running ones finish. A failed seal
//! check or a fatal engine error ends every job with that error and stops
//! the worker.

use crate::daemon::app::AppState;
use crate::daemon::engine_thread::{verify_seal, Cmd, EndInfo, Job, JobEvent, JobMetrics};
use crate::daemon::scheduler::{JobCtl, SlotGuard};
use crate::daemon::state::Lifecycle;
use crate::engine::sched::{Batch, Outcome};
use crate::engine::sequence::{EventSink, Sequence};
use crate::engine::Engine;
use crate::error::{Result, WorkerError};
use crate::model::tokenizer::Tokenizer;
use crate::telemetry::whole_ms_up;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// A job inside the engine thread: its sequence, waiting or running.
type JobSeq<'t> = Sequence<'t, JobSink>;

/// What ended a serving loop besides running out of jobs.
pub(super) enum Exit {
    /// Every job ended; wait for the next command.
    Idle,
    /// A shutdown arrived: every job was ended first.
    Shutdown(oneshot::Sender<()>),
}

/// Serve `first` and everything that arrives while jobs remain.
pub(super) fn serve(
    app: &Arc<AppState>,
    engine: &mut dyn Engine,
    first: Job,
    rx: &mpsc::Receiver<Cmd>,
) -> Exit {
    // The engine thread starts after the model is installed (start_serving).
    let Some(tok) = app.model.get().map(|m| Arc::clone(&m.tokenizer)) else {
        tracing::error!(
            human =
                "A job reached the engine before any model was installed (a bug); it is dropped.",
            "job dropped"
        );
        return Exit::Idle;
    };
    let mut server = Server {
        app,
        tok: &tok,
        waiting: VecDeque::new(),
        batch: Batch::new(engine.prefill_chunk()),
        window: Duration::from_millis(app.cfg.admission_window_ms),
        shutdown: None,
    };
    server.arrive(first);
    server.run(engine, rx)
}

struct Server<'t> {
    app: &'t Arc<AppState>,
    tok: &'t Tokenizer,
    /// Accepted jobs not yet admitted, oldest first, with their arrival here.
    waiting: VecDeque<(JobSeq<'t>, Instant)>,
    batch: Batch<'t, JobSink>,
    window: Duration,
    shutdown: Option<oneshot::Sender<()>>,
}

impl<'t> Server<'t> {
    fn run(mut self, engine: &mut dyn Engine, rx: &mpsc::Receiver<Cmd>) -> Exit {
        loop {
            self.take_commands(engine, rx);
            if self.shutdown.is_some() {
                self.end_all(engine, &super::scheduler::shutdown_cancel());
                break;
            }
            if let Err(e) = self.admit(engine) {
                self.end_all(engine, &e);
                break;
            }
            // Draining: a job that got no slot at this admission is queued,
            // and is refused at once.
            if !self.app.lifecycle().is_serving() {
                self.refuse_waiting();
            }
            if self.batch.is_empty() {
                if self.waiting.is_empty() {
                    break;
                }
                continue;
            }
            // The watchdog bounds the step (daemon::watchdog).
            let stamp = self.app.step_clock.stamp();
            let left = self.batch.step(engine);
            drop(stamp);
            // The pages of departed jobs are back: say so before their last events.
            super::engine_thread::publish_kv(self.app, engine);
            let mut fatal = None;
            for (seq, outcome) in left {
                if let Some(e) = self.conclude(seq, outcome) {
                    fatal = Some(e);
                }
            }
            self.publish(engine);
            if let Some(e) = fatal {
                self.end_all(engine, &e);
                break;
            }
        }
        self.publish(engine);
        match self.shutdown {
            Some(done) => Exit::Shutdown(done),
            None => Exit::Idle,
        }
    }

    /// Take what arrived. Blocks only while nothing runs and the oldest
    /// waiting job is still inside its admission window.
    fn take_commands(&mut self, engine: &mut dyn Engine, rx: &mpsc::Receiver<Cmd>) {
        loop {
            let wait = admission_wait(
                self.waiting.front().map(|(_, at)| at.elapsed()),
                self.batch.is_empty(),
                self.app.lifecycle().is_serving(),
                self.window,
            );
            let cmd = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                rx.recv_timeout(wait).ok()
            };
            match cmd {
                None => return,
                Some(Cmd::Run(job)) => self.arrive(*job),
                Some(Cmd::Shutdown(done)) => {
                    self.shutdown = Some(done);
                    return;
                }
                Some(other) => super::engine_thread::answer(engine, other),
            }
        }
    }

    /// A job reached the engine thread: it waits for admission.
    fn arrive(&mut self, job: Job) {
        let Job {
            id,
            correlation_id,
            prompt,
            params,
            slot,
            events,
            deadline,
            enqueued,
        } = job;
        let span = tracing::info_span!("job", job_id = %id, correlation_id = %correlation_id);
        let sink = JobSink {
            app: Arc::clone(self.app),
            span,
            ctl: Arc::clone(slot.ctl()),
            slot,
            events,
            deadline,
            enqueued,
            max_tokens: params.max_tokens,
            seed: params.seed,
            queue: Duration::ZERO,
            started: None,
            first: None,
            last: Instant::now(),
        };
        // Checked at the door too; a refusal here is still the job's own answer.
        if let Err(e) = params.check() {
            sink.conclude(Err(e), prompt.len(), 0);
            return;
        }
        match Sequence::new(self.tok, prompt, params, sink) {
            Ok(seq) => self.waiting.push_back((seq, Instant::now())),
            Err(e) => {
                tracing::error!(code = e.code(), human = %format!("A checked job was refused by its sequence (a bug): {}", e.message()), "job refused")
            }
        }
    }

    /// Admit waiting jobs in arrival order while a slot is free and their
    /// pages fit, then verify the seal once for all of them. Returns the
    /// verification's failure, which ends every job.
    fn admit(&mut self, engine: &mut dyn Engine) -> Result<()> {
        let ready = admission_due(
            self.waiting.front().map(|(_, at)| at.elapsed()),
            self.batch.is_empty(),
            self.app.lifecycle().is_serving(),
            self.window,
        );
        if !ready {
            return Ok(());
        }
        let slots = self.app.scheduler.capacity().slots_total;
        let mut admitted = false;
        while self.batch.len() < slots {
            let Some((mut seq, at)) = self.waiting.pop_front() else {
                break;
            };
            if let Err(e) = seq.sink_mut().check() {
                self.conclude(seq, Err(e));
                continue;
            }
            let ctl = Arc::clone(&seq.sink().ctl);
            match self.batch.admit(engine, seq) {
                Ok(()) => {
                    self.app.scheduler.mark_running(&ctl);
                    admitted = true;
                }
                // Pages are held by running jobs: wait for one to leave,
                // first in line still.
                Err((seq, WorkerError::Busy { .. })) if !self.batch.is_empty() => {
                    self.waiting.push_front((seq, at));
                    break;
                }
                Err((seq, e)) => {
                    self.conclude(seq, Err(e));
                }
            }
        }
        if !admitted {
            return Ok(());
        }
        // The seal check runs on the device as a step does: bounded alike.
        let stamp = self.app.step_clock.stamp();
        let sealed = verify_seal(self.app, engine);
        drop(stamp);
        sealed?;
        self.batch.for_each_mut(|seq| {
            let n_in = seq.tokens_in();
            seq.sink_mut().start(n_in);
        });
        self.publish(engine);
        Ok(())
    }

    /// Draining or stopped: waiting jobs are refused (retriable) at once.
    fn refuse_waiting(&mut self) {
        while let Some((seq, _)) = self.waiting.pop_front() {
            let e = self.app.unavailable();
            self.conclude(seq, Err(e));
        }
    }

    /// End every job, running or waiting, with `e`.
    fn end_all(&mut self, engine: &mut dyn Engine, e: &WorkerError) {
        for seq in self.batch.drain(engine) {
            self.conclude(seq, Err(e.clone()));
        }
        while let Some((seq, _)) = self.waiting.pop_front() {
            self.conclude(seq, Err(e.clone()));
        }
        self.publish(engine);
    }

    /// Send a departed job's last events; returns its error when fatal.
    fn conclude(&self, seq: JobSeq<'t>, outcome: Outcome) -> Option<WorkerError> {
        let (n_in, n_out) = (seq.tokens_in(), seq.tokens_out());
        seq.into_sink().conclude(outcome, n_in, n_out)
    }

    /// Running and waiting jobs and the KV pool's use, for /metrics and capacity.
    fn publish(&self, engine: &dyn Engine) {
        publish_counts(self.app);
        super::engine_thread::publish_kv(self.app, engine);
    }
}

/// How long the loop may block for more arrivals: only while nothing runs
/// (a running batch never stalls for a newcomer) and the worker serves, and
/// only for the rest of the oldest waiting job's window.
fn admission_wait(
    oldest_age: Option<Duration>,
    batch_empty: bool,
    serving: bool,
    window: Duration,
) -> Duration {
    match oldest_age {
        Some(age) if batch_empty && serving => window.saturating_sub(age),
        _ => Duration::ZERO,
    }
}

/// Whether waiting jobs are admitted at this step: at once when nothing
/// runs or the worker drains (waiting is then pointless), else once the
/// oldest has waited its window, so that jobs arriving together share one
/// seal verification.
fn admission_due(
    oldest_age: Option<Duration>,
    batch_empty: bool,
    serving: bool,
    window: Duration,
) -> bool {
    match oldest_age {
        None => false,
        Some(age) => batch_empty || age >= window || !serving,
    }
}

/// Running and waiting jobs, for /metrics.
fn publish_counts(app: &AppState) {
    let (running, waiting) = app.scheduler.counts();
    app.metrics.set_running(running as u64);
    app.metrics.set_waiting(waiting as u64);
}

/// Where a daemon job's tokens go: its SSE stream, through a channel that
/// holds every event the job can send, so the engine thread never waits
/// for a slow client. The job stops at the next step when it is cancelled,
/// its client is gone or its deadline has passed (4252, 4421).
pub(super) struct JobSink {
    app: Arc<AppState>,
    span: tracing::Span,
    ctl: Arc<JobCtl>,
    slot: SlotGuard,
    events: tmpsc::Sender<JobEvent>,
    deadline: Instant,
    enqueued: Instant,
    max_tokens: u32,
    seed: u64,
    /// Set at admission: the job's time in the queue and its start.
    queue: Duration,
    started: Option<Instant>,
    first: Option<Instant>,
    last: Instant,
}

impl JobSink {
    /// The job got its slot, its pages and a verified seal: its clock starts.
    fn start(&mut self, n_in: usize) {
        if self.started.is_some() {
            return;
        }
        let now = Instant::now();
        self.queue = now - self.enqueued;
        self.started = Some(now);
        self.last = now;
        let app = &self.app;
        app.metrics.queue(self.queue.as_secs_f64());
        let _e = self.span.enter();
        let fp6 = &self.ctl.owner_fp6;
        let model_ref = app
            .model
            .get()
            .map(|m| m.model_ref.clone())
            .unwrap_or_default();
        tracing::info!(
            worker_id = %app.cfg.worker_id, gpu_device = app.cfg.gpu_device, model_ref = %model_ref,
            tokens_in = n_in, max_tokens = self.max_tokens, seed = self.seed, fp6 = %fp6,
            queue_time_ms = whole_ms_up(self.queue),
            human = %format!(
                "Starting a job for the client with token fingerprint {fp6}: {n_in} prompt tokens, up to {} new tokens, seed {}.",
                self.max_tokens, self.seed
            ),
            "job started"
        );
    }

    /// Queue the job's last events and leave the registry. Everything a
    /// client may look at after the final event (counters, readiness, the
    /// free slot) is settled before that event is sent, so a client that
    /// reacts to `end` at once never sees stale state. Returns the error
    /// when it is fatal (the worker stops once the event is queued).
    fn conclude(self, outcome: Outcome, n_in: usize, n_out: u64) -> Option<WorkerError> {
        let app = Arc::clone(&self.app);
        let _e = self.span.enter();
        let result = outcome.map(|(finish, times)| {
            let decode = times.end.saturating_sub(times.prefill);
            let m = JobMetrics {
                tokens_in: n_in as u64,
                tokens_out: n_out,
                // Rounded up: a client never reads 0 ms for a sub-ms time (issue 10).
                queue_time_ms: whole_ms_up(self.queue),
                prefill_time_ms: whole_ms_up(times.prefill),
                time_to_first_token_ms: whole_ms_up(times.first_token + self.queue),
                decode_time_ms: whole_ms_up(decode),
                tokens_per_second: if decode.is_zero() {
                    0.0
                } else {
                    n_out as f64 / decode.as_secs_f64()
                },
            };
            (finish, m)
        });
        let (events, last) = match result {
            Ok((finish, m)) => {
                app.metrics.prompt_tokens(n_in as u64);
                app.metrics.tokens(n_out);
                app.metrics.job_finished(None, Some(finish.as_str()));
                app.metrics.e2e(self.enqueued.elapsed().as_secs_f64());
                let model_ref = app
                    .model
                    .get()
                    .map(|m| m.model_ref.clone())
                    .unwrap_or_default();
                tracing::info!(
                    worker_id = %app.cfg.worker_id, gpu_device = app.cfg.gpu_device,
                    model_ref = %model_ref, tokens_in = n_in, tokens_out = n_out,
                    decode_time_ms = m.decode_time_ms, finish_reason = finish.as_str(),
                    human = %format!(
                        "Finished a job: generated {n_out} tokens in {} ms, stopped because of {}.",
                        m.decode_time_ms, finish.phrase()
                    ),
                    "job finished"
                );
                let end = JobEvent::End(EndInfo {
                    tokens_out: n_out,
                    decode_time_ms: m.decode_time_ms,
                    finish_reason: finish.as_str(),
                });
                (vec![JobEvent::Metrics(m), end], None)
            }
            Err(e) => {
                app.metrics.job_finished(Some(e.code()), None);
                let fatal = e.is_fatal().then(|| e.clone());
                if fatal.is_some() {
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
                (vec![JobEvent::Error(e)], fatal)
            }
        };
        self.slot.finish(|| app.job_done());
        publish_counts(&app);
        for ev in events {
            // A full or closed channel means the client is gone: nothing to tell.
            let _ = self.events.try_send(ev);
        }
        if let Some(e) = &last {
            // After the client's error event was queued: the supervisor stops the process.
            let _ = app.fatal.send(e.clone());
        }
        last
    }
}

impl EventSink for JobSink {
    fn check(&mut self) -> Result<()> {
        if self.ctl.is_cancelled() {
            return Err(self.ctl.cancel_error());
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
            return Err(self.ctl.cancel_error());
        }
        self.events
            .try_send(JobEvent::Token { t: text, i: index })
            .map_err(|_| {
                // Closed: the client is gone. Full cannot happen (the
                // channel holds max_tokens + 2 events); treated the same.
                self.ctl
                    .cancel
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.ctl.cancel_error()
            })
    }

    fn sampled(&mut self) {
        let now = Instant::now();
        match self.first {
            None => {
                self.first = Some(now);
                let since = self.started.map_or(Duration::ZERO, |s| now - s);
                self.app.metrics.ttft((since + self.queue).as_secs_f64());
            }
            Some(_) => self.app.metrics.itl((now - self.last).as_secs_f64()),
        }
        self.last = now;
    }
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
