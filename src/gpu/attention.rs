//! Attention launchers (KERNEL-ATTN-*): split-KV decode attention with an
//! in-order combine, and prefill attention, register-tiled per KV head so
//! 64 query rows of a GQA group share each cache chunk loaded into shared
//! memory (the one-block-per-(head, token) kernel remains for head sizes
//! other than 64 and 128). Same validation rules as `ops`: every window is
//! checked before the `unsafe` launch.

use cudarc::driver::LaunchConfig;

use super::cuda_err;
use super::device::{Gpu, Span};
use super::ops::{as_i32, blocks};
use crate::error::{Result, WorkerError};

/// Rows per split-KV chunk and positions per KV page, defined once in
/// `kernel_units` (the build script compiles the kernels with them too).
pub use super::kernel_units::{
    AD_CHUNKS, AD_WARPS, ATT_CHUNK, ATT_GROUP_MAX, ATT_THREADS, KV_PAGE_TOKENS,
};

/// Kernel and launch shape of a split-KV decode attention over `n_tok`
/// rows whose grid covers `grid_chunks` chunks: `attn_decode_<hd>` (two
/// warps per chunk, a block per GQA group and AD_CHUNKS chunks) for head sizes 64
/// and 128 and groups of at most ATT_GROUP_MAX query heads, else
/// `attn_partial` (a block per head and chunk). Both give every row the same
/// bits (the kernel emulator and the GPU suite check it), so the choice is
/// speed alone. Measured on an H100 at Qwen shapes (14 q / 2 KV heads, op
/// profile at 7ad5591, µs, grouped against per head): one row at position
/// 100: 9.6 / 11.9, at 600: 13.7 / 14.2, at 4,100: 21.4 / 37.9; 8 rows at
/// ~200: 11.1 / 13.8, 32 rows: 11.9 / 29.1, 64 rows: 18.7 / 51.2. With the
/// step's RoPE fused in (`rope` given, 9bf78df): 9.2 against 8.5
/// at position 100, 12.8 / 12.7 at 600, 20.6 / 20.5 at 4,100, for the
/// 2.7 us rope_kv launch it saves.
///
/// Tried and not landed (2026-12-06, H100 op profile): issuing every key and
/// value load of a chunk before the queries are staged (the whole chunk in
/// registers, the value loop unrolled over its 32 rows; 245 registers, no
/// spills, the same bits) made the kernel slower, not faster: 13.2 µs at
/// position 100 and 24.0 at 4,100 (9.6 and 21.4 in the profile above), and
/// batch-1 decode 901 tok/s against the binary before's 969 in the same
/// call. The likely cause is the unrolled body's
/// size: a grid of two blocks runs it once per layer from a cold
/// instruction cache. Cheaper load overlap would keep the loops compact
/// (values staged into shared memory by cp.async, say).
///
/// That was tried too (2026-12-06, branch `wip-attn-cpasync`; the values
/// by cp.async into 64 KiB of dynamic shared memory a block, keys and
/// values in flight together): slower again on an H100 (ncu, caches
/// flushed: 15.3 -> 18.4 µs at position ~100, 24.0 -> 26.1 at ~4,000).
/// ncu of the one-warp-a-chunk kernel showed why: its time is its busy
/// warps' chains of ~1,900 dependent instructions (7 heads' scores and
/// value sums), issued every ~14 cycles, not memory. So the kernel now
/// gives each chunk two warps (heads split for the scores, dims for the
/// sums): on an H200 (ea57fef against c65d4f2, same call) 14.7 -> 14.2 µs
/// at ~100 and 23.3 -> 21.7 at ~4,000, batch-1 decode after 4,096 tokens
/// 809 -> 836 tok/s; 1.2 % slower at 64 rows of 128 + 128 tokens, whose
/// positions 129-256 now take two blocks and the ticketed fold.
pub(crate) fn decode_attention_launch(
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    n_tok: usize,
    grid_chunks: usize,
) -> (&'static str, LaunchConfig) {
    let grouped = n_kv > 0 && n_heads / n_kv <= ATT_GROUP_MAX;
    let grouped_blocks = grid_chunks.div_ceil(AD_CHUNKS);
    let (name, blocks_x, blocks_y, threads) = match hd {
        64 if grouped => ("attn_decode_64", n_kv, grouped_blocks, 32 * AD_WARPS),
        128 if grouped => ("attn_decode_128", n_kv, grouped_blocks, 32 * AD_WARPS),
        _ => ("attn_partial", n_heads, grid_chunks, ATT_THREADS),
    };
    (
        name,
        LaunchConfig {
            grid_dim: (blocks_x as u32, blocks_y as u32, n_tok as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        },
    )
}

/// A decode step's keys and values before RoPE ([n_tok][n_kv][hd] f32) and
/// its rotary settings, for [`Gpu::attention`] to rotate and store.
#[derive(Clone, Copy)]
pub struct StepRope<'a> {
    pub k: Span<'a>,
    pub v: Span<'a>,
    /// NeoX halves (qwen2), else llama's adjacent pairs.
    pub neox: bool,
    pub base: f32,
}

