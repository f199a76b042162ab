//! The API token file: where it is found, which files are refused, and how a
//! presented bearer token is checked (WORKER-4200–4202, 4910–4913).
//!
//! The token only ever comes from a file (never the environment, 4910). The
//! file may hold several tokens, one per line, so a rotation can add the new
//! token before removing the old one; each token is an identity named by its
//! fp6 (first 6 hex digits of SHA-256 of the token), the only form of a token
//! that may appear in a log line (4202).
//!
//! Comparison is constant time (4201): the presented token is hashed, and
//! the 32-byte digest is compared with every stored digest without an early
//! exit, so neither the length nor the position of a match leaks by timing.

use super::{Config, ConfigError};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Largest token file accepted; a token file is a few lines of text.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Most tokens in one file.
const MAX_TOKENS: usize = 64;
/// Longest single token (it travels in an HTTP header).
const MAX_TOKEN_LEN: usize = 4096;
/// Tokens shorter than this are accepted (tests use short ones) but warned about.
const WEAK_TOKEN_LEN: usize = 16;

/// Who made a request: the fingerprint of the token it presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identity {
    /// First 6 hex digits of SHA-256(token).
    pub fp6: String,
}

/// The tokens this worker accepts, kept only as SHA-256 digests.
#[derive(Clone)]
pub struct Credentials {
    digests: Vec<[u8; 32]>,
    path: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("fp6", &self.fp6_list())
            .finish()
    }
}

/// fp6 of a token: the first 6 hex digits of its SHA-256 (defined with
/// the log redaction, which shows tokens only this way).
pub use crate::telemetry::redaction::{fp6, fp6_of_digest};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

impl Credentials {
    /// Read the token file named by the configuration (`api_token_file`, set
    /// from the flag, WORKER_API_TOKEN_FILE, the config file,
    /// `$CREDENTIALS_DIRECTORY/worker-token`, or /etc/llorch/worker-token).
    pub fn load(cfg: &Config) -> Result<Self, ConfigError> {
        Self::from_file(&cfg.api_token_file)
    }

    /// Read and check one token file: it must exist, be a regular file that
    /// neither group nor others can access (mode & 0o077 == 0), and hold at
    /// least one token.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            let fix = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "create it with one token per line (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > {shown}; chmod 600 {shown}`), \
                     or point --api-token-file / WORKER_API_TOKEN_FILE at the right file"
                ),
                std::io::ErrorKind::PermissionDenied => {
                    "the worker's user cannot reach it; fix the ownership (`chown worker-orcd`) of the file and its directories".to_string()
                }
                _ => "check the path".to_string(),
            };
            ConfigError::new("api_token_file", format!("cannot open token file {shown}: {e}; {fix}"))
        })?;
        if !meta.is_file() {
            return Err(ConfigError::new(
                "api_token_file",
                format!("{shown} is not a regular file; point it at the token file"),
            ));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::new(
                "api_token_file",
                format!(
                    "token file {shown} has mode {:o}, so other users can read the token; run `chmod 600 {shown}` \
                     (only the worker's user may read it)",
                    mode & 0o777
                ),
            ));
        }
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(ConfigError::new(
                "api_token_file",
                format!("token file {shown} is {} bytes; a token file holds at most {MAX_TOKEN_FILE_BYTES} bytes", meta.len()),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "api_token_file",
                format!("cannot read token file {shown}: {e}; it must be UTF-8 text readable by the worker's user (`chown worker-orcd {shown}`)"),
            )
        })?;
        let mut creds = Self::from_text(&text, &shown.to_string())?;
        creds.path = path.to_path_buf();
        let n = creds.digests.len();
        tracing::info!(
            human = %format!(
                "Read {n} API token{} from {shown}; requests are accepted from identit{} {} (fp6).",
                if n == 1 { "" } else { "s" },
                if n == 1 { "y" } else { "ies" },
                creds.fp6_list().join(", ")
            ),
            fp6 = %creds.fp6_list().join(","),
        );
        Ok(creds)
    }

    /// Parse token-file text: one token per line; blank lines and lines
    /// starting with `#` are ignored; surrounding whitespace is trimmed.
    /// `origin` names the source in error messages (never the token).
    pub fn from_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let lineno = i + 1;
            if t.len() > MAX_TOKEN_LEN {
                return Err(ConfigError::new(
                    "api_token_file",
                    format!("{origin} line {lineno}: token longer than {MAX_TOKEN_LEN} bytes"),
                ));
            }
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "api_token_file",
                    format!("{origin} line {lineno}: a token must be printable ASCII without spaces (it is sent as an HTTP header)"),
                ));
            }
            if t.len() < WEAK_TOKEN_LEN {
                tracing::warn!(
                    human = %format!("A token in {origin} (line {lineno}) is shorter than {WEAK_TOKEN_LEN} characters and easy to guess; use a long random token in production."),
                    fp6 = %fp6(t),
                );
            }
            let d = sha256(t.as_bytes());
            if !digests.contains(&d) {
                digests.push(d);
            }
            if digests.len() > MAX_TOKENS {
                return Err(ConfigError::new(
                    "api_token_file",
                    format!("{origin} holds more than {MAX_TOKENS} tokens"),
                ));
            }
        }
        if digests.is_empty() {
            return Err(ConfigError::new(
                "api_token_file",
                format!("token file {origin} holds no token (it is empty or only comments); write one token per line"),
            ));
        }
        Ok(Self {
            digests,
            path: PathBuf::from(origin),
        })
    }

    /// The identity whose token equals `presented`, compared in constant time
    /// against every stored token (no early exit).
    pub fn verify(&self, presented: &str) -> Option<Identity> {
        let d = sha256(presented.as_bytes());
        if crate::mutants::active(crate::mutants::Mutant::TokenCompareEarlyExit) {
            // Planted bug: stops at the first match, so the time tells which token matched.
            return self.digests.iter().find(|s| **s == d).map(|s| Identity {
                fp6: fp6_of_digest(s),
            });
        }
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, stored) in self.digests.iter().enumerate() {
            let eq = stored.ct_eq(&d);
            // i < MAX_TOKENS, so the cast cannot truncate.
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.digests.get(index as usize).map(|d| Identity {
                fp6: fp6_of_digest(d),
            })
        } else {
            None
        }
    }

    /// fp6 of every accepted token, in file order (for logs and the readiness callback).
    pub fn fp6_list(&self) -> Vec<String> {
        self.digests.iter().map(fp6_of_digest).collect()
    }

    /// Where the tokens were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 32 bytes derived from the first token, for keying the seal HMAC when the
    /// daemon chooses a token-derived key: stable across restarts with the same
    /// token, never equal to the token or its plain SHA-256.
    pub fn key_material(&self, context: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"worker-orcd key v1\0");
        h.update(context.as_bytes());
        h.update([0u8]);
        if let Some(first) = self.digests.first() {
            h.update(first);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&h.finalize());
        out
    }
}
