//! The configuration keys and the three layers (file, environment, flags)
//! that supply them, plus the parsers that turn text into checked values.
//!
//! Every value is carried as text with its [`Source`] until parsed, so that
//! one parser serves JSON, environment and flags alike and every error can
//! say where the bad value came from (WORKER-4983, 4991).

use super::table::{def, KeyFlags, Rule, KEYS};
use super::ConfigError;
use crate::env::{self, Lookup};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const GGUF_PREFIX: &str = "gguf_";
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "from config file {}", p.display()),
            Source::Env(n) => write!(f, "from environment variable {n}"),
            Source::Flag(n) => write!(f, "from flag {n}"),
        }
    }
}

/// Values of one or more layers, by key.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layer {
    fn set(&mut self, key: &'static str, value: String, source: Source) {
        self.values.insert(key, (value, source));
    }

    /// Later layers win key by key.
    pub fn overlay(&mut self, other: Layer) {
        self.values.extend(other.values);
    }

    pub fn get(&self, key: &str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    /// An error about `key`, quoting its value and source when it has one.
    pub fn err(&self, key: &str, what: &str) -> ConfigError {
        match self.values.get(key) {
            Some((v, src)) => ConfigError::new(key, format!("{} ({src}): {what}", quote(v))),
            None => ConfigError::new(key, what.to_string()),
        }
    }

    pub fn required_text(&self, key: &str) -> Result<String, ConfigError> {
        match self.values.get(key) {
            Some((v, _)) if v.contains('\0') => {
                Err(self.err(key, "must not contain a NUL character"))
            }
            Some((v, _)) if !v.is_empty() => Ok(v.clone()),
            Some(_) => Err(self.err(key, "must not be empty")),
            None => Err(ConfigError::new(key, missing(key))),
        }
    }

    /// Whether `key` was given by any layer.
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn text_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.values.get(key) {
            None => Ok(default.to_string()),
            Some(_) => self.required_text(key),
        }
    }
}

/// "is required; set ..." naming every way to give `key`: the file, the flag,
/// and the environment variable when the key has one (WORKER-4981, 4990).
pub fn missing(key: &str) -> String {
    let Some(d) = def(key) else {
        return "is required".into();
    };
    let mut ways = format!("set \"{key}\" in the --config file, pass {}", d.flag);
    if let Some(v) = d.env {
        ways.push_str(&format!(" or set {}", v.name));
    }
    if key == "rpc_port" {
        ways.push_str(&format!(
            " or set {} (or bind_addr) to IP:PORT",
            env::BIND_ADDR.name
        ));
    }
    format!("is required; {ways}")
}

/// Values are quoted Rust-style (control characters escaped) and cut short,
/// so a stray binary blob cannot garble the operator's terminal.
fn quote(v: &str) -> String {
    let cut: String = v.chars().take(120).collect();
    if cut.len() < v.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// The `--config` file layer.
pub fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let src = Source::File(path.to_path_buf());
    let meta = std::fs::metadata(path).map_err(|e| {
        ConfigError::new(
            "config",
            format!(
                "cannot read config file {}: {e}; check the --config path",
                path.display()
            ),
        )
    })?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::new(
            "config",
            format!(
                "{} must be a regular JSON file of at most {MAX_CONFIG_FILE_BYTES} bytes",
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "config",
            format!(
                "cannot read config file {}: {e} (it must be UTF-8 JSON)",
                path.display()
            ),
        )
    })?;
    json_layer(&text, &src)
}

/// Parse one JSON object into a layer, refusing unknown keys by name.
pub fn json_layer(text: &str, src: &Source) -> Result<Layer, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::new("config", format!("{src} is not valid JSON: {e}")))?;
    let serde_json::Value::Object(obj) = value else {
        return Err(ConfigError::new(
            "config",
            format!("{src} must hold one JSON object {{\"worker_id\": ..., ...}}"),
        ));
    };
    let mut layer = Layer::default();
    for (k, v) in obj {
        if k == "gguf_limits" {
            let serde_json::Value::Object(inner) = v else {
                return Err(ConfigError::new(
                    "gguf_limits",
                    format!("{src}: must be an object like {{\"max_tensors\": 10000}}"),
                ));
            };
            for (ik, iv) in inner {
                let flat = format!("{GGUF_PREFIX}{ik}");
                let d = def(&flat).ok_or_else(|| {
                    ConfigError::new(
                        format!("gguf_limits.{ik}"),
                        format!(
                            "unknown key ({src}); accepted keys in gguf_limits: {}",
                            gguf_names().join(", ")
                        ),
                    )
                })?;
                if let Some(s) = scalar(&format!("gguf_limits.{ik}"), iv, src)? {
                    layer.set(d.name, s, src.clone());
                }
            }
            continue;
        }
        let d = def(&k)
            .filter(|d| !d.name.starts_with(GGUF_PREFIX))
            .ok_or_else(|| {
                ConfigError::new(
                    k.clone(),
                    format!(
                        "unknown key ({src}); accepted keys: {}, gguf_limits",
                        top_names().join(", ")
                    ),
                )
            })?;
        if let Some(s) = scalar(d.name, v, src)? {
            layer.set(d.name, s, src.clone());
        }
    }
    Ok(layer)
}

fn top_names() -> Vec<&'static str> {
    KEYS.iter()
        .map(|k| k.name)
        .filter(|n| !n.starts_with(GGUF_PREFIX))
        .collect()
}

fn gguf_names() -> Vec<&'static str> {
    KEYS.iter()
        .filter_map(|k| k.name.strip_prefix(GGUF_PREFIX))
        .collect()
}

