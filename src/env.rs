//! Every environment variable worker-orcd reads, declared once with its
//! default and its documentation (WORKER-4990, 4991, 4910–4912).
//!
//! Why one table: operators need one place that lists what the process reads
//! from its environment, and a variable read ad hoc in some module is a
//! variable nobody documents. Code elsewhere reads the environment only
//! through the accessors below; `docs/operations.md` mirrors [`ALL`].
//!
//! The API token itself is never read from the environment (WORKER-4910):
//! only the *path* of the token file is.

use std::ffi::OsString;

/// One environment variable: its name, its default (as text), what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    /// The value used when the variable is unset or empty; `None` when absence
    /// itself has a meaning (described in `doc`).
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Path of the API token file (WORKER-4911). The token is never taken from
/// the environment, only this path.
pub const API_TOKEN_FILE: EnvVar = EnvVar {
    name: "WORKER_API_TOKEN_FILE",
    default: Some("/etc/llorch/worker-token"),
    doc: "Path of the API token file (mode 0600, one token per line). Overrides `api_token_file` \
          from the config file; the `--api-token-file` flag overrides it. When neither is set and \
          CREDENTIALS_DIRECTORY is, `$CREDENTIALS_DIRECTORY/worker-token` is used.",
};

/// Address the RPC server binds (WORKER-4990, 4991).
pub const BIND_ADDR: EnvVar = EnvVar {
    name: "WORKER_BIND_ADDR",
    default: Some("127.0.0.1:8001"),
    doc: "IP:PORT the RPC server listens on. Port 1024..=65535 (lower ports need root, which the \
          worker refuses). `rpc_port`, when given, replaces the port.",
};

/// CUDA device ordinal (WORKER-4990).
pub const GPU_DEVICE: EnvVar = EnvVar {
    name: "WORKER_GPU_DEVICE",
    default: Some("0"),
    doc: "CUDA device index, 0..=63. Overrides `gpu_device` from the config file.",
};

/// Log verbosity (WORKER-4990).
pub const LOG_LEVEL: EnvVar = EnvVar {
    name: "WORKER_LOG_LEVEL",
    default: Some("info"),
    doc:
        "Log level: trace, debug, info, warn or error. Overrides `log_level` from the config file.",
};

/// Directory of the restart circuit breaker's state (WORKER-4963).
pub const STATE_DIR: EnvVar = EnvVar {
    name: "WORKER_STATE_DIR",
    default: None,
    doc:
        "Absolute directory where the restart circuit breaker records this worker's recent starts \
          (`restart-breaker-<worker_id>.json`). Overrides `state_dir` from the config file; the \
          `--state-dir` flag overrides it. Unset: `$STATE_DIRECTORY`, else `/var/lib/worker-orcd`.",
};

/// Set by systemd for units with `StateDirectory=` (WORKER-4963).
pub const STATE_DIRECTORY: EnvVar = EnvVar {
    name: "STATE_DIRECTORY",
    default: None,
    doc: "Set by systemd when the unit uses StateDirectory=. When set and no state_dir is \
          configured, the restart circuit breaker keeps its state there (the first entry when \
          several are listed).",
};

/// Set by systemd for units with `LoadCredential=` (WORKER-4912).
pub const CREDENTIALS_DIRECTORY: EnvVar = EnvVar {
    name: "CREDENTIALS_DIRECTORY",
    default: None,
    doc: "Set by systemd when the unit uses LoadCredential=. When set and no token file path is \
          configured, the token is read from `$CREDENTIALS_DIRECTORY/worker-token`.",
};

/// On-disk cache of kernels compiled at run time (CUDA backend).
pub const KERNEL_CACHE: EnvVar = EnvVar {
    name: "WORKER_ORCD_KERNEL_CACHE",
    default: None,
    doc: "Directory caching CUBINs compiled by NVRTC, keyed by content hash. Unset: \
          `$XDG_CACHE_HOME/worker-orcd/kernels`, else `/tmp/worker-orcd-kernels`. The systemd unit \
          sets it to its CacheDirectory.",
};

/// Fallback base of the kernel cache.
pub const XDG_CACHE_HOME: EnvVar = EnvVar {
    name: "XDG_CACHE_HOME",
    default: None,
    doc: "Base directory of the kernel cache when WORKER_ORCD_KERNEL_CACHE is unset.",
};

/// Switch for CUDA graph replay of the decode step.
pub const CUDA_GRAPH: EnvVar = EnvVar {
    name: "WORKER_ORCD_CUDA_GRAPH",
    default: Some("1"),
    doc: "`0` disables CUDA graph capture/replay of the decode step (debugging); anything else keeps it.",
};

