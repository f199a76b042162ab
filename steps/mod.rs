//! Step definitions of the BDD suite, one module per domain. `run` wires them
//! into cucumber; `traceability` and `proof` turn a run into evidence.

pub mod apparmor;
pub mod callback;
pub mod capability;
pub mod config;
pub mod determinism;
pub mod gguf_meta;
pub mod gpu;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod models;
pub mod process;
pub mod proof;
pub mod run;
pub mod seal;
pub mod security;
pub mod signature;
pub mod snapshot;
pub mod source;
pub mod sse;
pub mod sse_checks;
pub mod traceability;
pub mod upload;
pub mod validation;
pub mod world;
