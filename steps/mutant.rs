//! Mutant mode of the BDD run (issue 10, point 2): proof that the suite
//! notices the bugs planted in `src/mutants.rs`.
//!
//! `BDD_MUTANT=<name>` runs only the scenarios tagged with the requirement IDs
//! the catalogue says must kill that mutant, with every worker (and every CLI
//! command the steps run) started under `WORKER_ORCD_MUTANT=<name>`. The run
//! passes when at least one of those scenarios fails under the mutant and
//! passes again in a control run without it, and fails, naming the
//! mutant, when all of them pass: a surviving mutant means a requirement whose
//! scenarios do not notice it breaking. `BDD_MUTANT=list` prints the names.
//!
//! The harness process itself never runs with a mutant: it links the worker's
//! library (a test-hooks build), so a mutant switched on here would bend the
//! harness's own checks the same way as the worker's. Only children get it.

use crate::steps::traceability::{Key, ScenarioInfo, Status};
use std::collections::BTreeMap;
use std::process::ExitCode;
use worker_orcd::mutants::{self, Entry};

/// What `BDD_MUTANT` asks for.
pub enum Request {
    /// The normal run.
    None,
    /// Print the catalogue's names, one per line, and stop.
    List,
    /// Run the killing scenarios of this mutant.
    Run(&'static Entry),
}

/// Read `BDD_MUTANT`; an unknown name is an error naming the known ones.
pub fn request() -> Result<Request, String> {
    let Some(name) = std::env::var("BDD_MUTANT").ok().filter(|s| !s.is_empty()) else {
        return Ok(Request::None);
    };
    if name == "list" {
        return Ok(Request::List);
    }
    mutants::by_name(&name).map(Request::Run).ok_or_else(|| {
        let known: Vec<&str> = mutants::CATALOGUE.iter().map(|e| e.name).collect();
        format!("BDD_MUTANT={name:?} names no mutant of src/mutants.rs; known: {known:?}")
    })
}

/// Keep `WORKER_ORCD_MUTANT` out of the harness process (see the header).
pub fn clear_from_harness() {
    if std::env::var_os(worker_orcd::env::WORKER_ORCD_MUTANT.name).is_some() {
        eprintln!(
            "BDD: ignoring WORKER_ORCD_MUTANT in the harness's own environment; \
             use BDD_MUTANT=<name> to run a mutant against its scenarios"
        );
        std::env::remove_var(worker_orcd::env::WORKER_ORCD_MUTANT.name);
    }
}

/// Does scenario `s` carry one of the requirement tags that must kill `e`?
pub fn selects(e: &Entry, s: &ScenarioInfo) -> bool {
    s.ids().any(|id| e.killed_by.contains(&id.as_str()))
}

/// Print which scenarios killed the mutant, each with the first line of the
/// check that failed; success only when one did. A kill counts only when the
/// scenario failed under the mutant and passed in the control run without it
/// (`control`): a scenario that fails either way (flaky, broken environment)
/// proves nothing about the mutant and is reported as inconclusive.
pub fn verdict(
    e: &Entry,
    scenarios: &[ScenarioInfo],
    status: &BTreeMap<Key, Status>,
    failures: &BTreeMap<Key, String>,
    control: &BTreeMap<Key, Status>,
) -> ExitCode {
    let mut ran = 0;
    let mut killers = Vec::new();
    let mut inconclusive = Vec::new();
    for s in scenarios.iter().filter(|s| selects(e, s)) {
        let key = (s.file.clone(), s.line);
        match status.get(&key) {
            Some(Status::Failed) => {
                ran += 1;
                let why = first_line(failures.get(&key));
                let line = format!("{}:{} {:?} [failed: {why}]", s.file, s.line, s.name);
                if control.get(&key) == Some(&Status::Passed) {
                    killers.push(line);
                } else {
                    inconclusive.push(line);
                }
            }
            Some(Status::Passed) => ran += 1,
            _ => {}
        }
    }
    for i in &inconclusive {
        eprintln!(
            "BDD: mutant {}: not counted as a kill, the scenario fails without the mutant too: {i}",
            e.name
        );
    }
    if killers.is_empty() {
        eprintln!(
            "BDD: mutant {} ({}) SURVIVED: of {ran} scenario(s) tagged {:?}, none failed with it and passed without it",
            e.name, e.breaks, e.killed_by
        );
        println!("mutants: 0 killed, 1 survived");
        return ExitCode::FAILURE;
    }
    println!(
        "BDD: mutant {} ({}) killed by {} of {ran} scenario(s), each passing without it: {}",
        e.name,
        e.breaks,
        killers.len(),
        killers.join("; ")
    );
    println!("mutants: 1 killed, 0 survived");
    ExitCode::SUCCESS
}

/// The first non-empty line of a failure message, at most 200 characters.
fn first_line(message: Option<&String>) -> String {
    message
        .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no message)")
        .trim()
        .chars()
        .take(200)
        .collect()
}
