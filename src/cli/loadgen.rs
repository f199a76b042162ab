//! `worker-orcd loadgen`: load on a running worker daemon over HTTP + SSE
//! (issue 11 point 7, end to end). For each `--concurrency` level N it keeps
//! N Execute requests in flight until `--requests-per-level` (default N) have
//! been sent, reads each `text/event-stream` answer (`started`, `token`
//! {t, i}, `metrics`, `end`, `error`; `http::execute`) and prints the same
//! figures as `bench --concurrency` (`cli::bench_sweep`), plus how many
//! requests were refused (429 WORKER_BUSY) or failed, by error code. Writes
//! CSV and JSON. Measurements only: nothing here asserts a speed.
//!
//! Definitions (as in `cli::bench_sweep`, measured at the client):
//! - TTFT: from sending a request (its first attempt, when retried) to its
//!   first `token` event.
//! - ITL: every gap between consecutive `token` events of one stream.
//! - Decode tokens/s: token events after each stream's first one, divided by
//!   the time from the level's earliest first token to its last token event.
//! - Worker-timed decode tokens/s: the streams' `tokens_out` over their
//!   `decode_time_ms` (the `end` event), summed; the engine's own speed per
//!   stream, which the client's read timing cannot inflate (a single stream
//!   whose first tokens arrive late and the rest in a burst looks faster at
//!   the client than it ran).
//! - Max streams: most streams open at once (answered 200, not yet ended).
//! - Wall time: from the level's first send until its last request is done.
//!
//! An event is timed when the chunk of the stream that completes it is read,
//! so events that arrive in one chunk share an instant (a gap of 0 ms).
//!
//! A refused request is reported, not retried, unless `--retry K` allows up
//! to K more attempts (at most [`MAX_RETRIES`]) after the server's
//! `retry_after_ms` (capped at [`MAX_RETRY_WAIT_MS`]). No new dependency:
//! the SSE lines are parsed here ([`SseParser`]).

use super::bench_sweep::{cell, csv_cell, nearest_rank, parse_levels};
use super::generate::exit_code_for;
use super::loadgen_plans::{PlanLoad, PlanStorm, MAX_PLAN_CLIENTS};
use crate::error::{Result, WorkerError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most extra attempts `--retry` allows for a refused request.
pub const MAX_RETRIES: u32 = 10;
/// Longest wait before a retry, whatever the server suggests.
pub const MAX_RETRY_WAIT_MS: u64 = 5_000;
/// Most requests one level may send.
pub const MAX_REQUESTS: usize = 100_000;
/// Longest synthetic prompt, in words.
pub const MAX_PROMPT_WORDS: usize = 100_000;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The worker's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// File holding the bearer token (the worker's api_token_file).
    #[arg(long)]
    pub token_file: PathBuf,
    /// Shard id to execute against (handle_id); read from GET /worker/ready when omitted.
    #[arg(long)]
    pub handle: Option<String>,
    /// Comma-separated levels of requests in flight at once, e.g. 1,8,32,64.
    #[arg(long)]
    pub concurrency: String,
    /// Requests sent per level (default: the level itself, all at once).
    #[arg(long)]
    pub requests_per_level: Option<usize>,
    /// Prompt text sent with every request.
    #[arg(long, conflicts_with = "prompt_words")]
    pub prompt: Option<String>,
    /// Synthetic prompt of this many words, different for every request (default 32).
    #[arg(long)]
    pub prompt_words: Option<usize>,
    /// Tokens each request asks for (params.max_tokens).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Seed of the first request; request k uses seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Extra attempts for a request refused with 429 WORKER_BUSY (0 = report, do not retry).
    #[arg(long, default_value_t = 0)]
    pub retry: u32,
    /// Seconds one request may take, stream included.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Run each level twice, alone and beside N clients that send Plan
    /// requests in a loop, and report both decode rates (what Plans cost a job).
    #[arg(long, default_value_t = 0)]
    pub plans_during: usize,
    /// The model_ref those Plans name (default: the served model's, from GET /worker/ready).
    #[arg(long)]
    pub plan_model: Option<String>,
    /// Each Plan client's period in ms: its Plans start this far apart, so the
    /// clients send bursts of N concurrent Plans (0: as fast as answered).
    #[arg(long, default_value_t = 0)]
    pub plan_interval_ms: u64,
    /// Where the CSV and JSON files go.
    #[arg(long, default_value = "bench-results")]
    pub out_dir: PathBuf,
}

