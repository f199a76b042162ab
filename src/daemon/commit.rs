//! Commit: the one code path from model bytes to a sealed shard, at start-up
//! and by `POST /worker/commit` (WORKER-4022, 4031, 4113, 4220–4227, 4232,
//! 4313, 4981).
//!
//! The spec asks for a required `model_path` (4981) and for a Commit that
//! loads and seals (4220). They meet here: loading `model_path` at start-up is
//! the worker's first commit, and every commit takes the same steps and
//! reports them with the same structured events (`event` = `commit_started`,
//! `digest_verified`, `sealed`; `commit_source` = `startup`, `path` or
//! `upload`):
//!
//! 1. identify the bytes by their SHA-256: the file is read (bounded by
//!    `max_model_bytes`), or an upload was hashed as it streamed in;
//! 2. compare it with `expected_digest` (4223), then check the signature (4222, 4313);
//! 3. make the bytes resident: at start-up, parse them and load them into
//!    device memory. One model per process (4022): later commits find the
//!    same SHA-256 already resident and load nothing again (a byte-identical
//!    copy or hard link is the same model); other bytes get MODEL_CONFLICT;
//! 4. verify that the resident digest equals the digest of the file's tensor
//!    data (4113), and only then
//! 5. seal under the shard id (4110, 4226). A commit that names the id the
//!    model is sealed under gets that handle unchanged. A new id gets a fresh
//!    seal (new `sealed_at`) after steps 4 and 5 run again on the resident
//!    bytes, and the old id is retired: Execute naming it is refused with
//!    HANDLE_SUPERSEDED, naming the new id.
//!
//! The worker turns Ready only after the start-up commit (4031, 4227).

use crate::api::CommitRequest;
use crate::config::Config;
use crate::daemon::app::{AppState, LoadedModel};
use crate::daemon::capability;
use crate::daemon::models::{self, check_size, default_shard_id, model_ref_of, resolve_model_path};
use crate::engine::{BackendKind, Engine, LoadOptions};
use crate::error::{Result, WorkerError};
use crate::model::arch;
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::Tokenizer;
use crate::mutants::{self, Mutant};
use crate::shard::digest;
use crate::shard::handle::{ModelShardHandle, ShardSpec};
use crate::shard::seal::SealKey;
use crate::shard::signature::{self, ModelSigning};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Where a commit came from: the `commit_source` field of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The load of `model_path` at start-up.
    Startup,
    /// `POST /worker/commit` naming a file under `model_root`.
    Path,
    /// `POST /worker/commit` with the model file as the body.
    Upload,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Path => "path",
            Self::Upload => "upload",
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            Self::Startup => "the start-up commit of model_path",
            Self::Path => "a commit by path",
            Self::Upload => "a commit by upload",
        }
    }
}

/// The `commit_started` event: which model, under which shard id, from where.
fn announce(source: Source, model_ref: &str, shard_id: &str) {
    crate::narrate!(
        human = format!(
            "Committing model {model_ref} as shard {shard_id} ({}): its bytes are read and verified before \
             anything is sealed.",
            source.phrase()
        ),
        event = "commit_started",
        commit_source = source.as_str(),
        model_ref = %model_ref,
        shard_id = %shard_id
    );
}

/// Steps 4 and 5 of every commit: `resident` is sealed only once it is shown
/// to equal `expected`, the digest of the file's tensor data (4113, 4031).
/// The `digest_verified` event is written only when that check ran and passed.
fn verify_and_seal(
    spec: ShardSpec,
    expected: &[u8; 32],
    resident: &[u8; 32],
    key: &SealKey,
    source: Source,
) -> Result<ModelShardHandle> {
    // The planted bug `no_verify_before_seal` skips exactly this check.
    if !mutants::active(Mutant::NoVerifyBeforeSeal) {
        if resident != expected {
            return Err(WorkerError::SealVerificationFailed {
                message: format!(
                    "the bytes resident for shard {} differ from the tensor data of model {} (file {}, resident {}); \
                     they were corrupted in memory and are not sealed. Restart the worker; if it repeats, check \
                     the host or GPU memory",
                    spec.shard_id,
                    spec.model_ref,
                    hex::encode(expected),
                    hex::encode(resident)
                ),
            });
        }
        crate::narrate!(
            human = format!(
                "Verified the resident bytes of {}: their digest equals the digest of the file's tensor data, \
                 so they may be sealed.",
                spec.model_ref
            ),
            event = "digest_verified",
            commit_source = source.as_str(),
            shard_id = %spec.shard_id,
            model_ref = %spec.model_ref,
            expected_digest = %hex::encode(expected),
            resident_digest = %hex::encode(resident)
        );
    }
    let handle = ModelShardHandle::seal(spec, resident, key);
    crate::narrate!(
        human = format!(
            "Sealed {} as shard {} at {}; jobs may name this shard from now on.",
            handle.model_ref, handle.shard_id, handle.sealed_at
        ),
        event = "sealed",
        commit_source = source.as_str(),
        shard_id = %handle.shard_id,
        model_ref = %handle.model_ref,
        digest = %handle.digest,
        sealed_at = %handle.sealed_at
    );
    Ok(handle)
}

