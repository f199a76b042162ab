//! Tests of configuration resolution (precedence file < env < flags, every
//! invalid field, flags), and that the docs and the systemd unit stay in step
//! with the code. Token-file and privilege tests: `security_tests.rs`.

use super::*;
use std::collections::HashMap;
use std::ffi::OsString;

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, OsString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect()
}

fn resolve(args: &ServeArgs, env: &HashMap<String, OsString>) -> Result<Config, ConfigError> {
    let lookup = |name: &str| env.get(name).cloned();
    Config::resolve_with(args, &lookup)
}

fn write_json(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("worker.json");
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"{
  "worker_id": "w-1", "pool_id": "pool.a", "model_path": "smol.gguf",
  "readiness_callback_url": "http://127.0.0.1:9000/ready", "gpu_device": 1, "rpc_port": 8100
}"#;

fn base_args(dir: &tempfile::TempDir) -> ServeArgs {
    ServeArgs {
        config: Some(write_json(dir, BASE)),
        ..ServeArgs::default()
    }
}

/// Resolve BASE with one extra JSON key; return the error.
fn file_err(extra: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    // Appended last: with duplicate JSON keys the last one wins.
    let cut = BASE.rfind('}').unwrap();
    let text = format!("{}, {extra} }}", &BASE[..cut]);
    let args = ServeArgs {
        config: Some(write_json(&dir, &text)),
        ..ServeArgs::default()
    };
    resolve(&args, &HashMap::new()).expect_err(extra)
}

#[test]
fn file_alone_gives_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&base_args(&dir), &HashMap::new()).unwrap();
    assert_eq!(c.worker_id, "w-1");
    assert_eq!(c.pool_id, "pool.a");
    assert_eq!(c.model_root, PathBuf::from(DEFAULT_MODEL_ROOT));
    assert_eq!(
        c.model_path,
        PathBuf::from("/var/lib/llorch/models/smol.gguf")
    );
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8100");
    assert_eq!(c.gpu_device, 1);
    assert_eq!(c.backend, crate::engine::BackendKind::Cuda);
    assert_eq!(c.slots_total, 8);
    assert_eq!(c.max_queued_jobs, 64);
    assert_eq!(c.admission_window_ms, 2);
    assert_eq!(c.kv_cache_tokens, 0);
    assert_eq!(c.max_tokens, 4096);
    assert_eq!(c.max_context, 4096);
    // Characters (WORKER-4242), so it may exceed max_context, which counts tokens.
    assert_eq!(c.max_prompt_len, 100_000);
    assert_eq!(c.max_model_bytes, 100_000_000_000);
    assert_eq!(c.gguf_limits.max_file_bytes, 100_000_000_000);
    assert_eq!(c.gguf_limits.max_tensors, 10_000);
    assert_eq!(c.api_token_file, PathBuf::from("/etc/llorch/worker-token"));
    assert_eq!(c.log_level, "info");
    assert!(c.ready_requires_auth);
    assert!(!c.allow_root);
    let d = c.describe();
    assert!(
        d.contains("w-1") && d.contains("127.0.0.1:8100") && d.contains("cuda"),
        "{d}"
    );
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    let env = env_of(&[
        ("WORKER_GPU_DEVICE", "2"),
        ("WORKER_LOG_LEVEL", "debug"),
        ("WORKER_API_TOKEN_FILE", "/env/tok"),
    ]);
    let c = resolve(&args, &env).unwrap();
    assert_eq!(c.gpu_device, 2, "env beats file");
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.api_token_file, PathBuf::from("/env/tok"));

    args.gpu_device = Some("3".into());
    args.api_token_file = Some("/flag/tok".into());
    args.worker_id = Some("from-flag".into());
    args.allow_root = true;
    let c = resolve(&args, &env).unwrap();
    assert_eq!(c.gpu_device, 3, "flag beats env");
    assert_eq!(c.api_token_file, PathBuf::from("/flag/tok"));
    assert_eq!(c.worker_id, "from-flag", "flag beats file");
    assert_eq!(c.log_level, "debug", "env still beats file where no flag");
    assert!(c.allow_root);
}

