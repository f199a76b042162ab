//! The listener's limits against raw sockets (issue 13 point 1): half-sent
//! headers and idle connections are closed, a connection cap makes room by
//! closing idle connections but never a streaming one, and the last allowed
//! request of a connection closes it.

use super::*;
use axum::routing::get;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        // A response that streams for ever, like an SSE stream.
        .route(
            "/stream",
            get(|| async {
                let s = futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Ok::<_, Infallible>(axum::body::Bytes::from_static(b"x")),
                        (),
                    ))
                });
                Body::from_stream(s)
            }),
        )
}

async fn start(
    max_connections: usize,
    max_requests: u64,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let limits = ConnLimits {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections,
        max_requests_per_connection: max_requests,
    };
    tokio::spawn(serve(listener, app(), limits, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Whether the server closed `s` within `within` (a read returns 0 or fails).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn get_ok(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out
}

#[tokio::test]
async fn half_sent_headers_are_cut_after_the_header_timeout() {
    let (addr, _stop) = start(64, 100).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        !closed_within(&mut s, HEADER_TIMEOUT / 2).await,
        "closed before the timeout"
    );
    assert!(
        closed_within(&mut s, HEADER_TIMEOUT * 4).await,
        "never closed"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let (addr, _stop) = start(64, 100).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, HEADER_TIMEOUT * 4).await,
        "the idle connection stayed open"
    );
}

#[tokio::test]
async fn at_the_cap_idle_connections_give_way_and_streams_do_not() {
    let (addr, _stop) = start(8, 100).await;
    // One streaming response, then half-open connections up to the cap.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        stream.read(&mut buf).await.unwrap() > 0,
        "the stream started"
    );
    let mut half_open = Vec::new();
    for _ in 0..7 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
        half_open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Well inside the header timeout, a newcomer gets in.
    let t0 = Instant::now();
    let answer = get_ok(addr, "/ok").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        t0.elapsed() < HEADER_TIMEOUT,
        "it waited for a timeout instead of an eviction"
    );
    // The oldest half-open connection made room; the stream still flows.
    assert!(closed_within(&mut half_open[0], Duration::from_millis(100)).await);
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .expect("the stream kept sending")
        .unwrap();
    assert!(n > 0, "the streaming connection was closed");
}

#[tokio::test]
async fn when_every_connection_is_streaming_a_newcomer_is_closed() {
    let (addr, _stop) = start(8, 100).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        streams.push(s);
    }
    let answer = get_ok(addr, "/ok").await;
    assert!(
        answer.is_empty(),
        "a ninth connection was served: {answer:?}"
    );
    drop(streams.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_ok(addr, "/ok").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_last_allowed_request_closes_its_connection() {
    let (addr, _stop) = start(64, 2).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1024];
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(!first.contains("connection: close"), "{first}");
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let second = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(
        second.starts_with("http/1.1 200") && second.contains("connection: close"),
        "{second}"
    );
    assert!(closed_within(&mut s, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn shutdown_waits_for_a_running_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let limits = ConnLimits {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections: 8,
        max_requests_per_connection: 100,
    };
    let server = tokio::spawn(serve(listener, app(), limits, async move {
        let _ = rx.await;
    }));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(s.read(&mut buf).await.unwrap() > 0);
    let _ = tx.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "the server stopped under a running response"
    );
    drop(s);
    tokio::time::timeout(Duration::from_secs(6), server)
        .await
        .expect("the server ended once the response was gone")
        .unwrap();
}
