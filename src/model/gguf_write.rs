//! GGUF writer (v3, little-endian) for generated test models and fixtures.
//!
//! Why: CI scenarios and the GPU machine (which cannot download models) need
//! valid files of a chosen shape and quant mix (issue 3 point 9); the malformed
//! corpus (WORKER-4312) is made by corrupting files written here. Output is a
//! pure function of what was added, so the same inputs give identical bytes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::error::{Result, WorkerError};
use crate::model::gguf::{GgmlType, MetaValue};
use crate::model::quant;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them as one GGUF file.
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(msg: impl Into<String>) -> WorkerError {
    WorkerError::invalid(msg)
}

impl GgufWriter {
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Write another header version number (2 and 3 share the same layout).
    pub fn set_version(&mut self, version: u32) {
        self.version = version;
    }

    /// Tensor data alignment; also recorded as `general.alignment` when not 32.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        if alignment == 0 || !alignment.is_power_of_two() || alignment > u32::MAX as u64 {
            return Err(bad(format!(
                "alignment {alignment} must be a power of two fitting u32"
            )));
        }
        self.alignment = alignment;
        self.metadata.retain(|(k, _)| k != "general.alignment");
        if alignment != 32 {
            self.metadata
                .push(("general.alignment".into(), MetaValue::U32(alignment as u32)));
        }
        Ok(())
    }

    /// Add (or replace) a metadata pair. Order of first insertion is kept.
    pub fn add_meta(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key, value));
        }
    }

    pub fn add_str(&mut self, key: &str, v: &str) {
        self.add_meta(key, MetaValue::String(v.to_string()));
    }

    pub fn add_u32(&mut self, key: &str, v: u32) {
        self.add_meta(key, MetaValue::U32(v));
    }

    pub fn add_f32(&mut self, key: &str, v: f32) {
        self.add_meta(key, MetaValue::F32(v));
    }

    /// Add a tensor whose bytes are already in `dtype`'s block layout.
    pub fn add_tensor_bytes(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> Result<()> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad(format!("tensor {name} added twice")));
        }
        let n: u64 = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX);
        let row = dims.first().copied().unwrap_or(0) as usize;
        let row_b = quant::row_bytes(dtype, row)?;
        let want = (row_b as u64).checked_mul(n / (row.max(1) as u64));
        if dims.is_empty() || row == 0 || want != Some(data.len() as u64) {
            return Err(bad(format!(
                "tensor {name} {dims:?} as {} needs {want:?} bytes, got {}",
                dtype.name(),
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            dtype,
            data,
        });
        Ok(())
    }

    /// Quantize f32 values into `dtype` and add them.
    pub fn add_tensor_f32(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: GgmlType,
        values: &[f32],
    ) -> Result<()> {
        let mut data = Vec::new();
        quant::quantize(dtype, values, &mut data)?;
        self.add_tensor_bytes(name, dims, dtype, data)
    }

    /// The header (everything before the aligned data section) and the
    /// relative offset of each tensor.
    fn header(&self) -> Result<(Vec<u8>, Vec<u64>)> {
        let mut h = Vec::new();
        h.extend_from_slice(b"GGUF");
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        let mut seen = BTreeSet::new();
        for (k, v) in &self.metadata {
            if !seen.insert(k.as_str()) {
                return Err(bad(format!("metadata key {k} twice")));
            }
            put_str(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v, k)?;
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut off = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.id().to_le_bytes());
            h.extend_from_slice(&off.to_le_bytes());
            offsets.push(off);
            off = (off + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        let pad = (h.len() as u64).div_ceil(self.alignment) * self.alignment - h.len() as u64;
        h.resize(h.len() + pad as usize, 0);
        Ok((h, offsets))
    }

    fn write_to(&self, out: &mut dyn Write) -> Result<()> {
        let io = |e: std::io::Error| WorkerError::internal(format!("writing GGUF: {e}"));
        let (h, offsets) = self.header()?;
        out.write_all(&h).map_err(io)?;
        let mut pos = 0u64;
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.write_all(&vec![0u8; (off - pos) as usize])
                .map_err(io)?;
            out.write_all(&t.data).map_err(io)?;
            pos = off + t.data.len() as u64;
        }
        // Pad the file to the alignment so the data section ends aligned too.
        let end = pos.div_ceil(self.alignment) * self.alignment;
        out.write_all(&vec![0u8; (end - pos) as usize])
            .map_err(io)?;
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Write to `path` (via a temporary sibling, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("gguf.partial");
        let io = |e: std::io::Error| {
            WorkerError::internal(format!("could not write {}: {e}", path.display()))
        };
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        self.write_to(&mut w)?;
        w.flush().map_err(io)?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &MetaValue, key: &str) -> Result<()> {
    match v {
        MetaValue::U8(x) => h.push(*x),
        MetaValue::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => h.push(u8::from(*x)),
        MetaValue::String(s) => put_str(h, s),
        MetaValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array is written as an array of strings.
            let et = items.first().map_or(8, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != et) {
                return Err(bad(format!("array {key} mixes element types")));
            }
            h.extend_from_slice(&et.to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(h, i, key)?;
            }
        }
    }
    Ok(())
}

/// Where the chat specials (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialsAt {
    /// Ids 0, 1, 2 (SmolLM2's layout).
    Start,
    /// From this id on (Qwen2.5: 151643), or the last three ids if it does not fit.
    From(u32),
}

