//! Telemetry: JSON logs with narration and redaction, correlation ids, and
//! Prometheus metrics (WORKER-4800–4822).
//!
//! - [`logging`]: the JSON-lines formatter and [`init_logging`].
//! - [`narration`]: the `narrate!` macros (a `human` field on every
//!   lifecycle event) and wording helpers.
//! - [`redaction`]: [`Redacted`], [`redact_token`]; the formatter redacts
//!   sensitive field names in one place.
//! - [`metrics`]: the [`Metrics`] registry (no global state) and its text
//!   exposition.

pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod narration;
pub mod redaction;

pub use logging::init_logging;
pub use metrics::Metrics;
pub use narration::{human_bytes, human_duration};
pub use redaction::{redact_token, Redacted};

/// A duration in whole milliseconds, rounded up: where a client or a
/// scenario reads milliseconds, a sub-millisecond time reads 1, never 0
/// (issue 10: a GPU seal check takes well under a millisecond). Only a
/// duration of exactly zero gives 0. Rounding up, like Retry-After, never
/// predicts earlier than measured.
pub fn whole_ms_up(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Longest accepted `X-Correlation-Id`.
pub const MAX_CORRELATION_ID_LEN: usize = 64;

/// True for a correlation id the worker will echo and log: 1 to 64 characters
/// from `A-Z a-z 0-9 . _ : -` (UUIDs and ULIDs fit). Anything else could
/// inject text into logs or headers, so it is replaced.
pub fn is_valid_correlation_id(s: &str) -> bool {
    (1..=MAX_CORRELATION_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The correlation id of a request (WORKER-4801): the client's
/// `X-Correlation-Id` when valid, else a fresh 16-hex-digit id.
pub fn correlation_id_from(header: Option<&str>) -> String {
    match header {
        Some(h) if is_valid_correlation_id(h) => h.to_string(),
        _ => new_correlation_id(),
    }
}

/// A fresh random id: 16 lowercase hex digits.
pub fn new_correlation_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness (should not happen on Linux): uniqueness still
        // matters more than unpredictability for a correlation id.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)).to_be_bytes();
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_up_so_sub_ms_is_never_zero() {
        use std::time::Duration;
        assert_eq!(whole_ms_up(Duration::ZERO), 0);
        assert_eq!(whole_ms_up(Duration::from_nanos(1)), 1);
        assert_eq!(whole_ms_up(Duration::from_micros(412)), 1);
        assert_eq!(whole_ms_up(Duration::from_millis(3)), 3);
        assert_eq!(whole_ms_up(Duration::from_micros(3_001)), 4);
    }

    #[test]
    fn correlation_id_kept_when_valid_else_generated() {
        assert_eq!(correlation_id_from(Some("req-42.a_b:c")), "req-42.a_b:c");
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(correlation_id_from(Some(uuid)), uuid);
        for bad in [
            "",
            "has space",
            "new\nline",
            "quote\"",
            &"x".repeat(65),
            "ünï",
        ] {
            let got = correlation_id_from(Some(bad));
            assert_ne!(got, bad);
            assert_eq!(got.len(), 16, "{got}");
            assert!(got.bytes().all(|b| b.is_ascii_hexdigit()), "{got}");
        }
        let a = correlation_id_from(None);
        let b = correlation_id_from(None);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b, "generated ids must differ");
        assert!(is_valid_correlation_id(&a));
        assert!(is_valid_correlation_id(&"y".repeat(64)));
    }
}
