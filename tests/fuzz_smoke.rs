//! The fuzz smoke run of CI (issue 13 point 6): every target of
//! `worker_orcd::fuzzing` (the same functions the cargo-fuzz targets in
//! `fuzz/` call) runs over its seed corpus (`fuzz/corpus/<target>`) and then
//! over mutations of it for a few seconds: bit flips, byte and boundary-value
//! writes (0, 0xFF, u32 and u64 maxima, where GGUF keeps its counts and
//! lengths), insertions, deletions, duplications, truncations and splices.
//! A panic fails the test and leaves the input under
//! `target/fuzz-smoke/<target>-crash.bin` to reproduce. The mutations come
//! from a fixed seed (`WORKER_ORCD_TEST_SEED` overrides it), so a failure
//! replays. Coverage-guided runs of millions of inputs are `ci/fuzz` (cargo-fuzz).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Time each target gets: CI's budget, fixed here.
const PER_TARGET: Duration = Duration::from_secs(3);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("read seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds under {}", dir.display());
    seeds
}

/// One mutation of `input`, splicing from `other` sometimes.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                // A boundary value where a count or a length may sit.
                let vals: [&[u8]; 5] = [
                    &[0; 8],
                    &[0xFF; 8],
                    &u32::MAX.to_le_bytes(),
                    &(i32::MAX as u32 + 1).to_le_bytes(),
                    &(u64::MAX / 2).to_le_bytes(),
                ];
                let val = vals[rng.below(vals.len())];
                let at = at.min(v.len().saturating_sub(val.len()));
                for (k, b) in val.iter().enumerate() {
                    if let Some(x) = v.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
            3 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 if !v.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                v.drain(at.min(end)..end);
            }
            5 if !v.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let piece = v[at.min(end)..end].to_vec();
                v.splice(at..at, piece);
            }
            6 => v.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    v
}

fn run_one(target: &str, f: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-smoke");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{target}-crash.bin"));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {target} panicked on a {}-byte input, saved to {}; replay it with \
             `cargo fuzz run {target} {}`",
            input.len(),
            path.display(),
            path.display()
        );
    }
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let seed = std::env::var("WORKER_ORCD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F022_u64);
    for &(target, f) in worker_orcd::fuzzing::TARGETS {
        let seeds = corpus(target);
        for s in &seeds {
            run_one(target, f, s);
        }
        let mut rng = Rng(seed ^ target.len() as u64 ^ 0x9E37_79B9_7F4A_7C15);
        let t0 = Instant::now();
        let mut runs = seeds.len() as u64;
        while t0.elapsed() < PER_TARGET {
            let a = &seeds[rng.below(seeds.len())];
            let b = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, a, b);
            run_one(target, f, &input);
            runs += 1;
        }
        println!(
            "fuzz smoke: target {target}: {runs} inputs ({} seeds) in {:.1} s, no panic (seed {seed:#x})",
            seeds.len(),
            t0.elapsed().as_secs_f64()
        );
    }
}
