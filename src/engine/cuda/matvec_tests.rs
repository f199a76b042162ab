//! GPU-vs-CPU checks of the mat-vec kernels (issue 5 points 3, 6, 10;
//! KERNEL-MATVEC, WORKER-4700, 4710): every block format through the plain,
//! batched and fused (RMSNorm, gate/up + SwiGLU) decode kernels and the
//! embedding gather, and the staged decode variant (`_st`) against both the
//! CPU and the plain kernel (bit-identical: same per-lane order of runs).
//! Same style and rules as `tests.rs`: fresh random inputs (seed printed),
//! stated tolerances printed as `rel err X (tol Y)`, ignored unless built for
//! the GPU suite (`cfg(gpu_tests)`).

use super::tests::{buf_from, poisoned, rel_err, test_gpu, Rng};
use super::*;
use crate::gpu::batched::{RowNorm, RowsMath};
use crate::gpu::ops::row_bytes;
use crate::gpu::qkv::{Proj, QkvFormats};
use crate::model::gguf::GgmlType;
use crate::model::quant;

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_matvec_and_embed_every_block_format() {
    let g = test_gpu("op_matvec");
    let mut r = Rng::fresh("op_matvec");
    let (rows, cols) = (67usize, 512usize);
    for (dt, batch) in supported_quant()
        .into_iter()
        .flat_map(|d| [(d, 1usize), (d, 11usize)])
    {
        let wf = r.vec(rows * cols);
        let mut wq = Vec::new();
        quant::quantize(dt, &wf, &mut wq).expect("quantize");
        let mut deq = vec![0f32; rows * cols];
        quant::dequantize(dt, &wq, &mut deq).expect("dequantize");
        let x = r.vec(cols * batch);
        let bias = r.vec(rows);
        let y0 = r.vec(rows * batch);
        let wb = {
            let mut b = g.alloc(wq.len(), "w").unwrap();
            g.upload(&mut b, 0, &wq).unwrap();
            b
        };
        let (xb, bb, yb) = (
            buf_from(&g, &x, "x"),
            buf_from(&g, &bias, "bias"),
            buf_from(&g, &y0, "y"),
        );
        g.matvec(
            dt,
            wb.all(),
            xb.all(),
            Some(bb.all()),
            yb.all(),
            rows,
            cols,
            batch,
            true,
        )
        .unwrap();
        let got: Vec<f32> = g.download(&yb, 0, rows * batch).unwrap();
        let mut want = vec![0f64; rows * batch];
        for b in 0..batch {
            for i in 0..rows {
                let dot: f64 = (0..cols)
                    .map(|j| deq[i * cols + j] as f64 * x[b * cols + j] as f64)
                    .sum();
                want[b * rows + i] = dot + bias[i] as f64 + y0[b * rows + i] as f64;
            }
        }
        let e = rel_err(&got, &want);
        println!(
            "matvec {:>5} batch {batch:>2}: rel err {e:.2e} (tol 1e-5)",
            dt.name()
        );
        assert!(e < 1e-5, "matvec {} rel err {e}", dt.name());

        if batch == 1 {
            // Fused RMSNorm + mat-vec, and fused norm + gate/up + SwiGLU (decode path).
            let nw = r.vec(cols);
            let ms: f64 = x[..cols].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let sc = 1.0 / (ms + 1e-5).sqrt();
            let xn: Vec<f64> = (0..cols).map(|j| x[j] as f64 * sc * nw[j] as f64).collect();
            let dot = |m: &[f32], i: usize| -> f64 {
                (0..cols).map(|j| m[i * cols + j] as f64 * xn[j]).sum()
            };
            let nb = buf_from(&g, &nw, "nw");
            let yb = poisoned(&g, rows, "y");
            g.matvec_norm(
                dt,
                wb.all(),
                xb.all(),
                nb.all(),
                1e-5,
                Some(bb.all()),
                yb.all(),
                rows,
                cols,
                false,
            )
            .unwrap();
            let got: Vec<f32> = g.download(&yb, 0, rows).unwrap();
            let want: Vec<f64> = (0..rows).map(|i| dot(&deq, i) + bias[i] as f64).collect();
            let e = rel_err(&got, &want);
            println!(
                "matvec+rmsnorm {:>5}: rel err {e:.2e} (tol 1e-5)",
                dt.name()
            );
            assert!(e < 1e-5, "matvec_norm {} rel err {e}", dt.name());
            let mut uq = Vec::new();
            quant::quantize(dt, &r.vec(rows * cols), &mut uq).unwrap();
            let mut udeq = vec![0f32; rows * cols];
            quant::dequantize(dt, &uq, &mut udeq).unwrap();
            let mut ub = g.alloc(uq.len(), "wu").unwrap();
            g.upload(&mut ub, 0, &uq).unwrap();
            g.gate_up(
                dt,
                wb.all(),
                ub.all(),
                xb.all(),
                nb.all(),
                1e-5,
                yb.all(),
                rows,
                cols,
            )
            .unwrap();
            let got: Vec<f32> = g.download(&yb, 0, rows).unwrap();
            let want: Vec<f64> = (0..rows)
                .map(|i| {
                    let (gg, uu) = (dot(&deq, i), dot(&udeq, i));
                    gg / (1.0 + (-gg).exp()) * uu
                })
                .collect();
            let e = rel_err(&got, &want);
            println!(
                "rmsnorm+gate/up+swiglu {:>5}: rel err {e:.2e} (tol 1e-5)",
                dt.name()
            );
            assert!(e < 1e-5, "gate_up {} rel err {e}", dt.name());
        }
        // Embedding rows: the same dequantization, token ids from device memory.
        let toks = [3i32, (rows - 1) as i32, 0];
        let mut tb = g.alloc(12, "tok").unwrap();
        g.upload(&mut tb, 0, &toks).unwrap();
        let ob = poisoned(&g, cols * 3, "emb");
        g.embed(dt, wb.all(), rows, tb.all(), ob.all(), cols, 3)
            .unwrap();
        let got: Vec<f32> = g.download(&ob, 0, cols * 3).unwrap();
        let want: Vec<f64> = toks
            .iter()
            .flat_map(|&t| {
                deq[t as usize * cols..(t as usize + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
            })
            .collect();
        let e = rel_err(&got, &want);
        println!("embed  {:>5}: rel err {e:.2e} (tol 1e-6)", dt.name());
        assert!(e < 1e-6, "embed {} rel err {e}", dt.name());
        assert_eq!(row_bytes(dt, cols).unwrap() * rows, wq.len());
    }
}

/// The staged decode kernels (`_st`) on what the test above does not reach:
/// more rows than one grid holds (1024 blocks x 8 warps, so the grid-stride
/// loop and the next-row prefetch run), rows of more than one 1024-element
/// chunk (the last one partial), and rows that do not start 4-byte aligned
/// (an odd number of 32-element runs, and the weights placed 2 bytes into
/// their buffer). Mat-vec must be bit-identical to the plain kernel and all
/// three (mat-vec, fused norm, fused gate/up) within 1e-5 of the CPU.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_matvec_staged_grid_stride_chunks_and_alignment() {
    let g = test_gpu("op_matvec_staged");
    let mut r = Rng::fresh("op_matvec_staged");
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::F16,
    ];
    for dt in types.into_iter().filter(|t| supported_quant().contains(t)) {
        let k = dt.block_size() == 256;
        for (rows, cols) in [
            (8192 + 77, if k { 768 } else { 800 }),
            (45, if k { 1280 } else { 1312 }),
        ] {
            let mut wq = Vec::new();
            quant::quantize(dt, &r.vec(rows * cols), &mut wq).expect("quantize");
            let mut deq = vec![0f32; rows * cols];
            quant::dequantize(dt, &wq, &mut deq).expect("dequantize");
            let mut uq = Vec::new();
            quant::quantize(dt, &r.vec(rows * cols), &mut uq).expect("quantize");
            let mut udeq = vec![0f32; rows * cols];
            quant::dequantize(dt, &uq, &mut udeq).expect("dequantize");
            // Both matrices start 2 bytes into their buffers.
            let mut wb = g.alloc(wq.len() + 2, "w").unwrap();
            g.upload(&mut wb, 2, &wq).unwrap();
            let mut ub = g.alloc(uq.len() + 2, "wu").unwrap();
            g.upload(&mut ub, 2, &uq).unwrap();
            let (w, u) = (wb.span(2, wq.len()).unwrap(), ub.span(2, uq.len()).unwrap());
            let (x, bias, y0, nw) = (r.vec(cols), r.vec(rows), r.vec(rows), r.vec(cols));
            let (xb, bb, nb) = (
                buf_from(&g, &x, "x"),
                buf_from(&g, &bias, "bias"),
                buf_from(&g, &nw, "nw"),
            );
            let (ys, yp) = (buf_from(&g, &y0, "ys"), buf_from(&g, &y0, "yp"));
            let a = |y| (dt, w, xb.all(), Some(bb.all()), y, rows, cols, 1, true);
            g.matvec_variant(a(ys.all()), true).unwrap();
            g.matvec_variant(a(yp.all()), false).unwrap();
            let got: Vec<f32> = g.download(&ys, 0, rows).unwrap();
            let plain: Vec<f32> = g.download(&yp, 0, rows).unwrap();
            let same = got
                .iter()
                .zip(&plain)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            let dot = |m: &[f32], v: &[f64], i: usize| -> f64 {
                (0..cols).map(|j| m[i * cols + j] as f64 * v[j]).sum()
            };
            let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let want: Vec<f64> = (0..rows)
                .map(|i| dot(&deq, &xd, i) + bias[i] as f64 + y0[i] as f64)
                .collect();
            let e = rel_err(&got, &want);
            println!(
                "staged matvec {:>5} {rows}x{cols}: rel err {e:.2e} (tol 1e-5), bit-identical to plain: {same}",
                dt.name()
            );
            assert!(e < 1e-5, "staged matvec {} rel err {e}", dt.name());
            assert!(same, "staged and plain matvec {} differ", dt.name());

            let ms: f64 = xd.iter().map(|v| v * v).sum::<f64>() / cols as f64;
            let sc = 1.0 / (ms + 1e-5).sqrt();
            let xn: Vec<f64> = (0..cols).map(|j| xd[j] * sc * nw[j] as f64).collect();
            let yb = poisoned(&g, rows, "y");
            g.matvec_norm(
                dt,
                w,
                xb.all(),
                nb.all(),
                1e-5,
                None,
                yb.all(),
                rows,
                cols,
                false,
            )
            .unwrap();
            let got: Vec<f32> = g.download(&yb, 0, rows).unwrap();
            let want: Vec<f64> = (0..rows).map(|i| dot(&deq, &xn, i)).collect();
            let e = rel_err(&got, &want);
            println!(
                "staged matvec+rmsnorm {:>5} {rows}x{cols}: rel err {e:.2e} (tol 1e-5)",
                dt.name()
            );
            assert!(e < 1e-5, "staged matvec_norm {} rel err {e}", dt.name());

            let yb = poisoned(&g, rows, "y");
            g.gate_up(dt, w, u, xb.all(), nb.all(), 1e-5, yb.all(), rows, cols)
                .unwrap();
            let got: Vec<f32> = g.download(&yb, 0, rows).unwrap();
            let want: Vec<f64> = (0..rows)
                .map(|i| {
                    let (gg, uu) = (dot(&deq, &xn, i), dot(&udeq, &xn, i));
                    gg / (1.0 + (-gg).exp()) * uu
                })
                .collect();
            let e = rel_err(&got, &want);
            println!(
                "staged rmsnorm+gate/up+swiglu {:>5} {rows}x{cols}: rel err {e:.2e} (tol 1e-5)",
                dt.name()
            );
            assert!(e < 1e-5, "staged gate_up {} rel err {e}", dt.name());
        }
    }
}

