//! Source-tree inspections for requirements that are about the code itself
//! (WORKER-4010, 4013, 4021, 4201, 4400, 4403, 4713, 4950, deploy files).
//! Scenarios using these are tagged @source and need the repository checkout.

use crate::steps::world::{ctx, World};
use cucumber::then;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    let repo = ctx().repo.clone().unwrap_or_default();
    p.strip_prefix(&repo).unwrap_or(p).display().to_string()
}

/// Code lines only: `//` comments are dropped so a comment about fork() is no call.
fn code_of(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `p` is test code, which never ships in the worker: a
/// `tests.rs` / `*_tests.rs` file, or a module its parent declares under
/// `#[cfg(test)]` (and everything below such a module).
fn is_test_code(p: &Path) -> bool {
    let r = rel(p);
    if r.ends_with("/tests.rs") || r.ends_with("_tests.rs") {
        return true;
    }
    let mut file = p.to_path_buf();
    while let Some(dir) = file.parent().map(Path::to_path_buf) {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        // The module's name and the file that declares it: `x/mod.rs` is
        // declared by `x`'s parent folder's mod.rs (or lib.rs), `x/y.rs` by
        // `x/mod.rs`.
        let (name, parent_dir) = if stem == "mod" {
            let Some(n) = dir.file_name().and_then(|s| s.to_str()) else {
                return false;
            };
            let Some(pd) = dir.parent() else { return false };
            (n.to_string(), pd.to_path_buf())
        } else {
            (stem.to_string(), dir.clone())
        };
        let declaring = ["mod.rs", "lib.rs", "main.rs"]
            .iter()
            .map(|f| parent_dir.join(f))
            .find(|f| f.exists() && *f != file);
        let Some(declaring) = declaring else {
            return false;
        };
        let text = std::fs::read_to_string(&declaring).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let declared_under_test = lines.iter().enumerate().any(|(i, l)| {
            (*l == format!("mod {name};")
                || *l == format!("pub mod {name};")
                || *l == format!("pub(crate) mod {name};"))
                && i > 0
                && lines[i - 1] == "#[cfg(test)]"
        });
        if declared_under_test {
            return true;
        }
        if declaring
            .file_name()
            .is_some_and(|f| f == "lib.rs" || f == "main.rs")
        {
            return false;
        }
        file = declaring;
    }
    false
}

fn uses_unsafe(code: &str) -> bool {
    code.contains("unsafe {")
        || code.contains("unsafe fn")
        || code.contains("unsafe impl")
        || code.contains("allow(unsafe_code)")
}

#[then(regex = r#"^only the files under "([^"]+)" allow unsafe code$"#)]
fn unsafe_confined(w: &mut World, dir: String) {
    let repo = ctx().repo_path("");
    for p in rust_files(&repo.join("src")) {
        let r = rel(&p);
        if r.starts_with(&dir) || r == "src/lib.rs" {
            continue;
        }
        w.check(
            !uses_unsafe(&code_of(&p)),
            format!("{r} uses unsafe code outside the boundary"),
        );
    }
}

#[then("the crate root denies unsafe code")]
fn root_denies(w: &mut World) {
    let lib = std::fs::read_to_string(ctx().repo_path("src/lib.rs")).unwrap_or_default();
    w.check(
        lib.contains("#![deny(unsafe_code)]") || lib.contains("#![forbid(unsafe_code)]"),
        "src/lib.rs does not deny unsafe code",
    );
}

#[then(regex = r#"^every unsafe block in "([^"]+)" is preceded by a SAFETY comment$"#)]
fn safety_comments(w: &mut World, dir: String) {
    for p in rust_files(&ctx().repo_path(&dir)) {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let code = l.split("//").next().unwrap_or("");
            if !code.contains("unsafe {") && !code.contains("unsafe impl") {
                continue;
            }
            let window = &lines[i.saturating_sub(6)..=i];
            let ok = window.iter().any(|x| x.contains("SAFETY:"));
            w.check(
                ok,
                format!(
                    "{}:{} has an unsafe block without a SAFETY comment",
                    rel(&p),
                    i + 1
                ),
            );
        }
    }
}

#[then(regex = r#"^the source under "([^"]+)" never calls "([^"]+)"(?: outside "([^"]+)")?$"#)]
fn never_calls(w: &mut World, dir: String, call: String, except: String) {
    for p in rust_files(&ctx().repo_path(&dir)) {
        let r = rel(&p);
        // Test code may spawn processes; only what ships in the worker counts.
        if is_test_code(&p) || (!except.is_empty() && r.starts_with(&except)) {
            continue;
        }
        w.check(!code_of(&p).contains(&call), format!("{r} calls {call}"));
    }
}

#[then(regex = r#"^the source under "([^"]+)" uses "([^"]+)" for the token comparison$"#)]
fn uses_crate(w: &mut World, dir: String, krate: String) {
    let found = rust_files(&ctx().repo_path(&dir))
        .iter()
        .any(|p| code_of(p).contains(&format!("{krate}::")));
    w.check(found, format!("no file under {dir} uses {krate}"));
}

