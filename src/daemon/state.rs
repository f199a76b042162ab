//! Lifecycle state machine (WORKER-4030, 4031, 4032, 4970).
//!
//! Starting → Loading → Ready ⇄ Executing; Ready/Executing → Draining →
//! Stopped; any state → Stopped on a fatal error. Transitions outside this
//! graph are refused so that, for instance, a finished job cannot flip a
//! draining worker back to Ready. Every transition is logged as a structured
//! event (`event` = "lifecycle", `state`, `from`; see `AppState::set_state`),
//! so the order of states can be read from the log, not guessed from prose.

use serde::Serialize;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Starting,
    Loading,
    Ready,
    Executing,
    Draining,
    Stopped,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Executing => "executing",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }

    /// The operator's sentence for entering this state (the `human` field of
    /// its lifecycle event).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Starting => "The worker is starting: it reads its configuration and credentials and serves nothing yet.",
            Self::Loading => "The worker is loading its model: it reads, verifies and seals it, and refuses jobs until that is done.",
            Self::Ready => "The worker is ready: its model is verified and sealed, and it accepts a job.",
            Self::Executing => "The worker is running jobs; it accepts more while a slot or a queue place is free, and refuses the rest as busy.",
            Self::Draining => "The worker is draining: it refuses new and waiting jobs and stops when the running ones end.",
            Self::Stopped => "The worker has stopped serving; its supervisor decides whether to restart it.",
        }
    }

    /// Whether the worker serves inference in this state (/health 200).
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Ready | Self::Executing)
    }

    pub fn can_go_to(self, next: Lifecycle) -> bool {
        use Lifecycle::*;
        matches!(
            (self, next),
            (Starting, Loading)
                | (Loading, Ready)
                | (Ready, Executing)
                | (Executing, Ready)
                | (Ready, Draining)
                | (Executing, Draining)
                | (Starting | Loading | Draining, Draining)
                | (_, Stopped)
        ) && self != Stopped
    }
}

/// The one shared lifecycle state.
#[derive(Debug)]
pub struct StateCell(Mutex<Lifecycle>);

impl Default for StateCell {
    fn default() -> Self {
        Self(Mutex::new(Lifecycle::Starting))
    }
}

impl StateCell {
    pub fn get(&self) -> Lifecycle {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move to `next` if the graph allows it; returns the state before.
    pub fn transition(&self, next: Lifecycle) -> Result<Lifecycle, Lifecycle> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let prev = *g;
        if prev == next || prev.can_go_to(next) {
            *g = next;
            Ok(prev)
        } else {
            Err(prev)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lifecycle::*;
    use super::*;

    #[test]
    fn happy_path() {
        let s = StateCell::default();
        for next in [
            Loading, Ready, Executing, Ready, Executing, Draining, Stopped,
        ] {
            assert!(s.transition(next).is_ok(), "to {next:?}");
        }
        assert_eq!(s.get(), Stopped);
    }

    #[test]
    fn forbidden_transitions() {
        assert!(
            !Starting.can_go_to(Ready),
            "ready only after loading and sealing"
        );
        assert!(!Loading.can_go_to(Executing));
        assert!(
            !Draining.can_go_to(Ready),
            "a finished job must not undo draining"
        );
        assert!(!Draining.can_go_to(Executing));
        assert!(!Stopped.can_go_to(Ready));
        assert!(!Stopped.can_go_to(Stopped));
        let s = StateCell::default();
        assert_eq!(s.transition(Executing), Err(Starting));
        assert_eq!(s.get(), Starting);
    }

    #[test]
    fn fatal_from_anywhere() {
        for st in [Starting, Loading, Ready, Executing, Draining] {
            assert!(st.can_go_to(Stopped));
        }
    }

    #[test]
    fn every_state_has_its_own_operator_sentence() {
        let all = [Starting, Loading, Ready, Executing, Draining, Stopped];
        let mut seen = std::collections::BTreeSet::new();
        for st in all {
            let d = st.describe();
            assert!(d.starts_with("The worker") && d.ends_with('.'), "{d}");
            assert!(seen.insert(d), "{st:?} shares its sentence");
        }
    }

    #[test]
    fn serving_states() {
        let serving: Vec<_> = [Starting, Loading, Ready, Executing, Draining, Stopped]
            .into_iter()
            .filter(|s| s.is_serving())
            .collect();
        assert_eq!(serving, [Ready, Executing]);
        assert_eq!(serde_json::to_value(Draining).unwrap(), "draining");
    }
}
