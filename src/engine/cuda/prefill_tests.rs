//! GPU-vs-CPU checks of the prefill path (issue 5 points 2, 6, 7;
//! KERNEL-GEMM-001..005, WORKER-4710): dequantize + cuBLAS SGEMM for every
//! block format, the scratch-free prefill attention, and a whole prompt
//! longer than one chunk against `CpuEngine`, twice (bit-identical).
//! Same style and rules as `tests.rs`: fresh random inputs (seed printed),
//! stated tolerances printed as `rel err X (tol Y)`, ignored unless built for
//! the GPU suite (`cfg(gpu_tests)`).

use super::tests::{buf_from, poisoned, rel_err, test_gpu, Rng, TestRows};
use super::*;
use crate::engine::cpu::CpuEngine;
use crate::gpu::gemm::{Tf32Split, TF32X3_K_SLICES};
use crate::model::gguf::GgufLimits;
use crate::model::quant;

fn upload_bytes(g: &Gpu, data: &[u8], what: &str) -> DeviceBuffer {
    let mut b = g.alloc(data.len(), what).expect("alloc");
    g.upload(&mut b, 0, data).expect("upload");
    b
}

/// y = x·Wᵀ (+ bias) (+ y) through dequant + SGEMM and through dequant +
/// 3xTF32 (split operands, one tensor-core GEMM, or k slices side by side
/// and their partial outputs summed), every format, rows that
/// are not a multiple of any tile, several token counts; y starts as NaN when
/// not accumulating (beta = 0 must not read it), the split buffers too.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_gemm_every_block_format() {
    let g = test_gpu("op_gemm");
    let mut r = Rng::fresh("op_gemm");
    for dt in supported_quant() {
        for (rows, cols) in [(67usize, 512usize), (129, 256)] {
            let wf = r.vec(rows * cols);
            let mut wq = Vec::new();
            quant::quantize(dt, &wf, &mut wq).expect("quantize");
            let mut deq = vec![0f32; rows * cols];
            quant::dequantize(dt, &wq, &mut deq).expect("dequantize");
            let wb = upload_bytes(&g, &wq, "w");
            // Room for the 3xTF32 parts (three floats a weight).
            let scratch = poisoned(&g, 3 * rows * cols, "scratch");
            // The dequantized matrix itself: the same values the CPU reads.
            g.dequant(dt, wb.all(), scratch.all(), rows, cols, false)
                .unwrap();
            let got: Vec<f32> = g.download(&scratch, 0, rows * cols).unwrap();
            let want: Vec<f64> = deq.iter().map(|&v| v as f64).collect();
            let e = rel_err(&got, &want);
            println!(
                "dequant {:>5} {rows}x{cols}: rel err {e:.2e} (tol 1e-6)",
                dt.name()
            );
            assert!(e < 1e-6, "dequant {} rel err {e}", dt.name());
            let bias = r.vec(rows);
            let bb = buf_from(&g, &bias, "bias");
            for n in [2usize, 7, 64, 300] {
                let x = r.vec(cols * n);
                let xb = buf_from(&g, &x, "x");
                // x·Wᵀ once per n; the variants add bias and/or the old y.
                let dots: Vec<f64> = (0..n * rows)
                    .map(|k| {
                        let (t, i) = (k / rows, k % rows);
                        (0..cols)
                            .map(|j| deq[i * cols + j] as f64 * x[t * cols + j] as f64)
                            .sum()
                    })
                    .collect();
                let x_parts = poisoned(&g, 3 * cols * n, "x parts");
                let partials = poisoned(&g, TF32X3_K_SLICES * rows * n, "partials");
                let one = Tf32Split {
                    x_parts: x_parts.all(),
                    partials: None,
                };
                let sliced = Tf32Split {
                    partials: Some(partials.all()),
                    ..one
                };
                for (acc, with_bias, split) in [
                    (false, true, None),
                    (true, false, None),
                    (true, true, None),
                    (false, true, Some(one)),
                    (true, true, Some(one)),
                    (false, false, Some(sliced)),
                    (true, true, Some(sliced)),
                ] {
                    let y0 = r.vec(rows * n);
                    let yb = if acc {
                        buf_from(&g, &y0, "y")
                    } else {
                        poisoned(&g, rows * n, "y")
                    };
                    g.gemm(
                        dt,
                        wb.all(),
                        xb.all(),
                        with_bias.then(|| bb.all()),
                        yb.all(),
                        scratch.all(),
                        split,
                        rows,
                        cols,
                        n,
                        acc,
                    )
                    .unwrap();
                    let got: Vec<f32> = g.download(&yb, 0, rows * n).unwrap();
                    let want: Vec<f64> = (0..n * rows)
                        .map(|k| {
                            let b = if with_bias {
                                bias[k % rows] as f64
                            } else {
                                0.0
                            };
                            let old = if acc { y0[k] as f64 } else { 0.0 };
                            dots[k] + b + old
                        })
                        .collect();
                    let e = rel_err(&got, &want);
                    let how = match split.map(|s| s.partials.is_some()) {
                        None => "sgemm ",
                        Some(false) => "3xtf32",
                        Some(true) => "3xtf32 split-K",
                    };
                    println!(
                        "gemm {how} {:>5} {rows}x{cols} n {n:>3} acc {acc:<5} bias {with_bias:<5}: rel err {e:.2e} (tol 1e-5)",
                        dt.name()
                    );
                    assert!(e < 1e-5, "gemm {how} {} n {n} rel err {e}", dt.name());
                }
            }
        }
    }
    // Shapes the GEMM cannot take are refused before any launch.
    let small = g.alloc(64, "small").unwrap();
    let err = g
        .sgemm_xwt(small.all(), small.all(), small.all(), 8, 8, 8, false)
        .expect_err("a 64-byte window cannot hold an 8x8 f32 matrix");
    assert!(err.message().contains("needs"), "{}", err.message());
}

