//! The HMAC seal of a shard (WORKER-4120, 4121, 4122).
//!
//! seal = HMAC-SHA256(key, len(shard_id) ‖ shard_id ‖ len(digest) ‖ digest ‖
//! len(sealed_at) ‖ sealed_at), every length a u64 little-endian. The length
//! prefixes make the encoding injective: no choice of shard_id can shift bytes
//! into the digest or the timestamp and produce the same MAC input.
//!
//! Key choice: a **per-process random key** (32 bytes from the OS via
//! `getrandom`), never written anywhere. Why not a key derived from the worker
//! token: the token is shared with every client, so anyone holding it could
//! forge a seal; and tokens rotate independently of the model. The seal's job
//! is to prove that *this process* verified the resident bytes at `sealed_at`
//! and that the handle it hands out was not altered. A restart loses the key,
//! so a restarted worker re-digests and re-seals: the digest (which clients
//! compare across workers and restarts) stays the same, the seal changes. A
//! client therefore compares `digest`, never `seal`, across processes.

use crate::error::{Result, WorkerError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The secret key of this process. Debug never prints it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| {
            WorkerError::internal(format!(
                "could not read random bytes from the operating system for the seal key ({e}); \
                 the worker cannot seal its model without them"
            ))
        })?;
        Ok(Self(k))
    }

    /// A fixed key (tests only need this; production uses [`SealKey::generate`]).
    pub fn from_bytes(k: [u8; 32]) -> Self {
        Self(k)
    }

    fn mac(&self, shard_id: &str, digest: &[u8; 32], sealed_at: &str) -> HmacSha256 {
        let key: &[u8; 32] = if crate::mutants::active(crate::mutants::Mutant::SealZeroKey) {
            &[0u8; 32]
        } else {
            &self.0
        };
        // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for field in [shard_id.as_bytes(), &digest[..], sealed_at.as_bytes()] {
            m.update(&(field.len() as u64).to_le_bytes());
            m.update(field);
        }
        m
    }

    /// The seal over (shard_id, digest, sealed_at).
    pub fn seal(&self, shard_id: &str, digest: &[u8; 32], sealed_at: &str) -> [u8; 32] {
        let out = self
            .mac(shard_id, digest, sealed_at)
            .finalize()
            .into_bytes();
        let mut s = [0u8; 32];
        s.copy_from_slice(&out);
        s
    }

    /// Constant-time check of a seal.
    pub fn verify(&self, shard_id: &str, digest: &[u8; 32], sealed_at: &str, seal: &[u8]) -> bool {
        self.mac(shard_id, digest, sealed_at)
            .verify_slice(seal)
            .is_ok()
    }
}

/// Parse a 64-hex-digit SHA-256 (optionally prefixed `sha256:`).
pub fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealKey {
        SealKey::from_bytes([7u8; 32])
    }

    #[test]
    fn seal_verifies() {
        let d = [1u8; 32];
        let s = key().seal("shard-a", &d, "2026-11-28T10:00:00.000Z");
        assert!(key().verify("shard-a", &d, "2026-11-28T10:00:00.000Z", &s));
    }

    #[test]
    fn tampering_any_field_is_detected() {
        let d = [1u8; 32];
        let at = "2026-11-28T10:00:00.000Z";
        let s = key().seal("shard-a", &d, at);
        let mut d2 = d;
        d2[31] ^= 1;
        assert!(!key().verify("shard-a", &d2, at, &s), "digest change");
        assert!(!key().verify("shard-b", &d, at, &s), "shard id change");
        assert!(
            !key().verify("shard-a", &d, "2026-11-28T10:00:00.001Z", &s),
            "time change"
        );
        let mut s2 = s;
        s2[0] ^= 0x80;
        assert!(!key().verify("shard-a", &d, at, &s2), "seal change");
        assert!(!key().verify("shard-a", &d, at, &s[..31]), "short seal");
        assert!(
            !SealKey::from_bytes([8u8; 32]).verify("shard-a", &d, at, &s),
            "other key"
        );
    }

    #[test]
    fn length_prefix_prevents_field_shifting() {
        // Without length prefixes "ab"+"c" and "a"+"bc" would MAC the same bytes.
        let d = [0u8; 32];
        assert_ne!(key().seal("ab", &d, "c"), key().seal("a", &d, "bc"));
    }

    #[test]
    fn known_answer_pins_the_encoding() {
        // Independently computed: HMAC-SHA256 with key 0x07*32 over
        // le64(1)‖"s"‖le64(32)‖0x00*32‖le64(1)‖"t".
        let mut msg = Vec::new();
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(b"s");
        msg.extend_from_slice(&32u64.to_le_bytes());
        msg.extend_from_slice(&[0u8; 32]);
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(b"t");
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(&msg);
        let expect = m.finalize().into_bytes();
        assert_eq!(&key().seal("s", &[0u8; 32], "t")[..], &expect[..]);
    }

    #[test]
    fn generated_keys_differ() {
        let a = SealKey::generate().unwrap();
        let b = SealKey::generate().unwrap();
        assert_ne!(a.0, b.0);
        assert_eq!(format!("{a:?}"), "SealKey(<redacted>)");
    }

    #[test]
    fn hex_digest_parsing() {
        let h = "ab".repeat(32);
        assert_eq!(parse_hex_digest(&h), Some([0xab; 32]));
        assert_eq!(parse_hex_digest(&format!("sha256:{h}")), Some([0xab; 32]));
        assert_eq!(parse_hex_digest("abc"), None);
        assert_eq!(parse_hex_digest(&"zz".repeat(32)), None);
    }
}
