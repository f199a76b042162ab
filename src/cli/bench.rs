//! placeholder: owned by a helper, not yet written.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> std::process::ExitCode {
    eprintln!("not yet implemented");
    std::process::ExitCode::FAILURE
}
