//! Tests of the large-k device top-k (KERNEL-SAMPLE, WORKER-4710): the device
//! result must equal `engine::sampler::top_candidates` exactly (ids and value
//! bits) on fresh random logits with many exact ties, ±0, ±inf and NaN.
//! GPU tests are ignored unless built for the GPU suite (`cfg(gpu_tests)`,
//! build.rs), and fail there without a usable GPU. The NVRTC test compiles
//! `cuda/topk.cu` here (no GPU).
//! Seeds are printed; replay with WORKER_ORCD_TEST_SEED.

use super::*;
use crate::engine::sampler::top_candidates;
use crate::gpu::compile::{compile_cubin, nvrtc_present, translation_unit, KERNEL_SOURCES};

use crate::gpu::test_support::{test_gpu, Rng};

/// Logits in one of four shapes: coarse values (many exact ties) with
/// specials sprinkled in; continuous values; a masked vocabulary (almost all
/// -inf); all NaN. Specials: ±0, ±inf, NaN of both signs and odd payloads.
fn logits(r: &mut Rng, n: usize, shape: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let p = r.unit();
            match shape {
                0 | 1 if p < 0.04 => f32::NEG_INFINITY,
                0 | 1 if p < 0.06 => {
                    let sign = (r.u() & 1) << 31;
                    f32::from_bits(0x7f80_0001 | sign as u32 | (r.u() as u32 & 0x003f_ffff))
                }
                0 | 1 if p < 0.065 => f32::INFINITY,
                0 | 1 if p < 0.08 => {
                    if r.u() & 1 == 0 {
                        0.0
                    } else {
                        -0.0
                    }
                }
                0 => ((r.unit() * 2.0 - 1.0) * 12.0).round() / 4.0,
                1 => (r.unit() * 2.0 - 1.0) * 30.0,
                2 if p < 0.001 => (r.unit() * 16.0).round(),
                2 => f32::NEG_INFINITY,
                _ => f32::NAN,
            }
        })
        .collect()
}

