//! Malformed GGUF corpus (WORKER-4224, 4311, 4312, 4412; issue 3 point 1).
//!
//! Each case starts from a valid tiny file written by `GgufWriter`, corrupts
//! one field, writes it to a temporary directory and opens it: the loader must
//! answer `MODEL_LOAD_FAILED` with a message naming the problem, never panic.
//! A seeded byte-flip loop then checks that no corruption at all can panic it.

use std::path::Path;

use worker_orcd::error::WorkerError;
use worker_orcd::model::gguf::{GgmlType, GgufFile, GgufLimits, MetaValue};
use worker_orcd::model::gguf_write::GgufWriter;

fn base_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama");
    w.add_u32("test.u32", 5);
    w.add_meta("test.flag", MetaValue::Bool(true));
    w.add_meta(
        "test.arr",
        MetaValue::Array(vec![
            MetaValue::String("a".into()),
            MetaValue::String("bc".into()),
        ]),
    );
    w.add_meta(
        "test.ints",
        MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-2)]),
    );
    let x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 256.0).collect();
    w.add_tensor_f32("t.first", &[32, 2], GgmlType::Q8_0, &x[..64])
        .unwrap();
    w.add_tensor_f32("t.second", &[64], GgmlType::F32, &x[..64])
        .unwrap();
    w.add_tensor_f32("t.third", &[256], GgmlType::Q4K, &x)
        .unwrap();
    w
}

fn base() -> Vec<u8> {
    base_writer().to_bytes().unwrap()
}

/// Byte offset of the first occurrence of `needle`.
fn find(b: &[u8], needle: &str) -> usize {
    b.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle} not in file"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offsets of a tensor info's fields: (name length, n_dims, first dim, type, offset).
fn tensor_fields(b: &[u8], name: &str) -> (usize, usize, usize, usize, usize) {
    let p = find(b, name);
    let nd_at = p + name.len();
    let nd = u32::from_le_bytes(b[nd_at..nd_at + 4].try_into().unwrap()) as usize;
    let type_at = nd_at + 4 + 8 * nd;
    (p - 8, nd_at, nd_at + 4, type_at, type_at + 4)
}

/// Offsets of a metadata key's fields: (key length, key bytes, value type, value).
fn key_fields(b: &[u8], key: &str) -> (usize, usize, usize, usize) {
    let p = find(b, key);
    (p - 8, p, p + key.len(), p + key.len() + 4)
}

fn open_err(bytes: &[u8], limits: &GgufLimits) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path, limits) {
        Ok(_) => panic!("a malformed file was accepted"),
        Err(e) => {
            assert_eq!(e.code(), "MODEL_LOAD_FAILED", "{e}");
            assert!(matches!(e, WorkerError::ModelLoadFailed { .. }));
            // parse_bytes must agree with open.
            let e2 =
                GgufFile::parse_bytes(bytes.to_vec(), limits).expect_err("parse_bytes accepted it");
            assert_eq!(e2.code(), "MODEL_LOAD_FAILED");
            e.message().to_string()
        }
    }
}

/// Corrupt a copy of the base file with `f`, expect `want` in the message.
fn case(name: &str, want: &[&str], f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = base();
    f(&mut b);
    let msg = open_err(&b, &GgufLimits::default());
    assert!(
        want.iter().any(|w| msg.contains(w)),
        "case {name}: message {msg:?} mentions none of {want:?}"
    );
    println!("{name}: {msg}");
}

#[test]
fn the_base_file_is_valid_as_v3_and_v2() {
    let g = GgufFile::parse_bytes(base(), &GgufLimits::default()).unwrap();
    assert_eq!(g.tensors.len(), 3);
    assert_eq!(g.version(), 3);
    let mut w = base_writer();
    w.set_version(2);
    let g = GgufFile::parse_bytes(w.to_bytes().unwrap(), &GgufLimits::default()).unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.get_u32("test.u32"), Some(5));
}

