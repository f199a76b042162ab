//! Device candidate selection under the kernel emulator (KERNEL-SAMPLE,
//! WORKER-4700, 4710; issue 12 point 2): for several logits rows in one
//! launch (ties, a NaN, a row of equal values), the small-k `topk` kernel
//! and the radix select (`topk_radix_hist` x 3, `topk_radix_gather`) give
//! every row exactly `engine::sampler::top_candidates`' ids and values in its
//! order, and leave their scratch counters at zero for the next launch. The
//! GPU suite's `op_topk_*` tests check the same on the GPU.

use cudarc::driver::LaunchConfig;

use super::{Arg, Emu, Order};
use crate::engine::sampler::{top_candidates, MAX_CANDIDATES};
use crate::gpu::test_support::Rng;
use crate::gpu::topk::topk_large_scratch_bytes;

/// `rows` rows of `n` logits: random, with ties across the row, a NaN and
/// one row of a single repeated value.
fn logits(r: &mut Rng, n: usize, rows: usize) -> Vec<f32> {
    let mut l = r.vec(n * rows);
    for row in 0..rows {
        let x = &mut l[row * n..(row + 1) * n];
        x[77] = 3.0;
        x[5] = 3.0;
        x[n - 1] = 3.0;
        x[100] = f32::NAN;
    }
    l[n * (rows - 1)..].fill(0.25);
    l
}

fn want(l: &[f32], n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    l.chunks(n).map(|row| top_candidates(row, k)).collect()
}

fn got(ids: &[i32], vals: &[f32], k: usize) -> Vec<Vec<(u32, f32)>> {
    ids.chunks(k)
        .zip(vals.chunks(k))
        .map(|(i, v)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
        .collect()
}

/// Candidates as bits (NaN compares equal to itself).
fn bits(c: &[Vec<(u32, f32)>]) -> Vec<Vec<(u32, u32)>> {
    c.iter()
        .map(|r| r.iter().map(|&(i, v)| (i, v.to_bits())).collect())
        .collect()
}

/// `Gpu::topk_rows`' launch: a 1024-thread block per 4096 logits of each
/// row (y), blocks in `order`, over the radix select's scratch rows.
fn one_pass(
    emu: &Emu,
    (l, n, rows, k): (&[f32], usize, usize, usize),
    scratch: &mut [u64],
    order: Order,
) -> Vec<Vec<(u32, f32)>> {
    let (mut ids, mut vals) = (vec![-1i32; k * rows], vec![f32::NAN; k * rows]);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(4096) as u32, rows as u32, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::of(l),
        Arg::I32(n as i32),
        Arg::I32(k as i32),
        Arg::of_mut(scratch),
        Arg::of_mut(&mut ids),
        Arg::of_mut(&mut vals),
    ];
    emu.launch("topk", cfg, order, &args).unwrap();
    got(&ids, &vals, k)
}

/// The small-k selection over a zeroed scratch in shuffled block order,
/// then again over the same scratch in reverse order (the last block of
/// each row re-arms its counter), which must agree.
fn small(emu: &Emu, l: &[f32], n: usize, rows: usize, k: usize, seed: u64) -> Vec<Vec<(u32, f32)>> {
    let mut scratch = vec![0u64; topk_large_scratch_bytes(n) * rows / 8];
    let shape = (l, n, rows, k);
    let first = one_pass(emu, shape, &mut scratch, Order::Shuffled(seed));
    let again = one_pass(emu, shape, &mut scratch, Order::Reverse);
    assert_eq!(
        bits(&first),
        bits(&again),
        "a second small-k selection over the same scratch differs"
    );
    first
}

/// `Gpu::topk_large_rows`' launches: three histogram passes (pass p in
/// `hist_order(p)`) and the gather, over one scratch row per logits row.
fn select(
    emu: &Emu,
    (l, n, rows, k): (&[f32], usize, usize, usize),
    scratch: &mut [u64],
    hist_order: impl Fn(i32) -> Order,
    gather_order: Order,
) -> Vec<Vec<(u32, f32)>> {
    let (mut ids, mut vals) = (vec![-1i32; k * rows], vec![f32::NAN; k * rows]);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(4096) as u32, rows as u32, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    for pass in 0..3 {
        let args = [
            Arg::of(l),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::I32(pass),
            Arg::of_mut(scratch),
        ];
        emu.launch("topk_radix_hist", cfg, hist_order(pass), &args)
            .unwrap();
    }
    let args = [
        Arg::of(l),
        Arg::I32(n as i32),
        Arg::I32(k as i32),
        Arg::of_mut(scratch),
        Arg::of_mut(&mut ids),
        Arg::of_mut(&mut vals),
    ];
    emu.launch("topk_radix_gather", cfg, gather_order, &args)
        .unwrap();
    got(&ids, &vals, k)
}

/// The radix select over a zeroed scratch, then again over the same
/// scratch (the kernels re-arm their counters), which must agree.
fn radix(emu: &Emu, l: &[f32], n: usize, rows: usize, k: usize, seed: u64) -> Vec<Vec<(u32, f32)>> {
    let mut scratch = vec![0u64; topk_large_scratch_bytes(n) * rows / 8];
    let shape = (l, n, rows, k);
    let first = select(
        emu,
        shape,
        &mut scratch,
        |pass| Order::Shuffled(seed + pass as u64),
        Order::Forward,
    );
    let again = select(emu, shape, &mut scratch, |_| Order::Forward, Order::Reverse);
    assert_eq!(
        bits(&first),
        bits(&again),
        "a second radix selection over the same scratch differs"
    );
    first
}

#[test]
fn device_candidates_are_the_host_samplers_for_every_row() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_topk");
    // 4,116 logits: the second block of a row holds 20, fewer than k = 40.
    for (n, rows) in [(151_936usize, 2usize), (9_000, 3), (4_116, 2)] {
        let l = logits(&mut r, n, rows);
        // k = 40 over the full vocabulary adds only emulator time.
        let ks: &[usize] = if n > 10_000 { &[1, 5] } else { &[1, 5, 40] };
        for &k in ks {
            let seed = r.vec(1)[0].to_bits() as u64;
            let g = small(emu, &l, n, rows, k, seed);
            assert_eq!(bits(&g), bits(&want(&l, n, k)), "topk k={k}, n {n}");
        }
        for k in [1usize, 40, MAX_CANDIDATES] {
            let seed = r.vec(1)[0].to_bits() as u64;
            let g = radix(emu, &l, n, rows, k, seed);
            assert_eq!(bits(&g), bits(&want(&l, n, k)), "radix k={k}, n {n}");
        }
        println!(
            "emu topk: {rows} rows of {n}: small-k topk k={ks:?} and radix k=1, 40, {MAX_CANDIDATES} identical to sampler::top_candidates"
        );
    }
}
