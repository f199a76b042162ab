//! `worker-orcd make-model`: write a valid GGUF test model with seeded weights
//! (issue 3 point 9). The flags become a [`TestModelSpec`]; the model itself
//! is written by `model::test_model`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Result, WorkerError};
use crate::model::test_model::{write_test_model, Preset, TestModelSpec};

#[derive(Debug, clap::Args)]
pub struct MakeModelArgs {
    /// Start from a real release's shape and quant mix; other flags override it.
    #[arg(long, value_enum)]
    pub like: Option<Preset>,
    /// Architecture: llama or qwen2.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub d_model: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub kv_heads: Option<usize>,
    #[arg(long)]
    pub ffn: Option<usize>,
    #[arg(long)]
    pub vocab: Option<usize>,
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Quant mix: `q4_k_m` (llama.cpp's rules), or a default type with
    /// per-tensor overrides, e.g. `q4_0,token_embd=q8_0,ffn_down=q6_K`.
    #[arg(long)]
    pub quant: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

fn spec_from_args(args: &MakeModelArgs) -> Result<TestModelSpec> {
    let mut s = match args.like {
        Some(p) => TestModelSpec::preset(p),
        None => {
            let arch = args.arch.as_deref().ok_or_else(|| {
                WorkerError::invalid("give --like PRESET or --arch llama|qwen2 with the sizes")
            })?;
            let base = if arch == "qwen2" {
                TestModelSpec::tiny_qwen2()
            } else {
                TestModelSpec::tiny_llama()
            };
            TestModelSpec {
                arch: arch.to_string(),
                name: format!("generated-{arch}"),
                ..base
            }
        }
    };
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    if let Some(a) = &args.arch {
        s.arch = a.clone();
    }
    set(&mut s.n_layers, args.layers);
    set(&mut s.d_model, args.d_model);
    set(&mut s.n_heads, args.heads);
    set(&mut s.n_kv_heads, args.kv_heads);
    set(&mut s.ffn, args.ffn);
    set(&mut s.vocab, args.vocab);
    set(&mut s.ctx, args.ctx);
    if let Some(q) = &args.quant {
        s.quant = q.clone();
    }
    s.seed = args.seed;
    Ok(s)
}

pub fn run(args: MakeModelArgs) -> ExitCode {
    let spec = match spec_from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("make-model: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    match write_test_model(&spec, &args.out) {
        Ok(()) => {
            let summary =
                crate::model::gguf::GgufFile::open(&args.out, &Default::default()).map(|g| {
                    let mut mix = std::collections::BTreeMap::new();
                    for t in &g.tensors {
                        *mix.entry(t.dtype.name()).or_insert(0usize) += 1;
                    }
                    (g.file_len, hex::encode(g.file_sha256), mix)
                });
            match summary {
                Ok((len, sha, mix)) => {
                    eprintln!(
                        "make-model: wrote {} ({len} bytes, sha256 {sha}, tensors {mix:?}) in {:.1}s",
                        args.out.display(),
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "make-model: wrote {} but it does not read back: {e}",
                        args.out.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("make-model: {e}");
            if matches!(e, WorkerError::InvalidParams { .. }) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
