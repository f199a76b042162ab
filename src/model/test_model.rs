//! Generated GGUF test models (issue 3 point 9): a [`TestModelSpec`] and
//! [`write_test_model`], used by the `make-model` command, the tests and the
//! BDD suite.
//!
//! Why: CI scenarios need tiny models, and the GPU machine, which cannot
//! download models, needs files of a real release's exact shape and quant mix
//! to measure speed (GUIDE §2). Weights come from SplitMix64 through integer
//! and IEEE f32 arithmetic only (no libm), so the same arguments give the same
//! bytes on every machine and thread count.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;
use crate::model::gguf_write::{add_test_tokenizer, GgufWriter, SpecialsAt};
use crate::model::quant;

/// Real releases whose exact shape and quant mix can be reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_05b,
    #[value(name = "qwen2.5-1.5b")]
    Qwen25_15b,
}

/// Everything that determines a generated model file.
#[derive(Debug, Clone, PartialEq)]
pub struct TestModelSpec {
    pub arch: String,
    pub name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub quant: String,
    pub seed: u64,
    pub tied_embeddings: bool,
    pub rope_base: f32,
    pub norm_eps: f32,
}

impl TestModelSpec {
    /// 2 layers, d=64, 4 heads / 2 KV heads, ffn 128, vocab 512, Q8_0 matrices.
    pub fn tiny_llama() -> Self {
        Self {
            arch: "llama".into(),
            name: "tiny-llama".into(),
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 128,
            vocab: 512,
            ctx: 256,
            quant: "q8_0".into(),
            seed: 1,
            tied_embeddings: true,
            rope_base: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    /// Same shape as [`Self::tiny_llama`], qwen2 (QKV biases, untied output),
    /// with the Q4_K_M rules (which fall back to Q5_0/Q8_0 at this width).
    pub fn tiny_qwen2() -> Self {
        Self {
            arch: "qwen2".into(),
            name: "tiny-qwen2".into(),
            quant: "q4_k_m".into(),
            tied_embeddings: false,
            rope_base: 1_000_000.0,
            norm_eps: 1e-6,
            ..Self::tiny_llama()
        }
    }

    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Smollm2_135m => Self {
                arch: "llama".into(),
                name: "smollm2-135m-like".into(),
                n_layers: 30,
                d_model: 576,
                n_heads: 9,
                n_kv_heads: 3,
                ffn: 1536,
                vocab: 49152,
                ctx: 8192,
                quant: "q4_1,token_embd=q8_0".into(),
                seed: 0,
                tied_embeddings: true,
                rope_base: 100_000.0,
                norm_eps: 1e-5,
            },
            Preset::Qwen25_05b => Self {
                arch: "qwen2".into(),
                name: "qwen2.5-0.5b-like".into(),
                n_layers: 24,
                d_model: 896,
                n_heads: 14,
                n_kv_heads: 2,
                ffn: 4864,
                vocab: 151_936,
                ctx: 32_768,
                // The real file's Q6_K/Q8_0 layers are not llama.cpp's
                // use_more_bits set, so they are listed as found in it.
                quant: "q4_k_m:0/1/3/6/7/8/9/10/13/16/19/21".into(),
                seed: 0,
                tied_embeddings: false,
                rope_base: 1_000_000.0,
                norm_eps: 1e-6,
            },
            Preset::Qwen25_15b => Self {
                name: "qwen2.5-1.5b-like".into(),
                n_layers: 28,
                d_model: 1536,
                n_heads: 12,
                ffn: 8960,
                // No file here to copy from: llama.cpp's rule, which gives
                // GUIDE §2's Q4_K x169 / Q6_K x29.
                quant: "q4_k_m".into(),
                ..Self::preset(Preset::Qwen25_05b)
            },
        }
    }
}

/// How tensors are typed.
#[derive(Debug, Clone, PartialEq)]
enum QuantMix {
    /// llama.cpp's Q4_K_M choice: Q4_K, with Q6_K for the output and for
    /// attn_v/ffn_down in the layers `use_more_bits` picks, or in the listed
    /// layers (`q4_k_m:0/1/3`) where a real file chose differently.
    Q4KM { more_bits: Option<Vec<usize>> },
    Uniform {
        default: GgmlType,
        overrides: Vec<(String, GgmlType)>,
    },
}

fn parse_type(s: &str) -> Result<GgmlType> {
    GgmlType::from_name(s.trim()).ok_or_else(|| {
        WorkerError::invalid(format!(
            "unknown tensor type '{s}'; supported: {}",
            GgmlType::supported_list()
        ))
    })
}

