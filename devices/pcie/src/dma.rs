//! The DMA space a device sees: guest memory the transport mapped, by I/O virtual address.
//!
//! [`GuestMemory`] keeps an interval map from IOVA ranges to shared file mappings. Under
//! intel-iommu QEMU sends one map per 4 KiB page, each with its own fd: each file is
//! mmap'd once (by inode) and adjacent pages of the same file merge into one range, so the
//! map stays small and a multi-page transfer is one copy. Accesses outside mapped memory
//! fail with [`DmaError`] (the model counts them and flags the error); nothing panics.

use crate::counters::{Counters, DmaClass};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use thiserror::Error;

/// A refused DMA access.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// Part of the range is not mapped (or mapped without memory behind it).
    #[error("DMA at {addr:#x} (+{len} bytes) touches memory the driver has not mapped")]
    Unmapped { addr: u64, len: usize },
    /// The range is mapped read-only and the device tried to write it.
    #[error("DMA write at {addr:#x} (+{len} bytes) to memory mapped read-only")]
    ReadOnly { addr: u64, len: usize },
    /// The driver has not enabled bus mastering.
    #[error("DMA refused: bus mastering is disabled in the command register")]
    BusMasterOff,
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
}

// SAFETY: the mapping is shared memory that lives as long as the struct; accesses are
// bounds-checked copies.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps the whole-file mapping made in `GuestMemory::map`.
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
}

#[derive(Default)]
struct Inner {
    maps: BTreeMap<u64, Entry>,
    files: HashMap<(u64, u64), Weak<MappedFile>>,
    /// `maps` as a sorted array for the DMA path (rebuilt by every map change).
    flat: Vec<Flat>,
    /// Index in `flat` of the range the last access resolved to (a hint, checked on use).
    last: AtomicUsize,
}

/// One range of [`Inner::flat`].
struct Flat {
    start: u64,
    end: u64,
    /// None: mapped without memory behind it.
    file: Option<Arc<MappedFile>>,
    file_offset: u64,
    writable: bool,
}

/// The IOVA → memory map of one function, filled by the transport's DMA_MAP requests.
#[derive(Default)]
pub struct GuestMemory {
    inner: RwLock<Inner>,
}

impl GuestMemory {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[iova, iova + len)` to `fd` at `file_offset` (or to nothing when `fd` is None).
    /// The fd is mmap'd once per file: a second fd of the same file is closed.
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
        if inner.overlaps(iova, len) {
            return Err(MapError::Overlap { iova, len });
        }
        let file = match fd {
            None => None,
            Some(fd) => Some(inner.file_for(fd, file_offset, len)?),
        };
        inner.maps.insert(iova, Entry { len, file, file_offset, writable });
        inner.merge_around(iova);
        inner.rebuild_flat();
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
        inner.files.retain(|_, w| w.strong_count() > 0);
        inner.rebuild_flat();
        removed
    }

    /// Removes all mappings (disconnect, reset, UNMAP_ALL).
    pub fn unmap_all(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.maps.clear();
        inner.files.clear();
        inner.rebuild_flat();
    }

    /// Number of distinct (merged) ranges.
    pub fn ranges(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).maps.len()
    }

    /// Number of distinct files mapped.
    pub fn files(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.files.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Total mapped bytes.
    pub fn mapped_bytes(&self) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.maps.values().map(|e| e.len).sum()
    }

    fn access(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), DmaError> {
        if addr.checked_add(len as u64).is_none() {
            return Err(DmaError::Unmapped { addr, len });
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        // One range holds it all (the usual case): nothing to check beyond the resolve.
        if let Ok((p, avail)) = inner.resolve(addr, write) {
            if avail >= len {
                f(p, 0, len);
                return Ok(());
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
                if copy {
                    f(p, done, take);
                }
                done += take;
            }
        }
        Ok(())
    }
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
        self.access(addr, buf.len(), false, |p, off, n| {
            // SAFETY: `p` has `n` readable bytes (see `access`); `dst + off` has `n`
            // writable bytes of `buf`; guest memory never aliases our buffer.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.add(off), n) }
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let src = data.as_ptr();
        self.access(addr, data.len(), true, |p, off, n| {
            // SAFETY: `p` has `n` writable bytes (see `access`); `src + off` has `n`
            // readable bytes of `data`.
            unsafe { store_once(src.add(off), p, n) }
        })
    }
}

impl Inner {
    /// The host pointer for `a` and how many bytes follow it in the same range.
    fn resolve(&self, a: u64, write: bool) -> Result<(*mut u8, usize), Refusal> {
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
        let file = e.file.as_ref().ok_or(Refusal::Unmapped)?;
        if write && !e.writable {
            return Err(Refusal::ReadOnly);
        }
        // SAFETY: `file_offset + (end - start)` lies inside the file mapping (checked at
        // map time) and `a - start < end - start`.
        let p = unsafe { file.ptr.add((e.file_offset + (a - e.start)) as usize) };
        Ok((p, (e.end - a) as usize))
    }

    /// Rebuilds `flat` from `maps` (after any change to `maps`).
    fn rebuild_flat(&mut self) {
        self.flat = self
            .maps
            .iter()
            .map(|(&start, e)| Flat {
                start,
                end: start + e.len,
                file: e.file.clone(),
                file_offset: e.file_offset,
                writable: e.writable,
            })
            .collect();
        self.last.store(0, Ordering::Relaxed);
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
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(MapError::OutsideFile { offset, len, size });
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(f) = self.files.get(&key).and_then(Weak::upgrade) {
            return Ok(f); // `fd` is a duplicate of a file we already map: dropped (closed)
        }
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
        let f = Arc::new(MappedFile { ptr: ptr.cast(), len: size as usize });
        self.files.insert(key, Arc::downgrade(&f));
        Ok(f)
    }

    fn merge_around(&mut self, iova: u64) {
        // Merge with the successor, then the predecessor.
        let Some(e) = self.maps.get(&iova).cloned() else {
            return;
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
            return;
        };
        if let Some((&pk, prev)) = self.maps.range(..iova).next_back() {
            if prev.continues(pk, iova, &e) {
                self.maps.remove(&iova);
                if let Some(p) = self.maps.get_mut(&pk) {
                    p.len += e.len;
                }
            }
        }
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

    /// A counted DMA write.
    pub fn write(&self, addr: u64, data: &[u8], class: DmaClass) -> Result<(), DmaError> {
        self.gate()?;
        match self.space.write_routed(addr, data) {
            Ok(peer) => {
                self.counters.dma_write_to(addr, data.len(), class, peer.as_deref());
                Ok(())
            }
            Err(e) => {
                self.counters.dma_error();
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
