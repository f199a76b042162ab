//! The shipped deployment files, parsed rather than grepped (WORKER-4903,
//! 4921): the systemd unit's `key=value` directives and the AppArmor
//! profile's rules (profile name, attachment, flags, file rules with their
//! permission letters, capability/ptrace/mount/network rules). The checks
//! ask what the profile *grants* for concrete paths the worker uses, so a
//! rule that widens access (say `w` on the model root) turns them red. These
//! are static checks of shipped files: their scenarios are tagged @source.

use crate::steps::world::{ctx, World};
use cucumber::{given, then};
use std::collections::{BTreeMap, BTreeSet};

/// The unit: (section, key) → every value given, in order.
#[derive(Debug, Clone, Default)]
pub struct Unit(pub BTreeMap<(String, String), Vec<String>>);

impl Unit {
    pub fn parse(text: &str) -> Result<Unit, String> {
        let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut section = String::new();
        let mut pending = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_empty()
                && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
            {
                continue;
            }
            // A trailing backslash continues the directive on the next line.
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let full = std::mem::take(&mut pending) + line;
            if let Some(s) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = full
                .split_once('=')
                .ok_or_else(|| format!("line {}: {raw:?} is not key=value", n + 1))?;
            if section.is_empty() {
                return Err(format!(
                    "line {}: {raw:?} comes before any [section]",
                    n + 1
                ));
            }
            m.entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
        Ok(Unit(m))
    }

    /// Every value of `key` in `section`.
    pub fn all(&self, section: &str, key: &str) -> Vec<String> {
        self.0
            .get(&(section.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// The effective (last) value of `key`, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        self.all(section, key).last().cloned()
    }
}

/// One rule of an AppArmor profile.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    File {
        deny: bool,
        owner: bool,
        path: String,
        perms: BTreeSet<char>,
    },
    /// `capability [names]`; empty names means every capability.
    Capability {
        deny: bool,
        names: Vec<String>,
    },
    Network {
        deny: bool,
        words: Vec<String>,
    },
    /// ptrace, mount, umount, signal, pivot_root, ...: the keyword and the rest.
    Other {
        deny: bool,
        kind: String,
        rest: String,
    },
    Include(String),
}

#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    pub attachment: String,
    pub flags: Vec<String>,
    pub rules: Vec<Rule>,
}

/// `@{PROC}` and `@{pid}` as the system tunables define them.
fn expand_vars(p: &str) -> String {
    p.replace("@{PROC}", "/proc").replace("@{pid}", "{[0-9]*}")
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let mut deny = false;
    let mut owner = false;
    while let Some(q) = words.first() {
        match *q {
            "deny" => deny = true,
            "audit" | "allow" => {}
            "owner" => owner = true,
            _ => break,
        }
        words.remove(0);
    }
    let Some(first) = words.first().copied() else {
        return Err(format!("empty rule {text:?}"));
    };
    let rest = words[1..].join(" ");
    Ok(match first {
        "include" | "#include" => Rule::Include(rest),
        "capability" => Rule::Capability {
            deny,
            names: words[1..].iter().map(|s| s.to_string()).collect(),
        },
        "network" => Rule::Network {
            deny,
            words: words[1..].iter().map(|s| s.to_string()).collect(),
        },
        p if p.starts_with('/') || p.starts_with("@{") => {
            let [path, perms] = words[..] else {
                return Err(format!("file rule {text:?} is not PATH PERMS"));
            };
            let perms: BTreeSet<char> = perms.chars().collect();
            if let Some(c) = perms.iter().find(|c| !"rwakmlixpucUPC".contains(**c)) {
                return Err(format!(
                    "file rule {text:?} has an unknown permission {c:?}"
                ));
            }
            Rule::File {
                deny,
                owner,
                path: expand_vars(path),
                perms,
            }
        }
        kind => Rule::Other {
            deny,
            kind: kind.to_string(),
            rest,
        },
    })
}

