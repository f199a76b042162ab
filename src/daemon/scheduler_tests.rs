//! Unit tests of admission and the job registry (WORKER-4420, 4251, 4252;
//! SCHEDULER-M0 with one slot and no queue).

use super::*;

fn ok() -> Result<()> {
    Ok(())
}

fn sched(slots: usize, queued: usize) -> Arc<Scheduler> {
    Arc::new(Scheduler::new(slots, queued))
}

#[test]
fn one_slot_and_no_queue_is_milestone_zero() {
    let s = sched(1, 0);
    let (g, pos) = s.try_acquire("j1".into(), "aaaaaa".into(), ok).unwrap();
    assert_eq!(pos, 0);
    let e = s.try_acquire("j2".into(), "aaaaaa".into(), ok).unwrap_err();
    assert_eq!(e.code(), "WORKER_BUSY");
    assert_eq!(e.retry_after_ms(), Some(FIRST_RETRY_MS));
    drop(g);
    assert!(!s.is_busy());
    assert!(s.try_acquire("j3".into(), "aaaaaa".into(), ok).is_ok());
}

#[test]
fn slots_then_queue_places_then_busy() {
    let s = sched(2, 2);
    let mut held = Vec::new();
    for (i, want) in [0, 0, 1, 2].into_iter().enumerate() {
        let (g, pos) = s.try_acquire(format!("j{i}"), "a".into(), ok).unwrap();
        assert_eq!(pos, want, "job {i}'s place in the queue");
        held.push(g);
    }
    let e = s.try_acquire("j4".into(), "a".into(), ok).unwrap_err();
    assert_eq!(e.code(), "WORKER_BUSY");
    assert!(
        e.message().contains("all 2 execution slots"),
        "{}",
        e.message()
    );
    s.mark_running(held[0].ctl());
    s.mark_running(held[1].ctl());
    assert_eq!(s.counts(), (2, 2));
    let c = s.capacity();
    assert_eq!(
        (
            c.slots_total,
            c.slots_free,
            c.queue_depth,
            c.max_queued_jobs
        ),
        (2, 0, 2, 2)
    );
    held.remove(0);
    assert_eq!(s.counts(), (1, 2));
    assert!(s.try_acquire("j5".into(), "a".into(), ok).is_ok());
}

#[test]
fn a_vetoed_acceptance_takes_nothing() {
    let s = sched(1, 0);
    let e = s
        .try_acquire("j1".into(), "a".into(), || {
            Err(WorkerError::internal("draining"))
        })
        .unwrap_err();
    assert_eq!(e.code(), "INTERNAL");
    assert!(!s.is_busy());
}

#[test]
fn the_engine_lowers_the_slots() {
    let s = sched(8, 0);
    s.limit_slots(1);
    assert_eq!(s.capacity().slots_total, 1);
    let _g = s.try_acquire("j1".into(), "a".into(), ok).unwrap();
    assert!(s.try_acquire("j2".into(), "a".into(), ok).is_err());
}

#[test]
fn retry_hints_follow_the_queue() {
    // Before any job finished: the fixed first hint.
    assert_eq!(retry_hint(3, 2, None), FIRST_RETRY_MS);
    // 3 jobs ahead, 2 slots, 1000 ms per job: 1.5 rounds.
    assert_eq!(retry_hint(3, 2, Some(1000.0)), 1500);
    assert_eq!(retry_hint(1, 1, Some(1.0)), MIN_RETRY_MS);
    assert_eq!(retry_hint(1000, 1, Some(1e6)), MAX_RETRY_MS);
}

#[test]
fn finishing_the_last_job_runs_the_idle_hook_once() {
    let s = sched(2, 0);
    let (a, _) = s.try_acquire("a".into(), "x".into(), ok).unwrap();
    let (b, _) = s.try_acquire("b".into(), "x".into(), ok).unwrap();
    let mut calls = 0;
    a.finish(|| calls += 1);
    assert_eq!(calls, 0, "another job still runs");
    b.finish(|| calls += 1);
    assert_eq!(calls, 1);
    assert!(!s.is_busy());
    assert_eq!(s.cancel("a", "x").unwrap(), CancelOutcome::AlreadyFinished);
}

#[test]
fn cancel_owner_rules() {
    let s = sched(1, 0);
    let (g, _) = s.try_acquire("j1".into(), "aaaaaa".into(), ok).unwrap();
    assert_eq!(s.cancel("j1", "bbbbbb").unwrap_err().code(), "FORBIDDEN");
    assert!(!g.ctl().is_cancelled(), "a refused cancel changes nothing");
    assert_eq!(s.cancel("nope", "aaaaaa").unwrap_err().code(), "NOT_FOUND");
    assert!(g.ctl().admit_token() && g.ctl().admit_token());
    assert_eq!(
        s.cancel("j1", "aaaaaa").unwrap(),
        CancelOutcome::Cancelled { tokens_sent: 2 }
    );
    assert!(g.ctl().is_cancelled());
    assert!(g
        .ctl()
        .cancel_error()
        .message()
        .contains("cancelled by its owner"));
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

#[test]
fn cancel_all_reaches_waiting_jobs_too() {
    let s = sched(1, 1);
    let (a, _) = s.try_acquire("a".into(), "x".into(), ok).unwrap();
    let (b, _) = s.try_acquire("b".into(), "x".into(), ok).unwrap();
    s.mark_running(a.ctl());
    assert_eq!(s.cancel_all(), 2);
    // The stream of a job the worker ended says so, not that its client cancelled.
    assert!(a
        .ctl()
        .cancel_error()
        .message()
        .contains("the worker is shutting down"));
    assert!(a.ctl().is_cancelled() && b.ctl().is_cancelled());
}

#[tokio::test]
async fn wait_idle_returns_when_the_last_job_leaves() {
    let s = sched(2, 0);
    let (g1, _) = s.try_acquire("j1".into(), "a".into(), ok).unwrap();
    let (g2, _) = s.try_acquire("j2".into(), "a".into(), ok).unwrap();
    let s2 = Arc::clone(&s);
    let waiter = tokio::spawn(async move { s2.wait_idle().await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    drop(g1);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "one job is still in the worker");
    drop(g2);
    tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn a_refusal_after_jobs_finished_hints_the_queue_ahead_times_their_pace() {
    let s = sched(1, 2);
    let (g, _) = s.try_acquire("warm".into(), "a".into(), ok).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(g);
    // One running and two waiting: the fourth job has three ahead of it
    // for one slot, at about 100 ms each.
    let _held: Vec<_> = (0..3)
        .map(|i| s.try_acquire(format!("j{i}"), "a".into(), ok).unwrap())
        .collect();
    let hint = s
        .try_acquire("late".into(), "a".into(), ok)
        .unwrap_err()
        .retry_after_ms()
        .unwrap();
    assert!((300..=450).contains(&hint), "retry_after_ms {hint}");
}

#[test]
fn a_queued_job_expects_to_wait_for_the_jobs_ahead() {
    let s = sched(2, 4);
    assert_eq!(s.expected_wait_ms(0), 0, "a job with a slot does not wait");
    assert_eq!(s.expected_wait_ms(2), FIRST_RETRY_MS, "no job finished yet");
}
