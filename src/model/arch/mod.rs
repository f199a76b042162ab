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

pub mod finite;
pub mod llama;
pub mod qwen2;

use crate::error::{Result, WorkerError};
use crate::model::gguf::GgufHeader;

/// Architecture names this worker accepts, for error messages and the ECP.
pub const SUPPORTED: &[&str] = &["llama", "qwen2"];

/// Read the architecture, hyperparameters and weight layout from a GGUF file,
/// checking every tensor's presence, type and shape against the config.
pub fn from_gguf(g: &GgufHeader) -> Result<(ModelConfig, ModelWeights)> {
    let arch = g.get_str("general.architecture").ok_or_else(|| {
        WorkerError::model_load(
            "the model file has no general.architecture key; it is not a model GGUF",
        )
    })?;
    let loaded = match arch {
        "llama" => llama::load(g),
        "qwen2" => qwen2::load(g),
        other => Err(WorkerError::model_load(format!(
            "the model's architecture '{other}' is not supported; supported architectures: {}",
            SUPPORTED.join(", ")
        ))),
    }?;
    Ok(loaded)
}

/// The load-time check that the weights are numbers ([`finite`]); every
/// engine load runs it (`crate::engine::load_engine`), and Plan runs it on
/// the weights read back by position.
pub fn check_weights(g: &crate::model::gguf::GgufFile) -> Result<()> {
    if crate::mutants::active(crate::mutants::Mutant::WeightsUnchecked) {
        return Ok(());
    }
    finite::check_sampled(g)
}

/// [`check_weights`] on a file read back by position: `read(offset, buf)`
/// fills `buf` from the data section (Plan, which keeps only the header).
pub fn check_weights_at(
    h: &GgufHeader,
    read: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    if crate::mutants::active(crate::mutants::Mutant::WeightsUnchecked) {
        return Ok(());
    }
    finite::check_sampled_with(h, read)
}

/// Largest dimension accepted from metadata: bounds every size computed from it.
const MAX_DIM: u64 = 1 << 24;

/// A required positive integer hyperparameter `<arch>.<key>`.
pub(crate) fn hparam(g: &GgufHeader, arch: &str, key: &str) -> Result<usize> {
    let full = format!("{arch}.{key}");
    let v = g.get_u32(&full).ok_or_else(|| {
        WorkerError::model_load(format!("the model file lacks the required key {full}"))
    })?;
    if v == 0 || u64::from(v) > MAX_DIM {
        return Err(WorkerError::model_load(format!(
            "{full} = {v} is out of range (1..={MAX_DIM})"
        )));
    }
    Ok(v as usize)
}

