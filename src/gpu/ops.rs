//! Typed, validated launchers, one per kernel entry point (KERNEL-*).
//!
//! Why here: every launch is `unsafe` (the driver trusts the pointers and
//! sizes), so each launcher first checks that every device window is large
//! enough for the shape it is given, that the shape is one the kernel
//! supports, and only then launches; the launch status is checked too.

use cudarc::driver::LaunchConfig;

use super::cuda_err;
use super::device::{Gpu, Span};
use super::launch_shape::decode_launch;
use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;

/// Every block format the kernels read, with its kernel-name suffix: the one
/// table the per-format kernel names (`device::kernel_names`) come from.
pub const FORMATS: [(GgmlType, &str); 11] = [
    (GgmlType::F32, "f32"),
    (GgmlType::F16, "f16"),
    (GgmlType::BF16, "bf16"),
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q4K, "q4_k"),
    (GgmlType::Q5K, "q5_k"),
    (GgmlType::Q6K, "q6_k"),
];

/// Kernel-name suffix for a block format, or None when no kernel reads it.
pub fn dtype_suffix(t: GgmlType) -> Option<&'static str> {
    FORMATS.iter().find(|f| f.0 == t).map(|f| f.1)
}

/// Bytes of one row of `cols` elements, checking the shapes the kernels need:
/// whole blocks and whole 32-element runs.
pub fn row_bytes(t: GgmlType, cols: usize) -> Result<usize> {
    let bs = t.block_size();
    if cols == 0 || cols % bs != 0 || cols % 32 != 0 {
        return Err(WorkerError::invalid(format!(
            "a {} row of {cols} elements is not a whole number of {bs}-element blocks and 32-element runs",
            t.name()
        )));
    }
    Ok(cols / bs * t.type_size())
}

pub(super) fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

pub(super) fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| WorkerError::invalid(format!("{what} = {v} is too large for a kernel index")))
}

