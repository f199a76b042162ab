//! Commands for people and scripts besides the daemon itself.
pub mod bench;
pub mod bench_auth;
pub mod bench_output;
pub mod bench_plot;
pub mod bench_report;
pub mod bench_sweep;
pub mod generate;
pub mod loadgen;
pub mod loadgen_plans;
pub mod make_model;

/// What `worker-orcd build-info` prints: the version, the features compiled in
/// (`test-hooks` or none) and the SHA-256 of the sources (build.rs), so a test
/// harness can refuse a binary built without its hooks or from other sources;
/// the commit; and the numerics version (`engine::numerics`): the CPU
/// backend's in full, the CUDA backend's build half (its device half is
/// known once a GPU is open).
pub fn build_info() -> String {
    let features = if cfg!(feature = "test-hooks") {
        "test-hooks"
    } else {
        "none"
    };
    format!(
        "version: {}\nfeatures: {features}\nsource-sha256: {}\ncommit: {}\n\
         numerics-sources-sha256: {}\nnumerics-version-cpu: {}\n\
         numerics-version-cuda: set at start from the device (architecture, NVRTC, cuBLAS, prefill GEMM mode); /worker/ready shows it\n",
        env!("CARGO_PKG_VERSION"),
        env!("WORKER_ORCD_SOURCE_SHA256"),
        env!("WORKER_ORCD_GIT_COMMIT"),
        crate::engine::numerics::SOURCES_SHA256,
        crate::engine::numerics::NumericsKey::cpu(crate::engine::cpu::CPU_PREFILL_CHUNK).version(),
    )
}