/// Fused decode q/k/v (one launch over the concatenated rows, with biases)
/// at Qwen2.5-0.5B and SmolLM2 widths: bit-identical to three fused-norm
/// mat-vecs, and within 1e-5 of the CPU.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_qkv_fused_matches_three_matvecs() {
    let g = test_gpu("op_qkv");
    let mut r = Rng::fresh("op_qkv");
    use GgmlType::{Q4K, Q4_1, Q5_0, Q6K, Q8_0};
    // The last two: v in its own format (the mixed kernels), as in half the
    // layers of a Q4_K_M file.
    for (dt, vt, cols, rows) in [
        (Q5_0, Q5_0, 896usize, [896usize, 128, 128]),
        (Q8_0, Q8_0, 896, [896, 128, 128]),
        (Q4_1, Q4_1, 576, [576, 192, 192]),
        (Q4K, Q4K, 768, [768, 256, 256]),
        (Q6K, Q6K, 1280, [1280, 160, 160]),
        (Q5_0, Q8_0, 896, [896, 128, 128]),
        (Q4K, Q6K, 1536, [1536, 256, 256]),
    ] {
        let f = QkvFormats::of(dt, dt, vt).expect("a fused pair");
        let format = |i: usize| f.of_proj(i);
        let x = r.vec(cols);
        let nw = r.vec(cols);
        let (xb, nb) = (buf_from(&g, &x, "x"), buf_from(&g, &nw, "nw"));
        let mut deq = Vec::new();
        let mut wbs = Vec::new();
        let mut bbs = Vec::new();
        let mut biases = Vec::new();
        for (i, &n) in rows.iter().enumerate() {
            let mut wq = Vec::new();
            quant::quantize(format(i), &r.vec(n * cols), &mut wq).expect("quantize");
            let mut d = vec![0f32; n * cols];
            quant::dequantize(format(i), &wq, &mut d).expect("dequantize");
            let mut wb = g.alloc(wq.len(), "w").unwrap();
            g.upload(&mut wb, 0, &wq).unwrap();
            let b = r.vec(n);
            bbs.push(buf_from(&g, &b, "bias"));
            biases.push(b);
            wbs.push(wb);
            deq.push(d);
        }
        let fused: Vec<DeviceBuffer> = rows.iter().map(|&n| poisoned(&g, n, "yf")).collect();
        let sep: Vec<DeviceBuffer> = rows.iter().map(|&n| poisoned(&g, n, "ys")).collect();
        // k gets no bias, as in models without one on some projections.
        let bias_of = |i: usize| (i != 1).then(|| bbs[i].all());
        let p = |i: usize| Proj {
            w: wbs[i].all(),
            bias: bias_of(i),
            out: fused[i].all(),
            rows: rows[i],
        };
        g.qkv_norm(f, [p(0), p(1), p(2)], xb.all(), nb.all(), 1e-6, cols)
            .unwrap();
        for i in 0..3 {
            let (w, y) = (wbs[i].all(), sep[i].all());
            g.matvec_norm(
                format(i),
                w,
                xb.all(),
                nb.all(),
                1e-6,
                bias_of(i),
                y,
                rows[i],
                cols,
                false,
            )
            .unwrap();
        }
        let ms: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
        let sc = 1.0 / (ms + 1e-6).sqrt();
        let xn: Vec<f64> = (0..cols).map(|j| x[j] as f64 * sc * nw[j] as f64).collect();
        for i in 0..3 {
            let got: Vec<f32> = g.download(&fused[i], 0, rows[i]).unwrap();
            let three: Vec<f32> = g.download(&sep[i], 0, rows[i]).unwrap();
            let same = got
                .iter()
                .zip(&three)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            let want: Vec<f64> = (0..rows[i])
                .map(|rr| {
                    let dot: f64 = (0..cols)
                        .map(|j| deq[i][rr * cols + j] as f64 * xn[j])
                        .sum();
                    dot + if i != 1 { biases[i][rr] as f64 } else { 0.0 }
                })
                .collect();
            let e = rel_err(&got, &want);
            let name = format(i).name();
            println!(
                "qkv fused {name:>5} part {i} {}x{cols} (v {}): rel err {e:.2e} (tol 1e-5), bit-identical to separate: {same}",
                rows[i],
                vt.name()
            );
            assert!(e < 1e-5, "qkv {name} part {i} rel err {e}");
            assert!(same, "qkv {name} part {i} differs from matvec_norm");
        }
    }
    qkv_short_output_is_refused(&g, &mut r);
}

