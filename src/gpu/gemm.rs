//! Prefill matmuls through cuBLAS: a GGUF block matrix is dequantized into one
//! shared f32 scratch buffer, then `cublasSgemm` multiplies a whole prefill
//! chunk by it (issue 5 points 2, 3, 10; KERNEL-GEMM-001..005, WORKER-4700).
//!
//! Why: the batched mat-vec re-reads and re-dequantizes every weight once per
//! 8 tokens and runs on the CUDA cores without tiling (~10 GB/s at 64
//! tokens); SGEMM runs the same product near the FP32 peak. The weights stay
//! quantized in VRAM; the f32 copy of one matrix lives only until the next
//! matrix overwrites it (one transient buffer, reported as scratch).
//!
//! Numerics: the math mode is set explicitly to `CUBLAS_DEFAULT_MATH`, under
//! which SGEMM never uses TF32 tensor cores (10-bit mantissa: ~1e-3 relative
//! error, which the CPU-reference tests at 1e-5 would catch; TF32 needs
//! `CUBLAS_TF32_TENSOR_OP_MATH`, and the `NVIDIA_TF32_OVERRIDE` variable can
//! only disable it). So the product is a true FP32 GEMM within ~1e-6 of the
//! CPU reference (KERNEL-GEMM-005: `op_gemm_every_block_format`, tolerance
//! 1e-5). `CUBLAS_PEDANTIC_MATH` would add nothing for SGEMM but may rule out
//! faster FP32 kernels.
//! 3xTF32 (`WORKER_ORCD_PREFILL_GEMM=tf32x3`, or `by_size` for the matrices
//! where it was measured faster): the dequant writes each weight as its
//! TF32-exact part and TF32-rounded remainder laid along k as
//! `[big | small | big]`, the inputs are laid `[small | big | big]`
//! (`split_tf32_rows`), and one tensor-core GEMM over 3 x cols
//! (`CUBLAS_COMPUTE_32F_FAST_TF32`, f32 accumulation) sums
//! big·small + small·big + big·big, dropping small·small: about FP32 accuracy
//! (the same 1e-5 test against the CPU reference). One GEMM, not three: the
//! output is written once, and no separate pass splits the weights. A
//! matrix of few rows and many columns runs split-K instead: its 3 x cols
//! in [`TF32X3_K_SLICES`] slices side by side, one partial output each,
//! summed in slice order (`add_parts`). Tried and not kept (an H100, one
//! experiment call beside the 098cb0d binaries): weights as `[big | small]` and
//! inputs as `[small | big]` with two GEMMs (the second adding big·big)
//! write a third less in the dequant (16.1 against 22.0 µs for gate/up) but
//! lose more in the second GEMM (gate/up 84.4 against 81.2 µs at 512
//! tokens; Qwen-shaped pp512 47,757 against 50,060 tok/s).
//! Determinism (WORKER-4710): cuBLAS documents bit-wise
//! reproducible results run to run for the same architecture and SM count
//! when one stream is used and the workspace is fixed with
//! `cublasSetWorkspace` (cuBLAS guide, "Results reproducibility"); atomics
//! are disallowed explicitly. This handle is created once per [`Gpu`], bound
//! to its single stream, with a fixed 32 MiB workspace (the size cuBLAS
//! recommends for Hopper), so no call allocates and every call picks the same
//! kernel for the same shape. Prefill (GEMM) and decode (mat-vec) round
//! differently; which tokens go through which is a function of the request
//! alone (fixed chunks), so identical requests stay bit-identical.
//! Row-major layout (KERNEL-GEMM-004): W row-major `[rows][cols]` is
//! column-major `cols x rows`; X row-major `[n][cols]` is column-major
//! `cols x n`; so Y (column-major `rows x n`, i.e. row-major `[n][rows]`) is
//! `op_T(W) * X` with lda = ldb = cols and ldc = rows.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::{CudaStream, LaunchConfig};

use super::cuda_err;
use super::device::{DeviceBuffer, Gpu, Span};
use super::ops::{blocks, dtype_suffix, row_bytes};
use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;

