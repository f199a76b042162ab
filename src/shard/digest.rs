//! The resident-bytes digest (WORKER-4113, 4121).
//!
//! Definition (the same on every backend, so a CPU and a GPU worker holding
//! the same bytes report the same digest):
//!
//! 1. Split the bytes into chunks of [`CHUNK_BYTES`] (the last may be shorter).
//! 2. leaf_i = SHA-256(chunk_i).
//! 3. root = SHA-256(`DOMAIN` ‖ total_len as u64 little-endian ‖ leaf_0 ‖ leaf_1 ‖ …).
//!
//! Chunking lets the leaves be hashed in parallel (threads on the host,
//! thread blocks on the GPU) while the root still commits to every byte,
//! their order and the total length. Empty input has zero leaves.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Leaf size: 16 KiB. The GPU hashes one leaf per thread, so the leaf size
/// sets its parallelism: 1 MiB leaves gave a 0.5 GB model only ~470 threads
/// (36 ms, 14 GB/s on an H200); 16 KiB gives ~30,000. The root then covers
/// ~30,000 leaves (under 1 MB), hashed on the host in about a millisecond.
pub const CHUNK_BYTES: usize = 16 << 10;

/// Domain separator so this root can never be confused with a plain file hash.
pub const DOMAIN: &[u8] = b"worker-orcd/resident-digest/v2-16KiB";

/// SHA-256 of each chunk, in order, hashed on all host cores.
pub fn leaf_hashes(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes
        .par_chunks(CHUNK_BYTES)
        .map(|chunk| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&Sha256::digest(chunk));
            out
        })
        .collect()
}

/// Combine leaves into the root; `total_len` is the byte count they cover.
pub fn root_from_leaves(total_len: u64, leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(total_len.to_le_bytes());
    for leaf in leaves {
        h.update(leaf);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    out
}

/// The digest of `bytes` as defined above.
pub fn resident_digest(bytes: &[u8]) -> [u8; 32] {
    if crate::mutants::active(crate::mutants::Mutant::DigestFirst16KiB) {
        let head = &bytes[..bytes.len().min(CHUNK_BYTES)];
        return root_from_leaves(bytes.len() as u64, &leaf_hashes(head));
    }
    root_from_leaves(bytes.len() as u64, &leaf_hashes(bytes))
}

/// Plain SHA-256 of a whole byte string (model files, WORKER-4314).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_bit_flip_changes_root() {
        let mut data: Vec<u8> = (0..(3 * CHUNK_BYTES + 17))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let before = resident_digest(&data);
        data[2 * CHUNK_BYTES + 5] ^= 0x01;
        assert_ne!(before, resident_digest(&data));
    }

    #[test]
    fn length_is_committed() {
        // A trailing zero byte must change the root even though it changes no full chunk.
        let a = vec![0u8; 10];
        let b = vec![0u8; 11];
        assert_ne!(resident_digest(&a), resident_digest(&b));
    }

    #[test]
    fn leaves_match_plain_sha256_of_chunks() {
        let data: Vec<u8> = (0..(CHUNK_BYTES + 3)).map(|i| i as u8).collect();
        let leaves = leaf_hashes(&data);
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[1], sha256(&data[CHUNK_BYTES..]));
        // Known answer for the empty string pins the SHA-256 implementation.
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
