//! Handlers for everything but execute: health, metrics, OpenAPI, plan,
//! commit, ready, cancel and the test-only fault hook (WORKER-4030,
//! 4210–4233, 4251, 4812).

use crate::daemon::app::AppState;
use crate::daemon::scheduler::CancelOutcome;
use crate::daemon::{commit as commits, models};
use crate::error::WorkerError;
use crate::http::auth::Caller;
use crate::http::validate;
use crate::http::{read_body, ApiResult, BodyLimits};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use std::sync::Arc;

/// The OpenAPI document kept in the repository (WORKER-4210ff, issue 4 point 4).
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// The fault hook's route: served, and documented to clients, only by
/// test-hooks builds.
pub const DEBUG_FAULT_PATH: &str = "/debug/fault";

/// The OpenAPI document a build serves: the repository's document, less
/// the routes the build lacks (a release build has no `/debug/fault`), so a
/// client generated from it never calls a route that answers 404 (issue 13
/// point 5).
pub fn served_openapi(test_hooks: bool) -> String {
    if test_hooks {
        return OPENAPI_JSON.to_string();
    }
    // The document is checked to parse by a unit test; were it not to,
    // serving it whole beats serving nothing.
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(OPENAPI_JSON) else {
        return OPENAPI_JSON.to_string();
    };
    if let Some(paths) = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    {
        paths.remove(DEBUG_FAULT_PATH);
    }
    doc.to_string()
}

/// 200 with the state while Ready/Executing and the engine thread lives;
/// 503 with the state otherwise (WORKER-4030).
pub async fn health(State(app): State<Arc<AppState>>) -> Response {
    let st = app.lifecycle();
    let engine_alive = app.engine.get().is_none_or(|e| e.is_alive());
    let healthy = st.is_serving() && engine_alive && app.is_ready();
    let body = json!({
        "state": st.as_str(),
        "ready": app.is_ready(),
        "engine_alive": engine_alive,
        "busy": app.scheduler.is_busy(),
        "capacity": app.scheduler.capacity(),
        "worker_id": app.cfg.worker_id,
        "backend": app.cfg.backend.as_str(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            crate::telemetry::Metrics::CONTENT_TYPE,
        )],
        app.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    static SERVED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = SERVED.get_or_init(|| served_openapi(cfg!(feature = "test-hooks")));
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

pub async fn not_found() -> ApiResult {
    Err(WorkerError::NotFound {
        message: "no such endpoint; see GET /openapi.json".into(),
    }
    .into())
}

/// Run blocking model work (file hashing, parsing) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WorkerError::internal(format!("background task failed: {e}")))?
        .map_err(Into::into)
}

pub async fn plan(State(app): State<Arc<AppState>>, body: Body) -> ApiResult {
    let bytes = read_body(body, BodyLimits::json(&app.cfg)).await?;
    let req = validate::plan(&bytes)?;
    let a = Arc::clone(&app);
    let resp = blocking(move || models::plan(&a, &req)).await?;
    Ok(Json(resp).into_response())
}

/// Commit by path (a JSON body) or by upload (`Content-Type:
/// application/octet-stream`, the fields in the query string), WORKER-4220–4227;
/// both go through `daemon::commit`, the code path of the start-up load.
pub async fn commit(
    State(app): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let handle = if is_octet_stream(&headers) {
        let req = validate::commit_upload(query.as_deref().unwrap_or(""))?;
        let (digest, len) = hash_upload(&app, &headers, body).await?;
        let a = Arc::clone(&app);
        blocking(move || commits::commit_upload(&a, &req, &digest, len)).await?
    } else {
        if query.is_some_and(|q| !q.is_empty()) {
            return Err(WorkerError::invalid(
                "query parameters are read only for an upload (Content-Type: application/octet-stream); \
                 a JSON commit carries its fields in the body",
            )
            .into());
        }
        let bytes = read_body(body, BodyLimits::json(&app.cfg)).await?;
        let req = validate::commit(&bytes)?;
        let a = Arc::clone(&app);
        blocking(move || commits::commit(&a, &req)).await?
    };
    Ok(Json(json!({ "handle": handle })).into_response())
}

fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/octet-stream"))
}

fn upload_too_large(what: &str, max: u64) -> String {
    format!(
        "the uploaded model is {what} bytes, above the limit of {max} bytes (max_model_bytes); \
         nothing was changed. Raise max_model_bytes or use a smaller model"
    )
}

