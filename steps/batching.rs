//! Many jobs at once (issue 11 points 4 and 5; WORKER-4420, 4710, 4970,
//! 4982): concurrent jobs against their solo runs, the waiting queue, the
//! drain of waiting jobs, and the capacity the worker reports.
//!
//! The concurrent jobs' parameters come from the run's BDD_SEED
//! (`replayable_random`), so a failing mix can be replayed. The reference
//! for each job is the same request run alone on the same worker: batch
//! invariance is the property under test.

use crate::steps::http::{self, Auth};
use crate::steps::sse::{self, BackgroundStream, Stream};
use crate::steps::world::{replayable_random, World};
use cucumber::{then, when};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One job of the concurrent mix, with the stream it got.
#[derive(Debug, Clone)]
pub struct MixedJob {
    pub prompt: String,
    pub params: Value,
    pub stream: Stream,
}

const WORDS: &[&str] = &[
    "the", "river", "keeps", "a", "quiet", "stone", "under", "seven", "lamps", "while", "north",
    "wind", "counts", "every", "red", "door", "of", "old", "harbour", "town",
];

/// Job `i`'s prompt and parameters: prompt lengths across several prefill
/// chunks, greedy and sampled decoding, stop text, and varied lengths.
fn job_spec(w: &World, i: usize) -> (String, Value, u64) {
    let r = |what: &str| replayable_random(&w.scenario, &format!("job {i} {what}"));
    let n_words = 1 + (r("words") % 160) as usize;
    let prompt = (0..n_words)
        .map(|k| WORDS[(r(&format!("word {k}")) % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ");
    let seed = r("seed") % 1_000_000;
    let max_tokens = 1 + r("max_tokens") % 48;
    let params = match i % 4 {
        0 => json!({"max_tokens": max_tokens, "temperature": 0, "seed": seed}),
        1 => {
            json!({"max_tokens": max_tokens, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": seed})
        }
        2 => json!({"max_tokens": max_tokens, "temperature": 1.5, "seed": seed}),
        _ => {
            json!({"max_tokens": max_tokens, "temperature": 1.0, "top_p": 0.5, "seed": seed, "stop": ["e t"]})
        }
    };
    let delay_ms = r("delay") % 60;
    (prompt, params, delay_ms)
}

/// POST an execute and read its stream to the end, outside the World (for
/// concurrent calls).
async fn run_execute(client: reqwest::Client, url: String, token: String, body: String) -> Stream {
    let shared = Arc::new(Mutex::new(Stream::default()));
    match client
        .post(&url)
        .header("content-type", "application/json")
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
    {
        Ok(resp) => {
            shared.lock().expect("stream lock").status = resp.status().as_u16();
            sse::pump(resp, Arc::clone(&shared)).await;
        }
        Err(e) => shared.lock().expect("stream lock").transport_error = Some(e.to_string()),
    }
    let s = shared.lock().expect("stream lock").clone();
    s
}

async fn metrics(w: &mut World) -> std::collections::BTreeMap<String, f64> {
    let r = http::send(w, "GET", "/metrics", None, Auth::None).await;
    crate::steps::metrics::parse(&r.text)
}

async fn capacity(w: &mut World) -> Value {
    let r = http::send(w, "GET", "/worker/ready", None, Auth::Token).await;
    r.json.map(|j| j["capacity"].clone()).unwrap_or(Value::Null)
}

#[when(
    regex = r"^(\d+) jobs of mixed prompts, seeds and sampling parameters arrive (at staggered times|together)$"
)]
async fn mixed_jobs(w: &mut World, n: usize, when: String) {
    let staggered = when == "at staggered times";
    let handle = w.handle_id().await;
    let url = format!("{}/worker/execute", w.base_url());
    let specs: Vec<_> = (0..n).map(|i| job_spec(w, i)).collect();
    let mut tasks = Vec::new();
    for (prompt, params, delay) in &specs {
        let (client, url, token) = (w.http.clone(), url.clone(), w.token.clone());
        let body = sse::exec_body(&handle, prompt, params.clone());
        let delay = Duration::from_millis(if staggered { *delay } else { 0 });
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_execute(client, url, token, body).await
        }));
    }
    // Watch how many jobs the worker runs at once while they stream.
    let mut most = 0.0f64;
    let until = Instant::now() + Duration::from_secs(300);
    while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < until {
        let m = metrics(w).await;
        most = most.max(
            m.get("worker_orcd_num_requests_running")
                .copied()
                .unwrap_or(0.0),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.most_running = Some(most as u64);
    let mut jobs = Vec::new();
    for ((prompt, params, _), task) in specs.into_iter().zip(tasks) {
        let stream = match task.await {
            Ok(s) => s,
            Err(e) => w.fail(format!("a concurrent job's reader failed: {e}")),
        };
        jobs.push(MixedJob {
            prompt,
            params,
            stream,
        });
    }
    w.mixed = jobs;
}

#[then(regex = r#"^every job ends with an "end" event$"#)]
fn every_job_ends(w: &mut World) {
    for (i, j) in w.mixed.iter().enumerate() {
        let t = j
            .stream
            .terminal()
            .map(|(_, e)| (e.name.clone(), e.data.clone()));
        w.check(
            matches!(&t, Some((n, _)) if n == "end"),
            format!("job {i} (HTTP {}) ended with {t:?}", j.stream.status),
        );
    }
}

#[then("as many jobs ran at once as the worker has slots")]
async fn ran_at_once(w: &mut World) {
    let slots = capacity(w).await["slots_total"].as_u64();
    let most = w.most_running;
    w.check(
        slots.is_some() && most == slots,
        format!("at most {most:?} jobs ran at once; the worker has {slots:?} slots"),
    );
}

#[when("each of those jobs runs again alone")]
async fn solo_runs(w: &mut World) {
    let mut solo = Vec::new();
    for j in w.mixed.clone() {
        solo.push(sse::execute(w, &j.prompt, j.params.clone()).await);
    }
    w.solo = solo;
}

/// What a stream says: its token texts and how it ended (the final
/// event's name, finish reason or error code, and token count; not its
/// timings).
fn outcome(s: &Stream) -> (Vec<String>, Value) {
    let end = s
        .terminal()
        .map(|(_, e)| {
            let d = e.json();
            json!({"event": e.name, "finish_reason": d["finish_reason"], "code": d["code"], "tokens_out": d["tokens_out"]})
        })
        .unwrap_or(Value::Null);
    (s.token_texts(), end)
}

#[then("every job's stream is byte-identical to its solo run")]
fn identical_to_solo(w: &mut World) {
    w.check(
        w.solo.len() == w.mixed.len() && !w.mixed.is_empty(),
        format!("{} solo runs for {} jobs", w.solo.len(), w.mixed.len()),
    );
    let mut differ = Vec::new();
    for (i, (j, s)) in w.mixed.iter().zip(&w.solo).enumerate() {
        let (a, a_end) = outcome(&j.stream);
        let (b, b_end) = outcome(s);
        let mut a_all = a.clone();
        a_all.push(a_end.to_string());
        let mut b_all = b.clone();
        b_all.push(b_end.to_string());
        if !crate::steps::determinism::record_pair(w, &format!("job-{i:02}"), &a_all, &b_all) {
            differ.push(i);
        }
    }
    w.check(
        differ.is_empty(),
        format!("jobs {differ:?} streamed differently beside others than alone"),
    );
}

#[then("the pairs of streams are in the proof bundle")]
fn pairs_in_bundle(w: &mut World) {
    let dir = crate::steps::world::ctx().bundle.determinism_dir();
    for i in 0..w.mixed.len() {
        let name = format!(
            "{}__{}__job-{i:02}",
            crate::steps::world::slug(&w.feature),
            crate::steps::world::slug(&w.scenario)
        );
        let pair = dir.join("pairs").join(format!("{name}.ndjson"));
        w.check(pair.is_file(), format!("{} is missing", pair.display()));
    }
}

#[when(regex = r#"^another job "([^"]*)" with max_tokens (\d+) is accepted while the first runs$"#)]
async fn another_job(w: &mut World, prompt: String, max: u64) {
    let handle = w.handle_id().await;
    let url = format!("{}/worker/execute", w.base_url());
    let body = sse::exec_body(&handle, &prompt, sse::greedy(max));
    let shared = Arc::new(Mutex::new(Stream::default()));
    let resp = w
        .http
        .post(&url)
        .header("content-type", "application/json")
        .bearer_auth(&w.token)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| w.fail(format!("POST /worker/execute got no answer: {e}")));
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        w.fail(format!("the second job was refused: HTTP {status} {text}"));
    }
    shared.lock().expect("stream lock").status = status;
    let task = tokio::spawn(sse::pump(resp, Arc::clone(&shared)));
    let until = Instant::now() + Duration::from_secs(30);
    while shared.lock().expect("stream lock").events.is_empty() {
        if Instant::now() > until {
            w.fail("the second job sent no started event within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.waiting_job = Some(BackgroundStream { shared, task });
}

fn waiting_stream(w: &World) -> Stream {
    match (&w.waiting_job, &w.waiting_done) {
        (Some(bg), _) => bg.shared.lock().expect("stream lock").clone(),
        (None, Some(done)) => done.clone(),
        (None, None) => w.fail("no second job was started"),
    }
}

#[then(regex = r"^that job's started event has queue_position (\d+)$")]
fn queue_position(w: &mut World, want: u64) {
    let s = waiting_stream(w);
    let started = s
        .events
        .iter()
        .find(|e| e.name == "started")
        .map(|e| e.json());
    let pos = started.as_ref().and_then(|v| v["queue_position"].as_u64());
    w.check(
        pos == Some(want),
        format!("the started event was {started:?}"),
    );
}

#[then(
    regex = r"^the ready answer's capacity is (\d+) slots? with (\d+) free and (\d+) jobs? waiting of at most (\d+)$"
)]
async fn ready_capacity(w: &mut World, slots: u64, free: u64, waiting: u64, most: u64) {
    let c = capacity(w).await;
    let got = (
        c["slots_total"].as_u64(),
        c["slots_free"].as_u64(),
        c["queue_depth"].as_u64(),
        c["max_queued_jobs"].as_u64(),
    );
    w.check(
        got == (Some(slots), Some(free), Some(waiting), Some(most)),
        format!("the ready answer's capacity is {c}"),
    );
}

#[then(regex = r"^the metrics show (\d+) jobs? running and (\d+) waiting$")]
async fn metrics_show(w: &mut World, running: f64, waiting: f64) {
    // The gauges follow the engine's steps: give it a moment to settle.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(w).await;
        let got = (
            m.get("worker_orcd_num_requests_running").copied(),
            m.get("worker_orcd_num_requests_waiting").copied(),
        );
        if got == (Some(running), Some(waiting)) {
            return;
        }
        if Instant::now() > until {
            w.fail(format!("running and waiting jobs are {got:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish_waiting(w: &mut World) -> Stream {
    let Some(bg) = w.waiting_job.take() else {
        w.fail("no second job was started")
    };
    if tokio::time::timeout(Duration::from_secs(120), bg.task)
        .await
        .is_err()
    {
        w.fail("the second job's stream did not end within 120 s");
    }
    let s = bg.shared.lock().expect("stream lock").clone();
    w.waiting_done = Some(s.clone());
    s
}

#[then(regex = r#"^the waiting job ends with an "end" event$"#)]
async fn waiting_job_ends_any(w: &mut World) {
    let s = finish_waiting(w).await;
    let end = s.terminal().map(|(_, e)| e.name.clone());
    w.check(
        end.as_deref() == Some("end"),
        format!("the waiting job ended with {end:?}"),
    );
}

#[then(regex = r#"^the (?:waiting|second) job streams (\d+) tokens and ends with an "end" event$"#)]
async fn waiting_job_ends(w: &mut World, n: usize) {
    let s = finish_waiting(w).await;
    let end = s.terminal().map(|(_, e)| (e.name.clone(), e.json()));
    w.check(
        s.tokens().len() == n
            && matches!(&end, Some((name, v)) if name == "end" && v["tokens_out"] == n as u64),
        format!(
            "the waiting job sent {} tokens and ended with {end:?}",
            s.tokens().len()
        ),
    );
}

#[then(
    regex = r#"^the waiting job's stream ends with a retriable "([A-Z_]+)" error before the running job ends$"#
)]
async fn waiting_refused_first(w: &mut World, code: String) {
    let s = finish_waiting(w).await;
    let refused = s.terminal().map(|(_, e)| (e.name.clone(), e.json(), e.at));
    let Some((name, v, at)) = refused else {
        w.fail(format!(
            "the waiting job's stream ended without a final event: {s:?}"
        ))
    };
    w.check(
        name == "error" && v["code"] == code.as_str() && v["retriable"] == true,
        format!("the waiting job ended with {name} {v}"),
    );
    w.check(
        v["retry_after_ms"].as_u64().is_some_and(|n| n > 0),
        format!("the refusal has no retry_after_ms: {v}"),
    );
    let running_end = match &w.background {
        Some(bg) => bg
            .shared
            .lock()
            .expect("stream lock")
            .terminal()
            .map(|(_, e)| e.at),
        None => w.fail("no running job was started"),
    };
    w.check(
        running_end.is_none_or(|end| at < end),
        "the waiting job was refused only after the running job ended",
    );
}

/// The capacity of an idle worker: every slot free, nothing waiting, and
/// the whole KV pool free. The pool is computed here from the
/// configuration: each engine holds at least max_context positions in
/// whole pages, of 16 positions on the CPU and 32 on CUDA.
fn idle_capacity(w: &World, slots: u64, queue: u64, pool: u64) -> Value {
    let ctx = w
        .config
        .get("max_context")
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    let page = if crate::steps::world::ctx().backend() == "cuda" {
        32
    } else {
        16
    };
    let positions = pool.max(ctx).div_ceil(page) * page;
    json!({
        "slots_total": slots, "slots_free": slots, "queue_depth": 0,
        "max_queued_jobs": queue, "kv_tokens_free": positions, "kv_tokens_total": positions,
    })
}

fn check_capacity(w: &World, what: &str, got: &Value, slots: u64, queue: u64, pool: u64) {
    let want = idle_capacity(w, slots, queue, pool);
    w.check(
        got == &want,
        format!("{what}'s capacity is {got}, expected {want}"),
    );
}

#[then(
    regex = r"^the ready answer's capacity is the idle capacity for (\d+) slots, (\d+) queue places and a pool of (\d+) positions$"
)]
async fn ready_idle(w: &mut World, slots: u64, queue: u64, pool: u64) {
    let c = capacity(w).await;
    check_capacity(w, "the ready answer", &c, slots, queue, pool);
}

