//! Model files for scenarios that need a bad, foreign or extra model
//! (WORKER-4022, 4224, 4310-4323, 4602-4623). Copies are made from the tiny
//! generated model and then damaged at known places of the GGUF layout.
//! Also the commit-by-path steps (WORKER-4220-4227): a model is its bytes, a
//! new shard id is a fresh seal, and the old id is refused naming the new one.

use crate::steps::http::{assert_error_body, post_commit, send, Auth};
use crate::steps::process::{place_in_root, test_model};
use crate::steps::world::World;
use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use serde_json::json;
use std::path::Path;
use worker_orcd::model::gguf::{GgufFile, GgufLimits};

/// The digest the worker must report for a model: the resident digest over
/// the GGUF data section (the bytes that become resident).
/// Computed by the harness's own arithmetic (`steps::digest`), not the worker's.
pub fn resident_digest_of_file(path: &Path) -> Result<String, String> {
    let file = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let data = crate::steps::digest::tensor_data(&file)?;
    Ok(hex::encode(crate::steps::digest::resident_digest(data)))
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
        // Same element count, other shape: only a shape check can catch it (4410).
        "first tensor reshaped" | "first tensor dims overflow" => {
            let (at, n) =
                crate::steps::gguf_meta::first_tensor_dims(&b).unwrap_or_else(|e| w.fail(e));
            w.check(
                n >= 2,
                format!("the tiny model's first tensor has {n} dimensions, need 2"),
            );
            let dim = |b: &[u8], i: usize| {
                u64::from_le_bytes(b[at + 8 * i..at + 8 * i + 8].try_into().unwrap())
            };
            let (d0, d1) = (dim(&b, 0), dim(&b, 1));
            let (n0, n1) = if how == "first tensor reshaped" {
                (d0 / 2, d1 * 2)
            } else {
                // 2^33 x 2^33 elements: the byte size overflows 64 bits (4411).
                (1u64 << 33, 1u64 << 33)
            };
            b[at..at + 8].copy_from_slice(&n0.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&n1.to_le_bytes());
        }
        // The metadata declares no tokens (the u32 after the key and its type).
        "vocab_size 0" => {
            let key = b"llama.vocab_size";
            let at = b
                .windows(key.len())
                .position(|win| win == key)
                .unwrap_or_else(|| w.fail("the tiny model has no llama.vocab_size key"))
                + key.len()
                + 4;
            b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        }
        // One f32 weight of the final norm becomes NaN or +Inf.
        "NaN in output_norm.weight" | "Inf in output_norm.weight" => {
            let p = test_model("tiny").unwrap_or_else(|e| w.fail(e));
            let g = GgufFile::open(&p, &GgufLimits::default())
                .unwrap_or_else(|e| w.fail(format!("parse tiny model: {e}")));
            let t = g
                .tensor("output_norm.weight")
                .unwrap_or_else(|| w.fail("the tiny model has no output_norm.weight"));
            let at = g.data_offset as usize + t.offset as usize + 4 * 7;
            let v = if how.starts_with("NaN") {
                f32::NAN
            } else {
                f32::INFINITY
            };
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
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
        // An optional second column names what the refusal must be about.
        if let Some(why) = row.get(1).filter(|s| !s.is_empty()) {
            let msg = crate::steps::http::error_message(&r);
            w.check(
                msg.contains(why.as_str()),
                format!(
                    "the {:?} model was refused, but the message does not mention {why:?}: {msg}",
                    row[0]
                ),
            );
        }
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

#[given("the worker is told to load that model at start-up")]
fn load_that_at_startup(w: &mut World) {
    let m = w
        .that_model
        .clone()
        .unwrap_or_else(|| w.fail("no other model was placed"));
    let path = w.model_root().join(m);
    w.config
        .insert("model_path".into(), json!(path.display().to_string()));
}

#[when("I commit the second tiny model with a bad Ed25519 signature")]
async fn commit_bad_sig(w: &mut World) {
    let m = w
        .that_model
        .clone()
        .unwrap_or_else(|| w.fail("no second model was placed"));
    super::signature::commit_with_signature(w, &m, &"00".repeat(64)).await;
}

/// SHA-256 of a file in the model root, computed by the harness.
fn root_file_sha256(w: &World, name: &str) -> String {
    let p = w.model_root().join(name);
    w.check(
        p.is_file(),
        format!("{} is not in the model root", p.display()),
    );
    crate::steps::world::file_sha256(&p)
}

#[given(regex = r#"^a byte-identical copy of the served model named "([^"]+)" in the model root$"#)]
fn copy_of_served(w: &mut World, name: String) {
    let root = w.model_root();
    std::fs::copy(root.join(&w.model_name), root.join(&name))
        .unwrap_or_else(|e| w.fail(format!("copy the served model to {name}: {e}")));
    let (a, b) = (
        root_file_sha256(w, &w.model_name),
        root_file_sha256(w, &name),
    );
    w.check(
        a == b,
        format!("the copy {name} has SHA-256 {b}, the served model {a}"),
    );
}

#[given(regex = r#"^a hard link to the served model named "([^"]+)" in the model root$"#)]
fn link_to_served(w: &mut World, name: String) {
    use std::os::unix::fs::MetadataExt;
    let root = w.model_root();
    let (src, dst) = (root.join(&w.model_name), root.join(&name));
    std::fs::hard_link(&src, &dst)
        .unwrap_or_else(|e| w.fail(format!("hard-link the served model as {name}: {e}")));
    let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
    w.check(
        ino(&src) == ino(&dst),
        format!("{name} is not a hard link of the served model (inodes differ)"),
    );
}

/// A path commit of `name` (the served model or a file in the model root)
/// under `shard`, with the file's SHA-256 as expected_digest or a wrong one.
#[when(
    regex = r#"^I commit (the served model|"[^"]+") as shard "([^"]+)" with (its file digest|a wrong digest)$"#
)]
async fn commit_as_shard(w: &mut World, which: String, shard: String, digest: String) {
    let name = match which.as_str() {
        "the served model" => w.model_name.clone(),
        quoted => quoted.trim_matches('"').to_string(),
    };
    let expected = match digest.as_str() {
        "its file digest" => root_file_sha256(w, &name),
        _ => "ab".repeat(32),
    };
    let body = json!({"model_ref": name, "shard_id": shard, "shard_index": 0, "expected_digest": expected});
    post_commit(w, body).await;
}

