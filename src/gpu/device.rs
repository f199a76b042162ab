//! The device handle: context, stream, loaded kernels, RAII buffers, copies
//! and graph capture (WORKER-4010, 4011, 4100–4103, 4400–4403).
//!
//! Why one stream and no event tracking: the engine runs one sequence on one
//! stream, so cudarc's cross-stream events are pure overhead and would stop
//! the decode step from being captured as a CUDA graph. Buffers are plain
//! device allocations (no managed or host-mapped memory, WORKER-4100); free
//! VRAM is checked before each allocation so a shortfall fails fast with the
//! needed and available bytes (VRAM_OOM) instead of a driver error.
//! `open` also creates the cuBLAS handle for prefill GEMMs on that one stream
//! (`gemm.rs`), so a missing libcublas is a start-up error.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DriverError,
};

use super::compile::{kernel_set, ImageOrigin, KernelSet, KERNEL_SOURCES};
use super::embedded::Unusable;
use super::gemm::Blas;
use super::{cuda_err, probe_libraries, DeviceInfo};
use crate::error::{Result, WorkerError};

/// The variants the `MATVEC` macros of cuda/matvec.cu, cuda/matvec_rows.cu
/// and cuda/matvec_tiles.cu define for every format.
const MATVEC_VARIANTS: [&str; 16] = [
    "", "_gu", "_b8", "_gu_b8", "_st", "_gu_st", "_qkv_st", "_bst", "_gu_bst", "_qkv_bst", "_bt",
    "_gu_bt", "_tl", "_gu_tl", "_mm", "_gu_mm",
];

/// Kernels that exist once, whatever the format.
const SINGLE_KERNELS: &[&str] = &[
    "rmsnorm",
    "row_rms",
    "rope_kv",
    "attn_partial",
    "attn_decode_64",
    "attn_decode_128",
    "attn_prefill",
    "attn_prefill_rt_64",
    "attn_prefill_rt_128",
    "attn_prefill_rt1_64",
    "attn_prefill_rt1_128",
    "add_bias",
    "split_tf32_rows",
    "add_parts",
    "swiglu",
    "add_inplace",
    "topk",
    "topk_radix_hist",
    "topk_radix_gather",
    "sha256_leaves",
];

/// Every kernel entry point the engine may launch, loaded at start-up so a
/// missing one is a start-up error, not a mid-request one: the per-format
/// families (mat-vec variants, embed, dequant plain and split) from one
/// table of formats.
pub fn kernel_names() -> Vec<String> {
    let per_format = super::ops::FORMATS.iter().flat_map(|&(_, f)| {
        MATVEC_VARIANTS
            .iter()
            .map(move |v| format!("matvec_{f}{v}"))
            .chain([
                format!("embed_{f}"),
                format!("dequant_{f}"),
                format!("dequant_split_{f}"),
            ])
    });
    per_format
        .chain(super::qkv::mixed_kernel_names())
        .chain(SINGLE_KERNELS.iter().map(|s| s.to_string()))
        .collect()
}

/// Let each format's kernels of one batched variant (`_bt`: `variants` =
/// ["_bt", "_gu_bt"]) use the dynamic shared memory `smem` gives them (over
/// the 48 KiB default, so it must be granted per function); returns the
/// formats where the device agreed for every variant.
fn grant_rows_smem(
    funcs: &HashMap<String, CudaFunction>,
    variants: [&str; 2],
    smem: fn(crate::model::gguf::GgmlType) -> usize,
) -> Vec<crate::model::gguf::GgmlType> {
    super::ops::FORMATS
        .iter()
        .filter(|&&(t, f)| {
            variants
                .iter()
                .all(|v| grant_smem(funcs, &format!("matvec_{f}{v}"), smem(t)))
        })
        .map(|&(t, _)| t)
        .collect()
}

/// Let kernel `name` use `bytes` of dynamic shared memory (over the 48 KiB
/// default, so it must be granted per function); whether the device agreed.
fn grant_smem(funcs: &HashMap<String, CudaFunction>, name: &str, bytes: usize) -> bool {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
    let Ok(need) = i32::try_from(bytes) else {
        return false;
    };
    funcs
        .get(name)
        .is_some_and(|k| k.set_attribute(MAX_DYN, need).is_ok())
}