impl Profile {
    /// The first `profile NAME ATTACHMENT [flags=(...)] { ... }` block.
    pub fn parse(text: &str) -> Result<Profile, String> {
        let body: String = text
            .lines()
            .map(|l| match l.find('#') {
                // `#include` is the old include syntax, not a comment.
                Some(i) if !l.trim_start().starts_with("#include") => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let start = body
            .find("profile ")
            .ok_or("no `profile NAME PATH {` block")?;
        let open = body[start..].find('{').ok_or("the profile has no `{`")? + start;
        let close = body
            .rfind('}')
            .filter(|&c| c > open)
            .ok_or("the profile has no `}`")?;
        let head: Vec<&str> = body[start..open].split_whitespace().collect();
        let mut p = Profile::default();
        match head.as_slice() {
            ["profile", name, attach, rest @ ..] if attach.starts_with('/') => {
                p.name = name.to_string();
                p.attachment = attach.to_string();
                let flags = rest.join(" ");
                if let Some(f) = flags
                    .strip_prefix("flags=(")
                    .and_then(|f| f.strip_suffix(')'))
                {
                    p.flags = f
                        .split([',', ' '])
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                } else if !flags.is_empty() {
                    return Err(format!("unexpected profile header {head:?}"));
                }
            }
            _ => return Err(format!("the header {head:?} is not `profile NAME /PATH`")),
        }
        // Includes end at the line, not at a comma.
        let mut inner = String::new();
        for line in body[open + 1..close].lines() {
            let t = line.trim();
            match t
                .strip_prefix("include ")
                .or_else(|| t.strip_prefix("#include "))
            {
                Some(what) => p.rules.push(Rule::Include(what.trim().to_string())),
                None => {
                    inner.push_str(line);
                    inner.push('\n');
                }
            }
        }
        for stmt in inner.split(',') {
            let s = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
            if s.is_empty() {
                continue;
            }
            // A `signal (...) set=(a, b)` rule has commas inside parentheses:
            // glue the pieces back onto the previous rule.
            if let Some(Rule::Other { rest, .. }) = p.rules.last_mut() {
                if rest.matches('(').count() > rest.matches(')').count() {
                    rest.push_str(", ");
                    rest.push_str(&s);
                    continue;
                }
            }
            p.rules.push(parse_rule(&s)?);
        }
        Ok(p)
    }

    /// Permissions granted to this process on `path` (allow rules minus deny
    /// rules). `owner` rules count: the worker owns what it creates.
    pub fn grants(&self, path: &str) -> BTreeSet<char> {
        let mut allow = BTreeSet::new();
        let mut deny = BTreeSet::new();
        for r in &self.rules {
            if let Rule::File {
                deny: d,
                path: g,
                perms,
                ..
            } = r
            {
                if glob_match(g, path) {
                    let set = if *d { &mut deny } else { &mut allow };
                    set.extend(perms.iter().copied());
                }
            }
        }
        allow.retain(|c| !deny.contains(c));
        allow
    }

    pub fn file_rules(&self) -> impl Iterator<Item = (&String, &BTreeSet<char>, bool)> {
        self.rules.iter().filter_map(|r| match r {
            Rule::File {
                deny, path, perms, ..
            } => Some((path, perms, *deny)),
            _ => None,
        })
    }

    pub fn denies(&self, kind: &str) -> bool {
        self.rules.iter().any(|r| match r {
            Rule::Other {
                deny,
                kind: k,
                rest,
            } => *deny && k == kind && rest.is_empty(),
            Rule::Capability { deny, names } => *deny && kind == "capability" && names.is_empty(),
            _ => false,
        })
    }
}

/// AppArmor globbing: `**` any run, `*` any run without `/`, `?` one
/// non-`/` char, `[..]` a class, `{a,b}` alternatives.
pub fn glob_match(glob: &str, path: &str) -> bool {
    if let Some(open) = glob.find('{') {
        let Some(len) = glob[open..].find('}') else {
            return false;
        };
        let (pre, alts, post) = (
            &glob[..open],
            &glob[open + 1..open + len],
            &glob[open + len + 1..],
        );
        return alts
            .split(',')
            .any(|a| glob_match(&format!("{pre}{a}{post}"), path));
    }
    fn m(g: &[u8], p: &[u8]) -> bool {
        match g {
            [] => p.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=p.len()).any(|i| m(rest, &p[i..])),
            [b'*', rest @ ..] => (0..=p.len())
                .take_while(|&i| i == 0 || p[i - 1] != b'/')
                .any(|i| m(rest, &p[i..])),
            [b'?', rest @ ..] => p.first().is_some_and(|&c| c != b'/') && m(rest, &p[1..]),
            [b'[', rest @ ..] => {
                let Some(end) = rest.iter().position(|&c| c == b']') else {
                    return false;
                };
                let class = &rest[..end];
                let hit = p.first().is_some_and(|&c| {
                    class
                        .windows(3)
                        .any(|w| w[1] == b'-' && w[0] <= c && c <= w[2])
                        || class.contains(&c)
                });
                hit && m(&rest[end + 1..], &p[1..])
            }
            [c, rest @ ..] => p.first() == Some(c) && m(rest, &p[1..]),
        }
    }
    m(glob.as_bytes(), path.as_bytes())
}

/// The literal directory part of a glob, before its first pattern character.
fn literal_prefix(glob: &str) -> &str {
    let end = glob.find(['*', '?', '[', '{']).unwrap_or(glob.len());
    &glob[..end]
}

/// The two parsed files a scenario checks.
#[derive(Debug, Clone, Default)]
pub struct Deploy {
    pub unit: Unit,
    pub profile: Profile,
}

fn read_repo(w: &World, rel: &str) -> String {
    let p = ctx().repo_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| w.fail(format!("cannot read {rel}: {e}")))
}

