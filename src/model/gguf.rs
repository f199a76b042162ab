//! GGUF parser (WORKER-4224, 4310–4312, 4314, 4412).
//!
//! A model file is hostile input until proven otherwise: every length and
//! count read from it goes through a bounds-checked cursor and is compared with
//! [`GgufLimits`] before anything is allocated, tensor ranges are checked to lie
//! inside the file, aligned and non-overlapping, and the whole file's SHA-256 is
//! computed before the first byte is parsed. Every failure is a
//! `MODEL_LOAD_FAILED` naming what was wrong, where, and which limit applied.
//! Paths and model-root checks belong to the daemon, not here.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::error::{Result, WorkerError};

mod open;
mod parse;
pub use open::MAX_HEADER_BYTES;
use parse::{parse_header, Parsed};

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
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Comma-separated names of every supported type, for error messages.
    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// ggml's name for a numeric type id, including types this build refuses.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "f32", "f16", "q4_0", "q4_1", "", "", "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K",
        "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s",
        "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "", "", "", "tq1_0",
        "tq2_0", "", "", "", "mxfp4",
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

/// A GGUF file's parsed and validated header, with the SHA-256 and length of
/// the whole file: all that Plan needs, and what a cached Plan keeps.
pub struct GgufHeader {
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
    pub alignment: u64,
    pub file_sha256: [u8; 32],
    pub file_len: u64,
    version: u32,
}

/// A parsed, validated GGUF file with all its bytes in memory (read, never
/// mapped: [`crate::model::file`]). Its header's fields and accessors are
/// reached through `Deref`.
pub struct GgufFile {
    header: GgufHeader,
    bytes: Vec<u8>,
    /// The file read, when the bytes came from disk.
    identity: Option<crate::model::file::FileIdentity>,
}

impl std::ops::Deref for GgufFile {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}

impl std::ops::DerefMut for GgufFile {
    fn deref_mut(&mut self) -> &mut GgufHeader {
        &mut self.header
    }
}

/// A summary: the full metadata holds vocabularies of 150k strings.
impl std::fmt::Debug for GgufHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufHeader")
            .field("version", &self.version)
            .field("file_len", &self.file_len)
            .field("sha256", &hex::encode(self.file_sha256))
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("header", &self.header)
            .field("bytes_in_memory", &self.bytes.len())
            .finish()
    }
}

fn fail(msg: impl Into<String>) -> WorkerError {
    WorkerError::model_load(msg)
}

impl GgufHeader {
    /// Parse the header of a `file_len`-byte file from its first bytes
    /// (`None`: the header goes on past them); `shown` names the file in errors.
    fn from_prefix(
        prefix: &[u8],
        file_len: u64,
        file_sha256: [u8; 32],
        limits: &GgufLimits,
        shown: &str,
    ) -> Result<Option<Self>> {
        let parsed = parse_header(prefix, file_len, limits).map_err(|e| match e {
            WorkerError::ModelLoadFailed { message } => {
                fail(format!("invalid GGUF file {shown}: {message}"))
            }
            other => other,
        })?;
        let h = match parsed {
            Parsed::Header(h)
                if h.data_offset > open::MAX_HEADER_BYTES && !h.tensors.is_empty() =>
            {
                return Err(open::too_long(shown))
            }
            Parsed::Header(h) => h,
            Parsed::NeedMore => return Ok(None),
        };
        Ok(Some(Self {
            metadata: h.metadata,
            tensors: h.tensors,
            data_offset: h.data_offset,
            alignment: h.alignment,
            file_sha256,
            file_len,
            version: h.version,
        }))
    }

    /// Bytes of the data section: what becomes resident and is sealed.
    pub fn data_len(&self) -> u64 {
        self.file_len - self.data_offset
    }

    /// Compare the whole-file SHA-256 with an expected digest (WORKER-4314):
    /// 64 hex digits, optionally prefixed `sha256:`, case-insensitive.
    pub fn verify_sha256(&self, expected: &str) -> Result<()> {
        let want = expected.trim();
        let want = want
            .strip_prefix("sha256:")
            .unwrap_or(want)
            .to_ascii_lowercase();
        let have = hex::encode(self.file_sha256);
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!(
                "expected digest {expected:?} is not a SHA-256 (64 hex digits, optionally prefixed sha256:)"
            )));
        }
        if want != have {
            return Err(fail(format!(
                "model file SHA-256 is {have} but {want} was expected; the file is not the model that was asked for (or is corrupt)"
            )));
        }
        Ok(())
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
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
}

impl GgufFile {
    /// Same checks as [`GgufFile::open`] on bytes already in memory.
    pub fn parse_bytes(bytes: Vec<u8>, limits: &GgufLimits) -> Result<Self> {
        check_file_len(bytes.len() as u64, limits, "(in memory)")?;
        let sha = sha256_chunked(&bytes);
        Self::from_bytes(bytes, sha, limits, "(in memory)")
    }

    /// Parse a whole file's bytes whose SHA-256 is already known.
    fn from_bytes(bytes: Vec<u8>, sha: [u8; 32], limits: &GgufLimits, shown: &str) -> Result<Self> {
        let header = GgufHeader::from_prefix(&bytes, bytes.len() as u64, sha, limits, shown)?
            .ok_or_else(|| {
                WorkerError::internal("the GGUF parser asked for more than a whole file")
            })?;
        Ok(Self {
            header,
            bytes,
            identity: None,
        })
    }

    /// The header alone, for keeping once the bytes are resident elsewhere.
    pub fn into_header(self) -> GgufHeader {
        self.header
    }

    /// The identity of the file these bytes were read from (`None` in memory).
    pub fn identity(&self) -> Option<crate::model::file::FileIdentity> {
        self.identity
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All tensor bytes, from the aligned data offset to the end of the file:
    /// what becomes resident and is sealed.
    pub fn data_section(&self) -> &[u8] {
        // data_offset <= file_len was checked while parsing.
        &self.bytes[self.data_offset as usize..]
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

/// SHA-256 of bytes already in memory, in 1 MiB steps.
pub fn sha256_chunked(buf: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for chunk in buf.chunks(1 << 20) {
        h.update(chunk);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests;