pub fn run(args: LoadgenArgs) -> ExitCode {
    match loadgen(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error [{}]: {}", e.code(), e.message());
            exit_code_for(&e)
        }
    }
}

/// The checked form of the arguments.
#[derive(Debug, Clone)]
struct Plan {
    base: String,
    token: String,
    levels: Vec<usize>,
    requests: Option<usize>,
    prompt: PromptSource,
    max_tokens: u32,
    seed: u64,
    retry: u32,
    timeout: Duration,
    plans_during: usize,
    plan_model: Option<String>,
    plan_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
enum PromptSource {
    Text(String),
    Words(usize),
}

impl PromptSource {
    /// The prompt of request `k`: the given text, or `n` words that start at
    /// a different place of a fixed list for every request.
    fn for_request(&self, k: usize) -> String {
        const WORDS: [&str; 16] = [
            "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
            "blue", "birds", "sing", "about", "rivers",
        ];
        match self {
            Self::Text(t) => t.clone(),
            Self::Words(n) => (0..*n)
                .map(|i| WORDS[(i * 5 + k * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn check_args(a: &LoadgenArgs, token: String) -> Result<Plan> {
    let base = a.url.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(WorkerError::invalid(format!(
            "--url `{}` must start with http:// or https://",
            a.url
        )));
    }
    if token.is_empty() {
        return Err(WorkerError::invalid(format!(
            "the token file {} is empty",
            a.token_file.display()
        )));
    }
    let levels = parse_levels(&a.concurrency)?;
    if let Some(r) = a.requests_per_level {
        if !(1..=MAX_REQUESTS).contains(&r) {
            return Err(WorkerError::invalid(format!(
                "--requests-per-level must be from 1 to {MAX_REQUESTS}, got {r}"
            )));
        }
    }
    let prompt = match (&a.prompt, a.prompt_words) {
        (Some(_), Some(_)) => {
            return Err(WorkerError::invalid(
                "give either --prompt or --prompt-words, not both",
            ))
        }
        (Some(t), None) if t.is_empty() => {
            return Err(WorkerError::invalid("--prompt must not be empty"))
        }
        (Some(t), None) => PromptSource::Text(t.clone()),
        (None, Some(n)) if !(1..=MAX_PROMPT_WORDS).contains(&n) => {
            return Err(WorkerError::invalid(format!(
                "--prompt-words must be from 1 to {MAX_PROMPT_WORDS}, got {n}"
            )))
        }
        (None, n) => PromptSource::Words(n.unwrap_or(32)),
    };
    if a.max_tokens == 0 {
        return Err(WorkerError::invalid("--max-tokens must be at least 1"));
    }
    if a.retry > MAX_RETRIES {
        return Err(WorkerError::invalid(format!(
            "--retry must be at most {MAX_RETRIES}, got {}",
            a.retry
        )));
    }
    if a.timeout_s == 0 {
        return Err(WorkerError::invalid("--timeout-s must be at least 1"));
    }
    if a.plans_during > MAX_PLAN_CLIENTS {
        return Err(WorkerError::invalid(format!(
            "--plans-during must be at most {MAX_PLAN_CLIENTS}, got {}",
            a.plans_during
        )));
    }
    Ok(Plan {
        base,
        token,
        levels,
        requests: a.requests_per_level,
        prompt,
        max_tokens: a.max_tokens,
        seed: a.seed,
        retry: a.retry,
        timeout: Duration::from_secs(a.timeout_s),
        plans_during: a.plans_during,
        plan_model: a.plan_model.clone(),
        plan_interval: Duration::from_millis(a.plan_interval_ms),
    })
}

fn read_token(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            WorkerError::invalid(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })
}

fn loadgen(a: &LoadgenArgs) -> Result<()> {
    let plan = check_args(a, read_token(&a.token_file)?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::internal(format!("cannot start the async runtime: {e}")))?;
    let report = rt.block_on(drive(&plan, a.handle.clone()))?;
    print_table(&report);
    write_files(&a.out_dir, &report)
}

/// A network or protocol failure, in words.
fn net(what: &str, e: impl std::fmt::Display) -> WorkerError {
    WorkerError::internal(format!("{what}: {e}"))
}

async fn drive(plan: &Plan, handle: Option<String>) -> Result<LoadReport> {
    let client = reqwest::Client::builder()
        .timeout(plan.timeout)
        .build()
        .map_err(|e| net("cannot build the HTTP client", e))?;
    let ready = ready_handle(&client, plan).await;
    let (handle, served_ref) = match (handle, ready) {
        (Some(h), ready) => (h, ready.ok().map(|r| r.1)),
        (None, ready) => {
            let (h, r) = ready?;
            (h, Some(r))
        }
    };
    let plan_model = plan.plan_model.clone().or(served_ref);
    let mut levels = Vec::with_capacity(plan.levels.len());
    for &n in &plan.levels {
        let requests = plan.requests.unwrap_or(n);
        let records = run_level(&client, plan, &handle, n, requests).await;
        levels.push(summarize(
            n,
            &records.records,
            records.wall,
            records.max_streams,
        ));
        if plan.plans_during == 0 {
            continue;
        }
        let Some(model_ref) = plan_model.as_deref() else {
            return Err(WorkerError::invalid(
                "--plans-during needs --plan-model: the worker did not say which model it serves",
            ));
        };
        let storm = PlanStorm::start(
            &client,
            &plan.base,
            &plan.token,
            model_ref,
            plan.plans_during,
            plan.plan_interval,
        );
        let records = run_level(&client, plan, &handle, n, requests).await;
        let mut level = summarize(n, &records.records, records.wall, records.max_streams);
        level.plans = Some(storm.stop().await);
        levels.push(level);
    }
    Ok(LoadReport {
        url: plan.base.clone(),
        handle,
        max_tokens: plan.max_tokens,
        prompt: match &plan.prompt {
            PromptSource::Text(_) => "text".into(),
            PromptSource::Words(n) => format!("{n} synthetic words"),
        },
        levels,
    })
}

/// The first sealed handle's shard id and model_ref from GET /worker/ready.
async fn ready_handle(client: &reqwest::Client, plan: &Plan) -> Result<(String, String)> {
    let url = format!("{}/worker/ready", plan.base);
    let resp = client
        .get(&url)
        .bearer_auth(&plan.token)
        .send()
        .await
        .map_err(|e| net(&format!("cannot reach {url}"), e))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| net(&format!("cannot read the answer of {url}"), e))?;
    if !status.is_success() {
        return Err(WorkerError::internal(format!(
            "{url} answered {status}: {text}"
        )));
    }
    let body: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| net(&format!("{url} did not answer JSON"), e))?;
    let h = &body["handles"][0];
    h["shard_id"]
        .as_str()
        .zip(h["model_ref"].as_str())
        .map(|(s, m)| (s.to_string(), m.to_string()))
        .ok_or_else(|| {
            WorkerError::invalid(
                "the worker reports no sealed handle: commit a model first, or pass --handle",
            )
        })
}

/// One server-sent event: its `event:` name and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// A minimal `text/event-stream` reader: bytes in (split anywhere), whole
/// events out. Understands `event:`, `data:` (several lines joined with
/// `\n`), comments (`:` lines, the keep-alives) and LF or CRLF line ends;
/// other fields (`id:`, `retry:`) are ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Option<String>,
}

impl SseParser {
    /// Take the next bytes of the stream; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            if let Some(ev) = self.line_done(&line) {
                out.push(ev);
            }
        }
        out
    }

    /// One complete line; a blank line ends the event being built.
    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = std::mem::take(&mut self.event);
            return data.map(|data| SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = value.to_string(),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The stream ended with `end`.
    Done,
    /// Every attempt was answered 429 WORKER_BUSY.
    Refused,
    /// An error answer, an `error` event, or a broken stream: its code.
    Failed(String),
}

