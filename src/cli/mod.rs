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
/// harness can refuse a binary built without its hooks or from other sources.
pub fn build_info() -> String {
    let features = if cfg!(feature = "test-hooks") {
        "test-hooks"
    } else {
        "none"
    };
    format!(
        "version: {}\nfeatures: {features}\nsource-sha256: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("WORKER_ORCD_SOURCE_SHA256")
    )
}
