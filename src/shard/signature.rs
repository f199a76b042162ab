//! Detached Ed25519 model signatures (WORKER-4222, 4313).
//!
//! What is signed: the 32-byte SHA-256 digest of the whole model file, not the
//! file itself. An upload is hashed while it streams in and is never stored,
//! so the digest is all the worker ever has of it; signing the digest lets
//! the same check serve the start-up model, path commits and uploads, and an
//! operator can sign a 100 GB file with stock OpenSSL
//! (`openssl pkeyutl -sign -rawin` over the binary digest; docs/operations.md).
//!
//! Policy: with a trusted key (`model_signing_pubkey_file`) every model must
//! carry a signature that verifies (`verify_strict`: no small-order keys, no
//! malleable signatures); without one, a signature cannot be checked, so a
//! signed commit is refused rather than accepted unverified. Every refusal is
//! `MODEL_SIGNATURE_INVALID` and changes nothing.

use crate::config::{Config, ConfigError};
use crate::error::{Result, WorkerError};
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey, PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH};
use std::io::Read;
use std::path::Path;

/// Largest key or signature file read. The longest accepted form, a PEM
/// public key, is 113 bytes; anything near this bound is not a key.
pub const MAX_FILE_BYTES: u64 = 4096;

/// What an operator may put in `model_signing_pubkey_file`.
pub const KEY_FORMS: &str =
    "64 hexadecimal digits (surrounding whitespace ignored), the 32 raw key bytes, \
     or a PEM \"-----BEGIN PUBLIC KEY-----\" block as written by `openssl pkey -pubout`";

/// What an operator may put in `model_signature_file`.
pub const SIGNATURE_FORMS: &str =
    "128 hexadecimal digits (surrounding whitespace ignored) or the 64 raw signature bytes, \
     made over the SHA-256 digest of the model file (see docs/operations.md)";

/// The trusted key, shown by its hex form so a log line identifies it.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey(VerifyingKey);

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({})", self.hex())
    }
}

impl TrustedKey {
    pub fn hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
}

/// The signing material of a worker, read and checked at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSigning {
    /// `model_signing_pubkey_file`; `None`: signatures cannot be verified.
    pub key: Option<TrustedKey>,
    /// `model_signature_file`: the signature of `model_path` (always set with a key).
    pub startup_signature: Option<[u8; SIGNATURE_LENGTH]>,
}

impl ModelSigning {
    /// Read both files named by `cfg` (whose presence rules `Config` already
    /// checked). Every problem is INVALID_CONFIG naming the field.
    pub fn load(cfg: &Config) -> Result<Self, ConfigError> {
        let key = cfg
            .model_signing_pubkey_file
            .as_deref()
            .map(|p| read_as("model_signing_pubkey_file", p, parse_public_key, KEY_FORMS))
            .transpose()?
            .map(TrustedKey);
        let startup_signature = cfg
            .model_signature_file
            .as_deref()
            .map(|p| read_as("model_signature_file", p, parse_signature, SIGNATURE_FORMS))
            .transpose()?;
        Ok(Self {
            key,
            startup_signature,
        })
    }

    /// Check the model loaded at start-up (4222), before anything is loaded.
    pub fn verify_startup(&self, file_sha256: &[u8; 32], model_ref: &str) -> Result<()> {
        let sig = self.startup_signature.as_ref().map(|s| s.as_slice());
        check(self.key.as_ref(), sig, model_ref, "model_signature_file", || {
            Ok(*file_sha256)
        })
        .map_err(|e| match e {
            WorkerError::ModelSignatureInvalid { message } => WorkerError::ModelSignatureInvalid {
                message: format!(
                    "{message}. The worker does not load an unverified model; fix model_signature_file, the key \
                     or the model file and start it again"
                ),
            },
            other => other,
        })
    }

    /// Check a commit's `signature` (4313) against the SHA-256 of the model it
    /// names; `digest` runs only when there is a key and a signature to check.
    pub fn verify_commit(
        &self,
        signature: Option<&[u8]>,
        model: &str,
        digest: impl FnOnce() -> Result<[u8; 32]>,
    ) -> Result<()> {
        check(
            self.key.as_ref(),
            signature,
            model,
            "field `signature`",
            digest,
        )
    }
}