/// Fixed cuBLAS workspace (cuBLAS recommends 32 MiB on Hopper).
pub const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle bound to the [`Gpu`]'s stream with a fixed workspace.
pub struct Blas {
    handle: bsys::cublasHandle_t,
    // The stream the handle is bound to; its context is made current before
    // every cuBLAS call (cuBLAS uses the thread's current context, and the
    // engine may move between threads).
    stream: Arc<CudaStream>,
    // Kept alive as long as the handle, which points at it.
    workspace: DeviceBuffer,
}

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it
// are not concurrent; the owning `Gpu` is used by one thread at a time (the
// engine is moved between threads, never shared), like its stream.
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        if let Err(e) = self.stream.context().bind_to_thread() {
            tracing::warn!(error = %e, human = %format!("Could not bind the CUDA context to release the cuBLAS handle ({e}); the driver frees it when the process exits."),
                "binding the CUDA context to destroy the cuBLAS handle failed");
        }
        // SAFETY: the handle was created by `create_handle` and is destroyed
        // exactly once, here; the workspace is freed after this (field order).
        if let Err(e) = unsafe { blas::destroy_handle(self.handle) } {
            tracing::warn!(error = %e, human = %format!("Could not release the cuBLAS handle ({e}); the driver frees it when the process exits."),
                "destroying the cuBLAS handle failed");
        }
    }
}

fn blas_err(what: &str) -> impl FnOnce(blas::CublasError) -> WorkerError + '_ {
    move |e| {
        WorkerError::cuda(format!(
            "cuBLAS error while {what}: {e}; the worker cannot trust the device any more and will stop"
        ))
    }
}

/// Whether libcublas can be opened (cudarc panics on a missing library, so
/// this is checked before any cuBLAS call).
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen libcublas by its candidate names; no symbol is called.
    unsafe { bsys::is_culib_present() }
}

impl Blas {
    /// Create the handle on `gpu`'s stream: fixed workspace, FP32 (no TF32)
    /// math, no atomics. Every status is checked (KERNEL-GEMM-003).
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        if !cublas_present() {
            return Err(super::missing(
                "libcublas.so (cuBLAS, used for prefill matrix products)",
                "BLAS library",
            ));
        }
        let workspace = gpu.alloc(BLAS_WORKSPACE_BYTES, "cuBLAS workspace")?;
        let stream = gpu.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context for cuBLAS"))?;
        let handle = blas::create_handle().map_err(blas_err("creating the cuBLAS handle"))?;
        let b = Self {
            handle,
            stream,
            workspace,
        };
        let stream = b.stream.cu_stream() as bsys::cudaStream_t;
        // SAFETY: the handle is live; the stream is kept alive by `b.stream`
        // for as long as the handle exists.
        unsafe { blas::set_stream(b.handle, stream) }.map_err(blas_err("binding the stream"))?;
        // After set_stream: cublasSetStream resets the workspace to cuBLAS's
        // own pool, so the fixed workspace must be set second.
        let ws = b.workspace.all();
        // SAFETY: the workspace is a live device allocation of exactly
        // BLAS_WORKSPACE_BYTES bytes owned by `b`, freed only after the handle.
        unsafe {
            bsys::cublasSetWorkspace_v2(b.handle, ws.ptr as *mut core::ffi::c_void, ws.bytes)
        }
        .result()
        .map_err(blas_err("setting the workspace"))?;
        // SAFETY: the handle is live; plain enum setters.
        unsafe {
            bsys::cublasSetMathMode(b.handle, bsys::cublasMath_t::CUBLAS_DEFAULT_MATH).result()
        }
        .map_err(blas_err("setting FP32 (no TF32) math"))?;
        // SAFETY: as above.
        unsafe {
            bsys::cublasSetAtomicsMode(
                b.handle,
                bsys::cublasAtomicsMode_t::CUBLAS_ATOMICS_NOT_ALLOWED,
            )
            .result()
        }
        .map_err(blas_err("disallowing atomics"))?;
        Ok(b)
    }

    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len()
    }
}

fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        WorkerError::invalid(format!("{what} = {v} is too large for a GEMM dimension"))
    })
}

/// Scratch of the 3xTF32 GEMM path beside the dequant scratch (which then
/// holds the weights' parts): the input rows' parts, 3 x cols floats a row;
/// and, for a split-K product, room for its [`TF32X3_K_SLICES`] partial
/// outputs (rows x n floats each).
#[derive(Clone, Copy, Debug)]
pub struct Tf32Split<'a> {
    pub x_parts: Span<'a>,
    pub partials: Option<Span<'a>>,
}

/// Slices of k a split-K 3xTF32 GEMM runs side by side (one batched cuBLAS
/// call, each slice into its own partial output), then sums in slice order
/// (`add_parts`). Why: a matrix of few rows and many columns (the FFN down
/// projection, 896 x 4864 in Qwen2.5-0.5B) gives cuBLAS too few output tiles
/// to fill the GPU, and its one-GEMM 3xTF32 product was no faster than
/// SGEMM on an H100 (117 against 113 µs at 512 tokens).
pub const TF32X3_K_SLICES: usize = 4;

