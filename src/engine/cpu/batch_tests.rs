//! The CPU engine's batched interface (issue 11 points 3 and 5): a sequence
//! gets the same logits, bit for bit, alone or in any ragged batch with any
//! neighbours and any chunking of its prompt; admission reserves whole pages
//! and refuses with the documented codes; every page comes back.
//!
//! The reference for each sequence is its own solo run through the engine's
//! single-sequence calls; the batched run is scheduled by a seeded random
//! schedule (printed on failure) over the same engine.

use super::{CpuEngine, PAGE_TOKENS};
use crate::engine::batch::{SeqSlot, StepChunk};
use crate::engine::{sampler, Engine, LoadOptions, SamplingParams};
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::test_model::{write_test_model, TestModelSpec};

fn engine(spec: &TestModelSpec, max_context: usize, kv_pool_tokens: usize) -> CpuEngine {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    write_test_model(spec, &path).expect("write test model");
    let g = GgufFile::open(&path, &GgufLimits::default()).expect("open test model");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("config");
    let opts = LoadOptions {
        max_context,
        kv_pool_tokens,
        max_sequences: 1,
        gpu_device: 0,
        threads: 2,
    };
    CpuEngine::load(&g, &cfg, &w, &opts).expect("load")
}

/// The random choices of a schedule: the sampler's SplitMix64, so a
/// failing schedule can be replayed from its seed.
type Schedule = crate::engine::rng::SamplerRng;

/// One request: a prompt and how many tokens to decode greedily after it.
struct Request {
    prompt: Vec<u32>,
    decode: usize,
}

fn requests(s: &mut Schedule, n: usize, vocab: usize) -> Vec<Request> {
    (0..n)
        .map(|_| Request {
            prompt: (0..1 + s.below(40) as usize)
                .map(|_| s.below(vocab as u64) as u32)
                .collect(),
            decode: 1 + s.below(12) as usize,
        })
        .collect()
}

/// The bits of every logits vector a request produces: after its whole
/// prompt, then after each greedy token fed back.
type Trace = Vec<Vec<u32>>;

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

fn greedy(logits: &[f32]) -> u32 {
    sampler::sample_from_logits(logits, &SamplingParams::GREEDY, 0.0)
}

fn solo_trace(e: &mut CpuEngine, r: &Request) -> Trace {
    e.reset();
    e.forward(&r.prompt, 0).expect("prompt");
    let mut trace = vec![bits(&e.logits().unwrap())];
    for pos in r.prompt.len()..r.prompt.len() + r.decode {
        let id = greedy(&e.logits().unwrap());
        e.forward(&[id], pos).expect("decode");
        trace.push(bits(&e.logits().unwrap()));
    }
    e.reset();
    trace
}

/// Where one request is in the batched run.
struct Running {
    seq: SeqSlot,
    /// Prompt tokens already stepped.
    fed: usize,
    /// The next decode token, once the prompt is done.
    next: Option<u32>,
    pos: usize,
    trace: Trace,
}

/// Run every request together under a random schedule: each step takes a
/// random subset of the unfinished sequences, each with a random-length
/// chunk of its remaining prompt, or its one decode token.
fn batched_traces(e: &mut CpuEngine, reqs: &[Request], s: &mut Schedule) -> Vec<Trace> {
    let mut run: Vec<Running> = reqs
        .iter()
        .map(|r| Running {
            seq: e.admit(r.prompt.len() + r.decode).expect("admit"),
            fed: 0,
            next: None,
            pos: 0,
            trace: Vec::new(),
        })
        .collect();
    let done = |r: &Running, q: &Request| r.trace.len() == q.decode + 1;
    while run.iter().zip(reqs).any(|(r, q)| !done(r, q)) {
        let picked: Vec<usize> = (0..run.len())
            .filter(|&i| !done(&run[i], &reqs[i]) && s.below(3) != 0)
            .collect();
        if picked.is_empty() {
            continue;
        }
        let mut owned: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for &i in &picked {
            let (r, q) = (&run[i], &reqs[i]);
            let tokens = match r.next {
                Some(id) => vec![id],
                None => {
                    let left = q.prompt.len() - r.fed;
                    let take = 1 + s.below(left as u64) as usize;
                    q.prompt[r.fed..r.fed + take].to_vec()
                }
            };
            owned.push((i, tokens, r.pos));
        }
        let chunks: Vec<StepChunk<'_>> = owned
            .iter()
            .map(|(i, t, pos)| StepChunk {
                seq: run[*i].seq,
                tokens: t,
                pos: *pos,
            })
            .collect();
        e.step(&chunks).expect("step");
        for (i, tokens, _) in &owned {
            let r = &mut run[*i];
            r.pos += tokens.len();
            let prompt_done = if r.next.is_some() {
                true
            } else {
                r.fed += tokens.len();
                r.fed == reqs[*i].prompt.len()
            };
            if prompt_done {
                let logits = e.seq_logits(r.seq).unwrap();
                r.trace.push(bits(&logits));
                r.next = Some(greedy(&logits));
            }
        }
    }
    for r in &run {
        e.release(r.seq);
    }
    run.into_iter().map(|r| r.trace).collect()
}

