//! GPU-vs-CPU checks (issue 5 point 6, `test-backend-ops` style): every op on
//! fresh random inputs against a host reference with a stated tolerance,
//! then the whole engine against `CpuEngine`, and llama.cpp's golden greedy
//! tokens with the float64 reference (`engine::conformance`, the body the
//! reference path runs too). The tests are ignored unless built for the GPU
//! suite (`cfg(gpu_tests)`, build.rs), and there a missing or unusable GPU
//! fails them (`gpu::test_support::test_gpu`).
//! Env: WORKER_ORCD_TEST_MODELS (folder with the SmolLM2 and Qwen2.5-Coder
//! files), WORKER_ORCD_GOLDEN (folder with the golden and f64 files; the
//! committed tests/golden_data is searched last).

use super::*;
use crate::engine::cpu::CpuEngine;
use crate::gpu::attention::{KvRows, KV_PAGE_TOKENS};
use crate::model::gguf::GgufLimits;

pub(crate) use crate::gpu::test_support::{rel_err, test_gpu, Rng};

/// GPU 0 opened with no built-in kernel images, so every kernel file comes
/// from NVRTC (compiled now or from the on-disk cache): the start-up
/// fallback's images, to compare with the built-in ones.
pub(super) fn nvrtc_only_gpu() -> Gpu {
    let none = crate::gpu::embedded::BuiltIn {
        images: &[],
        compiler: None,
        absent_reason: "the test asks for NVRTC's images",
        requested: &[],
    };
    let nvrtc = Gpu::open_with(0, &none).expect("open with NVRTC's images");
    assert_eq!(nvrtc.kernels.built_in, 0);
    nvrtc
}

pub(super) fn buf_from(g: &Gpu, data: &[f32], what: &str) -> DeviceBuffer {
    let mut b = g.alloc(data.len() * 4, what).expect("alloc");
    g.upload(&mut b, 0, data).expect("upload");
    b
}

pub(super) fn poisoned(g: &Gpu, n: usize, what: &str) -> DeviceBuffer {
    buf_from(g, &vec![f32::NAN; n], what)
}

/// Whether two float slices hold the same bits (NaN poison included).
fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Device copies of a launch's rows for one sequence (positions from `pos0`,
/// `n` of them, sequence 0) and its page table: the sequence's page i is
/// pool page `pages[i]`. Tests scramble the pages so a kernel that ignores the table
/// reads the wrong rows.
pub(super) struct TestRows {
    place: DeviceBuffer,
    tables: DeviceBuffer,
    host_pages: Vec<i32>,
    table_len: usize,
    pool_pages: usize,
}

impl TestRows {
    pub(super) fn new(g: &Gpu, pages: &[i32], pos0: usize, n: usize) -> Self {
        let row = |t: usize| {
            pages[t / KV_PAGE_TOKENS] * KV_PAGE_TOKENS as i32 + (t % KV_PAGE_TOKENS) as i32
        };
        let p: Vec<i32> = (pos0..pos0 + n)
            .flat_map(|t| [t as i32, 0, row(t), 0])
            .collect();
        let mut place = g.alloc(16 * n, "row places").unwrap();
        g.upload(&mut place, 0, &p).unwrap();
        let mut tables = g.alloc(4 * pages.len(), "page table").unwrap();
        g.upload(&mut tables, 0, pages).unwrap();
        Self {
            place,
            tables,
            host_pages: pages.to_vec(),
            table_len: pages.len(),
            pool_pages: pages.len(),
        }
    }

    /// Pages in reverse order: pool page `len - 1 - i` holds page i.
    pub(super) fn reversed(g: &Gpu, max_ctx: usize, pos0: usize, n: usize) -> Self {
        let len = max_ctx.div_ceil(KV_PAGE_TOKENS);
        let pages: Vec<i32> = (0..len).rev().map(|p| p as i32).collect();
        Self::new(g, &pages, pos0, n)
    }