#[then(
    regex = r"^the plan's capacity is the idle capacity for (\d+) slots, (\d+) queue places and a pool of (\d+) positions$"
)]
fn plan_idle(w: &mut World, slots: u64, queue: u64, pool: u64) {
    let c = w.last_json()["capacity"].clone();
    check_capacity(w, "the plan", &c, slots, queue, pool);
}

#[then(
    regex = r"^the readiness callback's capacity is the idle capacity for (\d+) slots, (\d+) queue places and a pool of (\d+) positions$"
)]
async fn callback_idle(w: &mut World, slots: u64, queue: u64, pool: u64) {
    let Some(cb) = &w.callback else {
        w.fail("no callback receiver was set up")
    };
    let Some(ready) = cb.wait_for_state("ready", 10).await else {
        w.fail("no readiness callback arrived within 10 s")
    };
    let c = ready.body["capacity"].clone();
    check_capacity(w, "the readiness callback", &c, slots, queue, pool);
}

#[then(regex = r#"^the waiting job's stream ends with an "error" event with code "([A-Z_]+)"$"#)]
async fn waiting_job_error(w: &mut World, code: String) {
    let s = finish_waiting(w).await;
    let end = s.terminal().map(|(_, e)| (e.name.clone(), e.json()));
    w.check(
        matches!(&end, Some((name, v)) if name == "error" && v["code"] == code.as_str()),
        format!("the second job ended with {end:?}"),
    );
}

