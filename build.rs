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
}
