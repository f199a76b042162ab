//! The worker-side restart circuit breaker (WORKER-4963): at most
//! [`MAX_STARTS`] starts of the same `worker_id` within [`WINDOW`].
//!
//! Why in the worker as well as in systemd (`StartLimitBurst=`): pool-managerd
//! or a container runtime may restart the worker without systemd, and the
//! count must survive the process. Each start is recorded, as Unix
//! milliseconds, in `<state_dir>/restart-breaker-<worker_id>.json`; a start
//! that finds [`MAX_STARTS`] records younger than [`WINDOW`] is refused with
//! exit code [`super::exit::RESTART_STORM`] before anything is loaded, and is
//! not recorded itself, so the breaker closes again once the oldest record
//! ages out. A clean exit (code 0) deletes the file: a worker that ran and
//! stopped normally starts from zero.
//!
//! The file is small and read with a bound ([`MAX_STATE_BYTES`]); a file that
//! is too large or not what this module writes is treated as empty and
//! reported, never trusted and never a panic. It is replaced atomically
//! (write a temporary file, then rename).

use crate::config::Config;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Starts allowed within [`WINDOW`]; the next one trips the breaker.
pub const MAX_STARTS: usize = 5;
/// The sliding window the starts are counted in.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Largest state file read; [`MAX_STARTS`] timestamps need about 100 bytes.
pub const MAX_STATE_BYTES: u64 = 4096;

/// The state file of `worker_id` under `dir`. Worker ids are
/// `[A-Za-z0-9._-]{1,64}` (checked by the config), so the name stays inside `dir`.
pub fn state_file(dir: &Path, worker_id: &str) -> PathBuf {
    dir.join(format!("restart-breaker-{worker_id}.json"))
}

/// What the recorded starts say about this one (pure; see [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `recent` are the starts to record (this one included).
    Allow { recent: Vec<u64> },
    /// Refused: [`MAX_STARTS`] starts within [`WINDOW`]; the breaker closes
    /// again `retry_in` from now, when the oldest of them ages out.
    Trip {
        recent: Vec<u64>,
        retry_in: Duration,
    },
}

/// Keep the starts within the window before `now_ms` (a record from the
/// future, after the clock was set back, counts as recent until the window
/// has passed from its own time), then allow or trip.
pub fn decide(starts: &[u64], now_ms: u64) -> Decision {
    let window = WINDOW.as_millis() as u64;
    let mut recent: Vec<u64> = starts
        .iter()
        .copied()
        .filter(|&t| t.saturating_add(window) > now_ms && t < now_ms.saturating_add(window))
        .collect();
    recent.sort_unstable();
    if recent.len() >= MAX_STARTS {
        // The breaker closes when only MAX_STARTS - 1 remain: the
        // (len - MAX_STARTS + 1)-th oldest must age out.
        let gate = recent[recent.len() - MAX_STARTS];
        let retry_in = Duration::from_millis(gate.saturating_add(window).saturating_sub(now_ms));
        return Decision::Trip { recent, retry_in };
    }
    recent.push(now_ms);
    Decision::Allow { recent }
}

/// The recorded starts, or `Err(why)` when the file exists but cannot be
/// used (too large, unreadable, not the JSON this module writes). A missing
/// file is no starts.
pub fn read_starts(path: &Path) -> Result<Vec<u64>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("it cannot be opened ({e})")),
    };
    let mut text = String::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("it cannot be read as text ({e})"))?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("it is larger than {MAX_STATE_BYTES} bytes"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("it is not valid JSON ({e})"))?;
    let starts = v
        .get("starts_unix_ms")
        .and_then(serde_json::Value::as_array)
        .ok_or("it has no \"starts_unix_ms\" list")?;
    starts
        .iter()
        .take(64)
        .map(|t| t.as_u64().ok_or("a start time is not a whole number"))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(str::to_string)
}