#[when(regex = r"^(\d+) ms pass$")]
async fn ms_pass(_w: &mut World, ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[then("the waiting job's queue_time_ms covers its wait for the running job")]
async fn queue_time_covers(w: &mut World) {
    let s = waiting_stream(w);
    let started = s.events.iter().find(|e| e.name == "started").map(|e| e.at);
    let queue = s
        .events
        .iter()
        .find(|e| e.name == "metrics")
        .and_then(|e| e.json()["queue_time_ms"].as_u64());
    crate::steps::sse::finish_background(w).await;
    let first_end = w.stream().terminal().map(|(_, e)| e.at);
    let (Some(started), Some(queue), Some(first_end)) = (started, queue, first_end) else {
        w.fail(format!("missing events: started {started:?}, queue_time_ms {queue:?}, first job's end {first_end:?}"))
    };
    // Seen by the client: from the waiting job's acceptance to the first
    // job's last event; the worker admitted it only after that job left.
    let waited = first_end.saturating_duration_since(started).as_millis() as u64;
    w.check(
        waited >= 300,
        format!("the first job ended only {waited} ms after the second was accepted"),
    );
    w.check(
        queue + 50 >= waited,
        format!("queue_time_ms is {queue}, but the job waited about {waited} ms"),
    );
}

/// How far apart the client may read two events the worker sent in order
/// on two connections.
const READ_SKEW: Duration = Duration::from_millis(50);

/// The second job was accepted while the first ran, and sent its first
/// token only after the first job's last event: it waited for pages, as
/// seen by the client, whatever the backend's speed.
#[then("the waiting job was accepted while the running job ran and streamed only after it ended")]
async fn waited_for_running(w: &mut World) {
    let second = finish_waiting(w).await;
    crate::steps::sse::finish_background(w).await;
    let first_end = w.stream().terminal().map(|(_, e)| e.at);
    let accepted = second
        .events
        .iter()
        .find(|e| e.name == "started")
        .map(|e| e.at);
    let first_token = second.tokens().first().map(|e| e.at);
    let (Some(first_end), Some(accepted), Some(first_token)) = (first_end, accepted, first_token)
    else {
        w.fail(format!(
            "missing events: running job's end {first_end:?}, waiting job's started {accepted:?}, its first token {first_token:?}"
        ))
    };
    w.check(
        accepted < first_end,
        "the waiting job was accepted only after the running job ended",
    );
    // The client reads the two streams on separate connections, so a first
    // token sent right after the running job's end may be read a few ms
    // before that end; a job that ran beside it would have streamed for
    // most of the running job's remaining tokens.
    w.check(
        first_token + READ_SKEW >= first_end,
        format!(
            "the waiting job streamed its first token {:?} before the running job ended",
            first_end.saturating_duration_since(first_token)
        ),
    );
}

/// The second job ended while the running job still ran: the two shared
/// steps. Read from the running stream as the client saw it when the second
/// job's end arrived (no token-by-token timing, which depends on how the
/// client's reads interleave).
#[then("the running job was still running when the second job ended")]
async fn still_running_at_second_end(w: &mut World) {
    let second = waiting_stream(w);
    let Some((_, end)) = second.terminal() else {
        w.fail("the second job has no end event")
    };
    let second_end = end.at;
    let running = match &w.background {
        Some(bg) => bg.shared.lock().expect("stream lock").clone(),
        None => w.fail("no job was started in the background"),
    };
    let first_end = running.terminal().map(|(_, e)| e.at);
    w.check(
        first_end.is_none_or(|at| at > second_end),
        format!(
            "the running job ended {:?} before the second job did ({} tokens in all)",
            first_end.map(|at| second_end.saturating_duration_since(at)),
            running.tokens().len()
        ),
    );
}
