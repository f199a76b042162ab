//! The split-KV decode attention under the kernel emulator (KERNEL-ATTN,
//! WORKER-4710; issue 11 points 5 and 7): a decode step's rows (one per
//! sequence, each with its own scrambled page table into one pool) get the
//! same bits from `attn_partial` launched for all rows at once and from
//! `attn_decode_<hd>` (a warp per chunk, a block per GQA group, in the
//! launcher's own shape) as from `attn_partial` launched for each row alone,
//! and they agree with a float64 attention. Covers groups of 7, 3, 4, 1 and
//! 8 query heads, head sizes 64, 128 and 256 (the grouped kernel has 64 and
//! 128), partial chunks, rows folded inside one grouped block and by the
//! last of several, past a fold tile of the grouped kernel (32 chunks) and
//! of attn_partial (ATT_THREADS chunks).

use super::{Arg, Emu, Order};
use crate::engine::cuda::prefill_tests::cpu_attention;
use crate::gpu::attention::{
    decode_attention_launch, AD_CHUNKS, ATT_CHUNK, ATT_THREADS, KV_PAGE_TOKENS,
};
use crate::gpu::test_support::{rel_err, Rng};
use crate::gpu::Gpu;

/// One decode step: `positions[s]` is sequence s's row; keys and values per
/// sequence in position order (the reference's layout) and scattered into
/// one pool through each sequence's page table (the kernels').
struct Step {
    nh: usize,
    nkv: usize,
    hd: usize,
    max_ctx: usize,
    positions: Vec<usize>,
    kseq: Vec<Vec<f32>>,
    vseq: Vec<Vec<f32>>,
    kpool: Vec<f32>,
    vpool: Vec<f32>,
    tables: Vec<i32>,
    q: Vec<f32>,
}

impl Step {
    fn random(r: &mut Rng, (nh, nkv, hd): (usize, usize, usize), positions: &[usize]) -> Step {
        let max_ctx = (positions.iter().max().unwrap() + 1).next_multiple_of(KV_PAGE_TOKENS);
        let table_len = max_ctx / KV_PAGE_TOKENS;
        let n_seq = positions.len();
        let width = nkv * hd;
        // Sequence s's page i is pool page (i * n_seq + s) reversed: every
        // sequence's pages interleave with the others' and run backwards.
        let pool_pages = table_len * n_seq;
        let tables: Vec<i32> = (0..n_seq)
            .flat_map(|s| (0..table_len).map(move |i| (pool_pages - 1 - (i * n_seq + s)) as i32))
            .collect();
        let (mut kpool, mut vpool) = (
            vec![f32::NAN; pool_pages * KV_PAGE_TOKENS * width],
            vec![f32::NAN; pool_pages * KV_PAGE_TOKENS * width],
        );
        let (mut kseq, mut vseq) = (Vec::new(), Vec::new());
        for (s, &p) in positions.iter().enumerate() {
            let (k, v) = (r.vec((p + 1) * width), r.vec((p + 1) * width));
            for t in 0..=p {
                let page = tables[s * table_len + t / KV_PAGE_TOKENS] as usize;
                let row = (page * KV_PAGE_TOKENS + t % KV_PAGE_TOKENS) * width;
                kpool[row..row + width].copy_from_slice(&k[t * width..(t + 1) * width]);
                vpool[row..row + width].copy_from_slice(&v[t * width..(t + 1) * width]);
            }
            kseq.push(k);
            vseq.push(v);
        }
        Step {
            nh,
            nkv,
            hd,
            max_ctx,
            positions: positions.to_vec(),
            q: r.vec(n_seq * nh * hd),
            kseq,
            vseq,
            kpool,
            vpool,
            tables,
        }
    }

    fn table_len(&self) -> usize {
        self.max_ctx / KV_PAGE_TOKENS
    }

