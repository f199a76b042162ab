//! Tests of the one decode loop: what a sequence emits, when it ends and
//! what it feeds back, driven by a scripted engine over the test tokenizer,
//! so every expectation is written down here rather than taken from a model.

use super::*;
use crate::engine::test_sink::Recorder as Collect;
use crate::engine::{BackendKind, MemoryReport};
use crate::model::arch::ModelConfig;
use crate::model::gguf::{GgufFile, GgufLimits};

/// The tiny test model's tokenizer and config (written once per test).
/// The scripted engine takes any prompt in one pass.
const PREFILL_CHUNK: usize = 1 << 20;

fn tiny() -> (Tokenizer, ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    crate::model::test_model::write_test_model(
        &crate::model::test_model::TestModelSpec::tiny_llama(),
        &p,
    )
    .unwrap();
    let g = GgufFile::open(&p, &GgufLimits::default()).unwrap();
    let (cfg, _) = crate::model::arch::from_gguf(&g).unwrap();
    (Tokenizer::from_gguf(&g).unwrap(), cfg)
}

/// An engine that samples a fixed script of ids and records what it is fed.
struct Scripted {
    cfg: ModelConfig,
    script: Vec<u32>,
    next: usize,
    max_context: usize,
    /// Every forward call: (ids, first position).
    fed: Vec<(Vec<u32>, usize)>,
    resets: usize,
    /// Positions asked for at each admission, and releases seen.
    admitted: Vec<usize>,
    released: usize,
    /// What each step asked `prefetch_samples` for.
    prefetches: Vec<Vec<(crate::engine::batch::SeqSlot, usize)>>,
}

impl Engine for Scripted {
    fn backend(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        self.fed.push((tokens.to_vec(), pos));
        Ok(())
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    fn sample(&mut self, _params: &SamplingParams, _draw: f32) -> Result<u32> {
        let id = *self.script.get(self.next).expect("the script ran out");
        self.next += 1;
        Ok(id)
    }
    fn kv_usage(&self) -> crate::engine::batch::KvUsage {
        crate::engine::batch::KvUsage::default()
    }
    fn max_sequences(&self) -> usize {
        1
    }
    fn prefill_chunk(&self) -> usize {
        PREFILL_CHUNK
    }
    fn numerics(&self) -> crate::engine::numerics::NumericsKey {
        crate::engine::numerics::NumericsKey::cpu(PREFILL_CHUNK)
    }
    // The decode loop drives one admitted sequence through the batched calls.
    fn admit(&mut self, positions: usize) -> Result<crate::engine::batch::SeqSlot> {
        self.admitted.push(positions);
        self.reset();
        Ok(crate::engine::batch::SeqSlot(0))
    }
    fn release(&mut self, _seq: crate::engine::batch::SeqSlot) {
        self.released += 1;
    }
    fn step(&mut self, chunks: &[crate::engine::batch::StepChunk<'_>]) -> Result<()> {
        assert_eq!(chunks.len(), 1, "one sequence at a time here");
        self.forward(chunks[0].tokens, chunks[0].pos)
    }
    fn seq_logits(&mut self, _seq: crate::engine::batch::SeqSlot) -> Result<Vec<f32>> {
        self.logits()
    }
    fn seq_sample(
        &mut self,
        _seq: crate::engine::batch::SeqSlot,
        params: &SamplingParams,
        draw: f32,
    ) -> Result<u32> {
        self.sample(params, draw)
    }
    fn prefetch_samples(&mut self, wants: &[(crate::engine::batch::SeqSlot, usize)]) -> Result<()> {
        self.prefetches.push(wants.to_vec());
        Ok(())
    }
    fn resident_digest(&mut self) -> Result<[u8; 32]> {
        Ok([0; 32])
    }
    fn memory(&self) -> MemoryReport {
        MemoryReport::default()
    }
    #[cfg(feature = "test-hooks")]
    fn inject_fault(&mut self, _fault: crate::engine::Fault) -> Result<()> {
        Ok(())
    }
}

fn params(max_tokens: u32, stop: &[&str]) -> GenerationParams {
    GenerationParams {
        max_tokens,
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop: stop.iter().map(|s| s.to_string()).collect(),
    }
}

fn engine(cfg: &ModelConfig, script: Vec<u32>, max_context: usize) -> Scripted {
    Scripted {
        cfg: cfg.clone(),
        script,
        next: 0,
        max_context,
        fed: Vec::new(),
        resets: 0,
        admitted: Vec::new(),
        released: 0,
        prefetches: Vec::new(),
    }
}

fn eos(tok: &Tokenizer) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&i| tok.is_eog(i))
        .expect("an end-of-generation token")
}

