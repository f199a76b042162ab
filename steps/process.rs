//! Spawning and supervising the real `worker-orcd` binary (issue 2, item 3;
//! WORKER-4021, 4030, 4970-4972). The harness plays pool-managerd: it writes a
//! JSON config and a 0600 token file, starts the worker with its output going
//! to a file, polls `/health` to a deadline, fails at once (with the log) if
//! the worker exits, and ends it with SIGTERM, then SIGKILL.

use crate::steps::callback::CallbackReceiver;
use crate::steps::world::{ctx, file_sha256, World};
use cucumber::{given, then, when};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct Worker {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
}

/// The shape of a test model that `worker-orcd make-model` generates.
struct TestModel {
    name: &'static str,
    arch: &'static str,
    layers: u32,
    d_model: u32,
    heads: u32,
    kv_heads: u32,
    ffn: u32,
    vocab: u32,
    ctx: u32,
    /// Another seed, other weights: a different model (different digest).
    seed: u32,
}

/// Test models generated once per run (all q8_0). One row each, kept as a table.
#[rustfmt::skip]
const TEST_MODELS: &[TestModel] = &[
    // The tiny model of the brief: fast enough that a scenario costs milliseconds.
    TestModel { name: "tiny", arch: "llama", layers: 2, d_model: 64, heads: 4, kv_heads: 2, ffn: 128, vocab: 512, ctx: 2048, seed: 1 },
    // Same shape, other seed: a different model.
    TestModel { name: "tiny2", arch: "llama", layers: 2, d_model: 64, heads: 4, kv_heads: 2, ffn: 128, vocab: 512, ctx: 2048, seed: 2 },
    TestModel { name: "tiny-qwen2", arch: "qwen2", layers: 2, d_model: 64, heads: 4, kv_heads: 2, ffn: 128, vocab: 512, ctx: 2048, seed: 3 },
    // Big enough that a 200-token job lasts long enough to be busy,
    // cancelled or drained while it runs (still ~15 MB).
    TestModel { name: "larger", arch: "llama", layers: 4, d_model: 512, heads: 8, kv_heads: 4, ffn: 1536, vocab: 4096, ctx: 2048, seed: 4 },
    // Small weights (~190 MB) whose KV cache needs ~164 GB at 1,000,000
    // tokens: more than any single GPU has, so loading must fail first.
    TestModel { name: "huge-kv", arch: "llama", layers: 10, d_model: 2048, heads: 16, kv_heads: 16, ffn: 128, vocab: 512, ctx: 1_048_576, seed: 5 },
];

/// The `make-model` arguments of the test model `name`.
fn model_args(name: &str) -> Option<Vec<String>> {
    let m = TEST_MODELS.iter().find(|m| m.name == name)?;
    let flags = [
        ("--layers", m.layers),
        ("--d-model", m.d_model),
        ("--heads", m.heads),
        ("--kv-heads", m.kv_heads),
        ("--ffn", m.ffn),
        ("--vocab", m.vocab),
        ("--ctx", m.ctx),
        ("--seed", m.seed),
    ];
    let mut args = vec![
        "--arch".to_string(),
        m.arch.to_string(),
        "--quant".into(),
        "q8_0".into(),
    ];
    for (flag, v) in flags {
        args.push(flag.to_string());
        args.push(v.to_string());
    }
    Some(args)
}