#[test]
fn header_corruptions() {
    case("empty file", &["too small"], |b| b.clear());
    case("truncated header", &["too small"], |b| b.truncate(20));
    case("truncated in metadata count", &["too small"], |b| {
        b.truncate(23)
    });
    case("truncated after counts", &["needs", "truncated"], |b| {
        b.truncate(30)
    });
    case("wrong magic", &["magic"], |b| {
        b[0..4].copy_from_slice(b"GGML")
    });
    case("version 1", &["version 1", "obsolete"], |b| {
        put_u32(b, 4, 1)
    });
    case("version 4", &["version 4"], |b| put_u32(b, 4, 4));
    case("big-endian version", &["big-endian"], |b| {
        put_u32(b, 4, 3u32.swap_bytes())
    });
    case("huge tensor count", &["max_tensors"], |b| {
        put_u64(b, 8, u64::MAX)
    });
    case(
        "tensor count past EOF",
        &["truncated", "past the end", "only", "empty name"],
        |b| put_u64(b, 8, 9_999),
    );
    case("huge metadata count", &["max_metadata_pairs"], |b| {
        put_u64(b, 16, 1 << 40)
    });
    case(
        "metadata count past EOF",
        &[
            "truncated",
            "only",
            "unknown value type",
            "max_string_bytes",
        ],
        |b| put_u64(b, 16, 999),
    );
}

#[test]
fn metadata_corruptions() {
    case("string length past EOF", &["needs", "truncated"], |b| {
        let (len_at, ..) = key_fields(b, "test.u32");
        put_u64(b, len_at, 60_000);
    });
    case("string over limit", &["max_string_bytes"], |b| {
        let (len_at, ..) = key_fields(b, "test.u32");
        put_u64(b, len_at, 1 << 20);
    });
    case("string length u64::MAX", &["max_string_bytes"], |b| {
        let (len_at, ..) = key_fields(b, "test.u32");
        put_u64(b, len_at, u64::MAX);
    });
    case("invalid UTF-8 key", &["UTF-8"], |b| {
        let (_, key_at, ..) = key_fields(b, "test.u32");
        b[key_at] = 0xFF;
    });
    case("duplicate key", &["appears twice"], |b| {
        let (_, key_at, ..) = key_fields(b, "test.arr");
        b[key_at..key_at + 8].copy_from_slice(b"test.u32");
    });
    case("unknown value type", &["unknown value type 13"], |b| {
        let (_, _, type_at, _) = key_fields(b, "test.u32");
        put_u32(b, type_at, 13);
    });
    case("bool not 0 or 1", &["not 0 or 1"], |b| {
        let (.., val_at) = key_fields(b, "test.flag");
        b[val_at] = 2;
    });
    case("array length huge", &["max_array_len"], |b| {
        let (.., val_at) = key_fields(b, "test.arr");
        put_u64(b, val_at + 4, u64::MAX);
    });
    case("array length past EOF", &["bytes remain"], |b| {
        let (.., val_at) = key_fields(b, "test.ints");
        put_u64(b, val_at + 4, 1_000_000);
    });
    case(
        "array element type unknown",
        &["unknown element type 77"],
        |b| {
            let (.., val_at) = key_fields(b, "test.arr");
            put_u32(b, val_at, 77);
        },
    );
    case(
        "array element string past EOF",
        &["needs", "truncated"],
        |b| {
            let p = find(b, "bc");
            put_u64(b, p - 8, 50_000);
        },
    );
}

#[test]
fn tensor_info_corruptions() {
    case("n_dims 0", &["0 dimensions"], |b| {
        let (_, nd_at, ..) = tensor_fields(b, "t.first");
        put_u32(b, nd_at, 0);
    });
    case("n_dims over limit", &["9 dimensions", "max_dims"], |b| {
        let (_, nd_at, ..) = tensor_fields(b, "t.first");
        put_u32(b, nd_at, 9);
    });
    case("dim product overflow", &["overflow"], |b| {
        let (_, _, d0, ..) = tensor_fields(b, "t.first");
        put_u64(b, d0 + 8, 1 << 62);
    });
    case("byte size overflow", &["overflow"], |b| {
        let (_, _, d0, ..) = tensor_fields(b, "t.second");
        put_u64(b, d0, 1 << 62);
    });
    case("dimension zero", &["size 0"], |b| {
        let (_, _, d0, ..) = tensor_fields(b, "t.first");
        put_u64(b, d0 + 8, 0);
    });
    case(
        "row not a multiple of block size",
        &["not a multiple of the q8_0 block size 32"],
        |b| {
            let (_, _, d0, ..) = tensor_fields(b, "t.first");
            put_u64(b, d0, 16);
        },
    );
    case(
        "known but unsupported type",
        &["q2_K", "not supported by this build; supported:"],
        |b| {
            let (.., type_at, _) = tensor_fields(b, "t.first");
            put_u32(b, type_at, 10);
        },
    );
    case("unknown type id", &["unknown ggml type id 99"], |b| {
        let (.., type_at, _) = tensor_fields(b, "t.first");
        put_u32(b, type_at, 99);
    });
    case("removed type id 4", &["unknown ggml type id 4"], |b| {
        let (.., type_at, _) = tensor_fields(b, "t.first");
        put_u32(b, type_at, 4);
    });
    case("duplicate tensor name", &["appears twice"], |b| {
        let p = find(b, "t.third");
        b[p..p + 7].copy_from_slice(b"t.first");
    });
    case("tensor name over limit", &["max_string_bytes"], |b| {
        let (len_at, ..) = tensor_fields(b, "t.second");
        put_u64(b, len_at, 100_000);
    });
}

