//! `worker-orcd generate`: run a prompt through a model and stream the
//! generated text to stdout (issue 3 point 8; WORKER-4700, 4710).
//!
//! Only the generated text goes to stdout, flushed per token, so the command
//! composes in pipes; a one-line summary (tokens in/out, prefill and decode
//! tokens/s, seed) ends on stderr. Like the daemon it refuses to run as root
//! unless `--allow-root` is given. The model loading helpers here are shared
//! with `bench`.
//!
//! It accepts and refuses what the daemon's Execute does (issue 11 point 2):
//! the prompt and the parameters go through the same validation
//! (`http::validate::prompt_text`, `generation_params`, with the
//! configuration's default limits), the same default seed, and the same
//! decode loop (`engine::sequence`), so the same request counts the same
//! tokens here and in the daemon's `end` event.

use crate::engine::sequence::{EventSink, Prompt, Sequence};
use crate::engine::{BackendKind, Engine, LoadOptions};
use crate::error::{Result, WorkerError};
use crate::http::validate::{self, Limits};
use crate::model::arch::{self, ModelConfig, ModelWeights};
use crate::model::gguf::{GgufFile, GgufLimits};
use crate::model::tokenizer::Tokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Most tokens to generate, 1..=4096 (Execute's `max_tokens`; its
    /// default when absent is 256).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Sampling seed (Execute's `seed`; default 0, like the daemon's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// 0 = greedy; at most 2.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = no top-k filter (the candidate pool is still capped at 1024).
    #[arg(long)]
    pub top_k: Option<u64>,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long)]
    pub top_p: Option<f64>,
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
    crate::engine::load_engine(kind, &m.gguf, &m.cfg, &m.weights, opts, None)
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

/// Exit status for a failure: the daemon's table (`daemon::exit`), so a
/// script reads the same code from the command line as from the daemon.
pub fn exit_code_for(e: &WorkerError) -> ExitCode {
    ExitCode::from(crate::daemon::exit::for_error(e))
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

/// The flags as the `params` object of an Execute request: absent flags are
/// absent fields, so the daemon's defaults apply to both.
fn params_json(args: &GenerateArgs) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("max_tokens", args.max_tokens.map(Into::into));
    put("seed", args.seed.map(Into::into));
    put("temperature", args.temperature.map(Into::into));
    put("top_k", args.top_k.map(Into::into));
    put("top_p", args.top_p.map(Into::into));
    if !args.stop.is_empty() {
        put("stop", Some(args.stop.clone().into()));
    }
    serde_json::Value::Object(m)
}

/// Generated text goes to stdout as it arrives.
struct StdoutSink<'a> {
    out: std::io::StdoutLock<'a>,
}

impl EventSink for StdoutSink<'_> {
    fn check(&mut self) -> Result<()> {
        Ok(())
    }

    fn token(&mut self, _index: u64, text: String) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| WorkerError::internal(format!("could not write to stdout: {e}")))
    }
}

fn generate(args: &GenerateArgs) -> Result<()> {
    check_root(args.allow_root)?;
    let lim = Limits::default();
    // The prompt as the user wrote it, before any template: an empty
    // question is refused even though its chat wrapping is not empty.
    validate::prompt_text(&args.prompt, &lim)?;
    let params = validate::generation_params(params_json(args), &lim)?;
    let m = open_model(&args.model)?;
    let text = if args.chat {
        chat_wrap(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = Prompt::new(m.tokenizer.encode(&text, true)?, m.cfg.context_length)?;
    let need = prompt.len() + params.max_tokens as usize;
    let opts = LoadOptions {
        max_context: need.min(m.cfg.context_length),
        kv_pool_tokens: 0,
        max_sequences: 1,
        gpu_device: args.gpu_device,
        threads: args.threads,
    };
    let mut eng = make_engine(args.backend.into(), &m, &opts)?;
    let seed = params.seed;
    let sink = StdoutSink {
        out: std::io::stdout().lock(),
    };
    // The engine holds prompt + max_tokens (less than the model's context
    // when that is larger), so max_tokens ends the sequence before it fills.
    let mut seq = Sequence::new(&m.tokenizer, prompt, params, sink)?;
    let (finish, times) = seq.run(eng.as_mut())?;
    let decode_s = times.end.saturating_sub(times.prefill).as_secs_f64();
    eprintln!(
        "\n[{}] tokens in {} out {} ({}); prefill {:.1} tok/s, decode {:.1} tok/s; seed {seed}",
        eng.backend().as_str(),
        seq.tokens_in(),
        seq.tokens_out(),
        finish.as_str(),
        seq.tokens_in() as f64 / times.prefill.as_secs_f64().max(1e-9),
        seq.tokens_out() as f64 / decode_s.max(1e-9),
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
        // Out of VRAM is a model that does not fit (3), as in the daemon, not a device fault.
        let oom = WorkerError::VramOom {
            message: "x".into(),
        };
        assert_eq!(exit_code_for(&oom), ExitCode::from(3));
    }
}
