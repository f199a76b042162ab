//! Chained greedy decode on the CUDA engine (`Engine::chain_greedy`; issue
//! 12 point 1: no host round trip per token).
//!
//! Why: a decode step used to end with the host downloading each row's
//! pick, deciding, uploading the ids and launching the next graph, and the
//! device waited through all of it (about 50 µs of launching alone per step
//! at batch 1 on an H100). Chained, the device picks each row's token (the
//! same top-1 launch the host path reads), writes it straight into the next
//! step's input ids, copies it into a page-locked inbox and replays the next
//! step's graph; the host reads the picks while that step runs.
//!
//! Measured on an H200 (Qwen-shaped Q4_K_M file, one call, same binary with
//! `WORKER_ORCD_CHAIN_DECODE` 1 and 0, medians of 10): batch-1 decode 965.3
//! and 965.0 against 946.5 and 937.1 tokens/s in two rounds, 766.7 against
//! 746.3 after a 4,096-token prompt; the concurrency sweep (128 + 128
//! tokens) 930.6 / 2,356.3 / 8,684.2 against 902.4 / 2,315.0 / 8,501.2
//! tokens/s at 1 / 8 / 64 sequences, inter-token p50 1.074 against 1.108 ms
//! at one. A 200-token greedy `generate` printed the same bytes either way
//! and with the binary from before. On an H100 (3e527b5, GPU suite phase
//! 1): 971.0 against 951.4 from an empty context, 769.3 against 754.5
//! after 4,096 tokens; sweep 937.5 / 2,381 / 8,642 against 919.0 / 2,348 /
//! 8,587 at 1 / 8 / 64.
//!
//! Bits: the chained step is the step the caller would have asked for (same
//! ids, positions, rows, graph), so its logits and KV rows are the same.
//! When sequences left since (one ended on its pick, was cancelled), the
//! next step takes the chained step for the rows still running, and
//! sequences that joined run after it (their logits in the rows after the
//! chained step's); a row written for a sequence that left lies in pages
//! nobody reads before writing them (a sequence reads only positions it
//! computed, and the stream orders the early step first). Any other next
//! step runs as usual: it rewrites every KV row the chained step wrote for
//! a sequence still running (batch invariance: the same bits).

use super::{Buf, CudaEngine};
use crate::engine::batch::{SeqSlot, StepChunk};
use crate::error::{Result, WorkerError};

/// A decode step started before its inputs were read back.
pub(super) struct Chained {
    /// Its rows in order: the sequence and the position it computes; None
    /// where the sequence was released since.
    rows: Vec<Option<(SeqSlot, usize)>>,
    /// Each row's input id (the pick from the step before), once read.
    picks: Option<Vec<u32>>,
}

impl CudaEngine {
    /// `Engine::chain_greedy`: start the next step of `rows` when the last
    /// step's logits rows are exactly theirs, in that order, and each has a
    /// reserved position left.
    pub(super) fn start_chain(&mut self, rows: &[SeqSlot]) -> Result<bool> {
        self.chained = None;
        let last_rows = self.logits_row.iter().flatten().count();
        if !self.chain_on
            || rows.is_empty()
            || rows.len() != last_rows
            || rows.len() > self.inbox.capacity()
        {
            return Ok(false);
        }
        let mut next = Vec::with_capacity(rows.len());
        for (i, &s) in rows.iter().enumerate() {
            let in_order = self.logits_row.get(s.0 as usize) == Some(&Some(i));
            match self.seq(s) {
                Some(st) if in_order && st.n_past < st.capacity => next.push((st.n_past, s)),
                _ => return Ok(false),
            }
        }
        let (a, n, b) = (&self.act, self.cfg.vocab_size, rows.len());
        // The top-1 of each row, as `seq_sample` selects it, written as the
        // next step's input ids (row r's at r).
        let logits = a[Buf::Logits].f32s(0, n * b)?;
        let scratch = a[Buf::TopkScratch].all();
        let (ids, vals) = (a[Buf::Tok].all(), a[Buf::CandVals].all());
        self.gpu.topk_rows(logits, n, b, 1, scratch, ids, vals)?;
        self.gpu.post(&self.act[Buf::Tok], 0, b, &mut self.inbox)?;
        self.replay_decode(&next)?;
        // The logits rows are being overwritten; only the picks remain.
        for s in rows {
            self.logits_row[s.0 as usize] = None;
        }
        self.prefetched = None;
        self.chained = Some(Chained {
            rows: next.into_iter().map(|(p, s)| Some((s, p))).collect(),
            picks: None,
        });
        Ok(true)
    }

