//! CPU engine, architecture and tokenizer checks on tiny generated models
//! (the make-model generator), so they run in every build without real files.

use super::CpuEngine;
use crate::engine::{sampler, Engine, LoadOptions};
use crate::model::arch::{self, Arch, RopeStyle};
use crate::model::gguf::{GgufFile, GgufLimits, MetaValue};
use crate::model::gguf_write::GgufWriter;
use crate::model::test_model::{write_test_model, TestModelSpec};
use crate::model::tokenizer::Tokenizer;

fn open(spec: &TestModelSpec) -> GgufFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    write_test_model(spec, &path).expect("write test model");
    GgufFile::open(&path, &GgufLimits::default()).expect("open test model")
}

fn opts(max_context: usize) -> LoadOptions {
    LoadOptions {
        max_context,
        kv_pool_tokens: 0,
        max_sequences: 1,
        gpu_device: 0,
        threads: 2,
    }
}

#[test]
fn architectures_read_their_hyperparameters() {
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("llama");
    assert_eq!(
        (c.arch, c.rope_style, c.tied_output, c.qkv_bias),
        (Arch::Llama, RopeStyle::Norm, true, false)
    );
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.vocab_size
        ),
        (2, 64, 4, 2, 16, 512)
    );
    assert_eq!(w.output, w.token_embd);
    let g = open(&TestModelSpec::tiny_qwen2());
    let (c, w) = arch::from_gguf(&g).expect("qwen2");
    assert_eq!(
        (c.arch, c.rope_style, c.tied_output, c.qkv_bias),
        (Arch::Qwen2, RopeStyle::Neox, false, true)
    );
    assert!(w
        .layers
        .iter()
        .all(|l| l.bq.is_some() && l.bk.is_some() && l.bv.is_some()));
    assert_eq!(c.rope_base, 1_000_000.0);
}

#[test]
fn unknown_architecture_is_refused_with_the_supported_list() {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "mamba");
    let g =
        GgufFile::parse_bytes(w.to_bytes().expect("bytes"), &GgufLimits::default()).expect("parse");
    let e = arch::from_gguf(&g).unwrap_err();
    assert_eq!(e.code(), "MODEL_LOAD_FAILED");
    assert!(
        e.message().contains("mamba") && e.message().contains("llama, qwen2"),
        "{}",
        e.message()
    );
}

#[test]
fn inconsistent_shapes_are_refused() {
    let mut g = open(&TestModelSpec::tiny_llama());
    g.metadata
        .insert("llama.feed_forward_length".into(), MetaValue::U32(96));
    let e = arch::from_gguf(&g).unwrap_err();
    assert_eq!(e.code(), "MODEL_LOAD_FAILED");
    assert!(e.message().contains("ffn_"), "{}", e.message());
    let mut g = open(&TestModelSpec::tiny_llama());
    g.metadata
        .insert("llama.attention.head_count_kv".into(), MetaValue::U32(3));
    assert_eq!(arch::from_gguf(&g).unwrap_err().code(), "MODEL_LOAD_FAILED");
}

#[test]
fn tokenizer_parses_specials_only_when_asked_and_round_trips() {
    let g = open(&TestModelSpec::tiny_llama());
    let t = Tokenizer::from_gguf(&g).expect("tokenizer");
    let text = "Hello world, 42 times!";
    let ids = t.encode(text, false).expect("encode");
    assert!(!ids.is_empty());
    assert_eq!(t.decode(&ids).expect("decode"), text);
    let with = t.encode("<|im_start|>user", true).expect("encode");
    let without = t.encode("<|im_start|>user", false).expect("encode");
    assert!(with.len() < without.len(), "{with:?} vs {without:?}");
    assert_eq!(t.decode(&with).expect("decode"), "<|im_start|>user");
    assert_eq!(
        t.encode("a\0b", false).unwrap_err().code(),
        "INVALID_PARAMS"
    );
    assert_eq!(t.decode(&[u32::MAX]).unwrap_err().code(), "INVALID_PARAMS");
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let g = open(&TestModelSpec::tiny_llama());
    let t = Tokenizer::from_gguf(&g).expect("tokenizer");
    // "é" is two bytes; the byte-level vocabulary has one token per byte.
    let ids = t.encode("é", false).expect("encode");
    assert_eq!(
        ids.len(),
        2,
        "the test needs a character split across tokens"
    );
    let mut s = t.stream();
    let mut out = String::new();
    for &id in &ids {
        let part = s.push(id).expect("push");
        assert!(!part.contains('\u{FFFD}'));
        out.push_str(&part);
    }
    out.push_str(&s.finish());
    assert_eq!(out, "é");
}

