//! The CUDA engine: the model resident in VRAM in its GGUF block formats,
//! a decode step of fixed device buffers replayed as a CUDA graph, the
//! resident digest computed on the device (WORKER-4000, 4012, 4100–4103,
//! 4113, 4700, 4710–4713; KERNEL-GEMM-001..005; issue 5).
//!
//! Safe Rust only: every device call goes through `crate::gpu`.
//! Layout: the whole GGUF data section is one device buffer (so the digest
//! covers exactly the resident bytes); activations, the KV cache (f32,
//! `[layer][max_ctx][n_kv][head_dim]` for k and for v) and the sampler's
//! candidate buffers are allocated once at load. A token step reads its
//! token id and position from device memory, so the same captured graph
//! replays for every token; per token the host copies 8 bytes in and, when
//! sampling, the chosen candidates out.
//! Prefill runs a prompt in fixed chunks of PREFILL_CHUNK tokens. A chunk of
//! at least GEMM_MIN_TOKENS tokens multiplies each weight through cuBLAS:
//! the matrix is dequantized into one shared f32 scratch buffer (`wf`, sized
//! for the largest layer matrix; the LM head runs for the last token only,
//! by mat-vec), then SGEMM; shorter chunks use the batched mat-vec. Every
//! prefill chunk's attention is the prefill attention (`gpu::attention`:
//! tiled per KV head so a GQA group and several tokens share each cache
//! chunk in shared memory; online softmax, no scratch).
//! Decode (one token): fused mat-vecs (q, k, v in one launch when they share
//! a format) and split-KV attention,
//! captured as a graph; no cuBLAS call on the decode path.
//! GEMM and mat-vec round differently, so a token's logits depend on which
//! path ran it; the chunking is a function of the request alone (prompt
//! length and start), so identical requests stay bit-identical (WORKER-4710).

mod plan;
pub use plan::planned_memory;
use plan::{kv_cache_bytes, scratch_plan, Buf};
#[cfg(test)]
mod matvec_tests;
#[cfg(test)]
mod prefill_tests;
#[cfg(test)]
mod profile_tests;
#[cfg(test)]
mod tests;

mod checks;
mod step;
pub use checks::supported_quant;
use checks::{check_f32_vec, check_tensor};

