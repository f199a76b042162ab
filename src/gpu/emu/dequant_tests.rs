//! The prefill GEMM's 3xTF32 operands under the kernel emulator
//! (KERNEL-GEMM-005; issue 12 point 3): `dequant_split_<format>` writes each
//! weight row as `[big | small | big]` and `split_tf32_rows` each input row
//! as `[small | big | big]`, with big the value rounded to TF32 and small the
//! remainder rounded to TF32, so one GEMM over 3 x cols sums the three
//! products of 3xTF32. The expected parts come from the plain dequant's
//! values and a host rounding written here, not from the kernels' own split.
//!
//! Also the weights themselves: every format's `Q::deq32` (the one
//! dequantizer of every mat-vec, GEMM and embedding kernel) gives the bits
//! of the CPU engine's dequantizer (`model::quant`) for any bytes at any
//! byte alignment, so a faster decoding of the blocks cannot change a token.

use cudarc::driver::LaunchConfig;

use super::guarded::Guarded;
use super::{Arg, Emu, Order};
use crate::gpu::ops::{row_bytes, FORMATS};
use crate::gpu::test_support::{weight_pads, Rng};
use crate::model::quant;

/// `v` rounded to TF32 (10 mantissa bits) to nearest, ties away from zero,
/// as `cvt.rna.tf32.f32` rounds finite values: add half of the dropped 13
/// bits' unit to the magnitude, then drop them.
fn tf32(v: f32) -> f32 {
    f32::from_bits((v.to_bits() + 0x1000) & !0x1fff)
}

/// The three pieces a value becomes, in the weights' order.
fn parts(v: f32) -> [f32; 3] {
    let big = tf32(v);
    [big, tf32(v - big), big]
}

fn launch_1d(emu: &Emu, name: &str, grid: (u32, u32), args: &[Arg]) {
    let cfg = LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    emu.launch(name, cfg, Order::Shuffled(5), args)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `dequant_<format>` or `dequant_split_<format>` (`name`) of a `rows` x
/// `cols` matrix at `w` (rows of `rb` bytes) into `out`, a thread a run as
/// the launcher (`Gpu::dequant`) shapes it.
fn dequant_into(emu: &Emu, name: &str, w: Arg, rb: u64, out: &mut [f32], rows: usize, cols: usize) {
    let runs = (rows * cols / 32) as u32;
    let args = [
        w,
        Arg::U64(rb),
        Arg::of_mut(out),
        Arg::I32(rows as i32),
        Arg::I32(cols as i32),
    ];
    launch_1d(emu, name, (runs.div_ceil(256), 1), &args);
}

#[test]
fn split_dequant_lays_every_weight_as_big_small_big() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_dequant_split");
    // 9 rows of 512: 144 runs, so the last warp's runs end mid-warp and a
    // warp's runs cross rows (the store computes each run's row).
    let (rows, cols) = (9usize, 512usize);
    for (dt, suffix) in FORMATS {
        let mut wq = Vec::new();
        quant::quantize(dt, &r.vec(rows * cols), &mut wq).expect("quantize");
        let rb = row_bytes(dt, cols).expect("row bytes") as u64;
        let mut plain = vec![f32::NAN; rows * cols];
        let mut split = vec![f32::NAN; 3 * rows * cols];
        for (name, out) in [
            (format!("dequant_{suffix}"), &mut plain),
            (format!("dequant_split_{suffix}"), &mut split),
        ] {
            dequant_into(emu, &name, Arg::of(&wq), rb, out, rows, cols);
        }
        for row in 0..rows {
            for c in 0..cols {
                let want = parts(plain[row * cols + c]);
                let got = [0, 1, 2].map(|p| split[row * 3 * cols + p * cols + c]);
                assert_eq!(
                    got.map(f32::to_bits),
                    want.map(f32::to_bits),
                    "{suffix}: weight ({row}, {c}) split as {got:?}, want {want:?}"
                );
            }
        }
        // The split is exact where TF32 can hold the remainder: big + small
        // gives back the weight within f32 rounding of the dropped bits.
        let worst = (0..rows * cols)
            .map(|i| {
                let (row, c) = (i / cols, i % cols);
                let s = &split[row * 3 * cols..];
                let back = s[c] as f64 + s[cols + c] as f64;
                (back - plain[i] as f64).abs() / (plain[i].abs() as f64).max(1e-30)
            })
            .fold(0.0f64, f64::max);
        assert!(worst < 1e-6, "{suffix}: big + small is {worst:e} off");
    }
}

#[test]
fn split_inputs_lay_every_value_as_small_big_big() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_split_rows");
    let (cols, n) = (300usize, 5usize);
    let x = r.vec(cols * n);
    let mut out = vec![f32::NAN; 3 * cols * n];
    let args = [
        Arg::of(&x),
        Arg::of_mut(out.as_mut_slice()),
        Arg::I32(cols as i32),
    ];
    launch_1d(
        emu,
        "split_tf32_rows",
        (cols.div_ceil(256) as u32, n as u32),
        &args,
    );
    for t in 0..n {
        for c in 0..cols {
            let [big, small, _] = parts(x[t * cols + c]);
            let want = [small, big, big];
            let got = [0, 1, 2].map(|p| out[t * 3 * cols + p * cols + c]);
            assert_eq!(
                got.map(f32::to_bits),
                want.map(f32::to_bits),
                "input ({t}, {c}) split as {got:?}, want {want:?}"
            );
        }
    }
}

/// Random bytes (every bit pattern of quants, scales, mins and high bits;
/// a NaN or infinite scale too) dequantized by `dequant_<format>` from
/// weights starting 0 to 3 bytes past a 4-byte boundary (whole elements
/// for the float formats: `weight_pads`) and ending at a guard page,
/// against `quant::dequantize` on the same bytes: the same bits for every
/// weight (both NaN where a scale is NaN or infinite times zero).
#[test]
fn dequant_gives_the_cpu_dequantizer_bits_at_any_alignment() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_dequant_bits");
    // 7 rows of 512: two 256-element super-blocks a row; rows of odd-sized
    // 32-element blocks (18, 22, 34 bytes) start at every 2-byte offset.
    let (rows, cols) = (7usize, 512usize);
    for (dt, suffix) in FORMATS {
        let rb = row_bytes(dt, cols).expect("row bytes");
        let bytes: Vec<u8> = (0..rows * rb).map(|_| r.u() as u8).collect();
        let mut want = vec![0.0f32; rows * cols];
        quant::dequantize(dt, &bytes, &mut want).expect("dequantize");
        for pad in weight_pads(dt) {
            let mut placed = vec![0u8; pad];
            placed.extend_from_slice(&bytes);
            let w = Guarded::new(&placed);
            let Arg::Ptr(base) = w.arg() else {
                unreachable!("a guarded buffer is a pointer")
            };
            let mut got = vec![f32::NAN; rows * cols];
            let at = Arg::Ptr(base + pad as u64);
            dequant_into(
                emu,
                &format!("dequant_{suffix}"),
                at,
                rb as u64,
                &mut got,
                rows,
                cols,
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{suffix}, weights {pad} bytes past alignment: weight ({}, {}) is {g:e} ({:#010x}), \
                     the CPU dequantizer gives {w:e} ({:#010x})",
                    i / cols,
                    i % cols,
                    g.to_bits(),
                    w.to_bits()
                );
            }
        }
    }
}