fn first_mismatch(want: &[(u32, f32)], ids: &[i32], vals: &[f32]) -> Option<String> {
    if ids.len() != want.len() || vals.len() != want.len() {
        return Some(format!(
            "lengths differ: host {}, device {} ids / {} vals",
            want.len(),
            ids.len(),
            vals.len()
        ));
    }
    for (i, &(id, v)) in want.iter().enumerate() {
        if ids[i] as u32 != id || vals[i].to_bits() != v.to_bits() {
            return Some(format!(
                "rank {i}: host ({id}, {v:?} = {:#010x}), device ({}, {:?} = {:#010x})",
                v.to_bits(),
                ids[i],
                vals[i],
                vals[i].to_bits()
            ));
        }
    }
    None
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn topk_large_matches_the_sampler_on_random_logits() {
    let test = "topk_large_matches_the_sampler";
    let g = test_gpu(test);
    let mut r = Rng::fresh(test);
    let max_n = 151_936;
    // One scratch for every call: the kernels must re-arm their own counters.
    let scratch = g
        .alloc(topk_large_scratch_bytes(max_n), "top-k scratch")
        .expect("alloc scratch");
    let mut lb = g.alloc(4 * max_n, "logits").expect("alloc logits");
    let ib = g.alloc(4 * TOPK_LARGE_MAX_K, "ids").expect("alloc ids");
    let vb = g.alloc(4 * TOPK_LARGE_MAX_K, "vals").expect("alloc vals");
    let mut checked = 0;
    for n in [1000usize, 49_152, 151_936] {
        for shape in 0..4 {
            let l = logits(&mut r, n, shape);
            g.upload(&mut lb, 0, &l).expect("upload");
            for k in [1usize, 17, 40, 256, 1024] {
                let k = k.min(n);
                let want = top_candidates(&l, k);
                g.topk_large(
                    lb.f32s(0, n).unwrap(),
                    n,
                    k,
                    scratch.all(),
                    ib.all(),
                    vb.all(),
                )
                .expect("topk_large");
                let ids: Vec<i32> = g.download(&ib, 0, k).expect("ids");
                let vals: Vec<f32> = g.download(&vb, 0, k).expect("vals");
                if let Some(m) = first_mismatch(&want, &ids, &vals) {
                    panic!("{test}: n = {n}, k = {k}, shape {shape}: {m}");
                }
                checked += 1;
            }
        }
    }
    println!("{test}: {checked} (n, k, shape) cases identical to the host selection");
}

/// Many rows in one launch (a step's sequences): each row's candidates are
/// the host selection of that row alone, for both kernels, rows of every
/// logits shape side by side, one scratch reused (issue 11 point 7).
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn topk_rows_select_each_row_as_alone() {
    let test = "topk_rows_select_each_row_as_alone";
    let g = test_gpu(test);
    let mut r = Rng::fresh(test);
    // 3 blocks per row: an odd word count before rounding, so a row's
    // scratch would start 4-byte aligned without it (u64 candidates).
    let (n, rows) = (9_000usize, 7usize);
    let all: Vec<Vec<f32>> = (0..rows).map(|i| logits(&mut r, n, i % 4)).collect();
    let flat: Vec<f32> = all.concat();
    let mut lb = g.alloc(4 * n * rows, "logits").unwrap();
    g.upload(&mut lb, 0, &flat).unwrap();
    let scratch = g
        .alloc(topk_large_scratch_bytes(n) * rows, "top-k scratch")
        .unwrap();
    let ib = g.alloc(4 * TOPK_LARGE_MAX_K * rows, "ids").unwrap();
    let vb = g.alloc(4 * TOPK_LARGE_MAX_K * rows, "vals").unwrap();
    for (k, large) in [
        (1usize, false),
        (3, false),
        (1, true),
        (40, true),
        (1024, true),
    ] {
        for _repeat in 0..2 {
            let (l, i, v) = (lb.all(), ib.all(), vb.all());
            if large {
                g.topk_large_rows(l, n, rows, k, scratch.all(), i, v)
                    .unwrap();
            } else {
                g.topk_rows(l, n, rows, k, scratch.all(), i, v).unwrap();
            }
            let ids: Vec<i32> = g.download(&ib, 0, k * rows).unwrap();
            let vals: Vec<f32> = g.download(&vb, 0, k * rows).unwrap();
            for (row, l) in all.iter().enumerate() {
                let want = top_candidates(l, k);
                let (gi, gv) = (&ids[row * k..(row + 1) * k], &vals[row * k..(row + 1) * k]);
                if large {
                    if let Some(m) = first_mismatch(&want, gi, gv) {
                        panic!("{test}: k = {k}, row {row}: {m}");
                    }
                } else {
                    let want_ids: Vec<i32> = want.iter().map(|c| c.0 as i32).collect();
                    assert_eq!(gi, &want_ids[..], "{test}: small k = {k}, row {row}");
                }
            }
        }
    }
    println!("{test}: {rows} rows of {n} per launch, each identical to its own host selection");
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn topk_large_refuses_bad_shapes_and_windows() {
    let test = "topk_large_refuses_bad_shapes";
    let g = test_gpu(test);
    let n = 5000;
    let lb = g.alloc(4 * n, "logits").unwrap();
    let sb = g.alloc(topk_large_scratch_bytes(n), "scratch").unwrap();
    let ob = g.alloc(8 * TOPK_LARGE_MAX_K, "out").unwrap();
    let ids = ob.span(0, 4 * TOPK_LARGE_MAX_K).unwrap();
    let vals = ob.span(4 * TOPK_LARGE_MAX_K, 4 * TOPK_LARGE_MAX_K).unwrap();
    let call = |n: usize, k: usize, s: Span, i: Span, v: Span| {
        g.topk_large(lb.all(), n, k, s, i, v)
            .map_err(|e| e.message().to_string())
    };
    assert!(call(n, 0, sb.all(), ids, vals).is_err(), "k = 0");
    assert!(call(n, 1025, sb.all(), ids, vals).is_err(), "k > 1024");
    assert!(
        call(n + 1, 8, sb.all(), ids, vals).is_err(),
        "logits window too small"
    );
    let short = sb.span(0, topk_large_scratch_bytes(n) - 4).unwrap();
    assert!(call(n, 8, short, ids, vals).is_err(), "scratch too small");
    assert!(
        call(n, 8, sb.all(), ids, ids).is_err(),
        "ids and vals overlap"
    );
    assert!(call(n, 8, sb.all(), ids, vals).is_ok());
    g.sync().expect("the valid call runs");
}

#[test]
fn shape_limits_and_scratch_size() {
    assert!(check_shape(0, 1, 1).is_err());
    assert!(check_shape(10, 1, 0).is_err());
    assert!(check_shape(10, 1, TOPK_MAX_ROWS + 1).is_err());
    assert_eq!(check_shape(10, 1, TOPK_MAX_ROWS).unwrap(), 1);
    assert!(check_shape(10, 0, 1).is_err());
    assert!(check_shape(10, 11, 1).is_err());
    assert!(check_shape(5000, 1025, 1).is_err());
    assert!(check_shape(TOPK_LARGE_MAX_N + 1, 8, 1).is_err());
    assert_eq!(check_shape(10, 10, 1).unwrap(), 1);
    assert_eq!(check_shape(4096, 1024, 1).unwrap(), 1);
    assert_eq!(check_shape(4097, 1024, 1).unwrap(), 2);
    assert_eq!(check_shape(151_936, 40, 1).unwrap(), 38);
    assert_eq!(check_shape(TOPK_LARGE_MAX_N, 1024, 1).unwrap(), MAX_BLOCKS);
    // Header (counters, state, 1024 candidates) + per block 3 words and a row.
    // Rounded up to 4 words: one block's 4115 words take 4116.
    assert_eq!(topk_large_scratch_bytes(1), 4 * 4116);
    assert_eq!(
        topk_large_scratch_bytes(151_936),
        4 * (16 + 2048 + 38 * (3 + 2048) + 2)
    );
}

/// No GPU needed: the two entry points compile to CUBIN and are exported.
#[test]
#[cfg_attr(
    not(nvrtc),
    ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
)]
fn topk_radix_kernels_compile_and_are_exported() {
    assert!(
        nvrtc_present(),
        "libnvrtc.so.13 is not loadable; run `source ci/nvrtc-env.sh` first"
    );
    let (name, src) = KERNEL_SOURCES
        .iter()
        .find(|(n, _)| *n == "topk.cu")
        .expect("topk.cu is embedded");
    let cubin = compile_cubin(name, &translation_unit(name, src), "sm_90").expect("compile");
    for k in TOPK_LARGE_KERNELS.iter().chain(&["topk"]) {
        let mut sym = k.as_bytes().to_vec();
        sym.push(0);
        assert!(
            cubin.windows(sym.len()).any(|w| w == sym.as_slice()),
            "{k} is not exported by topk.cu"
        );
    }
}

