//! The step watchdog (issue 12, "Bad input and failure"): a hung engine
//! step (a kernel that never returns, a device that stopped answering) must
//! not leave the worker looking healthy while nothing moves. The engine
//! thread stamps the start of every step (and of the seal check before a
//! step that admits jobs, which runs on the device too) on a [`StepClock`]
//! and clears it after; a task on the async runtime looks at the clock four times per
//! `step_timeout_ms`, and when a step has run past it, ends every job in
//! flight with `ENGINE_HUNG` (their streams are woken even though the engine
//! thread is stuck), and hands the error to the fatal path, which turns
//! `/health` to 503, posts the stopped status and exits with code 4, as a
//! CUDA error does. The engine thread itself cannot be interrupted; the
//! process exit ends it.

use super::app::AppState;
use crate::error::WorkerError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When the engine's current step began; none between steps.
#[derive(Debug)]
pub struct StepClock {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one when a step began; 0: no step.
    began: AtomicU64,
}

impl Default for StepClock {
    fn default() -> Self {
        StepClock {
            epoch: Instant::now(),
            began: AtomicU64::new(0),
        }
    }
}

impl StepClock {
    /// The engine thread is about to run a step; the clock stops when the
    /// guard drops, also when the step panics (the panic then stops the
    /// worker as a bug, not as a hang).
    pub fn stamp(&self) -> StepStamp<'_> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.began.store(now + 1, Ordering::SeqCst);
        StepStamp(self)
    }

    /// How long the current step has run; None between steps.
    pub fn running_for(&self) -> Option<Duration> {
        match self.began.load(Ordering::SeqCst) {
            0 => None,
            b => {
                let now = self.epoch.elapsed().as_millis() as u64;
                Some(Duration::from_millis(now.saturating_sub(b - 1)))
            }
        }
    }
}

/// A step in progress on the [`StepClock`].
pub struct StepStamp<'a>(&'a StepClock);

impl Drop for StepStamp<'_> {
    fn drop(&mut self) {
        self.0.began.store(0, Ordering::SeqCst);
    }
}

/// The error a hung step ends every job with.
pub fn hung_error(ran: Duration, limit: Duration) -> WorkerError {
    WorkerError::EngineHung {
        message: format!(
            "an engine step has run for {:.1} s, longer than step_timeout_ms ({} ms): the GPU or the engine \
             is hung, so this job cannot finish; the worker stops so that its supervisor restarts it",
            ran.as_secs_f64(),
            limit.as_millis()
        ),
    }
}

/// Watch the engine's steps until the process ends; fires at most once.
pub fn spawn(app: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let limit = Duration::from_millis(app.cfg.step_timeout_ms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((limit / 4).max(Duration::from_millis(25)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(ran) = app.step_clock.running_for() else {
                continue;
            };
            if ran <= limit {
                continue;
            }
            let e = hung_error(ran, limit);
            crate::narrate_error!(
                human = format!(
                    "The engine has been inside one step for {:.1} s (step_timeout_ms is {} ms): the GPU or the \
                     engine is hung. Every job in flight ends with ENGINE_HUNG and the worker stops (exit code 4); \
                     its supervisor should restart it. If steps are simply slow on this machine, raise \
                     step_timeout_ms.",
                    ran.as_secs_f64(),
                    limit.as_millis()
                ),
                code = e.code(),
                step_ms = ran.as_millis() as u64
            );
            // /health answers 503 before any stream learns of the failure.
            app.set_state(super::state::Lifecycle::Stopped);
            app.scheduler.fail_all(&e);
            let _ = app.fatal.send(e);
            return;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_measures_only_a_running_step() {
        let c = StepClock::default();
        assert_eq!(c.running_for(), None);
        {
            let _step = c.stamp();
            std::thread::sleep(Duration::from_millis(30));
            let ran = c.running_for().expect("a step is running");
            assert!(
                ran >= Duration::from_millis(25) && ran < Duration::from_secs(5),
                "{ran:?}"
            );
        }
        assert_eq!(c.running_for(), None);
        // A step that panics stops the clock too.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _step = c.stamp();
            panic!("a step fails");
        }));
        assert_eq!(c.running_for(), None);
    }

    #[test]
    fn the_error_is_fatal_and_names_the_limit() {
        let e = hung_error(Duration::from_millis(2500), Duration::from_millis(1000));
        assert_eq!(e.code(), "ENGINE_HUNG");
        assert!(e.is_fatal());
        assert_eq!(
            crate::daemon::exit::for_error(&e),
            crate::daemon::exit::DEVICE
        );
        assert!(
            e.message().contains("2.5 s") && e.message().contains("1000 ms"),
            "{}",
            e.message()
        );
    }
}
