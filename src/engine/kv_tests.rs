//! The KV pool's accounting: reservations hold exactly what they need, never
//! overlap, refuse with the documented codes, and every page comes back.

use super::*;

#[test]
fn a_reservation_takes_whole_pages_and_maps_positions_to_its_own_rows() {
    let mut pool = KvPool::new(16, 8).unwrap();
    let a = pool.reserve(17).unwrap();
    assert_eq!(a.pages(), &[0, 1]);
    assert_eq!(a.capacity(), 32);
    let b = pool.reserve(16).unwrap();
    assert_eq!(b.pages(), &[2]);
    assert_eq!(pool.used_pages(), 3);
    // Position 17 of `a` is row 1 of its second page; `b` starts on page 2.
    assert_eq!(a.row(17), Some(16 + 1));
    assert_eq!(b.row(0), Some(2 * 16));
    assert_eq!(b.row(15), Some(2 * 16 + 15));
    assert_eq!(b.row(16), None, "past the table's capacity");
}

#[test]
fn a_request_the_pool_can_never_hold_is_invalid_and_a_full_pool_is_busy() {
    let mut pool = KvPool::new(16, 4).unwrap();
    let e = pool.reserve(65).unwrap_err();
    assert_eq!(e.code(), "INVALID_PARAMS");
    assert!(
        e.message().contains("4 pages") && e.message().contains("64 positions"),
        "{}",
        e.message()
    );
    let held = pool.reserve(64).unwrap();
    let e = pool.reserve(1).unwrap_err();
    assert_eq!(e.code(), "WORKER_BUSY");
    assert!(e.retriable());
    assert_eq!(pool.used_pages(), 4, "a refusal takes nothing");
    pool.release(held);
    assert_eq!(pool.used_pages(), 0);
    assert!(pool.reserve(1).is_ok());
}

#[test]
fn released_pages_are_reused_lowest_first() {
    let mut pool = KvPool::new(4, 6).unwrap();
    let a = pool.reserve(8).unwrap();
    let b = pool.reserve(8).unwrap();
    let c = pool.reserve(8).unwrap();
    assert_eq!(
        (a.pages(), b.pages(), c.pages()),
        (&[0, 1][..], &[2, 3][..], &[4, 5][..])
    );
    pool.release(b);
    pool.release(a);
    assert_eq!(pool.reserve(12).unwrap().pages(), &[0, 1, 2]);
}

/// Random reservations and releases, as clients arriving, finishing and
/// cancelling would make them: no page is ever held twice, the counts
/// always add up, and when everyone has left the pool is wholly free.
#[test]
fn no_sequence_of_reservations_and_releases_leaks_or_shares_a_page() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut pool = KvPool::new(8, 40).unwrap();
    let mut live: Vec<PageTable> = Vec::new();
    for _ in 0..5_000 {
        if live.is_empty() || next(3) > 0 {
            match pool.reserve(1 + next(100) as usize) {
                Ok(t) => live.push(t),
                Err(e) => assert!(matches!(e.code(), "WORKER_BUSY"), "{}", e.message()),
            }
        } else {
            let i = next(live.len() as u64) as usize;
            pool.release(live.swap_remove(i));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &live {
            for &p in t.pages() {
                assert!(seen.insert(p), "page {p} is held twice");
                assert!((p as usize) < pool.total_pages());
            }
        }
        assert_eq!(seen.len(), pool.used_pages());
    }
    for t in live.drain(..) {
        pool.release(t);
    }
    assert_eq!(pool.used_pages(), 0);
    assert_eq!(pool.usage_ratio(), 0.0);
}

#[test]
fn a_budget_in_bytes_becomes_whole_pages() {
    // 2 layers x 2 (k, v) x 4 KV heads x 64 dims x 4 bytes = 4096 bytes a position.
    let pool = KvPool::for_budget(10 * 16 * 4096 + 100, 4096, 16).unwrap();
    assert_eq!((pool.total_pages(), pool.page_tokens()), (10, 16));
    assert_eq!(
        KvPool::for_budget(100, 4096, 16).unwrap_err().code(),
        "INVALID_PARAMS"
    );
    assert_eq!(KvPool::new(0, 4).unwrap_err().code(), "INVALID_PARAMS");
}
