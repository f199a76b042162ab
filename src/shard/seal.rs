//! The HMAC seal of a shard (WORKER-4120, 4121, 4122).
//!
//! seal = HMAC-SHA256(key, len(shard_id) ‖ shard_id ‖ len(digest) ‖ digest ‖
//! len(sealed_at) ‖ sealed_at), every length a u64 little-endian. The length
//! prefixes make the encoding injective: no choice of shard_id can shift bytes
//! into the digest or the timestamp and produce the same MAC input.
//!
//! Key choice: by default a **per-process random key** (32 bytes from the OS
//! via `getrandom`), never written anywhere. An operator whose pool manager
//! verifies seals gives the worker the key instead (`seal_key_file`: 64 hex
//! digits, read with the token file's rules — a regular file no other user
//! can read, bounded size — and never logged; an all-zero key is refused,
//! since it is the first key a forger tries). Why not a key derived from the worker
//! token: the token is shared with every client, so anyone holding it could
//! forge a seal; and tokens rotate independently of the model. The seal's job
//! is to prove that *this process* verified the resident bytes at `sealed_at`
//! and that the handle it hands out was not altered. A restart loses the key,
//! so a restarted worker re-digests and re-seals: the digest (which clients
//! compare across workers and restarts) stays the same, the seal changes. A
//! client therefore compares `digest`, never `seal`, across processes.

use crate::config::ConfigError;
use crate::error::{Result, WorkerError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::path::Path;

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

    /// The key in `path` (`seal_key_file`): 64 hex digits, surrounding
    /// whitespace ignored; the file must be a regular file of at most
    /// [`MAX_KEY_FILE_BYTES`] that neither group nor others can access.
    pub fn from_file(path: &Path) -> std::result::Result<Self, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let err = |what: String| ConfigError::new("seal_key_file", what);
        let meta = std::fs::metadata(path).map_err(|e| {
            err(format!(
                "cannot open the seal key file {shown}: {e}; create it with \
                 `head -c 32 /dev/urandom | xxd -p -c 64 > {shown}; chmod 600 {shown}` or remove seal_key_file \
                 to seal with a random per-process key"
            ))
        })?;
        if !meta.is_file() {
            return Err(err(format!(
                "{shown} is not a regular file; point seal_key_file at the key file"
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "the seal key file {shown} has mode {:o}, so other users can read the key and forge seals; \
                 run `chmod 600 {shown}`",
                mode & 0o777
            )));
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(err(format!(
                "the seal key file {shown} is {} bytes; it holds 64 hex digits (at most {MAX_KEY_FILE_BYTES} bytes)",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read the seal key file {shown}: {e}")))?;
        let key =
            parse_key_text(&text).map_err(|why| err(format!("the seal key file {shown} {why}")))?;
        tracing::info!(
            human = %format!(
                "Shard seals are keyed with the key from {shown} (seal_key_file), so whoever holds that key can verify them."
            ),
            seal_key_file = %shown,
            "seal key read"
        );
        Ok(key)
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

/// Largest seal key file: 64 hex digits plus a line ending and some slack.
pub const MAX_KEY_FILE_BYTES: u64 = 256;

/// The key in a seal key file's text; `Err` says what is wrong with it.
fn parse_key_text(text: &str) -> std::result::Result<SealKey, String> {
    let t = text.trim();
    if t.len() != 64 {
        return Err(format!(
            "must hold exactly 64 hex digits (32 bytes), found {} characters",
            t.len()
        ));
    }
    let mut k = [0u8; 32];
    hex::decode_to_slice(t, &mut k)
        .map_err(|_| "must hold only hex digits (0-9, a-f)".to_string())?;
    if k == [0u8; 32] {
        return Err("holds the all-zero key, which anyone can guess; write a random key".into());
    }
    Ok(SealKey(k))
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
    fn key_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seal.key");
        let write = |text: &str, mode: u32| {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&format!("{}\n", "07".repeat(32)), 0o600);
        let k = SealKey::from_file(&p).expect("a good key file");
        assert_eq!(k.0, [7u8; 32]);
        write(&"07".repeat(32), 0o640);
        let e = SealKey::from_file(&p).unwrap_err();
        assert!(
            e.field == "seal_key_file" && e.message.contains("chmod 600"),
            "{e:?}"
        );
        for (bad, why) in [
            ("07".repeat(31), "64 hex digits"),
            ("zz".repeat(32), "hex digits"),
            ("00".repeat(32), "all-zero"),
            ("07".repeat(200), "at most 256 bytes"),
        ] {
            write(&bad, 0o600);
            let e = SealKey::from_file(&p).unwrap_err();
            assert!(e.message.contains(why), "{bad:?}: {e:?}");
            assert!(!e.message.contains(&bad), "the key text must not be echoed");
        }
        // The size limit holds exactly at 256 bytes: the key and trailing
        // whitespace up to 256 bytes are read; one byte more is refused for its size.
        let padded = |len: usize| format!("{}{}", "07".repeat(32), "\n".repeat(len - 64));
        write(&padded(256), 0o600);
        assert_eq!(
            SealKey::from_file(&p).expect("256 bytes are allowed").0,
            [7u8; 32]
        );
        write(&padded(257), 0o600);
        let e = SealKey::from_file(&p).unwrap_err();
        assert!(e.message.contains("at most 256 bytes"), "{e:?}");
        assert!(SealKey::from_file(&dir.path().join("missing")).is_err());
        assert!(SealKey::from_file(dir.path()).is_err());
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
