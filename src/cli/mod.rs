//! Commands for people and scripts besides the daemon itself.
pub mod bench;
pub mod bench_auth;
pub mod generate;
pub mod make_model;
