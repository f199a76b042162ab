//! Launcher of the fused decode q/k/v projection (`matvec_*_qkv_st` in
//! cuda/matvec.cu; KERNEL-MATVEC, WORKER-4700, issue 5 point 10).
//!
//! Why: q, k and v of a decode step read the same RMS-normed input; one launch
//! over their concatenated rows replaces three (fewer launches per layer, and
//! the two small k/v matrices no longer run as grids of their own). Each row's
//! value is computed exactly as `matvec_norm` computes it, so the fused and
//! separate paths give bit-identical outputs (WORKER-4710).

use super::cuda_err;
use super::device::{Gpu, Span};
use super::launch_shape::{decode_launch, staged_smem};
use super::ops::{dtype_suffix, row_bytes};
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
}
