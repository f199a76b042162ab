//! The tokenizer, built from GGUF metadata (issue 3 point 4; WORKER-4304:
//! prompts without NUL, ids inside the vocabulary).
//!
//! GGUF files of the supported families carry a gpt2-style byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`): the vocabulary (`tokenizer.ggml.tokens`),
//! the merge ranks (`tokenizer.ggml.merges`), per-token types and a named
//! pre-tokenizer (`tokenizer.ggml.pre`). Encoding is delegated to the
//! `tokenizers` crate (Hugging Face's implementation) configured to behave as
//! llama.cpp does for that pre-tokenizer name, so prompts tokenize exactly as
//! the golden files record. Control tokens (type 3) and user-defined tokens
//! (type 4) are matched in the text before BPE: control tokens only when the
//! caller asks (`parse_special`), user-defined ones always, as llama.cpp does.
//!
//! Decoding is done here, byte-exact: every token maps to the bytes it stands
//! for, and [`StreamDecoder`] only ever emits complete UTF-8 sequences, holding
//! back a character split across tokens until it is complete.

use crate::error::{Result, WorkerError};
use crate::model::gguf::{GgufHeader, MetaValue};
use crate::model::pretokenize::PreSplit;
use std::collections::HashSet;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerImpl};

/// The crate's tokenizer over our pre-tokenizer (`pretokenize`), which
/// compiles each split regex once per process.
type HfTokenizer =
    TokenizerImpl<BPE, NormalizerWrapper, PreSplit, PostProcessorWrapper, DecoderWrapper>;

/// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The gpt2 split: contractions, letters, numbers, other symbols, whitespace.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's split, with the case-insensitive contractions spelled out.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split: like Qwen2's but numbers in groups of up to three digits.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes applied in sequence for a `tokenizer.ggml.pre` name.
pub(super) fn pre_regexes(pre: &str) -> Result<Vec<&'static str>> {
    match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
            Ok(vec![r"\p{N}", GPT2_REGEX])
        }
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" => Ok(vec![GPT2_REGEX]),
        "qwen2" | "stablelm2" => Ok(vec![QWEN2_REGEX]),
        "llama3" | "llama-v3" | "llama-bpe" => Ok(vec![LLAMA3_REGEX]),
        other => Err(WorkerError::model_load(format!(
            "the model's tokenizer uses the pre-tokenizer '{other}', which this worker does not \
             implement (supported: smollm, starcoder, gpt2, qwen2, llama-bpe). Use a model from a supported family."
        ))),
    }
}

/// GPT-2's reversible byte ↔ printable-character table (byte-level BPE).
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// Bytes a byte-level token string stands for; `None` if a character is not in the table.
fn token_text_to_bytes(
    text: &str,
    char_to_byte: &std::collections::HashMap<char, u8>,
) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| char_to_byte.get(&c).copied())
        .collect()
}

