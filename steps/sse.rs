//! Execute and its Server-Sent Events stream (WORKER-4240-4253, 4252,
//! SCHEDULER-M0-*). Every stream a scenario reads is appended to the proof
//! bundle as `sse_transcripts/<feature>__<scenario>.ndjson` (PB-BDD).

use crate::steps::http::{self, Auth};
use crate::steps::world::{ctx, Response, World};
use cucumber::gherkin::Step;
use cucumber::{then, when};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Ev {
    pub name: String,
    pub data: String,
    pub at: Instant,
}

impl Ev {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// One execute call: the HTTP answer and, when it streamed, its events.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pub status: u16,
    pub content_type: String,
    pub job_header: Option<String>,
    pub events: Vec<Ev>,
    /// The stream reached its end (server closed it) rather than a client timeout/abort.
    pub closed: bool,
    pub transport_error: Option<String>,
}

impl Stream {
    pub fn tokens(&self) -> Vec<&Ev> {
        self.events.iter().filter(|e| e.name == "token").collect()
    }
    /// The concatenated `t` of every token event: what determinism compares.
    pub fn token_texts(&self) -> Vec<String> {
        self.tokens()
            .iter()
            .map(|e| e.json()["t"].as_str().unwrap_or_default().to_string())
            .collect()
    }
    pub fn terminal(&self) -> Option<(usize, &Ev)> {
        self.events
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == "end" || e.name == "error")
    }
}

/// A stream read by a background task while the scenario does other things.
pub struct BackgroundStream {
    pub shared: Arc<Mutex<Stream>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Remember a prompt for the end-of-run log scan. Very short prompts are
/// left out: a word like "Hello" can appear in a log for other reasons.
fn register_prompt(w: &mut World, prompt: &str) {
    w.prompts.push(prompt.to_string());
    if prompt.len() >= 8 {
        ctx()
            .prompts
            .lock()
            .expect("prompts lock")
            .insert(prompt.to_string());
    }
}

pub fn exec_body(handle: &str, prompt: &str, params: Value) -> String {
    json!({"handle_id": handle, "prompt": prompt, "params": params}).to_string()
}

/// Read an execute response into `shared` until the server closes it.
pub(crate) async fn pump(resp: reqwest::Response, shared: Arc<Mutex<Stream>>) {
    let mut events = resp.bytes_stream().eventsource();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), events.next()).await;
        match next {
            Ok(Some(Ok(e))) => {
                let ev = Ev {
                    name: if e.event.is_empty() {
                        "message".into()
                    } else {
                        e.event
                    },
                    data: e.data,
                    at: Instant::now(),
                };
                shared.lock().expect("stream lock").events.push(ev);
            }
            Ok(Some(Err(e))) => {
                shared.lock().expect("stream lock").transport_error = Some(e.to_string());
                return;
            }
            Ok(None) => {
                shared.lock().expect("stream lock").closed = true;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Start an execute call. Non-streaming answers land in `w.last` as well.
async fn open(
    w: &mut World,
    body: String,
    auth: Auth,
) -> (Arc<Mutex<Stream>>, Option<reqwest::Response>) {
    let url = format!("{}/worker/execute", w.base_url());
    let mut req = w
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(body);
    match auth {
        Auth::Token => req = req.bearer_auth(&w.token),
        Auth::Second => req = req.bearer_auth(w.token2.clone().unwrap_or_default()),
        Auth::Wrong => req = req.bearer_auth("wrong-token"),
        Auth::None => {}
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => w.fail(format!("POST /worker/execute got no answer: {e}")),
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let job_header = resp
        .headers()
        .get("x-job-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let shared = Arc::new(Mutex::new(Stream {
        status,
        content_type: content_type.clone(),
        job_header,
        ..Stream::default()
    }));
    if status == 200 && content_type.starts_with("text/event-stream") {
        w.last = Some(Response {
            status,
            headers: Default::default(),
            text: String::new(),
            json: None,
        });
        (shared, Some(resp))
    } else {
        let text = resp.text().await.unwrap_or_default();
        w.bodies.push(text.clone());
        let json = serde_json::from_str(&text).ok();
        w.last = Some(Response {
            status,
            headers: Default::default(),
            text,
            json,
        });
        shared.lock().expect("stream lock").closed = true;
        (shared, None)
    }
}

/// Run one execute call to completion and record it.
pub async fn execute(w: &mut World, prompt: &str, params: Value) -> Stream {
    if let Some(seed) = params.get("seed").and_then(Value::as_u64) {
        ctx().seeds.lock().expect("seeds lock").insert(seed);
    }
    register_prompt(w, prompt);
    let handle = w.handle_id().await;
    let (shared, resp) = open(w, exec_body(&handle, prompt, params), Auth::Token).await;
    if let Some(resp) = resp {
        pump(resp, shared.clone()).await;
    }
    let s = shared.lock().expect("stream lock").clone();
    finish_record(w, s.clone());
    s
}

fn finish_record(w: &mut World, s: Stream) {
    for e in &s.events {
        w.bodies.push(e.data.clone());
    }
    crate::steps::proof::append_transcript(&w.feature, &w.scenario, w.streams.len(), &s);
    w.streams.push(s);
}

pub fn greedy(max_tokens: u64) -> Value {
    json!({"max_tokens": max_tokens, "temperature": 0, "seed": 1})
}

/// The text of the second token of a greedy run of "Hello" (for stop sequences).
pub async fn second_token_text(w: &mut World) -> String {
    let s = execute(w, "Hello", greedy(8)).await;
    let texts = s.token_texts();
    match texts.get(1).filter(|t| !t.is_empty()) {
        Some(t) => t.clone(),
        None => w.fail(format!(
            "a greedy run gave no usable second token: {texts:?}"
        )),
    }
}

#[when(regex = r#"^I execute "([^"]*)" with max_tokens (\d+)$"#)]
#[then(regex = r#"^I execute "([^"]*)" with max_tokens (\d+)$"#)]
async fn exec_simple(w: &mut World, prompt: String, max: u64) {
    execute(w, &prompt, greedy(max)).await;
}

#[when(
    regex = r#"^I execute "([^"]*)" with seed (\d+), temperature ([0-9.]+) and max_tokens (\d+)$"#
)]
async fn exec_seeded(w: &mut World, prompt: String, seed: u64, temp: f64, max: u64) {
    execute(
        w,
        &prompt,
        json!({"max_tokens": max, "temperature": temp, "seed": seed}),
    )
    .await;
}

