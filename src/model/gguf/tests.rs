//! Real GGUF releases parse (ignored, with the reason, when absent: build.rs).

use super::*;
use std::path::Path;

fn models_dir() -> std::path::PathBuf {
    std::env::var_os("WORKER_ORCD_TEST_MODELS")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// A real release parses and matches GUIDE §2 (the build ignores the
/// calling test when the file is absent: build.rs).
fn real_file_parses(file: &str, arch: &str, n: usize) {
    {
        let path = models_dir().join(file);
        assert!(
            path.exists(),
            "{} absent (set WORKER_ORCD_TEST_MODELS and rebuild)",
            path.display()
        );
        let g = GgufFile::open(&path, &GgufLimits::default()).unwrap();
        assert_eq!(g.get_str("general.architecture"), Some(arch));
        assert_eq!(g.tensors.len(), n);
        let toks = g.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert!(toks.len() > 40_000);
        for t in &g.tensors {
            assert_eq!(g.tensor_bytes(t).len() as u64, t.n_bytes);
        }
        if std::env::var_os("GGUF_DUMP").is_some() {
            for (k, v) in &g.metadata {
                let s = format!("{v:?}");
                println!("{k} = {}", &s[..s.len().min(120)]);
            }
            let mut mix = BTreeMap::new();
            for t in &g.tensors {
                println!("{} {:?} {}", t.name, t.dims, t.dtype.name());
                *mix.entry(t.dtype.name()).or_insert(0) += 1;
            }
            println!(
                "{file}: v{} align {} data@{} mix {mix:?}",
                g.version(),
                g.alignment,
                g.data_offset
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(test_model_smollm2),
    ignore = "SmolLM2-135M-Instruct.Q4_1.gguf is not in WORKER_ORCD_TEST_MODELS (ci/fetch-models.sh)"
)]
fn real_smollm2_parses() {
    real_file_parses("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", 272);
}

#[test]
#[cfg_attr(
    not(test_model_qwen),
    ignore = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf is not in WORKER_ORCD_TEST_MODELS"
)]
fn real_qwen_parses() {
    real_file_parses("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2", 291);
}

#[test]
fn sha256_is_of_the_whole_file_and_verified() {
    let mut w = crate::model::gguf_write::GgufWriter::new();
    w.add_u32("a", 1);
    let bytes = w.to_bytes().unwrap();
    let want = sha256_chunked(&bytes);
    let g = GgufFile::parse_bytes(bytes, &GgufLimits::default()).unwrap();
    assert_eq!(g.file_sha256, want);
    let hex = hex::encode(want);
    g.verify_sha256(&hex).unwrap();
    g.verify_sha256(&format!("sha256:{}", hex.to_uppercase()))
        .unwrap();
    let mut other = hex.into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let e = g
        .verify_sha256(std::str::from_utf8(&other).unwrap())
        .unwrap_err();
    assert_eq!(e.code(), "MODEL_LOAD_FAILED");
    assert!(g
        .verify_sha256("abc")
        .unwrap_err()
        .message()
        .contains("not a SHA-256"));
}

/// Plan's scan (header kept, bytes streamed through the hash) sees exactly
/// what a whole-file open sees, and a header cut short by the file is refused.
#[test]
fn scan_agrees_with_open_and_needs_the_whole_header() {
    use crate::model::test_model::{write_test_model, TestModelSpec};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write_test_model(&TestModelSpec::tiny_llama(), &p).unwrap();
    let limits = GgufLimits::default();
    let whole = GgufFile::open(&p, &limits).unwrap();
    let (scanned, identity) = GgufHeader::scan(&p, &limits).unwrap();
    assert_eq!(scanned.file_sha256, whole.file_sha256);
    assert_eq!(scanned.tensors, whole.tensors);
    assert_eq!(scanned.metadata, whole.metadata);
    assert_eq!(
        (scanned.data_offset, scanned.data_len()),
        (whole.data_offset, whole.data_section().len() as u64)
    );
    assert_eq!(identity, whole.identity().unwrap());
    // The first 100 bytes of the header, as a file of their own: truncated, not "need more".
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..100]).unwrap();
    let e = GgufHeader::scan(&p, &limits).unwrap_err();
    assert!(e.message().contains("truncated or corrupt"), "{e}");
}
