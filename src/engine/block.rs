//! The transformer forward pass, written once (issue 11 point 1;
//! WORKER-4700, 4710): llama and qwen2 blocks over any [`BlockKernels`].
//!
//! Both architectures are pre-norm decoder blocks with rotary attention and
//! a SwiGLU feed-forward; they differ only inside operations (qwen2's q/k/v
//! biases, the rotary style), which the kernels read from the model's
//! config and weights. A future architecture with another block shape gets
//! its own arm in [`forward`], over the same kernels.

use crate::engine::kernels::BlockKernels;
use crate::error::Result;
use crate::model::arch::{Arch, ModelConfig};

/// One step of the model over the step's tokens: embed, every layer's
/// attention and feed-forward with their residuals, then the LM head.
pub fn forward<K: BlockKernels + ?Sized>(k: &mut K, cfg: &ModelConfig) -> Result<()> {
    match cfg.arch {
        Arch::Llama | Arch::Qwen2 => {
            k.embed()?;
            for layer in 0..cfg.n_layers {
                k.norm_qkv(layer)?;
                k.attention(layer)?;
                k.attn_out(layer)?;
                k.norm_gate_up(layer)?;
                k.ffn_down(layer)?;
            }
            k.lm_head()
        }
    }
}
