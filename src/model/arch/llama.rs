//! The `llama` architecture (SmolLM2, TinyLlama, Llama 3.x without scaled
//! RoPE): RMSNorm, GQA attention with RoPE over adjacent pairs (the GGUF
//! converter permutes Q/K rows so the "norm" pairing is right), SwiGLU FFN,
//! output tied to the embedding when `output.weight` is absent. QKV biases are
//! used when the file has them. Issue 3 point 3.

use super::{base_config, weights, Arch, ModelConfig, ModelWeights};
use crate::error::Result;
use crate::model::gguf::GgufHeader;

/// Llama's default rotary base when the file does not state one.
const DEFAULT_ROPE_BASE: f32 = 10_000.0;

pub fn load(g: &GgufHeader) -> Result<(ModelConfig, ModelWeights)> {
    let cfg = base_config(g, Arch::Llama, "llama", DEFAULT_ROPE_BASE)?;
    let w = weights(g, &cfg)?;
    Ok((cfg, w))
}