/// A small English and code sample the generated BPE merges are learned from.
const TRAINING_TEXT: &str =
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog. \
Once upon a time there was a little model that wanted to answer every question. It read the \
question, thought about the answer, and then wrote it down one token at a time. What is the \
capital of Germany? The capital of Germany is Berlin. Tell me a story about a cat and a dog \
who became friends in the city. def main(): print(\"hello world\") for i in range(10): return i \
fn main() { let x = 1; println!(\"{}\", x); } The worker loads the model into memory, checks \
the seal, and streams the tokens to the client. Numbers like 2024, 3.14 and 100 appear in text \
too. I think that this is a good day to learn something new about language and computers. \
Please write a short poem about the sea, the wind and the sun. Thank you very much!";

/// gpt2's byte-to-character table: printable bytes map to themselves, the
/// rest to U+0100 onwards, so every byte has a visible character.
pub fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// Learn up to `max_merges` BPE merges from the built-in sample (most frequent
/// pair first, ties broken by the pair's text), deterministic by construction.
fn learn_merges(max_merges: usize) -> Vec<(String, String)> {
    let table = gpt2_byte_chars();
    // Words with their leading space, as gpt2 pre-tokenizes them.
    let mut words: Vec<(Vec<String>, u32)> = Vec::new();
    for (i, w) in TRAINING_TEXT.split(' ').enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        let sym: Vec<String> = text
            .bytes()
            .map(|b| table[b as usize].to_string())
            .collect();
        match words.iter_mut().find(|(s, _)| *s == sym) {
            Some((_, n)) => *n += 1,
            None => words.push((sym, 1)),
        }
    }
    let mut merges = Vec::new();
    while merges.len() < max_merges {
        let mut counts: std::collections::BTreeMap<(String, String), u32> = Default::default();
        for (sym, n) in &words {
            for p in sym.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_insert(0) += n;
            }
        }
        // Highest count; the BTreeMap's order breaks ties.
        let Some((best, _)) = counts.into_iter().fold(
            None,
            |acc: Option<((String, String), u32)>, (k, c)| match acc {
                Some((_, bc)) if bc >= c => acc,
                _ => Some((k, c)),
            },
        ) else {
            break;
        };
        for (sym, _) in &mut words {
            let mut i = 0;
            while i + 1 < sym.len() {
                if sym[i] == best.0 && sym[i + 1] == best.1 {
                    let joined = format!("{}{}", sym[i], sym[i + 1]);
                    sym[i] = joined;
                    sym.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(best);
    }
    merges
}

/// Add a gpt2 byte-level BPE tokenizer of exactly `vocab` tokens: 256 byte
/// tokens, learned merges, three chat specials, and `[PAD<id>]` fillers.
pub fn add_test_tokenizer(
    w: &mut GgufWriter,
    vocab: u32,
    pre: &str,
    specials: SpecialsAt,
) -> Result<()> {
    const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    if vocab < 256 + 3 {
        return Err(bad(format!(
            "vocab {vocab} is too small: at least 259 tokens (256 bytes + 3 specials)"
        )));
    }
    let special_start = match specials {
        SpecialsAt::Start => 0,
        SpecialsAt::From(at) => at.min(vocab - 3),
    };
    let ordinary_slots = (vocab - 3) as usize;
    // Byte tokens, then merges, until the slots before/after the specials are used.
    let merges = learn_merges(ordinary_slots.saturating_sub(256).min(2_000));
    let mut ordinary: Vec<String> = gpt2_byte_chars().iter().map(|c| c.to_string()).collect();
    let mut seen: BTreeSet<String> = ordinary.iter().cloned().collect();
    for (a, b) in &merges {
        // Two merges may spell the same token ("a"+"bc", "ab"+"c"): list it once.
        let t = format!("{a}{b}");
        if seen.insert(t.clone()) {
            ordinary.push(t);
        }
    }
    let n_real = ordinary.len();
    let mut tokens = Vec::with_capacity(vocab as usize);
    let mut types = Vec::with_capacity(vocab as usize);
    let mut ord = ordinary.into_iter();
    for id in 0..vocab {
        if id >= special_start && id < special_start + 3 {
            tokens.push(MetaValue::String(
                SPECIALS[(id - special_start) as usize].into(),
            ));
            types.push(MetaValue::I32(3));
        } else if let Some(t) = ord.next() {
            tokens.push(MetaValue::String(t));
            types.push(MetaValue::I32(1));
        } else {
            tokens.push(MetaValue::String(format!("[PAD{id}]")));
            types.push(MetaValue::I32(5));
        }
    }
    debug_assert!(n_real <= ordinary_slots);
    let eot = special_start;
    let (bos, eos) = match specials {
        SpecialsAt::Start => (special_start + 1, special_start + 2),
        SpecialsAt::From(_) => (special_start, special_start + 2),
    };
    w.add_str("tokenizer.ggml.model", "gpt2");
    w.add_str("tokenizer.ggml.pre", pre);
    w.add_meta("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    w.add_meta("tokenizer.ggml.token_type", MetaValue::Array(types));
    let merges = merges
        .into_iter()
        .map(|(a, b)| MetaValue::String(format!("{a} {b}")))
        .collect();
    w.add_meta("tokenizer.ggml.merges", MetaValue::Array(merges));
    w.add_u32("tokenizer.ggml.bos_token_id", bos);
    w.add_u32("tokenizer.ggml.eos_token_id", eos);
    w.add_u32("tokenizer.ggml.padding_token_id", eot);
    w.add_meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    w.add_str(
        "tokenizer.chat_template",
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::{GgufFile, GgufLimits};

    #[test]
    fn writes_every_value_type_and_reads_back() {
        let mut w = GgufWriter::new();
        let vals = vec![
            ("u8", MetaValue::U8(7)),
            ("i8", MetaValue::I8(-7)),
            ("u16", MetaValue::U16(700)),
            ("i16", MetaValue::I16(-700)),
            ("u32", MetaValue::U32(70_000)),
            ("i32", MetaValue::I32(-70_000)),
            ("f32", MetaValue::F32(0.25)),
            ("bool", MetaValue::Bool(true)),
            ("str", MetaValue::String("héllo".into())),
            ("u64", MetaValue::U64(1 << 40)),
            ("i64", MetaValue::I64(-(1 << 40))),
            ("f64", MetaValue::F64(-0.125)),
            (
                "arr",
                MetaValue::Array(vec![
                    MetaValue::String("a".into()),
                    MetaValue::String("b".into()),
                ]),
            ),
            (
                "nested",
                MetaValue::Array(vec![MetaValue::Array(vec![
                    MetaValue::I32(1),
                    MetaValue::I32(2),
                ])]),
            ),
        ];
        for (k, v) in &vals {
            w.add_meta(*k, v.clone());
        }
        w.set_alignment(64).unwrap();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        w.add_tensor_f32("a", &[32, 2], GgmlType::Q8_0, &x).unwrap();
        w.add_tensor_f32("b", &[3], GgmlType::F32, &[1.0, 2.0, 3.0])
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        let g = GgufFile::parse_bytes(bytes.clone(), &GgufLimits::default()).unwrap();
        for (k, v) in &vals {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        assert_eq!(g.alignment, 64);
        assert_eq!(g.get_u32("u16"), Some(700));
        assert_eq!(g.get_i32("i8"), Some(-7));
        assert_eq!(g.get_u32("i8"), None);
        assert_eq!(g.get_str_array("arr"), Some(vec!["a", "b"]));
        let b = g.tensor("b").unwrap();
        assert_eq!(b.offset % 64, 0);
        assert_eq!(
            g.tensor_bytes(b),
            &[1f32.to_le_bytes(), 2f32.to_le_bytes(), 3f32.to_le_bytes()].concat()[..]
        );
        assert_eq!(g.tensor("a").unwrap().n_bytes, 68);
        assert_eq!(g.data_offset % 64, 0);
        // Same inputs, same bytes.
        assert_eq!(bytes, w.to_bytes().unwrap());
    }

    #[test]
    fn refuses_wrong_sizes_and_duplicates() {
        let mut w = GgufWriter::new();
        assert!(w
            .add_tensor_bytes("a", &[32], GgmlType::Q8_0, vec![0; 33])
            .is_err());
        assert!(w
            .add_tensor_bytes("a", &[31], GgmlType::Q8_0, vec![0; 34])
            .is_err());
        w.add_tensor_bytes("a", &[32], GgmlType::Q8_0, vec![0; 34])
            .unwrap();
        assert!(w
            .add_tensor_bytes("a", &[32], GgmlType::Q8_0, vec![0; 34])
            .is_err());
        assert!(w.set_alignment(48).is_err());
    }
}
