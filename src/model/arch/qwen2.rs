//! The `qwen2` architecture (Qwen2, Qwen2.5, Qwen2.5-Coder): llama's block
//! with biases on the Q, K and V projections (required) and rotary
//! embeddings over halves of the head (NEOX style). The output projection is
//! separate in most releases and tied in some; both are accepted. Issue 3 point 3.

use super::{base_config, weights, Arch, ModelConfig, ModelWeights};
use crate::error::{Result, WorkerError};
use crate::model::gguf::GgufHeader;

/// Qwen2's rotary base when the file does not state one.
const DEFAULT_ROPE_BASE: f32 = 1_000_000.0;

pub fn load(g: &GgufHeader) -> Result<(ModelConfig, ModelWeights)> {
    let cfg = base_config(g, Arch::Qwen2, "qwen2", DEFAULT_ROPE_BASE)?;
    if !cfg.qkv_bias {
        return Err(WorkerError::model_load(
            "this qwen2 model has no attention biases (blk.0.attn_q.bias); the file is incomplete or not qwen2",
        ));
    }
    let w = weights(g, &cfg)?;
    Ok((cfg, w))
}