impl QuantMix {
    fn parse(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("q4_k_m") {
            return Ok(Self::Q4KM { more_bits: None });
        }
        if let Some(list) = s
            .strip_prefix("q4_k_m:")
            .or_else(|| s.strip_prefix("Q4_K_M:"))
        {
            let layers = list
                .split('/')
                .map(|l| l.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    WorkerError::invalid(format!("'{s}': expected q4_k_m:LAYER/LAYER/..."))
                })?;
            return Ok(Self::Q4KM {
                more_bits: Some(layers),
            });
        }
        let mut parts = s.split(',');
        let default = parse_type(parts.next().unwrap_or(""))?;
        let mut overrides = Vec::new();
        for p in parts {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                WorkerError::invalid(format!("quant override '{p}' is not NAME=TYPE"))
            })?;
            overrides.push((k.trim().to_string(), parse_type(v)?));
        }
        Ok(Self::Uniform { default, overrides })
    }

    /// The type for matrix `kind` ("attn_q", "token_embd", ...) in `layer`.
    fn pick(&self, kind: &str, layer: usize, n_layers: usize, row: usize) -> GgmlType {
        let want = match self {
            Self::Q4KM { more_bits } => {
                // llama.cpp's use_more_bits (the first test guards the subtraction).
                let more = match more_bits {
                    Some(list) => list.contains(&layer),
                    None => {
                        layer < n_layers / 8
                            || layer >= 7 * n_layers / 8
                            || (layer - n_layers / 8) % 3 == 2
                    }
                };
                match kind {
                    "output" => GgmlType::Q6K,
                    "attn_v" | "ffn_down" if more => GgmlType::Q6K,
                    _ => GgmlType::Q4K,
                }
            }
            Self::Uniform { default, overrides } => overrides
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(*default, |(_, t)| *t),
        };
        // llama.cpp's fallbacks when a row is not a whole number of super-blocks.
        if row % want.block_size() == 0 {
            return want;
        }
        match want {
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            _ => GgmlType::Q8_0,
        }
    }

    fn file_type(&self) -> u32 {
        match self {
            Self::Q4KM { .. } => 15,
            Self::Uniform { default, .. } => match default {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q4K => 15,
                GgmlType::Q5K => 17,
                GgmlType::Q6K => 18,
                GgmlType::BF16 => 32,
            },
        }
    }
}

/// SplitMix64: tiny, portable, and well mixed for seeding weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately standard normal: Irwin–Hall sum of four 16-bit uniforms,
    /// centred and scaled to unit variance. Exact in f32 on every machine.
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s: u32 = (0..4).map(|k| ((r >> (16 * k)) & 0xFFFF) as u32).sum();
        (s as f32 / 65536.0 - 2.0) * 1.732_050_8
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the tensor name, mixed with the model seed.
    let h = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Values of a tensor: `mean + std·N(0,1)`, generated and quantized in
/// fixed-size chunks with their own seeds so threads cannot change the bytes.
fn gen_tensor(
    seed: u64,
    name: &str,
    n: usize,
    mean: f32,
    std: f32,
    dtype: GgmlType,
) -> Result<Vec<u8>> {
    const CHUNK: usize = 1 << 16; // a multiple of every block size
    let base = name_seed(seed, name);
    let parts: Vec<Result<Vec<u8>>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let len = CHUNK.min(n - c * CHUNK);
            let mut rng = SplitMix64(base ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let vals: Vec<f32> = (0..len).map(|_| mean + std * rng.normal()).collect();
            let mut out = Vec::new();
            quant::quantize(dtype, &vals, &mut out)?;
            Ok(out)
        })
        .collect();
    let mut data = Vec::with_capacity(quant::row_bytes(dtype, n).unwrap_or(0));
    for p in parts {
        data.extend_from_slice(&p?);
    }
    Ok(data)
}

fn check_spec(s: &TestModelSpec) -> Result<()> {
    let bad = |m: String| Err(WorkerError::invalid(m));
    if s.arch != "llama" && s.arch != "qwen2" {
        return bad(format!(
            "architecture '{}' is not supported; supported: llama, qwen2",
            s.arch
        ));
    }
    let dims = [
        s.n_layers,
        s.d_model,
        s.n_heads,
        s.n_kv_heads,
        s.ffn,
        s.vocab,
        s.ctx,
    ];
    if dims.contains(&0) {
        return bad(format!("every size must be positive: {s:?}"));
    }
    if s.d_model % s.n_heads != 0 || (s.d_model / s.n_heads) % 2 != 0 {
        return bad(format!(
            "d_model {} must split into {} heads of even size",
            s.d_model, s.n_heads
        ));
    }
    if s.n_heads % s.n_kv_heads != 0 {
        return bad(format!(
            "heads {} must be a multiple of kv heads {}",
            s.n_heads, s.n_kv_heads
        ));
    }
    if s.vocab < 259 || s.vocab > u32::MAX as usize {
        return bad(format!(
            "vocab {} must be at least 259 (256 bytes + 3 specials)",
            s.vocab
        ));
    }
    Ok(())
}

/// One tensor to generate: values are `mean + std·N(0,1)`, stored as `dtype`.
struct Planned {
    name: String,
    /// ggml order: `dims[0]` is the row length.
    dims: Vec<usize>,
    dtype: GgmlType,
    mean: f32,
    std: f32,
}

