//! `worker-orcd bench-auth`: does the time of a bearer-token check tell an
//! attacker which token matched? (WORKER-4201). A dudect-style leakage test
//! (Reparaz, Balasch, Verbauwhede, "Dude, is my code constant time?", 2017):
//! two classes of inputs are measured interleaved in random order, and
//! Welch's t-statistic of the two timing distributions is computed on the
//! whole sample and on cropped samples (below several percentiles, which
//! removes the long tail that interrupts add). |t| above 10 means the classes
//! are told apart with overwhelming confidence.
//!
//! The classes: the presented token equals the *first* stored token, or the
//! *last* one. Both are accepted and take the same path afterwards, so the
//! only way their times can differ is a comparison that stops early.
//!
//! At 400,000 samples a loaded machine can push |t| past 10 for a
//! difference of a nanosecond or two that no comparison causes (frequency
//! changes, the other core's work). So a check counts as leaking only when
//! |t| is above the threshold *and* the gap between the classes' medians is
//! at least [`GAP_RATIO`] of the control's gap: the control's leak is one
//! 32-byte comparison per stored token, the smallest early exit there is.
//!
//! A positive control runs beside it: the same classes through a comparison
//! that *does* stop at the first match (`==` over the stored digests). Its |t|
//! must exceed the threshold, or this machine and sample size cannot see a
//! leak of that size, and the run says so instead of passing. Prints a table
//! and writes the numbers as JSON; it asserts nothing itself.

