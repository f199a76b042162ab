//! Steps that check the harness itself, in process (`@unit` scenarios of
//! testing.feature): the binary check before any scenario (HARNESS-BINARY)
//! and the traceability rules that keep the report from being inflated
//! (HARNESS-TRACE). Expected verdicts are written here by hand from the rules
//! in `traceability.rs` and `matrix.rs`, not taken from a run.

use crate::steps::build_check::{check_binary, HARNESS_SOURCES};
use crate::steps::matrix::{verdict, Verdict};
use crate::steps::traceability::{check_flags, Evidence, Req, ScenarioInfo, Status};
use crate::steps::world::{ctx, World};
use cucumber::then;
use std::os::unix::fs::PermissionsExt;

/// A stand-in worker binary whose `build-info` prints `features` and `hash`.
fn fake_worker(w: &World, name: &str, features: &str, hash: &str) -> std::path::PathBuf {
    let p = w.dir.path().join(name);
    let script = format!(
        "#!/bin/sh\nprintf 'version: 0.1.0\\nfeatures: {features}\\nsource-sha256: {hash}\\n'\n"
    );
    std::fs::write(&p, script).unwrap_or_else(|e| w.fail(format!("write {}: {e}", p.display())));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| w.fail(format!("chmod {}: {e}", p.display())));
    p
}

#[then("the harness accepts the worker binary under test")]
fn accepts_real(w: &mut World) {
    let c = ctx();
    let r = check_binary(&c.bin, c.repo.as_deref());
    w.check(
        r.is_ok(),
        format!("expected the binary under test to pass the check, got {r:?}"),
    );
}

#[then("the harness refuses a worker whose build-info lacks the test-hooks feature")]
fn refuses_no_hooks(w: &mut World) {
    let bin = fake_worker(w, "no-hooks", "none", HARNESS_SOURCES);
    let r = check_binary(&bin, None);
    w.check(
        r.as_ref()
            .is_err_and(|e| e.contains("without the test-hooks feature")),
        format!("expected a refusal naming the missing test-hooks feature, got {r:?}"),
    );
}

#[then("the harness refuses a worker whose build-info names other sources")]
fn refuses_other_sources(w: &mut World) {
    let other = "0".repeat(64);
    let bin = fake_worker(w, "other-sources", "test-hooks", &other);
    let r = check_binary(&bin, None);
    w.check(
        r.as_ref().is_err_and(|e| e.contains("other sources")),
        format!("expected a refusal naming other sources, got {r:?}"),
    );
}

fn req(id: &str, flags: &str) -> Req {
    Req {
        id: id.into(),
        level: "MUST".into(),
        flags: flags.into(),
        statement: "x".into(),
        static_reason: flags.contains("STATIC").then(|| "why".into()),
    }
}

fn sc(line: usize, tags: &[&str]) -> ScenarioInfo {
    ScenarioInfo {
        file: "x.feature".into(),
        feature: "x".into(),
        name: format!("s{line}"),
        line,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

#[then("a requirement whose behavioural scenario is GPU only and whose source check passed is reported GPU only")]
fn grep_does_not_mask(w: &mut World) {
    let (b, s) = (sc(1, &["R-1", "gpu"]), sc(2, &["R-1", "source"]));
    let v = verdict(
        &req("R-1", "-"),
        &[(&b, Status::GpuSkipped), (&s, Status::Passed)],
    );
    w.check(
        v == Verdict::NotApplicable(Status::GpuSkipped),
        format!("expected GPU only, got {v:?}"),
    );
}

#[then("a requirement with only a passing source check is reported as static evidence only")]
fn static_only(w: &mut World) {
    let s = sc(1, &["R-1", "source"]);
    let v = verdict(&req("R-1", "-"), &[(&s, Status::Passed)]);
    w.check(
        v == Verdict::StaticOnly,
        format!("expected static evidence only, got {v:?}"),
    );
}

#[then("a requirement flagged STATIC passes on its source check")]
fn static_by_design(w: &mut World) {
    let s = sc(1, &["R-1", "source"]);
    let v = verdict(&req("R-1", "STATIC"), &[(&s, Status::Passed)]);
    w.check(
        v == Verdict::Passing(Evidence::Static),
        format!("expected passing on static evidence, got {v:?}"),
    );
}

#[then("a requirement whose only scenario needs 2 GPUs is neither passing nor failing")]
fn needs_gpus(w: &mut World) {
    let s = sc(1, &["R-1", "gpu", "gpu2"]);
    let v = verdict(&req("R-1", "GPU"), &[(&s, Status::NeedsTwoGpus)]);
    w.check(
        v == Verdict::NotApplicable(Status::NeedsTwoGpus),
        format!("expected needs 2 GPUs, got {v:?}"),
    );
}

fn flags_problems(reqs: &[Req], scs: &[ScenarioInfo]) -> Vec<String> {
    check_flags(reqs, scs)
}

#[then("a requirement not flagged GPU whose every scenario is @gpu is a catalogue problem")]
fn gpu_only_unflagged(w: &mut World) {
    let p = flags_problems(&[req("R-1", "-")], &[sc(1, &["R-1", "gpu"])]);
    w.check(
        p.iter().any(|x| x.contains("R-1 is not flagged GPU")),
        format!("expected a problem about R-1, got {p:?}"),
    );
    let ok = flags_problems(
        &[req("R-1", "-")],
        &[sc(1, &["R-1", "gpu"]), sc(2, &["R-1"])],
    );
    w.check(
        ok.is_empty(),
        format!("expected no problem with a cpu scenario too, got {ok:?}"),
    );
}

#[then("a requirement flagged GPU named by a scenario without @gpu is a catalogue problem")]
fn gpu_flag_cpu_scenario(w: &mut World) {
    let p = flags_problems(&[req("R-1", "GPU")], &[sc(1, &["R-1"])]);
    w.check(
        p.iter()
            .any(|x| x.contains("flagged GPU in the index but this scenario runs without @gpu")),
        format!("expected a problem, got {p:?}"),
    );
}

#[then("a @post-m0 scenario naming a requirement not flagged POST-M0 is a catalogue problem")]
fn post_m0_mismatch(w: &mut World) {
    let p = flags_problems(&[req("R-1", "-")], &[sc(1, &["R-1", "post-m0"])]);
    w.check(
        p.iter().any(|x| x.contains("not flagged POST-M0")),
        format!("expected a problem, got {p:?}"),
    );
    let q = flags_problems(&[req("R-2", "POST-M0")], &[sc(1, &["R-2"])]);
    w.check(
        q.iter().any(|x| x.contains("without @post-m0")),
        format!("expected a problem, got {q:?}"),
    );
}