/// Stream an uploaded model into SHA-256 without storing it, refusing more
/// than `max_model_bytes`: from Content-Length before reading anything, else
/// as soon as the count passes the limit (4225, 413 PAYLOAD_TOO_LARGE).
async fn hash_upload(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<([u8; 32], u64)> {
    use sha2::Digest;
    let max = app.cfg.max_model_bytes;
    let too_large = |what: String| WorkerError::PayloadTooLarge {
        message: upload_too_large(&what, max),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_large(n.to_string()).into());
    }
    let mut hasher = sha2::Sha256::new();
    let mut len: u64 = 0;
    let mut stream = body.into_data_stream();
    let idle = std::time::Duration::from_millis(app.cfg.body_read_timeout_ms);
    while let Some(chunk) = crate::http::next_piece(&mut stream, idle).await? {
        len = len.saturating_add(chunk.len() as u64);
        if len > max {
            return Err(too_large(format!("more than {max}")).into());
        }
        hasher.update(&chunk);
    }
    Ok((hasher.finalize().into(), len))
}

/// WORKER-4230–4232: ready is false unless serving with a sealed shard.
pub async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let model = app.model.get();
    let handles: Vec<_> = model.map(|m| m.handle()).into_iter().collect();
    Json(json!({
        "ready": app.is_ready(),
        "state": app.lifecycle().as_str(),
        "handles": handles,
        "numerics_version": model.map(|m| m.numerics_version.as_str()),
        "nccl_group_id": null,
        "capacity": app.scheduler.capacity(),
    }))
    .into_response()
}

pub async fn cancel(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult {
    let bytes = read_body(body, BodyLimits::json(&app.cfg)).await?;
    let req = validate::cancel(&bytes)?;
    let outcome = app.scheduler.cancel(&req.job_id, &caller.fp6)?;
    let body = match outcome {
        CancelOutcome::Cancelled { tokens_sent } => {
            tracing::info!(job_id = %req.job_id, fp6 = %caller.fp6, cancelled = true, tokens_sent,
                human = %format!("Cancelled job {} at its owner's request after {tokens_sent} tokens were sent; no further tokens are sent.", req.job_id),
                "cancel");
            json!({ "job_id": req.job_id, "cancelled": true, "tokens_sent": tokens_sent })
        }
        CancelOutcome::AlreadyFinished => {
            tracing::info!(job_id = %req.job_id, fp6 = %caller.fp6, cancelled = false,
                human = %format!("A cancel for job {} arrived after it had finished; nothing to do.", req.job_id),
                "cancel");
            json!({ "job_id": req.job_id, "cancelled": false })
        }
    };
    Ok(Json(body).into_response())
}

/// Test builds only: inject a fault into the engine (seal and CUDA-error scenarios).
#[cfg(feature = "test-hooks")]
pub async fn debug_fault(State(app): State<Arc<AppState>>, body: Body) -> ApiResult {
    use crate::daemon::engine_thread::Cmd;
    let bytes = read_body(body, BodyLimits::json(&app.cfg)).await?;
    let fault = validate::fault(&bytes)?;
    if let crate::engine::Fault::ReplaceSeal { seal } = fault {
        // The handle, not the engine, holds the seal.
        let model = app.model.get().ok_or_else(|| app.unavailable())?;
        model.handle.write().unwrap_or_else(|p| p.into_inner()).seal = hex::encode(seal);
    } else if let crate::engine::Fault::AvailableBytes { bytes } = fault {
        *app.available_override
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    } else {
        let engine = app.engine.get().ok_or_else(|| app.unavailable())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine.send(Cmd::Fault(fault, tx))?;
        rx.await
            .map_err(|_| WorkerError::internal("the engine thread ended before answering"))??;
    }
    tracing::warn!(fault = ?fault, human = "Injected a test fault into the engine (test-hooks build).", "fault injected");
    Ok(Json(json!({ "injected": true })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_matches_the_code() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI_JSON).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/debug/fault",
                "/health",
                "/metrics",
                "/openapi.json",
                "/worker/cancel",
                "/worker/commit",
                "/worker/execute",
                "/worker/plan",
                "/worker/ready"
            ]
        );
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]
            ["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            codes,
            WorkerError::ALL_CODES,
            "the documented codes are the error type's codes"
        );
        let handle = &doc["components"]["schemas"]["ModelShardHandle"]["required"];
        assert_eq!(handle.as_array().unwrap().len(), 11);
    }

    /// A release build serves the document without the fault hook and
    /// otherwise unchanged; a test-hooks build serves the document as kept.
    #[test]
    fn the_served_document_lists_only_the_routes_of_the_build() {
        let kept: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let release: serde_json::Value = serde_json::from_str(&served_openapi(false)).unwrap();
        assert!(release["paths"].get(DEBUG_FAULT_PATH).is_none());
        let mut expected = kept.clone();
        expected["paths"]
            .as_object_mut()
            .unwrap()
            .remove(DEBUG_FAULT_PATH);
        assert_eq!(release, expected);
        assert_eq!(served_openapi(true), OPENAPI_JSON);
    }
}
