//! The fused q/k/v decode kernels under the kernel emulator (KERNEL-MATVEC,
//! WORKER-4710; issue 11 point 7, issue 12 point 1): `_qkv_st` (what a lone
//! decode row runs) and `_qkv_bst` (a step of several rows) give each
//! projection of each token row the bits the normed `_st` kernel of that
//! projection's own format gives it alone, in every block format and in
//! every mixed pair of `kernel_units::QKV_MIXED` (q and k in one format, v
//! in another). That is the link that makes a lone row's q, k and v equal a
//! batched row's, and the fused launch equal three.

use cudarc::driver::LaunchConfig;

use super::matvec_tests::{bits, orders, row_scales, EMU_SMS, EPS};
use super::{Arg, Emu, Order};
use crate::gpu::kernel_units::QKV_MIXED;
use crate::gpu::launch_shape::{batched_launch, decode_launch};
use crate::gpu::ops::{dtype_suffix, row_bytes, FORMATS};
use crate::gpu::qkv::QkvFormats;
use crate::gpu::test_support::Rng;
use crate::model::gguf::GgmlType;
use crate::model::quant;

/// Every format alone, then every mixed pair.
fn format_cases() -> Vec<QkvFormats> {
    let by_suffix = |s: &str| -> GgmlType {
        FORMATS
            .iter()
            .find(|f| f.1 == s)
            .unwrap_or_else(|| panic!("QKV_MIXED names {s}, which no kernel reads"))
            .0
    };
    let mut cases: Vec<QkvFormats> = FORMATS.iter().map(|f| QkvFormats::one(f.0)).collect();
    for (qk, _, v, _) in QKV_MIXED {
        let f = QkvFormats::of(by_suffix(qk), by_suffix(qk), by_suffix(v));
        cases.push(f.expect("a QKV_MIXED pair is fusable"));
    }
    cases
}

/// Qwen-like row counts (q wide, k and v narrow, with biases), 512 wide.
const RQ: usize = 96;
const RK: usize = 16;
const COLS: usize = 512;

/// One case's weights (q and k in `f.qk`, v in `f.v`), norm weight, biases.
struct QkvCase {
    f: QkvFormats,
    w: [Vec<u8>; 3],
    nw: Vec<f32>,
    b: [Vec<f32>; 3],
}

/// Output bits of q, k and v.
type Outs = [Vec<u32>; 3];

impl QkvCase {
    fn random(r: &mut Rng, f: QkvFormats) -> Self {
        let rows = [RQ, RK, RK];
        let w = std::array::from_fn(|i| {
            let dt = if i == 2 { f.v } else { f.qk };
            let mut q = Vec::new();
            quant::quantize(dt, &r.vec(rows[i] * COLS), &mut q).expect("quantize");
            q
        });
        let nw = r.vec(COLS);
        let b = std::array::from_fn(|i| r.vec(rows[i]));
        Self { f, w, nw, b }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.f.qk.name(), self.f.v.name())
    }

    fn format(&self, i: usize) -> GgmlType {
        if i == 2 {
            self.f.v
        } else {
            self.f.qk
        }
    }

    fn row_bytes(&self, i: usize) -> u64 {
        row_bytes(self.format(i), COLS).expect("row bytes") as u64
    }

    /// Each of `batch` token rows of each projection alone through the
    /// normed decode kernel of the projection's format.
    fn alone(&self, emu: &Emu, x: &[f32], batch: usize) -> Outs {
        std::array::from_fn(|i| {
            let rows = [RQ, RK, RK][i];
            let dt = self.format(i);
            let (st, cfg) = decode_launch(dt, rows, COLS, 2);
            let mut all = Vec::new();
            for t in 0..batch {
                let mut y = vec![f32::NAN; rows];
                let args = [
                    Arg::of(&self.w[i]),
                    Arg::U64(self.row_bytes(i)),
                    Arg::of(&x[t * COLS..(t + 1) * COLS]),
                    Arg::of(&self.b[i]),
                    Arg::of_mut(&mut y),
                    Arg::I32(rows as i32),
                    Arg::I32(COLS as i32),
                    Arg::I32(0),
                    Arg::of(&self.nw),
                    Arg::F32(EPS),
                ];
                let name = format!("matvec_{}{st}", dtype_suffix(dt).expect("format"));
                emu.launch(&name, cfg, Order::Forward, &args).unwrap();
                all.extend(bits(&y));
            }
            all
        })
    }

    /// The fused kernel `variant` (`_st` with `norm_arg` eps, or `_bst` with
    /// the row scales and `tail` = batch, per) over `batch` rows.
    #[allow(clippy::too_many_arguments)]
    fn fused(
        &self,
        emu: &Emu,
        variant: &str,
        x: &[f32],
        norm_arg: Arg,
        tail: &[Arg],
        batch: usize,
        cfg: LaunchConfig,
        order: Order,
    ) -> Outs {
        let (mut yq, mut yk, mut yv) = (
            vec![f32::NAN; RQ * batch],
            vec![f32::NAN; RK * batch],
            vec![f32::NAN; RK * batch],
        );
        let mut args = vec![
            Arg::of(&self.w[0]),
            Arg::of(&self.w[1]),
            Arg::of(&self.w[2]),
            Arg::U64(self.row_bytes(0)),
            Arg::U64(self.row_bytes(2)),
            Arg::of(x),
            Arg::of(&self.nw),
            norm_arg,
            Arg::of(&self.b[0]),
            Arg::of(&self.b[1]),
            Arg::of(&self.b[2]),
            Arg::of_mut(&mut yq),
            Arg::of_mut(&mut yk),
            Arg::of_mut(&mut yv),
            Arg::I32(RQ as i32),
            Arg::I32(RK as i32),
            Arg::I32(RK as i32),
            Arg::I32(COLS as i32),
        ];
        args.extend_from_slice(tail);
        emu.launch(&self.f.kernel(variant), cfg, order, &args)
            .unwrap();
        [bits(&yq), bits(&yk), bits(&yv)]
    }
}

