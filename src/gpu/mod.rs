//! The CUDA boundary: the only module of worker-orcd with `unsafe` code
//! (WORKER-4400–4403, 4410–4413). Everything device-side goes through here:
//! library presence checks, the context and stream, RAII device buffers,
//! the kernels' CUBIN (built in, or compiled by NVRTC), validated kernel launchers and
//! graph capture, the cuBLAS handle for prefill GEMMs (KERNEL-GEMM-001..005).
//! Every `unsafe` block states its invariant in `// SAFETY:`.
//!
//! cudarc loads libcuda/libnvrtc at run time (`dynamic-loading`) and panics
//! when one is missing, so [`probe`] and [`Gpu::open`] check presence first and
//! return a `CUDA_ERROR` that names the missing library and points at
//! `backend: "cpu"`: the crate builds and its CPU paths run with no CUDA at all.

pub mod attention;
pub mod batched;
pub mod compile;
pub mod device;
pub mod embedded;
#[cfg(test)]
pub mod emu;
pub mod gemm;
pub mod inbox;
pub mod kernel_units;
pub mod launch;
pub mod launch_shape;
pub mod opening;
pub mod ops;
pub mod qkv;
#[cfg(test)]
pub(crate) mod test_support;
pub mod topk;

pub use device::{DeviceBuffer, Gpu, GpuGraph, Span};
pub use opening::GpuOpening;

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};
use serde::Serialize;

use crate::error::{Result, WorkerError};

/// What the worker learned about its GPU at start-up (logged, reported in the ECP).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: u32,
    pub name: String,
    /// (major, minor), e.g. (9, 0) on H100/H200.
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors: cuBLAS promises bit-identical results only
    /// on the same architecture with the same count (numerics version).
    pub multiprocessors: i32,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// e.g. "13.0" from cuDriverGetVersion.
    pub driver_version: String,
    pub nvrtc_version: String,
    /// Resolved paths of the CUDA libraries this process has loaded.
    pub libraries: Vec<String>,
}

/// Error-mapping closure for a driver call: CUDA_ERROR, or VRAM_OOM for out-of-memory.
pub(crate) fn cuda_err(what: &str) -> impl FnOnce(DriverError) -> WorkerError + '_ {
    move |e| device::map_driver(what, e)
}

fn missing(lib: &str, what: &str) -> WorkerError {
    WorkerError::cuda(format!(
        "{lib} could not be loaded ({what}); this machine has no usable CUDA {what}. \
         Install the NVIDIA driver / CUDA 13 runtime libraries, or start the worker with backend \"cpu\""
    ))
}

/// Check that the driver library can be opened. NVRTC is needed only when
/// the binary carries no kernels for the GPU's architecture, and is checked
/// then (`compile::kernel_set`); cuBLAS (prefill GEMMs) is checked when the
/// device is opened (`gemm::Blas::new`), with the same kind of message.
pub fn probe_libraries() -> Result<()> {
    // SAFETY: only tries to dlopen libcuda by its candidate names; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(missing("libcuda.so (the NVIDIA driver library)", "driver"));
    }
    Ok(())
}

/// Paths of loaded CUDA libraries, read from /proc/self/maps (Linux).
pub fn loaded_library_paths() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            ["libcuda.so", "libnvrtc", "libcublas"]
                .iter()
                .any(|n| p.contains(n))
        })
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

pub(crate) fn device_info(ctx: &Arc<CudaContext>, ordinal: u32) -> Result<DeviceInfo> {
    let name = ctx.name().map_err(cuda_err("reading the device name"))?;
    let cc = ctx
        .compute_capability()
        .map_err(cuda_err("reading the compute capability"))?;
    let (free, total) = ctx
        .mem_get_info()
        .map_err(cuda_err("querying device memory"))?;
    let multiprocessors = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(cuda_err("reading the multiprocessor count"))?;
    let mut v = 0i32;
    // SAFETY: libcuda is loaded (a context exists); `v` is a valid out-pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(cuda_err("reading the driver version"))?;
    let nvrtc_version = match compile::nvrtc_version() {
        Ok((a, b)) => format!("{a}.{b}"),
        Err(_) => "absent".to_string(),
    };
    Ok(DeviceInfo {
        ordinal,
        name,
        compute_capability: cc,
        multiprocessors,
        total_bytes: total as u64,
        free_bytes: free as u64,
        driver_version: format!("{}.{}", v / 1000, (v % 1000) / 10),
        nvrtc_version,
        libraries: loaded_library_paths(),
    })
}

/// Describe GPU `device` without loading kernels. Never panics: a missing
/// library or device is a `CUDA_ERROR` saying what is missing.
pub fn probe(device: u32) -> Result<DeviceInfo> {
    probe_libraries()?;
    let count = CudaContext::device_count().map_err(cuda_err("counting CUDA devices"))?;
    if device as i64 >= count as i64 {
        return Err(WorkerError::cuda(format!(
            "GPU {device} not found: the driver reports {count} CUDA device(s); check gpu_device or start with backend \"cpu\""
        )));
    }
    let ctx = CudaContext::new(device as usize).map_err(cuda_err("creating a CUDA context"))?;
    let info = device_info(&ctx, device)?;
    tracing::info!(human = %format!("Found GPU {device}: {} with compute capability {}.{}, driver {}.",
            info.name, info.compute_capability.0, info.compute_capability.1, info.driver_version),
        device = device, name = %info.name, cc = ?info.compute_capability, driver = %info.driver_version,
        nvrtc = %info.nvrtc_version, libraries = ?info.libraries, "CUDA device probed");
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_names_what_is_missing() {
        match probe(0) {
            Ok(info) => assert!(!info.name.is_empty()),
            Err(e) => {
                assert_eq!(e.code(), "CUDA_ERROR");
                let m = e.message();
                assert!(
                    m.contains("cpu"),
                    "message should point at the cpu backend: {m}"
                );
            }
        }
    }

    #[test]
    fn absurd_device_is_refused_cleanly() {
        let e = probe(10_000).expect_err("no machine has 10001 GPUs");
        assert_eq!(e.code(), "CUDA_ERROR");
    }

    #[test]
    fn translation_units_inline_the_header() {
        for (name, src) in compile::KERNEL_SOURCES {
            assert!(
                src.contains("#include \"common.cuh\""),
                "{name} must include common.cuh"
            );
            let unit = compile::translation_unit(name, src);
            assert!(
                !unit.contains("#include"),
                "{name}: includes must be resolved"
            );
            assert!(unit.contains("warp_sum"));
        }
    }
}
