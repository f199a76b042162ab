//! A small, independent reader of GGUF metadata for the harness
//! (WORKER-4422, 4413). Scenarios that compute an expected value from a
//! model's shape (KV cache bytes, token ids) read the file themselves here,
//! so the expectation never comes from the worker's own parser. Only the
//! header is read (metadata, tensor infos, where the data starts); every
//! length is bounded by the file size. `digest` uses it for the resident bytes.

use std::collections::BTreeMap;
use std::path::Path;

/// A metadata value: what the scenarios need, arrays of strings included.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "GGUF metadata runs past the end of the file at byte {}",
                    self.at
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count or length, bounded by what the file could possibly hold.
    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len())
            .ok_or_else(|| format!("GGUF length {n} is larger than the file"))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("GGUF string: {e}"))
    }
    fn value(&mut self, ty: u32) -> Result<Meta, String> {
        let int = |s: &[u8], signed: bool| -> i128 {
            let mut buf = [0u8; 16];
            buf[..s.len()].copy_from_slice(s);
            if signed && s.last().is_some_and(|b| b & 0x80 != 0) {
                buf[s.len()..].fill(0xFF);
            }
            i128::from_le_bytes(buf)
        };
        Ok(match ty {
            0 | 2 | 4 | 10 => Meta::Int(int(self.take(1 << (ty / 2).min(3))?, false)),
            1 | 3 | 5 | 11 => Meta::Int(int(self.take(1 << ((ty - 1) / 2).min(3))?, true)),
            6 => Meta::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            12 => Meta::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    v.push(self.value(et)?);
                }
                Meta::Array(v)
            }
            other => return Err(format!("unknown GGUF value type {other}")),
        })
    }
}

/// Every metadata key of a GGUF (v2/v3) file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Meta>, String> {
    Ok(read_all(path)?.0)
}

/// The ggml type names of the file's tensors (the ECP's spelling).
pub fn tensor_types(path: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    read_all(path)?
        .1
        .into_iter()
        .map(|t| {
            Ok(match t {
                0 => "f32",
                1 => "f16",
                2 => "q4_0",
                3 => "q4_1",
                6 => "q5_0",
                7 => "q5_1",
                8 => "q8_0",
                12 => "q4_K",
                13 => "q5_K",
                14 => "q6_K",
                30 => "bf16",
                other => return Err(format!("tensor type {other} is not known to the harness")),
            }
            .to_string())
        })
        .collect()
}

/// The metadata and the type id of every tensor.
fn read_all(path: &Path) -> Result<(BTreeMap<String, Meta>, Vec<u32>), String> {
    let b = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let p = parse(&b).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((p.meta, p.tensor_types))
}

/// What the harness knows of a GGUF file after one walk over its header.
pub struct Parsed {
    pub meta: BTreeMap<String, Meta>,
    /// The ggml type id of every tensor, in file order.
    pub tensor_types: Vec<u32>,
    /// Where the tensor infos start (the first tensor's name).
    pub tensors_at: usize,
    /// Where the aligned tensor data starts: the end of the tensor infos
    /// rounded up to `general.alignment` (32 when absent).
    pub data_at: usize,
}

/// Walk a GGUF v2/v3 header: magic, version, the metadata pairs and the
/// tensor infos; every length is bounded by the file's size.
pub fn parse(b: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor { b, at: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not 2 or 3"));
    }
    let n_tensors = c.len()?;
    let n_kv = c.len()?;
    let mut meta = BTreeMap::new();
    for _ in 0..n_kv {
        let k = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty)?;
        meta.insert(k, v);
    }
    let tensors_at = c.at;
    let mut tensor_types = Vec::with_capacity(n_tensors.min(1 << 16));
    for _ in 0..n_tensors {
        let _name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims > 4 {
            return Err(format!("a tensor has {n_dims} dimensions; GGUF allows 4"));
        }
        c.take(8 * n_dims)?;
        tensor_types.push(c.u32()?);
        c.take(8)?;
    }
    let alignment = match meta.get("general.alignment") {
        None => 32,
        Some(Meta::Int(n)) if *n > 0 && *n <= 1 << 20 => *n as usize,
        Some(other) => return Err(format!("general.alignment is {other:?}")),
    };
    Ok(Parsed {
        meta,
        tensor_types,
        tensors_at,
        data_at: c.at.div_ceil(alignment) * alignment,
    })
}

/// Byte offset of the first tensor's dimension array and its dimension count.
pub fn first_tensor_dims(b: &[u8]) -> Result<(usize, usize), String> {
    let mut c = Cursor {
        b,
        at: parse(b)?.tensors_at,
    };
    c.string()?;
    let n_dims = c.u32()? as usize;
    Ok((c.at, n_dims))
}

/// A whole-number key, e.g. `llama.block_count`.
pub fn int(m: &BTreeMap<String, Meta>, key: &str) -> Result<u64, String> {
    match m.get(key) {
        Some(Meta::Int(n)) => u64::try_from(*n).map_err(|_| format!("{key} is {n}")),
        other => Err(format!("GGUF key {key} is {other:?}, not a whole number")),
    }
}

/// The model's shape, read from its `<arch>.*` keys.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub n_layers: u64,
    pub n_kv_heads: u64,
    pub head_dim: u64,
    pub context_length: u64,
}

pub fn shape(path: &Path) -> Result<Shape, String> {
    let m = read(path)?;
    let arch = match m.get("general.architecture") {
        Some(Meta::Str(a)) => a.clone(),
        other => return Err(format!("general.architecture is {other:?}")),
    };
    let k = |s: &str| int(&m, &format!("{arch}.{s}"));
    let n_heads = k("attention.head_count")?;
    let d_model = k("embedding_length")?;
    if n_heads == 0 || d_model % n_heads != 0 {
        return Err(format!(
            "embedding_length {d_model} does not split into {n_heads} heads"
        ));
    }
    Ok(Shape {
        n_layers: k("block_count")?,
        n_kv_heads: k("attention.head_count_kv")?,
        head_dim: d_model / n_heads,
        context_length: k("context_length")?,
    })
}

/// The id of token `text` in the model's vocabulary, and its token type.
pub fn token(path: &Path, text: &str) -> Result<(usize, i128), String> {
    let m = read(path)?;
    let Some(Meta::Array(tokens)) = m.get("tokenizer.ggml.tokens") else {
        return Err("the model has no tokenizer.ggml.tokens".into());
    };
    let id = tokens
        .iter()
        .position(|t| *t == Meta::Str(text.into()))
        .ok_or_else(|| format!("{text:?} is not a token of the model"))?;
    let ty = match m.get("tokenizer.ggml.token_type") {
        Some(Meta::Array(types)) => match types.get(id) {
            Some(Meta::Int(t)) => *t,
            other => return Err(format!("token type of {text:?} is {other:?}")),
        },
        _ => return Err("the model has no tokenizer.ggml.token_type".into()),
    };
    Ok((id, ty))
}
