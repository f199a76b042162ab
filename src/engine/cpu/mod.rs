//! The CPU reference engine (issue 3 point 6; WORKER-4011, 4113, 4304, 4422,
//! 4700, 4710).
//!
//! It exists to be *right*, so every GPU kernel can be checked against it:
//! f32 arithmetic on weights decoded row by row from the GGUF blocks (never
//! the whole model at once), fixed reduction orders (see [`ops`]), a paged
//! KV pool in f32 allocated once at load (`engine::kv`), rayon threads over
//! output rows.
//!
//! Many sequences share the pool: each is admitted with the positions it
//! may ever hold and gets its pages then; a step runs a ragged batch of
//! them (`engine::batch`), and each sequence's logits are the same bits it
//! would get alone (`step`'s header says why). The single-sequence calls
//! (`reset`, `forward`, `logits`) drive one "solo" sequence through the same
//! step.
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

use super::batch::{check_admission, check_step, KvUsage, SeqBounds, SeqSlot, StepChunk};
use super::kv::{pool_tokens, KvPool, PageTable};
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

/// Positions per KV page: a few attention rows' worth, so a short request
/// wastes little of the pool.
pub const PAGE_TOKENS: usize = 16;

/// One admitted sequence: its pages, how far it has got, its last logits.
struct SeqState {
    table: PageTable,
    /// Positions reserved at admission.
    capacity: usize,
    n_past: usize,
    logits: Vec<f32>,
}

