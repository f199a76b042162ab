//! Launchers of the fused decode q/k/v projection (`matvec_*_qkv_st` for a
//! lone row, `matvec_*_qkv_bst` for a step of several rows, in
//! cuda/matvec.cu; KERNEL-MATVEC, WORKER-4700, WORKER-4710, issue 5 point
//! 10, issue 11 point 7).
//!
//! Why: q, k and v of a decode step read the same RMS-normed input; one launch
//! over their concatenated rows replaces three (fewer launches per layer, the
//! vectors staged once instead of three times, and the two small k/v matrices
//! no longer run as grids of their own). Each row's value is computed exactly
//! as `matvec_norm` computes it for one vector, so the fused and separate
//! paths give bit-identical outputs (WORKER-4710). q and k share a format;
//! v may have another where the pair is in `kernel_units::QKV_MIXED` (a
//! Q4_K_M file gives v more bits in half its layers, which once cost those
//! layers two extra launches).

use super::batched::RowNorm;
use super::cuda_err;
use super::device::{Gpu, Span};
use super::kernel_units::QKV_MIXED;
use super::launch::{KernelLaunch, LaunchArg};
use super::launch_shape::{batched_launch, chunk_bytes, decode_launch, staged_smem, BT_MIN_BATCH};
use super::ops::{as_i32, dtype_suffix, row_bytes};
use crate::error::Result;
use crate::model::gguf::GgmlType;

/// Fewest vectors per block at which a step of BT_MIN_BATCH rows or more
/// takes `_qkv_bst` rather than three launches of the token-on-lane or
/// tiled kernels. Below it the staged kernel reads the weights once per
/// few tokens. Measured on an H100 (2026-12-06, aggregate decode tok/s of
/// 128 + 128 tokens a sequence at 32 / 64 sequences, three `_bt`/`_tl`
/// launches against `_qkv_bst`): Qwen2.5-0.5B-shaped file (8 vectors a
/// block) 6,865 / 8,774 against 7,112 / 8,966; Qwen2.5-1.5B-shaped (5 a
/// block) 2,576 / 3,340 against 2,682 / 3,413; a 4-layer file of a 7B's
/// widths (4096 wide, 1 a block) 6,264 / 6,444 against 5,418 / 5,673.
const QKV_BST_MIN_PER: usize = 4;

/// The formats of a fused q/k/v launch: q and k in `qk`, v in `v` (the same,
/// or `qk`'s partner in `QKV_MIXED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvFormats {
    pub qk: GgmlType,
    pub v: GgmlType,
}

impl QkvFormats {
    /// All three in one format.
    pub fn one(t: GgmlType) -> Self {
        Self { qk: t, v: t }
    }

    /// The fused kernels' formats for matrices q, k, v of these formats, or
    /// None when no fused kernel reads them (they then run as three).
    pub fn of(q: GgmlType, k: GgmlType, v: GgmlType) -> Option<Self> {
        let (qs, vs) = (dtype_suffix(q)?, dtype_suffix(v)?);
        let paired = q == v || QKV_MIXED.iter().any(|m| m.0 == qs && m.2 == vs);
        (q == k && paired).then_some(Self { qk: q, v })
    }

    /// `matvec_<qk>_qkv<variant>`, or `matvec_<qk>_<v>_qkv<variant>` for a
    /// mixed pair.
    pub(crate) fn kernel(&self, variant: &str) -> String {
        let suffix = |t| dtype_suffix(t).unwrap_or("none");
        kernel_name(suffix(self.qk), suffix(self.v), variant)
    }

    /// The format whose chunk is larger: the shared memory a launch needs
    /// (one staged-chunk slot a warp) is computed with it.
    pub(crate) fn staging(&self) -> GgmlType {
        match chunk_bytes(self.v) > chunk_bytes(self.qk) {
            true => self.v,
            false => self.qk,
        }
    }

    /// Format of projection `i` (0 q, 1 k, 2 v).
    pub(crate) fn of_proj(&self, i: usize) -> GgmlType {
        if i == 2 {
            self.v
        } else {
            self.qk
        }
    }
}

