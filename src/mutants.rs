//! Named mutants: realistic bugs planted on purpose, compiled only into
//! test-hooks builds, so the suite can show that it notices them (issue 10,
//! point 2).
//!
//! Each entry of [`CATALOGUE`] is one bug a reviewer planted by hand once and
//! watched the suite stay green. Code that a mutant breaks asks
//! [`active`] at the one place the bug would live; a release build (no
//! `test-hooks` feature) compiles every such check to `false`, so no mutant
//! can ever run in production. A test-hooks worker turns on at most one
//! mutant, named by `WORKER_ORCD_MUTANT`, read once.
//!
//! The BDD harness runs each mutant against the scenarios tagged with the
//! requirements in its `killed_by` list (`BDD_MUTANT`, see `steps/mutant.rs`)
//! and fails when none of them turns red. One table drives both the switch
//! and the harness, so a mutant cannot exist without a scenario that kills it.

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutant {
    /// The bearer-token check compares with plain `==` and stops at the first
    /// match, so its time depends on which token matched (WORKER-4201).
    TokenCompareEarlyExit,
    /// The KV cache is sized for the model's trained context, ignoring the
    /// configured `max_context` (WORKER-4422).
    KvIgnoresMaxContext,
    /// The HMAC seal is keyed with 32 zero bytes, so anyone can forge it (WORKER-4120).
    SealZeroKey,
    /// The resident digest covers only the first 16 KiB of the shard (WORKER-4113, 4121).
    DigestFirst16KiB,
    /// The resident bytes are sealed without first checking their digest
    /// against the model file (WORKER-4113, 4031).
    NoVerifyBeforeSeal,
    /// A cancel takes effect five decode steps late (WORKER-4252).
    CancelLagsFiveSteps,
    /// JSON endpoints take a body of any Content-Type (WORKER-4300; issue 13
    /// point 5).
    MediaTypeUnchecked,
    /// The sampled check for NaN and infinite weights is skipped at load, so
    /// a corrupt model serves garbage (WORKER-4312; issue 13 point 5).
    WeightsUnchecked,
    /// A model file modified while it is read is not noticed, so a Plan or
    /// Commit reports bytes the file no longer holds (issue 13 point 2).
    FileChangeUnchecked,
    /// Every line a client causes is written: no budget per kind, so a
    /// flood of refused requests floods the log (issue 13 point 4).
    LogUnlimited,
}

/// One catalogue row: the mutant, its stable name (the value of
/// `WORKER_ORCD_MUTANT`), what it breaks, and the requirement IDs whose
/// scenarios must turn red when it is active.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub mutant: Mutant,
    pub name: &'static str,
    pub breaks: &'static str,
    pub killed_by: &'static [&'static str],
}

/// Every named mutant.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        mutant: Mutant::TokenCompareEarlyExit,
        name: "token_compare_early_exit",
        breaks: "bearer tokens compared with == and an early exit",
        killed_by: &["WORKER-4201"],
    },
    Entry {
        mutant: Mutant::KvIgnoresMaxContext,
        name: "kv_ignores_max_context",
        breaks: "KV cache sized for the trained context instead of max_context",
        killed_by: &["WORKER-4422"],
    },
    Entry {
        mutant: Mutant::SealZeroKey,
        name: "seal_zero_key",
        breaks: "HMAC seal keyed with zero bytes (forgeable)",
        killed_by: &["WORKER-4120"],
    },
    Entry {
        mutant: Mutant::DigestFirst16KiB,
        name: "digest_first_16kib",
        breaks: "resident digest covers only the first 16 KiB",
        killed_by: &["WORKER-4113", "WORKER-4121"],
    },
    Entry {
        mutant: Mutant::NoVerifyBeforeSeal,
        name: "no_verify_before_seal",
        breaks: "digest verification before sealing removed",
        killed_by: &["WORKER-4113"],
    },
    Entry {
        mutant: Mutant::CancelLagsFiveSteps,
        name: "cancel_lags_five_steps",
        breaks: "a cancel takes effect five decode steps late",
        killed_by: &["WORKER-4252"],
    },
    Entry {
        mutant: Mutant::MediaTypeUnchecked,
        name: "media_type_unchecked",
        breaks: "JSON endpoints accept a body of any Content-Type",
        killed_by: &["WORKER-4300"],
    },
    Entry {
        mutant: Mutant::WeightsUnchecked,
        name: "weights_unchecked",
        breaks: "no check for NaN or infinite weights at load",
        killed_by: &["WORKER-4312"],
    },
    Entry {
        mutant: Mutant::FileChangeUnchecked,
        name: "file_change_unchecked",
        breaks: "a model file modified while it is read is not noticed",
        killed_by: &["WORKER-4314"],
    },
    Entry {
        mutant: Mutant::LogUnlimited,
        name: "log_unlimited",
        breaks: "no budget for the log lines a client causes",
        killed_by: &["WORKER-4800"],
    },
];

/// The catalogue row named `name`.
pub fn by_name(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// Is `m` the mutant this test-hooks process was started with?
#[cfg(feature = "test-hooks")]
pub fn active(m: Mutant) -> bool {
    use std::sync::OnceLock;
    static ACTIVE: OnceLock<Option<Mutant>> = OnceLock::new();
    let on = ACTIVE.get_or_init(|| {
        let name = crate::env::WORKER_ORCD_MUTANT.get()?;
        let entry = by_name(&name);
        match entry {
            Some(e) => tracing::warn!(
                mutant = e.name,
                human = %format!(
                    "This is a test build running with the planted bug {:?} ({}). It must never serve real traffic.",
                    e.name, e.breaks
                ),
                "mutant active"
            ),
            None => tracing::warn!(
                mutant = %name,
                human = %format!("WORKER_ORCD_MUTANT names no known planted bug ({name:?}); running without one."),
                "unknown mutant"
            ),
        }
        entry.map(|e| e.mutant)
    });
    *on == Some(m)
}

/// Release builds carry no mutants: every check is `false`.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn active(_m: Mutant) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_mutant_is_killed_by_something() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "duplicate mutant name");
        for e in CATALOGUE {
            assert!(
                !e.killed_by.is_empty(),
                "{} names no killing requirement",
                e.name
            );
            assert_eq!(by_name(e.name).map(|x| x.mutant), Some(e.mutant));
        }
    }
}
