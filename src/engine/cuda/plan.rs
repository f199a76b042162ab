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

/// Every fixed device buffer besides weights and KV cache, in the order
/// `load` allocates them: sized once at load so no step allocates.
pub(super) fn scratch_plan(
    cfg: &ModelConfig,
    max_ctx: usize,
    weight_bytes: usize,
) -> [(usize, &'static str); 21] {
    let (d, hd, nh, nkv, ffn, vocab) = (
        cfg.d_model,
        cfg.head_dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.ffn_dim,
        cfg.vocab_size,
    );
    // A chunk never exceeds the context, so activations need no more rows.
    let chunk = PREFILL_CHUNK.min(max_ctx);
    let f = |n: usize| n * 4 * chunk;
    // Split-KV scratch for decode only: every prefill chunk uses attn_prefill.
    let part = Gpu::attn_scratch_floats(nh, hd, max_ctx, 1) * 4;
    // Every layer matrix is (nh*hd | nkv*hd | ffn) x d or its transpose.
    let wf = Gpu::dequant_scratch_bytes((nh * hd).max(ffn), d);
    [
        (f(d), "x"),
        (f(d), "xn"),
        (f(nh * hd), "q"),
        (f(nkv * hd), "k"),
        (f(nkv * hd), "v"),
        (f(nh * hd), "att"),
        (f(ffn), "gate"),
        (f(ffn), "up"),
        (f(ffn), "hid"),
        (4 * vocab, "logits"),
        (part, "attention scratch"),
        (4 * chunk, "tok"),
        (4, "pos"),
        (4 * DEVICE_CANDIDATES, "cand_ids"),
        (4 * DEVICE_CANDIDATES, "cand_vals"),
        (
            32 * weight_bytes
                .div_ceil(crate::shard::digest::CHUNK_BYTES)
                .max(1),
            "leaves",
        ),
        (wf, "prefill dequant scratch"),
        (
            crate::gpu::topk::topk_large_scratch_bytes(vocab),
            "top-k scratch",
        ),
        // 3xTF32 prefill GEMM: the weight's TF32 remainder and the split input.
        (wf, "prefill tf32 weight remainder"),
        (f(d.max(nh * hd).max(ffn)), "prefill tf32 input part"),
        (f(d.max(nh * hd).max(ffn)), "prefill tf32 input remainder"),
    ]
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
