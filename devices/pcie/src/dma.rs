//! The DMA space a device sees: guest memory the transport mapped, by I/O virtual address.
//!
//! [`GuestMemory`] keeps an interval map from IOVA ranges to shared file mappings. Under
//! intel-iommu QEMU sends one map per 4 KiB page, each with its own fd: each file is
//! mmap'd once (by inode, as long as that mapping covers the range) and adjacent pages of
//! the same file merge into one range, so the map stays small and a multi-page transfer is
//! one copy. Accesses outside mapped memory fail with [`DmaError`] (the model counts them
//! and flags the error); nothing panics.
//!
//! The client owns the files behind the map and may resize them at any time. Every access
//! is bounded by the length of the mapping it goes through (never by the file's size at
//! some earlier moment), and memory the client can take away is never touched directly:
//! - a file on shmem (a memfd) sealed against shrinking (`F_SEAL_SHRINK`, as QEMU's
//!   `memory-backend-memfd` and our own client seal theirs) can never lose a page under a
//!   mapping, so it is copied with plain loads and stores;
//! - any other file (an unsealed memfd, `memory-backend-file`, hugetlbfs) is copied by
//!   the kernel with `process_vm_readv`/`process_vm_writev` on our own pid: a page the
//!   client truncated away makes the call return short (EFAULT) where a load or store
//!   would raise SIGBUS and kill the server. Such an access is refused
//!   ([`DmaError::Fault`]) and counted, as an IOMMU fault would be.
//!
//! The map is bounded: at most [`MAX_DMA_MAPS`] windows (what the server advertises as
//! `max_dma_maps`), [`MAX_DMA_FILES`] distinct mappings and [`MAX_DMA_MAPPED_BYTES`] of
//! address space, and a map or unmap costs O(log n): the sorted table the DMA path reads
//! is appended to in place, or rebuilt lazily by the next access after an out-of-order
//! change.

use pcie_accounting::{Counters, DmaClass};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use thiserror::Error;

/// Most DMA_MAP windows one space holds at once (advertised as `max_dma_maps`).
pub const MAX_DMA_MAPS: usize = 65535;
/// Most distinct file mappings one space holds (each is one mmap, and the process's
/// `vm.max_map_count` is shared by every server in it).
pub const MAX_DMA_FILES: usize = 1024;
/// Most address space the file mappings of one space may take.
pub const MAX_DMA_MAPPED_BYTES: u64 = 1 << 40;

/// A refused DMA access.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// Part of the range is not mapped (or mapped without memory behind it).
    #[error("DMA at {addr:#x} (+{len} bytes) touches memory the driver has not mapped")]
    Unmapped { addr: u64, len: usize },
    /// The range is mapped read-only and the device tried to write it.
    #[error("DMA write at {addr:#x} (+{len} bytes) to memory mapped read-only")]
    ReadOnly { addr: u64, len: usize },
    /// The range is mapped, but the client took the memory behind it away (it shrank the
    /// file): refused like an IOMMU fault. Part of the range may have been copied.
    #[error("DMA at {addr:#x} (+{len} bytes) faulted: the client shrank the file behind the mapping")]
    Fault { addr: u64, len: usize },
    /// The driver has not enabled bus mastering.
    #[error("DMA refused: bus mastering is disabled in the command register")]
    BusMasterOff,
    /// A switch on the path refused to route the write (its allow list denied the
    /// requester, the stream had no route for it, or the next hop refused it). The
    /// switch counts why; the requester's counters count it as denied, never as a write.
    #[error("DMA write at {addr:#x} (+{len} bytes) denied by the switch {by}")]
    Denied { addr: u64, len: usize, by: String },
}

