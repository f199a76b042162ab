//! The `worker-orcd` binary: thin argument dispatch. With no subcommand it runs
//! the daemon (`serve`); `generate`, `bench`, `loadgen`, `make-model` and `build-info` are tools for
//! people and for the GPU machine.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use worker_orcd::{cli, config, daemon, http};

#[derive(Parser)]
#[command(
    name = "worker-orcd",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: config::ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker daemon (the default when no subcommand is given).
    Serve(config::ServeArgs),
    /// Generate text from a prompt and stream it to stdout.
    Generate(cli::generate::GenerateArgs),
    /// Measure prefill and decode speed; prints a table, writes CSV and JSON.
    Bench(cli::bench::BenchArgs),
    /// Drive a running worker with concurrent Execute requests over HTTP + SSE;
    /// prints TTFT, inter-token latency and throughput, writes CSV and JSON.
    Loadgen(cli::loadgen::LoadgenArgs),
    /// Write a GGUF test model with seeded weights and a tokenizer.
    MakeModel(cli::make_model::MakeModelArgs),
    /// Check that the token comparison's time does not tell which token
    /// matched (dudect-style t-test); prints a table, writes JSON.
    BenchAuth(cli::bench_auth::BenchAuthArgs),
    /// Print the version, the compiled-in features and the SHA-256 of the sources.
    BuildInfo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => daemon::run(cli.serve, http::router),
        Some(Command::Serve(args)) => daemon::run(args, http::router),
        Some(Command::Generate(args)) => cli::generate::run(args),
        Some(Command::Bench(args)) => cli::bench::run(args),
        Some(Command::Loadgen(args)) => cli::loadgen::run(args),
        Some(Command::MakeModel(args)) => cli::make_model::run(args),
        Some(Command::BenchAuth(args)) => cli::bench_auth::run(args),
        Some(Command::BuildInfo) => {
            print!("{}", cli::build_info());
            ExitCode::SUCCESS
        }
    }
}
