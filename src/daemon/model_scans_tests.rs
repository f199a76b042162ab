//! Unit tests of the Plan scan cache and its one-at-a-time gate (issue 13 point 3).
use super::*;
use crate::model::test_model::{write_test_model, TestModelSpec};

/// The `worker_orcd_model_file_scans_total` value in the metrics text.
fn scans_counted(m: &Metrics) -> u64 {
    let text = m.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("worker_orcd_model_file_scans_total "))
        .unwrap_or_else(|| panic!("no scan counter in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn tiny(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    write_test_model(&TestModelSpec::tiny_llama(), &p).unwrap();
    p
}

#[test]
fn an_unchanged_file_is_read_once_and_a_changed_one_again() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "m.gguf");
    let (scans, m, limits) = (ModelScans::default(), Metrics::new(), GgufLimits::default());
    let first = scans.scan(&p, &limits, &m).unwrap();
    let again = scans.scan(&p, &limits, &m).unwrap();
    assert_eq!(scans_counted(&m), 1, "the second Plan must read nothing");
    assert!(Arc::ptr_eq(&first, &again));
    // Rewriting the same bytes changes the times: the cached header no longer answers.
    let bytes = std::fs::read(&p).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
    std::fs::write(&p, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let third = scans.scan(&p, &limits, &m).unwrap();
    assert_eq!(scans_counted(&m), 2, "a modified file must be read again");
    assert_eq!(third.header.file_sha256, first.header.file_sha256);
    assert_eq!(
        scans.entries.lock().unwrap().len(),
        1,
        "the old version is dropped"
    );
}

#[test]
fn a_bad_file_is_refused_from_the_cache_without_reading_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, vec![7u8; 4096]).unwrap();
    let (scans, m, limits) = (ModelScans::default(), Metrics::new(), GgufLimits::default());
    let e1 = scans.scan(&p, &limits, &m).unwrap_err();
    let e2 = scans.scan(&p, &limits, &m).unwrap_err();
    assert_eq!(
        (e1.code(), e2.code()),
        ("MODEL_LOAD_FAILED", "MODEL_LOAD_FAILED")
    );
    assert_eq!(e1.message(), e2.message());
    assert_eq!(scans_counted(&m), 1);
}

/// While one scan runs, a Plan of another new file is refused with a
/// bounded retry hint, and a Plan of a cached file is still answered.
#[test]
fn a_second_scan_waits_but_cached_files_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tiny(dir.path(), "a.gguf"), tiny(dir.path(), "b.gguf"));
    let (scans, m, limits) = (ModelScans::default(), Metrics::new(), GgufLimits::default());
    scans.scan(&a, &limits, &m).unwrap();
    let gate = scans
        .enter(Path::new("/models/big.gguf"), 50_000_000_000)
        .unwrap();
    let e = scans.scan(&b, &limits, &m).unwrap_err();
    assert_eq!(e.code(), "WORKER_BUSY", "{e}");
    let hint = e.retry_after_ms().unwrap();
    assert!((RETRY_MS.0..=RETRY_MS.1).contains(&hint), "{hint}");
    assert!(e.message().contains("big.gguf"), "{e}");
    assert!(
        scans.scan(&a, &limits, &m).is_ok(),
        "a cached file needs no gate"
    );
    drop(gate);
    assert!(
        scans.scan(&b, &limits, &m).is_ok(),
        "the gate is released on drop"
    );
    assert_eq!(scans_counted(&m), 2);
}

/// Any change of size or times makes the old entry unreachable.
#[test]
fn a_changed_file_is_not_found_under_its_old_identity() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gone.gguf");
    std::fs::write(&p, b"GGUF").unwrap();
    let scans = ModelScans::default();
    let id = FileIdentity::stat(&p).unwrap();
    let header = crate::model::gguf::GgufFile::parse_bytes(
        std::fs::read(tiny(dir.path(), "t.gguf")).unwrap(),
        &GgufLimits::default(),
    )
    .unwrap()
    .into_header();
    scans.remember_loaded(id, Arc::new(header));
    assert!(scans.lookup(&id).is_some());
    std::fs::write(&p, b"GGUF and more").unwrap();
    assert!(scans.lookup(&FileIdentity::stat(&p).unwrap()).is_none());
}
