//! The CUDA backend's memory plan, computed without a GPU: weights, KV cache
//! and every fixed scratch buffer (WORKER-4100, 4103, 4422). `load` allocates
//! exactly this list once, so no decode step allocates; Plan and Commit use
//! the same numbers to refuse a model that cannot fit before any allocation.

use super::DEVICE_CANDIDATES;
use crate::engine::MemoryReport;
use crate::gpu::attention::KV_PAGE_TOKENS;
use crate::gpu::Gpu;
use crate::model::arch::ModelConfig;

/// Most sequences one CUDA engine runs in a step (the daemon's largest
/// `slots_total`); each costs a row of every step buffer and its share of
/// the attention scratch.
pub const CUDA_MAX_SEQUENCES: usize = 256;

/// Prompt tokens per prefill launch sequence, longest first: a model takes
/// the longest whose step buffers fit [`PREFILL_ROWS_BUDGET`] (the last
/// otherwise). Each GEMM reads and dequantizes its weight once per chunk,
/// so longer chunks prefill faster. Measured on an H100, one call, the
/// Qwen-shaped file, binaries that differed only in the chunk (prefill tok/s
/// at 512 / 1,024 / 2,048 / 4,096 tokens): 512 gave 49,722 / 47,911 /
/// 44,079 / 37,820; 1,024 gave 50,055 / 67,552 / 60,112 / 49,091; 2,048
/// gave 49,828 / 67,062 / 68,913 / 54,998. A longer chunk also holds the
/// running decode streams for longer per step (about 37 ms against 10 ms
/// for Qwen at 2,048 tokens against 512).
const PREFILL_CHUNKS: [usize; 3] = [2048, 1024, 512];

/// Bytes the prefill chunk's rows of the step buffers may take. Qwen2.5-0.5B
/// (146 KB a row) gets 2,048 tokens (300 MB); a 7B-class model (about 570 KB
/// a row) keeps 512 (290 MB) rather than growing to 1.2 GB.
const PREFILL_ROWS_BUDGET: usize = 512 << 20;

/// The shape of the KV pool and the step buffers, fixed at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Positions one sequence may hold (clamped to the trained context).
    pub(super) max_ctx: usize,
    /// Pages of KV_PAGE_TOKENS positions in the pool, shared by all sequences.
    pub(super) pool_pages: usize,
    /// Sequences a step may hold.
    pub(super) max_seqs: usize,
    /// Prefill rows per launch (`prefill_chunk`): a function of the model
    /// and the context only, so a prompt's chunking depends on the request.
    pub(super) chunk: usize,
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
            chunk: prefill_chunk(cfg).min(max_ctx),
        }
    }

    /// Entries of one sequence's page table: enough pages for a whole context.
    pub(super) fn table_len(&self) -> usize {
        table_len(self.max_ctx)
    }

    /// Rows of the step buffers: a prefill chunk or one decode row per sequence.
    pub(super) fn rows(&self) -> usize {
        self.chunk.max(self.max_seqs)
    }
}

/// Page-table entries for a context of `max_ctx` positions: whole pages.
fn table_len(max_ctx: usize) -> usize {
    max_ctx.div_ceil(KV_PAGE_TOKENS)
}

/// The longest of [`PREFILL_CHUNKS`] whose rows of the step buffers fit
/// [`PREFILL_ROWS_BUDGET`] for this model, or the shortest.
fn prefill_chunk(cfg: &ModelConfig) -> usize {
    let per_row = step_row_bytes(cfg);
    let shortest = PREFILL_CHUNKS[PREFILL_CHUNKS.len() - 1];
    PREFILL_CHUNKS
        .into_iter()
        .find(|&c| c * per_row <= PREFILL_ROWS_BUDGET)
        .unwrap_or(shortest)
}

/// Bytes one more row of the step buffers costs, read from the plan's own
/// table (its total at one row less its total at none).
fn step_row_bytes(cfg: &ModelConfig) -> usize {
    let total = |rows: usize| -> usize {
        let s = Shapes::new(cfg, rows, 1, 1, 0);
        Buf::ALL.iter().map(|b| b.plan(&s).0).sum()
    };
    total(1) - total(0)
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

impl Shapes {
    fn new(
        cfg: &ModelConfig,
        rows: usize,
        max_ctx: usize,
        max_seqs: usize,
        weight_bytes: usize,
    ) -> Shapes {
        Shapes {
            d: cfg.d_model,
            q_dim: cfg.n_heads * cfg.head_dim,
            kv_dim: cfg.n_kv_heads * cfg.head_dim,
            ffn: cfg.ffn_dim,
            vocab: cfg.vocab_size,
            rows,
            max_ctx,
            max_seqs,
            table_len: table_len(max_ctx),
            n_heads: cfg.n_heads,
            head_dim: cfg.head_dim,
            weight_bytes,
        }
    }
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
    let s = Shapes::new(
        cfg,
        layout.rows(),
        layout.max_ctx,
        layout.max_seqs,
        weight_bytes,
    );
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

    /// A model of these shapes (the Qwen2.5 family's, by default).
    fn shaped(d: usize, heads: usize, kv_heads: usize, head_dim: usize, ffn: usize) -> ModelConfig {
        ModelConfig {
            arch: crate::model::arch::Arch::Qwen2,
            n_layers: 24,
            d_model: d,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim,
            ffn_dim: ffn,
            vocab_size: 151_936,
            rope_base: 1e6,
            rope_style: crate::model::arch::RopeStyle::Neox,
            norm_eps: 1e-6,
            context_length: 32_768,
            tied_output: true,
            qkv_bias: true,
        }
    }

    /// Qwen2.5-0.5B's step buffers take 146,456 bytes a row, counted by
    /// hand: x, xn, att, q (4 x 896), k, v (2 x 128), gate, up, hid
    /// (3 x 4,864), tok, place, scale (6), the 3xTF32 input parts
    /// (3 x 4,864) and the split-K partials (4 x 896), four bytes each.
    #[test]
    fn a_step_row_costs_what_its_buffers_hold() {
        let floats = 4 * 896 + 2 * 128 + 3 * 4864 + 6 + 3 * 4864 + 4 * 896;
        assert_eq!(step_row_bytes(&shaped(896, 14, 2, 64, 4864)), 4 * floats);
    }

    /// The chunk is the longest whose rows fit the budget: Qwen2.5-0.5B
    /// (300 MB at 2,048) takes 2,048; 1.5B (545 MB at 2,048) 1,024; a
    /// 7B-class model (587 MB at 1,024) 512; and never past the context.
    #[test]
    fn the_prefill_chunk_shrinks_for_wide_models() {
        let chunk = |cfg: &ModelConfig, ctx: usize| Layout::new(cfg, ctx, 0, 16).chunk;
        let qwen_05b = shaped(896, 14, 2, 64, 4864);
        assert_eq!(chunk(&qwen_05b, 32_768), 2048);
        assert_eq!(chunk(&shaped(1536, 12, 2, 128, 8960), 32_768), 1024);
        assert_eq!(chunk(&shaped(3584, 28, 4, 128, 18_944), 32_768), 512);
        assert_eq!(chunk(&qwen_05b, 300), 300);
        // Rows of the step buffers: the chunk, or one per sequence if more.
        assert_eq!(Layout::new(&qwen_05b, 100, 0, 200).rows(), 200);
    }
}
