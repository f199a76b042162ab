//! The one error type of worker-orcd (WORKER-4950, 4951, 4952).
//!
//! Every failure the worker can report carries a stable `code` string that
//! clients and operators may match on. The HTTP status, the JSON error body
//! and the SSE `error` event are all derived here, in one place, so that the
//! same failure always looks the same on every surface.

use serde::Serialize;

/// A failure with a stable code. Messages are plain English for an operator:
/// what happened, what it means, what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// The request was malformed, out of range, or named an unknown field.
    #[error("{message}")]
    InvalidParams { message: String },
    /// The request body exceeded the configured size limit (HTTP 413).
    #[error("{message}")]
    PayloadTooLarge { message: String },
    /// A JSON endpoint got a body whose Content-Type is not
    /// `application/json` (HTTP 415).
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// The request body stopped arriving for `body_read_timeout_ms` (HTTP 408).
    #[error("{message}")]
    RequestTimeout { message: String },
    /// Missing or wrong bearer token.
    #[error("{message}")]
    AuthFailed { message: String },
    /// The caller is authenticated but does not own the job it addressed.
    #[error("{message}")]
    Forbidden { message: String },
    /// The addressed job, handle or route does not exist.
    #[error("{message}")]
    NotFound { message: String },
    /// The model file could not be read, validated or parsed.
    #[error("{message}")]
    ModelLoadFailed { message: String },
    /// The addressed handle was this worker's shard until a commit re-sealed
    /// the same model under a new shard id; the message names the new id (WORKER-4227).
    #[error("{message}")]
    HandleSuperseded { message: String },
    /// The model file ended early, grew or was modified while it was read
    /// (issue 13 point 2); nothing was loaded. Retriable once the file is whole.
    #[error("{message}")]
    ModelFileChanged { message: String },
    /// The model needs a capability this engine does not provide (MCD ⊄ ECP).
    #[error("{message}")]
    CapabilityMismatch { message: String },
    /// A model's detached Ed25519 signature is missing (a trusted key is
    /// configured), does not verify, or cannot be verified (no trusted key)
    /// (WORKER-4222, 4313).
    #[error("{message}")]
    ModelSignatureInvalid { message: String },
    /// A different model is already committed to this worker (one model per process).
    #[error("{message}")]
    ModelConflict { message: String },
    /// Not enough free device memory; message names needed and available bytes.
    #[error("{message}")]
    VramOom { message: String },
    /// Not enough host memory (distinct from VRAM_OOM, WORKER-4952).
    #[error("{message}")]
    HostOom { message: String },
    /// A CUDA driver, NVRTC, cuBLAS or kernel-launch failure.
    #[error("{message}")]
    CudaError { message: String },
    /// An engine step ran past `step_timeout_ms`: the GPU or the engine is
    /// hung (the watchdog, `daemon::watchdog`).
    #[error("{message}")]
    EngineHung { message: String },
    /// The resident model bytes no longer match their seal.
    #[error("{message}")]
    SealVerificationFailed { message: String },
    /// The single slot is occupied; retry after the hint.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_ms: u64,
    },
    /// The worker is draining or not ready; retry elsewhere or later.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_ms: u64,
    },
    /// The job ran past `execution_timeout_ms`.
    #[error("{message}")]
    Timeout { message: String },
    /// The job was cancelled by its owner or by a disconnect.
    #[error("{message}")]
    Cancelled { message: String },
    /// A bug or an unexpected condition inside the worker.
    #[error("{message}")]
    Internal { message: String },
    /// The configuration, credentials, privileges or listen address are
    /// unusable, found at start-up (exit code 2). Reported through the status
    /// callback; never the answer to a request of a running worker.
    #[error("{message}")]
    InvalidConfig { message: String },
}

/// The JSON body of an HTTP error and the data of an SSE `error` event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    pub retriable: bool,
    pub retry_after_ms: Option<u64>,
}

