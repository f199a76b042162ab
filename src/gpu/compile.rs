//! Kernel sources and their NVRTC compilation to CUBIN (WORKER-4012, 4700).
//!
//! Why CUBIN and not PTX: PTX from an NVRTC newer than the driver fails to
//! load, while CUBIN for the device's own `sm_XY` needs no JIT at all
//! (GUIDE §3). The `.cu` sources are embedded in the binary with
//! `include_str!`; each is compiled as `common.cuh` + the file, at start-up,
//! and the CUBIN is cached on disk under a SHA-256 of (NVRTC version, arch,
//! options, source) so a restart loads in milliseconds and a changed kernel
//! can never be served from a stale cache entry.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use crate::error::{Result, WorkerError};

/// The shared header every kernel file includes.
pub const COMMON_CUH: &str = include_str!("../../cuda/common.cuh");

/// Every kernel file: (file name, source). One op per file.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("matvec.cu", include_str!("../../cuda/matvec.cu")),
    ("matvec_rows.cu", include_str!("../../cuda/matvec_rows.cu")),
    ("embed.cu", include_str!("../../cuda/embed.cu")),
    ("rmsnorm.cu", include_str!("../../cuda/rmsnorm.cu")),
    ("rope_kv.cu", include_str!("../../cuda/rope_kv.cu")),
    ("attention.cu", include_str!("../../cuda/attention.cu")),
    ("dequant.cu", include_str!("../../cuda/dequant.cu")),
    ("swiglu.cu", include_str!("../../cuda/swiglu.cu")),
    ("topk.cu", include_str!("../../cuda/topk.cu")),
    ("sha256.cu", include_str!("../../cuda/sha256.cu")),
];

/// Fixed NVRTC options: IEEE division and square root, no flush-to-zero and
/// no fused multiply-add contraction chosen by the compiler, so the same
/// source gives the same arithmetic on every run (WORKER-4710). Explicit
/// `fmaf` in the kernels is still used where it was written.
pub const NVRTC_OPTIONS: &[&str] = &[
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "-std=c++17",
];

/// Whether the NVRTC library can be opened (checked before any NVRTC call,
/// since cudarc panics on a missing library).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the library is present (checked above); both out-pointers are valid locals.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    rc.result()
        .map_err(|e| WorkerError::cuda(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

fn ensure_nvrtc() -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(WorkerError::cuda(
            "the NVRTC library (libnvrtc.so.13) could not be loaded, so CUDA kernels cannot be compiled; \
             install the CUDA 13 runtime compiler (e.g. `source ci/nvrtc-env.sh`) or start with backend \"cpu\"",
        ))
    }
}

/// The full translation unit of one kernel file: the constants the kernels
/// share with their launchers (defined once, in Rust), then the header
/// pasted in place of its `#include "common.cuh"` line (NVRTC then needs no
/// include paths).
pub fn translation_unit(name: &str, src: &str) -> String {
    let body: String = src
        .lines()
        .map(|l| {
            if l.trim() == "#include \"common.cuh\"" {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let page = super::attention::KV_PAGE_TOKENS;
    let (rows, warps, pad) = super::launch_shape::BT_SHAPE;
    format!(
        "#define KV_PAGE {page}\n#define BT_ROWS {rows}\n#define BT_WARPS {warps}\n#define BT_PAD {pad}\n\
         {COMMON_CUH}\n#line 1 \"{name}\"\n{body}\n"
    )
}

/// Compile one translation unit to CUBIN for `arch` (e.g. "sm_90").
/// A compile error carries NVRTC's log with the file name.
pub fn compile_cubin(name: &str, unit: &str, arch: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    ensure_nvrtc()?;
    let src = CString::new(unit)
        .map_err(|_| WorkerError::internal(format!("kernel {name} contains a NUL byte")))?;
    let cname =
        CString::new(name).map_err(|_| WorkerError::internal("kernel name contains a NUL byte"))?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| WorkerError::cuda(format!("NVRTC could not create program {name}: {e:?}")))?;
    let mut opts: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was just created and is destroyed exactly once below;
    // `src`/`cname` outlive it. Options are owned strings.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer.
            let rc = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
            match rc.result() {
                Ok(()) if size > 0 => {
                    let mut buf = vec![0u8; size];
                    // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported.
                    let rc = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) };
                    rc.result()
                        .map(|_| buf)
                        .map_err(|e| WorkerError::cuda(format!("nvrtcGetCUBIN for {name}: {e:?}")))
                }
                Ok(()) => Err(WorkerError::cuda(format!(
                    "NVRTC produced an empty CUBIN for {name} ({arch})"
                ))),
                Err(e) => Err(WorkerError::cuda(format!(
                    "nvrtcGetCUBINSize for {name}: {e:?}"
                ))),
            }
        }
        Err(e) => {
            // SAFETY: `prog` is live; the log is a NUL-terminated buffer NVRTC owns a copy of in the Vec.
            let log = unsafe { result::get_program_log(prog) }
                .ok()
                .map(|v| {
                    // SAFETY: NVRTC's log is NUL-terminated within the returned buffer.
                    unsafe { CStr::from_ptr(v.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            Err(WorkerError::cuda(format!(
                "NVRTC failed to compile {name} for {arch}: {e:?}\n{log}"
            )))
        }
    };
    // SAFETY: destroys the program created above, once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Where compiled CUBINs are cached: `$WORKER_ORCD_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/worker-orcd/kernels`, else `/tmp/worker-orcd-kernels`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = crate::env::KERNEL_CACHE.get() {
        return PathBuf::from(p);
    }
    if let Some(p) = crate::env::XDG_CACHE_HOME.get() {
        return PathBuf::from(p).join("worker-orcd").join("kernels");
    }
    PathBuf::from("/tmp/worker-orcd-kernels")
}

/// Compile (or load from the cache) one kernel file for `arch`.
/// Returns the CUBIN and whether it came from the cache.
pub fn cubin_cached(name: &str, src: &str, arch: &str) -> Result<(Vec<u8>, bool)> {
    let unit = translation_unit(name, src);
    let (maj, min) = nvrtc_version()?;
    let key = {
        let mut k = format!("nvrtc {maj}.{min}\narch {arch}\n");
        for o in NVRTC_OPTIONS {
            k.push_str(o);
            k.push('\n');
        }
        k.push_str(&unit);
        hex::encode(crate::shard::digest::sha256(k.as_bytes()))
    };
    let stem = name.trim_end_matches(".cu");
    let path = cache_dir().join(format!("{stem}-{arch}-{}.cubin", &key[..32]));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok((bytes, true));
        }
    }
    let cubin = compile_cubin(name, &unit, arch)?;
    // A cache that cannot be written only costs a recompile next start.
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok((cubin, false))
}
