//! The engine seam: one trait that both the CPU reference path and the CUDA
//! backend implement, so that one test body and one request path run on both
//! (WORKER-4011, 4012, 4700, 4710).
//!
//! A job drives an engine as: `reset` → `forward(prompt, 0)` → loop
//! { `sample` → `forward([token], pos)` }. Sampling draws come from the
//! portable [`rng::SamplerRng`] seeded by the request, so the same request
//! gives the same tokens on any machine and either backend.
//!
//! Many sequences (issue 11): `admit` reserves a sequence's KV pages,
//! `step` runs a ragged batch of them ([`batch`]), `seq_logits` reads one
//! sequence's result and `release` returns its pages. The single-sequence
//! calls above drive one such sequence.

pub mod batch;
pub mod block;
#[cfg(any(test, feature = "test-hooks"))]
pub mod conformance;
pub mod cpu;
pub mod cuda;
pub mod kernels;
pub mod kv;
pub mod numerics;
pub mod rng;
pub mod sampler;
pub mod sched;
pub mod sequence;
#[cfg(test)]
pub(crate) mod test_sink;

use crate::error::Result;
use crate::model::arch::ModelConfig;
use serde::Serialize;

/// Which implementation computes the forward pass (defined below the
/// configuration, which names it, and re-exported here).
pub use crate::backend::BackendKind;

/// Validated sampling parameters (ranges checked at the API edge, WORKER-4302).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// 0 disables the top-k filter (the candidate pool is still capped, see sampler).
    pub top_k: u32,
    /// In (0, 1]; 1 disables nucleus filtering.
    pub top_p: f32,
}

impl SamplingParams {
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// What an engine needs to know at load time besides the model itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Positions one sequence may hold, prompt and output (WORKER-4422).
    pub max_context: usize,
    /// Positions the KV pool holds for all sequences together, rounded up
    /// to whole pages; at least `max_context` (0 means exactly that).
    pub kv_pool_tokens: usize,
    /// Sequences one step may hold (the daemon's `slots_total`; 0 counts
    /// as 1). The CUDA engine sizes its step buffers for them at load; the
    /// CPU engine needs no per-sequence buffers and ignores it.
    pub max_sequences: usize,
    /// CUDA device ordinal (ignored by the CPU engine).
    pub gpu_device: u32,
    /// Host threads for the CPU engine (0 = all cores).
    pub threads: usize,
}

/// Bytes the engine holds, by purpose (defined beside [`BackendKind`] so
/// that telemetry need not import the engine).
pub use crate::backend::MemoryReport;

/// Faults a test build can inject to prove that detection works.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Flip one bit of the resident weight bytes at this offset.
    FlipResidentByte { offset: u64 },
    /// Make the next device operation fail as a CUDA error would.
    DeviceError,
    /// Make the next engine step hang for this many ms, as a kernel that
    /// never returns would (the step watchdog's scenario).
    HangNextStep { ms: u64 },
    /// Replace the shard handle's seal with these bytes (a forgery made with
    /// another key); handled by the daemon, not the engine.
    ReplaceSeal { seal: [u8; 32] },
    /// Report this many bytes of free memory to Plan from now on (Plan's
    /// arithmetic at exact boundaries); handled by the daemon.
    AvailableBytes { bytes: u64 },
}

/// A loaded, resident model: single-sequence calls (`forward`, `logits`,
/// `sample`) and the batched interface (`admit`, `step`, `seq_*`) over one
/// paged KV pool.
pub trait Engine: Send {
    fn backend(&self) -> BackendKind;

    fn config(&self) -> &ModelConfig;

    /// Tokens (prompt + generated) one sequence may hold: the KV cache
    /// capacity planned at load (WORKER-4422).
    fn max_context(&self) -> usize;

    /// Forget the current sequence so the next `forward` starts at position 0.
    fn reset(&mut self);

    /// Run `tokens` at positions `pos..pos + tokens.len()`, appending to the KV
    /// cache, and leave the logits of the last position ready. Positions must
    /// continue the current sequence; ids must be inside the vocabulary.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()>;

    /// The logits of the last position, copied to the host (tests, teacher forcing).
    fn logits(&mut self) -> Result<Vec<f32>>;

    /// Choose the next token from the last logits: greedy when `params` say so,
    /// else the sampler over the top candidates with `draw` ∈ [0, 1).
    fn sample(&mut self, params: &SamplingParams, draw: f32) -> Result<u32> {
        let logits = self.logits()?;
        Ok(sampler::sample_from_logits(&logits, params, draw))
    }

    /// The KV pool's page size and use.
    fn kv_usage(&self) -> batch::KvUsage;

    /// Sequences this engine can run in one step. The daemon runs at most
    /// this many jobs at once, whatever `slots_total` says.
    fn max_sequences(&self) -> usize;

    /// The prompt chunk this engine computes in one pass. Every caller
    /// feeds prompts in chunks of this size from the request's own start,
    /// so a prompt is split the same way alone, batched or interrupted.
    fn prefill_chunk(&self) -> usize;

    /// What decides this engine's arithmetic besides the sources; its
    /// `version()` is the numerics version the worker reports.
    fn numerics(&self) -> numerics::NumericsKey;

