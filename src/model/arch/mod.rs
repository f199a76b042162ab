//! Architectures: hyperparameters from GGUF metadata and the per-layer weight
//! layout that both engines (CPU reference and CUDA) consume. One architecture
//! per file; an unknown architecture is refused with the supported list.
//! OWNER: reference-engine helper. The types below are the shared contract.

use crate::model::gguf::GgmlType;

/// Supported architectures (GGUF `general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
}

/// How rotary embeddings pair dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]) — llama in GGUF (weights are permuted at conversion).
    Norm,
    /// Halves (x[i], x[i+d/2]) — qwen2 / GPT-NeoX.
    Neox,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub norm_eps: f32,
    /// Context length the model was trained for (`<arch>.context_length`).
    pub context_length: usize,
    pub tied_output: bool,
    pub qkv_bias: bool,
}

/// Where a tensor lives inside the resident data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub name: String,
    pub dtype: GgmlType,
    /// ggml order: dims[0] is the row length (input features for a matrix).
    pub dims: Vec<usize>,
    /// Byte offset inside the data section.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorRef {
    /// Row length (dims[0]) and number of rows (product of the rest).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(0);
        let rows = self.dims.iter().skip(1).product::<usize>().max(1);
        (rows, cols)
    }
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: TensorRef,
    pub wq: TensorRef,
    pub wk: TensorRef,
    pub wv: TensorRef,
    pub bq: Option<TensorRef>,
    pub bk: Option<TensorRef>,
    pub bv: Option<TensorRef>,
    pub wo: TensorRef,
    pub ffn_norm: TensorRef,
    pub w_gate: TensorRef,
    pub w_up: TensorRef,
    pub w_down: TensorRef,
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub token_embd: TensorRef,
    pub layers: Vec<LayerWeights>,
    pub output_norm: TensorRef,
    /// `output.weight`, or `token_embd` again when the output is tied.
    pub output: TensorRef,
}
