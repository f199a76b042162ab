//! In-process end-to-end tests of the HTTP surface on a real tiny model and
//! the CPU engine: auth, correlation ids, SSE shape, determinism, the busy
//! slot, owner-only cancel, validation leaving state intact, plan/commit
//! (WORKER-4200–4253, 4300–4305, 4420, 4710, 4801). The spine's BDD
//! scenarios cover the same ground against the real binary.

use crate::config::{Config, ServeArgs};
use crate::daemon::app::AppState;
use crate::daemon::state::Lifecycle;
use crate::daemon::{commit, new_app, start_serving};
use crate::shard::seal::SealKey;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

const OWNER: &str = "owner-token-0123456789abcdef";
const OTHER: &str = "other-token-0123456789abcdef";

struct Rig {
    _dir: tempfile::TempDir,
    app: Arc<AppState>,
    base: String,
    http: reqwest::Client,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    fatal: tokio::sync::mpsc::UnboundedReceiver<crate::error::WorkerError>,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    std::fs::create_dir_all(&root).unwrap();
    crate::model::test_model::write_test_model(
        &crate::model::test_model::TestModelSpec::tiny_llama(),
        &root.join("tiny.gguf"),
    )
    .unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, format!("{OWNER}\n{OTHER}\n")).unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg_path = dir.path().join("cfg.json");
    let cfg_json = json!({
        "worker_id": "w-test", "pool_id": "p-test", "model_path": "tiny.gguf",
        "model_root": root, "readiness_callback_url": "http://127.0.0.1:9/cb",
        "rpc_port": 8001, "gpu_device": 0, "state_dir": dir.path().join("state"),
        "backend": "cpu", "api_token_file": tok, "max_context": 256, "max_prompt_len": 200,
        "max_body_bytes": 4096,
        // One job at a time (milestone M0): the busy and cancel tests rely on it.
        "slots_total": 1, "max_queued_jobs": 0
    });
    std::fs::write(&cfg_path, cfg_json.to_string()).unwrap();
    let args = ServeArgs {
        config: Some(cfg_path),
        ..Default::default()
    };
    let cfg: Config = Config::resolve(&args).unwrap();
    let creds = crate::config::Credentials::load(&cfg).unwrap();
    let (ftx, frx) = tokio::sync::mpsc::unbounded_channel();
    let key = SealKey::generate().unwrap();
    let signing = crate::shard::signature::ModelSigning::load(&cfg).unwrap();
    let app = new_app(
        cfg.clone(),
        Box::new(creds),
        key.clone(),
        signing.clone(),
        ftx,
    );
    app.state.transition(Lifecycle::Loading).unwrap();
    let (model, engine) = tokio::task::spawn_blocking(move || commit::load(&cfg, &key, &signing))
        .await
        .unwrap()
        .unwrap();
    start_serving(&app, model, engine).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = super::router(Arc::clone(&app));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Rig {
        _dir: dir,
        app,
        base,
        http: reqwest::Client::new(),
        fatal: frx,
    }
}

impl Rig {
    fn post(&self, path: &str, token: &str, body: Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
    }

    fn shard_id(&self) -> String {
        self.app.model.get().unwrap().handle().shard_id
    }

