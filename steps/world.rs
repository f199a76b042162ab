//! The cucumber `World` of the BDD suite and the per-run context it shares
//! (issue 2). One `World` per scenario: a temporary folder with the worker's
//! config and token file, the spawned worker, the readiness-callback
//! receiver, and what the scenario saw (responses, streams, metrics).
//!
//! Failures go through [`World::fail`], which attaches the tail of the worker's
//! log, so that a red scenario always says what the worker said.

use crate::steps::callback::CallbackReceiver;
use crate::steps::process::Worker;
use crate::steps::proof::Bundle;
use crate::steps::sse::{BackgroundStream, Stream};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Everything fixed for the whole run, set up once by `run::main`.
pub struct RunCtx {
    /// The worker binary under test.
    pub bin: PathBuf,
    /// The repository checkout, when present (source-inspection scenarios need it).
    pub repo: Option<PathBuf>,
    /// Where this run keeps generated models and other shared scratch files.
    pub scratch: PathBuf,
    pub bundle: Bundle,
    /// `REQUIRE_REAL_GPU=1`: run on the cuda backend, @gpu scenarios mandatory.
    pub require_gpu: bool,
    /// The SmolLM2 file when installed.
    pub smollm2: Option<PathBuf>,
    /// Every token handed to a worker in this run: must never reach a log or a bundle.
    pub secrets: Mutex<BTreeSet<String>>,
    /// Every prompt sent in this run: must never reach a worker log (WORKER-4802).
    pub prompts: Mutex<BTreeSet<String>>,
    /// Log lines of any worker of the run that leaked a token or a prompt.
    pub leaks: Mutex<Vec<String>>,
    /// Seeds used by scenarios (recorded in run_config.json).
    pub seeds: Mutex<BTreeSet<u64>>,
    /// Model file name → SHA-256 of the file (recorded in run_config.json).
    pub model_digests: Mutex<BTreeMap<String, String>>,
    /// Generated models by name, generated once per run.
    pub models: Mutex<BTreeMap<String, Result<PathBuf, String>>>,
    /// `BDD_MUTANT`: the planted bug every child process is started with
    /// while `mutant_on` holds.
    pub mutant: Option<&'static str>,
    /// Cleared for the control run, which repeats the scenarios that failed
    /// under the mutant without it (a kill must be the mutant's doing).
    pub mutant_on: std::sync::atomic::AtomicBool,
    /// `BDD_SEED`: where the scenarios' random choices (flip offsets) come
    /// from; printed and recorded so that a failing run can be replayed.
    pub random_seed: u64,
}

/// A replayable random number for `what` in the scenario `scenario`: the
/// run's seed and both names, mixed (SplitMix64 over an FNV-1a hash).
pub fn replayable_random(scenario: &str, what: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scenario.bytes().chain([0]).chain(what.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut z = (ctx().random_seed ^ h).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Start a child of the worker binary under this run's mutant, if any (see `mutant`).
pub fn apply_mutant<C: ChildEnv>(cmd: &mut C) {
    let c = ctx();
    let on = c.mutant_on.load(std::sync::atomic::Ordering::SeqCst);
    if let Some(m) = c.mutant.filter(|_| on) {
        cmd.set_env(worker_orcd::env::WORKER_ORCD_MUTANT.name, m);
    }
}

/// The one thing `apply_mutant` needs of std's and tokio's `Command`.
pub trait ChildEnv {
    fn set_env(&mut self, k: &str, v: &str);
}

impl ChildEnv for std::process::Command {
    fn set_env(&mut self, k: &str, v: &str) {
        self.env(k, v);
    }
}

impl ChildEnv for tokio::process::Command {
    fn set_env(&mut self, k: &str, v: &str) {
        self.env(k, v);
    }
}

static CTX: OnceLock<RunCtx> = OnceLock::new();

/// The worker backend of a run: cuda exactly when REQUIRE_REAL_GPU=1.
pub fn backend_for(require_gpu: bool) -> &'static str {
    if require_gpu {
        "cuda"
    } else {
        "cpu"
    }
}

pub fn set_ctx(ctx: RunCtx) {
    if CTX.set(ctx).is_err() {
        panic!("the BDD run context was initialised twice");
    }
}

pub fn ctx() -> &'static RunCtx {
    CTX.get()
        .expect("the BDD run context is initialised by run::main before any step")
}

