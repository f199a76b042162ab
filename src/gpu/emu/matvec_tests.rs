//! The decode mat-vec kernels under the kernel emulator (KERNEL-MATVEC,
//! WORKER-4710; issue 11 points 5 and 7): for every block format, every
//! batched kernel (`_tl`, `_bt`, `_bst`, `_b8`, each normed, gate/up and
//! plain) gives each
//! token row the bits the lone decode kernel (`_st`) gives it alone, under
//! forward, reverse and shuffled thread orders; and the lone kernel agrees
//! with a float64 product of the dequantized weights. The GPU suite's
//! `op_batched_rows_are_bit_identical_to_lone_rows` checks the same on the
//! GPU; these run in every `cargo test`. The weights are read from copies
//! that end at a guard page (`guarded`), so a row or chunk fetched past a
//! matrix's end stops the test even when its bytes go unused. The fused
//! q/k/v kernels are checked in `qkv_tests`.

use cudarc::driver::LaunchConfig;

use super::guarded::Guarded;
use super::{Arg, Emu, Order};
use crate::engine::cuda::matvec_tests::RowsCase;
use crate::gpu::batched::b8_grid;
use crate::gpu::launch_shape::{
    batched_launch, decode_launch, rows_bt_launch, rows_mm_launch, rows_mm_launch_tiles,
    rows_tl_launch, staged_smem,
};
use crate::gpu::ops::{dtype_suffix, row_bytes, FORMATS};
use crate::gpu::test_support::Rng;

pub(super) const EPS: f32 = 1e-5;
/// The card the batched staged launches are shaped for: one SM, so their
/// few blocks make every warp walk several rows on the grid stride (a real
/// card's grids at test sizes give each warp one row).
pub(super) const EMU_SMS: i32 = 1;

/// The three products' output bits: normed with bias, gate/up + SwiGLU,
/// plain accumulating into y0.
#[derive(PartialEq, Debug)]
struct Bits {
    normed: Vec<u32>,
    gate_up: Vec<u32>,
    plain: Vec<u32>,
}

pub(super) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The emulator's runs of a case (its inputs are the GPU suite's: `RowsCase`).
impl RowsCase {
    fn name(&self, variant: &str) -> String {
        format!("matvec_{}{variant}", dtype_suffix(self.dt).expect("format"))
    }

    fn rb(&self) -> u64 {
        row_bytes(self.dt, self.cols).expect("row bytes") as u64
    }

    /// Each token row alone through the decode kernels the engine uses for
    /// one sequence (`Gpu::matvec_norm`, `gate_up`, `matvec`).
    fn lone(&self, emu: &Emu, order: Order) -> Bits {
        self.lone_shaped(emu, order, |vectors| {
            decode_launch(self.dt, self.rows, self.cols, vectors)
        })
    }

