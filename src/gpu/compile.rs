//! Kernel sources and their CUBIN (WORKER-4012, 4700; issue 12 point 4).
//!
//! Why CUBIN and not PTX: PTX from an NVRTC newer than the driver fails to
//! load, while CUBIN for the device's own `sm_XY` needs no JIT at all
//! (GUIDE §3). Where a device's CUBIN comes from, in order:
//! 1. built into the binary (`embedded`, compiled by `build.rs` for the
//!    shipped architectures), so a fresh machine starts without compiling;
//! 2. otherwise NVRTC at start-up, with the reason logged, each file
//!    compiled on its own thread and cached on disk under a SHA-256 of
//!    (NVRTC version, arch, options, source), so a restart loads in
//!    milliseconds and a changed kernel is never served from a stale entry.
//!    Each entry ends with a SHA-256 of its CUBIN, so a corrupt or truncated
//!    entry is found, logged and rebuilt instead of loaded.
//!
//! The kernel table, translation units, options and cache format live in
//! `kernel_units`, which the build script shares.

use std::path::{Path, PathBuf};

use super::embedded::{BuiltIn, Unusable};
use super::kernel_units::{
    cache_entry_path, compile_unit, image_key, nvrtc_identity, nvrtc_loadable,
};
pub use super::kernel_units::{
    read_cache_entry, translation_unit, write_cache_entry, CacheEntry, COMMON_CUH, KERNEL_SOURCES,
    NVRTC_OPTIONS,
};
use crate::error::{Result, WorkerError};

/// Whether the NVRTC library can be opened (checked before any NVRTC call,
/// since cudarc panics on a missing library).
pub fn nvrtc_present() -> bool {
    nvrtc_loadable()
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc("")?;
    super::kernel_units::nvrtc_version_raw().map_err(WorkerError::cuda)
}

/// NVRTC is loadable, or a `CUDA_ERROR` saying so, after `why_needed`.
fn ensure_nvrtc(why_needed: &str) -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(WorkerError::cuda(format!(
            "{why_needed}the NVRTC library (libnvrtc.so.13) could not be loaded, so CUDA kernels cannot be compiled; \
             install the CUDA 13 runtime compiler (e.g. `source ci/nvrtc-env.sh`) or start with backend \"cpu\""
        )))
    }
}

/// The loaded NVRTC as image keys and the numerics version name it
/// (`kernel_units::nvrtc_identity`), found once.
pub fn compiler_identity() -> Result<String> {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return Ok(id.clone());
    }
    let id = nvrtc_identity(nvrtc_version()?);
    Ok(IDENTITY.get_or_init(|| id).clone())
}

/// Compile one translation unit to CUBIN for `arch` (e.g. "sm_90").
/// A compile error carries NVRTC's log with the file name.
pub fn compile_cubin(name: &str, unit: &str, arch: &str) -> Result<Vec<u8>> {
    ensure_nvrtc("")?;
    compile_unit(name, unit, arch).map_err(WorkerError::cuda)
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

/// Whether `dir` may hold code this process will run on the GPU: a folder
/// owned by this user that no one else can write to (a folder in a shared
/// `/tmp` another user could plant an entry in is not). Creates it, mode
/// 0700, when absent.
pub fn private_cache(dir: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("it cannot be created: {e}"))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("it cannot be read: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err("it is not a folder".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "it belongs to user {}, not to this worker's {me}",
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "others can write to it (mode {:o})",
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// Compile (or load from the cache in `dir`) one kernel file for `arch`.
/// Returns the CUBIN and whether it came from the cache. A cache folder that
/// is not [`private_cache`] is neither read nor written.
pub fn cubin_cached_in(dir: &Path, name: &str, src: &str, arch: &str) -> Result<(Vec<u8>, bool)> {
    cubin_from(private_cache(dir).ok().map(|()| dir), name, src, arch)
}

/// [`cubin_cached_in`] with the cache folder already checked: `None` when
/// it may not be used.
fn cubin_from(dir: Option<&Path>, name: &str, src: &str, arch: &str) -> Result<(Vec<u8>, bool)> {
    let unit = translation_unit(name, src);
    let Some(dir) = dir else {
        return Ok((compile_cubin(name, &unit, arch)?, false));
    };
    let key = image_key(&compiler_identity()?, arch, &unit);
    let path = cache_entry_path(dir, name, arch, &key);
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

/// Where one kernel image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOrigin {
    /// Compiled at build time and carried in the binary.
    BuiltIn,
    /// Compiled by an earlier start and loaded from the on-disk cache.
    Cache,
    /// Compiled by NVRTC at this start.
    Compiled,
}

/// One kernel file compiled for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    pub file: &'static str,
    pub cubin: Vec<u8>,
    pub origin: ImageOrigin,
}

/// Every kernel file's image for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSet {
    /// In [`KERNEL_SOURCES`] order.
    pub images: Vec<KernelImage>,
    /// The NVRTC that compiled them (part of the numerics version).
    pub compiler: String,
    /// Why the built-in images were not used, when NVRTC ran instead.
    pub fallback: Option<Unusable>,
}

