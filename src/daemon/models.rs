//! Model admission: path confinement, size limits, memory planning and Plan
//! (WORKER-4210–4214, 4225, 4320–4323, 4422). Loading and sealing, at
//! start-up and by Commit, is one code path in [`super::commit`].
//!
//! Every path is confined to `model_root`: first lexically (so nothing
//! outside the root is even looked at), then after canonicalization (so
//! symlinks cannot leave it).

use crate::api::{PlanRequest, ShardLayout};
use crate::config::Config;
use crate::daemon::app::AppState;
use crate::daemon::capability;
use crate::engine::{BackendKind, MemoryReport};
use crate::error::{Result, WorkerError};
use crate::model::arch::ModelConfig;
use serde::Serialize;
use std::path::{Component, Path, PathBuf};

/// Resolve `r` (absolute, or relative to `root`) to a canonical file path
/// under the canonical root (4320–4323).
pub fn resolve_model_path(root: &Path, r: &str) -> Result<PathBuf> {
    let root_c = root.canonicalize().map_err(|e| {
        WorkerError::model_load(format!(
            "the model root {} cannot be opened ({e}); set model_root to an existing directory",
            root.display()
        ))
    })?;
    let outside = || {
        WorkerError::model_load(format!(
            "model path {r:?} lies outside the model root {}; only files under the model root can be loaded. \
             Move the file under the root or change model_root",
            root_c.display()
        ))
    };
    let p = Path::new(r);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root_c.join(p)
    };
    // Lexical check first: `..` that climbs out is refused without touching the file system.
    let mut lexical = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                if !lexical.pop() {
                    return Err(outside());
                }
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let root_lexical_ok = lexical.starts_with(&root_c) || lexical.starts_with(root);
    if !root_lexical_ok {
        return Err(outside());
    }
    let c = lexical.canonicalize().map_err(|e| {
        WorkerError::model_load(format!(
            "model {r:?} could not be opened under the model root {} ({e}); check the name",
            root_c.display()
        ))
    })?;
    if !c.starts_with(&root_c) {
        return Err(outside());
    }
    if !c.is_file() {
        return Err(WorkerError::model_load(format!(
            "model {r:?} is not a regular file"
        )));
    }
    Ok(c)
}

/// The model_ref reported for a canonical path: relative to the root.
pub fn model_ref_of(root: &Path, path: &Path) -> String {
    let root_c = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    path.strip_prefix(&root_c)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Refuse files above `max_model_bytes` from their size alone, before reading (4225).
pub fn check_size(path: &Path, max: u64) -> Result<u64> {
    let len = std::fs::metadata(path)
        .map_err(|e| {
            WorkerError::model_load(format!("cannot stat model file {} ({e})", path.display()))
        })?
        .len();
    if len > max {
        return Err(WorkerError::model_load(format!(
            "the model file is {len} bytes, above the limit of {max} bytes (max_model_bytes); \
             raise max_model_bytes or use a smaller model"
        )));
    }
    Ok(len)
}

/// Bytes the `backend` engine will hold for `mc` with a context of `ctx`
/// tokens (clamped, as both engines clamp it, to the trained context) and
/// a KV pool of `kv_tokens` positions (at least the context; 0 means the
/// context), for `seqs` sequences at once.
pub fn memory_estimate(
    backend: BackendKind,
    weights: u64,
    mc: &ModelConfig,
    ctx: usize,
    kv_tokens: usize,
    seqs: usize,
) -> MemoryReport {
    let ctx = ctx.min(mc.context_length);
    if backend == BackendKind::Cuda {
        // The CUDA engine's own allocation list: weights, KV cache, every
        // fixed scratch buffer and the cuBLAS workspace.
        return crate::engine::cuda::planned_memory(
            mc,
            weights as usize,
            ctx.max(1),
            kv_tokens,
            seqs,
        );
    }
    // The CPU engine's KV pool: whole pages, at least the context.
    let pool =
        crate::engine::kv::pool_tokens(kv_tokens.max(ctx), crate::engine::cpu::PAGE_TOKENS) as u64;
    let ctx = ctx as u64;
    let kv_dim = (mc.n_kv_heads * mc.head_dim) as u64;
    let q_dim = (mc.n_heads * mc.head_dim) as u64;
    // f32 keys and values per layer.
    let kv = 2 * mc.n_layers as u64 * pool * kv_dim * 4;
    // Logits plus the activations of a whole-context prefill.
    let per_tok = 2 * mc.d_model as u64 + 2 * mc.ffn_dim as u64 + q_dim + 2 * kv_dim;
    let scratch = 4 * (mc.vocab_size as u64 + ctx * per_tok);
    MemoryReport {
        weights_bytes: weights,
        kv_cache_bytes: kv,
        scratch_bytes: scratch,
    }
}

pub use crate::engine::cpu::host_available_bytes;

/// Free memory where the model would live, for the configured backend.
pub(crate) fn available_bytes(cfg: &Config) -> Result<u64> {
    match cfg.backend {
        BackendKind::Cpu => host_available_bytes(),
        BackendKind::Cuda => Ok(crate::gpu::probe(cfg.gpu_device)?.free_bytes),
    }
}

/// Free memory as Plan sees it: the device's (or host's), unless a test
/// build was told otherwise (`available_bytes` fault).
fn plan_available_bytes(app: &AppState) -> Result<u64> {
    #[cfg(feature = "test-hooks")]
    if let Some(bytes) = *app
        .available_override
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Ok(bytes);
    }
    available_bytes(&app.cfg)
}