    /// As `lone`, with the kernel and launch shape `shape(vectors)` gives
    /// (`decode_launch`'s, or another grid, or the plain kernel).
    fn lone_shaped(
        &self,
        emu: &Emu,
        order: Order,
        shape: impl Fn(usize) -> (&'static str, LaunchConfig),
    ) -> Bits {
        let (rows, cols) = (self.rows, self.cols);
        let (ri, ci) = (Arg::I32(rows as i32), Arg::I32(cols as i32));
        let (wq, uq) = (Guarded::new(&self.wq), Guarded::new(&self.uq));
        let mut out = Bits {
            normed: vec![],
            gate_up: vec![],
            plain: vec![],
        };
        for t in 0..self.batch {
            let xt = &self.x[t * cols..(t + 1) * cols];
            let (st, cfg) = shape(2);
            let mut y = vec![f32::NAN; rows];
            let args = [
                wq.arg(),
                Arg::U64(self.rb()),
                Arg::of(xt),
                Arg::of(&self.bias),
                Arg::of_mut(&mut y),
                ri,
                ci,
                Arg::I32(0),
                Arg::of(&self.nw),
                Arg::F32(EPS),
            ];
            emu.launch(&self.name(st), cfg, order, &args).unwrap();
            out.normed.extend(bits(&y));

            let mut g = vec![f32::NAN; rows];
            let args = [
                wq.arg(),
                uq.arg(),
                Arg::U64(self.rb()),
                Arg::of(xt),
                Arg::of(&self.nw),
                Arg::F32(EPS),
                Arg::of_mut(&mut g),
                ri,
                ci,
            ];
            emu.launch(&self.name(&format!("_gu{st}")), cfg, order, &args)
                .unwrap();
            out.gate_up.extend(bits(&g));

            let (st, cfg) = shape(1);
            let mut a = self.y0[t * rows..(t + 1) * rows].to_vec();
            let args = [
                wq.arg(),
                Arg::U64(self.rb()),
                Arg::of(xt),
                Arg::Ptr(0),
                Arg::of_mut(&mut a),
                ri,
                ci,
                Arg::I32(1),
                Arg::Ptr(0),
                Arg::F32(0.0),
            ];
            emu.launch(&self.name(st), cfg, order, &args).unwrap();
            out.plain.extend(bits(&a));
        }
        out
    }

    /// Every row's norm scale, by `row_rms` (`Gpu::row_rms`'s launch).
    fn scales(&self, emu: &Emu, order: Order) -> Vec<f32> {
        row_scales(emu, &self.x, self.cols, self.batch, order)
    }

    /// All token rows at once through one batched variant (`_tl`, `_bt`,
    /// `_mm`, `_bst` or `_b8`), with the launch shape its launcher gives it.
    fn batched(&self, emu: &Emu, variant: &str, order: Order) -> Bits {
        self.batched_tiles(emu, variant, order, None)
    }

    /// [`RowsCase::batched`]; a `_mm` launch takes `mm_tiles` m16 tiles
    /// per block when given, else its launcher's choice.
    fn batched_tiles(
        &self,
        emu: &Emu,
        variant: &str,
        order: Order,
        mm_tiles: Option<usize>,
    ) -> Bits {
        let (rows, cols, batch) = (self.rows, self.cols, self.batch);
        let (wq, uq) = (Guarded::new(&self.wq), Guarded::new(&self.uq));
        let scale = self.scales(emu, order);
        let shape = |normed: bool, gate_up: bool| -> (LaunchConfig, Option<i32>) {
            match variant {
                "_bt" => (
                    rows_bt_launch(self.dt, rows, batch, gate_up).expect("bt shape"),
                    None,
                ),
                "_tl" => (
                    rows_tl_launch(self.dt, rows, batch, gate_up, EMU_SMS).expect("tl shape"),
                    None,
                ),
                "_mm" => {
                    let (tiles, cfg) = match mm_tiles {
                        Some(t) => rows_mm_launch_tiles(self.dt, rows, batch, gate_up, t),
                        None => rows_mm_launch(self.dt, rows, batch, gate_up),
                    }
                    .expect("mm shape");
                    (cfg, Some(tiles))
                }
                "_bst" => {
                    let (per, cfg) = batched_launch(self.dt, rows, cols, batch, normed, EMU_SMS)
                        .expect("bst shape");
                    (cfg, Some(per as i32))
                }
                _ => (b8_grid(rows, batch), None),
            }
        };
        let (ri, ci, bi) = (
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(batch as i32),
        );
        let product = |w: Arg, bias: Arg, y: &mut [f32], acc: i32, normed: bool| {
            let (cfg, per) = shape(normed, false);
            let mut args = vec![
                w,
                Arg::U64(self.rb()),
                Arg::of(&self.x),
                bias,
                Arg::of_mut(y),
                ri,
                ci,
                Arg::I32(acc),
                bi,
            ];
            args.extend(per.map(Arg::I32));
            if normed {
                args.extend([Arg::of(&self.nw), Arg::of(&scale)]);
            } else {
                args.extend([Arg::Ptr(0), Arg::Ptr(0)]);
            }
            emu.launch(&self.name(variant), cfg, order, &args).unwrap();
        };
        let mut normed = vec![f32::NAN; rows * batch];
        product(wq.arg(), Arg::of(&self.bias), &mut normed, 0, true);
        let mut plain = self.y0.clone();
        product(wq.arg(), Arg::Ptr(0), &mut plain, 1, false);

        let (cfg, per) = shape(true, true);
        let mut g = vec![f32::NAN; rows * batch];
        let mut args = vec![
            wq.arg(),
            uq.arg(),
            Arg::U64(self.rb()),
            Arg::of(&self.x),
            Arg::of(&self.nw),
            Arg::of(&scale),
            Arg::of_mut(&mut g),
            ri,
            ci,
            bi,
        ];
        args.extend(per.map(Arg::I32));
        emu.launch(&self.name(&format!("_gu{variant}")), cfg, order, &args)
            .unwrap();
        Bits {
            normed: bits(&normed),
            gate_up: bits(&g),
            plain: bits(&plain),
        }
    }
}

/// Each of `batch` rows' norm scale, by `row_rms` (`Gpu::row_rms`'s launch).
pub(super) fn row_scales(
    emu: &Emu,
    x: &[f32],
    cols: usize,
    batch: usize,
    order: Order,
) -> Vec<f32> {
    let mut scale = vec![f32::NAN; batch];
    let cfg = LaunchConfig {
        grid_dim: (batch.div_ceil(4) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::of(x),
        Arg::of_mut(&mut scale),
        Arg::I32(cols as i32),
        Arg::I32(batch as i32),
        Arg::F32(EPS),
    ];
    emu.launch("row_rms", cfg, order, &args).unwrap();
    scale
}

pub(super) fn orders(r: &mut Rng) -> [Order; 4] {
    let mut seed = || r.vec(1)[0].to_bits() as u64 | 1;
    [
        Order::Forward,
        Order::Reverse,
        Order::Shuffled(seed()),
        Order::Shuffled(seed()),
    ]
}

#[test]
fn batched_rows_are_bit_identical_to_lone_rows_in_every_format() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_batched_rows");
    let mut case_no = 0;
    for &(dt, _) in FORMATS.iter() {
        for (rows, cols, batch) in [
            (67, 512, 3),
            (40, 1280, 9),
            (34, 768, 17),
            (21, 2304, 37),
            (37, 896, 33),
            (13, 3328, 65),
        ] {
            if cols % dt.block_size() != 0 {
                continue; // 896 (Qwen's width) is no whole number of K-quant super-blocks
            }
            let case = RowsCase::random(&mut r, dt, rows, cols, batch);
            let lone = case.lone(emu, Order::Forward);
            let e = case.normed_error(&lone.normed, EPS);
            assert!(e < 1e-5, "{} lone normed rel err {e}", dt.name());
            // Each variant meets every order over the cases.
            case_no += 1;
            let mut ord = orders(&mut r);
            ord.rotate_left(case_no % 4);
            for (variant, order) in ["_tl", "_bt", "_bst", "_b8"].into_iter().zip(ord) {
                let got = case.batched(emu, variant, order);
                println!(
                    "emu {:>5} {rows}x{cols} batch {batch} {variant} ({order:?}): normed {}, gate/up {}, plain {} (lone rel err {e:.1e})",
                    dt.name(),
                    got.normed == lone.normed,
                    got.gate_up == lone.gate_up,
                    got.plain == lone.plain
                );
                assert!(
                    got == lone,
                    "{} {variant} rows differ from lone rows",
                    dt.name()
                );
            }
        }
    }
}

/// The staged decode kernels (`_st`, `_gu_st`) keep the plain kernels' bits
/// however many rows a warp walks: grids of one, two and three blocks make
/// each warp take several rows, prefetching the next row's first chunk
/// while it finishes the current one (the LM head's case: 151,936 rows over
/// at most 1,024 blocks, which the launcher's own grids never show at test
/// sizes), rows of one to three chunks, every thread order.
#[test]
fn staged_rows_keep_the_plain_kernels_bits_however_many_rows_a_warp_walks() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_staged_rows");
    let mut case_no = 0;
    for &(dt, _) in FORMATS.iter() {
        // 5,376 columns: two staging rounds of the vector without a norm weight.
        for (rows, cols) in [(67, 512), (40, 1280), (29, 2304), (37, 896), (9, 5376)] {
            // 896 is no whole number of K-quant super-blocks; a wide f32
            // row does not fit the staged layout. Where only the vector
            // fits (5,376 with a norm weight), the normed products compare
            // the plain kernel with itself and the plain product is staged.
            if cols % dt.block_size() != 0 || staged_smem(dt, cols, 1).is_none() {
                continue;
            }
            let case = RowsCase::random(&mut r, dt, rows, cols, 1);
            let plain = case.lone_shaped(emu, Order::Forward, |_| decode_launch(dt, rows, cols, 0));
            let mut ord = orders(&mut r);
            case_no += 1;
            ord.rotate_left(case_no % 4);
            for (grid, order) in [1u32, 2, 3, 0].into_iter().zip(ord) {
                let got = case.lone_shaped(emu, order, |vectors| {
                    let (st, mut cfg) = decode_launch(dt, rows, cols, vectors);
                    // The plain kernel takes a row a warp, no grid stride.
                    if grid > 0 && st == "_st" {
                        cfg.grid_dim.0 = grid;
                    }
                    (st, cfg)
                });
                assert!(
                    got == plain,
                    "{} {rows}x{cols} staged on {grid} blocks ({order:?}) differs from the plain kernel",
                    dt.name()
                );
            }
        }
    }
    println!("emu staged rows: staged rows equal plain rows in all 11 formats, 1..3 blocks");
}

