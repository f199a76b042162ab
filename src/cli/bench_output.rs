//! What `bench` prints and writes (issue 12 point 5): a table with each
//! figure's median, mean and standard deviation, headed by the card, commit
//! and time; a CSV row and a JSON object per context point; and an SVG plot
//! of prefill and decode tokens/s against context length, with the peer's
//! figures where the comparison is fair. Files are named by model, backend
//! and time, so a run never overwrites an earlier one.

use super::bench_plot::{self, Panel, Series};
use super::bench_report::{self as report, RunStamp, Stats};
use crate::engine::BackendKind;
use crate::error::{Result, WorkerError};
use serde::Serialize;
use std::path::Path;

/// Everything a bench run measured, as written to its JSON file.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub run: RunStamp,
    pub model: String,
    pub file_bytes: u64,
    pub backend: BackendKind,
    pub threads: usize,
    pub gen_tokens: usize,
    pub warmup_reps: usize,
    pub reps: usize,
    pub load_s: f64,
    pub seal_verify_s: f64,
    pub points: Vec<PointResult>,
    /// Where the peer figures come from, when any point has one.
    pub peer_source: Option<&'static str>,
}

/// The figures at one context length.
#[derive(Debug, Serialize)]
pub struct PointResult {
    pub context: usize,
    /// Prefill of the `context`-token prompt (none at context 0).
    pub prefill_tok_s: Option<Stats>,
    /// Decode of `gen_tokens` after it.
    pub decode_tok_s: Stats,
    pub peer_prefill_tok_s: Option<f64>,
    pub peer_decode_tok_s: Option<f64>,
}

impl PointResult {
    pub fn prefill_ratio(&self) -> Option<f64> {
        Some(self.prefill_tok_s?.median / self.peer_prefill_tok_s?)
    }

    pub fn decode_ratio(&self) -> Option<f64> {
        Some(self.decode_tok_s.median / self.peer_decode_tok_s?)
    }
}

fn ratio_cell(ours: Option<f64>, peer: Option<f64>, ratio: Option<f64>) -> String {
    match (ours, peer, ratio) {
        (Some(_), Some(p), Some(r)) => format!("{p:.0} ({r:.2}x)"),
        _ => "-".to_string(),
    }
}

pub fn print_table(r: &BenchResult) {
    println!("{} on {}", r.model, r.backend.as_str());
    println!("{}", r.run.line());
    println!(
        "load {:.3} s, seal verification (resident digest) {:.3} s; {} generated tokens per point; \
         median (mean ± sd) of {} after {} warm-up",
        r.load_s, r.seal_verify_s, r.gen_tokens, r.reps, r.warmup_reps
    );
    println!(
        "{:>8}  {:>30}  {:>26}  {:>18}  {:>16}",
        "context", "prefill tok/s", "decode tok/s", "peer prefill", "peer decode"
    );
    for p in &r.points {
        println!(
            "{:>8}  {:>30}  {:>26}  {:>18}  {:>16}",
            p.context,
            p.prefill_tok_s
                .map_or_else(|| "-".to_string(), |s| s.cell()),
            p.decode_tok_s.cell(),
            ratio_cell(
                p.prefill_tok_s.map(|s| s.median),
                p.peer_prefill_tok_s,
                p.prefill_ratio()
            ),
            ratio_cell(
                Some(p.decode_tok_s.median),
                p.peer_decode_tok_s,
                p.decode_ratio()
            ),
        );
    }
    match r.peer_source {
        Some(src) => println!("peer: {src}"),
        None => println!(
            "peer: no ratio (the peer figures are for the CUDA backend on one {}, these files and protocols)",
            report::peer_cards()
        ),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.4}"))
}

fn csv(r: &BenchResult) -> String {
    let mut out = String::from(
        "timestamp,commit,source_sha256,model,file_bytes,backend,device,threads,gen_tokens,warmup_reps,reps,\
         load_s,seal_verify_s,context,prefill_median,prefill_mean,prefill_std_dev,\
         decode_median,decode_mean,decode_std_dev,peer_prefill,peer_decode,prefill_ratio,decode_ratio\n",
    );
    for p in &r.points {
        let pre = p.prefill_tok_s;
        let d = p.decode_tok_s;
        out += &format!(
            "{},{},{},{},{},{},\"{}\",{},{},{},{},{:.4},{:.4},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{}\n",
            r.run.timestamp,
            r.run.commit,
            r.run.source_sha256,
            r.model,
            r.file_bytes,
            r.backend.as_str(),
            r.run.device.replace('"', "'"),
            r.threads,
            r.gen_tokens,
            r.warmup_reps,
            r.reps,
            r.load_s,
            r.seal_verify_s,
            p.context,
            opt(pre.map(|s| s.median)),
            opt(pre.map(|s| s.mean)),
            opt(pre.map(|s| s.std_dev)),
            d.median,
            d.mean,
            d.std_dev,
            opt(p.peer_prefill_tok_s),
            opt(p.peer_decode_tok_s),
            opt(p.prefill_ratio()),
            opt(p.decode_ratio()),
        );
    }
    out
}

/// Prefill and decode tokens/s against context length, ours and the peer's.
pub fn plot(r: &BenchResult) -> String {
    let series = |name: &str, f: &dyn Fn(&PointResult) -> Option<f64>| Series {
        name: name.to_string(),
        points: r
            .points
            .iter()
            .filter_map(|p| Some((p.context as f64, f(p)?)))
            .collect(),
    };
    let with_peer = |ours: Series, peer: Series| {
        let mut v = vec![ours];
        if !peer.points.is_empty() {
            v.push(peer);
        }
        v
    };
    let title = |what: &str| format!("{what}, {} on {}", r.model, r.backend.as_str());
    bench_plot::svg(&[
        Panel {
            title: title("prefill"),
            x_label: "prompt tokens".into(),
            y_label: "tokens/s (median)".into(),
            series: with_peer(
                series("worker-orcd", &|p| p.prefill_tok_s.map(|s| s.median)),
                series("llama.cpp (same card)", &|p| p.peer_prefill_tok_s),
            ),
        },
        Panel {
            title: title("decode"),
            x_label: format!("context before {} decoded tokens", r.gen_tokens),
            y_label: "tokens/s (median)".into(),
            series: with_peer(
                series("worker-orcd", &|p| Some(p.decode_tok_s.median)),
                series("llama.cpp (same card)", &|p| p.peer_decode_tok_s),
            ),
        },
    ])
}

/// `<dir>/bench-<model>-<backend>-<time>.{json,csv,svg}`.
pub fn write_files(dir: &Path, r: &BenchResult) -> Result<()> {
    let stem = format!(
        "bench-{}-{}",
        r.model.trim_end_matches(".gguf"),
        r.backend.as_str()
    );
    let base = report::claim_stem(dir, &stem, &r.run.file_time())?;
    let json = serde_json::to_string_pretty(r).map_err(|e| WorkerError::internal(e.to_string()))?;
    report::write_beside(&base, "json", &(json + "\n"))?;
    report::write_beside(&base, "csv", &csv(r))?;
    let svg = report::write_beside(&base, "svg", &plot(r))?;
    eprintln!(
        "wrote {0}.json, .csv and .svg",
        svg.with_extension("").display()
    );
    Ok(())
}
