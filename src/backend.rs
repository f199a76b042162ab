//! Which implementation computes the forward pass: a name the
//! configuration reads (`backend`) and the engines implement. It lives on
//! the ground floor so that `config` need not import `engine`.

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
