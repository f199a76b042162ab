//! The pre-tokenizer of the gpt2-style tokenizers (WORKER-4304): the regex
//! splits `tokenizer.ggml.pre` names, in order, each match isolated, then
//! the byte-level mapping, exactly as the `tokenizers` crate's `Split`
//! (Isolated, not inverted) and `ByteLevel` steps in a `Sequence` do.
//!
//! Why our own type: the crate's `Split` compiles its regex whenever it is
//! built or cloned (about 1 ms for the gpt2 pattern), and every tokenizer
//! build did that twice (with and without control tokens). Here each
//! pattern is compiled once per process and shared, so building a tokenizer
//! (at load, at Plan of a new file, in the fuzzer) no longer pays for it.
//! The patterns are the fixed set in `tokenizer.rs`, so the cache holds at
//! most that many entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::tokenizer::{PreTokenizedString, PreTokenizer};
use tokenizers::utils::SysRegex;
use tokenizers::SplitDelimiterBehavior;

/// The named splits and the byte-level step, with compiled regexes shared
/// across every tokenizer of the process.
#[derive(Clone)]
pub struct PreSplit {
    regexes: Vec<Arc<SysRegex>>,
    byte_level: ByteLevel,
}

impl PreSplit {
    /// The pre-tokenizer splitting by `patterns` in order; an error names
    /// the pattern that does not compile.
    pub fn new(patterns: &[&'static str]) -> Result<Self, String> {
        let regexes = patterns
            .iter()
            .map(|p| compiled(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreSplit {
            regexes,
            byte_level: ByteLevel::new(false, false, false),
        })
    }
}

/// The compiled regex of `pattern`, compiled on first use.
fn compiled(pattern: &'static str) -> Result<Arc<SysRegex>, String> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<SysRegex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return Ok(Arc::clone(re));
    }
    // Compiled outside the lock: two threads may both compile a pattern the
    // first time; the first one stored is the one every caller shares.
    let re = Arc::new(SysRegex::new(pattern).map_err(|e| format!("regex {pattern:?}: {e}"))?);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Arc::clone(map.entry(pattern).or_insert(re)))
}

impl PreTokenizer for PreSplit {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        for re in &self.regexes {
            pretokenized
                .split(|_, normalized| normalized.split(&**re, SplitDelimiterBehavior::Isolated))?;
        }
        self.byte_level.pre_tokenize(pretokenized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::OffsetReferential;
    use tokenizers::OffsetType;

    /// The splits of `text` by any pre-tokenizer, as (piece, offsets).
    fn pieces(pre: &impl PreTokenizer, text: &str) -> Vec<(String, (usize, usize))> {
        let mut p = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut p).unwrap();
        p.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, o, _)| (s.to_string(), o))
            .collect()
    }

    /// The crate's own Sequence of Split + ByteLevel, which PreSplit replaces.
    fn reference(patterns: &[&str]) -> PreTokenizerWrapper {
        let mut steps: Vec<PreTokenizerWrapper> = patterns
            .iter()
            .map(|p| {
                PreTokenizerWrapper::Split(
                    Split::new(
                        SplitPattern::Regex(p.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .unwrap(),
                )
            })
            .collect();
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        )));
        PreTokenizerWrapper::Sequence(Sequence::new(steps))
    }

    /// Every supported pattern set splits like the crate's Split sequence,
    /// on text with letters, numbers, contractions, whitespace runs,
    /// newlines, punctuation and non-Latin scripts, and on random text.
    #[test]
    fn splits_exactly_as_the_crate_sequence() {
        let texts = [
            "",
            "Hello, world! It's 2026-12-05 and we've 12345 tokens.",
            "  leading and trailing spaces   \n\n\tTabs\r\nCRLF",
            "日本語のテキスト, русский текст, ελληνικά 123",
            "<|im_start|>user\nWhat's the capital of France?<|im_end|>",
            "a\u{00A0}b\u{2003}c  \u{FEFF}d",
            "x=y+z*2;// comment\n    return foo(bar[3]);",
        ];
        let mut random = Vec::new();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            let len = (state % 40) as usize;
            let mut s = String::new();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pool = [
                    " ", "\n", "a", "Z", "7", "'s", "é", "語", ".", "\t", "!!", "'LL", "\r", "😀",
                    "\u{2028}", "\u{0085}", "        ", "\r\n",
                ];
                s.push_str(pool[(state % pool.len() as u64) as usize]);
            }
            random.push(s);
        }
        for pre in ["smollm", "gpt2", "qwen2", "llama-bpe"] {
            let patterns = super::super::tokenizer::pre_regexes(pre).unwrap();
            let ours = PreSplit::new(&patterns).unwrap();
            let theirs = reference(&patterns);
            for t in texts
                .iter()
                .copied()
                .chain(random.iter().map(String::as_str))
            {
                assert_eq!(pieces(&ours, t), pieces(&theirs, t), "{pre}: {t:?}");
            }
        }
    }

    /// A pattern is compiled once: two pre-tokenizers share its regex.
    #[test]
    fn patterns_are_compiled_once() {
        // A pattern no other test uses, so no parallel test races for it.
        let a = PreSplit::new(&[r"\p{Lu}+"]).unwrap();
        let b = PreSplit::new(&[r"\p{Lu}+"]).unwrap();
        assert!(Arc::ptr_eq(&a.regexes[0], &b.regexes[0]));
        assert!(PreSplit::new(&["(unclosed"]).is_err());
    }
}
