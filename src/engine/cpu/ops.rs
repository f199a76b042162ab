//! The reference engine's numeric kernels, kept free of engine state so that
//! `tests/backend_ops.rs` can compare each one with an f64 reference and,
//! later, with the CUDA kernels (issue 3 point 6).
//!
//! Every reduction runs in a fixed order (8 interleaved f32 lanes, combined
//! by a fixed tree), so results do not depend on the thread count, and a
//! token computed in a prefill batch gets exactly the bits it would get
//! when decoded alone.

use crate::error::{Result, WorkerError};
use crate::model::arch::RopeStyle;
use crate::model::gguf::GgmlType;
use crate::model::quant;
use rayon::prelude::*;

/// Dot product in a fixed order: 8 lanes, then a fixed pairwise tree.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `out = x / sqrt(mean(x²) + eps) * w` (sum of squares in f64, as llama.cpp does).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let scale = (1.0 / (ss / x.len().max(1) as f64 + f64::from(eps)).sqrt()) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Rotate every head of `x` (`n_heads × head_dim`) for position `pos`.
/// Angle for pair i: `pos × base^(-2i/head_dim)`, computed in f64.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, base: f32, style: RopeStyle) {
    let half = head_dim / 2;
    let cs: Vec<(f32, f32)> = (0..half)
        .map(|i| {
            let theta = pos as f64 * f64::from(base).powf(-2.0 * i as f64 / head_dim as f64);
            (theta.cos() as f32, theta.sin() as f32)
        })
        .collect();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Norm => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// Causal attention of one query position over `n_pos` cached positions.
/// `q`: `n_heads × hd`; caches: `n_pos × (n_kv × hd)`; `out`: `n_heads × hd`.
#[allow(clippy::too_many_arguments)]
pub fn attention_one(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_pos: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    out: &mut [f32],
) {
    for (h, o) in out.chunks_exact_mut(hd).enumerate().take(n_heads) {
        attention_head(
            &q[h * hd..(h + 1) * hd],
            k_cache,
            v_cache,
            n_pos,
            h,
            n_heads,
            n_kv,
            hd,
            o,
            |p| p,
        );
    }
}

/// One head of [`attention_one`] (query head `h`, grouped onto KV head
/// `h / (n_heads / n_kv)`), so callers can spread heads over threads.
/// Position `p` of the sequence lives in row `row_of(p)` of the caches (a
/// paged pool maps it through the sequence's page table); the arithmetic,
/// and so every bit of the result, does not depend on where rows live.
#[allow(clippy::too_many_arguments)]
pub fn attention_head(
    qh: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_pos: usize,
    h: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    o: &mut [f32],
    row_of: impl Fn(usize) -> usize,
) {
    let kv_dim = n_kv * hd;
    let kvh = h / (n_heads / n_kv.max(1)).max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; n_pos];
    let mut max = f32::NEG_INFINITY;
    for (p, s) in scores.iter_mut().enumerate() {
        let r = row_of(p);
        let k = &k_cache[r * kv_dim + kvh * hd..r * kv_dim + (kvh + 1) * hd];
        *s = dot(qh, k) * scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    o.fill(0.0);
    for (p, &s) in scores.iter().enumerate() {
        let w = s * inv;
        let r = row_of(p);
        let v = &v_cache[r * kv_dim + kvh * hd..r * kv_dim + (kvh + 1) * hd];
        for (oi, &vi) in o.iter_mut().zip(v) {
            *oi += w * vi;
        }
    }
}

/// Rows per parallel task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

/// `y[t] = W · x[t]` for `t < n_tok`, W quantized (`rows × cols`, ggml row-major).
/// Each weight row is decoded once into f32 and dotted with every input, so a
/// prefill batch reads the weights once; the result does not depend on `n_tok`.
pub fn matmul(
    dtype: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
) -> Result<()> {
    let rb = quant::row_bytes(dtype, cols)?;
    if w.len() < rb * rows || x.len() < n_tok * cols || y.len() < n_tok * rows {
        return Err(WorkerError::internal(format!(
            "matmul sizes disagree: {} weight bytes for {rows}×{cols} {}, {} inputs, {} outputs",
            w.len(),
            dtype.name(),
            x.len(),
            y.len()
        )));
    }
    // Transposed result (row-major over weight rows) so tasks write disjoint slices.
    let mut yt = if n_tok == 1 {
        Vec::new()
    } else {
        vec![0f32; rows * n_tok]
    };
    let target: &mut [f32] = if n_tok == 1 { &mut y[..rows] } else { &mut yt };
    target
        .par_chunks_mut(ROWS_PER_TASK * n_tok)
        .enumerate()
        .try_for_each(|(ci, chunk)| -> Result<()> {
            // Decode the task's rows once, then walk the inputs, so each input
            // vector is read once per task rather than once per row.
            let n_rows = chunk.len() / n_tok;
            let mut buf = vec![0f32; n_rows * cols];
            for (j, dst) in buf.chunks_exact_mut(cols).enumerate() {
                let r = ci * ROWS_PER_TASK + j;
                quant::dequantize(dtype, &w[r * rb..(r + 1) * rb], dst)?;
            }
            for t in 0..n_tok {
                let xt = &x[t * cols..(t + 1) * cols];
                for (j, row) in buf.chunks_exact(cols).enumerate() {
                    chunk[j * n_tok + t] = dot(row, xt);
                }
            }
            Ok(())
        })?;
    if n_tok > 1 {
        for r in 0..rows {
            for t in 0..n_tok {
                y[t * rows + r] = yt[r * n_tok + t];
            }
        }
    }
    Ok(())
}

/// Decode a whole small tensor (norm weights, biases) to f32.
pub fn dequantize_all(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    quant::dequantize(dtype, bytes, &mut out)?;
    Ok(out)
}

/// SwiGLU in place: `g = silu(g) * u`.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// Diagnostic only: round activations the way llama.cpp's CPU backend does
/// before a quantized matmul (8-bit blocks: Q8_0/Q8_1 of 32 values with an f16
/// scale for the 32-block formats, Q8_K of 256 values with an f32 scale for the
/// k-quants). Used by the golden test to show that remaining disagreements
/// with llama.cpp come from its rounding, not from ours. Never on the serving path.
pub fn round_activations_like_llamacpp(dtype: GgmlType, x: &mut [f32]) {
    use GgmlType::*;
    match dtype {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => {
            for b in x.chunks_mut(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let d16 = half::f16::from_f32(d).to_f32();
                for v in b.iter_mut() {
                    *v = (*v * id).round() * d16;
                }
            }
        }
        Q4K | Q5K | Q6K => {
            for b in x.chunks_mut(256) {
                let max = b
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                if max == 0.0 {
                    b.fill(0.0);
                    continue;
                }
                let iscale = -127.0 / max;
                for v in b.iter_mut() {
                    *v = (iscale * *v).round().min(127.0) / iscale;
                }
            }
        }
        F16 => round_f16(x),
        _ => {}
    }
}

/// Diagnostic only: round to f16 and back (llama.cpp's default f16 KV cache).
pub fn round_f16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}