/// The tensor-core kernels (`_mm`, `_gu_mm`: 3xTF32 MMAs, emulated lane by
/// lane) give every token row the bits it gets alone in every format, under
/// every thread order, at batches of part of one 8-token tile, two tiles,
/// and two full 32-token blocks plus a third (rows 0, batch / 2 and the
/// last alone), whatever number of m16 tiles a block takes; and the normed
/// product agrees with float64 over the dequantized weights.
#[test]
fn tensor_rows_are_bit_identical_to_lone_rows_in_every_format() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_tensor_rows");
    let mut case_no = 0;
    for &(dt, _) in FORMATS.iter() {
        for (rows, cols, batch) in [(21, 512, 3), (40, 1280, 9), (13, 2304, 65)] {
            if cols % dt.block_size() != 0 {
                continue;
            }
            let case = RowsCase::random(&mut r, dt, rows, cols, batch);
            case_no += 1;
            let mut ord = orders(&mut r);
            ord.rotate_left(case_no % 4);
            let all = case.batched(emu, "_mm", ord[0]);
            let e = case.normed_error(&all.normed, EPS);
            // Every choice of m16 tiles per block gives the same bits.
            for tiles in [1, 2, 4] {
                let other = case.batched_tiles(emu, "_mm", ord[tiles % 4], Some(tiles));
                assert!(
                    other == all,
                    "{} _mm with {tiles} m16 tiles per block differs from the launcher's choice",
                    dt.name()
                );
            }
            // Alone: the first row, one in a later 8-token tile, the last.
            let mut tokens = vec![0, batch / 2, batch - 1];
            tokens.dedup();
            let pick = |v: &[u32]| -> Vec<u32> {
                tokens
                    .iter()
                    .flat_map(|&t| v[t * rows..(t + 1) * rows].to_vec())
                    .collect()
            };
            let got = Bits {
                normed: pick(&all.normed),
                gate_up: pick(&all.gate_up),
                plain: pick(&all.plain),
            };
            let mut lone = Bits {
                normed: vec![],
                gate_up: vec![],
                plain: vec![],
            };
            for (i, &t) in tokens.iter().enumerate() {
                let one = case.token(t).batched(emu, "_mm", ord[1 + i]);
                lone.normed.extend(one.normed);
                lone.gate_up.extend(one.gate_up);
                lone.plain.extend(one.plain);
            }
            println!(
                "emu {:>5} {rows}x{cols} batch {batch} _mm: normed {}, gate/up {}, plain {} (rel err {e:.1e})",
                dt.name(),
                got.normed == lone.normed,
                got.gate_up == lone.gate_up,
                got.plain == lone.plain
            );
            assert!(e < 1e-5, "{} _mm normed rel err {e}", dt.name());
            assert!(got == lone, "{} _mm rows differ from lone rows", dt.name());
        }
    }
}
