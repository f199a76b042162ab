//! Start-up configuration: one JSON file, the environment, and one flag per
//! key, merged as file < environment < flags, then validated so that every
//! bad value stops the worker before it touches a model or a GPU
//! (WORKER-4980–4983, 4990, 4991).
//!
//! Each value remembers where it came from, so an error at 3 a.m. reads
//! "`rpc_port` = \"80\" (from flag --rpc-port): ..." and says what is accepted.
//! Environment variables are read only through [`crate::env`].
//!
//! Required keys (WORKER-4981): worker_id, pool_id, model_path, rpc_port,
//! readiness_callback_url, gpu_device. The environment of WORKER-4990 counts
//! as giving them: `WORKER_GPU_DEVICE` gives `gpu_device`, and
//! `WORKER_BIND_ADDR` (or `bind_addr`) gives the port, so `rpc_port` may then
//! be left out. Nothing else falls back to a default port or device: a worker
//! started without them would silently take 8001 or GPU 0.
//!
//! Credentials (token file) live in [`credentials`], privilege checks in
//! [`privileges`]; both report failures as [`ConfigError`] (exit code 2).

pub mod credentials;
mod keys;
pub mod privileges;
#[cfg(test)]
mod security_tests;
mod table;
#[cfg(test)]
mod tests;

pub use credentials::{Credentials, Identity};
pub use privileges::{check_not_root, drop_capabilities, CapabilityReport};
pub use table::{KeyDef, KeyFlags, Rule, KEYS};

use crate::backend::BackendKind;
use crate::env;
use crate::model::gguf::GgufLimits;
use keys::{Layer, Source};
use std::net::SocketAddr;
use std::path::PathBuf;

// The daemon's command-line flags. Every config-file key has a flag of the
// same name with `-` for `_`; a flag beats the environment, which beats the
// file. Numbers are taken as text and checked by `Config::resolve` so the
// error names the field and its accepted range.
//
// The per-key flags live in a boxed `KeyFlags` (reachable through `Deref`,
// e.g. `args.worker_id`) so that this struct stays small inside the CLI's
// subcommand enum. Plain comments, not doc comments: clap would print a doc
// comment of a flattened struct as the program's description in `--help`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// JSON configuration file: one object whose keys are the flag names below
    /// with `_` for `-` (gguf limits nest under "gguf_limits"). Unknown keys are refused.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: Box<KeyFlags>,
}

impl std::ops::Deref for ServeArgs {
    type Target = KeyFlags;
    fn deref(&self) -> &KeyFlags {
        &self.keys
    }
}

impl std::ops::DerefMut for ServeArgs {
    fn deref_mut(&mut self) -> &mut KeyFlags {
        &mut self.keys
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub worker_id: String,
    pub pool_id: String,
    /// As configured; relative paths already joined onto `model_root`. The
    /// daemon canonicalizes and checks it lies under the root (4320–4323).
    pub model_path: PathBuf,
    pub model_root: PathBuf,
    pub bind_addr: SocketAddr,
    pub readiness_callback_url: String,
    pub gpu_device: u32,
    /// Only recorded here; the daemon probes the GPU and fails fast when
    /// `cuda` is chosen and no device is usable.
    pub backend: BackendKind,
    /// Jobs running at once (issue 11 point 4; WORKER-4982).
    pub slots_total: u32,
    /// Jobs waiting for a slot before a 429 (WORKER-4420).
    pub max_queued_jobs: u32,
    /// Longest wait of a job for admission companions (one seal check each).
    pub admission_window_ms: u64,
    /// Positions of the KV pool; 0 means max_context (issue 11 point 3).
    pub kv_cache_tokens: usize,
    /// Connection hygiene (issue 13 point 1; `http::server`).
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub max_connections: usize,
    pub max_requests_per_connection: u64,
    pub max_tokens: u32,
    /// In characters (Unicode scalar values), checked before tokenization
    /// (WORKER-4242). Prompt tokens are bounded by `max_context` (4423).
    pub max_prompt_len: usize,
    pub max_context: usize,
    pub execution_timeout_ms: u64,
    /// The watchdog's bound on one engine step (issue 12, "Bad input and
    /// failure"): past it the engine counts as hung (`daemon::watchdog`).
    pub step_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub max_model_bytes: u64,
    pub api_token_file: PathBuf,
    /// Trusted Ed25519 key for model signatures (WORKER-4222, 4313); read
    /// and checked at start-up by `shard::signature::ModelSigning::load`.
    /// When set, every model must carry a signature that verifies.
    pub model_signing_pubkey_file: Option<PathBuf>,
    /// The signature of `model_path`; present exactly when the key is.
    pub model_signature_file: Option<PathBuf>,
    /// The HMAC seal key (WORKER-4120), read by `shard::seal::SealKey::from_file`;
    /// `None`: a random key per process.
    pub seal_key_file: Option<PathBuf>,
    pub allow_root: bool,
    pub log_level: String,
    pub ready_requires_auth: bool,
    pub gguf_limits: GgufLimits,
    /// Where the restart circuit breaker keeps its state (WORKER-4963).
    pub state_dir: PathBuf,
    /// False when `state_dir` is the built-in default: then an unusable
    /// directory turns the breaker off with a warning instead of stopping
    /// the worker (a configured one that is unusable is a config error).
    pub state_dir_configured: bool,
}

/// A configuration, credential or privilege problem found at start-up. The
/// worker exits with code 2 ([`ConfigError::EXIT_CODE`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    /// The config key (or "api_token_file", "allow_root", ...) at fault.
    pub field: String,
    /// What is wrong, what is accepted, and what to do.
    pub message: String,
}

