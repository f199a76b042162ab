//! Opening GGUF files from disk (WORKER-4224, 4314; issue 13 points 2, 3).
//!
//! Both ways read the file with plain reads ([`crate::model::file`]), so a
//! file truncated or rewritten meanwhile gives MODEL_FILE_CHANGED instead of
//! SIGBUS, and both finish the whole file's SHA-256 before parsing a byte:
//! - [`GgufFile::open`] keeps every byte, for a load;
//! - [`GgufHeader::scan`] keeps only the first [`MAX_HEADER_BYTES`] while
//!   the file streams through the hash, then parses them, and reads the
//!   sampled weights back by position: what Plan needs, in bounded memory.

use std::path::Path;

use super::{check_file_len, fail, GgufFile, GgufHeader, GgufLimits};
use crate::error::Result;
use crate::model::arch;
use crate::model::file::{self, read_stable, StableRead};

/// Largest header (metadata and tensor table) read: real vocabularies of
/// 256k tokens with scores and merges stay under 20 MiB.
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

impl GgufFile {
    /// Read and hash the whole file (WORKER-4314), then parse and validate it.
    pub fn open(path: &Path, limits: &GgufLimits) -> Result<Self> {
        let shown = path.display().to_string();
        check_file_len(file::FileIdentity::stat(path)?.len, limits, &shown)?;
        let (bytes, facts) = file::read_whole(path, limits.max_file_bytes)?;
        check_file_len(bytes.len() as u64, limits, &shown)?;
        let mut g = Self::from_bytes(bytes, facts.sha256, limits, &shown)?;
        g.identity = Some(facts.identity);
        log_read(&shown, &g);
        Ok(g)
    }
}

impl GgufHeader {
    /// Hash the whole file, parse its header and check its sampled weights
    /// (see [`arch::check_weights`]), holding at most [`MAX_HEADER_BYTES`] of it in memory.
    /// Returns the header and the identity of the file it describes.
    pub fn scan(path: &Path, limits: &GgufLimits) -> Result<(Self, file::FileIdentity)> {
        let shown = path.display().to_string();
        check_file_len(file::FileIdentity::stat(path)?.len, limits, &shown)?;
        let mut prefix = Vec::new();
        let read = read_stable(path, limits.max_file_bytes, |block, len| {
            let keep = len.min(MAX_HEADER_BYTES) as usize;
            let take = keep.saturating_sub(prefix.len()).min(block.len());
            prefix.extend_from_slice(&block[..take]);
            Ok(())
        })?;
        let header = Self::from_stream(&read, &prefix, limits, &shown)?;
        arch::check_weights_at(&header, |at, buf| {
            read.read_at(header.data_offset + at, buf)
        })?;
        let facts = read.finish()?;
        log_read(&shown, &header);
        Ok((header, facts.identity))
    }

    /// The header of a streamed file from its first bytes.
    fn from_stream(
        read: &StableRead,
        prefix: &[u8],
        limits: &GgufLimits,
        shown: &str,
    ) -> Result<Self> {
        let facts = read.facts();
        check_file_len(facts.identity.len, limits, shown)?;
        Self::from_prefix(prefix, facts.identity.len, facts.sha256, limits, shown)?
            .ok_or_else(|| too_long(shown))
    }
}

/// The refusal of a header longer than [`MAX_HEADER_BYTES`].
pub(super) fn too_long(shown: &str) -> crate::error::WorkerError {
    fail(format!(
        "invalid GGUF file {shown}: its header (metadata and tensor table) is longer than {} MiB, \
         more than any real model needs; the file is corrupt or hostile",
        MAX_HEADER_BYTES >> 20
    ))
}

fn log_read(shown: &str, g: &GgufHeader) {
    tracing::info!(
        human = %format!(
            "Read model file {shown}: {} in {} tensors, SHA-256 {}; its header passed every parser limit.",
            crate::telemetry::human_bytes(g.file_len),
            g.tensors.len(),
            hex::encode(g.file_sha256)
        ),
        path = %shown,
        sha256 = %hex::encode(g.file_sha256),
        bytes = g.file_len,
        tensors = g.tensors.len(),
        "model file hashed and parsed"
    );
}
