//! The CUDA engine's [`BlockKernels`] (issue 11 point 1): each operation
//! enqueues its kernels on the engine's stream for the `n` tokens whose ids
//! and first position are already in device memory. The order of the
//! operations is `engine::block`'s.
//!
//! Inside an operation the decode step (n == 1) fuses what it can: the
//! RMSNorm runs inside the q/k/v mat-vecs (one launch for all three when
//! they share a format), gate, up and SwiGLU run in one launch, and
//! attention is the split-KV decode kernel. A prefill chunk normalises once
//! and multiplies through `CudaEngine::mm` (GEMM or batched mat-vec).

use super::{Buf, CudaEngine};
use crate::engine::kernels::BlockKernels;
use crate::error::Result;
use crate::gpu::qkv::Proj;
use crate::gpu::Span;
use crate::model::arch::{RopeStyle, TensorRef};

/// One step of `n` tokens on `e`.
pub(super) struct CudaStep<'a> {
    pub(super) e: &'a CudaEngine,
    pub(super) n: usize,
}

impl CudaStep<'_> {
    fn wt(&self, t: &TensorRef) -> Result<Span<'_>> {
        self.e.weights.span(t.offset, t.n_bytes)
    }

    fn bias(&self, b: &Option<TensorRef>) -> Result<Option<Span<'_>>> {
        b.as_ref().map(|t| self.wt(t)).transpose()
    }

    /// Layer `layer`'s key and value caches.
    fn kv(&self, layer: usize) -> Result<(Span<'_>, Span<'_>)> {
        let c = &self.e.cfg;
        let layer_kv = c.n_kv_heads * c.head_dim * self.e.max_ctx * 4;
        Ok((
            self.e.kv.span(2 * layer * layer_kv, layer_kv)?,
            self.e.kv.span((2 * layer + 1) * layer_kv, layer_kv)?,
        ))
    }
}