    pub(super) fn rows(&self) -> KvRows<'_> {
        KvRows {
            place: self.place.all(),
            tables: self.tables.all(),
            n_tables: 1,
            table_len: self.table_len,
            pool_pages: self.pool_pages,
        }
    }

    /// The f32 rows of a pool for this table: whole pages.
    pub(super) fn pool_rows(&self) -> usize {
        self.pool_pages * KV_PAGE_TOKENS
    }

    /// `k` laid out by position (`max_ctx` rows of `width`) rearranged into
    /// the pool, unused rows NaN.
    pub(super) fn scatter(&self, k: &[f32], width: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.pool_rows() * width];
        for (t, row) in k.chunks(width).enumerate() {
            let page = self.host_pages[t / KV_PAGE_TOKENS] as usize;
            let at = (page * KV_PAGE_TOKENS + t % KV_PAGE_TOKENS) * width;
            out[at..at + width].copy_from_slice(row);
        }
        out
    }
}

/// The NVRTC fallback on the device (issue 12 point 4): a GPU opened
/// without the binary's images compiles (or loads from the cache) every
/// kernel file, exports every entry point, and runs an op to the same bits
/// as the built-in images.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_nvrtc_images_run_like_the_built_in_ones() {
    let built_in = test_gpu("op_nvrtc_images");
    let nvrtc = nvrtc_only_gpu();
    assert_eq!(
        nvrtc.kernels.compiled + nvrtc.kernels.from_cache,
        crate::gpu::compile::KERNEL_SOURCES.len()
    );
    let mut r = Rng::fresh("op_nvrtc_images");
    let (n, rows) = (896usize, 3usize);
    let (x, w) = (r.vec(n * rows), r.vec(n));
    let run = |g: &Gpu| -> Vec<f32> {
        let (xb, wb, ob) = (
            buf_from(g, &x, "x"),
            buf_from(g, &w, "w"),
            poisoned(g, n * rows, "o"),
        );
        g.rmsnorm(xb.all(), wb.all(), ob.all(), n, rows, 1e-6)
            .unwrap();
        g.download(&ob, 0, n * rows).unwrap()
    };
    let (a, b) = (run(&built_in), run(&nvrtc));
    assert!(
        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
        "rmsnorm differs between the built-in and NVRTC's images"
    );
    println!(
        "NVRTC images on the device: {}; rmsnorm identical to the built-in images",
        nvrtc.kernels.describe()
    );
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_rmsnorm_swiglu_add() {
    let g = test_gpu("op_rmsnorm");
    let mut r = Rng::fresh("op_rmsnorm");
    let (n, rows) = (896usize, 3usize);
    let (x, w) = (r.vec(n * rows), r.vec(n));
    let (xb, wb, ob) = (
        buf_from(&g, &x, "x"),
        buf_from(&g, &w, "w"),
        poisoned(&g, n * rows, "o"),
    );
    g.rmsnorm(xb.all(), wb.all(), ob.all(), n, rows, 1e-6)
        .unwrap();
    let got: Vec<f32> = g.download(&ob, 0, n * rows).unwrap();
    let mut want = vec![0f64; n * rows];
    for rr in 0..rows {
        let xs = &x[rr * n..(rr + 1) * n];
        let ms: f64 = xs.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let s = 1.0 / (ms + 1e-6).sqrt();
        for i in 0..n {
            want[rr * n + i] = xs[i] as f64 * s * w[i] as f64;
        }
    }
    let e = rel_err(&got, &want);
    println!("rmsnorm: rel err {e:.2e} (tol 1e-6)");
    assert!(e < 1e-6);

    let (ga, up) = (r.vec(n), r.vec(n));
    let (gb, ub, hb) = (
        buf_from(&g, &ga, "g"),
        buf_from(&g, &up, "u"),
        poisoned(&g, n, "h"),
    );
    g.swiglu(gb.all(), ub.all(), hb.all(), n).unwrap();
    let got: Vec<f32> = g.download(&hb, 0, n).unwrap();
    let want: Vec<f64> = ga
        .iter()
        .zip(&up)
        .map(|(&a, &b)| a as f64 / (1.0 + (-(a as f64)).exp()) * b as f64)
        .collect();
    let e = rel_err(&got, &want);
    println!("swiglu: rel err {e:.2e} (tol 1e-6)");
    assert!(e < 1e-6);

    g.add_inplace(ub.all(), gb.all(), n).unwrap();
    let got: Vec<f32> = g.download(&ub, 0, n).unwrap();
    let want: Vec<f64> = ga
        .iter()
        .zip(&up)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    assert!(rel_err(&got, &want) < 1e-7);
}

