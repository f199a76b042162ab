//! The worker daemon: start-up, lifecycle, drain and exit (WORKER-4020–4032,
//! 4961, 4970–4972). Exit codes: see [`exit`].
//!
//! Start-up order: resolve config → logging → refuse root → credentials →
//! model-signing key and start-up signature → bind the listener (so /health
//! answers "loading" during the load) → the start-up commit of `model_path`
//! (read, verify the signature, load, verify the resident bytes, seal; see
//! [`commit`]) on a blocking thread → Ready → readiness callback in the
//! background. Every lifecycle transition is a structured log event
//! (`event` = "lifecycle", `state`). Fatal errors POST a status callback and exit
//! with their code. SIGTERM/SIGINT drain: no new jobs (503), waiting jobs get a
//! retriable refusal at once, running jobs may finish within
//! `drain_timeout_ms`, then the engine is released and the process exits
//! 0; a second signal or the timeout cancels them (exit 6).
//! The worker never forks or daemonizes itself (4021). Right after the
//! configuration, the restart circuit breaker ([`breaker`], 4963) counts the
//! start or refuses it (exit 7); exit 0 resets it. Every line the daemon
//! writes is a JSON log event with `human` (4803), errors before start-up too.

pub mod app;
pub mod batcher;
pub mod breaker;
pub mod callback;
pub mod capability;
pub mod commit;
pub mod engine_thread;
pub mod exit;
pub mod model_scans;
pub mod models;
pub mod scheduler;
pub mod state;
pub mod watchdog;

use crate::config::{Config, ServeArgs};
use crate::error::WorkerError;
use app::{AppState, LoadedModel};
use engine_thread::EngineHandle;
use state::Lifecycle;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Time given to in-flight responses (the SSE error event of a fatal job) to flush.
const FLUSH_GRACE: Duration = Duration::from_millis(300);
/// Bound on the HTTP server's graceful shutdown.
const SERVER_STOP: Duration = Duration::from_secs(2);

/// Builds the HTTP API over the worker's state. The daemon is handed it (by
/// `main`, which passes `http::router`) rather than importing the layer
/// above it.
pub type RouterFor = fn(Arc<AppState>) -> axum::Router;

pub fn run(args: ServeArgs, router: RouterFor) -> ExitCode {
    let cfg = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            crate::telemetry::init_logging("info");
            crate::narrate_error!(human = format!("The worker cannot start: {e}"), field = %e.field, exit_code = exit::CONFIG);
            return ExitCode::from(exit::CONFIG);
        }
    };
    crate::telemetry::init_logging(&cfg.log_level);
    // Before any thread exists, so that every thread (runtime, engine, CUDA
    // driver) inherits empty capability sets (WORKER-4901).
    crate::config::drop_capabilities();
    let breaker = match breaker::admit(&cfg) {
        Ok(b) => b,
        Err(breaker::Refused(code)) => return ExitCode::from(code),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("worker-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::narrate_error!(
                human = format!("The worker cannot start its async runtime ({e}); this is a bug or a host out of threads or memory."),
                exit_code = exit::INTERNAL
            );
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = rt.block_on(serve(cfg, router));
    rt.shutdown_timeout(Duration::from_secs(1));
    if code == exit::OK {
        breaker.clean_exit();
    }
    ExitCode::from(code)
}

/// The status callback body (4961); its `error.code` is always a
/// [`WorkerError`] code, so the codes pool-managerd sees are the documented ones.
fn status_body(cfg: &Config, e: &WorkerError, exit_code: u8) -> serde_json::Value {
    serde_json::json!({
        "worker_id": cfg.worker_id,
        "pool_id": cfg.pool_id,
        "state": "stopped",
        "error": {"code": e.code(), "message": e.message()},
        "exit_code": exit_code,
    })
}

