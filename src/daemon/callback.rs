//! Callbacks to the pool manager (WORKER-4023, 4612, 4961).
//!
//! Rule: both callbacks go to the same URL, `readiness_callback_url`; the
//! `"state"` field tells them apart.
//! - readiness: `{"worker_id","pool_id","state":"ready","ecp","handles","fp6","bind_addr"}`,
//!   POSTed in a background task after the model is sealed, retried with
//!   exponential backoff (250 ms doubling to 8 s, 8 attempts). Serving never
//!   waits for it.
//! - status (fatal): `{"worker_id","pool_id","state":"stopped","error":{"code","message"},"exit_code"}`,
//!   best effort, two attempts of at most 2 s each, then the process exits.
//!   `error.code` is always a `WorkerError` code (one source of truth);
//!   start-up failures of configuration, credentials, privileges or the listen
//!   address are `INVALID_CONFIG` (exit code 2).

use serde_json::Value;
use std::time::Duration;

const READY_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

fn client(timeout: Duration) -> Option<reqwest::Client> {
    reqwest::Client::builder().timeout(timeout).build().ok()
}

async fn post_once(c: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    match c.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// Backoff before attempt `n` (0-based, n ≥ 1).
pub fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(MAX_BACKOFF)
}

/// POST the readiness body with retries; returns whether it was accepted.
pub async fn post_ready(url: String, body: Value) -> bool {
    if url.is_empty() {
        return false;
    }
    let Some(c) = client(Duration::from_secs(5)) else {
        return false;
    };
    for n in 0..READY_ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(backoff(n)).await;
        }
        match post_once(&c, &url, &body).await {
            Ok(()) => {
                crate::narrate!(
                    human = "Told the pool manager that this worker is ready.",
                    attempt = n + 1
                );
                return true;
            }
            Err(e) => {
                let next = if n + 1 < READY_ATTEMPTS {
                    "retrying"
                } else {
                    "that was the last attempt"
                };
                crate::narrate_warn!(
                    human = format!(
                        "The readiness callback failed (attempt {} of {READY_ATTEMPTS}: {e}); {next}. \
                         The worker serves meanwhile.",
                        n + 1
                    ),
                    attempt = n + 1
                );
            }
        }
    }
    crate::narrate_error!(
        human = "Gave up on the readiness callback; the pool manager may not know this worker is ready. \
                 Check readiness_callback_url."
    );
    false
}

/// Best-effort status callback before a fatal exit.
pub async fn post_status(url: &str, body: Value) {
    if url.is_empty() {
        return;
    }
    let Some(c) = client(Duration::from_secs(2)) else {
        return;
    };
    for n in 0..2 {
        match post_once(&c, url, &body).await {
            Ok(()) => return,
            Err(e) => crate::narrate_warn!(
                human = format!("The status callback failed (attempt {} of 2: {e}).", n + 1)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