/// Whether a `rows` x `cols` product may take the split-K 3xTF32 GEMM: its
/// 3 x cols parts divide into [`TF32X3_K_SLICES`] slices of whole 16-byte
/// groups (aligned operands for the tensor cores).
pub fn tf32x3_k_split_fits(cols: usize) -> bool {
    k_slices_fit(3 * cols)
}

/// Whether a reduction of `k` floats divides into [`TF32X3_K_SLICES`]
/// slices of whole 16-byte groups.
fn k_slices_fit(k: usize) -> bool {
    k % (4 * TF32X3_K_SLICES) == 0
}

/// What every GEMM launch here needs once its windows are checked: the
/// handle (its context bound to this thread), the three device pointers and
/// the cuBLAS dimensions m = rows, n = tokens, k = cols.
struct GemmArgs<'b> {
    blas: &'b Blas,
    wp: u64,
    xp: u64,
    yp: u64,
    m_i: i32,
    n_i: i32,
    k_i: i32,
}

impl Gpu {
    /// Bytes of f32 scratch `dequant` needs for a `rows` x `cols` matrix:
    /// three floats a weight when `split` (3xTF32), else one.
    pub fn dequant_scratch_bytes(rows: usize, cols: usize, split: bool) -> usize {
        rows * cols * 4 * if split { 3 } else { 1 }
    }

    /// out[r][c] = W[r][c] as f32 for a `rows` x `cols` matrix in `dtype`,
    /// or, when `split`, out[r] = [big | small | big] of row r (3 x cols
    /// floats; see the module's 3xTF32 notes).
    pub fn dequant(
        &self,
        dtype: GgmlType,
        w: Span,
        out: Span,
        rows: usize,
        cols: usize,
        split: bool,
    ) -> Result<()> {
        let kind = if split { "dequant_split" } else { "dequant" };
        let name = format!("{kind}_{}", dtype_suffix(dtype).unwrap_or("none"));
        let rb = row_bytes(dtype, cols)?;
        let wp = w.need(rb * rows, "weights")?;
        let op = out.need(
            Self::dequant_scratch_bytes(rows, cols, split),
            "dequant scratch",
        )?;
        let (rows_i, cols_i, rb64) = (as_i32(rows, "rows")?, as_i32(cols, "cols")?, rb as u64);
        let runs = rows * (cols / 32);
        let grid = u32::try_from(runs.div_ceil(256))
            .map_err(|_| WorkerError::invalid(format!("dequant of {rows}x{cols} is too large")))?;
        let f = self.func(&name)?;
        let cfg = LaunchConfig {
            grid_dim: (grid.max(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&wp).arg(&rb64).arg(&op).arg(&rows_i).arg(&cols_i);
        // SAFETY: windows checked above (whole rows of whole blocks in, rows*cols
        // f32 out); types match dequant_impl in cuda/dequant.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// y[t][r] += bias[r] for `n` rows of `rows` values.
    pub fn add_bias(&self, y: Span, bias: Span, rows: usize, n: usize) -> Result<()> {
        if n == 0 || n > 65_535 {
            return Err(WorkerError::invalid(format!(
                "bias add over {n} rows is out of range"
            )));
        }
        let yp = y.need(4 * rows * n, "y")?;
        let bp = bias.need(4 * rows, "bias")?;
        let rows_i = as_i32(rows, "rows")?;
        let f = self.func("add_bias")?;
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(256) as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&yp).arg(&bp).arg(&rows_i);
        // SAFETY: windows checked above; types match add_bias in cuda/dequant.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching add_bias"))
    }

    /// Check a GEMM's windows (W `rows`x`cols`, X `n`x`cols`, Y `n`x`rows`,
    /// all f32) and dimensions, and bind the cuBLAS handle's context.
    fn gemm_args(
        &self,
        wf: Span,
        x: Span,
        y: Span,
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Result<GemmArgs<'_>> {
        if rows == 0 || cols == 0 || n == 0 {
            return Err(WorkerError::invalid(format!(
                "GEMM of {rows}x{cols} by {n} tokens has an empty dimension"
            )));
        }
        let wp = wf.need(4 * rows * cols, "f32 weights")?;
        let xp = x.need(4 * cols * n, "x")?;
        let yp = y.need(4 * rows * n, "y")?;
        let (m_i, n_i, k_i) = (
            as_i32(rows, "rows")?,
            as_i32(n, "tokens")?,
            as_i32(cols, "cols")?,
        );
        let blas = self.blas()?;
        blas.stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context for cuBLAS"))?;
        Ok(GemmArgs {
            blas,
            wp,
            xp,
            yp,
            m_i,
            n_i,
            k_i,
        })
    }

    /// Y[n][rows] = X[n][cols] · Wfᵀ (+ Y when `accumulate`) with Wf an f32
    /// row-major `[rows][cols]` matrix, by cublasSgemm (KERNEL-GEMM-002..004).
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm_xwt(
        &self,
        wf: Span,
        x: Span,
        y: Span,
        rows: usize,
        cols: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let GemmArgs {
            blas,
            wp,
            xp,
            yp,
            m_i,
            n_i,
            k_i,
        } = self.gemm_args(wf, x, y, rows, cols, n)?;
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0f32 });
        // SAFETY: the handle is live and bound to this Gpu's stream; A (rows*cols),
        // B (cols*n) and C (rows*n) f32 windows were checked above against the
        // exact extents these m, n, k and leading dimensions touch; alpha and
        // beta are host scalars (the default pointer mode) that outlive the call,
        // which only enqueues work.
        unsafe {
            blas::sgemm(
                blas.handle,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                k_i,
                &alpha,
                wp as *const f32,
                k_i,
                xp as *const f32,
                k_i,
                &beta,
                yp as *mut f32,
                m_i,
            )
        }
        .map_err(blas_err("running SGEMM"))
    }