pub struct CpuEngine {
    cfg: ModelConfig,
    w: ModelWeights,
    small: Vec<LayerSmall>,
    output_norm: Vec<f32>,
    /// The resident weight bytes (the GGUF data section).
    data: Vec<u8>,
    /// Per layer: the pool's `pages × PAGE_TOKENS` rows of `kv_dim` keys and values.
    k_pool: Vec<Vec<f32>>,
    v_pool: Vec<Vec<f32>>,
    kv: KvPool,
    /// Admitted sequences, by slot id.
    seqs: Vec<Option<SeqState>>,
    /// The sequence the single-sequence calls drive, once `forward` admits it.
    solo: Option<SeqSlot>,
    max_context: usize,
    pool: std::sync::Arc<rayon::ThreadPool>,
    /// Diagnostic: mimic llama.cpp's activation and KV rounding (see `ops`).
    llamacpp_rounding: bool,
    #[cfg(feature = "test-hooks")]
    fail_next: bool,
    /// Test builds: the next step sleeps this long first (a hung device).
    #[cfg(feature = "test-hooks")]
    hang_next_ms: u64,
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
        let pool_positions = pool_tokens(opts.kv_pool_tokens.max(max_context), PAGE_TOKENS);
        // Linux overcommits: a reservation larger than memory "succeeds" and the
        // kernel kills the process while the cache is zeroed. Refuse up front.
        let kv_bytes = (2 * cfg.n_layers as u128)
            * (pool_positions as u128)
            * ((cfg.n_kv_heads * cfg.head_dim) as u128)
            * 4;
        let needed = src.len() as u128 + kv_bytes;
        if let Ok(available) = host_available_bytes() {
            if needed > available as u128 {
                return Err(WorkerError::HostOom {
                    message: format!(
                        "the model needs {needed} bytes of host memory (weights {} + KV cache {kv_bytes} \
                         for {pool_positions} positions) but only {available} bytes are available; \
                         lower max_context or kv_cache_tokens, or free memory",
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
        let per_layer = pool_positions
            .checked_mul(kv_dim)
            .ok_or_else(|| WorkerError::invalid("the KV pool is too large"))?;
        let mut k_pool = Vec::with_capacity(cfg.n_layers);
        let mut v_pool = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            k_pool.push(alloc_f32(per_layer, "KV cache")?);
            v_pool.push(alloc_f32(per_layer, "KV cache")?);
        }
        let kv = KvPool::new(PAGE_TOKENS, pool_positions / PAGE_TOKENS)?;
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
            k_pool,
            v_pool,
            kv,
            seqs: Vec::new(),
            solo: None,
            max_context,
            pool,
            llamacpp_rounding: false,
            #[cfg(feature = "test-hooks")]
            fail_next: false,
            #[cfg(feature = "test-hooks")]
            hang_next_ms: 0,
        })
    }

    /// Diagnostic for tests: round activations to 8-bit blocks before each
    /// quantized matmul and keep Q/K/V at f16, as llama.cpp's CPU backend
    /// does, to tell its rounding apart from real disagreements.
    pub fn set_llamacpp_rounding(&mut self, on: bool) {
        self.llamacpp_rounding = on;
    }

    /// Positions the solo sequence holds.
    pub fn n_past(&self) -> usize {
        self.solo.and_then(|s| self.seq(s)).map_or(0, |s| s.n_past)
    }

    /// Like [`Engine::forward`] but returns the logits of *every* position
    /// (teacher forcing in tests). Bit-identical to feeding tokens one by one.
    pub fn forward_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<Vec<f32>>> {
        let seq = self.solo_for(tokens, pos)?;
        let chunk = [StepChunk { seq, tokens, pos }];
        self.run_checked(&chunk, true)
    }

    /// The solo sequence, admitted with the whole context on its first
    /// forward after a reset, once the single-sequence bounds hold.
    fn solo_for(&mut self, tokens: &[u32], pos: usize) -> Result<SeqSlot> {
        super::check_forward_args(&self.cfg, self.max_context, self.n_past(), tokens, pos)?;
        match self.solo {
            Some(s) => Ok(s),
            None => {
                let s = self.admit(self.max_context)?;
                self.solo = Some(s);
                Ok(s)
            }
        }
    }

    fn seq(&self, s: SeqSlot) -> Option<&SeqState> {
        self.seqs.get(s.0 as usize).and_then(Option::as_ref)
    }

    fn page_tokens(&self) -> usize {
        self.kv.page_tokens()
    }

    fn pages_of(&self, s: SeqSlot) -> &[u32] {
        self.seq(s).map_or(&[], |s| s.table.pages())
    }

    /// Check a step, run it, and keep each sequence's logits and length.
    /// Returns the computed logits per chunk (every row's when `all`).
    fn run_checked(&mut self, chunks: &[StepChunk<'_>], all: bool) -> Result<Vec<Vec<f32>>> {
        #[cfg(feature = "test-hooks")]
        {
            let hang = std::mem::take(&mut self.hang_next_ms);
            if hang > 0 {
                std::thread::sleep(std::time::Duration::from_millis(hang));
            }
            if std::mem::take(&mut self.fail_next) {
                return Err(WorkerError::cuda(
                    "injected device fault (test-hooks): the engine failed as a device would",
                ));
            }
        }
        check_step(chunks, self.cfg.vocab_size, |s| {
            self.seq(s).map(|st| SeqBounds {
                n_past: st.n_past,
                capacity: st.capacity,
            })
        })?;
        let pool = std::sync::Arc::clone(&self.pool);
        let rows = pool.install(|| self.run(chunks, all))?;
        let vocab = self.cfg.vocab_size;
        let mut per_chunk = Vec::with_capacity(chunks.len());
        let mut next = rows.into_iter();
        for c in chunks {
            let take = if all { c.tokens.len() } else { 1 };
            let mine: Vec<Vec<f32>> = next.by_ref().take(take).collect();
            if let Some(st) = self.seqs.get_mut(c.seq.0 as usize).and_then(Option::as_mut) {
                st.n_past = c.pos + c.tokens.len();
                st.logits = mine.last().cloned().unwrap_or_else(|| vec![0.0; vocab]);
            }
            per_chunk.push(mine);
        }
        Ok(per_chunk.into_iter().flatten().collect())
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
    /// the logits of every row when `all`, else of each chunk's last row.
    fn run(&mut self, chunks: &[StepChunk<'_>], all: bool) -> Result<Vec<Vec<f32>>> {
        let cfg = self.cfg.clone();
        let mut step = step::CpuStep::new(self, chunks, all);
        crate::engine::block::forward(&mut step, &cfg)?;
        let logits = std::mem::take(&mut step.logits);
        Ok(logits
            .chunks_exact(cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

fn mats(l: &LayerWeights) -> impl Iterator<Item = &TensorRef> {
    [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter()
}

/// Prompt tokens per step on the CPU: small enough that a step of a
/// 135M-parameter model stays around a second, so a cancelled or
/// disconnected prompt frees its pages quickly and running streams wait at
/// most that long for a newcomer's chunk. The arithmetic does not depend on
/// the chunk (`batch_tests`).
pub const CPU_PREFILL_CHUNK: usize = 64;

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
        if let Some(s) = self.solo.take() {
            self.release(s);
        }
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let seq = self.solo_for(tokens, pos)?;
        self.step(&[StepChunk { seq, tokens, pos }])
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        match self.solo {
            Some(s) => self.seq_logits(s),
            None => Err(super::no_logits_yet()),
        }
    }

    fn kv_usage(&self) -> KvUsage {
        KvUsage {
            page_tokens: self.kv.page_tokens(),
            total_pages: self.kv.total_pages(),
            used_pages: self.kv.used_pages(),
        }
    }

    /// Bounded by the pool's pages only.
    fn max_sequences(&self) -> usize {
        usize::MAX
    }

    fn prefill_chunk(&self) -> usize {
        CPU_PREFILL_CHUNK
    }

    fn numerics(&self) -> crate::engine::numerics::NumericsKey {
        crate::engine::numerics::NumericsKey::cpu(CPU_PREFILL_CHUNK)
    }

    fn admit(&mut self, positions: usize) -> Result<SeqSlot> {
        check_admission(positions, self.max_context)?;
        let table = self.kv.reserve(positions)?;
        let state = SeqState {
            table,
            capacity: positions,
            n_past: 0,
            logits: Vec::new(),
        };
        // The lowest free slot id, so slot ids depend only on the pool's history.
        let id = match self.seqs.iter().position(Option::is_none) {
            Some(i) => {
                self.seqs[i] = Some(state);
                i
            }
            None => {
                self.seqs.push(Some(state));
                self.seqs.len() - 1
            }
        };
        Ok(SeqSlot(id as u32))
    }

    fn release(&mut self, seq: SeqSlot) {
        if let Some(st) = self.seqs.get_mut(seq.0 as usize).and_then(Option::take) {
            self.kv.release(st.table);
        }
        if self.solo == Some(seq) {
            self.solo = None;
        }
    }

    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<()> {
        self.run_checked(chunks, false).map(drop)
    }

    fn seq_logits(&mut self, seq: SeqSlot) -> Result<Vec<f32>> {
        match self.seq(seq) {
            Some(st) if !st.logits.is_empty() => Ok(st.logits.clone()),
            Some(_) => Err(super::no_logits_yet()),
            None => Err(WorkerError::invalid(format!(
                "sequence {} is not admitted",
                seq.0
            ))),
        }
    }

    fn resident_digest(&mut self) -> Result<[u8; 32]> {
        let data = &self.data;
        Ok(self
            .pool
            .install(|| crate::shard::digest::resident_digest(data)))
    }

    fn memory(&self) -> MemoryReport {
        let kv: usize = self
            .k_pool
            .iter()
            .chain(&self.v_pool)
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
            super::Fault::HangNextStep { ms } => self.hang_next_ms = ms,
            super::Fault::ReplaceSeal { .. } | super::Fault::AvailableBytes { .. } => {
                return Err(WorkerError::internal(
                    "this fault is applied by the daemon, not the engine",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
