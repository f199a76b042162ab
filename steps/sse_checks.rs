//! Assertions over recorded execute streams (WORKER-4246-4253): event names
//! and order, the shapes of `started`, `token`, `end` and `error`, closing
//! after the final event, and cancel acknowledgement. The streams themselves
//! are read by `sse`.

use crate::steps::http;
use crate::steps::sse::finish_background;
use crate::steps::world::World;
use cucumber::then;
use serde_json::Value;

#[then(regex = r#"^the stream answered with status (\d+) and content type "([^"]+)"$"#)]
fn stream_status(w: &mut World, status: u16, ct: String) {
    let s = w.stream();
    w.check(
        s.status == status && s.content_type.starts_with(&ct),
        format!("got HTTP {} {:?}", s.status, s.content_type),
    );
}

#[then(regex = r#"^the event names are all among (.+)$"#)]
fn names_among(w: &mut World, list: String) {
    let allowed = http::quoted_list(&list);
    for e in &w.stream().events {
        w.check(
            allowed.contains(&e.name),
            format!("unexpected event {:?}", e.name),
        );
    }
}

#[then(regex = r#"^the stream starts with a "started" event$"#)]
fn starts_with_started(w: &mut World) {
    let first = w.stream().events.first().map(|e| e.name.clone());
    w.check(
        first.as_deref() == Some("started"),
        format!("the first event is {first:?}"),
    );
}

fn event_json(w: &World, name: &str) -> Value {
    match w.stream().events.iter().find(|e| e.name == name) {
        Some(e) => e.json(),
        None => w.fail(format!("the stream has no {name:?} event")),
    }
}

#[then(regex = r#"^the (started|end|error) event has the fields (.+)$"#)]
fn event_fields(w: &mut World, name: String, fields: String) {
    let v = event_json(w, &name);
    http::check_fields(w, &v, &fields, &format!("the {name} event"));
}

#[then(regex = r"^the started event has queue_position (\d+)$")]
fn queue_pos(w: &mut World, n: u64) {
    let v = event_json(w, "started");
    w.check(
        v["queue_position"].as_u64() == Some(n),
        format!("queue_position is {}", v["queue_position"]),
    );
}

#[then(regex = r#"^the token events have data with exactly the fields "t" and "i"$"#)]
fn token_shape(w: &mut World) {
    let toks: Vec<Value> = w.stream().tokens().iter().map(|e| e.json()).collect();
    w.check(!toks.is_empty(), "the stream has no token events");
    for v in toks {
        let ok = v
            .as_object()
            .is_some_and(|o| o.len() == 2 && o["t"].is_string() && o["i"].is_u64());
        w.check(
            ok,
            format!("a token event is not {{\"t\": string, \"i\": integer}}: {v}"),
        );
    }
}

#[then("the token events are numbered from 0 without gaps")]
fn token_indices(w: &mut World) {
    let idx: Vec<u64> = w
        .stream()
        .tokens()
        .iter()
        .map(|e| e.json()["i"].as_u64().unwrap_or(u64::MAX))
        .collect();
    let want: Vec<u64> = (0..idx.len() as u64).collect();
    w.check(idx == want, format!("token indices are {idx:?}"));
}

#[then(regex = r#"^the stream ends with an? "(end|error)" event$"#)]
fn ends_with(w: &mut World, name: String) {
    let s = w.stream();
    let t = s.terminal().map(|(_, e)| (e.name.clone(), e.data.clone()));
    w.check(
        t.as_ref().map(|x| x.0.as_str()) == Some(name.as_str()),
        format!("the stream ended with {t:?} (HTTP {})", s.status),
    );
}

#[then(regex = r#"^the stream ends with an "error" event with code "([A-Z_]+)"$"#)]
fn ends_with_error(w: &mut World, code: String) {
    let t = w
        .stream()
        .terminal()
        .map(|(_, e)| (e.name.clone(), e.json()));
    match t {
        Some((n, v)) if n == "error" => {
            w.check(
                v["code"] == code.as_str(),
                format!("the error event has code {}", v["code"]),
            );
            for k in ["code", "message", "retriable", "retry_after_ms"] {
                w.check(
                    v.get(k).is_some(),
                    format!("the error event lacks {k}: {v}"),
                );
            }
        }
        other => w.fail(format!(
            "expected an error event with {code}, the stream ended with {other:?}"
        )),
    }
}

