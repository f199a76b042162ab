//! Process exit codes of the daemon (WORKER-4032, 4961, 4963, 4970–4972).
//!
//! The supervisor (pool-managerd) reads these to decide what to do:
//!
//! | code | meaning | supervisor action |
//! |---|---|---|
//! | 0 | clean shutdown (SIGTERM/SIGINT, drained) | none |
//! | 1 | internal error (a bug) | restart with backoff |
//! | 2 | invalid configuration, credentials or privileges | fix config; do not restart blindly |
//! | 3 | model load failed (file, GGUF, MCD/ECP, memory, signature) | fix the model or the plan |
//! | 4 | CUDA / device error, or an engine step hung past `step_timeout_ms` | restart; check the GPU |
//! | 5 | seal verification failed (resident bytes changed) | restart; investigate the host |
//! | 6 | drain timeout or forced shutdown (second signal) | none; the job was cut short |
//! | 7 | restart circuit breaker tripped: 5 starts of this worker_id in 5 minutes (4963) | do not restart; find the real error in the earlier starts' logs |

use crate::error::WorkerError;

pub const OK: u8 = 0;
pub const INTERNAL: u8 = 1;
pub const CONFIG: u8 = 2;
pub const MODEL_LOAD: u8 = 3;
pub const DEVICE: u8 = 4;
pub const SEAL: u8 = 5;
pub const FORCED: u8 = 6;
/// The restart circuit breaker refused this start ([`super::breaker`]).
pub const RESTART_STORM: u8 = 7;

/// The exit code for a start-up or fatal runtime error.
pub fn for_error(e: &WorkerError) -> u8 {
    match e {
        WorkerError::ModelLoadFailed { .. }
        | WorkerError::ModelFileChanged { .. }
        | WorkerError::CapabilityMismatch { .. }
        | WorkerError::ModelSignatureInvalid { .. }
        | WorkerError::HostOom { .. }
        | WorkerError::VramOom { .. }
        | WorkerError::ModelConflict { .. } => MODEL_LOAD,
        WorkerError::CudaError { .. } | WorkerError::EngineHung { .. } => DEVICE,
        WorkerError::SealVerificationFailed { .. } => SEAL,
        WorkerError::InvalidParams { .. }
        | WorkerError::AuthFailed { .. }
        | WorkerError::InvalidConfig { .. } => CONFIG,
        _ => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_have_distinct_codes() {
        let cuda = for_error(&WorkerError::cuda("x"));
        let seal = for_error(&WorkerError::SealVerificationFailed {
            message: "x".into(),
        });
        let load = for_error(&WorkerError::model_load("x"));
        let unsigned = for_error(&WorkerError::ModelSignatureInvalid {
            message: "x".into(),
        });
        assert_eq!(unsigned, MODEL_LOAD);
        let oom = for_error(&WorkerError::VramOom {
            message: "x".into(),
        });
        assert_eq!(
            (cuda, seal, load, oom),
            (DEVICE, SEAL, MODEL_LOAD, MODEL_LOAD)
        );
        assert_eq!(for_error(&WorkerError::internal("x")), INTERNAL);
        let codes = [
            OK,
            INTERNAL,
            CONFIG,
            MODEL_LOAD,
            DEVICE,
            SEAL,
            FORCED,
            RESTART_STORM,
        ];
        let set: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(set.len(), codes.len());
    }
}
