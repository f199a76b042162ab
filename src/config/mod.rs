//! placeholder: owned by the config/ops helper.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {}