/// The terminal error event's message, in words an operator reads.
#[then(regex = r#"^the stream's error message mentions "([^"]+)"$"#)]
fn error_event_mentions(w: &mut World, text: String) {
    let t = w
        .stream()
        .terminal()
        .map(|(_, e)| (e.name.clone(), e.json()));
    let message = match &t {
        Some((n, v)) if n == "error" => v["message"].as_str().unwrap_or_default().to_string(),
        other => w.fail(format!(
            "the stream ended with {other:?}, not an error event"
        )),
    };
    w.check(
        message.to_lowercase().contains(&text.to_lowercase()),
        format!("the error event's message {message:?} does not mention {text:?}"),
    );
}

#[then(regex = r#"^the execution is refused with code "([A-Z_]+)"$"#)]
fn refused_with(w: &mut World, code: String) {
    let s = w.stream().clone();
    if s.status == 200 {
        ends_with_error(w, code);
    } else {
        let r = w.last().clone();
        http::assert_error_body(w, &r, &code);
    }
}

#[then("the end event's tokens_out equals the number of token events")]
fn tokens_out(w: &mut World) {
    let n = w.stream().tokens().len() as u64;
    let v = event_json(w, "end");
    w.check(
        v["tokens_out"].as_u64() == Some(n),
        format!(
            "tokens_out is {} but {n} token events arrived",
            v["tokens_out"]
        ),
    );
}

#[then(regex = r#"^the end event's finish_reason is "(\w+)"$"#)]
fn finish_reason(w: &mut World, r: String) {
    let v = event_json(w, "end");
    w.check(
        v["finish_reason"] == r.as_str(),
        format!("finish_reason is {}", v["finish_reason"]),
    );
}

#[then(regex = r#"^the end event's finish_reason is one of (.+)$"#)]
fn finish_reason_any(w: &mut World, list: String) {
    let v = event_json(w, "end");
    let ok = http::quoted_list(&list)
        .iter()
        .any(|r| v["finish_reason"] == r.as_str());
    w.check(ok, format!("finish_reason is {}", v["finish_reason"]));
}

#[then(regex = r"^the stream has exactly (\d+) token events$")]
fn exactly_tokens(w: &mut World, n: usize) {
    let got = w.stream().tokens().len();
    w.check(
        got == n,
        format!("{got} token events, expected exactly {n}"),
    );
}

#[then(regex = r"^the stream has at most (\d+) token events$")]
fn at_most_tokens(w: &mut World, n: usize) {
    let got = w.stream().tokens().len();
    w.check(
        got <= n,
        format!("{got} token events, expected at most {n}"),
    );
}

#[then("nothing follows the final event and the stream is closed")]
fn nothing_after(w: &mut World) {
    let s = w.stream();
    let Some((i, _)) = s.terminal() else {
        w.fail("the stream has no end or error event")
    };
    w.check(
        i + 1 == s.events.len(),
        format!("{} events followed the final one", s.events.len() - i - 1),
    );
    w.check(
        s.closed,
        format!(
            "the server did not close the stream ({:?})",
            s.transport_error
        ),
    );
}

#[then(regex = r#"^the header "X-Job-Id" equals the started event's job_id$"#)]
fn job_header(w: &mut World) {
    let v = event_json(w, "started");
    let h = w.stream().job_header.clone();
    w.check(
        h.is_some() && v["job_id"].as_str() == h.as_deref(),
        format!("X-Job-Id {h:?} vs job_id {}", v["job_id"]),
    );
}

