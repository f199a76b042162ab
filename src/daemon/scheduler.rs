//! Admission and the job registry (issue 11 point 4; WORKER-4420, 4251,
//! 4252; SCHEDULER-M0 when `slots_total` is 1 and `max_queued_jobs` 0).
//!
//! An execute is accepted while fewer than `slots + max_queued_jobs` jobs
//! are in the worker; beyond that it is refused at once with a retriable
//! `WORKER_BUSY` whose `retry_after_ms` comes from the queue ahead and how
//! long jobs have been taking, so memory and latency stay bounded. The
//! engine thread decides when an accepted job starts running (a free slot
//! and room in the KV pool) and marks it; until then it is waiting. A job
//! leaves when its [`SlotGuard`] is finished or dropped, which the engine
//! thread does only after the job's last event is queued. Each job records
//! the fp6 of the identity that created it; only that identity may cancel it.

use crate::engine::batch::KvUsage;
use crate::error::{Result, WorkerError};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How many finished jobs are remembered so that a late cancel gets a
/// truthful answer ("already finished") instead of 404.
const RECENT: usize = 64;

/// The retry hint before any job has finished, and its bounds.
const FIRST_RETRY_MS: u64 = 500;
const MIN_RETRY_MS: u64 = 50;
const MAX_RETRY_MS: u64 = 60_000;

/// A job as seen by the cancel endpoint and the SSE stream.
#[derive(Debug)]
pub struct JobCtl {
    pub job_id: String,
    pub owner_fp6: String,
    /// Set once; read before every decode step and every token send (4252).
    pub cancel: AtomicBool,
    /// Set before `cancel` when the worker itself ends the job (drain
    /// timeout, a second stop signal), so its stream says that and not
    /// that the client cancelled.
    by_worker: AtomicBool,
    /// Set by the engine thread when the job got its slot and KV pages.
    running: AtomicBool,
    pub started: Instant,
    /// Only the planted `cancel_lags_five_steps` bug reads this.
    pub lagged_checks: AtomicU32,
    /// Token events the stream has committed to send. The stream's
    /// check-and-count and the cancel's set-and-read hold this lock, so the
    /// count a cancel reports is exactly the number of token events the
    /// client will ever receive (4252).
    pub tokens_sent: Mutex<u64>,
    /// Set when the worker ends the job from outside the engine thread
    /// (the step watchdog, while that thread is stuck in a step); the
    /// stream waits on `failed_wake` as well as on the engine's events.
    failed: Mutex<Option<WorkerError>>,
    failed_wake: tokio::sync::Notify,
}

impl JobCtl {
    /// End the job with `e` from outside the engine thread: its stream
    /// sends `e` as its last event as soon as it has sent what the engine
    /// had already queued. The first failure wins.
    pub fn fail(&self, e: &WorkerError) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.clone());
            // A stored permit: a stream that starts waiting later still wakes.
            self.failed_wake.notify_one();
        }
    }

    /// Resolves with the error once [`JobCtl::fail`] was called.
    pub async fn failure(&self) -> WorkerError {
        loop {
            if let Some(e) = self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return e;
            }
            self.failed_wake.notified().await;
        }
    }

    pub fn is_cancelled(&self) -> bool {
        let cancelled = self.cancel.load(Ordering::SeqCst);
        if cancelled && crate::mutants::active(crate::mutants::Mutant::CancelLagsFiveSteps) {
            // Planted bug: each decode step asks twice (before the step and
            // before its token), so ten unheeded answers are five steps.
            return self.lagged_checks.fetch_add(1, Ordering::SeqCst) >= 10;
        }
        cancelled
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// May the stream send one more token event? Counts it when it may.
    /// The error a cancelled job's stream ends with, naming who cancelled it.
    pub fn cancel_error(&self) -> WorkerError {
        if self.by_worker.load(Ordering::SeqCst) {
            return shutdown_cancel();
        }
        WorkerError::Cancelled {
            message: "the job was cancelled by its owner or its client disconnected".into(),
        }
    }

    pub fn admit_token(&self) -> bool {
        let mut sent = self.tokens_sent.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            return false;
        }
        *sent += 1;
        true
    }

    /// Set the cancel flag; returns the token events sent before it, which
    /// are all the token events this job will ever send.
    fn cancel_and_count(&self) -> u64 {
        let sent = self.tokens_sent.lock().unwrap_or_else(|p| p.into_inner());
        self.cancel.store(true, Ordering::SeqCst);
        *sent
    }
}

