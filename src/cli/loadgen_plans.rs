//! `loadgen --plans-during N`: Plan requests sent in a loop by N clients
//! while a level's jobs run (issue 13 point 3). Each level then runs twice,
//! alone and beside the Plans, and the report gives both decode rates and
//! their ratio: what concurrent Plans cost a running job. Measurements
//! only: nothing here asserts a speed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Most Plan clients `--plans-during` allows.
pub const MAX_PLAN_CLIENTS: usize = 256;
/// How often a pacing client looks whether the level has ended.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What the Plans sent beside one level got.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PlanLoad {
    pub clients: usize,
    /// Each client's pause between Plans; 0 for a closed loop.
    pub interval_ms: u64,
    pub answered: usize,
    /// Answers other than 200, by status and error code (`429 WORKER_BUSY`).
    pub refused_by: BTreeMap<String, usize>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Plan clients running until [`PlanStorm::stop`].
pub struct PlanStorm {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    interval: Duration,
    results: Arc<Results>,
}

impl PlanStorm {
    /// Start `clients` loops, each sending `POST /worker/plan` for `model_ref`
    /// every `interval` (all at once, so they arrive as bursts of `clients`
    /// concurrent Plans), or as soon as its previous Plan is answered when
    /// `interval` is zero (a closed loop: as many Plans as the worker answers).
    pub fn start(
        client: &reqwest::Client,
        base: &str,
        token: &str,
        model_ref: &str,
        clients: usize,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new((Vec::new(), BTreeMap::new())));
        let body = serde_json::json!({"model_ref": model_ref, "shard_layout": "single"});
        let tasks = (0..clients)
            .map(|_| {
                let (client, stop, results) = (client.clone(), stop.clone(), results.clone());
                let (url, token, body) = (
                    format!("{base}/worker/plan"),
                    token.to_string(),
                    body.clone(),
                );
                tokio::spawn(async move {
                    // At least one Plan each, however short the level.
                    loop {
                        let sent = Instant::now();
                        let outcome = plan_once(&client, &url, &token, &body).await;
                        let ms = sent.elapsed().as_secs_f64() * 1e3;
                        record(&results, outcome, ms);
                        while !stop.load(Ordering::Relaxed) && sent.elapsed() < interval {
                            tokio::time::sleep(STOP_POLL.min(interval - sent.elapsed())).await;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            interval,
            results,
        }
    }

    /// Stop the loops (each finishes the Plan it has in flight) and report.
    pub async fn stop(self) -> PlanLoad {
        self.stop.store(true, Ordering::Relaxed);
        let clients = self.tasks.len();
        for t in self.tasks {
            let _ = t.await;
        }
        let (mut ms, refused_by) =
            std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()));
        ms.sort_by(f64::total_cmp);
        PlanLoad {
            clients,
            interval_ms: self.interval.as_millis() as u64,
            answered: ms.len(),
            refused_by,
            p50_ms: super::bench_sweep::nearest_rank(&ms, 50.0),
            p99_ms: super::bench_sweep::nearest_rank(&ms, 99.0),
        }
    }
}

type Results = Mutex<(Vec<f64>, BTreeMap<String, usize>)>;

/// Note one Plan's latency (answered) or its refusal.
fn record(results: &Results, outcome: Option<String>, ms: f64) {
    let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        None => r.0.push(ms),
        Some(refusal) => *r.1.entry(refusal).or_insert(0) += 1,
    }
}

/// `None` when the Plan answered 200, else `"<status> <code>"`.
async fn plan_once(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Option<String> {
    match client.post(url).bearer_auth(token).json(body).send().await {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            None
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let j: serde_json::Value = r.json().await.unwrap_or_default();
            Some(format!("{status} {}", j["code"].as_str().unwrap_or("?")))
        }
        Err(e) => Some(format!("transport {}", super::loadgen::connect_code(&e))),
    }
}