/// An output window one float short of its projection is refused before any
/// launch, by the lone (`qkv_norm`) and the batched (`qkv_rows`, 4 rows:
/// the `_qkv_bst` route) fused launchers alike, and no output changes.
fn qkv_short_output_is_refused(g: &Gpu, r: &mut Rng) {
    let (dt, rows, cols, batch) = (GgmlType::Q8_0, 128usize, 896usize, 4usize);
    let mut wq = Vec::new();
    quant::quantize(dt, &r.vec(rows * cols), &mut wq).expect("quantize");
    let mut wb = g.alloc(wq.len(), "w").unwrap();
    g.upload(&mut wb, 0, &wq).unwrap();
    let (xb, nb) = (
        buf_from(g, &r.vec(batch * cols), "x"),
        buf_from(g, &r.vec(cols), "nw"),
    );
    let scale = buf_from(g, &vec![1.0f32; batch], "scale");
    for (n, how) in [(1usize, "qkv_norm"), (batch, "qkv_rows")] {
        let outs = [
            poisoned(g, rows * n, "yq"),
            poisoned(g, rows * n - 1, "yk"),
            poisoned(g, rows * n, "yv"),
        ];
        let p = |i: usize| Proj {
            w: wb.all(),
            bias: None,
            out: outs[i].all(),
            rows,
        };
        let got = if n == 1 {
            g.qkv_norm(
                QkvFormats::one(dt),
                [p(0), p(1), p(2)],
                xb.all(),
                nb.all(),
                1e-6,
                cols,
            )
        } else {
            let norm = RowNorm {
                weight: nb.all(),
                scale: scale.all(),
            };
            g.qkv_rows(
                QkvFormats::one(dt),
                [p(0), p(1), p(2)],
                xb.all(),
                norm,
                cols,
                n,
            )
        };
        let err = got.expect_err("a k output one float short must be refused");
        assert!(
            err.message().contains("q/k/v out"),
            "{how}: {}",
            err.message()
        );
        for (i, o) in outs.iter().enumerate() {
            let len = rows * n - usize::from(i == 1);
            let y: Vec<f32> = g.download(o, 0, len).unwrap();
            assert!(
                y.iter().all(|v| v.is_nan()),
                "{how} wrote output {i} before refusing"
            );
        }
        println!("qkv {how}: a short k output window is refused, nothing written");
    }
}

