//! GGUF parser (WORKER-4224, 4310–4312, 4314, 4412).
//!
//! A model file is hostile input until proven otherwise: every length and
//! count read from it goes through a bounds-checked cursor and is compared with
//! [`GgufLimits`] before anything is allocated, tensor ranges are checked to lie
//! inside the file, aligned and non-overlapping, and the whole file's SHA-256 is
//! computed before the first byte is parsed. Every failure is a
//! `MODEL_LOAD_FAILED` naming what was wrong, where, and which limit applied.
//! Paths and model-root checks belong to the daemon, not here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Result, WorkerError};

#[path = "mapped.rs"]
mod mapped;
use mapped::FileBytes;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays are legal GGUF but no real model nests deeper than this.
const MAX_ARRAY_DEPTH: u32 = 2;

/// ggml tensor types this build can compute with. Ids and names are ggml's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

impl GgmlType {
    pub const ALL: [GgmlType; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// ggml's name for the type ("q4_K", "bf16", ...).
    pub fn name(self) -> &'static str {
        ggml_type_name(self.id()).unwrap_or("?")
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Look a type up by its ggml name, case-insensitively ("Q4_K", "f16").
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Comma-separated names of every supported type, for error messages.
    pub fn supported_list() -> String {
        Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }
}

/// ggml's name for a numeric type id, including types this build refuses.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "f32", "f16", "q4_0", "q4_1", "", "", "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K",
        "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl",
        "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "", "",
        "", "tq1_0", "tq2_0", "", "", "", "mxfp4",
    ];
    NAMES.get(id as usize).copied().filter(|n| !n.is_empty())
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The value as a signed integer, when it is an integer of any width.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as f32, when it is a float or an integer.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_i128().map(|v| v as f32),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// GGUF's numeric value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous elements).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Relative to the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Limits applied while parsing (WORKER-4311). All configurable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GgufLimits {
    pub max_tensors: u64,
    pub max_file_bytes: u64,
    pub max_string_bytes: u64,
    pub max_metadata_pairs: u64,
    pub max_array_len: u64,
    pub max_dims: u32,
}

impl Default for GgufLimits {
    fn default() -> Self {
        Self {
            max_tensors: 10_000,
            max_file_bytes: 100_000_000_000,
            max_string_bytes: 64 * 1024,
            max_metadata_pairs: 1_000,
            // Vocabularies reach ~260k tokens; leave headroom for merges lists.
            max_array_len: 4 * 1024 * 1024,
            // GGML_MAX_DIMS
            max_dims: 4,
        }
    }
}

/// A parsed, validated GGUF file whose bytes stay mapped (or owned).
#[derive(Debug)]
pub struct GgufFile {
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
    pub alignment: u64,
    pub file_sha256: [u8; 32],
    pub file_len: u64,
    version: u32,
    bytes: FileBytes,
}

fn fail(msg: impl Into<String>) -> WorkerError {
    WorkerError::model_load(msg)
}

