//! One request and the one decode loop (issue 11 point 2; WORKER-4252,
//! 4413, 4423, 4710, 4712).
//!
//! A [`Sequence`] owns everything a single request owns: its prompt ids, its
//! validated [`GenerationParams`], its sampler RNG (seeded from the request's
//! seed), its stream detokenizer and stop matcher, its limits (`max_tokens`
//! and the engine's context) and its [`EventSink`], which also answers
//! whether the request was cancelled, disconnected or ran out of time.
//! A sequence is driven a step at a time: [`Sequence::admit`] reserves its
//! KV pages (prompt + max_tokens), [`Sequence::next_chunk`] says what it
//! feeds the next engine step (the rest of its prompt, or the token it just
//! sampled), [`Sequence::advance`] takes that step's result (samples,
//! delivers, decides whether it is done) and [`Sequence::release`] gives the
//! pages back. [`Sequence::run`] drives one sequence alone with exactly
//! these calls, and a batch of sequences is driven with the same calls
//! (`engine::sched::Batch`), so the daemon, `generate` and `bench` count tokens,
//! end-of-sequence and stop text the same way whether a sequence runs alone
//! or beside others.
//!
//! The counting rule (the daemon's contract since the first version): one
//! token event per generated token, whose text may be empty while a UTF-8
//! character or a possible stop sequence is incomplete, so `tokens_out` is
//! the number of token events. The last event carries whatever was held
//! back. An end-of-sequence token gets an event only when there is held-back
//! text to deliver; it is never printed.

use crate::engine::batch::{SeqSlot, StepChunk};
use crate::engine::rng::SamplerRng;
use crate::engine::sampler::StopMatcher;
use crate::engine::{Engine, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::model::tokenizer::{StreamDecoder, Tokenizer};
use std::time::{Duration, Instant};

/// What a request asks of generation, after validation
/// (`http::validate::generation_params`, shared by Execute and `generate`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate, at least 1.
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Seeds the sampler's RNG (WORKER-4712).
    pub seed: u64,
    /// Generation stops when the text contains one of these; it is not sent.
    pub stop: Vec<String>,
}

impl GenerationParams {
    /// What every sequence needs of its parameters (validation at the door
    /// says more; this is what the decode loop itself relies on).
    pub fn check(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(WorkerError::invalid("max_tokens must be at least 1"));
        }
        Ok(())
    }
}

/// Where a sequence's output goes, and whether it may go on.
pub trait EventSink {
    /// Asked before every engine step: an error ends the sequence with it
    /// (cancelled, client gone, deadline passed).
    fn check(&mut self) -> Result<()>;
    /// Deliver token event `index` (0, 1, 2, ...) carrying `text`.
    fn token(&mut self, index: u64, text: String) -> Result<()>;
    /// A token was just sampled (for latency metrics); nothing by default.
    fn sampled(&mut self) {}
}

/// How a sequence ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated, or the context is full.
    Length,
    /// A stop sequence appeared.
    Stop,
}

impl Finish {
    /// The `finish_reason` of the `end` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
            Self::Stop => "stop",
        }
    }

    /// The reason in words, for narration.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Eos => "the end-of-sequence token",
            Self::Length => "the token limit",
            Self::Stop => "a stop sequence",
        }
    }
}

/// When the phases of a run ended, measured from the start of [`Sequence::run`].
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// The prompt's forward pass is done.
    pub prefill: Duration,
    /// The first token is sampled.
    pub first_token: Duration,
    /// The last token is sampled (the run is over).
    pub end: Duration,
}

/// A prompt's token ids, checked once against the context they will run in
/// (WORKER-4413, 4423): not empty, and leaving room for at least one
/// generated token. Admission makes one; a [`Sequence`] takes it as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    ids: Vec<u32>,
    max_context: usize,
}

impl Prompt {
    /// The one length check of a prompt.
    pub fn new(ids: Vec<u32>, max_context: usize) -> Result<Self> {
        let n = ids.len();
        if n == 0 || n >= max_context {
            return Err(WorkerError::invalid(format!(
                "field `prompt` is {n} tokens; this worker's context holds {max_context} tokens \
                 (max_context), leaving room for at least one generated token"
            )));
        }
        Ok(Self { ids, max_context })
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Never true: a `Prompt` holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The context the prompt was checked against.
    pub fn max_context(&self) -> usize {
        self.max_context
    }
}

/// One request: see the module header.
pub struct Sequence<'t, S: EventSink> {
    prompt: Prompt,
    params: GenerationParams,
    tokenizer: &'t Tokenizer,
    rng: SamplerRng,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    max_context: usize,
    /// Benchmarks only: an end-of-generation token is an ordinary token.
    ignore_eos: bool,
    sink: S,
    events: u64,
    /// The engine sequence holding its KV pages, while admitted.
    slot: Option<SeqSlot>,
    /// Positions already computed (prompt tokens, then fed-back tokens).
    fed: usize,
    /// The token sampled last, to be fed at position `fed` next.
    pending: Option<u32>,
    finished: Option<Finish>,
    started: Option<Instant>,
    prefill_done: Option<Duration>,
    first_token: Option<Duration>,
}