impl Gpu {
    /// y[b] = W·x[b] (+ bias) (+ y[b]) for `batch` vectors; W is `rows`×`cols` in `dtype`.
    /// One vector uses the single-vector kernel; a batch reads W once per 8 vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn matvec(
        &self,
        dtype: GgmlType,
        w: Span,
        x: Span,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        batch: usize,
        accumulate: bool,
    ) -> Result<()> {
        let a = (dtype, w, x, bias, y, rows, cols, batch, accumulate);
        self.matvec_variant(a, true)
    }

    /// `matvec`, optionally barring the staged single-vector kernel, so tests
    /// can check that both variants give bit-identical results.
    #[allow(clippy::type_complexity)]
    pub fn matvec_variant(
        &self,
        a: (
            GgmlType,
            Span,
            Span,
            Option<Span>,
            Span,
            usize,
            usize,
            usize,
            bool,
        ),
        allow_staged: bool,
    ) -> Result<()> {
        let (dtype, w, x, bias, y, rows, cols, batch, accumulate) = a;
        if batch != 1 {
            return self.matvec_rows(dtype, w, x, None, bias, y, rows, cols, batch, accumulate);
        }
        let (st, cfg) = decode_launch(dtype, rows, cols, usize::from(allow_staged));
        let name = format!("matvec_{}{st}", dtype_suffix(dtype).unwrap_or("none"));
        let rb = row_bytes(dtype, cols)?;
        let wp = w.need(rb * rows, "weights")?;
        let xp = x.need(4 * cols, "x")?;
        let yp = y.need(4 * rows, "y")?;
        let bp = match bias {
            Some(b) => b.need(4 * rows, "bias")?,
            None => 0u64,
        };
        let (rows_i, cols_i) = (as_i32(rows, "rows")?, as_i32(cols, "cols")?);
        let rb64 = rb as u64;
        let acc = accumulate as i32;
        let f = self.func(&name)?;
        let (nw, eps) = (0u64, 0f32);
        let mut l = self.kernel_launch(f);
        l.arg(&wp)
            .arg(&rb64)
            .arg(&xp)
            .arg(&bp)
            .arg(&yp)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&acc)
            .arg(&nw)
            .arg(&eps);
        // SAFETY: every pointer lies in a live allocation with at least the
        // bytes this shape reads or writes (checked above); argument types and
        // order match `matvec_impl` / `matvec_st_impl` in cuda/matvec.cu; the
        // staged shared size comes from `staged_smem`.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// y = W·(rmsnorm(x) * norm_w) (+ bias) (+ y) for one vector: the norm is
    /// fused into the mat-vec (decode path).
    #[allow(clippy::too_many_arguments)]
    pub fn matvec_norm(
        &self,
        dtype: GgmlType,
        w: Span,
        x: Span,
        norm_w: Span,
        eps: f32,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (st, cfg) = decode_launch(dtype, rows, cols, 2);
        let name = format!("matvec_{}{st}", dtype_suffix(dtype).unwrap_or("none"));
        let rb = row_bytes(dtype, cols)?;
        let wp = w.need(rb * rows, "weights")?;
        let xp = x.need(4 * cols, "x")?;
        let nw = norm_w.need(4 * cols, "norm weight")?;
        let yp = y.need(4 * rows, "y")?;
        let bp = match bias {
            Some(b) => b.need(4 * rows, "bias")?,
            None => 0u64,
        };
        let (rows_i, cols_i, acc, rb64) = (
            as_i32(rows, "rows")?,
            as_i32(cols, "cols")?,
            accumulate as i32,
            rb as u64,
        );
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
            .arg(&nw)
            .arg(&eps);
        // SAFETY: windows checked above; types match matvec_impl /
        // matvec_st_impl in cuda/matvec.cu; shared size from `staged_smem`.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out = silu(Wg·xn) * (Wu·xn) with xn = rmsnorm(x) * norm_w, one vector,
    /// gate and up in the same format (decode FFN input in one launch).
    #[allow(clippy::too_many_arguments)]
    pub fn gate_up(
        &self,
        dtype: GgmlType,
        wg: Span,
        wu: Span,
        x: Span,
        norm_w: Span,
        eps: f32,
        out: Span,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (st, cfg) = decode_launch(dtype, rows, cols, 2);
        let name = format!("matvec_{}_gu{st}", dtype_suffix(dtype).unwrap_or("none"));
        let rb = row_bytes(dtype, cols)?;
        let gp = wg.need(rb * rows, "gate weights")?;
        let up = wu.need(rb * rows, "up weights")?;
        let xp = x.need(4 * cols, "x")?;
        let nw = norm_w.need(4 * cols, "norm weight")?;
        let op = out.need(4 * rows, "out")?;
        let (rows_i, cols_i, rb64) = (as_i32(rows, "rows")?, as_i32(cols, "cols")?, rb as u64);
        let f = self.func(&name)?;
        let mut l = self.kernel_launch(f);
        l.arg(&gp)
            .arg(&up)
            .arg(&rb64)
            .arg(&xp)
            .arg(&nw)
            .arg(&eps)
            .arg(&op)
            .arg(&rows_i)
            .arg(&cols_i);
        // SAFETY: windows checked above; types match gate_up_impl /
        // gate_up_st_impl in cuda/matvec.cu; shared size from `staged_smem`.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out[t] = dequantized row tok[t] of W (`cols` wide) for `n_tok` tokens.
    #[allow(clippy::too_many_arguments)]
    /// Token ids in `tok` must already be checked against the row count.
    pub fn embed(
        &self,
        dtype: GgmlType,
        w: Span,
        rows: usize,
        tok: Span,
        out: Span,
        cols: usize,
        n_tok: usize,
    ) -> Result<()> {
        let name = format!("embed_{}", dtype_suffix(dtype).unwrap_or("none"));
        let rb = row_bytes(dtype, cols)?;
        let wp = w.need(rb * rows, "embedding")?;
        let tp = tok.need(4 * n_tok, "token ids")?;
        let op = out.need(4 * cols * n_tok, "out")?;
        let (rb64, cols_i) = (rb as u64, as_i32(cols, "cols")?);
        let f = self.func(&name)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(cols / 32, 128), n_tok as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&wp).arg(&rb64).arg(&tp).arg(&op).arg(&cols_i);
        // SAFETY: windows checked above; ids are validated by the caller
        // before upload; types match cuda/embed.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(&format!("launching {name}")))
    }

    /// out[r] = rmsnorm(x[r]) * w for `rows` rows of `n`.
    pub fn rmsnorm(
        &self,
        x: Span,
        w: Span,
        out: Span,
        n: usize,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        let xp = x.need(4 * n * rows, "x")?;
        let wp = w.need(4 * n, "norm weight")?;
        let op = out.need(4 * n * rows, "out")?;
        let n_i = as_i32(n, "n")?;
        let f = self.func("rmsnorm")?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&xp).arg(&wp).arg(&op).arg(&n_i).arg(&eps);
        // SAFETY: windows checked above; types match cuda/rmsnorm.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching rmsnorm"))
    }

    /// Rotate q and k of each row at its position and write k, v into the
    /// layer's pool row of that position of the row's sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv(
        &self,
        q: Span,
        k: Span,
        v: Span,
        kc: Span,
        vc: Span,
        rows: super::attention::KvRows,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        neox: bool,
        base: f32,
        n_tok: usize,
    ) -> Result<()> {
        if hd % 2 != 0 || n_kv == 0 || n_heads % n_kv != 0 {
            return Err(WorkerError::invalid(format!(
                "rope: head_dim {hd} must be even and n_heads {n_heads} a multiple of n_kv {n_kv}"
            )));
        }
        let qp = q.need(4 * n_heads * hd * n_tok, "q")?;
        let kp = k.need(4 * n_kv * hd * n_tok, "k")?;
        let vp = v.need(4 * n_kv * hd * n_tok, "v")?;
        let kv = rows.args(n_tok, n_kv * hd)?;
        let kcp = kc.need(kv.pool_bytes, "k cache")?;
        let vcp = vc.need(kv.pool_bytes, "v cache")?;
        let (nh, nk, hdi, nx) = (
            as_i32(n_heads, "n_heads")?,
            as_i32(n_kv, "n_kv")?,
            as_i32(hd, "hd")?,
            neox as i32,
        );
        let total = (n_heads + n_kv) * hd / 2 + n_kv * hd;
        let f = self.func("rope_kv")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(total, 256), n_tok as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&kcp)
            .arg(&vcp)
            .arg(&kv.place)
            .arg(&nh)
            .arg(&nk)
            .arg(&hdi)
            .arg(&nx)
            .arg(&base);
        // SAFETY: windows checked above (the pool windows hold every page);
        // the rows' sequences, pages and positions are the engine's checked
        // values (see KvRows), so every row written is inside the pool;
        // types match cuda/rope_kv.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching rope_kv"))
    }

    /// out = silu(gate) * up over n elements.
    pub fn swiglu(&self, gate: Span, up: Span, out: Span, n: usize) -> Result<()> {
        let gp = gate.need(4 * n, "gate")?;
        let up_ = up.need(4 * n, "up")?;
        let op = out.need(4 * n, "out")?;
        let n_i = as_i32(n, "n")?;
        let f = self.func("swiglu")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(n, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&gp).arg(&up_).arg(&op).arg(&n_i);
        // SAFETY: windows checked above; types match cuda/swiglu.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching swiglu"))
    }

    /// y += x over n elements.
    pub fn add_inplace(&self, y: Span, x: Span, n: usize) -> Result<()> {
        let yp = y.need(4 * n, "y")?;
        let xp = x.need(4 * n, "x")?;
        let n_i = as_i32(n, "n")?;
        let f = self.func("add_inplace")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(n, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&yp).arg(&xp).arg(&n_i);
        // SAFETY: windows checked above; types match cuda/swiglu.cu.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err("launching add_inplace"))
    }

    /// SHA-256 of each `chunk`-byte piece of `data` (the last may be short) into `out` (32 bytes each).
    pub fn sha256_leaves(&self, data: Span, chunk: usize, out: Span) -> Result<usize> {
        if chunk == 0 || chunk % 64 != 0 || data.ptr % 16 != 0 {
            return Err(WorkerError::internal(
                "sha256 leaves need a 16-byte aligned buffer and a chunk multiple of 64",
            ));
        }
        let total = data.bytes;
        let n = total.div_ceil(chunk);
        if n == 0 {
            return Ok(0);
        }
        let op = out.need(32 * n, "leaves")?;
        let (dp, t64, c64, n_i) = (data.ptr, total as u64, chunk as u64, as_i32(n, "leaves")?);
        let f = self.func("sha256_leaves")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(n, 32), 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.kernel_launch(f);
        l.arg(&dp).arg(&t64).arg(&c64).arg(&n_i).arg(&op);
        // SAFETY: the kernel reads exactly `total` bytes from `data` (its span)
        // and writes 32*n bytes to `out` (checked); types match cuda/sha256.cu.
        unsafe { l.launch(cfg) }
            .map(|_| n)
            .map_err(cuda_err("launching sha256_leaves"))
    }
}
