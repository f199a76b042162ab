//! The HTTP surface: router, correlation ids, auth, body limits, the one
//! WorkerError → HTTP response mapping (WORKER-4200–4253, 4300, 4301, 4801,
//! 4812, 4951).
//!
//! Every request passes, outermost first: unread-body drain (below) →
//! correlation id (read or generated, echoed, attached to a tracing span so
//! every log line of the request carries it) → auth (bearer token, fp6
//! logged, public routes exempt) → handler. Handlers read bodies through
//! [`read_body`], which enforces `max_body_bytes` before parsing (413).
//!
//! Refusing early must still reach the client: a 401, 413 or 400 is often
//! decided before the body has arrived, and a server that closes with unread
//! bytes in its socket makes the kernel reset the connection, which can
//! destroy the answer before the client reads it (issue 10: the flaky
//! oversized upload). So what a handler leaves unread is read and discarded
//! after it answers, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]; a body
//! declared larger than that is not drained (the connection is closed, as
//! HTTP allows).

pub mod access_log;
pub mod auth;
pub mod execute;
pub mod framing;
pub mod handlers;
pub mod media_type;
pub mod server;
pub mod strict_json;
pub mod validate;

use crate::daemon::app::AppState;
use crate::error::WorkerError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tracing::Instrument;

pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id of the current request (request extension).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// A WorkerError on its way out as an HTTP response. The status, the body
/// and the Retry-After header are derived here and nowhere else.
#[derive(Debug)]
pub struct ApiError(pub WorkerError);

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(e.body())).into_response();
        resp.extensions_mut().insert(RejectedCode(e.code()));
        if let Some(ms) = e.retry_after_ms() {
            // Retry-After is in whole seconds; round up so clients never retry early.
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Marks a response as a refused request with this code (counted once, in the auth layer).
#[derive(Debug, Clone, Copy)]
pub struct RejectedCode(pub &'static str);

pub type ApiResult<T = Response> = std::result::Result<T, ApiError>;

/// What a handler may read of a request body: at most `max_bytes`
/// (WORKER-4301), and no pause longer than `idle` between its pieces
/// (issue 13 point 1: a body shorter than its Content-Length is not waited
/// on for ever).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub idle: std::time::Duration,
}

impl BodyLimits {
    /// The limits of a JSON request body.
    pub fn json(cfg: &crate::config::Config) -> Self {
        Self {
            max_bytes: cfg.max_body_bytes as u64,
            idle: std::time::Duration::from_millis(cfg.body_read_timeout_ms),
        }
    }
}

/// The next piece of a body, or None at its end: 408 `REQUEST_TIMEOUT` when
/// none arrives within `idle`, 400 when the connection broke.
pub async fn next_piece(
    stream: &mut axum::body::BodyDataStream,
    idle: std::time::Duration,
) -> ApiResult<Option<axum::body::Bytes>> {
    use futures::StreamExt;
    match tokio::time::timeout(idle, stream.next()).await {
        Err(_) => Err(WorkerError::RequestTimeout {
            message: format!(
                "no part of the request body arrived for {} ms (body_read_timeout_ms); send the whole body \
                 its Content-Length announces",
                idle.as_millis()
            ),
        }
        .into()),
        Ok(None) => Ok(None),
        Ok(Some(Ok(piece))) => Ok(Some(piece)),
        Ok(Some(Err(e))) => Err(WorkerError::invalid(format!(
            "the request body could not be read to its end ({e}); nothing was changed"
        ))
        .into()),
    }
}

/// Read a whole request body within `lim` (see [`BodyLimits`]).
pub async fn read_body(body: Body, lim: BodyLimits) -> ApiResult<axum::body::Bytes> {
    let too_large = || {
        ApiError(WorkerError::PayloadTooLarge {
            message: format!(
                "the request body exceeds the limit of {} bytes (max_body_bytes)",
                lim.max_bytes
            ),
        })
    };
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    if declared.is_some_and(|n| n > lim.max_bytes) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(piece) = next_piece(&mut stream, lim.idle).await? {
        if (out.len() + piece.len()) as u64 > lim.max_bytes {
            return Err(too_large());
        }
        out.extend_from_slice(&piece);
    }
    Ok(out.into())
}

/// Most unread request body drained after a response (see the module doc).
pub const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// Longest time spent draining one unread request body.
pub const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body whose unread rest is handed back, when the handler drops
/// it, through `rest` (the handler cannot drain it itself: it has answered).
struct Tracked {
    inner: Option<axum::body::BodyDataStream>,
    done: bool,
    rest: Arc<std::sync::Mutex<Option<axum::body::BodyDataStream>>>,
}

impl futures::Stream for Tracked {
    type Item = Result<axum::body::Bytes, axum::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let r = std::pin::Pin::new(inner).poll_next(cx);
        if matches!(
            r,
            std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))
        ) {
            self.done = true;
        }
        r
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.done {
            if let (Some(inner), Ok(mut slot)) = (self.inner.take(), self.rest.lock()) {
                *slot = Some(inner);
            }
        }
    }
}

