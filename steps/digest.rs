//! The harness's own arithmetic for shards (WORKER-4113, 4120, 4121, 4245):
//! where a GGUF file's tensor data starts, the documented resident digest of
//! those bytes, and the documented HMAC seal — each written here from the
//! published definitions (docs/operations.md, `src/shard/digest.rs` and
//! `src/shard/seal.rs` headers), with no call into the worker's library.
//!
//! Why not reuse the worker's functions: a check that asks the worker's code
//! for the expected value agrees with the worker whatever that code does.
//! Written twice, a bug in one copy shows up as a disagreement.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Leaf size of the resident digest (16 KiB).
pub const LEAF_BYTES: usize = 16 * 1024;
/// Domain string of the resident digest, version 2.
const DOMAIN: &[u8] = b"worker-orcd/resident-digest/v2-16KiB";

/// Offset of the aligned tensor data in a GGUF v2/v3 file: the header, the
/// metadata pairs and the tensor infos are walked, then the position is
/// rounded up to `general.alignment` (32 when absent).
pub fn gguf_data_offset(b: &[u8]) -> Result<usize, String> {
    Ok(gguf_layout(b)?.1)
}

/// (where the tensor infos start, where the aligned tensor data starts).
fn gguf_layout(b: &[u8]) -> Result<(usize, usize), String> {
    let mut r = Reader { b, at: 0 };
    if r.take(4)? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not 2 or 3"));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        if key == "general.alignment" && ty == 4 {
            alignment = u64::from(r.u32()?);
        } else {
            r.skip_value(ty)?;
        }
    }
    let tensors_at = r.at;
    for _ in 0..n_tensors {
        r.string()?;
        let n_dims = r.u32()?;
        r.take(8 * n_dims as usize)?;
        r.u32()?;
        r.u64()?;
    }
    if alignment == 0 {
        return Err("general.alignment is 0".into());
    }
    let at = r.at as u64;
    Ok((
        tensors_at,
        at.div_ceil(alignment).saturating_mul(alignment) as usize,
    ))
}

/// Byte offset of the first tensor's dimension array and its dimension count.
pub fn first_tensor_dims(b: &[u8]) -> Result<(usize, usize), String> {
    let (at, _) = gguf_layout(b)?;
    let mut r = Reader { b, at };
    r.string()?;
    let n_dims = r.u32()? as usize;
    Ok((r.at, n_dims))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("GGUF ends inside a field at byte {}", self.at))?;
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
    fn string(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.u64()?).map_err(|_| "string length overflows")?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// Skip one metadata value of GGUF type `ty`.
    fn skip_value(&mut self, ty: u32) -> Result<(), String> {
        let fixed = |ty: u32| match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match ty {
            8 => {
                self.string()?;
            }
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                match fixed(elem) {
                    Some(size) => {
                        let len = usize::try_from(n.saturating_mul(size))
                            .map_err(|_| "array too long")?;
                        self.take(len)?;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(elem)?;
                        }
                    }
                }
            }
            t => {
                let size = fixed(t).ok_or_else(|| format!("unknown GGUF value type {t}"))?;
                self.take(size as usize)?;
            }
        }
        Ok(())
    }
}

/// The tensor data of a GGUF file: what a worker holds resident.
pub fn tensor_data(file: &[u8]) -> Result<&[u8], String> {
    let off = gguf_data_offset(file)?;
    file.get(off..)
        .ok_or_else(|| format!("data offset {off} lies past the end of the file"))
}

/// The documented resident digest: SHA-256 over the domain string, the
/// length as u64 little-endian and the SHA-256 of every 16 KiB leaf in order.
pub fn resident_digest(data: &[u8]) -> [u8; 32] {
    let mut root = Sha256::new();
    root.update(DOMAIN);
    root.update((data.len() as u64).to_le_bytes());
    for leaf in data.chunks(LEAF_BYTES) {
        root.update(Sha256::digest(leaf));
    }
    root.finalize().into()
}

/// The documented seal: HMAC-SHA256 under `key` over each of shard_id, the
/// 32 digest bytes and sealed_at, each preceded by its length as u64 LE.
pub fn seal(key: &[u8; 32], shard_id: &str, digest: &[u8; 32], sealed_at: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for field in [shard_id.as_bytes(), &digest[..], sealed_at.as_bytes()] {
        m.update(&(field.len() as u64).to_le_bytes());
        m.update(field);
    }
    m.finalize().into_bytes().into()
}
