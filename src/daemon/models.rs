//! Model admission: path confinement, the start-up load and seal, Plan and
//! Commit (WORKER-4022, 4031, 4113, 4210–4227, 4313, 4320–4323, 4422).
//!
//! One model per process: the model named by `model_path` is loaded and
//! sealed at start-up; Commit of the same file returns its handle
//! (idempotent, whatever shard_id the request names), Commit of another file
//! is refused with MODEL_CONFLICT; an upload is judged by its bytes the same
//! way (identical to the loaded file: its handle; else MODEL_CONFLICT), after
//! its SHA-256 was checked against `expected_digest`, and is never written to
//! disk. With a trusted model-signing key every model, the start-up one
//! included, must carry an Ed25519 signature of its SHA-256 that verifies
//! before it is loaded or its handle given out (4222, 4313; see
//! `shard::signature`). Every path is confined to `model_root`:
//! first lexically (so nothing outside the root is even looked at), then
//! after canonicalization (so symlinks cannot leave it).

use crate::config::Config;
use crate::daemon::app::{AppState, LoadedModel};
use crate::daemon::capability;
use crate::engine::{BackendKind, Engine, LoadOptions, MemoryReport};
use crate::error::{Result, WorkerError};
use crate::http::validate::{CommitRequest, PlanRequest, ShardLayout};
use crate::model::arch::{self, ModelConfig};
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::Tokenizer;
use crate::shard::digest;
use crate::shard::handle::{ModelShardHandle, ShardSpec};
use crate::shard::seal::SealKey;
use crate::shard::signature::{self, ModelSigning};
use serde::Serialize;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

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

