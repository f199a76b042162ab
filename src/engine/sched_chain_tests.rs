//! When the decode loops offer the engine a chained step (issue 12 point 1,
//! `Engine::chain_greedy`): only when every running sequence samples
//! greedily and will feed its pick next, never on a sequence's last token
//! by count, never beside a sampled sequence, with the running slots in
//! step order. An engine that declines changes nothing. The CPU engine
//! declines, so this runs it behind a recorder of the offers.

use super::*;
use crate::engine::batch::{KvUsage, SeqSlot, StepChunk};
use crate::engine::cpu::CpuEngine;
use crate::engine::sequence::{GenerationParams, Prompt};
use crate::engine::test_sink::Recorder;
use crate::engine::{BackendKind, MemoryReport, SamplingParams};
use crate::model::arch::ModelConfig;
use crate::model::tokenizer::Tokenizer;

/// A CPU engine that records every chain offer and declines it.
struct Offers {
    inner: CpuEngine,
    offers: Vec<Vec<SeqSlot>>,
}

impl Engine for Offers {
    fn backend(&self) -> BackendKind {
        self.inner.backend()
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        self.inner.forward(tokens, pos)
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        self.inner.logits()
    }
    fn sample(&mut self, params: &SamplingParams, draw: f32) -> Result<u32> {
        self.inner.sample(params, draw)
    }
    fn kv_usage(&self) -> KvUsage {
        self.inner.kv_usage()
    }
    fn max_sequences(&self) -> usize {
        self.inner.max_sequences()
    }
    fn prefill_chunk(&self) -> usize {
        self.inner.prefill_chunk()
    }
    fn numerics(&self) -> crate::engine::numerics::NumericsKey {
        self.inner.numerics()
    }
    fn admit(&mut self, positions: usize) -> Result<SeqSlot> {
        self.inner.admit(positions)
    }
    fn release(&mut self, seq: SeqSlot) {
        self.inner.release(seq)
    }
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<()> {
        self.inner.step(chunks)
    }
    fn seq_logits(&mut self, seq: SeqSlot) -> Result<Vec<f32>> {
        self.inner.seq_logits(seq)
    }
    fn seq_sample(&mut self, seq: SeqSlot, params: &SamplingParams, draw: f32) -> Result<u32> {
        self.inner.seq_sample(seq, params, draw)
    }
    fn prefetch_samples(&mut self, wants: &[(SeqSlot, usize)]) -> Result<()> {
        self.inner.prefetch_samples(wants)
    }
    fn chain_greedy(&mut self, rows: &[SeqSlot]) -> Result<bool> {
        self.offers.push(rows.to_vec());
        Ok(false)
    }
    fn resident_digest(&mut self) -> Result<[u8; 32]> {
        self.inner.resident_digest()
    }
    fn memory(&self) -> MemoryReport {
        self.inner.memory()
    }
    #[cfg(feature = "test-hooks")]
    fn inject_fault(&mut self, fault: crate::engine::Fault) -> Result<()> {
        self.inner.inject_fault(fault)
    }
}

fn engine() -> (Offers, Tokenizer) {
    let (inner, tok) = super::tests::cpu_engine(64, 64 * 4, 4);
    let offers = Offers {
        inner,
        offers: Vec::new(),
    };
    (offers, tok)
}

fn sequence<'t>(
    tok: &'t Tokenizer,
    prompt: &[u32],
    max_tokens: u32,
    sampling: SamplingParams,
) -> Sequence<'t, Recorder> {
    let params = GenerationParams {
        max_tokens,
        sampling,
        seed: 5,
        stop: Vec::new(),
    };
    let prompt = Prompt::new(prompt.to_vec(), 64).expect("prompt fits");
    Sequence::new(tok, prompt, params, Recorder::default())
        .expect("sequence")
        .ignoring_eos()
}

const SAMPLED: SamplingParams = SamplingParams {
    temperature: 0.9,
    top_k: 10,
    top_p: 1.0,
};

