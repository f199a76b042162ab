//! The CPU reference engine's [`BlockKernels`]: one step over a ragged
//! batch (runs of consecutive tokens of several sequences), in f32, in the
//! fixed reduction orders of [`ops`] (issue 11 points 1 and 5). The order of
//! the operations is `engine::block`'s.
//!
//! Batch invariance: every row is computed by arithmetic that does not look
//! at the other rows. Matmuls dot each row on its own in a fixed order, the
//! RoPE angle and the KV row come from the row's own position and page
//! table, and attention reads only the row's own sequence. So a sequence's
//! logits are the same bits whichever sequences share its step.

use super::{ops, CpuEngine};
use crate::engine::batch::StepChunk;
use crate::engine::kernels::BlockKernels;
use crate::error::Result;
use rayon::prelude::*;

/// Where one row of the step lives: its sequence's position and pages.
struct RowAt {
    pos: usize,
    /// Index into the step's page tables (one per chunk).
    chunk: usize,
}

/// One step's buffers, `n` token rows each.
pub(super) struct CpuStep<'a> {
    e: &'a mut CpuEngine,
    tokens: Vec<u32>,
    rows: Vec<RowAt>,
    /// Each chunk's sequence's pages, in position order.
    tables: Vec<Vec<u32>>,
    /// The rows whose logits the step computes: the last of each chunk, or
    /// every row (teacher forcing).
    logit_rows: Vec<usize>,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Row-major `[logit_rows][vocab]`, filled by `lm_head`.
    pub(super) logits: Vec<f32>,
}

impl<'a> CpuStep<'a> {
    /// Rotate q and k at the rows' positions, then store k and v in the
    /// layer's pool rows (the first part of `BlockKernels::attention`).
    fn rope_kv_store(&mut self, layer: usize) -> Result<()> {
        let c = &self.e.cfg;
        let hd = c.head_dim;
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        for (t, row) in self.rows.iter().enumerate() {
            ops::rope(
                &mut self.q[t * qd..(t + 1) * qd],
                hd,
                row.pos,
                c.rope_base,
                c.rope_style,
            );
            ops::rope(
                &mut self.k[t * kvd..(t + 1) * kvd],
                hd,
                row.pos,
                c.rope_base,
                c.rope_style,
            );
        }
        if self.e.llamacpp_rounding {
            ops::round_f16(&mut self.q);
            ops::round_f16(&mut self.k);
            ops::round_f16(&mut self.v);
        }
        for (t, row) in self.rows.iter().enumerate() {
            let at = self.pool_row(row.chunk, row.pos) * kvd;
            self.e.k_pool[layer][at..at + kvd].copy_from_slice(&self.k[t * kvd..(t + 1) * kvd]);
            self.e.v_pool[layer][at..at + kvd].copy_from_slice(&self.v[t * kvd..(t + 1) * kvd]);
        }
        Ok(())
    }

    /// A step over `chunks` (already checked, every sequence admitted); the
    /// logits of every row when `all`, else of each chunk's last row.
    pub(super) fn new(e: &'a mut CpuEngine, chunks: &[StepChunk<'_>], all: bool) -> Self {
        let mut tokens = Vec::new();
        let mut rows = Vec::new();
        let mut tables = Vec::with_capacity(chunks.len());
        let mut logit_rows = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let first = rows.len();
            tokens.extend_from_slice(c.tokens);
            rows.extend((0..c.tokens.len()).map(|t| RowAt {
                pos: c.pos + t,
                chunk: i,
            }));
            tables.push(e.pages_of(c.seq).to_vec());
            if all {
                logit_rows.extend(first..rows.len());
            } else {
                logit_rows.push(rows.len() - 1);
            }
        }
        let c = &e.cfg;
        let n = tokens.len();
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let (d, ffn) = (c.d_model, c.ffn_dim);
        Self {
            tokens,
            rows,
            tables,
            logit_rows,
            x: vec![0f32; n * d],
            xn: vec![0f32; n * d],
            q: vec![0f32; n * qd],
            k: vec![0f32; n * kvd],
            v: vec![0f32; n * kvd],
            att: vec![0f32; n * qd],
            tmp: vec![0f32; n * d],
            gate: vec![0f32; n * ffn],
            up: vec![0f32; n * ffn],
            logits: Vec::new(),
            e,
        }
    }

    fn n(&self) -> usize {
        self.tokens.len()
    }

    /// The pool row that holds `pos` of chunk `chunk`'s sequence.
    fn pool_row(&self, chunk: usize, pos: usize) -> usize {
        let pt = self.e.page_tokens();
        self.tables[chunk][pos / pt] as usize * pt + pos % pt
    }
}