/// The path of a generated test model, generating it on first use.
pub fn test_model(name: &str) -> Result<PathBuf, String> {
    let c = ctx();
    let mut models = c.models.lock().expect("models lock");
    if let Some(r) = models.get(name) {
        return r.clone();
    }
    let result = (|| {
        let args = model_args(name).ok_or_else(|| format!("no test model named {name}"))?;
        let dir = c.scratch.join("models");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = dir.join(format!("{name}.gguf"));
        let output = std::process::Command::new(&c.bin)
            .arg("make-model")
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .map_err(|e| format!("could not run {} make-model: {e}", c.bin.display()))?;
        if !output.status.success() || !out.exists() {
            return Err(format!(
                "`worker-orcd make-model {}` failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        c.model_digests
            .lock()
            .expect("digests lock")
            .insert(format!("{name}.gguf"), file_sha256(&out));
        Ok(out)
    })();
    models.insert(name.to_string(), result.clone());
    result
}

/// A port for a worker to listen on. Not one the kernel hands out (port 0
/// gives one from the ephemeral range, 32768 and up on Linux, from which
/// every outgoing connection of the scenarios running beside this one also
/// takes its local port, so the worker's bind could find it taken: a CI run
/// once failed so, "Address already in use"), but the next of a counter
/// below that range, so no two scenarios of a run get the same one; a port
/// that cannot be bound right now is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000; // ports 10000..32000, below the ephemeral range
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Harness processes started side by side begin at different places.
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no port between {FIRST} and {} could be bound",
        FIRST + SPAN
    )
}

pub fn running_as_root() -> bool {
    // /proc/self is owned by the effective uid; no unsafe geteuid needed.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Put `src` into `root` under `name` without leaving the root (a hard link,
/// or a copy across file systems): a symlink would canonicalize outside it.
pub fn place_in_root(src: &Path, root: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(root).expect("create model root");
    let dst = root.join(name);
    if !dst.exists() && std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst)
            .unwrap_or_else(|e| panic!("copy {} into the model root: {e}", src.display()));
    }
    dst
}

/// Write the token file with mode 0600.
pub fn write_token_file(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).expect("write token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("chmod token file");
}

/// Prepare a config for `model` ("tiny", "larger", "smollm2", ...) without starting.
pub async fn prepare(w: &mut World, model: &str) {
    let root = w.dir.path().join("models");
    let (path, name) = if model == "smollm2" {
        let src = match &ctx().smollm2 {
            Some(p) => p.clone(),
            None => panic!("SmolLM2 is not installed: run `bash ci/fetch-models.sh` or set WORKER_ORCD_TEST_MODELS"),
        };
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("smollm2.gguf")
            .to_string();
        let known = ctx()
            .model_digests
            .lock()
            .expect("digests lock")
            .contains_key(&name);
        if !known {
            let d = file_sha256(&src);
            ctx()
                .model_digests
                .lock()
                .expect("digests lock")
                .insert(name.clone(), d);
        }
        (place_in_root(&src, &root, &name), name)
    } else {
        let src = test_model(model).unwrap_or_else(|e| w.fail(e));
        let name = format!("{model}.gguf");
        (place_in_root(&src, &root, &name), name)
    };
    if w.callback.is_none() {
        w.callback = Some(CallbackReceiver::start().await);
    }
    w.port = free_port();
    w.model_name = name;
    write_token_file(&w.token_file, &format!("{}\n", w.token), 0o600);
    let cb = w
        .callback
        .as_ref()
        .map(|c| c.url.clone())
        .unwrap_or_default();
    let cfg = json!({
        "worker_id": "bdd-worker",
        "pool_id": "bdd-pool",
        "model_path": path.display().to_string(),
        "model_root": root.display().to_string(),
        "rpc_port": w.port,
        "readiness_callback_url": cb,
        "gpu_device": 0,
        "backend": ctx().backend(),
        "api_token_file": w.token_file.display().to_string(),
        // Each worker its own restart-breaker state (WORKER-4963), so the
        // scenarios' starts never count against each other.
        "state_dir": w.dir.path().join("state").display().to_string(),
    });
    if let Value::Object(m) = cfg {
        w.config = m;
    }
}