#[test]
fn rpc_port_replaces_port_of_bind_addr() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    let env = env_of(&[("WORKER_BIND_ADDR", "0.0.0.0:9999")]);
    assert_eq!(
        resolve(&args, &env).unwrap().bind_addr.to_string(),
        "0.0.0.0:8100"
    );
    args.rpc_port = Some("8200".into());
    assert_eq!(
        resolve(&args, &env).unwrap().bind_addr.to_string(),
        "0.0.0.0:8200"
    );
    args.bind_addr = Some("[::1]:7000".into());
    assert_eq!(
        resolve(&args, &env).unwrap().bind_addr.to_string(),
        "[::1]:8200"
    );
}

#[test]
fn bind_addr_validated() {
    let dir = tempfile::tempdir().unwrap();
    let args = base_args(&dir);
    for (bad, needle) in [
        ("localhost:8001", "IP:PORT"),
        ("127.0.0.1", "IP:PORT"),
        ("127.0.0.1:80", "below 1024"),
        ("127.0.0.1:0", "1024..=65535"),
        ("1.2.3.4:70000", "IP:PORT"),
    ] {
        let e = resolve(&args, &env_of(&[("WORKER_BIND_ADDR", bad)])).unwrap_err();
        assert_eq!(e.field, "bind_addr", "{bad}");
        assert!(e.to_string().contains(needle), "{bad}: {e}");
        assert!(
            e.to_string().contains("WORKER_BIND_ADDR"),
            "names the source: {e}"
        );
    }
}

/// The CUDA engine's numerics switch is checked at start-up on every backend.
#[test]
fn prefill_gemm_mode_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let args = base_args(&dir);
    for ok in ["f32", "tf32x3", "by_size"] {
        resolve(&args, &env_of(&[("WORKER_ORCD_PREFILL_GEMM", ok)])).unwrap();
    }
    let e = resolve(&args, &env_of(&[("WORKER_ORCD_PREFILL_GEMM", "fast")])).unwrap_err();
    assert_eq!(e.field, "WORKER_ORCD_PREFILL_GEMM");
    assert!(e.to_string().contains("\"fast\""), "{e}");
    assert!(e.to_string().contains("tf32x3"), "{e}");
}

/// So is the tensor-core decode route, on every backend (a CPU worker
/// with a typo there would otherwise start and the GPU one refuse).
#[test]
fn tensor_decode_routes_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let args = base_args(&dir);
    for ok in ["none", "lm_head", "attn,ffn"] {
        resolve(&args, &env_of(&[("WORKER_ORCD_TENSOR_DECODE", ok)])).unwrap();
    }
    let e = resolve(&args, &env_of(&[("WORKER_ORCD_TENSOR_DECODE", "mlp")])).unwrap_err();
    assert_eq!(e.field, "WORKER_ORCD_TENSOR_DECODE");
    assert!(e.to_string().contains("\"mlp\""), "{e}");
    assert!(e.to_string().contains("lm_head"), "{e}");
}

#[test]
fn credentials_directory_used_when_no_path_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    let env = env_of(&[(
        "CREDENTIALS_DIRECTORY",
        "/run/credentials/worker-orcd@0.service",
    )]);
    assert_eq!(
        resolve(&args, &env).unwrap().api_token_file,
        PathBuf::from("/run/credentials/worker-orcd@0.service/worker-token")
    );
    args.api_token_file = Some("/explicit".into());
    assert_eq!(
        resolve(&args, &env).unwrap().api_token_file,
        PathBuf::from("/explicit")
    );
}

