//! DMA memory: memfd-backed, so the same buffer can be pinned by VFIO in a guest or handed
//! to a vfio-user server as a file descriptor.

use crate::{DmaOptions, Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// 2 MiB: the huge page size and the alignment of huge buffers.
pub const HUGE_PAGE: usize = 2 << 20;
/// The base page size.
pub const PAGE: usize = 4096;

/// Memory backed by a memfd and mapped into this process (once, or twice back to back).
pub struct SharedMem {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
    mirrored: bool,
    huge: bool,
}

// SAFETY: the memory is plain shared memory; synchronisation with the device is the
// driver's job (volatile accesses and fences), as with any DMA buffer.
unsafe impl Send for SharedMem {}
// SAFETY: as above.
unsafe impl Sync for SharedMem {}

fn memfd(len: usize, huge: bool) -> Result<OwnedFd> {
    let name = c"testbed-dma";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | if huge { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: memfd_create with a valid C string; result checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::last_os("memfd_create"));
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: resizes our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(Error::last_os(format!("ftruncate memfd to {len} bytes")));
    }
    if huge {
        // Take the huge pages now: when the pool is empty this fails here, before any
        // address space is touched, instead of in the MAP_FIXED mapping below.
        // SAFETY: allocates our own memfd's pages; result checked.
        if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
            return Err(Error::last_os(format!("allocate {len} bytes of huge pages")));
        }
    }
    // Sealed against resizing, as QEMU's memory-backend-memfd seals guest RAM: a server
    // then knows the pages under its mapping cannot vanish and may copy them directly
    // (an unsealed file costs it a system call per DMA).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: adds seals to our own memfd; the result is checked.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(Error::last_os("seal the DMA memfd"));
    }
    Ok(fd)
}

impl SharedMem {
    /// Allocates at least `len` bytes (rounded up to the page size in use).
    pub fn new(len: usize, opts: DmaOptions) -> Result<Self> {
        if opts.huge {
            let hlen = len.max(1).next_multiple_of(HUGE_PAGE);
            if let Ok(fd) = memfd(hlen, true) {
                if let Ok(m) = Self::map(fd, hlen, opts.mirrored, true) {
                    return Ok(m);
                }
            }
        }
        let len = len.max(1).next_multiple_of(PAGE);
        Self::map(memfd(len, false)?, len, opts.mirrored, false)
    }

    fn map(fd: OwnedFd, len: usize, mirrored: bool, huge: bool) -> Result<Self> {
        let span = if mirrored { 2 * len } else { len };
        let align = if huge { HUGE_PAGE } else { PAGE };
        // Reserve address space (aligned), then place the file mapping(s) inside it.
        // SAFETY: an anonymous PROT_NONE reservation; result checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span + align,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::last_os("reserve address space"));
        }
        let start = (base as usize).next_multiple_of(align);
        // Give back the unaligned head and the tail of the reservation.
        // SAFETY: both ranges lie inside the reservation just made.
        unsafe {
            if start > base as usize {
                libc::munmap(base, start - base as usize);
            }
            let tail = start + span;
            let end = base as usize + span + align;
            if end > tail {
                libc::munmap(tail as *mut libc::c_void, end - tail);
            }
        }
        let copies = if mirrored { 2 } else { 1 };
        for i in 0..copies {
            let at = start + i * len;
            // SAFETY: MAP_FIXED over our own reservation; the fd is ours.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let e = Error::last_os("map DMA memory");
                // A failed MAP_FIXED may already have removed our reservation under `at`,
                // and another thread's new mapping may sit in that hole now: release only
                // what is certainly still ours (the copies mapped before, the reservation
                // after), never the failed range.
                // SAFETY: these ranges are our successful mappings and our untouched
                // reservation.
                unsafe {
                    if i > 0 {
                        libc::munmap(start as *mut libc::c_void, i * len);
                    }
                    let after = at + len;
                    if after < start + span {
                        libc::munmap(after as *mut libc::c_void, start + span - after);
                    }
                }
                return Err(e);
            }
        }
        Ok(SharedMem { fd, ptr: start as *mut u8, len, mirrored, huge })
    }

    /// The memfd backing the memory.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Start of the (first) mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length of one copy in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: zero-length memory is rounded up to a page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether huge pages back the memory.
    pub fn huge(&self) -> bool {
        self.huge
    }

    /// Whether the memory is mapped twice back to back.
    pub fn mirrored(&self) -> bool {
        self.mirrored
    }

    /// The memory as a byte slice (the first copy).
    ///
    /// The device may write it at any time: callers that race with the device should use
    /// volatile accesses through [`SharedMem::as_ptr`] instead.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The memory as a mutable byte slice (the first copy).
    #[allow(clippy::mut_from_ref)]
    pub fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: as above; the buffer is DMA memory shared with a device by design.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        let span = if self.mirrored { 2 * self.len } else { self.len };
        // SAFETY: unmaps what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), span) };
    }
}

/// Undoes a DMA mapping when its buffer is dropped.
pub trait DmaUnmap: Send + Sync {
    /// Removes the device mapping of `[iova, iova + len)`.
    fn unmap(&self, iova: u64, len: usize);
}

