//! Stream events checked against the API description the worker serves
//! (issue 13 point 5, WORKER-4246-4253): `x-sse-events` of the execute
//! response names the schema of each event's data, and every recorded event
//! must match it. The checker is the harness's own and small: `$ref` within
//! the document, `type` (one or a list), `required`, `properties`,
//! `additionalProperties: false`, `enum` and `minimum`, which is all the
//! event schemas use.

use crate::steps::http::{self, Auth};
use crate::steps::world::World;
use cucumber::then;
use serde_json::Value;

/// Where the execute response's event map sits in the document.
const EVENT_MAP: &str =
    "/paths/~1worker~1execute/post/responses/200/content/text~1event-stream/x-sse-events";

/// Every way `v` breaks `schema` (resolved in `doc`), each naming its place.
pub fn violations(doc: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return match doc.pointer(r.trim_start_matches('#')) {
            Some(s) => violations(doc, s, v, at),
            None => vec![format!("{at}: the document has no {r}")],
        };
    }
    let mut out = Vec::new();
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| is_type(v, t)) {
        out.push(format!("{at}: {v} is not of type {}", types.join(" or ")));
        return out;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            out.push(format!("{at}: {n} is below the minimum {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str().filter(|k| !obj.contains_key(*k)) {
                out.push(format!("{at}: the required field {k:?} is missing"));
            }
        }
        for (k, fv) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => out.extend(violations(doc, ps, fv, &format!("{at}.{k}"))),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}: the field {k:?} is not documented"));
                }
                None => {}
            }
        }
    }
    out
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

#[then("every event of the stream matches the schema the served API description gives its name")]
async fn events_match_the_served_schemas(w: &mut World) {
    let r = http::send(w, "GET", "/openapi.json", None, Auth::Token).await;
    let doc = r
        .json
        .unwrap_or_else(|| w.fail(format!("GET /openapi.json answered {}: not JSON", r.status)));
    let Some(map) = doc.pointer(EVENT_MAP).cloned() else {
        w.fail("the served API description has no x-sse-events for the execute stream")
    };
    let events = w.stream().events.clone();
    w.check(!events.is_empty(), "the stream has no events to check");
    for (n, e) in events.iter().enumerate() {
        let Some(schema) = map.get(&e.name) else {
            w.fail(format!(
                "event {n} is named {:?}, which the description does not list",
                e.name
            ))
        };
        let bad = violations(&doc, schema, &e.json(), &format!("event {n} ({})", e.name));
        w.check(bad.is_empty(), format!("{bad:#?}"));
    }
}