/// Where each row of a launch finds its KV rows: its place, four i32 per
/// row {position, sequence, pool row of that position, 0} (one 16-byte load
/// in the kernels), every sequence's page table (`table_len` i32 page ids
/// each, `tables` holding `n_tables` of them) and the pool's size in pages.
/// The engine writes places and tables from its own page tables
/// (`engine::kv::KvPool`) after `check_step`, so every sequence id names a
/// table, every page id and pool row is inside the pool and every position
/// is below `table_len * KV_PAGE_TOKENS`: the kernels trust those values.
#[derive(Clone, Copy)]
pub struct KvRows<'a> {
    pub place: Span<'a>,
    pub tables: Span<'a>,
    pub n_tables: usize,
    pub table_len: usize,
    pub pool_pages: usize,
}

/// The device pointers of a [`KvRows`] for `n_tok` rows, windows checked,
/// and the bytes a layer's key (or value) pool spans.
pub(super) struct KvArgs {
    pub(super) place: u64,
    pub(super) tables: u64,
    pub(super) table_len: i32,
    pub(super) pool_bytes: usize,
}

impl KvRows<'_> {
    pub(super) fn args(&self, n_tok: usize, kv_dim: usize) -> Result<KvArgs> {
        Ok(KvArgs {
            place: self.place.need(16 * n_tok, "row places")?,
            tables: self
                .tables
                .need(4 * self.table_len * self.n_tables.max(1), "page tables")?,
            table_len: as_i32(self.table_len, "table_len")?,
            pool_bytes: 4 * self.pool_pages * KV_PAGE_TOKENS * kv_dim,
        })
    }
}
/// Dynamic shared-memory bytes of the register-tiled prefill attention
/// (cuda/attention_prefill.cu) for head size `hd` with `groups` key groups
/// (2: `attn_prefill_rt_<hd>`, 1: `attn_prefill_rt1_<hd>`), or None for a
/// head size without an instantiation (the one-block-per-(head, token)
/// kernel serves those). Over the 48 KiB default, so `Gpu::open` grants it
/// per function. The layout is the kernel's: RT_ROWS query rows of hd + 4
/// floats, then per group `keys` key rows of hd + 4 floats, `keys` value
/// rows of hd floats and `keys` weight rows of RT_ROWS + 4 floats.
pub fn prefill_rt_smem(hd: usize, groups: usize) -> Option<usize> {
    let keys = match hd {
        64 => 64,
        128 => 32,
        _ => return None,
    };
    let group = keys * (hd + 4) + keys * hd + keys * (RT_ROWS + 4);
    Some(4 * (RT_ROWS * (hd + 4) + groups * group))
}

/// The register-tiled prefill kernel for head size `hd` with `groups` key groups.
pub fn prefill_rt_name(hd: usize, groups: usize) -> &'static str {
    match (hd, groups) {
        (64, 2) => "attn_prefill_rt_64",
        (128, 2) => "attn_prefill_rt_128",
        (64, _) => "attn_prefill_rt1_64",
        _ => "attn_prefill_rt1_128",
    }
}

/// Query rows per block of the register-tiled prefill kernels (RT_ROWS) and
/// threads per key group (RT_GROUP).
pub const RT_ROWS: usize = 64;
pub const RT_GROUP: usize = 256;