/// RoPE + KV write at positions 0..P, then attention at every position, vs an f64 reference;
/// the decode attention with the RoPE and store fused in (`Gpu::attention` with the step's RoPE, on its own
/// caches) gives every position the same bits and leaves the same caches.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_rope_kv_attention_gqa_both_styles() {
    let g = test_gpu("op_attention");
    let mut r = Rng::fresh("op_attention");
    let (nh, nkv, hd, max_ctx, steps) = (14usize, 2usize, 64usize, 80usize, 70usize);
    for neox in [false, true] {
        let base = if neox { 1e6f32 } else { 1e4f32 };
        let pool_rows = max_ctx.div_ceil(KV_PAGE_TOKENS) * KV_PAGE_TOKENS;
        let kc = poisoned(&g, pool_rows * nkv * hd, "kc");
        let vc = poisoned(&g, pool_rows * nkv * hd, "vc");
        let (kc_fused, vc_fused) = (
            poisoned(&g, pool_rows * nkv * hd, "kc"),
            poisoned(&g, pool_rows * nkv * hd, "vc"),
        );
        let mut fused_same = true;
        let scores = g
            .alloc(Gpu::attn_scratch_floats(nh, hd, max_ctx, 1) * 4, "scores")
            .unwrap();
        let (mut ks, mut vs): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
        let (mut all_q, mut all_k, mut all_v, mut all_o) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut worst = 0f64;
        for p in 0..steps {
            let (q, k, v) = (r.vec(nh * hd), r.vec(nkv * hd), r.vec(nkv * hd));
            let (qb, kb, vb) = (
                buf_from(&g, &q, "q"),
                buf_from(&g, &k, "k"),
                buf_from(&g, &v, "v"),
            );
            let rows = TestRows::reversed(&g, max_ctx, p, 1);
            let ob = poisoned(&g, nh * hd, "o");
            // The fused path first, on q before rope_kv rotates it in place.
            let of = poisoned(&g, nh * hd, "o");
            let rope = crate::gpu::attention::StepRope {
                k: kb.all(),
                v: vb.all(),
                neox,
                base,
            };
            g.attention(
                qb.all(),
                kc_fused.all(),
                vc_fused.all(),
                of.all(),
                scores.all(),
                rows.rows(),
                nh,
                nkv,
                hd,
                max_ctx,
                1,
                max_ctx,
                Some(rope),
            )
            .unwrap();
            g.rope_kv(
                qb.all(),
                kb.all(),
                vb.all(),
                kc.all(),
                vc.all(),
                rows.rows(),
                nh,
                nkv,
                hd,
                neox,
                base,
                1,
            )
            .unwrap();
            g.attention(
                qb.all(),
                kc.all(),
                vc.all(),
                ob.all(),
                scores.all(),
                rows.rows(),
                nh,
                nkv,
                hd,
                max_ctx,
                1,
                max_ctx,
                None,
            )
            .unwrap();
            let got: Vec<f32> = g.download(&ob, 0, nh * hd).unwrap();
            let fused: Vec<f32> = g.download(&of, 0, nh * hd).unwrap();
            fused_same &= bits_equal(&fused, &got);
            all_q.extend_from_slice(&q);
            all_k.extend_from_slice(&k);
            all_v.extend_from_slice(&v);
            all_o.extend_from_slice(&got);
            let rot = |x: &[f32]| -> Vec<f64> {
                let mut o: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                for h in 0..x.len() / hd {
                    for j in 0..hd / 2 {
                        let th = p as f64 * (base as f64).powf(-2.0 * j as f64 / hd as f64);
                        let (a, b) = if neox {
                            (j, j + hd / 2)
                        } else {
                            (2 * j, 2 * j + 1)
                        };
                        let (x0, x1) = (o[h * hd + a], o[h * hd + b]);
                        o[h * hd + a] = x0 * th.cos() - x1 * th.sin();
                        o[h * hd + b] = x0 * th.sin() + x1 * th.cos();
                    }
                }
                o
            };
            let qr = rot(&q);
            ks.push(rot(&k));
            vs.push(v.iter().map(|&x| x as f64).collect());
            let mut want = vec![0f64; nh * hd];
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let s: Vec<f64> = (0..=p)
                    .map(|t| {
                        (0..hd)
                            .map(|d| qr[h * hd + d] * ks[t][kh * hd + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    want[h * hd + d] = (0..=p).map(|t| e[t] * vs[t][kh * hd + d]).sum::<f64>() / z;
                }
            }
            worst = worst.max(rel_err(&got, &want));
        }
        let cache_same = [(&kc, &kc_fused), (&vc, &vc_fused)].iter().all(|(a, b)| {
            let n = pool_rows * nkv * hd;
            bits_equal(&g.download(a, 0, n).unwrap(), &g.download(b, 0, n).unwrap())
        });
        println!(
            "rope({}) + kv + attention over {steps} positions: worst rel err {worst:.2e} (tol 1e-4); fused RoPE: outputs identical {fused_same}, caches identical {cache_same}",
            if neox { "neox" } else { "norm" }
        );
        assert!(worst < 1e-4, "attention rel err {worst}");
        assert!(
            fused_same,
            "fused-RoPE attention outputs differ from rope_kv + attention"
        );
        assert!(
            cache_same,
            "fused-RoPE attention caches differ from rope_kv's"
        );
        // The same tokens as one causal batch (prefill) give bit-identical outputs.
        let (qb, kb, vb) = (
            buf_from(&g, &all_q, "q"),
            buf_from(&g, &all_k, "k"),
            buf_from(&g, &all_v, "v"),
        );
        let (kc2, vc2) = (
            poisoned(&g, pool_rows * nkv * hd, "kc"),
            poisoned(&g, pool_rows * nkv * hd, "vc"),
        );
        let part = g
            .alloc(Gpu::attn_scratch_floats(nh, hd, max_ctx, steps) * 4, "part")
            .unwrap();
        // The same sequence with its pages in another order.
        let pages: Vec<i32> = (0..max_ctx.div_ceil(KV_PAGE_TOKENS) as i32)
            .map(|p| (p + 1) % max_ctx.div_ceil(KV_PAGE_TOKENS) as i32)
            .collect();
        let rows = TestRows::new(&g, &pages, 0, steps);
        let ob = poisoned(&g, steps * nh * hd, "o");
        g.rope_kv(
            qb.all(),
            kb.all(),
            vb.all(),
            kc2.all(),
            vc2.all(),
            rows.rows(),
            nh,
            nkv,
            hd,
            neox,
            base,
            steps,
        )
        .unwrap();
        g.attention(
            qb.all(),
            kc2.all(),
            vc2.all(),
            ob.all(),
            part.all(),
            rows.rows(),
            nh,
            nkv,
            hd,
            max_ctx,
            steps,
            max_ctx,
            None,
        )
        .unwrap();
        let batched: Vec<f32> = g.download(&ob, 0, steps * nh * hd).unwrap();
        let same = batched
            .iter()
            .zip(&all_o)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "batched causal attention differs from token-by-token");
        println!("causal batch of {steps} tokens: bit-identical to token-by-token");
    }
}