/// What one request saw.
#[derive(Debug, Clone)]
pub struct Record {
    pub sent: Instant,
    /// When each `token` event arrived.
    pub tokens: Vec<Instant>,
    pub outcome: Outcome,
    /// The worker's own count and timing of the decode, from the `end`
    /// event: (tokens_out, decode_time_ms).
    pub worker_decode: Option<(u64, u64)>,
}

struct LevelRecords {
    records: Vec<Record>,
    wall: Duration,
    max_streams: usize,
}

/// Streams open now and the most seen at once.
#[derive(Default)]
struct Gauge {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keep `n` requests in flight until `requests` have been sent.
async fn run_level(
    client: &reqwest::Client,
    plan: &Plan,
    handle: &str,
    n: usize,
    requests: usize,
) -> LevelRecords {
    let next = Arc::new(AtomicUsize::new(0));
    let gauge = Arc::new(Gauge::default());
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n.min(requests) {
        let (client, plan, handle) = (client.clone(), plan.clone(), handle.to_string());
        let (next, gauge) = (next.clone(), gauge.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= requests {
                    return mine;
                }
                mine.push(one_request(&client, &plan, &handle, k, &gauge).await);
            }
        }));
    }
    let mut records = Vec::with_capacity(requests);
    for t in tasks {
        match t.await {
            Ok(mine) => records.extend(mine),
            Err(e) => records.push(Record {
                sent: t0,
                tokens: Vec::new(),
                outcome: Outcome::Failed(format!("CLIENT_TASK_FAILED: {e}")),
                worker_decode: None,
            }),
        }
    }
    LevelRecords {
        records,
        wall: t0.elapsed(),
        max_streams: gauge.max.load(Ordering::SeqCst),
    }
}