/// A batched decode step's rows get, bit for bit, what the lone-vector
/// decode kernels give each row (issue 11 point 5): `matvec_rows` with a
/// norm vs `matvec_norm`, `gate_up_rows` vs `gate_up`, and `matvec_rows`
/// without one vs `matvec` of one vector, for every block format, at batch
/// sizes that take the staged `_bst` kernels (below BT_MIN_BATCH = 17
/// rows: 3, and 9, whose 4,864-wide rows leave room for one or two staged
/// vectors a block, so many token groups), that take the token-on-lane
/// `_bt` kernels (20 and 40: two and three groups of 16 lanes, the last
/// part-filled, row counts that leave a block part-filled, a width of 5
/// chunks whose last is partial, a width of 24 runs that leaves warps idle)
/// and the tiled `_tl` kernels (33 rows over 2,200 output rows). Widths are
/// whole 256-element blocks, as K-quants need.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_batched_rows_are_bit_identical_to_lone_rows() {
    let g = test_gpu("op_batched_rows");
    let mut r = Rng::fresh("op_batched_rows");
    for (dt, rows, cols, batch) in supported_quant().into_iter().flat_map(|d| {
        [
            (d, 67usize, 512usize, 3usize),
            (d, 130, 1024, 20),
            (d, 40, 4864, 9),
            (d, 70, 768, 40),
            // Enough row blocks to fill a 132-SM card: the `_tl` kernels
            // (`launch_shape::rows_tl_pays`).
            (d, 2200, 512, 33),
        ]
    }) {
        let case = RowsCase::random(&mut r, dt, rows, cols, batch);
        let (gn, gg, ga) = case.run_batched(&g);
        let (wb, ub) = case.upload_weights(&g);
        let (x, y0) = (&case.x, &case.y0);
        let (nb, bb) = (
            buf_from(&g, &case.nw, "nw"),
            buf_from(&g, &case.bias, "bias"),
        );
        // Each row alone through the decode kernels.
        let (mut wn, mut wg, mut wa) = (Vec::new(), Vec::new(), Vec::new());
        for t in 0..batch {
            let xt = buf_from(&g, &x[t * cols..(t + 1) * cols], "xt");
            let o = poisoned(&g, rows, "o");
            g.matvec_norm(
                dt,
                wb.all(),
                xt.all(),
                nb.all(),
                1e-5,
                Some(bb.all()),
                o.all(),
                rows,
                cols,
                false,
            )
            .unwrap();
            wn.extend(got_row(&g, &o, rows));
            let o = poisoned(&g, rows, "o");
            g.gate_up(
                dt,
                wb.all(),
                ub.all(),
                xt.all(),
                nb.all(),
                1e-5,
                o.all(),
                rows,
                cols,
            )
            .unwrap();
            wg.extend(got_row(&g, &o, rows));
            let o = buf_from(&g, &y0[t * rows..(t + 1) * rows], "o");
            g.matvec(dt, wb.all(), xt.all(), None, o.all(), rows, cols, 1, true)
                .unwrap();
            wa.extend(got_row(&g, &o, rows));
        }
        println!(
            "batched rows {:>5} {rows}x{cols} batch {batch}: normed {}, gate/up {}, plain {} (bit-identical to lone rows)",
            dt.name(),
            gn == wn,
            gg == wg,
            ga == wa
        );
        assert!(gn == wn, "{} normed rows differ from lone rows", dt.name());
        assert!(gg == wg, "{} gate/up rows differ from lone rows", dt.name());
        assert!(ga == wa, "{} plain rows differ from lone rows", dt.name());
    }
}

