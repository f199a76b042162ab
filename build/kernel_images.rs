//! Kernel images built into the binary (issue 12 point 4, WORKER-4012).
//!
//! The build compiles every kernel file (`kernel_units::KERNEL_SOURCES`) to
//! CUBIN for each architecture in `WORKER_ORCD_KERNEL_ARCHS` (comma
//! separated; default `kernel_units::SHIPPED_ARCHS`, empty for none) with
//! NVRTC, and writes `$OUT_DIR/kernel_images.rs`, which `src/gpu/embedded.rs`
//! includes: one `include_bytes!` per image, with the key of what it was
//! compiled from and its SHA-256. A worker on one of those architectures
//! then starts without compiling anything, and without NVRTC installed.
//!
//! Compiling takes about 25 s per architecture on two cores (at most
//! `NUM_JOBS` files at once), so finished images are cached in
//! `<target dir>/kernel-images/` under the same key the worker's runtime
//! cache uses (NVRTC library, architecture, options, translation unit): an
//! edit outside `cuda/` costs nothing, and the build profiles (check, test,
//! release) share one compile. Only CUDA 13's NVRTC is used.
//!
//! Without NVRTC at build time the binary carries no images and says why
//! (a cargo warning now; a logged reason when a GPU worker starts and
//! compiles them itself). Installing NVRTC system-wide later is noticed at
//! the next source change (or `touch build.rs`). A kernel that does not
//! compile fails the build, and so does an architecture NVRTC does not know.

use crate::kernel_units as units;
use std::path::{Path, PathBuf};

/// The build-time variable naming the architectures to build in.
const ARCHS_VAR: &str = "WORKER_ORCD_KERNEL_ARCHS";

/// Write `$OUT_DIR/kernel_images.rs` (and the images beside it).
pub fn embed(out_dir: &Path) {
    println!("cargo:rerun-if-env-changed={ARCHS_VAR}");
    let archs = requested_archs();
    let generated = match compiler_for(&archs) {
        Err(why) => absent(&archs, &why),
        Ok(compiler) => {
            let cache = build_cache_dir(out_dir);
            let images = compile_all(&archs, &compiler, &cache);
            write_images(out_dir, &archs, &compiler, &images)
        }
    };
    write_if_changed(&out_dir.join("kernel_images.rs"), generated.as_bytes());
}

/// CUDA 13's NVRTC, named as the image keys name it, or why the binary
/// carries no images (with a cargo warning when that is unexpected).
fn compiler_for(archs: &[String]) -> Result<String, String> {
    if archs.is_empty() {
        return Err(format!("it was built with {ARCHS_VAR} empty"));
    }
    if !units::nvrtc_loadable() {
        println!(
            "cargo:warning=worker-orcd is built without GPU kernel images: NVRTC (libnvrtc.so.13) was not \
             found. A GPU worker will compile its kernels at first start instead (about 30 s); \
             `source ci/nvrtc-env.sh` before building puts them in the binary."
        );
        return Err("NVRTC (libnvrtc.so.13) was not found when it was built".into());
    }
    let version = units::nvrtc_version_raw().unwrap_or_else(|e| panic!("{e}"));
    if version.0 != 13 {
        println!(
            "cargo:warning=worker-orcd is built without GPU kernel images: the NVRTC found is version \
             {}.{}, not CUDA 13's. `source ci/nvrtc-env.sh` before building puts CUDA 13's first.",
            version.0, version.1
        );
        return Err(format!(
            "the NVRTC found when it was built was {}.{}, not 13",
            version.0, version.1
        ));
    }
    check_supported(archs);
    rerun_if_library_changes();
    Ok(units::nvrtc_identity(version))
}

/// The architectures asked for: `$WORKER_ORCD_KERNEL_ARCHS` or the shipped
/// set, each checked, without repeats.
fn requested_archs() -> Vec<String> {
    let list = match std::env::var(ARCHS_VAR) {
        Ok(v) => v,
        Err(_) => units::SHIPPED_ARCHS.join(","),
    };
    let mut archs: Vec<String> = Vec::new();
    for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        assert!(
            units::arch_sm(a).is_some(),
            "{ARCHS_VAR} names \"{a}\", which is not an architecture like sm_90"
        );
        if !archs.iter().any(|b| b == a) {
            archs.push(a.to_string());
        }
    }
    archs
}

/// Every requested architecture is one this NVRTC compiles for.
fn check_supported(archs: &[String]) {
    let supported = units::nvrtc_supported_sms().unwrap_or_else(|e| panic!("{e}"));
    for a in archs {
        let sm = units::arch_sm(a).unwrap_or_default();
        assert!(
            supported.contains(&sm),
            "{ARCHS_VAR} names {a}, which this NVRTC does not compile for (it knows sm_{})",
            supported
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", sm_")
        );
    }
}