/// Spawn the worker with the prepared config. Does not wait.
pub async fn spawn(w: &mut World) {
    let c = ctx();
    let cfg_path = w.dir.path().join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&Value::Object(w.config.clone())).expect("config JSON"),
    )
    .expect("write config");
    let n = w.old_logs.len() + usize::from(w.worker.is_some());
    let log = w.dir.path().join(format!("worker-{n}.log"));
    let out = std::fs::File::create(&log).expect("create worker log");
    let err = out.try_clone().expect("clone log handle");
    let mut cmd = match w.run_as {
        Some(id) => {
            let mut cmd = tokio::process::Command::new("setpriv");
            cmd.args([
                "--reuid",
                &id.to_string(),
                "--regid",
                &id.to_string(),
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ]);
            cmd.arg(&c.bin);
            cmd
        }
        None => match w.nofile {
            // prlimit execs the worker in its own process: the pid stays the worker's.
            Some(n) => {
                let mut cmd = tokio::process::Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg("--").arg(&c.bin);
                cmd
            }
            None => tokio::process::Command::new(&c.bin),
        },
    };
    cmd.arg("--config").arg(&cfg_path);
    if w.root_override && running_as_root() && w.run_as.is_none() {
        cmd.arg("--allow-root");
    }
    cmd.args(&w.extra_args);
    for var in [
        "WORKER_API_TOKEN_FILE",
        "WORKER_BIND_ADDR",
        "WORKER_GPU_DEVICE",
        "WORKER_LOG_LEVEL",
        "CREDENTIALS_DIRECTORY",
        "WORKER_STATE_DIR",
        "STATE_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("WORKER_LOG_LEVEL", "debug");
    crate::steps::world::apply_mutant(&mut cmd);
    if w.config.contains_key("rpc_port") {
        cmd.env("WORKER_BIND_ADDR", format!("127.0.0.1:{}", w.port));
    }
    for (k, v) in &w.env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", c.bin.display()));
    let pid = child.id().unwrap_or(0);
    if let Some(old) = w.worker.take() {
        w.old_logs.push(old.log);
    }
    w.worker = Some(Worker { child, pid, log });
    w.start_exit = None;
}

fn start_deadline() -> Duration {
    if ctx().require_gpu {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(60)
    }
}

