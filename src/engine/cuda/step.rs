//! The CUDA engine's [`BlockKernels`] (issue 11 points 1 and 4): each
//! operation enqueues its kernels on the engine's stream for the `n` rows
//! whose token ids, positions and sequences are already in device memory.
//! The order of the operations is `engine::block`'s.
//!
//! Decode rows (one token of each of `n` sequences) fuse what they can: the
//! RMSNorm runs inside the q/k/v mat-vecs (one launch for all three when
//! they share a format, for a lone row and for several), gate, up and
//! SwiGLU run in one launch, and attention is the split-KV decode kernel.
//! Several decode rows run the batched kernels of `gpu::batched`, whose
//! arithmetic per row is the lone row's. A prefill chunk (consecutive
//! tokens of one sequence) normalises once and multiplies through
//! `CudaEngine::mm` (GEMM or batched mat-vec).

use super::tensor_routes::Group;
use super::{Buf, CudaEngine};
use crate::engine::kernels::BlockKernels;
use crate::error::Result;
use crate::gpu::attention::StepRope;
use crate::gpu::batched::{RowNorm, RowsMath};
use crate::gpu::qkv::{Proj, QkvFormats};
use crate::gpu::Span;
use crate::model::arch::{RopeStyle, TensorRef};

/// One launch sequence of `n` rows on `e`.
pub(super) struct CudaStep<'a> {
    pub(super) e: &'a CudaEngine,
    pub(super) n: usize,
    /// Rows are one token of `n` sequences (else `n` tokens of one).
    pub(super) decode: bool,
    /// The logits row of the first output.
    pub(super) out_row: usize,
    /// Positions the decode attention grid must cover (every row's position
    /// is below it).
    pub(super) reach: usize,
}

