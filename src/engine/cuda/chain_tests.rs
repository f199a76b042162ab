//! Chained greedy decode streams what unchained decode streams (issue 12
//! point 1; WORKER-4710): the same requests through one batch with staggered
//! arrivals, and each alone, on the CUDA engine with chaining on and off.
//! Greedy requests of mixed prompt lengths and lengths, some with stop
//! text or a sink that stops them, and a few sampled ones (a batch holding
//! one is never chained), so chained steps are adopted, replaced by another
//! step when a sequence ends, leaves or joins, and declined.

use super::super::tests::test_gpu;
use super::ChainCounts;
use super::*;
use crate::engine::batch::SeqSlot;
use crate::engine::sched::{Batch, Outcome};
use crate::engine::sequence::{GenerationParams, Prompt, Sequence};
use crate::engine::test_sink::Recorder;
use crate::engine::{Engine, LoadOptions, SamplingParams};
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::test_model::{write_test_model, TestModelSpec};
use crate::model::tokenizer::Tokenizer;

const MAX_CONTEXT: usize = 128;

struct Request {
    prompt: Vec<u32>,
    params: GenerationParams,
    /// The sink stops the sequence after this many events (a cancel).
    stop_after: Option<usize>,
}

/// Request i of the mix: every fifth samples at temperature 0.8, every
/// fourth stops at "e", every seventh is cancelled after 3 events.
fn requests(tok: &Tokenizer) -> Vec<Request> {
    let words = [
        "Once", "upon", "a", "time", "there", "was", "Hello", "world",
    ];
    (0..14usize)
        .map(|i| {
            let text: Vec<&str> = (0..1 + (i * 7) % 23)
                .map(|j| words[(i + j * 3) % 8])
                .collect();
            let sampling = if i % 5 == 4 {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 20,
                    top_p: 0.95,
                }
            } else {
                SamplingParams::GREEDY
            };
            Request {
                prompt: tok.encode(&text.join(" "), false).expect("encode"),
                params: GenerationParams {
                    max_tokens: 2 + ((i * 11) % 30) as u32,
                    sampling,
                    seed: 1000 + i as u64,
                    stop: if i % 4 == 3 {
                        vec!["e".into()]
                    } else {
                        Vec::new()
                    },
                },
                stop_after: (i % 7 == 6).then_some(3),
            }
        })
        .collect()
}

type Stream = (Vec<(u64, String)>, String);

fn outcome_text(o: &Outcome) -> String {
    match o {
        Ok((f, _)) => f.as_str().to_string(),
        Err(e) => e.code().to_string(),
    }
}

fn sequence<'t>(tok: &'t Tokenizer, r: &Request, id: usize) -> Sequence<'t, Recorder> {
    let sink = Recorder {
        id,
        stop_after: r.stop_after,
        ..Recorder::default()
    };
    let prompt = Prompt::new(r.prompt.clone(), MAX_CONTEXT).expect("prompt fits");
    Sequence::new(tok, prompt, r.params.clone(), sink).expect("sequence")
}

/// The CUDA engine on generated model `spec`, with a pool of `seqs` whole
/// contexts of `max_context` and step buffers for `seqs` sequences.
fn load(spec: &TestModelSpec, max_context: usize, seqs: usize) -> (CudaEngine, Tokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(format!("{}.gguf", spec.name));
    write_test_model(spec, &p).expect("make model");
    let g = GgufFile::open(&p, &GgufLimits::default()).expect("open model");
    let (cfg, w) = crate::model::arch::from_gguf(&g).expect("arch");
    let opts = LoadOptions {
        max_context,
        kv_pool_tokens: seqs * max_context,
        max_sequences: seqs,
        gpu_device: 0,
        threads: 0,
    };
    let e = CudaEngine::load(&g, &cfg, &w, &opts).expect("cuda load");
    (e, Tokenizer::from_gguf(&g).expect("tokenizer"))
}

/// Each request alone (`Sequence::run`).
fn alone(e: &mut CudaEngine, tok: &Tokenizer, reqs: &[Request]) -> Vec<Stream> {
    reqs.iter()
        .enumerate()
        .map(|(id, r)| {
            let mut seq = sequence(tok, r, id);
            let out = seq.run(e).map(|(f, _)| f.as_str().to_string());
            let text = out.unwrap_or_else(|err| err.code().to_string());
            (seq.into_sink().events, text)
        })
        .collect()
}