/// A sequence of `prompt`, checked against a context of `ctx`, into `sink`.
fn sequence<'t>(
    tok: &'t Tokenizer,
    prompt: &[u32],
    ctx: usize,
    params: GenerationParams,
    sink: Collect,
) -> Sequence<'t, Collect> {
    Sequence::new(
        tok,
        Prompt::new(prompt.to_vec(), ctx).unwrap(),
        params,
        sink,
    )
    .unwrap()
}

fn texts(events: &[(u64, String)]) -> String {
    events.iter().map(|(_, t)| t.as_str()).collect()
}

#[test]
fn text_tokens_and_eos_are_counted_the_one_way() {
    let (tok, cfg) = tiny();
    let words = tok.encode("Hello there", false).unwrap();
    let mut script = words.clone();
    script.push(eos(&tok));
    let mut eng = engine(&cfg, script, 64);
    let prompt = tok.encode("Say", false).unwrap();
    let mut seq = sequence(&tok, &prompt, 64, params(50, &[]), Collect::default());
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Eos);
    // One event per text token, numbered from 0; the EOS has nothing held back, so no event.
    assert_eq!(seq.tokens_out(), words.len() as u64);
    let ev = &seq.sink().events;
    assert_eq!(
        ev.iter().map(|e| e.0).collect::<Vec<_>>(),
        (0..words.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(texts(ev), "Hello there");
    // The prompt once from position 0, then each text token at the next position; never the EOS.
    let mut want = vec![(prompt.clone(), 0)];
    for (k, &id) in words.iter().enumerate() {
        want.push((vec![id], prompt.len() + k));
    }
    assert_eq!(eng.fed, want);
    assert_eq!(eng.resets, 1);
    // Admitted once for the prompt and all 50 tokens, released at the end.
    assert_eq!(eng.admitted, vec![prompt.len() + 50]);
    assert_eq!(eng.released, 1);
}

#[test]
fn max_tokens_ends_with_length_after_exactly_that_many_events() {
    let (tok, cfg) = tiny();
    let script = tok.encode("abcdefghijklmnop", false).unwrap();
    assert!(script.len() > 4);
    let mut eng = engine(&cfg, script.clone(), 64);
    let prompt = tok.encode("x", false).unwrap();
    let mut seq = sequence(&tok, &prompt, 64, params(4, &[]), Collect::default());
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Length);
    assert_eq!(seq.tokens_out(), 4);
    // The fourth token is sampled and sent but never fed back.
    assert_eq!(eng.fed.len(), 1 + 3);
    assert_eq!(eng.next, 4);
}

#[test]
fn a_full_context_ends_with_length_and_fills_it_exactly() {
    let (tok, cfg) = tiny();
    let script = tok.encode("abcdefghijklmnop", false).unwrap();
    let prompt = tok.encode("x", false).unwrap();
    let ctx = prompt.len() + 3;
    let mut eng = engine(&cfg, script, ctx);
    let mut seq = sequence(&tok, &prompt, ctx, params(100, &[]), Collect::default());
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Length);
    assert_eq!(seq.tokens_out(), 3);
    // Prompt plus generated tokens equal the context; the last position written is ctx - 2.
    let last_pos = eng.fed.last().unwrap().1;
    assert_eq!(last_pos, ctx - 2);
}

#[test]
fn a_stop_sequence_across_tokens_is_never_sent_and_ends_the_sequence() {
    let (tok, cfg) = tiny();
    let script = tok.encode("one two STOP three", false).unwrap();
    let mut eng = engine(&cfg, script, 64);
    let prompt = tok.encode("x", false).unwrap();
    let mut seq = sequence(
        &tok,
        &prompt,
        64,
        params(100, &["STOP"]),
        Collect::default(),
    );
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Stop);
    let sent = texts(&seq.sink().events);
    assert_eq!(sent, "one two ");
}

