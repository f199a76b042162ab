//! The GGUF header parser behind [`super::GgufFile`] (WORKER-4312, 4412).
//!
//! Why separate: this is the code that touches hostile bytes. Every read goes
//! through [`Cursor`], which refuses to read past the end and says what it was
//! reading and where; every count is compared with the limits before anything
//! is allocated for it.

use std::collections::{BTreeMap, BTreeSet};

use super::{fail, ggml_type_name, GgmlType, GgufLimits, MetaValue, TensorInfo};
use crate::error::Result;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays are legal GGUF but no real model nests deeper than this.
const MAX_ARRAY_DEPTH: u32 = 2;

/// Bounds-checked little-endian reader over the first bytes of a file of
/// `file_len` bytes (all of it, or a prefix while the file streams in).
/// Every read says what it was reading.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
    /// A read went past the prefix but not past the file: more bytes are needed.
    ran_short: bool,
}

impl<'a> Cursor<'a> {
    /// Bytes of the file after the cursor (not only those in the prefix).
    fn remaining(&self) -> u64 {
        self.file_len - self.pos as u64
    }

    fn take(&mut self, n: u64, what: &dyn std::fmt::Display) -> Result<&'a [u8]> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(fail(format!(
                "{what} at offset {} needs {n} bytes but only {remaining} remain in the {}-byte file (truncated or corrupt)",
                self.pos, self.file_len
            )));
        }
        if n > (self.buf.len() - self.pos) as u64 {
            self.ran_short = true;
            return Err(fail("the header continues past the bytes read so far"));
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

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, MetaValue>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) data_offset: u64,
    pub(super) alignment: u64,
}

/// What parsing a file's first bytes gave.
pub(super) enum Parsed {
    Header(Header),
    /// The header goes on past the bytes given: parse again with more.
    NeedMore,
}

/// Parse the header of a `file_len`-byte file from its first bytes `buf`
/// (a prefix, or the whole file).
pub(super) fn parse_header(buf: &[u8], file_len: u64, limits: &GgufLimits) -> Result<Parsed> {
    let mut c = Cursor {
        buf,
        pos: 0,
        file_len: file_len.max(buf.len() as u64),
        ran_short: false,
    };
    match parse_from(&mut c, limits) {
        Ok(h) => Ok(Parsed::Header(h)),
        Err(_) if c.ran_short => Ok(Parsed::NeedMore),
        Err(e) => Err(e),
    }
}

fn parse_from(c: &mut Cursor<'_>, limits: &GgufLimits) -> Result<Header> {
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
            return Err(fail(format!(
                "metadata pair {i} at offset {at} has an empty key"
            )));
        }
        let vt = c.u32(&format_args!("value type of metadata key {key:?}"))?;
        let value = read_value(c, vt, limits, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(fail(format!(
                "metadata key {key:?} at offset {at} appears twice"
            )));
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

    // Each tensor entry takes at least 33 bytes; never reserve more than fits.
    let fit = (c.remaining() / 33).min(usize::MAX as u64) as usize;
    let mut tensors = Vec::with_capacity((n_tensors as usize).min(fit));
    let mut names = BTreeSet::new();
    for i in 0..n_tensors {
        let at = c.pos;
        let t = read_tensor_info(c, limits, i, alignment)?;
        if !names.insert(t.name.clone()) {
            return Err(fail(format!(
                "tensor name {:?} at offset {at} appears twice",
                t.name
            )));
        }
        tensors.push(t);
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = c.file_len;
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
    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
    })
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
            let remaining = c.remaining();
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
    let mut dims = Vec::with_capacity((n_dims as usize).min(8));
    for d in 0..n_dims {
        let v = c.u64(&format_args!("dimension {d} of tensor {name:?}"))?;
        if v == 0 {
            return Err(fail(format!(
                "tensor {name:?} at offset {at} has dimension {d} of size 0"
            )));
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
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            fail(format!(
                "tensor {name:?} dimensions {dims:?} overflow when multiplied"
            ))
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
        .ok_or_else(|| {
            fail(format!(
                "tensor {name:?} byte size overflows ({dims:?}, {})",
                dtype.name()
            ))
        })?;
    Ok(TensorInfo {
        name,
        dims,
        dtype,
        offset,
        n_bytes,
    })
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