/// Report a start-up failure everywhere an operator might look, then give its code.
async fn fail_start(cfg: &Config, e: &WorkerError, exit_code: u8) -> u8 {
    let (code, message) = (e.code(), e.message());
    crate::narrate_error!(
        human = format!("The worker cannot start: {message}"),
        code = code,
        exit_code = exit_code,
        worker_id = %cfg.worker_id
    );
    callback::post_status(&cfg.readiness_callback_url, status_body(cfg, e, exit_code)).await;
    exit_code
}

/// SIGTERM and SIGINT, merged.
fn signals() -> std::io::Result<mpsc::UnboundedReceiver<&'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::unbounded_channel();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(name).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

async fn serve(cfg: Config, router: RouterFor) -> u8 {
    if let Err(e) = crate::config::check_not_root(cfg.allow_root) {
        return fail_start(&cfg, &WorkerError::from(e), exit::CONFIG).await;
    }
    warn_if_test_build();
    let creds = match crate::config::Credentials::load(&cfg) {
        Ok(c) => c,
        Err(e) => return fail_start(&cfg, &WorkerError::from(e), exit::CONFIG).await,
    };
    // Read like the credentials: a bad key or signature file is a
    // configuration error (exit 2), found before anything is loaded.
    let signing = match crate::shard::signature::ModelSigning::load(&cfg) {
        Ok(s) => s,
        Err(e) => return fail_start(&cfg, &WorkerError::from(e), exit::CONFIG).await,
    };
    if let Some(k) = &signing.key {
        crate::narrate!(
            human = format!(
                "Models must be signed: only models whose SHA-256 is signed by the Ed25519 key {} \
                 (model_signing_pubkey_file) are accepted.",
                k.hex()
            ),
            model_signing_key = %k.hex()
        );
    }
    let mut sigs = match signals() {
        Ok(s) => s,
        Err(e) => {
            let e = WorkerError::internal(format!("cannot install signal handlers: {e}"));
            return fail_start(&cfg, &e, exit::INTERNAL).await;
        }
    };
    let listener = match tokio::net::TcpListener::bind(cfg.bind_addr).await {
        Ok(l) => l,
        Err(e) => {
            let msg = format!(
                "cannot listen on {} ({e}); another process holds it or it is not this machine's. \
                 Choose a free port: rpc_port in the config file or --rpc-port (PORT for ci/quickstart), \
                 or another bind_addr",
                cfg.bind_addr
            );
            let e = WorkerError::InvalidConfig { message: msg };
            return fail_start(&cfg, &e, exit::CONFIG).await;
        }
    };
    let seal_key = match &cfg.seal_key_file {
        // Read like the token file: a bad key file is a configuration error (exit 2).
        Some(path) => match crate::shard::seal::SealKey::from_file(path) {
            Ok(k) => k,
            Err(e) => return fail_start(&cfg, &WorkerError::from(e), exit::CONFIG).await,
        },
        None => match crate::shard::seal::SealKey::generate() {
            Ok(k) => k,
            Err(e) => return fail_start(&cfg, &e, exit::INTERNAL).await,
        },
    };
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let app = new_app(cfg.clone(), Box::new(creds), seal_key, signing, fatal_tx);
    app.announce_start();
    set_state(&app, Lifecycle::Loading);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = crate::http::server::ConnLimits {
        header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
        max_connections: cfg.max_connections,
        max_requests_per_connection: cfg.max_requests_per_connection,
    };
    // Summaries of rate-limited log lines are written even after the traffic stops.
    let flusher = Arc::clone(&app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::telemetry::log_limit::INTERVAL).await;
            flusher.log_limit.flush();
        }
    });
    let server = tokio::spawn(crate::http::server::serve(
        listener,
        router(Arc::clone(&app)),
        limits,
        async move {
            let _ = stop_rx.await;
        },
    ));
    crate::narrate!(
        human = format!(
            "Listening on {} ({} backend); loading model {} now. /health answers 503 until it is sealed.",
            cfg.bind_addr,
            cfg.backend.as_str(),
            cfg.model_path.display()
        ),
        bind_addr = %cfg.bind_addr, worker_id = %cfg.worker_id, gpu_device = cfg.gpu_device
    );

    let load_cfg = cfg.clone();
    let key = app.seal_key.clone();
    let signing = app.signing.clone();
    let mut load = tokio::task::spawn_blocking(move || commit::load(&load_cfg, &key, &signing));
    let loaded = tokio::select! {
        r = &mut load => r.unwrap_or_else(|e| Err(WorkerError::internal(format!("the load task failed: {e}")))),
        sig = sigs.recv() => {
            crate::narrate!(human = format!("Received {} while loading; stopping without serving.", sig.unwrap_or("a signal")));
            set_state(&app, Lifecycle::Stopped);
            return exit::OK;
        }
    };
    let (model, engine) = match loaded {
        Ok(x) => x,
        Err(e) => {
            set_state(&app, Lifecycle::Stopped);
            let code = exit::for_error(&e);
            return fail_start(&cfg, &e, code).await;
        }
    };
    if let Err(e) = start_serving(&app, model, engine) {
        set_state(&app, Lifecycle::Stopped);
        return fail_start(&cfg, &e, exit::for_error(&e)).await;
    }

    let (code, hung) = tokio::select! {
        sig = sigs.recv() => (drain(&app, sig.unwrap_or("a signal"), &mut sigs, &mut fatal_rx).await, false),
        Some(e) = fatal_rx.recv() => (fatal(&app, &e).await, matches!(e, WorkerError::EngineHung { .. })),
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(SERVER_STOP, server).await;
    // A hung engine thread cannot answer; the process exit ends it.
    if let (Some(engine), false) = (app.engine.get(), hung) {
        engine.shutdown(Duration::from_secs(5)).await;
    }
    set_state(&app, Lifecycle::Stopped);
    crate::narrate!(
        human = format!("The worker has stopped (exit code {code})."),
        exit_code = code
    );
    code
}

