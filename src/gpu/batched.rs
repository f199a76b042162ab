//! Launchers of the batched mat-vecs (`matvec_*_tl` / `matvec_*_gu_tl`,
//! register tiles of 4 weight rows x 4 tokens, in cuda/matvec_tiles.cu,
//! from TL_MIN_BATCH rows; `matvec_*_bt` / `matvec_*_gu_bt`, rows
//! on the lanes, in cuda/matvec_rows.cu, from BT_MIN_BATCH rows; below it
//! `matvec_*_bst` / `matvec_*_gu_bst`, staged, and `matvec_*_b8` /
//! `matvec_*_gu_b8` where the staged ones' shared memory does not fit, in
//! cuda/matvec.cu) and of `row_rms` (cuda/rmsnorm.cu): one launch over many
//! rows (KERNEL-MATVEC; issue 11 points 4, 5 and 7). With
//! [`RowsMath::Tensor`], the tensor-core `matvec_*_mm` / `matvec_*_gu_mm`
//! (cuda/matvec_mma.cu) for any row count, one included.
//!
//! Why they exist: a prefill chunk of fewer than GEMM_MIN_TOKENS tokens, and
//! a decode step of many sequences, one row each. For the decode step every
//! row must get the bits it would get alone (WORKER-4710 under batching):
//! the norm is applied exactly as the fused single-vector kernels apply it
//! (the run scaled by the norm weight before the dot, the sum by the row's
//! `warp_rms` scale), so `matvec_norm` of one vector and `matvec_rows` with
//! a norm give the same bits per row, as do `gate_up` and `gate_up_rows`.

use cudarc::driver::LaunchConfig;

use super::cuda_err;
use super::device::{Gpu, Span};
use super::launch_shape::{
    batched_launch, rows_bt_launch, rows_mm_launch, rows_tl_launch, rows_tl_pays, BT_MIN_BATCH,
    TL_MIN_BATCH,
};
use super::ops::{as_i32, blocks, dtype_suffix, row_bytes};
use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;

/// The norm a batched mat-vec applies to its rows: the norm weight, and
/// each row's RMS scale as `row_rms` wrote it.
#[derive(Clone, Copy)]
pub struct RowNorm<'a> {
    pub weight: Span<'a>,
    pub scale: Span<'a>,
}

/// The arithmetic of a batched product. A matrix is multiplied one way for
/// every row count (a lone row included), so a row's bits never depend on
/// its step: the engine picks the way once per matrix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RowsMath {
    /// FP32 FMA chains, each row's as the lone `_st` kernels compute it
    /// (`_tl`, `_bt`, `_bst`, `_b8`).
    Fp32,
    /// 3xTF32 on the tensor cores (`_mm`, cuda/matvec_mma.cu); only where
    /// `Gpu::rows_mm_ready` says the format's kernels are ready.
    Tensor,
}

/// The kernel variant of a batched launch (`Gpu::rows_launch`).
struct RowsLaunch {
    suffix: &'static str,
    cfg: LaunchConfig,
    /// Vectors per block of the `_bst` kernels, m16 tiles per block of the
    /// `_mm` kernels; passed to those two only.
    per: Option<i32>,
}

/// Rows of one batched launch: 1..=65535 * 8.
fn check_batch(batch: usize) -> Result<i32> {
    if batch == 0 || batch > 65_535 * 8 {
        return Err(WorkerError::invalid(format!(
            "matvec batch {batch} out of range"
        )));
    }
    as_i32(batch, "batch")
}