    /// out[t] = [small | big | big] of input row t (3 x `cols` floats) for
    /// `n` rows of `cols` floats: the inputs of a 3xTF32 GEMM.
    pub fn split_tf32_rows(&self, x: Span, out: Span, cols: usize, n: usize) -> Result<()> {
        if n == 0 || n > 65_535 {
            return Err(WorkerError::invalid(format!(
                "TF32 split of {n} rows is out of range"
            )));
        }
        let xp = x.need(4 * cols * n, "x")?;
        let op = out.need(12 * cols * n, "tf32 input parts")?;
        let cols_i = as_i32(cols, "cols")?;
        let f = self.func("split_tf32_rows")?;
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(256).max(1) as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&xp).arg(&op).arg(&cols_i);
        // SAFETY: the windows were checked above (n rows of cols floats in,
        // of 3 x cols out, n <= 65535 grid rows); types match cuda/dequant.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching split_tf32_rows"))
    }

    /// Y[n][rows] (+)= X[n][cols] · Wfᵀ on TF32 tensor cores
    /// (`CUBLAS_COMPUTE_32F_FAST_TF32`; inputs already TF32-exact, f32
    /// accumulation): the 3xTF32 path's GEMM, over its 3 x cols parts.
    #[allow(clippy::too_many_arguments)]
    fn gemm_tf32_xwt(
        &self,
        wf: Span,
        x: Span,
        y: Span,
        rows: usize,
        cols: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let GemmArgs {
            blas,
            wp,
            xp,
            yp,
            m_i,
            n_i,
            k_i,
        } = self.gemm_args(wf, x, y, rows, cols, n)?;
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0f32 });
        let f32t = bsys::cudaDataType::CUDA_R_32F;
        // SAFETY: as in sgemm_xwt: live handle on this Gpu's stream, windows
        // checked against the extents m, n, k and the leading dimensions touch,
        // host scalars outliving the enqueueing call; all three matrices are f32.
        unsafe {
            blas::gemm_ex(
                blas.handle,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                k_i,
                (&alpha as *const f32).cast(),
                wp as *const core::ffi::c_void,
                f32t,
                k_i,
                xp as *const core::ffi::c_void,
                f32t,
                k_i,
                (&beta as *const f32).cast(),
                yp as *mut core::ffi::c_void,
                f32t,
                m_i,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("running the TF32 GEMM"))
    }

    /// partials[s][n][rows] = X[n][k slice s] · Wf[rows][k slice s]ᵀ for the
    /// [`TF32X3_K_SLICES`] equal slices of k = `cols` (here the 3xTF32
    /// parts' width), on TF32 tensor cores in one strided batched call.
    fn gemm_tf32_xwt_slices(
        &self,
        wf: Span,
        x: Span,
        partials: Span,
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Result<()> {
        if !k_slices_fit(cols) {
            return Err(WorkerError::internal(format!(
                "split-K GEMM over {cols} columns: not {TF32X3_K_SLICES} slices of whole 16-byte groups"
            )));
        }
        let slice = cols / TF32X3_K_SLICES;
        let pp = partials.need(4 * TF32X3_K_SLICES * rows * n, "split-K partial outputs")?;
        // W, X and the first partial as one GEMM over the whole k would
        // touch: the slices stay inside those windows.
        let GemmArgs {
            blas,
            wp,
            xp,
            m_i,
            n_i,
            k_i,
            ..
        } = self.gemm_args(wf, x, partials, rows, cols, n)?;
        let (slice_i, slices_i) = (
            as_i32(slice, "k slice")?,
            as_i32(TF32X3_K_SLICES, "k slices")?,
        );
        let (alpha, beta) = (1.0f32, 0.0f32);
        let f32t = bsys::cudaDataType::CUDA_R_32F;
        // SAFETY: live handle bound to this Gpu's stream. Slice s reads W
        // columns and X columns [s * slice, (s + 1) * slice) of rows of k_i
        // floats (inside the windows gemm_args checked for the whole k) and
        // writes partial s, rows * n floats at s * rows * n (inside `pp`,
        // checked for all slices); host scalars outlive the enqueueing call.
        unsafe {
            blas::gemm_strided_batched_ex(
                blas.handle,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                slice_i,
                (&alpha as *const f32).cast(),
                wp as *const core::ffi::c_void,
                f32t,
                k_i,
                slice as i64,
                xp as *const core::ffi::c_void,
                f32t,
                k_i,
                slice as i64,
                (&beta as *const f32).cast(),
                pp as *mut core::ffi::c_void,
                f32t,
                m_i,
                (rows * n) as i64,
                slices_i,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("running the split-K TF32 GEMM"))
    }

    /// y[i] = the sum of `parts` partial outputs of `len` floats each, in
    /// order (+ the old y[i] when `accumulate`): a split-K GEMM's result.
    pub fn add_parts(
        &self,
        partials: Span,
        y: Span,
        len: usize,
        parts: usize,
        accumulate: bool,
    ) -> Result<()> {
        if len == 0 || parts == 0 {
            return Err(WorkerError::invalid("a sum of partial outputs is empty"));
        }
        let pp = partials.need(4 * len * parts, "partial outputs")?;
        let yp = y.need(4 * len, "y")?;
        // The kernel's thread index (an int) must not wrap in the last block.
        as_i32(
            len.next_multiple_of(256),
            "outputs rounded up to whole blocks",
        )?;
        let (len_i, parts_i, acc_i) = (
            as_i32(len, "outputs")?,
            as_i32(parts, "parts")?,
            i32::from(accumulate),
        );
        let f = self.func("add_parts")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(len, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&pp).arg(&yp).arg(&len_i).arg(&parts_i).arg(&acc_i);
        // SAFETY: windows checked above (len outputs, parts x len partials,
        // len < 2^31); types match add_parts in cuda/dequant.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching add_parts"))
    }

    /// y = x·Wᵀ (+ bias) (+ y) for `n` token rows, W in GGUF blocks:
    /// dequantize W into `scratch`, then either one FP32 SGEMM (`split` None)
    /// or 3xTF32 (`split` Some: W dequantized straight into its parts, x
    /// split into `split`, one tensor-core GEMM over 3 x cols, or its k
    /// slices side by side and their sum when `partials` is given); then
    /// the bias (prefill path).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dtype: GgmlType,
        w: Span,
        x: Span,
        bias: Option<Span>,
        y: Span,
        scratch: Span,
        split: Option<Tf32Split>,
        rows: usize,
        cols: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        match split {
            None => {
                self.dequant(dtype, w, scratch, rows, cols, false)?;
                self.sgemm_xwt(scratch, x, y, rows, cols, n, accumulate)?;
            }
            Some(s) => {
                self.dequant(dtype, w, scratch, rows, cols, true)?;
                self.split_tf32_rows(x, s.x_parts, cols, n)?;
                match s.partials {
                    None => {
                        self.gemm_tf32_xwt(scratch, s.x_parts, y, rows, 3 * cols, n, accumulate)?
                    }
                    Some(p) => {
                        self.gemm_tf32_xwt_slices(scratch, s.x_parts, p, rows, 3 * cols, n)?;
                        self.add_parts(p, y, rows * n, TF32X3_K_SLICES, accumulate)?;
                    }
                }
            }
        }
        match bias {
            Some(b) => self.add_bias(y, b, rows, n),
            None => Ok(()),
        }
    }
}
