//! The listener: accepts TCP connections and serves HTTP/1.1 on them under
//! the limits an operator sets, so that clients that never finish cannot
//! make the worker unreachable (issue 13 point 1; WORKER-4420).
//!
//! - **Header read timeout** (`header_read_timeout_ms`): a request's headers
//!   must arrive within it, and a kept-alive connection must start its next
//!   request within it (hyper restarts the timer whenever the connection is
//!   idle), so half-sent headers and idle connections are closed.
//! - **Body read timeout** (`body_read_timeout_ms`, in `http::read_body` and
//!   the upload path): no progress on a body for that long ends the request
//!   with 408 `REQUEST_TIMEOUT`.
//! - **Connection cap** (`max_connections`): at the cap, the oldest
//!   connection without a request in flight (half-open or idle) is closed
//!   to make room; only when every connection is serving a request is the
//!   newcomer closed at once. So `/health` and authenticated calls get in
//!   while an attacker holds half-open sockets, and SSE streams are never
//!   the ones cut.
//! - **Requests per connection** (`max_requests_per_connection`): the last
//!   allowed response carries `Connection: close`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

/// What the listener enforces; see the module header.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: u64,
}

/// Pause after a failed accept (out of file descriptors), so the loop does
/// not spin while connections are being closed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a connection told to close may take to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One open connection, as the registry sees it.
struct Conn {
    /// Requests of this connection in flight, counted until their response
    /// body is done (so a streaming SSE response counts as busy).
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Conn>>,
    next: AtomicU64,
    /// Wakes the shutdown wait when the last connection ends.
    empty: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make room for one more connection under `max`: true when there is
    /// room, after closing the oldest connection without a request in
    /// flight if need be.
    fn make_room(&self, max: usize) -> bool {
        let mut g = self.lock();
        if g.len() < max {
            return true;
        }
        let idle = g
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .map(|(&id, _)| id);
        // Counted as gone at once, so a burst of newcomers evicts one idle
        // connection each; its task ends within CLOSE_GRACE.
        match idle.and_then(|id| g.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn add(&self) -> (u64, Arc<AtomicUsize>, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Conn {
                busy: Arc::clone(&busy),
                close: Arc::clone(&close),
            },
        );
        (id, busy, close)
    }

    fn remove(&self, id: u64) {
        let mut g = self.lock();
        g.remove(&id);
        if g.is_empty() {
            self.empty.notify_waiters();
        }
    }

    fn close_all(&self) {
        for c in self.lock().values() {
            c.close.notify_one();
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Serve `router` on `listener` until `shutdown` resolves; then stop
/// accepting, let every connection finish its response, and return once
/// they have all closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors: free an idle one and try again.
                tracing::debug!(error = %e, human = %format!("Could not accept a connection ({e}); closing an idle one and retrying."), "accept failed");
                registry.make_room(registry.len());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if !registry.make_room(limits.max_connections) {
            // Every connection is serving a request: this one must wait.
            drop(stream);
            continue;
        }
        let (id, busy, close) = registry.add();
        let reg = Arc::clone(&registry);
        let router = router.clone();
        tokio::spawn(async move {
            serve_conn(stream, router, limits, busy, close).await;
            reg.remove(id);
        });
    }
    registry.close_all();
    loop {
        let emptied = registry.empty.notified();
        if registry.len() == 0 {
            return;
        }
        emptied.await;
    }
}

/// Serve one connection until it ends or is told to close.
async fn serve_conn(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: ConnLimits,
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
) {
    let served = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::clone(&busy);
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let busy = Arc::clone(&in_flight);
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        busy.fetch_add(1, Ordering::SeqCst);
        let guard = BusyGuard(busy);
        async move {
            let resp = router.oneshot(req.map(Body::new)).await;
            let mut resp = match resp {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if n >= limits.max_requests_per_connection {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let (parts, body) = resp.into_parts();
            let body = Body::new(Guarded {
                body,
                _guard: guard,
            });
            Ok::<_, Infallible>(axum::http::Response::from_parts(parts, body))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(
            TokioIo::new(super::framing::WithErrorBodies::new(
                stream,
                Arc::clone(&busy),
            )),
            svc,
        );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = close.notified() => {
            // No request in flight (half-sent headers or idle): close now;
            // hyper's graceful close would wait for the headers to finish.
            if busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

/// Counts a request as in flight until its response body is dropped.
struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight.
struct Guarded {
    body: Body,
    _guard: BusyGuard,
}

impl axum::body::HttpBody for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
