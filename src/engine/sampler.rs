//! Token selection from logits and stop-sequence matching (WORKER-4700
//! sampling part, 4710, 4712).
//!
//! Both backends end in the same host function, [`pick_from_candidates`], so
//! that a request with a given seed picks the same token on the CPU and on the
//! GPU whenever their candidate lists agree:
//!
//! 1. Greedy (`temperature == 0` or `top_k == 1`): the highest logit, the
//!    lowest id on ties. NaN logits rank below every number.
//! 2. Otherwise the candidate pool is the best `min(top_k, MAX_CANDIDATES)`
//!    tokens (`top_k == 0` means `MAX_CANDIDATES`), ordered by logit
//!    descending, id ascending on ties. The cap keeps the GPU's on-device
//!    selection bounded; tokens outside the best 1024 carry negligible mass at
//!    any temperature a client would use.
//! 3. Weights `exp((l_i - l_0) / T)` in f64; top-p keeps the shortest prefix
//!    whose mass reaches `top_p` of the pool's mass (at least one token).
//! 4. With `draw ∈ [0, 1)` from [`super::rng::SamplerRng`], the pick is the
//!    first candidate whose cumulative weight exceeds `draw × kept mass`.
//!
//! Determinism (WORKER-4710, 4713): the only platform-dependent step is
//! `f64::exp` in step 3 (the host libm). Both backends run this same host
//! code, so they agree on one machine; across machines a last-bit difference
//! in `exp` can change a pick only when a draw lands within ~1e-16 of a
//! cumulative boundary.
//!
//! EOS is handled by the caller (`Tokenizer::is_eog`); stop sequences by
//! [`StopMatcher`], which works on the streamed text.

use super::SamplingParams;
use std::cmp::Ordering;

/// Largest candidate pool sampling considers (see the module header).
pub const MAX_CANDIDATES: usize = 1024;

/// Logit order: descending value, NaN last, ascending id on ties.
fn rank(a: (u32, f32), b: (u32, f32)) -> Ordering {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0))
}

/// Index of the highest logit, the lowest index on ties (NaN never wins over a number).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if rank((i as u32, v), (best as u32, logits[best])) == Ordering::Less {
            best = i;
        }
    }
    best as u32
}

/// The best `k` (id, logit) pairs in candidate order.
pub fn top_candidates(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, |a, b| rank(*a, *b));
        all.truncate(k);
    }
    all.sort_unstable_by(|a, b| rank(*a, *b));
    all
}

/// Pool size for these parameters.
pub fn pool_size(p: &SamplingParams) -> usize {
    if p.top_k == 0 {
        MAX_CANDIDATES
    } else {
        (p.top_k as usize).min(MAX_CANDIDATES)
    }
}

/// How many candidates a pick with `p` reads: the best one when greedy,
/// else the pool ([`pool_size`]).
pub fn candidates_needed(p: &SamplingParams) -> usize {
    if p.is_greedy() {
        1
    } else {
        pool_size(p)
    }
}

/// Choose a token from the full logits of one position.
pub fn sample_from_logits(logits: &[f32], params: &SamplingParams, draw: f32) -> u32 {
    if logits.is_empty() {
        return 0;
    }
    if params.is_greedy() {
        return argmax(logits);
    }
    let cands = top_candidates(logits, pool_size(params));
    pick_from_candidates(&cands, params, draw)
}

