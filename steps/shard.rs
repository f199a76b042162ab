//! Steps that check a shard against the harness's own arithmetic
//! (`steps/digest.rs`): the digest is the documented one of the model file's
//! tensor data, the seal is the documented HMAC under the operator's key, a
//! seal forged with another key is refused, and a flipped byte anywhere in
//! the shard — first leaf, last leaf, anywhere between — is caught before the
//! next job (WORKER-4113, 4120, 4121, 4245).

use crate::steps::digest;
use crate::steps::http::{pointer, send, Auth};
use crate::steps::world::{ctx, World};
use cucumber::{given, then, when};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

/// The model file this world's worker serves, read whole.
fn served_file(w: &World) -> Vec<u8> {
    let path = w.model_root().join(&w.model_name);
    std::fs::read(&path).unwrap_or_else(|e| w.fail(format!("cannot read {}: {e}", path.display())))
}

fn served_tensor_data_len(w: &World) -> usize {
    let file = served_file(w);
    digest::tensor_data(&file)
        .unwrap_or_else(|e| w.fail(e))
        .len()
}

/// The seal key this world gave its worker.
fn seal_key(w: &World) -> [u8; 32] {
    let Some(path) = w.config.get("seal_key_file").and_then(Value::as_str) else {
        w.fail("this scenario gave the worker no seal key file")
    };
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| w.fail(format!("read {path}: {e}")));
    let mut k = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut k).unwrap_or_else(|e| w.fail(format!("seal key: {e}")));
    k
}

/// The first handle of GET /worker/ready.
async fn first_handle(w: &mut World) -> Value {
    let r = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    w.check(
        r.status == 200,
        format!("GET /worker/ready answered {}: {}", r.status, r.text),
    );
    pointer(w, r.json.as_ref().unwrap_or(&Value::Null), "/handles/0").clone()
}

fn digest_bytes(w: &World, handle: &Value) -> [u8; 32] {
    let hexd = handle["digest"].as_str().unwrap_or_default();
    let mut d = [0u8; 32];
    hex::decode_to_slice(hexd, &mut d)
        .unwrap_or_else(|_| w.fail(format!("the handle's digest {hexd:?} is not 64 hex digits")));
    d
}

#[given("the worker is given a seal key file")]
fn give_seal_key(w: &mut World) {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random bytes for the seal key");
    let text = hex::encode(key);
    let path = w.dir.path().join("seal.key");
    std::fs::write(&path, format!("{text}\n")).expect("write the seal key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    // A key in a log line or a proof bundle is a leak, like a token.
    ctx().secrets.lock().expect("secrets lock").insert(text);
    w.config
        .insert("seal_key_file".into(), json!(path.display().to_string()));
}

#[given("the seal key file can be read by other users")]
fn seal_key_world_readable(w: &mut World) {
    let Some(path) = w.config.get("seal_key_file").and_then(Value::as_str) else {
        w.fail("this scenario gave the worker no seal key file")
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
}

#[then("the response JSON at \"/handles/0/digest\" is the documented digest of the served file's tensor data")]
fn digest_is_documented(w: &mut World) {
    let file = served_file(w);
    let data = digest::tensor_data(&file).unwrap_or_else(|e| w.fail(e));
    let want = hex::encode(digest::resident_digest(data));
    let got = pointer(w, w.last_json(), "/handles/0/digest").clone();
    w.check(
        got == want.as_str(),
        format!(
            "the handle's digest is {got}; the documented digest of the {} bytes of tensor data \
             (16 KiB leaves), computed by the harness, is {want}",
            data.len()
        ),
    );
}

#[then(
    "the handle's seal is the HMAC-SHA256 under the seal key of its shard_id, digest and sealed_at"
)]
async fn seal_verifies(w: &mut World) {
    let h = first_handle(w).await;
    let key = seal_key(w);
    let (id, at) = (
        h["shard_id"].as_str().unwrap_or_default(),
        h["sealed_at"].as_str().unwrap_or_default(),
    );
    // The digest sealed must be the file's own, computed here, not only the one the handle reports.
    let file = served_file(w);
    let data = digest::tensor_data(&file).unwrap_or_else(|e| w.fail(e));
    let documented = digest::resident_digest(data);
    w.check(
        digest_bytes(w, &h) == documented,
        format!(
            "the handle's digest {} is not the documented digest {} of the served file",
            h["digest"],
            hex::encode(documented)
        ),
    );
    let want = hex::encode(digest::seal(&key, id, &documented, at));
    w.check(
        h["seal"] == want.as_str(),
        format!(
            "the handle's seal is {}; HMAC-SHA256 under the configured key over shard_id {id:?}, \
             the digest and sealed_at {at:?} is {want}",
            h["seal"]
        ),
    );
}