/// WORKER-4252: no token event is sent once a cancel is acknowledged.
///
/// Why not timing: the stream and the cancel travel on two connections, so
/// the order in which the client reads them proves nothing about the order
/// the worker sent them in. A token sent just before the acknowledgement may
/// be read just after it, and any grace period long enough to absorb that
/// (the old check allowed 250 ms) also lets a cancel that lags a few decode
/// steps through. Instead the acknowledgement states a sequence point,
/// `tokens_sent`: the number of token events the stream had sent when the
/// cancel took effect (the worker checks and counts each token under the
/// lock the cancel takes). That claim is checked against what the client
/// really receives on the other connection, read to its end:
/// - exactly `tokens_sent` token events arrive, numbered 0..tokens_sent-1.
///   A token sent after the acknowledgement makes the count exceed the
///   claim. Covering late tokens by claiming more would leave the stream
///   short of the claim, so that fails too;
/// - the claim is at least the number of tokens the client had received
///   before it sent the cancel: a worker's count cannot be below what
///   provably left before the cancel existed (no worker answer involved);
/// - the cancel raced a running decode loop: the stream was still open when
///   the cancel was sent, after N tokens had streamed (the `after N token
///   events` step), and the scenario then sees it end with `error`
///   CANCELLED, not a natural `end`.
#[then("no token event follows the cancel acknowledgement")]
async fn none_after_cancel(w: &mut World) {
    finish_background(w).await;
    let Some(c) = w.cancel.clone() else {
        w.fail("no cancel was sent")
    };
    w.check(
        c.acked,
        format!(
            "the cancel was not acknowledged with 200 and cancelled=true: {}",
            w.last().text
        ),
    );
    let Some(sent) = c.tokens_sent else {
        w.fail(format!(
            "the acknowledgement does not say how many tokens were sent (tokens_sent): {}",
            w.last().text
        ))
    };
    w.check(
        c.running_at_send,
        format!(
            "the stream had already ended when the cancel was sent ({} tokens by then), so the cancel raced nothing",
            c.tokens_at_send
        ),
    );
    w.check(
        sent >= c.tokens_at_send as u64,
        format!(
            "the acknowledgement says {sent} tokens were sent, but the client had received {} before it sent the cancel",
            c.tokens_at_send
        ),
    );
    let idx: Vec<u64> = w
        .stream()
        .tokens()
        .iter()
        .map(|e| e.json()["i"].as_u64().unwrap_or(u64::MAX))
        .collect();
    let got = idx.len() as u64;
    w.check(
        got <= sent,
        format!(
            "{} token events arrived after the cancel was acknowledged: the acknowledgement said {sent} had been sent, \
             the stream carried {got} (indices after the acknowledged ones: {:?})",
            got - sent.min(got),
            idx.iter().filter(|&&i| i >= sent).collect::<Vec<_>>()
        ),
    );
    w.check(
        got >= sent,
        format!("the acknowledgement said {sent} tokens had been sent, but only {got} arrived"),
    );
    let want: Vec<u64> = (0..got).collect();
    w.check(
        idx == want,
        format!("token indices are {idx:?}, expected 0..{got}"),
    );
}

fn predicted_start_ms(w: &World) -> u64 {
    let v = event_json(w, "started");
    match v["predicted_start_ms"].as_u64() {
        Some(n) => n,
        None => w.fail(format!(
            "predicted_start_ms is not a whole number: {}",
            v["predicted_start_ms"]
        )),
    }
}

#[then("the started event's predicted_start_ms is positive")]
fn predicted_positive(w: &mut World) {
    let n = predicted_start_ms(w);
    w.check(
        n > 0,
        "predicted_start_ms is 0, but a seal check of this model takes measurable time",
    );
}

/// The prediction must be the duration of the latest seal check, which the
/// worker also reports in `worker_orcd_seal_verification_seconds`: read
/// after the first job (one check so far), it predicts the second job's start.
/// The prediction is that duration in whole milliseconds rounded up
/// (docs/openapi.json), so it is the ceiling of the metric's seconds × 1000:
/// at least the measured time and less than a millisecond above it.
#[then("the started event's predicted_start_ms equals the seal check in the metrics read before")]
fn predicted_is_seal_check(w: &mut World) {
    let n = predicted_start_ms(w);
    let Some(m) = w.metrics_before.clone() else {
        w.fail("no metrics were read before this job")
    };
    let count = m
        .get("worker_orcd_seal_verification_seconds_count")
        .copied();
    let sum = m.get("worker_orcd_seal_verification_seconds_sum").copied();
    let (Some(count), Some(sum)) = (count, sum) else {
        w.fail("the metrics lack worker_orcd_seal_verification_seconds")
    };
    w.check(
        count == 1.0,
        format!("expected exactly one seal check before this job, the metrics count {count}"),
    );
    let expected_ms = sum * 1000.0;
    // 1e-6 ms of slack for the decimal text of the metric.
    let ceil_ok = n as f64 + 1e-6 >= expected_ms && (n as f64) < expected_ms + 1.0 + 1e-6;
    w.check(
        expected_ms > 0.0 && n > 0 && ceil_ok,
        format!(
            "predicted_start_ms is {n}, but the latest seal check took {expected_ms:.6} ms, so it should be {}",
            expected_ms.ceil()
        ),
    );
}