/// The decode attention's fold over many chunks (more than one tile of
/// ATT_THREADS partials) and over heads wider than the block (hd 128 and
/// 256, two output dimensions per thread), against an f64 reference: cache
/// rows written directly (random keys and values in reversed pages), one
/// query at positions on both sides of each tile boundary.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_attention_long_context_and_wide_heads() {
    let g = test_gpu("op_attention_long");
    let mut r = Rng::fresh("op_attention_long");
    let tile = crate::gpu::attention::ATT_THREADS * crate::gpu::attention::ATT_CHUNK;
    let max_ctx = 2 * tile + 3 * KV_PAGE_TOKENS;
    for (nh, nkv, hd) in [(8usize, 2usize, 128usize), (4, 1, 256), (14, 2, 64)] {
        // Keys and values in position order (the reference's layout),
        // scattered into the pool through reversed pages (the kernel's).
        let (kseq, vseq) = (r.vec(max_ctx * nkv * hd), r.vec(max_ctx * nkv * hd));
        let pages = max_ctx.div_ceil(KV_PAGE_TOKENS);
        let row_of =
            |t: usize| (pages - 1 - t / KV_PAGE_TOKENS) * KV_PAGE_TOKENS + t % KV_PAGE_TOKENS;
        let width = nkv * hd;
        let (mut kpool, mut vpool) = (
            vec![0f32; pages * KV_PAGE_TOKENS * width],
            vec![0f32; pages * KV_PAGE_TOKENS * width],
        );
        for t in 0..max_ctx {
            let (at, row) = (t * width, row_of(t) * width);
            kpool[row..row + width].copy_from_slice(&kseq[at..at + width]);
            vpool[row..row + width].copy_from_slice(&vseq[at..at + width]);
        }
        let (kc, vc) = (buf_from(&g, &kpool, "kc"), buf_from(&g, &vpool, "vc"));
        let scores = g
            .alloc(Gpu::attn_scratch_floats(nh, hd, max_ctx, 1) * 4, "scores")
            .unwrap();
        let (mut worst, mut same_bits) = (0f64, true);
        for p in [5, 100, tile - 1, tile, tile + 40, 2 * tile - 1, max_ctx - 1] {
            let q = r.vec(nh * hd);
            let qb = buf_from(&g, &q, "q");
            let rows = TestRows::reversed(&g, max_ctx, p, 1);
            // The launcher's kernel, then the one-block-per-head kernel: the
            // same bits (the grouped kernel's promise, on the GPU's own
            // arithmetic), over a graph's reach and over the whole context.
            let mut outs = Vec::new();
            for (per_head, reach) in [(false, p + 1), (false, max_ctx), (true, max_ctx)] {
                g.set_per_head_attention(per_head);
                let ob = poisoned(&g, nh * hd, "o");
                g.attention(
                    qb.all(),
                    kc.all(),
                    vc.all(),
                    ob.all(),
                    scores.all(),
                    rows.rows(),
                    nh,
                    nkv,
                    hd,
                    max_ctx,
                    1,
                    reach,
                    None,
                )
                .unwrap();
                outs.push(g.download::<f32>(&ob, 0, nh * hd).unwrap());
            }
            g.set_per_head_attention(false);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            same_bits &= outs.iter().all(|o| bits(o) == bits(&outs[2]));
            let want = super::prefill_tests::cpu_attention(&q, &kseq, &vseq, nh, nkv, hd, p, 1);
            worst = worst.max(rel_err(&outs[0], &want));
        }
        println!(
            "attention {nh}q/{nkv}kv hd {hd} at positions up to {}: worst rel err {worst:.2e} (tol 1e-4); launcher's kernel bit-identical to per head: {same_bits}",
            max_ctx - 1
        );
        assert!(worst < 1e-4, "attention hd {hd}: rel err {worst}");
        assert!(
            same_bits,
            "attention hd {hd}: the launcher's kernel differs from attn_partial"
        );
    }
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_topk_matches_the_shared_sampler_order() {
    let g = test_gpu("op_topk");
    let mut r = Rng::fresh("op_topk");
    let n = 151_936usize;
    let mut l = r.vec(n);
    // Ties and a NaN: the order must still be logit desc, id asc, NaN last.
    l[77] = 3.0;
    l[5] = 3.0;
    l[n - 1] = 3.0;
    l[100] = f32::NAN;
    let lb = buf_from(&g, &l, "logits");
    let sb = g
        .alloc(crate::gpu::topk::topk_large_scratch_bytes(n), "scratch")
        .unwrap();
    for k in [1usize, 40, crate::engine::sampler::MAX_CANDIDATES] {
        let ib = g.alloc(4 * k, "ids").unwrap();
        let vb = g.alloc(4 * k, "vals").unwrap();
        g.topk(lb.all(), n, k, sb.all(), ib.all(), vb.all())
            .unwrap();
        let ids: Vec<i32> = g.download(&ib, 0, k).unwrap();
        let vals: Vec<f32> = g.download(&vb, 0, k).unwrap();
        let want = crate::engine::sampler::top_candidates(&l, k);
        let got: Vec<(u32, f32)> = ids
            .iter()
            .zip(&vals)
            .map(|(&i, &v)| (i as u32, v))
            .collect();
        assert_eq!(
            got, want,
            "top-{k} differs from the host sampler's candidates"
        );
    }
    println!(
        "topk k=1,40,{}: identical to sampler::top_candidates",
        crate::engine::sampler::MAX_CANDIDATES
    );
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_sha256_leaves_give_the_cpu_root() {
    let g = test_gpu("op_sha256");
    let mut r = Rng::fresh("op_sha256");
    let chunk = crate::shard::digest::CHUNK_BYTES;
    for len in [
        0usize,
        1,
        55,
        56,
        63,
        64,
        119,
        120,
        1000,
        chunk,
        3 * chunk + 17,
        2 * chunk - 9,
    ] {
        let data: Vec<u8> = (0..len).map(|_| (r.signed() * 127.0) as i8 as u8).collect();
        let want = crate::shard::digest::resident_digest(&data);
        let mut b = g.alloc(len, "data").unwrap();
        if len > 0 {
            g.upload(&mut b, 0, &data).unwrap();
        }
        let n = len.div_ceil(chunk);
        let lb = g.alloc(32 * n.max(1), "leaves").unwrap();
        let span = b.span(0, len).unwrap();
        let got_n = g.sha256_leaves(span, chunk, lb.all()).unwrap();
        assert_eq!(got_n, n);
        let raw: Vec<u8> = g.download(&lb, 0, 32 * n).unwrap();
        let leaves: Vec<[u8; 32]> = raw
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap())
            .collect();
        let got = crate::shard::digest::root_from_leaves(len as u64, &leaves);
        assert_eq!(
            got, want,
            "GPU digest differs from the CPU digest for {len} bytes"
        );
    }
    println!("sha256 leaves: roots identical to shard::digest for 12 lengths incl. padding edges");
}

