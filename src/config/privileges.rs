//! Privilege checks: refuse to run as root unless overridden, and report the
//! Linux capabilities still held after GPU initialization (WORKER-4900–4903).
//!
//! Everything here is safe Rust: the effective uid and the capability sets
//! come from `/proc/self/status`. Clearing capabilities needs `prctl`/`capset`
//! (unsafe FFI), so this module checks and reports instead; the enforcement
//! is the systemd unit's empty `CapabilityBoundingSet=` plus
//! `NoNewPrivileges=yes` (see `deploy/worker-orcd@.service`), under which the
//! process never holds a capability in the first place.

use super::ConfigError;

/// Capability names by bit number (linux/capability.h), for reports.
const CAP_NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// The process's status fields this module needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub effective_uid: Option<u32>,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
    pub no_new_privs: Option<bool>,
}

/// Parse the text of `/proc/<pid>/status`.
pub fn parse_proc_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            // "Uid:\treal\teffective\tsaved\tfs"
            "Uid" => s.effective_uid = v.split_whitespace().nth(1).and_then(|x| x.parse().ok()),
            "CapEff" => s.cap_eff = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapPrm" => s.cap_prm = u64::from_str_radix(v, 16).unwrap_or(0),
            "CapBnd" => s.cap_bnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "NoNewPrivs" => s.no_new_privs = Some(v == "1"),
            _ => {}
        }
    }
    s
}

fn read_self_status() -> Option<ProcStatus> {
    // thread-self: capability sets are per thread; this is the caller's.
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .map(|t| parse_proc_status(&t))
}

/// The effective uid of this process, from /proc (no FFI).
pub fn effective_uid() -> Option<u32> {
    read_self_status()
        .and_then(|s| s.effective_uid)
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").ok().map(|m| m.uid())
        })
}

/// Refuse to run as root (effective uid 0) unless `allow_root`; with the
/// override, log a warning that says why it is dangerous.
pub fn check_not_root(allow_root: bool) -> Result<(), ConfigError> {
    check_uid(effective_uid(), allow_root)
}

/// The decision of [`check_not_root`] for a given uid (testable without root).
pub fn check_uid(euid: Option<u32>, allow_root: bool) -> Result<(), ConfigError> {
    match euid {
        Some(0) if allow_root => {
            tracing::warn!(
                human = "Running as root because --allow-root was given. This is dangerous: the worker parses untrusted model files and network requests, and a bug exploited here would own the whole host. Run it as the unprivileged worker-orcd user instead (see deploy/worker-orcd@.service).",
                allow_root = true,
            );
            Ok(())
        }
        Some(0) => Err(ConfigError::new(
            "allow_root",
            "the worker is running as root and refuses to start (WORKER-4900); run it as an unprivileged user \
             (systemd User=worker-orcd, or `sudo -u worker-orcd worker-orcd ...`), or pass --allow-root if you \
             accept the risk",
        )),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(human = "Could not read the effective user id from /proc/self/status; cannot confirm the worker is not root.");
            Ok(())
        }
    }
}

/// Capabilities held by the process, as found after GPU initialization.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CapabilityReport {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
    /// Names of the effective or permitted capabilities still held.
    pub held: Vec<String>,
    pub no_new_privs: Option<bool>,
}

impl CapabilityReport {
    /// True when the process holds no capability at all.
    pub fn is_clean(&self) -> bool {
        self.effective == 0 && self.permitted == 0
    }
}

/// Names of the bits set in a capability mask.
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map_or_else(|| format!("cap_{b}"), |n| n.to_string())
        })
        .collect()
}

/// Build the report from parsed status (testable).
pub fn report_from(status: &ProcStatus) -> CapabilityReport {
    CapabilityReport {
        effective: status.cap_eff,
        permitted: status.cap_prm,
        bounding: status.cap_bnd,
        held: capability_names(status.cap_eff | status.cap_prm),
        no_new_privs: status.no_new_privs,
    }
}

/// Clear every Linux capability set of the calling thread (WORKER-4901),
/// then inspect /proc/self/status and log what, if anything, is still held.
///
/// Capability sets are per thread and inherited by threads created later, so
/// the daemon calls this first thing on its main thread, before the runtime,
/// the engine thread or the CUDA driver start any thread: every thread of the
/// process then runs without capabilities, GPU initialisation included (the
/// NVIDIA device nodes need none). The bounding set is emptied only when
/// CAP_SETPCAP is held (as root); an unprivileged worker already has empty
/// effective and permitted sets. The systemd unit's empty
/// CapabilityBoundingSet= enforces the same from outside.
pub fn drop_capabilities() -> CapabilityReport {
    if let Err(e) = clear_capability_sets() {
        tracing::warn!(human = %format!("The worker could not clear its Linux capability sets ({e}); it will report what it still holds."));
    }
    let Some(status) = read_self_status() else {
        tracing::warn!(human = "Could not read /proc/self/status, so the worker cannot confirm it holds no Linux capabilities.");
        return CapabilityReport::default();
    };
    let report = report_from(&status);
    if report.is_clean() {
        tracing::info!(
            human = "The worker holds no Linux capabilities after GPU initialization.",
            no_new_privs = ?report.no_new_privs,
        );
    } else {
        tracing::warn!(
            human = %format!(
                "The worker still holds Linux capabilities after GPU initialization ({}). It does not need any; start it with an empty CapabilityBoundingSet= and NoNewPrivileges=yes (see deploy/worker-orcd@.service).",
                report.held.join(", ")
            ),
            cap_eff = %format!("{:016x}", report.effective),
            cap_prm = %format!("{:016x}", report.permitted),
        );
    }
    report
}

/// Empty the bounding (when permitted), ambient, inheritable, effective and
/// permitted sets of this thread, in an order that keeps CAP_SETPCAP until the
/// bounding set is done.
fn clear_capability_sets() -> Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability};
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
}
