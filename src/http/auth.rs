//! Bearer-token authentication (WORKER-4200–4203, 4233, 4250, 4812).
//!
//! `/health` and `/metrics` are public (WORKER-4200, 4812); `/worker/ready`
//! is public only when `ready_requires_auth` is false (4233). Everything else
//! needs a valid bearer token: `/openapi.json` too, because 4200 names no
//! exception for it and the pool manager that drives the API holds a token
//! anyway; unknown paths too, so the route table is not probed for free. The token is compared in constant time by the credentials
//! store; only its fp6 fingerprint is ever logged.

use crate::daemon::app::AppState;
use crate::error::WorkerError;
use crate::http::{ApiError, RejectedCode};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The authenticated caller (request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    pub fp6: String,
}

pub fn is_public(path: &str, ready_requires_auth: bool) -> bool {
    matches!(path, "/health" | "/metrics") || (path == "/worker/ready" && !ready_requires_auth)
}

/// The token after `Bearer ` (scheme case-insensitive), if any.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// Authenticate, then count every refused request by its code (metrics, 4305:
/// refusals are counted apart from jobs, so bad requests move no job counter).
pub async fn require_auth(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = authenticate(&app, req, next).await;
    if let Some(c) = resp.extensions().get::<RejectedCode>() {
        app.metrics.request_rejected(c.0);
    }
    resp
}

async fn authenticate(app: &Arc<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path, app.cfg.ready_requires_auth) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let fp6 = bearer(header).and_then(|t| app.auth.verify(t));
    match fp6 {
        Some(fp6) => {
            // The access line (`access_log`) names the caller by this fingerprint.
            let caller = Caller { fp6 };
            req.extensions_mut().insert(caller.clone());
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(caller);
            resp
        }
        // The refusal is logged once, rate-limited, by the access line.
        None => ApiError(WorkerError::AuthFailed {
            message: "missing or invalid bearer token; send `Authorization: Bearer <token>` with a token from \
                      the worker's token file"
                .into(),
        })
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearerabc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn public_routes() {
        for p in ["/health", "/metrics"] {
            assert!(is_public(p, true));
        }
        assert!(!is_public("/worker/ready", true));
        assert!(is_public("/worker/ready", false));
        for p in [
            "/worker/execute",
            "/worker/plan",
            "/worker/commit",
            "/worker/cancel",
            "/openapi.json",
            "/debug/fault",
            "/nope",
            "/health/",
        ] {
            assert!(!is_public(p, false), "{p}");
        }
    }
}