    /// Admit a sequence that may hold up to `positions` tokens (prompt +
    /// output) and reserve its pages now: INVALID_PARAMS when it can never
    /// fit (more than `max_context`, or than the whole pool), WORKER_BUSY
    /// while other sequences hold the pages it needs.
    fn admit(&mut self, positions: usize) -> Result<batch::SeqSlot>;

    /// Give a sequence's pages back (end, cancel, disconnect, timeout). A
    /// sequence that is not admitted is ignored.
    fn release(&mut self, seq: batch::SeqSlot);

    /// One step over a ragged batch: each chunk's tokens continue its
    /// sequence, and each sequence keeps the logits of its chunk's last token.
    fn step(&mut self, chunks: &[batch::StepChunk<'_>]) -> Result<()>;

    /// The logits of `seq`'s last computed position, copied to the host.
    fn seq_logits(&mut self, seq: batch::SeqSlot) -> Result<Vec<f32>>;

    /// Choose `seq`'s next token from its last logits, as [`Engine::sample`]
    /// does for the single sequence.
    fn seq_sample(
        &mut self,
        seq: batch::SeqSlot,
        params: &SamplingParams,
        draw: f32,
    ) -> Result<u32> {
        let logits = self.seq_logits(seq)?;
        Ok(sampler::sample_from_logits(&logits, params, draw))
    }

    /// Select, in one go, the sampling candidates of every sequence in
    /// `wants` (slot, candidates it will ask for) from the last step's
    /// logits, so that the [`Engine::seq_sample`] calls that follow take
    /// them without a device round trip each (issue 11 point 7). A pure
    /// speed-up: each sequence then samples exactly what it would have
    /// sampled without it. The default does nothing.
    fn prefetch_samples(&mut self, wants: &[(batch::SeqSlot, usize)]) -> Result<()> {
        let _ = wants;
        Ok(())
    }

    /// Start the next decode step of `rows` now, before their samples are
    /// read (issue 12 point 1: no host round trip per token). The caller
    /// promises that every one of them samples greedily from the last step
    /// and will feed its pick at its next position unless the pick ends it,
    /// and that the last step's logits are read no more. An engine that
    /// takes the offer picks each row's token on the device, makes it the
    /// next step's input and starts that step; `seq_sample` then returns the
    /// picks, and the next `step` whose chunks are exactly those rows, picks
    /// and positions in that order adopts the running step instead of
    /// computing it again. Any other next step is computed as usual (the
    /// early step only wrote what that step writes again), so streams are
    /// what they are without it. Returns whether it started one; the
    /// default declines.
    fn chain_greedy(&mut self, rows: &[batch::SeqSlot]) -> Result<bool> {
        let _ = rows;
        Ok(false)
    }

    /// Recompute the digest of the resident weight bytes (see `shard::digest`).
    fn resident_digest(&mut self) -> Result<[u8; 32]>;

    fn memory(&self) -> MemoryReport;

    #[cfg(feature = "test-hooks")]
    fn inject_fault(&mut self, fault: Fault) -> Result<()>;
}

/// The bounds every engine enforces before a forward pass (WORKER-4413):
/// positions continue the sequence, ids are inside the vocabulary, and the
/// sequence stays within the KV cache planned at load.
/// What every engine answers when asked for logits or a sample before any
/// forward pass since the last reset.
pub fn no_logits_yet() -> crate::error::WorkerError {
    crate::error::WorkerError::invalid("no logits yet: run forward first")
}

pub fn check_forward_args(
    config: &ModelConfig,
    max_context: usize,
    n_past: usize,
    tokens: &[u32],
    pos: usize,
) -> Result<()> {
    use crate::error::WorkerError;
    if tokens.is_empty() {
        return Err(WorkerError::invalid("forward needs at least one token"));
    }
    if pos != n_past {
        return Err(WorkerError::invalid(format!(
            "position {pos} does not continue the sequence, which holds {n_past} tokens; reset first"
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
        return Err(WorkerError::invalid(format!(
            "token id {bad} is outside the model's vocabulary of {} tokens",
            config.vocab_size
        )));
    }
    if pos.saturating_add(tokens.len()) > max_context {
        return Err(WorkerError::invalid(format!(
            "{} tokens at position {pos} exceed the context of {max_context} tokens this engine was loaded with",
            tokens.len()
        )));
    }
    Ok(())
}

/// Load the model's resident copy on the chosen backend.
///
/// The CPU engine copies the tensor data section into host memory; the CUDA
/// engine uploads it, still in its GGUF block formats, to device memory.
/// `opening`: the GPU's opening, started before the file was read (see
/// `gpu::opening`); None opens it here. The CPU engine ignores it.
pub fn load_engine(
    kind: BackendKind,
    gguf: &crate::model::gguf::GgufFile,
    config: &ModelConfig,
    weights: &crate::model::arch::ModelWeights,
    opts: &LoadOptions,
    opening: Option<crate::gpu::GpuOpening>,
) -> Result<Box<dyn Engine>> {
    crate::model::arch::check_weights(gguf)?;
    Ok(match kind {
        BackendKind::Cpu => Box::new(cpu::CpuEngine::load(gguf, config, weights, opts)?),
        BackendKind::Cuda => Box::new(cuda::CudaEngine::load_opened(
            gguf, config, weights, opts, opening,
        )?),
    })
}