/// Switch for chained greedy decode steps on the CUDA backend.
pub const CHAIN_DECODE: EnvVar = EnvVar {
    name: "WORKER_ORCD_CHAIN_DECODE",
    default: Some("1"),
    doc: "`1` (default) lets the CUDA backend pick greedy tokens on the GPU and start the next \
          decode step before the host has read them, so the GPU does not wait for the host \
          between tokens (the same tokens either way; figures in src/engine/cuda/chain.rs); `0` \
          reads every step's picks before the next step starts",
};

/// Switch for programmatic dependent launch of the CUDA kernels.
pub const PDL: EnvVar = EnvVar {
    name: "WORKER_ORCD_PDL",
    default: Some("1"),
    doc: "`1` (default) lets each CUDA kernel launch while the previous one runs, on compute \
          capability 9.0 and above, each waiting for the one before it on the device (programmatic \
          dependent launch; the same results either way; about 2% faster, figures in \
          src/gpu/launch.rs); `0` launches them one after another. Older GPUs always launch one \
          after another. The start-up log says which",
};

/// Prefill GEMM numerics on the CUDA backend.
pub const PREFILL_GEMM: EnvVar = EnvVar {
    name: "WORKER_ORCD_PREFILL_GEMM",
    default: Some("by_size"),
    doc: "`by_size` (default): prefill matrix products in chunks of 256 tokens or more as 3xTF32 on the \
          tensor cores (operands split into TF32 parts and remainders: about FP32 accuracy) for matrices \
          with at least as many rows as columns, or with fewer and at least 2^21 weights (then split-K), \
          else one FP32 SGEMM on the CUDA cores (see README); `f32`: always FP32 SGEMM; `tf32x3`: always \
          3xTF32.",
};

/// Which decode mat-vecs run on the tensor cores (issue 11 point 7).
pub const TENSOR_DECODE: EnvVar = EnvVar {
    name: "WORKER_ORCD_TENSOR_DECODE",
    default: Some("none"),
    doc: "Decode mat-vecs computed on the tensor cores (3xTF32, about FP32 accuracy; the same kernel \
          for a lone row and a step of many, so streams stay batch-invariant) on the cuda backend: a \
          comma list of `lm_head`, `ffn` (gate, up, down) and `attn` (q, k, v, output), or `none` \
          (all on the FP32 cores). A group whose formats have no tensor-core kernel on the GPU stays \
          on the FP32 cores; the start-up log and the numerics version name what runs where. Any \
          other value stops the worker at start-up (exit 2, `INVALID_CONFIG`). Off by default: these \
          kernels measured slower than the FP32 ones (src/engine/cuda/tensor_routes.rs has the figures).",
};

/// Read by the CUDA driver itself, not by worker-orcd.
pub const CUDA_DEVICE_ORDER: EnvVar = EnvVar {
    name: "CUDA_DEVICE_ORDER",
    default: None,
    doc: "Read by the CUDA driver. `PCI_BUS_ID` (set by the systemd unit) makes device ordinals \
          follow /dev/nvidiaN order, so gpu_device N is the GPU the unit's DeviceAllow= opens.",
};

/// Where tests look for real model files (test harness only).
pub const TEST_MODELS: EnvVar = EnvVar {
    name: "WORKER_ORCD_TEST_MODELS",
    default: Some("<repo>/models"),
    doc: "Tests only: directory holding real GGUF models, read at build time (build.rs): a \
          test whose model is absent is ignored with that reason, so it is counted as ignored, \
          never as passed (with CI=true a missing SmolLM2 fails instead). Rebuild after changing it.",
};

/// Marks a CI run (test harness only).
pub const CI: EnvVar = EnvVar {
    name: "CI",
    default: None,
    doc: "Tests only, read at build time (build.rs): `true` makes the SmolLM2 model and NVRTC required, so \
          the tests that need them fail when they are missing instead of being ignored.",
};

/// Makes GPU scenarios mandatory (WORKER-4998).
pub const REQUIRE_REAL_GPU: EnvVar = EnvVar {
    name: "REQUIRE_REAL_GPU",
    default: None,
    doc: "Tests only: `1` makes GPU scenarios fail, never skip, when no GPU is usable.",
};

/// Build time, tests only: read by build.rs, not by the worker.
pub const GPU_TESTS: EnvVar = EnvVar {
    name: "WORKER_ORCD_GPU_TESTS",
    default: None,
    doc: "Build time, tests only: `1` builds the tests that need a GPU as ordinary tests \
          (ci/gpu-stage sets it); in any other build they are ignored with that reason, so a \
          run without a GPU counts them as ignored, never as passed.",
};

