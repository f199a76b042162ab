//! Configuration steps (WORKER-4980-4991): edit the JSON config, the
//! environment and the flags before a start, and check what the worker says.

use crate::steps::process::{prepare, spawn, wait_exit};
use crate::steps::world::{ctx, World};
use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use serde_json::Value;

#[given(regex = r#"^the configuration sets "([^"]+)" to (.+)$"#)]
#[when(regex = r#"^the configuration sets "([^"]+)" to (.+)$"#)]
fn set_key(w: &mut World, key: String, lit: String) {
    let v: Value = serde_json::from_str(&lit)
        .unwrap_or_else(|e| panic!("bad JSON literal {lit} in the feature: {e}"));
    w.config.insert(key, v);
}

#[given(regex = r#"^the configuration omits "([^"]+)"$"#)]
#[when(regex = r#"^the configuration omits "([^"]+)"$"#)]
fn omit_key(w: &mut World, key: String) {
    w.config.remove(&key);
}

#[given(
    regex = r#"^the environment sets "([A-Z_]+)" to (the token file|the chosen address|"[^"]*")$"#
)]
fn set_env(w: &mut World, var: String, what: String) {
    let value = match what.as_str() {
        "the token file" => w.token_file.display().to_string(),
        "the chosen address" => format!("127.0.0.1:{}", w.port),
        lit => lit.trim_matches('"').to_string(),
    };
    w.env.push((var, Some(value)));
}

#[given(regex = r#"^the worker is given the flag "(--[a-z-]+)" "([^"]*)"$"#)]
fn add_flag(w: &mut World, flag: String, value: String) {
    w.extra_args.push(flag);
    w.extra_args.push(value);
}

#[then("for each required field, a configuration without it stops the worker with code 2 naming the field:")]
async fn each_required(w: &mut World, step: &Step) {
    let Some(table) = step.table.as_ref() else {
        w.fail("this step needs a table")
    };
    for row in table.rows.iter().skip(1) {
        let field = row[0].clone();
        prepare(w, "tiny").await;
        w.config.remove(&field);
        spawn(w).await;
        let code = wait_exit(w, 15).await;
        w.check(
            code == Some(2),
            format!("without {field:?} the worker gave exit {code:?}, expected 2"),
        );
        // Only this attempt's log: earlier attempts named other fields.
        let log = w
            .worker
            .as_ref()
            .map(|x| std::fs::read_to_string(&x.log).unwrap_or_default())
            .unwrap_or_default();
        w.check(
            log.contains(&field),
            format!("the refusal does not name {field:?}"),
        );
    }
}

#[then(regex = r#"^"worker-orcd --help" mentions (.+)$"#)]
fn help_mentions(w: &mut World, list: String) {
    let out = std::process::Command::new(&ctx().bin)
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    w.check(out.status.success(), "--help failed");
    for f in crate::steps::http::quoted_list(&list) {
        w.check(text.contains(&f), format!("--help does not mention {f}"));
    }
}
