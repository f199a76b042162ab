//! Generated test models: determinism, shapes, presets against the real files, bad specs.

use super::*;
use crate::model::gguf::{GgufFile, GgufLimits};

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.gguf"),
        dir.path().join("b.gguf"),
        dir.path().join("c.gguf"),
    );
    let spec = TestModelSpec::tiny_qwen2();
    write_test_model(&spec, &a).unwrap();
    write_test_model(&spec, &b).unwrap();
    write_test_model(&TestModelSpec { seed: 2, ..spec }, &c).unwrap();
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), c.len());
}

#[test]
fn bytes_do_not_depend_on_thread_count() {
    // vocab 2048 x d 64 spans two generation chunks.
    let spec = TestModelSpec {
        vocab: 2048,
        ..TestModelSpec::tiny_llama()
    };
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.gguf");
    let many = dir.path().join("many.gguf");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| write_test_model(&spec, &one)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| write_test_model(&spec, &many)).unwrap();
    assert_eq!(std::fs::read(one).unwrap(), std::fs::read(many).unwrap());
}

#[test]
fn tiny_models_parse_with_expected_shapes_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [TestModelSpec::tiny_llama(), TestModelSpec::tiny_qwen2()] {
        let p = dir.path().join("m.gguf");
        write_test_model(&spec, &p).unwrap();
        let g = GgufFile::open(&p, &GgufLimits::default()).unwrap();
        let a = spec.arch.as_str();
        assert_eq!(g.get_str("general.architecture"), Some(a));
        assert_eq!(g.get_u32(&format!("{a}.embedding_length")), Some(64));
        let toks = g.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(toks.len(), 512);
        let eos = g.get_u32("tokenizer.ggml.eos_token_id").unwrap() as usize;
        assert_eq!(toks[eos], "<|im_end|>");
        let merges = g.get_str_array("tokenizer.ggml.merges").unwrap();
        assert!(merges.len() > 100, "{} merges", merges.len());
        let uniq: std::collections::BTreeSet<_> = toks.iter().collect();
        assert_eq!(uniq.len(), toks.len(), "token strings must be unique");
        assert_eq!(g.tensor("output.weight").is_some(), !spec.tied_embeddings);
        assert_eq!(g.tensor("blk.1.attn_q.bias").is_some(), a == "qwen2");
        let k = g.tensor("blk.0.attn_k.weight").unwrap();
        assert_eq!(k.dims, vec![64, 32]);
        // Norm weights come out near 1, matrices near std 0.02.
        let norm = g.tensor("blk.0.attn_norm.weight").unwrap();
        let mut v = vec![0f32; 64];
        quant::dequantize(norm.dtype, g.tensor_bytes(norm), &mut v).unwrap();
        assert!(v.iter().all(|x| (0.7..1.3).contains(x)), "{v:?}");
        let q = g.tensor("blk.0.attn_q.weight").unwrap();
        let mut v = vec![0f32; 64 * 64];
        quant::dequantize(q.dtype, g.tensor_bytes(q), &mut v).unwrap();
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        assert!((0.00025..0.0006).contains(&var), "variance {var}");
    }
}

/// The reference architecture loader and tokenizer accept generated models.
#[test]
fn generated_models_load_as_architecture_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [TestModelSpec::tiny_llama(), TestModelSpec::tiny_qwen2()] {
        let p = dir.path().join("m.gguf");
        write_test_model(&spec, &p).unwrap();
        let g = GgufFile::open(&p, &GgufLimits::default()).unwrap();
        crate::model::arch::from_gguf(&g).unwrap();
        let tok = crate::model::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        let text = "The capital of France is Paris.";
        let ids = tok.encode(text, false).unwrap();
        assert!(
            ids.len() < text.len(),
            "merges should shorten the text: {ids:?}"
        );
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let chat = tok.encode("<|im_start|>user", true).unwrap();
        let im_start = g
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .iter()
            .position(|t| *t == "<|im_start|>");
        assert_eq!(chat.first().map(|&i| i as usize), im_start);
    }
}

