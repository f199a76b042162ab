//! The concurrency sweep's arithmetic and counts (issue 11 point 7):
//! nearest-rank percentiles against hand-worked values, the `--concurrency`
//! bounds, and whole sweeps on the CPU engine with a generated tiny model,
//! where every sequence must produce exactly its tokens and the most
//! sequences running at once must be min(N, what the KV pool holds).

use super::*;
use crate::engine::cpu::{CpuEngine, PAGE_TOKENS};
use crate::engine::LoadOptions;
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::test_model::{write_test_model, TestModelSpec};

#[test]
fn nearest_rank_matches_hand_worked_values() {
    // n = 5, sorted 15 20 35 40 50; rank = ceil(p·5/100).
    let v = [40.0, 15.0, 50.0, 35.0, 20.0];
    assert_eq!(nearest_rank(&v, 5.0), Some(15.0)); // rank ceil(0.25) = 1
    assert_eq!(nearest_rank(&v, 30.0), Some(20.0)); // rank ceil(1.5) = 2
    assert_eq!(nearest_rank(&v, 40.0), Some(20.0)); // rank 2 exactly
    assert_eq!(nearest_rank(&v, 50.0), Some(35.0)); // rank ceil(2.5) = 3
    assert_eq!(nearest_rank(&v, 99.0), Some(50.0)); // rank ceil(4.95) = 5
    assert_eq!(nearest_rank(&v, 100.0), Some(50.0));
    // n = 100, values 1..=100: the pth percentile is p itself.
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(nearest_rank(&hundred, 50.0), Some(50.0));
    assert_eq!(nearest_rank(&hundred, 99.0), Some(99.0));
    // n = 4: the median is the lower middle (rank 2), p99 the largest.
    let four = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(nearest_rank(&four, 50.0), Some(2.0));
    assert_eq!(nearest_rank(&four, 99.0), Some(4.0));
    assert_eq!(nearest_rank(&[7.0], 1.0), Some(7.0));
}

#[test]
fn nearest_rank_refuses_empty_input_and_bad_percentiles() {
    assert_eq!(nearest_rank(&[], 50.0), None);
    assert_eq!(nearest_rank(&[1.0], 0.0), None);
    assert_eq!(nearest_rank(&[1.0], 100.5), None);
    assert_eq!(nearest_rank(&[1.0], f64::NAN), None);
}

#[test]
fn levels_parse_within_bounds() {
    assert_eq!(parse_levels("1,8,32,64").unwrap(), vec![1, 8, 32, 64]);
    assert_eq!(parse_levels(" 4 , 1024").unwrap(), vec![4, 1024]);
    let sixteen = vec!["1"; MAX_LEVELS].join(",");
    assert_eq!(parse_levels(&sixteen).unwrap().len(), MAX_LEVELS);
}

#[test]
fn bad_levels_are_invalid_params() {
    let seventeen = vec!["1"; MAX_LEVELS + 1].join(",");
    for bad in [
        "", "0", "1025", "1,,2", "-1", "abc", "1.5", "8;16", &seventeen,
    ] {
        let e = parse_levels(bad).expect_err(bad);
        assert_eq!(e.code(), "INVALID_PARAMS", "{bad}");
        assert!(
            e.message().contains("--concurrency"),
            "{bad}: {}",
            e.message()
        );
    }
}

#[test]
fn synthetic_prompts_differ_per_sequence_and_stay_in_the_vocabulary() {
    let a = synthetic_prompt(16, 512, 0);
    let b = synthetic_prompt(16, 512, 1);
    assert_ne!(a, b);
    assert!(a.iter().chain(&b).all(|&t| t < 512));
    // Sequence 0 is the single-sequence bench's prompt.
    assert_eq!(a[0], 1000 % 512);
    assert_eq!(a[1], (7919 + 1000) % 512);
}

const PROMPT: usize = 20;
const GEN: usize = 6;

fn cfg(reps: usize) -> SweepConfig {
    SweepConfig {
        prompt_tokens: PROMPT,
        gen_tokens: GEN,
        warmup: 1,
        reps,
        vocab: 512,
        prefill_chunk: 64,
    }
}

