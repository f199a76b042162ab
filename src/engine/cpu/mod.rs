//! The CPU reference engine (issue 3 point 6; WORKER-4011, 4113, 4304, 4422,
//! 4700, 4710).
//!
//! It exists to be *right*, so every GPU kernel can be checked against it:
//! f32 arithmetic on weights decoded row by row from the GGUF blocks (never
//! the whole model at once), fixed reduction orders (see [`ops`]), a KV cache
//! in f32 sized at load, rayon threads over output rows.
//!
//! Weights are decoded with `quant::dequantize` one row at a time and dotted
//! in `ops::dot`'s fixed order rather than through `quant::dot_row`: a decoded
//! row is reused for every token of a prefill batch, and batch and one-token
//! decoding then give bit-identical logits (tested). Results do not depend on
//! the thread count: threads only split rows and heads, never a reduction.
//!
//! The engine keeps its own copy of the GGUF data section: that is its
//! "resident" memory, what the seal covers (`resident_digest` recomputes the
//! digest over exactly these bytes) and what a test-hooks fault flips.

pub mod ops;
mod step;

use super::{BackendKind, Engine, LoadOptions, MemoryReport};
use crate::error::{Result, WorkerError};
use crate::model::arch::{LayerWeights, ModelConfig, ModelWeights, TensorRef};
use crate::model::gguf::GgufFile;

/// Norm weights and biases, decoded once (they are tiny).
struct LayerSmall {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
}

pub struct CpuEngine {
    cfg: ModelConfig,
    w: ModelWeights,
    small: Vec<LayerSmall>,
    output_norm: Vec<f32>,
    /// The resident weight bytes (the GGUF data section).
    data: Vec<u8>,
    /// Per layer: `max_context × kv_dim` keys and values.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    max_context: usize,
    n_past: usize,
    logits: Vec<f32>,
    pool: std::sync::Arc<rayon::ThreadPool>,
    /// Diagnostic: mimic llama.cpp's activation and KV rounding (see `ops`).
    llamacpp_rounding: bool,
    #[cfg(feature = "test-hooks")]
    fail_next: bool,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEngine")
            .field("cfg", &self.cfg)
            .field("max_context", &self.max_context)
            .finish()
    }
}

