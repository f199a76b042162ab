//! Device top-k (KERNEL-SAMPLE, WORKER-4700, 4710): the launchers of
//! `cuda/topk.cu`, `topk` for small pools (greedy) and `topk_radix_hist` /
//! `topk_radix_gather` for large ones.
//!
//! Why: the sampler's pool is the best `min(top_k, 1024)` logits in the order
//! of `engine::sampler` (logit descending, id ascending on ties, NaN as -inf).
//! The small-k `topk` kernel costs one vocabulary pass per candidate; this one
//! costs four launches for any k up to 1024 (radix select in three passes,
//! then an ordered gather and a bitonic sort), so only k ids and values cross
//! to the host. The result is exact for any input, ties and NaN included, so
//! there is no overflow case and no host fallback to report; it is
//! deterministic (integer atomics only where the sum is order-independent),
//! allocates nothing, never synchronises with the host, and takes its sizes as
//! kernel arguments so it can be captured in a CUDA graph.
//!
//! One launch serves many rows (the logits of every sequence of a step,
//! issue 11 point 7): row r's logits follow row r-1's, its k ids and values
//! follow row r-1's, and it has its own scratch row; every row gets exactly
//! what it would get alone.
//!
//! The caller owns a scratch window of [`topk_large_scratch_bytes`] bytes per
//! row, zero-filled once (as [`Gpu::alloc`] returns it) and used by nothing else:
//! the kernels keep arrival counters in it and re-arm them to zero themselves.

use cudarc::driver::LaunchConfig;

use super::cuda_err;
use super::device::{Gpu, Span};
use crate::error::{Result, WorkerError};

/// Largest k (the sampler's `MAX_CANDIDATES`; TK_MAX_K in cuda/topk.cu).
pub const TOPK_LARGE_MAX_K: usize = 1024;
/// Logits per block (TK_CHUNK).
const CHUNK: usize = 4096;
/// Threads per block (TK_THREADS).
const THREADS: u32 = 1024;
/// Histogram bins per block row (TK_BINS).
const BINS: usize = 2048;
/// Words before the per-block area (TK_BLK): counters, state, candidates.
const HEAD_WORDS: usize = 16 + 2 * TOPK_LARGE_MAX_K;
/// The final offsets scan runs one block per thread, so at most 1024 blocks.
const MAX_BLOCKS: usize = 1024;
/// Largest vocabulary this launcher accepts.
pub const TOPK_LARGE_MAX_N: usize = CHUNK * MAX_BLOCKS;

/// Kernel entry points this launcher needs loaded (for `device::kernel_names`).
pub const TOPK_LARGE_KERNELS: &[&str] = &["topk_radix_hist", "topk_radix_gather"];

fn blocks_for(n: usize) -> usize {
    n.div_ceil(CHUNK)
}

/// Scratch bytes [`Gpu::topk_large`] needs for `n` logits (any k).
/// About 8 KiB per 4096 logits: 320 KB for a 151,936-token vocabulary.
pub fn topk_large_scratch_bytes(n: usize) -> usize {
    // Rounded up to 4 words, as TK_ROW_WORDS: rows stay 8-byte aligned.
    4 * (HEAD_WORDS + blocks_for(n) * (3 + BINS)).next_multiple_of(4)
}

/// Most rows one launch selects from (a grid's y dimension).
pub const TOPK_MAX_ROWS: usize = 65_535;

/// Check a shape; returns the grid size.
fn check_shape(n: usize, k: usize, rows: usize) -> Result<usize> {
    if rows == 0 || rows > TOPK_MAX_ROWS {
        return Err(WorkerError::invalid(format!(
            "top-k over {rows} rows: 1..={TOPK_MAX_ROWS} are supported"
        )));
    }
    if n == 0 || n > TOPK_LARGE_MAX_N {
        return Err(WorkerError::invalid(format!(
            "top-k over {n} logits: the device selection supports 1..={TOPK_LARGE_MAX_N}"
        )));
    }
    if k == 0 || k > n.min(TOPK_LARGE_MAX_K) {
        return Err(WorkerError::invalid(format!(
            "top-k: k = {k} must be in 1..={} for {n} logits",
            n.min(TOPK_LARGE_MAX_K)
        )));
    }
    Ok(blocks_for(n))
}

fn disjoint(a: (u64, usize), b: (u64, usize)) -> bool {
    a.0.saturating_add(a.1 as u64) <= b.0 || b.0.saturating_add(b.1 as u64) <= a.0
}

impl Gpu {
    /// The best `k` of `n` logits, in the sampler's order, into `ids` (i32)
    /// and `vals` (the logits' original f32 bits, NaN kept). Queues four
    /// launches on the engine's stream and returns without waiting; the caller
    /// downloads `ids`/`vals` (one sync) when it needs them.
    pub fn topk_large(
        &self,
        logits: Span,
        n: usize,
        k: usize,
        scratch: Span,
        ids: Span,
        vals: Span,
    ) -> Result<()> {
        self.topk_large_rows(logits, n, 1, k, scratch, ids, vals)
    }

