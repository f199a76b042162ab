//! The event sink of the decode-loop and batching tests (issue 11): it
//! records every event and can stop its sequence the way a cancel, a
//! disconnect or a deadline would.

use crate::engine::sequence::EventSink;
use crate::error::{Result, WorkerError};

/// Records events; `check` fails once `stop_after` events were delivered
/// or at the `stop_at_check`-th question, whichever comes first.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Recorder {
    /// Which request this is, for tests that run several.
    pub id: usize,
    pub events: Vec<(u64, String)>,
    /// How often the sequence asked whether it may go on.
    pub checks: usize,
    pub stop_after: Option<usize>,
    pub stop_at_check: Option<usize>,
}

impl EventSink for Recorder {
    fn check(&mut self) -> Result<()> {
        self.checks += 1;
        let by_events = self.stop_after.is_some_and(|n| self.events.len() >= n);
        let by_checks = self.stop_at_check.is_some_and(|n| self.checks >= n);
        if by_events || by_checks {
            return Err(WorkerError::Cancelled {
                message: "cancelled by the test".into(),
            });
        }
        Ok(())
    }

    fn token(&mut self, index: u64, text: String) -> Result<()> {
        self.events.push((index, text));
        Ok(())
    }
}
