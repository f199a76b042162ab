//! Kernel images built into the binary (issue 12 point 4, WORKER-4012).
//!
//! The build compiled every kernel file to CUBIN for the shipped
//! architectures (`build/kernel_images.rs`); this module includes the table
//! it wrote and hands a device's images to `compile::kernel_set`. Each
//! image is checked before use: its key must be the one this binary's
//! sources and options give for that architecture and NVRTC version, and
//! its bytes must match their recorded SHA-256. Any mismatch, a missing
//! image or a binary built without images is a reason, not an error: the
//! worker then compiles with NVRTC and logs why.

use super::kernel_units::{arch_sm, cubin_sha256, cubin_sm, image_key, translation_unit};

/// One kernel file compiled for one architecture at build time.
#[derive(Debug)]
pub struct EmbeddedImage {
    pub arch: &'static str,
    pub file: &'static str,
    /// `kernel_units::image_key` of what it was compiled from.
    pub key: &'static str,
    /// SHA-256 (hex) of `cubin`.
    pub sha256: &'static str,
    pub cubin: &'static [u8],
}

mod generated {
    use super::EmbeddedImage;
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

/// (file, CUBIN) of each kernel file for one architecture.
pub type ArchImages = Vec<(&'static str, &'static [u8])>;

/// The images a binary carries and the NVRTC that compiled them.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn {
    pub images: &'static [EmbeddedImage],
    /// The compiler's identity (`kernel_units::nvrtc_identity`); None when
    /// the binary carries no images.
    pub compiler: Option<&'static str>,
    /// Why it carries none ("" when it does).
    pub absent_reason: &'static str,
    /// The architectures the build was asked for (WORKER_ORCD_KERNEL_ARCHS).
    pub requested: &'static [&'static str],
}

/// What this binary carries.
pub const BUILT_IN: BuiltIn = BuiltIn {
    images: generated::IMAGES,
    compiler: generated::BUILT_WITH_NVRTC,
    absent_reason: generated::ABSENT_REASON,
    requested: generated::REQUESTED_ARCHS,
};

/// Whether the build's architectures came from WORKER_ORCD_KERNEL_ARCHS
/// rather than the shipped default.
pub const ARCHS_FROM_ENV: bool = generated::ARCHS_FROM_ENV;

/// Why a binary's own images cannot be used on a device, and what an
/// operator can do about it (the worker compiles the kernels meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub why: String,
    pub advice: String,
}

impl Unusable {
    fn damaged(why: String) -> Unusable {
        Unusable {
            why,
            advice: "The worker binary looks damaged or wrongly built; reinstall it.".into(),
        }
    }
}

impl BuiltIn {
    /// The architectures with at least one image, in build order.
    pub fn archs(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for im in self.images {
            if !out.contains(&im.arch) {
                out.push(im.arch);
            }
        }
        out
    }

    /// The CUBIN of every file in `sources` for `arch`, in `sources` order,
    /// with the identity of the NVRTC that compiled them; or why they cannot
    /// be used and what to do about it.
    pub fn for_arch(
        &self,
        arch: &str,
        sources: &[(&'static str, &str)],
    ) -> Result<(ArchImages, &'static str), Unusable> {
        let Some(compiler) = self.compiler else {
            return Err(Unusable {
                why: format!(
                    "this binary carries no compiled kernels ({})",
                    self.absent_reason
                ),
                advice:
                    "A worker built where CUDA 13's NVRTC is installed (`source ci/nvrtc-env.sh` \
                         before `cargo build`) starts without compiling."
                        .into(),
            });
        };
        if !self.images.iter().any(|im| im.arch == arch) {
            return Err(Unusable {
                why: format!(
                    "this binary carries compiled kernels for {} but not for this GPU's {arch}",
                    self.archs().join(", ")
                ),
                advice: format!(
                    "A worker built with {arch} added to WORKER_ORCD_KERNEL_ARCHS (default {}) \
                     starts without compiling.",
                    super::kernel_units::SHIPPED_ARCHS.join(",")
                ),
            });
        }
        let mut out = Vec::with_capacity(sources.len());
        for &(file, src) in sources {
            let Some(im) = self
                .images
                .iter()
                .find(|im| im.arch == arch && im.file == file)
            else {
                return Err(Unusable::damaged(format!(
                    "this binary's compiled kernels for {arch} lack {file}"
                )));
            };
            if im.key != image_key(compiler, arch, &translation_unit(file, src)) {
                return Err(Unusable::damaged(format!(
                    "the compiled {file} for {arch} in this binary was not built from its sources"
                )));
            }
            if im.sha256 != cubin_sha256(im.cubin) {
                return Err(Unusable::damaged(format!(
                    "the compiled {file} for {arch} in this binary is damaged (its SHA-256 does not match)"
                )));
            }
            if cubin_sm(im.cubin) != arch_sm(arch) {
                return Err(Unusable::damaged(format!(
                    "the compiled {file} for {arch} in this binary is for another architecture (sm {:?})",
                    cubin_sm(im.cubin)
                )));
            }
            out.push((file, im.cubin));
        }
        Ok((out, compiler))
    }
}
