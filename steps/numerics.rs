//! The numerics version (issue 12 point 2): the `started` event and
//! `/worker/ready` name the same one, and it is the version the harness
//! computes itself from the checkout's numerics sources (the recipe of
//! `engine::numerics`, written out again here), so a version that left out
//! the sources, the backend or the chunk would not match.

use crate::steps::build_check::source_hash;
use crate::steps::http::{self, Auth};
use crate::steps::world::{ctx, World};
use cucumber::then;
use sha2::{Digest, Sha256};

/// The CPU engine's prefill chunk (`engine::cpu::CPU_PREFILL_CHUNK`).
const CPU_PREFILL_CHUNK: usize = 64;

fn well_formed(v: &str) -> bool {
    let Some((backend, hex)) = v.split_once('-') else {
        return false;
    };
    matches!(backend, "cpu" | "cuda")
        && hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the numerics version must cover, written out here on purpose
/// rather than taken from `build/source_hash.rs`: a file the worker's list
/// leaves out then gives a different hash and turns the scenario red.
const NUMERICS_SOURCES: &[&str] = &[
    "cuda",
    "src/gpu",
    "src/engine",
    "src/model",
    "src/http/validate.rs",
    "Cargo.lock",
];

/// The sources' half: recomputed over the checkout's files under
/// [`NUMERICS_SOURCES`] (test files left out, hashed the way build.rs hashes
/// sources) when there is a checkout, else the hash compiled into this
/// harness (a GPU machine without sources).
fn numerics_sources() -> String {
    let Some(repo) = &ctx().repo else {
        return env!("WORKER_ORCD_NUMERICS_SOURCES_SHA256").to_string();
    };
    let files: Vec<_> = source_hash::files_under(repo, NUMERICS_SOURCES)
        .unwrap_or_else(|e| {
            panic!(
                "cannot list the numerics sources under {}: {e}",
                repo.display()
            )
        })
        .into_iter()
        .filter(|f| !source_hash::is_test_file(f))
        .collect();
    source_hash::sha256_of(repo, &files).unwrap_or_else(|e| {
        panic!(
            "cannot hash the numerics sources under {}: {e}",
            repo.display()
        )
    })
}

/// The CPU backend's version: SHA-256 over the scheme, the sources' hash,
/// the backend and the chunk, one per line; the first 16 hex digits.
fn expected_cpu_version() -> String {
    let mut h = Sha256::new();
    for line in [
        // The scheme's name is a label, not a computation: taken from the
        // worker's crate so that a bump there is not a second edit here.
        worker_orcd::engine::numerics::SCHEME.to_string(),
        numerics_sources(),
        "cpu".to_string(),
        format!("prefill_chunk={CPU_PREFILL_CHUNK}"),
        format!("target={}-{}", std::env::consts::ARCH, std::env::consts::OS),
    ] {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("cpu-{}", &hex[..16])
}

#[then("the started event and /worker/ready name the same numerics version")]
async fn same_version(w: &mut World) {
    let started = match w.stream().events.iter().find(|e| e.name == "started") {
        Some(e) => e.json()["numerics_version"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        None => w.fail("the stream has no started event"),
    };
    let r = http::send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let ready = r
        .json
        .as_ref()
        .and_then(|j| j["numerics_version"].as_str())
        .unwrap_or("")
        .to_string();
    w.check(
        well_formed(&started),
        format!(
            "the started event's numerics_version {started:?} is not <cpu|cuda>-<16 hex digits>"
        ),
    );
    w.check(
        started == ready,
        format!(
            "the started event says numerics_version {started:?}, /worker/ready says {ready:?}"
        ),
    );
    w.numerics_version = Some(ready);
}

#[then("that numerics version is the one this checkout's sources give for the backend, as build-info prints it")]
fn version_from_sources(w: &mut World) {
    let Some(served) = w.numerics_version.clone() else {
        w.fail("no numerics version was read from /worker/ready");
    };
    let expected = expected_cpu_version();
    let out = std::process::Command::new(&ctx().bin)
        .arg("build-info")
        .output()
        .unwrap_or_else(|e| w.fail(format!("could not run build-info: {e}")));
    let info = String::from_utf8_lossy(&out.stdout);
    let printed = info
        .lines()
        .find_map(|l| l.strip_prefix("numerics-version-cpu:"))
        .map(str::trim)
        .unwrap_or("");
    w.check(
        printed == expected,
        format!("build-info prints numerics-version-cpu {printed:?}; the checkout's sources give {expected:?}"),
    );
    match ctx().backend() {
        // The CPU version depends on the sources and the chunk only.
        "cpu" => w.check(
            served == expected,
            format!("the worker reports {served:?}; the checkout's sources give {expected:?} for the CPU backend"),
        ),
        // The CUDA version adds the device's facts, which the harness cannot
        // know: it must at least be a CUDA version, not the CPU one.
        _ => w.check(
            served.starts_with("cuda-") && served != expected,
            format!("the CUDA worker reports {served:?}, which is not a CUDA numerics version"),
        ),
    }
}