/// Bytes the `backend` engine will hold for `mc` with a KV cache of `ctx`
/// tokens (clamped, as both engines clamp it, to the trained context).
pub fn memory_estimate(
    backend: BackendKind,
    weights: u64,
    mc: &ModelConfig,
    ctx: usize,
) -> MemoryReport {
    let ctx = ctx.min(mc.context_length);
    if backend == BackendKind::Cuda {
        // The CUDA engine's own allocation list: weights, KV cache, every
        // fixed scratch buffer and the cuBLAS workspace.
        return crate::engine::cuda::planned_memory(mc, weights as usize, ctx.max(1));
    }
    let ctx = ctx as u64;
    let kv_dim = (mc.n_kv_heads * mc.head_dim) as u64;
    let q_dim = (mc.n_heads * mc.head_dim) as u64;
    // f32 keys and values per layer.
    let kv = 2 * mc.n_layers as u64 * ctx * kv_dim * 4;
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
fn available_bytes(cfg: &Config) -> Result<u64> {
    match cfg.backend {
        BackendKind::Cpu => host_available_bytes(),
        BackendKind::Cuda => Ok(crate::gpu::probe(cfg.gpu_device)?.free_bytes),
    }
}

/// The start-up load: everything up to a sealed handle (4031, 4113, 4222).
pub fn load(
    cfg: &Config,
    key: &SealKey,
    signing: &ModelSigning,
) -> Result<(LoadedModel, Box<dyn Engine>)> {
    let t0 = Instant::now();
    let raw = cfg.model_path.to_string_lossy().into_owned();
    let path = resolve_model_path(&cfg.model_root, &raw)?;
    let model_ref = model_ref_of(&cfg.model_root, &path);
    check_size(&path, cfg.max_model_bytes)?;
    if cfg.backend == BackendKind::Cuda {
        // Fail fast, before reading gigabytes, when there is no usable GPU.
        crate::gpu::probe(cfg.gpu_device).map_err(|e| {
            WorkerError::cuda(format!(
                "backend \"cuda\" was requested but GPU {} is not usable: {} \
                 (to run on the CPU reference path set backend: \"cpu\")",
                cfg.gpu_device,
                e.message()
            ))
        })?;
    }
    let g = GgufFile::open(&path, &cfg.gguf_limits)?;
    crate::narrate!(
        human = format!(
            "Read model file {model_ref} ({}); its SHA-256 is {}.",
            crate::telemetry::human_bytes(g.file_len),
            hex::encode(g.file_sha256)
        ),
        model_ref = %model_ref, file_sha256 = %hex::encode(g.file_sha256)
    );
    // 4222: before the model is interpreted further, let alone loaded.
    signing.verify_startup(&g.file_sha256, &model_ref)?;
    if signing.key.is_some() {
        crate::narrate!(
            human = format!(
                "The signature of {model_ref} verifies against the trusted model-signing key; loading it."
            ),
            model_ref = %model_ref
        );
    }
    let (mc, w) = arch::from_gguf(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let mcd = capability::mcd(&g, &path)?;
    let ecp = capability::ecp(cfg)?;
    capability::check(&mcd, &ecp)?;
    let opts = LoadOptions {
        max_context: cfg.max_context,
        gpu_device: cfg.gpu_device,
        threads: 0,
    };
    let mut engine = crate::engine::load_engine(cfg.backend, &g, &mc, &w, &opts)?;
    // Verify before sealing (4113): the resident bytes must equal the file's data section.
    let expected = digest::resident_digest(g.data_section());
    // Timed because every job repeats this check before it starts (predicted_start_ms).
    let t_seal = Instant::now();
    let resident = engine.resident_digest()?;
    let seal_check_ms = crate::telemetry::whole_ms_up(t_seal.elapsed());
    let skip_check = crate::mutants::active(crate::mutants::Mutant::NoVerifyBeforeSeal);
    if resident != expected && !skip_check {
        return Err(WorkerError::SealVerificationFailed {
            message: format!(
                "the bytes resident after loading differ from the model file (file {}, resident {}); \
                 the upload was corrupted. Restart the worker; if it repeats, check the host or GPU memory",
                hex::encode(expected),
                hex::encode(resident)
            ),
        });
    }
    let memory = engine.memory();
    let shard_id = default_shard_id(&cfg.worker_id);
    let spec = ShardSpec {
        shard_id,
        gpu_device: cfg.gpu_device,
        vram_bytes: memory.total(),
        model_ref: model_ref.clone(),
        backend: cfg.backend,
    };
    let handle = ModelShardHandle::seal(spec, &resident, key);
    crate::narrate!(
        human = format!(
            "Loaded {model_ref} ({} layers, {} resident in {}) on the {} backend in {} and sealed it as shard {}; \
             the worker can now serve.",
            mc.n_layers,
            crate::telemetry::human_bytes(memory.total()),
            match cfg.backend {
                BackendKind::Cpu => "host memory",
                BackendKind::Cuda => "plain device memory",
            },
            cfg.backend.as_str(),
            crate::telemetry::human_duration(t0.elapsed().as_secs_f64()),
            handle.shard_id
        ),
        model_ref = %model_ref, digest = %handle.digest, shard_id = %handle.shard_id,
        vram_bytes = memory.total(), worker_id = %cfg.worker_id, gpu_device = cfg.gpu_device
    );
    let max_context = engine.max_context();
    let model = LoadedModel {
        path,
        model_ref,
        file_sha256: g.file_sha256,
        file_len: g.file_len,
        tokenizer: Arc::new(tokenizer),
        mcd: serde_json::to_value(&mcd).unwrap_or_default(),
        ecp: serde_json::to_value(&ecp).unwrap_or_default(),
        memory,
        max_context,
        handle: RwLock::new(handle),
        seal_check_ms: seal_check_ms.into(),
    };
    Ok((model, engine))
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
}

/// Plan (4210–4214, 4620–4623): can this worker hold `model_ref`?
pub fn plan(app: &AppState, req: &PlanRequest) -> Result<PlanResponse> {
    let cfg = &app.cfg;
    let path = resolve_model_path(&cfg.model_root, &req.model_ref)?;
    let file_len = check_size(&path, cfg.max_model_bytes)?;
    let mut avail = available_bytes(cfg)?;
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
        });
    }
    let g = GgufFile::open(&path, &cfg.gguf_limits)?;
    let (mc, _) = arch::from_gguf(&g)?;
    let mcd = capability::mcd(&g, &path)?;
    let ecp = capability::ecp(cfg)?;
    let need = memory_estimate(
        cfg.backend,
        g.data_section().len() as u64,
        &mc,
        cfg.max_context,
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
    })
}

