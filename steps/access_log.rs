//! Steps about access lines and the log budget (issue 13 point 4): one
//! access line per request, and a flood of requests that cannot grow the log
//! faster than a fixed rate, with what was left out counted.

use std::time::{Duration, Instant};

use cucumber::{then, when};
use serde_json::{Map, Value};

use crate::steps::logs::{field, json_lines};
use crate::steps::world::World;

/// The access lines of `method route` answered `status`.
fn access_lines(w: &World, method: &str, route: &str, status: u64) -> Vec<Map<String, Value>> {
    json_lines(w)
        .into_iter()
        .filter(|m| {
            field(m, "event") == "access"
                && field(m, "method") == method
                && field(m, "route") == route
                && m.get("status").and_then(Value::as_u64) == Some(status)
        })
        .collect()
}

/// The access lines of `method route` answered `status`, read again (up to
/// 3 s) until there are `n`: a stream's line is written when it ends.
async fn await_access_lines(
    w: &World,
    method: &str,
    route: &str,
    status: u64,
    n: usize,
) -> Vec<Map<String, Value>> {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let lines = access_lines(w, method, route, status);
        if lines.len() >= n || Instant::now() > until {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One access line for `method route` answered `status` (of the request
/// with correlation id `corr`, when given: the harness polls some routes).
#[then(
    regex = r#"^the worker log has one access line for "(GET|POST) ([^"]+)"(?: with correlation id "([^"]+)")? with status (\d+), a latency and the caller's token fingerprint$"#
)]
async fn one_access_line(w: &mut World, method: String, route: String, corr: String, status: u64) {
    let mut lines = await_access_lines(w, &method, &route, status, 1).await;
    if !corr.is_empty() {
        lines.retain(|l| field(l, "correlation_id") == corr);
    }
    w.check(
        lines.len() == 1,
        format!(
            "{} access lines for {method} {route} {status}: {lines:?}",
            lines.len()
        ),
    );
    let fp6 = crate::steps::security::fp6(&w.token);
    if let Some(l) = lines.first() {
        let ms = l.get("latency_ms").and_then(Value::as_f64);
        w.check(
            ms.is_some_and(|ms| ms >= 0.0) && field(l, "fp6") == fp6,
            format!("the access line lacks a latency or the fingerprint {fp6}: {l:?}"),
        );
    }
}

#[then(regex = r#"^the access line of "POST /worker/execute" counts the stream's token events$"#)]
async fn execute_line_counts_tokens(w: &mut World) {
    let lines = await_access_lines(w, "POST", "/worker/execute", 200, 1).await;
    let want = w.stream().tokens().len() as u64;
    let got: Vec<Option<u64>> = lines
        .iter()
        .map(|l| l.get("tokens").and_then(Value::as_u64))
        .collect();
    w.check(
        got == [Some(want)],
        format!(
            "the execute access lines count {got:?} tokens; the stream had {want} token events"
        ),
    );
}

#[when(regex = r#"^(\d+) requests to "([^"]+)" carry a wrong token$"#)]
async fn flood_wrong_token(w: &mut World, n: usize, path: String) {
    use futures::StreamExt;
    let url = format!("{}{}", w.base_url(), path);
    let http = w.http.clone();
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.post(&url)
                    .bearer_auth("wrong-token-0123456789abcdef")
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let refused = statuses.iter().filter(|&&s| s == 401).count();
    w.check(
        refused == n,
        format!("{refused} of {n} requests with a wrong token were answered 401"),
    );
}

/// Every refused request is either written as an access line or counted in
/// a `log_lines_suppressed` summary of its kind: the two add up to the
/// requests sent, and the lines written stay within the budget.
#[then(
    regex = r#"^within (\d+) seconds the access lines and the counts left out of "(\d+) (GET|POST) ([^"]+)" add up to (\d+), with at most (\d+) lines written$"#
)]
async fn lines_plus_suppressed(
    w: &mut World,
    secs: u64,
    status: u64,
    method: String,
    route: String,
    sent: u64,
    most: usize,
) {
    let kind = format!("{status} {method} {route}");
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut written, mut left_out) = (0usize, 0u64);
    while Instant::now() < until {
        written = access_lines(w, &method, &route, status).len();
        left_out = json_lines(w)
            .iter()
            .filter(|m| field(m, "event") == "log_lines_suppressed" && field(m, "kind") == kind)
            .filter_map(|m| m.get("suppressed").and_then(Value::as_u64))
            .sum();
        if written as u64 + left_out >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    w.check(
        written as u64 + left_out == sent && written <= most,
        format!("{written} access lines written and {left_out} counted as left out for {kind}; {sent} requests were sent (at most {most} lines allowed)"),
    );
}

#[when("I note the size of the worker log")]
fn note_log_size(w: &mut World) {
    w.log_bytes_before = Some(w.log_text().len() as u64);
}

#[then(regex = r"^the worker log grew by less than (\d+) KiB$")]
fn log_grew_less(w: &mut World, kib: u64) {
    let Some(before) = w.log_bytes_before else {
        w.fail("the log size was not noted before")
    };
    let grew = (w.log_text().len() as u64).saturating_sub(before);
    w.check(
        grew < kib * 1024,
        format!("the worker log grew by {grew} bytes (limit {kib} KiB)"),
    );
}
