//! Assertions over the worker's own log file (WORKER-4030, 4031, 4113, 4227,
//! 4800-4803, 4820-4822, 4111). The harness sends stdout and stderr to a
//! file; these steps read it. Log lines are JSON objects; nested objects
//! (tracing's `fields`, `span`) are flattened so a field is found wherever the
//! subscriber put it. Ordered lifecycle checks read the structured `event`
//! lines (`lifecycle` with `state`, `commit_started`, `digest_verified`,
//! `sealed`), never words in free text.
//!
//! WORKER-4803 is also checked over the whole run: after every scenario,
//! [`scan_human`] reads every line of every worker it started, and the run
//! fails ([`narration_gaps`]) when one is not a JSON object with a non-empty
//! `human` string.

use crate::steps::world::World;
use cucumber::then;
use serde_json::{Map, Value};

/// All key/value pairs of a JSON log line, nested objects flattened.
pub fn flat(v: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    fn walk(v: &Value, out: &mut Map<String, Value>) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                if x.is_object() {
                    walk(x, out);
                } else {
                    out.entry(k.clone()).or_insert_with(|| x.clone());
                }
            }
        } else if let Value::Array(a) = v {
            for x in a {
                walk(x, out);
            }
        }
    }
    walk(v, &mut out);
    out
}

pub fn json_lines(w: &World) -> Vec<Map<String, Value>> {
    w.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| flat(&v))
        .collect()
}

/// The string value of field `k` of a log line ("" when absent or not a string).
pub fn field<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a log line has every `(field, value)` of `want`.
pub fn line_has(m: &Map<String, Value>, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| field(m, k) == *v)
}

/// Index of the first line at or after `from` that has every `(field, value)` of `want`.
pub fn find_line(
    lines: &[Map<String, Value>],
    from: usize,
    want: &[(&str, &str)],
) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, m)| line_has(m, want))
        .map(|(i, _)| i)
}

/// The log lines, read again (up to 3 s) until one has every `(field, value)`
/// of `want`: the worker writes an event just after the state it reports
/// becomes visible over HTTP.
pub async fn lines_once_logged(w: &World, want: &[(&str, &str)]) -> Vec<Map<String, Value>> {
    for _ in 0..60 {
        let lines = json_lines(w);
        if find_line(&lines, 0, want).is_some() {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    json_lines(w)
}

/// The `state` of every `lifecycle` event, in log order.
pub fn lifecycle_states(lines: &[Map<String, Value>]) -> Vec<String> {
    lines
        .iter()
        .filter(|m| field(m, "event") == "lifecycle")
        .map(|m| field(m, "state").to_string())
        .collect()
}

/// The first `0x` followed by 8+ hex digits: what a printed pointer looks like.
pub fn find_pointer(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        if b[i] == b'0' && (b[i + 1] == b'x' || b[i + 1] == b'X') {
            let n = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if n >= 8 {
                return Some(text[i..i + 2 + n].to_string());
            }
        }
        i += 1;
    }
    None
}

fn mentions(w: &World, text: &str) -> Option<usize> {
    w.log_text().to_lowercase().find(&text.to_lowercase())
}

#[then(regex = r#"^the worker log mentions "([^"]+)"$"#)]
fn log_mentions(w: &mut World, text: String) {
    w.check(
        mentions(w, &text).is_some(),
        format!("the worker log does not mention {text:?}"),
    );
}

#[then(regex = r#"^the worker log never mentions "([^"]+)"$"#)]
fn log_never(w: &mut World, text: String) {
    w.check(
        mentions(w, &text).is_none(),
        format!("the worker log mentions {text:?}"),
    );
}

#[then(regex = r#"^the worker log mentions "([^"]+)" at least (\d+) times$"#)]
fn log_count(w: &mut World, text: String, n: usize) {
    let got = w
        .log_text()
        .to_lowercase()
        .matches(&text.to_lowercase())
        .count();
    w.check(
        got >= n,
        format!("the worker log mentions {text:?} {got} times, expected at least {n}"),
    );
}

#[then(regex = r#"^the worker log mentions "([^"]+)" before it mentions "([^"]+)"$"#)]
fn log_before(w: &mut World, a: String, b: String) {
    let (x, y) = (mentions(w, &a), mentions(w, &b));
    w.check(
        matches!((x, y), (Some(x), Some(y)) if x < y),
        format!("{a:?} at {x:?} should come before {b:?} at {y:?}"),
    );
}

/// The states appear in this order among the structured lifecycle events
/// (other states may come between them).
#[then(regex = r#"^the worker log shows the states (.+) in that order$"#)]
async fn states_in_order(w: &mut World, list: String) {
    let states = crate::steps::http::quoted_list(&list);
    let last = states.last().cloned().unwrap_or_default();
    let lines = lines_once_logged(w, &[("event", "lifecycle"), ("state", &last)]).await;
    let got = lifecycle_states(&lines);
    let mut rest = got.iter();
    for s in &states {
        if !rest.any(|g| g == s) {
            w.fail(format!(
                "the lifecycle events do not show the state {s:?} after the earlier ones (wanted in order: \
                 {states:?}; logged: {got:?})"
            ));
        }
    }
}

#[then("every worker log line is a JSON object")]
fn all_json(w: &mut World) {
    let text = w.log_text();
    w.check(!text.trim().is_empty(), "the worker log is empty");
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let ok = serde_json::from_str::<Value>(l)
            .map(|v| v.is_object())
            .unwrap_or(false);
        w.check(
            ok,
            format!(
                "a log line is not a JSON object: {}",
                crate::steps::world::redact(l)
            ),
        );
    }
}

