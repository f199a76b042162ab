//! Which implementation computes the forward pass (a name the
//! configuration reads and the engines implement) and the memory a backend
//! reports. They live on the ground floor so that `config`, `shard` and
//! `telemetry` need not import `engine`.

use serde::Serialize;

/// Which implementation computes the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The f32 reference path on the host CPU.
    Cpu,
    /// The CUDA backend: weights quantized in VRAM.
    Cuda,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Bytes the engine holds, by purpose (reported in metrics and by Plan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub scratch_bytes: u64,
}

impl MemoryReport {
    pub fn total(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.scratch_bytes
    }
}