/// CPU attention (f64) of query t at position pos0 + t over rows 0..=pos0+t.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cpu_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    nh: usize,
    nkv: usize,
    hd: usize,
    pos0: usize,
    n: usize,
) -> Vec<f64> {
    let mut out = vec![0f64; n * nh * hd];
    for t in 0..n {
        for h in 0..nh {
            let kh = h / (nh / nkv);
            let qh = &q[(t * nh + h) * hd..][..hd];
            let s: Vec<f64> = (0..=pos0 + t)
                .map(|p| {
                    let kr = &k[(p * nkv + kh) * hd..][..hd];
                    qh.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[(t * nh + h) * hd + d] = (0..=pos0 + t)
                    .map(|p| e[p] * v[(p * nkv + kh) * hd + d] as f64)
                    .sum::<f64>()
                    / z;
            }
        }
    }
    out
}

/// Prefill attention vs a CPU attention: GQA, pos0 > 0, up to 512 queries,
/// the register-tiled kernels with two key groups and with one (groups of
/// 3, 6, 7 heads; hd 64 and 128) and the untiled one (hd 256, 80, 16). Cache rows past the causal
/// limit are NaN, so reading one would show. Twice: bit-identical.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_attn_prefill() {
    let g = test_gpu("op_attn_prefill");
    let mut r = Rng::fresh("op_attn_prefill");
    for (nh, nkv, hd, pos0, n) in [
        (14usize, 2usize, 64usize, 37usize, 300usize),
        (9, 3, 64, 0, 512),
        (9, 3, 64, 3, 1),
        (12, 2, 128, 20, 45),
        (4, 1, 256, 5, 40),
        (6, 3, 80, 100, 7),
        (2, 2, 16, 0, 33),
    ] {
        let max_ctx = pos0 + n + 9;
        let live = (pos0 + n) * nkv * hd;
        let (mut k, mut v) = (r.vec(live), r.vec(live));
        let q = r.vec(n * nh * hd);
        let want = cpu_attention(&q, &k, &v, nh, nkv, hd, pos0, n);
        k.resize(max_ctx * nkv * hd, f32::NAN);
        v.resize(max_ctx * nkv * hd, f32::NAN);
        // The cache rows through a scrambled page table.
        let rows = TestRows::reversed(&g, max_ctx, pos0, n);
        let (k, v) = (rows.scatter(&k, nkv * hd), rows.scatter(&v, nkv * hd));
        let (qb, kb, vb) = (
            buf_from(&g, &q, "q"),
            buf_from(&g, &k, "k"),
            buf_from(&g, &v, "v"),
        );
        let run = || -> Vec<f32> {
            let ob = poisoned(&g, n * nh * hd, "o");
            g.attention_prefill(
                qb.all(),
                kb.all(),
                vb.all(),
                ob.all(),
                rows.rows(),
                nh,
                nkv,
                hd,
                n,
            )
            .unwrap();
            g.download(&ob, 0, n * nh * hd).unwrap()
        };
        // The two-key-group kernel, then the one-group kernel (the route
        // of a device that cannot grant the first its shared memory).
        for one_group in [false, true] {
            g.set_prefill_one_group(one_group);
            let got = run();
            let e = rel_err(&got, &want);
            println!(
                "attn_prefill {nh}q/{nkv}kv hd {hd} pos0 {pos0} n {n} one group {one_group}: rel err {e:.2e} (tol 1e-5)"
            );
            assert!(e < 1e-5, "attn_prefill rel err {e}");
            let again = run();
            assert!(
                got.iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "attn_prefill is not bit-identical run to run"
            );
        }
        g.set_prefill_one_group(false);
    }
}