#[test]
fn tensor_range_corruptions() {
    case("tensor past EOF", &["past the end"], |b| {
        let (.., off_at) = tensor_fields(b, "t.third");
        put_u64(b, off_at, 1 << 20);
    });
    case("tensor offset overflows", &["past the end"], |b| {
        let (.., off_at) = tensor_fields(b, "t.third");
        put_u64(b, off_at, u64::MAX - 31);
    });
    case("overlapping tensors", &["overlap"], |b| {
        let (.., off_at) = tensor_fields(b, "t.second");
        put_u64(b, off_at, 64);
    });
    case(
        "misaligned offset",
        &["not a multiple of the alignment 32"],
        |b| {
            let (.., off_at) = tensor_fields(b, "t.second");
            put_u64(b, off_at, 100);
        },
    );
    case("tensor grows past EOF", &["past the end"], |b| {
        let (_, _, d0, ..) = tensor_fields(b, "t.third");
        put_u64(b, d0, 256 * 64);
    });
    let full = base();
    let g = GgufFile::parse_bytes(full.clone(), &GgufLimits::default()).unwrap();
    case(
        "file ends inside padding",
        &["would start", "past the end", "needs"],
        |b| {
            b.truncate(g.data_offset as usize - 1);
        },
    );
}

#[test]
fn truncation_at_every_sixteenth() {
    let full = base();
    for k in 0..16 {
        let cut = full.len() * k / 16;
        case(
            &format!("truncated at {k}/16 ({cut} bytes)"),
            &["truncated", "past the end", "too small", "only"],
            |b| b.truncate(cut),
        );
    }
}

fn with_alignment_value(v: MetaValue) -> Vec<u8> {
    let mut w = base_writer();
    w.set_alignment(64).unwrap();
    let mut b = w.to_bytes().unwrap();
    let (.., type_at, val_at) = key_fields(&b, "general.alignment");
    match v {
        MetaValue::U32(x) => put_u32(&mut b, val_at, x),
        MetaValue::F32(x) => {
            put_u32(&mut b, type_at, 6);
            b[val_at..val_at + 4].copy_from_slice(&x.to_le_bytes());
        }
        _ => unreachable!(),
    }
    b
}

#[test]
fn bad_alignment_values() {
    for (v, name) in [
        (MetaValue::U32(0), "zero"),
        (MetaValue::U32(48), "not a power of two"),
        (MetaValue::F32(64.0), "a float"),
    ] {
        let msg = open_err(&with_alignment_value(v), &GgufLimits::default());
        assert!(msg.contains("general.alignment"), "alignment {name}: {msg}");
    }
    // A valid non-default alignment is honoured.
    let g = GgufFile::parse_bytes(
        with_alignment_value(MetaValue::U32(64)),
        &GgufLimits::default(),
    )
    .unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
}