/// The tensor-core mat-vecs (`_mm`, issue 11 point 7) give every token row
/// the bits it gets alone (batch 1), normed with bias, gate/up + SwiGLU and
/// plain accumulating, in every block format, at batch sizes of one and of
/// several 8-token tiles, a part-filled and a full 64-token block and two
/// blocks (65), at widths of one partial chunk, whole chunks and a partial
/// last one, and row counts that leave a block part-filled; and the normed
/// product agrees with float64 (3xTF32 is about FP32 accurate).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_tensor_rows_are_bit_identical_to_lone_rows() {
    let g = test_gpu("op_tensor_rows");
    let mut r = Rng::fresh("op_tensor_rows");
    for (dt, rows, cols, batch) in supported_quant().into_iter().flat_map(|d| {
        [
            (d, 67usize, 512usize, 3usize),
            (d, 130, 1024, 13),
            (d, 40, 4864, 64),
            (d, 70, 768, 65),
            (d, 2200, 512, 33),
        ]
    }) {
        if !g.rows_mm_ready(dt) {
            panic!("{} has no tensor-core mat-vec on this GPU", dt.name());
        }
        let case = RowsCase::random(&mut r, dt, rows, cols, batch);
        let all = case.run_rows(&g, RowsMath::Tensor);
        let (mut wn, mut wg, mut wa) = (Vec::new(), Vec::new(), Vec::new());
        for t in 0..batch {
            let (n, gu, a) = case.token(t).run_rows(&g, RowsMath::Tensor);
            wn.extend(n);
            wg.extend(gu);
            wa.extend(a);
        }
        let e = case.normed_error(&all.0, 1e-5);
        println!(
            "tensor rows {:>5} {rows}x{cols} batch {batch}: normed {}, gate/up {}, plain {} (bit-identical to lone rows), normed rel err {e:.1e}",
            dt.name(),
            all.0 == wn,
            all.1 == wg,
            all.2 == wa
        );
        assert!(e < 1e-5, "{} tensor normed rel err {e}", dt.name());
        assert!(
            all.0 == wn,
            "{} tensor normed rows differ from lone rows",
            dt.name()
        );
        assert!(
            all.1 == wg,
            "{} tensor gate/up rows differ from lone rows",
            dt.name()
        );
        assert!(
            all.2 == wa,
            "{} tensor plain rows differ from lone rows",
            dt.name()
        );
    }
}

