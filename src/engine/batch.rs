//! A step over many sequences (issue 11 points 3-5; WORKER-4710, 4722): the
//! types an engine's batched interface speaks, and the one check every
//! engine runs on a step before computing it.
//!
//! A sequence is admitted with the number of positions it may ever hold
//! (prompt + max_tokens), which reserves its KV pages at once, so it never
//! waits for memory mid-stream and its output never depends on its
//! neighbours. A step is a ragged batch: for each sequence in it, one run
//! of consecutive tokens (a prefill chunk, or the one token of a decode
//! row). The logits of each run's last token are kept for that sequence.

use crate::error::{Result, WorkerError};

/// A sequence admitted into an engine: the handle of its KV pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqSlot(pub u32);

/// One sequence's part of a step: `tokens` at positions `pos..`.
#[derive(Debug, Clone, Copy)]
pub struct StepChunk<'a> {
    pub seq: SeqSlot,
    pub tokens: &'a [u32],
    pub pos: usize,
}

/// How much of an engine's KV pool is in use (for Plan, /metrics, admission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvUsage {
    pub page_tokens: usize,
    pub total_pages: usize,
    pub used_pages: usize,
}

impl KvUsage {
    /// Positions not reserved by any sequence.
    pub fn free_tokens(&self) -> usize {
        (self.total_pages - self.used_pages) * self.page_tokens
    }
}

/// What a step check needs to know about one admitted sequence.
#[derive(Debug, Clone, Copy)]
pub struct SeqBounds {
    /// Positions already computed.
    pub n_past: usize,
    /// Positions reserved at admission.
    pub capacity: usize,
}

/// What every engine checks before it admits a sequence of `positions`
/// (prompt + output): at least one, and within the context it was loaded with.
pub fn check_admission(positions: usize, max_context: usize) -> Result<()> {
    if positions == 0 || positions > max_context {
        return Err(WorkerError::invalid(format!(
            "a sequence of {positions} positions does not fit the context of {max_context} tokens this \
             engine was loaded with"
        )));
    }
    Ok(())
}

/// The bounds every engine enforces before a step: each sequence is
/// admitted and appears once, its run is not empty and continues it, its ids
/// are inside the vocabulary, and it stays within what it reserved.
pub fn check_step(
    chunks: &[StepChunk<'_>],
    vocab_size: usize,
    bounds: impl Fn(SeqSlot) -> Option<SeqBounds>,
) -> Result<()> {
    if chunks.is_empty() {
        return Err(WorkerError::invalid("a step needs at least one sequence"));
    }
    let mut seen = std::collections::HashSet::with_capacity(chunks.len());
    for c in chunks {
        let Some(b) = bounds(c.seq) else {
            return Err(WorkerError::invalid(format!(
                "sequence {} is not admitted (it was never admitted or already released)",
                c.seq.0
            )));
        };
        if !seen.insert(c.seq) {
            return Err(WorkerError::invalid(format!(
                "sequence {} appears twice in one step",
                c.seq.0
            )));
        }
        if c.tokens.is_empty() {
            return Err(WorkerError::invalid("forward needs at least one token"));
        }
        if c.pos != b.n_past {
            return Err(WorkerError::invalid(format!(
                "position {} does not continue sequence {}, which holds {} tokens",
                c.pos, c.seq.0, b.n_past
            )));
        }
        if let Some(&bad) = c.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(WorkerError::invalid(format!(
                "token id {bad} is outside the model's vocabulary of {vocab_size} tokens"
            )));
        }
        if c.pos.saturating_add(c.tokens.len()) > b.capacity {
            return Err(WorkerError::invalid(format!(
                "{} tokens at position {} exceed the {} positions sequence {} reserved",
                c.tokens.len(),
                c.pos,
                b.capacity,
                c.seq.0
            )));
        }
    }
    Ok(())
}
