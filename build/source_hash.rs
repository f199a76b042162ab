//! The SHA-256 that names the sources a worker binary is built from (issue 10,
//! "Bad input"). Shared, through `#[path]`, by `build.rs` (which compiles it
//! into every target of the crate as `WORKER_ORCD_SOURCE_SHA256`) and by the
//! BDD harness (which recomputes it over the checkout it runs from), so both
//! sides hash the same files the same way.
//!
//! Inputs: every regular file under `src/` and `cuda/`, plus `build.rs`,
//! `build/`, `Cargo.toml`, `Cargo.lock` and `docs/openapi.json` (compiled in
//! with `include_str!`). Hidden files and editor leftovers (`*~`, `*.orig`,
//! `*.rej`, `*.swp`) are left out, as git would not carry them. Each file
//! contributes its '/'-separated relative path, a NUL, its length as 8
//! little-endian bytes and its bytes, in sorted path order.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Folders and files (relative to the crate root) whose bytes make the binary.
pub const INPUTS: &[&str] = &[
    "src",
    "cuda",
    "build",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "docs/openapi.json",
];

/// The sources whose arithmetic decides a worker's tokens (issue 12 point
/// 2): the kernels, their launchers, the engines and the sampler, the model
/// readers (dequantization, tokenizer), the request validation that sets
/// the sampling defaults, and the locked dependencies. Their hash is part
/// of the numerics version; whole files, so broader than strictly needed.
/// Test-only files (`tests.rs`, `*_tests.rs`) are left out.
pub const NUMERICS_INPUTS: &[&str] = &[
    "cuda",
    "src/gpu",
    "src/engine",
    "src/model",
    "src/http/validate.rs",
    "Cargo.lock",
];

/// The numerics half of the sources: [`NUMERICS_INPUTS`] without test files.
pub fn numerics_sha256(root: &Path) -> std::io::Result<String> {
    let files: Vec<PathBuf> = files_under(root, NUMERICS_INPUTS)?
        .into_iter()
        .filter(|f| !is_test_file(f))
        .collect();
    sha256_of(root, &files)
}

/// A file only tests compile: `tests.rs` or `*_tests.rs`.
pub fn is_test_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

fn skipped(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".orig", ".rej", ".swp"].iter().any(|x| name.ends_with(x))
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let full = root.join(rel);
    let meta = std::fs::metadata(&full)?;
    if meta.is_file() {
        out.push(rel.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(&full)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !skipped(&name) {
            collect(root, &rel.join(&name), out)?;
        }
    }
    Ok(())
}

/// The files under `inputs` (relative to `root`), sorted.
pub fn files_under(root: &Path, inputs: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for i in inputs {
        if root.join(i).exists() {
            collect(root, Path::new(i), &mut files)?;
        }
    }
    files.sort_by_key(|p| rel_name(p));
    Ok(files)
}

fn rel_name(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Lower-case hex SHA-256 over the inputs under `root`.
pub fn source_sha256(root: &Path) -> std::io::Result<String> {
    sha256_under(root, INPUTS)
}

/// Lower-case hex SHA-256 over the files under `inputs`, each as its
/// relative path, a NUL, its length (8 bytes, little-endian) and its bytes.
pub fn sha256_under(root: &Path, inputs: &[&str]) -> std::io::Result<String> {
    sha256_of(root, &files_under(root, inputs)?)
}

/// Lower-case hex SHA-256 over `files` (relative to `root`, in the order
/// given), each as its path, a NUL, its length and its bytes.
pub fn sha256_of(root: &Path, files: &[PathBuf]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let bytes = std::fs::read(root.join(f))?;
        h.update(rel_name(f).as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}
