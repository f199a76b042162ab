//! Requirement traceability (issues 2 and 10): which scenarios show which
//! requirement, by what kind of evidence, and what they showed in this run.
//!
//! The catalogue is `requirements/index.tsv` (format in `requirements/README.md`).
//! Scenarios name requirements by tag (`@WORKER-4210`). The run fails when an
//! ID has no scenario, when a tag names an unknown ID, when a tag is neither an
//! ID nor one of the known markers, or when the markers disagree with the
//! index flags (rules below). Statuses come from cucumber's own events (a
//! [`Collector`] writer): a scenario is *passed* only when every step passed; a
//! step with no matching definition makes it *not implemented*; scenarios not
//! run are *not applicable here*, with the reason, and never count as passed.
//!
//! Evidence buckets (decided by explicit markers, never guessed):
//! - `@source`: **static** evidence — the steps read files (source, docs,
//!   deploy units) or print help text; no worker is asked to do anything.
//! - `@unit`: **unit** evidence — in-process checks of code (the harness's own
//!   functions); no worker is spawned.
//! - anything else: **behavioural** evidence — the scenario spawns the worker
//!   binary (the harness checks that each passed one did).
//!
//! Consistency of markers and index flags (each breach fails the run):
//! 1. `@source` never goes with `@gpu`, `@gpu2`, `@smollm2`, `@snapshot` or
//!    `@unit`: a static check reads files and runs anywhere.
//! 2. `@gpu2` implies `@gpu`.
//! 3. A scenario is `@post-m0` exactly when every ID it names is flagged
//!    `POST-M0`: a deferred requirement leaves the deferred bucket, in the
//!    index and in its tags, in the same change that builds it.
//! 4. A requirement flagged `GPU` is shown on the GPU only: every behavioural
//!    or unit scenario naming it carries `@gpu`.
//! 5. A requirement not flagged `GPU` (and not `STATIC`) that has behavioural
//!    or unit scenarios has at least one without `@gpu`: a backend-independent
//!    behaviour is shown on the cpu backend too, so it is never "GPU only
//!    skipped" on a CPU run. A `@gpu` scenario may still name it, to show its
//!    device side (e.g. shutdown giving VRAM back, WORKER-4972).
//! 6. `STATIC` in the flags carries a one-line reason in the fifth column, and
//!    only then is there a fifth column.

use crate::steps::world::World;
use cucumber::{event, gherkin, parser, Event, Writer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tags that are not requirement IDs but mark how a scenario runs.
pub const MARKERS: &[&str] = &[
    "gpu", "gpu2", "post-m0", "root", "serial", "smollm2", "source", "snapshot", "unit",
];

/// Flags the index may carry (comma-separated, or `-` for none).
pub const FLAGS: &[&str] = &["GPU", "POST-M0", "STATIC"];

#[derive(Debug, Clone)]
pub struct Req {
    pub id: String,
    pub level: String,
    pub flags: String,
    pub statement: String,
    /// Why static evidence is the right evidence (only for `STATIC`).
    pub static_reason: Option<String>,
}

impl Req {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f.trim() == flag)
    }
}

/// One index line, or why it is malformed.
fn parse_req(line: &str) -> Result<Req, String> {
    let cols: Vec<&str> = line.split('\t').collect();
    if cols.len() != 4 && cols.len() != 5 {
        return Err(format!(
            "expected 4 tab-separated columns (5 with STATIC), found {}",
            cols.len()
        ));
    }
    let req = Req {
        id: cols[0].into(),
        level: cols[1].into(),
        flags: cols[2].into(),
        statement: cols[3].into(),
        static_reason: cols.get(4).map(|s| s.trim().to_string()),
    };
    if req.flags != "-" {
        for f in req.flags.split(',') {
            if !FLAGS.contains(&f.trim()) {
                return Err(format!("unknown flag {f:?} (known: {FLAGS:?} or -)"));
            }
        }
    }
    match (req.has_flag("STATIC"), &req.static_reason) {
        (true, None) => Err("STATIC needs a one-line reason in a fifth column".into()),
        (true, Some(r)) if r.is_empty() => Err("the STATIC reason is empty".into()),
        (false, Some(_)) => Err("a fifth column is only for the reason of a STATIC flag".into()),
        _ => Ok(req),
    }
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
        let req = parse_req(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if !seen.insert(req.id.clone()) {
            return Err(format!(
                "{}:{}: duplicate ID {}",
                path.display(),
                n + 1,
                req.id
            ));
        }
        out.push(req);
    }
    Ok(out)
}