/// What the worker can take now, for Plan, `/worker/ready` and the
/// readiness callback (issue 11 point 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Jobs that may run at once: `slots_total`, or fewer when the engine
    /// runs fewer sequences per step.
    pub slots_total: usize,
    pub slots_free: usize,
    /// Jobs accepted and waiting for a slot or KV pages.
    pub queue_depth: usize,
    pub max_queued_jobs: usize,
    /// Positions of the KV pool not reserved by running jobs, and in all.
    pub kv_tokens_free: usize,
    pub kv_tokens_total: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Accepted jobs that have not ended, in arrival order.
    jobs: Vec<Arc<JobCtl>>,
    recent: VecDeque<(String, String)>,
    slots: usize,
    max_queued: usize,
    kv: KvUsage,
    /// Smoothed duration of finished jobs, for retry hints.
    mean_job_ms: Option<f64>,
}

impl Inner {
    fn running(&self) -> usize {
        self.jobs.iter().filter(|j| j.is_running()).count()
    }
}

#[derive(Debug, Default)]
pub struct Scheduler {
    inner: Mutex<Inner>,
    idle: tokio::sync::Notify,
}

/// Outcome of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The running job will stop; no further token event goes out. The
    /// stream has sent exactly `tokens_sent` token events, and sends no more.
    Cancelled { tokens_sent: u64 },
    /// The job already ended.
    AlreadyFinished,
}

impl Scheduler {
    /// `slots` running jobs and `max_queued` waiting ones at most.
    pub fn new(slots: usize, max_queued: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slots: slots.max(1),
                max_queued,
                ..Inner::default()
            }),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lower the slots to what the engine can run per step.
    pub fn limit_slots(&self, engine_max: usize) {
        let mut g = self.lock();
        g.slots = g.slots.min(engine_max.max(1));
    }

    /// Accept a new job, or refuse with `WORKER_BUSY` when every slot and
    /// every queue place is taken. `on_accept` runs under the registry's
    /// lock (the lifecycle's move to executing) and may veto with an error.
    /// Returns the guard and the job's place in the queue (0: it should
    /// start at once).
    pub fn try_acquire(
        self: &Arc<Self>,
        job_id: String,
        owner_fp6: String,
        on_accept: impl FnOnce() -> Result<()>,
    ) -> Result<(SlotGuard, usize)> {
        let mut g = self.lock();
        let ahead = g.jobs.len();
        if ahead >= g.slots + g.max_queued {
            return Err(WorkerError::Busy {
                message: format!(
                    "all {} execution slots are in use and {} jobs wait for one (at most {} may); \
                     retry after retry_after_ms or send the request to another worker",
                    g.slots,
                    ahead.saturating_sub(g.slots),
                    g.max_queued
                ),
                retry_after_ms: retry_hint(ahead + 1 - g.slots, g.slots, g.mean_job_ms),
            });
        }
        on_accept()?;
        let ctl = Arc::new(JobCtl {
            job_id,
            owner_fp6,
            cancel: AtomicBool::new(false),
            by_worker: AtomicBool::new(false),
            running: AtomicBool::new(false),
            started: Instant::now(),
            lagged_checks: AtomicU32::new(0),
            tokens_sent: Mutex::new(0),
            failed: Mutex::new(None),
            failed_wake: tokio::sync::Notify::new(),
        });
        let position = (ahead + 1).saturating_sub(g.slots);
        g.jobs.push(Arc::clone(&ctl));
        Ok((
            SlotGuard {
                sched: Arc::clone(self),
                ctl,
                ended: false,
            },
            position,
        ))
    }

    /// How long a job at `position` in the queue may wait for a slot, at
    /// the pace jobs have been finishing (0 for a job that starts at once).
    pub fn expected_wait_ms(&self, position: usize) -> u64 {
        if position == 0 {
            return 0;
        }
        let g = self.lock();
        retry_hint(position, g.slots, g.mean_job_ms)
    }

    /// The engine thread started `ctl` (it holds a slot and its pages).
    pub fn mark_running(&self, ctl: &JobCtl) {
        ctl.running.store(true, Ordering::SeqCst);
    }

    /// Publish the KV pool's use (after every admission and departure).
    pub fn set_kv(&self, kv: KvUsage) {
        self.lock().kv = kv;
    }

    /// End every accepted job, running or waiting, with `e` (the step
    /// watchdog: the engine thread is stuck and cannot end them itself).
    pub fn fail_all(&self, e: &WorkerError) {
        for job in &self.lock().jobs {
            job.fail(e);
        }
    }

    pub fn capacity(&self) -> Capacity {
        let g = self.lock();
        let running = g.running();
        Capacity {
            slots_total: g.slots,
            slots_free: g.slots.saturating_sub(running),
            queue_depth: g.jobs.len() - running,
            max_queued_jobs: g.max_queued,
            kv_tokens_free: g.kv.free_tokens(),
            kv_tokens_total: g.kv.total_pages * g.kv.page_tokens,
        }
    }

    /// Running and waiting jobs.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        let running = g.running();
        (running, g.jobs.len() - running)
    }

    pub fn is_busy(&self) -> bool {
        !self.lock().jobs.is_empty()
    }

    /// Cancel `job_id` on behalf of `caller_fp6`.
    pub fn cancel(&self, job_id: &str, caller_fp6: &str) -> Result<CancelOutcome> {
        let g = self.lock();
        let forbidden = || {
            WorkerError::Forbidden {
            message: format!(
                "job {job_id} belongs to another identity; only the token that started a job may cancel it"
            ),
        }
        };
        if let Some(a) = g.jobs.iter().find(|a| a.job_id == job_id) {
            if a.owner_fp6 != caller_fp6 {
                return Err(forbidden());
            }
            let tokens_sent = a.cancel_and_count();
            return Ok(CancelOutcome::Cancelled { tokens_sent });
        }
        match g.recent.iter().find(|(id, _)| id == job_id) {
            Some((_, owner)) if owner != caller_fp6 => Err(forbidden()),
            Some(_) => Ok(CancelOutcome::AlreadyFinished),
            None => Err(WorkerError::NotFound {
                message: format!("no job with id {job_id} is known to this worker"),
            }),
        }
    }

    /// Cancel every job (drain timeout, second signal). Returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let g = self.lock();
        for j in &g.jobs {
            j.by_worker.store(true, Ordering::SeqCst);
            j.cancel.store(true, Ordering::SeqCst);
        }
        g.jobs.len()
    }

    /// Wait until no job is in the worker.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if !self.is_busy() {
                return;
            }
            notified.await;
        }
    }

    /// Remove `ctl`; `on_last` runs under the lock when it was the last job.
    fn remove(&self, ctl: &Arc<JobCtl>, on_last: impl FnOnce()) {
        let mut g = self.lock();
        let before = g.jobs.len();
        g.jobs.retain(|j| !Arc::ptr_eq(j, ctl));
        if g.jobs.len() == before {
            return;
        }
        let ms = ctl.started.elapsed().as_secs_f64() * 1e3;
        g.mean_job_ms = Some(match g.mean_job_ms {
            None => ms,
            Some(m) => 0.8 * m + 0.2 * ms,
        });
        if g.recent.len() >= RECENT {
            g.recent.pop_front();
        }
        g.recent
            .push_back((ctl.job_id.clone(), ctl.owner_fp6.clone()));
        if g.jobs.is_empty() {
            on_last();
        }
        drop(g);
        self.idle.notify_waiters();
    }
}