impl<'t, S: EventSink> Sequence<'t, S> {
    /// A sequence of `prompt` (already checked against its context).
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt: Prompt,
        params: GenerationParams,
        sink: S,
    ) -> Result<Self> {
        params.check()?;
        Ok(Self {
            rng: SamplerRng::new(params.seed),
            decoder: tokenizer.stream(),
            stop: StopMatcher::new(&params.stop),
            max_context: prompt.max_context(),
            prompt,
            params,
            tokenizer,
            ignore_eos: false,
            sink,
            events: 0,
            slot: None,
            fed: 0,
            pending: None,
            finished: None,
            started: None,
            prefill_done: None,
            first_token: None,
        })
    }

    /// Generate through end-of-generation tokens (fixed-length benchmarks).
    pub fn ignoring_eos(mut self) -> Self {
        self.ignore_eos = true;
        self
    }

    pub fn tokens_in(&self) -> usize {
        self.prompt.len()
    }

    /// Token events delivered so far (the `tokens_out` of the `end` event).
    pub fn tokens_out(&self) -> u64 {
        self.events
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Take the sink back once the sequence is over.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Positions this sequence can ever hold: its prompt and `max_tokens`
    /// generated tokens, within the context.
    pub fn positions_needed(&self) -> usize {
        (self.prompt.len() + self.params.max_tokens as usize).min(self.max_context)
    }

    /// Reserve every KV page the sequence can ever need in `engine`
    /// (INVALID_PARAMS when it can never fit, WORKER_BUSY while others hold
    /// the pages). The clock of its [`Timeline`] starts here.
    pub fn admit(&mut self, engine: &mut dyn Engine) -> Result<()> {
        if self.slot.is_none() {
            self.slot = Some(engine.admit(self.positions_needed())?);
            self.started = Some(Instant::now());
        }
        Ok(())
    }

    /// Give the sequence's pages back (end, cancel, disconnect, timeout or
    /// error); harmless when it holds none.
    pub fn release(&mut self, engine: &mut dyn Engine) {
        if let Some(slot) = self.slot.take() {
            engine.release(slot);
        }
    }

    /// What the sequence feeds the next step: up to `max_prefill` more of
    /// its prompt, or the token it sampled last. None once it is finished
    /// or before it is admitted. Prompt chunks start at multiples of
    /// `max_prefill` from the request's own start, so how a prompt is split
    /// depends on the request alone.
    pub fn next_chunk(&self, max_prefill: usize) -> Option<StepChunk<'_>> {
        let seq = self.slot?;
        if self.finished.is_some() {
            return None;
        }
        let ids = self.prompt.ids();
        if self.fed < ids.len() {
            let end = ids.len().min(self.fed + max_prefill.max(1));
            return Some(StepChunk {
                seq,
                tokens: &ids[self.fed..end],
                pos: self.fed,
            });
        }
        let token = self.pending.as_ref()?;
        Some(StepChunk {
            seq,
            tokens: std::slice::from_ref(token),
            pos: self.fed,
        })
    }

    /// The slot and candidate count this sequence will sample with once a
    /// step that ran its `fed` tokens ends: None when that step leaves its
    /// prompt unfinished (or it is not running).
    pub fn sample_want(&self, fed: usize) -> Option<(SeqSlot, usize)> {
        let slot = self.slot?;
        if self.finished.is_some() || self.fed + fed < self.prompt.len() {
            return None;
        }
        Some((
            slot,
            crate::engine::sampler::candidates_needed(&self.params.sampling),
        ))
    }

    /// The slot to offer [`Engine::chain_greedy`] once a step that ran this
    /// sequence's `fed` tokens ends: Some when that step completes its
    /// prompt or continues its output, it samples greedily, and the token
    /// it samples next is not its last by count or context, so it will feed
    /// that token at its next position unless the token itself ends it
    /// (end of generation, stop text).
    pub fn chain_slot(&self, fed: usize) -> Option<SeqSlot> {
        let slot = self.slot?;
        let at = self.fed + fed;
        let greedy = self.params.sampling.is_greedy();
        let last = self.next_is_last(at);
        (self.finished.is_none() && at >= self.prompt.len() && greedy && !last).then_some(slot)
    }

    /// Whether the token sampled next, to be written at position `pos`,
    /// is the sequence's last by count (`max_tokens`) or by context.
    fn next_is_last(&self, pos: usize) -> bool {
        self.events + 1 >= u64::from(self.params.max_tokens) || pos + 1 >= self.max_context
    }

    /// Take the result of a step that ran this sequence's `fed` tokens (its
    /// [`Self::next_chunk`]): once the prompt is complete, sample the next
    /// token, deliver its event and decide whether the sequence is done.
    /// Returns how it finished, once it has.
    pub fn advance(&mut self, engine: &mut dyn Engine, fed: usize) -> Result<Option<Finish>> {
        let slot = self
            .slot
            .ok_or_else(|| WorkerError::internal("a sequence advanced before it was admitted"))?;
        self.fed += fed;
        self.pending = None;
        if self.fed < self.prompt.len() {
            return Ok(None);
        }
        let since = self.started.map(|t| t.elapsed()).unwrap_or_default();
        self.prefill_done.get_or_insert(since);
        let draw = self.rng.next_draw();
        let id = engine.seq_sample(slot, &self.params.sampling, draw)?;
        self.first_token.get_or_insert(since);
        self.sink.sampled();
        let (text, done) = self.accept(id, self.fed)?;
        if let Some(text) = text {
            self.sink.token(self.events, text)?;
            self.events += 1;
        }
        match done {
            Some(f) => self.finished = Some(f),
            None => self.pending = Some(id),
        }
        Ok(done)
    }

    /// When the phases of the sequence ended, once it has finished.
    pub fn timeline(&self) -> Timeline {
        let end = self.started.map(|t| t.elapsed()).unwrap_or_default();
        Timeline {
            prefill: self.prefill_done.unwrap_or(end),
            first_token: self.first_token.unwrap_or(end),
            end,
        }
    }

    /// Run the sequence alone: admit, then one step after another (the
    /// prompt in the engine's chunks first), asking the sink before every step, and release
    /// the pages however it ends.
    pub fn run(&mut self, engine: &mut dyn Engine) -> Result<(Finish, Timeline)> {
        let result = self
            .sink
            .check()
            .and_then(|()| self.admit(engine))
            .and_then(|()| self.steps_alone(engine));
        self.release(engine);
        result.map(|f| (f, self.timeline()))
    }

    fn steps_alone(&mut self, engine: &mut dyn Engine) -> Result<Finish> {
        let max_prefill = engine.prefill_chunk();
        loop {
            let Some(chunk) = self.next_chunk(max_prefill) else {
                return Err(WorkerError::internal(
                    "a running sequence had nothing to feed",
                ));
            };
            let fed = chunk.tokens.len();
            engine.step(&[chunk])?;
            if let Some(slot) = self.chain_slot(fed) {
                engine.chain_greedy(&[slot])?;
            }
            // Asked before every sample, so nothing is delivered after a
            // cancel, a disconnect or the deadline.
            self.sink.check()?;
            if let Some(f) = self.advance(engine, fed)? {
                return Ok(f);
            }
        }
    }

    /// Take sampled token `id` (to be written at position `pos`): the text of
    /// its event, if it gets one, and whether the sequence ends with it.
    fn accept(&mut self, id: u32, pos: usize) -> Result<(Option<String>, Option<Finish>)> {
        let eog = self.tokenizer.is_eog(id);
        if eog && !self.ignore_eos {
            let (text, stopped) = self.flush();
            let finish = if stopped { Finish::Stop } else { Finish::Eos };
            return Ok(((!text.is_empty()).then_some(text), Some(finish)));
        }
        let piece = if eog {
            String::new()
        } else {
            self.decoder.push(id).map_err(|e| {
                WorkerError::internal(format!(
                    "the engine produced token {id} that the tokenizer cannot decode: {}",
                    e.message()
                ))
            })?
        };
        let out = self.stop.push(&piece);
        if out.stopped {
            return Ok((Some(out.emit), Some(Finish::Stop)));
        }
        if !self.next_is_last(pos) {
            return Ok((Some(out.emit), None));
        }
        let (rest, stopped) = self.flush();
        let finish = if stopped {
            Finish::Stop
        } else {
            Finish::Length
        };
        Ok((Some(out.emit + &rest), Some(finish)))
    }

    /// Release what the decoder and the stop matcher still hold; true when
    /// that text completes a stop sequence (then it and what follows are dropped).
    fn flush(&mut self) -> (String, bool) {
        let out = self.stop.push(&self.decoder.finish());
        if out.stopped {
            return (out.emit, true);
        }
        (out.emit + &self.stop.finish(), false)
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
