//! Credentials, privileges and secrecy (WORKER-4202, 4802, 4900-4913, PB-1007).
//! Tokens are random per scenario and registered as secrets of the run, so
//! the end of the run can prove none reached a log or a bundle.

use crate::steps::process::{running_as_root, write_token_file};
use crate::steps::world::{ctx, World};
use cucumber::{given, then};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A fresh random bearer token, registered as a secret of this run.
pub fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("random token");
    let t = format!("bdd-{}", hex::encode(b));
    ctx()
        .secrets
        .lock()
        .expect("secrets lock")
        .insert(t.clone());
    t
}

pub fn fp6(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..6].to_string()
}

#[given(regex = r"^the token file is (missing|empty|readable by everyone|readable by its group)$")]
fn token_file_state(w: &mut World, state: String) {
    match state.as_str() {
        "missing" => {
            let _ = std::fs::remove_file(&w.token_file);
        }
        "empty" => write_token_file(&w.token_file, "", 0o600),
        "readable by everyone" => write_token_file(&w.token_file, &format!("{}\n", w.token), 0o644),
        _ => write_token_file(&w.token_file, &format!("{}\n", w.token), 0o640),
    }
}

/// The token file moves into a folder only root may enter (mode 0700): the
/// worker, started as another user, cannot even look at it.
#[given("the token file lies in a folder only root can enter")]
fn token_file_root_only(w: &mut World) {
    let d = crate::steps::process::root_only_dir(w);
    std::fs::create_dir_all(&d).expect("create the root-only folder");
    let moved = d.join("worker-token");
    write_token_file(&moved, &format!("{}\n", w.token), 0o600);
    let _ = std::fs::remove_file(&w.token_file);
    w.config.insert(
        "api_token_file".into(),
        serde_json::Value::String(moved.display().to_string()),
    );
}

#[given(
    regex = r#"^the token file is placed as "worker-token" in a directory named by CREDENTIALS_DIRECTORY$"#
)]
fn credentials_dir(w: &mut World) {
    let d = w.dir.path().join("credentials");
    std::fs::create_dir_all(&d).expect("credentials dir");
    write_token_file(&d.join("worker-token"), &format!("{}\n", w.token), 0o600);
    let _ = std::fs::remove_file(&w.token_file);
    w.env.push((
        "CREDENTIALS_DIRECTORY".into(),
        Some(d.display().to_string()),
    ));
}

#[then("no worker log line contains the token")]
fn no_token_in_log(w: &mut World) {
    let log = w.log_text();
    let mut tokens = vec![w.token.clone()];
    tokens.extend(w.token2.clone());
    for t in tokens {
        // Not through w.fail: the message would print the log, which is redacted anyway.
        if log.contains(&t) {
            panic!("the worker log contains a bearer token (WORKER-4802)");
        }
    }
}

#[then(regex = r#"^no worker log line contains "([^"]+)"$"#)]
fn no_text_in_log(w: &mut World, text: String) {
    w.check(
        !w.log_text().contains(&text),
        format!("the worker log contains {text:?}"),
    );
}

#[then("the worker log mentions the token's fp6 fingerprint")]
fn log_has_fp6(w: &mut World) {
    let f = fp6(&w.token);
    w.check(
        w.log_text().contains(&f),
        format!("the worker log does not mention fp6 {f}"),
    );
}

#[then("a worker log line's human narration mentions the token's fp6 fingerprint")]
fn human_has_fp6(w: &mut World) {
    let f = fp6(&w.token);
    let ok = crate::steps::logs::json_lines(w).iter().any(|m| {
        m.get("human")
            .and_then(|v| v.as_str())
            .is_some_and(|h| h.contains(&f))
    });
    w.check(ok, format!("no human narration mentions fp6 {f}"));
}

#[then(
    "as root the worker exits with code 2 and explains the override, otherwise it becomes ready"
)]
async fn root_refusal(w: &mut World) {
    if running_as_root() {
        let code = match w.start_exit {
            Some(c) => Some(c),
            None => crate::steps::process::wait_exit(w, 10).await,
        };
        w.check(
            code == Some(2),
            format!("as root without --allow-root the worker gave {code:?}, expected exit 2"),
        );
        let log = w.log_text();
        w.check(
            log.contains("--allow-root") && log.to_lowercase().contains("root"),
            "the refusal does not explain --allow-root",
        );
    } else {
        w.check(
            w.start_exit.is_none(),
            format!("as a normal user the worker exited with {:?}", w.start_exit),
        );
    }
}

#[then(regex = r#"^when running as root the worker log warns about "([^"]+)"$"#)]
fn root_warns(w: &mut World, text: String) {
    if !running_as_root() {
        // Not root: no override was passed, so there must be no warning either.
        w.check(
            !w.log_text().contains(&text),
            format!("the log mentions {text:?} though no override was given"),
        );
        return;
    }
    let ok = crate::steps::logs::json_lines(w).iter().any(|m| {
        m.get("level")
            .and_then(|v| v.as_str())
            .is_some_and(|l| l.eq_ignore_ascii_case("warn"))
            && serde_json::to_string(m).unwrap_or_default().contains(&text)
    });
    w.check(ok, format!("no WARN log line mentions {text:?}"));
}

#[then("the worker process has no effective capabilities")]
async fn no_caps(w: &mut World) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let Some(pid) = w.worker.as_ref().map(|x| x.pid) else {
        w.fail("no worker running")
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cap = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|s| s.trim().to_string());
    w.check(
        cap.as_deref().is_some_and(|c| c.chars().all(|x| x == '0')),
        format!("the worker's effective capabilities are {cap:?}, expected none"),
    );
}

/// Scan every log this scenario's worker wrote for any token and any prompt
/// of the whole run (WORKER-4802, issue 4 item 9); findings fail the run.
pub fn scan_logs(w: &World) {
    let log = w.log_text();
    if log.is_empty() {
        return;
    }
    let c = ctx();
    let mut found = Vec::new();
    for s in c.secrets.lock().expect("secrets lock").iter() {
        if log.contains(s.as_str()) {
            found.push(format!("{} › {}: a bearer token", w.feature, w.scenario));
        }
    }
    for p in c.prompts.lock().expect("prompts lock").iter() {
        if log.contains(p.as_str()) {
            found.push(format!("{} › {}: the prompt {p:?}", w.feature, w.scenario));
        }
    }
    c.leaks.lock().expect("leaks lock").extend(found);
}