/// A map request that cannot be honoured.
#[derive(Debug, Error)]
pub enum MapError {
    #[error("mapping {iova:#x} (+{len:#x}) overlaps an existing mapping")]
    Overlap { iova: u64, len: u64 },
    #[error("mapping {iova:#x} (+{len:#x}) is empty or wraps the address space")]
    BadRange { iova: u64, len: u64 },
    #[error("file range {offset:#x} (+{len:#x}) lies outside the {size:#x}-byte file")]
    OutsideFile { offset: u64, len: u64, size: u64 },
    #[error("mmap of the DMA file failed: {0}")]
    Mmap(std::io::Error),
    /// A limit of the space ([`MAX_DMA_MAPS`], [`MAX_DMA_FILES`], [`MAX_DMA_MAPPED_BYTES`]).
    #[error("too many DMA mappings: {what} is limited to {limit}")]
    TooMany { what: &'static str, limit: u64 },
}

/// Guest memory as the device reaches it.
pub trait DmaSpace: Send + Sync {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes `data` at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError>;
    /// As [`DmaSpace::read`], naming the function that answered when it was not host
    /// memory (a switch routing the request to a peer).
    fn read_routed(&self, addr: u64, buf: &mut [u8]) -> Result<Option<Arc<str>>, DmaError> {
        self.read(addr, buf).map(|()| None)
    }
    /// As [`DmaSpace::write`], naming the function the write was delivered to when it was
    /// not host memory.
    fn write_routed(&self, addr: u64, data: &[u8]) -> Result<Option<Arc<str>>, DmaError> {
        self.write(addr, data).map(|()| None)
    }
}

struct MappedFile {
    ptr: *mut u8,
    len: usize,
    /// The file cannot lose pages under the mapping (shmem sealed against shrinking):
    /// plain loads and stores are safe. Otherwise copies go through the kernel.
    direct: bool,
}

// SAFETY: the mapping is shared memory that lives as long as the struct; accesses are
// bounds-checked copies.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps the whole-file mapping made in `Inner::file_for`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[derive(Clone)]
struct Entry {
    len: u64,
    /// None: mapped by the client without memory behind it (ROM, another device's BAR).
    file: Option<Arc<MappedFile>>,
    file_offset: u64,
    writable: bool,
}

impl Entry {
    fn continues(&self, start: u64, next_start: u64, next: &Entry) -> bool {
        match (&self.file, &next.file) {
            (Some(a), Some(b)) => {
                Arc::ptr_eq(a, b)
                    && start + self.len == next_start
                    && self.file_offset + self.len == next.file_offset
                    && self.writable == next.writable
            }
            _ => false,
        }
    }