impl ConfigError {
    /// Process exit status for configuration, credential and privilege errors.
    pub const EXIT_CODE: u8 = 2;

    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A configuration error is the worker's INVALID_CONFIG (exit code 2). The
/// conversion lives here, above the error type, so `error` imports nothing
/// of the configuration.
impl From<ConfigError> for crate::error::WorkerError {
    fn from(e: ConfigError) -> Self {
        Self::InvalidConfig {
            message: e.to_string(),
        }
    }
}

/// Default model directory (WORKER-4322).
pub const DEFAULT_MODEL_ROOT: &str = "/var/lib/llorch/models";
/// File name of the token inside `$CREDENTIALS_DIRECTORY` (systemd LoadCredential=worker-token).
pub const CREDENTIAL_NAME: &str = "worker-token";
/// Default `max_prompt_len`, in characters (WORKER-4242).
pub const DEFAULT_MAX_PROMPT_LEN: u64 = 100_000;
/// Default `max_tokens` limit of a request (WORKER-4243).
pub const DEFAULT_MAX_TOKENS_LIMIT: u32 = 4096;
/// Largest accepted `max_prompt_len`: the largest request body, 64 MiB.
pub const MAX_PROMPT_LEN_LIMIT: u64 = 64 << 20;
/// Default `state_dir` when neither it nor systemd's `$STATE_DIRECTORY` is set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/worker-orcd";
/// Running jobs by default: enough to batch decode rows, few enough that a
/// CPU worker still answers each stream promptly (issue 11 point 4).
pub const DEFAULT_SLOTS: u64 = 8;
pub const MAX_SLOTS: u64 = 256;
/// Waiting jobs by default, and at most; each holds only its prompt's ids.
pub const DEFAULT_QUEUED: u64 = 64;
pub const MAX_QUEUED: u64 = 4096;
/// Accepted log levels.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

impl Config {
    /// Read `--config`, the environment and the flags; validate everything.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        Self::resolve_with(args, &env::process_lookup)
    }

    /// As [`Config::resolve`], with the environment given by `lookup` (tests).
    pub fn resolve_with(args: &ServeArgs, lookup: env::Lookup<'_>) -> Result<Config, ConfigError> {
        let mut merged = Layer::default();
        if let Some(path) = &args.config {
            merged.overlay(keys::file_layer(path)?);
        }
        merged.overlay(keys::env_layer(lookup)?);
        merged.overlay(keys::flag_layer(&args.keys));
        build(&merged, lookup)
    }

    /// Configuration from JSON text alone (no environment, no flags): for
    /// tests and tools that assemble a worker in-process.
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        let layer = keys::json_layer(text, &Source::File(PathBuf::from("<inline json>")))?;
        build(&layer, &|_| None)
    }

    /// One plain-English sentence for the start-up narration.
    pub fn describe(&self) -> String {
        format!(
            "Worker {} of pool {} will serve {} on the {} backend (GPU {}) at {}; context {} tokens, \
             up to {} output tokens, one job at a time, {} s execution timeout.",
            self.worker_id,
            self.pool_id,
            self.model_path.display(),
            self.backend.as_str(),
            self.gpu_device,
            self.bind_addr,
            self.max_context,
            self.max_tokens,
            self.execution_timeout_ms as f64 / 1000.0,
        )
    }
}

