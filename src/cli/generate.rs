//! placeholder: owned by a helper, not yet written.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {}

pub fn run(_args: GenerateArgs) -> std::process::ExitCode {
    eprintln!("not yet implemented");
    std::process::ExitCode::FAILURE
}
