//! Device time of the decode-step and prefill kernels at Qwen2.5-0.5B shapes
//! (issue 5 point 10): an ignored test that prints one `profile` line per
//! op, run explicitly on the GPU machine. Not a correctness test.

use super::tests::{buf_from, test_gpu, Rng, TestRows};
use super::*;
use crate::gpu::attention::StepRope;
use crate::gpu::batched::RowsMath;
use crate::gpu::qkv::{Proj, QkvFormats};
use crate::model::gguf::GgmlType;
use crate::model::quant;

/// Device time per launch of the decode-step kernels, and of the prefill
/// GEMM (dequant + SGEMM, 512 tokens) and prefill attention, at Qwen2.5-0.5B shapes
/// (median of 5 batches of 50 launches, CUDA events). Not a correctness test:
/// run explicitly with `--ignored op_profile` on the GPU machine.
#[test]
#[ignore]
fn op_profile_qwen_shapes() {
    let g = test_gpu("op_profile");
    let mut r = Rng::fresh("op_profile");
    let time = |name: &str, bytes: usize, f: &dyn Fn() -> Result<()>| time_op(&g, name, bytes, f);
    for (dt, rows, cols, label) in [
        (
            GgmlType::Q8_0,
            151_936usize,
            896usize,
            "lm_head q8_0 151936x896",
        ),
        (GgmlType::Q5_0, 4864, 896, "ffn gate/up q5_0 4864x896"),
        (GgmlType::Q4K, 896, 4864, "ffn down q4_K 896x4864"),
        (GgmlType::Q6K, 896, 4864, "ffn down q6_K 896x4864"),
        (GgmlType::Q5_0, 896, 896, "attn q/o q5_0 896x896"),
        (GgmlType::Q4_1, 1536, 576, "smol ffn q4_1 1536x576"),
    ] {
        let mut wq = Vec::new();
        quant::quantize(dt, &r.vec(rows * cols), &mut wq).unwrap();
        let mut wb = g.alloc(wq.len(), "w").unwrap();
        g.upload(&mut wb, 0, &wq).unwrap();
        let xb = buf_from(&g, &r.vec(cols * 64), "x");
        let yb = g.alloc(rows * 4 * 64, "y").unwrap();
        time(label, wq.len(), &|| {
            g.matvec(dt, wb.all(), xb.all(), None, yb.all(), rows, cols, 1, false)
        });
        // The plain one-warp-per-row kernel the staged one replaces on decode.
        time(&format!("{label} (plain)"), wq.len(), &|| {
            let a = (dt, wb.all(), xb.all(), None, yb.all(), rows, cols, 1, false);
            g.matvec_variant(a, false)
        });
        if cols == 896 {
            // Decode shapes with the fused RMSNorm (q/k/v) and fused gate/up +
            // SwiGLU (two matrices of this shape; bytes counted for both).
            let nb = buf_from(&g, &r.vec(cols), "nw");
            time(&format!("{label} +rmsnorm"), wq.len(), &|| {
                let (x, n, y) = (xb.all(), nb.all(), yb.all());
                g.matvec_norm(dt, wb.all(), x, n, 1e-6, None, y, rows, cols, false)
            });
            time(&format!("{label} gate_up fused"), 2 * wq.len(), &|| {
                let (x, n, y) = (xb.all(), nb.all(), yb.all());
                g.gate_up(dt, wb.all(), wb.all(), x, n, 1e-6, y, rows, cols)
            });
        }
        time(&format!("{label} x64 tokens"), wq.len(), &|| {
            g.matvec(
                dt,
                wb.all(),
                xb.all(),
                None,
                yb.all(),
                rows,
                cols,
                64,
                false,
            )
        });
        if rows * cols <= 4864 * 896 {
            // Prefill path: dequantize into the f32 scratch + cuBLAS SGEMM, 512 tokens.
            let xb = buf_from(&g, &r.vec(cols * 512), "x512");
            let yb = g.alloc(rows * 4 * 512, "y512").unwrap();
            let wf = g.alloc(3 * rows * cols * 4, "wf").unwrap();
            let x_parts = g.alloc(3 * cols * 512 * 4, "x parts").unwrap();
            let partials = g
                .alloc(
                    crate::gpu::gemm::TF32X3_K_SLICES * rows * 512 * 4,
                    "partials",
                )
                .unwrap();
            let split = crate::gpu::gemm::Tf32Split {
                x_parts: x_parts.all(),
                partials: None,
            };
            let sliced = crate::gpu::gemm::Tf32Split {
                partials: Some(partials.all()),
                ..split
            };
            // Both arithmetics at three chunk sizes (where 3xTF32 repays its
            // splits: tensor_routes::PrefillGemm::tf32x3_for), and SGEMM at
            // the crossover with the mat-vec (GEMM_MIN_TOKENS in mod.rs: both
            // paths at 8 tokens).
            for n in [8, 128, 256, 512] {
                let splits: &[_] = if n == 8 {
                    &[None]
                } else {
                    &[None, Some(split), Some(sliced)]
                };
                for &sp in splits {
                    let name = match sp.map(|s| s.partials.is_some()) {
                        None => "gemm",
                        Some(false) => "3xtf32",
                        Some(true) => "3xtf32 split-K",
                    };
                    time(&format!("{label} {name} x{n}"), wq.len(), &|| {
                        g.gemm(
                            dt,
                            wb.all(),
                            xb.all(),
                            None,
                            yb.all(),
                            wf.all(),
                            sp,
                            rows,
                            cols,
                            n,
                            false,
                        )
                    });
                }
            }
            time(&format!("{label} dequant only"), rows * cols * 4, &|| {
                g.dequant(dt, wb.all(), wf.all(), rows, cols, false)
            });
            time(
                &format!("{label} dequant split only"),
                rows * cols * 12,
                &|| g.dequant(dt, wb.all(), wf.all(), rows, cols, true),
            );
            time(&format!("{label} matvec x8"), wq.len(), &|| {
                g.matvec(dt, wb.all(), xb.all(), None, yb.all(), rows, cols, 8, false)
            });
        }
    }
    // Decode q/k/v at Qwen shapes (q5_0, 896 wide, biases): one fused launch
    // against the three fused-norm launches it replaces.
    {
        let (dt, cols, rows) = (GgmlType::Q5_0, 896usize, [896usize, 128, 128]);
        let mut bufs = Vec::new();
        let mut bytes = 0;
        for &n in &rows {
            let mut wq = Vec::new();
            quant::quantize(dt, &r.vec(n * cols), &mut wq).unwrap();
            let mut wb = g.alloc(wq.len(), "w").unwrap();
            g.upload(&mut wb, 0, &wq).unwrap();
            bytes += wq.len();
            let bb = buf_from(&g, &r.vec(n), "b");
            let yb = g.alloc(4 * n, "y").unwrap();
            bufs.push((wb, bb, yb));
        }
        let (xb, nb) = (
            buf_from(&g, &r.vec(cols), "x"),
            buf_from(&g, &r.vec(cols), "nw"),
        );
        let p = |i: usize| crate::gpu::qkv::Proj {
            w: bufs[i].0.all(),
            bias: Some(bufs[i].1.all()),
            out: bufs[i].2.all(),
            rows: rows[i],
        };
        time("attn qkv q5_0 fused, 1 launch", bytes, &|| {
            g.qkv_norm(
                QkvFormats::one(dt),
                [p(0), p(1), p(2)],
                xb.all(),
                nb.all(),
                1e-6,
                cols,
            )
        });
        time("attn qkv q5_0 as 3 launches", bytes, &|| {
            for i in 0..3 {
                let q = p(i);
                let (x, n) = (xb.all(), nb.all());
                g.matvec_norm(dt, q.w, x, n, 1e-6, q.bias, q.out, q.rows, cols, false)?;
            }
            Ok(())
        });
    }
    let (nh, nkv, hd, max_ctx) = (14usize, 2usize, 64usize, 4352usize);
    let kc = buf_from(&g, &r.vec(max_ctx * nkv * hd), "kc");
    let vc = buf_from(&g, &r.vec(max_ctx * nkv * hd), "vc");
    let qb = buf_from(&g, &r.vec(nh * hd), "q");
    let kb = buf_from(&g, &r.vec(nkv * hd), "k");
    let ob = g.alloc(nh * hd * 4, "o").unwrap();
    let part = g
        .alloc(Gpu::attn_scratch_floats(nh, hd, max_ctx, 1) * 4, "part")
        .unwrap();
    // One row at a short, a middling and a long position, over the reach a
    // decode graph gives it (the next power of two), through the launcher's
    // choice, through the one-block-per-head kernel, and with the step's
    // RoPE and cache store fused in (what a decode step runs; rope_kv below
    // is the launch it saves).
    for pos in [100usize, 600, 4100] {
        let rows = TestRows::reversed(&g, max_ctx, pos, 1);
        let reach = (pos + 1).next_power_of_two().min(max_ctx);
        for (how, per_head, fused) in [
            ("", false, false),
            (" per head", true, false),
            (" + RoPE", false, true),
        ] {
            g.set_per_head_attention(per_head);
            let rope = StepRope {
                k: kb.all(),
                v: kb.all(),
                neox: true,
                base: 1e6,
            };
            time(
                &format!("attention pos {pos} (14q/2kv, hd 64){how}"),
                2 * (pos + 1) * nkv * hd * 4,
                &|| {
                    g.attention(
                        qb.all(),
                        kc.all(),
                        vc.all(),
                        ob.all(),
                        part.all(),
                        rows.rows(),
                        nh,
                        nkv,
                        hd,
                        max_ctx,
                        1,
                        reach,
                        fused.then_some(rope),
                    )
                },
            );
        }
        g.set_per_head_attention(false);
    }
    // Prefill attention of a 512-token chunk (causal): the first of a
    // prompt, and the last of a 4,096-token one.
    let (n, q512) = (512usize, buf_from(&g, &r.vec(512 * nh * hd), "q512"));
    let o512 = g.alloc(n * nh * hd * 4, "o512").unwrap();
    for (pos0, one_group) in [(0usize, false), (3584, false), (0, true), (3584, true)] {
        g.set_prefill_one_group(one_group);
        let rows0 = TestRows::reversed(&g, max_ctx, pos0, n);
        let groups = if one_group {
            "1 key group"
        } else {
            "2 key groups"
        };
        time(
            &format!("attn_prefill 512 tokens at pos {pos0}, {groups}"),
            0,
            &|| {
                g.attention_prefill(
                    q512.all(),
                    kc.all(),
                    vc.all(),
                    o512.all(),
                    rows0.rows(),
                    nh,
                    nkv,
                    hd,
                    n,
                )
            },
        );
    }
    g.set_prefill_one_group(false);
    let rows600 = TestRows::reversed(&g, max_ctx, 600, 1);
    time("rope_kv", 0, &|| {
        g.rope_kv(
            qb.all(),
            kb.all(),
            kb.all(),
            kc.all(),
            vc.all(),
            rows600.rows(),
            nh,
            nkv,
            hd,
            true,
            1e6,
            1,
        )
    });
    let xb = buf_from(&g, &r.vec(896), "x");
    time("rmsnorm 896", 896 * 8, &|| {
        g.rmsnorm(xb.all(), xb.all(), ob.all(), 896, 1, 1e-6)
    });
    let lb = buf_from(&g, &r.vec(151_936), "logits");
    let ib = g.alloc(4 * 1024, "ids").unwrap();
    let vb = g.alloc(4 * 1024, "vals").unwrap();
    let sb = g
        .alloc(
            crate::gpu::topk::topk_large_scratch_bytes(151_936),
            "scratch",
        )
        .unwrap();
    time("topk k=1 over 151936", 151_936 * 4, &|| {
        g.topk(lb.all(), 151_936, 1, sb.all(), ib.all(), vb.all())
    });
    time("topk k=16 over 151936", 151_936 * 4, &|| {
        g.topk(lb.all(), 151_936, 16, sb.all(), ib.all(), vb.all())
    });
    time("topk k=40 over 151936", 151_936 * 4, &|| {
        g.topk(lb.all(), 151_936, 40, sb.all(), ib.all(), vb.all())
    });
    time("topk radix k=40 over 151936", 151_936 * 4, &|| {
        g.topk_large(lb.all(), 151_936, 40, sb.all(), ib.all(), vb.all())
    });
    let big = g.alloc(489 << 20, "digest data").unwrap();
    let leaves = g
        .alloc(
            32 * (489usize << 20).div_ceil(crate::shard::digest::CHUNK_BYTES),
            "leaves",
        )
        .unwrap();
    time("sha256 leaves 489 MiB", 489 << 20, &|| {
        g.sha256_leaves(big.all(), crate::shard::digest::CHUNK_BYTES, leaves.all())
            .map(|_| ())
    });
}

