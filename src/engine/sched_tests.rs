//! Continuous batching keeps every stream byte-identical (issue 11 point 5,
//! on the CPU engine): each request, run alone through `Sequence::run`, and
//! then beside the others, joining at staggered steps with its prompt cut
//! into chunks, delivers the same events and ends the same way. Requests mix
//! prompt lengths, seeds, sampling parameters and stop sequences. A request
//! whose sink stops it leaves without disturbing the rest, and every page
//! comes back.

use super::*;
use crate::engine::sequence::{GenerationParams, Prompt};
use crate::engine::test_sink::Recorder as Events;
use crate::engine::{cpu::CpuEngine, LoadOptions, SamplingParams};
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::test_model::{write_test_model, TestModelSpec};
use crate::model::tokenizer::Tokenizer;

const MAX_CONTEXT: usize = 96;

fn model() -> (CpuEngine, Tokenizer) {
    cpu_engine(MAX_CONTEXT, MAX_CONTEXT * 12, 1)
}

/// The CPU engine on the generated tiny llama model.
pub(super) fn cpu_engine(
    max_context: usize,
    kv_pool_tokens: usize,
    max_sequences: usize,
) -> (CpuEngine, Tokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    write_test_model(&TestModelSpec::tiny_llama(), &path).expect("write test model");
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("config");
    let opts = LoadOptions {
        max_context,
        kv_pool_tokens,
        max_sequences,
        gpu_device: 0,
        threads: 2,
    };
    let e = CpuEngine::load(&g, &cfg, &w, &opts).expect("load");
    (e, Tokenizer::from_gguf(&g).expect("tokenizer"))
}

/// The random choices of a mix: the sampler's SplitMix64, so a failing
/// mix can be replayed from its seed.
type Mix = crate::engine::rng::SamplerRng;

struct Request {
    prompt: Vec<u32>,
    params: GenerationParams,
}

const WORDS: [&str; 8] = [
    "Once", "upon", "a", "time", "there", "was", "Hello", "world",
];

fn requests(m: &mut Mix, tok: &Tokenizer, n: usize) -> Vec<Request> {
    (0..n)
        .map(|_| {
            let words: Vec<&str> = (0..1 + m.below(30))
                .map(|_| WORDS[m.below(WORDS.len() as u64) as usize])
                .collect();
            let prompt = tok.encode(&words.join(" "), false).expect("encode");
            let sampling = match m.below(3) {
                0 => SamplingParams::GREEDY,
                1 => SamplingParams {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.9,
                },
                _ => SamplingParams {
                    temperature: 1.3,
                    top_k: 0,
                    top_p: 1.0,
                },
            };
            let stop = if m.below(4) == 0 {
                vec!["e".to_string()]
            } else {
                Vec::new()
            };
            Request {
                prompt,
                params: GenerationParams {
                    max_tokens: 1 + m.below(24) as u32,
                    sampling,
                    seed: m.next_u64(),
                    stop,
                },
            }
        })
        .collect()
}

fn sequence<'t>(tok: &'t Tokenizer, r: &Request, sink: Events) -> Sequence<'t, Events> {
    let prompt = Prompt::new(r.prompt.clone(), MAX_CONTEXT).expect("prompt fits");
    Sequence::new(tok, prompt, r.params.clone(), sink).expect("sequence")
}

/// (events, finish reason or error code) of one request.
type Stream = (Vec<(u64, String)>, String);

fn outcome_text(o: &Outcome) -> String {
    match o {
        Ok((f, _)) => f.as_str().to_string(),
        Err(e) => e.code().to_string(),
    }
}

fn solo(e: &mut CpuEngine, tok: &Tokenizer, r: &Request) -> Stream {
    let mut seq = sequence(tok, r, Events::default());
    let out = seq.run(e);
    (seq.into_sink().events, outcome_text(&out))
}