/// Speed on the real GPU: microseconds per call, host launch cost included
/// (200 queued calls, one sync), and device time from events; the old `topk`
/// at the k it still serves and the host path (copy all logits, select there)
/// for comparison. Run in release for host numbers that mean something.
#[test]
#[ignore = "timing only; run on the GPU with --ignored --nocapture"]
fn topk_large_timing() {
    let g = test_gpu("topk_large_timing");
    let mut r = Rng::fresh("topk_large_timing");
    let n = 151_936;
    let l = logits(&mut r, n, 1);
    let mut lb = g.alloc(4 * n, "logits").unwrap();
    g.upload(&mut lb, 0, &l).unwrap();
    let sb = g.alloc(topk_large_scratch_bytes(n), "scratch").unwrap();
    let ib = g.alloc(4 * TOPK_LARGE_MAX_K, "ids").unwrap();
    let vb = g.alloc(4 * TOPK_LARGE_MAX_K, "vals").unwrap();
    let reps = 200;
    for (label, k) in [
        ("large", 1usize),
        ("large", 16),
        ("large", 40),
        ("large", 1024),
        ("old", 1),
        ("old", 16),
        ("old", 40),
    ] {
        let call = || {
            if label == "large" {
                g.topk_large(lb.all(), n, k, sb.all(), ib.all(), vb.all())
            } else {
                g.topk(lb.all(), n, k, sb.all(), ib.all(), vb.all())
            }
        };
        call().unwrap();
        g.sync().unwrap();
        let t0 = std::time::Instant::now();
        let a = g.event().unwrap();
        for _ in 0..reps {
            call().unwrap();
        }
        let b = g.event().unwrap();
        g.sync().unwrap();
        let wall = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
        let dev = a.elapsed_ms(&b).unwrap() as f64 * 1000.0 / reps as f64;
        println!(
            "topk {label:5} n = {n} k = {k:4}: {wall:8.1} us/call wall, {dev:8.1} us/call device"
        );
    }
    // The path the engine takes today for pools > 16: copy all logits, select on the host.
    let t0 = std::time::Instant::now();
    let host_reps = 20;
    let mut want = Vec::new();
    for _ in 0..host_reps {
        let all: Vec<f32> = g.download(&lb, 0, n).unwrap();
        want = top_candidates(&all, 1024);
    }
    let host = t0.elapsed().as_secs_f64() * 1e6 / host_reps as f64;
    println!("host  copy + select n = {n} k = 1024: {host:8.1} us/call wall");
    let ids: Vec<i32> = g.download(&ib, 0, 40).unwrap();
    assert!(
        ids.iter().zip(&want).all(|(&i, w)| i as u32 == w.0),
        "old topk k=40 result wrong"
    );
}

/// The order key of cuda/topk.cu `tk_key`.
fn model_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        0x007f_ffff
    } else if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// A step-by-step host model of `topk_radix_hist` (3 passes) and
