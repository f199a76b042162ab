//! cargo-fuzz target `gguf_tokenizer`: see `worker_orcd::fuzzing::gguf_tokenizer` (issue 13 point 6).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzzing::gguf_tokenizer(data));
