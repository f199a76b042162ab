//! Kernel sources and their NVRTC compilation to CUBIN (WORKER-4012, 4700).
//!
//! Why CUBIN and not PTX: PTX from an NVRTC newer than the driver fails to
//! load, while CUBIN for the device's own `sm_XY` needs no JIT at all
//! (GUIDE §3). The `.cu` sources are embedded in the binary with
//! `include_str!`; each is compiled as `common.cuh` + the file, at start-up,
//! and the CUBIN is cached on disk under a SHA-256 of (NVRTC version, arch,
//! options, source) so a restart loads in milliseconds and a changed kernel
//! can never be served from a stale cache entry. Each entry ends with a
//! SHA-256 of its CUBIN, so a corrupt or truncated entry is found, logged and
//! rebuilt instead of loaded (issue 12, "Bad input and failure").

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

/// Compile (or load from the cache in `dir`) one kernel file for `arch`.
/// Returns the CUBIN and whether it came from the cache.
pub fn cubin_cached_in(
    dir: &std::path::Path,
    name: &str,
    src: &str,
    arch: &str,
) -> Result<(Vec<u8>, bool)> {
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
    let path = dir.join(format!("{stem}-{arch}-{}.cubin", &key[..32]));
    match read_cache_entry(&path) {
        CacheEntry::Valid(cubin) => return Ok((cubin, true)),
        CacheEntry::Missing => {}
        CacheEntry::Corrupt(why) => tracing::warn!(
            human = %format!(
                "The cached compiled kernel {} is unusable ({why}); compiling {name} for {arch} again and \
                 replacing it. Nothing needs doing unless this repeats, which would point at the disk.",
                path.display()
            ),
            path = %path.display(), kernel = name, arch = arch, "kernel cache entry rebuilt"
        ),
    }
    let cubin = compile_cubin(name, &unit, arch)?;
    write_cache_entry(&path, &cubin);
    Ok((cubin, false))
}

/// One kernel file compiled for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    pub file: &'static str,
    pub cubin: Vec<u8>,
    /// Loaded from the on-disk cache rather than compiled now.
    pub cached: bool,
}

/// Every kernel file for `arch`, from the cache or compiled, in
/// [`KERNEL_SOURCES`] order. The files compile in parallel (one thread
/// each: NVRTC compiles separate programs concurrently), so a cold start
/// waits for the slowest file rather than for all of them in turn. The
/// first failure in file order is returned.
pub fn kernel_images(arch: &str) -> Result<Vec<KernelImage>> {
    kernel_images_in(&cache_dir(), arch)
}

