//! Signed models (WORKER-4222, 4313). The harness plays the operator who
//! signs releases: an Ed25519 key pair made from a fixed seed (so every run
//! signs alike) signs the SHA-256 digest of a model file, as the OpenSSL
//! recipe of docs/operations.md does. Key and signature files go into the
//! scenario's own folder; commits carry the signature as 128 hex digits.

use crate::steps::http::{send_with, Auth};
use crate::steps::process::{prepare, start_ready};
use crate::steps::world::World;
use cucumber::{given, when};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The trusted key's seed; the other seed stands for someone else's key.
const TRUSTED_SEED: [u8; 32] = [0x42; 32];
const OTHER_SEED: [u8; 32] = [0x17; 32];

fn served_path(w: &World) -> PathBuf {
    w.model_root().join(&w.model_name)
}

fn second_path(w: &World) -> PathBuf {
    let name = w
        .that_model
        .clone()
        .unwrap_or_else(|| w.fail("no second model was placed"));
    w.model_root().join(name)
}

/// The signature of `path` in the named way: "good" signs its digest with
/// the trusted key; the others are what an operator might get wrong.
fn signature_of(w: &World, path: &Path, how: &str) -> [u8; 64] {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| w.fail(format!("read {}: {e}", path.display())));
    let digest = Sha256::digest(&bytes);
    let key = if how.contains("another key") {
        SigningKey::from_bytes(&OTHER_SEED)
    } else {
        SigningKey::from_bytes(&TRUSTED_SEED)
    };
    let mut sig = key.sign(&digest).to_bytes();
    if how.contains("one bit flipped") {
        sig[17] ^= 0x04;
    }
    sig
}

fn write_file(w: &mut World, name: &str, text: &str) -> String {
    let p = w.dir.path().join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| w.fail(format!("write {name}: {e}")));
    p.display().to_string()
}

#[given("the worker trusts the test model-signing key")]
fn trusts_key(w: &mut World) {
    let key = SigningKey::from_bytes(&TRUSTED_SEED).verifying_key();
    let p = write_file(
        w,
        "model-signing.pub",
        &format!("{}\n", hex::encode(key.as_bytes())),
    );
    w.config
        .insert("model_signing_pubkey_file".into(), json!(p));
}

#[given("the trusted model-signing key file holds something that is not a key")]
fn key_is_garbage(w: &mut World) {
    let p = write_file(w, "model-signing.pub", "this is not an Ed25519 key\n");
    w.config
        .insert("model_signing_pubkey_file".into(), json!(p));
}

#[given(
    regex = r"^the start-up model has (a good signature|a signature with one bit flipped|a signature by another key) in its signature file$"
)]
fn startup_signature(w: &mut World, how: String) {
    let sig = signature_of(w, &served_path(w), &how);
    let name = format!("{}.sig", w.model_name);
    let p = write_file(w, &name, &format!("{}\n", hex::encode(sig)));
    w.config.insert("model_signature_file".into(), json!(p));
}

#[given("a worker serving the tiny test model signed under a trusted key")]
async fn serving_signed(w: &mut World) {
    prepare(w, "tiny").await;
    trusts_key(w);
    startup_signature(w, "a good signature".into());
    start_ready(w).await;
}

#[when(
    regex = r#"^I commit the (tiny test|second tiny) model with (its good signature|its signature with one bit flipped|a signature by another key)$"#
)]
async fn commit_signed(w: &mut World, which: String, how: String) {
    let (name, path) = if which == "tiny test" {
        (w.model_name.clone(), served_path(w))
    } else {
        let p = second_path(w);
        (w.that_model.clone().unwrap_or_default(), p)
    };
    let sig = hex::encode(signature_of(w, &path, &how));
    commit_with_signature(w, &name, &sig).await;
}

/// A path commit of `model_ref` carrying `signature_hex`.
/// Under the shard id the worker serves: a commit that changes nothing but
/// the signature check (a new id would re-seal, see rpc.feature).
pub async fn commit_with_signature(w: &mut World, model_ref: &str, signature_hex: &str) {
    let shard = w.handle_id().await;
    let body = json!({"model_ref": model_ref, "shard_id": shard, "shard_index": 0, "signature": signature_hex});
    crate::steps::http::post_commit(w, body).await;
}

#[when(
    regex = r"^I upload the served model for commit with its digest and (its good signature|its signature with one bit flipped|no signature)$"
)]
async fn upload_signed(w: &mut World, how: String) {
    let bytes = std::fs::read(served_path(w)).expect("read the served model");
    let shard = w.handle_id().await;
    let mut query = format!(
        "model_ref={}&shard_id={shard}&shard_index=0&expected_digest={}",
        w.model_name,
        hex::encode(Sha256::digest(&bytes))
    );
    if how != "no signature" {
        let sig = signature_of(w, &served_path(w), &how);
        query.push_str(&format!("&signature={}", hex::encode(sig)));
    }
    send_with(
        w,
        "POST",
        &format!("/worker/commit?{query}"),
        Some(reqwest::Body::from(bytes)),
        Auth::Token,
        &[("content-type", "application/octet-stream")],
    )
    .await;
}
