//! `POST /worker/execute`: validation → admission (a slot or a queue
//! place, else 429) → engine thread → Server-Sent Events (WORKER-4240–4253,
//! 4420, 4421, 4423; issue 11 point 4).
//!
//! Events: `started` {job_id, queue_position (jobs that must leave before
//! this one gets a slot; 0: it starts at once), predicted_start_ms (ms
//! until prefill begins: the latest measured seal check, which every
//! admission waits for, plus, when queued, the jobs ahead at the recent
//! pace)}, `token`
//! {t, i}, `metrics` {…}, `end` {tokens_out, decode_time_ms, finish_reason},
//! `error` (the error body). Nothing follows `end` or `error`. The stream
//! belongs to the request that created the job, i.e. to its identity (4251).
//! A cancel flag is checked (and the token counted, under one lock with the
//! cancel) before each token is forwarded, so no token event leaves after a
//! cancel was acknowledged and the acknowledgement's `tokens_sent` is the
//! stream's exact token count (4252); dropping the stream
//! (client gone) sets the same flag so the engine stops within one step.

use crate::daemon::app::AppState;
use crate::daemon::engine_thread::{Cmd, Job, JobEvent};
use crate::daemon::scheduler::JobCtl;
use crate::daemon::state::Lifecycle;
use crate::error::WorkerError;
use crate::http::auth::Caller;
use crate::http::validate::{self, Limits};
use crate::http::{random_id, read_body, ApiResult, BodyLimits, CorrelationId};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events a job sends besides its tokens: `metrics` and `end`, or `error`.
const EVENTS_BESIDES_TOKENS: usize = 2;
const KEEP_ALIVE: Duration = Duration::from_secs(5);

pub async fn execute(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(cid): Extension<CorrelationId>,
    body: Body,
) -> Response {
    admit(&app, caller, cid, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn admit(app: &Arc<AppState>, caller: Caller, cid: CorrelationId, body: Body) -> ApiResult {
    let enqueued = Instant::now();
    if !app.lifecycle().is_serving() {
        return Err(app.unavailable().into());
    }
    let bytes = read_body(body, BodyLimits::json(&app.cfg)).await?;
    let lim = Limits {
        max_prompt_len: app.cfg.max_prompt_len,
        max_tokens: app.cfg.max_tokens,
    };
    let req = validate::execute(&bytes, &lim)?;
    let model = app.model.get().cloned().ok_or_else(|| app.unavailable())?;
    let handle = model.handle();
    if req.handle_id != handle.shard_id && model.is_retired(&req.handle_id) {
        return Err(WorkerError::HandleSuperseded {
            message: format!(
                "handle_id {:?} was retired when a commit sealed the same model as shard {:?}; send the job with handle_id {:?} (see GET /worker/ready)",
                req.handle_id, handle.shard_id, handle.shard_id
            ),
        }
        .into());
    }
    if req.handle_id != handle.shard_id {
        return Err(WorkerError::NotFound {
            message: format!(
                "no sealed shard with handle_id {:?}; this worker holds {:?} (see GET /worker/ready)",
                req.handle_id, handle.shard_id
            ),
        }
        .into());
    }
    if !handle.sealed {
        return Err(WorkerError::SealVerificationFailed {
            message: "the shard's seal check failed earlier; this worker no longer runs jobs. Restart it.".into(),
        }
        .into());
    }
    let tok = Arc::clone(&model.tokenizer);
    let prompt = req.prompt;
    let ids = tokio::task::spawn_blocking(move || tok.encode(&prompt, true))
        .await
        .map_err(|e| WorkerError::internal(format!("tokenizer task failed: {e}")))??;
    let prompt = crate::engine::sequence::Prompt::new(ids, model.max_context)?;

    let job_id = random_id("job-");
    // Executing is entered under the registry's lock, so a job finishing
    // meanwhile cannot turn the worker Ready over this one.
    let (slot, queue_position) =
        app.scheduler
            .try_acquire(job_id.clone(), caller.fp6.clone(), || {
                if app.set_state(Lifecycle::Executing) {
                    Ok(())
                } else {
                    // Draining or stopped since the check above.
                    Err(app.unavailable())
                }
            })?;
    let ctl = Arc::clone(slot.ctl());
    // Every event the job can send fits, so the engine never waits for this client.
    let (tx, rx) = mpsc::channel(req.params.max_tokens as usize + EVENTS_BESIDES_TOKENS);
    let job = Job {
        id: job_id.clone(),
        correlation_id: cid.0.clone(),
        prompt,
        params: req.params,
        slot,
        events: tx,
        deadline: enqueued + Duration::from_millis(app.cfg.execution_timeout_ms),
        enqueued,
    };
    let engine = app
        .engine
        .get()
        .ok_or_else(|| WorkerError::internal("the engine thread is not running"))?;
    app.metrics.job_started();
    if let Err(e) = engine.send(Cmd::Run(Box::new(job))) {
        // The job (and its slot) came back inside the error's Cmd, already dropped.
        app.job_done();
        return Err(e.into());
    }
    tracing::info!(job_id = %job_id, fp6 = %caller.fp6, human = %format!("Admitted job {job_id} for the client with token fingerprint {}.", caller.fp6), "job admitted");

    // Every admission waits for a seal check (4245), predicted from the
    // latest measured one; a queued job also waits for the jobs ahead.
    let predicted_start_ms = model.seal_check_ms.load(Ordering::Relaxed)
        + app.scheduler.expected_wait_ms(queue_position);
    let started = serde_json::json!({
        "job_id": job_id,
        "queue_position": queue_position,
        "predicted_start_ms": predicted_start_ms,
        "numerics_version": model.numerics_version,
    });
    let stream = sse_stream(started, rx, Arc::clone(&ctl));
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&job_id) {
        resp.headers_mut().insert("x-job-id", v);
    }
    resp.extensions_mut()
        .insert(crate::http::access_log::StreamedJob(Arc::clone(&ctl)));
    Ok(resp)
}

/// Cancels the job when the client goes away (the stream is dropped).
struct DisconnectGuard(Arc<JobCtl>);

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.0.cancel.store(true, Ordering::SeqCst);
    }
}

