//! JSON log lines on stderr: one object per event with `timestamp`, `level`,
//! `target`, and every field of the event and of its enclosing spans
//! flattened to the top level (WORKER-4800, 4801, 4802, 4803).
//!
//! Why a custom formatter: tracing-subscriber's JSON output nests span fields
//! under `"span"`, so the correlation id set on a request span would not sit
//! beside the event's fields, and it offers no hook to redact. Here span
//! fields are merged (inner spans win, the event wins over spans) and every
//! field whose name is sensitive is replaced by `"[REDACTED]"` — the one place
//! redaction is enforced for logs (see [`super::redaction`]).
//!
//! Every line carries `human` (4803). The worker's own events set it
//! themselves (a worker event without one is a bug that the BDD run's
//! whole-log scan reports); events of the libraries underneath (hyper,
//! reqwest, ... at `debug`) cannot, so the formatter words theirs as "The
//! <library> library reported: <message>". A panic is logged the same way,
//! as one JSON line, by the hook [`init_logging`] installs.

use super::redaction::{is_sensitive_field, REDACTED};
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Dependencies that are chatty at `info`; kept at `warn` unless the level is
/// `debug` or `trace`.
const QUIET_DEPENDENCIES: &[&str] = &[
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "tower",
    "tower_http",
    "axum",
    "tokenizers",
];

/// The event formatter: flattened, redacted JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, v: Value) {
        let name = field.name();
        let v = if is_sensitive_field(name) {
            Value::String(REDACTED.into())
        } else {
            v
        };
        self.0.insert(name.to_string(), v);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map_or(Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        // Fixed keys first, in a fixed order, so a person can read the line.
        let mut ordered: Vec<(String, Value)> = vec![
            ("timestamp".into(), Value::String(ts)),
            (
                "level".into(),
                Value::String(meta.level().as_str().to_ascii_lowercase()),
            ),
            ("target".into(), Value::String(meta.target().to_string())),
        ];

        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                // With JsonFields the span's fields are stored as a JSON object.
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&formatted.fields) {
                    for (k, v) in m {
                        let v = if is_sensitive_field(&k) {
                            Value::String(REDACTED.into())
                        } else {
                            v
                        };
                        fields.insert(k, v);
                    }
                }
            }
        }
        event.record(&mut FieldVisitor(&mut fields));
        // `human` next, then the structured fields in name order.
        if let Some(h) = fields
            .remove("human")
            .or_else(|| library_human(meta.target(), &fields))
        {
            ordered.push(("human".into(), h));
        }
        for (k, v) in fields {
            // Reserved keys keep their meaning; a field of the same name is renamed.
            let k = if matches!(k.as_str(), "timestamp" | "level" | "target") {
                format!("field.{k}")
            } else {
                k
            };
            ordered.push((k, v));
        }
        let mut line = String::from("{");
        for (i, (k, v)) in ordered.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(k).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(v).map_err(|_| fmt::Error)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// The crate that owns this code; events from other targets come from libraries.
const OWN_TARGET: &str = "worker_orcd";

/// The `human` of a library's event, which cannot set one itself. None for
/// the worker's own events: they must carry their own.
fn library_human(target: &str, fields: &Map<String, Value>) -> Option<Value> {
    let lib = target.split("::").next().unwrap_or(target);
    if lib == OWN_TARGET {
        return None;
    }
    let message = match fields.get("message") {
        Some(Value::String(m)) => m.clone(),
        Some(other) => other.to_string(),
        None => "an event without a message".to_string(),
    };
    Some(Value::String(format!(
        "The {lib} library reported: {message}."
    )))
}

