//! The load generator's pure parts (issue 11 point 7): the SSE line parser
//! on streams split at awkward places, the argument checks, the Execute
//! body, and a level's figures from hand-made records, which reuse the
//! sweep's nearest-rank percentiles.

use super::*;

fn ev(event: &str, data: &str) -> SseEvent {
    SseEvent {
        event: event.into(),
        data: data.into(),
    }
}

const STREAM: &str = "event: started\ndata: {\"job_id\":\"j\"}\n\n\
                      : keep-alive\n\n\
                      event: token\ndata: {\"t\":\" Paris\",\"i\":0}\n\n\
                      event: end\ndata: {\"tokens_out\":1}\n\n";

#[test]
fn sse_parser_reads_whole_events() {
    let mut p = SseParser::default();
    assert_eq!(
        p.push(STREAM.as_bytes()),
        vec![
            ev("started", "{\"job_id\":\"j\"}"),
            ev("token", "{\"t\":\" Paris\",\"i\":0}"),
            ev("end", "{\"tokens_out\":1}"),
        ]
    );
}

#[test]
fn sse_parser_gives_the_same_events_whatever_the_split() {
    let whole = SseParser::default().push(STREAM.as_bytes());
    let bytes = STREAM.as_bytes();
    for cut in 1..bytes.len() {
        let mut p = SseParser::default();
        let mut got = p.push(&bytes[..cut]);
        got.extend(p.push(&bytes[cut..]));
        assert_eq!(got, whole, "split at byte {cut}");
    }
    // One byte at a time, with a multi-byte character in the data.
    let mut p = SseParser::default();
    let got: Vec<SseEvent> = "event: token\ndata: {\"t\":\"é\"}\n\n"
        .bytes()
        .flat_map(|b| p.push(&[b]))
        .collect();
    assert_eq!(got, vec![ev("token", "{\"t\":\"é\"}")]);
}

#[test]
fn sse_parser_handles_crlf_multiline_data_and_unnamed_events() {
    let mut p = SseParser::default();
    let got = p.push(b"event:error\r\ndata: a\r\ndata:b\r\nid: 7\r\n\r\ndata: x\n\n\n");
    assert_eq!(got, vec![ev("error", "a\nb"), ev("message", "x")]);
    // An incomplete event waits for its blank line.
    assert!(p.push(b"event: token\ndata: {}\n").is_empty());
    assert_eq!(p.push(b"\n"), vec![ev("token", "{}")]);
}

