//! The harness refuses a worker binary it cannot trust, once, before any
//! scenario runs (issue 10, "Bad input"): one built without the `test-hooks`
//! feature (its fault hooks and named mutants would be missing, and scenarios
//! would fail one by one for a reason they do not name), and one built from
//! other sources than the tests.
//!
//! "Same sources" is decided by the SHA-256 of `build/source_hash.rs`:
//! - the worker's `build-info` hash must equal the one compiled into this
//!   harness (both come from the same build script), always;
//! - when a checkout is at hand (`WORKER_ORCD_REPO`, or the crate folder),
//!   the hash recomputed over it must equal it too, so a harness and a worker
//!   both older than the checkout are refused as well. A GPU machine without
//!   sources has no checkout: the binary-against-harness check still applies,
//!   and the run says that the checkout check was not made.

#[path = "../build/source_hash.rs"]
// Shared with build.rs, which uses the parts the harness does not.
#[allow(dead_code)]
pub mod source_hash;

use std::path::Path;

/// The hash of the sources this harness was compiled from.
pub const HARNESS_SOURCES: &str = env!("WORKER_ORCD_SOURCE_SHA256");

/// `key: value` from `build-info` output.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Ok(notes to print) when the binary may be used; Err(why not) otherwise.
pub fn check_binary(bin: &Path, repo: Option<&Path>) -> Result<Vec<String>, String> {
    let out = std::process::Command::new(bin)
        .arg("build-info")
        .output()
        .map_err(|e| format!("could not run {} build-info: {e}", bin.display()))?;
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} build-info failed ({}): {}; the binary is older than this harness or not a worker-orcd build. \
             Rebuild it with `cargo build --release --features test-hooks`.",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let features = field(&info, "features").unwrap_or("");
    if !features.split(',').any(|f| f.trim() == "test-hooks") {
        return Err(format!(
            "{} was built without the test-hooks feature (build-info says features: {features:?}): \
             the fault hooks and named mutants the scenarios use are missing. \
             Rebuild it with `cargo build --release --features test-hooks`.",
            bin.display()
        ));
    }
    let worker = field(&info, "source-sha256").unwrap_or("");
    if worker != HARNESS_SOURCES {
        return Err(format!(
            "{} was built from other sources than this harness: its source SHA-256 is {worker:?}, \
             the harness's is {HARNESS_SOURCES:?}. Build both from one checkout \
             (`cargo test --release --features test-hooks --test bdd` builds both).",
            bin.display()
        ));
    }
    let mut notes = vec![format!(
        "worker built with test-hooks from sources {}",
        &HARNESS_SOURCES[..16]
    )];
    match repo {
        Some(r) => {
            let here = source_hash::source_sha256(r)
                .map_err(|e| format!("cannot hash the sources under {}: {e}", r.display()))?;
            if here != HARNESS_SOURCES {
                return Err(format!(
                    "the worker and this harness were built from other sources than the checkout {} \
                     (its source SHA-256 is {here}, theirs {HARNESS_SOURCES}): rebuild them from it",
                    r.display()
                ));
            }
            notes.push(format!("the checkout {} has the same sources", r.display()));
        }
        None => notes.push(
            "no source checkout here: the worker was checked against this harness only, not against a checkout"
                .into(),
        ),
    }
    Ok(notes)
}