    /// Each of `rows`' place: {position, sequence, pool row, 0}.
    fn place(&self, rows: &[usize]) -> Vec<i32> {
        rows.iter()
            .flat_map(|&s| {
                let p = self.positions[s];
                let page = self.tables[s * self.table_len() + p / KV_PAGE_TOKENS];
                [
                    p as i32,
                    s as i32,
                    page * KV_PAGE_TOKENS as i32 + (p % KV_PAGE_TOKENS) as i32,
                    0,
                ]
            })
            .collect()
    }

    /// Rows `rows`' queries, in row order.
    fn queries(&self, rows: &[usize]) -> Vec<f32> {
        let w = self.nh * self.hd;
        rows.iter()
            .flat_map(|&s| self.q[s * w..(s + 1) * w].to_vec())
            .collect()
    }

    /// Rows `rows` of the step through kernel `name` (Gpu::attention's
    /// arguments, its scratch and counters for exactly these rows).
    fn run(&self, emu: &Emu, name: &str, rows: &[usize], order: Order) -> Vec<u32> {
        let (mut kpool, mut vpool) = (self.kpool.clone(), self.vpool.clone());
        let q = self.queries(rows);
        self.run_on(emu, name, rows, order, &q, (&mut kpool, &mut vpool), None)
    }

    /// As `run`, with these queries and pools, and for the grouped kernel
    /// this step's un-rotated keys and values to rotate and store
    /// (`Gpu::attention`'s `rope`: k, v, neox, base).
    #[allow(clippy::too_many_arguments)]
    fn run_on(
        &self,
        emu: &Emu,
        name: &str,
        rows: &[usize],
        order: Order,
        q: &[f32],
        (kpool, vpool): (&mut [f32], &mut [f32]),
        rope: Option<(&[f32], &[f32], bool, f32)>,
    ) -> Vec<u32> {
        let (nh, hd, n) = (self.nh, self.hd, rows.len());
        let n_chunks = self.max_ctx.div_ceil(ATT_CHUNK);
        let reach = rows.iter().map(|&s| self.positions[s] + 1).max().unwrap();
        // Gpu::attention's launch shape for `name` (head size 0 gives the
        // per-head kernel's).
        let shape_hd = if name == "attn_partial" { 0 } else { hd };
        let (chosen, cfg) =
            decode_attention_launch(nh, self.nkv, shape_hd, n, reach.div_ceil(ATT_CHUNK));
        assert_eq!(chosen, name, "the launcher's kernel for this shape");
        let place = self.place(rows);
        // Partials, then one zeroed counter per (row, head).
        let partials = n * nh * n_chunks * (hd + 2);
        let mut scratch = vec![0f32; Gpu::attn_scratch_floats(nh, hd, self.max_ctx, n)];
        let counters = scratch[partials..].as_mut_ptr() as u64;
        let mut out = vec![f32::NAN; n * nh * hd];
        let mut args = vec![
            Arg::of(q),
            Arg::of_mut(kpool),
            Arg::of_mut(vpool),
            Arg::of_mut(&mut scratch),
            Arg::Ptr(counters),
            Arg::of_mut(&mut out),
            Arg::of(&place),
            Arg::of(&self.tables),
            Arg::I32(self.table_len() as i32),
            Arg::I32(nh as i32),
            Arg::I32(self.nkv as i32),
            Arg::I32(hd as i32),
            Arg::I32(n_chunks as i32),
            Arg::F32(1.0 / (hd as f32).sqrt()),
        ];
        if name != "attn_partial" {
            args.extend(match rope {
                Some((k, v, neox, base)) => [
                    Arg::of(k),
                    Arg::of(v),
                    Arg::I32(i32::from(neox)),
                    Arg::F32(base),
                ],
                None => [Arg::Ptr(0), Arg::Ptr(0), Arg::I32(0), Arg::F32(0.0)],
            });
        }
        emu.launch(name, cfg, order, &args).unwrap();
        assert!(
            scratch[partials..].iter().all(|&c| c.to_bits() == 0),
            "{name} left a ticket counter non-zero"
        );
        out.iter().map(|f| f.to_bits()).collect()
    }