/// The decision, with the operator's explanation. `from` names where the
/// signature came from (the config key or the request field).
fn check(
    key: Option<&TrustedKey>,
    sig: Option<&[u8]>,
    model: &str,
    from: &str,
    digest: impl FnOnce() -> Result<[u8; 32]>,
) -> Result<()> {
    let refuse = |message: String| Err(WorkerError::ModelSignatureInvalid { message });
    match (key, sig) {
        (None, None) => Ok(()),
        (None, Some(_)) => refuse(format!(
            "model {model:?} comes with a detached signature ({from}), but this worker has no trusted key \
             (model_signing_pubkey_file is not set), so the signature cannot be verified and the model is refused \
             rather than accepted unverified. Set model_signing_pubkey_file, or send no signature"
        )),
        (Some(_), None) => refuse(format!(
            "model {model:?} has no signature, and this worker only accepts models signed by the trusted key in \
             model_signing_pubkey_file. Sign the model's SHA-256 digest (docs/operations.md) and supply the \
             signature ({from})"
        )),
        (Some(k), Some(s)) => {
            let digest = digest()?;
            if verify(k, &digest, s) {
                return Ok(());
            }
            refuse(format!(
                "the signature of model {model:?} ({from}) does not verify against the trusted key {} in \
                 model_signing_pubkey_file: the file (SHA-256 {}) is not the one that was signed, or it was \
                 signed with another key. Re-sign the model or fix the key",
                k.hex(),
                hex::encode(digest)
            ))
        }
    }
}

/// Ed25519 (strict) over the 32-byte digest.
pub fn verify(key: &TrustedKey, digest: &[u8; 32], sig: &[u8]) -> bool {
    match Signature::from_slice(sig) {
        Ok(s) => key.0.verify_strict(digest, &s).is_ok(),
        Err(_) => false,
    }
}

/// SHA-256 of the model file at `path`, at most `max` bytes, read with
/// plain reads; a file that changes meanwhile is refused
/// ([`crate::model::file`], MODEL_FILE_CHANGED).
pub fn file_sha256(path: &Path, max: u64) -> Result<[u8; 32]> {
    let read = crate::model::file::read_stable(path, max, |_, _| Ok(()))?;
    Ok(read.finish()?.sha256)
}

/// The file named by config key `field`, parsed; any problem names the key,
/// the path, what is wrong and what is accepted.
fn read_as<T>(
    field: &str,
    path: &Path,
    parse: fn(&[u8]) -> Result<T, String>,
    forms: &str,
) -> Result<T, ConfigError> {
    read_bounded(path).and_then(|b| parse(&b)).map_err(|why| {
        ConfigError::new(
            field,
            format!("{:?}: {why}; accepted: {forms}", path.display().to_string()),
        )
    })
}

/// The file's bytes, refusing anything but a regular file of at most
/// [`MAX_FILE_BYTES`] (a wrong path must not make the worker read a disk).
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let meta = f.metadata().map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "is larger than {MAX_FILE_BYTES} bytes, so it is not a key or signature"
        ));
    }
    Ok(bytes)
}

/// A trusted public key in one of the [`KEY_FORMS`].
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let key = if let Some(pem) = text.filter(|t| t.starts_with("-----BEGIN PUBLIC KEY-----")) {
        VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| format!("is not an Ed25519 public key in PEM form ({e})"))?
    } else {
        let raw: [u8; PUBLIC_KEY_LENGTH] = fixed(bytes, text, "public key")?;
        VerifyingKey::from_bytes(&raw).map_err(|_| {
            "is not a valid Ed25519 public key (not a point of the curve)".to_string()
        })?
    };
    // A small-order key would accept forged signatures; verify_strict
    // refuses them anyway, but the operator should hear it at start-up.
    if key.is_weak() {
        return Err(
            "is a weak (small-order) Ed25519 key, which anyone can forge signatures for".into(),
        );
    }
    Ok(key)
}

/// A detached signature in one of the [`SIGNATURE_FORMS`].
pub fn parse_signature(bytes: &[u8]) -> Result<[u8; SIGNATURE_LENGTH], String> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    fixed(bytes, text, "signature")
}

/// Exactly N raw bytes, or 2N hex digits of trimmed text.
fn fixed<const N: usize>(bytes: &[u8], text: Option<&str>, what: &str) -> Result<[u8; N], String> {
    if let Ok(raw) = <[u8; N]>::try_from(bytes) {
        // N raw bytes can never be 2N hex digits, so this form is unambiguous.
        return Ok(raw);
    }
    let text = text.ok_or_else(|| {
        format!(
            "holds {} bytes that are neither an Ed25519 {what} of {N} raw bytes nor {} hex digits",
            bytes.len(),
            2 * N
        )
    })?;
    if text.len() != 2 * N {
        return Err(format!(
            "holds {} bytes ({} after trimming whitespace), not an Ed25519 {what} of {N} raw bytes or {} hex digits",
            bytes.len(),
            text.len(),
            2 * N
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| {
        format!(
            "is not hexadecimal ({} characters, but not all of 0-9 a-f A-F)",
            2 * N
        )
    })?;
    Ok(out)
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
