//! Prometheus metrics, served unauthenticated at `GET /metrics`
//! (WORKER-4810, 4811, 4812).
//!
//! Names follow vLLM's (`time_to_first_token_seconds`,
//! `inter_token_latency_seconds`, `e2e_request_latency_seconds`,
//! `request_queue_time_seconds`, `prompt_tokens_total`,
//! `generation_tokens_total`, `request_success_total{finished_reason}`,
//! `num_requests_running`, `num_requests_waiting`) with the prefix
//! `worker_orcd_`, so dashboards built for vLLM carry over. The registry lives
//! in [`Metrics`] (held in the daemon's state), never in a global.
//!
//! Label values come from closed sets (error codes of `WorkerError`, finish
//! reasons, lifecycle states); anything else is counted as `other` so a bug
//! cannot explode the series count.

use crate::backend::MemoryReport;
use crate::error::WorkerError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Prefix of every metric name.
pub const PREFIX: &str = "worker_orcd";
/// Lifecycle states exported by the `state` gauge.
pub const LIFECYCLE_STATES: &[&str] = &[
    "starting",
    "loading",
    "ready",
    "executing",
    "draining",
    "stopped",
];
/// Finish reasons exported by `request_success_total`.
pub const FINISH_REASONS: &[&str] = &["stop", "length", "eos"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    finished_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryLabel {
    kind: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Every metric of the worker and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    request_success: Family<ReasonLabel, Counter>,
    jobs_started: Counter,
    jobs_completed: Counter,
    jobs_failed: Family<CodeLabel, Counter>,
    requests_rejected: Family<CodeLabel, Counter>,
    cuda_errors: Counter,
    model_file_scans: Counter,
    running: Gauge,
    waiting: Gauge,
    kv_pages_total: Gauge,
    kv_pages_used: Gauge,
    kv_usage: Gauge<f64, std::sync::atomic::AtomicU64>,
    memory: Family<MemoryLabel, Gauge>,
    device_total: Gauge,
    device_free: Gauge,
    seal_verifications: Family<ResultLabel, Counter>,
    seal_seconds: Histogram,
    state: Family<StateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram(buckets: &[f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

// Buckets follow vLLM's, extended downwards: this worker's decode steps are
// milliseconds, so sub-10 ms buckets matter.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];
const QUEUE_BUCKETS: &[f64] = &[
    0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const SEAL_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn closed(value: &str, allowed: &[&str]) -> String {
    if allowed.contains(&value) {
        value.to_string()
    } else {
        "other".to_string()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            ttft: histogram(TTFT_BUCKETS),
            itl: histogram(ITL_BUCKETS),
            e2e: histogram(E2E_BUCKETS),
            queue: histogram(QUEUE_BUCKETS),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            request_success: Family::default(),
            jobs_started: Counter::default(),
            jobs_completed: Counter::default(),
            jobs_failed: Family::default(),
            requests_rejected: Family::default(),
            cuda_errors: Counter::default(),
            model_file_scans: Counter::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_pages_total: Gauge::default(),
            kv_pages_used: Gauge::default(),
            kv_usage: Gauge::default(),
            memory: Family::default(),
            device_total: Gauge::default(),
            device_free: Gauge::default(),
            seal_verifications: Family::default(),
            seal_seconds: histogram(SEAL_BUCKETS),
            state: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "time_to_first_token_seconds",
            "Time from job admission to the first generated token",
            m.ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            m.itl.clone(),
        );
        r.register(
            "e2e_request_latency_seconds",
            "Time from job admission to its end event",
            m.e2e.clone(),
        );
        r.register(
            "request_queue_time_seconds",
            "Time a job waited before the engine started on it",
            m.queue.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            "request_success",
            "Jobs that ended normally, by finish reason",
            m.request_success.clone(),
        );
        r.register(
            "jobs_started",
            "Jobs admitted to the engine",
            m.jobs_started.clone(),
        );
        r.register(
            "jobs_completed",
            "Jobs that ended normally",
            m.jobs_completed.clone(),
        );
        r.register(
            "jobs_failed",
            "Jobs that ended with an error, by error code",
            m.jobs_failed.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused before a job started, by error code",
            m.requests_rejected.clone(),
        );
        r.register(
            "cuda_errors",
            "CUDA driver, NVRTC, cuBLAS or kernel-launch failures",
            m.cuda_errors.clone(),
        );
        r.register(
            "model_file_scans",
            "Model files read and hashed in full by Plan (a Plan answered from the cache reads nothing)",
            m.model_file_scans.clone(),
        );
        r.register(
            "num_requests_running",
            "Jobs running on the engine now",
            m.running.clone(),
        );
        r.register(
            "num_requests_waiting",
            "Jobs waiting for the slot now",
            m.waiting.clone(),
        );
        r.register(
            "kv_cache_pages_total",
            "Pages of the KV pool (each holds a fixed number of positions)",
            m.kv_pages_total.clone(),
        );
        r.register(
            "kv_cache_pages_used",
            "Pages of the KV pool reserved by running sequences",
            m.kv_pages_used.clone(),
        );
        r.register(
            "kv_cache_usage_ratio",
            "Reserved pages over all pages of the KV pool (0 to 1)",
            m.kv_usage.clone(),
        );
        r.register(
            "memory_bytes",
            "Bytes the engine holds, by purpose and device",
            m.memory.clone(),
        );
        r.register(
            "device_memory_total_bytes",
            "Total memory of the GPU this worker uses",
            m.device_total.clone(),
        );
        r.register(
            "device_memory_free_bytes",
            "Free memory of the GPU as last probed",
            m.device_free.clone(),
        );
        r.register(
            "seal_verifications",
            "Seal verifications of the resident model, by result",
            m.seal_verifications.clone(),
        );
        r.register(
            "seal_verification_seconds",
            "Time to recompute and check the resident digest",
            m.seal_seconds.clone(),
        );
        r.register(
            "state",
            "1 for the worker's current lifecycle state, 0 for the others",
            m.state.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition (OpenMetrics text, `# EOF` terminated).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep /metrics serving regardless.
            out.push_str("# metrics encoding failed\n# EOF\n");
        }
        out
    }

    /// The Content-Type to serve [`Metrics::render`] with.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    /// A job ended: with an error code (`Some`) it counts as failed, else as
    /// completed with its finish reason (`stop`, `length`, `eos`).
    pub fn job_finished(&self, error_code: Option<&str>, finish_reason: Option<&str>) {
        match error_code {
            Some(code) => {
                self.jobs_failed
                    .get_or_create(&CodeLabel {
                        code: closed(code, WorkerError::ALL_CODES),
                    })
                    .inc();
            }
            None => {
                self.jobs_completed.inc();
                let reason = closed(finish_reason.unwrap_or("other"), FINISH_REASONS);
                self.request_success
                    .get_or_create(&ReasonLabel {
                        finished_reason: reason,
                    })
                    .inc();
            }
        }
    }

    /// A request refused before any job started (auth, validation, busy...).
    pub fn request_rejected(&self, code: &str) {
        self.requests_rejected
            .get_or_create(&CodeLabel {
                code: closed(code, WorkerError::ALL_CODES),
            })
            .inc();
    }

    pub fn prompt_tokens(&self, n: u64) {
        self.prompt_tokens.inc_by(n);
    }

    /// Generated tokens.
    pub fn tokens(&self, n: u64) {
        self.generation_tokens.inc_by(n);
    }

    pub fn ttft(&self, secs: f64) {
        self.ttft.observe(secs);
    }

    pub fn itl(&self, secs: f64) {
        self.itl.observe(secs);
    }

    pub fn e2e(&self, secs: f64) {
        self.e2e.observe(secs);
    }

    pub fn queue(&self, secs: f64) {
        self.queue.observe(secs);
    }

    pub fn model_file_scanned(&self) {
        self.model_file_scans.inc();
    }

    pub fn cuda_error(&self) {
        self.cuda_errors.inc();
    }

    pub fn set_running(&self, n: u64) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_waiting(&self, n: u64) {
        self.waiting.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The KV pool's pages: reserved by running sequences, and in all.
    pub fn set_kv_pages(&self, used: usize, total: usize) {
        self.kv_pages_used
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        self.kv_pages_total
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        self.kv_usage.set(if total == 0 {
            0.0
        } else {
            used as f64 / total as f64
        });
    }

    /// Memory held by the engine; `device` is "cuda" or "cpu".
    pub fn set_memory(&self, device: &str, report: &MemoryReport) {
        let device = closed(device, &["cuda", "cpu"]);
        for (kind, bytes) in [
            ("weights", report.weights_bytes),
            ("kv_cache", report.kv_cache_bytes),
            ("scratch", report.scratch_bytes),
        ] {
            self.memory
                .get_or_create(&MemoryLabel {
                    kind: kind.into(),
                    device: device.clone(),
                })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Total and free bytes of the GPU (from the device probe).
    pub fn set_device_memory(&self, total: u64, free: u64) {
        self.device_total
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        self.device_free
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }

    /// One seal verification: `ok` whether the digest matched; `secs` its cost.
    pub fn seal_verification(&self, ok: bool, secs: f64) {
        let result = if ok { "ok" } else { "mismatch" };
        self.seal_verifications
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.seal_seconds.observe(secs);
    }

    /// Set the lifecycle state gauge: 1 for `state`, 0 for the others.
    pub fn set_state(&self, state: &str) {
        let state = state.to_ascii_lowercase();
        for s in LIFECYCLE_STATES {
            let v = i64::from(*s == state);
            self.state
                .get_or_create(&StateLabel { state: (*s).into() })
                .set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn render_contains_every_name() {
        let m = Metrics::new();
        m.set_state("ready");
        m.set_memory(
            "cuda",
            &MemoryReport {
                weights_bytes: 10,
                kv_cache_bytes: 20,
                scratch_bytes: 30,
            },
        );
        m.job_finished(None, Some("eos"));
        m.job_finished(Some("CUDA_ERROR"), None);
        m.seal_verification(true, 0.001);
        m.request_rejected("AUTH_FAILED");
        let t = m.render();
        for name in [
            "worker_orcd_time_to_first_token_seconds_bucket",
            "worker_orcd_inter_token_latency_seconds_bucket",
            "worker_orcd_e2e_request_latency_seconds_bucket",
            "worker_orcd_request_queue_time_seconds_bucket",
            "worker_orcd_prompt_tokens_total",
            "worker_orcd_generation_tokens_total",
            "worker_orcd_request_success_total{finished_reason=\"eos\"}",
            "worker_orcd_jobs_started_total",
            "worker_orcd_jobs_completed_total",
            "worker_orcd_jobs_failed_total{code=\"CUDA_ERROR\"}",
            "worker_orcd_requests_rejected_total{code=\"AUTH_FAILED\"}",
            "worker_orcd_cuda_errors_total",
            "worker_orcd_num_requests_running",
            "worker_orcd_num_requests_waiting",
            "worker_orcd_memory_bytes{kind=\"kv_cache\",device=\"cuda\"}",
            "worker_orcd_device_memory_total_bytes",
            "worker_orcd_device_memory_free_bytes",
            "worker_orcd_seal_verifications_total{result=\"ok\"}",
            "worker_orcd_seal_verification_seconds_bucket",
            "worker_orcd_state{state=\"ready\"}",
        ] {
            assert!(t.contains(name), "missing {name} in\n{t}");
        }
        assert!(t.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn counters_and_gauges_move() {
        let m = Metrics::new();
        m.job_started();
        m.job_started();
        m.tokens(5);
        m.tokens(7);
        m.prompt_tokens(3);
        m.cuda_error();
        m.set_state("executing");
        m.set_state("draining");
        m.set_memory(
            "cpu",
            &MemoryReport {
                weights_bytes: 98_362_432,
                kv_cache_bytes: 0,
                scratch_bytes: 1,
            },
        );
        m.ttft(0.02);
        let t = m.render();
        assert_eq!(line_value(&t, "worker_orcd_jobs_started_total"), Some(2.0));
        assert_eq!(
            line_value(&t, "worker_orcd_generation_tokens_total"),
            Some(12.0)
        );
        assert_eq!(line_value(&t, "worker_orcd_prompt_tokens_total"), Some(3.0));
        assert_eq!(line_value(&t, "worker_orcd_cuda_errors_total"), Some(1.0));
        assert_eq!(
            line_value(&t, "worker_orcd_state{state=\"draining\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&t, "worker_orcd_state{state=\"executing\"}"),
            Some(0.0)
        );
        assert_eq!(
            line_value(
                &t,
                "worker_orcd_memory_bytes{kind=\"weights\",device=\"cpu\"}"
            ),
            Some(98_362_432.0)
        );
        assert_eq!(
            line_value(&t, "worker_orcd_time_to_first_token_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &t,
                "worker_orcd_time_to_first_token_seconds_bucket{le=\"0.04\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &t,
                "worker_orcd_time_to_first_token_seconds_bucket{le=\"0.01\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn operations_doc_lists_every_metric() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
                .unwrap();
        // Labelled families only appear once a series exists: touch them all.
        let m = Metrics::new();
        m.set_state("ready");
        m.set_memory("cpu", &MemoryReport::default());
        m.job_finished(None, Some("stop"));
        m.job_finished(Some("INTERNAL"), None);
        m.request_rejected("AUTH_FAILED");
        m.seal_verification(false, 0.0);
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(names.len(), 24, "{names:?}");
        for n in names {
            assert!(doc.contains(n), "docs/operations.md lacks metric {n}");
        }
    }

    #[test]
    fn unknown_label_values_collapse_to_other() {
        let m = Metrics::new();
        m.job_finished(Some("made up code"), None);
        m.job_finished(None, Some("weird"));
        let t = m.render();
        assert!(
            t.contains("worker_orcd_jobs_failed_total{code=\"other\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("worker_orcd_request_success_total{finished_reason=\"other\"} 1"),
            "{t}"
        );
        assert!(!t.contains("made up code"));
    }
}
