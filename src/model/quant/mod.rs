//! Tensor block formats: dequantize, row dot products, quantize (WORKER-4224).
//!
//! Why: the CPU reference engine computes in f32 from the GGUF blocks as
//! stored, and every GPU kernel is checked against it. `dot_row` is the
//! reference matvec's inner loop: it dequantizes one block into a stack buffer
//! and accumulates into eight fixed lanes, reduced in a fixed order, so the
//! same inputs give the same bits on every run and thread count.
//! One file per block family: [`float`], [`legacy`] (32-element blocks),
//! [`kquants`] (256-element super-blocks).

mod float;
mod kquants;
mod legacy;

use crate::error::{Result, WorkerError};
use crate::model::gguf::GgmlType;

/// Largest block (K-quants).
const MAX_BLOCK: usize = kquants::QK_K;

/// Bytes of one row of `n` elements.
pub fn row_bytes(dtype: GgmlType, n: usize) -> Result<usize> {
    let bs = dtype.block_size();
    if n % bs != 0 {
        return Err(WorkerError::model_load(format!(
            "a row of {n} elements is not a multiple of the {} block size {bs}",
            dtype.name()
        )));
    }
    (n / bs).checked_mul(dtype.type_size()).ok_or_else(|| {
        WorkerError::model_load(format!("a {} row of {n} elements overflows", dtype.name()))
    })
}

type BlockFn = fn(&[u8], &mut [f32]);

/// Dequantize one block function for the type (floats are handled in bulk).
fn block_fn(dtype: GgmlType) -> BlockFn {
    match dtype {
        GgmlType::F32 => float::dequant_f32,
        GgmlType::F16 => float::dequant_f16,
        GgmlType::BF16 => float::dequant_bf16,
        GgmlType::Q4_0 => legacy::dequant_q4_0,
        GgmlType::Q4_1 => legacy::dequant_q4_1,
        GgmlType::Q5_0 => legacy::dequant_q5_0,
        GgmlType::Q5_1 => legacy::dequant_q5_1,
        GgmlType::Q8_0 => legacy::dequant_q8_0,
        GgmlType::Q4K => kquants::dequant_q4_k,
        GgmlType::Q5K => kquants::dequant_q5_k,
        GgmlType::Q6K => kquants::dequant_q6_k,
    }
}

/// Dequantize whole blocks: `dst.len()` must be a multiple of the block size and
/// `src` exactly the bytes of that many elements.
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = row_bytes(dtype, dst.len())?;
    if src.len() != need {
        return Err(WorkerError::model_load(format!(
            "{} data of {} bytes does not hold {} elements ({need} bytes needed)",
            dtype.name(),
            src.len(),
            dst.len()
        )));
    }
    let bs = dtype.block_size();
    let ts = dtype.type_size();
    let f = block_fn(dtype);
    if bs == 1 {
        f(src, dst);
    } else {
        for (b, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
            f(b, y);
        }
    }
    Ok(())
}

/// Eight-lane dot product accumulated into `acc`; the lane order is fixed so
/// the result does not depend on the target's vector width.
#[inline(always)]
fn dot_lanes(acc: &mut [f32; 8], a: &[f32], b: &[f32]) {
    let mut ai = a.chunks_exact(8);
    let mut bi = b.chunks_exact(8);
    for (ca, cb) in (&mut ai).zip(&mut bi) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    for (k, (x, y)) in ai.remainder().iter().zip(bi.remainder()).enumerate() {
        acc[k] += x * y;
    }
}

#[inline(always)]
fn reduce(acc: &[f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// One matrix row (as stored) times `x`: Σ row[i]·x[i] in f32.
///
/// `row` must hold exactly `row_bytes(dtype, x.len())` bytes; the engine checks
/// shapes when it loads the model. Extra bytes or elements are ignored rather
/// than read out of bounds (debug builds assert).
pub fn dot_row(dtype: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(
        row_bytes(dtype, x.len()).ok(),
        Some(row.len()),
        "dot_row shape mismatch"
    );
    let bs = dtype.block_size();
    let ts = dtype.type_size();
    let mut acc = [0f32; 8];
    let mut buf = [0f32; MAX_BLOCK];
    if bs == 1 {
        // Floats: convert in stack-sized chunks so long rows stay allocation-free.
        let f = block_fn(dtype);
        for (b, xs) in row.chunks(ts * MAX_BLOCK).zip(x.chunks(MAX_BLOCK)) {
            let n = (b.len() / ts).min(xs.len());
            f(&b[..n * ts], &mut buf[..n]);
            dot_lanes(&mut acc, &buf[..n], &xs[..n]);
        }
        return reduce(&acc);
    }
    let f = block_fn(dtype);
    for (b, xs) in row.chunks_exact(ts).zip(x.chunks_exact(bs)) {
        f(b, &mut buf[..bs]);
        dot_lanes(&mut acc, &buf[..bs], xs);
    }
    reduce(&acc)
}

/// Quantize `src` (whole blocks) into `dst`, appending. Used by the GGUF
/// writer and tests; quality is close to ggml's reference quantizers but the
/// bytes need not match theirs.
pub fn quantize(dtype: GgmlType, src: &[f32], dst: &mut Vec<u8>) -> Result<()> {
    let need = row_bytes(dtype, src.len())?;
    dst.reserve(need);
    let bs = dtype.block_size();
    let f: fn(&[f32], &mut Vec<u8>) = match dtype {
        GgmlType::F32 => float::quant_f32,
        GgmlType::F16 => float::quant_f16,
        GgmlType::BF16 => float::quant_bf16,
        GgmlType::Q4_0 => legacy::quant_q4_0,
        GgmlType::Q4_1 => legacy::quant_q4_1,
        GgmlType::Q5_0 => legacy::quant_q5_0,
        GgmlType::Q5_1 => legacy::quant_q5_1,
        GgmlType::Q8_0 => legacy::quant_q8_0,
        GgmlType::Q4K => kquants::quant_q4_k,
        GgmlType::Q5K => kquants::quant_q5_k,
        GgmlType::Q6K => kquants::quant_q6_k,
    };
    if bs == 1 {
        f(src, dst);
    } else {
        for x in src.chunks_exact(bs) {
            f(x, dst);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