/// A real model file under `$WORKER_ORCD_TEST_MODELS` (default `<repo>/models`), when present.
/// Every real model file of the conformance set, from WORKER_ORCD_TEST_MODELS
/// (default `models/`). A missing file fails the test that asked: the
/// `real_files_` tests run where the suite has put the files (phase 2 of
/// ci/gpu-run), and a run without them must not pass as if it had checked them.
fn real_models() -> Vec<std::path::PathBuf> {
    let dir = crate::env::TEST_MODELS
        .get()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    crate::engine::conformance::REAL_MODELS
        .iter()
        .map(|(file, _, _)| {
            let p = dir.join(file);
            assert!(
                p.exists(),
                "{} is missing: set WORKER_ORCD_TEST_MODELS to the folder holding the real model files",
                p.display()
            );
            p
        })
        .collect()
}

/// The generated tiny llama and qwen2 models, written under `dir`.
fn tiny_models(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    [
        crate::model::test_model::TestModelSpec::tiny_llama(),
        crate::model::test_model::TestModelSpec::tiny_qwen2(),
    ]
    .into_iter()
    .map(|spec| {
        let p = dir.join(format!("{}.gguf", spec.name));
        crate::model::test_model::write_test_model(&spec, &p).expect("make model");
        p
    })
    .collect()
}

