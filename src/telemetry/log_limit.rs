//! A budget of log lines per kind and per interval (issue 13 point 4).
//!
//! Why: a client decides how many requests it sends, so a line per request
//! lets it decide how fast the log grows. Without a token, 2.2 MiB/s of
//! 401 warnings filled a disk. Each kind of line that a client can cause
//! (the access line of one route and status, an authentication failure)
//! gets a budget per interval: the first lines of an interval are written in
//! full, the rest are counted, and one summary line per kind says how many
//! were left out. Kinds come from a closed set (routes, statuses, codes), so
//! the log grows at most by a fixed number of lines per interval, whatever
//! the clients do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one budget interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Most kinds tracked: past this, new kinds share one budget (`other`).
const MAX_KINDS: usize = 256;

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

/// Lines left out of one kind during an interval that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub kind: String,
    pub count: u64,
    pub budget: u32,
}

/// Per-kind budgets; shared by every request task.
#[derive(Debug, Default)]
pub struct LogLimiter {
    windows: Mutex<HashMap<String, Window>>,
}

impl LogLimiter {
    /// Whether a line of `kind` may be written now, given `budget` lines per
    /// [`INTERVAL`]. A kind whose previous interval ended with lines left
    /// out gets its summary written first.
    pub fn allow(&self, kind: &str, budget: u32) -> bool {
        if crate::mutants::active(crate::mutants::Mutant::LogUnlimited) {
            return true;
        }
        let (allowed, ended) = self.allow_at(kind, budget, Instant::now());
        if let Some(s) = ended {
            log_summary(&s);
        }
        allowed
    }

    /// As [`Self::allow`] at `now`, returning the ended interval's summary
    /// instead of writing it (tests drive the clock).
    pub fn allow_at(&self, kind: &str, budget: u32, now: Instant) -> (bool, Option<Suppressed>) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let kind = if windows.len() >= MAX_KINDS && !windows.contains_key(kind) {
            "other"
        } else {
            kind
        };
        let w = windows.entry(kind.to_string()).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        let mut ended = None;
        if now.saturating_duration_since(w.started) >= INTERVAL {
            if w.suppressed > 0 {
                ended = Some(Suppressed {
                    kind: kind.to_string(),
                    count: w.suppressed,
                    budget,
                });
            }
            *w = Window {
                started: now,
                written: 0,
                suppressed: 0,
            };
        }
        if w.written < budget {
            w.written += 1;
            (true, ended)
        } else {
            w.suppressed += 1;
            (false, ended)
        }
    }

    /// Summaries of every interval that has ended with lines left out, and
    /// those kinds reset; called every [`INTERVAL`], so counts are reported
    /// even when the traffic that caused them has stopped.
    pub fn take_ended(&self, now: Instant) -> Vec<Suppressed> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        windows.retain(|kind, w| {
            if now.saturating_duration_since(w.started) < INTERVAL {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed {
                    kind: kind.clone(),
                    count: w.suppressed,
                    budget: w.written,
                });
            }
            false
        });
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        out
    }

    /// Write the summaries of ended intervals (the periodic flush).
    pub fn flush(&self) {
        for s in self.take_ended(Instant::now()) {
            log_summary(&s);
        }
    }
}

fn log_summary(s: &Suppressed) {
    tracing::warn!(
        human = %format!(
            "Left {} more log lines of the kind \"{}\" out of the last {} s: at most {} such lines are written \
             per {} s, so no client can flood the log. Many of them in a row usually means a misconfigured or \
             hostile client; the metrics count every request.",
            s.count,
            s.kind,
            INTERVAL.as_secs(),
            s.budget,
            INTERVAL.as_secs()
        ),
        event = "log_lines_suppressed",
        kind = %s.kind,
        suppressed = s.count,
        "log lines suppressed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_writes_its_budget_then_counts_and_reports_the_rest() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..5).map(|_| l.allow_at("401 execute", 3, t0).0).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        // Another kind has its own budget.
        assert!(l.allow_at("200 ready", 3, t0).0);
        // The next interval starts with a full budget and reports what was left out.
        let (ok, ended) = l.allow_at("401 execute", 3, t0 + INTERVAL);
        assert!(ok);
        assert_eq!(
            ended,
            Some(Suppressed {
                kind: "401 execute".into(),
                count: 2,
                budget: 3
            })
        );
    }

    #[test]
    fn the_flush_reports_ended_intervals_once_and_only_with_lines_left_out() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            l.allow_at("429 execute", 4, t0);
        }
        l.allow_at("200 ready", 4, t0);
        assert!(l.take_ended(t0 + INTERVAL / 2).is_empty(), "not ended yet");
        let ended = l.take_ended(t0 + INTERVAL);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].kind.as_str(), ended[0].count), ("429 execute", 6));
        assert!(l.take_ended(t0 + 3 * INTERVAL).is_empty(), "reported once");
    }

    #[test]
    fn the_number_of_kinds_is_bounded() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KINDS + 100) {
            l.allow_at(&format!("kind {i}"), 1, t0);
        }
        assert!(l.windows.lock().unwrap().len() <= MAX_KINDS + 1);
    }
}
