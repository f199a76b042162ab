//! placeholder: owned by the daemon helper.
pub fn run(_args: crate::config::ServeArgs) -> std::process::ExitCode {
    eprintln!("not yet implemented");
    std::process::ExitCode::FAILURE
}