#[test]
fn error_events_give_their_code() {
    assert_eq!(
        error_code(r#"{"code":"CANCELLED","message":"m","retriable":false}"#),
        "CANCELLED"
    );
    assert_eq!(error_code("not json"), "UNREADABLE_ERROR_EVENT");
}

fn args() -> LoadgenArgs {
    LoadgenArgs {
        url: "http://127.0.0.1:8080/".into(),
        token_file: "t".into(),
        handle: None,
        concurrency: "1,4".into(),
        requests_per_level: None,
        prompt: None,
        prompt_words: None,
        max_tokens: 16,
        seed: 5,
        retry: 0,
        timeout_s: 30,
        out_dir: ".".into(),
        plans_during: 0,
        plan_model: None,
        plan_interval_ms: 0,
    }
}

#[test]
fn arguments_are_checked_with_plain_messages() {
    let p = check_args(&args(), "tok".into()).expect("good args");
    assert_eq!(p.base, "http://127.0.0.1:8080");
    assert_eq!(p.levels, vec![1, 4]);
    assert_eq!(p.prompt, PromptSource::Words(32));
    let bad: Vec<(LoadgenArgs, &str)> = vec![
        (
            LoadgenArgs {
                url: "127.0.0.1:8080".into(),
                ..args()
            },
            "--url",
        ),
        (
            LoadgenArgs {
                concurrency: "0".into(),
                ..args()
            },
            "--concurrency",
        ),
        (
            LoadgenArgs {
                requests_per_level: Some(0),
                ..args()
            },
            "--requests-per-level",
        ),
        (
            LoadgenArgs {
                prompt: Some(String::new()),
                ..args()
            },
            "--prompt",
        ),
        (
            LoadgenArgs {
                prompt_words: Some(0),
                ..args()
            },
            "--prompt-words",
        ),
        (
            LoadgenArgs {
                prompt: Some("x".into()),
                prompt_words: Some(3),
                ..args()
            },
            "not both",
        ),
        (
            LoadgenArgs {
                max_tokens: 0,
                ..args()
            },
            "--max-tokens",
        ),
        (
            LoadgenArgs {
                retry: MAX_RETRIES + 1,
                ..args()
            },
            "--retry",
        ),
        (
            LoadgenArgs {
                timeout_s: 0,
                ..args()
            },
            "--timeout-s",
        ),
    ];
    for (a, needle) in bad {
        let e = check_args(&a, "tok".into()).expect_err(needle);
        assert_eq!(e.code(), "INVALID_PARAMS");
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    let e = check_args(&args(), String::new()).expect_err("empty token");
    assert!(e.message().contains("empty"));
}

#[test]
fn execute_bodies_follow_the_api_and_differ_per_request() {
    let p = check_args(
        &LoadgenArgs {
            prompt_words: Some(6),
            ..args()
        },
        "tok".into(),
    )
    .expect("args");
    let b0 = execute_body(&p, "s1", 0);
    let b1 = execute_body(&p, "s1", 1);
    assert_eq!(b0["handle_id"], "s1");
    assert_eq!(b0["params"]["max_tokens"], 16);
    assert_eq!(b0["params"]["seed"], 5);
    assert_eq!(b1["params"]["seed"], 6);
    assert_eq!(b0["prompt"].as_str().map(|s| s.split(' ').count()), Some(6));
    assert_ne!(b0["prompt"], b1["prompt"]);
    let body = serde_json::to_vec(&b0).expect("json");
    let lim = crate::http::validate::Limits::default();
    let req = crate::http::validate::execute(&body, &lim).expect("the daemon accepts it");
    assert_eq!(req.params.seed, 5);
    let t = PromptSource::Text("hi".into());
    assert_eq!(t.for_request(0), t.for_request(9));
}

fn record(sent: Instant, offsets_ms: &[u64], outcome: Outcome) -> Record {
    Record {
        sent,
        tokens: offsets_ms
            .iter()
            .map(|&o| sent + Duration::from_millis(o))
            .collect(),
        outcome,
        worker_decode: None,
    }
}

#[test]
fn a_level_is_summarized_with_nearest_rank_percentiles() {
    let t = Instant::now();
    let records = vec![
        // TTFT 10, gaps 5 and 5.
        record(t, &[10, 15, 20], Outcome::Done),
        // TTFT 30, gaps 10 and 20.
        record(t, &[30, 40, 60], Outcome::Done),
        record(t, &[], Outcome::Refused),
        record(t, &[50], Outcome::Failed("CANCELLED".into())),
        record(t, &[], Outcome::Failed("CONNECT_FAILED".into())),
    ];
    let l = summarize(4, &records, Duration::from_millis(100), 2);
    assert_eq!((l.requests, l.completed, l.refused, l.failed), (5, 2, 1, 2));
    assert_eq!(l.failed_by_code.get("CANCELLED"), Some(&1));
    assert_eq!(l.failed_by_code.get("CONNECT_FAILED"), Some(&1));
    assert_eq!(l.tokens, 7);
    assert_eq!(l.max_streams, 2);
    // TTFTs 10, 30, 50: p50 rank ceil(1.5) = 2 → 30; p99 rank 3 → 50.
    assert_eq!(l.ttft_p50_ms, Some(30.0));
    assert_eq!(l.ttft_p99_ms, Some(50.0));
    // Gaps 5, 5, 10, 20: p50 rank 2 → 5; p99 rank ceil(3.96) = 4 → 20.
    assert_eq!(l.itl_p50_ms, Some(5.0));
    assert_eq!(l.itl_p99_ms, Some(20.0));
    // 4 tokens after first ones, from 10 ms to 60 ms.
    assert!(
        (l.decode_tok_s - 4.0 / 0.050).abs() < 1e-6,
        "{}",
        l.decode_tok_s
    );
    assert!((l.wall_s - 0.1).abs() < 1e-9);
    let row = csv(&LoadReport {
        url: "u".into(),
        handle: "h".into(),
        max_tokens: 3,
        prompt: "p".into(),
        levels: vec![l],
    });
    assert!(row.contains("\"CANCELLED=1;CONNECT_FAILED=1\""), "{row}");
}

#[test]
fn a_level_with_no_tokens_has_no_percentiles() {
    let l = summarize(
        1,
        &[record(Instant::now(), &[], Outcome::Refused)],
        Duration::ZERO,
        0,
    );
    assert_eq!(l.ttft_p50_ms, None);
    assert_eq!(l.itl_p99_ms, None);
    assert_eq!(l.decode_tok_s, 0.0);
}

/// A stand-in worker: its handle is `s9`; Execute with an even seed streams
/// three tokens and `end`, an odd seed is refused with 429 WORKER_BUSY, and
/// seed 4 fails mid-stream with an `error` event. Counts Execute attempts.
async fn fake_worker(attempts: Arc<AtomicUsize>) -> String {
    use axum::routing::{get, post};
    let ready = get(|| async {
        axum::Json(
            serde_json::json!({"ready": true, "handles": [{"shard_id": "s9", "model_ref": "m.gguf"}]}),
        )
    });
    // Plans of the served model answer 200; any other model is refused as busy.
    let plan = post(|body: String| async move {
        use axum::response::IntoResponse;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["model_ref"] == "m.gguf" {
            axum::Json(serde_json::json!({"feasible": true})).into_response()
        } else {
            let busy = r#"{"code":"WORKER_BUSY","retriable":true,"retry_after_ms":100}"#;
            (axum::http::StatusCode::TOO_MANY_REQUESTS, busy).into_response()
        }
    });
    let execute = post(move |headers: axum::http::HeaderMap, body: String| {
        let attempts = attempts.clone();
        async move {
            attempts.fetch_add(1, Ordering::SeqCst);
            fake_execute(&headers, &body)
        }
    });
    let app = axum::Router::new()
        .route("/worker/ready", ready)
        .route("/worker/plan", plan)
        .route("/worker/execute", execute);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn fake_execute(headers: &axum::http::HeaderMap, body: &str) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if auth != Some("Bearer tok") || v["handle_id"] != "s9" {
        return (StatusCode::BAD_REQUEST, r#"{"code":"INVALID_PARAMS"}"#).into_response();
    }
    let token = "event: token\ndata: {\"t\":\"a\",\"i\":0}\n\n";
    let stream = match v["params"]["seed"].as_u64().unwrap_or(1) {
        4 => format!("event: started\ndata: {{}}\n\n{token}event: error\ndata: {{\"code\":\"CANCELLED\"}}\n\n"),
        s if s % 2 == 1 => {
            let busy = r#"{"code":"WORKER_BUSY","message":"busy","retriable":true,"retry_after_ms":1}"#;
            return (StatusCode::TOO_MANY_REQUESTS, busy).into_response();
        }
        _ => format!("event: started\ndata: {{}}\n\n{token}: keep-alive\n\n{token}{token}event: end\ndata: {{}}\n\n"),
    };
    ([("content-type", "text/event-stream")], stream).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_counts_streams_refusals_and_errors_against_a_worker() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let base = fake_worker(attempts.clone()).await;
    let a = LoadgenArgs {
        url: base,
        concurrency: "1,5".into(),
        ..args()
    };
    let mut plan = check_args(&a, "tok".into()).expect("args");
    plan.seed = 0;
    let r = drive(&plan, None).await.expect("drive");
    assert_eq!(r.handle, "s9", "the handle comes from /worker/ready");
    let one = &r.levels[0];
    assert_eq!((one.requests, one.completed, one.tokens), (1, 1, 3));
    assert!(one.itl_p50_ms.is_some());
    // Seeds 0..5: 0 and 2 stream, 1 and 3 are refused, 4 fails after one token.
    let five = &r.levels[1];
    assert_eq!(
        (five.requests, five.completed, five.refused, five.failed),
        (5, 2, 2, 1)
    );
    assert_eq!(five.failed_by_code.get("CANCELLED"), Some(&1));
    assert_eq!(five.tokens, 7);
    assert!((1..=3).contains(&five.max_streams));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        6,
        "no retries without --retry"
    );
    // With --retry 2 a refused request is sent three times, then reported.
    plan.retry = 2;
    plan.levels = vec![2];
    let r = drive(&plan, Some("s9".into())).await.expect("drive");
    assert_eq!((r.levels[0].completed, r.levels[0].refused), (1, 1));
    assert_eq!(attempts.load(Ordering::SeqCst), 6 + 1 + 3);
}

/// `--plans-during`: each level runs alone, then beside the Plan clients,
/// which name the served model unless told otherwise; refusals are counted
/// by status and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_during_a_level_run_it_twice_and_count_the_plans() {
    let base = fake_worker(Arc::new(AtomicUsize::new(0))).await;
    let a = LoadgenArgs {
        url: base,
        concurrency: "1".into(),
        plans_during: 3,
        ..args()
    };
    let mut plan = check_args(&a, "tok".into()).expect("args");
    plan.seed = 0;
    let r = drive(&plan, None).await.expect("drive");
    assert_eq!(r.levels.len(), 2, "alone, then beside Plans");
    assert!(r.levels[0].plans.is_none());
    let p = r.levels[1].plans.clone().expect("plans");
    assert_eq!(p.clients, 3);
    assert!(p.answered >= 3 && p.refused_by.is_empty(), "{p:?}");
    assert!(p.p50_ms.is_some());
    assert!(
        csv(&r).lines().nth(2).unwrap().contains(",3,"),
        "{}",
        csv(&r)
    );
    plan.plan_model = Some("other.gguf".into());
    let r = drive(&plan, None).await.expect("drive");
    let p = r.levels[1].plans.clone().expect("plans");
    assert_eq!(p.answered, 0);
    assert!(
        p.refused_by.get("429 WORKER_BUSY").is_some_and(|&k| k >= 3),
        "{p:?}"
    );
    let big = LoadgenArgs {
        plans_during: MAX_PLAN_CLIENTS + 1,
        ..args()
    };
    assert!(check_args(&big, "tok".into())
        .unwrap_err()
        .message()
        .contains("--plans-during"));
}

#[test]
fn the_worker_timed_decode_rate_comes_from_the_end_events() {
    assert_eq!(
        worker_decode(r#"{"tokens_out":128,"decode_time_ms":160,"finish_reason":"length"}"#),
        Some((128, 160))
    );
    assert_eq!(worker_decode(r#"{"tokens_out":1}"#), None);
    assert_eq!(worker_decode("not json"), None);
    let t = Instant::now();
    let mut a = record(t, &[10, 15, 20], Outcome::Done);
    a.worker_decode = Some((128, 160));
    let mut b = record(t, &[12, 18], Outcome::Done);
    b.worker_decode = Some((72, 40));
    let refused = record(t, &[], Outcome::Refused);
    let l = summarize(2, &[a, b, refused], Duration::from_millis(30), 2);
    // (128 + 72) tokens over (160 + 40) ms, whatever the client's reads saw.
    assert_eq!(l.worker_decode_tok_s, Some(1000.0));
    let none = summarize(
        1,
        &[record(t, &[1, 2], Outcome::Done)],
        Duration::from_millis(5),
        1,
    );
    assert_eq!(none.worker_decode_tok_s, None);
}