fn load_both(path: &std::path::Path) -> (CudaEngine, CpuEngine, GgufFile) {
    let g = GgufFile::open(path, &GgufLimits::default()).expect("open model");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("arch");
    let opts = LoadOptions {
        max_context: 512,
        kv_pool_tokens: 0,
        max_sequences: 1,
        gpu_device: 0,
        threads: 0,
    };
    let cuda = CudaEngine::load(&g, &cfg, &w, &opts).expect("cuda load");
    let cpu = CpuEngine::load(&g, &cfg, &w, &opts).expect("cpu load");
    (cuda, cpu, g)
}

/// The edge cases every backend holds the same way (the CPU engine runs the
/// same body in engine::cpu::tests).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_edge_cases_are_the_shared_contract() {
    test_gpu("engine_edge_cases");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    let spec = crate::model::test_model::TestModelSpec::tiny_llama();
    crate::model::test_model::write_test_model(&spec, &p).expect("make model");
    let g = GgufFile::open(&p, &GgufLimits::default()).expect("open model");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("arch");
    let opts = LoadOptions {
        max_context: 8,
        kv_pool_tokens: 0,
        max_sequences: 1,
        gpu_device: 0,
        threads: 0,
    };
    let mut e = CudaEngine::load(&g, &cfg, &w, &opts).expect("cuda load");
    let mut bad = crate::engine::conformance::edge_cases(&mut e);
    bad.extend(crate::engine::conformance::batched_contract(&mut e));
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Batch invariance on the GPU (issue 11 point 5): the shared body over the
/// tiny models (the real files: the next test), with a pool and step
/// buffers for 12 sequences; the engine's memory is what Plan computes for
/// that layout.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_batched_steps_give_each_sequence_its_solo_logits() {
    test_gpu("engine_batch_invariance");
    let dir = tempfile::tempdir().unwrap();
    batched_steps_give_solo_logits(tiny_models(dir.path()));
}

