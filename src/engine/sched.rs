//! Continuous batching's core (issue 11 point 4; WORKER-4710, 4722): the
//! sequences running in one engine, and the step that advances all of them
//! together.
//!
//! A sequence joins whenever its pages can be reserved ([`Batch::admit`]),
//! so new requests start between any two steps, and it leaves the moment it
//! finishes, fails or its sink says stop, with its pages returned before the
//! next step. Every step carries one decode row per running sequence and a
//! prompt chunk of at most `max_prefill` tokens per prefilling one, so a long
//! prompt never stalls the running streams for more than one chunk. What a
//! sequence computes depends only on itself (`engine::batch`), so its stream
//! is the same bytes whichever others share its steps.

use crate::engine::sequence::{EventSink, Finish, Sequence, Timeline};
use crate::engine::Engine;
use crate::error::{Result, WorkerError};

/// How one sequence left the batch.
pub type Outcome = Result<(Finish, Timeline)>;

/// Where the steps of a batch spent their time, summed (issue 11 point 7):
/// handing the step to the engine (`enqueue`: on CUDA the launches, which
/// run while the host goes on; nothing when a chained step is adopted),
/// selecting the samples (`select`: on CUDA it waits for the step's
/// kernels, so it holds the device time the enqueue did not cover; a
/// chained start goes here) and the host's work per sequence (`host`:
/// picking, detokenizing, stop text, events; a chained pick's wait).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepPhases {
    pub steps: u64,
    pub enqueue: std::time::Duration,
    pub select: std::time::Duration,
    pub host: std::time::Duration,
}

/// The running sequences of one engine; see the module header.
pub struct Batch<'t, S: EventSink> {
    running: Vec<Sequence<'t, S>>,
    max_prefill: usize,
    phases: StepPhases,
}

impl<'t, S: EventSink> Batch<'t, S> {
    /// An empty batch whose prompt chunks hold at most `max_prefill` tokens.
    pub fn new(max_prefill: usize) -> Self {
        Self {
            running: Vec::new(),
            max_prefill: max_prefill.max(1),
            phases: StepPhases::default(),
        }
    }

    /// Where this batch's steps spent their time so far.
    pub fn phases(&self) -> StepPhases {
        self.phases
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Reserve `seq`'s pages and let it join from the next step; when its
    /// pages cannot be reserved it comes back with the reason (WORKER_BUSY:
    /// wait for a running sequence to finish; INVALID_PARAMS: never fits).
    #[allow(clippy::result_large_err)]
    pub fn admit(
        &mut self,
        engine: &mut dyn Engine,
        mut seq: Sequence<'t, S>,
    ) -> std::result::Result<(), (Sequence<'t, S>, WorkerError)> {
        match seq.admit(engine) {
            Ok(()) => {
                self.running.push(seq);
                Ok(())
            }
            Err(e) => Err((seq, e)),
        }
    }

    /// Visit every running sequence (in admission order).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Sequence<'t, S>)) {
        for seq in &mut self.running {
            f(seq);
        }
    }

    /// End every running sequence now, its pages returned (shutdown, a
    /// failed seal check); the caller says how they ended.
    pub fn drain(&mut self, engine: &mut dyn Engine) -> Vec<Sequence<'t, S>> {
        let mut out: Vec<_> = self.running.drain(..).collect();
        for seq in &mut out {
            seq.release(engine);
        }
        out
    }

    /// One engine step over every running sequence. Returns the sequences
    /// that left the batch with this step, with how they ended; their pages
    /// are already back in the pool. A failed engine step ends every
    /// running sequence with that error.
    pub fn step(&mut self, engine: &mut dyn Engine) -> Vec<(Sequence<'t, S>, Outcome)> {
        let mut left = Vec::new();
        // A sequence whose sink says stop leaves before the step.
        let mut i = 0;
        while i < self.running.len() {
            if let Err(e) = self.running[i].sink_mut().check() {
                let mut seq = self.running.remove(i);
                seq.release(engine);
                left.push((seq, Err(e)));
            } else {
                i += 1;
            }
        }
        if self.running.is_empty() {
            return left;
        }
        let chunks: Vec<_> = self
            .running
            .iter()
            .map(|s| s.next_chunk(self.max_prefill))
            .collect();
        let fed: Vec<usize> = chunks
            .iter()
            .map(|c| c.map_or(0, |c| c.tokens.len()))
            .collect();
        let chunks: Vec<_> = chunks.into_iter().flatten().collect();
        let t0 = std::time::Instant::now();
        let mut t1 = t0;
        let stepped = engine.step(&chunks).and_then(|()| {
            t1 = std::time::Instant::now();
            // Every sequence a greedy decoder that goes on: the next step
            // may start before the samples are read.
            let chain: Option<Vec<_>> = self
                .running
                .iter()
                .zip(&fed)
                .map(|(s, &n)| s.chain_slot(n))
                .collect();
            if let Some(rows) = chain {
                if engine.chain_greedy(&rows)? {
                    return Ok(());
                }
            }
            let wants: Vec<_> = self
                .running
                .iter()
                .zip(&fed)
                .filter_map(|(s, &n)| s.sample_want(n))
                .collect();
            engine.prefetch_samples(&wants)
        });
        drop(chunks);
        let t2 = std::time::Instant::now();
        if let Err(e) = stepped {
            for mut seq in self.running.drain(..) {
                seq.release(engine);
                left.push((seq, Err(e.clone())));
            }
            return left;
        }
        let mut kept = Vec::with_capacity(self.running.len());
        for (mut seq, n) in self.running.drain(..).zip(fed) {
            let outcome = seq.sink_mut().check().and_then(|()| seq.advance(engine, n));
            match outcome {
                Ok(None) => kept.push(seq),
                Ok(Some(finish)) => {
                    seq.release(engine);
                    let times = seq.timeline();
                    left.push((seq, Ok((finish, times))));
                }
                Err(e) => {
                    seq.release(engine);
                    left.push((seq, Err(e)));
                }
            }
        }
        self.running = kept;
        self.phases.steps += 1;
        self.phases.enqueue += t1 - t0;
        self.phases.select += t2 - t1;
        self.phases.host += t2.elapsed();
        left
    }
}

#[cfg(test)]
#[path = "sched_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "sched_chain_tests.rs"]
mod chain_tests;