/// The fused kernel of q/k in the format of suffix `qk` and v in `v`'s
/// (cuda/matvec.cu's MATVEC_QKV names).
fn kernel_name(qk: &str, v: &str, variant: &str) -> String {
    match qk == v {
        true => format!("matvec_{qk}_qkv{variant}"),
        false => format!("matvec_{qk}_{v}_qkv{variant}"),
    }
}

/// Both fused kernels of every mixed pair (for `device::kernel_names`).
pub(crate) fn mixed_kernel_names() -> impl Iterator<Item = String> {
    QKV_MIXED
        .iter()
        .flat_map(|(qk, _, v, _)| ["_st", "_bst"].map(|variant| kernel_name(qk, v, variant)))
}

/// One projection of the fused launch: weights, optional bias, output, rows.
#[derive(Clone, Copy)]
pub struct Proj<'a> {
    pub w: Span<'a>,
    pub bias: Option<Span<'a>>,
    pub out: Span<'a>,
    pub rows: usize,
}

/// The three projections as both fused kernels take them: weight, bias and
/// output pointers and row counts, each window checked for what the kernel
/// touches over `batch` token rows.
struct ProjArgs {
    w: [u64; 3],
    b: [u64; 3],
    y: [u64; 3],
    n: [i32; 3],
    /// Row bytes of q and k, and of v.
    row_bytes: [u64; 2],
}

