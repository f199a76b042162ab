//! Every CUDA kernel compiles to CUBIN with no GPU (WORKER-4012, issue 5
//! point 2; issue 12 point 4): the build compiles each kernel file for the
//! architectures it is asked for (the shipped ones by default) with NVRTC
//! and puts the CUBIN in the binary, so a syntax or type error in `cuda/`
//! fails the build; these tests check that the images are there, are CUBIN,
//! and together export every entry point the launchers use, on every such
//! architecture; and that a broken kernel fails with the compiler's log.
//!
//! Needs libnvrtc.so.13 at build time (`source ci/nvrtc-env.sh` installs it
//! from PyPI). Without it (`cfg(nvrtc)`, build.rs) the tests are ignored
//! with that reason; under `CI=true` they always run, so a missing NVRTC is
//! a failure there: CI must really compile.

use worker_orcd::gpu::compile::{compile_cubin, nvrtc_present, translation_unit, KERNEL_SOURCES};
use worker_orcd::gpu::device::kernel_names;
use worker_orcd::gpu::embedded::BUILT_IN;

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
fn every_built_architecture_carries_cubin_exporting_every_entry_point() {
    let names = kernel_names();
    assert!(!BUILT_IN.requested.is_empty(), "{}", BUILT_IN.absent_reason);
    for arch in BUILT_IN.requested {
        let (images, compiler) = BUILT_IN
            .for_arch(arch, KERNEL_SOURCES)
            .unwrap_or_else(|why| panic!("{arch}: {why:?}"));
        println!("{arch}: {} files compiled by {compiler}", images.len());
        let mut found = vec![false; names.len()];
        for (file, cubin) in images {
            // ELF magic: a real CUBIN, not PTX text.
            assert_eq!(&cubin[..4], b"\x7fELF", "{file} for {arch} is not a CUBIN");
            println!("  {file}: {} bytes", cubin.len());
            for (i, k) in names.iter().enumerate() {
                let mut sym = k.as_bytes().to_vec();
                sym.push(0);
                if contains(cubin, &sym) {
                    found[i] = true;
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
            "{arch}: entry points not exported by any kernel file: {missing:?}"
        );
    }
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
