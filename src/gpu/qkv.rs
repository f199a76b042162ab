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
//! paths give bit-identical outputs (WORKER-4710).

use super::batched::RowNorm;
use super::cuda_err;
use super::device::{Gpu, Span};
use super::launch::{KernelLaunch, LaunchArg};
use super::launch_shape::{batched_launch, decode_launch, staged_smem};
use super::ops::{as_i32, dtype_suffix, row_bytes};
use crate::error::Result;
use crate::model::gguf::GgmlType;

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
    row_bytes: u64,
}

impl ProjArgs {
    /// Check every window and the concatenated row count (which must fit a
    /// kernel index, so each projection's count does too).
    fn new(dtype: GgmlType, p: &[Proj<'_>; 3], cols: usize, batch: usize) -> Result<Self> {
        as_i32(p[0].rows + p[1].rows + p[2].rows, "q/k/v rows")?;
        let rb = row_bytes(dtype, cols)?;
        let mut a = Self {
            w: [0; 3],
            b: [0; 3],
            y: [0; 3],
            n: [0; 3],
            row_bytes: rb as u64,
        };
        for (i, q) in p.iter().enumerate() {
            a.w[i] = q.w.need(rb * q.rows, "q/k/v weights")?;
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
    /// row bytes, x, the norm weight, `norm_arg` (eps for `_qkv_st`, the row
    /// scales for `_qkv_bst`), biases, outputs, row counts, cols.
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
        l.arg(&self.row_bytes).arg(&x).arg(&norm_w).arg(norm_arg);
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
    /// (all `dtype`, `cols` wide) in one launch. Falls back to three
    /// `matvec_norm` launches when the staged kernel's shared memory does not
    /// fit (very wide rows); the results are the same either way.
    pub fn qkv_norm(
        &self,
        dtype: GgmlType,
        p: [Proj<'_>; 3],
        x: Span,
        norm_w: Span,
        eps: f32,
        cols: usize,
    ) -> Result<()> {
        if staged_smem(dtype, cols, 2).is_none() {
            for q in p {
                self.matvec_norm(
                    dtype, q.w, x, norm_w, eps, q.bias, q.out, q.rows, cols, false,
                )?;
            }
            return Ok(());
        }
        let total = p[0].rows + p[1].rows + p[2].rows;
        if total == 0 {
            return Ok(());
        }
        let args = ProjArgs::new(dtype, &p, cols, 1)?;
        let cols_i = as_i32(cols, "cols")?;
        let xp = x.need(4 * cols, "x")?;
        let nw = norm_w.need(4 * cols, "norm weight")?;
        let (st, cfg) = decode_launch(dtype, total, cols, 2);
        debug_assert_eq!(st, "_st");
        let name = format!("matvec_{}_qkv_st", dtype_suffix(dtype).unwrap_or("none"));
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        args.push(&mut l, xp, nw, &eps, cols_i);
        // SAFETY: every window was checked above (`ProjArgs::new`, x, norm
        // weight) for the bytes its projection reads or writes; argument
        // types and order match qkv_st_impl in cuda/matvec.cu; the shared
        // size comes from `staged_smem` (2 vectors) via `decode_launch`,
        // which chose the staged shape (checked above).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out_i[t] = W_i·(rmsnorm(x[t]) * norm.weight) (+ bias_i) for `batch`
    /// rows (norm.scale from `row_rms`): one `_qkv_bst` launch where the
    /// staged shape fits, at every row count (three launches of the
    /// token-on-lane kernels took 30.2 us at 32 rows and 35.5 at 64 on an
    /// H100, the k and v matrices' 128 rows too few to fill the card);
    /// else three `matvec_rows`. Every row gets its lone bits either way.
    pub fn qkv_rows(
        &self,
        dtype: GgmlType,
        p: [Proj<'_>; 3],
        x: Span,
        norm: RowNorm,
        cols: usize,
        batch: usize,
    ) -> Result<()> {
        let total = p[0].rows + p[1].rows + p[2].rows;
        let sms = self.info().multiprocessors;
        let Some((per, cfg)) = batched_launch(dtype, total, cols, batch, true, sms) else {
            for q in p {
                self.matvec_rows(
                    dtype,
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
        let args = ProjArgs::new(dtype, &p, cols, batch)?;
        let (cols_i, batch_i, per_i) = (
            as_i32(cols, "cols")?,
            as_i32(batch, "batch")?,
            as_i32(per, "vectors per block")?,
        );
        let xp = x.need(4 * cols * batch, "x")?;
        let nw = norm.weight.need(4 * cols, "norm weight")?;
        let sc = norm.scale.need(4 * batch, "row scales")?;
        let name = format!("matvec_{}_qkv_bst", dtype_suffix(dtype).unwrap_or("none"));
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        args.push(&mut l, xp, nw, &sc, cols_i);
        l.arg(&batch_i).arg(&per_i);
        // SAFETY: every window was checked above (`ProjArgs::new` over `batch`
        // rows, x over `batch` rows, the scales one per row) for the bytes the
        // kernel reads or writes; argument types and order match qkv_bst_impl
        // in cuda/matvec.cu; grid, `per` and shared size come from
        // `batched_launch` for the concatenated rows.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }
}