impl RunCtx {
    pub fn backend(&self) -> &'static str {
        backend_for(self.require_gpu)
    }

    pub fn repo_path(&self, rel: &str) -> PathBuf {
        match &self.repo {
            Some(r) => r.join(rel),
            None => panic!("this step needs the repository checkout (tag the scenario @source)"),
        }
    }
}

/// The last plain HTTP answer the scenario received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub text: String,
    pub json: Option<Value>,
}

#[derive(cucumber::World)]
#[world(init = Self::new)]
pub struct World {
    pub feature: String,
    pub scenario: String,
    pub dir: tempfile::TempDir,
    /// The worker's JSON configuration, written to `config.json` at start.
    pub config: Map<String, Value>,
    /// Extra environment for the worker (None removes the variable).
    pub env: Vec<(String, Option<String>)>,
    pub extra_args: Vec<String>,
    /// Pass `--allow-root` when running as root (false in the root-refusal scenario).
    pub root_override: bool,
    /// Run the worker as this uid/gid (through setpriv) instead of the harness's user.
    pub run_as: Option<u32>,
    pub token: String,
    pub token2: Option<String>,
    pub token_file: PathBuf,
    pub port: u16,
    pub worker: Option<Worker>,
    /// How the last start ended: None while running/ready, Some(code) when it exited.
    pub start_exit: Option<i32>,
    pub callback: Option<CallbackReceiver>,
    pub last: Option<Response>,
    /// Every response body seen, for the no-pointer scan.
    pub bodies: Vec<String>,
    pub streams: Vec<Stream>,
    /// What each `generate` run of the scenario printed (steps/cli.rs).
    pub generate_runs: Vec<crate::steps::cli::GenerateRun>,
    pub background: Option<BackgroundStream>,
    pub cancel: Option<crate::steps::sse::CancelRecord>,
    pub deploy: Option<crate::steps::apparmor::Deploy>,
    pub remembered: Option<Vec<String>>,
    pub metrics_before: Option<BTreeMap<String, f64>>,
    pub prompts: Vec<String>,
    /// The model a "that model" step refers to (model_ref relative to model_root).
    pub that_model: Option<String>,
    /// The model the worker serves (file name under model_root).
    pub model_name: String,
    pub http: reqwest::Client,
    /// Worker logs of earlier incarnations in this scenario (restarts).
    pub old_logs: Vec<PathBuf>,
    pub corr_echo: Option<String>,
    pub prev_json: Option<Value>,
    /// A second worker (CPU reference, or another GPU) for comparisons.
    pub other: Option<Box<World>>,
    /// Free MiB of a GPU recorded before a scenario's worker started.
    pub gpu_free_before: Option<u64>,
    /// A step ran a `worker-orcd` subcommand (behavioural evidence without a daemon).
    pub ran_cli: bool,
    /// Concurrent jobs of the batching scenarios, their solo reruns, the
    /// most jobs seen running at once, and a job started behind another.
    pub mixed: Vec<crate::steps::batching::MixedJob>,
    pub solo: Vec<crate::steps::sse::Stream>,
    pub most_running: Option<u64>,
    pub waiting_job: Option<crate::steps::sse::BackgroundStream>,
    pub waiting_done: Option<crate::steps::sse::Stream>,
    /// Hostile-connection scenarios: the worker's open-file limit, the
    /// sockets the client holds, memory noted before, a raw answer.
    pub nofile: Option<u64>,
    pub held: Vec<tokio::net::TcpStream>,
    pub rss_before: Option<u64>,
    pub raw_answer: Option<(String, std::time::Duration)>,
    /// Plans sent at once (steps/model_files.rs): model_ref, answer, when it came.
    pub plan_answers: Vec<crate::steps::model_files::PlanAnswer>,
    /// The worker log's size when a step noted it (steps/access_log.rs).
    pub log_bytes_before: Option<u64>,
    /// The numerics version /worker/ready reported (steps/numerics.rs).
    pub numerics_version: Option<String>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens: the Debug output can end up in reports.
        f.debug_struct("World")
            .field("scenario", &self.scenario)
            .field("port", &self.port)
            .field("worker_running", &self.worker.is_some())
            .field("start_exit", &self.start_exit)
            .finish()
    }
}

