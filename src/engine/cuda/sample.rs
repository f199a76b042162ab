//! Sampling on the CUDA engine (KERNEL-SAMPLE, WORKER-4700, 4710; issue 11
//! point 7): the device selects each row's candidates in the sampler's order
//! and only those cross to the host, where `engine::sampler` makes the pick
//! exactly as the CPU engine does.
//!
//! Why a prefetch: a step of many sequences used to select and copy each
//! sequence's candidates on its own, one launch and one host round trip per
//! sequence. `prefetch_rows` selects the candidates of every logits row of
//! the step in one launch and one copy. The first k of a row's best K are
//! its best k in the same order (the order is total: logit descending, id
//! ascending, NaN as -inf), so a sequence asking for k <= K gets exactly the
//! candidates it would get alone.

use super::{Buf, CudaEngine, DEVICE_CANDIDATES, DEVICE_TOPK_MAX};
use crate::engine::batch::SeqSlot;
use crate::engine::SamplingParams;
use crate::error::Result;

/// The best `k` candidates of each of the last step's logits rows, row r's
/// at `r * k`.
pub(super) struct Prefetched {
    k: usize,
    cands: Vec<(u32, f32)>,
}

impl Prefetched {
    /// Row `row`'s best `k`, when this prefetch holds them.
    fn take(&self, row: usize, k: usize) -> Option<Vec<(u32, f32)>> {
        let at = row.checked_mul(self.k)?;
        (k <= self.k)
            .then(|| self.cands.get(at..at + k).map(<[_]>::to_vec))
            .flatten()
    }
}

impl CudaEngine {
    /// Candidates a request for `k` selects: at least one, at most what the
    /// device returns and the vocabulary holds.
    fn clamp_candidates(&self, k: usize) -> usize {
        k.clamp(1, DEVICE_CANDIDATES.min(self.cfg.vocab_size))
    }

    /// Select the best `k` of each of `rows` logits rows from row `first`
    /// into the candidate buffers (the i-th row's at i * k) and copy them to
    /// the host.
    fn select_rows(&mut self, first: usize, rows: usize, k: usize) -> Result<Vec<(u32, f32)>> {
        let a = &self.act;
        let n = self.cfg.vocab_size;
        let logits = a[Buf::Logits].f32s(first * n, n * rows)?;
        let (ids, vals) = (a[Buf::CandIds].all(), a[Buf::CandVals].all());
        let scratch = a[Buf::TopkScratch].all();
        if k <= DEVICE_TOPK_MAX {
            self.gpu.topk_rows(logits, n, rows, k, scratch, ids, vals)?;
        } else {
            self.gpu
                .topk_large_rows(logits, n, rows, k, scratch, ids, vals)?;
        }
        let ids: Vec<i32> = self.gpu.download(&a[Buf::CandIds], 0, rows * k)?;
        let vals: Vec<f32> = self.gpu.download(&a[Buf::CandVals], 0, rows * k)?;
        Ok(ids
            .into_iter()
            .zip(vals)
            .map(|(i, v)| (i as u32, v))
            .collect())
    }

    /// The k best (id, logit) pairs of logits row `row`, in the sampler's
    /// order: from the step's prefetch when it holds them, else selected now.
    pub(super) fn row_candidates(&mut self, row: usize, k: usize) -> Result<Vec<(u32, f32)>> {
        let k = self.clamp_candidates(k);
        if let Some(c) = self.prefetched.as_ref().and_then(|p| p.take(row, k)) {
            return Ok(c);
        }
        self.select_rows(row, 1, k)
    }

    /// Choose the next token from logits row `row`: the device selects the
    /// candidates (a single pass per candidate for small pools, a radix
    /// select for large ones); only k pairs cross to the host, where the
    /// shared sampler code makes the pick.
    pub(super) fn row_sample(
        &mut self,
        row: usize,
        params: &SamplingParams,
        draw: f32,
    ) -> Result<u32> {
        if params.is_greedy() {
            return Ok(self.row_candidates(row, 1)?[0].0);
        }
        let k = crate::engine::sampler::pool_size(params).min(self.cfg.vocab_size);
        let cands = self.row_candidates(row, k)?;
        Ok(crate::engine::sampler::pick_from_candidates(
            &cands, params, draw,
        ))
    }

    /// `Engine::prefetch_samples`: when two or more sequences will sample
    /// from this step, select the largest count any of them asks for from
    /// every row of the step in one launch.
    pub(super) fn prefetch_rows(&mut self, wants: &[(SeqSlot, usize)]) -> Result<()> {
        self.prefetched = None;
        let rows = self.logits_row.iter().flatten().max().map_or(0, |r| r + 1);
        if wants.len() < 2 || rows == 0 {
            return Ok(());
        }
        let k = wants
            .iter()
            .map(|w| self.clamp_candidates(w.1))
            .max()
            .unwrap_or(1);
        let cands = self.select_rows(0, rows, k)?;
        self.prefetched = Some(Prefetched { k, cands });
        Ok(())
    }
}
