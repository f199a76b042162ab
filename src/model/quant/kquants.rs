//! The 256-element "K" super-block formats: Q4_K, Q5_K, Q6_K (ggml layouts).
//!
//! Why: real Q4_K_M releases mix these (GUIDE §2). Layouts, little-endian:
//! - Q4_K (144 B): f16 d, f16 dmin, 12 B packed 6-bit (scale, min) pairs for 8
//!   sub-blocks of 32, 128 B nibbles. Each 64-element chunk c uses 32 bytes:
//!   low nibbles are elements 64c..64c+32 (sub-block 2c), high nibbles the next
//!   32 (sub-block 2c+1). x = d·sc·q − dmin·m.
//! - Q5_K (176 B): as Q4_K plus 32 B of fifth bits between scales and nibbles:
//!   element 64c+l takes bit 2c of qh[l], element 64c+32+l bit 2c+1.
//! - Q6_K (210 B): 128 B low nibbles, 64 B 2-bit highs, 16 × i8 scales (one per
//!   16 elements), f16 d at the end. x = d·sc·(q − 32).

use half::f16;

use super::float::f16_at;

pub(super) const QK_K: usize = 256;

/// Unpack sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
#[inline(always)]
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min`] for 8 (scale, min) pairs of 6 bits each.
fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    s
}

pub(super) fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (s1, m1) = scale_min(2 * c, scales);
        let (s2, m2) = scale_min(2 * c + 1, scales);
        let (d1, o1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, o2) = (d * s2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - o1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - o2;
        }
    }
}

pub(super) fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (s1, m1) = scale_min(2 * c, scales);
        let (s2, m2) = scale_min(2 * c + 1, scales);
        let (d1, o1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, o2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 1u8 << (2 * c + 1));
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - o1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - o2;
        }
    }
}

pub(super) fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &ql[64 * n..64 * n + 64];
        let qh = &qh[32 * n..32 * n + 32];
        let sc = &sc[8 * n..8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Shared by Q4_K and Q5_K: per-sub-block affine (scale, min) over `levels`
/// quantization steps, both quantized to 6 bits against super-block d/dmin.
/// Returns (d, dmin, packed scales, quants 0..=levels).
fn affine_superblock(x: &[f32], levels: f32) -> (f32, f32, [u8; 12], [u8; QK_K]) {
    let mut scale = [0f32; 8];
    let mut minus = [0f32; 8];
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        let lo = sub.iter().fold(0f32, |a, &v| a.min(v));
        let hi = sub.iter().fold(f32::MIN, |a, &v| a.max(v));
        scale[j] = (hi - lo).max(0.0) / levels;
        minus[j] = -lo;
    }
    let max_scale = scale.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = minus.iter().fold(0f32, |a, &v| a.max(v));
    let d = round_f16(max_scale / 63.0);
    let dmin = round_f16(max_min / 63.0);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = if d > 0.0 {
            (scale[j] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        m[j] = if dmin > 0.0 {
            (minus[j] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    let mut q = [0u8; QK_K];
    for j in 0..8 {
        let step = d * sc[j] as f32;
        let off = dmin * m[j] as f32;
        for l in 0..32 {
            let v = x[32 * j + l];
            q[32 * j + l] = if step > 0.0 {
                ((v + off) / step).round().clamp(0.0, levels) as u8
            } else {
                0
            };
        }
    }
    (d, dmin, pack_scale_min(&sc, &m), q)
}

pub(super) fn quant_q4_k(x: &[f32], dst: &mut Vec<u8>) {
    let (d, dmin, scales, q) = affine_superblock(x, 15.0);
    dst.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    dst.extend_from_slice(&f16::from_f32(dmin).to_bits().to_le_bytes());
    dst.extend_from_slice(&scales);
    for c in 0..4 {
        for l in 0..32 {
            dst.push(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
        }
    }
}

pub(super) fn quant_q5_k(x: &[f32], dst: &mut Vec<u8>) {
    let (d, dmin, scales, q) = affine_superblock(x, 31.0);
    dst.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    dst.extend_from_slice(&f16::from_f32(dmin).to_bits().to_le_bytes());
    dst.extend_from_slice(&scales);
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            qh[l] |= ((q[64 * c + l] >> 4) & 1) << (2 * c);
            qh[l] |= ((q[64 * c + 32 + l] >> 4) & 1) << (2 * c + 1);
        }
    }
    dst.extend_from_slice(&qh);
    for c in 0..4 {
        for l in 0..32 {
            dst.push((q[64 * c + l] & 0x0F) | ((q[64 * c + 32 + l] & 0x0F) << 4));
        }
    }
}

pub(super) fn quant_q6_k(x: &[f32], dst: &mut Vec<u8>) {
    // One signed scale per 16 elements, mapping the largest magnitude to -32.
    let mut scale = [0f32; 16];
    for (g, s) in scale.iter_mut().enumerate() {
        let mut amax = 0f32;
        for &v in &x[16 * g..16 * g + 16] {
            if v.abs() > amax {
                amax = v.abs();
                *s = v / -32.0;
            }
        }
    }
    let mut max_abs = 0f32;
    let mut max_scale = 0f32;
    for &s in &scale {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    let iscale = if max_scale != 0.0 {
        -128.0 / max_scale
    } else {
        0.0
    };
    let d = round_f16(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
    let mut sc = [0i8; 16];
    for g in 0..16 {
        sc[g] = (iscale * scale[g]).round().clamp(-128.0, 127.0) as i8;
    }
    let mut q = [0u8; QK_K];
    for (i, qi) in q.iter_mut().enumerate() {
        let step = d * sc[i / 16] as f32;
        let v = if step != 0.0 {
            (x[i] / step).round().clamp(-32.0, 31.0)
        } else {
            0.0
        };
        *qi = (v as i32 + 32) as u8;
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for n in 0..2 {
        for l in 0..32 {
            let base = 128 * n + l;
            let (q1, q2, q3, q4) = (q[base], q[base + 32], q[base + 64], q[base + 96]);
            ql[64 * n + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            ql[64 * n + l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            qh[32 * n + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    dst.extend_from_slice(&ql);
    dst.extend_from_slice(&qh);
    dst.extend(sc.iter().map(|&s| s as u8));
    dst.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// Scales 1..=8, mins 10..=17 for sub-blocks 0..8, written by hand into
    /// ggml's 12-byte packing (low 6 bits first four, high 2 bits in the top of
    /// bytes 0..8, low 4 bits of the last four in bytes 8..12).
    fn hand_scales() -> [u8; 12] {
        let sc = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let m = [10u8, 11, 12, 13, 14, 15, 16, 17];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j]; // sc[j+4] < 16: no high bits
            s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        s
    }

    #[test]
    fn scale_min_unpacks_hand_packing_and_pack_inverts() {
        let s = hand_scales();
        for j in 0..8 {
            assert_eq!(scale_min(j, &s), (j as u8 + 1, j as u8 + 10));
        }
        let sc = [63u8, 0, 17, 32, 48, 63, 1, 33];
        let m = [0u8, 63, 5, 40, 16, 31, 62, 2];
        let p = pack_scale_min(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min(j, &p), (sc[j], m[j]));
        }
    }

    #[test]
    fn q4_k_hand_block() {
        let mut b = f16b(0.5).to_vec();
        b.extend(f16b(0.25));
        b.extend(hand_scales());
        // chunk c: byte l = low (l % 16), high 15 - (l % 16)
        for _c in 0..4 {
            b.extend((0..32u8).map(|l| (l % 16) | ((15 - l % 16) << 4)));
        }
        let mut y = [0f32; 256];
        dequant_q4_k(&b, &mut y);
        for c in 0..4 {
            for l in 0..32 {
                let (s1, m1) = ((2 * c + 1) as f32, (2 * c + 10) as f32);
                let (s2, m2) = ((2 * c + 2) as f32, (2 * c + 11) as f32);
                assert_eq!(y[64 * c + l], 0.5 * s1 * (l % 16) as f32 - 0.25 * m1);
                assert_eq!(
                    y[64 * c + 32 + l],
                    0.5 * s2 * (15 - l % 16) as f32 - 0.25 * m2
                );
            }
        }
    }

    #[test]
    fn q5_k_hand_block() {
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(0.5));
        b.extend(hand_scales());
        // qh[l]: bit set for chunk 1 low half (bit 2) when l is even
        b.extend((0..32u8).map(|l| if l % 2 == 0 { 1 << 2 } else { 0 }));
        b.extend([0x53u8; 128]); // low 3, high 5
        let mut y = [0f32; 256];
        dequant_q5_k(&b, &mut y);
        // chunk 0: sub-blocks 0,1: scale 1,2 mins 10,11
        assert_eq!(y[0], 3.0 - 5.0);
        assert_eq!(y[32], 2.0 * 5.0 - 5.5);
        // chunk 1 low half: sub-block 2 (scale 3, min 12); element 64 has l = 0 (even)
        assert_eq!(y[64], 3.0 * 19.0 - 6.0);
        assert_eq!(y[65], 3.0 * 3.0 - 6.0);
        // chunk 1 high half: sub-block 3 (scale 4, min 13), no fifth bit
        assert_eq!(y[96], 4.0 * 5.0 - 6.5);
    }

    #[test]
    fn q6_k_hand_block() {
        let mut b = Vec::new();
        // ql: first 64 bytes (n=0) 0x21, next 64 (n=1) 0x00
        b.extend([0x21u8; 64]);
        b.extend([0x00u8; 64]);
        // qh: n=0 all 0b11_10_01_00 (q1 hi 0, q2 hi 1, q3 hi 2, q4 hi 3); n=1 0xFF
        b.extend([0b1110_0100u8; 32]);
        b.extend([0xFFu8; 32]);
        let sc: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 5, 6, 7, 8, 9, 10, 11, -12];
        b.extend(sc.iter().map(|&s| s as u8));
        b.extend(f16b(0.5));
        assert_eq!(b.len(), 210);
        let mut y = [0f32; 256];
        dequant_q6_k(&b, &mut y);
        // n=0, l=0: q1 = 1 | 0<<4 = 1 → -31, scale sc[0]=1
        assert_eq!(y[0], 0.5 * 1.0 * -31.0);
        // l=16 uses sc[1] = -1
        assert_eq!(y[16], -0.5 * -31.0);
        // q2 = 1 | 1<<4 = 17 → -15, sc[2] = 2
        assert_eq!(y[32], 0.5 * 2.0 * -15.0);
        // q3 = 2 | 2<<4 = 34 → 2, sc[4] = 3
        assert_eq!(y[64], 0.5 * 3.0 * 2.0);
        // q4 = 2 | 3<<4 = 50 → 18, sc[7] = -4 at l = 16
        assert_eq!(y[96 + 16], 0.5 * -4.0 * 18.0);
        // n=1: all nibbles 0, highs 3 → 48 - 32 = 16; last element uses sc[15] = -12
        assert_eq!(y[128], 0.5 * 5.0 * 16.0);
        assert_eq!(y[255], 0.5 * -12.0 * 16.0);
    }
}