/// Replace the state file atomically with `starts`.
fn write_starts(path: &Path, worker_id: &str, starts: &[u64]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = serde_json::json!({ "worker_id": worker_id, "starts_unix_ms": starts });
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A start admitted by the breaker; [`Admitted::clean_exit`] resets it.
#[derive(Debug)]
pub struct Admitted {
    /// None when the breaker is off (default state directory unusable).
    path: Option<PathBuf>,
}

impl Admitted {
    /// A clean exit (code 0): forget this worker's starts.
    pub fn clean_exit(&self) {
        let Some(path) = &self.path else { return };
        match std::fs::remove_file(path) {
            Ok(()) => crate::narrate!(
                human = "Clean exit: the restart circuit breaker's count of recent starts is reset.",
                breaker_state = %path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::narrate_warn!(
                human = format!(
                    "Could not reset the restart circuit breaker ({e}) at {}; the next starts still count \
                     the earlier ones. Check that the worker may write its state_dir.",
                    path.display()
                ),
                breaker_state = %path.display()
            ),
        }
    }
}

/// The breaker refused this start; the process exits with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u8);

/// Count this start of `cfg.worker_id`, or refuse it (restart storm) or,
/// when a configured `state_dir` cannot hold the state, refuse it as a
/// configuration error.
pub fn admit(cfg: &Config) -> Result<Admitted, Refused> {
    admit_at(cfg, now_ms())
}

fn admit_at(cfg: &Config, now: u64) -> Result<Admitted, Refused> {
    let dir = &cfg.state_dir;
    let path = state_file(dir, &cfg.worker_id);
    if let Err(e) = std::fs::create_dir_all(dir) {
        return unusable(
            cfg,
            &path,
            &format!("the directory cannot be created ({e})"),
        );
    }
    let starts = read_starts(&path).unwrap_or_else(|why| {
        crate::narrate_warn!(
            human = format!(
                "The restart circuit breaker's state file {} is unusable: {why}. Treating it as \
                 empty (no recent starts) and replacing it.",
                path.display()
            ),
            breaker_state = %path.display()
        );
        Vec::new()
    });
    match decide(&starts, now) {
        Decision::Allow { recent } => {
            if let Err(e) = write_starts(&path, &cfg.worker_id, &recent) {
                return unusable(cfg, &path, &format!("it cannot be written ({e})"));
            }
            crate::narrate!(
                human = format!(
                    "Start {} of at most {MAX_STARTS} within {} minutes for worker {} (restart circuit breaker).",
                    recent.len(),
                    WINDOW.as_secs() / 60,
                    cfg.worker_id
                ),
                starts_in_window = recent.len(),
                worker_id = %cfg.worker_id,
                breaker_state = %path.display()
            );
            Ok(Admitted { path: Some(path) })
        }
        Decision::Trip { recent, retry_in } => {
            let code = super::exit::RESTART_STORM;
            crate::narrate_error!(
                human = format!(
                    "Refusing to start: worker {} has already started {} times in the last {} minutes, \
                     so something makes it fail again and again (a restart storm). The restart circuit \
                     breaker stops it here, before the model is loaded, with exit code {code}. Read the \
                     earlier logs of this worker for the real error and fix that. It may start again in \
                     {} s, or at once after deleting {}.",
                    cfg.worker_id,
                    recent.len(),
                    WINDOW.as_secs() / 60,
                    retry_in.as_secs().max(1),
                    path.display()
                ),
                starts_in_window = recent.len(),
                retry_in_s = retry_in.as_secs().max(1),
                worker_id = %cfg.worker_id,
                breaker_state = %path.display(),
                exit_code = code
            );
            Err(Refused(code))
        }
    }
}

/// The state cannot be kept: a configuration error when `state_dir` was
/// configured, else (the built-in default) the breaker is off, loudly.
fn unusable(cfg: &Config, path: &Path, why: &str) -> Result<Admitted, Refused> {
    if cfg.state_dir_configured {
        let code = super::exit::CONFIG;
        crate::narrate_error!(
            human = format!(
                "The worker cannot start: invalid configuration: state_dir: the restart circuit \
                 breaker's state file {} is unusable: {why}. Give the worker a writable state_dir \
                 (systemd: StateDirectory=).",
                path.display()
            ),
            field = "state_dir",
            exit_code = code
        );
        return Err(Refused(code));
    }
    crate::narrate_warn!(
        human = format!(
            "The restart circuit breaker is off for this run: its state file {} is unusable: {why}. \
             Only the supervisor's own limits stop a restart storm now. Set state_dir (or \
             WORKER_STATE_DIR, or systemd StateDirectory=) to a directory the worker may write.",
            path.display()
        ),
        breaker_state = %path.display()
    );
    Ok(Admitted { path: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn five_starts_in_five_minutes_then_trip() {
        let mut starts = Vec::new();
        let t0 = 1_000_000_000u64;
        for i in 0..MAX_STARTS as u64 {
            match decide(&starts, t0 + i * 10_000) {
                Decision::Allow { recent } => starts = recent,
                other => panic!("start {} should be allowed: {other:?}", i + 1),
            }
        }
        assert_eq!(starts.len(), 5);
        match decide(&starts, t0 + 60_000) {
            Decision::Trip { recent, retry_in } => {
                assert_eq!(recent.len(), 5);
                // The oldest (t0) ages out at t0 + 5 min.
                assert_eq!(retry_in, Duration::from_millis(5 * MIN - 60_000));
            }
            other => panic!("the sixth start should trip: {other:?}"),
        }
        // Just after the oldest ages out, one start is allowed again.
        assert!(
            matches!(decide(&starts, t0 + 5 * MIN), Decision::Allow { ref recent } if recent.len() == 5)
        );
    }

    #[test]
    fn old_and_far_future_records_do_not_count() {
        let now = 10 * 24 * 60 * MIN;
        let starts = [now - 6 * MIN, now - 5 * MIN, now + 6 * MIN, now - MIN];
        match decide(&starts, now) {
            Decision::Allow { recent } => assert_eq!(recent, vec![now - MIN, now]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unusable_files_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        assert_eq!(read_starts(&p), Ok(vec![]), "missing = no starts");
        for (text, why) in [
            ("not json", "not valid JSON"),
            ("{\"starts\": [1]}", "no \"starts_unix_ms\""),
            ("{\"starts_unix_ms\": [1, -2]}", "whole number"),
            ("{\"starts_unix_ms\": [\"x\"]}", "whole number"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = read_starts(&p).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        std::fs::write(&p, vec![b' '; MAX_STATE_BYTES as usize + 10]).unwrap();
        assert!(read_starts(&p).unwrap_err().contains("larger than"));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_starts(&p).unwrap_err().contains("text"));
        write_starts(&p, "w", &[5, 6]).unwrap();
        assert_eq!(read_starts(&p), Ok(vec![5, 6]));
    }

    fn cfg(dir: &Path, configured: bool) -> Config {
        let mut c = Config::from_json_str(
            r#"{"worker_id":"w-1","pool_id":"p","model_path":"/m/x.gguf","rpc_port":8001,
                "readiness_callback_url":"http://127.0.0.1:9/cb","gpu_device":0}"#,
        )
        .unwrap();
        c.state_dir = dir.to_path_buf();
        c.state_dir_configured = configured;
        c
    }

    #[test]
    fn admit_counts_trips_and_a_clean_exit_resets() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), true);
        let t0 = 2_000_000_000_000u64;
        for i in 0..5 {
            assert!(admit_at(&c, t0 + i).is_ok(), "start {}", i + 1);
        }
        assert_eq!(
            admit_at(&c, t0 + 10).unwrap_err(),
            Refused(super::super::exit::RESTART_STORM)
        );
        // The refused start is not recorded: still 5.
        assert_eq!(
            read_starts(&state_file(dir.path(), "w-1")).unwrap().len(),
            5
        );
        // Another worker id has its own count.
        let mut other = c.clone();
        other.worker_id = "w-2".into();
        assert!(admit_at(&other, t0 + 11).is_ok());
        // A clean exit resets.
        admit_at(&c, t0 + 5 * MIN).unwrap().clean_exit();
        assert!(!state_file(dir.path(), "w-1").exists());
        for i in 0..5 {
            assert!(admit_at(&c, t0 + 5 * MIN + 1 + i).is_ok());
        }
    }

    #[test]
    fn an_unusable_directory_is_a_config_error_only_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let blocked = file.join("sub");
        assert_eq!(
            admit_at(&cfg(&blocked, true), 1).unwrap_err(),
            Refused(super::super::exit::CONFIG)
        );
        let off = admit_at(&cfg(&blocked, false), 1).unwrap();
        assert!(off.path.is_none());
        off.clean_exit();
    }
}
