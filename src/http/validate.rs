//! Request validation: raw JSON bytes become typed requests or an
//! `INVALID_PARAMS` error naming the offending field (WORKER-4300, 4302,
//! 4303, 4304, 4242, 4243, 4244, 4423), and the query string of a commit
//! by upload (4221) through the same field checks.
//!
//! The schema is walked by hand rather than through serde derive so that
//! every failure names its field (serde's type errors only give a line and
//! column) and unknown fields are refused the same way as with
//! `deny_unknown_fields`. Nothing here touches worker state, so a rejected
//! request changes nothing (4305).

pub use crate::api::{CommitRequest, PlanRequest, ShardLayout};
use crate::engine::sequence::GenerationParams;
use crate::engine::SamplingParams;
use crate::error::{Result, WorkerError};
use serde_json::{Map, Value};

/// Identifiers (shard_id, handle_id, job_id): 1..=128 of `[A-Za-z0-9._:-]`.
pub const MAX_ID_LEN: usize = 128;
/// model_ref / path: 1..=1024 of `[A-Za-z0-9._/+-]`.
pub const MAX_REF_LEN: usize = 1024;
pub const MAX_STOP_SEQUENCES: usize = 8;
pub const MAX_STOP_LEN: usize = 256;
pub const MAX_TOP_K: u64 = 1_000_000;
/// max_tokens when the request names none (capped by the configured limit).
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Seed when the request names none, so that an unseeded request is still
/// reproducible (WORKER-4710, 4712).
pub const DEFAULT_SEED: u64 = 0;

/// Configured bounds the validator enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_prompt_len: usize,
    pub max_tokens: u32,
}