/// Wait until `/health` says 200 (Ok) or the worker exits (Err(code)).
pub async fn wait_ready_or_exit(w: &mut World, deadline: Duration) -> Result<(), Option<i32>> {
    let until = Instant::now() + deadline;
    let url = format!("{}/health", w.base_url());
    loop {
        if let Some(code) = try_exit(w) {
            return Err(code);
        }
        if let Ok(r) = w
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status().as_u16() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > until {
            w.fail(format!(
                "the worker did not answer GET /health with 200 within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Some(exit code) if the worker has exited (inner None: killed by a signal).
pub fn try_exit(w: &mut World) -> Option<Option<i32>> {
    let worker = w.worker.as_mut()?;
    match worker.child.try_wait() {
        Ok(Some(status)) => Some(status.code()),
        _ => None,
    }
}

pub async fn start_ready(w: &mut World) {
    spawn(w).await;
    if let Err(code) = wait_ready_or_exit(w, start_deadline()).await {
        w.start_exit = Some(code.unwrap_or(-1));
        w.fail(format!(
            "the worker exited with code {code:?} before it became ready"
        ));
    }
}

pub fn signal(w: &World, sig: &str) {
    if let Some(worker) = &w.worker {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(worker.pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            w.fail(format!(
                "could not send SIG{sig} to the worker (pid {})",
                worker.pid
            ));
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code if known.
pub async fn stop(w: &mut World, grace: Duration) -> Option<i32> {
    w.worker.as_ref()?;
    if let Some(code) = try_exit(w) {
        return code;
    }
    signal(w, "TERM");
    let worker = w.worker.as_mut()?;
    match tokio::time::timeout(grace, worker.child.wait()).await {
        Ok(Ok(status)) => status.code(),
        _ => {
            let _ = worker.child.start_kill();
            let _ = worker.child.wait().await;
            None
        }
    }
}

pub async fn wait_exit(w: &mut World, secs: u64) -> Option<i32> {
    let Some(worker) = w.worker.as_mut() else {
        w.fail("no worker was started")
    };
    match tokio::time::timeout(Duration::from_secs(secs), worker.child.wait()).await {
        Ok(Ok(status)) => status.code().or(Some(-1)),
        _ => None,
    }
}

#[given(regex = r"^a worker serving the (tiny|larger|SmolLM2) (?:test )?model$")]
async fn serving(w: &mut World, which: String) {
    let model = match which.as_str() {
        "SmolLM2" => "smollm2",
        other => other,
    };
    prepare(w, model).await;
    start_ready(w).await;
}

#[given("a worker serving a tiny qwen2 test model")]
async fn serving_qwen(w: &mut World) {
    prepare(w, "tiny-qwen2").await;
    start_ready(w).await;
}

#[given(regex = r"^a worker configured for the (tiny|larger|huge-kv) test model$")]
async fn configured(w: &mut World, model: String) {
    prepare(w, &model).await;
}

#[given("a worker whose token file holds two tokens")]
async fn two_tokens(w: &mut World) {
    prepare(w, "larger").await;
    let second = crate::steps::security::new_token();
    write_token_file(&w.token_file, &format!("{}\n{}\n", w.token, second), 0o600);
    w.token2 = Some(second);
    start_ready(w).await;
}

#[given("the worker is started without the root override")]
#[when("the worker is started without the root override")]
async fn no_root_override(w: &mut World) {
    w.root_override = false;
    started(w).await;
}

#[given("the worker is started")]
#[when("the worker is started")]
async fn started(w: &mut World) {
    spawn(w).await;
    if let Err(code) = wait_ready_or_exit(w, start_deadline()).await {
        w.start_exit = Some(code.unwrap_or(-1));
    }
}

#[then("the worker becomes ready")]
async fn becomes_ready(w: &mut World) {
    if let Some(code) = w.start_exit {
        w.fail(format!(
            "the worker exited with code {code} instead of becoming ready"
        ));
    }
    if let Err(code) = wait_ready_or_exit(w, start_deadline()).await {
        w.fail(format!(
            "the worker exited with code {code:?} instead of becoming ready"
        ));
    }
}

#[then(regex = r"^the worker exits with code (\d+) within (\d+) seconds$")]
async fn exits_with(w: &mut World, code: i32, secs: u64) {
    let got = match w.start_exit {
        Some(c) => Some(c),
        None => wait_exit(w, secs).await,
    };
    match got {
        Some(c) if c == code => {}
        Some(c) => w.fail(format!("the worker exited with code {c}, expected {code}")),
        None => w.fail(format!(
            "the worker was still running after {secs} s, expected exit code {code}"
        )),
    }
}

#[then("the worker process is still running")]
async fn still_running(w: &mut World) {
    if let Some(code) = try_exit(w) {
        w.fail(format!("the worker exited with {code:?}"));
    }
    let r =
        crate::steps::http::send(w, "GET", "/health", None, crate::steps::http::Auth::None).await;
    w.check(
        r.status == 200,
        format!("GET /health answered {} after the refusal", r.status),
    );
}

#[given("the worker receives SIGTERM")]
#[when("the worker receives SIGTERM")]
async fn sigterm(w: &mut World) {
    signal(w, "TERM");
    // Let the signal land before the next step looks at the worker.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[when("the worker is restarted")]
async fn restarted(w: &mut World) {
    let code = stop(w, Duration::from_secs(20)).await;
    w.check(
        code == Some(0),
        format!("the worker should exit 0 on SIGTERM when idle, got {code:?}"),
    );
    w.port = free_port();
    w.config.insert("rpc_port".into(), json!(w.port));
    start_ready(w).await;
}

/// The uid/gid of `nobody`, which the unprivileged scenarios run the worker as.
const NOBODY: u32 = 65534;

#[given("a worker serving the tiny test model as an unprivileged user")]
async fn serving_unprivileged(w: &mut World) {
    prepare(w, "tiny").await;
    hand_to_nobody(w);
    start_ready(w).await;
}

/// A folder inside the scenario folder that stays root's alone when the
/// folder is handed to `nobody` (see `hand_to_nobody`).
pub fn root_only_dir(w: &World) -> PathBuf {
    w.dir.path().join("root-only")
}

/// As root: the next start runs the worker as `nobody`, owning the scenario
/// folder (but not `root_only_dir`). As another user: nothing to do, the
/// worker already runs unprivileged.
fn hand_to_nobody(w: &mut World) {
    if running_as_root() {
        // The worker must reach its files as `nobody`: open the path to the
        // scenario folder and hand the folder over.
        for d in [ctx().scratch.as_path(), w.dir.path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .expect("chmod scenario dir");
        }
        let ok = std::process::Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(w.dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        w.check(
            ok,
            "could not hand the scenario folder to the unprivileged user",
        );
        let locked = root_only_dir(w);
        if locked.is_dir() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "0:0"])
                .arg(&locked)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            w.check(ok, "could not give the root-only folder back to root");
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700))
                .expect("chmod the root-only folder");
        }
        w.run_as = Some(NOBODY);
    }
}

#[when("the worker is started as an unprivileged user")]
async fn started_unprivileged(w: &mut World) {
    hand_to_nobody(w);
    spawn(w).await;
    if let Err(code) = wait_ready_or_exit(w, start_deadline()).await {
        w.start_exit = Some(code.unwrap_or(-1));
    }
}

#[then(regex = r"^the worker exits with a non-zero code within (\d+) seconds$")]
async fn exits_nonzero(w: &mut World, secs: u64) {
    let got = match w.start_exit {
        Some(c) => Some(c),
        None => wait_exit(w, secs).await,
    };
    match got {
        Some(0) => w.fail("the worker exited with code 0"),
        Some(_) => {}
        None => w.fail(format!("the worker was still running after {secs} s")),
    }
}

#[given(
    "a model whose KV cache at that context exceeds the device's free memory is in the model root"
)]
#[when(
    "a model whose KV cache at that context exceeds the device's free memory is in the model root"
)]
fn huge_model(w: &mut World) {
    let src = test_model("huge-kv").unwrap_or_else(|e| w.fail(e));
    place_in_root(&src, &w.model_root(), "huge-kv.gguf");
    w.that_model = Some("huge-kv.gguf".into());
}

// ---- the restart circuit breaker (WORKER-4963) ----

/// The breaker's state file of the configured worker, as the operations
/// guide documents it: `<state_dir>/restart-breaker-<worker_id>.json`.
fn breaker_file(w: &World) -> PathBuf {
    let dir = w.config.get("state_dir").and_then(Value::as_str);
    let id = w.config.get("worker_id").and_then(Value::as_str);
    match (dir, id) {
        (Some(d), Some(i)) => Path::new(d).join(format!("restart-breaker-{i}.json")),
        _ => w.fail("the configuration names no state_dir or worker_id"),
    }
}

#[when(
    regex = r"^the worker is started (\d+) times?, each exiting with code (\d+) within (\d+) seconds$"
)]
async fn started_n_times(w: &mut World, n: usize, code: i32, secs: u64) {
    for i in 1..=n {
        spawn(w).await;
        let got = wait_exit(w, secs).await;
        w.check(
            got == Some(code),
            format!("start {i} of {n}: expected exit code {code}, got {got:?}"),
        );
    }
}

