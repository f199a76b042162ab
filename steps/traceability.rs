//! Requirement traceability (issue 2, item 5): which scenarios show which
//! requirement, and what they showed in this run.
//!
//! The catalogue is `requirements/index.tsv`. Scenarios name requirements by
//! tag (`@WORKER-4210`). The run fails when an ID has no scenario, when a tag
//! names an unknown ID, or when a tag is neither an ID nor one of the known
//! markers. Statuses come from cucumber's own events (a [`Collector`] writer):
//! a scenario is *passed* only when every step passed; a step with no matching
//! definition makes it *not implemented*; scenarios not run are counted with
//! the reason (GPU-only, post-M0, no source tree, model absent).

use crate::steps::world::World;
use cucumber::{event, gherkin, parser, Event, Writer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tags that are not requirement IDs but mark how a scenario runs.
pub const MARKERS: &[&str] = &[
    "gpu", "gpu2", "post-m0", "serial", "smollm2", "source", "snapshot",
];

#[derive(Debug, Clone)]
pub struct Req {
    pub id: String,
    pub level: String,
    pub flags: String,
    pub statement: String,
}

pub fn load_index(path: &Path) -> Result<Vec<Req>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 4 {
            return Err(format!(
                "{}:{}: expected 4 tab-separated columns",
                path.display(),
                n + 1
            ));
        }
        if !seen.insert(cols[0].to_string()) {
            return Err(format!(
                "{}:{}: duplicate ID {}",
                path.display(),
                n + 1,
                cols[0]
            ));
        }
        out.push(Req {
            id: cols[0].into(),
            level: cols[1].into(),
            flags: cols[2].into(),
            statement: cols[3].into(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct ScenarioInfo {
    pub file: String,
    pub feature: String,
    pub name: String,
    pub line: usize,
    /// Feature, rule and scenario tags, without '@'.
    pub tags: Vec<String>,
}

impl ScenarioInfo {
    pub fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.tags.iter().filter(|t| !MARKERS.contains(&t.as_str()))
    }
}

pub fn file_key(path: Option<&Path>) -> String {
    path.and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn load_features(dir: &Path) -> Result<Vec<ScenarioInfo>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "feature"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let feat = gherkin::Feature::parse_path(&f, gherkin::GherkinEnv::default())
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let key = file_key(Some(&f));
        let mut push = |sc: &gherkin::Scenario, rule_tags: &[String]| {
            let mut tags = feat.tags.clone();
            tags.extend(rule_tags.iter().cloned());
            tags.extend(sc.tags.iter().cloned());
            out.push(ScenarioInfo {
                file: key.clone(),
                feature: feat.name.clone(),
                name: sc.name.clone(),
                line: sc.position.line,
                tags,
            });
        };
        for sc in &feat.scenarios {
            push(sc, &[]);
        }
        for r in &feat.rules {
            for sc in &r.scenarios {
                push(sc, &r.tags);
            }
        }
    }
    Ok(out)
}

/// Every problem that makes the catalogue and the features disagree.
pub fn check_tags(reqs: &[Req], scenarios: &[ScenarioInfo]) -> Vec<String> {
    let known: BTreeSet<&str> = reqs.iter().map(|r| r.id.as_str()).collect();
    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    let mut names = BTreeSet::new();
    for s in scenarios {
        if !names.insert((s.file.clone(), s.name.clone())) {
            problems.push(format!(
                "{}:{}: scenario name {:?} is used twice in the file",
                s.file, s.line, s.name
            ));
        }
        let mut any_id = false;
        for t in s.ids() {
            if known.contains(t.as_str()) {
                covered.insert(t.clone());
                any_id = true;
            } else {
                problems.push(format!(
                    "{}:{}: tag @{t} is neither a requirement ID of the index nor a known marker",
                    s.file, s.line
                ));
            }
        }
        if !any_id {
            problems.push(format!(
                "{}:{}: scenario {:?} names no requirement",
                s.file, s.line, s.name
            ));
        }
    }
    for r in reqs {
        if !covered.contains(&r.id) {
            problems.push(format!("requirement {} has no scenario", r.id));
        }
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Failed,
    Passed,
    NotImplemented,
    GpuSkipped,
    Deferred,
    NoSource,
    NoModel,
    CpuOnly,
    NeedsTwoGpus,
    NotSelected,
    NotRun,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Failed => "failed",
            Status::Passed => "passed",
            Status::NotImplemented => "not implemented",
            Status::GpuSkipped => "skipped (GPU only)",
            Status::Deferred => "skipped (post-M0)",
            Status::NoSource => "skipped (no source tree)",
            Status::NoModel => "skipped (model not installed)",
            Status::CpuOnly => "skipped (CPU-path snapshot)",
            Status::NeedsTwoGpus => "skipped (needs 2 GPUs)",
            Status::NotSelected => "not selected",
            Status::NotRun => "not run",
        }
    }
}

pub type Key = (String, usize);

#[derive(Default)]
pub struct Collected {
    pub status: BTreeMap<Key, Status>,
    pub parse_errors: Vec<String>,
    /// Scenario key → first failure message (for the matrix).
    pub failures: BTreeMap<Key, String>,
}

/// A cucumber writer that records each scenario's outcome from the events.
#[derive(Clone, Default)]
pub struct Collector {
    pub shared: Arc<Mutex<Collected>>,
}

impl Collector {
    fn scenario_event(
        &self,
        feat: &gherkin::Feature,
        sc: &gherkin::Scenario,
        ev: &event::Scenario<World>,
    ) {
        let key = (file_key(feat.path.as_deref()), sc.position.line);
        let mut c = self.shared.lock().expect("collector lock");
        let step = match ev {
            event::Scenario::Step(_, s) | event::Scenario::Background(_, s) => Some(s),
            _ => None,
        };
        let cur = c.status.get(&key).copied();
        match (step, ev) {
            (Some(event::Step::Failed(_, _, _, err)), _) => {
                c.status.insert(key.clone(), Status::Failed);
                c.failures.entry(key).or_insert_with(|| err.to_string());
            }
            (Some(event::Step::Skipped), _) if cur != Some(Status::Failed) => {
                c.status.insert(key, Status::NotImplemented);
            }
            (_, event::Scenario::Hook(_, event::Hook::Failed(_, info))) => {
                c.status.insert(key.clone(), Status::Failed);
                let msg = info
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "hook failed".into());
                c.failures.entry(key).or_insert(msg);
            }
            (_, event::Scenario::Finished) if cur.is_none() => {
                c.status.insert(key, Status::Passed);
            }
            _ => {}
        }
    }
}