/// `_qkv_st` on the launcher's grid (a warp a row) and on one block (its
/// warps walk 16 rows each, across the q/k and v matrices, so a warp
/// switches format mid-walk) equals three normed products.
#[test]
fn fused_qkv_equals_three_normed_products_in_every_format_and_mixed_pair() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_qkv");
    for f in format_cases() {
        let case = QkvCase::random(&mut r, f);
        let x = r.vec(COLS);
        let want = case.alone(emu, &x, 1);
        let (_, launcher) = decode_launch(f.staging(), RQ + 2 * RK, COLS, 2);
        let mut one_block = launcher;
        one_block.grid_dim.0 = 1;
        for (cfg, order) in [(launcher, Order::Reverse), (one_block, Order::Forward)] {
            let got = case.fused(emu, "_st", &x, Arg::F32(EPS), &[], 1, cfg, order);
            assert!(
                got == want,
                "{} fused q/k/v on {} blocks differs from three normed products",
                case.name(),
                cfg.grid_dim.0
            );
        }
    }
    println!("emu qkv: fused q/k/v identical to three normed products in all 11 formats and {} mixed pairs", QKV_MIXED.len());
}

/// `_qkv_bst` gives every token row of each projection its lone bits, in
/// every thread order, on the launcher's grid for one SM (warps walk rows
/// across the matrices) and for 132 SMs, at 2 rows, 12 (a full group of 8
/// vectors and a partial one) and 33 (five groups, a step past
/// BT_MIN_BATCH).
#[test]
fn batched_fused_qkv_rows_are_bit_identical_to_lone_rows_in_every_format_and_mixed_pair() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_qkv_rows");
    let mut case_no = 0;
    for f in format_cases() {
        let case = QkvCase::random(&mut r, f);
        for batch in [2usize, 12, 33] {
            let x = r.vec(batch * COLS);
            let want = case.alone(emu, &x, batch);
            case_no += 1;
            let mut ord = orders(&mut r);
            ord.rotate_left(case_no % 4);
            for (sms, order) in [EMU_SMS, 132].into_iter().zip(ord) {
                let scale = row_scales(emu, &x, COLS, batch, order);
                let (per, cfg) = batched_launch(f.staging(), RQ + 2 * RK, COLS, batch, true, sms)
                    .expect("bst shape");
                let tail = [Arg::I32(batch as i32), Arg::I32(per as i32)];
                let got = case.fused(emu, "_bst", &x, Arg::of(&scale), &tail, batch, cfg, order);
                assert!(
                    got == want,
                    "{} fused q/k/v of {batch} rows on {:?} ({order:?}) differs from lone rows",
                    case.name(),
                    cfg.grid_dim
                );
            }
        }
    }
    println!("emu qkv rows: fused q/k/v rows identical to lone normed rows in all 11 formats and {} mixed pairs", QKV_MIXED.len());
}