/// Random inputs of the batched decode kernels (`matvec_rows.cu`) for one
/// block format and shape: weights (two matrices, for gate/up), the rows'
/// activations, a norm weight, a bias and the values a plain accumulating
/// product adds to. The kernel emulator's tests (`gpu::emu`) use it too.
pub(crate) struct RowsCase {
    pub(crate) dt: GgmlType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) batch: usize,
    pub(crate) wq: Vec<u8>,
    pub(crate) uq: Vec<u8>,
    pub(crate) x: Vec<f32>,
    pub(crate) nw: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) y0: Vec<f32>,
}

impl RowsCase {
    pub(crate) fn random(
        r: &mut Rng,
        dt: GgmlType,
        rows: usize,
        cols: usize,
        batch: usize,
    ) -> Self {
        let (wf, uf) = (r.vec(rows * cols), r.vec(rows * cols));
        let (mut wq, mut uq) = (Vec::new(), Vec::new());
        quant::quantize(dt, &wf, &mut wq).expect("quantize");
        quant::quantize(dt, &uf, &mut uq).expect("quantize");
        RowsCase {
            dt,
            rows,
            cols,
            batch,
            wq,
            uq,
            x: r.vec(cols * batch),
            nw: r.vec(cols),
            bias: r.vec(rows),
            y0: r.vec(rows * batch),
        }
    }

