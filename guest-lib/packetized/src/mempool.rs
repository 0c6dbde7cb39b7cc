//! [`Mempool`] and [`Mbuf`]: 2 KiB DMA packet buffers handed around by index.

use crate::{Error, Result};
use device_access::{DeviceAccess, DmaBuffer, DmaOptions};
use std::sync::{Arc, Mutex, MutexGuard};
use testbed_regs::packetized::{BUF_SIZE, MAX_FRAME};

/// Most buffers one frame spans (a [`MAX_FRAME`] jumbo frame).
pub const MAX_SEGS: usize = MAX_FRAME.div_ceil(BUF_SIZE);

pub(crate) struct PoolInner {
    mem: DmaBuffer,
    count: u32,
    /// Free buffer indices (a stack: recently freed buffers are warm in cache).
    free: Mutex<Vec<u32>>,
}

impl PoolInner {
    fn free_list(&self) -> MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `out.len()` buffers, all or none.
    pub(crate) fn get_bulk(&self, out: &mut [u32]) -> bool {
        let mut f = self.free_list();
        if f.len() < out.len() {
            return false;
        }
        let at = f.len() - out.len();
        out.copy_from_slice(&f[at..]);
        f.truncate(at);
        true
    }

    /// Takes up to `out.len()` buffers; returns how many.
    pub(crate) fn get_some(&self, out: &mut [u32]) -> usize {
        let mut f = self.free_list();
        let n = out.len().min(f.len());
        let at = f.len() - n;
        out[..n].copy_from_slice(&f[at..]);
        f.truncate(at);
        n
    }

    /// Returns buffers.
    pub(crate) fn put_bulk(&self, idx: &[u32]) {
        if !idx.is_empty() {
            self.free_list().extend_from_slice(idx);
        }
    }

    /// The IOVA of buffer `i`.
    pub(crate) fn iova(&self, i: u32) -> u64 {
        self.mem.iova() + i as u64 * BUF_SIZE as u64
    }

    /// The byte offset of buffer `i` in the region.
    fn offset(&self, i: u32) -> usize {
        debug_assert!(i < self.count);
        i as usize * BUF_SIZE
    }
}

/// A pool of 2 KiB packet buffers in one DMA region.
#[derive(Clone)]
pub struct Mempool {
    pub(crate) inner: Arc<PoolInner>,
}

impl Mempool {
    /// Allocates `count` buffers (huge pages when available) mapped for the device.
    pub fn new(access: &mut dyn DeviceAccess, count: u32) -> Result<Mempool> {
        if count == 0 {
            return Err(Error::Config("a mempool needs at least one buffer".into()));
        }
        let mem = access.alloc_dma(
            count as usize * BUF_SIZE,
            DmaOptions { huge: true, mirrored: false, iova_align: 0 },
        )?;
        Ok(Self::from_buffer(mem, count))
    }

    /// A pool over memory already mapped for the device (at least `count` buffers long).
    pub fn from_buffer(mem: DmaBuffer, count: u32) -> Mempool {
        assert!(mem.len() >= count as usize * BUF_SIZE, "DMA buffer too small for {count} mbufs");
        let free = Mutex::new((0..count).rev().collect());
        Mempool { inner: Arc::new(PoolInner { mem, count, free }) }
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> u32 {
        self.inner.count
    }

    /// Buffers currently free.
    pub fn free_count(&self) -> usize {
        self.inner.free_list().len()
    }

    /// One empty single-buffer mbuf (length 0), if a buffer is free.
    pub fn alloc(&self) -> Option<Mbuf> {
        let mut i = [0u32];
        self.inner.get_bulk(&mut i).then(|| Mbuf::from_segs(&self.inner, &i, 0))
    }

    /// An mbuf for a frame of `len` bytes (chained over `ceil(len / 2048)` buffers), its
    /// length set to `len`.
    pub fn alloc_frame(&self, len: usize) -> Result<Mbuf> {
        if len == 0 || len > MAX_SEGS * BUF_SIZE {
            return Err(Error::BadLength { len, why: "an mbuf holds 1..=MAX_SEGS * BUF_SIZE bytes" });
        }
        let mut segs = [0u32; MAX_SEGS];
        let n = len.div_ceil(BUF_SIZE);
        if !self.inner.get_bulk(&mut segs[..n]) {
            return Err(Error::PoolExhausted { wanted: n, free: self.free_count() });
        }
        Ok(Mbuf::from_segs(&self.inner, &segs[..n], len as u32))
    }

    /// Appends `n` empty single-buffer mbufs to `out`, all or none (DPDK's
    /// `rte_pktmbuf_alloc_bulk`): one pool access for the lot.
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> Result<()> {
        let mut idx = vec![0u32; n];
        if !self.inner.get_bulk(&mut idx) {
            return Err(Error::PoolExhausted { wanted: n, free: self.free_count() });
        }
        out.extend(idx.iter().map(|&i| Mbuf::from_segs(&self.inner, &[i], 0)));
        Ok(())
    }

    /// Returns all mbufs of `bufs` to the pool with one pool access.
    pub fn free_bulk(&self, bufs: &mut Vec<Mbuf>) {
        let mut idx = Vec::with_capacity(bufs.len());
        for mut m in bufs.drain(..) {
            if Arc::ptr_eq(&m.pool, &self.inner) {
                idx.extend_from_slice(m.take_segs());
            }
        }
        self.inner.put_bulk(&idx);
    }
}

/// A packet: one 2 KiB buffer, or a chain of them (all but the last full) for a frame
/// over [`BUF_SIZE`]. Its buffers go back to the pool on drop.
pub struct Mbuf {
    pool: Arc<PoolInner>,
    segs: [u32; MAX_SEGS],
    nsegs: u8,
    len: u32,
    rss_hash: u32,
}

impl Mbuf {
    pub(crate) fn from_segs(pool: &Arc<PoolInner>, segs: &[u32], len: u32) -> Mbuf {
        let mut s = [0u32; MAX_SEGS];
        s[..segs.len()].copy_from_slice(segs);
        Mbuf { pool: pool.clone(), segs: s, nsegs: segs.len() as u8, len, rss_hash: 0 }
    }

