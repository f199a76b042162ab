//! Build script: names the sources this build is made from (issue 10, "Bad
//! input"). It exports `WORKER_ORCD_SOURCE_SHA256` to every target of the
//! crate; the worker prints it with `worker-orcd build-info`, and the BDD
//! harness refuses a worker whose hash differs from its own.
//!
//! `WORKER_ORCD_NUMERICS_SOURCES_SHA256` hashes the subset of the sources
//! whose arithmetic decides the tokens (`source_hash::NUMERICS_INPUTS`), the
//! build half of the numerics version (`engine::numerics`, issue 12 point 2).
//!
//! It exports `WORKER_ORCD_GIT_COMMIT` too (the checkout's HEAD, or
//! "unknown" outside git), which `bench` writes beside every figure (issue 12
//! point 5); the source hash above stays the exact name of the sources.
//!
//! It compiles the CUDA kernels to CUBIN for the shipped architectures and
//! builds them into the binary (`build/kernel_images.rs`; issue 12 point 4):
//! `WORKER_ORCD_KERNEL_ARCHS` (comma separated, default sm_80,sm_89,sm_90,
//! empty for none) chooses them; without NVRTC the binary carries none and
//! a GPU worker compiles its kernels at first start.
//!
//! `cfg(nvrtc)` is on when libnvrtc.so.13 can be found (or with `CI=true`):
//! the kernel-compile tests need it and are ignored, with the reason, when
//! it is absent.
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

#[path = "build/kernel_images.rs"]
mod kernel_images;
// Shared with the worker (src/gpu): the kernel table, translation units and
// NVRTC compile; the build uses only part of it.
#[allow(dead_code)]
#[path = "src/gpu/kernel_units.rs"]
mod kernel_units;
#[path = "build/source_hash.rs"]
mod source_hash;

fn main() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let hash = source_hash::source_sha256(&root).expect("hash the crate's sources");
    println!("cargo:rustc-env=WORKER_ORCD_SOURCE_SHA256={hash}");
    let numerics =
        source_hash::numerics_sha256(&root).expect("hash the sources that decide the numerics");
    println!("cargo:rustc-env=WORKER_ORCD_NUMERICS_SOURCES_SHA256={numerics}");
    for i in source_hash::INPUTS {
        println!("cargo:rerun-if-changed={i}");
    }
    git_commit(&root);
    println!("cargo:rustc-check-cfg=cfg(gpu_tests)");
    println!("cargo:rerun-if-env-changed=WORKER_ORCD_GPU_TESTS");
    if std::env::var("WORKER_ORCD_GPU_TESTS").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=gpu_tests");
    }
    model_cfgs(&root);
    nvrtc_cfg();
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    kernel_images::embed(&out_dir);
}

/// `cfg(nvrtc)`: libnvrtc.so.13 is in a folder of `LD_LIBRARY_PATH` or a
/// usual library folder (`source ci/nvrtc-env.sh` puts it there), or
/// `CI=true`, where it must be. The tests that compile kernels without a
/// GPU are ignored, with that reason, when it is off.
fn nvrtc_cfg() {
    println!("cargo:rustc-check-cfg=cfg(nvrtc)");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/local/cuda/lib64",
        "/usr/lib",
    ] {
        dirs.push(d.into());
    }
    let found = dirs.iter().any(|d| d.join("libnvrtc.so.13").exists());
    if found || std::env::var("CI").as_deref() == Ok("true") {
        println!("cargo:rustc-cfg=nvrtc");
    }
}

/// `WORKER_ORCD_GIT_COMMIT`: HEAD's short hash, with "+changes" when the
/// sources the binary is made of (`source_hash::INPUTS`) differ from it.
/// Rerun when HEAD moves (its reflog is written on every commit, checkout
/// and reset) and, like the source hash, when a source changes.
fn git_commit(root: &std::path::Path) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            // Never take the index lock a user's own git command may need.
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let mut status = vec!["status", "--porcelain", "--untracked-files=normal", "--"];
    status.extend(source_hash::INPUTS);
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) if git(&status).is_some_and(|s| !s.is_empty()) => format!("{head}+changes"),
        Some(head) => head,
        None => "unknown".to_string(),
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rustc-env=WORKER_ORCD_GIT_COMMIT={commit}");
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