/// The shared final step: `cands` sorted by logit descending, id ascending on ties.
pub fn pick_from_candidates(cands: &[(u32, f32)], params: &SamplingParams, draw: f32) -> u32 {
    let Some(&(first_id, first_logit)) = cands.first() else {
        return 0;
    };
    if params.is_greedy() || cands.len() == 1 || !first_logit.is_finite() {
        return first_id;
    }
    let k = pool_size(params).min(cands.len());
    let inv_t = 1.0 / f64::from(params.temperature);
    let weights: Vec<f64> = cands[..k]
        .iter()
        .map(|&(_, l)| {
            if l.is_nan() {
                0.0
            } else {
                ((f64::from(l) - f64::from(first_logit)) * inv_t).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let top_p = f64::from(params.top_p.clamp(0.0, 1.0));
    let mut kept = weights.len();
    if top_p < 1.0 {
        let mut cum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cum += w;
            if cum >= top_p * total {
                kept = i + 1;
                break;
            }
        }
    }
    let kept_mass: f64 = weights[..kept].iter().sum();
    let target = f64::from(draw.clamp(0.0, 1.0)) * kept_mass;
    let mut cum = 0.0;
    for (i, w) in weights[..kept].iter().enumerate() {
        cum += w;
        if cum > target {
            return cands[i].0;
        }
    }
    cands[kept - 1].0
}

/// What [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that can be sent to the client now.
    pub emit: String,
    /// A stop sequence was found; `emit` ends just before it and generation must stop.
    pub stopped: bool,
}

/// Finds stop sequences in streamed text. Text that could still be the start
/// of a stop sequence is held back until it is decided, so a client never
/// receives part of a stop sequence.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        let stops = stops
            .iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            stops,
            held: String::new(),
            done: false,
        }
    }

    /// Feed the next piece of decoded text.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.done {
            return StopOutput {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = earliest {
            let emit = self.held[..at].to_string();
            self.held.clear();
            self.done = true;
            return StopOutput {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop.
        let mut keep_from = self.held.len();
        for (start, _) in self.held.char_indices() {
            let tail = &self.held[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                keep_from = start;
                break;
            }
        }
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutput {
            emit,
            stopped: false,
        }
    }

    /// Generation ended for another reason: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(t: f32, k: u32, p: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
        }
    }

    #[test]
    fn greedy_takes_lowest_id_on_ties_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN]), 1);
        assert_eq!(
            sample_from_logits(&[0.0, 9.0, 9.0], &SamplingParams::GREEDY, 0.99),
            1
        );
    }

    #[test]
    fn candidates_sorted_desc_then_id() {
        let c = top_candidates(&[1.0, 5.0, 5.0, -2.0, 7.0], 3);
        assert_eq!(c, vec![(4, 7.0), (1, 5.0), (2, 5.0)]);
    }

    #[test]
    fn draw_walks_the_cumulative_distribution() {
        // Two equal logits at T=1: draw < 0.5 picks the first, >= 0.5 the second.
        let logits = [0.0, 0.0, -1e9];
        let p = sampled(1.0, 0, 1.0);
        assert_eq!(sample_from_logits(&logits, &p, 0.25), 0);
        assert_eq!(sample_from_logits(&logits, &p, 0.75), 1);
    }

    #[test]
    fn top_k_and_top_p_truncate() {
        let logits = [3.0, 2.0, 1.0, 0.0];
        // top_k=2 never yields ids 2 or 3, whatever the draw.
        for i in 0..100 {
            let id = sample_from_logits(&logits, &sampled(5.0, 2, 1.0), i as f32 / 100.0);
            assert!(id < 2);
        }
        // top_p tiny keeps only the best token.
        assert_eq!(
            sample_from_logits(&logits, &sampled(1.0, 0, 0.01), 0.999),
            0
        );
        // Full distribution reaches the last token for a draw near 1.
        assert_eq!(
            sample_from_logits(&logits, &sampled(100.0, 0, 1.0), 0.9999),
            3
        );
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let logits = [1.0f32, 0.0];
        let mut rng = crate::engine::rng::SamplerRng::new(1);
        let n = 20_000;
        let zeros = (0..n)
            .filter(|_| sample_from_logits(&logits, &sampled(1.0, 0, 1.0), rng.next_draw()) == 0)
            .count();
        let expect = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((zeros as f64 / n as f64 - expect).abs() < 0.02, "{zeros}");
    }

    #[test]
    fn stop_matcher_holds_back_prefixes() {
        let mut m = StopMatcher::new(&["</s>", "STOP"]);
        assert_eq!(m.push("hello <").emit, "hello ");
        assert_eq!(m.push("/").emit, "");
        let out = m.push("s> tail");
        assert_eq!(
            out,
            StopOutput {
                emit: String::new(),
                stopped: true
            }
        );

        let mut m = StopMatcher::new(&["STOP"]);
        assert_eq!(m.push("ST").emit, "");
        assert_eq!(m.push("ay").emit, "STay");
        assert_eq!(m.push("xSTO").emit, "x");
        assert_eq!(m.finish(), "STO");
    }

    #[test]
    fn stop_matcher_handles_multibyte_and_empty_stops() {
        let mut m = StopMatcher::new(&["", "é!"]);
        assert_eq!(m.push("café").emit, "caf");
        let out = m.push("!x");
        assert!(out.stopped);
        assert_eq!(out.emit, "");
    }
}