impl ProjArgs {
    /// Check every window and the concatenated row count (which must fit a
    /// kernel index, so each projection's count does too).
    fn new(f: QkvFormats, p: &[Proj<'_>; 3], cols: usize, batch: usize) -> Result<Self> {
        as_i32(p[0].rows + p[1].rows + p[2].rows, "q/k/v rows")?;
        let rb = [row_bytes(f.qk, cols)?, row_bytes(f.v, cols)?];
        let mut a = Self {
            w: [0; 3],
            b: [0; 3],
            y: [0; 3],
            n: [0; 3],
            row_bytes: [rb[0] as u64, rb[1] as u64],
        };
        for (i, q) in p.iter().enumerate() {
            a.w[i] = q.w.need(rb[i / 2] * q.rows, "q/k/v weights")?;
            a.b[i] = match q.bias {
                Some(s) => s.need(4 * q.rows, "q/k/v bias")?,
                None => 0,
            };
            a.y[i] = q.out.need(4 * q.rows * batch, "q/k/v out")?;
            a.n[i] = as_i32(q.rows, "q/k/v rows")?;
        }
        Ok(a)
    }

    /// Push the arguments both kernels share, in their order: the weights,
    /// row bytes of q/k and of v, x, the norm weight, `norm_arg` (eps for
    /// `_qkv_st`, the row scales for `_qkv_bst`), biases, outputs, row
    /// counts, cols.
    fn push<T: LaunchArg>(
        &self,
        l: &mut KernelLaunch<'_>,
        x: u64,
        norm_w: u64,
        norm_arg: &T,
        cols: i32,
    ) {
        for w in &self.w {
            l.arg(w);
        }
        l.arg(&self.row_bytes[0])
            .arg(&self.row_bytes[1])
            .arg(&x)
            .arg(&norm_w)
            .arg(norm_arg);
        for ptr in self.b.iter().chain(&self.y) {
            l.arg(ptr);
        }
        for n in &self.n {
            l.arg(n);
        }
        l.arg(&cols);
    }
}

impl Gpu {
    /// out_i = W_i·(rmsnorm(x) * norm_w) (+ bias_i) for the three projections
    /// (formats `f`, `cols` wide) in one launch. Falls back to three
    /// `matvec_norm` launches when the staged kernel's shared memory does not
    /// fit (very wide rows); the results are the same either way.
    pub fn qkv_norm(
        &self,
        f: QkvFormats,
        p: [Proj<'_>; 3],
        x: Span,
        norm_w: Span,
        eps: f32,
        cols: usize,
    ) -> Result<()> {
        if staged_smem(f.staging(), cols, 2).is_none() {
            for (i, q) in p.into_iter().enumerate() {
                let t = f.of_proj(i);
                self.matvec_norm(t, q.w, x, norm_w, eps, q.bias, q.out, q.rows, cols, false)?;
            }
            return Ok(());
        }
        let total = p[0].rows + p[1].rows + p[2].rows;
        if total == 0 {
            return Ok(());
        }
        let args = ProjArgs::new(f, &p, cols, 1)?;
        let cols_i = as_i32(cols, "cols")?;
        let xp = x.need(4 * cols, "x")?;
        let nw = norm_w.need(4 * cols, "norm weight")?;
        let (st, cfg) = decode_launch(f.staging(), total, cols, 2);
        debug_assert_eq!(st, "_st");
        let name = f.kernel("_st");
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        args.push(&mut l, xp, nw, &eps, cols_i);
        // SAFETY: every window was checked above (`ProjArgs::new`, x, norm
        // weight) for the bytes its projection reads or writes; argument
        // types and order match MATVEC_QKV's `_st` in cuda/matvec.cu; the
        // shared size comes from `staged_smem` (2 vectors, the larger chunk
        // of the two formats) via `decode_launch`, which chose the staged
        // shape (checked above).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out_i[t] = W_i·(rmsnorm(x[t]) * norm.weight) (+ bias_i) for `batch`
    /// rows (norm.scale from `row_rms`): one `_qkv_bst` launch where the
    /// staged shape fits, below BT_MIN_BATCH rows and, from it, while a
    /// block holds at least QKV_BST_MIN_PER vectors (three launches of the
    /// token-on-lane kernels took 30.2 us at 32 rows and 35.5 at 64 on an
    /// H100 at Qwen2.5-0.5B shapes, the k and v matrices' 128 rows too few
    /// to fill the card); else three `matvec_rows`. Every row gets its lone
    /// bits either way.
    pub fn qkv_rows(
        &self,
        f: QkvFormats,
        p: [Proj<'_>; 3],
        x: Span,
        norm: RowNorm,
        cols: usize,
        batch: usize,
    ) -> Result<()> {
        let total = p[0].rows + p[1].rows + p[2].rows;
        let sms = self.info().multiprocessors;
        let fused = batched_launch(f.staging(), total, cols, batch, true, sms)
            .filter(|(per, _)| batch < BT_MIN_BATCH || *per >= QKV_BST_MIN_PER);
        let Some((per, cfg)) = fused else {
            for (i, q) in p.into_iter().enumerate() {
                self.matvec_rows(
                    f.of_proj(i),
                    q.w,
                    x,
                    Some(norm),
                    q.bias,
                    q.out,
                    q.rows,
                    cols,
                    batch,
                    false,
                )?;
            }
            return Ok(());
        };
        let args = ProjArgs::new(f, &p, cols, batch)?;
        let (cols_i, batch_i, per_i) = (
            as_i32(cols, "cols")?,
            as_i32(batch, "batch")?,
            as_i32(per, "vectors per block")?,
        );
        let xp = x.need(4 * cols * batch, "x")?;
        let nw = norm.weight.need(4 * cols, "norm weight")?;
        let sc = norm.scale.need(4 * batch, "row scales")?;
        let name = f.kernel("_bst");
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        args.push(&mut l, xp, nw, &sc, cols_i);
        l.arg(&batch_i).arg(&per_i);
        // SAFETY: every window was checked above (`ProjArgs::new` over `batch`
        // rows, x over `batch` rows, the scales one per row) for the bytes the
        // kernel reads or writes; argument types and order match MATVEC_QKV's
        // `_bst` in cuda/matvec.cu; grid, `per` and shared size come from
        // `batched_launch` for the concatenated rows (with the larger chunk
        // of the two formats).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::device::kernel_names;
    use crate::gpu::ops::FORMATS;

    /// Every fused kernel the launchers can name is loaded at start-up (a
    /// name missing from `kernel_names` fails the worker's first decode step
    /// on such a file, not its start), and only pairs of the table fuse.
    #[test]
    fn every_fused_qkv_kernel_is_loaded_at_start_up() {
        let loaded = kernel_names();
        let mut fused = 0;
        for &(qk, _) in FORMATS.iter() {
            for &(v, _) in FORMATS.iter() {
                let Some(f) = QkvFormats::of(qk, qk, v) else {
                    continue;
                };
                fused += 1;
                for variant in ["_st", "_bst"] {
                    let name = f.kernel(variant);
                    assert!(loaded.contains(&name), "{name} is not in kernel_names()");
                }
            }
        }
        assert_eq!(fused, FORMATS.len() + QKV_MIXED.len());
        assert!(QkvFormats::of(GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q8_0).is_none());
    }
}
