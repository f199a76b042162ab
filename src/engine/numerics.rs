//! The numerics version (issue 12 point 2): one short name for everything
//! that decides which tokens a worker produces for a request. Streams are
//! promised identical (WORKER-4710/4711) only between workers whose numerics
//! versions are equal; `/worker/ready`, the `started` event and `build-info`
//! show it, so an operator comparing two workers' outputs can tell at a
//! glance whether they should agree.
//!
//! What goes in: the build's hash of the sources whose arithmetic decides
//! the tokens (`WORKER_ORCD_NUMERICS_SOURCES_SHA256`, build.rs: kernels,
//! launchers, engines, sampler, model readers, locked dependencies), the
//! backend, the prefill chunk (how a prompt is cut decides which kernels see
//! which rows), and for CUDA what the device adds: its architecture, the
//! NVRTC version that compiled the kernels, the cuBLAS libraries loaded and
//! the prefill GEMM mode. What stays out: the card's name, driver, memory
//! and anything about the machine that does not change the arithmetic, and
//! one thing that can: the C library's math functions (`exp`, `powf`, `sin`,
//! `cos`) that the CPU path calls, whose version is not named (README).

use crate::backend::BackendKind;
use sha2::{Digest, Sha256};

/// The sources' half, fixed at build time.
pub const SOURCES_SHA256: &str = env!("WORKER_ORCD_NUMERICS_SOURCES_SHA256");

/// Bumped when the meaning of the fields below changes.
pub const SCHEME: &str = "worker-orcd numerics 2";

/// What besides the sources decides a backend's arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumericsKey {
    pub backend: BackendKind,
    /// Most prompt tokens one prefill step takes.
    pub prefill_chunk: usize,
    /// Device facts that change the arithmetic, as `name=value` lines
    /// (empty for the CPU backend).
    pub device: Vec<String>,
}

impl NumericsKey {
    /// The CPU backend: its arithmetic is the sources', the chunk's and the
    /// target's (the instruction set the build targets).
    pub fn cpu(prefill_chunk: usize) -> NumericsKey {
        NumericsKey {
            backend: BackendKind::Cpu,
            prefill_chunk,
            device: vec![format!(
                "target={}-{}",
                std::env::consts::ARCH,
                std::env::consts::OS
            )],
        }
    }

    /// `<backend>-<16 hex digits>`: SHA-256 over the scheme, the sources'
    /// hash and every field.
    pub fn version(&self) -> String {
        self.version_with(SOURCES_SHA256)
    }

    fn version_with(&self, sources: &str) -> String {
        let mut h = Sha256::new();
        let mut line = |s: &str| {
            h.update(s.as_bytes());
            h.update(b"\n");
        };
        line(SCHEME);
        line(sources);
        line(self.backend.as_str());
        line(&format!("prefill_chunk={}", self.prefill_chunk));
        for d in &self.device {
            line(d);
        }
        let digest = h.finalize();
        format!("{}-{}", self.backend.as_str(), &hex::encode(digest)[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(device: &[&str]) -> NumericsKey {
        NumericsKey {
            backend: BackendKind::Cuda,
            prefill_chunk: 512,
            device: device.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Every input moves the version; equal inputs give equal versions.
    #[test]
    fn every_input_changes_the_version() {
        let base = cuda(&["arch=sm_90", "nvrtc=13.0"]);
        let v = base.version_with("aa");
        assert_eq!(v, cuda(&["arch=sm_90", "nvrtc=13.0"]).version_with("aa"));
        assert!(v.starts_with("cuda-") && v.len() == 5 + 16, "{v}");
        let others = [
            base.version_with("ab"),
            cuda(&["arch=sm_80", "nvrtc=13.0"]).version_with("aa"),
            cuda(&["arch=sm_90", "nvrtc=13.1"]).version_with("aa"),
            cuda(&["arch=sm_90"]).version_with("aa"),
            NumericsKey {
                prefill_chunk: 256,
                ..base.clone()
            }
            .version_with("aa"),
            NumericsKey {
                backend: BackendKind::Cpu,
                ..base.clone()
            }
            .version_with("aa"),
        ];
        for o in &others {
            assert_ne!(o, &v);
        }
        let mut all = others.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), others.len(), "no two inputs collide");
    }

    /// The build's hash is a SHA-256 (64 hex digits), so the version names
    /// the sources it was built from.
    #[test]
    fn the_sources_hash_is_compiled_in() {
        assert_eq!(SOURCES_SHA256.len(), 64);
        assert!(SOURCES_SHA256.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(NumericsKey::cpu(512).version().starts_with("cpu-"));
    }
}