impl Default for Limits {
    /// The configuration's defaults (WORKER-4242, 4243): what `generate`
    /// enforces, and the daemon when its configuration changes neither.
    fn default() -> Self {
        Self {
            max_prompt_len: crate::config::DEFAULT_MAX_PROMPT_LEN as usize,
            max_tokens: crate::config::DEFAULT_MAX_TOKENS_LIMIT,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteRequest {
    pub handle_id: String,
    pub prompt: String,
    pub params: GenerationParams,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub job_id: String,
}

/// Fault-injection request (test-hooks builds only).
#[cfg(feature = "test-hooks")]
pub fn fault(bytes: &[u8]) -> Result<crate::engine::Fault> {
    use crate::engine::Fault;
    let mut o = Obj::parse(bytes, "request body")?;
    let kind = o.req_str("kind")?;
    let f = match kind.as_str() {
        "flip_resident_byte" => Fault::FlipResidentByte { offset: o.opt_u64("offset")?.unwrap_or(0) },
        "device_error" => Fault::DeviceError,
        "hang_next_step" => Fault::HangNextStep {
            ms: o.opt_u64("ms")?.filter(|&ms| ms <= 600_000).ok_or_else(|| {
                bad("field `ms` is required: the hang in milliseconds, at most 600000".to_string())
            })?,
        },
        "available_bytes" => Fault::AvailableBytes {
            bytes: o.opt_u64("bytes")?.ok_or_else(|| bad("field `bytes` is required".to_string()))?,
        },
        "replace_seal" => {
            let text = o.req_str("seal")?;
            Fault::ReplaceSeal {
                seal: crate::shard::seal::parse_hex_digest(&text)
                    .ok_or_else(|| bad("field `seal`: 64 hex digits expected".to_string()))?,
            }
        }
        _ => {
            return Err(bad(format!(
                "field `kind`: unknown fault {kind:?}; accepted: \"flip_resident_byte\", \"device_error\", \"hang_next_step\", \"replace_seal\", \"available_bytes\""
            )))
        }
    };
    o.finish()?;
    Ok(f)
}

pub fn plan(bytes: &[u8]) -> Result<PlanRequest> {
    let mut o = Obj::parse(bytes, "request body")?;
    let model_ref = model_ref(&o.req_str("model_ref")?, "model_ref")?;
    let shard_layout = match o.opt_str("shard_layout")?.as_deref() {
        None | Some("single") => ShardLayout::Single,
        Some("tensor_parallel") => ShardLayout::TensorParallel,
        Some(other) => {
            return Err(bad(format!(
                "field `shard_layout`: {other:?} is not accepted; use \"single\" or \"tensor_parallel\""
            )))
        }
    };
    let tp_degree = o.opt_u64("tp_degree")?;
    let tp_degree = match tp_degree {
        Some(n) if !(1..=64).contains(&n) => {
            return Err(bad(format!(
                "field `tp_degree`: {n} is outside the accepted range 1..=64"
            )))
        }
        Some(n) => Some(n as u32),
        None if shard_layout == ShardLayout::TensorParallel => {
            return Err(bad(
                "field `tp_degree` is required when shard_layout is \"tensor_parallel\"",
            ))
        }
        None => None,
    };
    o.finish()?;
    Ok(PlanRequest {
        model_ref,
        shard_layout,
        tp_degree,
    })
}

pub fn commit(bytes: &[u8]) -> Result<CommitRequest> {
    commit_fields(Obj::parse(bytes, "request body")?)
}

/// The query string of a commit by upload (`Content-Type:
/// application/octet-stream`, the body is the model file): the JSON fields
/// of a commit as percent-encoded `name=value` pairs, except `path` (the
/// body is the model); `expected_digest` is required, so that a truncated or
/// altered transfer is caught before anything is used (4221, 4223).
pub fn commit_upload(query: &str) -> Result<CommitRequest> {
    let mut m = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, "a query parameter name")?;
        let v = percent_decode(v, &format!("query parameter `{k}`"))?;
        let v = match v.parse::<u64>() {
            Ok(n) if k == "shard_index" => Value::from(n),
            _ => Value::String(v),
        };
        if m.insert(k.clone(), v).is_some() {
            return Err(bad(format!("query parameter `{k}` is given twice")));
        }
    }
    if m.contains_key("path") {
        return Err(bad(
            "field `path` is not accepted with an upload: the request body is the model file",
        ));
    }
    let req = commit_fields(Obj::new(m, ""))?;
    if req.expected_digest.is_none() {
        return Err(bad(
            "field `expected_digest` is required with an upload: give the SHA-256 of the file you send \
             (query parameter expected_digest=<64 hex digits>)",
        ));
    }
    Ok(req)
}

/// `%XX` escapes decoded (RFC 3986; `+` stays `+`); the result must be UTF-8
/// without NUL. Lengths are bounded later by the field checks.
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let invalid = || bad(format!("{what} is not valid percent-encoded UTF-8"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(invalid)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(invalid());
            }
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| invalid())?;
    if text.contains('\0') {
        return Err(invalid());
    }
    Ok(text)
}

fn commit_fields(mut o: Obj) -> Result<CommitRequest> {
    let model_ref = model_ref(&o.req_str("model_ref")?, "model_ref")?;
    let shard_id = ident(&o.req_str("shard_id")?, "shard_id")?;
    let shard_index = match o.opt_u64("shard_index")? {
        None | Some(0) => 0,
        Some(n) => {
            return Err(bad(format!(
                "field `shard_index`: {n} is outside the accepted range 0..=0 (single-GPU worker)"
            )))
        }
    };
    let path = o
        .opt_str("path")?
        .map(|p| self::model_ref(&p, "path"))
        .transpose()?;
    let expected_digest = match o.opt_str("expected_digest")? {
        None => None,
        Some(s) => Some(crate::shard::seal::parse_hex_digest(&s).ok_or_else(|| {
            bad("field `expected_digest`: must be 64 hexadecimal digits (SHA-256), optionally prefixed \"sha256:\"")
        })?),
    };
    let signature = match o.opt_str("signature")? {
        None => None,
        Some(s) => match hex::decode(&s) {
            Ok(b) if b.len() == 64 => Some(b),
            _ => {
                return Err(bad(
                    "field `signature`: must be an Ed25519 signature, 128 hexadecimal digits",
                ))
            }
        },
    };
    o.finish()?;
    Ok(CommitRequest {
        model_ref,
        shard_id,
        shard_index,
        path,
        expected_digest,
        signature,
    })
}

