//! Narration: log events that carry a plain-English `human` field beside
//! their structured fields (WORKER-4803, 4820, 4821, 4822).
//!
//! The sentence should tell an operator what happened and what it means
//! ("Loaded SmolLM2-135M (98 MB, 30 layers) in 1.2 s; weights are resident
//! and sealed."), not restate ids. Ids go in the structured fields.
//!
//! ```ignore
//! narrate!(human = format!("Loaded {name} in {}", human_duration(secs)), model_ref = %path, worker_id = %id);
//! narrate_warn!(human = "Drain timed out; cancelling the running job.", job_id = %job);
//! ```

/// Emit an `info` narration event. The first argument must be `human = <expr>`
/// (anything `Display`); the rest are `tracing` fields.
#[macro_export]
macro_rules! narrate {
    (human = $human:expr $(, $($rest:tt)*)?) => {
        ::tracing::info!(human = %$human $(, $($rest)*)?)
    };
}

/// Emit a `warn` narration event (same syntax as [`narrate!`]).
#[macro_export]
macro_rules! narrate_warn {
    (human = $human:expr $(, $($rest:tt)*)?) => {
        ::tracing::warn!(human = %$human $(, $($rest)*)?)
    };
}

/// Emit an `error` narration event (same syntax as [`narrate!`]).
#[macro_export]
macro_rules! narrate_error {
    (human = $human:expr $(, $($rest:tt)*)?) => {
        ::tracing::error!(human = %$human $(, $($rest)*)?)
    };
}

/// Bytes for people: "98 MB", "1.4 GB", "512 bytes" (decimal units, one decimal
/// place when below 10 of a unit).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (name, size) in UNITS {
        let v = n as f64 / size;
        if v >= 1.0 {
            return if v < 10.0 {
                format!("{v:.1} {name}")
            } else {
                format!("{v:.0} {name}")
            };
        }
    }
    format!("{n} bytes")
}

/// Seconds for people: "850 ms", "1.2 s", "3 min 5 s".
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "an unknown time".to_string();
    }
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = secs.round() as u64;
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations_read_naturally() {
        assert_eq!(human_bytes(98_362_432), "98 MB");
        assert_eq!(human_bytes(1_400_000_000), "1.4 GB");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_duration(0.85), "850 ms");
        assert_eq!(human_duration(1.234), "1.2 s");
        assert_eq!(human_duration(185.0), "3 min 5 s");
        assert_eq!(human_duration(f64::NAN), "an unknown time");
    }
}