fn deploy(w: &World) -> &Deploy {
    match &w.deploy {
        Some(d) => d,
        None => w.fail("no deployment files were read (missing Given step)"),
    }
}

/// The unit's value of `key` in [Service], which must be set.
fn service(w: &World, key: &str) -> String {
    match deploy(w).unit.get("Service", key) {
        Some(v) => v,
        None => w.fail(format!("the unit does not set {key}= in [Service]")),
    }
}

#[given(regex = r#"^the systemd unit "([^"]+)" and the AppArmor profile "([^"]+)"$"#)]
fn read_files(w: &mut World, unit: String, profile: String) {
    let u = Unit::parse(&read_repo(w, &unit)).unwrap_or_else(|e| w.fail(format!("{unit}: {e}")));
    let p = Profile::parse(&read_repo(w, &profile))
        .unwrap_or_else(|e| w.fail(format!("{profile}: {e}")));
    w.deploy = Some(Deploy {
        unit: u,
        profile: p,
    });
}

/// WORKER-4903: the documented start is unprivileged and cannot gain privileges.
#[then(
    regex = r#"^the unit runs the worker as the non-root user "([^"]+)" with no capabilities and no way to gain any$"#
)]
fn unit_unprivileged(w: &mut World, user: String) {
    for (key, want) in [
        ("User", user.as_str()),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
    ] {
        let got = service(w, key);
        w.check(
            got == want,
            format!("[Service] {key}={got:?}, expected {want:?}"),
        );
    }
    w.check(
        user != "root" && user != "0",
        format!("User={user} is root"),
    );
}

/// The credential the worker reads under `$CREDENTIALS_DIRECTORY`.
#[then(regex = r#"^the unit delivers the token as the systemd credential "([^"]+)"$"#)]
fn unit_credential(w: &mut World, name: String) {
    let creds = deploy(w).unit.all("Service", "LoadCredential");
    let hit = creds
        .iter()
        .find(|c| c.split_once(':').is_some_and(|(n, _)| n == name));
    w.check(
        hit.is_some(),
        format!("no LoadCredential={name}:PATH among {creds:?}"),
    );
    let env = deploy(w).unit.all("Service", "Environment");
    w.check(
        !env.iter().any(|e| e.contains("TOKEN=")),
        format!("a token variable is set in the environment: {env:?}"),
    );
}

/// The binary the unit starts (first word of ExecStart, prefixes removed).
fn exec_binary(w: &World) -> String {
    let exec = service(w, "ExecStart");
    exec.split_whitespace()
        .next()
        .map(|b| b.trim_start_matches(['-', '@', ':', '+', '!']).to_string())
        .unwrap_or_default()
}

#[then("the profile is enforced and attaches to the binary the unit starts")]
fn profile_attaches(w: &mut World) {
    let bin = exec_binary(w);
    let p = &deploy(w).profile;
    w.check(
        p.attachment == bin,
        format!(
            "the profile attaches to {:?}, the unit starts {bin:?}",
            p.attachment
        ),
    );
    w.check(
        !p.flags.iter().any(|f| f == "complain" || f == "unconfined"),
        format!("the profile's flags are {:?}", p.flags),
    );
    let g = p.grants(&bin);
    w.check(
        g.contains(&'r') && !g.contains(&'w') && !g.contains(&'a'),
        format!("the profile grants {g:?} on the worker binary, expected read without write"),
    );
}

