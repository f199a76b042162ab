//! The traceability verdicts, totals and Markdown matrix (issue 10 point 3).
//!
//! A requirement's verdict is computed from the scenarios that count as its
//! evidence: behavioural and unit scenarios, plus static ones only when the
//! index flags the requirement `STATIC` (with a reason). So a passing source
//! grep never makes a behavioural requirement pass, and never masks its
//! skipped behavioural scenario: that requirement is then "GPU only" (or
//! whatever kept its scenarios from running), and one whose only scenarios
//! are static is reported as "static evidence only", not as passing.
//! Any failed scenario naming a requirement, static ones included, makes it
//! failing. Every requirement lands in exactly one bucket.

use crate::steps::traceability::{Evidence, Key, Req, ScenarioInfo, Status};
use std::collections::BTreeMap;

/// The bucket of one requirement in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Failing,
    /// Passed, on the strongest evidence that passed.
    Passing(Evidence),
    /// Not STATIC, yet only static scenarios name it: not counted as passing.
    StaticOnly,
    NotImplemented,
    /// Its counted scenarios did not run here; the status says why.
    NotApplicable(Status),
}

impl Verdict {
    pub fn label(self) -> String {
        match self {
            Verdict::Failing => "failing".into(),
            Verdict::Passing(e) => format!("passing ({} evidence)", e.label()),
            Verdict::StaticOnly => "static evidence only (not counted as passing)".into(),
            Verdict::NotImplemented => "not implemented".into(),
            Verdict::NotApplicable(s) => s.label().into(),
        }
    }
}

/// The verdict of `req` from its scenarios and their statuses.
pub fn verdict(req: &Req, mine: &[(&ScenarioInfo, Status)]) -> Verdict {
    if mine.iter().any(|(_, st)| *st == Status::Failed) {
        return Verdict::Failing;
    }
    let counted: Vec<(Evidence, Status)> = mine
        .iter()
        .map(|(s, st)| (s.evidence(), *st))
        .filter(|(e, _)| *e != Evidence::Static || req.has_flag("STATIC"))
        .collect();
    if counted.is_empty() {
        return Verdict::StaticOnly;
    }
    if let Some(best) = counted
        .iter()
        .filter(|(_, st)| *st == Status::Passed)
        .map(|(e, _)| *e)
        .min()
    {
        return Verdict::Passing(best);
    }
    let st = counted
        .iter()
        .map(|(_, st)| *st)
        .min()
        .unwrap_or(Status::NotRun);
    match st {
        Status::NotImplemented => Verdict::NotImplemented,
        other => Verdict::NotApplicable(other),
    }
}

#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub requirements: usize,
    pub passing_behavioural: usize,
    pub passing_unit: usize,
    pub passing_static: usize,
    pub failing: usize,
    pub static_only: usize,
    pub not_implemented: usize,
    pub gpu_only: usize,
    pub needs_gpus: usize,
    pub deferred: usize,
    pub other_skipped: usize,
    /// Scenarios per evidence bucket: (run and passed, named in the features).
    pub scenarios: BTreeMap<&'static str, (usize, usize)>,
}

impl Totals {
    fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Failing => self.failing += 1,
            Verdict::Passing(Evidence::Behavioural) => self.passing_behavioural += 1,
            Verdict::Passing(Evidence::Unit) => self.passing_unit += 1,
            Verdict::Passing(Evidence::Static) => self.passing_static += 1,
            Verdict::StaticOnly => self.static_only += 1,
            Verdict::NotImplemented => self.not_implemented += 1,
            Verdict::NotApplicable(Status::GpuSkipped) => self.gpu_only += 1,
            Verdict::NotApplicable(Status::NeedsTwoGpus) => self.needs_gpus += 1,
            Verdict::NotApplicable(Status::Deferred) => self.deferred += 1,
            Verdict::NotApplicable(_) => self.other_skipped += 1,
        }
    }

    pub fn passing(&self) -> usize {
        self.passing_behavioural + self.passing_unit + self.passing_static
    }

    /// The one-line summary `ci/test` greps for (`^requirements: [0-9]+`).
    pub fn line(&self) -> String {
        let sc = |k: &str| self.scenarios.get(k).copied().unwrap_or((0, 0));
        let (bp, bn) = sc("behavioural");
        let (up, un) = sc("unit");
        let (sp, sn) = sc("static");
        format!(
            "requirements: {}, passing: {} (behavioural {}, unit {}, static by design {}), failing: {}, \
             static evidence only: {}, not implemented: {}, GPU only (not applicable here): {}, \
             needs more GPUs: {}, deferred (post-M0): {}, other not applicable: {}; \
             scenarios passed/named: behavioural {bp}/{bn}, unit {up}/{un}, static {sp}/{sn}",
            self.requirements,
            self.passing(),
            self.passing_behavioural,
            self.passing_unit,
            self.passing_static,
            self.failing,
            self.static_only,
            self.not_implemented,
            self.gpu_only,
            self.needs_gpus,
            self.deferred,
            self.other_skipped,
        )
    }
}

fn status_of(status: &BTreeMap<Key, Status>, s: &ScenarioInfo) -> Status {
    status.get(&s.key()).copied().unwrap_or(Status::NotRun)
}

/// The matrix as Markdown and the totals.
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
    for s in scenarios {
        let e = t.scenarios.entry(s.evidence().label()).or_default();
        e.1 += 1;
        if status_of(status, s) == Status::Passed {
            e.0 += 1;
        }
    }
    let mut rows = String::from(
        "| requirement | level | flags | statement | verdict | scenarios |\n|---|---|---|---|---|---|\n",
    );
    let mut statics = String::new();
    for r in reqs {
        let mine: Vec<(&ScenarioInfo, Status)> = scenarios
            .iter()
            .filter(|s| s.ids().any(|id| *id == r.id))
            .map(|s| (s, status_of(status, s)))
            .collect();
        let v = verdict(r, &mine);
        t.add(v);
        if let Some(why) = &r.static_reason {
            statics.push_str(&format!("- {}: {}\n", r.id, why.replace('|', "\\|")));
        }
        let list: Vec<String> = mine
            .iter()
            .map(|(s, st)| {
                format!(
                    "{} › {} ({}:{}, {}): **{}**",
                    s.feature,
                    s.name,
                    s.file,
                    s.line,
                    s.evidence().label(),
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
            v.label(),
            list.join("<br>").replace('|', "\\|")
        ));
    }
    let mut md = String::from("\n# Requirement traceability\n\n");
    md.push_str(&format!("Totals: {}\n\n", t.line()));
    md.push_str(
        "Evidence: behavioural = a scenario that spawns the worker; unit = an in-process \
         check of code (`@unit`); static = a source or document check (`@source`). Static \
         evidence counts only for the requirements below, flagged STATIC in the index.\n\n",
    );
    md.push_str("## Requirements shown by static evidence by design\n\n");
    md.push_str(if statics.is_empty() {
        "(none)\n"
    } else {
        &statics
    });
    md.push_str("\n## Matrix\n\n");
    md.push_str(&rows);
    if !failures.is_empty() {
        md.push_str("\n## Failures\n\n");
        for (k, m) in failures {
            let first = m.lines().take(6).collect::<Vec<_>>().join(" / ");
            md.push_str(&format!(
                "- {}:{} — {}\n",
                k.0,
                k.1,
                first.replace('|', "\\|")
            ));
        }
    }
    (md, t)
}
