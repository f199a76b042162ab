//! The token check's timing, measured by the worker's own `bench-auth`
//! command (WORKER-4201): a dudect-style t-test of "first token matched"
//! against "last token matched", beside an early-exit control that must leak
//! visibly, so a pass means the measurement could have seen a leak here.

use crate::steps::world::{apply_mutant, ctx, World};
use cucumber::{then, when};
use serde_json::Value;

#[when(regex = r"^I run the token-check timing benchmark with (\d+) tokens$")]
fn run_bench(w: &mut World, tokens: usize) {
    let json = w.dir.path().join("bench-auth.json");
    let mut cmd = std::process::Command::new(&ctx().bin);
    cmd.args([
        "bench-auth",
        "--tokens",
        &tokens.to_string(),
        "--samples",
        "400000",
        "--json",
    ])
    .arg(&json);
    apply_mutant(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| w.fail(format!("could not run bench-auth: {e}")));
    w.ran_cli = true;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    w.check(
        out.status.success(),
        format!(
            "bench-auth exited with {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| w.fail(format!("read {}: {e}", json.display())));
    w.prev_json = Some(
        serde_json::from_str(&text).unwrap_or_else(|e| w.fail(format!("bench-auth JSON: {e}"))),
    );
}

fn report(w: &World) -> &Value {
    w.prev_json
        .as_ref()
        .unwrap_or_else(|| w.fail("the timing benchmark has not run"))
}

fn abs_t(w: &World, which: &str) -> f64 {
    report(w)[which]["max_abs_t"].as_f64().unwrap_or_else(|| {
        w.fail(format!(
            "the report has no {which}.max_abs_t: {}",
            report(w)
        ))
    })
}

#[then(regex = r"^the early-exit control comparison leaks visibly \(\|t\| above (\d+)\)$")]
fn control_leaks(w: &mut World, threshold: f64) {
    let t = abs_t(w, "control");
    w.check(
        t > threshold,
        format!(
            "the early-exit control reached only |t| = {t:.1} (needs > {threshold}): this machine and sample \
             size cannot show a leak of that size, so the worker's result below proves nothing"
        ),
    );
}

#[then(
    regex = r"^the worker's token check does not \(\|t\| below (\d+), or a median gap under ([0-9.]+) of the control's\)$"
)]
fn product_constant(w: &mut World, threshold: f64, ratio: f64) {
    let t = abs_t(w, "product");
    // The ratio is recomputed here from the reported medians, not taken from the report.
    let median_gap = |which: &str| {
        let r = &report(w)[which];
        match (r["median_ns_first"].as_f64(), r["median_ns_last"].as_f64()) {
            (Some(a), Some(b)) => (a - b).abs(),
            _ => w.fail(format!("the report has no {which} medians: {}", report(w))),
        }
    };
    let control_gap = median_gap("control");
    let gap = if control_gap > 0.0 {
        median_gap("product") / control_gap
    } else {
        f64::INFINITY
    };
    w.check(
        t < threshold || gap < ratio,
        format!(
            "the worker's token check reached |t| = {t:.1} (expected < {threshold}) with a median gap of {gap:.2} \
             of the control's (expected < {ratio}): its time depends on which token matched. Report: {}",
            report(w)
        ),
    );
}