use crate::engine::batch::{check_admission, check_step, KvUsage, SeqBounds, SeqSlot, StepChunk};
use crate::engine::{BackendKind, Engine, LoadOptions, MemoryReport, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::gpu::gemm::Tf32Split;
use crate::gpu::{DeviceBuffer, Gpu, GpuGraph, Span};
use crate::model::arch::{ModelConfig, ModelWeights, TensorRef};
use crate::model::gguf::GgufFile;

/// The fixed scratch buffers, allocated once in [`Buf::ALL`]'s order and
/// reached by name: `act[Buf::X]`.
struct Act(Vec<DeviceBuffer>);

impl std::ops::Index<Buf> for Act {
    type Output = DeviceBuffer;
    fn index(&self, b: Buf) -> &DeviceBuffer {
        &self.0[b as usize]
    }
}

impl std::ops::IndexMut<Buf> for Act {
    fn index_mut(&mut self, b: Buf) -> &mut DeviceBuffer {
        &mut self.0[b as usize]
    }
}

/// Prompt tokens per prefill launch sequence: activations are sized for this
/// many tokens; each GEMM reads (and dequantizes) its weight once per chunk.
const PREFILL_CHUNK: usize = 512;

/// Chunks of at least this many tokens go through dequantize + cuBLAS SGEMM;
/// shorter ones through the batched mat-vec. A first estimate, not yet
/// measured: at 4864x896 q5_0 the batched mat-vec took 300 us for 64 tokens
/// on an H200 (~37 us per pass of 8), while dequantizing 17 MB and a
/// memory-bound SGEMM should take ~15 us, so the GEMM should win from about
/// 8 tokens. `op_profile_qwen_shapes` prints both at 8 tokens to confirm.
const GEMM_MIN_TOKENS: usize = 8;

/// Largest pool selected by the one-block `topk` kernel (one pass over the
/// vocabulary per candidate: 34 us for k = 1 at 152k logits on an H200);
/// larger pools use the radix select of `crate::gpu::topk` (53 us for any k
/// up to 1024, where the one-block kernel took 513 us at k = 16). Both run
/// on the device and return the same candidates in the same order.
const DEVICE_TOPK_MAX: usize = 1;

/// Candidates copied back per sampled token when not greedy.
const DEVICE_CANDIDATES: usize = crate::engine::sampler::MAX_CANDIDATES;

pub struct CudaEngine {
    // Field order is drop order: the graph refers to the buffers below, so it goes first.
    graph: Option<GpuGraph>,
    use_graph: bool,
    act: Act,
    kv: DeviceBuffer,
    weights: DeviceBuffer,
    gpu: Gpu,
    cfg: ModelConfig,
    w: ModelWeights,
    max_ctx: usize,
    /// Prefill chunk: PREFILL_CHUNK, or max_ctx when smaller.
    chunk: usize,
    next_pos: usize,
    has_logits: bool,
    /// Positions the one admitted sequence reserved, while one is (the
    /// batched interface; this engine holds one sequence at a time so far).
    admitted: Option<usize>,
    memory: MemoryReport,
    /// Prefill GEMMs as 3xTF32 (WORKER_ORCD_PREFILL_GEMM).
    tf32x3: bool,
    #[cfg(feature = "test-hooks")]
    fail_next: bool,
}

impl CudaEngine {
    /// Upload the model to GPU `opts.gpu_device` and prepare every buffer.
    pub fn load(
        g: &GgufFile,
        cfg: &ModelConfig,
        w: &ModelWeights,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let data = g.data_section();
        let dl = data.len();
        let (d, hd, nh, nkv, ffn, vocab) = (
            cfg.d_model,
            cfg.head_dim,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.ffn_dim,
            cfg.vocab_size,
        );
        check_tensor(&w.token_embd, vocab, d, dl)?;
        check_tensor(&w.output, vocab, d, dl)?;
        check_f32_vec(&w.output_norm, d, dl)?;
        for l in &w.layers {
            check_f32_vec(&l.attn_norm, d, dl)?;
            check_f32_vec(&l.ffn_norm, d, dl)?;
            check_tensor(&l.wq, nh * hd, d, dl)?;
            check_tensor(&l.wk, nkv * hd, d, dl)?;
            check_tensor(&l.wv, nkv * hd, d, dl)?;
            check_tensor(&l.wo, d, nh * hd, dl)?;
            check_tensor(&l.w_gate, ffn, d, dl)?;
            check_tensor(&l.w_up, ffn, d, dl)?;
            check_tensor(&l.w_down, d, ffn, dl)?;
            for (b, n) in [(&l.bq, nh * hd), (&l.bk, nkv * hd), (&l.bv, nkv * hd)] {
                if let Some(b) = b {
                    check_f32_vec(b, n, dl)?;
                }
            }
        }
        if opts.max_context == 0 || opts.max_context > i32::MAX as usize / (nh.max(nkv * hd)) {
            return Err(WorkerError::invalid(format!(
                "max_context {} is out of range",
                opts.max_context
            )));
        }
        // Like the reference path: never plan past the context the model was trained for.
        let max_ctx = if crate::mutants::active(crate::mutants::Mutant::KvIgnoresMaxContext) {
            cfg.context_length.max(1)
        } else {
            opts.max_context.min(cfg.context_length.max(1))
        };
        // Before any allocation: a bad mode changes nothing on the device.
        let tf32x3 = match crate::env::PREFILL_GEMM.get().as_deref() {
            None | Some("f32") => false,
            Some("tf32x3") => true,
            Some(other) => {
                return Err(WorkerError::invalid(format!(
                "WORKER_ORCD_PREFILL_GEMM is \"{other}\"; use \"f32\" (the default) or \"tf32x3\""
            )))
            }
        };
        let gpu = Gpu::open(opts.gpu_device)?;
        let info = gpu.info().clone();
        tracing::info!(human = %format!("Opened GPU {} ({}) for the CUDA backend; {} compiled kernels came from the on-disk cache.",
                opts.gpu_device, info.name, gpu.cached_modules),
            gpu = %info.name, cc = ?info.compute_capability, driver = %info.driver_version,
            nvrtc = %info.nvrtc_version, libraries = ?info.libraries, cached_kernels = gpu.cached_modules, "CUDA backend opened");

        let kv_bytes = kv_cache_bytes(cfg, max_ctx);
        let chunk = PREFILL_CHUNK.min(max_ctx);
        let scratch = scratch_plan(cfg, max_ctx, dl);
        let scratch_bytes: usize = scratch.iter().map(|s| s.0).sum();
        let (free, _) = gpu.mem_info()?;
        let need = dl + kv_bytes + scratch_bytes;
        if need > free {
            return Err(WorkerError::VramOom {
                message: format!(
                    "the model needs {need} bytes of VRAM on GPU {} ({dl} weights + {kv_bytes} KV cache for {max_ctx} tokens + {scratch_bytes} scratch) but only {free} bytes are available (free VRAM); \
                     lower max_context or use a larger GPU",
                    info.ordinal
                ),
            });
        }
        let mut weights = gpu.alloc(dl, "model weights")?;
        gpu.upload(&mut weights, 0, data)?;
        let kv = gpu.alloc(kv_bytes, "KV cache")?;
        let act = Act(scratch
            .iter()
            .map(|&(bytes, what)| gpu.alloc(bytes, what))
            .collect::<Result<Vec<_>>>()?);
        gpu.sync()?;
        // The cuBLAS workspace (allocated at open) is scratch too.
        let blas_ws = gpu.blas_workspace_bytes();
        let use_graph = crate::env::CUDA_GRAPH
            .get()
            .map(|v| v != "0")
            .unwrap_or(true);
        Ok(Self {
            graph: None,
            use_graph,
            act,
            kv,
            weights,
            gpu,
            cfg: cfg.clone(),
            w: w.clone(),
            max_ctx,
            chunk,
            next_pos: 0,
            has_logits: false,
            admitted: None,
            tf32x3,
            memory: MemoryReport {
                weights_bytes: dl as u64,
                kv_cache_bytes: kv_bytes as u64,
                scratch_bytes: (scratch_bytes + blas_ws) as u64,
            },
            #[cfg(feature = "test-hooks")]
            fail_next: false,
        })
    }

    /// The device this engine runs on.
    pub fn device(&self) -> &crate::gpu::DeviceInfo {
        self.gpu.info()
    }

    /// Enqueue the forward pass of `n` tokens whose ids and first position
    /// are already in device memory (`engine::block` over [`step::CudaStep`]);
    /// leaves the last token's logits.
    fn enqueue_step(&self, n: usize) -> Result<()> {
        crate::engine::block::forward(&mut step::CudaStep { e: self, n }, &self.cfg)
    }

    /// y = x·Wᵀ (+ bias) (+ y) for `n` token rows: dequantize + cuBLAS SGEMM
    /// for chunks of at least GEMM_MIN_TOKENS, else the (batched) mat-vec,
    /// which is exactly the decode call when n == 1.
    #[allow(clippy::too_many_arguments)]
    fn mm(
        &self,
        t: &TensorRef,
        x: Span,
        bias: Option<Span>,
        y: Span,
        rows: usize,
        cols: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let w = self.weights.span(t.offset, t.n_bytes)?;
        if n >= GEMM_MIN_TOKENS {
            let scratch = self.act[Buf::Wf].all();
            let split = self.tf32x3.then(|| Tf32Split {
                w_small: self.act[Buf::WfSmall].all(),
                x_big: self.act[Buf::XBig].all(),
                x_small: self.act[Buf::XSmall].all(),
            });
            self.gpu.gemm(
                t.dtype, w, x, bias, y, scratch, split, rows, cols, n, accumulate,
            )
        } else {
            self.gpu
                .matvec(t.dtype, w, x, bias, y, rows, cols, n, accumulate)
        }
    }

    /// Run `tokens` (at most `self.chunk`) starting at `pos`. One token
    /// replays the captured decode graph; several run the batched kernels.
    fn run_step(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        self.gpu.upload(&mut self.act[Buf::Tok], 0, &ids)?;
        self.gpu.upload(&mut self.act[Buf::Pos], 0, &[pos as i32])?;
        if !self.use_graph || tokens.len() > 1 {
            return self.enqueue_step(tokens.len());
        }
        if self.graph.is_none() {
            let graph = self.gpu.capture(|| self.enqueue_step(1))?;
            self.graph = Some(graph);
        }
        match &self.graph {
            Some(graph) => graph.launch(),
            None => Err(WorkerError::internal("decode graph missing after capture")),
        }
    }

    #[cfg(feature = "test-hooks")]
    fn take_fault(&mut self) -> Result<()> {
        if std::mem::take(&mut self.fail_next) {
            return Err(WorkerError::cuda(
                "injected device error (test hook): the worker treats it as a real CUDA failure",
            ));
        }
        Ok(())
    }

    #[cfg(not(feature = "test-hooks"))]
    fn take_fault(&mut self) -> Result<()> {
        Ok(())
    }

    /// The k best (id, logit) pairs of the last logits, in the sampler's order.
    pub fn top_candidates(&mut self, k: usize) -> Result<Vec<(u32, f32)>> {
        if !self.has_logits {
            return Err(crate::engine::no_logits_yet());
        }
        let k = k.clamp(1, DEVICE_CANDIDATES.min(self.cfg.vocab_size));
        let a = &self.act;
        let (logits, n) = (a[Buf::Logits].all(), self.cfg.vocab_size);
        if k <= DEVICE_TOPK_MAX {
            self.gpu
                .topk(logits, n, k, a[Buf::CandIds].all(), a[Buf::CandVals].all())?;
        } else {
            self.gpu.topk_large(
                logits,
                n,
                k,
                a[Buf::TopkScratch].all(),
                a[Buf::CandIds].all(),
                a[Buf::CandVals].all(),
            )?;
        }
        let ids: Vec<i32> = self.gpu.download(&a[Buf::CandIds], 0, k)?;
        let vals: Vec<f32> = self.gpu.download(&a[Buf::CandVals], 0, k)?;
        Ok(ids
            .into_iter()
            .zip(vals)
            .map(|(i, v)| (i as u32, v))
            .collect())
    }
}

impl CudaEngine {
    /// The one sequence of the batched interface is `seq` and admitted.
    fn check_admitted(&self, seq: SeqSlot) -> Result<()> {
        if seq != SeqSlot(0) || self.admitted.is_none() {
            return Err(WorkerError::invalid(format!(
                "sequence {} is not admitted",
                seq.0
            )));
        }
        Ok(())
    }
}

impl Engine for CudaEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn max_context(&self) -> usize {
        self.max_ctx
    }

    fn reset(&mut self) {
        self.next_pos = 0;
        self.has_logits = false;
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        self.take_fault()?;
        crate::engine::check_forward_args(&self.cfg, self.max_ctx, self.next_pos, tokens, pos)?;
        let end = pos + tokens.len();
        // Fixed chunks from the request's own start: the split (and so which
        // tokens run through GEMM or mat-vec) depends on the request alone.
        for (i, chunk) in tokens.chunks(self.chunk).enumerate() {
            self.run_step(chunk, pos + i * self.chunk)?;
        }
        if tokens.len() > 1 {
            // A prompt ends with a sync so a device fault surfaces here and
            // prefill timings are real; a decode step stays asynchronous
            // until its logits or sample are read.
            self.gpu.sync()?;
        }
        self.next_pos = end;
        self.has_logits = true;
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        if !self.has_logits {
            return Err(crate::engine::no_logits_yet());
        }
        self.gpu
            .download(&self.act[Buf::Logits], 0, self.cfg.vocab_size)
    }

    // The batched interface over this engine's one KV cache: one page of the
    // whole context, one sequence at a time, until the paged kernels land.
    fn kv_usage(&self) -> KvUsage {
        KvUsage {
            page_tokens: self.max_ctx,
            total_pages: 1,
            used_pages: usize::from(self.admitted.is_some()),
        }
    }

    /// One sequence until the paged attention kernel lands (issue 11).
    fn max_sequences(&self) -> usize {
        1
    }

    fn prefill_chunk(&self) -> usize {
        self.chunk
    }

    fn admit(&mut self, positions: usize) -> Result<SeqSlot> {
        check_admission(positions, self.max_ctx)?;
        if self.admitted.is_some() {
            return Err(WorkerError::Busy {
                message: "the CUDA engine holds one sequence at a time and one is running; retry when it \
                          finishes"
                    .into(),
                retry_after_ms: crate::engine::kv::FULL_RETRY_AFTER_MS,
            });
        }
        self.admitted = Some(positions);
        self.reset();
        Ok(SeqSlot(0))
    }

    fn release(&mut self, seq: SeqSlot) {
        if seq == SeqSlot(0) && self.admitted.take().is_some() {
            self.reset();
        }
    }

    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<()> {
        let (admitted, n_past) = (self.admitted, self.next_pos);
        check_step(chunks, self.cfg.vocab_size, |s| {
            admitted
                .filter(|_| s == SeqSlot(0))
                .map(|capacity| SeqBounds { n_past, capacity })
        })?;
        // Checked: one admitted sequence, so exactly one chunk.
        let c = chunks[0];
        self.forward(c.tokens, c.pos)
    }

    fn seq_logits(&mut self, seq: SeqSlot) -> Result<Vec<f32>> {
        self.check_admitted(seq)?;
        self.logits()
    }

    fn seq_sample(&mut self, seq: SeqSlot, params: &SamplingParams, draw: f32) -> Result<u32> {
        self.check_admitted(seq)?;
        // The device-side candidate selection of the single sequence.
        self.sample(params, draw)
    }

    fn sample(&mut self, params: &SamplingParams, draw: f32) -> Result<u32> {
        self.take_fault()?;
        if params.is_greedy() {
            return Ok(self.top_candidates(1)?[0].0);
        }
        let k = crate::engine::sampler::pool_size(params).min(self.cfg.vocab_size);
        // Candidates are selected on the device (a single pass per candidate
        // for small pools, a radix select for large ones); only k pairs cross
        // to the host, where the shared sampler code makes the pick.
        let cands = self.top_candidates(k)?;
        Ok(crate::engine::sampler::pick_from_candidates(
            &cands, params, draw,
        ))
    }

    fn resident_digest(&mut self) -> Result<[u8; 32]> {
        let total = self.weights.len() as u64;
        let n = self.gpu.sha256_leaves(
            self.weights.all(),
            crate::shard::digest::CHUNK_BYTES,
            self.act[Buf::Leaves].all(),
        )?;
        let raw: Vec<u8> = self.gpu.download(&self.act[Buf::Leaves], 0, 32 * n)?;
        let leaves: Vec<[u8; 32]> = raw
            .chunks_exact(32)
            .map(|c| {
                let mut l = [0u8; 32];
                l.copy_from_slice(c);
                l
            })
            .collect();
        Ok(crate::shard::digest::root_from_leaves(total, &leaves))
    }

    fn memory(&self) -> MemoryReport {
        self.memory
    }

    #[cfg(feature = "test-hooks")]
    fn inject_fault(&mut self, fault: crate::engine::Fault) -> Result<()> {
        match fault {
            crate::engine::Fault::DeviceError => {
                self.fail_next = true;
                Ok(())
            }
            crate::engine::Fault::ReplaceSeal { .. }
            | crate::engine::Fault::AvailableBytes { .. } => Err(WorkerError::internal(
                "this fault is applied by the daemon, not the engine",
            )),
            crate::engine::Fault::FlipResidentByte { offset } => {
                let off = usize::try_from(offset)
                    .ok()
                    .filter(|&o| o < self.weights.len())
                    .ok_or_else(|| {
                        WorkerError::invalid(format!(
                            "offset {offset} is outside the {} resident bytes",
                            self.weights.len()
                        ))
                    })?;
                let b: Vec<u8> = self.gpu.download(&self.weights, off, 1)?;
                self.gpu.upload(&mut self.weights, off, &[b[0] ^ 0x01])?;
                self.gpu.sync()
            }
        }
    }
}
