//! Opening the GPU while the model file is read (issue 12 point 4: Ready in
//! about a second). Creating the context, loading the kernel images and
//! making the cuBLAS handle took about 0.8 s on an H200 and reading and
//! hashing the Qwen file about 1.4 s, one after the other; neither needs the
//! other, so the daemon's start-up and commits start the GPU's opening on a
//! thread of its own before they read the file, and the engine takes the
//! opened GPU when it loads (`generate` and `bench` open it when they load).

use super::Gpu;
use crate::error::{Result, WorkerError};

/// A GPU being opened on a thread of its own, or, where no thread could be
/// started, one to open when it is wanted.
pub struct GpuOpening {
    device: u32,
    thread: Option<std::thread::JoinHandle<Result<Gpu>>>,
}

impl GpuOpening {
    /// Start opening GPU `device` now.
    pub fn start(device: u32) -> Self {
        let thread = std::thread::Builder::new()
            .name("gpu-open".into())
            .spawn(move || Gpu::open(device))
            .ok();
        GpuOpening { device, thread }
    }

    /// The opened GPU `device` (waiting for the opening to finish), or its
    /// error. A request for another device than the one being opened waits
    /// for that opening to end, drops it, and opens the requested one here.
    pub fn wait(mut self, device: u32) -> Result<Gpu> {
        match self.thread.take() {
            Some(t) if self.device == device => t.join().unwrap_or_else(|_| {
                Err(WorkerError::internal(
                    "the thread opening the GPU panicked; see the log above",
                ))
            }),
            Some(t) => {
                let _ = t.join();
                Gpu::open(device)
            }
            None => Gpu::open(device),
        }
    }
}

impl Drop for GpuOpening {
    /// An opening nobody waited for (start-up failed before the engine
    /// loaded: a bad file, a refused signature) ends here, so the process
    /// never exits while that thread is inside the driver or NVRTC.
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