/// The CUDA engine's numerics switches (`WORKER_ORCD_PREFILL_GEMM`,
/// `WORKER_ORCD_TENSOR_DECODE`) accept only their documented values, read by
/// the engine's own parsers so the two checks cannot drift apart.
fn check_engine_env(lookup: env::Lookup<'_>) -> Result<(), ConfigError> {
    use crate::engine::cuda::tensor_routes::{PrefillGemm, TensorRoutes};
    let read = |var: env::EnvVar| {
        var.read_with(lookup)
            .map_err(|e| ConfigError::new(var.name, e))
    };
    let refuse = |var: env::EnvVar| {
        move |e: crate::error::WorkerError| ConfigError::new(var.name, e.to_string())
    };
    PrefillGemm::parse(read(env::PREFILL_GEMM)?.as_deref()).map_err(refuse(env::PREFILL_GEMM))?;
    TensorRoutes::parse(read(env::TENSOR_DECODE)?.as_deref())
        .map_err(refuse(env::TENSOR_DECODE))?;
    Ok(())
}

fn build(m: &Layer, lookup: env::Lookup<'_>) -> Result<Config, ConfigError> {
    let worker_id = keys::id(m, "worker_id")?;
    let pool_id = keys::id(m, "pool_id")?;
    let model_root = PathBuf::from(m.text_or("model_root", DEFAULT_MODEL_ROOT)?);
    let model_path = {
        let p = PathBuf::from(m.required_text("model_path")?);
        if p.is_absolute() {
            p
        } else {
            model_root.join(p)
        }
    };

    let mut bind_addr = keys::bind_addr(m)?;
    if m.has("rpc_port") {
        bind_addr.set_port(keys::port(m, "rpc_port")?);
    } else if !m.has("bind_addr") {
        // 4981 with 4990: an explicit address names the port; nothing else does.
        return Err(ConfigError::new("rpc_port", keys::missing("rpc_port")));
    }

    let readiness_callback_url = keys::callback_url(m, "readiness_callback_url")?;
    if !m.has("gpu_device") {
        return Err(ConfigError::new("gpu_device", keys::missing("gpu_device")));
    }
    let gpu_device = keys::uint(m, "gpu_device")? as u32;
    let backend = match m.text_or("backend", "cuda")?.as_str() {
        "cuda" => BackendKind::Cuda,
        "cpu" => BackendKind::Cpu,
        other => {
            return Err(m.err(
                "backend",
                &format!(
                    "\"{other}\" is not a backend; use \"cuda\" (GPU) or \"cpu\" (reference path)"
                ),
            ))
        }
    };
    let slots_total = keys::uint(m, "slots_total")? as u32;
    let max_queued_jobs = keys::uint(m, "max_queued_jobs")? as u32;
    let admission_window_ms = keys::uint(m, "admission_window_ms")?;
    let kv_cache_tokens = keys::uint(m, "kv_cache_tokens")? as usize;
    let header_read_timeout_ms = keys::uint(m, "header_read_timeout_ms")?;
    let body_read_timeout_ms = keys::uint(m, "body_read_timeout_ms")?;
    let max_connections = keys::uint(m, "max_connections")? as usize;
    let max_requests_per_connection = keys::uint(m, "max_requests_per_connection")?;
    if kv_cache_tokens != 0 && kv_cache_tokens < 16 {
        return Err(m.err(
            "kv_cache_tokens",
            "is below one page of 16 positions; use 0 (max_context) or at least 16",
        ));
    }
    let max_tokens = keys::uint(m, "max_tokens")? as u32;
    let max_context = keys::uint(m, "max_context")? as usize;
    // Characters, as WORKER-4242 words it; the token bound is max_context.
    let max_prompt_len = keys::uint(m, "max_prompt_len")? as usize;
    let execution_timeout_ms = keys::uint(m, "execution_timeout_ms")?;
    let drain_timeout_ms = keys::uint(m, "drain_timeout_ms")?;
    let step_timeout_ms = keys::uint(m, "step_timeout_ms")?;
    let max_body_bytes = keys::uint(m, "max_body_bytes")? as usize;
    let max_model_bytes = keys::uint(m, "max_model_bytes")?;

    let api_token_file = match m.get("api_token_file") {
        Some(_) => PathBuf::from(m.required_text("api_token_file")?),
        None => {
            let creds = env::CREDENTIALS_DIRECTORY
                .read_with(lookup)
                .map_err(|e| ConfigError::new("api_token_file", e))?;
            match creds {
                Some(dir) => PathBuf::from(dir).join(CREDENTIAL_NAME),
                None => PathBuf::from(
                    env::API_TOKEN_FILE
                        .default
                        .unwrap_or("/etc/llorch/worker-token"),
                ),
            }
        }
    };
    let (model_signing_pubkey_file, model_signature_file) = signing_files(m)?;
    let seal_key_file = match m.get("seal_key_file") {
        None => None,
        Some(_) => Some(PathBuf::from(m.required_text("seal_key_file")?)),
    };
    let log_level = m
        .text_or("log_level", env::LOG_LEVEL.default.unwrap_or("info"))?
        .to_ascii_lowercase();
    if !LOG_LEVELS.contains(&log_level.as_str()) {
        return Err(m.err(
            "log_level",
            &format!("accepted values are {}", LOG_LEVELS.join(", ")),
        ));
    }
    let ready_requires_auth = keys::boolean(m, "ready_requires_auth", true)?;
    let (state_dir, state_dir_configured) = state_dir(m, lookup)?;
    let allow_root = keys::boolean(m, "allow_root", false)?;

    // The defaults are the key table's; `gguf_limits_default_is_the_table`
    // checks they equal GgufLimits::default().
    let gguf_limits = GgufLimits {
        max_tensors: keys::uint(m, "gguf_max_tensors")?,
        max_file_bytes: keys::uint_or(m, "gguf_max_file_bytes", max_model_bytes)?,
        max_string_bytes: keys::uint(m, "gguf_max_string_bytes")?,
        max_metadata_pairs: keys::uint(m, "gguf_max_metadata_pairs")?,
        max_array_len: keys::uint(m, "gguf_max_array_len")?,
        max_dims: keys::uint(m, "gguf_max_dims")? as u32,
    };

    // Read by the CUDA engine at load; checked here so that a typo stops the
    // worker at start-up on either backend, naming the variable.
    check_engine_env(lookup)?;

    Ok(Config {
        worker_id,
        pool_id,
        model_path,
        model_root,
        bind_addr,
        readiness_callback_url,
        gpu_device,
        backend,
        slots_total,
        max_queued_jobs,
        admission_window_ms,
        kv_cache_tokens,
        header_read_timeout_ms,
        body_read_timeout_ms,
        max_connections,
        max_requests_per_connection,
        max_tokens,
        max_prompt_len,
        max_context,
        execution_timeout_ms,
        step_timeout_ms,
        drain_timeout_ms,
        max_body_bytes,
        max_model_bytes,
        api_token_file,
        model_signing_pubkey_file,
        model_signature_file,
        seal_key_file,
        allow_root,
        log_level,
        ready_requires_auth,
        gguf_limits,
        state_dir,
        state_dir_configured,
    })
}