impl KernelSet {
    /// How many images came from `origin`.
    pub fn count(&self, origin: ImageOrigin) -> usize {
        self.images.iter().filter(|i| i.origin == origin).count()
    }
}

/// Every file of `sources` for `arch`: the images in `built` when they
/// serve, else from the cache in `dir` or compiled, with the reason.
pub fn kernel_set(
    dir: &Path,
    arch: &str,
    built: &BuiltIn,
    sources: &[(&'static str, &'static str)],
) -> Result<KernelSet> {
    let reason = match built.for_arch(arch, sources) {
        Ok((images, compiler)) => {
            return Ok(KernelSet {
                images: images
                    .into_iter()
                    .map(|(file, cubin)| KernelImage {
                        file,
                        cubin: cubin.to_vec(),
                        origin: ImageOrigin::BuiltIn,
                    })
                    .collect(),
                compiler: compiler.to_string(),
                fallback: None,
            })
        }
        Err(unusable) => unusable,
    };
    ensure_nvrtc(&format!(
        "The kernels must be compiled at start-up because {}, but ",
        reason.why
    ))?;
    Ok(KernelSet {
        images: compile_in_parallel(dir, arch, sources)?,
        compiler: compiler_identity()?,
        fallback: Some(reason),
    })
}

/// Every file of `sources` for `arch`, from the cache in `dir` or compiled,
/// in order. The files compile in parallel (one thread each: NVRTC compiles
/// separate programs concurrently), so a cold start waits for the slowest
/// file rather than for all of them in turn. The first failure in file
/// order is returned.
pub fn compile_in_parallel(
    dir: &Path,
    arch: &str,
    sources: &[(&'static str, &'static str)],
) -> Result<Vec<KernelImage>> {
    ensure_nvrtc("")?;
    let checked = private_cache(dir);
    if let Err(why) = &checked {
        tracing::warn!(
            human = %format!(
                "The kernel cache folder {} is not used because {why}; the kernels are compiled at every \
                 start until it is fixed. Point WORKER_ORCD_KERNEL_CACHE at a folder only this worker's \
                 user can write (the systemd unit uses its own cache directory).",
                dir.display()
            ),
            dir = %dir.display(), reason = %why, "kernel cache not used"
        );
    }
    let cache: Option<&Path> = checked.is_ok().then_some(dir);
    let results: Vec<Result<KernelImage>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|&(file, src)| {
                s.spawn(move || {
                    cubin_from(cache, file, src, arch).map(|(cubin, cached)| KernelImage {
                        file,
                        cubin,
                        origin: if cached {
                            ImageOrigin::Cache
                        } else {
                            ImageOrigin::Compiled
                        },
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

/// The smallest kernel file, for tests that compile one.
#[cfg(test)]
fn swiglu_source() -> (&'static str, &'static str) {
    *KERNEL_SOURCES
        .iter()
        .find(|(n, _)| *n == "swiglu.cu")
        .unwrap()
}

#[cfg(test)]
mod cache_tests {
    use super::super::embedded::BUILT_IN;
    use super::*;

    /// A cache folder others can write to is refused, as is one that is a
    /// file; an absent one is created private.
    #[test]
    fn only_a_private_cache_folder_is_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b");
        private_cache(&fresh).expect("created");
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = private_cache(&fresh).unwrap_err();
        assert!(why.contains("others can write"), "{why}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(private_cache(&file).unwrap_err().contains("not a folder"));
    }

    /// The entry a cache folder holds after one kernel was compiled into it.
    fn only_entry(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    }

    /// With NVRTC: an entry planted in a folder others can write to is not
    /// loaded (the kernel is compiled), and nothing is written there.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn a_planted_entry_in_a_shared_folder_is_not_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (name, src) = &swiglu_source();
        let (real, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").unwrap();
        assert!(!cached);
        let entry = only_entry(dir.path());
        let planted = b"\x7fELF planted by another user".to_vec();
        write_cache_entry(&entry, &planted);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (got, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").unwrap();
        assert!(
            !cached && got == real,
            "the planted entry must not be loaded"
        );
        assert_eq!(read_cache_entry(&entry), CacheEntry::Valid(planted));
    }

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
        for cut in [1, super::super::kernel_units::ENTRY_TRAILER, good.len() - 1] {
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
        let (name, src) = &swiglu_source();
        let (first, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").expect("compile");
        assert!(!cached, "an empty cache compiles");
        let (again, cached) = cubin_cached_in(dir.path(), name, src, "sm_90").expect("load");
        assert!(cached && again == first, "the second start loads the entry");
        let entry = only_entry(dir.path());
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
    /// compiled alone gives the same bytes as in the parallel run; and the
    /// images the build put in this binary for sm_90 are those very bytes
    /// (same NVRTC), so a built-in start runs what a compiling start would,
    /// except for files NVRTC itself does not compile to the same bytes
    /// every time.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn every_kernel_compiles_in_parallel_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cold = compile_in_parallel(dir.path(), "sm_90", KERNEL_SOURCES).expect("compile");
        let files: Vec<&str> = cold.iter().map(|k| k.file).collect();
        let expected: Vec<&str> = KERNEL_SOURCES.iter().map(|(f, _)| *f).collect();
        assert_eq!(files, expected);
        assert!(cold
            .iter()
            .all(|k| k.origin == ImageOrigin::Compiled && !k.cubin.is_empty()));
        let warm = compile_in_parallel(dir.path(), "sm_90", KERNEL_SOURCES).expect("load");
        assert!(warm.iter().all(|k| k.origin == ImageOrigin::Cache));
        assert_eq!(
            warm.iter().map(|k| &k.cubin).collect::<Vec<_>>(),
            cold.iter().map(|k| &k.cubin).collect::<Vec<_>>()
        );
        let (name, src) = &swiglu_source();
        let alone = compile_cubin(name, &translation_unit(name, src), "sm_90").expect("compile");
        assert_eq!(cold.iter().find(|k| k.file == *name).unwrap().cubin, alone);

        assert_eq!(
            BUILT_IN.compiler,
            Some(compiler_identity().unwrap().as_str())
        );
        let (built_in, _) = BUILT_IN
            .for_arch("sm_90", KERNEL_SOURCES)
            .expect("the binary carries sm_90");
        let mut redone = Vec::new();
        for (image, (file, cubin)) in cold.iter().zip(built_in) {
            assert_eq!(image.file, file);
            if image.cubin == cubin {
                continue;
            }
            // NVRTC 13.0 does not always give the same bytes for the same
            // unit (matvec_rows.cu: its PTX numbers registers differently
            // from run to run on some machines, and the GPU machine's NVRTC
            // 13.0.88 gives other bytes than the same release here, the same
            // every time there). A minority of files may differ; that they
            // compute the same bits is shown on the GPU by
            // op_nvrtc_images_compute_the_built_in_bits_for_every_format.
            redone.push(file);
        }
        println!(
            "built-in images NVRTC's compile here did not reproduce byte for byte: {redone:?}"
        );
        assert!(
            redone.len() * 2 < KERNEL_SOURCES.len(),
            "most built-in images must equal NVRTC's byte for byte; differing: {redone:?}"
        );
    }
}

/// The binary's own images (issue 12 point 4): used as they are on the
/// shipped architectures, refused with a reason when damaged, stale, for
/// another architecture or absent, and replaced by NVRTC's with that reason.
#[cfg(test)]
mod built_in_tests {
    use super::super::embedded::{EmbeddedImage, BUILT_IN};
    use super::super::kernel_units::{cubin_sha256, cubin_sm, SHIPPED_ARCHS};
    use super::*;

    /// A stand-in CUBIN: an ELF64 header whose flags say sm_`sm`.
    fn fake_cubin(sm: u32, tail: &str) -> &'static [u8] {
        let mut b = vec![0u8; 0x40];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[0x30..0x34].copy_from_slice(&((sm << 8) | 0x0600_0004).to_le_bytes());
        b.extend_from_slice(tail.as_bytes());
        Box::leak(b.into_boxed_slice())
    }

    const COMPILER: &str = "nvrtc 13.0 (a 1-byte library)";

    /// A one-image table for swiglu.cu on sm_90, with `key` and `sha256`
    /// as given (None: the true ones).
    fn table(cubin: &'static [u8], key: Option<&str>, sha: Option<&str>) -> BuiltIn {
        let (file, src) = swiglu_source();
        let true_key = image_key(COMPILER, "sm_90", &translation_unit(file, src));
        let image = EmbeddedImage {
            arch: "sm_90",
            file,
            key: Box::leak(key.map(str::to_string).unwrap_or(true_key).into_boxed_str()),
            sha256: Box::leak(
                sha.map(str::to_string)
                    .unwrap_or_else(|| cubin_sha256(cubin))
                    .into_boxed_str(),
            ),
            cubin,
        };
        BuiltIn {
            images: Box::leak(Box::new([image])),
            compiler: Some(COMPILER),
            absent_reason: "",
            requested: &["sm_90"],
        }
    }

    #[test]
    fn a_whole_image_is_used_and_a_damaged_stale_or_missing_one_is_not() {
        let cubin = fake_cubin(90, "a stand-in for a CUBIN");
        let sources = [swiglu_source()];
        let (images, compiler) = table(cubin, None, None)
            .for_arch("sm_90", &sources)
            .expect("whole");
        assert_eq!((images, compiler), (vec![("swiglu.cu", cubin)], COMPILER));

        let damaged = table(cubin, None, Some(&cubin_sha256(b"other bytes")));
        let why = damaged.for_arch("sm_90", &sources).unwrap_err();
        assert!(
            why.why.contains("damaged") && why.why.contains("swiglu.cu"),
            "{why:?}"
        );
        assert!(why.advice.contains("reinstall"), "{why:?}");

        let stale = table(cubin, Some(&"0".repeat(64)), None);
        let why = stale.for_arch("sm_90", &sources).unwrap_err();
        assert!(why.why.contains("not built from its sources"), "{why:?}");

        let other_arch = table(fake_cubin(80, "built for sm_80"), None, None);
        let why = other_arch.for_arch("sm_90", &sources).unwrap_err();
        assert!(why.why.contains("another architecture"), "{why:?}");

        let why = table(cubin, None, None)
            .for_arch("sm_86", &sources)
            .unwrap_err();
        assert!(
            why.why.contains("sm_86") && why.why.contains("sm_90"),
            "{why:?}"
        );
        assert!(
            why.advice
                .contains("sm_86 added to WORKER_ORCD_KERNEL_ARCHS"),
            "{why:?}"
        );

        let more = [swiglu_source(), ("topk.cu", "")];
        let why = table(cubin, None, None)
            .for_arch("sm_90", &more)
            .unwrap_err();
        assert!(why.why.contains("lack topk.cu"), "{why:?}");

        let none = BuiltIn {
            images: &[],
            compiler: None,
            absent_reason: "NVRTC was not found when it was built",
            requested: &["sm_90"],
        };
        let why = none.for_arch("sm_90", &sources).unwrap_err();
        assert!(
            why.why.contains("NVRTC was not found when it was built"),
            "{why:?}"
        );
        assert!(why.advice.contains("nvrtc-env.sh"), "{why:?}");
    }

    /// This binary carries every kernel file for every architecture its
    /// build was asked for (CI: the shipped ones, with NVRTC), each whole,
    /// built from these sources and for that architecture (read from the
    /// CUBIN's own header); a device of one of them loads them without
    /// compiling or touching the cache.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn the_binary_carries_every_kernel_for_the_requested_architectures() {
        assert!(!BUILT_IN.requested.is_empty(), "{}", BUILT_IN.absent_reason);
        if !super::super::embedded::ARCHS_FROM_ENV {
            assert_eq!(BUILT_IN.requested, SHIPPED_ARCHS);
        }
        assert_eq!(
            BUILT_IN.archs(),
            BUILT_IN.requested,
            "{}",
            BUILT_IN.absent_reason
        );
        for arch in BUILT_IN.requested {
            let (images, _) = BUILT_IN
                .for_arch(arch, KERNEL_SOURCES)
                .unwrap_or_else(|why| panic!("{arch}: {why:?}"));
            assert_eq!(images.len(), KERNEL_SOURCES.len());
            let sm: u32 = arch[3..].parse().unwrap();
            assert!(
                images.iter().all(|(_, c)| cubin_sm(c) == Some(sm)),
                "{arch}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let arch = BUILT_IN.requested[0];
        let set = kernel_set(dir.path(), arch, &BUILT_IN, KERNEL_SOURCES).expect("built in");
        assert_eq!(set.count(ImageOrigin::BuiltIn), KERNEL_SOURCES.len());
        assert_eq!(set.fallback, None);
        assert_eq!(Some(set.compiler.as_str()), BUILT_IN.compiler);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing compiled or cached"
        );
    }

    /// With NVRTC: an architecture the binary does not carry, or a damaged
    /// image, is compiled at start-up (into the cache) with the reason.
    #[test]
    #[cfg_attr(
        not(nvrtc),
        ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
    )]
    fn other_architectures_and_damaged_images_are_compiled_with_the_reason() {
        let sources = [swiglu_source()];
        let dir = tempfile::tempdir().unwrap();
        let set = kernel_set(dir.path(), "sm_86", &BUILT_IN, &sources).expect("compile");
        assert_eq!(set.count(ImageOrigin::Compiled), 1);
        let why = set.fallback.expect("a reason").why;
        assert!(why.contains("sm_86"), "{why}");
        assert_eq!(set.compiler, compiler_identity().unwrap());

        let damaged = table(
            fake_cubin(90, "not the real one"),
            None,
            Some(&"f".repeat(64)),
        );
        let set = kernel_set(dir.path(), "sm_90", &damaged, &sources).expect("compile");
        assert_eq!(set.count(ImageOrigin::Compiled), 1);
        assert!(set.fallback.unwrap().why.contains("damaged"));
        let (file, src) = swiglu_source();
        let real = compile_cubin(file, &translation_unit(file, src), "sm_90").unwrap();
        assert_eq!(
            set.images[0].cubin, real,
            "NVRTC's image, not the damaged one"
        );
    }

    #[test]
    fn architecture_names_and_cubin_headers_are_read() {
        use super::super::kernel_units::arch_sm;
        assert_eq!(arch_sm("sm_90"), Some(90));
        assert_eq!(arch_sm("sm_90a"), Some(90));
        assert_eq!(arch_sm("sm_100"), Some(100));
        for bad in [
            "sm_9",
            "sm_zz",
            "sm_",
            "90",
            "sm_90ab",
            "sm_1000",
            "compute_90",
        ] {
            assert_eq!(arch_sm(bad), None, "{bad}");
        }
        assert_eq!(cubin_sm(fake_cubin(89, "")), Some(89));
        assert_eq!(cubin_sm(b"\x7fELF"), None);
        assert_eq!(cubin_sm(&[0u8; 64]), None);
    }
}