/// Tests only: fixed seed for randomized tests.
pub const TEST_SEED: EnvVar = EnvVar {
    name: "WORKER_ORCD_TEST_SEED",
    default: None,
    doc: "Tests only: seed for randomized tests (each prints the seed it used, so a failure can be replayed).",
};

/// Tests only: golden llama.cpp token files.
pub const GOLDEN: EnvVar = EnvVar {
    name: "WORKER_ORCD_GOLDEN",
    default: Some("<repo>/../shared/golden"),
    doc: "Tests only: directory of golden llama.cpp greedy token files (*.jsonl) for GPU tests.",
};

/// Tests only: extra golden directory for the CPU golden test.
pub const GOLDEN_DIR: EnvVar = EnvVar {
    name: "WORKER_ORCD_GOLDEN_DIR",
    default: None,
    doc: "Tests only: extra directory searched first for golden token files (then tests/golden_data).",
};

/// Tests only: larger quantization cross-check set.
pub const QUANT_XCHECK: EnvVar = EnvVar {
    name: "WORKER_ORCD_QUANT_XCHECK",
    default: Some("<repo>/tests/fixtures/quant"),
    doc: "Tests only: directory of independent quantization reference data.",
};

/// Tests only: rewrite the malformed-GGUF fixtures.
pub const WRITE_FIXTURES: EnvVar = EnvVar {
    name: "WORKER_ORCD_WRITE_FIXTURES",
    default: None,
    doc: "Tests only: when set, the malformed-GGUF test rewrites its fixture files.",
};

/// Tests only: dump GGUF metadata while testing the parser.
pub const GGUF_DUMP: EnvVar = EnvVar {
    name: "GGUF_DUMP",
    default: None,
    doc: "Tests only: when set, the GGUF parser test prints the metadata of the real model.",
};

/// Tests only: run the quantization micro-benchmark.
pub const H1_BENCH: EnvVar = EnvVar {
    name: "H1_BENCH",
    default: None,
    doc: "Tests only: when set, runs the quantization micro-benchmark inside the unit tests.",
};

/// Tests only: where the BDD suite writes proof bundles.
pub const PROOF_DIR: EnvVar = EnvVar {
    name: "LLORCH_PROOF_DIR",
    default: Some("<repo>/proof-bundles"),
    doc: "Tests only: root directory of proof bundles written by the BDD suite.",
};

/// Tests only: the proof bundle's run id.
pub const RUN_ID: EnvVar = EnvVar {
    name: "LLORCH_RUN_ID",
    default: None,
    doc: "Tests only: run id naming the proof bundle folder (default derived from the git sha and time).",
};

/// Tests only: the planted bug a test-hooks build runs with (issue 10).
pub const WORKER_ORCD_MUTANT: EnvVar = EnvVar {
    name: "WORKER_ORCD_MUTANT",
    default: None,
    doc: "Tests only: in a test-hooks build, the name of one planted bug from `src/mutants.rs` to \
          turn on, so the BDD suite can show that its scenarios notice it. Release builds ignore it.",
};

/// Tests only: a fault injected into the start-up commit (issue 10).
pub const WORKER_ORCD_STARTUP_FAULT: EnvVar = EnvVar {
    name: "WORKER_ORCD_STARTUP_FAULT",
    default: None,
    doc: "Tests only: in a test-hooks build, `flip_resident_byte:<offset>` flips one resident byte \
          after the start-up load and before its digest is verified, so the BDD suite can show that \
          a corrupted load is never sealed. Release builds ignore it.",
};

/// Tests only: a pause in the middle of reading one model file (issue 13 point 2).
pub const WORKER_ORCD_READ_PAUSE: EnvVar = EnvVar {
    name: "WORKER_ORCD_READ_PAUSE",
    default: None,
    doc: "Tests only: in a test-hooks build, `<file name>:<ms>` pauses every read of a model file \
          of that name for that long after its first block, so the BDD suite can change the file \
          while the worker reads it. Release builds ignore it.",
};

/// Every variable, in the order `docs/operations.md` lists them.
pub const ALL: &[EnvVar] = &[
    API_TOKEN_FILE,
    BIND_ADDR,
    GPU_DEVICE,
    LOG_LEVEL,
    STATE_DIR,
    STATE_DIRECTORY,
    CREDENTIALS_DIRECTORY,
    KERNEL_CACHE,
    XDG_CACHE_HOME,
    CUDA_GRAPH,
    CHAIN_DECODE,
    PDL,
    PREFILL_GEMM,
    TENSOR_DECODE,
    CUDA_DEVICE_ORDER,
    TEST_MODELS,
    CI,
    REQUIRE_REAL_GPU,
    GPU_TESTS,
    TEST_SEED,
    GOLDEN,
    GOLDEN_DIR,
    QUANT_XCHECK,
    WRITE_FIXTURES,
    GGUF_DUMP,
    H1_BENCH,
    PROOF_DIR,
    RUN_ID,
    WORKER_ORCD_MUTANT,
    WORKER_ORCD_STARTUP_FAULT,
    WORKER_ORCD_READ_PAUSE,
];

