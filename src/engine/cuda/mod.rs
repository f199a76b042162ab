//! The CUDA engine: the model resident in VRAM in its GGUF block formats,
//! a decode step of fixed device buffers replayed as a CUDA graph, the
//! resident digest computed on the device (WORKER-4000, 4012, 4100–4103,
//! 4113, 4700, 4710–4713; KERNEL-GEMM-001..005; issue 5).
//!
//! Safe Rust only: every device call goes through `crate::gpu`.
//! Layout: the whole GGUF data section is one device buffer (so the digest
//! covers exactly the resident bytes); activations, the paged KV pool (f32,
//! per layer `[page][KV_PAGE_TOKENS][n_kv][head_dim]` for k and for v, one
//! page table per sequence) and the sampler's candidate buffers are
//! allocated once at load, nothing per step (issue 11 point 3). Every step
//! row reads its token id, position and sequence from device memory, so the
//! same captured graph replays for every token of every sequence; per token
//! the host copies 20 bytes a row in (id and place) and, when sampling, the chosen
//! candidates out. Greedy decode chains (`chain`): the device writes each
//! pick into the next step's ids and starts that step before the host has
//! read the picks from page-locked memory.
//! A step (issue 11 point 4) runs its decode rows (one token of each of
//! several sequences) together, with kernels whose arithmetic per row is
//! that of a lone row (`gpu::batched`), so a sequence's tokens do not depend
//! on its neighbours (point 5). Decode steps replay CUDA graphs captured per
//! (rows, positions bucket), so the host does not launch ~250 kernels per
//! step (point 4). Each prefill chunk then runs on its own, exactly as it
//! runs alone.
//! Prefill runs a prompt in fixed chunks (`plan::PREFILL_CHUNKS`: 2,048
//! tokens where the model's step buffers allow, down to 512). A chunk of
//! at least GEMM_MIN_TOKENS tokens multiplies each weight through cuBLAS:
//! the matrix is dequantized into one shared f32 scratch buffer (`wf`, sized
//! for the largest layer matrix, three floats a weight for 3xTF32; the LM
//! head runs for the last token only, by mat-vec), then SGEMM or 3xTF32 as
//! `tensor_routes::PrefillGemm` decides by shape and chunk length; shorter
//! chunks use the batched mat-vec. Every prefill chunk's attention is the
//! prefill attention (`gpu::attention`: register-tiled per KV head so 64
//! query rows share each cache chunk in shared memory; online softmax, no
//! scratch).
//! Decode (one token): fused mat-vecs (q, k, v in one launch when they share
//! a format) and split-KV attention,
//! captured as a graph; no cuBLAS call on the decode path.
//! GEMM and mat-vec round differently, so a token's logits depend on which
//! path ran it; the chunking is a function of the request alone (prompt
//! length and start), so identical requests stay bit-identical (WORKER-4710).

mod plan;
use plan::{kv_cache_bytes, scratch_plan, Buf, Layout};
pub use plan::{planned_memory, CUDA_MAX_SEQUENCES};
#[cfg(test)]
pub(crate) mod matvec_tests;
#[cfg(test)]
pub(crate) mod prefill_tests;
#[cfg(test)]
mod profile_tests;
#[cfg(test)]
pub(crate) mod tests;

mod chain;
mod checks;
mod graph_cache;
mod sample;
mod step;
pub use checks::supported_quant;
use checks::{check_f32_vec, check_tensor};

use graph_cache::GraphCache;
pub(crate) mod tensor_routes;

