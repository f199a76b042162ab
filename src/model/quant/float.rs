//! Plain float tensors: F32, F16, BF16 (one element per "block").
//!
//! Why separate: these need no scales, and the writer stores norms and small
//! tensors in them; they follow the same block interface as the quantized
//! families so the engine's matvec treats every format alike (WORKER-4224).

use half::{bf16, f16};

/// Little-endian f16 at byte offset `i`.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

pub(super) fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Through half's slice conversion, which uses F16C when the CPU has it;
/// the per-element path is several times slower.
pub(super) fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut bits = [0u16; 256];
    for (s, d) in src.chunks(512).zip(dst.chunks_mut(256)) {
        let n = (s.len() / 2).min(d.len());
        for (o, c) in bits[..n].iter_mut().zip(s.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]);
        }
        let h: &[f16] = bits[..n].reinterpret_cast();
        h.convert_to_f32_slice(&mut d[..n]);
    }
}

pub(super) fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub(super) fn quant_f32(src: &[f32], dst: &mut Vec<u8>) {
    for v in src {
        dst.extend_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn quant_f16(src: &[f32], dst: &mut Vec<u8>) {
    for v in src {
        dst.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

pub(super) fn quant_bf16(src: &[f32], dst: &mut Vec<u8>) {
    for v in src {
        dst.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ~= 0.333251953125
        let src = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35];
        let mut out = [0f32; 3];
        dequant_f16(&src, &mut out);
        assert_eq!(out, [1.0, -2.0, 0.333_251_95]);
        // bf16 0x3F80 = 1.0, 0x4049 = 3.140625
        let src = [0x80, 0x3F, 0x49, 0x40];
        let mut out = [0f32; 2];
        dequant_bf16(&src, &mut out);
        assert_eq!(out, [1.0, 3.140_625]);
        let mut out = [0f32; 1];
        dequant_f32(&1.5f32.to_le_bytes(), &mut out);
        assert_eq!(out, [1.5]);
    }
}
