//! Compiles every embedded CUDA kernel with NVRTC to sm_90 CUBIN, with no GPU
//! (WORKER-4012, issue 5 point 2): a syntax or type error in `cuda/` fails CI.
//!
//! Needs libnvrtc.so.13 (`source ci/nvrtc-env.sh` installs it from PyPI).
//! Without it at build time (`cfg(nvrtc)`, build.rs) the tests are ignored
//! with that reason; under `CI=true` they always run, so a missing NVRTC is
//! a failure there: CI must really compile.

use worker_orcd::gpu::compile::{
    compile_cubin, nvrtc_present, nvrtc_version, translation_unit, KERNEL_SOURCES,
};
use worker_orcd::gpu::device::kernel_names;

/// The architectures compiled here: the H100/H200 the worker targets.
const ARCHES: &[&str] = &["sm_90"];

/// NVRTC was found at build time; fail (never skip) when it cannot be loaded now.
fn require_nvrtc(test: &str) {
    assert!(
        nvrtc_present(),
        "{test}: libnvrtc.so.13 is not loadable; run `source ci/nvrtc-env.sh` first"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[cfg_attr(
    not(nvrtc),
    ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
)]
fn every_kernel_file_compiles_to_cubin_and_exports_every_entry_point() {
    require_nvrtc("every_kernel_file_compiles");
    let (maj, min) = nvrtc_version().expect("nvrtc version");
    println!("NVRTC {maj}.{min}");
    let names = kernel_names();
    let mut found = vec![false; names.len()];
    for arch in ARCHES {
        for (name, src) in KERNEL_SOURCES {
            let unit = translation_unit(name, src);
            let cubin = compile_cubin(name, &unit, arch)
                .unwrap_or_else(|e| panic!("{name} for {arch}: {e}"));
            // ELF magic: a real CUBIN, not PTX text.
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{name}: NVRTC output is not a CUBIN"
            );
            println!("compiled {name} for {arch}: {} bytes", cubin.len());
            for (i, k) in names.iter().enumerate() {
                let mut sym = k.as_bytes().to_vec();
                sym.push(0);
                if contains(&cubin, &sym) {
                    found[i] = true;
                }
            }
        }
    }
    let missing: Vec<_> = names
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "entry points not exported by any kernel file: {missing:?}"
    );
}

#[test]
#[cfg_attr(
    not(nvrtc),
    ignore = "libnvrtc.so.13 not found at build time: source ci/nvrtc-env.sh"
)]
fn a_broken_kernel_fails_with_the_compiler_log() {
    require_nvrtc("a_broken_kernel_fails");
    let unit = translation_unit("broken.cu", "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_symbol; }\n");
    let err = compile_cubin("broken.cu", &unit, "sm_90")
        .expect_err("an undefined identifier must not compile");
    assert_eq!(err.code(), "CUDA_ERROR");
    assert!(
        err.message().contains("undefined_symbol"),
        "log should name the error: {}",
        err.message()
    );
    assert!(
        err.message().contains("broken.cu"),
        "log should name the file: {}",
        err.message()
    );
}
