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
use crate::engine::cuda::tests::Rng;
use crate::gpu::attention::{
    decode_attention_launch, AD_WARPS, ATT_CHUNK, ATT_THREADS, KV_PAGE_TOKENS,
};
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

    /// Rows `rows` of the step through kernel `name` (Gpu::attention's
    /// arguments, its scratch and counters for exactly these rows).
    fn run(&self, emu: &Emu, name: &str, rows: &[usize], order: Order) -> Vec<u32> {
        let (nh, hd, n) = (self.nh, self.hd, rows.len());
        let n_chunks = self.max_ctx.div_ceil(ATT_CHUNK);
        let reach = rows.iter().map(|&s| self.positions[s] + 1).max().unwrap();
        // Gpu::attention's launch shape for `name` (head size 0 gives the
        // per-head kernel's).
        let shape_hd = if name == "attn_partial" { 0 } else { hd };
        let (chosen, cfg) =
            decode_attention_launch(nh, self.nkv, shape_hd, n, reach.div_ceil(ATT_CHUNK));
        assert_eq!(chosen, name, "the launcher's kernel for this shape");
        let place: Vec<i32> = rows
            .iter()
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
            .collect();
        let q: Vec<f32> = rows
            .iter()
            .flat_map(|&s| self.q[s * nh * hd..(s + 1) * nh * hd].to_vec())
            .collect();
        // Partials, then one zeroed counter per (row, head).
        let partials = n * nh * n_chunks * (hd + 2);
        let mut scratch = vec![0f32; Gpu::attn_scratch_floats(nh, hd, self.max_ctx, n)];
        let counters = scratch[partials..].as_mut_ptr() as u64;
        let mut out = vec![f32::NAN; n * nh * hd];
        let args = [
            Arg::of(&q),
            Arg::of(&self.kpool),
            Arg::of(&self.vpool),
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
        emu.launch(name, cfg, order, &args).unwrap();
        assert!(
            scratch[partials..].iter().all(|&c| c.to_bits() == 0),
            "{name} left a ticket counter non-zero"
        );
        out.iter().map(|f| f.to_bits()).collect()
    }

    /// Worst relative error of `got` (all rows in order) against float64.
    fn error(&self, got: &[u32]) -> f64 {
        let (nh, hd) = (self.nh, self.hd);
        let (mut num, mut den) = (0f64, 0f64);
        for (s, &p) in self.positions.iter().enumerate() {
            let q = &self.q[s * nh * hd..(s + 1) * nh * hd];
            let want = cpu_attention(q, &self.kseq[s], &self.vseq[s], nh, self.nkv, hd, p, 1);
            for (i, w) in want.iter().enumerate() {
                let g = f32::from_bits(got[s * nh * hd + i]) as f64;
                num += (g - w).powi(2);
                den += w.powi(2);
            }
        }
        (num / den).sqrt()
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
        // Around one grouped block's reach (AD_WARPS chunks): folded in
        // the block, then by the last of two blocks.
        (
            (14, 2, 64),
            vec![
                AD_WARPS * ATT_CHUNK - 1,
                AD_WARPS * ATT_CHUNK,
                AD_WARPS * ATT_CHUNK + 1,
                0,
                2 * AD_WARPS * ATT_CHUNK,
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
