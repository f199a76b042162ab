//! Launchers of the fused decode q/k/v projection (`matvec_*_qkv_st` for a
//! lone row, `matvec_*_qkv_bst` for a step of 2 to 7 rows, in
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
use super::launch_shape::{batched_launch, decode_launch, staged_smem, BT_MIN_BATCH};
use super::ops::{as_i32, dtype_suffix, row_bytes};
use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;

/// One projection of the fused launch: weights, optional bias, output, rows.
#[derive(Clone, Copy)]
pub struct Proj<'a> {
    pub w: Span<'a>,
    pub bias: Option<Span<'a>>,
    pub out: Span<'a>,
    pub rows: usize,
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
        i32::try_from(total).map_err(|_| {
            WorkerError::invalid(format!(
                "q/k/v rows {total} are too many for a kernel index"
            ))
        })?;
        let cols_i = i32::try_from(cols)
            .map_err(|_| WorkerError::invalid(format!("cols {cols} is too large")))?;
        let rb = row_bytes(dtype, cols)?;
        let mut w = [0u64; 3];
        let mut b = [0u64; 3];
        let mut y = [0u64; 3];
        let mut n = [0i32; 3];
        for (i, q) in p.iter().enumerate() {
            w[i] = q.w.need(rb * q.rows, "q/k/v weights")?;
            b[i] = match q.bias {
                Some(s) => s.need(4 * q.rows, "q/k/v bias")?,
                None => 0,
            };
            y[i] = q.out.need(4 * q.rows, "q/k/v out")?;
            n[i] = q.rows as i32; // each <= total, which fits i32 (checked above)
        }
        let xp = x.need(4 * cols, "x")?;
        let nw = norm_w.need(4 * cols, "norm weight")?;
        let rb64 = rb as u64;
        let (st, cfg) = decode_launch(dtype, total, cols, 2);
        debug_assert_eq!(st, "_st");
        let name = format!("matvec_{}_qkv_st", dtype_suffix(dtype).unwrap_or("none"));
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&w[0])
            .arg(&w[1])
            .arg(&w[2])
            .arg(&rb64)
            .arg(&xp)
            .arg(&nw)
            .arg(&eps)
            .arg(&b[0])
            .arg(&b[1])
            .arg(&b[2])
            .arg(&y[0])
            .arg(&y[1])
            .arg(&y[2])
            .arg(&n[0])
            .arg(&n[1])
            .arg(&n[2])
            .arg(&cols_i);
        // SAFETY: every window was checked above for the bytes its projection
        // reads or writes; argument types and order match qkv_st_impl in
        // cuda/matvec.cu; the shared size comes from `staged_smem` (2 vectors)
        // via `decode_launch`, which chose the staged shape (checked above).
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out_i[t] = W_i·(rmsnorm(x[t]) * norm.weight) (+ bias_i) for `batch`
    /// rows (norm.scale from `row_rms`): one `_qkv_bst` launch below
    /// BT_MIN_BATCH rows, where the staged shape fits; else (and from
    /// BT_MIN_BATCH rows, where the token-on-lane and tiled kernels serve)
    /// three `matvec_rows`. Every row gets its lone bits either way.
    #[allow(clippy::too_many_arguments)]
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
        let shape = (batch < BT_MIN_BATCH)
            .then(|| batched_launch(dtype, total, cols, batch, true, sms))
            .flatten();
        let Some((per, cfg)) = shape else {
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
        as_i32(total, "q/k/v rows")?;
        let (cols_i, batch_i, per_i) = (
            as_i32(cols, "cols")?,
            as_i32(batch, "batch")?,
            as_i32(per, "vectors per block")?,
        );
        let rb = row_bytes(dtype, cols)?;
        let mut w = [0u64; 3];
        let mut b = [0u64; 3];
        let mut y = [0u64; 3];
        let mut n = [0i32; 3];
        for (i, q) in p.iter().enumerate() {
            w[i] = q.w.need(rb * q.rows, "q/k/v weights")?;
            b[i] = match q.bias {
                Some(s) => s.need(4 * q.rows, "q/k/v bias")?,
                None => 0,
            };
            y[i] = q.out.need(4 * q.rows * batch, "q/k/v out")?;
            n[i] = q.rows as i32; // each <= total, which fits i32 (checked above)
        }
        let xp = x.need(4 * cols * batch, "x")?;
        let nw = norm.weight.need(4 * cols, "norm weight")?;
        let sc = norm.scale.need(4 * batch, "row scales")?;
        let rb64 = rb as u64;
        let name = format!("matvec_{}_qkv_bst", dtype_suffix(dtype).unwrap_or("none"));
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&w[0])
            .arg(&w[1])
            .arg(&w[2])
            .arg(&rb64)
            .arg(&xp)
            .arg(&nw)
            .arg(&sc)
            .arg(&b[0])
            .arg(&b[1])
            .arg(&b[2])
            .arg(&y[0])
            .arg(&y[1])
            .arg(&y[2])
            .arg(&n[0])
            .arg(&n[1])
            .arg(&n[2])
            .arg(&cols_i)
            .arg(&batch_i)
            .arg(&per_i);
        // SAFETY: every window was checked above for the bytes its projection
        // reads or writes over `batch` rows (x and the outputs hold `batch`
        // rows, the scales one per row); argument types and order match
        // qkv_bst_impl in cuda/matvec.cu; grid, `per` and shared size come
        // from `batched_launch` for the concatenated rows.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }
}
