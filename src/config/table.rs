//! The configuration keys, written once (WORKER-4980–4983, 4990, 4991).
//!
//! Each row names a key's JSON name, its flag, the value it takes, its
//! environment variable, whether the worker needs it, its rule (numeric
//! range and default) and its help. [`config_table!`] turns the rows into
//! the key list [`KEYS`] the file and environment layers read, the clap
//! flags [`KeyFlags`] with their help (ranges and defaults printed from
//! the rule), and the flag layer's list of given values; `Config::resolve`
//! checks numbers against the same rule. Adding a key is one row here plus
//! its typed field in `Config`.

use super::{DEFAULT_MAX_PROMPT_LEN, DEFAULT_MAX_TOKENS_LIMIT, DEFAULT_QUEUED, DEFAULT_SLOTS};
use super::{MAX_PROMPT_LEN_LIMIT, MAX_QUEUED, MAX_SLOTS};
use crate::env::{self, EnvVar};

/// What values a key takes, beyond being text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Checked by its own parser in `Config::resolve` (ids, paths, URLs...).
    Text,
    /// A whole number in `lo..=hi`, `default` when absent; `shown` replaces
    /// the default in the help when it is not a plain number.
    Uint {
        lo: u64,
        hi: u64,
        default: u64,
        shown: Option<&'static str>,
    },
    /// A flag without a value (`--allow-root`); `true`/`false` in the file.
    Switch,
}

const fn uint(lo: u64, hi: u64, default: u64) -> Rule {
    Rule::Uint {
        lo,
        hi,
        default,
        shown: None,
    }
}

const fn uint_shown(lo: u64, hi: u64, default: u64, shown: &'static str) -> Rule {
    Rule::Uint {
        lo,
        hi,
        default,
        shown: Some(shown),
    }
}

/// One configuration key: its JSON name, flag, environment variable (if any)
/// and whether the worker refuses to start without it (WORKER-4981). A
/// required key with an environment variable is given when that variable is
/// set (WORKER-4990); `rpc_port` is also given by the port of `bind_addr`
/// (`WORKER_BIND_ADDR`), see `Config::resolve`.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub flag: &'static str,
    pub env: Option<EnvVar>,
    pub required: bool,
    pub rule: Rule,
    /// What it is, without its range and default (printed from `rule`).
    pub help: &'static str,
}

impl KeyDef {
    /// The flag's `--help` text: the help, the range and default of a
    /// number, and the environment variable when there is one.
    pub fn flag_help(&self) -> String {
        let text = match self.rule {
            Rule::Uint {
                lo,
                hi,
                default,
                shown,
            } => {
                let default = shown.map_or_else(|| default.to_string(), str::to_string);
                let (lo, hi) = (number(lo), number(hi));
                if self.required {
                    format!("{} ({lo}..={hi}); required.", self.help)
                } else {
                    format!("{} ({lo}..={hi}, default {default}).", self.help)
                }
            }
            Rule::Text | Rule::Switch => self.help.to_string(),
        };
        match self.env {
            Some(var) => var.flag_help(&text),
            None => text,
        }
    }
}

/// `n` as the help prints it: a power of ten from 10^9 up as `10^k`.
fn number(n: u64) -> String {
    let k = n.checked_ilog10().unwrap_or(0);
    if k >= 9 && 10u64.pow(k) == n {
        format!("10^{k}")
    } else {
        n.to_string()
    }
}

/// The key named `name`.
pub fn def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// `--help` of key `name` (used by the generated clap attributes).
fn help_of(name: &str) -> String {
    def(name).map(KeyDef::flag_help).unwrap_or_default()
}

