//! The portable sampling generator (WORKER-4710, 4712): the same seed gives the
//! same draws on every machine, OS and backend, so one request reproduces the
//! same tokens on the CPU reference path and on the GPU.
//!
//! Algorithm (exact, so another implementation can reproduce it bit for bit):
//!
//! - State: one `u64`, initialised to the request seed.
//! - Step (SplitMix64, Steele/Lea/Flood 2014):
//!   ```text
//!   state = state + 0x9E3779B97F4A7C15            (wrapping)
//!   z = state
//!   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9      (wrapping)
//!   z = (z ^ (z >> 27)) * 0x94D049BB133111EB      (wrapping)
//!   z = z ^ (z >> 31)
//!   ```
//! - Draw: the top 24 bits of `z` divided by 2^24, i.e. `(z >> 40) as f32 / 16777216.0`.
//!   Every value is an exact multiple of 2^-24 in `[0, 1)`, representable in
//!   an `f32` without rounding, so no float behaviour differs across machines.
//!
//! One draw is consumed per generated token, including greedy steps, so that
//! switching a request between greedy and sampled decoding at some step does
//! not shift the draws of later steps.

/// Seeded SplitMix64 stream of uniform draws in `[0, 1)`.
#[derive(Debug, Clone)]
pub struct SamplerRng {
    state: u64,
}

impl SamplerRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next raw 64-bit output of SplitMix64.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A choice in `0..n` for tests' random schedules (modulo bias is
    /// harmless there), so they replay from a seed with this one generator.
    #[cfg(test)]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The next draw: a multiple of 2^-24 in `[0, 1)`.
    pub fn next_draw(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / 16_777_216.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_known_answers() {
        // Reference outputs of SplitMix64 seeded with 0 (published with the
        // algorithm; also reproduced by Java's SplittableRandom core).
        let mut r = SamplerRng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn draws_are_in_range_and_seeded() {
        let mut a = SamplerRng::new(42);
        let mut b = SamplerRng::new(42);
        let mut c = SamplerRng::new(43);
        let mut differs = false;
        for _ in 0..10_000 {
            let x = a.next_draw();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x.to_bits(), b.next_draw().to_bits());
            differs |= x != c.next_draw();
        }
        assert!(differs);
    }

    #[test]
    fn draw_is_top_24_bits() {
        let mut a = SamplerRng::new(7);
        let mut b = SamplerRng::new(7);
        let raw = a.next_u64();
        assert_eq!(b.next_draw(), (raw >> 40) as f32 / 16_777_216.0);
        assert_eq!(
            ((raw >> 40) as f32 / 16_777_216.0 * 16_777_216.0) as u64,
            raw >> 40
        );
    }
}