/// `state_dir` (flag, `WORKER_STATE_DIR`, file), else systemd's
/// `$STATE_DIRECTORY` (its first entry), else [`DEFAULT_STATE_DIR`].
/// The flag is `true` unless the built-in default was taken.
fn state_dir(m: &Layer, lookup: env::Lookup<'_>) -> Result<(PathBuf, bool), ConfigError> {
    if m.has("state_dir") {
        let p = PathBuf::from(m.required_text("state_dir")?);
        if !p.is_absolute() {
            return Err(m.err(
                "state_dir",
                "must be an absolute path, such as /var/lib/worker-orcd",
            ));
        }
        return Ok((p, true));
    }
    let systemd = env::STATE_DIRECTORY
        .read_with(lookup)
        .map_err(|e| ConfigError::new("state_dir", e))?;
    // systemd joins several StateDirectory= entries with ':'; the first is ours.
    match systemd.as_deref().and_then(|v| v.split(':').next()) {
        Some(first) if PathBuf::from(first).is_absolute() => Ok((PathBuf::from(first), true)),
        Some(other) => Err(ConfigError::new(
            "state_dir",
            format!(
                "{} is {other:?}, not an absolute path; fix the unit's StateDirectory= or set state_dir",
                env::STATE_DIRECTORY.name
            ),
        )),
        None => Ok((PathBuf::from(DEFAULT_STATE_DIR), false)),
    }
}

/// The two signing files go together (WORKER-4222, 4313): a key without a
/// start-up signature would load an unverified model, a signature without a
/// key could not be checked. Their contents are read by the daemon.
fn signing_files(m: &Layer) -> Result<(Option<PathBuf>, Option<PathBuf>), ConfigError> {
    let path = |k: &str| -> Result<Option<PathBuf>, ConfigError> {
        match m.get(k) {
            None => Ok(None),
            Some(_) => Ok(Some(PathBuf::from(m.required_text(k)?))),
        }
    };
    match (
        path("model_signing_pubkey_file")?,
        path("model_signature_file")?,
    ) {
        (Some(_), None) => Err(ConfigError::new(
            "model_signature_file",
            "is required when model_signing_pubkey_file is set: with a trusted key every model must be signed, \
             the one loaded at start-up too. Name the file holding the signature of model_path \
             (see docs/operations.md), or remove model_signing_pubkey_file",
        )),
        (None, Some(_)) => Err(m.err(
            "model_signature_file",
            "is set but model_signing_pubkey_file is not: without a trusted key the signature cannot be \
             verified. Set model_signing_pubkey_file to the signer's public key, or remove model_signature_file",
        )),
        files => Ok(files),
    }
}