/// Let the register-tiled prefill attention kernels use the shared memory
/// their layouts need (over the 48 KiB default); returns the (head size,
/// key groups) where the device agreed.
fn grant_prefill_rt_smem(funcs: &HashMap<String, CudaFunction>) -> Vec<(usize, usize)> {
    use super::attention::{prefill_rt_name, prefill_rt_smem};
    [(64usize, 2usize), (128, 2), (64, 1), (128, 1)]
        .into_iter()
        .filter(|&(hd, groups)| {
            prefill_rt_smem(hd, groups)
                .is_some_and(|bytes| grant_smem(funcs, prefill_rt_name(hd, groups), bytes))
        })
        .collect()
}

/// One device allocation, freed exactly once when dropped (cudarc's
/// `CudaSlice` owns the pointer).
pub struct DeviceBuffer {
    pub(super) slice: CudaSlice<u8>,
    ptr: u64,
    pub(super) what: String,
}

impl DeviceBuffer {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }

    /// A checked window of `bytes` bytes at `offset` inside this buffer.
    pub fn span(&self, offset: usize, bytes: usize) -> Result<Span<'_>> {
        match offset.checked_add(bytes) {
            Some(end) if end <= self.len() => Ok(Span {
                ptr: self.ptr + offset as u64,
                bytes,
                _buf: PhantomData,
            }),
            _ => Err(WorkerError::internal(format!(
                "device window {offset}+{bytes} is outside buffer '{}' of {} bytes",
                self.what,
                self.len()
            ))),
        }
    }

    /// The whole buffer as a span.
    pub fn all(&self) -> Span<'_> {
        Span {
            ptr: self.ptr,
            bytes: self.len(),
            _buf: PhantomData,
        }
    }

    /// A span of `n` f32 values starting at element `first`.
    pub fn f32s(&self, first: usize, n: usize) -> Result<Span<'_>> {
        let off = first
            .checked_mul(4)
            .ok_or_else(|| WorkerError::internal("f32 offset overflow"))?;
        let len = n
            .checked_mul(4)
            .ok_or_else(|| WorkerError::internal("f32 length overflow"))?;
        self.span(off, len)
    }
}

/// A bounds-checked device address range that cannot outlive its buffer.
/// Kernel launchers check every span against the sizes the launch implies.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
    _buf: PhantomData<&'a DeviceBuffer>,
}

impl Span<'_> {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn need(&self, bytes: usize, what: &str) -> Result<u64> {
        if bytes <= self.bytes {
            Ok(self.ptr)
        } else {
            Err(WorkerError::internal(format!(
                "kernel argument '{what}' needs {bytes} bytes but its device window holds {}",
                self.bytes
            )))
        }
    }
}

/// A captured sequence of launches, replayed with one call.
pub struct GpuGraph {
    graph: CudaGraph,
}

// SAFETY: a graph exec handle is not tied to the thread that captured it; the
// owner launches it through `CudaGraph::launch`, which binds the context to the
// calling thread first, and the engine holding it is used by one thread at a time.
unsafe impl Send for GpuGraph {}

impl GpuGraph {
    pub fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(cuda_err("replaying the decode graph"))
    }
}

/// An open device: context, one stream, the compiled kernels, the cuBLAS
/// handle for prefill GEMMs.
pub struct Gpu {
    // First field, so it is dropped first: the handle uses the stream and
    // its workspace lives in the context.
    blas: Option<Blas>,
    pub(crate) stream: Arc<CudaStream>,
    pub(super) ctx: Arc<CudaContext>,
    funcs: HashMap<String, CudaFunction>,
    /// Formats whose token-on-lane batched kernels (`_bt`) were granted the
    /// shared memory they need; the others use the staged `_bst` kernels.
    rows_bt: Vec<crate::model::gguf::GgmlType>,
    /// Formats whose register-tiled batched kernels (`_tl`) got their shared memory.
    rows_tl: Vec<crate::model::gguf::GgmlType>,
    /// Formats whose tensor-core `_mm` kernels are ready (`rows_mm_ready`).
    rows_mm: Vec<crate::model::gguf::GgmlType>,
    /// (Head size, key groups) of the register-tiled prefill attention
    /// kernels granted their shared memory.
    prefill_rt: Vec<(usize, usize)>,
    /// Tests only: route batched mat-vecs past the `_tl` kernels, so a
    /// profile can time `_bt` beside them on the same card.
    #[cfg(test)]
    tiles_off: std::sync::atomic::AtomicBool,
    /// Tests only: route decode attention to `attn_partial` (one block per
    /// head), so tests and the profile can hold it beside `attn_decode_<hd>`.
    #[cfg(test)]
    per_head_attention: std::sync::atomic::AtomicBool,
    /// Tests only: route prefill attention to the one-key-group kernels.
    #[cfg(test)]
    prefill_one_group: std::sync::atomic::AtomicBool,
    /// Whether launches use programmatic dependent launch (`gpu::launch`).
    pdl: bool,
    info: DeviceInfo,
    /// Where the kernel images came from and which NVRTC compiled them.
    pub kernels: KernelProvenance,
}