/// A gpt2-style byte-level BPE tokenizer loaded from a GGUF file.
pub struct Tokenizer {
    /// Control and user-defined tokens are extracted from the text before BPE.
    with_special: HfTokenizer,
    /// Only user-defined tokens are extracted; control-token text is plain text.
    plain: HfTokenizer,
    /// Bytes of every token id (control tokens: their UTF-8 text).
    bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    add_bos: bool,
    eog: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.bytes.len())
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> WorkerError {
    WorkerError::model_load(format!(
        "could not build the tokenizer from the model file: {what}: {e}"
    ))
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufHeader) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(WorkerError::model_load(format!(
                "the model's tokenizer type is '{model}'; this worker supports only gpt2-style byte-level \
                 BPE ('gpt2'), used by the llama-3, SmolLM2 and Qwen2 families"
            )));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
            WorkerError::model_load("the model file has no tokenizer.ggml.tokens array")
        })?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(WorkerError::model_load(format!(
                "the tokenizer vocabulary size {n} is out of range"
            )));
        }
        let types = match g.get_i32_array("tokenizer.ggml.token_type") {
            Some(t) if t.len() == n => t,
            Some(t) => {
                return Err(WorkerError::model_load(format!(
                    "tokenizer.ggml.token_type has {} entries but there are {n} tokens",
                    t.len()
                )))
            }
            None => vec![1; n],
        };
        let merges_raw = g.get_str_array("tokenizer.ggml.merges").ok_or_else(|| {
            WorkerError::model_load("the model file has no tokenizer.ggml.merges array")
        })?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                WorkerError::model_load(format!(
                    "tokenizer merge #{i} ('{m}') is not two tokens separated by a space"
                ))
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let mut vocab = std::collections::HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.to_string()).or_insert(i as u32);
        }
        let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        // Llama 3 emits a word that is itself a vocabulary entry without merging (as llama.cpp does).
        let ignore_merges = matches!(pre, "llama3" | "llama-v3" | "llama-bpe");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| tok_err("BPE", e))?;

        let pre_split =
            PreSplit::new(&pre_regexes(pre)?).map_err(|e| tok_err("pre-tokenizer", e))?;
        let mut plain = HfTokenizer::new(bpe);
        plain.with_pre_tokenizer(Some(pre_split));
        let user: Vec<AddedToken> = (0..n)
            .filter(|&i| types[i] == TYPE_USER_DEFINED)
            .map(|i| AddedToken::from(tokens[i].to_string(), false).normalized(false))
            .collect();
        plain
            .add_tokens(user)
            .map_err(|e| tok_err("user-defined tokens", e))?;
        let mut with_special = plain.clone();
        let control: Vec<AddedToken> = (0..n)
            .filter(|&i| types[i] == TYPE_CONTROL && !tokens[i].is_empty())
            .map(|i| AddedToken::from(tokens[i].to_string(), true))
            .collect();
        with_special
            .add_special_tokens(control)
            .map_err(|e| tok_err("control tokens", e))?;

        let table = byte_to_char_table();
        let char_to_byte: std::collections::HashMap<char, u8> = table
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let bytes = (0..n)
            .map(|i| {
                if types[i] == TYPE_CONTROL || types[i] == TYPE_USER_DEFINED {
                    tokens[i].as_bytes().to_vec()
                } else {
                    token_text_to_bytes(tokens[i], &char_to_byte)
                        .unwrap_or_else(|| tokens[i].as_bytes().to_vec())
                }
            })
            .collect();

        let id = |key: &str| g.get_u32(key).filter(|&v| (v as usize) < n);
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = matches!(
            g.get("tokenizer.ggml.add_bos_token"),
            Some(MetaValue::Bool(true))
        );
        let mut eog = HashSet::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            eog.extend(id(key));
        }
        // Chat models end a turn with these control tokens even when the
        // declared EOS is another one (llama.cpp applies the same list).
        const EOG_TEXTS: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|eom_id|>",
            "<EOT>",
        ];
        for i in 0..n {
            if types[i] == TYPE_CONTROL && EOG_TEXTS.contains(&tokens[i]) {
                eog.insert(i as u32);
            }
        }
        Ok(Self {
            with_special,
            plain,
            bytes,
            bos,
            add_bos,
            eog,
        })
    }

    /// Token ids for `text`. With `parse_special`, control-token text such as
    /// `<|im_start|>` becomes that token; without, it is tokenized as text.
    /// BOS is prepended only when the model declares `add_bos_token = true`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.contains('\0') {
            return Err(WorkerError::invalid(
                "the prompt contains a NUL character, which no model vocabulary represents; remove it",
            ));
        }
        let tk = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk
            .encode(text, false)
            .map_err(|e| WorkerError::invalid(format!("the prompt could not be tokenized: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids` (invalid UTF-8 from a partial character becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.bytes_of(id)?);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model declares that BOS is prepended to every prompt.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// End of generation: EOS, EOT, or a chat turn-end control token.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.bytes.get(id as usize).cloned()
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8]> {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                WorkerError::invalid(format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    self.bytes.len()
                ))
            })
    }

    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
        }
    }
}

/// Incremental detokenizer: emits only complete UTF-8 text.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Add one token; returns the text that became complete (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend_from_slice(self.tok.bytes_of(id)?);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return Ok(out);
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for the next token.
                        None => {
                            self.pending.drain(..good);
                            return Ok(out);
                        }
                        // Bytes that can never become valid: replace and go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Generation ended: whatever is still held, lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_and_matches_gpt2() {
        let t = byte_to_char_table();
        let set: HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn regexes_compile_for_every_supported_pre() {
        for pre in ["smollm", "gpt2", "qwen2", "llama-bpe"] {
            PreSplit::new(&pre_regexes(pre).unwrap()).unwrap();
        }
        assert_eq!(
            pre_regexes("llama-bpe-unknown").unwrap_err().code(),
            "MODEL_LOAD_FAILED"
        );
    }
}
