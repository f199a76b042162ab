//! One access line per request (issue 13 point 4; WORKER-4800, 4801):
//! method, route, status, error code, latency, the caller's token
//! fingerprint and, for Execute, the token events streamed. A stream's line
//! is written when the stream ends (or its client goes), so its latency and
//! tokens are the whole job's.
//!
//! Every line goes through the [`LogLimiter`] under its kind (status, method,
//! route): served requests have a large budget, refusals and the public
//! probes a small one, so no client, with a token or without, can make the
//! log grow faster than a fixed rate. What is left out is counted in one
//! summary line per kind and interval.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::daemon::app::AppState;
use crate::daemon::scheduler::JobCtl;
use crate::http::auth::Caller;
use crate::http::RejectedCode;

/// Lines per kind and interval for requests that were served (status < 400
/// on a route that needs the token): room for 60 a second.
pub const SERVED_BUDGET: u32 = 600;
/// Lines per kind and interval for refusals and the public probes, which
/// anyone can send: 2 a second.
pub const REFUSED_BUDGET: u32 = 20;

/// The job a streamed response belongs to, so its access line can count
/// the token events sent (`execute` puts it in the response's extensions).
#[derive(Clone)]
pub struct StreamedJob(pub Arc<JobCtl>);

/// What one access line says.
struct Access {
    app: Arc<AppState>,
    method: String,
    route: String,
    status: u16,
    code: Option<&'static str>,
    fp6: Option<String>,
    started: Instant,
    job: Option<Arc<JobCtl>>,
}

pub async fn access_log(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no route)".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    let access = Access {
        app,
        method,
        route,
        status: resp.status().as_u16(),
        code: resp.extensions().get::<RejectedCode>().map(|c| c.0),
        fp6: resp.extensions().get::<Caller>().map(|c| c.fp6.clone()),
        started,
        job: resp
            .extensions()
            .get::<StreamedJob>()
            .map(|j| Arc::clone(&j.0)),
    };
    if access.job.is_none() {
        access.write();
        return resp;
    }
    // A stream: the line is written when its body is dropped (ended or abandoned).
    let (parts, body) = resp.into_parts();
    let stream = LoggedStream {
        inner: body.into_data_stream(),
        access: Some(access),
    };
    Response::from_parts(parts, Body::from_stream(stream))
}

impl Access {
    fn kind(&self) -> String {
        format!("{} {} {}", self.status, self.method, self.route)
    }

    fn budget(&self) -> u32 {
        let public = self.fp6.is_none();
        if self.status >= 400 || public {
            REFUSED_BUDGET
        } else {
            SERVED_BUDGET
        }
    }

    fn write(self) {
        if !self.app.log_limit.allow(&self.kind(), self.budget()) {
            return;
        }
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        let tokens = self
            .job
            .as_ref()
            .map(|j| *j.tokens_sent.lock().unwrap_or_else(|p| p.into_inner()));
        let answer = match self.code {
            Some(code) => format!("{} {code}", self.status),
            None => self.status.to_string(),
        };
        let streamed = tokens.map_or(String::new(), |n| format!(" and streamed {n} token events"));
        let human = format!(
            "{} {} answered {answer}{streamed} in {}.",
            self.method,
            self.route,
            crate::telemetry::human_duration(ms / 1e3)
        );
        let fp6 = self.fp6.as_deref().unwrap_or("");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    human = %human,
                    event = "access",
                    method = %self.method,
                    route = %self.route,
                    status = self.status,
                    code = self.code.unwrap_or(""),
                    latency_ms = ms,
                    tokens = tokens,
                    fp6 = %fp6,
                    "request served"
                )
            };
        }
        // A wrong token or a server fault is worth a look; the rest is routine.
        if matches!(self.status, 401 | 403) || self.status >= 500 {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// A response body that writes its access line when dropped.
struct LoggedStream {
    inner: axum::body::BodyDataStream,
    access: Option<Access>,
}

impl futures::Stream for LoggedStream {
    type Item = Result<axum::body::Bytes, axum::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for LoggedStream {
    fn drop(&mut self) {
        if let Some(a) = self.access.take() {
            a.write();
        }
    }
}