/// A prompt longer than one chunk (GEMM chunks, and a short mat-vec tail)
/// gives the CPU engine's last-token logits and next greedy tokens; the same
/// prompt again gives bit-identical logits.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_prefill_longer_than_a_chunk_matches_cpu() {
    test_gpu("engine_prefill");
    let dir = tempfile::tempdir().unwrap();
    let llama = crate::model::test_model::TestModelSpec {
        ctx: 4096,
        ..crate::model::test_model::TestModelSpec::tiny_llama()
    };
    // d = 256 so the Q4_K_M rules really produce K-quant matrices.
    let qwen = crate::model::test_model::TestModelSpec {
        ctx: 4096,
        d_model: 256,
        ffn: 512,
        ..crate::model::test_model::TestModelSpec::tiny_qwen2()
    };
    for spec in [llama, qwen] {
        let p = dir.path().join(format!("{}.gguf", spec.name));
        crate::model::test_model::write_test_model(&spec, &p).expect("make model");
        let gg = GgufFile::open(&p, &GgufLimits::default()).expect("open model");
        let (cfg, w) = crate::model::arch::from_gguf(&gg).expect("arch");
        let opts = LoadOptions {
            max_context: 4096,
            kv_pool_tokens: 0,
            max_sequences: 1,
            gpu_device: 0,
            threads: 0,
        };
        let mut cuda = CudaEngine::load(&gg, &cfg, &w, &opts).expect("cuda load");
        let chunk = cuda.prefill_chunk();
        assert!(chunk + 188 < 4096, "{} prefill chunk {chunk}", spec.name);
        let mut cpu = CpuEngine::load(&gg, &cfg, &w, &opts).expect("cpu load");
        let vocab = cfg.vocab_size as u32;
        // Two GEMM chunks; a GEMM chunk, then a mat-vec of 3 tokens.
        for len in [chunk + 188, chunk + 3] {
            let prompt: Vec<u32> = (0..len as u32)
                .map(|i| (i.wrapping_mul(7919) + 13) % vocab)
                .collect();
            cuda.reset();
            cpu.reset();
            cuda.forward(&prompt, 0).unwrap();
            cpu.forward(&prompt, 0).unwrap();
            let first = cuda.logits().unwrap();
            let lc: Vec<f64> = cpu.logits().unwrap().iter().map(|&v| v as f64).collect();
            let e = rel_err(&first, &lc);
            println!(
                "{} prompt {len}: last-token logits rel err {e:.2e} (tol 1e-3)",
                spec.name
            );
            assert!(e < 1e-3, "{} prompt {len}: logits rel err {e}", spec.name);
            // Decode continues from the prefilled cache.
            for (step, pos) in (len..len + 3).enumerate() {
                let tg = cuda.sample(&SamplingParams::GREEDY, 0.0).unwrap();
                let tc = cpu.sample(&SamplingParams::GREEDY, 0.0).unwrap();
                assert_eq!(
                    tg, tc,
                    "{} prompt {len}: greedy token differs at step {step}",
                    spec.name
                );
                cuda.forward(&[tg], pos).unwrap();
                cpu.forward(&[tc], pos).unwrap();
            }
            let lg = cuda.logits().unwrap();
            let lc: Vec<f64> = cpu.logits().unwrap().iter().map(|&v| v as f64).collect();
            let e = rel_err(&lg, &lc);
            println!(
                "{} prompt {len} + 3 decode steps: logits rel err {e:.2e} (tol 1e-3)",
                spec.name
            );
            assert!(e < 1e-3, "{} decode after prefill: rel err {e}", spec.name);
            // Determinism: the same prompt again, bit for bit.
            cuda.reset();
            cuda.forward(&prompt, 0).unwrap();
            let again = cuda.logits().unwrap();
            assert_eq!(
                again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{} prompt {len}: logits differ between two identical runs",
                spec.name
            );
            println!("{} prompt {len}: second run bit-identical", spec.name);
        }
    }
}