/// JSON scalar → text; `null` means "not set".
fn scalar(field: &str, v: serde_json::Value, src: &Source) -> Result<Option<String>, ConfigError> {
    use serde_json::Value as V;
    match v {
        V::Null => Ok(None),
        V::String(s) => Ok(Some(s)),
        V::Number(n) => Ok(Some(n.to_string())),
        V::Bool(b) => Ok(Some(b.to_string())),
        V::Array(_) | V::Object(_) => Err(ConfigError::new(
            field,
            format!("({src}) must be a string, number or boolean, not a list or object"),
        )),
    }
}

/// The environment layer: only the variables declared in [`crate::env`].
pub fn env_layer(lookup: Lookup<'_>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    for d in KEYS {
        if let Some(var) = d.env {
            if let Some(v) = var
                .read_with(lookup)
                .map_err(|e| ConfigError::new(d.name, e))?
            {
                layer.set(d.name, v, Source::Env(var.name));
            }
        }
    }
    Ok(layer)
}

/// The flag layer: every flag that was given.
pub fn flag_layer(a: &KeyFlags) -> Layer {
    let mut layer = Layer::default();
    for (name, v) in a.values() {
        if let (Some(v), Some(d)) = (v, def(name)) {
            layer.set(d.name, v.clone(), Source::Flag(d.flag));
        }
    }
    if let (name, true) = a.switch() {
        if let Some(d) = def(name) {
            layer.set(d.name, "true".into(), Source::Flag(d.flag));
        }
    }
    layer
}

/// Key `key`'s whole number, checked against its rule in the key table:
/// in `lo..=hi`, or the rule's default when absent.
pub fn uint(m: &Layer, key: &str) -> Result<u64, ConfigError> {
    let (_, _, default) = uint_rule(key)?;
    uint_or(m, key, default)
}

/// [`uint`] with another default (one that depends on another key).
pub fn uint_or(m: &Layer, key: &str, default: u64) -> Result<u64, ConfigError> {
    let (lo, hi, _) = uint_rule(key)?;
    let Some((v, _)) = m.get(key) else {
        return Ok(default);
    };
    let range = format!("accepted range {lo}..={hi} (default {default})");
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| m.err(key, &format!("is not a whole number; {range}")))?;
    if n < lo || n > hi {
        return Err(m.err(key, &format!("is out of range; {range}")));
    }
    Ok(n)
}

/// (lo, hi, default) of a numeric key.
fn uint_rule(key: &str) -> Result<(u64, u64, u64), ConfigError> {
    match def(key).map(|d| d.rule) {
        Some(Rule::Uint {
            lo, hi, default, ..
        }) => Ok((lo, hi, default)),
        _ => Err(ConfigError::new(
            key,
            "is not a numeric key in the key table (a bug in worker-orcd; please report it)",
        )),
    }
}

pub fn boolean(m: &Layer, key: &str, default: bool) -> Result<bool, ConfigError> {
    match m.get(key).map(|(v, _)| v.as_str()) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(m.err(key, &format!("must be true or false (default {default})"))),
    }
}

/// True for identifiers of the shape `[A-Za-z0-9._-]{1,64}`.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn id(m: &Layer, key: &str) -> Result<String, ConfigError> {
    let v = m.required_text(key)?;
    if !is_valid_id(&v) {
        return Err(m.err(key, "must be 1 to 64 characters from A-Z a-z 0-9 . _ -"));
    }
    Ok(v)
}

const PORT_RULE: &str =
    "accepted range 1024..=65535; ports below 1024 need root and the worker must not run as root";

pub fn port(m: &Layer, key: &str) -> Result<u16, ConfigError> {
    let v = m.required_text(key)?;
    let n: u32 = v
        .trim()
        .parse()
        .map_err(|_| m.err(key, &format!("is not a port number; {PORT_RULE}")))?;
    match u16::try_from(n) {
        Ok(p) if p >= 1024 => Ok(p),
        _ => Err(m.err(key, &format!("is not allowed; {PORT_RULE}"))),
    }
}

/// `bind_addr` (usually from WORKER_BIND_ADDR): IP:PORT, port 1024..=65535.
pub fn bind_addr(m: &Layer) -> Result<SocketAddr, ConfigError> {
    let default = env::BIND_ADDR.default.unwrap_or("127.0.0.1:8001");
    let text = m.text_or("bind_addr", default)?;
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        m.err(
            "bind_addr",
            "must be IP:PORT such as 127.0.0.1:8001 or [::1]:8001 (host names are not resolved)",
        )
    })?;
    if addr.port() < 1024 {
        return Err(m.err(
            "bind_addr",
            &format!("port {} is not allowed; {PORT_RULE}", addr.port()),
        ));
    }
    Ok(addr)
}

/// An `http://host[:port]/path` URL. No TLS client is built in, so
/// `https://` is refused rather than failing later at the first callback.
pub fn callback_url(m: &Layer, key: &str) -> Result<String, ConfigError> {
    let v = m.required_text(key)?;
    if v.len() > 2048 {
        return Err(m.err(key, "is longer than 2048 bytes"));
    }
    let url = reqwest::Url::parse(&v).map_err(|e| {
        m.err(
            key,
            &format!("is not a URL ({e}); expected http://HOST:PORT/PATH"),
        )
    })?;
    if url.scheme() != "http" {
        return Err(m.err(
            key,
            "must start with http:// (this build has no TLS client; put a local TLS proxy in front of pool-managerd if needed)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(m.err(key, "has no host; expected http://HOST:PORT/PATH"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The value itself is not quoted: it holds a secret.
        return Err(ConfigError::new(
            key,
            "must not carry credentials (user:password@); they would end up in logs",
        ));
    }
    Ok(v)
}
