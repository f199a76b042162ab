//! Tests of the token file (modes, format, constant-time verify with several
//! tokens, fp6) and of the privilege checks (root refusal, capability report).

use super::credentials::fp6;
use super::privileges::{capability_names, check_uid, parse_proc_status, report_from};
use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

// ---- credentials ----

fn token_file(dir: &tempfile::TempDir, text: &str, mode: u32) -> PathBuf {
    let p = dir.path().join("worker-token");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn fp6_of_known_token() {
    // sha256("test-token") = 4c5dc9b7708905f77f5e5d16316b5dfb425e68cb326dcd55a860e90a7707031e
    assert_eq!(fp6("test-token"), "4c5dc9");
}

#[test]
fn token_file_modes() {
    let dir = tempfile::tempdir().unwrap();
    let p = token_file(&dir, "secret-token-aaaaaaaa\n", 0o600);
    assert!(Credentials::from_file(&p).is_ok());
    let p = token_file(&dir, "secret-token-aaaaaaaa\n", 0o400);
    assert!(Credentials::from_file(&p).is_ok());
    for mode in [0o640, 0o604, 0o644, 0o660] {
        let p = token_file(&dir, "secret-token-aaaaaaaa\n", mode);
        let e = Credentials::from_file(&p).unwrap_err();
        assert_eq!(e.field, "api_token_file");
        assert!(
            e.message.contains("chmod 600") && e.message.contains(&p.display().to_string()),
            "{e}"
        );
        assert!(
            !e.message.contains("secret-token"),
            "never echo the token: {e}"
        );
    }
}

/// The documented bounds, each at the limit and one past it: a file of at
/// most 64 KiB, at most 64 distinct tokens, tokens of at most 4096 bytes.
#[test]
fn token_file_bounds_hold_exactly_at_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB exactly: one token, then comment lines padding the file.
    let sized = |len: usize| {
        let mut text = String::from("secret-token-aaaaaaaa\n");
        while text.len() < len {
            let room = len - text.len();
            let line = "#".repeat(room.min(100).saturating_sub(1));
            text.push_str(&line);
            text.push('\n');
        }
        text.truncate(len);
        text
    };
    let p = token_file(&dir, &sized(64 * 1024), 0o600);
    assert!(
        Credentials::from_file(&p).is_ok(),
        "a 64 KiB token file is allowed"
    );
    let p = token_file(&dir, &sized(64 * 1024 + 1), 0o600);
    let e = Credentials::from_file(&p).unwrap_err();
    assert!(e.message.contains("at most 65536 bytes"), "{e}");

    let tokens =
        |n: usize| -> String { (0..n).map(|i| format!("token-number-{i:04}\n")).collect() };
    assert_eq!(
        Credentials::from_text(&tokens(64), "t")
            .unwrap()
            .fp6_list()
            .len(),
        64
    );
    let e = Credentials::from_text(&tokens(65), "t").unwrap_err();
    assert!(e.message.contains("more than 64 tokens"), "{e}");
    // A repeated token is one token: 64 distinct plus a repeat is allowed.
    let repeated = tokens(64) + "token-number-0000\n";
    assert_eq!(
        Credentials::from_text(&repeated, "t")
            .unwrap()
            .fp6_list()
            .len(),
        64
    );

    let long = "a".repeat(4096);
    assert!(
        Credentials::from_text(&long, "t").is_ok(),
        "a 4096-byte token is allowed"
    );
    let e = Credentials::from_text(&"a".repeat(4097), "t").unwrap_err();
    assert!(e.message.contains("longer than 4096 bytes"), "{e}");
}

/// An error names the line of the file it is about, counting from 1 and
/// counting comment and blank lines.
#[test]
fn token_errors_name_their_line() {
    let e = Credentials::from_text("# a comment\n\nnot a token", "tf").unwrap_err();
    assert!(e.message.contains("tf line 3:"), "{e}");
    let long = format!("{}\n{}", "b".repeat(20), "a".repeat(4097));
    let e = Credentials::from_text(&long, "tf").unwrap_err();
    assert!(e.message.contains("tf line 2:"), "{e}");
}