/// The tiny model on the CPU engine, with a KV pool of `pool_seqs` sequences.
fn engine(pool_seqs: usize) -> (CpuEngine, Tokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    write_test_model(&TestModelSpec::tiny_llama(), &path).expect("write test model");
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("config");
    let per_seq = (PROMPT + GEN).div_ceil(PAGE_TOKENS) * PAGE_TOKENS;
    let opts = LoadOptions {
        max_context: PROMPT + GEN + 1,
        kv_pool_tokens: pool_seqs * per_seq,
        max_sequences: 1,
        gpu_device: 0,
        threads: 2,
    };
    let e = CpuEngine::load(&g, &cfg, &w, &opts).expect("load");
    (e, Tokenizer::from_gguf(&g).expect("tokenizer"))
}

#[test]
fn every_sequence_generates_exactly_its_tokens_and_all_run_together() {
    let (mut eng, tok) = engine(8);
    let run = run_level(&mut eng, &tok, 5, &cfg(1)).expect("level");
    assert_eq!(run.tokens_out, vec![GEN as u64; 5]);
    assert_eq!(run.max_running, 5);
    assert_eq!(run.ttft.len(), 5);
    assert_eq!(run.itl.len(), 5 * (GEN - 1));
    assert_eq!(run.decode_tokens, 5 * (GEN - 1));
    assert!(run.ttft.iter().all(|t| *t <= run.wall));
    assert_eq!(eng.kv_usage().used_pages, 0, "every page came back");
}

#[test]
fn sequences_beyond_the_pool_wait_and_the_sweep_says_how_many_ran() {
    let (mut eng, tok) = engine(3);
    let run = run_level(&mut eng, &tok, 7, &cfg(1)).expect("level");
    assert_eq!(run.tokens_out, vec![GEN as u64; 7]);
    assert_eq!(run.max_running, 3);
    let s = run_sweep(&mut eng, &tok, &[1, 2, 7], &cfg(3)).expect("sweep");
    let running: Vec<usize> = s.iter().map(|l| l.max_running).collect();
    assert_eq!(running, vec![1, 2, 3]);
    for l in &s {
        assert_eq!(l.reps, 3);
        assert!(l.decode_tok_s > 0.0 && l.wall_s > 0.0, "{l:?}");
        assert!(l.ttft_p50_ms <= l.ttft_p99_ms && l.itl_p50_ms <= l.itl_p99_ms);
    }
    assert_eq!(eng.kv_usage().used_pages, 0, "every page came back");
}

#[test]
fn one_generated_token_has_no_gaps() {
    let (mut eng, tok) = engine(2);
    let one = SweepConfig {
        gen_tokens: 1,
        ..cfg(1)
    };
    let s = run_sweep(&mut eng, &tok, &[2], &one).expect("sweep");
    assert_eq!(s[0].itl_p50_ms, None);
    assert_eq!(s[0].decode_tok_s, 0.0);
    assert!(s[0].ttft_p50_ms.is_some());
}

#[test]
fn results_are_written_as_csv_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let levels = [LevelSummary {
        concurrency: 2,
        reps: 1,
        max_running: 2,
        wall_s: 0.5,
        decode_tok_s: 100.0,
        decode_tok_s_mean: 101.0,
        decode_tok_s_std_dev: 2.5,
        peer_decode_tok_s: Some(200.0),
        ttft_p50_ms: Some(1.0),
        ttft_p99_ms: Some(2.0),
        itl_p50_ms: None,
        itl_p99_ms: None,
        step_ms: [0.5, 1.25, 0.25],
    }];
    let run = RunStamp {
        timestamp: "2026-12-04T00:00:00.000Z".into(),
        commit: "abc",
        source_sha256: "def",
        device: "a \"CPU\"".into(),
    };
    let r = SweepReport {
        run: &run,
        model: "m.gguf",
        backend: "cpu",
        prompt_tokens: 4,
        gen_tokens: 1,
        max_prefill: 64,
        warmup_reps: 1,
        levels: &levels,
        peer_source: None,
    };
    write_files(&dir.path().join("s"), &r).expect("write");
    let csv = std::fs::read_to_string(dir.path().join("s.csv")).expect("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].split(',').count(), rows[1].split(',').count());
    assert!(
        rows[1].ends_with(",100.00,101.00,2.50,200.0000,1.0000,2.0000,,,0.5000,1.2500,0.2500"),
        "{}",
        rows[1]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["levels"][0]["itl_p50_ms"], serde_json::Value::Null);
    assert_eq!(json["levels"][0]["max_running"], 2);
    assert_eq!(json["levels"][0]["step_ms"][1], 1.25);
    assert_eq!(json["run"]["commit"], "abc");
    let svg = std::fs::read_to_string(dir.path().join("s.svg")).expect("svg");
    assert_eq!(svg.matches("<polyline").count(), 2, "ours and the peer's");
}