/// Every request through one batch: a few join before each step
/// (staggered), prompts are cut into chunks of `max_prefill`, and those
/// with `stop_after` leave early.
fn together(
    e: &mut CpuEngine,
    tok: &Tokenizer,
    reqs: &[Request],
    stop_after: &[Option<usize>],
    m: &mut Mix,
) -> Vec<Stream> {
    let max_prefill = 1 + m.below(8) as usize;
    let mut batch = Batch::new(max_prefill);
    let mut waiting: Vec<Sequence<'_, Events>> = reqs
        .iter()
        .enumerate()
        .map(|(id, r)| {
            let sink = Events {
                id,
                stop_after: stop_after[id],
                ..Events::default()
            };
            sequence(tok, r, sink)
        })
        .rev()
        .collect();
    let mut streams: Vec<Option<Stream>> = vec![None; reqs.len()];
    while !waiting.is_empty() || !batch.is_empty() {
        for _ in 0..m.below(3) {
            let Some(seq) = waiting.pop() else { break };
            if let Err((seq, err)) = batch.admit(e, seq) {
                panic!("request {} was refused: {err}", seq.sink().id);
            }
        }
        for (seq, out) in batch.step(e) {
            let sink = seq.into_sink();
            streams[sink.id] = Some((sink.events, outcome_text(&out)));
        }
    }
    streams
        .into_iter()
        .map(|s| s.expect("every request finished"))
        .collect()
}

#[test]
fn every_stream_is_the_same_alone_or_batched_with_staggered_arrivals() {
    let (mut e, tok) = model();
    for seed in 1..=3u64 {
        let mut m = Mix::new(seed);
        let reqs = requests(&mut m, &tok, 10);
        let alone: Vec<Stream> = reqs.iter().map(|r| solo(&mut e, &tok, r)).collect();
        assert_eq!(e.kv_usage().used_pages, 0);
        let batched = together(&mut e, &tok, &reqs, &vec![None; reqs.len()], &mut m);
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(
                a, b,
                "seed {seed}: request {i} ({} prompt tokens, {:?}) streamed differently alone and batched",
                reqs[i].prompt.len(),
                reqs[i].params
            );
        }
        assert_eq!(e.kv_usage().used_pages, 0, "every page came back");
    }
}

#[test]
fn a_sequence_stopped_by_its_sink_leaves_alone_and_returns_its_pages() {
    let (mut e, tok) = model();
    let mut m = Mix::new(7);
    let reqs: Vec<Request> = requests(&mut m, &tok, 16)
        .into_iter()
        .filter(|r| r.params.max_tokens > 4 && r.params.stop.is_empty())
        .take(4)
        .collect();
    assert_eq!(reqs.len(), 4, "the mix holds four long-enough requests");
    let alone: Vec<Stream> = reqs.iter().map(|r| solo(&mut e, &tok, r)).collect();
    // Request 1 is cancelled after 2 events; the others must not notice.
    let stop_after = [None, Some(2), None, None];
    let batched = together(&mut e, &tok, &reqs, &stop_after, &mut m);
    for i in [0, 2, 3] {
        assert_eq!(
            alone[i], batched[i],
            "request {i} changed when request 1 was cancelled"
        );
    }
    assert_eq!(batched[1].1, "CANCELLED");
    assert!(
        alone[1].0.len() > 2 && batched[1].0 == alone[1].0[..2],
        "the cancelled request delivered its first two events and nothing after"
    );
    assert_eq!(e.kv_usage().used_pages, 0, "every page came back");
}

#[test]
fn a_prompt_cancelled_during_prefill_leaves_within_one_chunk() {
    let (mut e, tok) = model();
    let ids: Vec<u32> = (0..90).map(|i| 3 + (i * 7) % 400).collect();
    let params = GenerationParams {
        max_tokens: 4,
        sampling: SamplingParams::GREEDY,
        seed: 1,
        stop: Vec::new(),
    };
    let prompt = Prompt::new(ids, MAX_CONTEXT).expect("prompt fits");
    // Gone before its second chunk: the third question.
    let sink = Events {
        stop_at_check: Some(3),
        ..Events::default()
    };
    let seq = Sequence::new(&tok, prompt, params, sink).expect("sequence");
    let mut batch = Batch::new(8);
    assert!(batch.admit(&mut e, seq).is_ok());
    assert!(e.kv_usage().used_pages > 0);
    assert!(batch.step(&mut e).is_empty(), "the first chunk runs");
    let left = batch.step(&mut e);
    assert_eq!(
        left.len(),
        1,
        "it leaves at the next step, not after its 12 chunks"
    );
    assert_eq!(
        left[0].1.as_ref().err().map(WorkerError::code),
        Some("CANCELLED")
    );
    assert!(batch.is_empty());
    assert_eq!(e.kv_usage().used_pages, 0, "its pages are back");
}
