//! Input buffers for emulated launches that end at an inaccessible page
//! (tests only; issue 11 point 7): a kernel that reads past a buffer's end
//! stops the test process with SIGSEGV (a red test) instead of reading a
//! neighbour's bytes and, when the value goes unused (a discarded
//! prefetch), passing unnoticed. The emulator checks shared-memory writes
//! itself; global reads only this way.

use super::Arg;

/// A copy of some bytes whose end (rounded up to 16 bytes: the kernels read
/// whole 4-byte words and 16-byte aligned copies, the last possibly past a
/// row's last byte, never past its aligned unit) is the start of a page no
/// one may read or write.
pub struct Guarded {
    base: *mut u8,
    map_len: usize,
    start: usize,
}

impl Guarded {
    pub fn new(bytes: &[u8]) -> Guarded {
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let end = bytes.len().next_multiple_of(16);
        let data = end.div_ceil(page).max(1) * page;
        let map_len = data + page;
        // SAFETY: an anonymous private mapping of map_len bytes, not aliased
        // by anything else; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            base != libc::MAP_FAILED,
            "mmap of a guarded test buffer failed"
        );
        let base = base as *mut u8;
        // SAFETY: the last page lies inside the mapping made above.
        let rc = unsafe { libc::mprotect(base.add(data).cast(), page, libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect of a guard page failed");
        let start = data - end;
        // SAFETY: start + bytes.len() <= data, inside the writable part of
        // the mapping, which no other pointer aliases.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(start), bytes.len()) };
        Guarded {
            base,
            map_len,
            start,
        }
    }

    /// The buffer as a kernel argument.
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.base as u64 + self.start as u64)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: base and map_len are the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}