/// Maps memory into one device's DMA space: how a buffer allocated through one device
/// becomes reachable by another at the same IOVA (see [`crate::share_dma`]).
pub trait DmaMapper: DmaUnmap {
    /// Maps `mem` (its first copy) at `iova`.
    fn map(&self, mem: &SharedMem, iova: u64) -> Result<()>;
}

/// The lowest IOVA any transport of this process may hand out next. Every allocation
/// raises it past its end, so IOVAs are unique across devices and a buffer can be
/// mapped at the same IOVA in every device that shares it.
static IOVA_FLOOR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// IOVA ranges no allocation may use (start, end exclusive).
static RESERVED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// Keeps `[base, base + len)` out of later allocations.
pub(crate) fn reserve_iova(base: u64, len: u64) {
    RESERVED.lock().unwrap_or_else(|e| e.into_inner()).push((base, base.saturating_add(len)));
}

/// The first IOVA at or above `at`, aligned to `align`, where `len` bytes overlap no
/// reserved range.
pub(crate) fn skip_reserved(mut at: u64, len: u64, align: u64) -> u64 {
    let reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        at = at.next_multiple_of(align.max(1));
        match reserved.iter().find(|&&(s, e)| at < e && at.saturating_add(len) > s) {
            Some(&(_, e)) => at = e,
            None => return at,
        }
    }
}

/// The process-wide IOVA floor (see [`IOVA_FLOOR`]).
pub(crate) fn iova_floor() -> u64 {
    IOVA_FLOOR.load(std::sync::atomic::Ordering::Acquire)
}

/// Raises the floor past an allocation ending at `end`.
pub(crate) fn raise_iova_floor(end: u64) {
    IOVA_FLOOR.fetch_max(end, std::sync::atomic::Ordering::AcqRel);
}

/// DMA memory mapped for a device.
pub struct DmaBuffer {
    mem: SharedMem,
    iova: u64,
    unmap: Option<std::sync::Arc<dyn DmaUnmap>>,
    /// Other devices the buffer is mapped into (same IOVA).
    peers: Vec<std::sync::Arc<dyn DmaUnmap>>,
}

impl DmaBuffer {
    /// Wraps memory mapped at `iova`; `unmap` runs on drop.
    pub fn new(mem: SharedMem, iova: u64, unmap: std::sync::Arc<dyn DmaUnmap>) -> Self {
        DmaBuffer { mem, iova, unmap: Some(unmap), peers: Vec::new() }
    }

    /// Maps the buffer into `peer`'s DMA space too, at the same IOVA (unmapped on drop).
    pub fn share_with(&mut self, peer: std::sync::Arc<dyn DmaMapper>) -> Result<()> {
        peer.map(&self.mem, self.iova)?;
        self.peers.push(peer);
        Ok(())
    }

    /// The address the device uses for the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The memory.
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }
}

impl std::ops::Deref for DmaBuffer {
    type Target = SharedMem;
    fn deref(&self) -> &SharedMem {
        &self.mem
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        for p in self.peers.drain(..) {
            p.unmap(self.iova, self.mem.len());
        }
        if let Some(u) = self.unmap.take() {
            u.unmap(self.iova, self.mem.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads allocating (huge, mirrored) memory, which falls back when the huge-page
    /// pool is empty, must never take away another thread's mappings: each thread keeps
    /// writing and checking its own buffers while the others allocate.
    #[test]
    fn concurrent_allocations_never_unmap_each_other() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut keep = Vec::new();
                    for i in 0..60u8 {
                        let opts = DmaOptions { huge: i % 2 == 0, mirrored: true, iova_align: 0 };
                        let m = SharedMem::new(64 << 10, opts).unwrap();
                        m.as_mut_slice().fill(t ^ i);
                        keep.push((m, t ^ i));
                        for (m, v) in &keep {
                            // The mirror shows the same bytes.
                            // SAFETY: the second copy of a mirrored mapping is `len` bytes
                            // right after the first.
                            let mirror = unsafe { *m.as_ptr().add(m.len()) };
                            assert!(m.as_slice().iter().all(|b| b == v) && mirror == *v);
                        }
                        if keep.len() > 8 {
                            keep.remove(0);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// DMA memory is sealed against resizing (a server may then copy it directly).
    #[test]
    fn dma_memory_cannot_be_resized() {
        let m = SharedMem::new(64 << 10, DmaOptions::default()).unwrap();
        // SAFETY: F_GET_SEALS on our own fd.
        let seals = unsafe { libc::fcntl(m.fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        // SAFETY: tries to shrink our own memfd.
        assert_ne!(unsafe { libc::ftruncate(m.fd(), 0) }, 0);
        m.as_mut_slice().fill(3);
    }

    #[test]
    fn reserved_ranges_are_skipped() {
        reserve_iova(0x7000_0000_0000, 0x10_0000);
        assert_eq!(skip_reserved(0x7000_0000_0000 - 0x1000, 0x2000, 0x1000), 0x7000_0010_0000);
        assert_eq!(skip_reserved(0x10_0000, 0x1000, 0x1000), 0x10_0000);
    }
}
