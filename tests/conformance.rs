//! The golden conformance body (`worker_orcd::engine::conformance`) on the CPU
//! reference path, driven through the `Engine` trait exactly as the CUDA
//! backend's `golden_real_models_on_gpu` drives it: prefill, then one
//! teacher-forced decode step per golden token, scored against llama.cpp's
//! greedy tokens and the float64 reference (issue 5 point 6: one test body
//! over both backends). tests/golden.rs holds the deeper reference-path
//! analysis (tokenizer, llama.cpp rounding mimicked, free-running greedy).
//!
//! Models come from `$WORKER_ORCD_TEST_MODELS` (default `<repo>/models`); a
//! test whose model is absent is ignored with that reason (build.rs), except
//! SmolLM2 when `CI=true`, which fails.

use std::path::PathBuf;
use worker_orcd::engine::conformance;
use worker_orcd::engine::cpu::CpuEngine;
use worker_orcd::engine::LoadOptions;
use worker_orcd::model::arch;
use worker_orcd::model::gguf::{GgufFile, GgufLimits};

fn models_dir() -> PathBuf {
    std::env::var_os("WORKER_ORCD_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The build ignores this test when the file is absent (build.rs), so a
/// missing file here is a failure.
fn check(file: &str, golden: &str, f64_name: &str, required_in_ci: bool) {
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "{} not found{} (run ci/fetch-models.sh, or set WORKER_ORCD_TEST_MODELS and rebuild)",
        path.display(),
        if required_in_ci && in_ci() {
            ", and CI=true requires it"
        } else {
            ""
        }
    );
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open model");
    let cases = conformance::load(golden, f64_name, &hex::encode(g.file_sha256))
        .expect("golden files")
        .expect("the golden and f64 files are committed under tests/golden_data");
    let (cfg, w) = arch::from_gguf(&g).expect("architecture");
    let opts = LoadOptions {
        max_context: 1024,
        kv_pool_tokens: 0,
        max_sequences: 1,
        gpu_device: 0,
        threads: 0,
    };
    let mut engine = CpuEngine::load(&g, &cfg, &w, &opts).expect("engine");
    let report = conformance::run(&mut engine, &cases).expect("teacher-forced run");
    println!("golden {file} on the reference path: {}", report.summary());
    if let Err(why) = report.check() {
        panic!("{file} on the reference path breaks the golden rule:\n{why}");
    }
}

#[test]
#[cfg_attr(
    not(test_model_smollm2),
    ignore = "SmolLM2-135M-Instruct.Q4_1.gguf is not in WORKER_ORCD_TEST_MODELS (ci/fetch-models.sh)"
)]
fn smollm2_reference_path_meets_the_golden_rule() {
    let (file, golden, f64_name) = conformance::REAL_MODELS[0];
    check(file, golden, f64_name, true);
}

#[test]
#[cfg_attr(
    not(test_model_qwen),
    ignore = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf is not in WORKER_ORCD_TEST_MODELS"
)]
fn qwen25_coder_reference_path_meets_the_golden_rule() {
    let (file, golden, f64_name) = conformance::REAL_MODELS[1];
    check(file, golden, f64_name, false);
}
