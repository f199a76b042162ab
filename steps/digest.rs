//! The harness's own arithmetic for shards (WORKER-4113, 4120, 4121, 4245):
//! the bytes a worker holds resident (located by `gguf_meta`), the documented resident digest of
//! those bytes, and the documented HMAC seal — each written here from the
//! published definitions (docs/operations.md, `src/shard/digest.rs` and
//! `src/shard/seal.rs` headers), with no call into the worker's library.
//!
//! Why not reuse the worker's functions: a check that asks the worker's code
//! for the expected value agrees with the worker whatever that code does.
//! Written twice, a bug in one copy shows up as a disagreement.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Leaf size of the resident digest (16 KiB).
pub const LEAF_BYTES: usize = 16 * 1024;
/// Domain string of the resident digest, version 2.
const DOMAIN: &[u8] = b"worker-orcd/resident-digest/v2-16KiB";

/// The tensor data of a GGUF file: what a worker holds resident.
pub fn tensor_data(file: &[u8]) -> Result<&[u8], String> {
    let off = crate::steps::gguf_meta::parse(file)?.data_at;
    file.get(off..)
        .ok_or_else(|| format!("data offset {off} lies past the end of the file"))
}

/// The documented resident digest: SHA-256 over the domain string, the
/// length as u64 little-endian and the SHA-256 of every 16 KiB leaf in order.
pub fn resident_digest(data: &[u8]) -> [u8; 32] {
    let mut root = Sha256::new();
    root.update(DOMAIN);
    root.update((data.len() as u64).to_le_bytes());
    for leaf in data.chunks(LEAF_BYTES) {
        root.update(Sha256::digest(leaf));
    }
    root.finalize().into()
}

/// The documented seal: HMAC-SHA256 under `key` over each of shard_id, the
/// 32 digest bytes and sealed_at, each preceded by its length as u64 LE.
pub fn seal(key: &[u8; 32], shard_id: &str, digest: &[u8; 32], sealed_at: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for field in [shard_id.as_bytes(), &digest[..], sealed_at.as_bytes()] {
        m.update(&(field.len() as u64).to_le_bytes());
        m.update(field);
    }
    m.finalize().into_bytes().into()
}
