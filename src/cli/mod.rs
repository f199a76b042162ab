//! Commands for people and scripts besides the daemon itself.
pub mod bench;
pub mod generate;
pub mod make_model;
