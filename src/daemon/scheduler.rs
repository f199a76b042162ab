//! The single execution slot and the job registry (SCHEDULER-M0,
//! WORKER-4420, 4251, 4252).
//!
//! One slot, no queue: a second execute is refused at once with a retriable
//! `WORKER_BUSY` carrying `retry_after_ms`, so memory and latency stay
//! bounded. The slot is released by dropping its [`SlotGuard`], which the
//! engine thread holds until the job's last event is sent. Each job records
//! the fp6 of the identity that created it; only that identity may cancel it.

use crate::error::{Result, WorkerError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How many finished jobs are remembered so that a late cancel gets a
/// truthful answer ("already finished") instead of 404.
const RECENT: usize = 64;

/// A job as seen by the cancel endpoint and the SSE stream.
#[derive(Debug)]
pub struct JobCtl {
    pub job_id: String,
    pub owner_fp6: String,
    /// Set once; read before every decode step and every token send (4252).
    pub cancel: AtomicBool,
    pub started: Instant,
    /// Only the planted `cancel_lags_five_steps` bug reads this.
    pub lagged_checks: AtomicU32,
    /// Token events the stream has committed to send. The stream's
    /// check-and-count and the cancel's set-and-read hold this lock, so the
    /// count a cancel reports is exactly the number of token events the
    /// client will ever receive (4252).
    pub tokens_sent: Mutex<u64>,
}

impl JobCtl {
    pub fn is_cancelled(&self) -> bool {
        let cancelled = self.cancel.load(Ordering::SeqCst);
        if cancelled && crate::mutants::active(crate::mutants::Mutant::CancelLagsFiveSteps) {
            // Planted bug: each decode step asks twice (before the step and
            // before its token), so ten unheeded answers are five steps.
            return self.lagged_checks.fetch_add(1, Ordering::SeqCst) >= 10;
        }
        cancelled
    }

    /// May the stream send one more token event? Counts it when it may.
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

#[derive(Debug, Default)]
struct Inner {
    active: Option<Arc<JobCtl>>,
    recent: VecDeque<(String, String)>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the slot for a new job or refuse with `WORKER_BUSY`.
    pub fn try_acquire(self: &Arc<Self>, job_id: String, owner_fp6: String) -> Result<SlotGuard> {
        let mut g = self.lock();
        if let Some(a) = &g.active {
            let elapsed = a.started.elapsed().as_millis() as u64;
            return Err(WorkerError::Busy {
                message:
                    "the worker's single execution slot is in use by another job; retry after \
                          retry_after_ms or send the request to another worker"
                        .into(),
                retry_after_ms: retry_hint(elapsed),
            });
        }
        let ctl = Arc::new(JobCtl {
            job_id,
            owner_fp6,
            cancel: AtomicBool::new(false),
            started: Instant::now(),
            lagged_checks: AtomicU32::new(0),
            tokens_sent: Mutex::new(0),
        });
        g.active = Some(Arc::clone(&ctl));
        Ok(SlotGuard {
            sched: Arc::clone(self),
            ctl,
        })
    }

    pub fn is_busy(&self) -> bool {
        self.lock().active.is_some()
    }

    pub fn active(&self) -> Option<Arc<JobCtl>> {
        self.lock().active.clone()
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
        if let Some(a) = g.active.as_ref().filter(|a| a.job_id == job_id) {
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

    /// Cancel whatever runs (drain timeout, second signal). Returns whether a job was running.
    pub fn cancel_active(&self) -> bool {
        match &self.lock().active {
            Some(a) => {
                a.cancel.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Wait until no job holds the slot.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if !self.is_busy() {
                return;
            }
            notified.await;
        }
    }
}

/// A crude but honest hint: a job that has run a while is likelier to end soon.
fn retry_hint(elapsed_ms: u64) -> u64 {
    if elapsed_ms < 1000 {
        500
    } else {
        250
    }
}

/// Holds the slot; dropping it frees the slot and wakes drain waiters.
#[derive(Debug)]
pub struct SlotGuard {
    sched: Arc<Scheduler>,
    ctl: Arc<JobCtl>,
}

impl SlotGuard {
    pub fn ctl(&self) -> &Arc<JobCtl> {
        &self.ctl
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut g = self.sched.lock();
        if g.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, &self.ctl)) {
            g.active = None;
        }
        if g.recent.len() >= RECENT {
            g.recent.pop_front();
        }
        g.recent
            .push_back((self.ctl.job_id.clone(), self.ctl.owner_fp6.clone()));
        drop(g);
        self.sched.idle.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_then_busy_then_free() {
        let s = Arc::new(Scheduler::default());
        let g = s.try_acquire("j1".into(), "aaaaaa".into()).unwrap();
        let e = s.try_acquire("j2".into(), "aaaaaa".into()).unwrap_err();
        assert_eq!(e.code(), "WORKER_BUSY");
        assert!(e.retriable() && e.retry_after_ms().unwrap() > 0);
        drop(g);
        assert!(!s.is_busy());
        assert!(s.try_acquire("j3".into(), "aaaaaa".into()).is_ok());
    }

    #[test]
    fn cancel_owner_rules() {
        let s = Arc::new(Scheduler::default());
        let g = s.try_acquire("j1".into(), "aaaaaa".into()).unwrap();
        assert_eq!(s.cancel("j1", "bbbbbb").unwrap_err().code(), "FORBIDDEN");
        assert!(!g.ctl().is_cancelled(), "a refused cancel changes nothing");
        assert_eq!(s.cancel("nope", "aaaaaa").unwrap_err().code(), "NOT_FOUND");
        assert!(g.ctl().admit_token() && g.ctl().admit_token());
        assert_eq!(
            s.cancel("j1", "aaaaaa").unwrap(),
            CancelOutcome::Cancelled { tokens_sent: 2 }
        );
        assert!(g.ctl().is_cancelled());
        assert!(
            !g.ctl().admit_token(),
            "no token is admitted after a cancel"
        );
        drop(g);
        assert_eq!(
            s.cancel("j1", "aaaaaa").unwrap(),
            CancelOutcome::AlreadyFinished
        );
        assert_eq!(s.cancel("j1", "bbbbbb").unwrap_err().code(), "FORBIDDEN");
    }

    #[tokio::test]
    async fn wait_idle_returns_when_slot_frees() {
        let s = Arc::new(Scheduler::default());
        let g = s.try_acquire("j1".into(), "a".into()).unwrap();
        let s2 = Arc::clone(&s);
        let waiter = tokio::spawn(async move { s2.wait_idle().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