/// Rebuild the images when the NVRTC library file itself changes.
fn rerun_if_library_changes() {
    if let Some(path) = units::loaded_nvrtc_path() {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// `<target dir>/kernel-images`: the target folder is the one cargo marked
/// with CACHEDIR.TAG four or five levels above OUT_DIR
/// (`<target>[/<triple>]/<profile>/build/<package>-<hash>/out`); without
/// one there, OUT_DIR itself.
fn build_cache_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .skip(4)
        .take(2)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out_dir)
        .join("kernel-images")
}

/// One compiled image.
struct Image {
    arch: String,
    file: &'static str,
    key: String,
    cubin: Vec<u8>,
}

/// Every (architecture, file) image, from the build cache or compiled now,
/// in (architecture, file) order. At most `NUM_JOBS` compile at once
/// (NVRTC compiles separate programs concurrently).
fn compile_all(archs: &[String], compiler: &str, cache: &Path) -> Vec<Image> {
    let jobs: Vec<(&str, &'static str, String)> = archs
        .iter()
        .flat_map(|arch| {
            units::KERNEL_SOURCES
                .iter()
                .map(move |&(file, src)| (arch.as_str(), file, units::translation_unit(file, src)))
        })
        .collect();
    let threads = std::env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Option<Image>>> =
        std::sync::Mutex::new(jobs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((arch, file, unit)) = jobs.get(i) else {
                    break;
                };
                let image = one_image(arch, file, unit, compiler, cache);
                done.lock().expect("a compile thread panicked")[i] = Some(image);
            });
        }
    });
    done.into_inner()
        .expect("a compile thread panicked")
        .into_iter()
        .map(|image| image.expect("every job ran"))
        .collect()
}

/// One image from the build cache, or compiled now and cached.
fn one_image(arch: &str, file: &'static str, unit: &str, compiler: &str, cache: &Path) -> Image {
    let key = units::image_key(compiler, arch, unit);
    let path = units::cache_entry_path(cache, file, arch, &key);
    let cubin = match units::read_cache_entry(&path) {
        units::CacheEntry::Valid(cubin) => cubin,
        _ => {
            let cubin = units::compile_unit(file, unit, arch)
                .unwrap_or_else(|e| panic!("a kernel does not compile: {e}"));
            units::write_cache_entry(&path, &cubin);
            cubin
        }
    };
    Image {
        arch: arch.to_string(),
        file,
        key,
        cubin,
    }
}

/// The generated module for `images`, each written beside it.
fn write_images(out_dir: &Path, archs: &[String], compiler: &str, images: &[Image]) -> String {
    let dir = out_dir.join("kernel-images");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/kernel-images");
    let mut rows = String::new();
    for im in images {
        let path = dir.join(format!(
            "{}-{}.cubin",
            im.file.trim_end_matches(".cu"),
            im.arch
        ));
        write_if_changed(&path, &im.cubin);
        rows.push_str(&format!(
            "    EmbeddedImage {{ arch: {:?}, file: {:?}, key: {:?}, sha256: {:?}, cubin: include_bytes!({:?}) }},\n",
            im.arch,
            im.file,
            im.key,
            units::cubin_sha256(&im.cubin),
            path.display().to_string(),
        ));
    }
    format!(
        "// Generated by build.rs (build/kernel_images.rs); do not edit.\n\
         pub const REQUESTED_ARCHS: &[&str] = &{archs:?};\n\
         pub const ARCHS_FROM_ENV: bool = {};\n\
         pub const BUILT_WITH_NVRTC: Option<&str> = Some({compiler:?});\n\
         pub const ABSENT_REASON: &str = \"\";\n\
         pub const IMAGES: &[EmbeddedImage] = &[\n{rows}];\n",
        std::env::var_os(ARCHS_VAR).is_some()
    )
}

/// The generated module of a binary without images, saying why.
fn absent(archs: &[String], why: &str) -> String {
    format!(
        "// Generated by build.rs (build/kernel_images.rs); do not edit.\n\
         pub const REQUESTED_ARCHS: &[&str] = &{archs:?};\n\
         pub const ARCHS_FROM_ENV: bool = {};\n\
         pub const BUILT_WITH_NVRTC: Option<&str> = None;\n\
         pub const ABSENT_REASON: &str = {why:?};\n\
         pub const IMAGES: &[EmbeddedImage] = &[];\n",
        std::env::var_os(ARCHS_VAR).is_some()
    )
}

/// Write `bytes` to `path` unless it already holds them (keeps the mtime, so
/// nothing downstream rebuilds for an unchanged image).
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
