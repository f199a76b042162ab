//! Steps that change model files under a running worker (issue 13 point 2):
//! truncated, rewritten in place or replaced while Plan, Commit or a job
//! uses them. The worker reads files with plain reads (never mapped), so it
//! must answer MODEL_FILE_CHANGED or carry on, and never die of SIGBUS.

use std::path::Path;
use std::time::Duration;

use cucumber::{given, then, when};
use serde_json::json;

use crate::steps::http::{send, Auth};
use crate::steps::world::World;

/// How long after sending a request the file is changed: well inside the
/// read pause the scenario configures (at least a second).
const CHANGE_AFTER: Duration = Duration::from_millis(400);

#[given(
    regex = r#"^reads of model files named "([^"]+)" pause for (\d+) ms after their first block$"#
)]
fn read_pause(w: &mut World, name: String, ms: u64) {
    w.env.push((
        worker_orcd::env::WORKER_ORCD_READ_PAUSE.name.to_string(),
        Some(format!("{name}:{ms}")),
    ));
}

/// What happens to the file: each is what an operator's careless `cp`,
/// `truncate` or editor does to a file in place.
fn change(path: &Path, how: &str) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path)?.len();
    match how {
        "truncated to half its size" => std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(len / 2),
        "overwritten in place with other bytes" => {
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.seek(SeekFrom::Start(len / 3))?;
            f.write_all(&vec![0xA5u8; 4096])?;
            f.sync_all()
        }
        "replaced by copying other bytes over it" => {
            // What `cp other model.gguf` does: truncate, then write.
            std::fs::write(path, vec![0x5Au8; len as usize])
        }
        other => Err(std::io::Error::other(format!("unknown change {other:?}"))),
    }
}

async fn change_soon(path: &Path, how: &str) -> std::io::Result<()> {
    tokio::time::sleep(CHANGE_AFTER).await;
    change(path, how)
}

#[when(
    regex = r#"^I (plan|commit as shard "[^"]+") "([^"]+)" and it is (truncated to half its size|overwritten in place with other bytes|replaced by copying other bytes over it) while the worker reads it$"#
)]
async fn request_while_changing(w: &mut World, what: String, name: String, how: String) {
    let path = w.model_root().join(&name);
    let (route, body) = match what.strip_prefix("commit as shard ") {
        None => (
            "/worker/plan",
            json!({"model_ref": name, "shard_layout": "single"}),
        ),
        Some(shard) => (
            "/worker/commit",
            json!({"model_ref": name, "shard_id": shard.trim_matches('"')}),
        ),
    };
    let (_, changed) = tokio::join!(
        send(w, "POST", route, Some(body.to_string()), Auth::Token),
        change_soon(&path, &how)
    );
    if let Err(e) = changed {
        w.fail(format!("could not change {}: {e}", path.display()));
    }
}

#[when(
    regex = r#"^the served model file is (truncated to half its size|overwritten in place with other bytes|replaced by copying other bytes over it)$"#
)]
#[then(
    regex = r#"^the served model file is (truncated to half its size|overwritten in place with other bytes|replaced by copying other bytes over it)$"#
)]
fn served_file_changed(w: &mut World, how: String) {
    let path = w.model_root().join(&w.model_name);
    if let Err(e) = change(&path, &how) {
        w.fail(format!("could not change {}: {e}", path.display()));
    }
}