/// The preset's tensor names, shapes and types equal the real file's (the
/// build ignores the calling test when the file is absent: build.rs).
fn preset_matches_the_real_file(p: Preset, file: &str) {
    let dir = std::env::var_os("WORKER_ORCD_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    {
        let path = dir.join(file);
        assert!(
            path.exists(),
            "{} absent (set WORKER_ORCD_TEST_MODELS and rebuild)",
            path.display()
        );
        let g = GgufFile::open(&path, &GgufLimits::default()).unwrap();
        let spec = TestModelSpec::preset(p);
        let mut real: Vec<_> = g
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.dtype))
            .collect();
        let mix = QuantMix::parse(&spec.quant).unwrap();
        let mut ours: Vec<_> = tensor_plan(&spec, &mix)
            .into_iter()
            .map(|t| {
                (
                    t.name,
                    t.dims.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                    t.dtype,
                )
            })
            .collect();
        real.sort_by(|a, b| a.0.cmp(&b.0));
        ours.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ours, real, "{file}");
        let a = spec.arch.as_str();
        for key in [
            "block_count",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "context_length",
        ] {
            let k = format!("{a}.{key}");
            let want = g.get_u32(&k).unwrap() as usize;
            let got = match key {
                "block_count" => spec.n_layers,
                "embedding_length" => spec.d_model,
                "feed_forward_length" => spec.ffn,
                "attention.head_count" => spec.n_heads,
                "attention.head_count_kv" => spec.n_kv_heads,
                _ => spec.ctx,
            };
            assert_eq!(got, want, "{file} {k}");
        }
        assert_eq!(
            Some(spec.rope_base),
            g.get_f32(&format!("{a}.rope.freq_base"))
        );
        assert_eq!(
            Some(spec.norm_eps),
            g.get_f32(&format!("{a}.attention.layer_norm_rms_epsilon"))
        );
        assert_eq!(
            Some(spec.vocab),
            g.get_str_array("tokenizer.ggml.tokens").map(|t| t.len())
        );
    }
}

#[test]
#[cfg_attr(
    not(test_model_smollm2),
    ignore = "SmolLM2-135M-Instruct.Q4_1.gguf is not in WORKER_ORCD_TEST_MODELS (ci/fetch-models.sh)"
)]
fn smollm2_preset_matches_the_real_file_tensor_for_tensor() {
    preset_matches_the_real_file(Preset::Smollm2_135m, "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
#[cfg_attr(
    not(test_model_qwen),
    ignore = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf is not in WORKER_ORCD_TEST_MODELS"
)]
fn qwen_preset_matches_the_real_file_tensor_for_tensor() {
    preset_matches_the_real_file(
        Preset::Qwen25_05b,
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
}

#[test]
fn q4_k_m_rules_reproduce_the_real_qwen_mix() {
    let s = TestModelSpec::preset(Preset::Qwen25_05b);
    let mix = QuantMix::parse(&s.quant).unwrap();
    let mut count = std::collections::BTreeMap::new();
    let kinds = [
        ("attn_q", 896),
        ("attn_k", 896),
        ("attn_v", 896),
        ("attn_output", 896),
        ("ffn_gate", 896),
        ("ffn_up", 896),
        ("ffn_down", 4864),
    ];
    for i in 0..s.n_layers {
        for (k, row) in kinds {
            *count
                .entry(mix.pick(k, i, s.n_layers, row).name())
                .or_insert(0) += 1;
        }
    }
    for k in ["token_embd", "output"] {
        *count
            .entry(mix.pick(k, 0, s.n_layers, 896).name())
            .or_insert(0) += 1;
    }
    // GUIDE §2: Q5_0 x133, Q8_0 x13, Q6_K x12, Q4_K x12.
    let want: std::collections::BTreeMap<_, _> =
        [("q5_0", 133), ("q8_0", 13), ("q6_K", 12), ("q4_K", 12)]
            .into_iter()
            .collect();
    assert_eq!(count, want);
    // And the 1.5B: Q4_K x169, Q6_K x29.
    let s = TestModelSpec::preset(Preset::Qwen25_15b);
    let mix = QuantMix::parse(&s.quant).unwrap();
    let mut count = std::collections::BTreeMap::new();
    for i in 0..s.n_layers {
        for (k, _) in kinds {
            *count
                .entry(mix.pick(k, i, s.n_layers, 1536).name())
                .or_insert(0) += 1;
        }
    }
    for k in ["token_embd", "output"] {
        *count
            .entry(mix.pick(k, 0, s.n_layers, 1536).name())
            .or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<_, _> =
        [("q6_K", 29), ("q4_K", 169)].into_iter().collect();
    assert_eq!(count, want);
}

#[test]
fn bad_specs_are_refused() {
    let t = TestModelSpec::tiny_llama;
    for s in [
        TestModelSpec {
            arch: "gpt9".into(),
            ..t()
        },
        TestModelSpec { n_heads: 3, ..t() },
        TestModelSpec {
            n_kv_heads: 3,
            ..t()
        },
        TestModelSpec { vocab: 100, ..t() },
        TestModelSpec {
            quant: "q2_K".into(),
            ..t()
        },
        TestModelSpec {
            d_model: 48,
            n_heads: 4,
            ..t()
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            write_test_model(&s, &dir.path().join("x.gguf")).is_err(),
            "{s:?}"
        );
    }
}
