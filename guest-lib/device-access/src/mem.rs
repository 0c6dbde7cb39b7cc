//! DMA memory: memfd-backed, so the same buffer can be pinned by VFIO in a guest or handed
//! to a vfio-user server as a file descriptor.

use crate::{DmaOptions, Error, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use vm_memory::{ByteValued, Bytes, VolatileSlice};

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

    /// The memfd, borrowed (to map it again).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

    /// The memory (the first copy) for volatile access: every read and write through it is
    /// a volatile access, which stays sound while the device reads or writes the same bytes.
    pub fn volatile(&self) -> VolatileSlice<'_> {
        // SAFETY: `ptr` maps `len` readable and writable bytes for the lifetime of `self`,
        // and a `VolatileSlice` only ever reaches them through volatile accesses or copies.
        unsafe { VolatileSlice::new(self.ptr, self.len) }
    }

    /// Writes `buf` at byte offset `off` (volatile).
    ///
    /// # Panics
    /// When the range lies outside the memory, as slice indexing does.
    pub fn write_slice(&self, buf: &[u8], off: usize) {
        self.range(off, buf.len()).copy_from(buf);
    }

    /// Reads `buf.len()` bytes at byte offset `off` into `buf` (volatile).
    ///
    /// # Panics
    /// When the range lies outside the memory.
    pub fn read_slice(&self, buf: &mut [u8], off: usize) {
        self.range(off, buf.len()).copy_to(buf);
    }

    /// A copy of the `len` bytes at byte offset `off`.
    ///
    /// # Panics
    /// When the range lies outside the memory.
    pub fn to_vec(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read_slice(&mut v, off);
        v
    }

    /// One value at byte offset `off`, read volatile (a single load for naturally aligned
    /// values of up to 8 bytes).
    ///
    /// # Panics
    /// When the value lies outside the memory.
    pub fn read_obj<T: ByteValued>(&self, off: usize) -> T {
        match self.volatile().read_obj(off) {
            Ok(v) => v,
            Err(e) => panic!("read of {} bytes at {off:#x}: {e}", std::mem::size_of::<T>()),
        }
    }

    /// Sets every byte (of the first copy) to `byte`.
    pub fn fill(&self, byte: u8) {
        // Page-sized copies: far fewer calls than byte stores, each byte still written once.
        let chunk = [byte; PAGE];
        let mut off = 0;
        while off < self.len {
            let n = PAGE.min(self.len - off);
            self.range(off, n).copy_from(&chunk[..n]);
            off += n;
        }
    }

    fn range(&self, off: usize, len: usize) -> VolatileSlice<'_> {
        match self.volatile().subslice(off, len) {
            Ok(s) => s,
            Err(e) => panic!("{len} bytes at {off:#x} of {} bytes of DMA memory: {e}", self.len),
        }
    }

    /// The bytes `[off, off + len)` as a plain slice, for software that owns them under
    /// the device protocol (zero copy). In mirrored memory the range may reach into the
    /// second copy (`off + len <= 2 * len()`), which is how a ring's wrapped contents read
    /// as one slice.
    ///
    /// # Safety
    /// The hand-over rule: while the slice lives, nobody writes these bytes. The device
    /// does not, because the protocol has handed them to software (received data between
    /// the device's announcement and the head write that gives them back; transmit space
    /// between its completion and the send that posts it); and this process does not
    /// either (no [`SharedMem::owned_mut`] or volatile write over them). In mirrored
    /// memory the bytes at `off` and `off ± len()` are the same bytes.
    ///
    /// # Panics
    /// When the range lies outside the mapping.
    pub unsafe fn owned(&self, off: usize, len: usize) -> &[u8] {
        let p = self.owned_ptr(off, len);
        // SAFETY: `p..p + len` lies in our mapping (checked by `owned_ptr`), which lives
        // as long as `self`; no one writes it meanwhile (the caller's promise).
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// As [`SharedMem::owned`], writable.
    ///
    /// The caller picks the lifetime `'a`, as with [`std::slice::from_raw_parts_mut`]:
    /// typically that of its own `&mut self`, the handle through which the protocol gave
    /// it the bytes (a pipe, an mbuf), never that of a shared borrow of the memory.
    ///
    /// # Safety
    /// The hand-over rule of [`SharedMem::owned`], and more: for `'a`, nobody else reads
    /// or writes these bytes (not the device, not another slice or volatile access of
    /// this process), and `self` outlives `'a`.
    ///
    /// # Panics
    /// When the range lies outside the mapping.
    pub unsafe fn owned_mut<'a>(&self, off: usize, len: usize) -> &'a mut [u8] {
        let p = self.owned_ptr(off, len);
        // SAFETY: `p..p + len` lies in our mapping (checked by `owned_ptr`); it stays
        // mapped and unaliased for `'a` (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// The start of `[off, off + len)`, checked against the whole mapping (both copies).
    #[inline]
    fn owned_ptr(&self, off: usize, len: usize) -> *mut u8 {
        let span = if self.mirrored { 2 * self.len } else { self.len };
        assert!(
            off <= span && len <= span - off,
            "{len} bytes at {off:#x} lie outside {span} bytes of DMA memory"
        );
        // SAFETY: `off <= span`, within (or one past) the mapping.
        unsafe { self.ptr.add(off) }
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
                        m.fill(t ^ i);
                        keep.push((m, t ^ i));
                        for (m, v) in &keep {
                            // The mirror shows the same bytes.
                            // SAFETY: the second copy of a mirrored mapping is `len` bytes
                            // right after the first.
                            let mirror = unsafe { std::ptr::read_volatile(m.as_ptr().add(m.len())) };
                            assert!(m.to_vec(0, m.len()).iter().all(|b| b == v) && mirror == *v);
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
        m.fill(3);
    }

    /// The typed accessors and the owned view agree, the owned view reaches into the
    /// mirror, and nothing reaches past the mapping.
    #[test]
    fn accessors_and_owned_views() {
        let m = SharedMem::new(PAGE, DmaOptions { huge: false, mirrored: true, iova_align: 0 }).unwrap();
        m.fill(0);
        m.write_slice(&[1, 2], PAGE - 2);
        m.write_slice(&[3, 4], 0);
        assert_eq!(m.to_vec(PAGE - 4, 4), [0, 0, 1, 2]);
        assert_eq!(m.read_obj::<u16>(0), u16::from_le_bytes([3, 4]));
        // SAFETY: no device and no other access touch `m` while the slice lives.
        assert_eq!(unsafe { m.owned(PAGE - 2, 4) }, [1, 2, 3, 4]);
        // SAFETY: as above, and the slice is the only access meanwhile.
        let last = unsafe { m.owned_mut(2 * PAGE - 1, 1) };
        last[0] = 9;
        assert_eq!(m.read_obj::<u8>(PAGE - 1), 9);
        let past = std::panic::catch_unwind(|| {
            // SAFETY: never returns: the range is refused.
            unsafe { m.owned(2 * PAGE - 1, 2) }.len()
        });
        assert!(past.is_err());
        // The typed accessors cover the first copy only.
        assert!(std::panic::catch_unwind(|| m.to_vec(PAGE - 1, 2)).is_err());
    }

    #[test]
    fn reserved_ranges_are_skipped() {
        reserve_iova(0x7000_0000_0000, 0x10_0000);
        assert_eq!(skip_reserved(0x7000_0000_0000 - 0x1000, 0x2000, 0x1000), 0x7000_0010_0000);
        assert_eq!(skip_reserved(0x10_0000, 0x1000, 0x1000), 0x10_0000);
    }
}