impl GgufFile {
    /// Hash the whole file (WORKER-4314), then parse and validate it.
    pub fn open(path: &Path, limits: &GgufLimits) -> Result<Self> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| fail(format!("could not open model file {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("could not stat model file {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(fail(format!("model path {shown} is not a regular file")));
        }
        let len = meta.len();
        check_file_len(len, limits, &shown)?;
        let bytes = FileBytes::map(&file, &shown)?;
        let got = bytes.as_slice().len() as u64;
        if got != len {
            return Err(fail(format!(
                "model file {shown} changed size while being opened ({len} then {got} bytes)"
            )));
        }
        let g = Self::parse(bytes, limits, &shown)?;
        tracing::info!(
            path = %shown,
            sha256 = %hex::encode(g.file_sha256),
            bytes = g.file_len,
            tensors = g.tensors.len(),
            "model file hashed and parsed"
        );
        Ok(g)
    }

    /// Same checks as [`GgufFile::open`] on bytes already in memory.
    pub fn parse_bytes(bytes: Vec<u8>, limits: &GgufLimits) -> Result<Self> {
        check_file_len(bytes.len() as u64, limits, "(in memory)")?;
        Self::parse(FileBytes::Owned(bytes), limits, "(in memory)")
    }

    fn parse(bytes: FileBytes, limits: &GgufLimits, shown: &str) -> Result<Self> {
        let buf = bytes.as_slice();
        let file_sha256 = sha256_chunked(buf);
        let h = parse_header(buf, limits).map_err(|e| match e {
            WorkerError::ModelLoadFailed { message } => {
                fail(format!("invalid GGUF file {shown}: {message}"))
            }
            other => other,
        })?;
        Ok(Self {
            metadata: h.metadata,
            tensors: h.tensors,
            data_offset: h.data_offset,
            alignment: h.alignment,
            file_sha256,
            file_len: buf.len() as u64,
            version: h.version,
            bytes,
        })
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_i128().and_then(|v| u32::try_from(v).ok())
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    pub fn get_i32(&self, key: &str) -> Option<i32> {
        self.get(key)?.as_i128().and_then(|v| i32::try_from(v).ok())
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        match self.get(key)? {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// `None` when absent, not an array, or any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_array(key)?.iter().map(MetaValue::as_str).collect()
    }

    /// `None` when absent, not an array, or any element is not an integer fitting i32.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_i128().and_then(|i| i32::try_from(i).ok()))
            .collect()
    }

    /// `None` when absent, not an array, or any element is not numeric.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?.iter().map(MetaValue::as_f32).collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// All tensor bytes, from the aligned data offset to the end of the file:
    /// what becomes resident and is sealed.
    pub fn data_section(&self) -> &[u8] {
        // data_offset <= file_len was checked while parsing.
        &self.bytes.as_slice()[self.data_offset as usize..]
    }

    /// One tensor's bytes. `t` must come from this file (ranges were checked
    /// at parse time); a foreign `TensorInfo` out of range yields an empty slice.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let data = self.data_section();
        let start = usize::try_from(t.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(t.n_bytes).unwrap_or(usize::MAX));
        data.get(start..end).unwrap_or(&[])
    }
}

fn check_file_len(len: u64, limits: &GgufLimits, shown: &str) -> Result<()> {
    if len > limits.max_file_bytes {
        return Err(fail(format!(
            "model file {shown} is {len} bytes, over the limit of {} bytes (max_file_bytes); raise the limit if this model is intended",
            limits.max_file_bytes
        )));
    }
    if len < 24 {
        return Err(fail(format!(
            "model file {shown} is {len} bytes, too small for a GGUF header (24 bytes)"
        )));
    }
    Ok(())
}

/// SHA-256 over the bytes in 1 MiB steps so a mapped file is read sequentially.
pub fn sha256_chunked(buf: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for chunk in buf.chunks(1 << 20) {
        h.update(chunk);
    }
    h.finalize().into()
}

/// Bounds-checked little-endian reader. Every read says what it was reading.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn std::fmt::Display) -> Result<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(fail(format!(
                "{what} at offset {} needs {n} bytes but only {remaining} remain in the {}-byte file (truncated or corrupt)",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn std::fmt::Display) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn std::fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn std::fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, limits: &GgufLimits, what: &dyn std::fmt::Display) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&format_args!("length of {what}"))?;
        if len > limits.max_string_bytes {
            return Err(fail(format!(
                "{what} at offset {at} declares {len} bytes, over the string limit of {} bytes (max_string_bytes)",
                limits.max_string_bytes
            )));
        }
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(fail(format!(
                "{what} at offset {} is not valid UTF-8 (bad byte at position {} of the string)",
                at + 8,
                e.valid_up_to()
            ))),
        }
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
    alignment: u64,
}