/// A model file, the configuration and the token are readable and not
/// writable. Paths come from the unit: ReadOnlyPaths (the model root),
/// ExecStart's `--config`, LoadCredential (source and delivered copy).
#[then("under the profile the model root, the configuration and the token are readable but not writable")]
fn profile_read_only(w: &mut World) {
    let d = deploy(w).clone();
    let instance = "0";
    let root = service(w, "ReadOnlyPaths");
    let exec = service(w, "ExecStart").replace("%i", instance);
    let config = exec
        .split_whitespace()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap_or_else(|| w.fail(format!("ExecStart has no --config: {exec}")))
        .to_string();
    let cred = d
        .unit
        .all("Service", "LoadCredential")
        .into_iter()
        .find_map(|c| {
            c.split_once(':')
                .map(|(n, s)| (n.to_string(), s.to_string()))
        })
        .unwrap_or_else(|| w.fail("the unit has no LoadCredential"));
    let unit_name = format!("worker-orcd@{instance}.service");
    let paths = [
        format!("{}/model.gguf", root.trim_end_matches('/')),
        format!("{}/pool-a/model.gguf.sig", root.trim_end_matches('/')),
        config,
        cred.1.clone(),
        format!("/run/credentials/{unit_name}/{}", cred.0),
    ];
    for path in &paths {
        let g = d.profile.grants(path);
        w.check(
            g.contains(&'r'),
            format!("the profile does not let the worker read {path} (grants {g:?})"),
        );
        let extra: Vec<&char> = g.iter().filter(|c| !"rm".contains(**c)).collect();
        w.check(
            extra.is_empty(),
            format!("the profile grants {extra:?} beyond read on {path}"),
        );
    }
}

/// Every rule that grants `w` or `a` must lie inside a place the unit makes
/// writable for this worker: its CacheDirectory, StateDirectory, private
/// /tmp, or a device node it allows with `w`.
#[then("under the profile the worker may write only where the unit gives it a writable directory or device")]
fn profile_writes(w: &mut World) {
    let d = deploy(w).clone();
    let mut places: Vec<String> = Vec::new();
    for (key, base) in [
        ("CacheDirectory", "/var/cache/"),
        ("StateDirectory", "/var/lib/"),
    ] {
        for v in d.unit.all("Service", key) {
            for dir in v.split_whitespace() {
                // `worker-orcd/%i`: the profile may cover every instance.
                let top = dir.split('/').next().unwrap_or(dir);
                places.push(format!("{base}{top}/"));
            }
        }
    }
    if d.unit.get("Service", "PrivateTmp").as_deref() == Some("yes") {
        places.push("/tmp/".into());
    }
    let devices: Vec<String> = d
        .unit
        .all("Service", "DeviceAllow")
        .iter()
        .filter_map(|v| v.split_once(' '))
        .filter(|(_, m)| m.contains('w'))
        .map(|(p, _)| p.replace("%i", "0"))
        .collect();
    for (path, perms, deny) in d.profile.file_rules() {
        if deny || !perms.iter().any(|c| "wa".contains(*c)) {
            continue;
        }
        let prefix = literal_prefix(path);
        let in_place = places.iter().any(|pl| prefix.starts_with(pl.as_str()));
        let is_device = prefix.starts_with("/dev/")
            && devices
                .iter()
                .any(|dev| glob_match(path, dev) || dev == path);
        w.check(
            in_place || is_device,
            format!(
                "the profile grants {perms:?} on {path}, outside every writable place of the unit {places:?} \
                 and its writable devices {devices:?}"
            ),
        );
    }
}

#[then("the profile denies capabilities, ptrace, mount and the execution of other programs")]
fn profile_denies(w: &mut World) {
    let p = deploy(w).profile.clone();
    for kind in ["capability", "ptrace", "mount", "umount"] {
        w.check(
            p.denies(kind),
            format!("the profile has no bare `deny {kind},` rule"),
        );
    }
    for r in &p.rules {
        if let Rule::Capability { deny: false, names } = r {
            w.fail(format!("the profile allows capabilities {names:?}"));
        }
    }
    for (path, perms, deny) in p.file_rules() {
        let exec: Vec<&char> = perms.iter().filter(|c| "ixpucUPC".contains(**c)).collect();
        w.check(
            deny || exec.is_empty(),
            format!("the profile lets the worker execute {path} ({exec:?})"),
        );
    }
}

#[then("the profile allows TCP over IPv4 and IPv6 and no raw sockets")]
fn profile_network(w: &mut World) {
    let p = deploy(w).profile.clone();
    let allowed: Vec<Vec<String>> = p
        .rules
        .iter()
        .filter_map(|r| match r {
            Rule::Network { deny: false, words } => Some(words.clone()),
            _ => None,
        })
        .collect();
    for fam in ["inet", "inet6"] {
        w.check(
            allowed.iter().any(|ws| {
                ws.first().map(String::as_str) == Some(fam)
                    && ws.get(1).map(String::as_str) == Some("stream")
            }),
            format!("no `network {fam} stream,` rule among {allowed:?}"),
        );
    }
    w.check(
        !allowed
            .iter()
            .any(|ws| ws.is_empty() || ws.iter().any(|x| x == "raw" || x == "packet")),
        format!("the profile allows all or raw networking: {allowed:?}"),
    );
}