/// Where a device's kernel images came from (logged at open) and which
/// NVRTC version compiled them (part of the numerics version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelProvenance {
    /// `kernel_units::nvrtc_identity` of the compiler.
    pub compiler: String,
    pub built_in: usize,
    pub from_cache: usize,
    pub compiled: usize,
}

/// Why launches do not use programmatic dependent launch.
#[derive(Debug, PartialEq, Eq)]
enum PdlOff {
    /// WORKER_ORCD_PDL is `0`.
    Default,
    /// Asked for but not possible, or a value that is neither 0 nor 1: the
    /// operator's reason, logged as a warning.
    Refused(String),
}

/// Whether launches use PDL, from `WORKER_ORCD_PDL` and the GPU's compute
/// capability (major): on by default (unset or `1`) on 9.0 and above, off for
/// `0`; unset on an older GPU is plainly off, an explicit `1` there a warning.
fn pdl_choice(setting: Option<&str>, major: i32) -> std::result::Result<(), PdlOff> {
    match setting {
        Some("0") => Err(PdlOff::Default),
        None | Some("1") if major >= 9 => Ok(()),
        None => Err(PdlOff::Default),
        Some("1") => Err(PdlOff::Refused(format!(
            "WORKER_ORCD_PDL=1 asks for programmatic dependent launch, which needs compute \
             capability 9.0 or above; this GPU has {major}.x. Unset it to silence this warning."
        ))),
        Some(other) => Err(PdlOff::Refused(format!(
            "WORKER_ORCD_PDL={other:?} is neither 0 nor 1, so programmatic dependent launch \
             stays off; set it to 1 to turn it on, or unset it."
        ))),
    }
}

/// Say why the kernels did not come from the binary: a warning when some
/// were compiled now (a slow start), a note when the on-disk cache had them.
fn log_fallback(arch: &str, unusable: &Unusable, compiled: usize) {
    let cache = super::compile::cache_dir();
    if compiled > 0 {
        tracing::warn!(
            human = %format!(
                "Compiled {compiled} kernel files for this GPU ({arch}) at start-up, because {}. This takes \
                 about 30 s the first time; later starts load them from {}. {}",
                unusable.why, cache.display(), unusable.advice
            ),
            arch = %arch, reason = %unusable.why, compiled = compiled, "kernels compiled at start-up"
        );
    } else {
        tracing::info!(
            human = %format!(
                "Loaded this GPU's ({arch}) kernels from the on-disk cache {}, compiled by an earlier start, \
                 because {}. {}",
                cache.display(), unusable.why, unusable.advice
            ),
            arch = %arch, reason = %unusable.why, "kernels loaded from the on-disk cache"
        );
    }
}

impl KernelProvenance {
    fn of(set: &KernelSet) -> Self {
        KernelProvenance {
            compiler: set.compiler.clone(),
            built_in: set.count(ImageOrigin::BuiltIn),
            from_cache: set.count(ImageOrigin::Cache),
            compiled: set.count(ImageOrigin::Compiled),
        }
    }

    /// E.g. "10 built into the binary, 0 from the on-disk cache, 0 compiled now".
    pub fn describe(&self) -> String {
        format!(
            "{} built into the binary, {} from the on-disk cache, {} compiled now",
            self.built_in, self.from_cache, self.compiled
        )
    }
}

impl Gpu {
    /// Open `device` and load the kernels for its architecture: the
    /// binary's own images, else NVRTC's (cached on disk), with the reason
    /// logged. NVRTC is needed only in that second case.
    pub fn open(device: u32) -> Result<Self> {
        Self::open_with(device, &super::embedded::BUILT_IN)
    }

