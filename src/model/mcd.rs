//! Model Capability Descriptor (MCD) and Engine Capability Profile (ECP), and
//! the deterministic check MCD ⊆ ECP that Plan runs before accepting a model
//! (WORKER-4600–4603, 4610–4613, 4620–4623).
//!
//! The MCD says what a model needs: its positional encoding, attention kind,
//! tensor quantization types, trained context and vocabulary size. It is
//! derived from GGUF metadata, and a sidecar `<model>.mcd.json` may override
//! any field; where the two disagree the sidecar wins and each disagreement is
//! reported (4602).
//!
//! The ECP says what this worker can do. It is computed from what the backend
//! reports ([`BackendCaps`]), never from a list kept here (4613), plus the
//! KV-cache capacity and device memory.
//!
//! Context: a model trained for a longer context than the worker's
//! `max_context` is *not* refused — the worker serves a shorter context (its
//! KV cache), which is always safe for these architectures. A `max_context` of
//! 0 or a `vocab_size` of 0 is refused.

use crate::error::{Result, WorkerError};
use crate::model::gguf::{GgmlType, GgufHeader};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest sidecar file read.
const MAX_SIDECAR_BYTES: u64 = 64 * 1024;
/// Longest model_id kept.
const MAX_MODEL_ID_LEN: usize = 256;

/// What a model needs (WORKER-4601).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mcd {
    pub model_id: String,
    /// "rope_norm", "rope_neox", "learned", "alibi" or "unknown".
    pub positional: String,
    /// "mha" or "gqa".
    pub attention: String,
    /// Distinct ggml type names of the model's tensors, sorted.
    pub quant: Vec<String>,
    /// Trained context length in tokens.
    pub context_max: u64,
    pub vocab_size: u64,
}

/// A sidecar may set any subset of the MCD fields; unknown keys are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    model_id: Option<String>,
    positional: Option<String>,
    attention: Option<String>,
    quant: Option<Vec<String>>,
    context_max: Option<u64>,
    vocab_size: Option<u64>,
}

/// Positional encoding of a GGUF architecture, as llama.cpp applies it.
pub fn positional_for_arch(arch: &str) -> &'static str {
    match arch {
        "llama" | "mistral" | "granite" | "deepseek" | "deepseek2" | "baichuan" | "internlm2"
        | "minicpm" => "rope_norm",
        "qwen" | "qwen2" | "qwen2moe" | "qwen3" | "qwen3moe" | "phi2" | "phi3" | "gemma"
        | "gemma2" | "gemma3" | "stablelm" | "gptneox" | "falcon" | "starcoder2" | "olmo2"
        | "codeshell" => "rope_neox",
        "gpt2" | "starcoder" => "learned",
        "bloom" | "mpt" => "alibi",
        _ => "unknown",
    }
}

/// MCD name of an engine's rotary style, so a backend can report the
/// positional encodings it implements from its own architecture code.
pub fn rope_style_name(style: crate::model::arch::RopeStyle) -> &'static str {
    match style {
        crate::model::arch::RopeStyle::Norm => "rope_norm",
        crate::model::arch::RopeStyle::Neox => "rope_neox",
    }
}

/// Attention kind from head counts: grouped-query when K/V heads are fewer.
pub fn attention_kind(heads: u64, kv_heads: u64) -> &'static str {
    if kv_heads < heads {
        "gqa"
    } else {
        "mha"
    }
}