    fn upload_weights(&self, g: &Gpu) -> (DeviceBuffer, DeviceBuffer) {
        let up = |q: &[u8], what: &str| {
            let mut b = g.alloc(q.len(), what).unwrap();
            g.upload(&mut b, 0, q).unwrap();
            b
        };
        (up(&self.wq, "w"), up(&self.uq, "u"))
    }

    /// Token row `t` alone: the same weights, norm and bias.
    pub(crate) fn token(&self, t: usize) -> RowsCase {
        let (rows, cols) = (self.rows, self.cols);
        RowsCase {
            batch: 1,
            wq: self.wq.clone(),
            uq: self.uq.clone(),
            x: self.x[t * cols..(t + 1) * cols].to_vec(),
            nw: self.nw.clone(),
            bias: self.bias.clone(),
            y0: self.y0[t * rows..(t + 1) * rows].to_vec(),
            ..*self
        }
    }

    /// Relative error of normed product bits `got` (with bias, every token
    /// row) against float64 over the dequantized weights.
    pub(crate) fn normed_error(&self, got: &[u32], eps: f32) -> f64 {
        let (rows, cols) = (self.rows, self.cols);
        let mut deq = vec![0f32; rows * cols];
        quant::dequantize(self.dt, &self.wq, &mut deq).expect("dequantize");
        let (mut num, mut den) = (0f64, 0f64);
        for t in 0..self.batch {
            let x = &self.x[t * cols..(t + 1) * cols];
            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let sc = 1.0 / (ms + eps as f64).sqrt();
            for r in 0..rows {
                let dot: f64 = (0..cols)
                    .map(|j| deq[r * cols + j] as f64 * x[j] as f64 * sc * self.nw[j] as f64)
                    .sum();
                let want = dot + self.bias[r] as f64;
                let g = f32::from_bits(got[t * rows + r]) as f64;
                num += (g - want).powi(2);
                den += want.powi(2);
            }
        }
        (num / den.max(1e-30)).sqrt()
    }