/// The Execute body of request `k`.
fn execute_body(plan: &Plan, handle: &str, k: usize) -> serde_json::Value {
    serde_json::json!({
        "handle_id": handle,
        "prompt": plan.prompt.for_request(k),
        "params": {"max_tokens": plan.max_tokens, "seed": plan.seed.wrapping_add(k as u64)},
    })
}

/// Send request `k` (again after a refusal, as `--retry` allows) and read its stream.
async fn one_request(
    client: &reqwest::Client,
    plan: &Plan,
    handle: &str,
    k: usize,
    gauge: &Gauge,
) -> Record {
    let sent = Instant::now();
    let body = execute_body(plan, handle, k);
    let url = format!("{}/worker/execute", plan.base);
    let mut attempt = 0;
    loop {
        let resp = client
            .post(&url)
            .bearer_auth(&plan.token)
            .json(&body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return failed(sent, connect_code(&e)),
        };
        if resp.status().is_success() {
            gauge.opened();
            let r = read_stream(resp, sent).await;
            gauge.closed();
            return r;
        }
        let status = resp.status().as_u16();
        let err: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = err["code"].as_str().unwrap_or("").to_string();
        if status != 429 || code != "WORKER_BUSY" {
            let code = if code.is_empty() {
                format!("HTTP_{status}")
            } else {
                code
            };
            return failed(sent, code);
        }
        if attempt >= plan.retry {
            return Record {
                sent,
                tokens: Vec::new(),
                outcome: Outcome::Refused,
                worker_decode: None,
            };
        }
        attempt += 1;
        let wait = err["retry_after_ms"].as_u64().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(wait.min(MAX_RETRY_WAIT_MS))).await;
    }
}

/// A failed send's code: a timeout or a connection that could not be made.
pub(super) fn connect_code(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "TIMEOUT".into()
    } else {
        "CONNECT_FAILED".into()
    }
}

fn failed(sent: Instant, code: String) -> Record {
    Record {
        sent,
        tokens: Vec::new(),
        outcome: Outcome::Failed(code),
        worker_decode: None,
    }
}

/// Read an accepted request's event stream to its `end` or `error`.
async fn read_stream(resp: reqwest::Response, sent: Instant) -> Record {
    use futures::StreamExt;
    let mut parser = SseParser::default();
    let mut tokens = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) => return broken(sent, tokens, "STREAM_BROKEN".into()),
        };
        let now = Instant::now();
        for ev in parser.push(&chunk) {
            match ev.event.as_str() {
                "token" => tokens.push(now),
                "end" => {
                    return Record {
                        sent,
                        tokens,
                        outcome: Outcome::Done,
                        worker_decode: worker_decode(&ev.data),
                    }
                }
                "error" => return broken(sent, tokens, error_code(&ev.data)),
                _ => {}
            }
        }
    }
    broken(sent, tokens, "STREAM_ENDED_EARLY".into())
}

fn broken(sent: Instant, tokens: Vec<Instant>, code: String) -> Record {
    Record {
        sent,
        tokens,
        outcome: Outcome::Failed(code),
        worker_decode: None,
    }
}

/// (tokens_out, decode_time_ms) of an `end` event's body, when both are there.
pub fn worker_decode(data: &str) -> Option<(u64, u64)> {
    let v = serde_json::from_str::<serde_json::Value>(data).ok()?;
    Some((v["tokens_out"].as_u64()?, v["decode_time_ms"].as_u64()?))
}