    fn flat(&self, start: u64) -> Flat {
        let host = match &self.file {
            // SAFETY: `file_offset + len` lies inside the mapping (checked when the entry
            // was made; merges and splits keep it), so the pointer stays in bounds.
            Some(f) => unsafe { f.ptr.add(self.file_offset as usize) },
            None => std::ptr::null_mut(),
        };
        Flat {
            start,
            end: start + self.len,
            host,
            writable: self.writable,
            direct: self.file.as_ref().is_some_and(|f| f.direct),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Merged ranges.
    maps: BTreeMap<u64, Entry>,
    /// The client's windows as mapped (not merged): what [`MAX_DMA_MAPS`] counts.
    windows: BTreeMap<u64, u64>,
    /// The mapping of each file by inode, for reuse by later maps of the same file.
    files: HashMap<(u64, u64), Weak<MappedFile>>,
    /// Every live mapping (also those replaced in `files` by a longer one).
    all_files: Vec<Weak<MappedFile>>,
    /// `maps` as a sorted array for the DMA path. Valid unless `stale`.
    flat: Vec<Flat>,
    /// `flat` no longer matches `maps` (an out-of-order change): the next access
    /// rebuilds it. While stale it is never read (its pointers may dangle).
    stale: bool,
    /// Index in `flat` of the range the last access resolved to (a hint, checked on use).
    last: AtomicUsize,
}

/// One range of [`Inner::flat`].
struct Flat {
    start: u64,
    end: u64,
    /// Host address of `start`, valid for `end - start` bytes; null: no memory behind it.
    host: *mut u8,
    writable: bool,
    direct: bool,
}

// SAFETY: `host` points into a mapping kept alive by `Inner::maps`; it is only
// dereferenced under the map's lock while the table is not stale.
unsafe impl Send for Flat {}
// SAFETY: as above.
unsafe impl Sync for Flat {}

/// The IOVA → memory map of one function, filled by the transport's DMA_MAP requests.
#[derive(Default)]
pub struct GuestMemory {
    inner: RwLock<Inner>,
    faults: AtomicU64,
}

impl GuestMemory {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[iova, iova + len)` to `fd` at `file_offset` (or to nothing when `fd` is None).
    /// The fd is mmap'd once per file: a second fd of the same file is closed, unless the
    /// file grew and the existing mapping does not cover the range.
    pub fn map(
        &self,
        iova: u64,
        len: u64,
        fd: Option<OwnedFd>,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), MapError> {
        if len == 0 || iova.checked_add(len).is_none() {
            return Err(MapError::BadRange { iova, len });
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.windows.len() >= MAX_DMA_MAPS {
            return Err(MapError::TooMany { what: "DMA_MAP windows", limit: MAX_DMA_MAPS as u64 });
        }
        if inner.overlaps(iova, len) {
            return Err(MapError::Overlap { iova, len });
        }
        let file = match fd {
            None => None,
            Some(fd) => Some(inner.file_for(fd, file_offset, len)?),
        };
        inner.maps.insert(iova, Entry { len, file, file_offset, writable });
        inner.windows.insert(iova, len);
        let key = inner.merge_around(iova);
        inner.note_change(key);
        Ok(())
    }

    /// Removes every mapping inside `[iova, iova + len)`, splitting ranges that straddle
    /// the edges. Returns how many bytes were unmapped.
    pub fn unmap(&self, iova: u64, len: u64) -> u64 {
        let end = iova.saturating_add(len);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<u64> =
            inner.maps.range(..end).rev().take_while(|(k, e)| **k + e.len > iova).map(|(k, _)| *k).collect();
        let mut removed = 0;
        for k in keys {
            let Some(e) = inner.maps.remove(&k) else {
                continue;
            };
            let e_end = k + e.len;
            if k < iova {
                let mut head = e.clone();
                head.len = iova - k;
                inner.maps.insert(k, head);
            }
            if e_end > end {
                let mut tail = e.clone();
                tail.len = e_end - end;
                tail.file_offset = e.file_offset + (end - k);
                inner.maps.insert(end, tail);
            }
            removed += e_end.min(end) - k.max(iova);
        }
        let wins: Vec<(u64, u64)> = inner
            .windows
            .range(..end)
            .rev()
            .take_while(|(k, l)| **k + **l > iova)
            .map(|(k, l)| (*k, *l))
            .collect();
        for (k, l) in wins {
            inner.windows.remove(&k);
            if k < iova {
                inner.windows.insert(k, iova - k);
            }
            if k + l > end {
                inner.windows.insert(end, k + l - end);
            }
        }
        if removed > 0 {
            // Mappings may have been dropped: the table is not read again before a rebuild.
            inner.stale = true;
        }
        inner.files.retain(|_, w| w.strong_count() > 0);
        inner.all_files.retain(|w| w.strong_count() > 0);
        removed
    }

    /// Removes all mappings (disconnect, reset, UNMAP_ALL).
    pub fn unmap_all(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.maps.clear();
        inner.windows.clear();
        inner.files.clear();
        inner.all_files.clear();
        inner.flat.clear();
        inner.stale = false;
        inner.last.store(0, Ordering::Relaxed);
    }

    /// Number of distinct (merged) ranges.
    pub fn ranges(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).maps.len()
    }

    /// Number of DMA_MAP windows held (what [`MAX_DMA_MAPS`] limits).
    pub fn windows(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).windows.len()
    }

    /// Number of distinct file mappings.
    pub fn files(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.all_files.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Total mapped bytes.
    pub fn mapped_bytes(&self) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.maps.values().map(|e| e.len).sum()
    }

    /// Accesses refused because the client took the memory behind a mapping away.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// The map, read-locked, with its DMA table up to date.
    fn table(&self) -> RwLockReadGuard<'_, Inner> {
        loop {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if !inner.stale {
                return inner;
            }
            drop(inner);
            let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
            if w.stale {
                w.rebuild_flat();
            }
        }
    }

    /// Runs `f(host, done, n)` over the pieces of `[addr, addr + len)`; `f` returns false
    /// when the memory behind a piece is gone.
    fn access(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(Piece, usize, usize) -> bool,
    ) -> Result<(), DmaError> {
        if addr.checked_add(len as u64).is_none() {
            return Err(DmaError::Unmapped { addr, len });
        }
        let inner = self.table();
        let fault = || {
            self.faults.fetch_add(1, Ordering::Relaxed);
            DmaError::Fault { addr, len }
        };
        // One range holds it all (the usual case): nothing to check beyond the resolve.
        if let Ok((p, avail)) = inner.resolve(addr, write) {
            if avail >= len {
                return if f(p, 0, len) { Ok(()) } else { Err(fault()) };
            }
        }
        // Check the whole range first, so a refused access has no partial effect; then copy.
        for copy in [false, true] {
            let mut done = 0usize;
            while done < len {
                let (p, avail) = inner.resolve(addr + done as u64, write).map_err(|e| match e {
                    Refusal::Unmapped => DmaError::Unmapped { addr, len },
                    Refusal::ReadOnly => DmaError::ReadOnly { addr, len },
                })?;
                let take = avail.min(len - done);
                if copy && !f(p, done, take) {
                    return Err(fault());
                }
                done += take;
            }
        }
        Ok(())
    }
}

/// Where a piece of an access lands: memory that plain loads and stores may touch, or
/// memory only the kernel may copy (it can vanish under us).
#[derive(Clone, Copy)]
enum Piece {
    Direct(*mut u8),
    Guarded(*mut u8),
}

/// Copies `n` bytes between our buffer `local` and mapped client memory `remote` through
/// the kernel (`process_vm_readv`/`writev` on our own pid): a page past the end of the
/// client's file gives a short count (EFAULT) instead of SIGBUS. False when not all `n`
/// bytes were copied.
fn guarded_copy(local: *mut u8, remote: *mut u8, n: usize, write: bool) -> bool {
    let mut done = 0usize;
    while done < n {
        let l = libc::iovec { iov_base: local.wrapping_add(done).cast(), iov_len: n - done };
        let r = libc::iovec { iov_base: remote.wrapping_add(done).cast(), iov_len: n - done };
        // SAFETY: the kernel checks both ranges (it never faults us: bad pages give
        // EFAULT); `local` is our own buffer of `n` bytes and `remote` a range inside a
        // mapping of ours (bounded by the mapping's length by the caller).
        let got = unsafe {
            if write {
                libc::process_vm_writev(libc::getpid(), &l, 1, &r, 1, 0)
            } else {
                libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0)
            }
        };
        if got <= 0 {
            return false;
        }
        done += got as usize;
    }
    true
}

/// Writes larger than this go through `memcpy`; smaller ones (descriptors, notifications,
/// completions: what drivers poll and write back) are stored word by word.
const STORE_ONCE_MAX: usize = 256;

/// Copies `n` bytes into guest memory the way a DMA engine does: every byte is stored
/// exactly once, in ascending address order.
///
/// `memcpy` may store some bytes twice (glibc copies small sizes with two overlapping
/// stores: an 8-byte copy is two stores of the same word). A driver that reads a
/// notification's signal between those two stores, clears it, and then sees the second
/// store bring it back would process the notification twice. Small writes are therefore
/// done with single volatile stores; large data writes keep `memcpy`'s speed (their bytes
/// are never written back by the driver while the device writes them).
///
/// Raw pointers, not `vm_memory::VolatileSlice`: the slice's per-store bounds checks and
/// byte-wise small copies cost about 8 % of the echo's packet rate. The access is as strict
/// as vm-memory's: its own copies (`copy_slice` in vm-memory 0.18) are `copy_nonoverlapping`
/// above 8 bytes and volatile stores below, and no reference to guest memory is formed.
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` bytes, and the ranges must not overlap.
unsafe fn store_once(src: *const u8, dst: *mut u8, n: usize) {
    if n > STORE_ONCE_MAX {
        // SAFETY: guaranteed by the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    let mut i = 0;
    // Single bytes up to 8-byte alignment, then whole words, then the remaining bytes.
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: i < n.
        unsafe { std::ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 <= n; `dst + i` is 8-byte aligned; the source may be unaligned.
        unsafe {
            let w = std::ptr::read_unaligned(src.add(i).cast::<u64>());
            std::ptr::write_volatile(dst.add(i).cast::<u64>(), w);
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n.
        unsafe { std::ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
}

enum Refusal {
    Unmapped,
    ReadOnly,
}

impl DmaSpace for GuestMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let dst = buf.as_mut_ptr();
        self.access(addr, buf.len(), false, |p, off, n| match p {
            Piece::Direct(p) => {
                // SAFETY: `p` has `n` readable bytes that cannot vanish (see `access`);
                // `dst + off` has `n` writable bytes of `buf`; guest memory never aliases
                // our buffer.
                unsafe { std::ptr::copy_nonoverlapping(p, dst.add(off), n) };
                true
            }
            Piece::Guarded(p) => guarded_copy(dst.wrapping_add(off), p, n, false),
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let src = data.as_ptr();
        self.access(addr, data.len(), true, |p, off, n| match p {
            Piece::Direct(p) => {
                // SAFETY: `p` has `n` writable bytes that cannot vanish (see `access`);
                // `src + off` has `n` readable bytes of `data`.
                unsafe { store_once(src.add(off), p, n) };
                true
            }
            // The kernel only reads `local` for a write.
            Piece::Guarded(p) => guarded_copy(src.wrapping_add(off).cast_mut(), p, n, true),
        })
    }
}

/// What a shmem file sealed against shrinking is: pages can never vanish under a mapping.
fn cannot_shrink(fd: &OwnedFd) -> bool {
    // SAFETY: F_GET_SEALS on a valid fd; returns the seals or -1.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return false;
    }
    // SAFETY: fstatfs into a zeroed struct on a valid fd.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `sfs` is a valid out pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
        return false;
    }
    // Not hugetlbfs: a hole punched there is refilled from the huge page pool, and an
    // empty pool raises SIGBUS even on a sealed file.
    sfs.f_type == libc::TMPFS_MAGIC
}

impl Inner {
    /// The host pointer for `a` and how many bytes follow it in the same range.
    fn resolve(&self, a: u64, write: bool) -> Result<(Piece, usize), Refusal> {
        debug_assert!(!self.stale);
        let hint = self.last.load(Ordering::Relaxed);
        let e = match self.flat.get(hint).filter(|e| e.start <= a && a < e.end) {
            Some(e) => e,
            None => {
                let i =
                    self.flat.partition_point(|e| e.start <= a).checked_sub(1).ok_or(Refusal::Unmapped)?;
                let e = &self.flat[i];
                if a >= e.end {
                    return Err(Refusal::Unmapped);
                }
                self.last.store(i, Ordering::Relaxed);
                e
            }
        };
        if e.host.is_null() {
            return Err(Refusal::Unmapped);
        }
        if write && !e.writable {
            return Err(Refusal::ReadOnly);
        }
        // SAFETY: `host` is valid for `end - start` bytes of its mapping and
        // `a - start < end - start`.
        let p = unsafe { e.host.add((a - e.start) as usize) };
        let n = (e.end - a) as usize;
        Ok((if e.direct { Piece::Direct(p) } else { Piece::Guarded(p) }, n))
    }

    /// Rebuilds `flat` from `maps`.
    fn rebuild_flat(&mut self) {
        self.flat = self.maps.iter().map(|(&start, e)| e.flat(start)).collect();
        self.stale = false;
        self.last.store(0, Ordering::Relaxed);
    }

    /// Brings `flat` up to date after the range at `key` was added or grew: in place when
    /// it is the last range (maps in ascending order, the usual case), else lazily.
    fn note_change(&mut self, key: u64) {
        if self.stale {
            return;
        }
        let Some(e) = self.maps.get(&key) else {
            self.stale = true;
            return;
        };
        let is_last = self.maps.range(key + 1..).next().is_none();
        let f = e.flat(key);
        match self.flat.last() {
            _ if !is_last => self.stale = true,
            Some(l) if l.start == key => {
                if let Some(l) = self.flat.last_mut() {
                    *l = f;
                }
            }
            Some(l) if l.end <= key => self.flat.push(f),
            None => self.flat.push(f),
            Some(_) => self.stale = true,
        }
        // A merge may have swallowed the range before the last one into the last.
        if !self.stale && self.flat.len() != self.maps.len() {
            self.stale = true;
        }
    }

    fn overlaps(&self, iova: u64, len: u64) -> bool {
        let end = iova + len;
        self.maps.range(..end).next_back().is_some_and(|(k, e)| k + e.len > iova)
    }

    fn file_for(&mut self, fd: OwnedFd, offset: u64, len: u64) -> Result<Arc<MappedFile>, MapError> {
        // SAFETY: fstat into a zeroed struct on a valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(MapError::Mmap(std::io::Error::last_os_error()));
        }
        let size = st.st_size as u64;
        let end = offset.checked_add(len).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(MapError::OutsideFile { offset, len, size });
        };
        let key = (st.st_dev, st.st_ino);
        if let Some(f) = self.files.get(&key).and_then(Weak::upgrade) {
            // The existing mapping is only as long as the file was when it was made.
            if end <= f.len as u64 {
                return Ok(f); // `fd` is a duplicate of a file we already map: dropped (closed)
            }
        }
        self.all_files.retain(|w| w.strong_count() > 0);
        if self.all_files.len() >= MAX_DMA_FILES {
            return Err(MapError::TooMany { what: "mapped files", limit: MAX_DMA_FILES as u64 });
        }
        let in_use: u64 = self.all_files.iter().filter_map(Weak::upgrade).map(|f| f.len as u64).sum();
        if in_use.saturating_add(size) > MAX_DMA_MAPPED_BYTES {
            return Err(MapError::TooMany { what: "mapped bytes", limit: MAX_DMA_MAPPED_BYTES });
        }
        let direct = cannot_shrink(&fd);
        // SAFETY: maps the whole file shared; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapError::Mmap(std::io::Error::last_os_error()));
        }
        let f = Arc::new(MappedFile { ptr: ptr.cast(), len: size as usize, direct });
        self.files.insert(key, Arc::downgrade(&f));
        self.all_files.push(Arc::downgrade(&f));
        Ok(f)
    }

    /// Merges the range at `iova` with its neighbours; returns the key of the result.
    fn merge_around(&mut self, iova: u64) -> u64 {
        // Merge with the successor, then the predecessor.
        let Some(e) = self.maps.get(&iova).cloned() else {
            return iova;
        };
        let next_key = iova + e.len;
        if let Some(next) = self.maps.get(&next_key).cloned() {
            if e.continues(iova, next_key, &next) {
                self.maps.remove(&next_key);
                if let Some(cur) = self.maps.get_mut(&iova) {
                    cur.len += next.len;
                }
            }
        }
        let Some(e) = self.maps.get(&iova).cloned() else {
            return iova;
        };
        if let Some((&pk, prev)) = self.maps.range(..iova).next_back() {
            if prev.continues(pk, iova, &e) {
                self.maps.remove(&iova);
                if let Some(p) = self.maps.get_mut(&pk) {
                    p.len += e.len;
                }
                return pk;
            }
        }
        iova
    }
}

/// The device's handle on DMA: the space plus accounting and the bus-master gate.
#[derive(Clone)]
pub struct Dma {
    space: Arc<dyn DmaSpace>,
    counters: Arc<Counters>,
    bus_master: Arc<AtomicBool>,
}

impl Dma {
    /// A handle over `space` that counts into `counters`; DMA is allowed while
    /// `bus_master` is set (the transport mirrors the command register into it).
    pub fn new(space: Arc<dyn DmaSpace>, counters: Arc<Counters>, bus_master: Arc<AtomicBool>) -> Self {
        Dma { space, counters, bus_master }
    }

    fn gate(&self) -> Result<(), DmaError> {
        if self.bus_master.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.counters.dma_error();
            Err(DmaError::BusMasterOff)
        }
    }

    /// A counted DMA read.
    pub fn read(&self, addr: u64, buf: &mut [u8], class: DmaClass) -> Result<(), DmaError> {
        self.gate()?;
        match self.space.read_routed(addr, buf) {
            Ok(peer) => {
                self.counters.dma_read_from(addr, buf.len(), class, peer.as_deref());
                Ok(())
            }
            Err(e) => {
                self.counters.dma_error();
                Err(e)
            }
        }
    }

    /// A counted DMA write. A write a switch denied is counted as refused and denied
    /// (and traced as denied), not as a write.
    pub fn write(&self, addr: u64, data: &[u8], class: DmaClass) -> Result<(), DmaError> {
        self.gate()?;
        match self.space.write_routed(addr, data) {
            Ok(peer) => {
                self.counters.dma_write_to(addr, data.len(), class, peer.as_deref());
                Ok(())
            }
            Err(e) => {
                match &e {
                    DmaError::Denied { by, .. } => self.counters.dma_denied(data.len(), class, by),
                    _ => self.counters.dma_error(),
                }
                Err(e)
            }
        }
    }

    /// The counters this handle reports into.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64) -> OwnedFd {
        // SAFETY: creates a memfd; checked below.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sizes our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        fd
    }

