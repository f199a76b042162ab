//! Model files for scenarios that need a bad, foreign or extra model
//! (WORKER-4022, 4224, 4310-4323, 4602-4623). Copies are made from the tiny
//! generated model and then damaged at known places of the GGUF layout.

use crate::steps::http::{assert_error_body, send, Auth};
use crate::steps::process::{place_in_root, test_model};
use crate::steps::world::World;
use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use serde_json::json;
use std::path::Path;
use worker_orcd::model::gguf::{GgufFile, GgufLimits};

/// The digest the worker must report for a model: the resident digest over
/// the GGUF data section (the bytes that become resident).
pub fn resident_digest_of_file(path: &Path) -> Result<String, String> {
    let g = GgufFile::open(path, &GgufLimits::default())
        .map_err(|e| format!("parse {}: {e}", path.display()))?;
    Ok(hex::encode(worker_orcd::shard::digest::resident_digest(
        g.data_section(),
    )))
}

fn tiny_bytes(w: &World) -> Vec<u8> {
    let p = test_model("tiny").unwrap_or_else(|e| w.fail(e));
    std::fs::read(p).expect("read tiny model")
}

fn data_offset(w: &World) -> usize {
    let p = test_model("tiny").unwrap_or_else(|e| w.fail(e));
    let g = GgufFile::open(&p, &GgufLimits::default())
        .unwrap_or_else(|e| w.fail(format!("parse tiny model: {e}")));
    g.data_offset as usize
}

/// A damaged copy of the tiny model. GGUF v3 layout: magic(4) version(4)
/// n_tensors(u64 @8) n_kv(u64 @16), then the first key's length (u64 @24).
fn corrupt(w: &World, how: &str) -> Vec<u8> {
    let mut b = tiny_bytes(w);
    match how {
        "truncated header" => b.truncate(20),
        "huge tensor count" => b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()),
        "string length past end" => b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes()),
        "tensor offset past end" | "truncated file" => {
            let off = data_offset(w);
            let keep = off + (b.len() - off) / 2;
            b.truncate(keep);
        }
        other => w.fail(format!("unknown corruption {other:?}")),
    }
    b
}

fn place_bytes(w: &mut World, name: &str, bytes: &[u8]) {
    let root = w.model_root();
    std::fs::create_dir_all(&root).expect("model root");
    std::fs::write(root.join(name), bytes).expect("write model copy");
    w.that_model = Some(name.to_string());
}

#[given("a truncated copy of the tiny model in the model root")]
fn truncated(w: &mut World) {
    let b = corrupt(w, "truncated file");
    place_bytes(w, "truncated.gguf", &b);
}

#[given("a copy of the tiny model whose last tensor points past the end of the file")]
fn past_end(w: &mut World) {
    let b = corrupt(w, "tensor offset past end");
    place_bytes(w, "past-end.gguf", &b);
}

#[then(
    regex = r#"^each malformed copy of the tiny model is refused by plan with "([A-Z_]+)" and the worker keeps running:$"#
)]
async fn each_malformed(w: &mut World, code: String, step: &Step) {
    let Some(table) = step.table.as_ref() else {
        w.fail("this step needs a table")
    };
    for (i, row) in table.rows.iter().skip(1).enumerate() {
        let b = corrupt(w, &row[0]);
        let name = format!("malformed-{i}.gguf");
        place_bytes(w, &name, &b);
        let r = send(
            w,
            "POST",
            "/worker/plan",
            Some(json!({"model_ref": name, "shard_layout": "single"}).to_string()),
            Auth::Token,
        )
        .await;
        assert_error_body(w, &r, &code);
        let h = send(w, "GET", "/health", None, Auth::None).await;
        w.check(
            h.status == 200,
            format!(
                "after the {:?} model the health check answered {}",
                row[0], h.status
            ),
        );
    }
}

#[given("a symlink in the model root that points to a model outside it")]
fn symlink_out(w: &mut World) {
    let outside = w.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    let src = test_model("tiny2").unwrap_or_else(|e| w.fail(e));
    let target = place_in_root(&src, &outside, "tiny2.gguf");
    std::os::unix::fs::symlink(&target, w.model_root().join("link.gguf")).expect("symlink");
    w.that_model = Some("link.gguf".into());
}

#[given("another worker's model directory beside this worker's model root")]
fn other_worker_dir(w: &mut World) {
    let other = w.dir.path().join("other-worker-models");
    let src = test_model("tiny2").unwrap_or_else(|e| w.fail(e));
    let p = place_in_root(&src, &other, "theirs.gguf");
    w.that_model = Some(p.display().to_string());
}

#[when("I plan the other worker's model by its path")]
async fn plan_other(w: &mut World) {
    let m = w.that_model.clone().unwrap_or_default();
    send(
        w,
        "POST",
        "/worker/plan",
        Some(json!({"model_ref": m, "shard_layout": "single"}).to_string()),
        Auth::Token,
    )
    .await;
}

fn write_sidecar(w: &World, model: &str, text: &str) {
    let p = w.model_root().join(format!("{model}.mcd.json"));
    std::fs::write(p, text).expect("write sidecar");
}

#[given(regex = r"^a sidecar MCD for the tiny test model that states context_max (\d+)$")]
fn sidecar_ctx(w: &mut World, n: u64) {
    let name = w.model_name.clone();
    write_sidecar(w, &name, &json!({"context_max": n}).to_string());
}

#[given("a sidecar MCD for the tiny test model that is not valid JSON")]
fn sidecar_bad(w: &mut World) {
    let name = w.model_name.clone();
    write_sidecar(w, &name, "{ this is not json");
}

#[given("a tiny model whose architecture needs an unsupported positional encoding")]
fn unsupported_positional(w: &mut World) {
    let src = test_model("tiny2").unwrap_or_else(|e| w.fail(e));
    place_in_root(&src, &w.model_root(), "alibi.gguf");
    write_sidecar(w, "alibi.gguf", &json!({"positional": "alibi"}).to_string());
    w.that_model = Some("alibi.gguf".into());
}

#[when("I commit the second tiny model with a bad Ed25519 signature")]
async fn commit_bad_sig(w: &mut World) {
    let m = w
        .that_model
        .clone()
        .unwrap_or_else(|| w.fail("no second model was placed"));
    super::signature::commit_with_signature(w, &m, &"00".repeat(64)).await;
}
