//! Shared-memory BAR pages: the device side of "no trapped MMIO on the datapath".
//!
//! A region is a memfd the transport hands to the driver side (QEMU maps it into the
//! guest's BAR; a native client mmaps it), so driver register writes are plain memory
//! stores that a device thread polls.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use vm_memory::{FileOffset, MmapRegion, VolatileSlice};

/// Memory shared with the driver side through a file descriptor: a sealed memfd mapped by
/// vm-memory's `MmapRegion` (which owns the fd and unmaps on drop).
pub struct ShmRegion {
    region: MmapRegion,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: all access goes through atomics or volatile copies on the mapping, which lives as
// long as `self`.
unsafe impl Send for ShmRegion {}
// SAFETY: as above.
unsafe impl Sync for ShmRegion {}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRegion").field("fd", &self.fd()).field("len", &self.len).finish()
    }
}

impl ShmRegion {
    /// A zeroed region of `len` bytes (rounded up to 4 KiB).
    pub fn new(name: &str, len: usize) -> std::io::Result<Self> {
        let len = len.max(1).next_multiple_of(4096);
        let cname = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64)?;
        // The fd goes to clients (REGION_INFO, peers' DMA maps): sealed, so that no client
        // can shrink it under our mapping (SIGBUS) or grow it, and no one can seal it
        // against the writable mappings later clients need.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: adds seals to our own memfd; the result is checked.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let region = MmapRegion::build(Some(FileOffset::new(file, 0)), len, prot, libc::MAP_SHARED)
            .map_err(std::io::Error::other)?;
        Ok(ShmRegion { ptr: region.as_ptr(), region, len })
    }

    fn file(&self) -> &File {
        self.region.file_offset().expect("a file mapping").file()
    }

    /// The file descriptor to share.
    pub fn fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }

    /// A duplicate of the file descriptor (to hand to a DMA map, or to send).
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        self.file().as_fd().try_clone_to_owned()
    }

    /// The file descriptor, borrowed (to map it again).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty (at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }

    // Not vm-memory's `get_atomic_ref`: its reference borrows the temporary VolatileSlice.
    #[inline]
    fn atomic32(&self, offset: u64) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(4) || offset.checked_add(4)? > self.len as u64 {
            return None;
        }
        // SAFETY: in bounds and 4-byte aligned (mmap is page aligned); the memory lives as
        // long as `self` and is only accessed atomically or volatilely.
        Some(unsafe { &*self.ptr.add(offset as usize).cast::<AtomicU32>() })
    }

    #[inline]
    fn atomic64(&self, offset: u64) -> Option<&AtomicU64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len as u64 {
            return None;
        }
        // SAFETY: as in `atomic32`, with 8-byte alignment.
        Some(unsafe { &*self.ptr.add(offset as usize).cast::<AtomicU64>() })
    }

    /// Reads a little-endian u32 (acquire). Out-of-range or misaligned offsets read 0.
    #[inline]
    pub fn read32(&self, offset: u64) -> u32 {
        self.atomic32(offset).map_or(0, |a| u32::from_le(a.load(Ordering::Acquire)))
    }

    /// Writes a little-endian u32 (release). Out-of-range or misaligned offsets are ignored.
    #[inline]
    pub fn write32(&self, offset: u64, value: u32) {
        if let Some(a) = self.atomic32(offset) {
            a.store(value.to_le(), Ordering::Release);
        }
    }

    /// Writes the little-endian u32 `new` if the word still holds `current` (acquire and
    /// release); Err with the value found otherwise. Out-of-range or misaligned offsets
    /// are ignored (Ok). A device publishing a register software may also write uses it,
    /// so a software write is never overwritten unseen.
    #[inline]
    pub fn compare_exchange32(&self, offset: u64, current: u32, new: u32) -> Result<(), u32> {
        match self.atomic32(offset) {
            Some(a) => a
                .compare_exchange(current.to_le(), new.to_le(), Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())
                .map_err(u32::from_le),
            None => Ok(()),
        }
    }

    /// Reads a little-endian u64 (acquire); 0 when out of range or misaligned.
    #[inline]
    pub fn read64(&self, offset: u64) -> u64 {
        self.atomic64(offset).map_or(0, |a| u64::from_le(a.load(Ordering::Acquire)))
    }

    /// Writes a little-endian u64 (release); ignored when out of range or misaligned.
    #[inline]
    pub fn write64(&self, offset: u64, value: u64) {
        if let Some(a) = self.atomic64(offset) {
            a.store(value.to_le(), Ordering::Release);
        }
    }

    /// The region for volatile access (clients write it concurrently).
    fn volatile(&self) -> VolatileSlice<'_> {
        // SAFETY: `ptr` maps `len` readable and writable bytes for the lifetime of `self`,
        // and a `VolatileSlice` only reaches them through volatile accesses or copies.
        unsafe { VolatileSlice::new(self.ptr, self.len) }
    }

    /// `len` bytes at `offset`, if in range.
    fn range(&self, offset: u64, len: usize) -> Option<VolatileSlice<'_>> {
        self.volatile().subslice(usize::try_from(offset).ok()?, len).ok()
    }

    /// Copies bytes out (for trapped accesses to a shared page). False when out of range.
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> bool {
        self.range(offset, out.len()).map(|s| s.copy_to(out)).is_some()
    }

    /// Copies bytes in (for trapped accesses to a shared page). False when out of range.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> bool {
        self.range(offset, data.len()).map(|s| s.copy_from(data)).is_some()
    }

    /// Zeroes the whole region (device reset).
    pub fn clear(&self) {
        for off in (0..self.len as u64).step_by(8) {
            self.write64(off, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_through_the_fd() {
        let r = ShmRegion::new("t", 100).unwrap();
        assert_eq!(r.len(), 4096);
        r.write32(8, 0xabcd);
        // A second mapping of the same fd sees the value, as the driver side would.
        // SAFETY: maps the region's own fd read-only for the check.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, r.fd(), 0) };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: offset 8 is inside the fresh 4 KiB mapping.
        let v = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(8).cast::<u32>()) };
        assert_eq!(v, 0xabcd);
        // SAFETY: unmaps the test mapping.
        unsafe { libc::munmap(p, 4096) };
        assert_eq!(r.read32(4094), 0, "out of range reads 0");
        r.write32(4096, 1); // ignored
        let mut b = [0u8; 2];
        assert!(r.read_bytes(8, &mut b));
        assert_eq!(b, [0xcd, 0xab]);
        assert!(!r.read_bytes(4095, &mut b));
        r.clear();
        assert_eq!(r.read32(8), 0);
    }

    /// Issue 17, defect 3: a client that received the fd cannot shrink (or grow) it.
    #[test]
    fn the_shared_fd_is_sealed_against_resizing() {
        let r = ShmRegion::new("t", 4096).unwrap();
        let fd = r.dup_fd().unwrap();
        for len in [0i64, 100, 1 << 20] {
            // SAFETY: tries to resize the region's memfd, as a hostile client would.
            let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len) };
            assert_eq!(
                (rc, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::EPERM)),
                "{len}"
            );
        }
        // SAFETY: F_ADD_SEALS on our fd; F_SEAL_FUTURE_WRITE would lock out later clients.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_FUTURE_WRITE) };
        assert_eq!(rc, -1, "no further seals");
        r.write32(4092, 7);
        assert_eq!(r.read32(4092), 7);
    }
}