/// 4220, 4226, 4227: the commit answered a fresh seal of the served model
/// under `shard` (compared with the handle remembered before it: another
/// shard id, another seal, a later sealed_at, the same resident bytes, whose
/// digest the harness computes from the file), and /worker/ready lists
/// exactly that handle.
#[then(
    regex = r#"^the commit sealed shard "([^"]+)" afresh over the served model and the worker lists exactly that handle$"#
)]
async fn sealed_afresh(w: &mut World, shard: String) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("no shard handle was remembered before the commit")
    };
    let r = w.last().clone();
    w.check(
        r.status == 200,
        format!("the commit answered HTTP {}: {}", r.status, r.text),
    );
    let h = w.last_json()["handle"].clone();
    let want =
        resident_digest_of_file(&w.model_root().join(&w.model_name)).unwrap_or_else(|e| w.fail(e));
    let checks = [
        (h["shard_id"] == shard.as_str(), format!("shard_id {} (asked for {shard:?})", h["shard_id"])),
        (h["sealed"] == true, format!("sealed {}", h["sealed"])),
        (h["digest"] == want.as_str(), format!("digest {} (the file's tensor data: {want})", h["digest"])),
        (h["seal"] != before["seal"], format!("seal {} unchanged from before the commit", h["seal"])),
        (
            h["sealed_at"].as_str().unwrap_or_default() > before["sealed_at"].as_str().unwrap_or("~"),
            format!("sealed_at {} not after the earlier seal's {}", h["sealed_at"], before["sealed_at"]),
        ),
        (
            h["model_ref"] == before["model_ref"] && h["vram_bytes"] == before["vram_bytes"],
            format!(
                "model_ref/vram_bytes {}/{} differ from the resident model's {}/{}: no second copy may be loaded",
                h["model_ref"], h["vram_bytes"], before["model_ref"], before["vram_bytes"]
            ),
        ),
    ];
    for (ok, what) in checks {
        w.check(
            ok,
            format!("the committed handle is wrong: {what}; handle {h}"),
        );
    }
    let ready = send(w, "GET", "/worker/ready", None, Auth::Token).await;
    let j = ready.json.clone().unwrap_or_default();
    w.check(
        j["ready"] == true && j["handles"] == json!([h]),
        format!(
            "after the commit /worker/ready should list exactly {h}, it answered {}",
            ready.text
        ),
    );
}

/// A two-token job naming `handle_id`, read to its end.
async fn job_on(w: &mut World, handle_id: &str) -> crate::steps::world::Response {
    let body = crate::steps::sse::exec_body(handle_id, "Hello", crate::steps::sse::greedy(2));
    send(w, "POST", "/worker/execute", Some(body), Auth::Token).await
}

#[then(regex = r#"^a job naming handle "([^"]+)" streams to its end$"#)]
async fn job_streams(w: &mut World, handle_id: String) {
    let r = job_on(w, &handle_id).await;
    w.check(
        r.status == 200 && r.text.contains("event: end") && !r.text.contains("event: error"),
        format!(
            "a job on handle {handle_id:?} should stream to an end event; HTTP {}: {}",
            r.status, r.text
        ),
    );
}

/// 4227: the id a re-seal retired is refused with a stable code and a
/// message naming the new id (and the old one).
#[then(
    regex = r#"^a job naming the remembered handle is refused with HTTP (\d+) and "([A-Z_]+)", naming shard "([^"]+)"$"#
)]
async fn old_handle_refused(w: &mut World, status: u16, code: String, shard: String) {
    let Some(before) = w.prev_json.clone() else {
        w.fail("no shard handle was remembered")
    };
    let old = before["shard_id"].as_str().unwrap_or_default().to_string();
    let r = job_on(w, &old).await;
    w.check(
        r.status == status,
        format!(
            "a job on the retired handle {old:?}: expected HTTP {status}, got {}: {}",
            r.status, r.text
        ),
    );
    assert_error_body(w, &r, &code);
    let msg = crate::steps::http::error_message(&r);
    w.check(
        msg.contains(&format!("{shard:?}")) && msg.contains(&format!("{old:?}")),
        format!("the refusal should name the new shard {shard:?} and the old {old:?}: {msg:?}"),
    );
}