#[test]
fn batch_and_incremental_decoding_give_identical_logits() {
    for spec in [TestModelSpec::tiny_llama(), TestModelSpec::tiny_qwen2()] {
        let g = open(&spec);
        let (c, w) = arch::from_gguf(&g).expect("arch");
        let mut e = CpuEngine::load(&g, &c, &w, &opts(64)).expect("load");
        let toks = [3u32, 17, 200, 5, 99];
        let all = e.forward_all(&toks, 0).expect("batch");
        e.reset();
        for (i, &t) in toks.iter().enumerate() {
            e.forward(&[t], i).expect("step");
            assert_eq!(
                e.logits().expect("logits"),
                all[i],
                "{} position {i}",
                spec.arch
            );
        }
        assert!(all[4].iter().all(|v| v.is_finite()));
        let _ = sampler::argmax(&all[4]);
    }
}

/// The edge cases every backend holds the same way (the CUDA engine runs the
/// same body in engine::cuda::tests).
#[test]
fn engine_edge_cases_are_the_shared_contract() {
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("arch");
    let mut e = CpuEngine::load(&g, &c, &w, &opts(8)).expect("load");
    let mut bad = crate::engine::conformance::edge_cases(&mut e);
    bad.extend(crate::engine::conformance::batched_contract(&mut e));
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Batch invariance on the CPU: the body the CUDA engine runs too.
#[test]
fn batched_steps_give_each_sequence_its_solo_logits() {
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("arch");
    let mut o = opts(64);
    o.kv_pool_tokens = 8 * 64;
    let mut e = CpuEngine::load(&g, &c, &w, &o).expect("load");
    let bad = crate::engine::conformance::batch_invariance(&mut e, 8, 5);
    assert!(bad.is_empty(), "{bad:#?}");
    let bad = crate::engine::conformance::prefetch_samples_match(&mut e, 8);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn bad_tokens_and_positions_are_invalid_params() {
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("arch");
    let mut e = CpuEngine::load(&g, &c, &w, &opts(8)).expect("load");
    assert_eq!(e.forward(&[512], 0).unwrap_err().code(), "INVALID_PARAMS");
    assert_eq!(e.forward(&[1], 3).unwrap_err().code(), "INVALID_PARAMS");
    assert_eq!(e.forward(&[], 0).unwrap_err().code(), "INVALID_PARAMS");
    assert_eq!(e.forward(&[1; 9], 0).unwrap_err().code(), "INVALID_PARAMS");
    e.forward(&[1; 8], 0).expect("exactly the context fits");
    assert_eq!(e.forward(&[1], 8).unwrap_err().code(), "INVALID_PARAMS");
    e.reset();
    e.forward(&[1], 0).expect("usable after errors and reset");
}

#[test]
fn digest_covers_the_resident_bytes() {
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("arch");
    let mut e = CpuEngine::load(&g, &c, &w, &opts(8)).expect("load");
    let d = e.resident_digest().expect("digest");
    assert_eq!(d, crate::shard::digest::resident_digest(g.data_section()));
    assert_eq!(e.memory().weights_bytes, g.data_section().len() as u64);
}

#[cfg(feature = "test-hooks")]
#[test]
fn injected_faults_are_detected() {
    use crate::engine::Fault;
    let g = open(&TestModelSpec::tiny_llama());
    let (c, w) = arch::from_gguf(&g).expect("arch");
    let mut e = CpuEngine::load(&g, &c, &w, &opts(8)).expect("load");
    let before = e.resident_digest().expect("digest");
    e.inject_fault(Fault::FlipResidentByte { offset: 100 })
        .expect("flip");
    assert_ne!(e.resident_digest().expect("digest"), before);
    e.inject_fault(Fault::FlipResidentByte { offset: 100 })
        .expect("flip back");
    assert_eq!(e.resident_digest().expect("digest"), before);
    assert_eq!(
        e.inject_fault(Fault::FlipResidentByte { offset: u64::MAX })
            .unwrap_err()
            .code(),
        "INVALID_PARAMS"
    );
    e.inject_fault(Fault::DeviceError).expect("arm");
    assert_eq!(e.forward(&[1], 0).unwrap_err().code(), "CUDA_ERROR");
    e.forward(&[1], 0).expect("one-shot fault");
}

#[test]
fn kv_cache_larger_than_host_memory_is_host_oom_not_a_kill() {
    // 64 layers × 16M tokens × 64 KV floats × 2 × 4 bytes ≈ 550 GB of KV cache,
    // beyond any test machine: the load must refuse with HOST_OOM before
    // reserving anything (an overcommitted reservation would be OOM-killed).
    let mut spec = TestModelSpec::tiny_llama();
    spec.n_layers = 64;
    spec.n_kv_heads = spec.n_heads;
    spec.ctx = 16_000_000;
    let g = open(&spec);
    let (c, w) = arch::from_gguf(&g).expect("llama");
    let err = match CpuEngine::load(&g, &c, &w, &opts(16_000_000)) {
        Ok(_) => panic!("a 550 GB KV cache must be refused"),
        Err(e) => e,
    };
    assert_eq!(err.code(), "HOST_OOM", "{err}");
    assert!(err.to_string().contains("max_context"), "{err}");
}