/// The shapes both attention kernels take: head size a multiple of 4 up to
/// 256, whole GQA groups, 1..=65535 query tokens (one grid dimension).
fn check_shape(what: &str, n_heads: usize, n_kv: usize, hd: usize, n_tok: usize) -> Result<()> {
    if hd == 0
        || hd > 256
        || hd % 4 != 0
        || n_kv == 0
        || n_heads % n_kv != 0
        || n_tok == 0
        || n_tok > 65_535
    {
        return Err(WorkerError::invalid(format!("{what}: head_dim {hd} must be a multiple of 4 up to 256, n_heads {n_heads} a multiple of n_kv {n_kv}, tokens {n_tok} in 1..=65535")));
    }
    Ok(())
}

impl Gpu {
    /// Scratch floats the split-KV attention needs for `n_tok` queries: the
    /// partials, then one 4-byte ticket counter per (token, head). The
    /// counters must start at zero (`Gpu::alloc` zeroes) and are left at zero
    /// by every launch.
    pub fn attn_scratch_floats(n_heads: usize, hd: usize, max_ctx: usize, n_tok: usize) -> usize {
        n_tok * n_heads * max_ctx.div_ceil(ATT_CHUNK) * (hd + 2) + n_tok * n_heads
    }

    /// Attention of `n_tok` query rows (row t at the position and sequence
    /// of its place) over each one's cache rows 0..=pos in one
    /// launch: split-KV partials, and the last block of each (row, head)
    /// folds them in chunk order. The grid covers `reach` positions (at most
    /// `max_ctx`; a captured graph passes `max_ctx` so it stays valid as
    /// positions grow); every row's position must be below `reach`.
    ///
    /// With `rope` (a decode step's rows, each its own sequence), q and k
    /// are not yet rotated and k and v not yet in the cache: the grouped
    /// kernel rotates and stores them itself, bit for bit as `rope_kv`
    /// would (one `rope_pair` in cuda/common.cuh), which saves a launch per
    /// layer; for the per-head kernel, whose blocks of one row cannot see
    /// each other's stores, `rope_kv` runs first. Every row's position must
    /// be below `reach` here all the more: the block that stores a row's key
    /// and value is one the grid covers only then, so a row past it would
    /// leave its cache row unwritten for later steps (the engine's decode
    /// and prefill pass a reach past every row's position).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: Span,
        kc: Span,
        vc: Span,
        out: Span,
        part: Span,
        rows: KvRows,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        max_ctx: usize,
        n_tok: usize,
        reach: usize,
        rope: Option<StepRope>,
    ) -> Result<()> {
        check_shape("attention", n_heads, n_kv, hd, n_tok)?;
        let n_chunks = max_ctx.div_ceil(ATT_CHUNK);
        let grid_chunks = reach.clamp(1, max_ctx.max(1)).div_ceil(ATT_CHUNK);
        let kv = rows.args(n_tok, n_kv * hd)?;
        let qp = q.need(4 * n_heads * hd * n_tok, "q")?;
        let kcp = kc.need(kv.pool_bytes, "k cache")?;
        let vcp = vc.need(kv.pool_bytes, "v cache")?;
        let op = out.need(4 * n_heads * hd * n_tok, "out")?;
        let pp_ = part.need(
            4 * Self::attn_scratch_floats(n_heads, hd, max_ctx, n_tok),
            "attention scratch",
        )?;
        // The counters follow the partials of every row the scratch window
        // holds, so their place does not depend on this launch's row count:
        // a launch of many rows never writes partials over the counters a
        // launch of fewer rows left at zero.
        let cap_rows = part.bytes() / (4 * Self::attn_scratch_floats(n_heads, hd, max_ctx, 1));
        let counters = pp_ + 4 * (cap_rows * n_heads * n_chunks * (hd + 2)) as u64;
        let (nh, nk, hdi, nc) = (
            as_i32(n_heads, "n_heads")?,
            as_i32(n_kv, "n_kv")?,
            as_i32(hd, "hd")?,
            as_i32(n_chunks, "chunks")?,
        );
        let scale = 1.0f32 / (hd as f32).sqrt();
        let (name, cfg) = decode_attention_launch(n_heads, n_kv, hd, n_tok, grid_chunks);
        #[cfg(test)]
        let (name, cfg) = match self.per_head_attention() {
            // Head size 0 matches no grouped kernel: the per-head shape.
            true => decode_attention_launch(n_heads, n_kv, 0, n_tok, grid_chunks),
            false => (name, cfg),
        };
        let grouped = name != "attn_partial";
        let fused = match rope {
            Some(r) if !grouped => {
                self.rope_kv(
                    q, r.k, r.v, kc, vc, rows, n_heads, n_kv, hd, r.neox, r.base, n_tok,
                )?;
                None
            }
            other => other,
        };
        // The fused rotation's inputs; null pointers when q is already rotated.
        let (kp, vp, neox, base) = match fused {
            Some(r) => (
                r.k.need(4 * n_kv * hd * n_tok, "k")?,
                r.v.need(4 * n_kv * hd * n_tok, "v")?,
                i32::from(r.neox),
                r.base,
            ),
            None => (0u64, 0u64, 0i32, 0f32),
        };
        let f = self.func(name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&qp)
            .arg(&kcp)
            .arg(&vcp)
            .arg(&pp_)
            .arg(&counters)
            .arg(&op)
            .arg(&kv.place)
            .arg(&kv.tables)
            .arg(&kv.table_len)
            .arg(&nh)
            .arg(&nk)
            .arg(&hdi)
            .arg(&nc)
            .arg(&scale);
        if grouped {
            l.arg(&kp).arg(&vp).arg(&neox).arg(&base);
        }
        // SAFETY: windows checked above (scratch: partials and counters of
        // cap_rows >= n_tok rows; k, v: n_tok rows when fused); rows, pages
        // and positions are the engine's checked values (KvRows), so every
        // cache row read or written lies in the pool windows; argument types
        // and order match attn_partial / attn_decode_<hd> (+ k, v, neox, base).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// Prefill attention of `n_tok` query rows of one sequence at
    /// consecutive positions (row t at row 0's position + t, every row's
    /// sequence the same) over its cache rows 0..=pos with an online softmax and no
    /// scratch, so the chunk can be large: register-tiled per KV head
    /// (`attn_prefill_rt_<hd>`, two key groups, else `attn_prefill_rt1_<hd>`)
    /// for head sizes 64 and 128, else one block per (head, token).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill(
        &self,
        q: Span,
        kc: Span,
        vc: Span,
        out: Span,
        rows: KvRows,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        n_tok: usize,
    ) -> Result<()> {
        check_shape("prefill attention", n_heads, n_kv, hd, n_tok)?;
        let kv = rows.args(n_tok, n_kv * hd)?;
        let qp = q.need(4 * n_heads * hd * n_tok, "q")?;
        let kcp = kc.need(kv.pool_bytes, "k cache")?;
        let vcp = vc.need(kv.pool_bytes, "v cache")?;
        let op = out.need(4 * n_heads * hd * n_tok, "out")?;
        let (nh, nk, hdi) = (
            as_i32(n_heads, "n_heads")?,
            as_i32(n_kv, "n_kv")?,
            as_i32(hd, "hd")?,
        );
        let scale = 1.0f32 / (hd as f32).sqrt();
        // The register-tiled kernel for head sizes 64 and 128 with two key
        // groups, else one, when the device granted its shared memory; the
        // one-block-per-(head, token) kernel otherwise.
        // A grid row per 64 query rows: at most 65,535 (a bound no prefill
        // chunk reaches; the untiled kernel's grid takes such a shape).
        let tile_rows = n_tok
            .checked_mul(n_heads / n_kv)
            .filter(|rows| rows.div_ceil(RT_ROWS) <= 65_535);
        let tiled = tile_rows.and_then(|rows| {
            [2, 1].into_iter().find_map(|groups| {
                let smem = prefill_rt_smem(hd, groups)?;
                self.prefill_rt_granted(hd, groups)
                    .then_some((rows, groups, smem))
            })
        });
        if let Some((rows, groups, smem)) = tiled {
            let nt = as_i32(n_tok, "n_tok")?;
            let f = self.func(prefill_rt_name(hd, groups))?;
            let cfg = LaunchConfig {
                grid_dim: (n_kv as u32, blocks(rows, RT_ROWS), 1),
                block_dim: ((groups * RT_GROUP) as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut l = self.kernel_launch(f);
            l.arg(&qp)
                .arg(&kcp)
                .arg(&vcp)
                .arg(&op)
                .arg(&kv.place)
                .arg(&kv.tables)
                .arg(&kv.table_len)
                .arg(&nh)
                .arg(&nk)
                .arg(&nt)
                .arg(&scale);
            // SAFETY: windows checked above; rows' sequence, pages and
            // positions are the engine's checked values (KvRows), so every
            // cache row read is inside the pool windows; hd and the key
            // groups are the kernel's HD and G, its shared memory sized by
            // its layout (prefill_rt_smem) and granted at open; types match
            // attn_prefill_rt<_|1_><HD> in cuda/attention_prefill.cu.
            return unsafe { l.launch(cfg) }
                .map(|_| ())
                .map_err(cuda_err("launching attn_prefill_rt_<hd>"));
        }
        let f = self.func("attn_prefill")?;
        let cfg = LaunchConfig {
            grid_dim: (n_heads as u32, n_tok as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&qp)
            .arg(&kcp)
            .arg(&vcp)
            .arg(&op)
            .arg(&kv.place)
            .arg(&kv.tables)
            .arg(&kv.table_len)
            .arg(&nh)
            .arg(&nk)
            .arg(&hdi)
            .arg(&scale);
        // SAFETY: windows checked above; the rows' sequences, pages and
        // positions are the engine's checked values (see KvRows), so every
        // cache row read is inside the pool windows; types match
        // attn_prefill in cuda/attention.cu (128 threads cover hd <= 256).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching attn_prefill"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Head sizes 64 and 128 with groups the block holds take
    /// attn_decode_<hd> (a block of AD_WARPS warps per KV head and AD_CHUNKS
    /// chunks, however many rows); every other shape one block of
    /// ATT_THREADS per head and chunk.
    #[test]
    fn decode_attention_takes_the_grouped_kernel_for_the_shapes_it_has() {
        let warps = (32 * AD_WARPS) as u32;
        for rows in [1, 32, 64] {
            let (name, cfg) = decode_attention_launch(14, 2, 64, rows, AD_CHUNKS);
            assert_eq!(
                (name, cfg.grid_dim, cfg.block_dim.0),
                ("attn_decode_64", (2, 1, rows as u32), warps)
            );
        }
        let (name, cfg) = decode_attention_launch(12, 2, 128, 3, AD_CHUNKS + 1);
        assert_eq!((name, cfg.grid_dim), ("attn_decode_128", (2, 2, 3)));
        let (name, cfg) = decode_attention_launch(9, 3, 64, 1, 3 * AD_CHUNKS);
        assert_eq!((name, cfg.grid_dim), ("attn_decode_64", (3, 3, 1)));
        for (heads, hd) in [(2 * (ATT_GROUP_MAX + 1), 64), (14, 256), (14, 80)] {
            let (name, cfg) = decode_attention_launch(heads, 2, hd, 7, 5);
            assert_eq!(
                (name, cfg.grid_dim, cfg.block_dim.0),
                ("attn_partial", (heads as u32, 5, 7), ATT_THREADS as u32)
            );
        }
    }

    /// The register-tiled kernels' shared memory for the two head sizes
    /// they have (the formula is the kernel's layout): one key group fits
    /// every architecture the binary ships for (99 KiB on sm_89), two fit
    /// sm_90's 227 KiB.
    #[test]
    fn prefill_rt_shapes() {
        assert_eq!(prefill_rt_smem(64, 1), Some(4 * (64 * 68 * 3 + 64 * 64)));
        assert_eq!(
            prefill_rt_smem(128, 2),
            Some(4 * (64 * 132 + 2 * (32 * 132 + 32 * 128 + 32 * 68)))
        );
        for hd in [64, 128] {
            assert!(prefill_rt_smem(hd, 1).unwrap() <= 99 * 1024);
            assert!(prefill_rt_smem(hd, 2).unwrap() <= 227 * 1024);
        }
        for hd in [16, 80, 256] {
            assert_eq!(prefill_rt_smem(hd, 1), None);
        }
        assert_eq!(prefill_rt_name(64, 2), "attn_prefill_rt_64");
        assert_eq!(prefill_rt_name(128, 1), "attn_prefill_rt1_128");
    }
}
