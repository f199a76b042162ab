//! Model files: GGUF parsing, tensor block formats, architectures, tokenizer,
//! capability descriptor (MCD) and the test-model generator.
pub mod arch;
pub mod file;
pub mod gguf;
pub mod gguf_write;
pub mod mcd;
pub mod pretokenize;
pub mod quant;
pub mod test_model;
pub mod tokenizer;