/// The shared state of a worker that has not loaded its model yet.
pub fn new_app(
    cfg: Config,
    auth: Box<dyn app::Authenticator>,
    seal_key: crate::shard::seal::SealKey,
    signing: crate::shard::signature::ModelSigning,
    fatal: app::FatalTx,
) -> Arc<AppState> {
    let scheduler = Arc::new(scheduler::Scheduler::new(
        cfg.slots_total as usize,
        cfg.max_queued_jobs as usize,
    ));
    Arc::new(AppState {
        cfg,
        state: Default::default(),
        auth,
        metrics: Arc::new(crate::telemetry::Metrics::new()),
        seal_key,
        signing,
        scheduler,
        model: Default::default(),
        engine: Default::default(),
        fatal,
        step_clock: Default::default(),
        scans: Default::default(),
        log_limit: Default::default(),
        #[cfg(feature = "test-hooks")]
        available_override: Default::default(),
    })
}

/// A test-hooks build says so first thing (issue 13 point 8): it serves
/// `POST /debug/fault`, so it must never be mistaken for the product.
fn warn_if_test_build() {
    #[cfg(feature = "test-hooks")]
    tracing::warn!(
        human = "This worker is a TEST BUILD (feature test-hooks): it serves POST /debug/fault, which lets any \
                 token holder corrupt the served model or fake device errors. Never run it in production; \
                 build with `cargo build --release` (no --features) for real use.",
        build = "test-hooks",
        "test build"
    );
}

fn set_state(app: &AppState, s: Lifecycle) {
    app.set_state(s);
}

/// Install the loaded model and its engine thread, turn Ready, announce it.
pub fn start_serving(
    app: &Arc<AppState>,
    model: LoadedModel,
    engine: Box<dyn crate::engine::Engine>,
) -> crate::error::Result<()> {
    app.metrics
        .set_memory(app.cfg.backend.as_str(), &model.memory);
    app.scheduler.limit_slots(engine.max_sequences());
    engine_thread::publish_kv(app, engine.as_ref());
    if let Some((identity, header)) = &model.scan {
        app.scans.remember_loaded(*identity, Arc::clone(header));
    }
    let model = Arc::new(model);
    let _ = app.model.set(Arc::clone(&model));
    let handle = EngineHandle::spawn(Arc::clone(app), engine)?;
    let _ = app.engine.set(handle);
    watchdog::spawn(Arc::clone(app));
    set_state(app, Lifecycle::Ready);
    let body = serde_json::json!({
        "worker_id": app.cfg.worker_id,
        "pool_id": app.cfg.pool_id,
        "state": "ready",
        "ecp": model.ecp,
        "handles": [model.handle()],
        "fp6": app.auth.fingerprints(),
        "bind_addr": app.cfg.bind_addr.to_string(),
        "capacity": app.scheduler.capacity(),
    });
    tokio::spawn(callback::post_ready(
        app.cfg.readiness_callback_url.clone(),
        body,
    ));
    Ok(())
}

