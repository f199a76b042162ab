//! cargo-fuzz target `gguf`: see `worker_orcd::fuzzing::gguf` (issue 13 point 6).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzzing::gguf(data));