impl Writer<World> for Collector {
    type Cli = cucumber::cli::Empty;

    async fn handle_event(
        &mut self,
        ev: parser::Result<Event<event::Cucumber<World>>>,
        _: &Self::Cli,
    ) {
        let ev = match ev {
            Ok(e) => e.value,
            Err(e) => {
                self.shared
                    .lock()
                    .expect("collector lock")
                    .parse_errors
                    .push(e.to_string());
                return;
            }
        };
        if let event::Cucumber::Feature(feat, fe) = ev {
            match fe {
                event::Feature::Scenario(sc, rs) => self.scenario_event(&feat, &sc, &rs.event),
                event::Feature::Rule(_, event::Rule::Scenario(sc, rs)) => {
                    self.scenario_event(&feat, &sc, &rs.event)
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub requirements: usize,
    pub passing: usize,
    pub failing: usize,
    pub gpu_skipped: usize,
    pub deferred: usize,
    pub not_implemented: usize,
    pub other_skipped: usize,
}

impl Totals {
    pub fn line(&self) -> String {
        format!(
            "requirements: {}, with passing scenarios: {}, failing: {}, GPU-only skipped: {}, deferred (post-M0): {}, not yet implemented: {}, other skipped: {}",
            self.requirements, self.passing, self.failing, self.gpu_skipped, self.deferred, self.not_implemented, self.other_skipped
        )
    }
}

/// The matrix as Markdown and the totals. Each requirement lands in exactly
/// one bucket: failing beats passing beats not-implemented beats the skips.
pub fn matrix(
    reqs: &[Req],
    scenarios: &[ScenarioInfo],
    status: &BTreeMap<Key, Status>,
    failures: &BTreeMap<Key, String>,
) -> (String, Totals) {
    let mut t = Totals {
        requirements: reqs.len(),
        ..Totals::default()
    };
    let mut md = String::from("\n# Requirement traceability\n\n");
    let mut rows = String::from("| requirement | level | flags | statement | verdict | scenarios |\n|---|---|---|---|---|---|\n");
    let mut fails = String::new();
    for r in reqs {
        let mine: Vec<(&ScenarioInfo, Status)> = scenarios
            .iter()
            .filter(|s| s.ids().any(|id| *id == r.id))
            .map(|s| {
                (
                    s,
                    status
                        .get(&(s.file.clone(), s.line))
                        .copied()
                        .unwrap_or(Status::NotRun),
                )
            })
            .collect();
        let best = mine
            .iter()
            .map(|(_, st)| *st)
            .min()
            .unwrap_or(Status::NotRun);
        match best {
            Status::Failed => t.failing += 1,
            Status::Passed => t.passing += 1,
            Status::NotImplemented => t.not_implemented += 1,
            Status::GpuSkipped => t.gpu_skipped += 1,
            Status::Deferred => t.deferred += 1,
            _ => t.other_skipped += 1,
        }
        let list: Vec<String> = mine
            .iter()
            .map(|(s, st)| {
                format!(
                    "{} › {} ({}:{}): **{}**",
                    s.feature,
                    s.name,
                    s.file,
                    s.line,
                    st.label()
                )
            })
            .collect();
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.id,
            r.level,
            r.flags,
            r.statement.replace('|', "\\|"),
            best.label(),
            list.join("<br>").replace('|', "\\|")
        ));
    }
    for (k, m) in failures {
        let first = m.lines().take(6).collect::<Vec<_>>().join(" / ");
        fails.push_str(&format!(
            "- {}:{} — {}\n",
            k.0,
            k.1,
            first.replace('|', "\\|")
        ));
    }
    md.push_str(&format!("Totals: {}\n\n", t.line()));
    md.push_str(&rows);
    if !fails.is_empty() {
        md.push_str("\n## Failures\n\n");
        md.push_str(&fails);
    }
    (md, t)
}
