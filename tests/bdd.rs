//! The BDD suite (issue 2): runs every scenario of `features/` against the real
//! `worker-orcd` binary, writes a proof bundle and a requirement traceability
//! matrix, and fails when a requirement has no scenario or a tag names an
//! unknown requirement (WORKER-4996, 4997, 4998, PB-*).
//!
//! `harness = false`: `cargo test --test bdd` runs `main` below. The step
//! definitions live in `steps/`, one module per domain.

#[path = "../steps/mod.rs"]
mod steps;

fn main() -> std::process::ExitCode {
    steps::run::main()
}