/// How configuration code looks a variable up. Tests pass a map instead of the
/// process environment so that they never mutate global state.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The real process environment.
pub fn process_lookup(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

impl EnvVar {
    /// The value when set and non-empty. A value that is not UTF-8 is an
    /// error that names the variable (never silently replaced).
    pub fn read_with(&self, lookup: Lookup<'_>) -> Result<Option<String>, String> {
        match lookup(self.name) {
            None => Ok(None),
            Some(v) => match v.into_string() {
                Ok(s) if s.trim().is_empty() => Ok(None),
                Ok(s) => Ok(Some(s)),
                Err(_) => Err(format!(
                    "environment variable {} is not valid UTF-8; set it to plain text or unset it",
                    self.name
                )),
            },
        }
    }

    /// The value from the process environment when set, non-empty and UTF-8.
    pub fn get(&self) -> Option<String> {
        self.read_with(&process_lookup).ok().flatten()
    }

    /// A switch that is on unless set to `0` (unset: on).
    pub fn on_unless_zero(&self) -> bool {
        self.get().is_none_or(|v| v != "0")
    }

    /// The value, or the declared default.
    pub fn get_or_default(&self) -> Option<String> {
        self.get().or_else(|| self.default.map(str::to_string))
    }

    /// Help text for a command-line flag that this variable also sets.
    pub fn flag_help(&self, what: &str) -> String {
        match self.default {
            Some(d) => format!("{what} Environment: {} (default {d}).", self.name),
            None => format!("{what} Environment: {}.", self.name),
        }
    }
}

/// The environment section of `docs/operations.md`, generated from [`ALL`].
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for v in ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            v.default
                .map_or("(unset)".to_string(), |d| format!("`{d}`")),
            v.doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        let mut seen = std::collections::BTreeSet::new();
        for v in ALL {
            assert!(seen.insert(v.name), "duplicate {}", v.name);
            assert!(v.doc.len() > 20, "{} needs a real doc", v.name);
        }
        assert_eq!(BIND_ADDR.default, Some("127.0.0.1:8001"));
        assert_eq!(GPU_DEVICE.default, Some("0"));
        assert_eq!(LOG_LEVEL.default, Some("info"));
        assert_eq!(API_TOKEN_FILE.default, Some("/etc/llorch/worker-token"));
    }

    #[test]
    fn empty_is_unset_and_non_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let empty = |_: &str| Some(OsString::from("  "));
        assert_eq!(GPU_DEVICE.read_with(&empty), Ok(None));
        let set = |_: &str| Some(OsString::from("3"));
        assert_eq!(GPU_DEVICE.read_with(&set), Ok(Some("3".into())));
        let bad = |_: &str| Some(OsString::from_vec(vec![0xff, 0xfe]));
        let err = GPU_DEVICE.read_with(&bad).unwrap_err();
        assert!(err.contains("WORKER_GPU_DEVICE"), "{err}");
    }

    /// docs/operations.md's environment table is written by hand (its
    /// wording is longer than the docs here), so this holds it to the
    /// declarations: its rows are the run-time variables of [`ALL`] (every
    /// one up to CUDA_DEVICE_ORDER; the test-only ones follow), in order,
    /// with the same defaults.
    #[test]
    fn operations_doc_lists_the_run_time_variables_with_their_defaults() {
        let doc = include_str!("../docs/operations.md");
        let start = doc
            .find("| variable | default | meaning |\n|---|---|---|\n")
            .expect("the environment table's header");
        let rows: Vec<(String, String)> = doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let name = cells[0].trim_start_matches("| ").trim_matches('`');
                (name.to_string(), cells[1].to_string())
            })
            .collect();
        let run_time = ALL
            .iter()
            .position(|v| v.name == CUDA_DEVICE_ORDER.name)
            .unwrap()
            + 1;
        let want: Vec<(String, String)> = ALL[..run_time]
            .iter()
            .map(|v| {
                let default = v.default.map_or("(unset)".into(), |d| format!("`{d}`"));
                (v.name.to_string(), default)
            })
            .collect();
        assert_eq!(rows, want, "docs/operations.md's environment table");
    }

    #[test]
    fn table_lists_every_variable() {
        let t = markdown_table();
        for v in ALL {
            assert!(t.contains(v.name));
        }
    }
}
