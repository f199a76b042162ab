//! Kernel launches (WORKER-4400, 4710; issue 12 point 1): every launcher
//! builds its arguments here and launches through `cuLaunchKernelEx`, with
//! programmatic dependent launch (PDL) when it is switched on and the device
//! has it (on by default from compute capability 9.0; see below).
//!
//! Why: a decode step is about 150 small kernels back to back, and under a
//! CUDA graph each boundary still costs a launch and a block start-up after
//! the previous kernel drains. With PDL a kernel may be launched while the
//! one before it still runs; every kernel calls `grid_dependency_sync()`
//! (cuda/common.cuh) before it touches memory, which waits for the previous
//! grid to finish and its writes to be visible. So the order of every read
//! and write is what it was, and outputs are the same bits; only the launch
//! and start-up overlap. Captured into a graph, the launches become
//! programmatic edges.
//!
//! PDL is on unless `WORKER_ORCD_PDL` is `0`, on devices of compute
//! capability 9.0 or above. History, measured on an H100 (f43efe1, Qwen-shaped
//! Q4_K_M), it made batch-1 decode 11% slower (700 against 789 tokens/s) and
//! pp512 prefill 17% slower, most likely because every kernel triggered its
//! dependents at entry and their blocks then waited on SMs the running
//! kernel could use (at 39220e8: 750 against 850). The kernels now only
//! wait, so dependents launch as the previous grid's blocks exit. That
//! variant measured faster on an H100 (7ad5591, Qwen-shaped file, same
//! binary and call, ci/gpu-run phase 1 `bench_qwen_pdl` against
//! `bench_qwen`): batch-1 decode 925 against 905 tokens/s, pp512 35,169
//! against 34,156; at 9bf78df (same H100 call): 951.6 against 919.9, pp512
//! 35,192 against 33,701. With it on by default, the GPU suite (golden,
//! GPU-vs-CPU, BDD) runs with PDL, and ci/gpu-run phase 1 benches
//! `WORKER_ORCD_PDL=0` beside it. Off, launches are plain and the kernels'
//! wait does nothing. Triggering right after the wait instead (so at most
//! one grid waits ahead; tried at ea076ee, not landed) was slower still on
//! an H100 (same call, medians of 10, three rounds): batch-1 decode 817
//! against 957 tokens/s, pp4096 14,048 against 24,187; the waiting
//! dependent's blocks hold SM slots the running grid's later blocks need.
//! Arguments are passed as cuLaunchKernel takes them: one pointer per
//! argument, here to an 8-byte slot holding the value (every kernel
//! parameter is a pointer, an integer or an f32).

use cudarc::driver::{sys, CudaFunction, CudaStream, DriverError, LaunchConfig};

/// A kernel argument: its bytes, little-endian, in an 8-byte slot.
pub trait LaunchArg {
    fn slot(&self) -> u64;
}

impl LaunchArg for u64 {
    fn slot(&self) -> u64 {
        *self
    }
}

impl LaunchArg for i32 {
    fn slot(&self) -> u64 {
        *self as u32 as u64
    }
}

impl LaunchArg for u32 {
    fn slot(&self) -> u64 {
        *self as u64
    }
}

impl LaunchArg for f32 {
    fn slot(&self) -> u64 {
        self.to_bits() as u64
    }
}

/// One launch being built: the function, the stream and the arguments.
pub struct KernelLaunch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    slots: Vec<u64>,
    pdl: bool,
}

impl<'a> KernelLaunch<'a> {
    pub(super) fn new(stream: &'a CudaStream, func: &'a CudaFunction, pdl: bool) -> Self {
        Self {
            stream,
            func,
            slots: Vec::with_capacity(16),
            pdl,
        }
    }

    /// Append the next argument (in the kernel's parameter order).
    pub fn arg<T: LaunchArg>(&mut self, v: &T) -> &mut Self {
        self.slots.push(v.slot());
        self
    }

    /// Queue the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and
    /// type, every pointer must name device memory the kernel may read or
    /// write over the whole grid, and the shape must be one the kernel
    /// supports: the caller's `// SAFETY:` comment says why they do.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut ptrs: Vec<*mut std::ffi::c_void> = self
            .slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        // SAFETY: a zeroed attribute is a valid C value of the union; id and
        // value are set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: `config` and `attr` live across the call; `ptrs` holds one
        // pointer per argument, each to a live 8-byte slot of `self.slots`
        // (the kernel reads its parameter from the slot's start); the rest is
        // the caller's contract above.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_slots_hold_the_values_little_endian() {
        assert_eq!(7u64.slot(), 7);
        assert_eq!((-1i32).slot(), 0xffff_ffff);
        assert_eq!(3u32.slot(), 3);
        assert_eq!(1.5f32.slot(), 1.5f32.to_bits() as u64);
    }
}
