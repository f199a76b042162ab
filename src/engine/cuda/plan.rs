//! The CUDA backend's memory plan, computed without a GPU: weights, KV cache
//! and every fixed scratch buffer (WORKER-4100, 4103, 4422). `load` allocates
//! exactly this list once, so no decode step allocates; Plan and Commit use
//! the same numbers to refuse a model that cannot fit before any allocation.

use super::{DEVICE_CANDIDATES, PREFILL_CHUNK};
use crate::engine::MemoryReport;
use crate::gpu::attention::KV_PAGE_TOKENS;
use crate::gpu::Gpu;
use crate::model::arch::ModelConfig;

/// Most sequences one CUDA engine runs in a step (the daemon's largest
/// `slots_total`); each costs a row of every step buffer and its share of
/// the attention scratch.
pub const CUDA_MAX_SEQUENCES: usize = 256;

/// The shape of the KV pool and the step buffers, fixed at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Positions one sequence may hold (clamped to the trained context).
    pub(super) max_ctx: usize,
    /// Pages of KV_PAGE_TOKENS positions in the pool, shared by all sequences.
    pub(super) pool_pages: usize,
    /// Sequences a step may hold.
    pub(super) max_seqs: usize,
}

impl Layout {
    /// The layout `load` uses for these options: the pool holds at least
    /// one whole context (`kv_pool_tokens`, 0 meaning exactly that), in
    /// whole pages; 1..=CUDA_MAX_SEQUENCES sequences.
    pub(super) fn new(
        cfg: &ModelConfig,
        max_ctx: usize,
        kv_pool_tokens: usize,
        max_seqs: usize,
    ) -> Self {
        let max_ctx = max_ctx.min(cfg.context_length.max(1));
        Layout {
            max_ctx,
            pool_pages: kv_pool_tokens.max(max_ctx).div_ceil(KV_PAGE_TOKENS),
            max_seqs: max_seqs.clamp(1, CUDA_MAX_SEQUENCES),
        }
    }

    /// Entries of one sequence's page table: enough pages for a whole context.
    pub(super) fn table_len(&self) -> usize {
        self.max_ctx.div_ceil(KV_PAGE_TOKENS)
    }

    /// Prefill rows per launch: PREFILL_CHUNK, or the context when smaller.
    pub(super) fn chunk(&self) -> usize {
        PREFILL_CHUNK.min(self.max_ctx)
    }

    /// Rows of the step buffers: a prefill chunk or one decode row per sequence.
    pub(super) fn rows(&self) -> usize {
        self.chunk().max(self.max_seqs)
    }
}

/// f32 keys and values for every layer and every page of the pool.
pub(super) fn kv_cache_bytes(cfg: &ModelConfig, pool_pages: usize) -> usize {
    2 * cfg.n_layers * pool_pages * KV_PAGE_TOKENS * cfg.n_kv_heads * cfg.head_dim * 4
}

/// Every fixed device buffer besides weights and KV cache. One table
/// ([`Buf::plan`]) gives each its size and label; `load` allocates them in
/// [`Buf::ALL`]'s order and the engine reaches them by name (`act[Buf::X]`),
/// so no list is kept in parallel by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Buf {
    /// The residual stream, one row per prefill token.
    X,
    /// A normalised copy of `X` (prefill).
    Xn,
    Q,
    K,
    V,
    /// The attention output.
    Att,
    Gate,
    Up,
    /// SwiGLU(gate, up): the input of the down projection.
    Hid,
    Logits,
    /// Split-KV attention partials (decode only: prefill uses attn_prefill).
    Scores,
    /// Each step row's token id, and its place {position, sequence, pool
    /// row, 0} (`gpu::attention::KvRows`), read by the kernels (and so by
    /// the captured graph) from device memory.
    Tok,
    Place,
    /// Every sequence's page table (`Layout::table_len` page ids each).
    Tables,
    /// Each decode row's RMS scale (`row_rms`) in a batched decode step.
    Scale,
    /// The sampler's candidates, copied back per token when not greedy.
    CandIds,
    CandVals,
    /// SHA-256 leaves of the resident digest.
    Leaves,
    /// One weight matrix dequantized for the prefill GEMM: f32, or its
    /// 3xTF32 parts (three floats a weight).
    Wf,
    TopkScratch,
    /// 3xTF32 prefill GEMM: the input rows' parts.
    XParts,
    /// Split-K 3xTF32 prefill GEMM (matrices of at most `d` rows and more
    /// columns than rows): the k slices' partial outputs.
    GemmParts,
}

/// The shapes the table's sizes are made of.
struct Shapes {
    d: usize,
    q_dim: usize,
    kv_dim: usize,
    ffn: usize,
    vocab: usize,
    /// Rows of the step buffers (`Layout::rows`).
    rows: usize,
    max_ctx: usize,
    max_seqs: usize,
    table_len: usize,
    n_heads: usize,
    head_dim: usize,
    weight_bytes: usize,
}

impl Buf {
    /// Allocation order.
    pub(super) const ALL: [Buf; 22] = [
        Buf::X,
        Buf::Xn,
        Buf::Q,
        Buf::K,
        Buf::V,
        Buf::Att,
        Buf::Gate,
        Buf::Up,
        Buf::Hid,
        Buf::Logits,
        Buf::Scores,
        Buf::Tok,
        Buf::Place,
        Buf::Tables,
        Buf::Scale,
        Buf::CandIds,
        Buf::CandVals,
        Buf::Leaves,
        Buf::Wf,
        Buf::TopkScratch,
        Buf::XParts,
        Buf::GemmParts,
    ];