/// When a refused request should come back: the jobs ahead of it (`ahead`
/// beyond the slots, itself included) leave at about `slots` per typical
/// job duration. Before any job has finished there is no duration to go by.
fn retry_hint(ahead: usize, slots: usize, mean_job_ms: Option<f64>) -> u64 {
    let Some(mean) = mean_job_ms else {
        return FIRST_RETRY_MS;
    };
    let rounds = ahead as f64 / slots.max(1) as f64;
    ((mean * rounds).ceil() as u64).clamp(MIN_RETRY_MS, MAX_RETRY_MS)
}

/// A job's place in the registry; finishing or dropping it removes the job
/// and wakes drain waiters.
#[derive(Debug)]
pub struct SlotGuard {
    sched: Arc<Scheduler>,
    ctl: Arc<JobCtl>,
    ended: bool,
}

impl SlotGuard {
    pub fn ctl(&self) -> &Arc<JobCtl> {
        &self.ctl
    }

    /// Remove the job; when it was the last one, `on_idle` runs under the
    /// registry's lock, so no job accepted meanwhile can see it.
    pub fn finish(mut self, on_idle: impl FnOnce()) {
        self.ended = true;
        self.sched.remove(&self.ctl, on_idle);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.sched.remove(&self.ctl, || {});
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

/// The error of a job the worker ended while stopping: not the client's
/// doing, and worth retrying on another worker.
pub fn shutdown_cancel() -> WorkerError {
    WorkerError::Cancelled {
        message:
            "the worker is shutting down and ended this job before it finished (the drain timeout \
                  passed or a second stop signal arrived); retry it on another worker"
                .into(),
    }
}