/// The `code` of an `error` event's body.
fn error_code(data: &str) -> String {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "UNREADABLE_ERROR_EVENT".into())
}

/// One level's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadLevel {
    pub concurrency: usize,
    pub requests: usize,
    pub completed: usize,
    pub refused: usize,
    pub failed: usize,
    /// Failures by error code.
    pub failed_by_code: BTreeMap<String, usize>,
    pub max_streams: usize,
    pub tokens: usize,
    pub wall_s: f64,
    pub decode_tok_s: f64,
    /// Per-stream decode tokens/s as the worker timed it: the completed
    /// streams' tokens_out over their decode_time_ms, summed (None when no
    /// `end` event carried both).
    pub worker_decode_tok_s: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    /// The Plans sent while this level ran (`--plans-during`), if any.
    pub plans: Option<PlanLoad>,
}

/// The level's figures from its requests' records (definitions in the header).
pub fn summarize(n: usize, records: &[Record], wall: Duration, max_streams: usize) -> LoadLevel {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ttft: Vec<f64> = records
        .iter()
        .filter_map(|r| {
            r.tokens
                .first()
                .map(|f| ms(f.saturating_duration_since(r.sent)))
        })
        .collect();
    let itl: Vec<f64> = records
        .iter()
        .flat_map(|r| {
            r.tokens
                .windows(2)
                .map(|w| ms(w[1].saturating_duration_since(w[0])))
        })
        .collect();
    let first = records.iter().filter_map(|r| r.tokens.first()).min();
    let last = records.iter().filter_map(|r| r.tokens.last()).max();
    let decode_tokens: usize = records
        .iter()
        .map(|r| r.tokens.len().saturating_sub(1))
        .sum();
    let phase = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let mut failed_by_code = BTreeMap::new();
    for r in records {
        if let Outcome::Failed(code) = &r.outcome {
            *failed_by_code.entry(code.clone()).or_insert(0) += 1;
        }
    }
    let count = |o: &Outcome| records.iter().filter(|r| &r.outcome == o).count();
    LoadLevel {
        concurrency: n,
        requests: records.len(),
        completed: count(&Outcome::Done),
        refused: count(&Outcome::Refused),
        failed: failed_by_code.values().sum(),
        failed_by_code,
        max_streams,
        tokens: records.iter().map(|r| r.tokens.len()).sum(),
        wall_s: wall.as_secs_f64(),
        decode_tok_s: if phase > 0.0 {
            decode_tokens as f64 / phase
        } else {
            0.0
        },
        worker_decode_tok_s: worker_rate(records),
        ttft_p50_ms: nearest_rank(&ttft, 50.0),
        ttft_p99_ms: nearest_rank(&ttft, 99.0),
        itl_p50_ms: nearest_rank(&itl, 50.0),
        itl_p99_ms: nearest_rank(&itl, 99.0),
        plans: None,
    }
}

/// Σ tokens_out / Σ decode_time of the records whose `end` event carried
/// both: a stream's speed as the worker measured it, free of how the
/// client's reads of the stream were timed.
fn worker_rate(records: &[Record]) -> Option<f64> {
    let (tokens, ms) = records
        .iter()
        .filter_map(|r| r.worker_decode)
        .fold((0u64, 0u64), |(t, m), (rt, rm)| (t + rt, m + rm));
    (ms > 0).then(|| tokens as f64 * 1e3 / ms as f64)
}

/// Everything the JSON file holds.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub handle: String,
    pub max_tokens: u32,
    pub prompt: String,
    pub levels: Vec<LoadLevel>,
}

fn print_table(r: &LoadReport) {
    println!(
        "loadgen against {} (handle {}), max_tokens {}, prompt: {}",
        r.url, r.handle, r.max_tokens, r.prompt
    );
    println!(
        "{:>6} {:>5} {:>5} {:>7} {:>6} {:>11} {:>7} {:>9} {:>13} {:>12} {:>12} {:>11} {:>11}",
        "level",
        "reqs",
        "ok",
        "refused",
        "failed",
        "max streams",
        "tokens",
        "wall s",
        "decode tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms"
    );
    for l in &r.levels {
        println!(
            "{:>6} {:>5} {:>5} {:>7} {:>6} {:>11} {:>7} {:>9.3} {:>13.1} {:>12} {:>12} {:>11} {:>11}",
            l.concurrency,
            l.requests,
            l.completed,
            l.refused,
            l.failed,
            l.max_streams,
            l.tokens,
            l.wall_s,
            l.decode_tok_s,
            cell(l.ttft_p50_ms, 2),
            cell(l.ttft_p99_ms, 2),
            cell(l.itl_p50_ms, 3),
            cell(l.itl_p99_ms, 3)
        );
        for (code, k) in &l.failed_by_code {
            println!("{:>6} failed with {code}: {k}", "");
        }
        if let Some(p) = &l.plans {
            print_plans(r, l, p);
        }
    }
}

