//! The 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml layouts).
//!
//! Why: SmolLM2 ships as Q4_1 with a Q8_0 embedding, and the Qwen2.5 "Q4_K_M"
//! release is mostly Q5_0 and Q8_0 (GUIDE §2). Layouts, all little-endian:
//! - Q4_0 (18 B): f16 d, 16 B nibbles; x = d·(q − 8). Low nibbles are elements
//!   0..16, high nibbles 16..32.
//! - Q4_1 (20 B): f16 d, f16 m, 16 B nibbles; x = d·q + m.
//! - Q5_0 (22 B): f16 d, u32 high bits, 16 B nibbles; x = d·(q − 16), bit j of
//!   the u32 is bit 4 of element j.
//! - Q5_1 (24 B): f16 d, f16 m, u32 high bits, 16 B nibbles; x = d·q + m.
//! - Q8_0 (34 B): f16 d, 32 × i8; x = d·q.

use half::f16;

use super::float::f16_at;

pub(super) const QK: usize = 32;

// Low and high nibbles are written in separate loops over fixed-size
// slices so the compiler vectorizes them; the values are the same.

pub(super) fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y[..QK].split_at_mut(16);
    for (o, &q) in lo.iter_mut().zip(qs) {
        *o = ((q & 0x0F) as i32 - 8) as f32 * d;
    }
    for (o, &q) in hi.iter_mut().zip(qs) {
        *o = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub(super) fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = y[..QK].split_at_mut(16);
    for (o, &q) in lo.iter_mut().zip(qs) {
        *o = (q & 0x0F) as f32 * d + m;
    }
    for (o, &q) in hi.iter_mut().zip(qs) {
        *o = (q >> 4) as f32 * d + m;
    }
}

pub(super) fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let (lo, hi) = y[..QK].split_at_mut(16);
    for (j, (o, &q)) in lo.iter_mut().zip(qs).enumerate() {
        let h = ((qh >> j) & 1) << 4;
        *o = (((q & 0x0F) as u32 | h) as i32 - 16) as f32 * d;
    }
    for (j, (o, &q)) in hi.iter_mut().zip(qs).enumerate() {
        let h = ((qh >> (j + 16)) & 1) << 4;
        *o = (((q >> 4) as u32 | h) as i32 - 16) as f32 * d;
    }
}

pub(super) fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let (lo, hi) = y[..QK].split_at_mut(16);
    for (j, (o, &q)) in lo.iter_mut().zip(qs).enumerate() {
        let h = ((qh >> j) & 1) << 4;
        *o = ((q & 0x0F) as u32 | h) as f32 * d + m;
    }
    for (j, (o, &q)) in hi.iter_mut().zip(qs).enumerate() {
        let h = ((qh >> (j + 16)) & 1) << 4;
        *o = ((q >> 4) as u32 | h) as f32 * d + m;
    }
}

pub(super) fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y[..QK].iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// The value of largest magnitude (keeping its sign), as ggml picks it.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn push_f16(dst: &mut Vec<u8>, v: f32) {
    dst.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

pub(super) fn quant_q4_0(x: &[f32], dst: &mut Vec<u8>) {
    let d = signed_absmax(x) / -8.0;
    let id = inv(d);
    push_f16(dst, d);
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
        dst.push(q0 | (q1 << 4));
    }
}

pub(super) fn quant_q4_1(x: &[f32], dst: &mut Vec<u8>) {
    let (lo, hi) = min_max(x);
    let d = (hi - lo) / 15.0;
    let id = inv(d);
    push_f16(dst, d);
    push_f16(dst, lo);
    for j in 0..16 {
        let q0 = (((x[j] - lo) * id + 0.5) as i32).clamp(0, 15) as u8;
        let q1 = (((x[j + 16] - lo) * id + 0.5) as i32).clamp(0, 15) as u8;
        dst.push(q0 | (q1 << 4));
    }
}

pub(super) fn quant_q5_0(x: &[f32], dst: &mut Vec<u8>) {
    let d = signed_absmax(x) / -16.0;
    let id = inv(d);
    let q: Vec<u32> = x
        .iter()
        .map(|&v| ((v * id + 16.5) as i32).clamp(0, 31) as u32)
        .collect();
    push_5bit(dst, d, None, &q);
}

pub(super) fn quant_q5_1(x: &[f32], dst: &mut Vec<u8>) {
    let (lo, hi) = min_max(x);
    let d = (hi - lo) / 31.0;
    let id = inv(d);
    let q: Vec<u32> = x
        .iter()
        .map(|&v| (((v - lo) * id + 0.5) as i32).clamp(0, 31) as u32)
        .collect();
    push_5bit(dst, d, Some(lo), &q);
}

fn push_5bit(dst: &mut Vec<u8>, d: f32, m: Option<f32>, q: &[u32]) {
    push_f16(dst, d);
    if let Some(m) = m {
        push_f16(dst, m);
    }
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v >> 4) & 1) << j;
    }
    dst.extend_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        dst.push((q[j] & 0x0F) as u8 | (((q[j + 16] & 0x0F) as u8) << 4));
    }
}

pub(super) fn quant_q8_0(x: &[f32], dst: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    push_f16(dst, d);
    for &v in x {
        dst.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_0_hand_block() {
        // d = 0.5; byte j = low (j % 16), high 15 - (j % 16)
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequant_q4_0(&b, &mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_hand_block() {
        let mut b = f16b(0.25).to_vec();
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let mut y = [0f32; 32];
        dequant_q4_1(&b, &mut y);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[15], 15.0 * 0.25 - 1.0);
        assert_eq!(y[16], 3.0 * 0.25 - 1.0);
        assert_eq!(y[31], 3.0 * 0.25 - 1.0);
    }

    #[test]
    fn q5_0_hand_block() {
        // high bit set for elements 1 and 17 only; nibbles all 0x21 (low 1, high 2)
        let mut b = f16b(2.0).to_vec();
        b.extend((1u32 << 1 | 1u32 << 17).to_le_bytes());
        b.extend([0x21u8; 16]);
        let mut y = [0f32; 32];
        dequant_q5_0(&b, &mut y);
        assert_eq!(y[0], (1.0 - 16.0) * 2.0);
        assert_eq!(y[1], (17.0 - 16.0) * 2.0);
        assert_eq!(y[16], (2.0 - 16.0) * 2.0);
        assert_eq!(y[17], (18.0 - 16.0) * 2.0);
    }

    #[test]
    fn q5_1_hand_block() {
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(0.5));
        b.extend(0x8000_0001u32.to_le_bytes()); // elements 0 and 31
        b.extend([0xF0u8; 16]);
        let mut y = [0f32; 32];
        dequant_q5_1(&b, &mut y);
        assert_eq!(y[0], 16.0 + 0.5);
        assert_eq!(y[1], 0.5);
        assert_eq!(y[16], 15.0 + 0.5);
        assert_eq!(y[31], 31.0 + 0.5);
    }

    #[test]
    fn q8_0_hand_block() {
        let mut b = f16b(0.125).to_vec();
        b.extend((0..32i8).map(|j| (j - 16) as u8));
        let mut y = [0f32; 32];
        dequant_q8_0(&b, &mut y);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.125);
        }
    }
}