/// Alone, a greedy sequence of n tokens is offered every sample but its
/// last: n - 1 offers of its own slot, from the sample that ends its prompt.
#[test]
fn a_lone_greedy_sequence_is_offered_every_sample_but_its_last() {
    let (mut e, tok) = engine();
    for n in [1u32, 2, 5] {
        e.offers.clear();
        let mut seq = sequence(&tok, &[1, 4, 9, 16], n, SamplingParams::GREEDY);
        let (_, _) = seq.run(&mut e).expect("run");
        assert_eq!(seq.tokens_out(), u64::from(n));
        let slot = SeqSlot(0);
        assert_eq!(e.offers, vec![vec![slot]; n as usize - 1], "max_tokens {n}");
    }
    e.offers.clear();
    let mut seq = sequence(&tok, &[1, 4, 9, 16], 5, SAMPLED);
    seq.run(&mut e).expect("run");
    assert_eq!(
        e.offers,
        Vec::<Vec<SeqSlot>>::new(),
        "a sampled sequence is never offered"
    );
}

/// In a batch: the running slots in step order (not slot order) while all
/// of them are greedy and go on; nothing while a prompt is unfinished, on a
/// step that samples a last token, or while a sampled one runs beside them.
#[test]
fn a_batch_is_offered_only_while_every_sequence_goes_on_greedily() {
    let (mut e, tok) = engine();
    // Prompt chunks of 2: a's 3-token prompt takes two steps.
    let mut batch = Batch::new(2);
    let a = sequence(&tok, &[1, 2, 3], 4, SamplingParams::GREEDY);
    let b = sequence(&tok, &[7, 8], 12, SamplingParams::GREEDY);
    assert!(batch.admit(&mut e, a).is_ok() && batch.admit(&mut e, b).is_ok());
    // Step 1: b samples, a is still in its prompt: no offer.
    assert!(batch.step(&mut e).is_empty());
    assert!(e.offers.is_empty(), "no offer while a prompt is unfinished");
    // Steps 2..4: a's tokens 1..3, b's 2..4.
    let ab = vec![SeqSlot(0), SeqSlot(1)];
    for step in 2..=4 {
        assert!(batch.step(&mut e).is_empty());
        assert_eq!(e.offers.len(), step - 1, "step {step}");
        assert_eq!(e.offers.last(), Some(&ab), "step {step}");
    }
    // Step 5 samples a's last token: no offer, and a leaves.
    assert_eq!(batch.step(&mut e).len(), 1);
    assert_eq!(
        e.offers.len(),
        3,
        "no offer on a step that samples a last token"
    );
    // d takes a's slot 0 but runs after b: offers name b's slot first.
    let d = sequence(&tok, &[5], 3, SamplingParams::GREEDY);
    assert!(batch.admit(&mut e, d).is_ok());
    let bd = vec![SeqSlot(1), SeqSlot(0)];
    for step in 6..=7 {
        assert!(batch.step(&mut e).is_empty());
        assert_eq!(
            e.offers.last(),
            Some(&bd),
            "step {step}: step order, not slot order"
        );
    }
    // Step 8 samples d's last token.
    assert_eq!(batch.step(&mut e).len(), 1);
    assert_eq!(e.offers.len(), 5);
    // A sampled sequence joins: no offer while it runs (its three tokens at
    // steps 9..11; b's last token, its twelfth, comes at step 12).
    let c = sequence(&tok, &[5], 3, SAMPLED);
    assert!(batch.admit(&mut e, c).is_ok());
    let mut steps = 0;
    while !batch.is_empty() {
        batch.step(&mut e);
        steps += 1;
    }
    assert_eq!(steps, 4, "c's three tokens, then b's last");
    assert_eq!(
        e.offers.len(),
        5,
        "no offer beside a sampled sequence, nor on b's last token"
    );
    assert_eq!(e.kv_usage().used_pages, 0);
}

/// A sequence that reaches the end of its context takes its last token
/// there, whatever its max_tokens: no offer on that sample.
#[test]
fn no_offer_on_the_token_that_fills_the_context() {
    let (mut e, tok) = engine();
    // 60 prompt tokens in a 64-position context: tokens at positions 60..63.
    let prompt: Vec<u32> = (0..60).map(|i| 3 + i % 50).collect();
    let mut seq = sequence(&tok, &prompt, 10, SamplingParams::GREEDY);
    seq.run(&mut e).expect("run");
    assert_eq!(seq.tokens_out(), 4, "the context ends the sequence");
    assert_eq!(
        e.offers.len(),
        3,
        "every sample but the one that fills the context"
    );
}