    pub(crate) fn set_rss_hash(&mut self, h: u32) {
        self.rss_hash = h;
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        &self.pool
    }

    /// The buffer indices, which the caller now owns (the mbuf becomes empty).
    pub(crate) fn take_segs(&mut self) -> &[u32] {
        let n = std::mem::take(&mut self.nsegs) as usize;
        self.len = 0;
        &self.segs[..n]
    }

    /// Frame length in bytes (all segments).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Buffers the frame spans.
    pub fn nb_segs(&self) -> usize {
        self.nsegs as usize
    }

    /// Bytes the mbuf's buffers can hold.
    pub fn capacity(&self) -> usize {
        self.nsegs as usize * BUF_SIZE
    }

    /// The RSS hash the NIC computed (RX; 0 otherwise).
    pub fn rss_hash(&self) -> u32 {
        self.rss_hash
    }

    /// Sets the frame length; it must fit the mbuf's buffers.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity() {
            return Err(Error::BadLength { len, why: "longer than the mbuf's buffers" });
        }
        self.len = len as u32;
        Ok(())
    }

    /// Length of segment `i` (all but the last are full).
    pub fn seg_len(&self, i: usize) -> usize {
        if i >= self.nsegs as usize {
            return 0;
        }
        (self.len as usize).saturating_sub(i * BUF_SIZE).min(BUF_SIZE)
    }

    /// The bytes of segment `i` (empty past the last).
    pub fn segment(&self, i: usize) -> &[u8] {
        if i >= self.nsegs as usize {
            return &[];
        }
        // SAFETY: the hand-over rule: the buffer belongs to this mbuf alone (not posted to
        // the device, not in the free list), and writing it needs `&mut self`.
        unsafe { self.pool.mem.owned(self.pool.offset(self.segs[i]), self.seg_len(i)) }
    }

    /// The bytes of segment `i`, writable.
    pub fn segment_mut(&mut self, i: usize) -> &mut [u8] {
        if i >= self.nsegs as usize {
            return &mut [];
        }
        // SAFETY: as in `segment`; the slice lives as long as `&mut self` (which keeps the
        // pool's memory through `pool`) and that makes the access exclusive.
        unsafe { self.pool.mem.owned_mut(self.pool.offset(self.segs[i]), self.seg_len(i)) }
    }

    /// The frame's first segment (the whole frame unless it is over [`BUF_SIZE`]), as
    /// DPDK's `rte_pktmbuf_mtod`.
    pub fn data(&self) -> &[u8] {
        self.segment(0)
    }

    /// The first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.segment_mut(0)
    }

    /// The byte at frame offset `off`, whatever segment holds it.
    pub fn byte_mut(&mut self, off: usize) -> Option<&mut u8> {
        if off >= self.len as usize {
            return None;
        }
        self.segment_mut(off / BUF_SIZE).get_mut(off % BUF_SIZE)
    }

    /// Copies `data` into the mbuf and sets the length.
    pub fn copy_from(&mut self, data: &[u8]) -> Result<()> {
        self.set_len(data.len())?;
        for (i, chunk) in data.chunks(BUF_SIZE).enumerate() {
            self.segment_mut(i).copy_from_slice(chunk);
        }
        Ok(())
    }

    /// The whole frame, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        (0..self.nb_segs()).flat_map(|i| self.segment(i).iter().copied()).collect()
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        let n = self.nsegs as usize;
        if n > 0 {
            self.pool.put_bulk(&self.segs[..n]);
        }
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len)
            .field("segs", &&self.segs[..self.nsegs as usize])
            .finish()
    }
}