/// The line under a level run beside Plans: the Plans' answers and the
/// decode rate relative to the same level run alone just before.
fn print_plans(r: &LoadReport, l: &LoadLevel, p: &PlanLoad) {
    let alone = r
        .levels
        .iter()
        .find(|a| a.concurrency == l.concurrency && a.plans.is_none());
    let ratio = alone
        .filter(|a| a.decode_tok_s > 0.0)
        .map_or("-".to_string(), |a| {
            format!("{:.3}x", l.decode_tok_s / a.decode_tok_s)
        });
    let worker_ratio = match (
        alone.and_then(|a| a.worker_decode_tok_s),
        l.worker_decode_tok_s,
    ) {
        (Some(a), Some(b)) if a > 0.0 => format!("{b:.1} tok/s = {:.3}x", b / a),
        _ => "-".to_string(),
    };
    println!(
        "{:>6} beside {} Plan clients (period {} ms, 0 = closed loop): {} Plans answered 200 (p50 {} ms, p99 {} ms), refused {:?}; \
         decode {:.1} tok/s = {ratio} of the level alone (as the worker timed it: {worker_ratio})",
        "",
        p.clients,
        p.interval_ms,
        p.answered,
        cell(p.p50_ms, 2),
        cell(p.p99_ms, 2),
        p.refused_by,
        l.decode_tok_s
    );
}

fn write_files(dir: &std::path::Path, r: &LoadReport) -> Result<()> {
    let io = |e: std::io::Error| {
        WorkerError::internal(format!("could not write results to {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_string_pretty(r).map_err(|e| WorkerError::internal(e.to_string()))?;
    std::fs::write(dir.join("loadgen.json"), json + "\n").map_err(io)?;
    std::fs::write(dir.join("loadgen.csv"), csv(r)).map_err(io)?;
    eprintln!("wrote {0}/loadgen.csv and {0}/loadgen.json", dir.display());
    Ok(())
}

/// One row per level; failures by code as `CODE=k` joined with `;`.
fn csv(r: &LoadReport) -> String {
    let mut s = String::from(
        "url,handle,max_tokens,concurrency,requests,completed,refused,failed,failed_by_code,\
         max_streams,tokens,wall_s,decode_tok_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,\
         plan_clients,plans_answered,plans_refused,plan_p50_ms,worker_decode_tok_s\n",
    );
    for l in &r.levels {
        let codes: Vec<String> = l
            .failed_by_code
            .iter()
            .map(|(c, k)| format!("{c}={k}"))
            .collect();
        s += &format!(
            "{},\"{}\",{},{},{},{},{},{},\"{}\",{},{},{:.4},{:.2},{},{},{},{},{},{},{},{},{}\n",
            r.url,
            r.handle.replace('"', "'"),
            r.max_tokens,
            l.concurrency,
            l.requests,
            l.completed,
            l.refused,
            l.failed,
            codes.join(";").replace('"', "'"),
            l.max_streams,
            l.tokens,
            l.wall_s,
            l.decode_tok_s,
            csv_cell(l.ttft_p50_ms),
            csv_cell(l.ttft_p99_ms),
            csv_cell(l.itl_p50_ms),
            csv_cell(l.itl_p99_ms),
            l.plans.as_ref().map_or(0, |p| p.clients),
            l.plans.as_ref().map_or(0, |p| p.answered),
            l.plans
                .as_ref()
                .map_or(0, |p| p.refused_by.values().sum::<usize>()),
            csv_cell(l.plans.as_ref().and_then(|p| p.p50_ms)),
            csv_cell(l.worker_decode_tok_s)
        );
    }
    s
}

#[cfg(test)]
#[path = "loadgen_tests.rs"]
mod tests;