use crate::engine::batch::{check_admission, check_step, KvUsage, SeqBounds, SeqSlot, StepChunk};
use crate::engine::kv::{KvPool, PageTable};
use crate::engine::{BackendKind, Engine, LoadOptions, MemoryReport, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::gpu::attention::{KvRows, KV_PAGE_TOKENS};
use crate::gpu::gemm::Tf32Split;
use crate::gpu::{DeviceBuffer, Gpu, GpuGraph, Span};
use crate::model::arch::{ModelConfig, ModelWeights, TensorRef};
use crate::model::gguf::GgufFile;
use tensor_routes::{Group, PrefillGemm, TensorRoutes};

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

/// Chunks of at least this many tokens go through dequantize + cuBLAS SGEMM;
/// shorter ones through the batched mat-vec. A first estimate, not yet
/// measured: at 4864x896 q5_0 the batched mat-vec took 300 us for 64 tokens
/// on an H200 (~37 us per pass of 8), while dequantizing 17 MB and a
/// memory-bound SGEMM should take ~15 us, so the GEMM should win from about
/// 8 tokens. `op_profile_qwen_shapes` prints both at 8 tokens to confirm.
const GEMM_MIN_TOKENS: usize = 8;

/// Largest pool selected by the small-k `topk` kernel (one pass over the
/// vocabulary per candidate; when it ran one block per row it took 34 us
/// for k = 1 at 152k logits on an H200, now a block per 4,096 logits);
/// larger pools use the radix select of `crate::gpu::topk` (53 us for any k
/// up to 1024, where the one-block kernel took 513 us at k = 16). Both run
/// on the device and return the same candidates in the same order. The op
/// profile times both at k = 16 and 40: where the crossover lies decides
/// whether this grows.
const DEVICE_TOPK_MAX: usize = 1;

/// Most decode graphs kept at once (each ~250 kernel nodes); past it the
/// least recently replayed is dropped (`graph_cache`).
const MAX_DECODE_GRAPHS: usize = 64;

/// Candidates copied back per sampled token when not greedy.
const DEVICE_CANDIDATES: usize = crate::engine::sampler::MAX_CANDIDATES;

/// One admitted sequence: its pages, what it reserved, how far it has got.
struct SeqState {
    table: PageTable,
    capacity: usize,
    n_past: usize,
}

pub struct CudaEngine {
    // Field order is drop order: the graphs refer to the buffers below, so they go first.
    /// Decode steps captured by (rows, positions the attention grid covers).
    graphs: GraphCache<(usize, usize), GpuGraph>,
    use_graph: bool,
    act: Act,
    /// Where chained steps' picks arrive on the host (`chain`).
    inbox: crate::gpu::inbox::HostInbox,
    kv: DeviceBuffer,
    weights: DeviceBuffer,
    gpu: Gpu,
    cfg: ModelConfig,
    w: ModelWeights,
    layout: Layout,
    max_ctx: usize,
    pool: KvPool,
    /// Admitted sequences by slot id (`layout.max_seqs` slots).
    seqs: Vec<Option<SeqState>>,
    /// The sequence the single-sequence calls drive, once `forward` admits it.
    solo: Option<SeqSlot>,
    /// The logits row each sequence's last step left, by slot id; cleared
    /// for every sequence by the next step (the rows are reused).
    logits_row: Vec<Option<usize>>,
    /// Candidates of every logits row of the last step, selected at once
    /// (`Engine::prefetch_samples`); cleared by the next step.
    prefetched: Option<sample::Prefetched>,
    /// Whether `chain_greedy` starts steps early (WORKER_ORCD_CHAIN_DECODE).
    chain_on: bool,
    /// The decode step started early, until the next step adopts or replaces it.
    chained: Option<chain::Chained>,
    /// How chained steps ended (tests).
    chain_counts: chain::ChainCounts,
    memory: MemoryReport,
    /// How prefill GEMMs multiply (WORKER_ORCD_PREFILL_GEMM).
    prefill_gemm: PrefillGemm,
    /// The matrix groups whose decode products run on the tensor cores,
    /// for every row of every step (a lone decode row, a prompt's last
    /// token's LM head, a batched step alike).
    tensor: TensorRoutes,
    #[cfg(feature = "test-hooks")]
    fail_next: bool,
    /// Test builds: the next step sleeps this long first (a hung device).
    #[cfg(feature = "test-hooks")]
    hang_next_ms: u64,
}

impl CudaEngine {
    /// Upload the model to GPU `opts.gpu_device` and prepare every buffer.
    pub fn load(
        g: &GgufFile,
        cfg: &ModelConfig,
        w: &ModelWeights,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::load_opened(g, cfg, w, opts, None)
    }

    /// [`CudaEngine::load`] on a GPU whose opening started earlier (while
    /// the file was read), when there is one.
    pub fn load_opened(
        g: &GgufFile,
        cfg: &ModelConfig,
        w: &ModelWeights,
        opts: &LoadOptions,
        opening: Option<crate::gpu::GpuOpening>,
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
        let asked = if crate::mutants::active(crate::mutants::Mutant::KvIgnoresMaxContext) {
            cfg.context_length.max(1)
        } else {
            opts.max_context
        };
        let layout = Layout::new(cfg, asked, opts.kv_pool_tokens, opts.max_sequences);
        let max_ctx = layout.max_ctx;
        // Before any allocation: a bad mode changes nothing on the device.
        let prefill_gemm = PrefillGemm::parse(crate::env::PREFILL_GEMM.get().as_deref())?;
        let tensor_routes = TensorRoutes::parse(crate::env::TENSOR_DECODE.get().as_deref())?;
        let gpu = match opening {
            Some(o) => o.wait(opts.gpu_device)?,
            None => Gpu::open(opts.gpu_device)?,
        };
        let info = gpu.info().clone();
        tracing::info!(human = %format!("Opened GPU {} ({}) for the CUDA backend; its kernel files: {}.",
                opts.gpu_device, info.name, gpu.kernels.describe()),
            gpu = %info.name, cc = ?info.compute_capability, driver = %info.driver_version,
            nvrtc = %info.nvrtc_version, libraries = ?info.libraries,
            kernels_built_in = gpu.kernels.built_in, kernels_cached = gpu.kernels.from_cache,
            kernels_compiled = gpu.kernels.compiled, "CUDA backend opened");

        let kv_bytes = kv_cache_bytes(cfg, layout.pool_pages);
        let scratch = scratch_plan(cfg, &layout, dl);
        let scratch_bytes: usize = scratch.iter().map(|s| s.0).sum();
        let (free, _) = gpu.mem_info()?;
        let need = dl + kv_bytes + scratch_bytes;
        if need > free {
            return Err(WorkerError::VramOom {
                message: format!(
                    "the model needs {need} bytes of VRAM on GPU {} ({dl} weights + {kv_bytes} KV cache for {} tokens + {scratch_bytes} scratch for {} sequences) but only {free} bytes are available (free VRAM); \
                     lower max_context, kv_cache_tokens or slots_total, or use a larger GPU",
                    info.ordinal,
                    layout.pool_pages * KV_PAGE_TOKENS,
                    layout.max_seqs
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
        let tensor = tensor_routes.keep_ready(|group| {
            let ready = |t: &TensorRef| gpu.rows_mm_ready(t.dtype);
            w.layers.iter().all(|l| match group {
                Group::LmHead => ready(&w.output),
                Group::Ffn => {
                    ready(&l.w_gate) && ready(&l.w_down) && l.w_up.dtype == l.w_gate.dtype
                }
                Group::Attn => ready(&l.wq) && ready(&l.wk) && ready(&l.wv) && ready(&l.wo),
            })
        });
        tracing::info!(human = %format!("Decode mat-vecs on the tensor cores: {} (asked: {}).",
                tensor.describe(), tensor_routes.describe()),
            tensor_decode = %tensor.describe(), "decode arithmetic chosen");
        let use_graph = crate::env::CUDA_GRAPH.on_unless_zero();
        let chain_on = crate::env::CHAIN_DECODE.on_unless_zero();
        let inbox = gpu.inbox(layout.max_seqs)?;
        Ok(Self {
            graphs: GraphCache::new(MAX_DECODE_GRAPHS),
            use_graph,
            act,
            inbox,
            kv,
            weights,
            gpu,
            cfg: cfg.clone(),
            w: w.clone(),
            layout,
            max_ctx,
            pool: KvPool::new(KV_PAGE_TOKENS, layout.pool_pages)?,
            seqs: (0..layout.max_seqs).map(|_| None).collect(),
            solo: None,
            logits_row: vec![None; layout.max_seqs],
            prefetched: None,
            chain_on,
            chained: None,
            chain_counts: chain::ChainCounts::default(),
            prefill_gemm,
            tensor,
            memory: MemoryReport {
                weights_bytes: dl as u64,
                kv_cache_bytes: kv_bytes as u64,
                scratch_bytes: (scratch_bytes + blas_ws) as u64,
            },
            #[cfg(feature = "test-hooks")]
            fail_next: false,
            #[cfg(feature = "test-hooks")]
            hang_next_ms: 0,
        })
    }

    /// The device this engine runs on.
    pub fn device(&self) -> &crate::gpu::DeviceInfo {
        self.gpu.info()
    }

    /// Enqueue the forward pass of the `n` rows whose ids, positions and
    /// sequences are already in device memory (`engine::block` over
    /// [`step::CudaStep`]): `decode` rows are one token of `n` sequences,
    /// else `n` consecutive tokens of one. Leaves the logits at `out_row`
    /// (one row per decode row, the last token's for a chunk).
    fn enqueue_step(&self, n: usize, decode: bool, out_row: usize, reach: usize) -> Result<()> {
        let mut step = step::CudaStep {
            e: self,
            n,
            decode,
            out_row,
            reach,
        };
        crate::engine::block::forward(&mut step, &self.cfg)
    }

    /// The step rows' view of the KV pool for the kernels.
    fn kv_rows(&self) -> KvRows<'_> {
        KvRows {
            place: self.act[Buf::Place].all(),
            tables: self.act[Buf::Tables].all(),
            n_tables: self.layout.max_seqs,
            table_len: self.layout.table_len(),
            pool_pages: self.layout.pool_pages,
        }
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
            let split = self
                .prefill_gemm
                .tf32x3_for(rows, cols, n)
                .then(|| Tf32Split {
                    x_parts: self.act[Buf::XParts].all(),
                    partials: self.k_split_partials(rows, cols, n),
                });
            self.gpu.gemm(
                t.dtype, w, x, bias, y, scratch, split, rows, cols, n, accumulate,
            )
        } else {
            self.gpu
                .matvec(t.dtype, w, x, bias, y, rows, cols, n, accumulate)
        }
    }

    /// The partial outputs' buffer when a 3xTF32 product of `rows` x `cols`
    /// over `n` tokens runs split-K: more columns than rows (too few output
    /// tiles for one GEMM to fill the GPU), slices that fit, and partials
    /// that fit the buffer (sized for `d` rows). A function of the shape and
    /// the chunk length only, as the arithmetic must be.
    fn k_split_partials(&self, rows: usize, cols: usize, n: usize) -> Option<Span<'_>> {
        let parts = &self.act[Buf::GemmParts];
        (rows < cols
            && crate::gpu::gemm::tf32x3_k_split_fits(cols)
            && 4 * crate::gpu::gemm::TF32X3_K_SLICES * rows * n <= parts.len())
        .then(|| parts.all())
    }

    /// Upload the step rows: token ids, then their places (`upload_places`).
    fn upload_rows(
        &mut self,
        ids: &[i32],
        rows: impl Iterator<Item = (usize, SeqSlot)>,
    ) -> Result<()> {
        self.gpu.upload(&mut self.act[Buf::Tok], 0, ids)?;
        self.upload_places(rows)
    }

    /// Upload the places of the step rows `(position, sequence)` with the
    /// pool row each position's k and v go to (from the sequence's page
    /// table, checked by `check_step`).
    fn upload_places(&mut self, rows: impl Iterator<Item = (usize, SeqSlot)>) -> Result<()> {
        let mut place = Vec::new();
        for (pos, seq) in rows {
            let row = self
                .seq(seq)
                .and_then(|s| s.table.row(pos))
                .ok_or_else(|| {
                    WorkerError::internal(format!(
                        "position {pos} of sequence {} has no page",
                        seq.0
                    ))
                })?;
            place.extend_from_slice(&[pos as i32, seq.0 as i32, row as i32, 0]);
        }
        self.gpu.upload(&mut self.act[Buf::Place], 0, &place)
    }

    /// One token of each of `rows` sequences (ids, positions, slots), logits
    /// to rows 0..rows.len(), by replaying the graph of that many rows.
    fn run_decode(&mut self, rows: &[(u32, usize, SeqSlot)]) -> Result<()> {
        let ids: Vec<i32> = rows.iter().map(|r| r.0 as i32).collect();
        self.gpu.upload(&mut self.act[Buf::Tok], 0, &ids)?;
        let places: Vec<(usize, SeqSlot)> = rows.iter().map(|r| (r.1, r.2)).collect();
        self.replay_decode(&places)
    }

    /// Decode rows `(position, sequence)` whose token ids are already in
    /// `Buf::Tok` (row r's at r): their places, then the graph of that many
    /// rows, captured on first use.
    fn replay_decode(&mut self, rows: &[(usize, SeqSlot)]) -> Result<()> {
        self.upload_places(rows.iter().copied())?;
        let reach = rows.iter().map(|r| r.0 + 1).max().unwrap_or(1);
        let key = (rows.len(), self.graph_reach(reach));
        if !self.use_graph {
            return self.enqueue_step(key.0, true, 0, reach);
        }
        if !self.graphs.contains(&key) {
            let graph = self
                .gpu
                .capture(|| self.enqueue_step(key.0, true, 0, key.1))?;
            self.graphs.insert(key, graph);
        }
        match self.graphs.get(&key) {
            Some(graph) => graph.launch(),
            None => Err(WorkerError::internal("decode graph missing after capture")),
        }
    }

    /// Positions the graph for rows reaching `reach` covers: the next
    /// power of two (at least one attention chunk), so the attention grid
    /// stays near the rows' real length and a graph serves many steps. A
    /// lone row too: its graph used to cover every position of the
    /// context, so at a short position almost every attention block of
    /// every layer started only to find nothing to do (about 1,800 blocks a
    /// layer at a 4,225-position context). Covering more positions than a
    /// row has changes nothing it computes; a sequence crosses at most
    /// log2(context / 32) boundaries, one capture each.
    fn graph_reach(&self, reach: usize) -> usize {
        reach
            .next_power_of_two()
            .max(crate::gpu::attention::KV_PAGE_TOKENS)
            .min(self.max_ctx)
    }

    /// A prompt chunk of one sequence, in launches of at most `self.chunk`
    /// tokens from the chunk's own start (callers start chunks at multiples
    /// of `prefill_chunk`, so the split depends on the request alone); the
    /// last token's logits go to `out_row`. A lone token runs the decode
    /// kernels, as it always has.
    fn run_prefill(&mut self, c: &StepChunk<'_>, out_row: usize) -> Result<()> {
        let chunk = self.layout.chunk;
        for (i, piece) in c.tokens.chunks(chunk).enumerate() {
            let start = c.pos + i * chunk;
            let ids: Vec<i32> = piece.iter().map(|&t| t as i32).collect();
            self.upload_rows(&ids, (start..start + piece.len()).map(|p| (p, c.seq)))?;
            let decode = piece.len() == 1;
            self.enqueue_step(piece.len(), decode, out_row, start + piece.len())?;
        }
        Ok(())
    }

    /// Prompt chunks, each on its own, their logits to rows `first_row`...
    /// in order. A prompt ends with a sync so a device fault surfaces here
    /// and prefill timings are real; a decode step stays asynchronous until
    /// its logits or samples are read.
    fn run_prompts<'c, 'd: 'c>(
        &mut self,
        chunks: impl IntoIterator<Item = &'c StepChunk<'d>>,
        first_row: usize,
    ) -> Result<()> {
        let mut ran = 0;
        for c in chunks {
            self.run_prefill(c, first_row + ran)?;
            ran += 1;
        }
        if ran > 0 {
            self.gpu.sync()?;
        }
        Ok(())
    }

    /// After a step: each chunk's sequence has computed through its chunk,
    /// and its logits are in the row paired with it.
    fn record_rows<'c, 'd: 'c>(&mut self, rows: impl Iterator<Item = (&'c StepChunk<'d>, usize)>) {
        for (c, row) in rows {
            let i = c.seq.0 as usize;
            if let Some(st) = self.seqs[i].as_mut() {
                st.n_past = c.pos + c.tokens.len();
            }
            self.logits_row[i] = Some(row);
        }
    }

    #[cfg(feature = "test-hooks")]
    fn take_fault(&mut self) -> Result<()> {
        let hang = std::mem::take(&mut self.hang_next_ms);
        if hang > 0 {
            std::thread::sleep(std::time::Duration::from_millis(hang));
        }
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

    /// The k best (id, logit) pairs of the single sequence's last logits,
    /// in the sampler's order.
    pub fn top_candidates(&mut self, k: usize) -> Result<Vec<(u32, f32)>> {
        let row = self.solo_row()?;
        self.row_candidates(row, k)
    }
}

impl CudaEngine {
    fn seq(&self, s: SeqSlot) -> Option<&SeqState> {
        self.seqs.get(s.0 as usize).and_then(Option::as_ref)
    }

    /// The logits row `seq`'s last step left.
    fn logits_row_of(&self, seq: SeqSlot) -> Result<usize> {
        if self.seq(seq).is_none() {
            return Err(WorkerError::invalid(format!(
                "sequence {} is not admitted",
                seq.0
            )));
        }
        self.logits_row[seq.0 as usize].ok_or_else(crate::engine::no_logits_yet)
    }

    /// The single sequence's logits row.
    fn solo_row(&self) -> Result<usize> {
        match self.solo {
            Some(s) => self.logits_row_of(s),
            None => Err(crate::engine::no_logits_yet()),
        }
    }

    /// The single sequence `forward` continues, admitted for a whole
    /// context on its first call.
    fn solo_for(&mut self, tokens: &[u32], pos: usize) -> Result<SeqSlot> {
        let n_past = self.solo.and_then(|s| self.seq(s)).map_or(0, |s| s.n_past);
        crate::engine::check_forward_args(&self.cfg, self.max_ctx, n_past, tokens, pos)?;
        match self.solo {
            Some(s) => Ok(s),
            None => {
                let s = self.admit(self.max_ctx)?;
                self.solo = Some(s);
                Ok(s)
            }
        }
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
        if let Some(s) = self.solo.take() {
            self.release(s);
        }
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let seq = self.solo_for(tokens, pos)?;
        self.step(&[StepChunk { seq, tokens, pos }])
    }

    fn logits(&mut self) -> Result<Vec<f32>> {
        let row = self.solo_row()?;
        let n = self.cfg.vocab_size;
        self.gpu.download(&self.act[Buf::Logits], 4 * row * n, n)
    }

    fn kv_usage(&self) -> KvUsage {
        KvUsage {
            page_tokens: self.pool.page_tokens(),
            total_pages: self.pool.total_pages(),
            used_pages: self.pool.used_pages(),
        }
    }

    /// The sequences the step buffers were sized for at load.
    fn max_sequences(&self) -> usize {
        self.layout.max_seqs
    }

    fn prefill_chunk(&self) -> usize {
        self.layout.chunk
    }

    /// The device's part: the architecture the kernels were compiled for,
    /// its multiprocessor count (cuBLAS's reproducibility is per count), the
    /// NVRTC library that compiled the kernels (at build time or at start-up;
    /// its version and file size), the cuBLAS libraries (they run the
    /// prefill GEMM) and the prefill GEMM mode.
    fn numerics(&self) -> crate::engine::numerics::NumericsKey {
        let info = self.gpu.info();
        let mut device = vec![
            format!(
                "arch=sm_{}{}",
                info.compute_capability.0, info.compute_capability.1
            ),
            format!("multiprocessors={}", info.multiprocessors),
            format!("kernels_compiled_by={}", self.gpu.kernels.compiler),
            format!("prefill_gemm={}", self.prefill_gemm.describe()),
            format!("tensor_decode={}", self.tensor.describe()),
        ];
        device.extend(
            info.libraries
                .iter()
                .map(|l| l.rsplit('/').next().unwrap_or(l))
                .filter(|name| name.contains("cublas"))
                .map(|name| format!("library={name}")),
        );
        crate::engine::numerics::NumericsKey {
            backend: BackendKind::Cuda,
            prefill_chunk: self.layout.chunk,
            device,
        }
    }

    fn admit(&mut self, positions: usize) -> Result<SeqSlot> {
        check_admission(positions, self.max_ctx)?;
        // The lowest free slot, so slot ids depend only on the engine's history.
        let Some(slot) = self.seqs.iter().position(Option::is_none) else {
            return Err(WorkerError::Busy {
                message: format!(
                    "all {} sequence slots of the CUDA engine are taken; retry when one finishes",
                    self.seqs.len()
                ),
                retry_after_ms: crate::engine::kv::FULL_RETRY_AFTER_MS,
            });
        };
        let table = self.pool.reserve(positions)?;
        let ids: Vec<i32> = table.pages().iter().map(|&p| p as i32).collect();
        // Byte offset of the slot's table.
        let at = 4 * slot * self.layout.table_len();
        if let Err(e) = self.gpu.upload(&mut self.act[Buf::Tables], at, &ids) {
            self.pool.release(table);
            return Err(e);
        }
        self.seqs[slot] = Some(SeqState {
            table,
            capacity: positions,
            n_past: 0,
        });
        self.logits_row[slot] = None;
        Ok(SeqSlot(slot as u32))
    }

    fn release(&mut self, seq: SeqSlot) {
        self.forget_chained(seq);
        if let Some(st) = self.seqs.get_mut(seq.0 as usize).and_then(Option::take) {
            self.pool.release(st.table);
            self.logits_row[seq.0 as usize] = None;
        }
        if self.solo == Some(seq) {
            self.solo = None;
        }
    }

    /// Decode rows (one-token chunks) first, together, to logits rows
    /// 0..B in step order; then each prompt chunk on its own, to rows B...
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<()> {
        self.take_fault()?;
        check_step(chunks, self.cfg.vocab_size, |s| {
            self.seq(s).map(|st| SeqBounds {
                n_past: st.n_past,
                capacity: st.capacity,
            })
        })?;
        // A chained step of these rows may already run (`chain`).
        let adopted = self.adopt_chained(chunks)?;
        self.logits_row.iter_mut().for_each(|r| *r = None);
        self.prefetched = None;
        if let Some(a) = adopted {
            // Its rows keep their logits rows; sequences that joined since
            // run after them.
            let lead = a.rows.len();
            self.run_prompts(&chunks[lead..], a.after)?;
            self.record_rows(chunks.iter().zip(a.rows.iter().copied().chain(a.after..)));
            return Ok(());
        }
        let (decode, prefill): (Vec<_>, Vec<_>) = chunks.iter().partition(|c| c.tokens.len() == 1);
        if !decode.is_empty() {
            let rows: Vec<(u32, usize, SeqSlot)> = decode
                .iter()
                .map(|c: &&StepChunk| (c.tokens[0], c.pos, c.seq))
                .collect();
            self.run_decode(&rows)?;
        }
        self.run_prompts(prefill.iter().copied(), decode.len())?;
        self.record_rows(decode.iter().chain(&prefill).copied().zip(0..));
        Ok(())
    }

    fn seq_logits(&mut self, seq: SeqSlot) -> Result<Vec<f32>> {
        let row = self.logits_row_of(seq)?;
        let n = self.cfg.vocab_size;
        self.gpu.download(&self.act[Buf::Logits], 4 * row * n, n)
    }

    fn seq_sample(&mut self, seq: SeqSlot, params: &SamplingParams, draw: f32) -> Result<u32> {
        if let Some(pick) = self.chained_pick(seq)? {
            if !params.is_greedy() {
                return Err(WorkerError::internal(
                    "a sequence whose step was chained as greedy sampled otherwise",
                ));
            }
            self.take_fault()?;
            return Ok(pick);
        }
        let row = self.logits_row_of(seq)?;
        self.take_fault()?;
        self.row_sample(row, params, draw)
    }

    fn sample(&mut self, params: &SamplingParams, draw: f32) -> Result<u32> {
        let row = self.solo_row()?;
        self.take_fault()?;
        self.row_sample(row, params, draw)
    }

    fn chain_greedy(&mut self, rows: &[SeqSlot]) -> Result<bool> {
        self.start_chain(rows)
    }

    fn prefetch_samples(&mut self, wants: &[(SeqSlot, usize)]) -> Result<()> {
        self.prefetch_rows(wants)
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
            crate::engine::Fault::HangNextStep { ms } => {
                self.hang_next_ms = ms;
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