/// One `switch name: "flag-without-dashes", "help";` row, then rows of
/// `name: "flag-without-dashes", "VALUE", env, required, rule, "help";`.
macro_rules! config_table {
    (
        switch $switch:ident : $switch_flag:literal, $switch_help:literal;
        $( $name:ident : $flag:literal, $value:literal, $env:expr, $required:literal, $rule:expr, $help:literal; )*
    ) => {
        /// Every key, in documentation order (the switch last). `gguf_*` keys nest under
        /// `"gguf_limits"` in the JSON file (`"gguf_limits": {"max_tensors": 10000}`).
        pub const KEYS: &[KeyDef] = &[
            $( KeyDef {
                name: stringify!($name),
                flag: concat!("--", $flag),
                env: $env,
                required: $required,
                rule: $rule,
                help: $help,
            }, )*
            KeyDef {
                name: stringify!($switch),
                flag: concat!("--", $switch_flag),
                env: None,
                required: false,
                rule: Rule::Switch,
                help: $switch_help,
            },
        ];

        // One flag per configuration key (docs/operations.md); a plain
        // comment, not a doc comment: clap would print a doc comment of a
        // flattened struct as the program's description in `--help`.
        #[derive(clap::Args, Clone, Debug, Default)]
        pub struct KeyFlags {
            $(
                #[arg(long = $flag, value_name = $value, help = help_of(stringify!($name)))]
                pub $name: Option<String>,
            )*
            #[arg(long = $switch_flag, help = help_of(stringify!($switch)))]
            pub $switch: bool,
        }

        impl KeyFlags {
            /// (key, value) of every valued flag, given or not.
            pub fn values(&self) -> Vec<(&'static str, Option<&String>)> {
                vec![ $( (stringify!($name), self.$name.as_ref()), )* ]
            }

            /// (key, set) of the switch.
            pub fn switch(&self) -> (&'static str, bool) {
                (stringify!($switch), self.$switch)
            }
        }
    };
}

