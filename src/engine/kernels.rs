//! The backend trait of the forward pass (issue 11 point 1; WORKER-4700,
//! 4710): the coarse operations one transformer step is made of, each
//! implemented once per backend (`cpu::step`, `cuda::step`).
//!
//! Why this coarse: a backend must be free to fuse inside an operation (the
//! CUDA decode step folds the RMSNorm into the q/k/v mat-vec and runs gate,
//! up and SwiGLU in one launch) while the order of the operations, and so
//! the model's arithmetic, is written in one place (`engine::block`).
//!
//! An implementation is one step's view of an engine: it knows the step's
//! tokens (how many, at which positions) and owns or borrows the buffers the
//! operations read and write. Buffer names follow the block: `x` the residual
//! stream, `q`/`k`/`v` the projections, `att` the attention output, `hid` the
//! gated FFN activation.

use crate::error::Result;

/// One transformer step over the step's tokens; see the module header.
pub trait BlockKernels {
    /// x ← the embedding rows of the step's tokens.
    fn embed(&mut self) -> Result<()>;
    /// q, k, v ← RMSNorm(x)·W{q,k,v}ᵀ (+ their biases) of layer `layer`.
    fn norm_qkv(&mut self, layer: usize) -> Result<()>;
    /// Rotate q and k at the tokens' positions (RoPE), store k and v in the
    /// layer's KV cache, then att ← causal attention of q over the cache
    /// (grouped-query heads). One operation, so a backend may do all three
    /// in one kernel (the CUDA decode attention does).
    fn attention(&mut self, layer: usize) -> Result<()>;
    /// x ← x + att·Woᵀ
    fn attn_out(&mut self, layer: usize) -> Result<()>;
    /// hid ← SwiGLU(RMSNorm(x)·W_gateᵀ, RMSNorm(x)·W_upᵀ)
    fn norm_gate_up(&mut self, layer: usize) -> Result<()>;
    /// x ← x + hid·W_downᵀ
    fn ffn_down(&mut self, layer: usize) -> Result<()>;
    /// logits ← RMSNorm(x)·W_outputᵀ (the last token's, or every token's
    /// where the step asked for all of them).
    fn lm_head(&mut self) -> Result<()>;
}
