//! The CUDA backend's memory plan, computed without a GPU: weights, KV cache
//! and every fixed scratch buffer (WORKER-4100, 4103, 4422). `load` allocates
//! exactly this list once, so no decode step allocates; Plan and Commit use
//! the same numbers to refuse a model that cannot fit before any allocation.

use super::{DEVICE_CANDIDATES, PREFILL_CHUNK};
use crate::engine::MemoryReport;
use crate::gpu::Gpu;
use crate::model::arch::ModelConfig;

/// f32 keys and values for every layer and `max_ctx` positions.
pub(super) fn kv_cache_bytes(cfg: &ModelConfig, max_ctx: usize) -> usize {
    2 * cfg.n_layers * max_ctx * cfg.n_kv_heads * cfg.head_dim * 4
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
    /// The step's token ids and its first position, read by the captured graph.
    Tok,
    Pos,
    /// The sampler's candidates, copied back per token when not greedy.
    CandIds,
    CandVals,
    /// SHA-256 leaves of the resident digest.
    Leaves,
    /// One weight matrix dequantized to f32 for the prefill GEMM.
    Wf,
    TopkScratch,
    /// 3xTF32 prefill GEMM: the weight's TF32 remainder and the split input.
    WfSmall,
    XBig,
    XSmall,
}

/// The shapes the table's sizes are made of.
struct Shapes {
    d: usize,
    q_dim: usize,
    kv_dim: usize,
    ffn: usize,
    vocab: usize,
    /// Prefill rows: a chunk never exceeds the context.
    chunk: usize,
    max_ctx: usize,
    n_heads: usize,
    head_dim: usize,
    weight_bytes: usize,
}

impl Buf {
    /// Allocation order.
    pub(super) const ALL: [Buf; 21] = [
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
        Buf::Pos,
        Buf::CandIds,
        Buf::CandVals,
        Buf::Leaves,
        Buf::Wf,
        Buf::TopkScratch,
        Buf::WfSmall,
        Buf::XBig,
        Buf::XSmall,
    ];

    /// Bytes and label of this buffer: the one table of the plan.
    fn plan(self, s: &Shapes) -> (usize, &'static str) {
        let rows = |width: usize| width * 4 * s.chunk;
        // Every layer matrix is (q_dim | kv_dim | ffn) x d or its transpose.
        let wf = Gpu::dequant_scratch_bytes(s.q_dim.max(s.ffn), s.d);
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
            Buf::Logits => (4 * s.vocab, "logits"),
            Buf::Scores => (
                Gpu::attn_scratch_floats(s.n_heads, s.head_dim, s.max_ctx, 1) * 4,
                "attention scratch",
            ),
            Buf::Tok => (4 * s.chunk, "tok"),
            Buf::Pos => (4, "pos"),
            Buf::CandIds => (4 * DEVICE_CANDIDATES, "cand_ids"),
            Buf::CandVals => (4 * DEVICE_CANDIDATES, "cand_vals"),
            Buf::Leaves => (
                32 * s
                    .weight_bytes
                    .div_ceil(crate::shard::digest::CHUNK_BYTES)
                    .max(1),
                "leaves",
            ),
            Buf::Wf => (wf, "prefill dequant scratch"),
            Buf::TopkScratch => (
                crate::gpu::topk::topk_large_scratch_bytes(s.vocab),
                "top-k scratch",
            ),
            Buf::WfSmall => (wf, "prefill tf32 weight remainder"),
            Buf::XBig => (rows(widest), "prefill tf32 input part"),
            Buf::XSmall => (rows(widest), "prefill tf32 input remainder"),
        }
    }
}

/// Every scratch buffer's (bytes, label), in [`Buf::ALL`]'s order.
pub(super) fn scratch_plan(
    cfg: &ModelConfig,
    max_ctx: usize,
    weight_bytes: usize,
) -> [(usize, &'static str); 21] {
    let s = Shapes {
        d: cfg.d_model,
        q_dim: cfg.n_heads * cfg.head_dim,
        kv_dim: cfg.n_kv_heads * cfg.head_dim,
        ffn: cfg.ffn_dim,
        vocab: cfg.vocab_size,
        chunk: PREFILL_CHUNK.min(max_ctx),
        max_ctx,
        n_heads: cfg.n_heads,
        head_dim: cfg.head_dim,
        weight_bytes,
    };
    Buf::ALL.map(|b| b.plan(&s))
}

/// The device memory `load` will hold for this model and context, computed
/// without a GPU (Plan and Commit feasibility, 4103): weights, KV cache, the
/// fixed scratch buffers and the cuBLAS workspace. `load` reports the same
/// numbers through `Engine::memory` (a GPU test checks they are equal).
pub fn planned_memory(cfg: &ModelConfig, weight_bytes: usize, max_ctx: usize) -> MemoryReport {
    // `load` clamps the same way: never past the trained context.
    let max_ctx = max_ctx.min(cfg.context_length.max(1));
    let scratch: usize = scratch_plan(cfg, max_ctx, weight_bytes)
        .iter()
        .map(|s| s.0)
        .sum();
    MemoryReport {
        weights_bytes: weight_bytes as u64,
        kv_cache_bytes: kv_cache_bytes(cfg, max_ctx) as u64,
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