#[when("I replace the handle's seal with one made with the all-zero key")]
async fn forge_seal(w: &mut World) {
    let h = first_handle(w).await;
    let (id, at) = (
        h["shard_id"].as_str().unwrap_or_default(),
        h["sealed_at"].as_str().unwrap_or_default(),
    );
    let forged = hex::encode(digest::seal(&[0u8; 32], id, &digest_bytes(w, &h), at));
    w.check(
        h["seal"] != forged.as_str(),
        "the worker's own seal equals a seal made with the all-zero key: it is forgeable",
    );
    let body = json!({"kind": "replace_seal", "seal": forged}).to_string();
    let r = send(w, "POST", "/debug/fault", Some(body), Auth::Token).await;
    w.check(
        r.status == 200,
        format!("POST /debug/fault answered {}: {}", r.status, r.text),
    );
}

/// Where in the resident bytes a flip lands, as the feature names it.
fn offset_of(w: &World, place: &str) -> u64 {
    let len = served_tensor_data_len(w);
    w.check(
        len > 2 * digest::LEAF_BYTES,
        format!("the served tensor data is {len} bytes; these scenarios need more than two 16 KiB leaves"),
    );
    let last_leaf = (len - 1) / digest::LEAF_BYTES * digest::LEAF_BYTES;
    let rnd = crate::steps::world::replayable_random(&w.scenario, place) as usize;
    let off = match place {
        "the first byte" => 0,
        "the last byte" => len - 1,
        "a random byte of the last leaf" => last_leaf + rnd % (len - last_leaf),
        "a random byte between the first and the last leaf" => {
            digest::LEAF_BYTES + rnd % (last_leaf - digest::LEAF_BYTES)
        }
        other => w.fail(format!("unknown place {other:?}")),
    };
    println!("flipping resident byte {off} of {len} ({place}; replay with the run's BDD_SEED)");
    off as u64
}

#[when(
    regex = r"^I flip the resident byte at (the first byte|the last byte|a random byte of the last leaf|a random byte between the first and the last leaf)$"
)]
async fn flip_at(w: &mut World, place: String) {
    let offset = offset_of(w, &place);
    let body = json!({"kind": "flip_resident_byte", "offset": offset}).to_string();
    let r = send(w, "POST", "/debug/fault", Some(body), Auth::Token).await;
    w.check(
        r.status == 200,
        format!(
            "flipping resident byte {offset} ({place}): POST /debug/fault answered {}: {}",
            r.status, r.text
        ),
    );
}

/// 4031/4113 at start-up: the test build corrupts one resident byte after the
/// load and before the digest check (`WORKER_ORCD_STARTUP_FAULT`).
#[given(regex = r"^the start-up load will flip resident byte (\d+)$")]
fn startup_flip(w: &mut World, offset: u64) {
    w.env.push((
        worker_orcd::env::WORKER_ORCD_STARTUP_FAULT.name.to_string(),
        Some(format!("flip_resident_byte:{offset}")),
    ));
}