config_table! {
    switch allow_root: "allow-root",
        "Run even as root. Dangerous: a compromised worker would own the host. Logged as a warning.";
    worker_id: "worker-id", "ID", None, true, Rule::Text,
        "Identifier of this worker, [A-Za-z0-9._-]{1,64}. Required.";
    pool_id: "pool-id", "ID", None, true, Rule::Text,
        "Identifier of the pool this worker belongs to, [A-Za-z0-9._-]{1,64}. Required.";
    model_path: "model-path", "PATH", None, true, Rule::Text,
        "GGUF model loaded at start-up; relative paths are taken under --model-root. Required.";
    model_root: "model-root", "DIR", None, false, Rule::Text,
        "Directory every model must lie under (default /var/lib/llorch/models).";
    rpc_port: "rpc-port", "PORT", None, true, Rule::Text,
        "Port of the RPC server, 1024..=65535; replaces the port of the bind address. \
         Required unless WORKER_BIND_ADDR (or --bind-addr) gives IP:PORT.";
    bind_addr: "bind-addr", "IP:PORT", Some(env::BIND_ADDR), false, Rule::Text,
        "Address the RPC server listens on.";
    readiness_callback_url: "readiness-callback-url", "URL", None, true, Rule::Text,
        "http:// URL the worker POSTs its readiness (and fatal status) to. Required.";
    gpu_device: "gpu-device", "N", Some(env::GPU_DEVICE), true, uint(0, 63, 0),
        "CUDA device index (given here, in the file or by the environment)";
    backend: "backend", "cuda|cpu", None, false, Rule::Text,
        "Compute backend: cuda (default; fails fast without a usable GPU) or cpu (reference path).";
    slots_total: "slots-total", "N", None, false, uint(1, MAX_SLOTS, DEFAULT_SLOTS),
        "Jobs that run at once (continuous batching)";
    max_queued_jobs: "max-queued-jobs", "N", None, false, uint(0, MAX_QUEUED, DEFAULT_QUEUED),
        "Jobs that may wait for a slot; beyond them an execute gets 429 WORKER_BUSY with retry_after_ms";
    admission_window_ms: "admission-window-ms", "MS", None, false, uint(0, 100, 2),
        "How long a waiting job may wait, in ms, so that jobs arriving together share one seal verification";
    kv_cache_tokens: "kv-cache-tokens", "N", None, false, uint_shown(0, 1 << 24, 0, "0, meaning max_context"),
        "Positions of the KV pool shared by the running jobs; 0 or at least 16";
    header_read_timeout_ms: "header-read-timeout-ms", "MS", None, false, uint(100, 600_000, 10_000),
        "A request's headers, and a kept-alive connection's next request, must arrive within this many ms";
    body_read_timeout_ms: "body-read-timeout-ms", "MS", None, false, uint(100, 3_600_000, 30_000),
        "Longest pause within a request body, in ms";
    max_connections: "max-connections", "N", None, false, uint(8, 1 << 20, 512),
        "Open connections at most; at the cap the oldest connection without a request in flight is closed";
    max_requests_per_connection: "max-requests-per-connection", "N", None, false, uint(1, 1_000_000, 10_000),
        "Requests one connection may carry";
    max_tokens: "max-tokens", "N", None, false, uint(1, 1 << 20, DEFAULT_MAX_TOKENS_LIMIT as u64),
        "Largest max_tokens a request may ask for";
    max_prompt_len: "max-prompt-len", "N", None, false, uint(1, MAX_PROMPT_LEN_LIMIT, DEFAULT_MAX_PROMPT_LEN),
        "Longest prompt in characters (Unicode scalar values); its tokens are bounded separately: \
         prompt tokens + 1 must fit max_context";
    max_context: "max-context", "N", None, false, uint(16, 1 << 20, 4096),
        "KV cache capacity in tokens (prompt + output)";
    execution_timeout_ms: "execution-timeout-ms", "MS", None, false, uint(100, 86_400_000, 300_000),
        "Execution timeout per job, in ms";
    step_timeout_ms: "step-timeout-ms", "MS", None, false, uint(100, 3_600_000, 60_000),
        "Longest one engine step may run, in ms, before the watchdog declares the engine hung and stops the worker";
    drain_timeout_ms: "drain-timeout-ms", "MS", None, false, uint(0, 3_600_000, 30_000),
        "How long SIGTERM waits for the jobs in flight, in ms";
    max_body_bytes: "max-body-bytes", "BYTES", None, false, uint(1024, 64 << 20, 1 << 20),
        "Largest HTTP request body in bytes";
    max_model_bytes: "max-model-bytes", "BYTES", None, false,
        uint_shown(1, 10_000_000_000_000, 100_000_000_000, "100000000000 = 100 GB"),
        "Largest model file in bytes";
    api_token_file: "api-token-file", "PATH", Some(env::API_TOKEN_FILE), false, Rule::Text,
        "Token file (mode 0600, one token per line, # comments).";
    model_signing_pubkey_file: "model-signing-pubkey-file", "PATH", None, false, Rule::Text,
        "Trusted Ed25519 public key for model signatures: 64 hex digits, 32 raw bytes or PEM \
         (`openssl pkey -pubout`). When set, every model must be signed (see --model-signature-file).";
    model_signature_file: "model-signature-file", "PATH", None, false, Rule::Text,
        "Detached Ed25519 signature of the --model-path file's SHA-256 digest: 128 hex digits or \
         64 raw bytes. Required with --model-signing-pubkey-file, refused without it.";
    seal_key_file: "seal-key-file", "PATH", None, false, Rule::Text,
        "Seal key: 64 hex digits (32 bytes), mode 0600 like the token file. Lets a pool manager \
         verify shard seals. Without it the worker seals with a random per-process key.";
    log_level: "log-level", "LEVEL", Some(env::LOG_LEVEL), false, Rule::Text,
        "trace, debug, info, warn or error.";
    state_dir: "state-dir", "DIR", Some(env::STATE_DIR), false, Rule::Text,
        "Absolute directory of the restart circuit breaker's state (default $STATE_DIRECTORY, else /var/lib/worker-orcd).";
    ready_requires_auth: "ready-requires-auth", "true|false", None, false, Rule::Text,
        "Whether GET /worker/ready needs the bearer token: true (default) or false.";
    gguf_max_tensors: "gguf-max-tensors", "N", None, false, uint(1, 1_000_000, 10_000),
        "GGUF: most tensors in a file";
    // Its default is max_model_bytes' value (Config::resolve: uint_or); the
    // number here shows in no help and is checked against the parser's.
    gguf_max_file_bytes: "gguf-max-file-bytes", "BYTES", None, false,
        uint_shown(1, 10_000_000_000_000, 100_000_000_000, "max_model_bytes"),
        "GGUF: largest file in bytes";
    gguf_max_string_bytes: "gguf-max-string-bytes", "BYTES", None, false, uint(1, 16 << 20, 64 * 1024),
        "GGUF: longest metadata string in bytes";
    gguf_max_metadata_pairs: "gguf-max-metadata-pairs", "N", None, false, uint(1, 1_000_000, 1_000),
        "GGUF: most metadata pairs";
    gguf_max_array_len: "gguf-max-array-len", "N", None, false, uint(1, 64 << 20, 4 << 20),
        "GGUF: longest metadata array";
    gguf_max_dims: "gguf-max-dims", "N", None, false, uint(1, 8, 4),
        "GGUF: most dimensions per tensor";
}