#[test]
fn configured_limits_apply() {
    let b = base();
    let lim = |f: fn(&mut GgufLimits)| {
        let mut l = GgufLimits::default();
        f(&mut l);
        l
    };
    let cases: [(GgufLimits, &str); 5] = [
        (lim(|l| l.max_file_bytes = 100), "max_file_bytes"),
        (lim(|l| l.max_tensors = 2), "max_tensors"),
        (lim(|l| l.max_metadata_pairs = 3), "max_metadata_pairs"),
        (lim(|l| l.max_string_bytes = 8), "max_string_bytes"),
        (lim(|l| l.max_array_len = 1), "max_array_len"),
    ];
    for (l, want) in cases {
        let msg = open_err(&b, &l);
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let msg = open_err(&b, &lim(|l| l.max_dims = 1));
    assert!(msg.contains("max_dims"), "{msg}");
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut w = GgufWriter::new();
    let inner = MetaValue::Array(vec![MetaValue::U8(1)]);
    let deep = MetaValue::Array(vec![MetaValue::Array(vec![inner])]);
    w.add_meta("deep", deep);
    let msg = open_err(&w.to_bytes().unwrap(), &GgufLimits::default());
    assert!(msg.contains("nests deeper"), "{msg}");
}

#[test]
fn missing_file_and_directory_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(&dir.path().join("absent.gguf"), &GgufLimits::default()).unwrap_err();
    assert_eq!(e.code(), "MODEL_LOAD_FAILED");
    let e = GgufFile::open(dir.path(), &GgufLimits::default()).unwrap_err();
    assert!(e.message().contains("not a regular file"), "{e}");
}

/// SplitMix64, so the fuzz corpus is the same on every run.
fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn seeded_byte_flips_never_panic() {
    let full = base();
    let header_len = GgufFile::parse_bytes(full.clone(), &GgufLimits::default())
        .unwrap()
        .data_offset as usize;
    let mut s = 0x5EED_u64;
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..4000 {
        let mut b = full.clone();
        let flips = 1 + splitmix(&mut s) % 4;
        for _ in 0..flips {
            // Mostly the header, where the parser's decisions are.
            let r = splitmix(&mut s);
            let at = if r % 8 == 0 {
                (r >> 8) as usize % b.len()
            } else {
                (r >> 8) as usize % header_len
            };
            b[at] = (splitmix(&mut s) & 0xFF) as u8;
        }
        if splitmix(&mut s) % 10 == 0 {
            let cut = splitmix(&mut s) as usize % b.len();
            b.truncate(cut);
        }
        match GgufFile::parse_bytes(b, &GgufLimits::default()) {
            Ok(g) => {
                ok += 1;
                for t in &g.tensors {
                    assert_eq!(g.tensor_bytes(t).len() as u64, t.n_bytes);
                }
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.code(), "MODEL_LOAD_FAILED", "{e}");
                assert!(!e.message().is_empty());
            }
        }
    }
    println!("fuzz: {ok} accepted, {refused} refused");
    assert!(
        refused > 1000,
        "the fuzz loop should mostly hit errors, got {refused}"
    );
}

/// Committed fixtures: the valid one parses, every `bad-*.gguf` is refused.
/// Regenerate with `WORKER_ORCD_WRITE_FIXTURES=1 cargo test --test gguf_malformed fixtures`.
#[test]
fn fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf");
    if std::env::var_os("WORKER_ORCD_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        let good = base();
        std::fs::write(dir.join("tiny-valid.gguf"), &good).unwrap();
        std::fs::write(
            dir.join("bad-magic.gguf"),
            [b"GGML".as_slice(), &good[4..]].concat(),
        )
        .unwrap();
        std::fs::write(dir.join("bad-truncated.gguf"), &good[..good.len() / 2]).unwrap();
        let mut b = good.clone();
        let (.., off_at) = tensor_fields(&b, "t.second");
        put_u64(&mut b, off_at, 64);
        std::fs::write(dir.join("bad-overlap.gguf"), &b).unwrap();
        let mut b = good.clone();
        let (.., type_at, _) = tensor_fields(&b, "t.first");
        put_u32(&mut b, type_at, 10);
        std::fs::write(dir.join("bad-unsupported-type.gguf"), &b).unwrap();
    }
    let g = GgufFile::open(&dir.join("tiny-valid.gguf"), &GgufLimits::default()).unwrap();
    assert_eq!(g.tensors.len(), 3);
    let mut n_bad = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("bad-") {
            let err = GgufFile::open(&p, &GgufLimits::default()).unwrap_err();
            assert_eq!(err.code(), "MODEL_LOAD_FAILED", "{}", p.display());
            n_bad += 1;
        }
    }
    assert!(n_bad >= 4);
}
