//! The register-tiled prefill attention (`attn_prefill_rt_<hd>` with two key
//! groups, `attn_prefill_rt1_<hd>` with one; cuda/attention_prefill.cu)
//! under the kernel emulator (KERNEL-ATTN,
//! WORKER-4710; issue 12 point 3): a prompt's rows, read through a
//! scrambled page table whose rows past the prompt are NaN, agree with a
//! float64 attention; and every row gets the same bits whether its prompt
//! comes in one launch or in two chunks split anywhere, and whatever order
//! the emulator runs the threads in. Covers groups of 7, 3, 6, 1 and 8
//! query heads, head sizes 64 and 128, a start past position 0, tiles that
//! end inside a token's group and rows that end inside a key chunk.

use cudarc::driver::LaunchConfig;

use super::{Arg, Emu, Order};
use crate::engine::cuda::prefill_tests::cpu_attention;
use crate::gpu::attention::{prefill_rt_name, prefill_rt_smem, KV_PAGE_TOKENS, RT_GROUP, RT_ROWS};
use crate::gpu::test_support::{rel_err, Rng};

/// One sequence's prompt of `n` tokens after `pos0` cached ones: keys and
/// values in position order (the reference's layout) and scattered into a
/// pool through a reversed page table (the kernel's).
struct Prompt {
    nh: usize,
    nkv: usize,
    hd: usize,
    pos0: usize,
    n: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>,
    kpool: Vec<f32>,
    vpool: Vec<f32>,
    table: Vec<i32>,
}

impl Prompt {
    fn random(r: &mut Rng, (nh, nkv, hd): (usize, usize, usize), pos0: usize, n: usize) -> Prompt {
        let width = nkv * hd;
        let live = pos0 + n;
        // Two spare pages, so the pool has rows past the prompt (NaN).
        let pages = live.div_ceil(KV_PAGE_TOKENS) + 2;
        let table: Vec<i32> = (0..pages).map(|i| (pages - 1 - i) as i32).collect();
        let (k, v) = (r.vec(live * width), r.vec(live * width));
        let mut kpool = vec![f32::NAN; pages * KV_PAGE_TOKENS * width];
        let mut vpool = kpool.clone();
        for t in 0..live {
            let row = table[t / KV_PAGE_TOKENS] as usize * KV_PAGE_TOKENS + t % KV_PAGE_TOKENS;
            kpool[row * width..][..width].copy_from_slice(&k[t * width..][..width]);
            vpool[row * width..][..width].copy_from_slice(&v[t * width..][..width]);
        }
        let q = r.vec(n * nh * hd);
        Prompt {
            nh,
            nkv,
            hd,
            pos0,
            n,
            k,
            v,
            q,
            kpool,
            vpool,
            table,
        }
    }

    /// Tokens `from..to` of the prompt in one launch of the kernel with
    /// `groups` key groups, as `Gpu::attention_prefill` launches it: their
    /// output bits.
    fn run(&self, emu: &Emu, groups: usize, from: usize, to: usize, order: Order) -> Vec<u32> {
        let (nh, nkv, hd) = (self.nh, self.nkv, self.hd);
        let n_tok = to - from;
        let rows = n_tok * (nh / nkv);
        let cfg = LaunchConfig {
            grid_dim: (nkv as u32, rows.div_ceil(RT_ROWS) as u32, 1),
            block_dim: ((groups * RT_GROUP) as u32, 1, 1),
            shared_mem_bytes: prefill_rt_smem(hd, groups).unwrap() as u32,
        };
        let place = [(self.pos0 + from) as i32, 0, 0, 0];
        let q = &self.q[from * nh * hd..to * nh * hd];
        let mut out = vec![f32::NAN; n_tok * nh * hd];
        let args = [
            Arg::of(q),
            Arg::of(&self.kpool),
            Arg::of(&self.vpool),
            Arg::of_mut(&mut out),
            Arg::of(&place),
            Arg::of(&self.table),
            Arg::I32(self.table.len() as i32),
            Arg::I32(nh as i32),
            Arg::I32(nkv as i32),
            Arg::I32(n_tok as i32),
            Arg::F32(1.0 / (hd as f32).sqrt()),
        ];
        emu.launch(prefill_rt_name(hd, groups), cfg, order, &args)
            .unwrap();
        out.iter().map(|f| f.to_bits()).collect()
    }

    /// Relative error (root of summed squares) of `got` against float64;
    /// a non-finite output (a NaN row read) fails.
    fn error(&self, got: &[u32]) -> f64 {
        let want = cpu_attention(
            &self.q, &self.k, &self.v, self.nh, self.nkv, self.hd, self.pos0, self.n,
        );
        let got: Vec<f32> = got.iter().map(|&b| f32::from_bits(b)).collect();
        rel_err(&got, &want)
    }
}

#[test]
fn prefill_attention_rows_match_float64_and_do_not_depend_on_the_chunking() {
    let emu = Emu::get();
    let mut r = Rng::fresh("prefill_attention_rows_match_float64");
    // (heads, kv heads, head size), cached positions, prompt tokens, where a second run splits it.
    for (shape, pos0, n, split) in [
        ((14, 2, 64), 37, 70, 33),
        ((9, 3, 64), 0, 50, 21),
        ((12, 2, 128), 20, 45, 1),
        ((8, 1, 128), 5, 17, 16),
        ((4, 4, 64), 100, 3, 2),
        ((6, 2, 64), 0, 130, 64),
    ] {
        let p = Prompt::random(&mut r, shape, pos0, n);
        for groups in [2, 1] {
            let whole = p.run(emu, groups, 0, n, Order::Forward);
            let e = p.error(&whole);
            println!("{groups} key groups, {shape:?} pos0 {pos0} n {n}: rel err {e:.2e}");
            assert!(
                e < 1e-6,
                "{shape:?}, {groups} groups: rel err {e:.2e} against float64"
            );
            let mut split_run = p.run(emu, groups, 0, split, Order::Reverse);
            split_run.extend(p.run(emu, groups, split, n, Order::Shuffled(split as u64)));
            assert!(
                split_run == whole,
                "{shape:?}, {groups} groups: rows differ when the prompt comes in chunks of {split} and {}",
                n - split
            );
            assert!(
                p.run(emu, groups, 0, n, Order::Shuffled(n as u64)) == whole,
                "{shape:?}, {groups} groups: rows depend on the thread order"
            );
        }
    }
}