    fn dup(fd: &OwnedFd) -> OwnedFd {
        fd.try_clone().unwrap()
    }

    #[test]
    fn pages_merge_and_files_map_once() {
        let m = GuestMemory::new();
        let f = memfd(64 << 10);
        for i in 0..16u64 {
            m.map(0x10_0000 + i * 4096, 4096, Some(dup(&f)), i * 4096, true).unwrap();
        }
        assert_eq!(m.ranges(), 1, "16 adjacent pages merge into one range");
        assert_eq!(m.files(), 1, "one mmap per file");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        m.write(0x10_0000 + 100, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read(0x10_0000 + 100, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn out_of_map_is_refused_without_partial_effect() {
        let m = GuestMemory::new();
        let f = memfd(8192);
        m.map(0x1000, 4096, Some(dup(&f)), 0, true).unwrap();
        let err = m.write(0x1000 + 4000, &[0xaa; 200]).unwrap_err();
        assert_eq!(err, DmaError::Unmapped { addr: 0x1000 + 4000, len: 200 });
        let mut b = [0u8; 96];
        m.read(0x1000 + 4000, &mut b).unwrap();
        assert_eq!(b, [0; 96], "nothing written by the refused access");
        assert!(m.read(0, &mut b).is_err());
        assert!(m.read(u64::MAX - 10, &mut b).is_err());
    }

    #[test]
    fn unmap_splits_and_unbacked_maps_refuse() {
        let m = GuestMemory::new();
        let f = memfd(3 * 4096);
        m.map(0x3000, 3 * 4096, Some(f), 0, true).unwrap();
        m.write(0x3000, &[1; 3 * 4096]).unwrap();
        assert_eq!(m.unmap(0x4000, 4096), 4096);
        assert_eq!(m.ranges(), 2);
        let mut b = [0u8; 8];
        m.read(0x3000, &mut b).unwrap();
        m.read(0x5000, &mut b).unwrap();
        assert!(m.read(0x4000, &mut b).is_err());
        m.map(0x9000, 4096, None, 0, true).unwrap();
        assert!(m.read(0x9000, &mut b).is_err(), "mapped without memory behind it");
        assert!(matches!(m.map(0x9800, 4096, None, 0, true), Err(MapError::Overlap { .. })));
        m.unmap_all();
        assert_eq!(m.ranges(), 0);
        assert_eq!(m.files(), 0);
    }

    #[test]
    fn read_only_and_file_bounds() {
        let m = GuestMemory::new();
        let f = memfd(4096);
        assert!(matches!(m.map(0, 8192, Some(dup(&f)), 0, true), Err(MapError::OutsideFile { .. })));
        m.map(0, 4096, Some(f), 0, false).unwrap();
        assert!(matches!(m.write(0, &[1]), Err(DmaError::ReadOnly { .. })));
    }

    #[test]
    fn small_writes_land_exactly_and_unaligned_writes_work() {
        let m = GuestMemory::new();
        m.map(0, 4096, Some(memfd(4096)), 0, true).unwrap();
        for (addr, len) in [(0u64, 8usize), (3, 61), (64, 64), (1000, 300), (4090, 6)] {
            let data: Vec<u8> =
                (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(addr as u8)).collect();
            m.write(addr, &data).unwrap();
            let mut back = vec![0u8; len];
            m.read(addr, &mut back).unwrap();
            assert_eq!(back, data, "{addr}+{len}");
        }
    }

    fn size_of(fd: &OwnedFd) -> u64 {
        // SAFETY: fstat into a zeroed struct on a valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out pointer.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_size as u64
    }

    fn resize(fd: &OwnedFd, len: u64) -> i32 {
        // SAFETY: resizes a memfd of the test's own.
        unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }
    }

    fn pread_at(fd: &OwnedFd, off: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        // SAFETY: reads into our own buffer of `n` bytes.
        let got = unsafe { libc::pread(fd.as_raw_fd(), b.as_mut_ptr().cast(), n, off as i64) };
        assert_eq!(got, n as isize);
        b
    }

    /// Issue 17, defect 1: a client that shrinks an (unsealed) DMA file after mapping it
    /// must get refused, counted DMA, not a server killed by SIGBUS.
    #[test]
    fn a_file_shrunk_after_map_refuses_dma_instead_of_sigbus() {
        let m = GuestMemory::new();
        let f = memfd(1 << 20);
        m.map(0x1000_0000, 1 << 20, Some(dup(&f)), 0, true).unwrap();
        m.write(0x1000_0000, &[7; 64]).unwrap();
        assert_eq!(resize(&f, 0), 0, "an unsealed memfd can shrink");
        for len in [8usize, 64, 300, 8192] {
            let data = vec![0x5a; len];
            assert!(matches!(m.write(0x1000_0000 + 4096, &data), Err(DmaError::Fault { .. })), "write {len}");
            let mut back = vec![0; len];
            assert!(matches!(m.read(0x1000_0000, &mut back), Err(DmaError::Fault { .. })), "read {len}");
        }
        assert_eq!(m.faults(), 8, "every refused access is counted");
        // Grown back, the same mapping works again (pages past EOF came back as zeros).
        assert_eq!(resize(&f, 1 << 20), 0);
        m.write(0x1000_0000, &[9; 64]).unwrap();
        assert_eq!(pread_at(&f, 0, 64), vec![9; 64]);
    }

    /// Issue 17, defect 2: a second map of a file that grew must not reuse the first,
    /// shorter mapping: every access is bounded by the mapping's own length.
    #[test]
    fn a_grown_file_mapped_again_is_bounded_by_its_own_mapping() {
        let m = GuestMemory::new();
        let f = memfd(4096);
        m.map(0x1000, 4096, Some(dup(&f)), 0, true).unwrap();
        assert_eq!(resize(&f, 64 << 20), 0);
        for (iova, off) in [(0x10_0000u64, 8192u64), (0x20_0000, 32 << 20)] {
            m.map(iova, 4096, Some(dup(&f)), off, true).unwrap();
            let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + off as u32) as u8).collect();
            m.write(iova, &data).unwrap();
            assert_eq!(pread_at(&f, off, 4096), data, "the write landed in the file at {off:#x}");
            let mut back = vec![0u8; 4096];
            m.read(iova, &mut back).unwrap();
            assert_eq!(back, data);
        }
        assert_eq!(size_of(&f), 64 << 20);
    }

