//! Op-level checks of an engine backend against f64 references (issue 3
//! point 6): RMSNorm, RoPE (both pairings), causal GQA attention, and the
//! quantized mat-vec for every block format.
//!
//! Each check is written once, generic over [`OpRunner`], so the CUDA
//! backend can be added as a second runner and held to the same references
//! and tolerances. Tolerances are stated per op next to each check; they
//! bound f32 rounding of sums of a few hundred terms, not algorithmic slack.

use worker_orcd::engine::cpu::ops;
use worker_orcd::error::Result;
use worker_orcd::model::arch::RopeStyle;
use worker_orcd::model::gguf::GgmlType;
use worker_orcd::model::quant;

/// The ops a backend must provide, in host-vector form.
trait OpRunner {
    fn name(&self) -> &'static str;
    fn rmsnorm(&mut self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32>;
    fn rope(
        &mut self,
        x: &[f32],
        head_dim: usize,
        pos: usize,
        base: f32,
        style: RopeStyle,
    ) -> Vec<f32>;
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_pos: usize,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
    ) -> Vec<f32>;
    /// `rows` outputs of `W · x[t]` for each of `n_tok` inputs, token-major.
    fn matmul(
        &mut self,
        dtype: GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        n_tok: usize,
    ) -> Result<Vec<f32>>;
}

struct CpuOps;

impl OpRunner for CpuOps {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn rmsnorm(&mut self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        ops::rmsnorm(x, w, eps, &mut out);
        out
    }
    fn rope(
        &mut self,
        x: &[f32],
        head_dim: usize,
        pos: usize,
        base: f32,
        style: RopeStyle,
    ) -> Vec<f32> {
        let mut out = x.to_vec();
        ops::rope(&mut out, head_dim, pos, base, style);
        out
    }
    fn attention(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_pos: usize,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; n_heads * hd];
        ops::attention_one(q, k, v, n_pos, n_heads, n_kv, hd, &mut out);
        out
    }
    fn matmul(
        &mut self,
        dtype: GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        n_tok: usize,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0; rows * n_tok];
        ops::matmul(dtype, w, rows, cols, x, n_tok, &mut y)?;
        Ok(y)
    }
}

/// Deterministic test data in [-1, 1) (SplitMix64, so no dependency).
fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut r = worker_orcd::engine::rng::SamplerRng::new(seed);
    (0..n).map(|_| r.next_draw() * 2.0 - 1.0).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol(i),
            "{what}[{i}]: got {g}, reference {w}, error {err:e} > {:e}",
            tol(i)
        );
    }
}

fn check_rmsnorm(r: &mut impl OpRunner) {
    let (x, w) = (data(1, 896), data(2, 896));
    let eps = 1e-6f32;
    let ms: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + f64::from(eps)).sqrt();
    let want: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(&a, &b)| f64::from(a) * s * f64::from(b))
        .collect();
    // Three f32 roundings per element on values of order 1.
    assert_close(
        &format!("{} rmsnorm", r.name()),
        &r.rmsnorm(&x, &w, eps),
        &want,
        |_| 1e-5,
    );
}

fn rope_ref(x: &[f32], hd: usize, pos: usize, base: f64, style: RopeStyle) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for head in out.chunks_exact_mut(hd) {
        let orig = head.to_vec();
        for i in 0..hd / 2 {
            let th = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
            let (a, b) = match style {
                RopeStyle::Norm => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + hd / 2),
            };
            head[a] = orig[a] * th.cos() - orig[b] * th.sin();
            head[b] = orig[a] * th.sin() + orig[b] * th.cos();
        }
    }
    out
}

fn check_rope(r: &mut impl OpRunner) {
    let hd = 64;
    let x = data(3, 4 * hd);
    for style in [RopeStyle::Norm, RopeStyle::Neox] {
        for (pos, base) in [(0usize, 1e4f32), (7, 1e5), (4095, 1e6)] {
            let want = rope_ref(&x, hd, pos, f64::from(base), style);
            // cos/sin rounded to f32, then two products and a sum.
            assert_close(
                &format!("{} rope {style:?} pos {pos}", r.name()),
                &r.rope(&x, hd, pos, base, style),
                &want,
                |_| 2e-6,
            );
        }
    }
    // The two pairings really differ (a swapped style must not pass).
    let a = r.rope(&x, hd, 5, 1e4, RopeStyle::Norm);
    let b = r.rope(&x, hd, 5, 1e4, RopeStyle::Neox);
    assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3));
}