fn parse_header(buf: &[u8], limits: &GgufLimits) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c.array(&"magic")?;
    if &magic != GGUF_MAGIC {
        return Err(fail(format!(
            "magic at offset 0 is {:?} (hex {}), expected \"GGUF\"; this is not a GGUF model file",
            String::from_utf8_lossy(&magic),
            hex::encode(magic)
        )));
    }
    let version = c.u32(&"version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (the file looks big-endian, which this build does not read)"
        } else if version == 1 {
            " (GGUF v1 is obsolete; re-convert the model)"
        } else {
            ""
        };
        return Err(fail(format!(
            "GGUF version {version} at offset 4 is not supported; supported versions: 2, 3{hint}"
        )));
    }
    let n_tensors = c.u64(&"tensor count")?;
    if n_tensors > limits.max_tensors {
        return Err(fail(format!(
            "tensor count {n_tensors} at offset 8 is over the limit of {} (max_tensors)",
            limits.max_tensors
        )));
    }
    let n_kv = c.u64(&"metadata count")?;
    if n_kv > limits.max_metadata_pairs {
        return Err(fail(format!(
            "metadata count {n_kv} at offset 16 is over the limit of {} (max_metadata_pairs)",
            limits.max_metadata_pairs
        )));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(limits, &format_args!("key of metadata pair {i}"))?;
        if key.is_empty() {
            return Err(fail(format!("metadata pair {i} at offset {at} has an empty key")));
        }
        let vt = c.u32(&format_args!("value type of metadata key {key:?}"))?;
        let value = read_value(&mut c, vt, limits, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(fail(format!("metadata key {key:?} at offset {at} appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= 1 << 30 => a as u64,
            _ => {
                return Err(fail(format!(
                    "general.alignment is {v:?}; it must be a power of two between 1 and 2^30"
                )))
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = BTreeSet::new();
    for i in 0..n_tensors {
        let at = c.pos;
        let t = read_tensor_info(&mut c, limits, i, alignment)?;
        if !names.insert(t.name.clone()) {
            return Err(fail(format!("tensor name {:?} at offset {at} appears twice", t.name)));
        }
        tensors.push(t);
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let data_offset = if data_offset > file_len && tensors.is_empty() {
        // A file with no tensors may omit the trailing padding.
        file_len
    } else {
        data_offset
    };
    if data_offset > file_len {
        return Err(fail(format!(
            "data section would start at offset {data_offset} (header ends at {header_end}, aligned to {alignment}) but the file is only {file_len} bytes"
        )));
    }
    check_tensor_ranges(&tensors, file_len - data_offset, data_offset)?;
    Ok(Header { version, metadata, tensors, data_offset, alignment })
}

fn read_value(
    c: &mut Cursor<'_>,
    vt: u32,
    limits: &GgufLimits,
    key: &str,
    depth: u32,
) -> Result<MetaValue> {
    let what = format_args!("value of metadata key {key:?}");
    Ok(match vt {
        0 => MetaValue::U8(u8::from_le_bytes(c.array(&what)?)),
        1 => MetaValue::I8(i8::from_le_bytes(c.array(&what)?)),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(&what)?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(&what)?)),
        4 => MetaValue::U32(u32::from_le_bytes(c.array(&what)?)),
        5 => MetaValue::I32(i32::from_le_bytes(c.array(&what)?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array(&what)?)),
        7 => {
            let at = c.pos;
            match c.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(fail(format!(
                        "boolean value of metadata key {key:?} at offset {at} is {b}, not 0 or 1"
                    )))
                }
            }
        }
        8 => MetaValue::String(c.string(limits, &what)?),
        9 => {
            let at = c.pos;
            let et = c.u32(&format_args!("element type of array {key:?}"))?;
            let len = c.u64(&format_args!("length of array {key:?}"))?;
            if depth >= MAX_ARRAY_DEPTH {
                return Err(fail(format!(
                    "array {key:?} at offset {at} nests deeper than {MAX_ARRAY_DEPTH} levels"
                )));
            }
            if len > limits.max_array_len {
                return Err(fail(format!(
                    "array {key:?} at offset {at} declares {len} elements, over the limit of {} (max_array_len)",
                    limits.max_array_len
                )));
            }
            // Refuse before allocating: each element needs at least this many bytes.
            let min_elem: u64 = match et {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                8 | 10..=12 => 8,
                9 => 12,
                other => {
                    return Err(fail(format!(
                        "array {key:?} at offset {at} has unknown element type {other}"
                    )))
                }
            };
            let remaining = (c.buf.len() - c.pos) as u64;
            if len.saturating_mul(min_elem) > remaining {
                return Err(fail(format!(
                    "array {key:?} at offset {at} declares {len} elements but only {remaining} bytes remain in the file (truncated or corrupt)"
                )));
            }
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                items.push(read_value(c, et, limits, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(u64::from_le_bytes(c.array(&what)?)),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(&what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(&what)?)),
        other => {
            return Err(fail(format!(
                "metadata key {key:?} at offset {} has unknown value type {other} (known: 0..=12)",
                c.pos.saturating_sub(4)
            )))
        }
    })
}

fn read_tensor_info(
    c: &mut Cursor<'_>,
    limits: &GgufLimits,
    i: u64,
    alignment: u64,
) -> Result<TensorInfo> {
    let at = c.pos;
    let name = c.string(limits, &format_args!("name of tensor {i}"))?;
    if name.is_empty() {
        return Err(fail(format!("tensor {i} at offset {at} has an empty name")));
    }
    let n_dims = c.u32(&format_args!("dimension count of tensor {name:?}"))?;
    if n_dims == 0 || n_dims > limits.max_dims {
        return Err(fail(format!(
            "tensor {name:?} at offset {at} has {n_dims} dimensions; allowed 1..={} (max_dims)",
            limits.max_dims
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let v = c.u64(&format_args!("dimension {d} of tensor {name:?}"))?;
        if v == 0 {
            return Err(fail(format!("tensor {name:?} at offset {at} has dimension {d} of size 0")));
        }
        dims.push(v);
    }
    let type_at = c.pos;
    let type_id = c.u32(&format_args!("type of tensor {name:?}"))?;
    let dtype = GgmlType::from_id(type_id).ok_or_else(|| {
        let known = match ggml_type_name(type_id) {
            Some(n) => format!("ggml type {n} (id {type_id})"),
            None => format!("unknown ggml type id {type_id}"),
        };
        fail(format!(
            "tensor {name:?} at offset {type_at} uses {known}, which is not supported by this build; supported: {}",
            GgmlType::supported_list()
        ))
    })?;
    let offset = c.u64(&format_args!("data offset of tensor {name:?}"))?;
    if offset % alignment != 0 {
        return Err(fail(format!(
            "tensor {name:?} data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        fail(format!("tensor {name:?} dimensions {dims:?} overflow when multiplied"))
    })?;
    let block = dtype.block_size() as u64;
    if dims[0] % block != 0 {
        return Err(fail(format!(
            "tensor {name:?} row length {} is not a multiple of the {} block size {block}",
            dims[0],
            dtype.name()
        )));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| fail(format!("tensor {name:?} byte size overflows ({dims:?}, {})", dtype.name())))?;
    Ok(TensorInfo { name, dims, dtype, offset, n_bytes })
}

/// Every tensor inside the data section, none overlapping (WORKER-4412).
fn check_tensor_ranges(tensors: &[TensorInfo], data_len: u64, data_offset: u64) -> Result<()> {
    for t in tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(fail(format!(
                "tensor {:?} ({} bytes at data offset {}, file offset {}) extends past the end of the file (data section is {data_len} bytes)",
                t.name,
                t.n_bytes,
                t.offset,
                data_offset.saturating_add(t.offset)
            )));
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.n_bytes));
    for w in order.windows(2) {
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(fail(format!(
                "tensors {:?} (data offset {}, {} bytes) and {:?} (data offset {}) overlap",
                w[0].name, w[0].offset, w[0].n_bytes, w[1].name, w[1].offset
            )));
        }
    }
    Ok(())
}