/// As above, on the real model files (ci/gpu-run phase 2).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU and the real model files: run by ci/gpu-run phase 2"
)]
fn real_files_batched_steps_give_each_sequence_its_solo_logits() {
    test_gpu("real_files_batch_invariance");
    batched_steps_give_solo_logits(real_models());
}

fn batched_steps_give_solo_logits(paths: Vec<std::path::PathBuf>) {
    for p in paths {
        let g = GgufFile::open(&p, &GgufLimits::default()).expect("open model");
        let (cfg, w) = crate::model::arch::from_gguf(&g).expect("arch");
        let opts = LoadOptions {
            max_context: 256,
            kv_pool_tokens: 12 * 256,
            max_sequences: 12,
            gpu_device: 0,
            threads: 0,
        };
        let mut e = CudaEngine::load(&g, &cfg, &w, &opts).expect("cuda load");
        assert_eq!(
            planned_memory(&cfg, g.data_section().len(), 256, 12 * 256, 12),
            e.memory(),
            "planned_memory differs from the loaded engine's report (12 sequences)"
        );
        let bad = crate::engine::conformance::batch_invariance(&mut e, 12, 6);
        println!(
            "batch invariance {}: {} broken rules",
            p.display(),
            bad.len()
        );
        assert!(bad.is_empty(), "{}: {bad:#?}", p.display());
        // Sampling from one top-k launch for all rows picks as row by row.
        let bad = crate::engine::conformance::prefetch_samples_match(&mut e, 12);
        assert!(bad.is_empty(), "{}: {bad:#?}", p.display());
        assert_eq!(e.kv_usage().used_pages, 0, "pages left after the runs");
    }
}

/// Logits of the prompt and the first decode steps, GPU vs CPU reference, on
/// generated tiny llama/qwen2 models (the real files: the next test).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_logits_and_greedy_tokens_match_cpu() {
    test_gpu("engine_vs_cpu");
    let dir = tempfile::tempdir().unwrap();
    logits_and_greedy_tokens_match_cpu(tiny_models(dir.path()));
}

/// As above, on the real model files (ci/gpu-run phase 2).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU and the real model files: run by ci/gpu-run phase 2"
)]
fn real_files_logits_and_greedy_tokens_match_cpu() {
    test_gpu("real_files_vs_cpu");
    logits_and_greedy_tokens_match_cpu(real_models());
}

