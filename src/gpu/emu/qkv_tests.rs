//! The fused q/k/v decode kernels under the kernel emulator (KERNEL-MATVEC,
//! WORKER-4710; issue 11 point 7, issue 12 point 1): `_qkv_st` (what a lone
//! decode row runs) and `_qkv_bst` (a step of several rows) give each
//! projection of each token row the bits the normed `_st` kernel of that
//! projection's own format gives it alone, in every block format and in
//! every mixed pair of `kernel_units::QKV_MIXED` (q and k in one format, v
//! in another). That is the link that makes a lone row's q, k and v equal a
//! batched row's, and the fused launch equal three.

use cudarc::driver::LaunchConfig;

use super::guarded::Guarded;
use super::matvec_tests::{bits, orders, row_scales, EMU_SMS, EPS};
use super::{Arg, Emu, Order};
use crate::gpu::kernel_units::QKV_MIXED;
use crate::gpu::launch_shape::{batched_launch, decode_launch};
use crate::gpu::ops::{dtype_suffix, row_bytes, FORMATS};
use crate::gpu::qkv::QkvFormats;
use crate::gpu::test_support::Rng;
use crate::model::gguf::GgmlType;
use crate::model::quant;

/// A case's rows of q, k and v and its width.
#[derive(Clone, Copy, Debug)]
struct Shape {
    rows: [usize; 3],
    cols: usize,
}

/// Qwen-like row counts (q wide, k and v narrow, with biases), half a
/// chunk wide: every single format runs this one.
const HALF_CHUNK: Shape = Shape {
    rows: [96, 16, 16],
    cols: 512,
};

/// The mixed pairs' shapes: a chunk and a quarter wide (a full chunk, then
/// a partial one, so a v row stages a whole chunk of its larger format:
/// a slot sized for q/k's chunk alone overruns its neighbour's), v rows
/// other than k's and a q/k/v boundary off the one-block grid's stride
/// (some warps switch format, some start on v, some have no v row), no v
/// rows, and no q or k rows.
const MIXED_SHAPES: [Shape; 4] = [
    Shape {
        rows: [96, 16, 16],
        cols: 1280,
    },
    Shape {
        rows: [96, 12, 20],
        cols: 1280,
    },
    Shape {
        rows: [40, 12, 0],
        cols: 512,
    },
    Shape {
        rows: [0, 0, 20],
        cols: 512,
    },
];

/// Every format alone at HALF_CHUNK, then every mixed pair at MIXED_SHAPES.
fn cases() -> Vec<(QkvFormats, Shape)> {
    let by_suffix = |s: &str| -> GgmlType {
        FORMATS
            .iter()
            .find(|f| f.1 == s)
            .unwrap_or_else(|| panic!("QKV_MIXED names {s}, which no kernel reads"))
            .0
    };
    let mut cases: Vec<(QkvFormats, Shape)> = FORMATS
        .iter()
        .map(|f| (QkvFormats::one(f.0), HALF_CHUNK))
        .collect();
    for (qk, _, v, _) in QKV_MIXED {
        let f = QkvFormats::of(by_suffix(qk), by_suffix(qk), by_suffix(v));
        let f = f.expect("a QKV_MIXED pair is fusable");
        cases.extend(MIXED_SHAPES.map(|shape| (f, shape)));
    }
    cases
}

/// One case's weights (q and k in `f.qk`, v in `f.v`), norm weight, biases;
/// the weights are copies that end at a guard page (a row fetched past a
/// matrix's end stops the test).
struct QkvCase {
    f: QkvFormats,
    shape: Shape,
    w: [Guarded; 3],
    nw: Vec<f32>,
    b: [Vec<f32>; 3],
}

/// Output bits of q, k and v.
type Outs = [Vec<u32>; 3];

impl QkvCase {
    fn random(r: &mut Rng, f: QkvFormats, shape: Shape) -> Self {
        let (rows, cols) = (shape.rows, shape.cols);
        let w = std::array::from_fn(|i| {
            let mut q = Vec::new();
            quant::quantize(f.of_proj(i), &r.vec(rows[i] * cols), &mut q).expect("quantize");
            Guarded::new(&q)
        });
        let nw = r.vec(cols);
        let b = std::array::from_fn(|i| r.vec(rows[i]));
        Self { f, shape, w, nw, b }
    }

    fn total_rows(&self) -> usize {
        self.shape.rows.iter().sum()
    }

    fn name(&self) -> String {
        let [rq, rk, rv] = self.shape.rows;
        let (qk, v, cols) = (self.f.qk.name(), self.f.v.name(), self.shape.cols);
        format!("{qk}/{v} {rq}+{rk}+{rv} rows of {cols}")
    }

    fn row_bytes(&self, i: usize) -> u64 {
        row_bytes(self.f.of_proj(i), self.shape.cols).expect("row bytes") as u64
    }

    /// Each of `batch` token rows of each projection alone through the
    /// normed decode kernel of the projection's format.
    fn alone(&self, emu: &Emu, x: &[f32], batch: usize) -> Outs {
        let cols = self.shape.cols;
        std::array::from_fn(|i| {
            let rows = self.shape.rows[i];
            let dt = self.f.of_proj(i);
            let (st, cfg) = decode_launch(dt, rows, cols, 2);
            let mut all = Vec::new();
            if rows == 0 {
                return all;
            }
            for t in 0..batch {
                let mut y = vec![f32::NAN; rows];
                let args = [
                    self.w[i].arg(),
                    Arg::U64(self.row_bytes(i)),
                    Arg::of(&x[t * cols..(t + 1) * cols]),
                    Arg::of(&self.b[i]),
                    Arg::of_mut(&mut y),
                    Arg::I32(rows as i32),
                    Arg::I32(cols as i32),
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
        let [rq, rk, rv] = self.shape.rows;
        let (mut yq, mut yk, mut yv) = (
            vec![f32::NAN; rq * batch],
            vec![f32::NAN; rk * batch],
            vec![f32::NAN; rv * batch],
        );
        let mut args = vec![
            self.w[0].arg(),
            self.w[1].arg(),
            self.w[2].arg(),
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
            Arg::I32(rq as i32),
            Arg::I32(rk as i32),
            Arg::I32(rv as i32),
            Arg::I32(self.shape.cols as i32),
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
    for (f, shape) in cases() {
        let case = QkvCase::random(&mut r, f, shape);
        let x = r.vec(shape.cols);
        let want = case.alone(emu, &x, 1);
        let (_, launcher) = decode_launch(f.staging(), case.total_rows(), shape.cols, 2);
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
    for (f, shape) in cases() {
        let case = QkvCase::random(&mut r, f, shape);
        let cols = shape.cols;
        for batch in [2usize, 12, 33] {
            let x = r.vec(batch * cols);
            let want = case.alone(emu, &x, batch);
            case_no += 1;
            let mut ord = orders(&mut r);
            ord.rotate_left(case_no % 4);
            for (sms, order) in [EMU_SMS, 132].into_iter().zip(ord) {
                let scale = row_scales(emu, &x, cols, batch, order);
                let rows = case.total_rows();
                let (per, cfg) =
                    batched_launch(f.staging(), rows, cols, batch, true, sms).expect("bst shape");
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