#[then("the error is retriable with a retry_after_ms")]
fn retriable(w: &mut World) {
    let j = w.last_json().clone();
    w.check(
        j["retriable"] == true && j["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        format!("the error body is not retriable with a hint: {j}"),
    );
}

/// One Plan of a group sent at once, and when its answer came.
#[derive(Debug, Clone)]
pub struct PlanAnswer {
    pub model_ref: String,
    pub status: u16,
    pub json: serde_json::Value,
    pub at: std::time::Instant,
}

/// A Plan sent without the World, so several can be in flight at once.
async fn plan_alone(
    http: reqwest::Client,
    base: String,
    token: String,
    model_ref: String,
) -> PlanAnswer {
    let body = json!({"model_ref": model_ref, "shard_layout": "single"});
    let r = http
        .post(format!("{base}/worker/plan"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    let (status, json) = match r {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(e) => (0, json!({"transport_error": e.to_string()})),
    };
    PlanAnswer {
        model_ref,
        status,
        json,
        at: std::time::Instant::now(),
    }
}

#[when(
    regex = r#"^I plan "([^"]+)", and while the worker reads it I plan "([^"]+)" and then the served model$"#
)]
async fn plans_during_a_read(w: &mut World, slow: String, other: String) {
    let (http, base, token) = (w.http.clone(), w.base_url(), w.token.clone());
    let first = tokio::spawn(plan_alone(http.clone(), base.clone(), token.clone(), slow));
    tokio::time::sleep(CHANGE_AFTER).await;
    let second = plan_alone(http.clone(), base.clone(), token.clone(), other).await;
    let third = plan_alone(http, base, token, w.model_name.clone()).await;
    let first = first
        .await
        .unwrap_or_else(|e| w.fail(format!("the first Plan's task failed: {e}")));
    w.plan_answers = vec![first, second, third];
}

fn plan_answer(w: &World, model_ref: &str) -> PlanAnswer {
    w.plan_answers
        .iter()
        .find(|a| a.model_ref == model_ref)
        .cloned()
        .unwrap_or_else(|| w.fail(format!("no Plan of {model_ref:?} was sent")))
}

#[then(
    regex = r#"^the Plan of "([^"]+)" was refused with (\d+) "([A-Z_]+)" and a retry_after_ms$"#
)]
fn plan_refused(w: &mut World, model_ref: String, status: u16, code: String) {
    let a = plan_answer(w, &model_ref);
    w.check(
        a.status == status
            && a.json["code"] == code.as_str()
            && a.json["retriable"] == true
            && a.json["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        format!("the Plan of {model_ref} answered {}: {}", a.status, a.json),
    );
}

#[then(regex = r#"^the Plan of "([^"]+)" answered 200 and is feasible$"#)]
fn plan_ok(w: &mut World, model_ref: String) {
    let a = plan_answer(w, &model_ref);
    w.check(
        a.status == 200 && a.json["feasible"] == true,
        format!("the Plan of {model_ref} answered {}: {}", a.status, a.json),
    );
}

#[then(regex = r#"^the Plan of the served model answered 200 before the Plan of "([^"]+)" did$"#)]
fn served_first(w: &mut World, slow: String) {
    let served = plan_answer(w, &w.model_name.clone());
    let slow = plan_answer(w, &slow);
    w.check(
        served.status == 200 && served.at < slow.at,
        format!(
            "the Plan of the served model answered {} ({}) {} the slow Plan",
            served.status,
            served.json,
            if served.at < slow.at {
                "before"
            } else {
                "after"
            }
        ),
    );
}

#[when(regex = r#"^the file "([^"]+)" in the model root is touched$"#)]
fn touch(w: &mut World, name: String) {
    let path = w.model_root().join(&name);
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    let r = std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(later));
    if let Err(e) = r {
        w.fail(format!("could not touch {}: {e}", path.display()));
    }
}

/// The harness hard-links one generated model into every scenario's model
/// root; a scenario that changes the served file in place first gives the
/// worker a file of its own, so no other scenario sees the change.
#[given("the served model file is a copy of its own, shared with no other scenario")]
fn own_copy(w: &mut World) {
    let path = w.model_root().join(&w.model_name);
    let r = std::fs::read(&path).and_then(|bytes| {
        std::fs::remove_file(&path)?;
        std::fs::write(&path, bytes)
    });
    if let Err(e) = r {
        w.fail(format!("could not copy {} apart: {e}", path.display()));
    }
}