/// The filter for a level name (`trace`..`error`); anything else means `info`.
pub fn filter_for(level: &str) -> EnvFilter {
    let level = match level.to_ascii_lowercase().as_str() {
        l @ ("trace" | "debug" | "info" | "warn" | "error") => l.to_string(),
        _ => "info".to_string(),
    };
    let mut directive = level.clone();
    if level != "trace" && level != "debug" {
        for dep in QUIET_DEPENDENCIES {
            directive.push_str(&format!(",{dep}=warn"));
        }
    }
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing JSON lines to `make_writer` (stderr in production, a
/// buffer in tests).
pub fn subscriber<W>(level: &str, make_writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter_for(level))
        .with_writer(make_writer)
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .finish()
}

/// Install the process-wide JSON logger on stderr (and route `log`-crate
/// records of dependencies through it). Calling it twice keeps the first
/// logger (tests and tools may both try).
pub fn init_logging(level: &str) {
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = subscriber(level, std::io::stderr).try_init();
    std::panic::set_hook(Box::new(log_panic));
}

/// A panic as one JSON log line with `human`, instead of the plain text the
/// default hook prints (4803: every line an operator reads is narrated).
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let what = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    let at = info
        .location()
        .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    crate::narrate_error!(
        human = format!(
            "The worker hit a bug: thread {thread} panicked ({what}) at {at}. Report it with this log; \
             if the process stops, its supervisor restarts it."
        ),
        panic_location = %at,
        thread = %thread
    );
}

/// Tests anywhere in the crate read what the worker logs through this.
#[cfg(test)]
pub(crate) mod test_capture {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Buf(pub Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// Every log line `f` writes at `level`, as the JSON objects the worker logs.
    pub fn capture(level: &str, f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(level, buf.clone()), f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_capture::{capture, Buf};
    use super::*;

    #[test]
    fn one_flat_json_object_per_event_with_span_fields() {
        let lines = capture("info", || {
            let span = tracing::info_span!("request", correlation_id = "abc123", job_id = "outer");
            let _g = span.enter();
            crate::narrate!(human = "Started a job.", job_id = "j-1", tokens_in = 7u64);
            tracing::debug!("hidden at info");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["level"], "info");
        assert_eq!(l["correlation_id"], "abc123");
        assert_eq!(l["job_id"], "j-1", "event field wins over span field");
        assert_eq!(l["tokens_in"], 7);
        assert_eq!(l["human"], "Started a job.");
        assert!(l["timestamp"].as_str().unwrap().contains('T'));
        assert!(l["target"].as_str().unwrap().starts_with("worker_orcd"));
    }

    #[test]
    fn fixed_keys_come_first() {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber("info", buf.clone()), || {
            crate::narrate!(human = "Hello.", a_field = 1u64);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        let order: Vec<usize> = ["\"level\"", "\"target\"", "\"human\"", "\"a_field\""]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn sensitive_fields_are_redacted_in_events_and_spans() {
        let lines = capture("debug", || {
            let span = tracing::info_span!("request", authorization = "Bearer s3cret-span");
            let _g = span.enter();
            tracing::info!(token = "s3cret-token", prompt = "my private prompt", "x");
        });
        let text = serde_json::to_string(&lines).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("private prompt"), "{text}");
        assert_eq!(lines[0]["prompt"], REDACTED);
        assert_eq!(lines[0]["authorization"], REDACTED);
    }

    /// 4803: library events get a worded `human`; the worker's own events
    /// are left as they are, so one without `human` shows up in the scan.
    #[test]
    fn library_events_are_narrated_own_events_are_not_invented() {
        let lines = capture("debug", || {
            tracing::debug!(target: "hyper::proto::h1", "parsed 3 headers");
            tracing::info!("an own event that forgot its human field");
        });
        assert_eq!(
            lines[0]["human"],
            "The hyper library reported: parsed 3 headers."
        );
        assert!(lines[1].get("human").is_none(), "{:?}", lines[1]);
    }

    #[test]
    fn unknown_level_means_info() {
        assert_eq!(
            filter_for("loud").to_string(),
            filter_for("info").to_string()
        );
        assert!(filter_for("debug").to_string().starts_with("debug"));
    }
}