/// A fatal runtime error (seal mismatch, CUDA error): report and stop.
async fn fatal(app: &AppState, e: &WorkerError) -> u8 {
    let code = exit::for_error(e);
    set_state(app, Lifecycle::Stopped);
    crate::narrate_error!(
        human = format!(
            "Stopping the worker after a fatal error: {} (exit code {code}).",
            e.message()
        ),
        code = e.code(),
        exit_code = code
    );
    tokio::time::sleep(FLUSH_GRACE).await;
    callback::post_status(
        &app.cfg.readiness_callback_url,
        status_body(&app.cfg, e, code),
    )
    .await;
    code
}

/// SIGTERM/SIGINT: stop admitting, let the running jobs finish (4970, 4971).
async fn drain(
    app: &AppState,
    sig: &str,
    sigs: &mut mpsc::UnboundedReceiver<&'static str>,
    fatal_rx: &mut mpsc::UnboundedReceiver<WorkerError>,
) -> u8 {
    set_state(app, Lifecycle::Draining);
    let busy = app.scheduler.is_busy();
    let budget = Duration::from_millis(app.cfg.drain_timeout_ms);
    crate::narrate!(
        human = format!(
            "Received {sig}: draining. New jobs are refused; {} Exiting when done, at most {} ms.",
            if busy {
                "running jobs may finish; waiting jobs are refused as retriable."
            } else {
                "no job is running."
            },
            app.cfg.drain_timeout_ms
        ),
        drain_timeout_ms = app.cfg.drain_timeout_ms
    );
    let forced = tokio::select! {
        _ = app.scheduler.wait_idle() => None,
        _ = tokio::time::sleep(budget) => Some("the drain timeout passed"),
        s = sigs.recv() => Some(if s.is_some() { "a second signal arrived" } else { "signals closed" }),
        Some(e) = fatal_rx.recv() => return fatal(app, &e).await,
    };
    match forced {
        None => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            exit::OK
        }
        Some(why) => {
            let had_job = app.scheduler.cancel_all() > 0;
            crate::narrate_warn!(
                human = format!(
                    "Forced shutdown because {why}; {}",
                    if had_job {
                        "the running jobs were cancelled."
                    } else {
                        "no job was running."
                    }
                ),
                exit_code = exit::FORCED
            );
            // Let the cancelled job send its final event before the server stops.
            let _ = tokio::time::timeout(Duration::from_secs(2), app.scheduler.wait_idle()).await;
            tokio::time::sleep(FLUSH_GRACE).await;
            exit::FORCED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_config_failures_report_the_enum_code() {
        let cfg = Config::from_json_str(
            r#"{"worker_id":"w1","pool_id":"p1","model_path":"/m/x.gguf","rpc_port":8001,"readiness_callback_url":"http://127.0.0.1:9/cb","gpu_device":0}"#,
        )
        .expect("config");
        let e = WorkerError::from(crate::config::ConfigError::new(
            "api_token_file",
            "is readable by others",
        ));
        let body = status_body(&cfg, &e, exit::for_error(&e));
        assert_eq!(body["error"]["code"], "INVALID_CONFIG");
        assert_eq!(body["exit_code"], exit::CONFIG);
        assert!(WorkerError::ALL_CODES.contains(&body["error"]["code"].as_str().unwrap()));
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_token_file"));
    }
}