/// The sidecar of a model file, when one exists: `<file>.mcd.json`
/// (`m.gguf.mcd.json`), else `<stem>.mcd.json` (`m.mcd.json`).
pub fn sidecar_for(model_path: &Path) -> Option<PathBuf> {
    let mut full = model_path.file_name()?.to_os_string();
    full.push(".mcd.json");
    let mut candidates = vec![model_path.with_file_name(full)];
    if let Some(stem) = model_path.file_stem() {
        let mut s = stem.to_os_string();
        s.push(".mcd.json");
        candidates.push(model_path.with_file_name(s));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn fail(msg: impl Into<String>) -> WorkerError {
    WorkerError::model_load(msg)
}

impl Mcd {
    /// The MCD of a parsed GGUF, overridden by `sidecar` when given.
    /// Disagreements are logged; use [`Mcd::derive`] to get them as data.
    pub fn from_gguf(g: &GgufHeader, sidecar: Option<&Path>) -> Result<Mcd> {
        let (mcd, disagreements) = Self::derive(g, None, sidecar)?;
        for d in &disagreements {
            tracing::warn!(
                human = %format!("The model's sidecar MCD disagrees with its GGUF metadata; the sidecar wins: {d}."),
                model_id = %mcd.model_id,
            );
        }
        Ok(mcd)
    }

    /// The MCD and the list of sidecar/GGUF disagreements (WORKER-4602).
    /// `model_path` supplies the file stem as model_id when `general.name` is
    /// absent (else the first 12 hex digits of the file's SHA-256 are used).
    pub fn derive(
        g: &GgufHeader,
        model_path: Option<&Path>,
        sidecar: Option<&Path>,
    ) -> Result<(Mcd, Vec<String>)> {
        let derived = Self::from_metadata(g, model_path)?;
        let Some(path) = sidecar else {
            derived.validate()?;
            return Ok((derived, Vec::new()));
        };
        let side = read_sidecar(path)?;
        let (mcd, disagreements) = derived.overlay(side);
        mcd.validate()?;
        Ok((mcd, disagreements))
    }

    /// The MCD from GGUF metadata alone (not yet validated).
    pub fn from_metadata(g: &GgufHeader, model_path: Option<&Path>) -> Result<Mcd> {
        let arch = g
            .get_str("general.architecture")
            .ok_or_else(|| {
                fail("the GGUF file has no general.architecture; cannot tell what the model needs")
            })?
            .to_string();
        let model_id = g
            .get_str("general.name")
            .map(str::to_string)
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                model_path
                    .and_then(|p| p.file_stem())
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(&g.file_sha256[..6])));
        let model_id: String = model_id.chars().take(MAX_MODEL_ID_LEN).collect();

        let heads = g.get_u64(&format!("{arch}.attention.head_count")).ok_or_else(|| {
            fail(format!("the GGUF file has no {arch}.attention.head_count; cannot tell the attention kind"))
        })?;
        let kv_heads = g
            .get_u64(&format!("{arch}.attention.head_count_kv"))
            .unwrap_or(heads);
        let context_max = g
            .get_u64(&format!("{arch}.context_length"))
            .ok_or_else(|| fail(format!("the GGUF file has no {arch}.context_length")))?;
        let vocab_size = g
            .get_u64(&format!("{arch}.vocab_size"))
            .or_else(|| g.get_array("tokenizer.ggml.tokens").map(|a| a.len() as u64))
            .or_else(|| {
                g.tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
            })
            .unwrap_or(0);

        let mut quant: Vec<String> = g
            .tensors
            .iter()
            .map(|t| t.dtype.name().to_string())
            .collect();
        quant.sort();
        quant.dedup();

        Ok(Mcd {
            model_id,
            positional: positional_for_arch(&arch).to_string(),
            attention: attention_kind(heads, kv_heads).to_string(),
            quant,
            context_max,
            vocab_size,
        })
    }

    fn overlay(mut self, s: Sidecar) -> (Mcd, Vec<String>) {
        let mut diffs = Vec::new();
        fn take<T: PartialEq + std::fmt::Debug>(
            field: &str,
            ours: &mut T,
            theirs: Option<T>,
            diffs: &mut Vec<String>,
        ) {
            if let Some(v) = theirs {
                if *ours != v {
                    diffs.push(format!(
                        "{field}: sidecar says {v:?}, GGUF metadata says {ours:?}"
                    ));
                    *ours = v;
                }
            }
        }
        take("model_id", &mut self.model_id, s.model_id, &mut diffs);
        take("positional", &mut self.positional, s.positional, &mut diffs);
        take("attention", &mut self.attention, s.attention, &mut diffs);
        let quant = s.quant.map(|mut q| {
            q.sort();
            q.dedup();
            q
        });
        take("quant", &mut self.quant, quant, &mut diffs);
        take(
            "context_max",
            &mut self.context_max,
            s.context_max,
            &mut diffs,
        );
        take("vocab_size", &mut self.vocab_size, s.vocab_size, &mut diffs);
        (self, diffs)
    }

    /// Refuse an MCD that cannot describe a servable model (WORKER-4603).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(fail(format!(
                "the model's capability descriptor (MCD) is invalid: {what}"
            )))
        };
        if self.model_id.trim().is_empty() || self.model_id.len() > MAX_MODEL_ID_LEN {
            return bad("model_id must be 1 to 256 bytes");
        }
        if self.positional.is_empty() || self.attention.is_empty() {
            return bad("positional and attention must be named");
        }
        if self.quant.is_empty() {
            return bad("quant lists no tensor type (the model has no tensors?)");
        }
        if self.context_max == 0 {
            return bad("context_max is 0");
        }
        if self.vocab_size == 0 {
            return bad(
                "vocab_size is 0 (no vocab_size key, tokenizer or token_embd.weight found)",
            );
        }
        Ok(())
    }
}

fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read MCD sidecar {shown}: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_SIDECAR_BYTES {
        return Err(fail(format!(
            "MCD sidecar {shown} must be a JSON file of at most {MAX_SIDECAR_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read MCD sidecar {shown}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "MCD sidecar {shown} is invalid: {e}; accepted keys: model_id, positional, attention, quant, context_max, vocab_size"
        ))
    })
}

/// What a backend reports it can compute; the daemon fills it from the engine
/// (e.g. `crate::engine::cuda::supported_quant()`), so the ECP reflects the
/// real build and device (WORKER-4613).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackendCaps {
    pub positional: Vec<String>,
    pub attention: Vec<String>,
    pub quant: Vec<GgmlType>,
}

/// What this worker can serve (WORKER-4611).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ecp {
    pub worker_id: String,
    pub supports_positional: Vec<String>,
    pub supports_attention: Vec<String>,
    /// ggml type names, sorted.
    pub supports_quant: Vec<String>,
    /// KV-cache capacity in tokens.
    pub max_context: u64,
    /// Device memory (VRAM, or host memory on the reference path) in bytes.
    pub vram_bytes: u64,
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

impl Ecp {
    pub fn new(
        worker_id: &str,
        backend_caps: &BackendCaps,
        max_context: u64,
        vram_bytes: u64,
    ) -> Ecp {
        Ecp {
            worker_id: worker_id.to_string(),
            supports_positional: sorted_unique(backend_caps.positional.clone()),
            supports_attention: sorted_unique(backend_caps.attention.clone()),
            supports_quant: sorted_unique(
                backend_caps
                    .quant
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect(),
            ),
            max_context,
            vram_bytes,
        }
    }
}

