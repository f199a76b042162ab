//! Step definitions of the BDD suite, one module per domain. `run` wires them
//! into cucumber; `traceability` and `proof` turn a run into evidence.

pub mod apparmor;
pub mod build_check;
pub mod callback;
pub mod capability;
pub mod cli;
pub mod config;
pub mod determinism;
pub mod digest;
pub mod gguf_meta;
pub mod gpu;
pub mod harness_checks;
pub mod http;
pub mod logs;
pub mod matrix;
pub mod metrics;
pub mod models;
pub mod mutant;
pub mod plan_memory;
pub mod process;
pub mod procfs;
pub mod proof;
pub mod run;
pub mod seal;
pub mod security;
pub mod shard;
pub mod signature;
pub mod snapshot;
pub mod source;
pub mod sse;
pub mod sse_checks;
pub mod timing;
pub mod traceability;
pub mod upload;
pub mod validation;
pub mod world;
