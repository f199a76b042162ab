//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the CI fuzz
//! smoke run (`tests/fuzz_smoke.rs`) (issue 13 point 6; WORKER-4224, 4300,
//! 4311, 4312). Each takes arbitrary bytes and drives one surface that
//! hostile input reaches: the GGUF parser and what reads a parsed header,
//! the tokenizer's input handling, and request validation. The property is
//! the same everywhere: a clear error or a result, never a panic, a hang or
//! an unbounded allocation (every length is bounded by the limits).

use std::sync::OnceLock;

use crate::http::validate::{self, Limits};
use crate::model::arch;
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::gguf_write::{add_test_tokenizer, GgufWriter, SpecialsAt};
use crate::model::mcd::Mcd;
use crate::model::tokenizer::Tokenizer;

/// Limits for fuzzed files: the defaults, with the file size and array
/// lengths bounded to what a fuzzer produces (the checks are the same code;
/// only the numbers are smaller), so each input runs in microseconds.
fn limits() -> GgufLimits {
    GgufLimits {
        max_file_bytes: 1 << 20,
        max_array_len: 1 << 16,
        ..GgufLimits::default()
    }
}

/// A GGUF file: parse it, then what reads a parsed file at load besides the
/// tokenizer (architecture and weight layout, MCD, the NaN check).
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::parse_bytes(data.to_vec(), &limits()) else {
        return;
    };
    let _ = arch::from_gguf(&g);
    let _ = arch::check_weights(&g);
    let _ = Mcd::from_metadata(&g, None);
}

/// A GGUF file whose metadata builds a tokenizer (token lists, types,
/// merges, specials), then a use of it. Apart from [`gguf`] because building
/// a tokenizer takes milliseconds (its pre-tokenizer regexes are compiled).
pub fn gguf_tokenizer(data: &[u8]) {
    let Ok(g) = GgufFile::parse_bytes(data.to_vec(), &limits()) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let _ = t.encode("Hello, world! <|im_start|>", true);
    }
}

/// The tokenizer every [`tokenizer`] input goes through: a byte-level BPE of
/// 512 tokens with the chat specials, built in memory once.
fn test_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "llama");
        add_test_tokenizer(&mut w, 512, "smollm", SpecialsAt::Start).expect("test tokenizer");
        let bytes = w.to_bytes().expect("tokenizer GGUF");
        let g =
            GgufFile::parse_bytes(bytes, &GgufLimits::default()).expect("tokenizer GGUF parses");
        Tokenizer::from_gguf(&g).expect("test tokenizer loads")
    })
}

/// Text (any bytes, read as lossy UTF-8) encoded with and without special
/// tokens, decoded again; and the bytes read as token ids and decoded.
pub fn tokenizer(data: &[u8]) {
    let t = test_tokenizer();
    let text = String::from_utf8_lossy(data);
    for special in [false, true] {
        if let Ok(ids) = t.encode(&text, special) {
            let _ = t.decode(&ids);
        }
    }
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let _ = t.decode(&ids);
}

/// A request body given to every JSON endpoint's validator, and as the query
/// string of a commit by upload.
pub fn request(data: &[u8]) {
    let lim = Limits::default();
    let _ = validate::execute(data, &lim);
    let _ = validate::plan(data);
    let _ = validate::commit(data);
    let _ = validate::cancel(data);
    let _ = validate::commit_upload(&String::from_utf8_lossy(data));
}

/// One fuzz target: its name (as `fuzz/` knows it) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets by name, as `fuzz/` and the smoke run know them.
pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("gguf_tokenizer", gguf_tokenizer),
    ("tokenizer", tokenizer),
    ("request", request),
];