fn alloc_f32(n: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| WorkerError::HostOom {
        message: format!(
            "could not allocate {} MiB of host memory for the {what}",
            (n * 4) >> 20
        ),
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// `MemAvailable` from /proc/meminfo: the CPU backend's "free VRAM".
pub fn host_available_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| WorkerError::internal(format!("cannot read /proc/meminfo ({e})")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| WorkerError::internal("/proc/meminfo has no MemAvailable line"))
}

impl CpuEngine {
    /// Copy the weights into host memory and allocate the KV cache.
    /// `max_context` is clamped to the model's trained context length.
    pub fn load(
        g: &GgufFile,
        cfg: &ModelConfig,
        w: &ModelWeights,
        opts: &LoadOptions,
    ) -> Result<Self> {
        if opts.max_context == 0 {
            return Err(WorkerError::invalid("max_context must be at least 1 token"));
        }
        let max_context = if crate::mutants::active(crate::mutants::Mutant::KvIgnoresMaxContext) {
            cfg.context_length
        } else {
            opts.max_context.min(cfg.context_length)
        };
        let src = g.data_section();
        // Linux overcommits: a reservation larger than memory "succeeds" and the
        // kernel kills the process while the cache is zeroed. Refuse up front.
        let kv_bytes = (2 * cfg.n_layers as u128)
            * (max_context as u128)
            * ((cfg.n_kv_heads * cfg.head_dim) as u128)
            * 4;
        let needed = src.len() as u128 + kv_bytes;
        if let Ok(available) = host_available_bytes() {
            if needed > available as u128 {
                return Err(WorkerError::HostOom {
                    message: format!(
                        "the model needs {needed} bytes of host memory (weights {} + KV cache {kv_bytes} \
                         for max_context {max_context}) but only {available} bytes are available; \
                         lower max_context or free memory",
                        src.len()
                    ),
                });
            }
        }
        let mut data = Vec::new();
        data.try_reserve_exact(src.len())
            .map_err(|_| WorkerError::HostOom {
                message: format!(
                    "could not allocate {} MiB of host memory for the model weights",
                    src.len() >> 20
                ),
            })?;
        data.extend_from_slice(src);
        let bytes = |t: &TensorRef| -> Result<&[u8]> {
            data.get(t.offset..t.offset.saturating_add(t.n_bytes))
                .ok_or_else(|| {
                    WorkerError::model_load(format!(
                        "tensor {} lies outside the data section",
                        t.name
                    ))
                })
        };
        let vec_of = |t: &TensorRef, n: usize| -> Result<Vec<f32>> {
            let (rows, cols) = t.rows_cols();
            if rows * cols != n {
                return Err(WorkerError::model_load(format!(
                    "tensor {} has {} values, expected {n}",
                    t.name,
                    rows * cols
                )));
            }
            ops::dequantize_all(t.dtype, bytes(t)?, n)
        };
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let q_dim = cfg.n_heads * cfg.head_dim;
        let mut small = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            small.push(LayerSmall {
                attn_norm: vec_of(&l.attn_norm, cfg.d_model)?,
                ffn_norm: vec_of(&l.ffn_norm, cfg.d_model)?,
                bq: l.bq.as_ref().map(|t| vec_of(t, q_dim)).transpose()?,
                bk: l.bk.as_ref().map(|t| vec_of(t, kv_dim)).transpose()?,
                bv: l.bv.as_ref().map(|t| vec_of(t, kv_dim)).transpose()?,
            });
        }
        let output_norm = vec_of(&w.output_norm, cfg.d_model)?;
        // Every matrix must lie inside the copy (arch already checked shapes).
        for t in std::iter::once(&w.token_embd)
            .chain(std::iter::once(&w.output))
            .chain(w.layers.iter().flat_map(mats))
        {
            bytes(t)?;
        }
        let per_layer = max_context
            .checked_mul(kv_dim)
            .ok_or_else(|| WorkerError::invalid("max_context too large"))?;
        let mut k_cache = Vec::with_capacity(cfg.n_layers);
        let mut v_cache = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            k_cache.push(alloc_f32(per_layer, "KV cache")?);
            v_cache.push(alloc_f32(per_layer, "KV cache")?);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("cpu-engine-{i}"))
            .build()
            .map_err(|e| {
                WorkerError::internal(format!("could not start the CPU engine's threads: {e}"))
            })
            .map(std::sync::Arc::new)?;
        Ok(Self {
            cfg: cfg.clone(),
            w: w.clone(),
            small,
            output_norm,
            data,
            k_cache,
            v_cache,
            max_context,
            n_past: 0,
            logits: Vec::new(),
            pool,
            llamacpp_rounding: false,
            #[cfg(feature = "test-hooks")]
            fail_next: false,
        })
    }

    /// Diagnostic for tests: round activations to 8-bit blocks before each
    /// quantized matmul and keep Q/K/V at f16, as llama.cpp's CPU backend
    /// does, to tell its rounding apart from real disagreements.
    pub fn set_llamacpp_rounding(&mut self, on: bool) {
        self.llamacpp_rounding = on;
    }

    /// Positions already in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Like [`Engine::forward`] but returns the logits of *every* position
    /// (teacher forcing in tests). Bit-identical to feeding tokens one by one.
    pub fn forward_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<Vec<f32>>> {
        self.check(tokens, pos)?;
        let pool = std::sync::Arc::clone(&self.pool);
        let all = pool.install(|| self.run(tokens, pos, true))?;
        self.logits = all.last().cloned().unwrap_or_default();
        Ok(all)
    }

    fn check(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        if std::mem::take(&mut self.fail_next) {
            return Err(WorkerError::cuda(
                "injected device fault (test-hooks): the engine failed as a device would",
            ));
        }
        super::check_forward_args(&self.cfg, self.max_context, self.n_past, tokens, pos)
    }

    fn tbytes(&self, t: &TensorRef) -> &[u8] {
        &self.data[t.offset..t.offset + t.n_bytes]
    }

    fn mm(&self, t: &TensorRef, x: &[f32], n_tok: usize, y: &mut [f32]) -> Result<()> {
        let (rows, cols) = t.rows_cols();
        if self.llamacpp_rounding {
            let mut xr = x[..n_tok * cols].to_vec();
            for row in xr.chunks_mut(cols) {
                ops::round_activations_like_llamacpp(t.dtype, row);
            }
            return ops::matmul(t.dtype, self.tbytes(t), rows, cols, &xr, n_tok, y);
        }
        ops::matmul(t.dtype, self.tbytes(t), rows, cols, x, n_tok, y)
    }

    /// The forward pass (`engine::block` over [`step::CpuStep`]); returns
    /// logits of every position when `all`, else of the last.
    fn run(&mut self, tokens: &[u32], pos: usize, all: bool) -> Result<Vec<Vec<f32>>> {
        let cfg = self.cfg.clone();
        let mut step = step::CpuStep::new(self, tokens, pos, all);
        crate::engine::block::forward(&mut step, &cfg)?;
        let logits = std::mem::take(&mut step.logits);
        self.n_past = pos + tokens.len();
        Ok(logits
            .chunks_exact(cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

fn mats(l: &LayerWeights) -> impl Iterator<Item = &TensorRef> {
    [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter()
}

impl Engine for CpuEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn reset(&mut self) {
        self.n_past = 0;
        self.logits.clear();
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        self.check(tokens, pos)?;
        let pool = std::sync::Arc::clone(&self.pool);
        self.logits = pool
            .install(|| self.run(tokens, pos, false))?
            .pop()
            .unwrap_or_default();
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        if self.logits.is_empty() {
            return Err(super::no_logits_yet());
        }
        Ok(self.logits.clone())
    }

    fn resident_digest(&mut self) -> Result<[u8; 32]> {
        let data = &self.data;
        Ok(self
            .pool
            .install(|| crate::shard::digest::resident_digest(data)))
    }

    fn memory(&self) -> MemoryReport {
        let kv: usize = self
            .k_cache
            .iter()
            .chain(&self.v_cache)
            .map(|c| c.len() * 4)
            .sum();
        MemoryReport {
            weights_bytes: self.data.len() as u64,
            kv_cache_bytes: kv as u64,
            scratch_bytes: 0,
        }
    }

    #[cfg(feature = "test-hooks")]
    fn inject_fault(&mut self, fault: super::Fault) -> Result<()> {
        match fault {
            super::Fault::FlipResidentByte { offset } => {
                let len = self.data.len();
                let b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.data.get_mut(o))
                    .ok_or_else(|| {
                        WorkerError::invalid(format!(
                            "fault offset {offset} is outside the {len} resident bytes"
                        ))
                    })?;
                *b ^= 0x01;
            }
            super::Fault::DeviceError => self.fail_next = true,
            super::Fault::ReplaceSeal { .. } => {
                return Err(WorkerError::internal(
                    "a seal fault is applied to the shard handle, not the engine",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