#[then(
    regex = r#"^the source under "([^"]+)" maps (?:driver errors|allocation failures) to "([A-Z_]+)"$"#
)]
fn maps_to(w: &mut World, dir: String, code: String) {
    let needles: &[&str] = match code.as_str() {
        "CUDA_ERROR" => &["CudaError", "WorkerError::cuda("],
        "VRAM_OOM" => &["VramOom"],
        _ => w.fail(format!("no mapping known for {code}")),
    };
    let found = rust_files(&ctx().repo_path(&dir)).iter().any(|p| {
        let c = code_of(p);
        needles.iter().any(|n| c.contains(n))
    });
    w.check(found, format!("nothing under {dir} produces {code}"));
}

#[then(regex = r#"^the file "([^"]+)" (?:mentions|contains) "([^"]+)"$"#)]
fn file_mentions(w: &mut World, file: String, text: String) {
    let p = ctx().repo_path(&file);
    let body =
        std::fs::read_to_string(&p).unwrap_or_else(|e| w.fail(format!("cannot read {file}: {e}")));
    w.check(
        body.to_lowercase().contains(&text.to_lowercase()),
        format!("{file} does not mention {text:?}"),
    );
}

#[then(regex = r#"^the file "([^"]+)" declares the codes (.+)$"#)]
fn declares_codes(w: &mut World, file: String, list: String) {
    let body = std::fs::read_to_string(ctx().repo_path(&file)).unwrap_or_default();
    for c in crate::steps::http::quoted_list(&list) {
        w.check(
            body.contains(&format!("\"{c}\"")),
            format!("{file} does not declare {c}"),
        );
    }
}

#[then(regex = r#"^the folder "([^"]+)" holds the kernel sources (.+)$"#)]
fn kernel_sources(w: &mut World, dir: String, list: String) {
    let names: Vec<String> = std::fs::read_dir(ctx().repo_path(&dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for k in crate::steps::http::quoted_list(&list) {
        w.check(
            names.iter().any(|n| n.contains(&k) && n.ends_with(".cu")),
            format!("{dir} has no {k}*.cu"),
        );
    }
}

#[then(regex = r#"^the folder "([^"]+)" holds the shared header "([^"]+)"$"#)]
fn shared_header(w: &mut World, dir: String, file: String) {
    w.check(
        ctx().repo_path(&dir).join(&file).is_file(),
        format!("{dir}/{file} is missing"),
    );
}

#[then(
    regex = r#"^the folder "([^"]+)" holds (?:a file mentioning "([^"]+)"|a redaction module)$"#
)]
fn folder_holds(w: &mut World, dir: String, text: String) {
    let needle = if text.is_empty() {
        "redact".to_string()
    } else {
        text
    };
    let found = std::fs::read_dir(ctx().repo_path(&dir))
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .to_lowercase()
                    .contains(&needle)
                    || std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .to_lowercase()
                        .contains(&needle)
            })
        })
        .unwrap_or(false);
    w.check(found, format!("nothing in {dir} mentions {needle:?}"));
}

#[then(regex = r#"^the source files (.+) have unit tests$"#)]
fn have_tests(w: &mut World, list: String) {
    for f in crate::steps::http::quoted_list(&list) {
        let body = std::fs::read_to_string(ctx().repo_path(&f)).unwrap_or_default();
        w.check(
            body.contains("#[cfg(test)]") || body.contains("#[test]"),
            format!("{f} has no unit tests"),
        );
    }
}

#[then(regex = r#"^every kernel launch in "([^"]+)" is followed by an error check$"#)]
fn launches_checked(w: &mut World, dir: String) {
    let mut seen = 0;
    // Launches in test code (the kernel emulator's) are not the worker's.
    for p in rust_files(&ctx().repo_path(&dir))
        .into_iter()
        .filter(|p| !is_test_code(p))
    {
        let code = code_of(&p);
        let lines: Vec<&str> = code.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.contains(".launch(") {
                continue;
            }
            seen += 1;
            let stmt = lines[i..(i + 3).min(lines.len())].join(" ");
            w.check(
                stmt.contains('?') || stmt.contains("map_err"),
                format!("{}:{} launches without checking the result", rel(&p), i + 1),
            );
        }
    }
    w.check(seen > 0, format!("no kernel launch found under {dir}"));
}

#[then(regex = r#"^every kernel launcher in "([^"]+)" validates its dimensions before launching$"#)]
fn launchers_validate(w: &mut World, dir: String) {
    let mut seen = 0;
    for p in rust_files(&ctx().repo_path(&dir)) {
        let code = code_of(&p);
        let lines: Vec<&str> = code.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.contains(".kernel_launch(") {
                continue;
            }
            seen += 1;
            let start = (0..i)
                .rev()
                .find(|&k| {
                    lines[k].trim_start().starts_with("pub fn")
                        || lines[k].trim_start().starts_with("fn ")
                })
                .unwrap_or(0);
            let body = lines[start..i].join("\n");
            let ok = ["check", "ensure", "validate", "bounds", ".need("]
                .iter()
                .any(|k| body.contains(k));
            w.check(
                ok,
                format!(
                    "{}:{}: the launcher does not check its sizes before launching",
                    rel(&p),
                    i + 1
                ),
            );
        }
    }
    w.check(seen > 0, format!("no kernel launcher found under {dir}"));
}