/// What kind of evidence a scenario gives (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    Behavioural,
    Unit,
    Static,
}

impl Evidence {
    pub fn label(self) -> &'static str {
        match self {
            Evidence::Behavioural => "behavioural",
            Evidence::Unit => "unit",
            Evidence::Static => "static",
        }
    }
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
    pub fn evidence(&self) -> Evidence {
        if self.has("source") {
            Evidence::Static
        } else if self.has("unit") {
            Evidence::Unit
        } else {
            Evidence::Behavioural
        }
    }
    pub fn key(&self) -> Key {
        (self.file.clone(), self.line)
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

/// Marker and flag rules 1-5 of the module header; each breach is one line.
pub fn check_flags(reqs: &[Req], scenarios: &[ScenarioInfo]) -> Vec<String> {
    let by_id: BTreeMap<&str, &Req> = reqs.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut problems = Vec::new();
    for s in scenarios {
        let at = format!("{}:{} ({:?})", s.file, s.line, s.name);
        if s.has("source") {
            for m in ["gpu", "gpu2", "smollm2", "snapshot", "unit"] {
                if s.has(m) {
                    problems.push(format!("{at}: a @source scenario reads files and runs anywhere; drop @{m} or make it behavioural"));
                }
            }
        }
        if s.has("gpu2") && !s.has("gpu") {
            problems.push(format!("{at}: @gpu2 without @gpu"));
        }
        let reqs: Vec<&Req> = s
            .ids()
            .filter_map(|id| by_id.get(id.as_str()).copied())
            .collect();
        let deferred = reqs.iter().filter(|r| r.has_flag("POST-M0")).count();
        if s.has("post-m0") && deferred < reqs.len() {
            let now: Vec<&str> = reqs
                .iter()
                .filter(|r| !r.has_flag("POST-M0"))
                .map(|r| r.id.as_str())
                .collect();
            problems.push(format!(
                "{at}: tagged @post-m0 but {now:?} are not flagged POST-M0 in the index"
            ));
        }
        if !s.has("post-m0") && deferred > 0 {
            let later: Vec<&str> = reqs
                .iter()
                .filter(|r| r.has_flag("POST-M0"))
                .map(|r| r.id.as_str())
                .collect();
            problems.push(format!(
                "{at}: names {later:?}, flagged POST-M0 in the index, without @post-m0"
            ));
        }
        if s.evidence() != Evidence::Static && !s.has("gpu") {
            for r in reqs.iter().filter(|r| r.has_flag("GPU")) {
                problems.push(format!(
                    "{at}: {} is flagged GPU in the index but this scenario runs without @gpu",
                    r.id
                ));
            }
        }
    }
    for r in reqs
        .iter()
        .filter(|r| !r.has_flag("GPU") && !r.has_flag("STATIC"))
    {
        let shown: Vec<&ScenarioInfo> = scenarios
            .iter()
            .filter(|s| s.evidence() != Evidence::Static && s.ids().any(|id| *id == r.id))
            .collect();
        if !shown.is_empty() && shown.iter().all(|s| s.has("gpu")) {
            problems.push(format!(
                "{} is not flagged GPU in the index but every scenario showing it is @gpu: show its backend-independent part on the cpu backend, or flag it GPU",
                r.id
            ));
        }
    }
    problems
}

/// What one scenario showed in this run. Everything after `NotImplemented` is
/// "not applicable here" with its reason: never passed, never failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Failed,
    Passed,
    NotImplemented,
    GpuSkipped,
    NeedsTwoGpus,
    Deferred,
    NoSource,
    NoModel,
    CpuOnly,
    /// `@root`: privilege handling that only a root-started worker shows.
    NeedsRoot,
    NotSelected,
    NotRun,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Failed => "failed",
            Status::Passed => "passed",
            Status::NotImplemented => "not implemented",
            Status::GpuSkipped => "not applicable here (GPU only)",
            Status::NeedsTwoGpus => "needs 2 GPUs",
            Status::Deferred => "deferred (post-M0)",
            Status::NoSource => "not applicable here (no source tree)",
            Status::NoModel => "not applicable here (model not installed)",
            Status::CpuOnly => "not applicable here (CPU-path snapshot)",
            Status::NeedsRoot => "not applicable here (needs root)",
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