/// Device time per launch of `f` (median of 5 batches of 50 launches, CUDA
/// events), printed as one `profile` line with the bandwidth `bytes` imply.
fn time_op(g: &Gpu, name: &str, bytes: usize, f: &dyn Fn() -> Result<()>) {
    f().unwrap();
    g.sync().unwrap();
    let mut v = Vec::new();
    for _ in 0..5 {
        let a = g.event().unwrap();
        for _ in 0..50 {
            f().unwrap();
        }
        let b = g.event().unwrap();
        b.synchronize().unwrap();
        v.push(a.elapsed_ms(&b).unwrap() as f64 * 1000.0 / 50.0);
    }
    v.sort_by(f64::total_cmp);
    let us = v[2];
    println!(
        "profile {name:<34} {us:>8.2} us  {:>7.1} GB/s",
        bytes as f64 / us / 1e3
    );
}

/// Device time of one batched decode step's operations at Qwen2.5-0.5B
/// shapes for 2 to 64 sequences (issue 11 point 7): where a step of many
/// rows spends its time. Not a correctness test: run explicitly with
/// `--ignored op_profile` on the GPU machine.
#[test]
#[ignore]
fn op_profile_batched_qwen_shapes() {
    let g = test_gpu("op_profile_batched");
    let mut r = Rng::fresh("op_profile_batched");
    let upload_quant = |r: &mut Rng, dt: GgmlType, rows: usize, cols: usize| {
        let mut wq = Vec::new();
        quant::quantize(dt, &r.vec(rows * cols), &mut wq).unwrap();
        let mut wb = g.alloc(wq.len(), "w").unwrap();
        g.upload(&mut wb, 0, &wq).unwrap();
        (wb, wq.len())
    };
    let big = 64usize;
    let xb = buf_from(&g, &r.vec(4864 * big), "x");
    let nb = buf_from(&g, &r.vec(4864), "nw");
    let scale = buf_from(&g, &r.vec(big), "scale");
    let yb = g.alloc(151_936 * 4 * big, "y").unwrap();
    let norm = crate::gpu::batched::RowNorm {
        weight: nb.all(),
        scale: scale.all(),
    };
    // At x32 and x64 the register-tiled `_tl` kernels serve the matrices
    // whose grid fills the card (`launch_shape::rows_tl_pays`); the "bt"
    // rows time the token-on-lane `_bt` kernels on the same card.
    for (batch, tiles) in [
        (2usize, true),
        (4, true),
        (8, true),
        (16, true),
        (32, true),
        (32, false),
        (big, true),
        (big, false),
    ] {
        g.set_tiles_off(!tiles);
        let tag = if tiles { "" } else { " bt" };
        for (dt, rows, cols, normed, label) in [
            (
                GgmlType::Q5_0,
                896usize,
                896usize,
                true,
                "q q5_0 896x896 +norm",
            ),
            (GgmlType::Q5_0, 128, 896, true, "k/v q5_0 128x896 +norm"),
            (GgmlType::Q5_0, 896, 896, false, "o q5_0 896x896"),
            (GgmlType::Q4K, 896, 4864, false, "down q4_K 896x4864"),
            (GgmlType::Q6K, 896, 4864, false, "down q6_K 896x4864"),
            (GgmlType::Q8_0, 151_936, 896, true, "lm_head q8_0 +norm"),
        ] {
            let (wb, bytes) = upload_quant(&mut r, dt, rows, cols);
            let n = normed.then_some(norm);
            time_op(&g, &format!("x{batch}{tag} {label}"), bytes, &|| {
                let (x, y) = (xb.all(), yb.all());
                g.matvec_rows(dt, wb.all(), x, n, None, y, rows, cols, batch, false)
            });
        }
        let (wg, bytes) = upload_quant(&mut r, GgmlType::Q5_0, 4864, 896);
        let (wu, _) = upload_quant(&mut r, GgmlType::Q5_0, 4864, 896);
        time_op(
            &g,
            &format!("x{batch}{tag} gate_up q5_0 4864x896"),
            2 * bytes,
            &|| {
                let (x, y) = (xb.all(), yb.all());
                g.gate_up_rows(
                    GgmlType::Q5_0,
                    wg.all(),
                    wu.all(),
                    x,
                    norm,
                    y,
                    4864,
                    896,
                    batch,
                )
            },
        );
        if tiles {
            // q, k and v in one launch (`_qkv_bst`, `Gpu::qkv_rows`), v in
            // q8_0 as in half the Qwen file's layers (the mixed kernel).
            let (wq, bq) = upload_quant(&mut r, GgmlType::Q5_0, 896, 896);
            let (wk, bk) = upload_quant(&mut r, GgmlType::Q5_0, 128, 896);
            let (wv, bv) = upload_quant(&mut r, GgmlType::Q8_0, 128, 896);
            let stride = 4 * 896 * big;
            time_op(
                &g,
                &format!("x{batch} qkv q5_0 (v q8_0) +norm"),
                bq + bk + bv,
                &|| {
                    let ws = [(&wq, 896), (&wk, 128), (&wv, 128)];
                    let p = |i: usize| Proj {
                        w: ws[i].0.all(),
                        bias: None,
                        out: yb.span(i * stride, 4 * ws[i].1 * batch).expect("y"),
                        rows: ws[i].1,
                    };
                    g.qkv_rows(
                        QkvFormats {
                            qk: GgmlType::Q5_0,
                            v: GgmlType::Q8_0,
                        },
                        [p(0), p(1), p(2)],
                        xb.all(),
                        norm,
                        896,
                        batch,
                    )
                },
            );
        }
        g.set_tiles_off(false);
        if !tiles {
            continue; // the rows below use no batched mat-vec
        }
        time_op(&g, &format!("x{batch} row_rms 896"), 0, &|| {
            g.row_rms(xb.all(), scale.all(), 896, batch, 1e-6)
        });
        let (nh, nkv, hd, max_ctx) = (14usize, 2usize, 64usize, 1024usize);
        let kc = buf_from(&g, &r.vec(max_ctx * nkv * hd), "kc");
        let vc = buf_from(&g, &r.vec(max_ctx * nkv * hd), "vc");
        let part = g
            .alloc(Gpu::attn_scratch_floats(nh, hd, max_ctx, batch) * 4, "part")
            .unwrap();
        // Rows at positions 200.. (a 128 + 128 sweep's middle).
        let rows = TestRows::reversed(&g, max_ctx, 200, batch);
        // Through the launcher's choice, then the one-block-per-head kernel.
        for per_head in [false, true] {
            g.set_per_head_attention(per_head);
            let how = if per_head { " per head" } else { "" };
            time_op(
                &g,
                &format!("x{batch} attention pos ~200+{how}"),
                0,
                &|| {
                    let (q, o) = (xb.all(), yb.all());
                    g.attention(
                        q,
                        kc.all(),
                        vc.all(),
                        o,
                        part.all(),
                        rows.rows(),
                        nh,
                        nkv,
                        hd,
                        max_ctx,
                        batch,
                        200 + batch,
                        None,
                    )
                },
            );
        }
        g.set_per_head_attention(false);
        time_op(&g, &format!("x{batch} rope_kv"), 0, &|| {
            let (q, k) = (xb.all(), yb.all());
            g.rope_kv(
                q,
                k,
                k,
                kc.all(),
                vc.all(),
                rows.rows(),
                nh,
                nkv,
                hd,
                true,
                1e6,
                batch,
            )
        });
    }
    // The tensor-core `_mm` kernels (3xTF32) on the same matrices, a lone
    // row included: where they pay decides which matrices take them.
    for batch in [1usize, 8, 32, big] {
        for (dt, rows, cols, normed, label) in [
            (
                GgmlType::Q5_0,
                896usize,
                896usize,
                true,
                "q q5_0 896x896 +norm",
            ),
            (GgmlType::Q5_0, 128, 896, true, "k/v q5_0 128x896 +norm"),
            (GgmlType::Q4K, 896, 4864, false, "down q4_K 896x4864"),
            (GgmlType::Q6K, 896, 4864, false, "down q6_K 896x4864"),
            (GgmlType::Q8_0, 151_936, 896, true, "lm_head q8_0 +norm"),
        ] {
            let (wb, bytes) = upload_quant(&mut r, dt, rows, cols);
            let n = normed.then_some(norm);
            time_op(&g, &format!("x{batch} mm {label}"), bytes, &|| {
                let (x, y) = (xb.all(), yb.all());
                g.matvec_rows_in(
                    RowsMath::Tensor,
                    dt,
                    wb.all(),
                    x,
                    n,
                    None,
                    y,
                    rows,
                    cols,
                    batch,
                    false,
                )
            });
        }
        let (wg, bytes) = upload_quant(&mut r, GgmlType::Q5_0, 4864, 896);
        let (wu, _) = upload_quant(&mut r, GgmlType::Q5_0, 4864, 896);
        time_op(
            &g,
            &format!("x{batch} mm gate_up q5_0 4864x896"),
            2 * bytes,
            &|| {
                let (x, y) = (xb.all(), yb.all());
                g.gate_up_rows_in(
                    RowsMath::Tensor,
                    GgmlType::Q5_0,
                    wg.all(),
                    wu.all(),
                    x,
                    norm,
                    y,
                    4864,
                    896,
                    batch,
                )
            },
        );
    }
    // Sampling as a step of 64 greedy sequences does it today: one top-k
    // and two downloads per row (host time included: wall clock).
    let ib = g.alloc(4 * 1024, "ids").unwrap();
    let vb = g.alloc(4 * 1024, "vals").unwrap();
    let sb = g
        .alloc(
            crate::gpu::topk::topk_large_scratch_bytes(151_936),
            "scratch",
        )
        .unwrap();
    g.sync().unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        for row in 0..big {
            let logits = yb.f32s(row * 151_936, 151_936).unwrap();
            g.topk(logits, 151_936, 1, sb.all(), ib.all(), vb.all())
                .unwrap();
            let _: Vec<i32> = g.download(&ib, 0, 1).unwrap();
            let _: Vec<f32> = g.download(&vb, 0, 1).unwrap();
        }
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / 10.0;
    println!(
        "profile {:<34} {us:>8.2} us  (wall, host included)",
        "x64 greedy picks, one row at a time"
    );
}