#[allow(clippy::explicit_counter_loop)]
fn logits_and_greedy_tokens_match_cpu(paths: Vec<std::path::PathBuf>) {
    for p in paths {
        let (mut cuda, mut cpu, g) = load_both(&p);
        // Plan's estimate (computed without a GPU) is what load really holds.
        assert_eq!(
            planned_memory(cuda.config(), g.data_section().len(), 512, 0, 1),
            cuda.memory(),
            "planned_memory differs from the loaded engine's report"
        );
        let digest = cuda.resident_digest().unwrap();
        assert_eq!(
            digest,
            crate::shard::digest::resident_digest(g.data_section()),
            "GPU resident digest"
        );
        let prompt: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253]
            .into_iter()
            .map(|t| t % cuda.config().vocab_size as u32)
            .collect();
        cuda.forward(&prompt, 0).unwrap();
        cpu.forward(&prompt, 0).unwrap();
        let mut pos = prompt.len();
        let mut worst = 0f64;
        let mut toks = Vec::new();
        for step in 0..8 {
            let lg = cuda.logits().unwrap();
            let lc: Vec<f64> = cpu.logits().unwrap().iter().map(|&v| v as f64).collect();
            let e = rel_err(&lg, &lc);
            worst = worst.max(e);
            let tg = cuda.sample(&SamplingParams::GREEDY, 0.0).unwrap();
            let tc = cpu.sample(&SamplingParams::GREEDY, 0.0).unwrap();
            assert_eq!(
                tg,
                tc,
                "{}: greedy token differs at step {step}",
                p.display()
            );
            toks.push(tg);
            cuda.forward(&[tg], pos).unwrap();
            cpu.forward(&[tc], pos).unwrap();
            pos += 1;
        }
        println!("{}: logits rel err worst {worst:.2e} over 8 steps (tol 1e-3); greedy tokens identical {toks:?}", p.file_name().unwrap().to_string_lossy());
        // Seeded sampling: the device candidate path (small top-k) and the host
        // path (large pools) pick what the CPU engine picks with the same draw.
        let mut picks = Vec::new();
        for params in [
            SamplingParams {
                temperature: 0.8,
                top_k: 5,
                top_p: 1.0,
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
            },
        ] {
            for draw in [0.05f32, 0.5, 0.95] {
                let (a, b) = (
                    cuda.sample(&params, draw).unwrap(),
                    cpu.sample(&params, draw).unwrap(),
                );
                assert_eq!(
                    a, b,
                    "sampled token differs (top_k {}, draw {draw})",
                    params.top_k
                );
                picks.push(a);
            }
        }
        println!("  seeded sampling (top_k 5 on device, top_k 0/top_p 0.9 on host): identical picks {picks:?}");
        assert!(worst < 1e-3, "logits rel err {worst}");
        // Determinism: the same sequence again gives bit-identical logits.
        let first = {
            cuda.reset();
            cuda.forward(&prompt, 0).unwrap();
            cuda.logits().unwrap()
        };
        cuda.reset();
        cuda.forward(&prompt, 0).unwrap();
        assert_eq!(
            cuda.logits()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            first.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// The golden conformance body (`engine::conformance`, the same one the
/// reference path runs in tests/golden.rs) on the GPU, for every real model
/// file: teacher-forced decode against llama.cpp's greedy tokens and the
/// float64 reference's argmax and logits. A missing file or golden set fails.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU and the real model files: run by ci/gpu-run phase 2"
)]
fn real_files_golden_on_gpu() {
    use crate::engine::conformance;
    test_gpu("golden_gpu");
    for ((file, golden, f64_name), p) in conformance::REAL_MODELS.iter().zip(real_models()) {
        let g = GgufFile::open(&p, &GgufLimits::default()).unwrap();
        let cases = conformance::load(golden, f64_name, &hex::encode(g.file_sha256))
            .unwrap()
            .unwrap_or_else(|| {
                panic!("golden_gpu: {golden} or {f64_name} not found (set WORKER_ORCD_GOLDEN)")
            });
        let (cfg, w) = crate::model::arch::from_gguf(&g).unwrap();
        let opts = LoadOptions {
            max_context: 1024,
            kv_pool_tokens: 0,
            max_sequences: 1,
            gpu_device: 0,
            threads: 0,
        };
        let mut e = CudaEngine::load(&g, &cfg, &w, &opts).unwrap();
        let report = conformance::run(&mut e, &cases).unwrap();
        println!("golden {file} on GPU: {}", report.summary());
        if let Err(why) = report.check() {
            panic!("{file} on the GPU breaks the golden rule:\n{why}");
        }
    }
}
