//! JSON request bodies parsed with every object's keys checked for repeats
//! (issue 13 point 5; WORKER-4300). A key given twice is ambiguous: which
//! value counts depends on the parser (serde_json keeps the last, others
//! the first), so a request could mean one thing to a proxy or an audit log
//! and another to the worker. It is refused, naming the key, instead of
//! silently taking one of them. Nesting is bounded by serde_json's
//! recursion limit (128), as for any body.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a body was refused: not JSON at all, or JSON that repeats a key.
#[derive(Debug)]
pub enum StrictError {
    Syntax(serde_json::Error),
    RepeatedKey(serde_json::Error),
}

/// Parse `bytes` as one JSON value whose objects never repeat a key.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    let v = d.deserialize_any(StrictVisitor).map_err(classify)?;
    d.end().map_err(StrictError::Syntax)?;
    Ok(v)
}

/// Our own refusal is a data error; everything else is the text's syntax.
fn classify(e: serde_json::Error) -> StrictError {
    match e.classify() {
        serde_json::error::Category::Data => StrictError::RepeatedKey(e),
        _ => StrictError::Syntax(e),
    }
}

/// Builds a `Value` like serde_json's own, refusing a repeated key.
struct StrictVisitor;

/// One nested value, parsed by the same rules.
struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = a.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = a.next_key::<String>()? {
            if m.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key \"{key}\" appears twice in one object"
                )));
            }
            let Strict(v) = a.next_value()?;
            m.insert(key, v);
        }
        Ok(Value::Object(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let text =
            br#"{"a": [1, -2, 3.5, true, null, "x"], "b": {"c": {}}, "d": 18446744073709551615}"#;
        let ours = parse(text).expect("valid");
        let theirs: Value = serde_json::from_slice(text).expect("valid");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth_naming_it() {
        for (text, key) in [
            (r#"{"prompt": "a", "prompt": "b"}"#, "prompt"),
            (r#"{"params": {"seed": 1, "seed": 2}}"#, "seed"),
            (r#"{"stop": [{"x": 1, "x": 1}]}"#, "x"),
        ] {
            match parse(text.as_bytes()) {
                Err(StrictError::RepeatedKey(e)) => assert!(e.to_string().contains(key), "{e}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // The same key in two objects is no repeat.
        assert!(parse(br#"{"a": {"k": 1}, "b": {"k": 2}}"#).is_ok());
    }

    #[test]
    fn broken_text_is_a_syntax_error() {
        for text in [&br#"{"a": 1"#[..], br#"{"a": 1} x"#, b"nul"] {
            assert!(
                matches!(parse(text), Err(StrictError::Syntax(_))),
                "{text:?}"
            );
        }
    }
}