#[when(regex = r#"^I execute a prompt of (\d+) characters$"#)]
async fn exec_len(w: &mut World, n: usize) {
    let prompt: String = "abcdefghij ".chars().cycle().take(n).collect();
    execute(w, &prompt, greedy(4)).await;
}

/// Two UTF-8 bytes per character, so a limit counted in bytes would refuse it.
#[when(regex = r#"^I execute a prompt of (\d+) two-byte characters$"#)]
async fn exec_len_2byte(w: &mut World, n: usize) {
    let prompt: String = "é".repeat(n);
    execute(w, &prompt, greedy(2)).await;
}

#[when("I execute with params:")]
async fn exec_params(w: &mut World, step: &Step) {
    let raw = step
        .docstring
        .clone()
        .unwrap_or_else(|| w.fail("this step needs a docstring"));
    let expanded = w.expand(raw.trim()).await;
    let v: Value = serde_json::from_str(&expanded)
        .unwrap_or_else(|e| w.fail(format!("bad JSON in the feature: {e}")));
    let prompt = v["prompt"].as_str().unwrap_or("Hello").to_string();
    execute(w, &prompt, v["params"].clone()).await;
}

#[when(regex = r#"^I start executing "([^"]*)" with max_tokens (\d+)$"#)]
async fn start_exec(w: &mut World, prompt: String, max: u64) {
    register_prompt(w, &prompt);
    let handle = w.handle_id().await;
    let (shared, resp) = open(w, exec_body(&handle, &prompt, greedy(max)), Auth::Token).await;
    let Some(resp) = resp else {
        let r = w.last().clone();
        w.fail(format!(
            "the execute call was refused: HTTP {} {}",
            r.status, r.text
        ))
    };
    let task = tokio::spawn(pump(resp, shared.clone()));
    // Wait for `started` so that the job surely holds the slot.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if !shared.lock().expect("stream lock").events.is_empty() {
            break;
        }
        if Instant::now() > until || task.is_finished() {
            w.fail("the stream sent no event within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.background = Some(BackgroundStream { shared, task });
}

fn job_id(w: &World) -> String {
    let Some(bg) = &w.background else {
        w.fail("no job was started in the background")
    };
    let s = bg.shared.lock().expect("stream lock");
    let from_event = s
        .events
        .iter()
        .find(|e| e.name == "started")
        .and_then(|e| e.json()["job_id"].as_str().map(str::to_string));
    match from_event.or_else(|| s.job_header.clone()) {
        Some(j) => j,
        None => w.fail("the started event carried no job_id"),
    }
}

/// What the client saw around a cancel it sent: how many token events had
/// arrived when it sent the request, whether the stream was still running
/// then, and the acknowledgement's own `tokens_sent` (WORKER-4252).
#[derive(Debug, Clone)]
pub struct CancelRecord {
    pub tokens_at_send: usize,
    /// The stream had not ended when the cancel was sent.
    pub running_at_send: bool,
    pub acked: bool,
    pub tokens_sent: Option<u64>,
}

fn tokens_so_far(w: &World) -> (usize, bool) {
    let Some(bg) = &w.background else {
        w.fail("no job was started in the background")
    };
    let s = bg.shared.lock().expect("stream lock");
    (s.tokens().len(), s.terminal().is_none() && !s.closed)
}

async fn send_cancel(w: &mut World, auth: Auth) {
    let job = job_id(w);
    let (tokens_at_send, running_at_send) = tokens_so_far(w);
    let r = http::send(
        w,
        "POST",
        "/worker/cancel",
        Some(json!({"job_id": job}).to_string()),
        auth,
    )
    .await;
    w.cancel = Some(CancelRecord {
        tokens_at_send,
        running_at_send,
        acked: r.status == 200 && r.json.as_ref().is_some_and(|j| j["cancelled"] == true),
        tokens_sent: r.json.as_ref().and_then(|j| j["tokens_sent"].as_u64()),
    });
}

#[when(regex = r"^I cancel the job\s*(with the second token)?$")]
#[then(regex = r"^I cancel the job\s*(with the second token)?$")]
async fn cancel(w: &mut World, who: String) {
    let auth = if who.is_empty() {
        Auth::Token
    } else {
        Auth::Second
    };
    send_cancel(w, auth).await;
}

/// Cancel only once `n` token events have arrived, so the cancel races a
/// running decode loop rather than landing before the first token.
#[when(regex = r"^I cancel the job after (\d+) token events have streamed$")]
async fn cancel_after(w: &mut World, n: usize) {
    wait_for_tokens(w, n).await;
    send_cancel(w, Auth::Token).await;
}

#[when(regex = r"^I wait until (\d+) token events? (?:has|have) streamed$")]
async fn wait_tokens(w: &mut World, n: usize) {
    wait_for_tokens(w, n).await;
}

/// Wait (up to 60 s) until the running stream has delivered `n` token events.
async fn wait_for_tokens(w: &mut World, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, running) = tokens_so_far(w);
        if got >= n {
            break;
        }
        if !running {
            w.fail(format!(
                "the stream ended after {got} token events, before {n} had streamed"
            ));
        }
        if Instant::now() > until {
            w.fail(format!(
                "only {got} of {n} token events arrived within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn finish_background(w: &mut World) {
    let Some(bg) = w.background.take() else {
        return;
    };
    if tokio::time::timeout(Duration::from_secs(120), bg.task)
        .await
        .is_err()
    {
        w.fail("the stream did not finish within 120 s");
    }
    let s = bg.shared.lock().expect("stream lock").clone();
    finish_record(w, s);
}

#[when("I wait for the stream to finish")]
#[then("I wait for the stream to finish")]
async fn wait_stream(w: &mut World) {
    finish_background(w).await;
}

#[when("I disconnect the stream")]
async fn disconnect(w: &mut World) {
    if let Some(bg) = w.background.take() {
        // Aborting the reader drops the connection: the worker sees a disconnect.
        bg.task.abort();
    }
}

#[then(
    regex = r#"^within (\d+) seconds a new execute of "([^"]*)" with max_tokens (\d+) succeeds$"#
)]
async fn new_exec_within(w: &mut World, secs: u64, prompt: String, max: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = execute(w, &prompt, greedy(max)).await;
        if s.status == 200 && s.terminal().is_some_and(|(_, e)| e.name == "end") {
            return;
        }
        if Instant::now() > until {
            w.fail(format!(
                "the slot was not freed within {secs} s (last answer HTTP {})",
                s.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[when("a second execute request arrives while the first is streaming")]
async fn second_request(w: &mut World) {
    let handle = w.handle_id().await;
    let (shared, resp) = open(w, exec_body(&handle, "Hello", greedy(2)), Auth::Token).await;
    if let Some(resp) = resp {
        pump(resp, shared.clone()).await;
        let s = shared.lock().expect("stream lock").clone();
        finish_record(w, s);
        w.fail("the second execute request was accepted while the first was streaming");
    }
}

#[then(regex = r#"^the second request is refused with status (\d+) and code "([A-Z_]+)"$"#)]
fn second_refused(w: &mut World, status: u16, code: String) {
    let r = w.last().clone();
    w.check(
        r.status == status,
        format!("the second request got HTTP {}: {}", r.status, r.text),
    );
    http::assert_error_body(w, &r, &code);
}

#[then("the second request's error is retriable with a retry_after_ms")]
fn second_retriable(w: &mut World) {
    let j = w.last_json().clone();
    w.check(
        j["retriable"] == true,
        format!("retriable is {}", j["retriable"]),
    );
    w.check(
        j["retry_after_ms"].as_u64().is_some_and(|n| n > 0),
        format!("retry_after_ms is {}", j["retry_after_ms"]),
    );
}

#[then(regex = r#"^the streamed text mentions "([^"]+)"$"#)]
fn text_mentions(w: &mut World, text: String) {
    let all: String = w.stream().token_texts().concat();
    w.check(
        all.contains(&text),
        format!("the streamed text {all:?} does not mention {text:?}"),
    );
}

#[when(regex = r#"^I execute the chat prompt "([^"]*)" greedily with max_tokens (\d+)$"#)]
async fn exec_chat(w: &mut World, q: String, max: u64) {
    let prompt = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    execute(w, &prompt, greedy(max)).await;
}

/// Teardown: stop reading a background stream without recording it.
pub async fn finish_background_quietly(w: &mut World) {
    if let Some(bg) = w.background.take() {
        bg.task.abort();
    }
}
