//! Page-locked host memory the stream copies small results into without
//! stopping (issue 12 point 1: no host round trip per token).
//!
//! Why: a plain download waits for everything queued before it, and the
//! host then finds the device idle while it copies, picks and launches the
//! next step. Copied into an inbox, a decode step's greedy picks arrive
//! while the step after them already runs; the host waits only for the copy
//! (an event recorded right behind it), never for the work queued after.

use cudarc::driver::{sys, CudaEvent, PinnedHostSlice};

use super::{cuda_err, DeviceBuffer, Gpu};
use crate::error::{Result, WorkerError};

/// Room for `capacity` i32 values on the host and the event that marks the
/// last copy into it done.
pub struct HostInbox {
    /// The values' bytes, as the device holds them.
    bytes: PinnedHostSlice<u8>,
    arrived: CudaEvent,
    /// Values the last [`Gpu::post`] copies.
    posted: usize,
}

impl Drop for HostInbox {
    /// A copy still queued into the memory must land before it is freed
    /// (an engine dropped with picks nobody read).
    fn drop(&mut self) {
        let _ = self.arrived.synchronize();
    }
}

impl HostInbox {
    pub fn capacity(&self) -> usize {
        self.bytes.len() / 4
    }
}

impl Gpu {
    /// An inbox of `capacity` (at least one) i32 values, allocated once.
    pub fn inbox(&self, capacity: usize) -> Result<HostInbox> {
        let n_bytes = 4 * capacity.max(1);
        // SAFETY: plain page-locked bytes (any bits are valid); written only
        // by copies this stream orders, read by the host only after the
        // event behind the last copy (`Gpu::read`). Flags 0: cached, not
        // write-combined, since the host reads it.
        let bytes = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(n_bytes, 0) }.map_err(
            cuda_err("allocating page-locked host memory for the step's picks"),
        )?;
        let arrived = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(cuda_err("creating the picks' event"))?;
        Ok(HostInbox {
            bytes,
            arrived,
            posted: 0,
        })
    }

    /// Queue a copy of the `n` i32 values at byte `offset` of `buf` into
    /// `inbox`, then the event that marks it done; returns at once.
    pub fn post(
        &self,
        buf: &DeviceBuffer,
        offset: usize,
        n: usize,
        inbox: &mut HostInbox,
    ) -> Result<()> {
        if n > inbox.capacity() {
            return Err(WorkerError::internal(format!(
                "{n} values do not fit an inbox of {}",
                inbox.capacity()
            )));
        }
        let bytes = 4 * n;
        buf.span(offset, bytes)?;
        let view = buf.slice.slice(offset..offset + bytes);
        // Exactly `bytes` of the page-locked room: the copy takes the
        // destination's length. The memory stays page-locked, so the copy
        // is queued, not waited for.
        let room = inbox
            .bytes
            .as_mut_slice()
            .map_err(cuda_err("reaching the step's picks"))?;
        self.stream
            .memcpy_dtoh(&view, &mut room[..bytes])
            .map_err(cuda_err(&format!(
                "copying {bytes} bytes from {} to the host",
                buf.what
            )))?;
        inbox
            .arrived
            .record(&self.stream)
            .map_err(cuda_err("recording the picks' event"))?;
        inbox.posted = n;
        Ok(())
    }

    /// Wait for the last post to arrive (not for what was queued after it)
    /// and return its values; a device fault before it surfaces here.
    pub fn read(&self, inbox: &HostInbox) -> Result<Vec<i32>> {
        inbox
            .arrived
            .synchronize()
            .map_err(cuda_err("waiting for the step's picks"))?;
        let bytes = inbox
            .bytes
            .as_slice()
            .map_err(cuda_err("reading the step's picks"))?;
        Ok(bytes[..4 * inbox.posted]
            .chunks_exact(4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
