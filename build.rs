//! Build script: names the sources this build is made from (issue 10, "Bad
//! input"). It exports `WORKER_ORCD_SOURCE_SHA256` to every target of the
//! crate; the worker prints it with `worker-orcd build-info`, and the BDD
//! harness refuses a worker whose hash differs from its own.

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
}