/// Grid of the `_b8` kernels: 4 output rows (warps) per block, 8 vectors per y.
pub(super) fn b8_grid(rows: usize, batch: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(rows, 4), blocks(batch, 8), 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// scale[r] = 1 / sqrt(mean(x[r]²) + eps) for `rows` rows of `cols`
    /// (cols a multiple of 32), by the fused kernels' own `warp_rms`.
    pub fn row_rms(&self, x: Span, scale: Span, cols: usize, rows: usize, eps: f32) -> Result<()> {
        if cols == 0 || cols % 32 != 0 || rows == 0 {
            return Err(WorkerError::invalid(format!(
                "row_rms: {rows} rows of {cols} (a multiple of 32) are needed"
            )));
        }
        let xp = x.need(4 * cols * rows, "x")?;
        let sp = scale.need(4 * rows, "scale")?;
        let (cols_i, rows_i) = (as_i32(cols, "cols")?, as_i32(rows, "rows")?);
        let f = self.func("row_rms")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(rows, 4), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&xp).arg(&sp).arg(&cols_i).arg(&rows_i).arg(&eps);
        // SAFETY: windows checked above; one warp per row reads cols floats
        // of its row and writes one scale; types match cuda/rmsnorm.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching row_rms"))
    }

    /// y[t] = W·x'[t] (+ bias) (+ y[t]) for `batch` rows, where x'[t] is x[t]
    /// or, with `norm`, rmsnorm(x[t]) * norm.weight; W is `rows`×`cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn matvec_rows(
        &self,
        dtype: GgmlType,
        w: Span,
        x: Span,
        norm: Option<RowNorm>,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        batch: usize,
        accumulate: bool,
    ) -> Result<()> {
        let math = RowsMath::Fp32;
        self.matvec_rows_in(
            math, dtype, w, x, norm, bias, y, rows, cols, batch, accumulate,
        )
    }

    /// [`Gpu::matvec_rows`] in the arithmetic `math`.
    #[allow(clippy::too_many_arguments)]
    pub fn matvec_rows_in(
        &self,
        math: RowsMath,
        dtype: GgmlType,
        w: Span,
        x: Span,
        norm: Option<RowNorm>,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        batch: usize,
        accumulate: bool,
    ) -> Result<()> {
        let batch_i = check_batch(batch)?;
        let plan = self.rows_launch(math, dtype, rows, cols, batch, norm.is_some(), false)?;
        let name = format!(
            "matvec_{}{}",
            dtype_suffix(dtype).unwrap_or("none"),
            plan.suffix
        );
        let rb = row_bytes(dtype, cols)?;
        let wp = w.need(rb * rows, "weights")?;
        let xp = x.need(4 * cols * batch, "x")?;
        let yp = y.need(4 * rows * batch, "y")?;
        let bp = match bias {
            Some(b) => b.need(4 * rows, "bias")?,
            None => 0u64,
        };
        let (nw, sc) = match norm {
            Some(n) => (
                n.weight.need(4 * cols, "norm weight")?,
                n.scale.need(4 * batch, "row scales")?,
            ),
            None => (0u64, 0u64),
        };
        let (rows_i, cols_i) = (as_i32(rows, "rows")?, as_i32(cols, "cols")?);
        let (rb64, acc) = (rb as u64, accumulate as i32);
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&wp)
            .arg(&rb64)
            .arg(&xp)
            .arg(&bp)
            .arg(&yp)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&acc)
            .arg(&batch_i);
        if let Some(per) = &plan.per {
            l.arg(per);
        }
        l.arg(&nw).arg(&sc);
        // SAFETY: windows checked above (x and y hold `batch` rows, the
        // scales one per row); argument types and order match `matmul_impl`
        // (`_b8`), `matmul_st_impl` (`_bst`, also `per`) in cuda/matvec.cu
        // and the `_bt`, `_tl`, `_mm` kernels (matvec_rows.cu, _tiles.cu,
        // _mma.cu); grid and shared size from `rows_launch` (granted at open).
        unsafe { l.launch(plan.cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out[t] = silu(Wg·x'[t]) * (Wu·x'[t]) with x'[t] = rmsnorm(x[t]) *
    /// norm.weight, for `batch` rows; gate and up in the same format.
    #[allow(clippy::too_many_arguments)]
    pub fn gate_up_rows(
        &self,
        dtype: GgmlType,
        wg: Span,
        wu: Span,
        x: Span,
        norm: RowNorm,
        out: Span,
        rows: usize,
        cols: usize,
        batch: usize,
    ) -> Result<()> {
        let math = RowsMath::Fp32;
        self.gate_up_rows_in(math, dtype, wg, wu, x, norm, out, rows, cols, batch)
    }

    /// [`Gpu::gate_up_rows`] in the arithmetic `math`.
    #[allow(clippy::too_many_arguments)]
    pub fn gate_up_rows_in(
        &self,
        math: RowsMath,
        dtype: GgmlType,
        wg: Span,
        wu: Span,
        x: Span,
        norm: RowNorm,
        out: Span,
        rows: usize,
        cols: usize,
        batch: usize,
    ) -> Result<()> {
        let batch_i = check_batch(batch)?;
        let plan = self.rows_launch(math, dtype, rows, cols, batch, true, true)?;
        let name = format!(
            "matvec_{}_gu{}",
            dtype_suffix(dtype).unwrap_or("none"),
            plan.suffix
        );
        let rb = row_bytes(dtype, cols)?;
        let gp = wg.need(rb * rows, "gate weights")?;
        let up = wu.need(rb * rows, "up weights")?;
        let xp = x.need(4 * cols * batch, "x")?;
        let nw = norm.weight.need(4 * cols, "norm weight")?;
        let sc = norm.scale.need(4 * batch, "row scales")?;
        let op = out.need(4 * rows * batch, "out")?;
        let (rows_i, cols_i, rb64) = (as_i32(rows, "rows")?, as_i32(cols, "cols")?, rb as u64);
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&gp)
            .arg(&up)
            .arg(&rb64)
            .arg(&xp)
            .arg(&nw)
            .arg(&sc)
            .arg(&op)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&batch_i);
        if let Some(per) = &plan.per {
            l.arg(per);
        }
        // SAFETY: windows checked above; argument types and order match
        // `gate_up_b_impl` (`_gu_b8`) or `gate_up_bst_impl` (`_gu_bst`, which
        // also takes `per`) in cuda/matvec.cu, `name##_gu_bt` in
        // cuda/matvec_rows.cu, `name##_gu_tl` in cuda/matvec_tiles.cu or
        // `name##_gu_mm` in cuda/matvec_mma.cu; the
        // grid and shared size come from `rows_launch`.
        unsafe { l.launch(plan.cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// Which batched kernel serves this call, its grid and its `per`: the
    /// register-tiled `_tl` kernels from TL_MIN_BATCH rows where their grid
    /// fills the card ([`rows_tl_pays`]) and the
    /// token-on-lane `_bt` kernels from BT_MIN_BATCH rows when the format's
    /// are ready, else the staged `_bst` when their shared memory fits, else
    /// the `_b8`. All give every row the bits it gets alone. The `_tl`,
    /// `_bt` and `_b8` kernels take the same arguments; `_bst` also takes
    /// `per`, its vectors per block.
    #[allow(clippy::too_many_arguments)]
    fn rows_launch(
        &self,
        math: RowsMath,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        batch: usize,
        normed: bool,
        gate_up: bool,
    ) -> Result<RowsLaunch> {
        if math == RowsMath::Tensor {
            // Never a silent fall-back to the FP32 kernels: a row's bits
            // would then depend on which kernel its step happened to get.
            let (tiles, cfg) = self
                .rows_mm_ready(dtype)
                .then(|| rows_mm_launch(dtype, rows, batch, gate_up))
                .flatten()
                .ok_or_else(|| {
                    WorkerError::invalid(format!(
                        "no tensor-core mat-vec for {} rows x {batch} of {dtype:?} on this GPU",
                        rows
                    ))
                })?;
            return Ok(RowsLaunch {
                suffix: "_mm",
                cfg,
                per: Some(tiles),
            });
        }
        let sms = self.info().multiprocessors;
        let tl = (batch >= TL_MIN_BATCH
            && self.rows_tl_ready(dtype)
            && rows_tl_pays(rows, batch, gate_up, sms))
        .then(|| rows_tl_launch(dtype, rows, batch, gate_up, sms))
        .flatten();
        if let Some(cfg) = tl {
            return Ok(RowsLaunch {
                suffix: "_tl",
                cfg,
                per: None,
            });
        }
        let bt = (batch >= BT_MIN_BATCH && self.rows_bt_ready(dtype))
            .then(|| rows_bt_launch(dtype, rows, batch, gate_up))
            .flatten();
        if let Some(cfg) = bt {
            return Ok(RowsLaunch {
                suffix: "_bt",
                cfg,
                per: None,
            });
        }
        Ok(
            match batched_launch(dtype, rows, cols, batch, normed, sms) {
                Some((per, cfg)) => RowsLaunch {
                    suffix: "_bst",
                    cfg,
                    per: Some(per as i32),
                },
                None => RowsLaunch {
                    suffix: "_b8",
                    cfg: b8_grid(rows, batch),
                    per: None,
                },
            },
        )
    }
}
