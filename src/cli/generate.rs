//! `worker-orcd generate`: run a prompt through a model and stream the
//! generated text to stdout (issue 3 point 8; WORKER-4700, 4710).
//!
//! Only the generated text goes to stdout, flushed per token, so the command
//! composes in pipes; a one-line summary (tokens in/out, prefill and decode
//! tokens/s, seed) ends on stderr. Like the daemon it refuses to run as root
//! unless `--allow-root` is given. The model loading helpers here are shared
//! with `bench`.

use crate::engine::rng::SamplerRng;
use crate::engine::sampler::StopMatcher;
use crate::engine::{BackendKind, Engine, LoadOptions, SamplingParams};
use crate::error::{Result, WorkerError};
use crate::model::arch::{self, ModelConfig, ModelWeights};
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::tokenizer::Tokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Cpu,
    Cuda,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Cuda => BackendKind::Cuda,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text; special tokens such as `<|im_start|>` are recognised.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling seed (default: random, printed in the summary).
    #[arg(long)]
    pub seed: Option<u64>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = no top-k filter (the candidate pool is still capped at 1024).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Stop when this text is generated (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap the prompt in the ChatML template as one user turn.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// CUDA device ordinal (cuda backend).
    #[arg(long, default_value_t = 0)]
    pub gpu_device: u32,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Run even as root (not recommended).
    #[arg(long)]
    pub allow_root: bool,
}

/// A model file opened, checked and ready to load into an engine.
pub struct LoadedModel {
    pub gguf: GgufFile,
    pub cfg: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
}

pub fn open_model(path: &Path) -> Result<LoadedModel> {
    let gguf = GgufFile::open(path, &GgufLimits::default())?;
    let (cfg, weights) = arch::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    if tokenizer.vocab_size() < cfg.vocab_size {
        return Err(WorkerError::model_load(format!(
            "the tokenizer has {} tokens but the embedding has {} rows",
            tokenizer.vocab_size(),
            cfg.vocab_size
        )));
    }
    Ok(LoadedModel {
        gguf,
        cfg,
        weights,
        tokenizer,
    })
}

/// Load `m` into the chosen backend.
pub fn make_engine(
    kind: BackendKind,
    m: &LoadedModel,
    opts: &LoadOptions,
) -> Result<Box<dyn Engine>> {
    crate::engine::load_engine(kind, &m.gguf, &m.cfg, &m.weights, opts)
}

/// Refuse root unless overridden (same rule as the daemon).
pub fn check_root(allow_root: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if is_root && !allow_root {
        return Err(WorkerError::invalid(
            "refusing to run as root: a model file is untrusted input. Run as an unprivileged user, \
             or pass --allow-root to override",
        ));
    }
    if is_root {
        eprintln!("warning: running as root because --allow-root was given");
    }
    Ok(())
}

/// Exit status for a failure, matching the daemon's table where one applies.
pub fn exit_code_for(e: &WorkerError) -> ExitCode {
    ExitCode::from(match e.code() {
        "INVALID_PARAMS" => 2,
        "MODEL_LOAD_FAILED" | "MODEL_SIGNATURE_INVALID" | "HOST_OOM" => 3,
        "CUDA_ERROR" | "VRAM_OOM" => 4,
        "SEAL_VERIFICATION_FAILED" => 5,
        _ => 1,
    })
}

/// The ChatML wrapping used by SmolLM2 and Qwen2 instruct models.
pub fn chat_wrap(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
}

pub fn run(args: GenerateArgs) -> ExitCode {
    match generate(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error [{}]: {}", e.code(), e.message());
            exit_code_for(&e)
        }
    }
}

fn generate(args: &GenerateArgs) -> Result<()> {
    check_root(args.allow_root)?;
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(WorkerError::invalid(
            "--temperature must be a finite number >= 0",
        ));
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(WorkerError::invalid("--top-p must be in (0, 1]"));
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    };
    let seed = match args.seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| WorkerError::internal(format!("no random seed: {e}")))?;
            u64::from_le_bytes(b)
        }
    };
    let m = open_model(&args.model)?;
    let text = if args.chat {
        chat_wrap(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = m.tokenizer.encode(&text, true)?;
    if prompt.is_empty() {
        return Err(WorkerError::invalid(
            "the prompt is empty after tokenization",
        ));
    }
    let need = prompt.len() + args.max_tokens;
    if prompt.len() >= m.cfg.context_length {
        return Err(WorkerError::invalid(format!(
            "the prompt has {} tokens; the model's context holds {}",
            prompt.len(),
            m.cfg.context_length
        )));
    }
    let opts = LoadOptions {
        max_context: need.min(m.cfg.context_length),
        gpu_device: args.gpu_device,
        threads: args.threads,
    };
    let mut eng = make_engine(args.backend.into(), &m, &opts)?;
    let max_new = args.max_tokens.min(eng.max_context() - prompt.len());

    let mut rng = SamplerRng::new(seed);
    let mut stream = m.tokenizer.stream();
    let mut stops = StopMatcher::new(&args.stop);
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, s: &str| -> Result<()> {
        out.write_all(s.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| WorkerError::internal(format!("could not write to stdout: {e}")))
    };

    let t0 = Instant::now();
    eng.forward(&prompt, 0)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut produced = 0usize;
    let mut reason = "length";
    for i in 0..max_new {
        let draw = rng.next_draw();
        let id = eng.sample(&params, draw)?;
        produced += 1;
        if m.tokenizer.is_eog(id) {
            reason = "eos";
            break;
        }
        let piece = stream.push(id)?;
        let s = stops.push(&piece);
        write(&mut out, &s.emit)?;
        if s.stopped {
            reason = "stop";
            break;
        }
        if i + 1 < max_new {
            eng.forward(&[id], prompt.len() + i)?;
        }
    }
    if reason != "stop" {
        let tail = stream.finish();
        let s = stops.push(&tail);
        write(&mut out, &s.emit)?;
        if !s.stopped {
            write(&mut out, &stops.finish())?;
        }
    }
    let decode_s = t1.elapsed().as_secs_f64();
    eprintln!(
        "\n[{}] tokens in {} out {} ({reason}); prefill {:.1} tok/s, decode {:.1} tok/s; seed {seed}",
        eng.backend().as_str(),
        prompt.len(),
        produced,
        prompt.len() as f64 / prefill_s.max(1e-9),
        produced as f64 / decode_s.max(1e-9),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_is_chatml() {
        assert_eq!(
            chat_wrap("hi"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn exit_codes_follow_the_daemon_table() {
        assert_eq!(
            exit_code_for(&WorkerError::model_load("x")),
            ExitCode::from(3)
        );
        assert_eq!(exit_code_for(&WorkerError::invalid("x")), ExitCode::from(2));
        assert_eq!(exit_code_for(&WorkerError::cuda("x")), ExitCode::from(4));
    }
}
