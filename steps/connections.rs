//! Hostile connections against the real binary (issue 13 point 1;
//! WORKER-4420): half-open sockets by the thousand under a small file
//! limit, a short body, and a held header beside a running stream.

use crate::steps::http::{self, Auth};
use crate::steps::world::World;
use cucumber::{given, then, when};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[given(regex = r"^the worker's open-file limit is (\d+)$")]
fn nofile(w: &mut World, n: u64) {
    w.nofile = Some(n);
}

fn rss_bytes(w: &World) -> u64 {
    let Some(worker) = &w.worker else {
        w.fail("no worker was started")
    };
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", worker.pid)).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| w.fail("the worker's VmRSS could not be read"))
}

#[when("I note the worker's resident memory")]
fn note_rss(w: &mut World) {
    w.rss_before = Some(rss_bytes(w));
}

/// Connect and send a request line and one header, never the blank line.
async fn half_open(addr: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: worker\r\n")
        .await
        .ok()?;
    Some(s)
}

#[when(regex = r"^(\d+) connections each send half a request header and hold it$")]
async fn many_half_open(w: &mut World, n: usize) {
    let addr = format!("127.0.0.1:{}", w.port);
    let mut held = Vec::with_capacity(n);
    let mut refused = 0usize;
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(2), half_open(&addr)).await {
            Ok(Some(s)) => held.push(s),
            _ => refused += 1,
        }
    }
    println!(
        "held {} half-open connections ({refused} could not connect or write)",
        held.len()
    );
    w.held = held;
}

#[when("those connections are closed")]
fn close_held(w: &mut World) {
    w.held.clear();
}

#[then(regex = r#"^"([^"]+)" answers 200 within (\d+) seconds (without a token|with the token)$"#)]
async fn answers_within(w: &mut World, path: String, secs: u64, how: String) {
    let auth = if how == "with the token" {
        Auth::Token
    } else {
        Auth::None
    };
    let until = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    // A fresh connection each try: a pooled one from earlier steps would
    // bypass the very accept this checks.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|e| w.fail(format!("cannot build an HTTP client: {e}")));
    loop {
        let url = format!("{}{path}", w.base_url());
        let mut req = client.get(&url).timeout(Duration::from_secs(5));
        if matches!(auth, Auth::Token) {
            req = req.bearer_auth(&w.token);
        }
        if let Ok(r) = req.send().await {
            if r.status().as_u16() == 200 {
                println!("{path} answered 200 after {} ms", t0.elapsed().as_millis());
                return;
            }
        }
        if Instant::now() > until {
            w.fail(format!("{path} did not answer 200 within {secs} s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[then(
    regex = r"^the worker's resident memory is back within (\d+) MiB of the noted value within (\d+) seconds$"
)]
async fn rss_back(w: &mut World, mib: u64, secs: u64) {
    let Some(before) = w.rss_before else {
        w.fail("no memory was noted before")
    };
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = rss_bytes(w);
        if now <= before + (mib << 20) {
            return;
        }
        if Instant::now() > until {
            w.fail(format!("resident memory {now} bytes, noted {before} bytes"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[then("the ready answer still shows the sealed shard")]
async fn still_sealed(w: &mut World) {
    let r = http::send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let j = r.json.unwrap_or_default();
    w.check(
        r.status == 200 && j["ready"] == true && j["handles"][0]["sealed"] == true,
        format!("the ready answer is HTTP {}: {j}", r.status),
    );
}

#[when(
    regex = r"^I send an execute whose Content-Length promises (\d+) bytes but only (\d+) arrive$"
)]
async fn short_body(w: &mut World, promised: usize, sent: usize) {
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", w.port))
        .await
        .unwrap_or_else(|e| w.fail(format!("cannot connect: {e}")));
    let head = format!(
        "POST /worker/execute HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {promised}\r\n\r\n",
        w.token
    );
    let t0 = Instant::now();
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| w.fail(format!("cannot write: {e}")));
    s.write_all(&vec![b' '; sent])
        .await
        .unwrap_or_else(|e| w.fail(format!("cannot write: {e}")));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server has answered (a complete JSON body) or closed.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    w.raw_answer = Some((String::from_utf8_lossy(&answer).to_string(), t0.elapsed()));
}

#[then(regex = r#"^the answer is (\d+) with the error code "([A-Z_]+)" within (\d+) seconds$"#)]
fn raw_answer_is(w: &mut World, status: u16, code: String, secs: u64) {
    let Some((text, took)) = w.raw_answer.clone() else {
        w.fail("no raw request was sent")
    };
    w.check(
        text.starts_with(&format!("HTTP/1.1 {status}"))
            && text.contains(&format!("\"code\":\"{code}\"")),
        format!("the answer was {text:?}"),
    );
    w.check(
        took < Duration::from_secs(secs),
        format!("the answer took {took:?}"),
    );
}

#[when("a connection sends half a request header and holds it")]
async fn one_half_open(w: &mut World) {
    let addr = format!("127.0.0.1:{}", w.port);
    match half_open(&addr).await {
        Some(s) => w.held = vec![s],
        None => w.fail("could not open the connection"),
    }
}

#[then(regex = r"^the worker closes that connection within (\d+) seconds$")]
async fn worker_closes(w: &mut World, secs: u64) {
    let Some(mut s) = w.held.pop() else {
        w.fail("no connection is held")
    };
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    w.check(
        closed.is_ok(),
        format!("the connection was still open after {secs} s"),
    );
}

/// The stream outlived the header timeout several times over and still
/// ended with its `end` event: the timeout never cuts a response.
#[then(regex = r"^the stream lasted more than (\d+) times the header timeout$")]
fn outlived_timeout(w: &mut World, times: u64) {
    let timeout = w
        .config
        .get("header_read_timeout_ms")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| w.fail("the scenario sets no header_read_timeout_ms"));
    let s = w.stream();
    let lasted = match (s.events.first(), s.events.last()) {
        (Some(a), Some(b)) => b.at.duration_since(a.at),
        _ => w.fail("the stream has no events"),
    };
    w.check(
        lasted > Duration::from_millis(times * timeout),
        format!("the stream lasted {lasted:?}; the header timeout is {timeout} ms"),
    );
}

/// Bytes that are not a request hyper can read: the worker answers them
/// itself, before any route (issue 13 point 5: with the error body too).
#[when(
    regex = r"^a connection sends (a request line that is not HTTP|headers larger than the worker reads)$"
)]
async fn send_unframed(w: &mut World, what: String) {
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", w.port))
        .await
        .unwrap_or_else(|e| w.fail(format!("cannot connect: {e}")));
    let bytes = match what.as_str() {
        "a request line that is not HTTP" => b"GARBAGE\x01 / NOT-HTTP\r\n\r\n".to_vec(),
        _ => {
            let mut h = b"GET /health HTTP/1.1\r\nHost: worker\r\n".to_vec();
            for i in 0..200 {
                h.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(64)).as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            h
        }
    };
    let t0 = Instant::now();
    let _ = s.write_all(&bytes).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    w.raw_answer = Some((String::from_utf8_lossy(&answer).to_string(), t0.elapsed()));
}