/// MCD ⊆ ECP (WORKER-4620–4623). Deterministic: every missing capability is
/// listed, in a fixed order, with what the worker supports; nothing falls back.
pub fn check(mcd: &Mcd, ecp: &Ecp) -> Result<()> {
    let mut missing = Vec::new();
    if ecp.max_context == 0 {
        missing.push("the worker's max_context is 0, so it cannot hold any token".to_string());
    }
    if mcd.vocab_size == 0 {
        missing.push("the model's vocab_size is 0".to_string());
    }
    if !ecp.supports_positional.contains(&mcd.positional) {
        missing.push(format!(
            "positional encoding {:?} (supported: {})",
            mcd.positional,
            list(&ecp.supports_positional)
        ));
    }
    if !ecp.supports_attention.contains(&mcd.attention) {
        missing.push(format!(
            "attention {:?} (supported: {})",
            mcd.attention,
            list(&ecp.supports_attention)
        ));
    }
    let mut quant: Vec<&String> = mcd
        .quant
        .iter()
        .filter(|q| !ecp.supports_quant.contains(q))
        .collect();
    quant.sort();
    quant.dedup();
    if !quant.is_empty() {
        let names: Vec<&str> = quant.iter().map(|s| s.as_str()).collect();
        missing.push(format!(
            "tensor types {} (supported: {})",
            names.join(", "),
            list(&ecp.supports_quant)
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(WorkerError::CapabilityMismatch {
        message: format!(
            "worker {} cannot serve model {:?}: it needs {}. Use a build or model that matches, or convert the model.",
            ecp.worker_id,
            mcd.model_id,
            missing.join("; ")
        ),
    })
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::{GgufFile, GgufLimits, MetaValue};
    use crate::model::gguf_write::GgufWriter;

    /// A tiny GGUF: one f32 norm, one Q8_0 matrix, and the given metadata.
    fn gguf(arch: &str, heads: u32, kv: u32, name: Option<&str>, vocab_key: bool) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", arch);
        if let Some(n) = name {
            w.add_str("general.name", n);
        }
        w.add_u32(&format!("{arch}.attention.head_count"), heads);
        w.add_u32(&format!("{arch}.attention.head_count_kv"), kv);
        w.add_u32(&format!("{arch}.context_length"), 8192);
        if vocab_key {
            w.add_u32(&format!("{arch}.vocab_size"), 49152);
        } else {
            let toks = (0..7).map(|i| MetaValue::String(format!("t{i}"))).collect();
            w.add_meta("tokenizer.ggml.tokens", MetaValue::Array(toks));
        }
        w.add_tensor_bytes("output_norm.weight", &[4, 2], GgmlType::F32, vec![0u8; 32])
            .unwrap();
        w.add_tensor_bytes(
            "blk.0.attn_q.weight",
            &[32, 2],
            GgmlType::Q8_0,
            vec![0u8; 68],
        )
        .unwrap();
        w.add_tensor_bytes(
            "blk.0.attn_k.weight",
            &[32, 1],
            GgmlType::Q8_0,
            vec![0u8; 34],
        )
        .unwrap();
        GgufFile::parse_bytes(w.to_bytes().unwrap(), &GgufLimits::default()).unwrap()
    }

    fn caps(quant: &[GgmlType]) -> BackendCaps {
        BackendCaps {
            positional: vec!["rope_neox".into(), "rope_norm".into()],
            attention: vec!["mha".into(), "gqa".into()],
            quant: quant.to_vec(),
        }
    }

    #[test]
    fn derived_from_llama_and_qwen2_metadata() {
        let m = Mcd::from_gguf(&gguf("llama", 9, 3, Some("SmolLM2-135M"), true), None).unwrap();
        assert_eq!(m.model_id, "SmolLM2-135M");
        assert_eq!(m.positional, "rope_norm");
        assert_eq!(m.attention, "gqa");
        assert_eq!(m.quant, vec!["f32".to_string(), "q8_0".to_string()]);
        assert_eq!((m.context_max, m.vocab_size), (8192, 49152));

        let q = Mcd::from_gguf(&gguf("qwen2", 14, 14, None, false), None).unwrap();
        assert_eq!(q.positional, "rope_neox");
        assert_eq!(q.attention, "mha");
        assert_eq!(q.vocab_size, 7, "falls back to the tokenizer's token count");
        assert!(q.model_id.starts_with("sha256:"), "{}", q.model_id);
        let (named, _) = Mcd::derive(
            &gguf("qwen2", 14, 2, None, true),
            Some(Path::new("/m/qwen-0.5b.gguf")),
            None,
        )
        .unwrap();
        assert_eq!(named.model_id, "qwen-0.5b");
    }

    #[test]
    fn missing_architecture_is_a_load_error() {
        let mut w = GgufWriter::new();
        w.add_tensor_bytes("x", &[4, 2], GgmlType::F32, vec![0u8; 32])
            .unwrap();
        let g = GgufFile::parse_bytes(w.to_bytes().unwrap(), &GgufLimits::default()).unwrap();
        let e = Mcd::from_gguf(&g, None).unwrap_err();
        assert_eq!(e.code(), "MODEL_LOAD_FAILED");
        assert!(e.message().contains("general.architecture"), "{e}");
    }

    #[test]
    fn sidecar_wins_and_disagreements_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("m.gguf.mcd.json");
        std::fs::write(
            &side,
            r#"{"model_id": "smol", "quant": ["q8_0", "f32"], "context_max": 2048}"#,
        )
        .unwrap();
        let g = gguf("llama", 9, 3, Some("SmolLM2-135M"), true);
        let (m, diffs) = Mcd::derive(&g, None, Some(&side)).unwrap();
        assert_eq!(m.model_id, "smol");
        assert_eq!(m.context_max, 2048);
        assert_eq!(diffs.len(), 2, "quant agrees once sorted: {diffs:?}");
        assert!(
            diffs[0].starts_with("model_id: sidecar says \"smol\""),
            "{diffs:?}"
        );
        assert!(
            diffs[1].contains("context_max") && diffs[1].contains("8192"),
            "{diffs:?}"
        );

        std::fs::write(&side, r#"{"modle_id": "x"}"#).unwrap();
        let e = Mcd::derive(&g, None, Some(&side)).unwrap_err();
        assert!(
            e.message().contains("modle_id") && e.message().contains("accepted keys"),
            "{e}"
        );
        std::fs::write(&side, r#"{"vocab_size": 0}"#).unwrap();
        let e = Mcd::derive(&g, None, Some(&side)).unwrap_err();
        assert!(e.message().contains("vocab_size is 0"), "{e}");

        let model = dir.path().join("m.gguf");
        assert_eq!(sidecar_for(&model), Some(side));
        assert_eq!(sidecar_for(&dir.path().join("other.gguf")), None);
        let stem_side = dir.path().join("other.mcd.json");
        std::fs::write(&stem_side, "{}").unwrap();
        assert_eq!(sidecar_for(&dir.path().join("other.gguf")), Some(stem_side));
    }

    #[test]
    fn ecp_is_built_from_backend_caps() {
        let e = Ecp::new(
            "w-1",
            &caps(&[GgmlType::Q8_0, GgmlType::F32, GgmlType::Q4K, GgmlType::F32]),
            4096,
            1 << 30,
        );
        assert_eq!(e.supports_quant, vec!["f32", "q4_K", "q8_0"]);
        assert_eq!(e.supports_positional, vec!["rope_neox", "rope_norm"]);
        assert_eq!(e.supports_attention, vec!["gqa", "mha"]);
        assert_eq!((e.max_context, e.vram_bytes), (4096, 1 << 30));
    }

    #[test]
    fn check_accepts_a_subset_even_with_a_longer_trained_context() {
        let m = Mcd::from_gguf(&gguf("llama", 9, 3, Some("s"), true), None).unwrap();
        let e = Ecp::new("w", &caps(&[GgmlType::F32, GgmlType::Q8_0]), 512, 0);
        assert!(m.context_max > e.max_context);
        check(&m, &e).unwrap();
    }

    #[test]
    fn check_refuses_naming_each_missing_capability_and_the_supported_ones() {
        let mut m = Mcd::from_gguf(&gguf("llama", 9, 3, Some("s"), true), None).unwrap();
        m.quant.push("iq2_xs".into());
        m.positional = "alibi".into();
        let e1 = Ecp::new("w", &caps(&[GgmlType::F32, GgmlType::Q4_0]), 4096, 0);
        let err = check(&m, &e1).unwrap_err();
        assert_eq!(err.code(), "CAPABILITY_MISMATCH");
        let msg = err.message().to_string();
        assert!(
            msg.contains("positional encoding \"alibi\" (supported: rope_neox, rope_norm)"),
            "{msg}"
        );
        assert!(
            msg.contains("tensor types iq2_xs, q8_0 (supported: f32, q4_0)"),
            "{msg}"
        );
        assert!(!msg.contains("attention"), "attention matches: {msg}");
        // Deterministic: the same inputs in another order give the same message.
        let e2 = Ecp::new("w", &caps(&[GgmlType::Q4_0, GgmlType::F32]), 4096, 0);
        assert_eq!(check(&m, &e2).unwrap_err().message(), msg);

        m.attention = "mla".into();
        let e0 = Ecp::new("w", &caps(&[GgmlType::F32]), 0, 0);
        let msg = check(&m, &e0).unwrap_err().message().to_string();
        assert!(
            msg.contains("max_context is 0")
                && msg.contains("attention \"mla\" (supported: gqa, mha)"),
            "{msg}"
        );
        m.vocab_size = 0;
        assert!(check(&m, &e0)
            .unwrap_err()
            .message()
            .contains("vocab_size is 0"));
    }
}