    /// Relative error (root of summed squares) of `got` (all rows in order)
    /// against float64.
    fn error(&self, got: &[u32]) -> f64 {
        let (nh, hd) = (self.nh, self.hd);
        let want: Vec<f64> = self
            .positions
            .iter()
            .enumerate()
            .flat_map(|(s, &p)| {
                let q = &self.q[s * nh * hd..(s + 1) * nh * hd];
                cpu_attention(q, &self.kseq[s], &self.vseq[s], nh, self.nkv, hd, p, 1)
            })
            .collect();
        let got: Vec<f32> = got.iter().map(|&b| f32::from_bits(b)).collect();
        rel_err(&got, &want)
    }
}

#[test]
fn decode_attention_rows_get_their_lone_bits() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_decode_attention");
    let tile = ATT_THREADS * ATT_CHUNK;
    for (shape, positions) in [
        ((14, 2, 64), vec![0, 31, 32, 200, 77, 5, 63, 150, 96]),
        ((9, 3, 64), vec![40, 3, 129, 64, 220, 11, 90, 33]),
        ((8, 2, 128), vec![70, 1, 33, 95, 12, 64, 128, 7]),
        ((4, 1, 256), vec![45, 2, 90, 31, 9, 60, 17, 100]),
        ((4, 4, 64), vec![33, 70, 1, 64, 12, 99, 40, 5]),
        ((16, 2, 256), vec![50, 7, 96, 31, 64, 2, 130, 18]),
        ((14, 2, 64), vec![tile + 40, 3, 260, 33, 95, 7, 64, 128]),
        (
            (12, 2, 128),
            vec![
                32 * ATT_CHUNK + 5,
                1100,
                3,
                64 * ATT_CHUNK - 1,
                32 * ATT_CHUNK - 1,
            ],
        ),
        // Around one grouped block's reach (AD_CHUNKS chunks): folded in
        // the block, then by the last of two blocks.
        (
            (14, 2, 64),
            vec![
                AD_CHUNKS * ATT_CHUNK - 1,
                AD_CHUNKS * ATT_CHUNK,
                AD_CHUNKS * ATT_CHUNK + 1,
                0,
                2 * AD_CHUNKS * ATT_CHUNK,
            ],
        ),
    ] {
        let step = Step::random(&mut r, shape, &positions);
        let all: Vec<usize> = (0..positions.len()).collect();
        let lone: Vec<u32> = all
            .iter()
            .flat_map(|&s| step.run(emu, "attn_partial", &[s], Order::Forward))
            .collect();
        let e = step.error(&lone);
        let per_head = step.run(emu, "attn_partial", &all, Order::Reverse);
        let shuffled = step.run(emu, "attn_partial", &all, Order::Shuffled(7));
        let grouped_name = match shape.2 {
            64 => Some("attn_decode_64"),
            128 => Some("attn_decode_128"),
            _ => None,
        };
        let grouped = grouped_name.map(|g| step.run(emu, g, &all, Order::Shuffled(11)));
        println!(
            "emu attention {}q/{}kv hd {} at {positions:?}: batched {}, grouped {} (identical to lone rows); rel err {e:.1e} (tol 1e-5)",
            shape.0, shape.1, shape.2,
            per_head == lone && shuffled == lone,
            grouped.as_ref().map_or("none for this head size".into(), |g| (*g == lone).to_string())
        );
        assert!(e < 1e-5, "attention rel err {e}");
        assert!(
            per_head == lone,
            "batched attn_partial rows differ from lone rows"
        );
        assert!(
            shuffled == lone,
            "batched attn_partial rows depend on the thread order"
        );
        if let Some(grouped) = grouped {
            assert!(
                grouped == lone,
                "attn_decode_<hd> rows differ from lone rows"
            );
        }
    }
}