#[then(regex = r#"^a worker log line has the fields (.+)$"#)]
fn line_with_fields(w: &mut World, fields: String) {
    let want = crate::steps::http::quoted_list(&fields);
    let ok = json_lines(w)
        .iter()
        .any(|m| want.iter().all(|f| m.contains_key(f)));
    w.check(ok, format!("no log line has all of {want:?}"));
}

#[then(regex = r#"^every worker log line with a "([^"]+)" also has a "([^"]+)" field$"#)]
fn with_also(w: &mut World, a: String, b: String) {
    let lines = json_lines(w);
    let with: Vec<_> = lines.iter().filter(|m| m.contains_key(&a)).collect();
    w.check(!with.is_empty(), format!("no log line has {a:?}"));
    for m in with {
        w.check(
            m.contains_key(&b),
            format!(
                "a log line with {a:?} lacks {b:?}: {:?}",
                m.keys().collect::<Vec<_>>()
            ),
        );
    }
}

#[then(regex = r#"^a worker log line has "([^"]+)" equal to "([^"]+)"$"#)]
fn line_field_eq(w: &mut World, k: String, v: String) {
    let ok = json_lines(w)
        .iter()
        .any(|m| m.get(&k).and_then(Value::as_str) == Some(v.as_str()));
    w.check(ok, format!("no log line has {k} = {v:?}"));
}

#[then(regex = r#"^a worker log line has "([^"]+)" equal to the echoed correlation id$"#)]
fn line_field_echo(w: &mut World, k: String) {
    let Some(v) = w.corr_echo.clone() else {
        w.fail("no correlation id was echoed")
    };
    line_field_eq(w, k, v);
}

#[then("no worker log line contains something that looks like a memory address")]
fn no_pointer(w: &mut World) {
    if let Some(p) = find_pointer(&w.log_text()) {
        w.fail(format!(
            "the worker log contains {p:?}, which looks like a pointer"
        ));
    }
}