#[given(regex = r#"^the restart breaker's state file holds "([^"]*)"$"#)]
fn breaker_file_holds(w: &mut World, text: String) {
    let p = breaker_file(w);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("create the state dir");
    }
    std::fs::write(&p, text).expect("write the breaker state file");
}

/// Starts recorded `age` seconds before now, in the documented format, so
/// that the five-minute window itself is exercised (the harness's own clock).
#[given(regex = r"^the restart breaker's state file records (\d+) starts? (\d+) seconds ago$")]
fn breaker_file_aged(w: &mut World, n: usize, age: u64) {
    write_aged_starts(w, &[(n, age)]);
}

#[given(
    regex = r"^the restart breaker's state file records (\d+) starts? (\d+) seconds ago and (\d+) starts? (\d+) seconds ago$"
)]
fn breaker_file_aged_two(w: &mut World, n: usize, age: u64, m: usize, age2: u64) {
    write_aged_starts(w, &[(n, age), (m, age2)]);
}

/// Write `count` starts `age_s` seconds old for each pair (a millisecond apart).
fn write_aged_starts(w: &mut World, groups: &[(usize, u64)]) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let starts: Vec<u64> = groups
        .iter()
        .flat_map(|&(count, age_s)| (0..count as u64).map(move |i| now_ms - age_s * 1000 - i))
        .collect();
    let id = w
        .config
        .get("worker_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let body = serde_json::json!({ "worker_id": id, "starts_unix_ms": starts }).to_string();
    breaker_file_holds(w, body);
}

