//! Redaction: what may never reach a log line, and the helpers that keep it
//! out (WORKER-4802, 4202).
//!
//! Three layers, so one mistake is not enough to leak: request data is
//! wrapped in [`Redacted`] before it could be logged; tokens are only ever
//! shown as their fp6 ([`redact_token`]); and the log formatter replaces any
//! field whose name is in [`SENSITIVE_FIELDS`] whatever its value.

use std::fmt;

/// What a redacted value prints as.
pub const REDACTED: &str = "[REDACTED]";

/// Field names whose values never appear in logs (compared case-insensitively).
pub const SENSITIVE_FIELDS: &[&str] = &[
    "token",
    "api_token",
    "bearer",
    "authorization",
    "password",
    "secret",
    "prompt",
    "prompt_text",
    "text",
    "completion",
    "stop",
];

/// True when a field of this name must be redacted in logs.
pub fn is_sensitive_field(name: &str) -> bool {
    SENSITIVE_FIELDS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// A value that prints as `[REDACTED]` under both `Display` and `Debug`, so it
/// may sit in a struct that gets logged. Use `.0` (or [`Redacted::expose`]) to
/// reach the value where it is really needed.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> Redacted<T> {
    pub fn new(v: T) -> Self {
        Self(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(v: T) -> Self {
        Self(v)
    }
}

/// fp6 of a token: the first 6 hex digits of its SHA-256, the only form in
/// which a token is ever logged (WORKER-4202).
pub fn fp6(token: &str) -> String {
    use sha2::Digest;
    let d: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    fp6_of_digest(&d)
}

/// fp6 of a token's SHA-256.
pub fn fp6_of_digest(d: &[u8; 32]) -> String {
    hex::encode(&d[..3])
}

/// A token as it may be logged: `token:fp6=abc123` (WORKER-4202).
pub fn redact_token(token: &str) -> String {
    format!("token:fp6={}", fp6(token))
}

/// Text described without its content: `[REDACTED 42 bytes]`. For logging the
/// size of a prompt without its words.
pub fn redact_len(text: &str) -> String {
    format!("[REDACTED {} bytes]", text.len())
}

/// Replace every occurrence of each secret in `text` by `[REDACTED]`: for
/// messages that might quote user input (e.g. an upstream error body).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_value_in_debug_and_display() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Req {
            prompt: Redacted<String>,
            n: u32,
        }
        let r = Req {
            prompt: Redacted("the secret plan".into()),
            n: 3,
        };
        let d = format!("{r:?} {}", r.prompt);
        assert!(!d.contains("secret plan"), "{d}");
        assert!(d.contains(REDACTED) && d.contains("n: 3"), "{d}");
        assert_eq!(r.prompt.expose(), "the secret plan");
    }

    #[test]
    fn token_is_shown_only_as_fp6() {
        let t = "correct-horse-battery-staple";
        let r = redact_token(t);
        assert!(!r.contains(t));
        assert_eq!(r, format!("token:fp6={}", fp6(t)));
        assert_eq!(r.len(), "token:fp6=".len() + 6);
    }

    #[test]
    fn scrub_and_field_names() {
        assert_eq!(
            scrub("a tok123 b tok123", &["tok123", ""]),
            "a [REDACTED] b [REDACTED]"
        );
        assert!(is_sensitive_field("Authorization"));
        assert!(is_sensitive_field("prompt"));
        assert!(!is_sensitive_field("job_id"));
        assert_eq!(redact_len("hello"), "[REDACTED 5 bytes]");
    }
}
