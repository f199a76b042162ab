//! What the operating system says about the worker process (WORKER-4021):
//! read from /proc, never from the worker's own account of itself.

use crate::steps::world::World;
use cucumber::then;

/// (parent pid, session id) of `pid`, from /proc/<pid>/stat.
fn ppid_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state, ppid, pgrp, session.
    Some((f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// Every process whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| ppid_and_session(*p).is_some_and(|(pp, _)| pp == pid))
        .collect()
}

#[then("the worker process is still the one the harness started, in the harness's session, with no child processes")]
fn no_fork(w: &mut World) {
    let Some(worker) = &w.worker else {
        w.fail("no worker was started")
    };
    let pid = worker.pid;
    let me = std::process::id();
    let Some((ppid, sid)) = ppid_and_session(pid) else {
        w.fail(format!(
            "process {pid} (the worker the harness started) no longer exists"
        ))
    };
    let (_, my_sid) =
        ppid_and_session(me).unwrap_or_else(|| w.fail("cannot read the harness's own /proc entry"));
    w.check(
        ppid == me,
        format!(
            "the worker {pid} has parent {ppid}, expected the harness {me}: it re-parented itself"
        ),
    );
    w.check(
        sid == my_sid,
        format!("the worker {pid} is in session {sid}, the harness in {my_sid}: it called setsid (daemonized)"),
    );
    let kids = children_of(pid);
    w.check(
        kids.is_empty(),
        format!("the worker {pid} has child processes {kids:?}: it forked or spawned"),
    );
}