pub fn cancel(bytes: &[u8]) -> Result<CancelRequest> {
    let mut o = Obj::parse(bytes, "request body")?;
    let job_id = ident(&o.req_str("job_id")?, "job_id")?;
    o.finish()?;
    Ok(CancelRequest { job_id })
}

pub fn execute(bytes: &[u8], lim: &Limits) -> Result<ExecuteRequest> {
    let mut o = Obj::parse(bytes, "request body")?;
    let handle_id = ident(&o.req_str("handle_id")?, "handle_id")?;
    let prompt = o.req_str("prompt")?;
    prompt_text(&prompt, lim)?;
    let params = o.take("params").unwrap_or(Value::Null);
    let params = generation_params(params, lim)?;
    o.finish()?;
    Ok(ExecuteRequest {
        handle_id,
        prompt,
        params,
    })
}

/// The checks of a prompt's text, for Execute and `generate` alike
/// (WORKER-4242, 4244): not empty, no NUL, at most `max_prompt_len` characters.
pub fn prompt_text(prompt: &str, lim: &Limits) -> Result<()> {
    if prompt.is_empty() {
        return Err(bad("field `prompt` must not be empty"));
    }
    if prompt.contains('\0') {
        return Err(bad(
            "field `prompt` contains a NUL character, which is not accepted",
        ));
    }
    let n_chars = prompt.chars().count();
    if n_chars > lim.max_prompt_len {
        return Err(bad(format!(
            "field `prompt` has {n_chars} characters; the limit is {} (max_prompt_len)",
            lim.max_prompt_len
        )));
    }
    Ok(())
}

/// The `params` object of an Execute request (absent or null: every
/// default), for Execute and `generate` alike (WORKER-4243, 4423).
pub fn generation_params(params: Value, lim: &Limits) -> Result<GenerationParams> {
    let p = match params {
        Value::Null => Obj::new(Map::new(), "params"),
        Value::Object(m) => Obj::new(m, "params"),
        v => {
            return Err(bad(format!(
                "field `params` must be an object, got {}",
                kind(&v)
            )))
        }
    };
    checked_params(p, lim)
}

fn checked_params(mut p: Obj, lim: &Limits) -> Result<GenerationParams> {
    let max_tokens = match p.opt_u64("max_tokens")? {
        None => DEFAULT_MAX_TOKENS.min(lim.max_tokens),
        Some(n) if n >= 1 && n <= u64::from(lim.max_tokens) => n as u32,
        Some(n) => {
            return Err(bad(format!(
                "field `params.max_tokens`: {n} is outside the accepted range 1..={} (max_tokens)",
                lim.max_tokens
            )))
        }
    };
    let temperature = p.opt_f64("temperature")?.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(format!(
            "field `params.temperature`: {temperature} is outside the accepted range [0, 2]"
        )));
    }
    let top_p = p.opt_f64("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(format!(
            "field `params.top_p`: {top_p} is outside the accepted range (0, 1]"
        )));
    }
    let top_k = p.opt_u64("top_k")?.unwrap_or(0);
    if top_k > MAX_TOP_K {
        return Err(bad(format!(
            "field `params.top_k`: {top_k} is outside the accepted range 0..={MAX_TOP_K}"
        )));
    }
    let seed = p.opt_u64("seed")?.unwrap_or(DEFAULT_SEED);
    let stop = match p.take("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![stop_seq(s, 0)?],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP_SEQUENCES {
                return Err(bad(format!(
                    "field `params.stop` has {} entries; at most {MAX_STOP_SEQUENCES} are accepted",
                    a.len()
                )));
            }
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.into_iter().enumerate() {
                match v {
                    Value::String(s) => out.push(stop_seq(s, i)?),
                    other => {
                        return Err(bad(format!(
                            "field `params.stop[{i}]` must be a string, got {}",
                            kind(&other)
                        )))
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(bad(format!(
                "field `params.stop` must be an array of strings, got {}",
                kind(&v)
            )))
        }
    };
    p.finish()?;
    Ok(GenerationParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k: top_k as u32,
            top_p: top_p as f32,
        },
        seed,
        stop,
    })
}