impl CudaStep<'_> {
    /// Rotate q and k at the rows' positions, then store k and v in the
    /// layer's pool rows: the prefill chunk's first part of
    /// `BlockKernels::attention` (a decode step's attention kernel does it).
    fn rope_kv_store(&mut self, layer: usize) -> Result<()> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let (kc, vc) = self.kv(layer)?;
        self.e.gpu.rope_kv(
            a[Buf::Q].all(),
            a[Buf::K].all(),
            a[Buf::V].all(),
            kc,
            vc,
            self.e.kv_rows(),
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.rope_style == RopeStyle::Neox,
            c.rope_base,
            self.n,
        )
    }

    fn wt(&self, t: &TensorRef) -> Result<Span<'_>> {
        self.e.weights.span(t.offset, t.n_bytes)
    }

    fn bias(&self, b: &Option<TensorRef>) -> Result<Option<Span<'_>>> {
        b.as_ref().map(|t| self.wt(t)).transpose()
    }

    /// Layer `layer`'s key and value pools.
    fn kv(&self, layer: usize) -> Result<(Span<'_>, Span<'_>)> {
        let c = &self.e.cfg;
        let rows = self.e.layout.pool_pages * crate::gpu::attention::KV_PAGE_TOKENS;
        let layer_kv = c.n_kv_heads * c.head_dim * rows * 4;
        Ok((
            self.e.kv.span(2 * layer * layer_kv, layer_kv)?,
            self.e.kv.span((2 * layer + 1) * layer_kv, layer_kv)?,
        ))
    }

    /// Several decode rows: the batched kernels.
    fn batched(&self) -> bool {
        self.decode && self.n > 1
    }

    /// y = x·Wᵀ (+ bias) (+ y) for the step's rows: decode rows through the
    /// mat-vec (per-row arithmetic independent of how many), a prefill
    /// chunk through `CudaEngine::mm`.
    #[allow(clippy::too_many_arguments)]
    fn proj(
        &self,
        t: &TensorRef,
        x: Span,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()> {
        if self.decode {
            let w = self.wt(t)?;
            return self
                .e
                .gpu
                .matvec(t.dtype, w, x, bias, y, rows, cols, self.n, accumulate);
        }
        self.e.mm(t, x, bias, y, rows, cols, self.n, accumulate)
    }

    /// The arithmetic of `group`'s products in this step: a prefill chunk's
    /// go through `CudaEngine::mm` (GEMM) whatever the decode rows use.
    fn decode_math(&self, group: Group) -> RowsMath {
        if self.decode {
            self.e.tensor.math(group)
        } else {
            RowsMath::Fp32
        }
    }

    /// y += x·Wᵀ for the step's decode rows on the tensor cores (a
    /// residual product: attention output, FFN down).
    fn tensor_proj(&self, t: &TensorRef, x: Span, y: Span, rows: usize, cols: usize) -> Result<()> {
        let w = self.wt(t)?;
        let math = RowsMath::Tensor;
        self.e
            .gpu
            .matvec_rows_in(math, t.dtype, w, x, None, None, y, rows, cols, self.n, true)
    }

    /// Each row's RMS scale of x, for the batched normed kernels.
    fn row_norm<'b>(&'b self, weight: &TensorRef) -> Result<RowNorm<'b>> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let scale = a[Buf::Scale].all();
        self.e
            .gpu
            .row_rms(a[Buf::X].all(), scale, c.d_model, self.n, c.norm_eps)?;
        Ok(RowNorm {
            weight: self.wt(weight)?,
            scale,
        })
    }

    /// The logits row `row` of the step's output.
    fn logits(&self, row: usize) -> Result<Span<'_>> {
        let v = self.e.cfg.vocab_size;
        self.e.act[Buf::Logits].f32s((self.out_row + row) * v, v)
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
        let math = self.decode_math(Group::Attn);
        // q, k and v in one launch where a fused kernel reads their formats
        // (bit-identical to three).
        let fused = QkvFormats::of(l.wq.dtype, l.wk.dtype, l.wv.dtype);
        let p = |t: &TensorRef, b: &Option<TensorRef>, out, rows| -> Result<Proj<'_>> {
            Ok(Proj {
                w: self.wt(t)?,
                bias: self.bias(b)?,
                out,
                rows,
            })
        };
        if let (true, RowsMath::Fp32, Some(f)) = (self.batched(), math, fused) {
            let norm = self.row_norm(&l.attn_norm)?;
            let qkv = [
                p(&l.wq, &l.bq, a[Buf::Q].all(), nh * hd)?,
                p(&l.wk, &l.bk, a[Buf::K].all(), nkv * hd)?,
                p(&l.wv, &l.bv, a[Buf::V].all(), nkv * hd)?,
            ];
            return g.qkv_rows(f, qkv, a[Buf::X].all(), norm, d, n);
        }
        if self.batched() || math == RowsMath::Tensor {
            let norm = self.row_norm(&l.attn_norm)?;
            for (t, b, out, rows) in [
                (&l.wq, &l.bq, a[Buf::Q].all(), nh * hd),
                (&l.wk, &l.bk, a[Buf::K].all(), nkv * hd),
                (&l.wv, &l.bv, a[Buf::V].all(), nkv * hd),
            ] {
                let (w, x) = (self.wt(t)?, a[Buf::X].all());
                g.matvec_rows_in(
                    math,
                    t.dtype,
                    w,
                    x,
                    Some(norm),
                    self.bias(b)?,
                    out,
                    rows,
                    d,
                    n,
                    false,
                )?;
            }
            return Ok(());
        }
        if n > 1 {
            g.rmsnorm(a[Buf::X].all(), nw, a[Buf::Xn].all(), d, n, eps)?;
        }
        if let (1, Some(f)) = (n, fused) {
            let qkv = [
                p(&l.wq, &l.bq, a[Buf::Q].all(), nh * hd)?,
                p(&l.wk, &l.bk, a[Buf::K].all(), nkv * hd)?,
                p(&l.wv, &l.bv, a[Buf::V].all(), nkv * hd)?,
            ];
            return g.qkv_norm(f, qkv, a[Buf::X].all(), nw, eps, d);
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

    fn attention(&mut self, layer: usize) -> Result<()> {
        if !self.decode {
            self.rope_kv_store(layer)?;
        }
        let (g, c, a) = (&self.e.gpu, &self.e.cfg, &self.e.act);
        let (kc, vc) = self.kv(layer)?;
        let (nh, nkv, hd, ctx) = (c.n_heads, c.n_kv_heads, c.head_dim, self.e.max_ctx);
        if self.decode {
            // The decode attention rotates q and k and stores k and v itself
            // (or runs rope_kv first where its kernel cannot).
            let rope = StepRope {
                k: a[Buf::K].all(),
                v: a[Buf::V].all(),
                neox: c.rope_style == RopeStyle::Neox,
                base: c.rope_base,
            };
            g.attention(
                a[Buf::Q].all(),
                kc,
                vc,
                a[Buf::Att].all(),
                a[Buf::Scores].all(),
                self.e.kv_rows(),
                nh,
                nkv,
                hd,
                ctx,
                self.n,
                self.reach,
                Some(rope),
            )
        } else {
            g.attention_prefill(
                a[Buf::Q].all(),
                kc,
                vc,
                a[Buf::Att].all(),
                self.e.kv_rows(),
                nh,
                nkv,
                hd,
                self.n,
            )
        }
    }

    fn attn_out(&mut self, layer: usize) -> Result<()> {
        let (c, a) = (&self.e.cfg, &self.e.act);
        let wo = &self.e.w.layers[layer].wo;
        let (d, qd) = (c.d_model, c.n_heads * c.head_dim);
        if self.decode_math(Group::Attn) == RowsMath::Tensor {
            return self.tensor_proj(wo, a[Buf::Att].all(), a[Buf::X].all(), d, qd);
        }
        self.proj(wo, a[Buf::Att].all(), None, a[Buf::X].all(), d, qd, true)
    }

    fn norm_gate_up(&mut self, layer: usize) -> Result<()> {
        let (g, c, a) = (&self.e.gpu, &self.e.cfg, &self.e.act);
        let l = &self.e.w.layers[layer];
        let (d, ffn, n, eps) = (c.d_model, c.ffn_dim, self.n, c.norm_eps);
        let math = self.decode_math(Group::Ffn);
        if (self.batched() || math == RowsMath::Tensor) && l.w_gate.dtype == l.w_up.dtype {
            let norm = self.row_norm(&l.ffn_norm)?;
            return g.gate_up_rows_in(
                math,
                l.w_gate.dtype,
                self.wt(&l.w_gate)?,
                self.wt(&l.w_up)?,
                a[Buf::X].all(),
                norm,
                a[Buf::Hid].all(),
                ffn,
                d,
                n,
            );
        }
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
        self.proj(
            &l.w_gate,
            a[Buf::Xn].all(),
            None,
            a[Buf::Gate].all(),
            ffn,
            d,
            false,
        )?;
        self.proj(
            &l.w_up,
            a[Buf::Xn].all(),
            None,
            a[Buf::Up].all(),
            ffn,
            d,
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
        let (x, hid) = (a[Buf::X].all(), a[Buf::Hid].all());
        if self.decode_math(Group::Ffn) == RowsMath::Tensor {
            return self.tensor_proj(w_down, hid, x, c.d_model, c.ffn_dim);
        }
        self.proj(w_down, hid, None, x, c.d_model, c.ffn_dim, true)
    }

    /// Every decode row's logits; a chunk's last token's only (a step never
    /// asks for all). On the tensor cores (`CudaEngine::lm_head_math`) every
    /// row goes through the same kernel, whatever the step: each row's
    /// scale by `row_rms`, then the `_mm` product.
    fn lm_head(&mut self) -> Result<()> {
        let (c, a, w) = (&self.e.cfg, &self.e.act, &self.e.w);
        let d = c.d_model;
        if self.e.tensor.math(Group::LmHead) == RowsMath::Tensor {
            // Decode rows: all n; a prefill chunk: its last token's row.
            let (first, rows) = if self.decode {
                (0, self.n)
            } else {
                (self.n - 1, 1)
            };
            let x = a[Buf::X].f32s(first * d, rows * d)?;
            let scale = a[Buf::Scale].f32s(0, rows)?;
            self.e.gpu.row_rms(x, scale, d, rows, c.norm_eps)?;
            let norm = RowNorm {
                weight: self.wt(&w.output_norm)?,
                scale,
            };
            let out =
                self.e.act[Buf::Logits].f32s(self.out_row * c.vocab_size, rows * c.vocab_size)?;
            return self.e.gpu.matvec_rows_in(
                RowsMath::Tensor,
                w.output.dtype,
                self.wt(&w.output)?,
                x,
                Some(norm),
                None,
                out,
                c.vocab_size,
                d,
                rows,
                false,
            );
        }
        if self.batched() {
            let norm = self.row_norm(&w.output_norm)?;
            let out =
                self.e.act[Buf::Logits].f32s(self.out_row * c.vocab_size, self.n * c.vocab_size)?;
            let (wo, x) = (self.wt(&w.output)?, a[Buf::X].all());
            return self.e.gpu.matvec_rows(
                w.output.dtype,
                wo,
                x,
                Some(norm),
                None,
                out,
                c.vocab_size,
                d,
                self.n,
                false,
            );
        }
        self.e.gpu.matvec_norm(
            w.output.dtype,
            self.wt(&w.output)?,
            a[Buf::X].f32s((self.n - 1) * d, d)?,
            self.wt(&w.output_norm)?,
            c.norm_eps,
            None,
            self.logits(0)?,
            c.vocab_size,
            d,
            false,
        )
    }
}