fn humans(w: &World) -> Vec<String> {
    json_lines(w)
        .iter()
        .filter_map(|m| m.get("human").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[then(regex = r#"^the worker log has human narration mentioning (.+)$"#)]
fn human_mentions(w: &mut World, list: String) {
    let hs = humans(w).join("\n").to_lowercase();
    for word in crate::steps::http::quoted_list(&list) {
        w.check(
            hs.contains(&word.to_lowercase()),
            format!("no human narration mentions {word:?}"),
        );
    }
}

#[then("every human narration in the worker log is mostly words, not identifiers")]
fn human_prose(w: &mut World) {
    let hs = humans(w);
    w.check(!hs.is_empty(), "the worker log has no human narration");
    for h in hs {
        let tokens: Vec<&str> = h.split_whitespace().collect();
        let words = tokens
            .iter()
            .filter(|t| {
                t.chars()
                    .all(|c| c.is_alphabetic() || ",.;:'()!?-".contains(c))
            })
            .count();
        w.check(
            tokens.len() >= 3 && words * 2 >= tokens.len(),
            format!("narration is not prose: {h:?}"),
        );
    }
}

#[then(regex = r#"^no worker log line has level "([A-Z]+)"$"#)]
fn no_level(w: &mut World, level: String) {
    let bad = json_lines(w).iter().any(|m| {
        m.get("level")
            .and_then(Value::as_str)
            .is_some_and(|l| l.eq_ignore_ascii_case(&level))
    });
    w.check(!bad, format!("a log line has level {level}"));
}

#[then(regex = r"^the worker's ([A-Z_]+) log line names the bytes needed and the bytes available$")]
fn oom_line_numbers(w: &mut World, code: String) {
    // At least two byte counts (large integers) in the line that reports the code.
    let ok = w.log_text().lines().filter(|l| l.contains(&code)).any(|l| {
        let numbers = l
            .split(|c: char| !c.is_ascii_digit())
            .filter(|t| t.len() >= 7)
            .count();
        numbers >= 2
    });
    w.check(ok, format!("no {code} log line names both byte counts"));
}

/// `event[:state] shard_id` of every structured event, for failure messages.
fn event_summary(lines: &[Map<String, Value>]) -> Vec<String> {
    lines
        .iter()
        .filter(|m| !field(m, "event").is_empty())
        .map(|m| {
            let mut s = field(m, "event").to_string();
            for k in ["state", "commit_source", "shard_id"] {
                if !field(m, k).is_empty() {
                    s.push_str(&format!(" {k}={}", field(m, k)));
                }
            }
            s
        })
        .collect()
}

/// The resident digest the harness computes from the served model file.
fn served_data_digest(w: &World) -> String {
    let path = w.model_root().join(&w.model_name);
    crate::steps::models::resident_digest_of_file(&path).unwrap_or_else(|e| w.fail(e))
}

#[then(regex = r#"^the worker's lifecycle states so far are (.+)$"#)]
async fn lifecycle_so_far(w: &mut World, list: String) {
    let want = crate::steps::http::quoted_list(&list);
    let last = want.last().cloned().unwrap_or_default();
    let lines = lines_once_logged(w, &[("event", "lifecycle"), ("state", &last)]).await;
    let got = lifecycle_states(&lines);
    w.check(
        got == want,
        format!("expected the lifecycle events {want:?} in this order, the worker logged {got:?}"),
    );
}

/// 4031, 4113, 4227: the start-up load is a commit whose resident bytes are
/// verified against the file's tensor data (digest computed here from the
/// file) before they are sealed under the handle /worker/ready reports, and
/// the worker enters Ready only after that seal.
#[then(
    "the worker log shows, in order, the start-up commit, its verified digest, its seal and the state \"ready\""
)]
async fn startup_commit_order(w: &mut World) {
    use crate::steps::http::{send, Auth};
    let r = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let Some(h) = r
        .json
        .as_ref()
        .and_then(|j| j.pointer("/handles/0"))
        .cloned()
    else {
        w.fail(format!(
            "GET /worker/ready lists no handle: {} {}",
            r.status, r.text
        ))
    };
    let shard = h["shard_id"].as_str().unwrap_or_default().to_string();
    let sealed_at = h["sealed_at"].as_str().unwrap_or_default().to_string();
    let want = served_data_digest(w);
    let model = w.model_name.clone();
    let lines = lines_once_logged(w, &[("event", "lifecycle"), ("state", "ready")]).await;
    let seen = event_summary(&lines);
    let started = find_line(
        &lines,
        0,
        &[
            ("event", "commit_started"),
            ("commit_source", "startup"),
            ("model_ref", &model),
            ("shard_id", &shard),
        ],
    )
    .unwrap_or_else(|| {
        w.fail(format!(
            "no commit_started event of the start-up commit of {model} as shard {shard}; events: {seen:?}"
        ))
    });
    let verified = find_line(
        &lines,
        started + 1,
        &[
            ("event", "digest_verified"),
            ("commit_source", "startup"),
            ("shard_id", &shard),
            ("expected_digest", &want),
            ("resident_digest", &want),
        ],
    )
    .unwrap_or_else(|| {
        w.fail(format!(
            "after the start-up commit began (line {started}) no digest_verified event shows expected and \
             resident digest both equal to {want}, the digest of the file's tensor data; events: {seen:?}"
        ))
    });
    let sealed = find_line(
        &lines,
        verified + 1,
        &[
            ("event", "sealed"),
            ("commit_source", "startup"),
            ("shard_id", &shard),
            ("digest", &want),
            ("sealed_at", &sealed_at),
        ],
    )
    .unwrap_or_else(|| {
        w.fail(format!(
            "after the digest was verified (line {verified}) no sealed event names shard {shard}, digest {want} \
             and sealed_at {sealed_at} (the handle /worker/ready reports); events: {seen:?}"
        ))
    });
    let loading = find_line(&lines, 0, &[("event", "lifecycle"), ("state", "loading")]);
    let ready = find_line(&lines, 0, &[("event", "lifecycle"), ("state", "ready")]);
    w.check(
        loading.is_some_and(|l| l < started),
        format!("the state \"loading\" (line {loading:?}) should come before the start-up commit (line {started})"),
    );
    w.check(
        ready.is_some_and(|r| r > sealed),
        format!("the first state \"ready\" (line {ready:?}) should come after the seal (line {sealed}); events: {seen:?}"),
    );
}

/// 4113 on every commit: the seal of `shard` follows a digest_verified event
/// of that shard whose digests equal the file's tensor-data digest, computed
/// here, with no other seal between them.
#[then(
    regex = r#"^the worker log shows the resident digest verified before the seal of shard "([^"]+)"$"#
)]
async fn verified_before_seal(w: &mut World, shard: String) {
    let want = served_data_digest(w);
    let lines = lines_once_logged(w, &[("event", "sealed"), ("shard_id", &shard)]).await;
    let seen = event_summary(&lines);
    let Some(sealed) = find_line(&lines, 0, &[("event", "sealed"), ("shard_id", &shard)]) else {
        w.fail(format!(
            "no sealed event names shard {shard}; events: {seen:?}"
        ))
    };
    let verified = lines[..sealed].iter().rposition(|m| {
        line_has(
            m,
            &[
                ("event", "digest_verified"),
                ("shard_id", &shard),
                ("expected_digest", &want),
                ("resident_digest", &want),
            ],
        )
    });
    let previous_seal = lines[..sealed]
        .iter()
        .rposition(|m| field(m, "event") == "sealed");
    w.check(
        verified.is_some_and(|v| previous_seal.is_none_or(|p| p < v)),
        format!(
            "the seal of shard {shard} (line {sealed}) is not preceded by its own digest_verified event with \
             expected and resident digest {want} (found at {verified:?}, previous seal at {previous_seal:?}); \
             events: {seen:?}"
        ),
    );
}