/// `topk_radix_gather`: same chunks, per-block suffix rows, digit boundary,
/// prefix composition, per-block offsets and packed in-block counts. It checks
/// the algorithm (not the CUDA code, which only the GPU tests run) without a GPU.
fn model_topk(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let n = logits.len();
    let g = n.div_ceil(CHUNK);
    let keys: Vec<u32> = logits.iter().map(|&v| model_key(v)).collect();
    let chunk = |b: usize| &keys[b * CHUNK..((b + 1) * CHUNK).min(n)];
    let (mut prefix, mut above) = (0u32, 0u32);
    let mut rows = vec![vec![0u32; BINS]; g];
    let mut over = vec![0u32; g];
    let (mut gt_off, mut eq_off) = (vec![0u32; g], vec![0u32; g]);
    for pass in 0..3 {
        let (shift, mask, pshift) = match pass {
            0 => (21, 0x7ff, 0),
            1 => (10, 0x7ff, 21),
            _ => (0, 0x3ff, 10),
        };
        for b in 0..g {
            let mut h = vec![0u32; BINS];
            over[b] = 0;
            for &key in chunk(b) {
                if pass == 0 || key >> pshift == prefix {
                    h[((key >> shift) & mask) as usize] += 1;
                } else if key >> pshift > prefix {
                    over[b] += 1;
                }
            }
            let mut acc = 0;
            for bin in (0..BINS).rev() {
                acc += h[bin];
                rows[b][bin] = acc;
            }
        }
        let ge: Vec<u32> = (0..BINS)
            .map(|bin| rows.iter().map(|r| r[bin]).sum())
            .collect();
        let k32 = k as u32;
        let hits: Vec<usize> = (0..BINS)
            .filter(|&b| above + ge[b] >= k32 && !(b + 1 < BINS && above + ge[b + 1] >= k32))
            .collect();
        assert_eq!(hits.len(), 1, "pass {pass}: exactly one digit boundary");
        let d = hits[0];
        let ge_next = if d + 1 < BINS { ge[d + 1] } else { 0 };
        prefix = match pass {
            0 => d as u32,
            1 => (prefix << 11) | d as u32,
            _ => (prefix << 10) | d as u32,
        };
        above += ge_next;
        if pass == 2 {
            let (mut gt_acc, mut eq_acc) = (0, 0);
            for b in 0..g {
                let ge_d1 = if d + 1 < BINS { rows[b][d + 1] } else { 0 };
                let (gt, eq) = (over[b] + ge_d1, rows[b][d] - ge_d1);
                gt_off[b] = gt_acc;
                eq_off[b] = eq_acc;
                gt_acc += gt;
                eq_acc += eq;
            }
        }
    }
    let (t, need) = (prefix, k as u32 - above);
    let mut cand = vec![0u64; TOPK_LARGE_MAX_K];
    for b in 0..g {
        let (mut rg, mut re) = (gt_off[b], eq_off[b]);
        for (j, &key) in chunk(b).iter().enumerate() {
            let c = (u64::from(key) << 32) | u64::from(u32::MAX - (b * CHUNK + j) as u32);
            if key > t {
                assert!(rg < above, "more keys above T than counted");
                cand[rg as usize] = c;
                rg += 1;
            } else if key == t {
                if re < need {
                    cand[(above + re) as usize] = c;
                }
                re += 1;
            }
        }
    }
    let mut s = cand[..k].to_vec();
    s.sort_unstable_by(|a, b| b.cmp(a));
    s.iter()
        .map(|&c| {
            let id = u32::MAX - (c & 0xffff_ffff) as u32;
            (id, logits[id as usize])
        })
        .collect()
}

#[test]
fn radix_algorithm_model_matches_the_sampler() {
    let test = "radix_algorithm_model";
    let mut r = Rng::fresh(test);
    let mut checked = 0;
    for n in [1usize, 1000, 4096, 4097, 49_152, 151_936] {
        for shape in 0..4 {
            let l = logits(&mut r, n, shape);
            for k in [1usize, 17, 40, 256, 1024] {
                let k = k.min(n);
                let want = top_candidates(&l, k);
                let got = model_topk(&l, k);
                let ids: Vec<i32> = got.iter().map(|c| c.0 as i32).collect();
                let vals: Vec<f32> = got.iter().map(|c| c.1).collect();
                if let Some(m) = first_mismatch(&want, &ids, &vals) {
                    panic!("{test}: n = {n}, k = {k}, shape {shape}: {m}");
                }
                checked += 1;
            }
        }
    }
    println!("{test}: {checked} cases identical to the host selection");
}
