//! The bytes of a model file: memory-mapped from disk or owned in memory.
//!
//! Why: a 100 GB model must not be copied into the heap just to be parsed and
//! hashed (WORKER-4224, 4314); mapping it lets the page cache serve it. This is
//! the one place outside `src/gpu/` allowed to use `unsafe` (TEAM.md rule 7).

use std::fs::File;

use crate::error::{Result, WorkerError};

/// Read-only bytes of a model file.
pub(crate) enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Map `file` read-only. The caller has already checked its length.
    #[allow(unsafe_code)]
    pub(crate) fn map(file: &File, what: &str) -> Result<Self> {
        // SAFETY: the mapping is read-only and never handed out as `&mut`.
        // memmap2 cannot stop another process from truncating or rewriting the
        // file while it is mapped; that is a documented operational rule (model
        // files are immutable once deployed, and the resident copy is sealed and
        // re-verified, WORKER-4314), not something this process can enforce.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| {
            WorkerError::model_load(format!(
                "could not memory-map model file {what}: {e}; check that it is a regular, readable file"
            ))
        })?;
        Ok(Self::Mapped(map))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Mapped(_) => "mapped",
            Self::Owned(_) => "owned",
        };
        write!(f, "FileBytes({kind}, {} bytes)", self.as_slice().len())
    }
}