/// The start-up commit of `model_path` (4981): read, verify the signature,
/// load into device memory, verify the resident bytes, seal.
pub fn load(
    cfg: &Config,
    key: &SealKey,
    signing: &ModelSigning,
) -> Result<(LoadedModel, Box<dyn Engine>)> {
    let t0 = Instant::now();
    let raw = cfg.model_path.to_string_lossy().into_owned();
    let path = resolve_model_path(&cfg.model_root, &raw)?;
    let model_ref = model_ref_of(&cfg.model_root, &path);
    let shard_id = default_shard_id(&cfg.worker_id);
    announce(Source::Startup, &model_ref, &shard_id);
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
    // The GPU opens while the file is read (gpu::opening).
    let opening =
        (cfg.backend == BackendKind::Cuda).then(|| crate::gpu::GpuOpening::start(cfg.gpu_device));
    // Step 1.
    let g = GgufFile::open(&path, &cfg.gguf_limits)?;
    crate::narrate!(
        human = format!(
            "Read model file {model_ref} ({}); its SHA-256 is {}.",
            crate::telemetry::human_bytes(g.file_len),
            hex::encode(g.file_sha256)
        ),
        event = "model_read", model_ref = %model_ref, file_sha256 = %hex::encode(g.file_sha256)
    );
    // Step 2 (no expected_digest at start-up): before the model is interpreted further.
    signing.verify_startup(&g.file_sha256, &model_ref)?;
    if signing.key.is_some() {
        crate::narrate!(
            human = format!(
                "The signature of {model_ref} verifies against the trusted model-signing key; loading it."
            ),
            model_ref = %model_ref
        );
    }
    // Step 3.
    let (mc, w) = arch::from_gguf(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let mcd = capability::mcd(&g, &path)?;
    let ecp = capability::ecp(cfg)?;
    capability::check(&mcd, &ecp)?;
    let opts = LoadOptions {
        max_context: cfg.max_context,
        kv_pool_tokens: cfg.kv_cache_tokens,
        max_sequences: cfg.slots_total as usize,
        gpu_device: cfg.gpu_device,
        threads: 0,
    };
    let mut engine = crate::engine::load_engine(cfg.backend, &g, &mc, &w, &opts, opening)?;
    #[cfg(feature = "test-hooks")]
    inject_startup_fault(engine.as_mut())?;
    // Steps 4 and 5.
    let expected = digest::resident_digest(g.data_section());
    // Timed because every job repeats this digest before it starts (predicted_start_ms).
    let t_seal = Instant::now();
    let resident = engine.resident_digest()?;
    let seal_check_ms = crate::telemetry::whole_ms_up(t_seal.elapsed());
    let memory = engine.memory();
    let spec = ShardSpec {
        shard_id,
        gpu_device: cfg.gpu_device,
        vram_bytes: memory.total(),
        model_ref: model_ref.clone(),
        backend: cfg.backend,
    };
    let handle = verify_and_seal(spec, &expected, &resident, key, Source::Startup)?;
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
    let numerics_version = engine.numerics().version();
    let (file_sha256, file_len, identity) = (g.file_sha256, g.file_len, g.identity());
    let scan = identity.map(|id| (id, Arc::new(g.into_header())));
    let model = LoadedModel {
        path,
        model_ref,
        file_sha256,
        file_len,
        tokenizer: Arc::new(tokenizer),
        mcd: serde_json::to_value(&mcd).unwrap_or_default(),
        ecp: serde_json::to_value(&ecp).unwrap_or_default(),
        memory,
        max_context,
        numerics_version,
        data_digest: expected,
        handle: RwLock::new(handle),
        retired: Default::default(),
        commit_lock: Default::default(),
        seal_check_ms: seal_check_ms.into(),
        scan,
    };
    Ok((model, engine))
}

/// Test builds: corrupt the freshly loaded bytes as `WORKER_ORCD_STARTUP_FAULT`
/// asks, so that a scenario can show the start-up commit refuses to seal them.
#[cfg(feature = "test-hooks")]
fn inject_startup_fault(engine: &mut dyn Engine) -> Result<()> {
    let Some(spec) = crate::env::WORKER_ORCD_STARTUP_FAULT.get() else {
        return Ok(());
    };
    let offset = spec
        .strip_prefix("flip_resident_byte:")
        .and_then(|o| o.parse::<u64>().ok())
        .ok_or_else(|| WorkerError::InvalidConfig {
            message: format!(
                "WORKER_ORCD_STARTUP_FAULT={spec:?} is not flip_resident_byte:<offset>"
            ),
        })?;
    tracing::warn!(
        offset,
        human = %format!(
            "Test build: flipping resident byte {offset} after the start-up load, as WORKER_ORCD_STARTUP_FAULT asks."
        ),
        "startup fault injected"
    );
    engine.inject_fault(crate::engine::Fault::FlipResidentByte { offset })
}

/// Commit by path (4220–4227): the file named by `path`, else `model_ref`,
/// under `model_root`, judged by the SHA-256 of its bytes.
pub fn commit(app: &AppState, req: &CommitRequest) -> Result<ModelShardHandle> {
    let cfg = &app.cfg;
    let target = req.path.as_deref().unwrap_or(&req.model_ref);
    let path = resolve_model_path(&cfg.model_root, target)?;
    announce(Source::Path, target, &req.shard_id);
    let len = check_size(&path, cfg.max_model_bytes)?;
    let sha = signature::file_sha256(&path, cfg.max_model_bytes)?;
    if let Some(expected) = req.expected_digest.filter(|e| *e != sha) {
        return Err(WorkerError::model_load(format!(
            "expected_digest {} does not match the SHA-256 of {target:?} ({}); the file is not the one you \
             expect. Nothing was changed",
            hex::encode(expected),
            hex::encode(sha)
        )));
    }
    admit(app, req, Source::Path, target, &sha, len)
}

/// Commit by upload (4220–4226): the HTTP layer has streamed the body,
/// bounded by `max_model_bytes`, into its SHA-256 (`digest`, `len` bytes);
/// nothing was written. The digest must equal `expected_digest`.
pub fn commit_upload(
    app: &AppState,
    req: &CommitRequest,
    digest: &[u8; 32],
    len: u64,
) -> Result<ModelShardHandle> {
    announce(Source::Upload, &req.model_ref, &req.shard_id);
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
    admit(app, req, Source::Upload, &req.model_ref, digest, len)
}

/// Steps 2 to 5 of a commit whose bytes (`what`, SHA-256 `sha`, `len` bytes)
/// matched their expected digest.
fn admit(
    app: &AppState,
    req: &CommitRequest,
    source: Source,
    what: &str,
    sha: &[u8; 32],
    len: u64,
) -> Result<ModelShardHandle> {
    // 4313: after the bytes are known intact, before the conflict check, so a
    // refusal names the right cause.
    app.signing
        .verify_commit(req.signature.as_deref(), what, || Ok(*sha))?;
    let model = app.model.get().ok_or_else(|| app.unavailable())?;
    if model.file_sha256 != *sha || model.file_len != len {
        return Err(conflict(app, model, what, sha, len));
    }
    let _one_commit_at_a_time = model.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let current = model.handle();
    if !current.sealed {
        return Err(WorkerError::SealVerificationFailed {
            message: "the shard's seal check failed; this worker no longer serves. Restart it."
                .into(),
        });
    }
    if current.shard_id == req.shard_id {
        crate::narrate!(
            human = format!(
                "{what} is the model already resident and sealed as shard {} (the same SHA-256); returning its \
                 handle unchanged.",
                current.shard_id
            ),
            event = "already_sealed",
            commit_source = source.as_str(),
            shard_id = %current.shard_id,
            model_ref = %what
        );
        return Ok(current);
    }
    reseal(app, model, &req.shard_id, source)
}

/// The answer to a commit of other bytes than the resident model's: the
/// memory error when they could not fit anyway (4103), else MODEL_CONFLICT.
fn conflict(
    app: &AppState,
    model: &LoadedModel,
    what: &str,
    sha: &[u8; 32],
    len: u64,
) -> WorkerError {
    let cfg = &app.cfg;
    match models::available_bytes(cfg) {
        Err(e) => return e,
        Ok(avail) if len > avail => {
            return models::oom(
                cfg,
                models::memory_reason(cfg, len, avail, "the model file alone"),
            )
        }
        Ok(_) => {}
    }
    WorkerError::ModelConflict {
        message: format!(
            "this worker already holds model {} (SHA-256 {}); {what:?} (SHA-256 {}) is a different model and one \
             worker serves one model. Start another worker for it. Nothing was changed",
            model.model_ref,
            hex::encode(model.file_sha256),
            hex::encode(sha)
        ),
    }
}

/// Seal the resident model under a new shard id. The bytes are the same, so
/// nothing is loaded again and no second copy of the weights exists; the
/// resident digest is recomputed and verified before the new seal, and the
/// old id is retired. A failed verification is fatal, as before a job (4122).
fn reseal(
    app: &AppState,
    model: &LoadedModel,
    shard_id: &str,
    source: Source,
) -> Result<ModelShardHandle> {
    let old = model.handle();
    if !app.lifecycle().is_serving() {
        return Err(app.unavailable());
    }
    if app.scheduler.is_busy() {
        return Err(WorkerError::Busy {
            message: format!(
                "a job is running on shard {}; re-sealing the model as shard {shard_id:?} waits until the worker \
                 is idle. Retry after the job ends",
                old.shard_id
            ),
            retry_after_ms: 1000,
        });
    }
    let engine = app.engine.get().ok_or_else(|| app.unavailable())?;
    let resident = engine.resident_digest_blocking()?;
    let spec = ShardSpec {
        shard_id: shard_id.to_string(),
        gpu_device: old.gpu_device,
        vram_bytes: old.vram_bytes,
        model_ref: old.model_ref.clone(),
        backend: old.backend,
    };
    let new = match verify_and_seal(spec, &model.data_digest, &resident, &app.seal_key, source) {
        Ok(h) => h,
        Err(e) => {
            if e.is_fatal() {
                // The resident bytes are not the model any more: stop serving them.
                model.mark_unsealed();
                let _ = app.fatal.send(e.clone());
            }
            return Err(e);
        }
    };
    model.reseal(new.clone());
    crate::narrate!(
        human = format!(
            "Shard {} is retired: the same model is now sealed as shard {}. Jobs that name {} are refused \
             with HANDLE_SUPERSEDED, which names {}.",
            old.shard_id, new.shard_id, old.shard_id, new.shard_id
        ),
        event = "shard_retired",
        retired_shard_id = %old.shard_id,
        shard_id = %new.shard_id
    );
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `commit_started` narration says in words where the commit came
    /// from, beside the machine-readable `commit_source` (WORKER-4803).
    #[test]
    fn commit_started_names_its_source_in_words() {
        use crate::telemetry::logging::test_capture::capture;
        for (source, words) in [
            (Source::Startup, "the start-up commit of model_path"),
            (Source::Path, "a commit by path"),
            (Source::Upload, "a commit by upload"),
        ] {
            let lines = capture("info", || announce(source, "m.gguf", "s1"));
            assert_eq!(lines.len(), 1, "{lines:?}");
            let l = &lines[0];
            assert_eq!(l["event"], "commit_started");
            assert_eq!(l["commit_source"], source.as_str());
            let human = l["human"].as_str().unwrap_or_default();
            assert!(
                human.contains(words) && human.contains("m.gguf") && human.contains("s1"),
                "{human}"
            );
        }
    }
}