    /// The bits of the three batched kernels' outputs on `g`: normed with
    /// bias, gate/up + SwiGLU, and plain accumulating.
    fn run_batched(&self, g: &Gpu) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        self.run_rows(g, RowsMath::Fp32)
    }

    /// [`RowsCase::run_batched`] in the arithmetic `math`.
    fn run_rows(&self, g: &Gpu, math: RowsMath) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let (dt, rows, cols, batch) = (self.dt, self.rows, self.cols, self.batch);
        let (wb, ub) = self.upload_weights(g);
        let (xb, nb, bb) = (
            buf_from(g, &self.x, "x"),
            buf_from(g, &self.nw, "nw"),
            buf_from(g, &self.bias, "bias"),
        );
        let scale = poisoned(g, batch, "scale");
        g.row_rms(xb.all(), scale.all(), cols, batch, 1e-5).unwrap();
        let norm = crate::gpu::batched::RowNorm {
            weight: nb.all(),
            scale: scale.all(),
        };
        let yn = poisoned(g, rows * batch, "yn");
        g.matvec_rows_in(
            math,
            dt,
            wb.all(),
            xb.all(),
            Some(norm),
            Some(bb.all()),
            yn.all(),
            rows,
            cols,
            batch,
            false,
        )
        .unwrap();
        let yg = poisoned(g, rows * batch, "yg");
        g.gate_up_rows_in(
            math,
            dt,
            wb.all(),
            ub.all(),
            xb.all(),
            norm,
            yg.all(),
            rows,
            cols,
            batch,
        )
        .unwrap();
        let ya = buf_from(g, &self.y0, "ya");
        g.matvec_rows_in(
            math,
            dt,
            wb.all(),
            xb.all(),
            None,
            None,
            ya.all(),
            rows,
            cols,
            batch,
            true,
        )
        .unwrap();
        (
            got_row(g, &yn, rows * batch),
            got_row(g, &yg, rows * batch),
            got_row(g, &ya, rows * batch),
        )
    }
}

/// The kernels NVRTC compiles at start-up (the fallback) compute the bits
/// the binary's built-in images compute, for every block format through the
/// batched kernels. NVRTC 13.0 does not give the same bytes for
/// `matvec_rows.cu` on every machine or every run (its register numbering
/// varies), so the bytes cannot show this; the outputs do.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn op_nvrtc_images_compute_the_built_in_bits_for_every_format() {
    let built_in = test_gpu("op_nvrtc_rows");
    let nvrtc = super::tests::nvrtc_only_gpu();
    let mut r = Rng::fresh("op_nvrtc_rows");
    let mut cases = 0;
    for (dt, rows, cols, batch) in supported_quant().into_iter().flat_map(|d| {
        [
            (d, 130usize, 1024usize, 13usize),
            (d, 70, 768, 40),
            (d, 40, 4864, 2),
        ]
    }) {
        let case = RowsCase::random(&mut r, dt, rows, cols, batch);
        let (a, b) = (case.run_batched(&built_in), case.run_batched(&nvrtc));
        assert!(
            a.0 == b.0,
            "{} normed rows differ between the built-in and NVRTC's images",
            dt.name()
        );
        assert!(
            a.1 == b.1,
            "{} gate/up rows differ between the built-in and NVRTC's images",
            dt.name()
        );
        assert!(
            a.2 == b.2,
            "{} plain rows differ between the built-in and NVRTC's images",
            dt.name()
        );
        cases += 1;
    }
    println!(
        "NVRTC images ({}): batched normed, gate/up and plain rows bit-identical to the built-in images in {cases} (format, shape) cases",
        nvrtc.kernels.describe()
    );
}

fn got_row(g: &Gpu, b: &DeviceBuffer, n: usize) -> Vec<u32> {
    let v: Vec<f32> = g.download(b, 0, n).unwrap();
    v.into_iter().map(f32::to_bits).collect()
}
