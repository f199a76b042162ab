//! The `generate` command beside the daemon (issue 11 point 2; WORKER-4710,
//! 4242, 4243): the same request gives the same text and the same token
//! count, and what Execute refuses `generate` refuses too, naming the same
//! field. Both sides are run here and compared with each other; neither is
//! taken as the expectation of the other's internals.

use crate::steps::http::{error_message, send, Auth};
use crate::steps::process::running_as_root;
use crate::steps::world::{apply_mutant, ctx, World};
use cucumber::gherkin::Step;
use cucumber::{then, when};
use serde_json::{json, Value};

/// What one `generate` run printed.
pub struct GenerateRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `worker-orcd generate` on the served model with `args` after the
/// model and prompt (as root with --allow-root, as the README says).
fn run_generate(w: &mut World, prompt: &str, args: &[String]) -> GenerateRun {
    let model = w.model_root().join(&w.model_name);
    let mut cmd = std::process::Command::new(&ctx().bin);
    cmd.arg("generate")
        .arg("--model")
        .arg(&model)
        .arg("--prompt")
        .arg(prompt)
        .args(args);
    if running_as_root() {
        cmd.arg("--allow-root");
    }
    if ctx().require_gpu {
        // The daemon of this run serves on the GPU: compare like with like.
        cmd.args(["--backend", "cuda"]);
    }
    apply_mutant(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| w.fail(format!("could not run generate: {e}")));
    w.ran_cli = true;
    GenerateRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tokens in N out M (reason)` from the summary line on stderr.
fn summary(w: &World, run: &GenerateRun) -> (u64, String) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(" tokens in "))
        .unwrap_or_else(|| w.fail(format!("generate printed no summary: {}", run.stderr)));
    let after = line.split(" out ").nth(1).unwrap_or_default();
    let mut parts = after.splitn(2, ' ');
    let n = parts.next().and_then(|n| n.parse().ok());
    let reason = parts
        .next()
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next());
    match (n, reason) {
        (Some(n), Some(r)) => (n, r.to_string()),
        _ => w.fail(format!("cannot read the summary line {line:?}")),
    }
}

#[when(
    regex = r#"^I run generate on the served model with "([^"]*)", seed (\d+), temperature ([0-9.]+) and max_tokens (\d+)$"#
)]
fn generate_seeded(w: &mut World, prompt: String, seed: u64, temp: String, max: u64) {
    let args = [
        "--seed".to_string(),
        seed.to_string(),
        "--temperature".into(),
        temp,
        "--max-tokens".into(),
        max.to_string(),
    ];
    let run = run_generate(w, &prompt, &args);
    w.check(
        run.code == Some(0),
        format!("generate exited with {:?}: {}", run.code, run.stderr),
    );
    w.generate_runs.push(run);
}

/// The daemon's last stream and the last `generate` run: the same text, the
/// same number of tokens, the same reason to stop.
#[then("generate printed exactly the stream's text and counted its tokens and finish reason")]
fn generate_matches_stream(w: &mut World) {
    let stream = w.stream().clone();
    let Some((_, end)) = stream.terminal() else {
        w.fail("the stream has no end event")
    };
    let end = end.json();
    w.check(
        stream.terminal().map(|(_, e)| e.name.as_str()) == Some("end"),
        format!("the stream ended with an error: {end}"),
    );
    let text: String = stream.token_texts().concat();
    let Some(run) = w.generate_runs.last() else {
        w.fail("generate has not run")
    };
    let (n, reason) = summary(w, run);
    w.check(
        run.stdout == text,
        format!(
            "generate printed {:?}, the daemon streamed {text:?}",
            run.stdout
        ),
    );
    w.check(
        Some(n) == end["tokens_out"].as_u64() && Some(n) == Some(stream.tokens().len() as u64),
        format!(
            "generate counted {n} tokens; the daemon's end event says {} and it sent {} token events",
            end["tokens_out"],
            stream.tokens().len()
        ),
    );
    w.check(
        end["finish_reason"].as_str() == Some(reason.as_str()),
        format!(
            "generate stopped for {reason:?}, the daemon for {}",
            end["finish_reason"]
        ),
    );
}

/// Each row: the prompt, the `generate` flags (space-separated), the
/// Execute `params` JSON, and the field both must name. Execute must answer
/// 400 INVALID_PARAMS naming the field; generate must exit 2 with an
/// INVALID_PARAMS line naming it.
#[then("generate and Execute both refuse each of these, naming the same field:")]
async fn both_refuse(w: &mut World, step: &Step) {
    let rows = crate::steps::validation::rows(w, step);
    let handle = w.handle_id().await;
    for row in rows {
        let [prompt, flags, params, field] = &row[..] else {
            w.fail(format!("a row needs 4 cells: {row:?}"))
        };
        let prompt = prompt.trim_matches('"').to_string();
        let params: Value = serde_json::from_str(params)
            .unwrap_or_else(|e| w.fail(format!("bad params JSON {params:?}: {e}")));
        let body = json!({"handle_id": handle, "prompt": prompt, "params": params});
        let r = send(
            w,
            "POST",
            "/worker/execute",
            Some(body.to_string()),
            Auth::Token,
        )
        .await;
        let code = r
            .json
            .as_ref()
            .and_then(|j| j["code"].as_str())
            .unwrap_or_default();
        w.check(
            r.status == 400 && code == "INVALID_PARAMS" && error_message(&r).contains(field.as_str()),
            format!(
                "Execute with prompt {prompt:?} and params {params}: expected 400 INVALID_PARAMS naming {field:?}, got {}: {}",
                r.status, r.text
            ),
        );
        let args: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
        let run = run_generate(w, &prompt, &args);
        w.check(
            run.code == Some(2)
                && run.stderr.contains("INVALID_PARAMS")
                && run.stderr.contains(field.as_str()),
            format!(
                "generate {flags} with prompt {prompt:?}: expected exit 2 with INVALID_PARAMS naming {field:?}, got {:?}: {}",
                run.code, run.stderr
            ),
        );
    }
}
