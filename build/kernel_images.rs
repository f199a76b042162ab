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
//! Compiling takes about 25 s per architecture on two cores, so finished
//! images are cached in `<target dir>/kernel-images/` under the same key the
//! worker's runtime cache uses (NVRTC version, architecture, options,
//! translation unit): an edit outside `cuda/` costs nothing, and the build
//! profiles (check, test, release) share one compile.
//!
//! Without NVRTC at build time the binary carries no images and says why
//! (a cargo warning now; a logged reason when a GPU worker starts and
//! compiles them itself). A kernel that does not compile fails the build.

use crate::kernel_units as units;
use std::path::{Path, PathBuf};

/// The build-time variable naming the architectures to build in.
const ARCHS_VAR: &str = "WORKER_ORCD_KERNEL_ARCHS";

/// Write `$OUT_DIR/kernel_images.rs` (and the images beside it).
pub fn embed(out_dir: &Path) {
    println!("cargo:rerun-if-env-changed={ARCHS_VAR}");
    let archs = requested_archs();
    let generated = if archs.is_empty() {
        absent(&format!("it was built with {ARCHS_VAR} empty"))
    } else if !units::nvrtc_loadable() {
        println!(
            "cargo:warning=worker-orcd is built without GPU kernel images: NVRTC (libnvrtc.so.13) was not \
             found. A GPU worker will compile its kernels at first start instead (about 30 s); \
             `source ci/nvrtc-env.sh` before building puts them in the binary."
        );
        absent("NVRTC (libnvrtc.so.13) was not found when it was built")
    } else {
        let nvrtc = units::nvrtc_version_raw().unwrap_or_else(|e| panic!("{e}"));
        let cache = build_cache_dir(out_dir);
        let images = compile_all(&archs, nvrtc, &cache);
        write_images(out_dir, nvrtc, &images)
    };
    let path = out_dir.join("kernel_images.rs");
    write_if_changed(&path, generated.as_bytes());
}

/// The architectures asked for: `$WORKER_ORCD_KERNEL_ARCHS` or the shipped set.
fn requested_archs() -> Vec<String> {
    let list = match std::env::var(ARCHS_VAR) {
        Ok(v) => v,
        Err(_) => units::SHIPPED_ARCHS.join(","),
    };
    let archs: Vec<String> = list
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    for a in &archs {
        let digits = a.strip_prefix("sm_").unwrap_or("");
        assert!(
            !digits.is_empty()
                && digits.len() <= 4
                && digits.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{ARCHS_VAR} names \"{a}\", which is not an architecture like sm_90"
        );
    }
    archs
}

/// `<target dir>/kernel-images`: the nearest folder above OUT_DIR that cargo
/// marked with CACHEDIR.TAG (the target folder), else OUT_DIR itself.
fn build_cache_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
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

/// Every (architecture, file) image, from the build cache or compiled now
/// (in parallel: NVRTC compiles separate programs concurrently).
fn compile_all(archs: &[String], nvrtc: (i32, i32), cache: &Path) -> Vec<Image> {
    let jobs: Vec<(String, &'static str, String)> = archs
        .iter()
        .flat_map(|arch| {
            units::KERNEL_SOURCES
                .iter()
                .map(move |&(file, src)| (arch.clone(), file, units::translation_unit(file, src)))
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(arch, file, unit)| {
                s.spawn(move || {
                    let key = units::image_key(nvrtc, arch, unit);
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
                        arch: arch.clone(),
                        file,
                        key,
                        cubin,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The generated module for `images`, each written beside it.
fn write_images(out_dir: &Path, nvrtc: (i32, i32), images: &[Image]) -> String {
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
         pub const BUILT_WITH_NVRTC: Option<(i32, i32)> = Some(({}, {}));\n\
         pub const ABSENT_REASON: &str = \"\";\n\
         pub const IMAGES: &[EmbeddedImage] = &[\n{rows}];\n",
        nvrtc.0, nvrtc.1
    )
}

/// The generated module of a binary without images, saying why.
fn absent(why: &str) -> String {
    format!(
        "// Generated by build.rs (build/kernel_images.rs); do not edit.\n\
         pub const BUILT_WITH_NVRTC: Option<(i32, i32)> = None;\n\
         pub const ABSENT_REASON: &str = {why:?};\n\
         pub const IMAGES: &[EmbeddedImage] = &[];\n"
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