#[then(regex = r"^the restart breaker's state file records (\d+) starts?$")]
fn breaker_records(w: &mut World, n: usize) {
    let p = breaker_file(w);
    let got = match std::fs::read_to_string(&p) {
        Err(_) => 0,
        Ok(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["starts_unix_ms"].as_array().map(Vec::len))
            .unwrap_or_else(|| {
                w.fail(format!(
                    "{} is not the documented JSON: {text}",
                    p.display()
                ))
            }),
    };
    w.check(
        got == n,
        format!(
            "expected {} to record {n} starts, it records {got}",
            p.display()
        ),
    );
}

/// The refusal is one `error` line with the documented exit code, the count
/// the harness itself made and the state file it configured; the refused
/// start never got as far as listening (no line carries `bind_addr`).
#[then(
    regex = r"^the last start's log narrates the restart circuit breaker tripping after (\d+) starts$"
)]
fn breaker_narrated(w: &mut World, n: u64) {
    let Some(log) = w.worker.as_ref().map(|x| x.log.clone()) else {
        w.fail("no worker was started")
    };
    let lines: Vec<serde_json::Map<String, Value>> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| crate::steps::logs::flat(&v))
        .collect();
    let file = breaker_file(w).display().to_string();
    let trip = lines.iter().find(|m| {
        m.get("level").and_then(Value::as_str) == Some("error")
            && m.get("exit_code").and_then(Value::as_u64) == Some(7)
    });
    let Some(trip) = trip else {
        let seen: Vec<String> = lines.iter().map(|m| format!("{m:?}")).take(20).collect();
        w.fail(format!(
            "expected an error line with exit_code 7 in the last start's log; it holds:\n{}",
            seen.join("\n")
        ))
    };
    let human = trip
        .get("human")
        .and_then(Value::as_str)
        .unwrap_or_default();
    w.check(
        trip.get("starts_in_window").and_then(Value::as_u64) == Some(n),
        format!(
            "expected starts_in_window {n}, the line says {:?}",
            trip.get("starts_in_window")
        ),
    );
    w.check(
        trip.get("breaker_state").and_then(Value::as_str) == Some(file.as_str())
            && human.contains(&file),
        format!("expected the line to name the state file {file}: {human:?}"),
    );
    w.check(
        human.contains(&format!("{n} times")) && human.contains("exit code 7"),
        format!("expected the narration to say \"{n} times\" and \"exit code 7\": {human:?}"),
    );
    w.check(
        !lines.iter().any(|m| m.contains_key("bind_addr")),
        "the refused start went on to listen; the breaker must stop it before anything else",
    );
}

#[then("a warning in the worker log names the restart breaker's state file")]
fn breaker_warned(w: &mut World) {
    let file = breaker_file(w).display().to_string();
    let ok = crate::steps::logs::json_lines(w).iter().any(|m| {
        m.get("level").and_then(Value::as_str) == Some("warn")
            && m.get("breaker_state").and_then(Value::as_str) == Some(file.as_str())
    });
    let warns: Vec<String> = crate::steps::logs::json_lines(w)
        .iter()
        .filter(|m| m.get("level").and_then(Value::as_str) == Some("warn"))
        .map(|m| format!("{m:?}"))
        .collect();
    w.check(
        ok,
        format!(
            "expected a warn line with breaker_state = {file}; the warn lines are:\n{}",
            warns.join("\n")
        ),
    );
}