/// The grouped decode kernel with the step's RoPE fused in
/// (`Gpu::attention` given the step's `rope`) gives every row the bits `rope_kv` followed
/// by the same kernel gives it, and leaves both pools exactly as `rope_kv`
/// leaves them (each row's key rotated, its value copied, into the row's
/// pool row; nothing else touched): both rotation styles at head sizes 64
/// and 128, rows one block covers and rows of two and four blocks (the last
/// one holding the row's own position stores it), three thread orders.
#[test]
fn fused_rope_decode_attention_matches_rope_kv_then_attention() {
    let emu = Emu::get();
    let mut r = Rng::fresh("emu_fused_rope_attention");
    let reach = AD_CHUNKS * ATT_CHUNK;
    let cases = [
        (
            (14, 2, 64),
            true,
            vec![0, 31, 200, reach, 77, 3 * reach + 5],
        ),
        ((9, 3, 64), false, vec![40, 3, reach - 1, 64, 2 * reach + 1]),
        ((8, 2, 128), true, vec![70, 1, reach + 33, 95, 12]),
        ((8, 2, 128), false, vec![3, reach + 2, 40]),
    ];
    for (case_no, (shape, neox, positions)) in cases.into_iter().enumerate() {
        let mut step = Step::random(&mut r, shape, &positions);
        let (nh, nkv, hd) = shape;
        let rows: Vec<usize> = (0..positions.len()).collect();
        let n = rows.len();
        let base = [10_000.0f32, 1_000_000.0, 100_000.0, 500_000.0][case_no];
        // The step's own rows are not in the cache yet.
        let place = step.place(&rows);
        for p in place.chunks_exact(4) {
            let at = p[2] as usize * nkv * hd;
            step.kpool[at..at + nkv * hd].fill(f32::NAN);
            step.vpool[at..at + nkv * hd].fill(f32::NAN);
        }
        let (k, v) = (r.vec(n * nkv * hd), r.vec(n * nkv * hd));
        let q = step.queries(&rows);
        // rope_kv (Gpu::rope_kv's launch), then the kernel on rotated q.
        let (mut q_rot, mut kp_ref, mut vp_ref) =
            (q.clone(), step.kpool.clone(), step.vpool.clone());
        let total = (nh + nkv) * hd / 2 + nkv * hd;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (total.div_ceil(256) as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = [
            Arg::of_mut(&mut q_rot),
            Arg::of(&k),
            Arg::of(&v),
            Arg::of_mut(&mut kp_ref),
            Arg::of_mut(&mut vp_ref),
            Arg::of(&place),
            Arg::I32(nh as i32),
            Arg::I32(nkv as i32),
            Arg::I32(hd as i32),
            Arg::I32(i32::from(neox)),
            Arg::F32(base),
        ];
        emu.launch("rope_kv", cfg, Order::Forward, &args).unwrap();
        let name = if hd == 64 {
            "attn_decode_64"
        } else {
            "attn_decode_128"
        };
        let want = step.run_on(
            emu,
            name,
            &rows,
            Order::Forward,
            &q_rot,
            (&mut kp_ref, &mut vp_ref),
            None,
        );
        for order in [
            Order::Forward,
            Order::Reverse,
            Order::Shuffled(case_no as u64 + 3),
        ] {
            let (mut kp, mut vp) = (step.kpool.clone(), step.vpool.clone());
            let got = step.run_on(
                emu,
                name,
                &rows,
                order,
                &q,
                (&mut kp, &mut vp),
                Some((&k, &v, neox, base)),
            );
            let same_pool =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            println!(
                "emu fused rope {nh}q/{nkv}kv hd {hd} neox {neox} at {positions:?} ({order:?}): out {}, k pool {}, v pool {}",
                got == want,
                same_pool(&kp, &kp_ref),
                same_pool(&vp, &vp_ref)
            );
            assert!(got == want, "fused rows differ from rope_kv + {name}");
            assert!(
                same_pool(&kp, &kp_ref),
                "fused key stores differ from rope_kv's"
            );
            assert!(
                same_pool(&vp, &vp_ref),
                "fused value stores differ from rope_kv's"
            );
        }
    }
}