#[test]
fn unknown_keys_refused_by_name() {
    let e = file_err(r#""model_pth": "x""#);
    assert_eq!(e.field, "model_pth");
    assert!(
        e.message.contains("unknown key") && e.message.contains("model_path"),
        "{e}"
    );
    let e = file_err(r#""gguf_limits": {"max_tensorz": 1}"#);
    assert_eq!(e.field, "gguf_limits.max_tensorz");
}

#[test]
fn batching_keys_take_their_values() {
    let c = Config::from_json_str(
        r#"{"worker_id":"w1","pool_id":"p1","model_path":"/m/x.gguf","rpc_port":8001,
            "readiness_callback_url":"http://127.0.0.1:9/cb","gpu_device":0,
            "slots_total":32,"max_queued_jobs":0,"admission_window_ms":0,"kv_cache_tokens":16}"#,
    )
    .expect("config");
    assert_eq!(
        (
            c.slots_total,
            c.max_queued_jobs,
            c.admission_window_ms,
            c.kv_cache_tokens
        ),
        (32, 0, 0, 16)
    );
}

#[test]
fn every_invalid_field_is_named_with_its_range() {
    let cases: &[(&str, &str, &str)] = &[
        (r#""worker_id": "has space""#, "worker_id", "1 to 64"),
        (r#""pool_id": """#, "pool_id", "must not be empty"),
        (r#""rpc_port": 80"#, "rpc_port", "1024..=65535"),
        (r#""rpc_port": 70000"#, "rpc_port", "1024..=65535"),
        (r#""rpc_port": "abc""#, "rpc_port", "not a port"),
        (r#""gpu_device": 64"#, "gpu_device", "0..=63"),
        (r#""gpu_device": -1"#, "gpu_device", "0..=63"),
        (r#""backend": "rocm""#, "backend", "cuda"),
        (r#""slots_total": 0"#, "slots_total", "1..=256 (default 8)"),
        (r#""slots_total": 257"#, "slots_total", "1..=256"),
        (
            r#""max_queued_jobs": 4097"#,
            "max_queued_jobs",
            "0..=4096 (default 64)",
        ),
        (r#""max_queued_jobs": -1"#, "max_queued_jobs", "0..=4096"),
        (
            r#""admission_window_ms": 101"#,
            "admission_window_ms",
            "0..=100 (default 2)",
        ),
        (r#""kv_cache_tokens": 15"#, "kv_cache_tokens", "at least 16"),
        (
            r#""kv_cache_tokens": 16777217"#,
            "kv_cache_tokens",
            "default 0",
        ),
        (r#""max_tokens": 0"#, "max_tokens", "1..=1048576"),
        (r#""max_context": 8"#, "max_context", "16..=1048576"),
        (r#""max_prompt_len": 0"#, "max_prompt_len", "1..=67108864"),
        (
            r#""max_prompt_len": 67108865"#,
            "max_prompt_len",
            "default 100000",
        ),
        (
            r#""execution_timeout_ms": 1.5"#,
            "execution_timeout_ms",
            "whole number",
        ),
        (
            r#""drain_timeout_ms": 3600001"#,
            "drain_timeout_ms",
            "0..=3600000",
        ),
        (
            r#""step_timeout_ms": 99"#,
            "step_timeout_ms",
            "100..=3600000",
        ),
        (
            r#""step_timeout_ms": 3600001"#,
            "step_timeout_ms",
            "100..=3600000",
        ),
        (
            r#""max_body_bytes": 10"#,
            "max_body_bytes",
            "1024..=67108864",
        ),
        (r#""max_model_bytes": 0"#, "max_model_bytes", "1..="),
        (
            r#""log_level": "loud""#,
            "log_level",
            "trace, debug, info, warn, error",
        ),
        (
            r#""ready_requires_auth": "yes""#,
            "ready_requires_auth",
            "true or false",
        ),
        (r#""allow_root": 1"#, "allow_root", "true or false"),
        (
            r#""readiness_callback_url": "https://pm:9000/r""#,
            "readiness_callback_url",
            "http://",
        ),
        (
            r#""readiness_callback_url": "not a url""#,
            "readiness_callback_url",
            "not a URL",
        ),
        (
            r#""readiness_callback_url": "http://u:hunter2@pm/r""#,
            "readiness_callback_url",
            "credentials",
        ),
        (r#""model_path": """#, "model_path", "must not be empty"),
        (r#""model_path": "a\u0000b""#, "model_path", "NUL"),
        (
            r#""model_path": ["a"]"#,
            "model_path",
            "string, number or boolean",
        ),
        (
            r#""gguf_limits": {"max_dims": 9}"#,
            "gguf_max_dims",
            "1..=8",
        ),
        (
            r#""gguf_limits": {"max_tensors": 0}"#,
            "gguf_max_tensors",
            "1..=1000000",
        ),
    ];
    for (extra, field, needle) in cases {
        let e = file_err(extra);
        assert_eq!(e.field, *field, "{extra}: {e}");
        assert!(e.to_string().contains(needle), "{extra}: {e}");
        assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
    }
    // The password of a callback URL is never echoed.
    let e = file_err(r#""readiness_callback_url": "http://u:hunter2@pm/r""#);
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn missing_required_key_says_how_to_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        config: Some(write_json(&dir, r#"{"worker_id": "w"}"#)),
        ..ServeArgs::default()
    };
    let e = resolve(&args, &HashMap::new()).unwrap_err();
    assert_eq!(e.field, "pool_id");
    assert!(e.message.contains("--pool-id"), "{e}");
}

/// WORKER-4981 with 4990: every required key stops start-up when absent,
/// naming every way to give it; the environment variables of 4990 give
/// `gpu_device` (WORKER_GPU_DEVICE) and the port (WORKER_BIND_ADDR).
#[test]
fn required_keys_are_enforced_and_the_environment_gives_them() {
    let full = serde_json::json!({
        "worker_id": "w", "pool_id": "p", "model_path": "/m/x.gguf", "rpc_port": 8100,
        "readiness_callback_url": "http://127.0.0.1:9/cb", "gpu_device": 1
    });
    let required: Vec<&str> = KEYS.iter().filter(|k| k.required).map(|k| k.name).collect();
    assert_eq!(
        required,
        [
            "worker_id",
            "pool_id",
            "model_path",
            "rpc_port",
            "readiness_callback_url",
            "gpu_device"
        ],
        "the required keys of WORKER-4981"
    );
    let dir = tempfile::tempdir().unwrap();
    for key in &required {
        let mut j = full.clone();
        j.as_object_mut().unwrap().remove(*key);
        let args = ServeArgs {
            config: Some(write_json(&dir, &j.to_string())),
            ..ServeArgs::default()
        };
        let e = resolve(&args, &HashMap::new()).unwrap_err();
        assert_eq!(e.field, *key, "{e}");
        assert!(e.message.contains("is required"), "{e}");
    }
    let without = |key: &str| {
        let mut j = full.clone();
        j.as_object_mut().unwrap().remove(key);
        ServeArgs {
            config: Some(write_json(&dir, &j.to_string())),
            ..ServeArgs::default()
        }
    };
    let e = resolve(&without("rpc_port"), &HashMap::new()).unwrap_err();
    assert!(
        e.message.contains("WORKER_BIND_ADDR") && e.message.contains("--rpc-port"),
        "{e}"
    );
    let env = env_of(&[("WORKER_BIND_ADDR", "127.0.0.1:9123")]);
    let c = resolve(&without("rpc_port"), &env).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:9123");
    let mut flagged = without("rpc_port");
    flagged.bind_addr = Some("127.0.0.1:9124".into());
    assert_eq!(
        resolve(&flagged, &HashMap::new()).unwrap().bind_addr.port(),
        9124
    );
    let e = resolve(&without("gpu_device"), &HashMap::new()).unwrap_err();
    assert!(e.message.contains("WORKER_GPU_DEVICE"), "{e}");
    let env = env_of(&[("WORKER_GPU_DEVICE", "3")]);
    assert_eq!(resolve(&without("gpu_device"), &env).unwrap().gpu_device, 3);
    // An empty variable is unset, so it gives nothing.
    let env = env_of(&[("WORKER_GPU_DEVICE", " ")]);
    assert_eq!(
        resolve(&without("gpu_device"), &env).unwrap_err().field,
        "gpu_device"
    );
}

/// WORKER-4963: the breaker's directory is state_dir, else systemd's
/// $STATE_DIRECTORY, else the documented default (which alone may be unusable).
#[test]
fn state_dir_from_key_then_systemd_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    let c = resolve(&args, &HashMap::new()).unwrap();
    assert_eq!(
        (c.state_dir, c.state_dir_configured),
        (PathBuf::from(DEFAULT_STATE_DIR), false)
    );
    let env = env_of(&[("STATE_DIRECTORY", "/var/lib/worker-orcd/0:/var/lib/other")]);
    let c = resolve(&args, &env).unwrap();
    assert_eq!(
        (c.state_dir, c.state_dir_configured),
        (PathBuf::from("/var/lib/worker-orcd/0"), true)
    );
    let env = env_of(&[
        ("STATE_DIRECTORY", "/var/lib/worker-orcd/0"),
        ("WORKER_STATE_DIR", "/srv/state"),
    ]);
    assert_eq!(
        resolve(&args, &env).unwrap().state_dir,
        PathBuf::from("/srv/state")
    );
    args.state_dir = Some("/flag/state".into());
    assert_eq!(
        resolve(&args, &env).unwrap().state_dir,
        PathBuf::from("/flag/state")
    );
    args.state_dir = Some("relative/state".into());
    let e = resolve(&args, &env).unwrap_err();
    assert_eq!(e.field, "state_dir");
    assert!(e.message.contains("absolute"), "{e}");
}

#[test]
fn flag_errors_name_the_flag_and_file_errors_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    args.max_tokens = Some("lots".into());
    let e = resolve(&args, &HashMap::new()).unwrap_err();
    assert!(e.to_string().contains("from flag --max-tokens"), "{e}");
    let e = file_err(r#""max_tokens": -3"#);
    assert!(e.to_string().contains("from config file"), "{e}");
}

#[test]
fn bad_files_fail_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ServeArgs {
        config: Some(dir.path().join("nope.json")),
        ..ServeArgs::default()
    };
    let e = resolve(&missing, &HashMap::new()).unwrap_err();
    assert!(e.message.contains("nope.json"), "{e}");
    let not_obj = ServeArgs {
        config: Some(write_json(&dir, "[1,2]")),
        ..ServeArgs::default()
    };
    assert!(resolve(&not_obj, &HashMap::new())
        .unwrap_err()
        .message
        .contains("one JSON object"));
    let broken = ServeArgs {
        config: Some(write_json(&dir, "{\"worker_id\": ")),
        ..ServeArgs::default()
    };
    assert!(resolve(&broken, &HashMap::new())
        .unwrap_err()
        .message
        .contains("not valid JSON"));
}

#[test]
fn flags_alone_suffice_and_from_json_str_works() {
    let keys = KeyFlags {
        worker_id: Some("w".into()),
        pool_id: Some("p".into()),
        model_path: Some("/m/x.gguf".into()),
        readiness_callback_url: Some("http://localhost:1/cb".into()),
        backend: Some("cpu".into()),
        rpc_port: Some("8005".into()),
        gpu_device: Some("0".into()),
        ..KeyFlags::default()
    };
    let args = ServeArgs {
        config: None,
        keys: Box::new(keys),
    };
    let c = resolve(&args, &HashMap::new()).unwrap();
    assert_eq!(c.backend, crate::engine::BackendKind::Cpu);
    assert_eq!(c.model_path, PathBuf::from("/m/x.gguf"));
    // The host of WORKER_BIND_ADDR's default, the port given.
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8005");
    let j = Config::from_json_str(BASE).unwrap();
    assert_eq!(j.worker_id, "w-1");
}

#[test]
fn clap_parses_every_flag() {
    use clap::{Args, Command, FromArgMatches};
    let cmd = ServeArgs::augment_args(Command::new("t"));
    let m = cmd
        .try_get_matches_from([
            "t",
            "--worker-id",
            "w",
            "--rpc-port",
            "8002",
            "--allow-root",
            "--gguf-max-dims",
            "4",
        ])
        .unwrap();
    let a = ServeArgs::from_arg_matches(&m).unwrap();
    assert_eq!(a.rpc_port.as_deref(), Some("8002"));
    assert!(a.allow_root);
    // Every key of the table has a flag clap knows.
    let cmd = ServeArgs::augment_args(Command::new("t"));
    for k in KEYS {
        let long = k.flag.trim_start_matches("--");
        assert!(
            cmd.get_arguments().any(|a| a.get_long() == Some(long)),
            "no flag {}",
            k.flag
        );
    }
}

/// One table drives the flags (issue 11, "Layout"): every key's flag, given
/// on the command line, lands in the flag layer under that key; every
/// numeric key's `--help` prints the range and default its check uses, and
/// a key with an environment variable names it.
#[test]
fn every_flag_reaches_its_key_and_shows_its_rule() {
    use super::keys::{flag_layer, Source};
    use clap::{Args, Command, FromArgMatches};
    let mut argv = vec!["t".to_string()];
    for k in KEYS {
        argv.push(k.flag.to_string());
        if k.rule != Rule::Switch {
            argv.push(format!("value of {}", k.name));
        }
    }
    let cmd = ServeArgs::augment_args(Command::new("t"));
    let m = cmd.try_get_matches_from(&argv).unwrap();
    let a = ServeArgs::from_arg_matches(&m).unwrap();
    let layer = flag_layer(&a.keys);
    for k in KEYS {
        let want = if k.rule == Rule::Switch {
            "true".to_string()
        } else {
            format!("value of {}", k.name)
        };
        assert_eq!(
            layer.get(k.name),
            Some(&(want, Source::Flag(k.flag))),
            "{}",
            k.name
        );
    }
    let cmd = ServeArgs::augment_args(Command::new("t"));
    for k in KEYS {
        let long = k.flag.trim_start_matches("--");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap();
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.starts_with(k.help), "{}: {help}", k.name);
        if let Rule::Uint {
            lo,
            hi,
            default,
            shown,
        } = k.rule
        {
            let hi = if hi == 10_000_000_000_000 {
                "10^13".to_string()
            } else {
                hi.to_string()
            };
            let shown_default = match shown {
                None => default.to_string(),
                // A shown default starts with the number or names the key
                // whose value it takes.
                Some(text) => {
                    assert!(
                        text.starts_with(&default.to_string())
                            || KEYS.iter().any(|other| other.name == text),
                        "{}: the shown default {text:?} is not {default}",
                        k.name
                    );
                    text.to_string()
                }
            };
            let want = if k.required {
                format!("({lo}..={hi}); required.")
            } else {
                format!("({lo}..={hi}, default {shown_default}).")
            };
            assert!(help.contains(&want), "{}: {help} lacks {want}", k.name);
        }
        if let Some(var) = k.env {
            assert!(help.contains(var.name), "{}: {help}", k.name);
        }
    }
}

/// The GGUF limits' defaults in the key table are the parser's own.
#[test]
fn gguf_limits_default_is_the_table() {
    let rule = |name: &str| match KEYS.iter().find(|k| k.name == name).unwrap().rule {
        Rule::Uint { default, .. } => default,
        other => panic!("{name} is {other:?}"),
    };
    let d = crate::model::gguf::GgufLimits::default();
    assert_eq!(rule("gguf_max_tensors"), d.max_tensors);
    assert_eq!(rule("max_model_bytes"), d.max_file_bytes);
    assert_eq!(rule("gguf_max_string_bytes"), d.max_string_bytes);
    assert_eq!(rule("gguf_max_metadata_pairs"), d.max_metadata_pairs);
    assert_eq!(rule("gguf_max_array_len"), d.max_array_len);
    assert_eq!(rule("gguf_max_dims"), u64::from(d.max_dims));
    // gguf_max_file_bytes takes max_model_bytes' value unless it is set.
    let text = BASE.replace(
        "\"rpc_port\": 8100",
        "\"rpc_port\": 8100, \"max_model_bytes\": 5000",
    );
    let c = Config::from_json_str(&text).unwrap();
    assert_eq!(c.gguf_limits.max_file_bytes, 5000);
}

/// The signing files go together (WORKER-4222, 4313); the flags set them too.
#[test]
fn signing_key_and_startup_signature_come_together() {
    let e = file_err(r#""model_signing_pubkey_file": "/etc/llorch/model-signing.pub""#);
    assert_eq!(e.field, "model_signature_file");
    assert!(
        e.message.contains("model_signing_pubkey_file"),
        "{}",
        e.message
    );
    let e = file_err(r#""model_signature_file": "/m/smol.gguf.sig""#);
    assert_eq!(e.field, "model_signature_file");
    assert!(
        e.message.contains("model_signing_pubkey_file"),
        "{}",
        e.message
    );
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(&dir);
    args.model_signing_pubkey_file = Some("/k.pub".into());
    args.model_signature_file = Some("/m/smol.gguf.sig".into());
    let c = resolve(&args, &HashMap::new()).unwrap();
    assert_eq!(c.model_signing_pubkey_file, Some(PathBuf::from("/k.pub")));
    assert_eq!(
        c.model_signature_file,
        Some(PathBuf::from("/m/smol.gguf.sig"))
    );
    let plain = resolve(&base_args(&dir), &HashMap::new()).unwrap();
    assert_eq!(
        (plain.model_signing_pubkey_file, plain.model_signature_file),
        (None, None)
    );
}

// ---- documentation stays in step with the code ----

fn operations_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap()
}

/// Every key of [`KEYS`] (the single source) has its own row in the
/// configuration table of docs/operations.md — `| `key` | `--flag` | env |` —
/// and every variable of `env::ALL` its own row in the environment table.
#[test]
fn operations_doc_lists_every_key_flag_and_env_var() {
    let doc = operations_doc();
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    for k in KEYS {
        let json_name = k
            .name
            .strip_prefix("gguf_")
            .map_or(k.name.to_string(), |n| format!("gguf_limits.{n}"));
        let row = rows
            .iter()
            .find(|r| r.get(1) == Some(&format!("`{json_name}`").as_str()))
            .unwrap_or_else(|| {
                panic!("docs/operations.md has no table row for config key `{json_name}`")
            });
        assert!(
            row.get(2)
                .is_some_and(|c| c.starts_with(&format!("`{}`", k.flag))),
            "docs/operations.md: the row of `{json_name}` must name its flag {}",
            k.flag
        );
        let env_cell = row.get(3).copied().unwrap_or_default();
        match k.env {
            Some(v) => assert_eq!(
                env_cell,
                format!("`{}`", v.name),
                "docs/operations.md: the row of `{json_name}` must name its env var"
            ),
            None => assert!(
                env_cell.is_empty(),
                "docs/operations.md: `{json_name}` has no env var, but its row names {env_cell}"
            ),
        }
        if let Rule::Uint {
            lo,
            hi,
            default,
            shown,
        } = k.rule
        {
            // The range cell as the key table checks it ("10^13" written
            // out; "0, or 16..=N" is a finer statement of "0..=N").
            let range = row
                .get(5)
                .copied()
                .unwrap_or_default()
                .replace("10^13", "10000000000000");
            let range = range.replace("0, or 16..=", "0..=");
            assert_eq!(
                range,
                format!("{lo}..={hi}"),
                "docs/operations.md: the range of `{json_name}`"
            );
            let default_cell = row.get(4).copied().unwrap_or_default();
            let want = if k.required {
                "(required".to_string()
            } else if shown == Some("max_model_bytes") {
                "`max_model_bytes`".to_string()
            } else {
                format!("`{default}`")
            };
            assert!(
                default_cell.starts_with(&want),
                "docs/operations.md: the default of `{json_name}` is {want}, not {default_cell}"
            );
        }
    }
    for v in crate::env::ALL {
        assert!(
            rows.iter()
                .any(|r| r.get(1) == Some(&format!("`{}`", v.name).as_str())),
            "docs/operations.md has no table row for env var {}",
            v.name
        );
    }
}

#[test]
fn max_prompt_len_counts_characters_not_tokens() {
    // 5000 characters may tokenize into fewer than max_context = 4096 tokens,
    // so the two limits are independent (WORKER-4242 vs 4423).
    let c = Config::from_json_str(
        r#"{"worker_id":"w","pool_id":"p","model_path":"/m/x.gguf","readiness_callback_url":"http://127.0.0.1:9/cb",
            "rpc_port": 8001, "gpu_device": 0, "max_prompt_len": 5000, "max_context": 4096}"#,
    )
    .expect("a character limit above the token context is valid");
    assert_eq!(c.max_prompt_len, 5000);
}

#[test]
fn systemd_unit_keeps_its_hardening() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/worker-orcd@.service"
    ))
    .unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "User=worker-orcd",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ReadOnlyPaths=/var/lib/llorch/models",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/nvidia%i rw",
        "RestartPreventExitStatus=2 7",
        "StateDirectory=worker-orcd/%i",
    ] {
        assert!(
            lines.contains(&want),
            "deploy/worker-orcd@.service lacks `{want}`"
        );
    }
    let cred = format!("LoadCredential={CREDENTIAL_NAME}:");
    assert!(
        lines.iter().any(|l| l.starts_with(&cred)),
        "the unit must load the credential the worker reads"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("Environment=WORKER_API_TOKEN=")),
        "no token in the environment"
    );
    let profile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/apparmor/usr.local.bin.worker-orcd"
    ))
    .unwrap();
    assert!(
        profile.contains("deny capability,") && profile.contains("/var/lib/llorch/models/** r,")
    );
}

#[test]
fn invalid_config_has_its_own_code() {
    let e = crate::error::WorkerError::from(ConfigError::new("rpc_port", "is out of range"));
    assert_eq!(e.code(), "INVALID_CONFIG");
    assert!(crate::error::WorkerError::ALL_CODES.contains(&e.code()));
    assert!(!e.retriable());
    assert_eq!(e.http_status(), 500);
    assert!(e.message().contains("rpc_port"), "{}", e.message());
}