    async fn execute_text(&self, body: Value) -> String {
        let r = self
            .post("/worker/execute", OWNER, body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

/// (event, data) pairs of an SSE body.
fn events(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if let Some(n) = name {
            out.push((n, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_correlation_and_public_routes() {
    let rig = rig().await;
    let r = rig
        .http
        .get(format!("{}/health", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-correlation-id"));
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "ready");
    let r = rig
        .http
        .get(format!("{}/metrics", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = rig
        .http
        .get(format!("{}/worker/ready", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "ready needs auth by default");
    // WORKER-4200: only /health and /metrics are public; the API description too needs the token.
    let r = rig
        .http
        .get(format!("{}/openapi.json", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "openapi.json needs the token");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "AUTH_FAILED");
    let r = rig
        .http
        .get(format!("{}/openapi.json", rig.base))
        .bearer_auth(OWNER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["openapi"], "3.1.0");
    let r = rig
        .http
        .post(format!("{}/worker/plan", rig.base))
        .header("X-Correlation-Id", "abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-correlation-id"], "abc-1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "AUTH_FAILED");
    let r = rig
        .post(
            "/worker/plan",
            "wrong-token-0123456789",
            json!({"model_ref": "tiny.gguf"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = rig
        .http
        .get(format!("{}/worker/ready", rig.base))
        .bearer_auth(OWNER)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["handles"][0]["sealed"], true);
    assert_eq!(v["nccl_group_id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_shape_and_determinism() {
    let rig = rig().await;
    let body = json!({"handle_id": rig.shard_id(), "prompt": "Hello there",
        "params": {"max_tokens": 12, "seed": 7, "temperature": 0.9, "top_p": 0.95}});
    let a = events(&rig.execute_text(body.clone()).await);
    assert_eq!(a[0].0, "started");
    assert_eq!(a[0].1["queue_position"], 0);
    let last = a.last().unwrap();
    assert_eq!(last.0, "end", "{a:?}");
    assert!(["stop", "length", "eos"].contains(&last.1["finish_reason"].as_str().unwrap()));
    assert_eq!(a[a.len() - 2].0, "metrics");
    let tokens: Vec<&Value> = a
        .iter()
        .filter(|(n, _)| n == "token")
        .map(|(_, d)| d)
        .collect();
    for (k, t) in tokens.iter().enumerate() {
        assert_eq!(t["i"], k as u64);
        assert!(t["t"].is_string());
    }
    assert!(last.1["tokens_out"].as_u64().unwrap() <= 12);
    assert_eq!(
        last.1["tokens_out"].as_u64().unwrap(),
        tokens.len() as u64,
        "tokens_out counts the token events"
    );
    // Same request, same model digest: byte-identical token events.
    let b = events(&rig.execute_text(body.clone()).await);
    let tok = |v: &[(String, Value)]| -> Vec<Value> {
        v.iter()
            .filter(|(n, _)| n == "token")
            .map(|(_, d)| d.clone())
            .collect()
    };
    assert_eq!(tok(&a), tok(&b));
    // A different seed may differ but must still be well-formed.
    let mut other = body;
    other["params"]["seed"] = json!(8);
    assert_eq!(
        events(&rig.execute_text(other).await).last().unwrap().0,
        "end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_slot_owner_only_cancel_and_no_tokens_after_cancel() {
    let rig = rig().await;
    let long =
        json!({"handle_id": rig.shard_id(), "prompt": "Count", "params": {"max_tokens": 240}});
    // Not reading the body lets the event buffer fill, so the job holds the slot.
    let first = rig
        .post("/worker/execute", OWNER, long.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let job_id = first.headers()["x-job-id"].to_str().unwrap().to_string();
    let second = rig
        .post("/worker/execute", OWNER, long)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    let e: Value = second.json().await.unwrap();
    assert_eq!(e["code"], "WORKER_BUSY");
    assert_eq!(e["retriable"], true);
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0);
    let r = rig
        .post("/worker/cancel", OTHER, json!({"job_id": job_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = rig
        .post("/worker/cancel", OWNER, json!({"job_id": "job-unknown"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = rig
        .post("/worker/cancel", OWNER, json!({"job_id": job_id}))
        .send()
        .await
        .unwrap();
    let ack = r.json::<Value>().await.unwrap();
    assert_eq!(ack["job_id"], job_id.as_str());
    assert_eq!(ack["cancelled"], true);
    let sent = ack["tokens_sent"].as_u64().expect("tokens_sent in the ack");
    let ev = events(&first.text().await.unwrap());
    let last = ev.last().unwrap();
    assert_eq!(last.0, "error");
    assert_eq!(last.1["code"], "CANCELLED");
    let n_tokens = ev.iter().filter(|(n, _)| n == "token").count();
    assert_eq!(n_tokens as u64, sent, "tokens after the acknowledgement");
    assert!(n_tokens < 240, "the job stopped early ({n_tokens} tokens)");
    // The slot is free again within a step.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        rig.app.scheduler.wait_idle(),
    )
    .await
    .unwrap();
    assert_eq!(rig.app.lifecycle(), Lifecycle::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_no_state() {
    let rig = rig().await;
    let before = rig.app.model.get().unwrap().handle();
    let sid = rig.shard_id();
    let bad = [
        json!({"handle_id": sid, "prompt": "x", "extra": 1}),
        json!({"handle_id": sid, "prompt": "a\u{0}b"}),
        json!({"handle_id": sid, "prompt": "x", "params": {"temperature": 3}}),
        json!({"handle_id": "no-such-handle", "prompt": "x"}),
        json!({"handle_id": sid, "prompt": "y".repeat(201)}),
    ];
    for b in bad {
        let r = rig
            .post("/worker/execute", OWNER, b.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{b}: {}", r.status());
    }
    let r = rig
        .post(
            "/worker/execute",
            OWNER,
            json!({"handle_id": sid, "prompt": "z".repeat(5000)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(!rig.app.scheduler.is_busy());
    assert_eq!(
        rig.app.model.get().unwrap().handle(),
        before,
        "the seal is untouched"
    );
    let ev = events(
        &rig.execute_text(json!({"handle_id": sid, "prompt": "ok", "params": {"max_tokens": 3}}))
            .await,
    );
    assert_eq!(ev.last().unwrap().0, "end");
    let m = rig
        .http
        .get(format!("{}/metrics", rig.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let started = m
        .lines()
        .find(|l| l.starts_with("worker_orcd_jobs_started_total"))
        .unwrap_or_default()
        .to_string();
    assert!(
        started.ends_with(" 1"),
        "only the good job started: {started:?}"
    );
    let rejected = |code: &str| -> u64 {
        let prefix = format!("worker_orcd_requests_rejected_total{{code=\"{code}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(rejected("INVALID_PARAMS"), 4, "{m}");
    assert_eq!(rejected("NOT_FOUND"), 1);
    assert_eq!(rejected("PAYLOAD_TOO_LARGE"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_commit() {
    let rig = rig().await;
    let r = rig
        .post(
            "/worker/plan",
            OWNER,
            json!({"model_ref": "tiny.gguf", "shard_layout": "single"}),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["feasible"], true, "{v}");
    assert!(v["vram_required"].as_u64().unwrap() > 0);
    assert_eq!(v["shard_plan"][0]["shard_index"], 0);
    let r = rig
        .post("/worker/plan", OWNER, json!({"model_ref": "../token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "MODEL_LOAD_FAILED"
    );
    let sha = hex::encode(rig.app.model.get().unwrap().file_sha256);
    let r = rig
        .post(
            "/worker/commit",
            OWNER,
            json!({"model_ref": "tiny.gguf", "shard_id": "s-1", "expected_digest": sha}),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["handle"],
        serde_json::to_value(rig.app.model.get().unwrap().handle()).unwrap()
    );
    let wrong = "0".repeat(64);
    let r = rig
        .post(
            "/worker/commit",
            OWNER,
            json!({"model_ref": "tiny.gguf", "shard_id": "s-1", "expected_digest": wrong}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "MODEL_LOAD_FAILED"
    );
    // A model is its bytes: a different model, not a copy (a copy is the same model).
    let root = rig.app.cfg.model_root.clone();
    let mut other = std::fs::read(root.join("tiny.gguf")).unwrap();
    other.push(0);
    std::fs::write(root.join("other.gguf"), other).unwrap();
    let r = rig
        .post(
            "/worker/commit",
            OWNER,
            json!({"model_ref": "other.gguf", "shard_id": "s-2"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_resident_byte_fails_the_seal_and_stops() {
    let mut rig = rig().await;
    let r = rig
        .post(
            "/debug/fault",
            OWNER,
            json!({"kind": "flip_resident_byte", "offset": 100}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = events(
        &rig.execute_text(json!({"handle_id": rig.shard_id(), "prompt": "hi"}))
            .await,
    );
    assert_eq!(ev.last().unwrap().1["code"], "SEAL_VERIFICATION_FAILED");
    assert!(
        !ev.iter().any(|(n, _)| n == "token"),
        "no token from an unsealed model"
    );
    let fatal = tokio::time::timeout(std::time::Duration::from_secs(5), rig.fatal.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fatal.code(), "SEAL_VERIFICATION_FAILED");
    assert!(!rig.app.is_ready());
    assert_eq!(rig.app.lifecycle(), Lifecycle::Stopped);
    let r = rig
        .http
        .get(format!("{}/health", rig.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// Commit by upload (4220–4226): the body (here far above max_body_bytes =
/// 4096, bounded by max_model_bytes instead) is judged by its SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_by_upload() {
    let rig = rig().await;
    let model = rig.app.model.get().unwrap();
    let bytes = std::fs::read(&model.path).unwrap();
    assert!(bytes.len() > rig.app.cfg.max_body_bytes);
    let sha = hex::encode(model.file_sha256);
    let upload = |query: String, body: Vec<u8>| {
        rig.http
            .post(format!("{}/worker/commit?{query}", rig.base))
            .bearer_auth(OWNER)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let q = |d: &str| format!("model_ref=tiny.gguf&shard_id=up-1&expected_digest={d}");
    let r = upload(q(&sha), bytes.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["handle"], serde_json::to_value(model.handle()).unwrap());
    let r = upload(q(&"0".repeat(64)), bytes.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "MODEL_LOAD_FAILED"
    );
    let mut other = bytes.clone();
    other.push(0);
    let other_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&other))
    };
    let r = upload(q(&other_sha), other).await.unwrap();
    assert_eq!(r.status(), 409);
    // A JSON commit does not read the query string.
    let r = rig
        .post(
            "/worker/commit?shard_id=x",
            OWNER,
            json!({"model_ref": "tiny.gguf", "shard_id": "s-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(model.handle().sealed);
}

/// Commit under a new shard id (4220, 4227): a fresh seal of the resident
/// model, the old id refused with HANDLE_SUPERSEDED naming the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_under_a_new_shard_id_reseals_and_retires_the_old_id() {
    let rig = rig().await;
    let before = rig.app.model.get().unwrap().handle();
    let r = rig
        .post(
            "/worker/commit",
            OWNER,
            json!({"model_ref": "tiny.gguf", "shard_id": "s-new"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["handle"]["shard_id"], "s-new");
    assert_eq!(v["handle"]["digest"], before.digest.as_str());
    assert_ne!(v["handle"]["seal"], before.seal.as_str());
    assert_eq!(rig.shard_id(), "s-new");
    let r = rig
        .post(
            "/worker/execute",
            OWNER,
            json!({"handle_id": before.shard_id, "prompt": "hi"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "HANDLE_SUPERSEDED");
    assert!(e["message"].as_str().unwrap().contains("\"s-new\""), "{e}");
    let ev = events(
        &rig.execute_text(
            json!({"handle_id": "s-new", "prompt": "hi", "params": {"max_tokens": 2}}),
        )
        .await,
    );
    assert_eq!(ev.last().unwrap().0, "end");
}

/// Issue 10 (the flaky oversized upload): a request refused before its body
/// has arrived still gets its answer. Each round sends a body far above
/// max_body_bytes (4096 here), without a token (refused by auth, body
/// unread), with a token to plan (refused at the limit, rest unread), and as
/// a chunked stream; every one must come back as the error, never as a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_the_client() {
    let rig = rig().await;
    let big = vec![b'x'; 2 << 20];
    for round in 0..20 {
        let r = rig
            .http
            .post(format!("{}/worker/plan", rig.base))
            .body(big.clone())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: no answer to an unauthenticated big body: {e}")
            });
        assert_eq!(r.status(), 401, "round {round}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "AUTH_FAILED");
        let r = rig
            .http
            .post(format!("{}/worker/plan", rig.base))
            .bearer_auth(OWNER)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer to an oversized body: {e}"));
        assert_eq!(r.status(), 413, "round {round}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "PAYLOAD_TOO_LARGE"
        );
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        let r = rig
            .http
            .post(format!("{}/worker/plan", rig.base))
            .bearer_auth(OWNER)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer to an oversized stream: {e}"));
        assert_eq!(r.status(), 413, "round {round}");
    }
}
