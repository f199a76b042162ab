//! placeholder: owned by a helper, not yet written.
#[derive(Debug, clap::Args)]
pub struct MakeModelArgs {}

pub fn run(_args: MakeModelArgs) -> std::process::ExitCode {
    eprintln!("not yet implemented");
    std::process::ExitCode::FAILURE
}
