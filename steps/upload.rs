//! Commit by upload (WORKER-4220-4227, 4305): the model file is the body of
//! `POST /worker/commit` (`Content-Type: application/octet-stream`), the
//! commit fields travel in the query string. One model per process, so an
//! upload succeeds only with the bytes the worker already serves; the
//! refusals must leave the sealed handle and the service untouched. Unless a
//! step names a shard id, the upload asks for the id of the remembered handle,
//! the one the worker serves under (a new id is a re-seal, checked by the
//! steps of `models.rs`).

use crate::steps::http::{send, send_with, Auth};
use crate::steps::process::test_model;
use crate::steps::world::World;
use cucumber::{given, then, when};
use serde_json::json;

fn served_path(w: &World) -> std::path::PathBuf {
    w.model_root().join(&w.model_name)
}

/// The shard id of the handle remembered by an earlier step. Taken from
/// there, not from a fresh GET, so that the upload is the only request this
/// step sends (a request sent just after a refused upload is not this step's
/// concern).
fn remembered_shard_id(w: &World) -> String {
    let Some(h) = w.prev_json.as_ref() else {
        w.fail("an upload under the served shard id needs the shard handle remembered first")
    };
    match h["shard_id"].as_str() {
        Some(s) => s.to_string(),
        None => w.fail(format!("the remembered handle has no shard_id: {h}")),
    }
}

#[given("max_model_bytes is the size of the served model")]
fn max_is_size(w: &mut World) {
    let n = std::fs::metadata(served_path(w))
        .unwrap_or_else(|e| w.fail(format!("stat the served model: {e}")))
        .len();
    w.config.insert("max_model_bytes".into(), json!(n));
}

#[when(
    regex = r#"^I upload (the served model|the second tiny model|the served model plus one byte)( as a stream)?(?: as shard "([^"]+)")? for commit with (its digest|a wrong digest|no digest)$"#
)]
async fn upload(w: &mut World, what: String, stream: String, shard: String, digest: String) {
    let mut bytes = match what.as_str() {
        "the second tiny model" => {
            let p = test_model("tiny2").unwrap_or_else(|e| w.fail(e));
            std::fs::read(p).expect("read the second tiny model")
        }
        _ => std::fs::read(served_path(w)).expect("read the served model"),
    };
    if what.ends_with("plus one byte") {
        bytes.push(0);
    }
    let shard = if shard.is_empty() {
        remembered_shard_id(w)
    } else {
        shard
    };
    let mut query = format!("model_ref={}&shard_id={shard}&shard_index=0", w.model_name);
    match digest.as_str() {
        "its digest" => {
            use sha2::{Digest, Sha256};
            query.push_str(&format!(
                "&expected_digest={}",
                hex::encode(Sha256::digest(&bytes))
            ));
        }
        "a wrong digest" => query.push_str(&format!("&expected_digest={}", "ab".repeat(32))),
        _ => {}
    }
    let body = if stream.is_empty() {
        reqwest::Body::from(bytes)
    } else {
        // Chunked, without a Content-Length: the worker must count as it reads.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    };
    send_with(
        w,
        "POST",
        &format!("/worker/commit?{query}"),
        Some(body),
        Auth::Token,
        &[("content-type", "application/octet-stream")],
    )
    .await;
}

#[then(regex = r#"^the response JSON at "/handle" is the remembered shard handle$"#)]
fn handle_is_remembered(w: &mut World) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("no shard handle was remembered")
    };
    let now = w.last_json()["handle"].clone();
    w.check(
        now == before,
        format!("the commit answered handle {now} but the worker serves {before}"),
    );
}

#[then("the worker still serves the remembered shard handle")]
async fn still_serves(w: &mut World) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("no shard handle was remembered")
    };
    let r = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let j = r.json.clone().unwrap_or_default();
    w.check(
        j["ready"] == true && j["handles"][0] == before,
        format!("after the refused upload /worker/ready answered {}", r.text),
    );
}