/// [`kernel_images`] with the cache in `dir`.
pub fn kernel_images_in(dir: &std::path::Path, arch: &str) -> Result<Vec<KernelImage>> {
    ensure_nvrtc()?;
    let results: Vec<Result<KernelImage>> = std::thread::scope(|s| {
        let handles: Vec<_> = KERNEL_SOURCES
            .iter()
            .map(|&(file, src)| {
                s.spawn(move || {
                    cubin_cached_in(dir, file, src, arch).map(|(cubin, cached)| KernelImage {
                        file,
                        cubin,
                        cached,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(WorkerError::internal("a kernel compile thread panicked"))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Marks the end of a cache entry, before the CUBIN's SHA-256.
const ENTRY_MAGIC: &[u8; 8] = b"WOKCUBN1";
const TRAILER: usize = ENTRY_MAGIC.len() + 32;

/// What a cache file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum CacheEntry {
    Missing,
    /// A CUBIN whose SHA-256 matches the one stored after it.
    Valid(Vec<u8>),
    /// Present but not a whole entry: says why.
    Corrupt(String),
}

/// Read one cache entry: CUBIN bytes, then [`ENTRY_MAGIC`] and their SHA-256.
pub fn read_cache_entry(path: &std::path::Path) -> CacheEntry {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheEntry::Missing,
        Err(e) => return CacheEntry::Corrupt(format!("it cannot be read: {e}")),
    };
    if bytes.len() <= TRAILER {
        return CacheEntry::Corrupt(format!("{} bytes is too short to be an entry", bytes.len()));
    }
    let (cubin, trailer) = bytes.split_at(bytes.len() - TRAILER);
    if &trailer[..ENTRY_MAGIC.len()] != ENTRY_MAGIC {
        return CacheEntry::Corrupt(
            "it does not end with the entry marker: truncated, or written by another version"
                .into(),
        );
    }
    if crate::shard::digest::sha256(cubin)[..] != trailer[ENTRY_MAGIC.len()..] {
        return CacheEntry::Corrupt("its SHA-256 does not match its contents".into());
    }
    CacheEntry::Valid(cubin.to_vec())
}

/// Write one cache entry atomically (a temporary file renamed over it). A
/// cache that cannot be written only costs a recompile at the next start.
pub fn write_cache_entry(path: &std::path::Path, cubin: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut entry = Vec::with_capacity(cubin.len() + TRAILER);
    entry.extend_from_slice(cubin);
    entry.extend_from_slice(ENTRY_MAGIC);
    entry.extend_from_slice(&crate::shard::digest::sha256(cubin));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &entry).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    /// An entry reads back as written; a flipped byte anywhere, a cut end
    /// or a file of another format is reported corrupt, never returned.
    #[test]
    fn corrupt_entries_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k-sm_90-x.cubin");
        assert_eq!(read_cache_entry(&path), CacheEntry::Missing);
        let cubin: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        write_cache_entry(&path, &cubin);
        assert_eq!(read_cache_entry(&path), CacheEntry::Valid(cubin.clone()));
        let good = std::fs::read(&path).unwrap();
        for at in [0, 2500, cubin.len() + 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read_cache_entry(&path), CacheEntry::Corrupt(_)),
                "byte {at}"
            );
        }
        for cut in [1, TRAILER, good.len() - 1] {
            std::fs::write(&path, &good[..good.len() - cut]).unwrap();
            assert!(
                matches!(read_cache_entry(&path), CacheEntry::Corrupt(_)),
                "cut {cut}"
            );
        }
        // An entry of the old format: the bare CUBIN.
        std::fs::write(&path, &cubin).unwrap();
        assert!(matches!(read_cache_entry(&path), CacheEntry::Corrupt(_)));
    }

    /// With NVRTC: the first start compiles and caches, the next loads the
    /// entry, and after a byte of it is flipped the entry is compiled again
    /// (not loaded) and whole afterwards.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn a_corrupt_entry_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (name, src) = KERNEL_SOURCES
            .iter()
            .find(|(n, _)| *n == "swiglu.cu")
            .unwrap();
        let (first, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").expect("compile");
        assert!(!cached, "an empty cache compiles");
        let (again, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").expect("load");
        assert!(cached && again == first, "the second start loads the entry");
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let (rebuilt, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").expect("rebuild");
        assert!(!cached, "a corrupt entry is compiled again, not loaded");
        assert_eq!(rebuilt, first);
        assert_eq!(read_cache_entry(&entry), CacheEntry::Valid(first));
    }

    /// With NVRTC: every file compiles in parallel into an empty cache, in
    /// source order; the next call loads them all, byte-identical; a file
    /// compiled alone gives the same bytes as in the parallel run.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn every_kernel_compiles_in_parallel_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cold = kernel_images_in(dir.path(), "sm_90").expect("compile");
        let files: Vec<&str> = cold.iter().map(|k| k.file).collect();
        let expected: Vec<&str> = KERNEL_SOURCES.iter().map(|(f, _)| *f).collect();
        assert_eq!(files, expected);
        assert!(cold.iter().all(|k| !k.cached && !k.cubin.is_empty()));
        let warm = kernel_images_in(dir.path(), "sm_90").expect("load");
        assert!(warm.iter().all(|k| k.cached));
        assert_eq!(
            warm.iter().map(|k| &k.cubin).collect::<Vec<_>>(),
            cold.iter().map(|k| &k.cubin).collect::<Vec<_>>()
        );
        let (name, src) = KERNEL_SOURCES
            .iter()
            .find(|(n, _)| *n == "swiglu.cu")
            .unwrap();
        let alone = compile_cubin(name, &translation_unit(name, src), "sm_90").expect("compile");
        assert_eq!(cold.iter().find(|k| k.file == *name).unwrap().cubin, alone);
    }
}
