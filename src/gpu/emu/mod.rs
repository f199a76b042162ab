//! The kernel emulator's Rust side (tests only; issue 11 points 5 and 7,
//! issue 12 point 2; WORKER-4710): every kernel file compiled for the host
//! CPU by `c++` with `tools/kernel-emu/emu.hpp`, loaded as a shared library,
//! and launched on host memory by name, grid, block, shared size and
//! arguments laid out as `cuLaunchKernel` takes them.
//!
//! Why: which lane sums which run in which order decides the bits a worker
//! streams, and a batched kernel's promise (every row's bits equal the lone
//! kernel's) could only be checked on a GPU machine. Here `cargo test`
//! checks it on every commit; the GPU suite still checks the GPU's own
//! arithmetic (transcendentals, the compiler's code) and speed.
//!
//! The library is built once per set of sources into
//! `target/kernel-emu/<key>/` (the key is a SHA-256 of the emulator files,
//! every translation unit, the compiler's version and the flags), from the
//! same translation units NVRTC compiles (`kernel_units::translation_unit`),
//! with `-ffp-contract=off` as NVRTC's `--fmad=false`.

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod dequant_tests;
#[cfg(test)]
mod guarded;
#[cfg(test)]
mod matvec_tests;
#[cfg(test)]
mod prefill_attention_tests;
#[cfg(test)]
mod qkv_tests;
#[cfg(test)]
mod topk_tests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::LaunchConfig;
use sha2::{Digest, Sha256};

use super::kernel_units::{hex, translation_unit, KERNEL_SOURCES};

const EMU_HPP: &str = include_str!("../../../tools/kernel-emu/emu.hpp");
const EMU_REGISTRY_HPP: &str = include_str!("../../../tools/kernel-emu/emu_registry.hpp");
const EMU_RUNTIME_CPP: &str = include_str!("../../../tools/kernel-emu/emu_runtime.cpp");
const CXX_FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-w",
    "-U_FORTIFY_SOURCE",
];

/// One kernel argument, as the launchers pass it.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A "device" pointer: a host address (0 for null).
    Ptr(u64),
    U64(u64),
    I32(i32),
    F32(f32),
}

impl Arg {
    pub fn of<T>(v: &[T]) -> Arg {
        Arg::Ptr(v.as_ptr() as u64)
    }
    pub fn of_mut<T>(v: &mut [T]) -> Arg {
        Arg::Ptr(v.as_mut_ptr() as u64)
    }
    /// The argument's bytes in an 8-byte slot (little-endian, as the
    /// kernel reads its parameter from the slot's start).
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// Thread order between barriers: forward, reverse, or shuffled by a seed.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    Forward,
    Reverse,
    Shuffled(u64),
}

type LaunchFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut *mut std::ffi::c_void,
) -> i32;
type ErrorFn = unsafe extern "C" fn() -> *const std::ffi::c_char;
type OrderFn = unsafe extern "C" fn(i32, u64);
type HasFn = unsafe extern "C" fn(*const std::ffi::c_char) -> i32;

/// The loaded library. Launches are serialized: the emulator runs one grid
/// at a time.
pub struct Emu {
    _lib: libloading::Library,
    launch: LaunchFn,
    last_error: ErrorFn,
    set_order: OrderFn,
    has: HasFn,
    lock: Mutex<()>,
}