use crate::config::Credentials;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Most tokens a token file may hold (the credentials' own bound).
const MAX_TOKENS: usize = 64;
/// Largest sample count accepted, per class and comparator.
const MAX_SAMPLES: usize = 10_000_000;
/// dudect's "definitely not constant time" level.
pub const T_THRESHOLD: f64 = 10.0;
/// Smallest median gap, as a fraction of the control's, that counts as a leak.
pub const GAP_RATIO: f64 = 0.25;

#[derive(Debug, clap::Args)]
pub struct BenchAuthArgs {
    /// Tokens in the simulated token file, 2..=64.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Measurements per comparator (split between the two classes at random).
    #[arg(long, default_value_t = 400_000)]
    pub samples: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One comparator's verdict.
#[derive(Debug, Serialize)]
pub struct Leakage {
    pub comparator: &'static str,
    /// Largest |t| over the whole sample and the cropped ones.
    pub max_abs_t: f64,
    pub median_ns_first: f64,
    pub median_ns_last: f64,
    pub samples: usize,
}

impl Leakage {
    fn median_gap(&self) -> f64 {
        (self.median_ns_first - self.median_ns_last).abs()
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tokens: usize,
    pub threshold: f64,
    /// The worker's own check (`Credentials::verify`).
    pub product: Leakage,
    /// The early-exit comparison: shows the test can see a leak here.
    pub control: Leakage,
    /// The product's median gap over the control's.
    pub gap_ratio: f64,
    /// The control leaked visibly and the product did not.
    pub constant_time: bool,
    /// The control stayed under the threshold: this run cannot tell.
    pub inconclusive: bool,
}

pub fn run(args: BenchAuthArgs) -> ExitCode {
    if !(2..=MAX_TOKENS).contains(&args.tokens) || !(1000..=MAX_SAMPLES).contains(&args.samples) {
        eprintln!(
            "bench-auth: --tokens must be 2..={MAX_TOKENS} and --samples 1000..={MAX_SAMPLES} \
             (got {} and {})",
            args.tokens, args.samples
        );
        return ExitCode::from(2);
    }
    let report = measure(args.tokens, args.samples);
    print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bench-auth: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// Random tokens of 48 hex digits (24 random bytes each).
fn random_tokens(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; 24];
            getrandom::fill(&mut b).unwrap_or_else(|_| unreachable!("the OS RNG is available"));
            hex::encode(b)
        })
        .collect()
}

/// Measure both comparators on the same token file.
pub fn measure(n_tokens: usize, samples: usize) -> Report {
    let tokens = random_tokens(n_tokens);
    let creds = Credentials::from_text(&tokens.join("\n"), "bench-auth")
        .unwrap_or_else(|e| unreachable!("generated tokens are valid: {e:?}"));
    let (first, last) = (tokens[0].as_str(), tokens[n_tokens - 1].as_str());
    let product = leakage(
        "Credentials::verify",
        samples,
        |t| creds.verify(t).is_some(),
        first,
        last,
    );
    let digests: Vec<[u8; 32]> = tokens.iter().map(|t| sha256(t.as_bytes())).collect();
    let control = leakage(
        "early-exit == (control)",
        samples,
        |t| {
            let d = sha256(t.as_bytes());
            digests.contains(&d)
        },
        first,
        last,
    );
    let control_gap = control.median_gap();
    let inconclusive = control.max_abs_t < T_THRESHOLD || control_gap <= 0.0;
    let gap_ratio = if control_gap > 0.0 {
        product.median_gap() / control_gap
    } else {
        f64::INFINITY
    };
    let leaks = product.max_abs_t >= T_THRESHOLD && gap_ratio >= GAP_RATIO;
    Report {
        tokens: n_tokens,
        threshold: T_THRESHOLD,
        gap_ratio,
        constant_time: !inconclusive && !leaks,
        inconclusive,
        product,
        control,
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Time `check` on the two classes, interleaved in random order.
fn leakage(
    comparator: &'static str,
    samples: usize,
    check: impl Fn(&str) -> bool,
    first: &str,
    last: &str,
) -> Leakage {
    let mut coins = vec![0u8; samples];
    getrandom::fill(&mut coins).unwrap_or_else(|_| unreachable!("the OS RNG is available"));
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
    // Warm-up: caches, branch predictors and the allocator settle first.
    for _ in 0..samples / 10 {
        std::hint::black_box(check(std::hint::black_box(first)));
    }
    for c in coins {
        let class = usize::from(c & 1);
        let input = if class == 0 { first } else { last };
        let t0 = Instant::now();
        let ok = check(std::hint::black_box(input));
        let dt = t0.elapsed().as_nanos() as f64;
        std::hint::black_box(ok);
        times[class].push(dt);
    }
    Leakage {
        comparator,
        max_abs_t: max_abs_t(&times[0], &times[1]),
        median_ns_first: median(&times[0]),
        median_ns_last: median(&times[1]),
        samples,
    }
}

/// Largest |Welch t| over the whole sample and the samples cropped below
/// the 50th..95th percentiles of the pooled times.
pub fn max_abs_t(a: &[f64], b: &[f64]) -> f64 {
    let mut pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    pooled.sort_by(f64::total_cmp);
    let mut best = welch_t(a, b).abs();
    for pct in [0.5, 0.75, 0.9, 0.95] {
        let cut = pooled[((pooled.len() - 1) as f64 * pct) as usize];
        let ca: Vec<f64> = a.iter().copied().filter(|x| *x <= cut).collect();
        let cb: Vec<f64> = b.iter().copied().filter(|x| *x <= cut).collect();
        best = best.max(welch_t(&ca, &cb).abs());
    }
    best
}

/// Welch's t-statistic of two samples (0 when either has fewer than 2).
pub fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    if a.len() < 2 || b.len() < 2 {
        return 0.0;
    }
    let ((na, ma, va), (nb, mb, vb)) = (stats(a), stats(b));
    let se = (va / na + vb / nb).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (ma - mb) / se
}

fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print_table(r: &Report) {
    println!(
        "token check timing, {} tokens: first-token match vs last-token match (dudect, |t| threshold {})",
        r.tokens, r.threshold
    );
    println!("| comparator | samples | median ns (first) | median ns (last) | max abs t |");
    println!("|---|---|---|---|---|");
    for l in [&r.product, &r.control] {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} |",
            l.comparator, l.samples, l.median_ns_first, l.median_ns_last, l.max_abs_t
        );
    }
    let verdict = if r.inconclusive {
        "inconclusive: the control's leak was not visible at this sample size; raise --samples"
    } else if r.constant_time {
        "constant time: the control leaks visibly, the worker's check does not"
    } else {
        "LEAKS: the worker's check takes a time that depends on which token matched"
    };
    println!(
        "median gap of the worker's check / the control's: {:.2} (a leak needs |t| >= {} and >= {GAP_RATIO})",
        r.gap_ratio, r.threshold
    );
    println!("verdict: {verdict}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_t_of_known_samples() {
        // Means 2 and 3, variances 1 and 1, n = 3 each: t = -1 / sqrt(2/3).
        let t = welch_t(&[1.0, 2.0, 3.0], &[2.0, 3.0, 4.0]);
        assert!((t + 1.0 / (2.0f64 / 3.0).sqrt()).abs() < 1e-12, "{t}");
        assert_eq!(welch_t(&[1.0], &[2.0, 3.0]), 0.0);
        assert_eq!(welch_t(&[1.0, 1.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn cropping_finds_a_shift_hidden_by_a_tail() {
        // Class b is 10 units slower, but a few huge outliers in a hide it from the plain t.
        let mut a: Vec<f64> = (0..1000).map(|i| 100.0 + f64::from(i % 7)).collect();
        a.extend([1e9, 1e9, 1e9]);
        let b: Vec<f64> = (0..1000).map(|i| 110.0 + f64::from(i % 7)).collect();
        assert!(welch_t(&a, &b).abs() < 10.0);
        assert!(max_abs_t(&a, &b) > 10.0);
    }
}