/// "needed N bytes ... available M bytes", naming VRAM (or host memory standing in for it).
fn memory_reason(cfg: &Config, need: u64, avail: u64, what: &str) -> String {
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
fn oom(cfg: &Config, message: String) -> WorkerError {
    match cfg.backend {
        BackendKind::Cpu => WorkerError::HostOom { message },
        BackendKind::Cuda => WorkerError::VramOom { message },
    }
}

/// The sealed handle of the loaded model, unless its seal check has failed.
fn sealed_handle(model: &LoadedModel) -> Result<ModelShardHandle> {
    let handle = model.handle();
    if !handle.sealed {
        return Err(WorkerError::SealVerificationFailed {
            message: "the shard's seal check failed; this worker no longer serves. Restart it."
                .into(),
        });
    }
    Ok(handle)
}

/// Commit by upload (4220–4226): the HTTP layer has streamed the body,
/// bounded by `max_model_bytes`, into its SHA-256 (`digest`, `len` bytes);
/// nothing was written. The digest must equal `expected_digest`. One model per
/// process, and a model's identity is its bytes: an upload byte-identical to
/// the loaded model gives its sealed handle (idempotent, like a path commit
/// of the same file); any other upload is refused with MODEL_CONFLICT (or the
/// memory error when it could not fit anyway) and changes nothing.
pub fn commit_upload(
    app: &AppState,
    req: &CommitRequest,
    digest: &[u8; 32],
    len: u64,
) -> Result<ModelShardHandle> {
    let cfg = &app.cfg;
    // Before anything else (4223): a truncated or altered transfer is refused.
    match req.expected_digest {
        Some(expected) if expected == *digest => {}
        Some(expected) => {
            return Err(WorkerError::model_load(format!(
                "the uploaded bytes ({len} bytes) have SHA-256 {}, not the expected_digest {}; the transfer is \
                 incomplete or the file is not the one you meant. Nothing was changed",
                hex::encode(digest),
                hex::encode(expected)
            )))
        }
        None => {
            return Err(WorkerError::invalid(
                "field `expected_digest` is required with an upload",
            ))
        }
    }
    // 4313: after the transfer is known intact, so a refusal names the right cause.
    app.signing
        .verify_commit(req.signature.as_deref(), &req.model_ref, || Ok(*digest))?;
    let model = app.model.get().ok_or_else(|| app.unavailable())?;
    if model.file_sha256 != *digest || model.file_len != len {
        let avail = available_bytes(cfg)?;
        if len > avail {
            return Err(oom(
                cfg,
                memory_reason(cfg, len, avail, "the uploaded model alone"),
            ));
        }
        return Err(WorkerError::ModelConflict {
            message: format!(
                "this worker already holds model {} (SHA-256 {}); the upload (SHA-256 {}) is a different model and \
                 one worker serves one model. Start another worker for it",
                model.model_ref,
                hex::encode(model.file_sha256),
                hex::encode(digest)
            ),
        });
    }
    sealed_handle(model)
}

/// Commit (4220–4227): the loaded model again gives its handle; anything else is refused.
pub fn commit(app: &AppState, req: &CommitRequest) -> Result<ModelShardHandle> {
    let cfg = &app.cfg;
    let target = req.path.as_deref().unwrap_or(&req.model_ref);
    let path = resolve_model_path(&cfg.model_root, target)?;
    let file_len = check_size(&path, cfg.max_model_bytes)?;
    // 4313: before the conflict check, so a bad signature is reported as
    // such. The loaded model's digest is known (and is what the handle
    // stands for); any other file is hashed, bounded by max_model_bytes.
    app.signing
        .verify_commit(req.signature.as_deref(), target, || {
            match app.model.get().filter(|m| m.path == path) {
                Some(m) => Ok(m.file_sha256),
                None => signature::file_sha256(&path, cfg.max_model_bytes),
            }
        })?;
    let model = app.model.get().ok_or_else(|| app.unavailable())?;
    if model.path != path {
        // Before allocating anything (4103): a file that cannot fit says so first.
        let avail = available_bytes(cfg)?;
        if file_len > avail {
            return Err(oom(
                cfg,
                memory_reason(cfg, file_len, avail, "the model file alone"),
            ));
        }
        return Err(WorkerError::ModelConflict {
            message: format!(
                "this worker already holds model {}; one worker serves one model. Start another worker for {target:?}",
                model.model_ref
            ),
        });
    }
    if let Some(expected) = req.expected_digest {
        if expected != model.file_sha256 {
            return Err(WorkerError::model_load(format!(
                "expected_digest {} does not match the SHA-256 of {} ({}); the file is not the one you expect",
                hex::encode(expected),
                model.model_ref,
                hex::encode(model.file_sha256)
            )));
        }
    }
    sealed_handle(model)
}

#[cfg(test)]
#[path = "models_tests.rs"]
mod tests;