fn stop_seq(s: String, i: usize) -> Result<String> {
    if s.is_empty() || s.chars().count() > MAX_STOP_LEN || s.contains('\0') {
        return Err(bad(format!(
            "field `params.stop[{i}]` must be 1..={MAX_STOP_LEN} characters without NUL"
        )));
    }
    Ok(s)
}

/// Identifier check (4303).
pub fn ident(s: &str, field: &str) -> Result<String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.chars().all(ok_char) {
        return Err(bad(format!(
            "field `{field}` must be 1..={MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(s.to_string())
}

/// Model reference / path check (4303); traversal is judged later by
/// canonicalization against model_root (4320–4323), which names the root.
pub fn model_ref(s: &str, field: &str) -> Result<String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+');
    if s.is_empty() || s.len() > MAX_REF_LEN || !s.chars().all(ok_char) {
        return Err(bad(format!(
            "field `{field}` must be 1..={MAX_REF_LEN} characters of A-Z a-z 0-9 . _ - / +"
        )));
    }
    Ok(s.to_string())
}

fn bad(msg: impl Into<String>) -> WorkerError {
    WorkerError::invalid(msg)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object whose fields are taken one by one; leftovers are unknown.
struct Obj {
    m: Map<String, Value>,
    prefix: &'static str,
}

impl Obj {
    fn new(m: Map<String, Value>, prefix: &'static str) -> Self {
        Self { m, prefix }
    }

    fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let v = super::strict_json::parse(bytes).map_err(|e| match e {
            super::strict_json::StrictError::Syntax(e) => bad(format!(
                "{what} is not valid JSON ({e}); send one JSON object encoded as UTF-8"
            )),
            super::strict_json::StrictError::RepeatedKey(e) => {
                bad(format!("{what} is refused: {e}; send each key once"))
            }
        })?;
        match v {
            Value::Object(m) => Ok(Self::new(m, "")),
            other => Err(bad(format!(
                "{what} must be a JSON object, got {}",
                kind(&other)
            ))),
        }
    }

    fn name(&self, f: &str) -> String {
        if self.prefix.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.prefix)
        }
    }

    fn take(&mut self, f: &str) -> Option<Value> {
        self.m.remove(f)
    }

    fn req_str(&mut self, f: &str) -> Result<String> {
        self.opt_str(f)?
            .ok_or_else(|| bad(format!("field `{}` is required", self.name(f))))
    }

    fn opt_str(&mut self, f: &str) -> Result<Option<String>> {
        match self.take(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(bad(format!(
                "field `{}` must be a string, got {}",
                self.name(f),
                kind(&v)
            ))),
        }
    }

    fn opt_u64(&mut self, f: &str) -> Result<Option<u64>> {
        match self.take(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| whole_number(&n))
                .map(Some)
                .ok_or_else(|| {
                    bad(format!(
                        "field `{}` must be a non-negative integer, got {n}",
                        self.name(f)
                    ))
                }),
            Some(v) => Err(bad(format!(
                "field `{}` must be a non-negative integer, got {}",
                self.name(f),
                kind(&v)
            ))),
        }
    }

    fn opt_f64(&mut self, f: &str) -> Result<Option<f64>> {
        match self.take(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(bad(format!(
                "field `{}` must be a number, got {}",
                self.name(f),
                kind(&v)
            ))),
        }
    }

    /// Refuse any field that was not taken (4300).
    fn finish(self) -> Result<()> {
        match self.m.keys().next() {
            None => Ok(()),
            Some(k) => {
                let shown: String = k.chars().take(64).collect();
                Err(bad(format!(
                    "unknown field `{}` is not accepted",
                    self.name(&shown)
                )))
            }
        }
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

/// Below this a JSON number written with a decimal point (`2.0`, `1e3`)
/// is the integer it names exactly: 2^53, where f64 stops holding every integer.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// The integer a number written as a float names (JSON Schema's
/// "integer" includes `2.0`), when it has no fraction, is not negative and
/// is below 2^53; None otherwise, and the field is refused.
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    let f = n.as_f64()?;
    (f.fract() == 0.0 && (0.0..EXACT_INTEGERS).contains(&f)).then_some(f as u64)
}