    /// The picks of the chained step's rows, read from the inbox once.
    fn chained_picks(&mut self) -> Result<Option<&[u32]>> {
        let Some(ch) = self.chained.as_mut() else {
            return Ok(None);
        };
        if ch.picks.is_none() {
            let ids = self.gpu.read(&self.inbox)?;
            ch.picks = Some(ids.into_iter().map(|i| i as u32).collect());
        }
        Ok(ch.picks.as_deref())
    }

    /// `seq`'s pick, when the chained step feeds it (None: it does not).
    pub(super) fn chained_pick(&mut self, seq: SeqSlot) -> Result<Option<u32>> {
        let Some(i) = self
            .chained
            .as_ref()
            .and_then(|ch| ch.rows.iter().position(|r| r.map(|r| r.0) == Some(seq)))
        else {
            return Ok(None);
        };
        let picks = self.chained_picks()?.unwrap_or_default();
        picks.get(i).copied().map(Some).ok_or_else(|| {
            WorkerError::internal(format!("the chained step has no pick for row {i}"))
        })
    }

    /// Take the chained step for the step of `chunks` when its rows still
    /// running lead them, with their picks and positions, in order (the
    /// rows of sequences that left since are skipped): then those rows'
    /// logits are already being computed, at their rows of the chained
    /// step, and only the chunks after them (sequences that joined since)
    /// remain to run, from logits row `after` on. Returns those logits
    /// rows, one per leading chunk; None when nothing is adopted. Either
    /// way no chained step remains.
    pub(super) fn adopt_chained(&mut self, chunks: &[StepChunk<'_>]) -> Result<Option<Adopted>> {
        let picks = match self.chained_picks()? {
            Some(p) => p.to_vec(),
            None => return Ok(None),
        };
        let Some(ch) = self.chained.take() else {
            return Ok(None);
        };
        let live: Vec<(usize, SeqSlot, usize)> = ch
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|(s, p)| (i, s, p)))
            .collect();
        if live.is_empty() {
            return Ok(None);
        }
        let extra = chunks.len().saturating_sub(live.len());
        let leads = chunks.len() >= live.len()
            && live
                .iter()
                .zip(chunks)
                .all(|(&(i, s, p), c)| c.seq == s && c.pos == p && c.tokens == [picks[i]]);
        if !leads || ch.rows.len() + extra > self.layout.max_seqs {
            // Every row is computed again: the chained step was wasted.
            self.chain_counts.dropped += 1;
            return Ok(None);
        }
        self.chain_counts.adopted += 1;
        if live.len() < ch.rows.len() || extra > 0 {
            self.chain_counts.adopted_in_part += 1;
        }
        Ok(Some(Adopted {
            rows: live.iter().map(|l| l.0).collect(),
            after: ch.rows.len(),
        }))
    }

    /// A released sequence is no row of the chained step any more: its
    /// slot may be admitted again before the next step. Once no row of it
    /// is left, the step is waited for here, so no device work outlives
    /// the engine step that made it useless (the watchdog bounds those).
    pub(super) fn forget_chained(&mut self, seq: SeqSlot) {
        let Some(ch) = self.chained.as_mut() else {
            return;
        };
        for row in ch.rows.iter_mut().filter(|r| r.map(|r| r.0) == Some(seq)) {
            *row = None;
        }
        if ch.rows.iter().all(Option::is_none) {
            self.chained = None;
            // A fault surfaces at the next step's first device call.
            let _ = self.gpu.sync();
        }
    }
}

/// What a step took over from a chained step (`adopt_chained`).
pub(super) struct Adopted {
    /// The logits row of each leading chunk, in the chained step.
    pub(super) rows: Vec<usize>,
    /// The first logits row after the chained step's: the other chunks' from here.
    pub(super) after: usize,
}

/// How chained steps ended, since load (tests and the profile read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ChainCounts {
    /// Steps that took a chained step over (wholly or for the rows still running).
    pub(super) adopted: u64,
    /// Of those, steps where sequences had left or joined since the chain.
    pub(super) adopted_in_part: u64,
    /// Chained steps computed again row for row while rows of them still ran.
    pub(super) dropped: u64,
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