fn check_attention(r: &mut impl OpRunner) {
    let (n_heads, n_kv, hd, n_pos) = (6, 2, 32, 37);
    let kvd = n_kv * hd;
    let q = data(4, n_heads * hd);
    let k = data(5, n_pos * kvd);
    let v = data(6, n_pos * kvd);
    let mut want = vec![0f64; n_heads * hd];
    for h in 0..n_heads {
        let kvh = h / (n_heads / n_kv);
        let scores: Vec<f64> = (0..n_pos)
            .map(|p| {
                (0..hd)
                    .map(|i| f64::from(q[h * hd + i]) * f64::from(k[p * kvd + kvh * hd + i]))
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        for (p, s) in scores.iter().enumerate() {
            for i in 0..hd {
                want[h * hd + i] += (s - m).exp() / z * f64::from(v[p * kvd + kvh * hd + i]);
            }
        }
    }
    // Softmax-weighted mean of values in [-1, 1]: f32 error well under 1e-5.
    assert_close(
        &format!("{} attention", r.name()),
        &r.attention(&q, &k, &v, n_pos, n_heads, n_kv, hd),
        &want,
        |_| 1e-5,
    );
    // Causality: attending over fewer positions must ignore later ones.
    let short = r.attention(&q, &k, &v, 1, n_heads, n_kv, hd);
    for h in 0..n_heads {
        let kvh = h / (n_heads / n_kv);
        assert_close(
            "attention over one position",
            &short[h * hd..(h + 1) * hd],
            &v[kvh * hd..(kvh + 1) * hd]
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>(),
            |_| 1e-6,
        );
    }
}

const FORMATS: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn check_matmul(r: &mut impl OpRunner) {
    let (rows, cols, n_tok) = (37, 512, 3);
    let wf = data(7, rows * cols);
    let x = data(8, n_tok * cols);
    for &dt in FORMATS {
        let mut w = Vec::new();
        quant::quantize(dt, &wf, &mut w).expect("quantize");
        // Reference: f64 products of the *decoded* weights, so the check is the
        // kernel's arithmetic, not the format's quantization error.
        let mut wd = vec![0f32; rows * cols];
        quant::dequantize(dt, &w, &mut wd).expect("dequantize");
        let mut want = vec![0f64; rows * n_tok];
        let mut scale = vec![0f64; rows * n_tok];
        for t in 0..n_tok {
            for o in 0..rows {
                let (row, xs) = (&wd[o * cols..(o + 1) * cols], &x[t * cols..(t + 1) * cols]);
                want[t * rows + o] = row
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                scale[t * rows + o] = row
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                    .sum();
            }
        }
        let got = r.matmul(dt, &w, rows, cols, &x, n_tok).expect("matmul");
        // f32 summation of `cols` terms: error <= ~cols·2^-24·Σ|terms|; 1e-5 relative is generous.
        assert_close(
            &format!("{} matmul {}", r.name(), dt.name()),
            &got,
            &want,
            |i| 1e-5 * scale[i] + 1e-6,
        );
        // A batch gives each token exactly the bits it gets alone.
        let alone = r
            .matmul(dt, &w, rows, cols, &x[cols..2 * cols], 1)
            .expect("matmul one");
        assert_eq!(
            alone,
            got[rows..2 * rows],
            "{} matmul {}: batch vs single",
            r.name(),
            dt.name()
        );
        // And agrees with the format's own row dot product.
        let rb = quant::row_bytes(dt, cols).expect("row bytes");
        for o in 0..rows {
            let d = quant::dot_row(dt, &w[o * rb..(o + 1) * rb], &x[..cols]);
            assert!(
                (d - got[o]).abs() as f64 <= 1e-5 * scale[o] + 1e-6,
                "{} dot_row vs matmul row {o}",
                dt.name()
            );
        }
    }
}

fn run_all(r: &mut impl OpRunner) {
    check_rmsnorm(r);
    check_rope(r);
    check_attention(r);
    check_matmul(r);
}

#[test]
fn cpu_ops_match_f64_references() {
    run_all(&mut CpuOps);
}