#[then(regex = r#"^the worker's lifecycle states never include "([a-z]+)"$"#)]
fn lifecycle_never(w: &mut World, state: String) {
    let got = lifecycle_states(&json_lines(w));
    w.check(
        !got.is_empty() && !got.contains(&state),
        format!("expected lifecycle events without {state:?}, the worker logged {got:?}"),
    );
}

#[then(regex = r#"^the worker log has no "([a-z_]+)" event$"#)]
fn no_event(w: &mut World, event: String) {
    let lines = json_lines(w);
    let hit = find_line(&lines, 0, &[("event", &event)]);
    w.check(
        hit.is_none(),
        format!(
            "the worker logged a {event} event (line {hit:?}); events: {:?}",
            event_summary(&lines)
        ),
    );
}

#[then(regex = r#"^no worker log event "([a-z_]+)" names shard "([^"]+)"$"#)]
fn no_event_for_shard(w: &mut World, event: String, shard: String) {
    let lines = json_lines(w);
    let hit = find_line(&lines, 0, &[("event", &event), ("shard_id", &shard)]);
    w.check(
        hit.is_none(),
        format!(
            "the worker logged a {event} event for shard {shard} (line {hit:?}); events: {:?}",
            event_summary(&lines)
        ),
    );
}

/// Why a worker log line breaks WORKER-4803, or None when it carries a
/// non-empty `human` string at its top level.
pub fn human_gap(line: &str) -> Option<&'static str> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => match m.get("human") {
            Some(Value::String(h)) if !h.trim().is_empty() => None,
            Some(Value::String(_)) => Some("its human field is empty"),
            Some(_) => Some("its human field is not a string"),
            None => Some("it has no human field"),
        },
        _ => Some("it is not a JSON object"),
    }
}

