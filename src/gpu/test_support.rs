//! What the GPU tests share: the device they run on, a seeded generator, a
//! relative error and the byte offsets weights are placed at. A test binary
//! built for the GPU suite (`WORKER_ORCD_GPU_TESTS=1`, `cfg(gpu_tests)`)
//! exists to run on a GPU, so a missing or unusable device fails the test:
//! it never passes by skipping (built without that variable, the GPU tests
//! are ignored instead).

use super::Gpu;
use crate::model::gguf::GgmlType;

/// GPU 0 for `test`, or a failure that says why it is unusable.
pub(crate) fn test_gpu(test: &str) -> Gpu {
    match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => panic!(
            "{test}: this test binary was built for the GPU suite (WORKER_ORCD_GPU_TESTS=1) but \
             GPU 0 is unusable: {e}. Run it on the GPU machine (ci/gpu), or build without \
             WORKER_ORCD_GPU_TESTS to leave the GPU tests ignored."
        ),
    }
}

/// xorshift64*: a fresh seed per run (printed), fixed by WORKER_ORCD_TEST_SEED.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn fresh(test: &str) -> Self {
        let seed = crate::env::TEST_SEED
            .get()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        println!("{test}: seed {seed}");
        Self(seed)
    }

    pub(crate) fn u(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [0, 1), on a grid of 2^-24.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.u() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub(crate) fn signed(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }

    /// `n` values uniform in [-1, 1).
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.signed()).collect()
    }
}

/// ‖got − want‖ / ‖want‖ in float64; every output must be finite.
pub(crate) fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Offsets past a 4-byte boundary at which the dequantizer tests place a
/// format's weights: any byte for the block formats (their kernels assume
/// no alignment of a block), whole elements for f32, f16 and bf16, whose
/// kernels load each element as it is: a misaligned f32 load faults
/// on a GPU, and no GGUF tensor is misaligned (its data starts 32-byte
/// aligned and a row is whole elements).
pub(crate) fn weight_pads(dt: GgmlType) -> impl Iterator<Item = usize> {
    let step = if dt.block_size() == 1 {
        dt.type_size()
    } else {
        1
    };
    (0..4).step_by(step)
}