impl WorkerError {
    /// The stable code string. Never change an existing one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParams { .. } => "INVALID_PARAMS",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType { .. } => "UNSUPPORTED_MEDIA_TYPE",
            Self::RequestTimeout { .. } => "REQUEST_TIMEOUT",
            Self::AuthFailed { .. } => "AUTH_FAILED",
            Self::Forbidden { .. } => "FORBIDDEN",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::ModelLoadFailed { .. } => "MODEL_LOAD_FAILED",
            Self::HandleSuperseded { .. } => "HANDLE_SUPERSEDED",
            Self::ModelFileChanged { .. } => "MODEL_FILE_CHANGED",
            Self::CapabilityMismatch { .. } => "CAPABILITY_MISMATCH",
            Self::ModelSignatureInvalid { .. } => "MODEL_SIGNATURE_INVALID",
            Self::ModelConflict { .. } => "MODEL_CONFLICT",
            Self::VramOom { .. } => "VRAM_OOM",
            Self::HostOom { .. } => "HOST_OOM",
            Self::CudaError { .. } => "CUDA_ERROR",
            Self::EngineHung { .. } => "ENGINE_HUNG",
            Self::SealVerificationFailed { .. } => "SEAL_VERIFICATION_FAILED",
            Self::Busy { .. } => "WORKER_BUSY",
            Self::Unavailable { .. } => "WORKER_UNAVAILABLE",
            Self::Timeout { .. } => "EXECUTION_TIMEOUT",
            Self::Cancelled { .. } => "CANCELLED",
            Self::Internal { .. } => "INTERNAL",
            Self::InvalidConfig { .. } => "INVALID_CONFIG",
        }
    }

    /// Every code this type can produce, for documentation and tests.
    pub const ALL_CODES: &'static [&'static str] = &[
        "INVALID_PARAMS",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "REQUEST_TIMEOUT",
        "AUTH_FAILED",
        "FORBIDDEN",
        "NOT_FOUND",
        "MODEL_LOAD_FAILED",
        "HANDLE_SUPERSEDED",
        "MODEL_FILE_CHANGED",
        "CAPABILITY_MISMATCH",
        "MODEL_SIGNATURE_INVALID",
        "MODEL_CONFLICT",
        "VRAM_OOM",
        "HOST_OOM",
        "CUDA_ERROR",
        "ENGINE_HUNG",
        "SEAL_VERIFICATION_FAILED",
        "WORKER_BUSY",
        "WORKER_UNAVAILABLE",
        "EXECUTION_TIMEOUT",
        "CANCELLED",
        "INTERNAL",
        "INVALID_CONFIG",
    ];

    /// HTTP status for this failure.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidParams { .. } => 400,
            Self::PayloadTooLarge { .. } => 413,
            Self::UnsupportedMediaType { .. } => 415,
            Self::RequestTimeout { .. } => 408,
            Self::AuthFailed { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::NotFound { .. } => 404,
            Self::ModelLoadFailed { .. } => 422,
            Self::HandleSuperseded { .. } => 410,
            Self::ModelFileChanged { .. } => 409,
            Self::CapabilityMismatch { .. } => 422,
            Self::ModelSignatureInvalid { .. } => 422,
            Self::ModelConflict { .. } => 409,
            Self::VramOom { .. } => 507,
            Self::HostOom { .. } => 507,
            Self::CudaError { .. } => 500,
            Self::EngineHung { .. } => 500,
            Self::SealVerificationFailed { .. } => 500,
            Self::Busy { .. } => 429,
            Self::Unavailable { .. } => 503,
            Self::Timeout { .. } => 504,
            Self::Cancelled { .. } => 499,
            Self::Internal { .. } => 500,
            Self::InvalidConfig { .. } => 500,
        }
    }

    /// Whether the same request may succeed if retried (here or elsewhere).
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            Self::Busy { .. }
                | Self::Unavailable { .. }
                | Self::Timeout { .. }
                | Self::ModelFileChanged { .. }
        )
    }

    /// Hint for the client's retry; only set for retriable errors.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Busy { retry_after_ms, .. } | Self::Unavailable { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            Self::ModelFileChanged { .. } => Some(MODEL_FILE_RETRY_MS),
            _ => None,
        }
    }

    /// Whether this failure means the worker can no longer be trusted and
    /// must move to Stopped so that its supervisor restarts it (4032, 4122, 4960).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::CudaError { .. } | Self::EngineHung { .. } | Self::SealVerificationFailed { .. }
        )
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidParams { message }
            | Self::PayloadTooLarge { message }
            | Self::UnsupportedMediaType { message }
            | Self::RequestTimeout { message }
            | Self::AuthFailed { message }
            | Self::Forbidden { message }
            | Self::NotFound { message }
            | Self::ModelLoadFailed { message }
            | Self::HandleSuperseded { message }
            | Self::ModelFileChanged { message }
            | Self::CapabilityMismatch { message }
            | Self::ModelSignatureInvalid { message }
            | Self::ModelConflict { message }
            | Self::VramOom { message }
            | Self::HostOom { message }
            | Self::CudaError { message }
            | Self::EngineHung { message }
            | Self::SealVerificationFailed { message }
            | Self::Busy { message, .. }
            | Self::Unavailable { message, .. }
            | Self::Timeout { message }
            | Self::Cancelled { message }
            | Self::Internal { message }
            | Self::InvalidConfig { message } => message,
        }
    }

    /// The body sent over HTTP and as the SSE `error` event's data.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.message().to_string(),
            retriable: self.retriable(),
            retry_after_ms: self.retry_after_ms(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidParams {
            message: message.into(),
        }
    }
    pub fn model_load(message: impl Into<String>) -> Self {
        Self::ModelLoadFailed {
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
        }
    }
    pub fn cuda(message: impl Into<String>) -> Self {
        Self::CudaError {
            message: message.into(),
        }
    }
}