struct StreamState {
    started: Option<serde_json::Value>,
    rx: mpsc::Receiver<JobEvent>,
    guard: DisconnectGuard,
    done: bool,
}

fn data_event(name: &str, v: &impl serde::Serialize) -> Event {
    let data = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    Event::default().event(name).data(data)
}

fn error_event(e: &WorkerError) -> Event {
    data_event("error", &e.body())
}

fn sse_stream(
    started: serde_json::Value,
    rx: mpsc::Receiver<JobEvent>,
    ctl: Arc<JobCtl>,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let st = StreamState {
        started: Some(started),
        rx,
        guard: DisconnectGuard(ctl),
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(s) = st.started.take() {
            return Some((Ok(data_event("started", &s)), st));
        }
        // Events the engine already queued go first (biased); a job the
        // worker failed from outside the engine thread ends after them.
        let next = tokio::select! {
            biased;
            ev = st.rx.recv() => ev,
            e = st.guard.0.failure() => Some(JobEvent::Error(e)),
        };
        let ev = match next {
            // Cancelled: whatever the engine queued is dropped, the stream ends with CANCELLED.
            // A token is checked and counted in one step, so the count a cancel
            // reports is every token event this stream sends (4252).
            Some(JobEvent::Token { .. }) if !st.guard.0.admit_token() => {
                st.done = true;
                error_event(&st.guard.0.cancel_error())
            }
            Some(JobEvent::Metrics(_)) if st.guard.0.is_cancelled() => {
                st.done = true;
                error_event(&st.guard.0.cancel_error())
            }
            Some(JobEvent::Token { t, i }) => {
                data_event("token", &serde_json::json!({"t": t, "i": i}))
            }
            Some(JobEvent::Metrics(m)) => data_event("metrics", &m),
            Some(JobEvent::End(end)) => {
                st.done = true;
                data_event("end", &end)
            }
            Some(JobEvent::Error(e)) => {
                st.done = true;
                error_event(&e)
            }
            None => {
                st.done = true;
                error_event(&WorkerError::internal(
                    "the engine ended the job without a final event",
                ))
            }
        };
        Some((Ok(ev), st))
    })
}
