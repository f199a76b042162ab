//! Build script: names the sources this build is made from (issue 10, "Bad
//! input"). It exports `WORKER_ORCD_SOURCE_SHA256` to every target of the
//! crate; the worker prints it with `worker-orcd build-info`, and the BDD
//! harness refuses a worker whose hash differs from its own.
//!
//! It also turns on `cfg(gpu_tests)` when `WORKER_ORCD_GPU_TESTS=1`
//! (ci/gpu-stage sets it for the binaries the GPU machine runs): the tests
//! that need a GPU are `#[ignore]`d with that reason in every other build, so
//! a run without a GPU counts them as ignored, never as passed (issue 13
//! point 8).
//!
//! Likewise for the real model files: `cfg(test_model_smollm2)` and
//! `cfg(test_model_qwen)` are on when the file is in
//! `$WORKER_ORCD_TEST_MODELS` (else `<repo>/models`), and the tests that
//! read one are ignored, with that reason, when it is absent. With `CI=true`
//! SmolLM2 counts as present (CI installs it), so its tests fail rather than
//! hide when it is missing. `cfg(test_as_root)`: the build runs as root,
//! where a mode-000 file is readable anyway.

#[path = "build/source_hash.rs"]
mod source_hash;

fn main() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let hash = source_hash::source_sha256(&root).expect("hash the crate's sources");
    println!("cargo:rustc-env=WORKER_ORCD_SOURCE_SHA256={hash}");
    for i in source_hash::INPUTS {
        println!("cargo:rerun-if-changed={i}");
    }
    println!("cargo:rustc-check-cfg=cfg(gpu_tests)");
    println!("cargo:rerun-if-env-changed=WORKER_ORCD_GPU_TESTS");
    if std::env::var("WORKER_ORCD_GPU_TESTS").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=gpu_tests");
    }
    model_cfgs(&root);
}

/// `cfg(test_model_*)` for the real model files present, and `cfg(test_as_root)`.
fn model_cfgs(root: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    println!("cargo:rustc-check-cfg=cfg(test_model_smollm2, test_model_qwen, test_as_root)");
    println!("cargo:rerun-if-env-changed=WORKER_ORCD_TEST_MODELS");
    println!("cargo:rerun-if-env-changed=CI");
    let dir = std::env::var_os("WORKER_ORCD_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("models"));
    println!("cargo:rerun-if-changed={}", dir.display());
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    for (cfg, file, ci_installs) in [
        (
            "test_model_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            true,
        ),
        (
            "test_model_qwen",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            false,
        ),
    ] {
        if dir.join(file).is_file() || (ci_installs && in_ci) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        println!("cargo:rustc-cfg=test_as_root");
    }
}