/// When to retry after MODEL_FILE_CHANGED: long enough for a copy to finish.
const MODEL_FILE_RETRY_MS: u64 = 1000;

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in WorkerError::ALL_CODES {
            assert!(seen.insert(*c), "duplicate code {c}");
        }
        let samples = [
            WorkerError::invalid("x"),
            WorkerError::model_load("x"),
            WorkerError::VramOom {
                message: "x".into(),
            },
            WorkerError::HostOom {
                message: "x".into(),
            },
            WorkerError::Busy {
                message: "x".into(),
                retry_after_ms: 5,
            },
        ];
        for e in samples {
            assert!(WorkerError::ALL_CODES.contains(&e.code()));
        }
    }

    #[test]
    fn a_bad_signature_is_its_own_permanent_client_error() {
        let e = WorkerError::ModelSignatureInvalid {
            message: "x".into(),
        };
        assert_eq!(e.code(), "MODEL_SIGNATURE_INVALID");
        assert!(WorkerError::ALL_CODES.contains(&e.code()));
        assert_eq!(e.http_status(), 422);
        assert!(!e.retriable() && !e.is_fatal());
    }

    #[test]
    fn vram_and_host_oom_differ() {
        let v = WorkerError::VramOom {
            message: String::new(),
        };
        let h = WorkerError::HostOom {
            message: String::new(),
        };
        assert_ne!(v.code(), h.code());
    }

    #[test]
    fn retry_hint_only_on_retriable() {
        let busy = WorkerError::Busy {
            message: "busy".into(),
            retry_after_ms: 250,
        };
        assert!(busy.retriable());
        assert_eq!(busy.body().retry_after_ms, Some(250));
        let bad = WorkerError::invalid("bad");
        assert!(!bad.retriable());
        assert_eq!(bad.body().retry_after_ms, None);
    }
}