/// Every tensor of the model, in file order, with its type from the mix.
fn tensor_plan(s: &TestModelSpec, mix: &QuantMix) -> Vec<Planned> {
    let kv_dim = s.d_model / s.n_heads * s.n_kv_heads;
    let mut plan = Vec::new();
    // A matrix typed by the mix, or (kind None) an f32 vector.
    let mut add =
        |name: String, dims: Vec<usize>, kind: Option<(&str, usize)>, mean: f32, std: f32| {
            let dtype = match kind {
                Some((k, layer)) => mix.pick(k, layer, s.n_layers, dims[0]),
                None => GgmlType::F32,
            };
            plan.push(Planned {
                name,
                dims,
                dtype,
                mean,
                std,
            });
        };
    let (d, std) = (s.d_model, 0.02);
    add(
        "token_embd.weight".into(),
        vec![d, s.vocab],
        Some(("token_embd", 0)),
        0.0,
        std,
    );
    if !s.tied_embeddings {
        add(
            "output.weight".into(),
            vec![d, s.vocab],
            Some(("output", 0)),
            0.0,
            std,
        );
    }
    for i in 0..s.n_layers {
        let b = |t: &str| format!("blk.{i}.{t}");
        add(b("attn_norm.weight"), vec![d], None, 1.0, 0.05);
        add(
            b("attn_q.weight"),
            vec![d, d],
            Some(("attn_q", i)),
            0.0,
            std,
        );
        add(
            b("attn_k.weight"),
            vec![d, kv_dim],
            Some(("attn_k", i)),
            0.0,
            std,
        );
        add(
            b("attn_v.weight"),
            vec![d, kv_dim],
            Some(("attn_v", i)),
            0.0,
            std,
        );
        if s.arch == "qwen2" {
            add(b("attn_q.bias"), vec![d], None, 0.0, std);
            add(b("attn_k.bias"), vec![kv_dim], None, 0.0, std);
            add(b("attn_v.bias"), vec![kv_dim], None, 0.0, std);
        }
        add(
            b("attn_output.weight"),
            vec![d, d],
            Some(("attn_output", i)),
            0.0,
            std,
        );
        add(b("ffn_norm.weight"), vec![d], None, 1.0, 0.05);
        add(
            b("ffn_gate.weight"),
            vec![d, s.ffn],
            Some(("ffn_gate", i)),
            0.0,
            std,
        );
        add(
            b("ffn_up.weight"),
            vec![d, s.ffn],
            Some(("ffn_up", i)),
            0.0,
            std,
        );
        add(
            b("ffn_down.weight"),
            vec![s.ffn, d],
            Some(("ffn_down", i)),
            0.0,
            std,
        );
    }
    add("output_norm.weight".into(), vec![d], None, 1.0, 0.05);
    plan
}

/// Write a GGUF model for `spec` to `path`.
pub fn write_test_model(spec: &TestModelSpec, path: &Path) -> Result<()> {
    check_spec(spec)?;
    let mix = QuantMix::parse(&spec.quant)?;
    let s = spec;
    let a = s.arch.as_str();
    let head_dim = s.d_model / s.n_heads;
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", a);
    w.add_str("general.name", &s.name);
    w.add_u32("general.file_type", mix.file_type());
    w.add_u32("general.quantization_version", 2);
    let u = |v: usize| v as u32;
    w.add_u32(&format!("{a}.block_count"), u(s.n_layers));
    w.add_u32(&format!("{a}.context_length"), u(s.ctx));
    w.add_u32(&format!("{a}.embedding_length"), u(s.d_model));
    w.add_u32(&format!("{a}.feed_forward_length"), u(s.ffn));
    w.add_u32(&format!("{a}.attention.head_count"), u(s.n_heads));
    w.add_u32(&format!("{a}.attention.head_count_kv"), u(s.n_kv_heads));
    w.add_f32(&format!("{a}.attention.layer_norm_rms_epsilon"), s.norm_eps);
    w.add_f32(&format!("{a}.rope.freq_base"), s.rope_base);
    if a == "llama" {
        w.add_u32("llama.rope.dimension_count", u(head_dim));
        w.add_u32("llama.vocab_size", u(s.vocab));
    }
    let (pre, specials) = if a == "qwen2" {
        ("qwen2", SpecialsAt::From(151_643))
    } else {
        ("smollm", SpecialsAt::Start)
    };
    add_test_tokenizer(&mut w, u(s.vocab), pre, specials)?;

    for t in tensor_plan(s, &mix) {
        let n = t.dims.iter().product::<usize>();
        let data = gen_tensor(s.seed, &t.name, n, t.mean, t.std, t.dtype)?;
        let dims: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
        w.add_tensor_bytes(&t.name, &dims, t.dtype, data)?;
    }
    w.write(path)
}

#[cfg(test)]
#[path = "test_model_tests.rs"]
mod tests;