    /// Bytes and label of this buffer: the one table of the plan.
    fn plan(self, s: &Shapes) -> (usize, &'static str) {
        let rows = |width: usize| width * 4 * s.rows;
        // Every layer matrix is (q_dim | kv_dim | ffn) x d or its transpose.
        // Sized for the 3xTF32 parts, so any matrix may take either arithmetic.
        let wf = Gpu::dequant_scratch_bytes(s.q_dim.max(s.ffn), s.d, true);
        let widest = s.d.max(s.q_dim).max(s.ffn);
        match self {
            Buf::X => (rows(s.d), "x"),
            Buf::Xn => (rows(s.d), "xn"),
            Buf::Q => (rows(s.q_dim), "q"),
            Buf::K => (rows(s.kv_dim), "k"),
            Buf::V => (rows(s.kv_dim), "v"),
            Buf::Att => (rows(s.q_dim), "att"),
            Buf::Gate => (rows(s.ffn), "gate"),
            Buf::Up => (rows(s.ffn), "up"),
            Buf::Hid => (rows(s.ffn), "hid"),
            Buf::Logits => (4 * s.vocab * s.max_seqs, "logits"),
            Buf::Scores => (
                Gpu::attn_scratch_floats(s.n_heads, s.head_dim, s.max_ctx, s.max_seqs) * 4,
                "attention scratch",
            ),
            Buf::Tok => (4 * s.rows, "tok"),
            Buf::Place => (16 * s.rows, "row places"),
            Buf::Tables => (4 * s.max_seqs * s.table_len, "page tables"),
            Buf::Scale => (4 * s.rows, "row scales"),
            // Every sequence's candidates at once (`sample::prefetch_rows`).
            Buf::CandIds => (4 * DEVICE_CANDIDATES * s.max_seqs, "cand_ids"),
            Buf::CandVals => (4 * DEVICE_CANDIDATES * s.max_seqs, "cand_vals"),
            Buf::Leaves => (
                32 * s
                    .weight_bytes
                    .div_ceil(crate::shard::digest::CHUNK_BYTES)
                    .max(1),
                "leaves",
            ),
            Buf::Wf => (wf, "prefill dequant scratch"),
            Buf::TopkScratch => (
                crate::gpu::topk::topk_large_scratch_bytes(s.vocab) * s.max_seqs,
                "top-k scratch",
            ),
            Buf::XParts => (3 * rows(widest), "prefill tf32 input parts"),
            Buf::GemmParts => (
                crate::gpu::gemm::TF32X3_K_SLICES * rows(s.d),
                "prefill split-K partial outputs",
            ),
        }
    }
}

/// Every scratch buffer's (bytes, label), in [`Buf::ALL`]'s order.
pub(super) fn scratch_plan(
    cfg: &ModelConfig,
    layout: &Layout,
    weight_bytes: usize,
) -> [(usize, &'static str); 22] {
    let s = Shapes {
        d: cfg.d_model,
        q_dim: cfg.n_heads * cfg.head_dim,
        kv_dim: cfg.n_kv_heads * cfg.head_dim,
        ffn: cfg.ffn_dim,
        vocab: cfg.vocab_size,
        rows: layout.rows(),
        max_ctx: layout.max_ctx,
        max_seqs: layout.max_seqs,
        table_len: layout.table_len(),
        n_heads: cfg.n_heads,
        head_dim: cfg.head_dim,
        weight_bytes,
    };
    Buf::ALL.map(|b| b.plan(&s))
}

/// The device memory `load` will hold for this model, context, KV pool
/// (`kv_pool_tokens`, 0 = one context) and number of sequences, computed
/// without a GPU (Plan and Commit feasibility, 4103): weights, KV pool, the
/// fixed scratch buffers and the cuBLAS workspace. `load` reports the same
/// numbers through `Engine::memory` (a GPU test checks they are equal).
pub fn planned_memory(
    cfg: &ModelConfig,
    weight_bytes: usize,
    max_ctx: usize,
    kv_pool_tokens: usize,
    max_seqs: usize,
) -> MemoryReport {
    // `load` uses the same layout: never past the trained context.
    let layout = Layout::new(cfg, max_ctx, kv_pool_tokens, max_seqs);
    let scratch: usize = scratch_plan(cfg, &layout, weight_bytes)
        .iter()
        .map(|s| s.0)
        .sum();
    MemoryReport {
        weights_bytes: weight_bytes as u64,
        kv_cache_bytes: kv_cache_bytes(cfg, layout.pool_pages) as u64,
        scratch_bytes: (scratch + crate::gpu::gemm::BLAS_WORKSPACE_BYTES) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every buffer once, in the order of the enum, so that
    /// `act[b]` (index `b as usize`) is the buffer allocated for `b`.
    #[test]
    fn every_buffer_is_listed_once_at_its_own_index() {
        for (i, b) in Buf::ALL.iter().enumerate() {
            assert_eq!(*b as usize, i, "{b:?}");
        }
    }
}
