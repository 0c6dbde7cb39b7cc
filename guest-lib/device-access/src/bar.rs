//! A device BAR as the driver sees it.

use crate::{Error, Result};
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use vm_memory::{FileOffset, MmapRegion};

/// Trapped register access, provided by a transport (VFIO: pread/pwrite on the device fd;
/// vfio-user: REGION_READ/REGION_WRITE messages).
pub trait RegionIo: Send + Sync {
    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()>;
    /// Writes `data` at `offset` of region `index`.
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()>;
}

/// A memory mapping owned by a [`Bar`]; unmapped on drop (vm-memory's `MmapRegion`, which
/// holds its own duplicate of the fd).
pub struct Mapping {
    region: MmapRegion,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset` shared, read-write.
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Self> {
        let file = fd.try_clone_to_owned().map_err(|e| Error::os("dup BAR fd", e))?;
        let at = FileOffset::new(File::from(file), offset);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let region = MmapRegion::build(Some(at), len, prot, libc::MAP_SHARED)
            .map_err(|e| Error::os("mmap BAR", std::io::Error::other(e)))?;
        Ok(Mapping { region })
    }

    fn len(&self) -> usize {
        self.region.size()
    }

    fn ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }
}

/// One BAR: register reads and writes, and raw pointers to the memory-mapped parts.
#[derive(Clone)]
pub struct Bar {
    index: u8,
    region: u32,
    size: u64,
    /// Memory-mapped areas: (offset in the BAR, mapping).
    mapped: Arc<Vec<(u64, Arc<Mapping>)>>,
    io: Arc<dyn RegionIo>,
}

impl Bar {
    /// A BAR of `size` bytes: accesses inside `mapped` areas use memory, the rest `io`.
    pub fn new(
        index: u8,
        region: u32,
        size: u64,
        mapped: Vec<(u64, Arc<Mapping>)>,
        io: Arc<dyn RegionIo>,
    ) -> Self {
        Bar { index, region, size, mapped: Arc::new(mapped), io }
    }

    /// The BAR's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the byte range lies in a memory-mapped area.
    pub fn is_mapped(&self, offset: u64, len: usize) -> bool {
        self.mapped_ptr(offset, len).is_some()
    }

    /// A pointer to `len` bytes at `offset`, if that range is memory-mapped.
    pub fn mapped_ptr(&self, offset: u64, len: usize) -> Option<*mut u8> {
        self.mapped.iter().find_map(|(start, m)| {
            let end = start + m.len() as u64;
            (offset >= *start && offset.checked_add(len as u64)? <= end)
                // SAFETY: offset - start < m.len, checked just above.
                .then(|| unsafe { m.ptr().add((offset - start) as usize) })
        })
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfBar { index: self.index, offset, len, size: self.size }),
        }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> Result<u32> {
        self.check(offset, 4)?;
        if let Some(p) = self.mapped_ptr(offset, 4) {
            // SAFETY: `p` points at 4 mapped bytes; registers are naturally aligned.
            return Ok(u32::from_le(unsafe { std::ptr::read_volatile(p.cast::<u32>()) }));
        }
        let mut b = [0u8; 4];
        self.io.read(self.region, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes `data` at `offset` (one access: a memory write of that size; through the
    /// mapping when there is one).
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        if let Some(p) = self.mapped_ptr(offset, data.len()) {
            // SAFETY: `p` points at `data.len()` mapped bytes of the BAR.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            return Ok(());
        }
        self.io.write(self.region, offset, data)
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) -> Result<()> {
        self.check(offset, 4)?;
        if let Some(p) = self.mapped_ptr(offset, 4) {
            // SAFETY: `p` points at 4 mapped bytes; registers are naturally aligned.
            unsafe { std::ptr::write_volatile(p.cast::<u32>(), value.to_le()) };
            return Ok(());
        }
        self.io.write(self.region, offset, &value.to_le_bytes())
    }

    /// Reads a block of 64-bit counters (low half first, 8 bytes apart) at `base`, by
    /// name; names starting with "reserved" are skipped.
    pub fn read_counters(&self, base: u64, names: &[&'static str]) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if n.starts_with("reserved") {
                continue;
            }
            let lo = self.read32(base + 8 * i as u64)? as u64;
            let hi = self.read32(base + 8 * i as u64 + 4)? as u64;
            out.push((*n, hi << 32 | lo));
        }
        Ok(out)
    }

    /// Reads a 64-bit register.
    pub fn read64(&self, offset: u64) -> Result<u64> {
        self.check(offset, 8)?;
        if let Some(p) = self.mapped_ptr(offset, 8) {
            // SAFETY: `p` points at 8 mapped bytes, naturally aligned.
            return Ok(u64::from_le(unsafe { std::ptr::read_volatile(p.cast::<u64>()) }));
        }
        let mut b = [0u8; 8];
        self.io.read(self.region, offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