/// Run the request, then read and discard whatever the handler left of its
/// body, bounded, so the client can finish sending and read the answer.
async fn drain_unread_body(req: Request, next: Next) -> Response {
    use futures::StreamExt;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let rest = Arc::new(std::sync::Mutex::new(None));
    let tracked = Tracked {
        inner: Some(body.into_data_stream()),
        done: false,
        rest: Arc::clone(&rest),
    };
    let req = Request::from_parts(parts, Body::from_stream(tracked));
    let mut resp = next.run(req).await;
    let unread = rest.lock().ok().and_then(|mut s| s.take());
    let Some(mut unread) = unread else {
        return resp;
    };
    // A body that stalled is not waited on again: answer and close.
    if resp
        .extensions()
        .get::<RejectedCode>()
        .is_some_and(|c| c.0 == "REQUEST_TIMEOUT")
    {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        return resp;
    }
    if declared.is_some_and(|n| n > DRAIN_MAX_BYTES) {
        return resp;
    }
    let mut seen: u64 = 0;
    let drained = tokio::time::timeout(DRAIN_MAX_TIME, async {
        while let Some(Ok(chunk)) = unread.next().await {
            seen = seen.saturating_add(chunk.len() as u64);
            if seen > DRAIN_MAX_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    if !matches!(drained, Ok(true)) {
        tracing::debug!(
            human = %format!(
                "Stopped reading the rest of a refused request body after {seen} bytes; the connection is closed, \
                 so the client may see a reset instead of the answer."
            ),
            drained_bytes = seen,
            "unread body not drained"
        );
    }
    resp
}

pub fn router(app: Arc<AppState>) -> Router {
    // JSON endpoints refuse other bodies with 415 (`media_type`).
    let json_only = || axum::middleware::from_fn(media_type::json_only);
    let r = Router::new()
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .route("/worker/plan", post(handlers::plan).layer(json_only()))
        .route(
            "/worker/commit",
            post(handlers::commit).layer(axum::middleware::from_fn(media_type::json_or_upload)),
        )
        .route("/worker/ready", get(handlers::ready))
        .route("/worker/execute", post(execute::execute).layer(json_only()))
        .route("/worker/cancel", post(handlers::cancel).layer(json_only()));
    #[cfg(feature = "test-hooks")]
    let r = r.route(
        handlers::DEBUG_FAULT_PATH,
        post(handlers::debug_fault).layer(json_only()),
    );
    r.fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            access_log::access_log,
        ))
        .layer(axum::middleware::from_fn(correlation))
        .layer(axum::middleware::from_fn(drain_unread_body))
        .with_state(app)
}

/// 16 random hex digits (falls back to time-derived digits if the OS RNG fails).
pub fn random_id(prefix: &str) -> String {
    let n = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    format!("{prefix}{n:016x}")
}

/// Read X-Correlation-Id (or make one), run the request inside a span that
/// carries it, and echo it on the response (WORKER-4801). An invalid
/// incoming id is replaced rather than refused, and the replacement echoed.
async fn correlation(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok());
    let cid = crate::telemetry::correlation_id_from(given);
    req.extensions_mut().insert(CorrelationId(cid.clone()));
    let span = tracing::info_span!("request", correlation_id = %cid, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&cid) {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod e2e_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping_is_derived_from_the_error() {
        let busy = WorkerError::Busy {
            message: "b".into(),
            retry_after_ms: 1500,
        };
        let r = ApiError(busy).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "2");
        let r = ApiError(WorkerError::Cancelled {
            message: "c".into(),
        })
        .into_response();
        assert_eq!(r.status().as_u16(), 499);
        for (e, s) in [
            (WorkerError::invalid("x"), 400),
            (
                WorkerError::AuthFailed {
                    message: "x".into(),
                },
                401,
            ),
            (
                WorkerError::Forbidden {
                    message: "x".into(),
                },
                403,
            ),
            (
                WorkerError::ModelConflict {
                    message: "x".into(),
                },
                409,
            ),
            (
                WorkerError::Unavailable {
                    message: "x".into(),
                    retry_after_ms: 1,
                },
                503,
            ),
            (
                WorkerError::SealVerificationFailed {
                    message: "x".into(),
                },
                500,
            ),
        ] {
            let r = ApiError(e).into_response();
            assert_eq!(r.status().as_u16(), s);
        }
    }

    #[tokio::test]
    async fn error_body_is_the_error_body() {
        let e = WorkerError::Busy {
            message: "busy now".into(),
            retry_after_ms: 250,
        };
        let r = ApiError(e.clone()).into_response();
        let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, serde_json::to_value(e.body()).unwrap());
        assert_eq!(v["code"], "WORKER_BUSY");
        assert_eq!(v["retriable"], true);
        assert_eq!(v["retry_after_ms"], 250);
    }

    #[test]
    fn job_ids() {
        let a = random_id("job-");
        assert!(a.starts_with("job-") && a.len() == 20);
        assert_ne!(a, random_id("job-"));
    }
}