/// Every request through one batch: request i joins before step i / 2, so
/// the batch changes while sequences run.
fn together(e: &mut CudaEngine, tok: &Tokenizer, reqs: &[Request]) -> Vec<Stream> {
    let mut batch = Batch::new(8);
    let mut waiting: Vec<_> = reqs
        .iter()
        .enumerate()
        .map(|(id, r)| sequence(tok, r, id))
        .rev()
        .collect();
    let mut streams: Vec<Option<Stream>> = vec![None; reqs.len()];
    let mut steps = 0usize;
    while !waiting.is_empty() || !batch.is_empty() {
        while waiting.last().is_some_and(|s| s.sink().id <= steps / 2) {
            let seq = waiting.pop().expect("a waiting request");
            if let Err((seq, err)) = batch.admit(e, seq) {
                panic!("request {} was refused: {err}", seq.sink().id);
            }
        }
        for (seq, out) in batch.step(e) {
            let sink = seq.into_sink();
            streams[sink.id] = Some((sink.events, outcome_text(&out)));
        }
        steps += 1;
    }
    streams
        .into_iter()
        .map(|s| s.expect("every request finished"))
        .collect()
}

#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_chained_greedy_steps_stream_what_unchained_steps_stream() {
    test_gpu("engine_chained_greedy");
    for spec in [TestModelSpec::tiny_llama(), TestModelSpec::tiny_qwen2()] {
        let (mut e, tok) = load(&spec, MAX_CONTEXT, 16);
        let reqs = requests(&tok);
        e.chain_on = false;
        let want_alone = alone(&mut e, &tok, &reqs);
        let want_batched = together(&mut e, &tok, &reqs);
        assert_eq!(
            e.chain_counts,
            ChainCounts::default(),
            "{}: chaining off, yet steps were chained",
            spec.name
        );
        e.chain_on = true;
        let got_alone = alone(&mut e, &tok, &reqs);
        let solo = e.chain_counts;
        let got_batched = together(&mut e, &tok, &reqs);
        let batched = ChainCounts {
            adopted: e.chain_counts.adopted - solo.adopted,
            adopted_in_part: e.chain_counts.adopted_in_part - solo.adopted_in_part,
            dropped: e.chain_counts.dropped - solo.dropped,
        };
        println!(
            "{}: chained steps alone {solo:?}, in the batch {batched:?}",
            spec.name
        );
        for (i, r) in reqs.iter().enumerate() {
            let what = format!(
                "{} request {i} ({} prompt tokens, {:?})",
                spec.name,
                r.prompt.len(),
                r.params
            );
            assert_eq!(
                want_alone[i], got_alone[i],
                "{what}: alone, chained and unchained differ"
            );
            assert_eq!(
                want_batched[i], got_batched[i],
                "{what}: batched, chained and unchained differ"
            );
            assert_eq!(
                want_alone[i], want_batched[i],
                "{what}: alone and batched differ"
            );
        }
        // Not vacuous: chained steps ran alone and in the batch, where
        // sequences left and joined beside them; and none was computed
        // again while its rows still ran (arrivals and departures keep the
        // chained rows).
        assert!(
            solo.adopted > 0 && batched.adopted > 0,
            "{}: nothing was chained",
            spec.name
        );
        assert!(
            batched.adopted_in_part > 0,
            "{}: no chained step saw a sequence leave or join",
            spec.name
        );
        assert_eq!(
            (solo.dropped, batched.dropped),
            (0, 0),
            "{}: chained steps were computed again",
            spec.name
        );
        assert_eq!(e.kv_usage().used_pages, 0, "pages left after the runs");
    }
}

/// A chained step gives back what the caller promised nothing more of:
/// the last logits are gone (no stale read), a sequence released after the
/// chain gets no pick, and a slot admitted again reads no old pick.
#[test]
#[cfg_attr(
    not(gpu_tests),
    ignore = "needs a GPU: built for the GPU suite by ci/gpu-stage (WORKER_ORCD_GPU_TESTS=1)"
)]
fn engine_chained_step_leaves_no_stale_logits_or_picks() {
    test_gpu("engine_chained_stale");
    let (mut e, _) = load(&TestModelSpec::tiny_llama(), 32, 4);
    let greedy = SamplingParams::GREEDY;
    let s: SeqSlot = e.admit(16).expect("admit");
    let prompt = [1u32, 5, 9];
    e.step(&[StepChunk {
        seq: s,
        tokens: &prompt,
        pos: 0,
    }])
    .expect("prefill");
    let want = e.seq_sample(s, &greedy, 0.0).expect("sample");
    assert!(
        e.chain_greedy(&[s]).expect("chain"),
        "a lone greedy row is chained"
    );
    assert_eq!(
        e.seq_sample(s, &greedy, 0.0).expect("pick"),
        want,
        "the device's pick is the host path's"
    );
    assert!(
        e.seq_logits(s).is_err(),
        "the chained step overwrote the logits: reading them must fail"
    );
    e.release(s);
    assert!(
        e.seq_sample(s, &greedy, 0.0).is_err(),
        "a released sequence has no pick"
    );
    let again = e.admit(16).expect("admit again");
    assert_eq!(again, s, "the lowest free slot comes back");
    assert!(
        e.seq_sample(again, &greedy, 0.0).is_err(),
        "a new sequence reads no old pick"
    );
    e.release(again);
}