    /// [`Gpu::open`] with `built` in place of the binary's own images (the
    /// GPU suite opens one with none, to run NVRTC's images on the device).
    pub fn open_with(device: u32, built: &super::embedded::BuiltIn) -> Result<Self> {
        probe_libraries()?;
        let count = CudaContext::device_count().map_err(cuda_err("counting CUDA devices"))?;
        if device as i64 >= count as i64 {
            return Err(WorkerError::cuda(format!(
                "GPU {device} does not exist: the driver reports {count} device(s); set gpu_device to 0..{} or use backend \"cpu\"",
                count.max(1) - 1
            )));
        }
        let ctx =
            CudaContext::new(device as usize).map_err(cuda_err("creating the CUDA context"))?;
        // SAFETY: this engine uses exactly one stream for every allocation,
        // copy and launch, so cross-stream synchronisation is never needed;
        // called before any buffer is created.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(cuda_err("creating a CUDA stream"))?;
        let info = super::device_info(&ctx, device)?;
        let arch = format!(
            "sm_{}{}",
            info.compute_capability.0, info.compute_capability.1
        );
        let names = kernel_names();
        let mut funcs = HashMap::new();
        let set = kernel_set(&super::compile::cache_dir(), &arch, built, KERNEL_SOURCES)?;
        if let Some(unusable) = &set.fallback {
            log_fallback(&arch, unusable, set.count(ImageOrigin::Compiled));
        }
        let kernels = KernelProvenance::of(&set);
        for image in set.images {
            let file = image.file;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.cubin))
                .map_err(cuda_err(&format!("loading the {file} CUBIN")))?;
            for name in &names {
                if let Ok(f) = module.load_function(name) {
                    funcs.insert(name.clone(), f);
                }
            }
        }
        if let Some(missing) = names.iter().find(|n| !funcs.contains_key(*n)) {
            return Err(WorkerError::cuda(format!(
                "kernel {missing} is missing from the compiled modules"
            )));
        }
        let pdl_choice = pdl_choice(crate::env::PDL.get().as_deref(), info.compute_capability.0);
        let pdl = pdl_choice.is_ok();
        let rows_bt = grant_rows_smem(&funcs, ["_bt", "_gu_bt"], super::launch_shape::rows_bt_smem);
        let rows_tl = grant_rows_smem(&funcs, ["_tl", "_gu_tl"], super::launch_shape::rows_tl_smem);
        // The tensor-core kernels need sm_80's TF32 MMA.
        let rows_mm = if info.compute_capability.0 >= 8 {
            grant_rows_smem(&funcs, ["_mm", "_gu_mm"], super::launch_shape::rows_mm_smem)
        } else {
            Vec::new()
        };
        let prefill_rt = grant_prefill_rt_smem(&funcs);
        let mut gpu = Self {
            blas: None,
            stream,
            ctx,
            funcs,
            rows_bt,
            rows_tl,
            rows_mm,
            prefill_rt,
            #[cfg(test)]
            tiles_off: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            per_head_attention: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            prefill_one_group: std::sync::atomic::AtomicBool::new(false),
            pdl,
            info,
            kernels,
        };
        gpu.blas = Some(Blas::new(&gpu)?);
        if gpu.pdl {
            gpu.probe_pdl()?;
        }
        if let Err(PdlOff::Refused(why)) = &pdl_choice {
            tracing::warn!(human = why.as_str(), "WORKER_ORCD_PDL refused");
        }
        tracing::info!(
            human = match (gpu.pdl, &pdl_choice) {
                (true, _) => "Kernels launch while the previous one finishes (programmatic dependent launch, the default on this GPU; WORKER_ORCD_PDL=0 turns it off).",
                (false, Ok(())) => "Kernels launch one after another: programmatic dependent launch failed its start-up probe (see the warning above).",
                (false, Err(PdlOff::Default)) => "Kernels launch one after another (programmatic dependent launch is off: WORKER_ORCD_PDL=0, or a GPU older than compute capability 9.0).",
                (false, Err(PdlOff::Refused(_))) => "Kernels launch one after another (see the warning above about WORKER_ORCD_PDL).",
            },
            pdl = gpu.pdl,
            "kernel launches"
        );
        gpu.info.libraries = super::loaded_library_paths();
        tracing::info!(human = "The cuBLAS library is ready for the prefill matrix products.",
            libraries = ?gpu.info.libraries, "cuBLAS handle ready (prefill GEMM)");
        Ok(gpu)
    }

    /// The cuBLAS handle (always present once `open` returned).
    pub(crate) fn blas(&self) -> Result<&Blas> {
        self.blas
            .as_ref()
            .ok_or_else(|| WorkerError::internal("the cuBLAS handle is missing"))
    }

    /// Device bytes held by the cuBLAS workspace (reported as scratch).
    pub fn blas_workspace_bytes(&self) -> usize {
        self.blas.as_ref().map_or(0, Blas::workspace_bytes)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// (free, total) device bytes now.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(cuda_err("querying free device memory"))
    }

    /// Allocate `bytes` zeroed bytes, after checking they are free.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        let (free, _) = self.mem_info()?;
        // Keep a small margin for the driver's own allocations (graphs, modules).
        let margin = 64usize << 20;
        if bytes.saturating_add(margin) > free {
            return Err(WorkerError::VramOom {
                message: format!(
                    "not enough free VRAM on GPU {} for {what}: need {bytes} bytes (+{margin} margin), {free} bytes available; \
                     use a smaller model or max_context, or free the GPU",
                    self.info.ordinal
                ),
            });
        }
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(cuda_err(&format!("allocating {bytes} bytes for {what}")))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        Ok(DeviceBuffer {
            slice,
            ptr,
            what: what.to_string(),
        })
    }

    /// Copy host bytes into `buf` at byte `offset`.
    pub fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        buf: &mut DeviceBuffer,
        offset: usize,
        src: &[T],
    ) -> Result<()> {
        let bytes = std::mem::size_of_val(src);
        buf.span(offset, bytes)?;
        // SAFETY: any T: DeviceRepr is plain data; viewing it as bytes is sound.
        let raw = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, bytes) };
        let mut view = buf.slice.slice_mut(offset..offset + bytes);
        self.stream
            .memcpy_htod(raw, &mut view)
            .map_err(cuda_err(&format!("copying {bytes} bytes to {}", buf.what)))
    }

    /// Copy `n` values of T from a span back to the host (synchronises the stream).
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuffer,
        offset: usize,
        n: usize,
    ) -> Result<Vec<T>> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| WorkerError::internal("download size overflow"))?;
        buf.span(offset, bytes)?;
        let mut raw = vec![0u8; bytes];
        let view = buf.slice.slice(offset..offset + bytes);
        self.stream
            .memcpy_dtoh(&view, &mut raw)
            .map_err(cuda_err(&format!(
                "copying {bytes} bytes from {}",
                buf.what
            )))?;
        self.sync()?;
        let mut out = vec![T::default(); n];
        // SAFETY: `out` holds exactly `bytes` bytes of plain-data T; the copy
        // fills them from `raw`, which has the same length.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), out.as_mut_ptr() as *mut u8, bytes) };
        Ok(out)
    }

    /// Wait for all queued work; surfaces any asynchronous kernel fault.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronising the stream"))
    }

    /// Whether format `t` has its token-on-lane batched kernels ready.
    pub(crate) fn rows_bt_ready(&self, t: crate::model::gguf::GgmlType) -> bool {
        self.rows_bt.contains(&t)
    }

    /// Whether format `t` has its tensor-core decode mat-vecs ready (sm_80+,
    /// shared memory granted).
    pub(crate) fn rows_mm_ready(&self, t: crate::model::gguf::GgmlType) -> bool {
        self.rows_mm.contains(&t)
    }

    /// Whether the register-tiled prefill attention for head size `hd` with
    /// `groups` key groups got its shared memory.
    pub(crate) fn prefill_rt_granted(&self, hd: usize, groups: usize) -> bool {
        #[cfg(test)]
        if groups == 2
            && self
                .prefill_one_group
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        self.prefill_rt.contains(&(hd, groups))
    }

    /// Tests only: whether prefill attention skips the two-group kernels.
    #[cfg(test)]
    pub(crate) fn set_prefill_one_group(&self, on: bool) {
        self.prefill_one_group
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether format `t` has its register-tiled batched kernels ready.
    pub(crate) fn rows_tl_ready(&self, t: crate::model::gguf::GgmlType) -> bool {
        #[cfg(test)]
        if self.tiles_off.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.rows_tl.contains(&t)
    }

    /// Tests only: whether batched mat-vecs skip the `_tl` kernels.
    #[cfg(test)]
    pub(crate) fn set_tiles_off(&self, off: bool) {
        self.tiles_off
            .store(off, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tests only: whether decode attention takes `attn_partial` alone.
    #[cfg(test)]
    pub(crate) fn set_per_head_attention(&self, on: bool) {
        self.per_head_attention
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn per_head_attention(&self) -> bool {
        self.per_head_attention
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Launch one tiny kernel with programmatic dependent launch, plainly
    /// and under graph capture; if either is refused, launches go plain
    /// (same results) and the log says why, rather than the first decode
    /// step failing. A fault once the probe runs is another matter: it
    /// leaves the context unusable whatever PDL does, so opening fails
    /// with it instead of blaming PDL.
    fn probe_pdl(&mut self) -> Result<()> {
        let probe = || -> Result<()> {
            let b = self.alloc(8, "PDL probe")?;
            let (y, x) = (b.span(0, 4)?, b.span(4, 4)?);
            self.add_inplace(y, x, 1)?;
            let _graph = self.capture(|| self.add_inplace(y, x, 1))?;
            Ok(())
        };
        if let Err(e) = probe() {
            self.pdl = false;
            tracing::warn!(
                human = format!(
                    "Programmatic dependent launch failed its start-up probe ({}). Kernels will launch one after another instead: the same results, a little slower.",
                    e.message()
                ),
                "PDL probe failed"
            );
        }
        self.sync()
    }

    /// A launch of `f` on the engine's stream (`gpu::launch`).
    pub(crate) fn kernel_launch<'a>(
        &'a self,
        f: &'a CudaFunction,
    ) -> super::launch::KernelLaunch<'a> {
        super::launch::KernelLaunch::new(&self.stream, f, self.pdl)
    }

    pub(crate) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| WorkerError::cuda(format!("kernel {name} is not loaded")))
    }

    /// Record everything `body` enqueues into a graph instead of running it.
    pub fn capture(&self, body: impl FnOnce() -> Result<()>) -> Result<GpuGraph> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("beginning graph capture"))?;
        let res = body();
        let ended = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        res?;
        match ended.map_err(cuda_err("ending graph capture"))? {
            Some(graph) => Ok(GpuGraph { graph }),
            None => Err(WorkerError::cuda("graph capture produced no graph")),
        }
    }

    /// Device time between two points, for the bench: returns (start, end) events.
    pub fn event(&self) -> Result<cudarc::driver::CudaEvent> {
        let ev = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating a timing event"))?;
        ev.record(&self.stream)
            .map_err(cuda_err("recording an event"))?;
        Ok(ev)
    }
}