impl World {
    pub async fn new() -> Result<Self, std::convert::Infallible> {
        let dir = tempfile::Builder::new()
            .prefix("bdd-")
            .tempdir_in(&ctx().scratch)
            .expect("create a scenario temp dir");
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("build the HTTP client");
        let token = crate::steps::security::new_token();
        let token_file = dir.path().join("worker-token");
        Ok(Self {
            feature: String::new(),
            scenario: String::new(),
            dir,
            config: Map::new(),
            env: Vec::new(),
            extra_args: Vec::new(),
            root_override: true,
            run_as: None,
            token,
            token2: None,
            token_file,
            port: 0,
            worker: None,
            start_exit: None,
            callback: None,
            last: None,
            bodies: Vec::new(),
            streams: Vec::new(),
            generate_runs: Vec::new(),
            background: None,
            cancel: None,
            deploy: None,
            remembered: None,
            metrics_before: None,
            prompts: Vec::new(),
            that_model: None,
            model_name: String::new(),
            http,
            old_logs: Vec::new(),
            corr_echo: None,
            prev_json: None,
            other: None,
            gpu_free_before: None,
            ran_cli: false,
            mixed: Vec::new(),
            solo: Vec::new(),
            most_running: None,
            waiting_job: None,
            waiting_done: None,
            nofile: None,
            held: Vec::new(),
            rss_before: None,
            raw_answer: None,
            plan_answers: Vec::new(),
            log_bytes_before: None,
            numerics_version: None,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn model_root(&self) -> PathBuf {
        PathBuf::from(
            self.config
                .get("model_root")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
    }

    /// Everything the worker wrote so far (all incarnations of this scenario).
    pub fn log_text(&self) -> String {
        let mut out = String::new();
        for p in self
            .old_logs
            .iter()
            .chain(self.worker.as_ref().map(|w| &w.log))
        {
            out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        out
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        redact(&lines[start..].join("\n"))
    }

    /// Fail the step with `msg` and the tail of the worker's log.
    #[track_caller]
    pub fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!(
            "{}\n--- worker log (last 40 lines) ---\n{}\n--- end of worker log ---",
            msg.as_ref(),
            self.log_tail()
        )
    }

    #[track_caller]
    pub fn check(&self, cond: bool, msg: impl AsRef<str>) {
        if !cond {
            self.fail(msg)
        }
    }

    pub fn last(&self) -> &Response {
        match &self.last {
            Some(r) => r,
            None => self.fail("no HTTP response was recorded by an earlier step"),
        }
    }

    pub fn last_json(&self) -> &Value {
        match &self.last().json {
            Some(j) => j,
            None => self.fail(format!(
                "the last response was not JSON: {}",
                self.last().text
            )),
        }
    }

    /// Replace `{placeholders}` in request bodies written in feature files.
    pub async fn expand(&mut self, text: &str) -> String {
        let mut out = text.to_string();
        if out.contains("{tiny_model}") {
            out = out.replace("{tiny_model}", &self.model_name);
        }
        if out.contains("{tiny_file_digest}") {
            let d = file_sha256(&self.model_root().join(&self.model_name));
            out = out.replace("{tiny_file_digest}", &d);
        }
        if out.contains("{model_root}") {
            out = out.replace("{model_root}", &self.model_root().display().to_string());
        }
        if out.contains("{handle_id}") {
            let h = self.handle_id().await;
            out = out.replace("{handle_id}", &h);
        }
        if out.contains("{first_token_text}") {
            let t = crate::steps::sse::second_token_text(self).await;
            let quoted = serde_json::to_string(&t).expect("string to JSON");
            out = out.replace("\"{first_token_text}\"", &quoted);
        }
        out
    }

    /// The shard id of the first sealed handle, read from /worker/ready.
    pub async fn handle_id(&mut self) -> String {
        let resp = crate::steps::http::send(
            self,
            "GET",
            "/worker/ready",
            None,
            crate::steps::http::Auth::Token,
        )
        .await;
        match resp
            .json
            .as_ref()
            .and_then(|j| j.pointer("/handles/0/shard_id"))
            .and_then(Value::as_str)
        {
            Some(s) => s.to_string(),
            None => self.fail(format!(
                "GET /worker/ready has no /handles/0/shard_id: {} {}",
                resp.status, resp.text
            )),
        }
    }

    pub fn stream(&self) -> &Stream {
        match self.streams.last() {
            Some(s) => s,
            None => self.fail("no execute stream was recorded by an earlier step"),
        }
    }
}

/// Hide every token of this run in text that may be printed or stored.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(c) = CTX.get() {
        for s in c.secrets.lock().expect("secrets lock").iter() {
            out = out.replace(s.as_str(), "[REDACTED-TOKEN]");
        }
    }
    out
}

pub fn file_sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// A file-name-safe form of a feature or scenario name.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').chars().take(80).collect()
}