    /// [`Gpu::topk_large`] of `rows` consecutive rows of `n` logits in one
    /// launch: row r's k ids and values at r * k, its scratch at r *
    /// [`topk_large_scratch_bytes`].
    #[allow(clippy::too_many_arguments)]
    pub fn topk_large_rows(
        &self,
        logits: Span,
        n: usize,
        rows: usize,
        k: usize,
        scratch: Span,
        ids: Span,
        vals: Span,
    ) -> Result<()> {
        let (cfg, [lp, sp, ip, vp]) = checked_launch(logits, n, rows, k, scratch, ids, vals)?;
        // Both fit i32: n <= TOPK_LARGE_MAX_N and k <= 1024 (checked).
        let (n_i, k_i) = (n as i32, k as i32);
        let hist = self.func("topk_radix_hist")?;
        for pass in 0i32..3 {
            let mut l = self.kernel_launch(hist);
            l.arg(&lp).arg(&n_i).arg(&k_i).arg(&pass).arg(&sp);
            // SAFETY: `logits` holds rows * n f32 and `scratch` rows times the
            // bytes topk_large_scratch_bytes(n) lays out for this grid (both
            // checked above, disjoint); the grid is ceil(n / TK_CHUNK) <= 1024
            // blocks of TK_THREADS threads per row (y) as the kernel requires;
            // argument types and order match topk_radix_hist in cuda/topk.cu.
            unsafe { l.launch(cfg) }
                .map_err(cuda_err(&format!("launching topk_radix_hist pass {pass}")))?;
        }
        let gather = self.func("topk_radix_gather")?;
        let mut l = self.kernel_launch(gather);
        l.arg(&lp).arg(&n_i).arg(&k_i).arg(&sp).arg(&ip).arg(&vp);
        // SAFETY: as above, and `ids`/`vals` hold rows * k i32/f32 each
        // (checked, disjoint from the scratch); the kernel writes exactly k of
        // each per row and reads logits only below n in its row; types match
        // topk_radix_gather.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching topk_radix_gather"))
    }

    /// The best `k` of `n` logits (descending, lowest id on ties, NaN as
    /// -inf, which is also the value written for it) into `ids` and `vals`
    /// with the small-k `topk` kernel: one launch, one pass over the logits
    /// per candidate, so for small k only (greedy is k = 1). The scratch is
    /// the radix select's ([`topk_large_scratch_bytes`] per row).
    pub fn topk(
        &self,
        logits: Span,
        n: usize,
        k: usize,
        scratch: Span,
        ids: Span,
        vals: Span,
    ) -> Result<()> {
        self.topk_rows(logits, n, 1, k, scratch, ids, vals)
    }

    /// [`Gpu::topk`] of `rows` consecutive rows of `n` logits in one launch:
    /// row r's k ids and values at r * k, its scratch at r *
    /// [`topk_large_scratch_bytes`].
    #[allow(clippy::too_many_arguments)]
    pub fn topk_rows(
        &self,
        logits: Span,
        n: usize,
        rows: usize,
        k: usize,
        scratch: Span,
        ids: Span,
        vals: Span,
    ) -> Result<()> {
        let (cfg, [lp, sp, ip, vp]) = checked_launch(logits, n, rows, k, scratch, ids, vals)?;
        // Both fit i32: n <= TOPK_LARGE_MAX_N and k <= 1024 (checked).
        let (n_i, k_i) = (n as i32, k as i32);
        let mut l = self.kernel_launch(self.func("topk")?);
        l.arg(&lp).arg(&n_i).arg(&k_i).arg(&sp).arg(&ip).arg(&vp);
        // SAFETY: `logits` holds rows * n f32, `scratch` rows times
        // topk_large_scratch_bytes(n) (whose per-block area holds a block's k
        // values and ids: 2k <= 3 + TK_BINS words), `ids`/`vals` rows * k
        // i32/f32, all disjoint (checked); the grid is ceil(n / TK_CHUNK)
        // blocks of TK_THREADS threads per row (y), as the kernel requires;
        // argument types and order match topk in cuda/topk.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching topk"))
    }
}

/// The launch shape shared by the top-k kernels (ceil(n / TK_CHUNK) blocks
/// of TK_THREADS threads per row), after checking the shape and that each
/// window is large enough, aligned and disjoint from the others: the device
/// addresses of logits, scratch, ids and vals.
fn checked_launch(
    logits: Span,
    n: usize,
    rows: usize,
    k: usize,
    scratch: Span,
    ids: Span,
    vals: Span,
) -> Result<(LaunchConfig, [u64; 4])> {
    let grid = check_shape(n, k, rows)?;
    let lp = logits.need(4 * n * rows, "logits")?;
    let scratch_bytes = topk_large_scratch_bytes(n) * rows;
    let sp = scratch.need(scratch_bytes, "top-k scratch")?;
    let ip = ids.need(4 * k * rows, "ids")?;
    let vp = vals.need(4 * k * rows, "vals")?;
    if lp % 4 != 0 || sp % 8 != 0 || ip % 4 != 0 || vp % 4 != 0 {
        return Err(WorkerError::internal(
            "top-k: logits, ids and vals need 4-byte and the scratch 8-byte alignment",
        ));
    }
    let sw = (sp, scratch_bytes);
    let (lw, iw, vw) = ((lp, 4 * n * rows), (ip, 4 * k * rows), (vp, 4 * k * rows));
    if ![lw, iw, vw].into_iter().all(|w| disjoint(sw, w)) || !disjoint(iw, vw) {
        return Err(WorkerError::internal(
            "top-k: the scratch, ids and vals windows must not overlap each other or the logits",
        ));
    }
    let cfg = LaunchConfig {
        grid_dim: (grid as u32, rows as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, [lp, sp, ip, vp]))
}

#[cfg(test)]
#[path = "topk_tests.rs"]
mod tests;