/// Hyperparameters common to the llama-like families.
pub(crate) fn base_config(
    g: &GgufHeader,
    arch: Arch,
    name: &str,
    default_rope_base: f32,
) -> Result<ModelConfig> {
    let n_layers = hparam(g, name, "block_count")?;
    let d_model = hparam(g, name, "embedding_length")?;
    let n_heads = hparam(g, name, "attention.head_count")?;
    let n_kv_heads = g
        .get_u32(&format!("{name}.attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let ffn_dim = hparam(g, name, "feed_forward_length")?;
    let context_length = hparam(g, name, "context_length")?;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(WorkerError::model_load(format!(
            "{name}: {n_heads} attention heads cannot be grouped over {n_kv_heads} KV heads"
        )));
    }
    let head_dim = match g.get_u32(&format!("{name}.attention.key_length")) {
        Some(k) => k as usize,
        None if d_model % n_heads == 0 => d_model / n_heads,
        None => {
            return Err(WorkerError::model_load(format!(
                "{name}: embedding length {d_model} is not a multiple of the head count {n_heads}"
            )))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 || head_dim as u64 > MAX_DIM {
        return Err(WorkerError::model_load(format!(
            "{name}: head dimension {head_dim} must be even and positive"
        )));
    }
    if let Some(rd) = g.get_u32(&format!("{name}.rope.dimension_count")) {
        if rd as usize != head_dim {
            return Err(WorkerError::model_load(format!(
                "{name}: rotary embedding over {rd} of {head_dim} head dimensions (partial RoPE) is not supported"
            )));
        }
    }
    if g.tensor("rope_freqs.weight").is_some()
        || g.get_str(&format!("{name}.rope.scaling.type"))
            .is_some_and(|s| s != "none")
    {
        return Err(WorkerError::model_load(format!(
            "{name}: this model uses scaled RoPE (rope_freqs / rope.scaling), which is not supported yet"
        )));
    }
    let rope_base = g
        .get_f32(&format!("{name}.rope.freq_base"))
        .unwrap_or(default_rope_base);
    let norm_eps = g
        .get_f32(&format!("{name}.attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-5);
    let rope_ok = rope_base.is_finite() && rope_base > 1.0;
    let eps_ok = norm_eps.is_finite() && norm_eps > 0.0 && norm_eps < 1.0;
    if !rope_ok || !eps_ok {
        return Err(WorkerError::model_load(format!(
            "{name}: rope base {rope_base} or norm epsilon {norm_eps} is out of range"
        )));
    }
    // A declared vocabulary of 0 tokens is a capability no engine has
    // (docs/operations.md, MCD check): the same refusal on every path.
    if g.get_u64(&format!("{name}.vocab_size")) == Some(0) {
        return Err(WorkerError::CapabilityMismatch {
            message: format!(
                "the model declares {name}.vocab_size = 0, a vocabulary of no tokens, so nothing \
                 can be generated from it; this worker cannot serve it. Fix the model's metadata"
            ),
        });
    }
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| WorkerError::model_load("the model file has no token_embd.weight tensor"))?;
    let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
    if vocab_size == 0 || vocab_size as u64 > MAX_DIM {
        return Err(WorkerError::model_load(format!(
            "token_embd.weight dims {:?} give no valid vocabulary",
            embd.dims
        )));
    }
    let rope_style = match arch {
        Arch::Llama => RopeStyle::Norm,
        Arch::Qwen2 => RopeStyle::Neox,
    };
    Ok(ModelConfig {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        vocab_size,
        rope_base,
        rope_style,
        norm_eps,
        context_length,
        tied_output: g.tensor("output.weight").is_none(),
        qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
    })
}

/// Look up `name` and check its dims (ggml order) and byte size.
pub(crate) fn tensor(g: &GgufHeader, name: &str, dims: &[usize]) -> Result<TensorRef> {
    let t = g.tensor(name).ok_or_else(|| {
        WorkerError::model_load(format!("the model file lacks the tensor {name}"))
    })?;
    let got: Vec<u64> = t.dims.iter().copied().filter(|&d| d != 1).collect();
    let want: Vec<u64> = dims.iter().map(|&d| d as u64).filter(|&d| d != 1).collect();
    if got != want {
        return Err(WorkerError::model_load(format!(
            "tensor {name} has shape {:?} but the model's hyperparameters require {dims:?}",
            t.dims
        )));
    }
    let cols = dims[0];
    let rows: usize = dims[1..].iter().product::<usize>().max(1);
    let row = crate::model::quant::row_bytes(t.dtype, cols)
        .map_err(|e| WorkerError::model_load(format!("tensor {name}: {e}")))?;
    let expect = row
        .checked_mul(rows)
        .ok_or_else(|| WorkerError::model_load(format!("tensor {name} is too large")))?;
    let data_len = g.data_len();
    let end = t.offset.checked_add(t.n_bytes);
    if t.n_bytes != expect as u64 || end.is_none_or(|e| e > data_len) {
        return Err(WorkerError::model_load(format!(
            "tensor {name} ({}) holds {} bytes at offset {} but its shape needs {expect} bytes inside a {data_len}-byte data section",
            t.dtype.name(),
            t.n_bytes,
            t.offset
        )));
    }
    Ok(TensorRef {
        name: name.to_string(),
        dtype: t.dtype,
        dims: dims.to_vec(),
        offset: t.offset as usize,
        n_bytes: t.n_bytes as usize,
    })
}

/// The per-layer weights of the llama-like families; biases when `bias`.
pub(crate) fn layer(
    g: &GgufHeader,
    cfg: &ModelConfig,
    i: usize,
    bias: bool,
) -> Result<LayerWeights> {
    let d = cfg.d_model;
    let q = cfg.n_heads * cfg.head_dim;
    let kv = cfg.n_kv_heads * cfg.head_dim;
    let n = |s: &str| format!("blk.{i}.{s}");
    let opt_bias = |s: &str, len: usize| -> Result<Option<TensorRef>> {
        if bias {
            tensor(g, &n(s), &[len]).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(LayerWeights {
        attn_norm: tensor(g, &n("attn_norm.weight"), &[d])?,
        wq: tensor(g, &n("attn_q.weight"), &[d, q])?,
        wk: tensor(g, &n("attn_k.weight"), &[d, kv])?,
        wv: tensor(g, &n("attn_v.weight"), &[d, kv])?,
        bq: opt_bias("attn_q.bias", q)?,
        bk: opt_bias("attn_k.bias", kv)?,
        bv: opt_bias("attn_v.bias", kv)?,
        wo: tensor(g, &n("attn_output.weight"), &[q, d])?,
        ffn_norm: tensor(g, &n("ffn_norm.weight"), &[d])?,
        w_gate: tensor(g, &n("ffn_gate.weight"), &[d, cfg.ffn_dim])?,
        w_up: tensor(g, &n("ffn_up.weight"), &[d, cfg.ffn_dim])?,
        w_down: tensor(g, &n("ffn_down.weight"), &[cfg.ffn_dim, d])?,
    })
}

/// All weights of a llama-like model (output tied to the embedding when absent).
pub(crate) fn weights(g: &GgufHeader, cfg: &ModelConfig) -> Result<ModelWeights> {
    let token_embd = tensor(g, "token_embd.weight", &[cfg.d_model, cfg.vocab_size])?;
    let layers = (0..cfg.n_layers)
        .map(|i| layer(g, cfg, i, cfg.qkv_bias))
        .collect::<Result<Vec<_>>>()?;
    let output_norm = tensor(g, "output_norm.weight", &[cfg.d_model])?;
    let output = if cfg.tied_output {
        token_embd.clone()
    } else {
        tensor(g, "output.weight", &[cfg.d_model, cfg.vocab_size])?
    };
    Ok(ModelWeights {
        token_embd,
        layers,
        output_norm,
        output,
    })
}