/// `<worker_id>-shard-0`, restricted to the identifier charset.
pub fn default_shard_id(worker_id: &str) -> String {
    let clean: String = worker_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        .take(100)
        .collect();
    if clean.is_empty() {
        "shard-0".into()
    } else {
        format!("{clean}-shard-0")
    }
}

#[derive(Debug, Serialize)]
pub struct ShardPlan {
    pub shard_index: u32,
    pub gpu_device: u32,
    pub vram_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct PlanResponse {
    pub feasible: bool,
    pub vram_required: u64,
    pub vram_available: u64,
    pub shard_plan: Vec<ShardPlan>,
    pub reason: Option<String>,
    pub mcd: serde_json::Value,
    /// What this worker can take now: slots, queue and free KV positions
    /// of the model it serves (issue 11 point 4).
    pub capacity: crate::daemon::scheduler::Capacity,
}

/// Plan (4210–4214, 4620–4623): can this worker hold `model_ref`?
pub fn plan(app: &AppState, req: &PlanRequest) -> Result<PlanResponse> {
    let cfg = &app.cfg;
    let path = resolve_model_path(&cfg.model_root, &req.model_ref)?;
    let file_len = check_size(&path, cfg.max_model_bytes)?;
    let mut avail = plan_available_bytes(app)?;
    // The loaded model's own memory counts as available for itself.
    if let Some(m) = app.model.get().filter(|m| m.path == path) {
        avail = avail.saturating_add(m.memory.total());
    }
    if file_len > avail {
        // Decided from the file size alone: a file that cannot fit is not even read.
        return Ok(PlanResponse {
            feasible: false,
            vram_required: file_len,
            vram_available: avail,
            shard_plan: vec![ShardPlan {
                shard_index: 0,
                gpu_device: cfg.gpu_device,
                vram_bytes: file_len,
            }],
            reason: Some(memory_reason(cfg, file_len, avail, "the model file alone")),
            mcd: serde_json::Value::Null,
            capacity: app.scheduler.capacity(),
        });
    }
    let scanned = app.scans.scan(&path, &cfg.gguf_limits, &app.metrics)?;
    let (g, mc) = (&scanned.header, &scanned.config);
    let mcd = capability::mcd(g, &path)?;
    let ecp = capability::ecp(cfg)?;
    let need = memory_estimate(
        cfg.backend,
        g.data_len(),
        mc,
        cfg.max_context,
        cfg.kv_cache_tokens,
        cfg.slots_total as usize,
    )
    .total();
    let mut reason = None;
    if req.shard_layout == ShardLayout::TensorParallel && req.tp_degree.unwrap_or(1) > 1 {
        reason = Some(
            "tensor-parallel sharding is not supported by this worker (single GPU, M0); use shard_layout \"single\""
                .to_string(),
        );
    } else if let Err(e) = capability::check(&mcd, &ecp) {
        reason = Some(e.message().to_string());
    } else if need > avail {
        let what = format!(
            "weights, KV cache for {} tokens and scratch",
            cfg.max_context.min(mc.context_length)
        );
        reason = Some(memory_reason(cfg, need, avail, &what));
    }
    Ok(PlanResponse {
        feasible: reason.is_none(),
        vram_required: need,
        vram_available: avail,
        shard_plan: vec![ShardPlan {
            shard_index: 0,
            gpu_device: cfg.gpu_device,
            vram_bytes: need,
        }],
        reason,
        mcd: serde_json::to_value(&mcd).unwrap_or_default(),
        capacity: app.scheduler.capacity(),
    })
}

/// "needed N bytes ... available M bytes", naming VRAM (or host memory standing in for it).
pub(crate) fn memory_reason(cfg: &Config, need: u64, avail: u64, what: &str) -> String {
    let mem = match cfg.backend {
        BackendKind::Cpu => "host memory (standing in for VRAM on the cpu backend)",
        BackendKind::Cuda => "free VRAM",
    };
    format!(
        "not enough memory: needed {need} bytes ({what}) but only {avail} bytes of {mem} are available; \
         use a smaller model or a lower max_context"
    )
}

/// The memory error of the configured backend (VRAM_OOM and HOST_OOM differ, 4952).
pub(crate) fn oom(cfg: &Config, message: String) -> WorkerError {
    match cfg.backend {
        BackendKind::Cpu => WorkerError::HostOom { message },
        BackendKind::Cuda => WorkerError::VramOom { message },
    }
}

#[cfg(test)]
#[path = "models_tests.rs"]
mod tests;