/// x ← x + input·Wᵀ for `n` rows, through `tmp` (the residual after a
/// projection: attention-out and down share it).
fn add_linear(
    e: &CpuEngine,
    w: &crate::model::arch::TensorRef,
    input: &[f32],
    n: usize,
    tmp: &mut [f32],
    x: &mut [f32],
) -> Result<()> {
    e.mm(w, input, n, tmp)?;
    x.iter_mut().zip(tmp.iter()).for_each(|(a, b)| *a += b);
    Ok(())
}

/// xn ← RMSNorm(x) row by row (`d` values a row) with `weight`.
fn norm_rows(x: &[f32], weight: &[f32], eps: f32, d: usize, xn: &mut [f32]) {
    for (x, xn) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
        ops::rmsnorm(x, weight, eps, xn);
    }
}

impl BlockKernels for CpuStep<'_> {
    fn embed(&mut self) -> Result<()> {
        let d = self.e.cfg.d_model;
        let embd = &self.e.w.token_embd;
        let erb = crate::model::quant::row_bytes(embd.dtype, d)?;
        let table = self.e.tbytes(embd);
        for (t, &id) in self.tokens.iter().enumerate() {
            let row = &table[id as usize * erb..(id as usize + 1) * erb];
            crate::model::quant::dequantize(embd.dtype, row, &mut self.x[t * d..(t + 1) * d])?;
        }
        Ok(())
    }

    fn norm_qkv(&mut self, layer: usize) -> Result<()> {
        let (d, eps) = (self.e.cfg.d_model, self.e.cfg.norm_eps);
        norm_rows(
            &self.x,
            &self.e.small[layer].attn_norm,
            eps,
            d,
            &mut self.xn,
        );
        let n = self.n();
        let lw = &self.e.w.layers[layer];
        self.e.mm(&lw.wq, &self.xn, n, &mut self.q)?;
        self.e.mm(&lw.wk, &self.xn, n, &mut self.k)?;
        self.e.mm(&lw.wv, &self.xn, n, &mut self.v)?;
        let s = &self.e.small[layer];
        for (buf, bias) in [
            (&mut self.q, &s.bq),
            (&mut self.k, &s.bk),
            (&mut self.v, &s.bv),
        ] {
            if let Some(b) = bias {
                for row in buf.chunks_exact_mut(b.len()) {
                    row.iter_mut().zip(b).for_each(|(a, bb)| *a += bb);
                }
            }
        }
        Ok(())
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        self.rope_kv_store(layer)?;
        let c = &self.e.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let qd = nh * hd;
        let pt = self.e.page_tokens();
        let (kc, vc) = (&self.e.k_pool[layer], &self.e.v_pool[layer]);
        let (q, rows, tables) = (&self.q, &self.rows, &self.tables);
        self.att
            .par_chunks_mut(hd)
            .enumerate()
            .for_each(|(idx, out)| {
                let (t, h) = (idx / nh, idx % nh);
                let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                let pages = &tables[rows[t].chunk];
                let row_of = |p: usize| pages[p / pt] as usize * pt + p % pt;
                ops::attention_head(qh, kc, vc, rows[t].pos + 1, h, nh, nkv, hd, out, row_of);
            });
        Ok(())
    }

    fn attn_out(&mut self, layer: usize) -> Result<()> {
        let n = self.n();
        let wo = &self.e.w.layers[layer].wo;
        add_linear(self.e, wo, &self.att, n, &mut self.tmp, &mut self.x)
    }

    fn norm_gate_up(&mut self, layer: usize) -> Result<()> {
        let (d, eps) = (self.e.cfg.d_model, self.e.cfg.norm_eps);
        norm_rows(&self.x, &self.e.small[layer].ffn_norm, eps, d, &mut self.xn);
        let n = self.n();
        let lw = &self.e.w.layers[layer];
        self.e.mm(&lw.w_gate, &self.xn, n, &mut self.gate)?;
        self.e.mm(&lw.w_up, &self.xn, n, &mut self.up)?;
        ops::swiglu(&mut self.gate, &self.up);
        Ok(())
    }

    fn ffn_down(&mut self, layer: usize) -> Result<()> {
        let n = self.n();
        let w_down = &self.e.w.layers[layer].w_down;
        add_linear(self.e, w_down, &self.gate, n, &mut self.tmp, &mut self.x)
    }

    fn lm_head(&mut self) -> Result<()> {
        let (d, vocab) = (self.e.cfg.d_model, self.e.cfg.vocab_size);
        let eps = self.e.cfg.norm_eps;
        let n_out = self.logit_rows.len();
        // The rows whose logits are wanted, normalized into one contiguous
        // input (each row's arithmetic is its own, wherever it sits).
        let mut xn = vec![0f32; n_out * d];
        for (out, &r) in xn.chunks_exact_mut(d).zip(&self.logit_rows) {
            ops::rmsnorm(&self.x[r * d..(r + 1) * d], &self.e.output_norm, eps, out);
        }
        self.logits = vec![0f32; n_out * vocab];
        self.e.mm(&self.e.w.output, &xn, n_out, &mut self.logits)
    }
}