impl BlockKernels for CudaStep<'_> {
    fn embed(&mut self) -> Result<()> {
        let (c, a, w) = (&self.e.cfg, &self.e.act, &self.e.w);
        self.e.gpu.embed(
            w.token_embd.dtype,
            self.wt(&w.token_embd)?,
            c.vocab_size,
            a[Buf::Tok].all(),
            a[Buf::X].all(),
            c.d_model,
            self.n,
        )
    }

    fn norm_qkv(&mut self, layer: usize) -> Result<()> {
        let (g, c, a) = (&self.e.gpu, &self.e.cfg, &self.e.act);
        let l = &self.e.w.layers[layer];
        let (d, hd, nh, nkv, n) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, self.n);
        let (nw, eps) = (self.wt(&l.attn_norm)?, c.norm_eps);
        if n > 1 {
            g.rmsnorm(a[Buf::X].all(), nw, a[Buf::Xn].all(), d, n, eps)?;
        }
        let one_format = l.wk.dtype == l.wq.dtype && l.wv.dtype == l.wq.dtype;
        if n == 1 && one_format {
            // Decode, one format: q, k, v in one launch (bit-identical to three).
            let p = |t: &TensorRef, b: &Option<TensorRef>, out, rows| -> Result<Proj<'_>> {
                Ok(Proj {
                    w: self.wt(t)?,
                    bias: self.bias(b)?,
                    out,
                    rows,
                })
            };
            let qkv = [
                p(&l.wq, &l.bq, a[Buf::Q].all(), nh * hd)?,
                p(&l.wk, &l.bk, a[Buf::K].all(), nkv * hd)?,
                p(&l.wv, &l.bv, a[Buf::V].all(), nkv * hd)?,
            ];
            return g.qkv_norm(l.wq.dtype, qkv, a[Buf::X].all(), nw, eps, d);
        }
        for (t, b, out, rows) in [
            (&l.wq, &l.bq, a[Buf::Q].all(), nh * hd),
            (&l.wk, &l.bk, a[Buf::K].all(), nkv * hd),
            (&l.wv, &l.bv, a[Buf::V].all(), nkv * hd),
        ] {
            if n == 1 {
                let x = a[Buf::X].all();
                g.matvec_norm(
                    t.dtype,
                    self.wt(t)?,
                    x,
                    nw,
                    eps,
                    self.bias(b)?,
                    out,
                    rows,
                    d,
                    false,
                )?;
            } else {
                self.e
                    .mm(t, a[Buf::Xn].all(), self.bias(b)?, out, rows, d, n, false)?;
            }
        }
        Ok(())
    }

    fn rope_kv_store(&mut self, layer: usize) -> Result<()> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let (kc, vc) = self.kv(layer)?;
        self.e.gpu.rope_kv(
            a[Buf::Q].all(),
            a[Buf::K].all(),
            a[Buf::V].all(),
            kc,
            vc,
            a[Buf::Pos].all(),
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            self.e.max_ctx,
            c.rope_style == RopeStyle::Neox,
            c.rope_base,
            self.n,
        )
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let (g, c, a) = (&self.e.gpu, &self.e.cfg, &self.e.act);
        let (kc, vc) = self.kv(layer)?;
        let (nh, nkv, hd, ctx) = (c.n_heads, c.n_kv_heads, c.head_dim, self.e.max_ctx);
        if self.n == 1 {
            g.attention(
                a[Buf::Q].all(),
                kc,
                vc,
                a[Buf::Att].all(),
                a[Buf::Scores].all(),
                a[Buf::Pos].all(),
                nh,
                nkv,
                hd,
                ctx,
                1,
            )
        } else {
            g.attention_prefill(
                a[Buf::Q].all(),
                kc,
                vc,
                a[Buf::Att].all(),
                a[Buf::Pos].all(),
                nh,
                nkv,
                hd,
                ctx,
                self.n,
            )
        }
    }

    fn attn_out(&mut self, layer: usize) -> Result<()> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let wo = &self.e.w.layers[layer].wo;
        let (d, qd) = (c.d_model, c.n_heads * c.head_dim);
        self.e.mm(
            wo,
            a[Buf::Att].all(),
            None,
            a[Buf::X].all(),
            d,
            qd,
            self.n,
            true,
        )
    }

    fn norm_gate_up(&mut self, layer: usize) -> Result<()> {
        let (g, c, a) = (&self.e.gpu, &self.e.cfg, &self.e.act);
        let l = &self.e.w.layers[layer];
        let (d, ffn, n, eps) = (c.d_model, c.ffn_dim, self.n, c.norm_eps);
        if n == 1 && l.w_gate.dtype == l.w_up.dtype {
            // Decode: norm + gate + up + SwiGLU in one launch.
            return g.gate_up(
                l.w_gate.dtype,
                self.wt(&l.w_gate)?,
                self.wt(&l.w_up)?,
                a[Buf::X].all(),
                self.wt(&l.ffn_norm)?,
                eps,
                a[Buf::Hid].all(),
                ffn,
                d,
            );
        }
        g.rmsnorm(
            a[Buf::X].all(),
            self.wt(&l.ffn_norm)?,
            a[Buf::Xn].all(),
            d,
            n,
            eps,
        )?;
        self.e.mm(
            &l.w_gate,
            a[Buf::Xn].all(),
            None,
            a[Buf::Gate].all(),
            ffn,
            d,
            n,
            false,
        )?;
        self.e.mm(
            &l.w_up,
            a[Buf::Xn].all(),
            None,
            a[Buf::Up].all(),
            ffn,
            d,
            n,
            false,
        )?;
        g.swiglu(
            a[Buf::Gate].all(),
            a[Buf::Up].all(),
            a[Buf::Hid].all(),
            ffn * n,
        )
    }

    fn ffn_down(&mut self, layer: usize) -> Result<()> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let w_down = &self.e.w.layers[layer].w_down;
        self.e.mm(
            w_down,
            a[Buf::Hid].all(),
            None,
            a[Buf::X].all(),
            c.d_model,
            c.ffn_dim,
            self.n,
            true,
        )
    }

    /// Only the last token's logits are needed (a step never asks for all).
    fn lm_head(&mut self) -> Result<()> {
        let (c, a, w) = (&self.e.cfg, &self.e.act, &self.e.w);
        let d = c.d_model;
        self.e.gpu.matvec_norm(
            w.output.dtype,
            self.wt(&w.output)?,
            a[Buf::X].f32s((self.n - 1) * d, d)?,
            self.wt(&w.output_norm)?,
            c.norm_eps,
            None,
            a[Buf::Logits].all(),
            c.vocab_size,
            d,
            false,
        )
    }
}