/// A token shorter than 16 characters is accepted with a warning naming its
/// line; one of 16 or more gets none.
#[test]
fn short_tokens_are_accepted_with_a_warning() {
    use crate::telemetry::logging::test_capture::capture;
    let warnings = |text: &str| -> Vec<String> {
        capture("warn", || {
            Credentials::from_text(text, "tf").unwrap();
        })
        .iter()
        .filter(|l| l["level"] == "warn")
        .map(|l| l["human"].as_str().unwrap_or_default().to_string())
        .collect()
    };
    let (sixteen, fifteen) = ("token-of-16-char", "token-of-15-cha");
    assert_eq!((sixteen.len(), fifteen.len()), (16, 15));
    let w = warnings(&format!("# header\n{sixteen}"));
    assert!(w.is_empty(), "16 characters are enough: {w:?}");
    let w = warnings(&format!("# header\n{fifteen}"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("line 2") && w[0].contains("shorter than 16"),
        "{w:?}"
    );
    assert!(!w[0].contains(fifteen), "never the token itself: {w:?}");
    let w = warnings(&"x".repeat(40));
    assert!(w.is_empty(), "a long token gets no warning: {w:?}");
}

#[test]
fn missing_empty_and_unreadable_token_files_fail() {
    let dir = tempfile::tempdir().unwrap();
    let e = Credentials::from_file(&dir.path().join("absent")).unwrap_err();
    assert!(
        e.message.contains("absent") && e.message.contains("chmod 600"),
        "{e}"
    );
    let p = token_file(&dir, "", 0o600);
    assert!(Credentials::from_file(&p)
        .unwrap_err()
        .message
        .contains("holds no token"));
    let p = token_file(&dir, "# only a comment\n\n   \n", 0o600);
    assert!(Credentials::from_file(&p)
        .unwrap_err()
        .message
        .contains("holds no token"));
    let e = Credentials::from_file(dir.path()).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{e}");
    let p = token_file(&dir, "tok en with spaces\n", 0o600);
    assert!(Credentials::from_file(&p)
        .unwrap_err()
        .message
        .contains("printable ASCII"));
}

/// Mode 000 is unreadable for a normal user; root reads it anyway, so the
/// build ignores this case when it runs as root (build.rs).
#[test]
#[cfg_attr(
    test_as_root,
    ignore = "root reads mode-000 files, so this case cannot be made"
)]
fn an_unreadable_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = token_file(&dir, "secret-token-aaaaaaaa\n", 0o000);
    let e = Credentials::from_file(&p).unwrap_err();
    assert!(e.message.contains("cannot read"), "{e}");
}

#[test]
fn verify_accepts_each_token_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let p = token_file(
        &dir,
        "# rotation in progress\nold-token-1234567890\n\n  new-token-0987654321  \n",
        0o600,
    );
    let c = Credentials::from_file(&p).unwrap();
    assert_eq!(
        c.fp6_list(),
        vec![fp6("old-token-1234567890"), fp6("new-token-0987654321")]
    );
    assert_eq!(
        c.verify("old-token-1234567890").unwrap().fp6,
        fp6("old-token-1234567890")
    );
    assert_eq!(
        c.verify("new-token-0987654321").unwrap().fp6,
        fp6("new-token-0987654321")
    );
    for wrong in [
        "",
        "old-token-123456789",
        "old-token-12345678901",
        "OLD-TOKEN-1234567890",
        "# rotation in progress",
    ] {
        assert_eq!(c.verify(wrong), None, "{wrong:?}");
    }
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("old-token") && dbg.contains(&fp6("old-token-1234567890")),
        "{dbg}"
    );
    assert_ne!(c.key_material("seal"), c.key_material("other"));
}

#[test]
fn verify_finds_every_one_of_64_tokens_and_only_them() {
    // The constant-time scan must still pick the right identity wherever the
    // match is: first, last, anywhere between (4201's comparison function).
    let tokens: Vec<String> = (0..64)
        .map(|i| format!("token-number-{i:02}-abcdefgh"))
        .collect();
    let c = Credentials::from_text(&tokens.join("\n"), "test").unwrap();
    for t in &tokens {
        assert_eq!(c.verify(t).map(|id| id.fp6), Some(fp6(t)), "{t}");
    }
    for wrong in ["token-number-64-abcdefgh", "token-number-00-abcdefg", ""] {
        assert_eq!(c.verify(wrong), None, "{wrong:?}");
    }
}

// ---- privileges ----

#[test]
fn root_refused_unless_overridden() {
    let e = check_uid(Some(0), false).unwrap_err();
    assert_eq!(e.field, "allow_root");
    assert!(
        e.message.contains("--allow-root") && e.message.contains("worker-orcd"),
        "{e}"
    );
    assert!(check_uid(Some(0), true).is_ok());
    assert!(check_uid(Some(1000), false).is_ok());
    assert!(check_not_root(true).is_ok());
}

#[test]
fn proc_status_parsing_and_capability_names() {
    let text = "Name:\tworker\nUid:\t1000\t0\t0\t0\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000401\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t1\n";
    let s = parse_proc_status(text);
    assert_eq!(
        s.effective_uid,
        Some(0),
        "the effective uid is the second field"
    );
    assert_eq!(s.cap_eff, 0x401);
    assert_eq!(s.no_new_privs, Some(true));
    let r = report_from(&s);
    assert_eq!(
        r.held,
        vec!["cap_chown".to_string(), "cap_net_bind_service".to_string()]
    );
    assert!(!r.is_clean());
    assert_eq!(capability_names(1 << 21), vec!["cap_sys_admin".to_string()]);
    assert!(report_from(&parse_proc_status("CapEff:\t0\nCapPrm:\t0\n")).is_clean());
    // The live process: the call must not panic and must agree with /proc.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        privileges::effective_uid(),
        Some(std::fs::metadata("/proc/self").unwrap().uid())
    );
    // Capability sets are per thread: drop them on a thread of its own so the
    // other tests keep theirs. As root this really empties the sets.
    let (live, again) = std::thread::spawn(|| {
        let live = drop_capabilities();
        let again = report_from(&parse_proc_status(
            &std::fs::read_to_string("/proc/thread-self/status").unwrap(),
        ));
        (live, again)
    })
    .join()
    .unwrap();
    assert_eq!(live.effective, again.effective);
    assert!(live.is_clean(), "capabilities still held: {:?}", live.held);
}
