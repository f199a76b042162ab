//! Prometheus metrics steps (WORKER-4810-4812, 4305, SCHEDULER-M0-002).
//! The exposition text is parsed into sample name → summed value, so a
//! counter is compared across a job without caring about its labels.

use crate::steps::http::{quoted_list, send, Auth};
use crate::steps::world::World;
use cucumber::{then, when};
use std::collections::BTreeMap;

pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *m.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

async fn scrape(w: &mut World) -> (String, BTreeMap<String, f64>) {
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    w.check(
        r.status == 200,
        format!("GET /metrics answered {}", r.status),
    );
    let m = parse(&r.text);
    (r.text, m)
}

#[when("I read the metrics")]
async fn read(w: &mut World) {
    let (_, m) = scrape(w).await;
    w.metrics_before = Some(m);
}

fn has_family(text: &str, m: &BTreeMap<String, f64>, fam: &str) -> bool {
    let base = fam.strip_suffix("_total").unwrap_or(fam);
    m.contains_key(fam)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| m.contains_key(&format!("{fam}{s}")))
        || text.lines().any(|l| {
            l.starts_with(&format!("# TYPE {base} ")) || l.starts_with(&format!("# TYPE {fam} "))
        })
}

#[then(regex = r#"^the metrics text has the families (.+)$"#)]
fn families(w: &mut World, list: String) {
    let text = w.last().text.clone();
    let m = parse(&text);
    for f in quoted_list(&list) {
        w.check(
            has_family(&text, &m, &f),
            format!("/metrics has no family {f}"),
        );
    }
}

async fn delta(w: &mut World, name: &str) -> f64 {
    let Some(before) = w.metrics_before.clone() else {
        w.fail("the metrics were not read before")
    };
    let (_, now) = scrape(w).await;
    w.check(
        now.contains_key(name),
        format!("/metrics has no sample {name}"),
    );
    now.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

#[then(regex = r#"^the metric "([^"]+)" increased by (\d+)$"#)]
async fn increased(w: &mut World, name: String, n: f64) {
    let d = delta(w, &name).await;
    w.check(d == n, format!("{name} changed by {d}, expected {n}"));
}

#[then(regex = r#"^the metric "([^"]+)" increased by the number of token events$"#)]
async fn increased_tokens(w: &mut World, name: String) {
    let n = w.stream().tokens().len() as f64;
    let d = delta(w, &name).await;
    w.check(
        d == n,
        format!("{name} changed by {d}, but {n} token events arrived"),
    );
}

#[then(regex = r#"^the metric "([^"]+)" is unchanged$"#)]
async fn unchanged(w: &mut World, name: String) {
    let d = delta(w, &name).await;
    w.check(d == 0.0, format!("{name} changed by {d}"));
}

#[then(regex = r#"^the metric "([^"]+)" is positive$"#)]
async fn positive(w: &mut World, name: String) {
    let (_, m) = scrape(w).await;
    let v = m.get(&name).copied();
    w.check(v.is_some_and(|v| v > 0.0), format!("{name} is {v:?}"));
}

#[then(regex = r#"^the metrics have a positive "([^"]+)" sample labelled "([^"]+)"$"#)]
async fn labelled_positive(w: &mut World, name: String, label: String) {
    let r = send(w, "GET", "/metrics", None, Auth::None).await;
    let ok = r.text.lines().any(|l| {
        l.starts_with(&format!("{name}{{"))
            && l.contains(&format!("\"{label}\""))
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    });
    w.check(ok, format!("no positive {name} sample labelled {label:?}"));
}