#[test]
fn a_sequence_gets_the_same_logits_alone_or_in_any_ragged_batch() {
    for (spec, name) in [
        (TestModelSpec::tiny_llama(), "llama"),
        (TestModelSpec::tiny_qwen2(), "qwen2"),
    ] {
        let mut e = engine(&spec, 64, 64 * 8);
        let vocab = e.cfg.vocab_size;
        for seed in 1..=4u64 {
            let mut s = Schedule::new(seed);
            let reqs = requests(&mut s, 8, vocab);
            let solo: Vec<Trace> = reqs.iter().map(|r| solo_trace(&mut e, r)).collect();
            let batched = batched_traces(&mut e, &reqs, &mut s);
            for (i, (a, b)) in solo.iter().zip(&batched).enumerate() {
                assert_eq!(
                    a.len(),
                    b.len(),
                    "{name}, seed {seed}: request {i} produced {} logits vectors alone and {} batched",
                    a.len(),
                    b.len()
                );
                for (k, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        x == y,
                        "{name}, seed {seed}: request {i} (prompt {} tokens) differs at output {k} between \
                         its solo run and the batched run",
                        reqs[i].prompt.len()
                    );
                }
            }
            assert_eq!(e.kv_usage().used_pages, 0, "every page came back");
        }
    }
}

#[test]
fn admission_reserves_whole_pages_and_refuses_with_the_documented_codes() {
    // max_context 40 -> pool of 48 positions (3 pages of 16) by default.
    let mut e = engine(&TestModelSpec::tiny_llama(), 40, 0);
    let u = e.kv_usage();
    assert_eq!(
        (u.page_tokens, u.total_pages, u.used_pages),
        (PAGE_TOKENS, 3, 0)
    );
    assert_eq!(e.memory().kv_cache_bytes, (2 * 2 * 48 * 2 * 16 * 4) as u64);
    let e41 = e.admit(41).unwrap_err();
    assert_eq!(e41.code(), "INVALID_PARAMS", "{e41}");
    assert_eq!(e.admit(0).unwrap_err().code(), "INVALID_PARAMS");
    let a = e.admit(17).unwrap();
    assert_eq!(
        e.kv_usage().used_pages,
        2,
        "17 positions take two pages of 16"
    );
    let full = e.admit(17).unwrap_err();
    assert_eq!(full.code(), "WORKER_BUSY", "{full}");
    assert_eq!(e.kv_usage().used_pages, 2, "a refusal takes nothing");
    let b = e.admit(16).unwrap();
    assert_ne!(a, b);
    e.release(a);
    e.release(a); // twice is harmless
    assert_eq!(e.kv_usage().used_pages, 1);
    e.release(b);
    assert_eq!(e.kv_usage().free_tokens(), 48);
}

#[test]
fn a_step_is_refused_whole_when_any_chunk_breaks_a_bound() {
    let mut e = engine(&TestModelSpec::tiny_llama(), 32, 64);
    let a = e.admit(4).unwrap();
    let b = e.admit(8).unwrap();
    let step = |e: &mut CpuEngine, chunks: &[StepChunk<'_>]| e.step(chunks).unwrap_err();
    let cases: Vec<(Vec<StepChunk<'_>>, &str)> = vec![
        (vec![], "at least one sequence"),
        (
            vec![StepChunk {
                seq: SeqSlot(9),
                tokens: &[1],
                pos: 0,
            }],
            "not admitted",
        ),
        (
            vec![
                StepChunk {
                    seq: a,
                    tokens: &[1],
                    pos: 0,
                },
                StepChunk {
                    seq: a,
                    tokens: &[2],
                    pos: 1,
                },
            ],
            "twice",
        ),
        (
            vec![StepChunk {
                seq: b,
                tokens: &[],
                pos: 0,
            }],
            "at least one token",
        ),
        (
            vec![StepChunk {
                seq: b,
                tokens: &[1],
                pos: 3,
            }],
            "does not continue",
        ),
        (
            vec![StepChunk {
                seq: b,
                tokens: &[100_000],
                pos: 0,
            }],
            "outside the model's vocabulary",
        ),
        (
            vec![
                StepChunk {
                    seq: b,
                    tokens: &[1, 2],
                    pos: 0,
                },
                StepChunk {
                    seq: a,
                    tokens: &[1, 2, 3, 4, 5],
                    pos: 0,
                },
            ],
            "exceed the 4 positions",
        ),
    ];
    for (chunks, want) in cases {
        let err = step(&mut e, &chunks);
        assert_eq!(err.code(), "INVALID_PARAMS", "{err}");
        assert!(err.message().contains(want), "expected '{want}' in: {err}");
        // Nothing ran: both sequences are still at position 0.
        assert_eq!(
            e.seq_logits(a).unwrap_err().message(),
            crate::engine::no_logits_yet().message()
        );
        assert_eq!(
            e.seq_logits(b).unwrap_err().message(),
            crate::engine::no_logits_yet().message()
        );
    }
    e.step(&[StepChunk {
        seq: a,
        tokens: &[1, 2, 3, 4],
        pos: 0,
    }])
    .unwrap();
    assert!(e.seq_logits(a).is_ok());
    e.release(a);
    let gone = e.seq_logits(a).unwrap_err();
    assert!(gone.message().contains("not admitted"), "{gone}");
}