#[test]
fn held_back_text_rides_on_the_eos_event() {
    let (tok, cfg) = tiny();
    // "ST" could start the stop sequence "STOP", so it is held until the EOS decides it.
    let mut script = tok.encode("ab ST", false).unwrap();
    let n_text = script.len() as u64;
    script.push(eos(&tok));
    let mut eng = engine(&cfg, script, 64);
    let prompt = tok.encode("x", false).unwrap();
    let mut seq = sequence(
        &tok,
        &prompt,
        64,
        params(100, &["STOP"]),
        Collect::default(),
    );
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Eos);
    assert_eq!(texts(&seq.sink().events), "ab ST");
    assert_eq!(
        seq.tokens_out(),
        n_text + 1,
        "the EOS carries the held-back text in one more event"
    );
    assert!(seq.sink().events.last().unwrap().1.ends_with("ST"));
}

#[test]
fn a_sink_that_stops_ends_the_run_before_the_next_step() {
    let (tok, cfg) = tiny();
    let script = tok.encode("abcdefghijklmnop", false).unwrap();
    let mut eng = engine(&cfg, script, 64);
    let prompt = tok.encode("x", false).unwrap();
    let sink = Collect {
        stop_after: Some(2),
        ..Collect::default()
    };
    let mut seq = sequence(&tok, &prompt, 64, params(100, &[]), sink);
    let e = seq.run(&mut eng).unwrap_err();
    assert_eq!(e.code(), "CANCELLED");
    assert_eq!(seq.tokens_out(), 2);
    assert_eq!(eng.next, 2, "no token is sampled after the sink said stop");
    assert_eq!(eng.released, 1, "a cancelled sequence gives its pages back");
}

#[test]
fn ignoring_eos_generates_through_it() {
    let (tok, cfg) = tiny();
    let e = eos(&tok);
    let mut eng = engine(&cfg, vec![e, e, e, e], 64);
    let prompt = tok.encode("x", false).unwrap();
    let mut seq = sequence(&tok, &prompt, 64, params(4, &[]), Collect::default()).ignoring_eos();
    let (finish, _) = seq.run(&mut eng).unwrap();
    assert_eq!(finish, Finish::Length);
    assert_eq!(seq.tokens_out(), 4);
    assert_eq!(texts(&seq.sink().events), "");
}

#[test]
fn empty_prompts_full_contexts_and_zero_max_tokens_are_refused() {
    let (tok, _) = tiny();
    assert_eq!(
        Prompt::new(vec![], 64).unwrap_err().code(),
        "INVALID_PARAMS"
    );
    let e = Prompt::new(vec![1; 64], 64).unwrap_err();
    assert!(e.message().contains("max_context"), "{}", e.message());
    let fits = Prompt::new(vec![1; 63], 64).unwrap();
    assert_eq!((fits.len(), fits.max_context()), (63, 64));
    let e = match Sequence::new(&tok, fits, params(0, &[]), Collect::default()) {
        Ok(_) => panic!("max_tokens 0 accepted"),
        Err(e) => e,
    };
    assert_eq!(e.code(), "INVALID_PARAMS");
}

/// A step asks the engine to prefetch a sequence's candidates exactly when
/// that step completes its prompt or decodes (never mid-prompt), with the
/// count its sampling will ask for: 1 when greedy, else its pool (issue 11
/// point 7).
#[test]
fn a_step_prefetches_the_candidates_each_sampling_sequence_needs() {
    let (tok, cfg) = tiny();
    let script: Vec<u32> = (0..4).map(|i| 65 + i).collect();
    for (sampling, want_k) in [
        (SamplingParams::GREEDY, 1usize),
        (
            SamplingParams {
                temperature: 1.0,
                top_k: 5,
                top_p: 1.0,
            },
            5,
        ),
        (
            SamplingParams {
                temperature: 0.7,
                top_k: 0,
                top_p: 0.9,
            },
            crate::engine::sampler::MAX_CANDIDATES,
        ),
    ] {
        let mut e = engine(&cfg, script.clone(), 64);
        let mut p = params(3, &[]);
        p.sampling = sampling;
        let seq = sequence(&tok, &[1, 2, 3, 4, 5], 64, p, Collect::default());
        // Prompt chunks of 2: steps 1 and 2 leave the prompt unfinished.
        let mut batch = crate::engine::sched::Batch::new(2);
        assert!(batch.admit(&mut e, seq).is_ok());
        let mut steps = 0;
        while !batch.is_empty() {
            batch.step(&mut e);
            steps += 1;
        }
        let slot = crate::engine::batch::SeqSlot(0);
        let want = vec![(slot, want_k)];
        assert_eq!(
            e.prefetches,
            vec![vec![], vec![], want.clone(), want.clone(), want],
            "{sampling:?}"
        );
        assert_eq!(batch.phases().steps, steps, "every step is counted");
    }
}