/// Map a driver error from one step to CUDA_ERROR, or VRAM_OOM for out-of-memory.
pub(crate) fn map_driver(what: &str, e: DriverError) -> WorkerError {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        WorkerError::VramOom {
            message: format!("the GPU ran out of memory while {what}: {e}"),
        }
    } else {
        WorkerError::cuda(format!("CUDA error while {what}: {e}; the worker cannot trust the device any more and will stop"))
    }
}

#[cfg(test)]
mod pdl_tests {
    use super::{pdl_choice, PdlOff};

    /// PDL is on by default (unset or `1`) on compute capability 9.0 and
    /// above and off for `0`; unset on an older GPU is quietly off, an
    /// explicit `1` there or any other value is refused with a reason.
    #[test]
    fn pdl_is_on_by_default_on_a_gpu_that_has_it() {
        assert_eq!(pdl_choice(None, 9), Ok(()));
        assert_eq!(pdl_choice(None, 8), Err(PdlOff::Default));
        assert_eq!(pdl_choice(Some("0"), 9), Err(PdlOff::Default));
        assert_eq!(pdl_choice(Some("1"), 9), Ok(()));
        assert_eq!(pdl_choice(Some("1"), 10), Ok(()));
        let Err(PdlOff::Refused(why)) = pdl_choice(Some("1"), 8) else {
            panic!("compute capability 8.x must refuse PDL");
        };
        assert!(why.contains("8.x") && why.contains("9.0"), "{why}");
        let Err(PdlOff::Refused(why)) = pdl_choice(Some("true"), 9) else {
            panic!("a value other than 0 or 1 must be refused");
        };
        assert!(why.contains("\"true\""), "{why}");
    }
}