impl Emu {
    /// The emulator, built on first use. Panics with the compiler's output
    /// when it cannot be built: a test that needs it fails, it never skips.
    pub fn get() -> &'static Emu {
        static EMU: OnceLock<Emu> = OnceLock::new();
        EMU.get_or_init(|| match build().and_then(|p| load(&p)) {
            Ok(e) => e,
            Err(e) => panic!("the kernel emulator could not be built: {e}"),
        })
    }

    pub fn has_kernel(&self, name: &str) -> bool {
        let c = std::ffi::CString::new(name).expect("kernel name");
        // SAFETY: `has` is the library's emu_has_kernel, which only reads the NUL-terminated name.
        unsafe { (self.has)(c.as_ptr()) == 1 }
    }

    /// Run kernel `name` over `cfg`'s grid with `order` between barriers.
    /// The caller keeps every buffer a pointer argument names alive and
    /// large enough for the launch, as a GPU launch requires.
    pub fn launch(
        &self,
        name: &str,
        cfg: LaunchConfig,
        order: Order,
        args: &[Arg],
    ) -> Result<(), String> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        let c = std::ffi::CString::new(name).map_err(|_| "kernel name has a NUL".to_string())?;
        let (o, seed) = match order {
            Order::Forward => (0, 0),
            Order::Reverse => (1, 0),
            Order::Shuffled(s) => (2, s),
        };
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        // SAFETY: the library's emu_set_order takes plain values. emu_launch
        // reads `ptrs.len()` argument pointers, each to a live 8-byte slot
        // above, and the kernel dereferences the host addresses the caller
        // passed, which the caller keeps valid (this function's contract).
        let rc = unsafe {
            (self.set_order)(o, seed);
            (self.launch)(
                c.as_ptr(),
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shared_mem_bytes,
                ptrs.as_mut_ptr(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: emu_last_error returns a NUL-terminated string owned by the library.
        let why = unsafe { std::ffi::CStr::from_ptr((self.last_error)()) };
        Err(format!("{name}: {}", why.to_string_lossy()))
    }
}

/// The host translation unit of one kernel file: the NVRTC unit with its
/// dynamic shared array taken from the emulator, then the registration of
/// every entry point `entries` found.
fn host_unit(name: &str, src: &str) -> String {
    translation_unit(name, src)
        .lines()
        .map(|l| match dynamic_shared(l) {
            Some((ty, var)) => format!("    {ty}* {var} = ({ty}*)::emu::dyn_smem();"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `extern __shared__ [__align__(N)] T name[];` as (T, name).
fn dynamic_shared(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("extern __shared__")?.trim();
    let rest = match rest.strip_prefix("__align__(") {
        Some(r) => r.split_once(')')?.1.trim(),
        None => rest,
    };
    let decl = rest.strip_suffix("[];")?;
    let (ty, var) = decl.trim().rsplit_once(' ')?;
    Some((ty.trim().to_string(), var.trim().to_string()))
}

/// Entry points of a preprocessed unit: the name after `__global__`, its
/// return type and an optional `__launch_bounds__(...)`.
fn entries(preprocessed: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = preprocessed;
    while let Some(at) = rest.find("__global__") {
        rest = &rest[at + "__global__".len()..];
        let mut s = rest.trim_start();
        loop {
            if let Some(r) = s.strip_prefix("void") {
                s = r.trim_start();
            } else if let Some(r) = s.strip_prefix("__launch_bounds__") {
                let close = r.find(')').map_or(r.len(), |i| i + 1);
                s = r[close..].trim_start();
            } else {
                break;
            }
        }
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && s[name.len()..].trim_start().starts_with('(') {
            names.push(name);
        }
    }
    names
}

/// The first statement of each entry point's body in a preprocessed unit:
/// (name, the text from just after its opening brace).
fn entry_bodies(preprocessed: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in entries(preprocessed) {
        let pat = format!("{name}(");
        let Some(at) = preprocessed.match_indices(&pat).map(|(i, _)| i).find(|&i| {
            preprocessed[..i]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace)
        }) else {
            continue;
        };
        let rest = &preprocessed[at + name.len()..];
        let mut depth = 0usize;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else { continue };
        let body = &rest[close..];
        if let Some(brace) = body.find('{') {
            let first: String = body[brace + 1..].trim_start().chars().take(60).collect();
            out.push((name, first));
        }
    }
    out
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: could not run the C++ compiler `c++`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build the library (or find it built) and return its path.
fn build() -> Result<PathBuf, String> {
    let version = run(Command::new("c++").arg("--version"), "c++ --version")?;
    let units: Vec<(String, String)> = KERNEL_SOURCES
        .iter()
        .map(|(n, s)| (n.to_string(), host_unit(n, s)))
        .collect();
    let mut key = Sha256::new();
    for part in [EMU_HPP, EMU_REGISTRY_HPP, EMU_RUNTIME_CPP, &version] {
        key.update(part.as_bytes());
    }
    for f in CXX_FLAGS {
        key.update(f.as_bytes());
    }
    for (n, u) in &units {
        key.update(n.as_bytes());
        key.update(u.as_bytes());
    }
    let key = hex(&key.finalize());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kernel-emu");
    let done = root.join(&key[..24]).join("libkernel_emu.so");
    if done.exists() {
        return Ok(done);
    }
    let work = root.join(format!("{}.tmp{}", &key[..24], std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(work.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    write("emu.hpp", EMU_HPP)?;
    write("emu_registry.hpp", EMU_REGISTRY_HPP)?;
    write("emu_runtime.cpp", EMU_RUNTIME_CPP)?;
    let mut sources = vec!["emu_runtime.cpp".to_string()];
    for (name, unit) in &units {
        let scan = format!("{name}.scan.cpp");
        write(&scan, unit)?;
        let pre = run(
            Command::new("c++")
                .args(["-E", "-P", "-x", "c++"])
                .arg(work.join(&scan)),
            &format!("preprocessing {name}"),
        )?;
        let regs: String = entries(&pre)
            .iter()
            .map(|e| {
                format!("static ::emu::Registration emu_reg_{e}(\"{e}\", &::emu::invoke<&{e}>);\n")
            })
            .collect();
        let file = format!("{name}.cpp");
        write(
            &file,
            &format!("#include \"emu.hpp\"\n#include \"emu_registry.hpp\"\n{unit}\n{regs}"),
        )?;
        sources.push(file);
    }
    let compiles: Vec<_> = sources
        .iter()
        .map(|s| {
            Command::new("c++")
                .args(CXX_FLAGS)
                .arg("-c")
                .arg(work.join(s))
                .arg("-o")
                .arg(work.join(format!("{s}.o")))
                .current_dir(&work)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("could not run the C++ compiler `c++`: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for (c, s) in compiles.into_iter().zip(&sources) {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "compiling {s} for the host failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let lib = work.join("libkernel_emu.so");
    run(
        Command::new("c++")
            .arg("-shared")
            .arg("-o")
            .arg(&lib)
            .args(sources.iter().map(|s| work.join(format!("{s}.o")))),
        "linking the kernel emulator",
    )?;
    std::fs::create_dir_all(done.parent().expect("parent")).map_err(|e| e.to_string())?;
    // Another test process may have finished first; either copy will do.
    let _ = std::fs::rename(&lib, &done);
    let _ = std::fs::remove_dir_all(&work);
    Ok(done)
}

fn load(path: &Path) -> Result<Emu, String> {
    // SAFETY: the library was just built from this crate's own sources; its
    // initializers only register kernel names.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // SAFETY: each symbol is looked up with the exact C signature
    // emu_runtime.cpp defines for it.
    let (launch, last_error, set_order, has) = unsafe {
        (
            symbol::<LaunchFn>(&lib, b"emu_launch\0")?,
            symbol::<ErrorFn>(&lib, b"emu_last_error\0")?,
            symbol::<OrderFn>(&lib, b"emu_set_order\0")?,
            symbol::<HasFn>(&lib, b"emu_has_kernel\0")?,
        )
    };
    Ok(Emu {
        _lib: lib,
        launch,
        last_error,
        set_order,
        has,
        lock: Mutex::new(()),
    })
}

/// A function pointer from the library.
///
/// # Safety
/// `T` must be the symbol's exact C signature.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller's contract.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_shared_declarations_are_read() {
        assert_eq!(
            dynamic_shared("    extern __shared__ __align__(16) float smem[];"),
            Some(("float".into(), "smem".into()))
        );
        assert_eq!(
            dynamic_shared("extern __shared__ unsigned long long s[];"),
            Some(("unsigned long long".into(), "s".into()))
        );
        assert_eq!(dynamic_shared("__shared__ float sh[32];"), None);
    }

    #[test]
    fn entry_points_are_found_after_preprocessing() {
        let pre = "extern \"C\" __global__ void __launch_bounds__(512, 2) matvec_q4_0_bt(const u8* W) {}\n\
                   extern \"C\" __global__ void rmsnorm(float* x, int n) {}\n\
                   __device__ void helper(int a) {}";
        assert_eq!(entries(pre), vec!["matvec_q4_0_bt", "rmsnorm"]);
    }

    /// Every entry point of every kernel file calls grid_dependency_sync()
    /// before anything else: launched with programmatic dependent launch
    /// (`gpu::launch`), a kernel that read or wrote memory first could race
    /// the kernel before it. (A structural rule no test on the host can
    /// otherwise see: there the call does nothing.)
    #[test]
    fn every_entry_point_waits_for_the_previous_grid_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut checked = std::collections::BTreeSet::new();
        for (name, src) in KERNEL_SOURCES {
            let file = dir.path().join(format!("{name}.cpp"));
            std::fs::write(&file, host_unit(name, src)).expect("write unit");
            let pre = run(
                Command::new("c++")
                    .args(["-E", "-P", "-x", "c++"])
                    .arg(&file),
                "preprocessing",
            )
            .expect("preprocess");
            let bodies = entry_bodies(&pre);
            assert!(!bodies.is_empty(), "{name}: no entry points found");
            for (entry, first) in bodies {
                assert!(
                    first.starts_with("grid_dependency_sync();"),
                    "{name}: {entry} starts with `{first}`, not grid_dependency_sync()"
                );
                checked.insert(entry);
            }
        }
        let unchecked: Vec<String> = super::super::device::kernel_names()
            .into_iter()
            .filter(|n| !checked.contains(n))
            .collect();
        assert!(
            unchecked.is_empty(),
            "not found in the sources: {unchecked:?}"
        );
    }

    /// Every kernel the worker loads at start-up is in the emulator.
    #[test]
    fn every_kernel_the_worker_loads_is_emulated() {
        let emu = Emu::get();
        let missing: Vec<String> = super::super::device::kernel_names()
            .into_iter()
            .filter(|n| !emu.has_kernel(n))
            .collect();
        assert!(missing.is_empty(), "not emulated: {missing:?}");
    }
}
