//! Round trips and dot-product consistency for every block format.

use super::*;

/// Deterministic pseudo-normal values (sum of uniforms), no dependencies.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((next() + next() + next() + next()) - 2.0) * scale)
        .collect()
}

/// Worst allowed |x − dq(q(x))| relative to the block's max |x|.
fn tolerance(t: GgmlType) -> f32 {
    match t {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 8e-3,
        GgmlType::Q8_0 => 1.0 / 127.0,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 1.0 / 15.0,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 1.0 / 7.0,
        GgmlType::Q6K => 1.0 / 24.0,
        GgmlType::Q5K => 1.0 / 12.0,
        GgmlType::Q4K => 1.0 / 6.0,
    }
}

#[test]
fn round_trip_error_is_bounded_for_every_type() {
    for t in GgmlType::ALL {
        let n = 1024;
        let x = values(n, t.id() as u64 + 7, 0.05);
        let mut q = Vec::new();
        quantize(t, &x, &mut q).unwrap();
        assert_eq!(q.len(), row_bytes(t, n).unwrap(), "{}", t.name());
        let mut y = vec![0f32; n];
        dequantize(t, &q, &mut y).unwrap();
        let bs = t.block_size().max(32);
        for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                let err = (a - b).abs();
                assert!(
                    err <= tolerance(t) * amax + 1e-7,
                    "{}: {a} became {b} (err {err}, block max {amax})",
                    t.name()
                );
            }
        }
    }
}

#[test]
fn dot_row_matches_dequantized_dot() {
    for t in GgmlType::ALL {
        let n = 768;
        let w = values(n, 99 + t.id() as u64, 0.02);
        let x = values(n, 5, 1.0);
        let mut q = Vec::new();
        quantize(t, &w, &mut q).unwrap();
        let mut y = vec![0f32; n];
        dequantize(t, &q, &mut y).unwrap();
        let want: f64 = y.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let got = dot_row(t, &q, &x);
        assert!(
            (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{}: dot_row {got} vs {want}",
            t.name()
        );
        // Same inputs, same bits.
        assert_eq!(got.to_bits(), dot_row(t, &q, &x).to_bits());
    }
}

#[test]
fn exact_hand_dot_q8_0() {
    // d = 1, q = 1..=32, x = 1: Σ = 528 exactly.
    let mut b = half::f16::from_f32(1.0).to_bits().to_le_bytes().to_vec();
    b.extend(1..=32u8);
    assert_eq!(dot_row(GgmlType::Q8_0, &b, &[1.0; 32]), 528.0);
}

#[test]
fn dequantize_refuses_bad_lengths() {
    let mut y = vec![0f32; 31];
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut y).is_err());
    let mut y = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut y).is_err());
    assert!(row_bytes(GgmlType::Q4K, 896).is_err());
    assert_eq!(row_bytes(GgmlType::Q6K, 1536).unwrap(), 6 * 210);
}

#[test]
fn quantize_all_zero_is_zero() {
    for t in GgmlType::ALL {
        let x = vec![0f32; 256];
        let mut q = Vec::new();
        quantize(t, &x, &mut q).unwrap();
        let mut y = vec![1f32; 256];
        dequantize(t, &q, &mut y).unwrap();
        assert!(y.iter().all(|v| *v == 0.0), "{}", t.name());
    }
}

/// Cross-check against an independent implementation: gguf-py's numpy
/// dequantizers on random blocks (`tests/fixtures/quant/gen_reference.py`).
/// `WORKER_ORCD_QUANT_XCHECK` may point at a larger set made the same way.
#[test]
fn matches_independent_reference() {
    let dir = std::env::var_os("WORKER_ORCD_QUANT_XCHECK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
        });
    for t in GgmlType::ALL {
        let raw = std::fs::read(dir.join(format!("{}.raw", t.name()))).unwrap();
        let refb = std::fs::read(dir.join(format!("{}.ref", t.name()))).unwrap();
        let want: Vec<f32> = refb
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize(t, &raw, &mut got).unwrap();
        // dot_row over the same bytes, one block-row at a time, against f64.
        let ones: Vec<f32> = (0..got.len()).map(|i| 1.0 - (i % 7) as f32 / 4.0).collect();
        let want_dot: f64 = want
            .iter()
            .zip(&ones)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let got_dot = dot_row(t, &raw, &ones) as f64;
        let scale: f64 = want
            .iter()
            .zip(&ones)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        assert!(
            (got_dot - want_dot).abs() <= 1e-5 * scale.max(1.0),
            "{} dot {got_dot} vs {want_dot}",
            t.name()
        );
        let mut worst = 0f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let err = (a - b).abs() / b.abs().max(1e-3);
            assert!(
                err <= 1e-6,
                "{} element {i}: ours {a}, reference {b}",
                t.name()
            );
            worst = worst.max(err);
        }
        println!(
            "{}: {} values agree (worst relative error {worst:e})",
            t.name(),
            want.len()
        );
    }
}