    /// Issue 17, defect 6: DMA_MAP is bounded (the 65 536th window is refused) and each
    /// map is cheap whatever the order (no rebuild of the whole table per map).
    #[test]
    fn map_count_is_bounded_and_maps_are_not_quadratic() {
        for descending in [false, true] {
            let m = GuestMemory::new();
            let t = std::time::Instant::now();
            for i in 0..MAX_DMA_MAPS as u64 {
                let k = if descending { MAX_DMA_MAPS as u64 - 1 - i } else { i };
                // Gaps between windows: nothing merges.
                m.map(0x1_0000_0000 + k * 8192, 4096, None, 0, true).unwrap();
            }
            assert!(matches!(m.map(0x9_0000_0000, 4096, None, 0, true), Err(MapError::TooMany { .. })));
            let took = t.elapsed();
            // Well under a second here; the generous bound only catches quadratic inserts
            // (which took 22 s), not a loaded machine.
            assert!(took < std::time::Duration::from_secs(15), "{MAX_DMA_MAPS} maps took {took:?}");
            assert_eq!(m.ranges(), MAX_DMA_MAPS);
            let mut b = [0u8; 4];
            assert!(matches!(m.read(0x1_0000_0000 + 100 * 8192, &mut b), Err(DmaError::Unmapped { .. })));
            // Unmapping frees room for exactly as many windows.
            assert_eq!(m.unmap(0x1_0000_0000, 2 * 8192), 2 * 4096);
            m.map(0x9_0000_0000, 4096, None, 0, true).unwrap();
            m.map(0x9_0001_0000, 4096, None, 0, true).unwrap();
            assert!(matches!(m.map(0x9_0002_0000, 4096, None, 0, true), Err(MapError::TooMany { .. })));
        }
    }

    #[test]
    fn handle_counts_and_gates() {
        let m = Arc::new(GuestMemory::new());
        m.map(0, 4096, Some(memfd(4096)), 0, true).unwrap();
        let c = Arc::new(Counters::default());
        let bm = Arc::new(AtomicBool::new(false));
        let dma = Dma::new(m, c.clone(), bm.clone());
        assert_eq!(dma.write(0, &[1; 64], DmaClass::Data), Err(DmaError::BusMasterOff));
        bm.store(true, Ordering::Release);
        dma.write(0, &[1; 64], DmaClass::Data).unwrap();
        dma.write(64, &[1; 64], DmaClass::Metadata).unwrap();
        assert!(dma.write(4090, &[1; 64], DmaClass::Data).is_err());
        let s = c.snapshot();
        assert_eq!((s.dma_writes, s.dma_write_bytes, s.dma_write_meta_bytes, s.dma_errors), (2, 128, 64, 2));
    }
}