/// Every log line of this scenario's workers that breaks 4803, labelled.
fn gaps_of(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for l in w.log_text().lines().filter(|l| !l.trim().is_empty()) {
        if let Some(why) = human_gap(l) {
            let shown: String = crate::steps::world::redact(l).chars().take(240).collect();
            out.push(format!("{why}: {shown}"));
        }
    }
    out
}

static GAPS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Record the lines without `human` of every worker this scenario started
/// (run from the `after` hook; the run fails on any, see [`narration_gaps`]).
pub fn scan_human(w: &World) {
    let found = gaps_of(w);
    if found.is_empty() {
        return;
    }
    let mut g = GAPS.lock().unwrap_or_else(|e| e.into_inner());
    // A few lines per scenario say enough; the count says the rest.
    for f in found.iter().take(3) {
        g.push(format!("{} › {}: {f}", w.feature, w.scenario));
    }
    if found.len() > 3 {
        g.push(format!(
            "{} › {}: … and {} more lines",
            w.feature,
            w.scenario,
            found.len() - 3
        ));
    }
}

/// The lines without `human` found in the whole run so far.
pub fn narration_gaps() -> Vec<String> {
    GAPS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[then("every worker log line is a JSON object with a non-empty human field")]
fn every_line_human(w: &mut World) {
    let text = w.log_text();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    w.check(lines > 0, "the worker log is empty");
    let gaps = gaps_of(w);
    w.check(
        gaps.is_empty(),
        format!(
            "expected every one of the {lines} log lines to carry a non-empty human field (WORKER-4803); {} do not:\n{}",
            gaps.len(),
            gaps.join("\n")
        ),
    );
}

#[then(regex = r#"^the worker log has lines at level (.+)$"#)]
fn has_levels(w: &mut World, list: String) {
    let lines = json_lines(w);
    for level in crate::steps::http::quoted_list(&list) {
        let n = lines
            .iter()
            .filter(|m| {
                m.get("level")
                    .and_then(Value::as_str)
                    .is_some_and(|l| l.eq_ignore_ascii_case(&level))
            })
            .count();
        w.check(
            n > 0,
            format!("expected at least one log line at level {level:?}, found none"),
        );
    }
}
