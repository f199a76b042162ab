//! When the serving loop waits for more arrivals and when it admits
//! (issue 11 point 6: jobs arriving together share one seal verification,
//! and a running batch never stalls for a newcomer).

use super::*;

const W: Duration = Duration::from_millis(10);
const YOUNG: Option<Duration> = Some(Duration::from_millis(3));
const OLD: Option<Duration> = Some(Duration::from_millis(10));

#[test]
fn the_loop_blocks_for_companions_only_while_idle_and_serving() {
    // Idle and serving: the rest of the oldest job's window.
    assert_eq!(
        admission_wait(YOUNG, true, true, W),
        Duration::from_millis(7)
    );
    assert_eq!(admission_wait(OLD, true, true, W), Duration::ZERO);
    // A running batch never blocks; neither does a draining worker.
    assert_eq!(admission_wait(YOUNG, false, true, W), Duration::ZERO);
    assert_eq!(admission_wait(YOUNG, true, false, W), Duration::ZERO);
    assert_eq!(admission_wait(YOUNG, false, false, W), Duration::ZERO);
    // Nothing waits: nothing to wait for.
    assert_eq!(admission_wait(None, true, true, W), Duration::ZERO);
}

#[test]
fn waiting_jobs_are_admitted_when_idle_draining_or_after_their_window() {
    assert!(!admission_due(None, true, true, W), "no job, no admission");
    assert!(admission_due(YOUNG, true, true, W), "idle: at once");
    assert!(
        !admission_due(YOUNG, false, true, W),
        "running: not before the window"
    );
    assert!(
        admission_due(OLD, false, true, W),
        "running: once the window is over"
    );
    assert!(
        admission_due(YOUNG, false, false, W),
        "draining: at once, to refuse the rest"
    );
}
