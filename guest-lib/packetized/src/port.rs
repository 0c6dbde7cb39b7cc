//! [`Port`]: the device, its queue pairs and the burst datapath.

use crate::mempool::{Mbuf, Mempool, PoolInner, MAX_SEGS};
use crate::{Error, Result};
use device_access::{Bar, DeviceAccess, DmaBuffer, DmaOptions};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed_regs::packetized::{
    self as regs, desc, queue, queue_page, reg, BUF_SIZE, DESC_SIZE, MAX_FRAME, MAX_TX_CHAIN, MIN_FRAME,
    MIN_RING_SIZE, QUEUE_BAR, QUEUE_PAGE, REG_BAR, RSS_KEY_LEN,
};

/// Most frames one [`Port::rx_burst`] hands out (DPDK's usual burst).
pub const BURST: usize = 32;

/// Ring addresses must be this aligned (bits 6..0 of `*_RING_LOW` are not address bits).
const RING_ALIGN: u64 = 128;

/// How a [`Port`] is set up.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// RX queues (RSS spreads over them when `rss` is set).
    pub rx_queues: u32,
    /// TX queues.
    pub tx_queues: u32,
    /// Descriptors per ring, RX and TX (power of two).
    pub ring_size: u32,
    /// Descriptor write-back coalescing (BAR0 WB_BATCH); None keeps the device's.
    pub wb_batch: Option<u32>,
    /// Spread RX over all `rx_queues` by RSS (else everything goes to queue 0).
    pub rss: bool,
    /// The Toeplitz key; None keeps the device's (the power-on default key).
    pub rss_key: Option<[u8; RSS_KEY_LEN]>,
    /// Mempool buffers; None: enough for every ring full plus slack.
    pub mbufs: Option<u32>,
    /// TX reclaims sent buffers when fewer descriptors than this are free.
    pub tx_free_thresh: u32,
    /// How long to wait for the device to acknowledge a queue enable or disable.
    pub ack_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            ring_size: 1024,
            wb_batch: None,
            rss: true,
            rss_key: None,
            mbufs: None,
            tx_free_thresh: 32,
            ack_timeout: Duration::from_secs(2),
        }
    }
}

impl PortConfig {
    /// The mempool size in use.
    pub fn mbuf_count(&self) -> u32 {
        self.mbufs.unwrap_or(
            (self.rx_queues + self.tx_queues) * self.ring_size + 4 * BURST as u32 * MAX_SEGS as u32,
        )
    }
}

/// Driver-side counts (no device access needed to read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// `rx_burst` calls that returned at least one frame.
    pub rx_bursts: u64,
    /// `tx_burst` calls that posted at least one frame.
    pub tx_bursts: u64,
    /// RX_TAIL doorbell writes.
    pub rx_doorbells: u64,
    /// TX_TAIL doorbell writes.
    pub tx_doorbells: u64,
    /// RX frames the device wrote back with ERR (buffers recycled).
    pub rx_errors: u64,
    /// RX refills that found the mempool short (the ring runs with fewer buffers).
    pub rx_refill_short: u64,
    /// TX buffers returned to the pool after their DD came back.
    pub tx_reclaimed: u64,
    /// `tx_burst` calls that could not post everything (ring full).
    pub tx_ring_full: u64,
}

impl PortStats {
    /// All doorbell (tail) writes.
    pub fn doorbells(&self) -> u64 {
        self.rx_doorbells + self.tx_doorbells
    }
}

/// One memory-mapped BAR2 queue page.
struct QueuePage {
    _bar: Bar,
    ptr: NonNull<u8>,
}

// SAFETY: the pointer addresses a device mapping kept alive by `_bar`; every access is a
// volatile aligned u32 load or store, which a polled shared page tolerates from any thread.
unsafe impl Send for QueuePage {}

impl QueuePage {
    fn new(bar: &Bar, q: u32) -> Result<Self> {
        let off = queue_page(q);
        let ptr = bar
            .mapped_ptr(off, QUEUE_PAGE as usize)
            .and_then(NonNull::new)
            .ok_or(Error::NotMapped { offset: off, len: QUEUE_PAGE as usize })?;
        Ok(QueuePage { _bar: bar.clone(), ptr })
    }

    #[inline]
    fn write(&self, off: u64, v: u32) {
        // SAFETY: `off` is an aligned field offset inside the 4 KiB page checked in `new`.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off as usize).cast::<u32>(), v.to_le()) }
    }

    #[inline]
    fn read(&self, off: u64) -> u32 {
        // SAFETY: as in `write`.
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(off as usize).cast::<u32>()) })
    }

    /// Waits until STATE bit `bit` reads `want`.
    fn wait_state(&self, bit: u32, want: bool, timeout: Duration, dir: &'static str, q: u32) -> Result<()> {
        let start = Instant::now();
        loop {
            if (self.read(queue::STATE) & bit != 0) == want {
                fence(Ordering::Acquire);
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::NotAcknowledged { dir, queue: q, enable: want, waited: timeout });
            }
            std::thread::yield_now();
        }
    }
}

/// A descriptor ring in DMA memory.
struct DescRing {
    mem: DmaBuffer,
    size: u32,
}

impl DescRing {
    fn new(access: &mut dyn DeviceAccess, size: u32) -> Result<Self> {
        let mem = access.alloc_dma(size as usize * DESC_SIZE, DmaOptions::default())?;
        if mem.iova() & (RING_ALIGN - 1) != 0 {
            return Err(Error::Misaligned { iova: mem.iova(), align: RING_ALIGN });
        }
        mem.fill(0);
        Ok(DescRing { mem, size })
    }

    #[inline]
    fn at(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.size);
        // SAFETY: `i < size`; the ring holds `size` descriptors.
        unsafe { self.mem.as_ptr().add(i as usize * DESC_SIZE) }
    }

    /// Writes a whole descriptor: address, then length/flags/hash (DD clear).
    #[inline]
    fn write(&self, i: u32, addr: u64, len: u16, flags: u16) {
        let p = self.at(i);
        let meta = len as u64 | (flags as u64) << 16;
        // SAFETY: two aligned u64 words of descriptor `i` (rings are 128-byte aligned).
        unsafe {
            std::ptr::write_volatile(p.add(desc::ADDR).cast::<u64>(), addr.to_le());
            std::ptr::write_volatile(p.add(desc::LEN).cast::<u64>(), meta.to_le());
        }
    }

    #[inline]
    fn flags(&self, i: u32) -> u16 {
        // SAFETY: aligned u16 inside descriptor `i`.
        u16::from_le(unsafe { std::ptr::read_volatile(self.at(i).add(desc::FLAGS).cast::<u16>()) })
    }

    #[inline]
    fn len(&self, i: u32) -> u16 {
        // SAFETY: aligned u16 inside descriptor `i`.
        u16::from_le(unsafe { std::ptr::read_volatile(self.at(i).add(desc::LEN).cast::<u16>()) })
    }

    #[inline]
    fn hash(&self, i: u32) -> u32 {
        // SAFETY: aligned u32 inside descriptor `i`.
        u32::from_le(unsafe { std::ptr::read_volatile(self.at(i).add(desc::RSS_HASH).cast::<u32>()) })
    }
}

struct RxQueue {
    ring: DescRing,
    mask: u32,
    /// Next descriptor to look at for DD.
    head: u32,
    /// Next descriptor to post (the TAIL value).
    tail: u32,
    /// The buffer posted in each descriptor.
    bufs: Vec<u32>,
    scratch: Vec<u32>,
}

impl RxQueue {
    fn posted(&self) -> u32 {
        self.tail.wrapping_sub(self.head) & self.mask
    }
}

struct TxQueue {
    ring: DescRing,
    mask: u32,
    /// Next descriptor to write (the TAIL value).
    tail: u32,
    /// Oldest descriptor whose buffer is not yet reclaimed.
    clean: u32,
    bufs: Vec<u32>,
    scratch: Vec<u32>,
}

impl TxQueue {
    fn free(&self) -> u32 {
        self.mask - (self.tail.wrapping_sub(self.clean) & self.mask)
    }

    /// Returns the buffers of every sent descriptor (DD set, in ring order) to the pool in
    /// one go; returns how many.
    fn reclaim(&mut self, pool: &PoolInner) -> u64 {
        self.scratch.clear();
        while self.clean != self.tail && self.ring.flags(self.clean) & desc::DD != 0 {
            self.scratch.push(self.bufs[self.clean as usize]);
            self.clean = (self.clean + 1) & self.mask;
        }
        fence(Ordering::Acquire);
        pool.put_bulk(&self.scratch);
        self.scratch.len() as u64
    }
}

/// The NIC with its queues set up: a DPDK-style port.
pub struct Port {
    cfg: PortConfig,
    num_queues: u32,
    rx: Vec<RxQueue>,
    tx: Vec<TxQueue>,
    pages: Vec<QueuePage>,
    pool: Mempool,
    stats: PortStats,
    rx_per_queue: Vec<u64>,
    regs: Bar,
    _access: Box<dyn DeviceAccess>,
}

impl Port {
    /// Checks the device, configures RSS and write-back, allocates the mempool and the
    /// rings, enables every queue (waiting for the device's acknowledgement) and fills the
    /// RX rings with buffers.
    pub fn new(mut access: Box<dyn DeviceAccess>, cfg: PortConfig) -> Result<Port> {
        let regs = access.bar(REG_BAR)?;
        let qbar = access.bar(QUEUE_BAR)?;
        let id = regs.read32(reg::ID)?;
        if id != reg::ID_VALUE {
            return Err(Error::NotPacketized { found: id, expected: reg::ID_VALUE });
        }
        let version = regs.read32(reg::VERSION)?;
        if version != reg::VERSION_VALUE {
            return Err(Error::VersionMismatch { found: version, expected: reg::VERSION_VALUE });
        }
        let num_queues = regs.read32(reg::NUM_QUEUES)?;
        let buf_size = regs.read32(reg::BUF_SIZE)?;
        let max_ring = regs.read32(reg::MAX_RING)?;
        if buf_size as usize != BUF_SIZE {
            return Err(Error::Geometry(format!("buffer size {buf_size}, driver uses {BUF_SIZE}")));
        }
        if num_queues == 0 || num_queues > regs::MAX_QUEUES {
            return Err(Error::Geometry(format!("{num_queues} queue pairs")));
        }
        for (what, n) in [("rx_queues", cfg.rx_queues), ("tx_queues", cfg.tx_queues)] {
            if !(1..=num_queues).contains(&n) {
                return Err(Error::Config(format!("{what} = {n}, device serves 1..={num_queues}")));
            }
        }
        if !cfg.ring_size.is_power_of_two() || !(MIN_RING_SIZE..=max_ring).contains(&cfg.ring_size) {
            return Err(Error::Config(format!(
                "ring_size {} must be a power of two in {MIN_RING_SIZE}..={max_ring}",
                cfg.ring_size
            )));
        }
        if let Some(b) = cfg.wb_batch.filter(|b| !(1..=reg::WB_BATCH_MAX).contains(b)) {
            return Err(Error::Config(format!("wb_batch {b} outside 1..={}", reg::WB_BATCH_MAX)));
        }
        let need = cfg.rx_queues * (cfg.ring_size - 1) + MAX_SEGS as u32;
        if cfg.mbuf_count() < need {
            return Err(Error::Config(format!(
                "{} mbufs cannot fill {} RX rings of {} (need at least {need})",
                cfg.mbuf_count(),
                cfg.rx_queues,
                cfg.ring_size
            )));
        }

        let pairs = cfg.rx_queues.max(cfg.tx_queues);
        let pages: Vec<QueuePage> = (0..pairs).map(|q| QueuePage::new(&qbar, q)).collect::<Result<_>>()?;
        // A previous user may have left queues enabled: quiesce them before reusing.
        for (q, p) in pages.iter().enumerate() {
            if p.read(queue::STATE) & (queue::STATE_RX | queue::STATE_TX) != 0 {
                fence(Ordering::Release);
                p.write(queue::RX_RING_LOW, 0);
                p.write(queue::TX_RING_LOW, 0);
                p.wait_state(queue::STATE_RX, false, cfg.ack_timeout, "RX", q as u32)?;
                p.wait_state(queue::STATE_TX, false, cfg.ack_timeout, "TX", q as u32)?;
            }
        }

        // Setup-path registers (trapped MMIO).
        if let Some(b) = cfg.wb_batch {
            regs.write32(reg::WB_BATCH, b)?;
        }
        if let Some(key) = cfg.rss_key {
            for (i, w) in key.chunks_exact(4).enumerate() {
                regs.write32(reg::RSS_KEY + 4 * i as u64, u32::from_le_bytes([w[0], w[1], w[2], w[3]]))?;
            }
        }
        regs.write32(reg::RSS_QUEUES, if cfg.rss { cfg.rx_queues } else { 1 })?;

        let pool = Mempool::new(access.as_mut(), cfg.mbuf_count())?;
        let size = cfg.ring_size;
        let mask = size - 1;

        let mut rx = Vec::with_capacity(cfg.rx_queues as usize);
        for q in 0..cfg.rx_queues {
            let ring = DescRing::new(access.as_mut(), size)?;
            let mut bufs = vec![0u32; size as usize];
            if !pool.inner.get_bulk(&mut bufs[..mask as usize]) {
                return Err(Error::PoolExhausted { wanted: mask as usize, free: pool.free_count() });
            }
            for (i, &b) in bufs[..mask as usize].iter().enumerate() {
                ring.write(i as u32, pool.inner.iova(b), 0, 0);
            }
            let page = &pages[q as usize];
            let iova = ring.mem.iova();
            page.write(queue::RX_RING_HIGH, (iova >> 32) as u32);
            page.write(queue::RX_RING_SIZE, size);
            page.write(queue::RX_TAIL, mask);
            fence(Ordering::Release);
            page.write(queue::RX_RING_LOW, (iova as u32 & queue::ADDR_MASK) | queue::ENABLE);
            page.wait_state(queue::STATE_RX, true, cfg.ack_timeout, "RX", q)?;
            rx.push(RxQueue { ring, mask, head: 0, tail: mask, bufs, scratch: Vec::with_capacity(BURST) });
        }
        let mut tx = Vec::with_capacity(cfg.tx_queues as usize);
        for q in 0..cfg.tx_queues {
            let ring = DescRing::new(access.as_mut(), size)?;
            let page = &pages[q as usize];
            let iova = ring.mem.iova();
            page.write(queue::TX_RING_HIGH, (iova >> 32) as u32);
            page.write(queue::TX_RING_SIZE, size);
            page.write(queue::TX_TAIL, 0);
            fence(Ordering::Release);
            page.write(queue::TX_RING_LOW, (iova as u32 & queue::ADDR_MASK) | queue::ENABLE);
            page.wait_state(queue::STATE_TX, true, cfg.ack_timeout, "TX", q)?;
            tx.push(TxQueue {
                ring,
                mask,
                tail: 0,
                clean: 0,
                bufs: vec![0; size as usize],
                scratch: Vec::with_capacity(size as usize),
            });
        }
        let rx_per_queue = vec![0; rx.len()];
        Ok(Port {
            cfg,
            num_queues,
            rx,
            tx,
            pages,
            pool,
            stats: PortStats::default(),
            rx_per_queue,
            regs,
            _access: access,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    /// Queue pairs the device serves.
    pub fn device_queues(&self) -> u32 {
        self.num_queues
    }

    /// RX queues set up.
    pub fn rx_queues(&self) -> u32 {
        self.rx.len() as u32
    }

    /// TX queues set up.
    pub fn tx_queues(&self) -> u32 {
        self.tx.len() as u32
    }

    /// The port's mempool (for TX-only frames).
    pub fn mempool(&self) -> &Mempool {
        &self.pool
    }

    /// Driver-side counts.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// Frames received so far on each RX queue.
    pub fn rx_queue_packets(&self) -> &[u64] {
        &self.rx_per_queue
    }

    fn rx_index(&self, q: u32) -> Result<usize> {
        if q as usize >= self.rx.len() {
            return Err(Error::BadQueue { dir: "RX", queue: q, available: self.rx.len() as u32 });
        }
        Ok(q as usize)
    }

    fn tx_index(&self, q: u32) -> Result<usize> {
        if q as usize >= self.tx.len() {
            return Err(Error::BadQueue { dir: "TX", queue: q, available: self.tx.len() as u32 });
        }
        Ok(q as usize)
    }

    /// Receives up to [`BURST`] frames from RX queue `q`, appending them to `out`; refills
    /// the ring with fresh buffers in bulk and rings the tail doorbell once.
    pub fn rx_burst(&mut self, q: u32, out: &mut Vec<Mbuf>) -> Result<usize> {
        let qi = self.rx_index(q)?;
        let r = &mut self.rx[qi];
        let posted = r.posted();
        let mut consumed = 0u32;
        let mut got = 0usize;
        r.scratch.clear();
        while got < BURST && consumed < posted {
            // One frame: descriptors up to EOP, all written back.
            let mut segs = [0u32; MAX_SEGS];
            let (mut k, mut len, mut err, mut eop) = (0u32, 0usize, false, false);
            while consumed + k < posted {
                let i = (r.head + consumed + k) & r.mask;
                let flags = r.ring.flags(i);
                if flags & desc::DD == 0 {
                    break;
                }
                fence(Ordering::Acquire);
                len += r.ring.len(i) as usize;
                err |= flags & desc::ERR != 0;
                k += 1;
                if flags & desc::EOP != 0 {
                    eop = true;
                    break;
                }
            }
            if !eop {
                // Not fully written back yet (or a chain the device never ends, which a
                // full ring would show as k == posted): wait for the next burst.
                if k > 0 && consumed + k == posted && posted == r.mask {
                    // Every posted descriptor is done and none ends a frame: recycle them.
                    err = true;
                } else {
                    break;
                }
            }
            let first = (r.head + consumed) & r.mask;
            let hash = r.ring.hash((first + k - 1) & r.mask);
            if err || k as usize > MAX_SEGS || len > MAX_FRAME {
                for j in 0..k {
                    r.scratch.push(r.bufs[((first + j) & r.mask) as usize]);
                }
                self.stats.rx_errors += 1;
            } else {
                for (j, s) in segs.iter_mut().enumerate().take(k as usize) {
                    *s = r.bufs[((first + j as u32) & r.mask) as usize];
                }
                let mut m = Mbuf::from_segs(&self.pool.inner, &segs[..k as usize], len as u32);
                m.set_rss_hash(hash);
                out.push(m);
                got += 1;
                self.stats.rx_bytes += len as u64;
            }
            consumed += k;
        }
        if consumed == 0 && posted == r.mask {
            return Ok(0);
        }
        r.head = (r.head + consumed) & r.mask;
        // Refill: error buffers first, then the pool in bulk.
        let want = (r.mask - r.posted()) as usize;
        let mut fresh = std::mem::take(&mut r.scratch);
        let have = fresh.len().min(want);
        let extra = fresh.split_off(have);
        self.pool.inner.put_bulk(&extra);
        fresh.resize(want, 0);
        let mut n = have + self.pool.inner.get_some(&mut fresh[have..]);
        if n < want {
            // Sent buffers may be waiting in TX rings: reclaim them all and try again.
            for t in &mut self.tx {
                self.stats.tx_reclaimed += t.reclaim(&self.pool.inner);
            }
            n += self.pool.inner.get_some(&mut fresh[n..]);
            if n < want {
                self.stats.rx_refill_short += 1;
            }
        }
        let r = &mut self.rx[qi];
        for &b in &fresh[..n] {
            r.ring.write(r.tail, self.pool.inner.iova(b), 0, 0);
            r.bufs[r.tail as usize] = b;
            r.tail = (r.tail + 1) & r.mask;
        }
        fresh.clear();
        r.scratch = fresh;
        if n > 0 {
            fence(Ordering::Release);
            self.pages[qi].write(queue::RX_TAIL, r.tail);
            self.stats.rx_doorbells += 1;
        }
        if got > 0 {
            self.stats.rx_packets += got as u64;
            self.rx_per_queue[qi] += got as u64;
            self.stats.rx_bursts += 1;
        }
        Ok(got)
    }

    /// Posts frames from the front of `pkts` on TX queue `q` (as many as fit), removing
    /// them from `pkts`, and rings the tail doorbell once; returns how many were posted.
    /// Their buffers return to the pool once the device has sent them. Frames that did not
    /// fit stay in `pkts`. Nothing is posted when any frame is invalid (length outside
    /// MIN_FRAME..=MAX_FRAME, or an mbuf of another pool).
    pub fn tx_burst(&mut self, q: u32, pkts: &mut Vec<Mbuf>) -> Result<usize> {
        let qi = self.tx_index(q)?;
        for m in pkts.iter() {
            if !Arc::ptr_eq(m.pool(), &self.pool.inner) {
                return Err(Error::ForeignMbuf);
            }
            if !(MIN_FRAME..=MAX_FRAME).contains(&m.len()) {
                return Err(Error::BadLength {
                    len: m.len(),
                    why: "TX frames are MIN_FRAME..=MAX_FRAME bytes",
                });
            }
        }
        let t = &mut self.tx[qi];
        if t.free() < self.cfg.tx_free_thresh {
            self.stats.tx_reclaimed += t.reclaim(&self.pool.inner);
        }
        let mut sent = 0usize;
        let mut reclaimed = false;
        for m in pkts.iter_mut() {
            let len = m.len();
            let need = len.div_ceil(BUF_SIZE);
            debug_assert!(need <= MAX_TX_CHAIN);
            if (t.free() as usize) < need {
                if reclaimed {
                    break;
                }
                reclaimed = true;
                self.stats.tx_reclaimed += t.reclaim(&self.pool.inner);
                if (t.free() as usize) < need {
                    break;
                }
            }
            let mut segs = [0u32; MAX_SEGS];
            let all = m.take_segs();
            let nsegs = all.len();
            segs[..nsegs].copy_from_slice(all);
            for (k, &b) in segs[..need].iter().enumerate() {
                let l = (len - k * BUF_SIZE).min(BUF_SIZE) as u16;
                let flags = if k + 1 == need { desc::EOP } else { 0 };
                t.ring.write(t.tail, self.pool.inner.iova(b), l, flags);
                t.bufs[t.tail as usize] = b;
                t.tail = (t.tail + 1) & t.mask;
            }
            // Buffers past the frame's end go straight back.
            self.pool.inner.put_bulk(&segs[need..nsegs]);
            self.stats.tx_bytes += len as u64;
            sent += 1;
        }
        if sent > 0 {
            fence(Ordering::Release);
            self.pages[qi].write(queue::TX_TAIL, t.tail);
            self.stats.tx_doorbells += 1;
            self.stats.tx_bursts += 1;
            self.stats.tx_packets += sent as u64;
            pkts.drain(..sent);
        }
        if !pkts.is_empty() {
            self.stats.tx_ring_full += 1;
        }
        Ok(sent)
    }

    /// Reclaims sent buffers of TX queue `q` now; returns how many.
    pub fn tx_reclaim(&mut self, q: u32) -> Result<u64> {
        let qi = self.tx_index(q)?;
        let n = self.tx[qi].reclaim(&self.pool.inner);
        self.stats.tx_reclaimed += n;
        Ok(n)
    }

    /// Descriptors posted on TX queue `q` and not yet reclaimed.
    pub fn tx_pending(&self, q: u32) -> Result<u32> {
        let t = &self.tx[self.tx_index(q)?];
        Ok(t.mask - t.free())
    }

    /// Waits until every TX queue has sent everything posted (reclaiming the buffers).
    pub fn wait_tx_idle(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        for q in 0..self.tx_queues() {
            while self.tx_pending(q)? > 0 {
                if self.tx_reclaim(q)? == 0 {
                    if start.elapsed() > timeout {
                        return Err(Error::TxStalled { queue: q, waited: timeout });
                    }
                    std::thread::yield_now();
                }
            }
        }
        Ok(())
    }

    /// The device's counters (trapped reads: not for the datapath), by index of
    /// `testbed_regs::packetized::reg::counter`.
    pub fn counters(&self) -> Result<[u64; reg::counter::COUNT as usize]> {
        let mut out = [0u64; reg::counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            let off = reg::COUNTERS + 8 * i as u64;
            let lo = self.regs.read32(off)?;
            let hi = self.regs.read32(off + 4)?;
            *v = (hi as u64) << 32 | lo as u64;
        }
        Ok(out)
    }

    /// Disables every queue and waits (bounded) for the device to quiesce them.
    fn shutdown(&mut self) -> Result<()> {
        fence(Ordering::Release);
        for p in &self.pages {
            p.write(queue::RX_RING_LOW, 0);
            p.write(queue::TX_RING_LOW, 0);
        }
        for (q, p) in self.pages.iter().enumerate() {
            p.wait_state(queue::STATE_RX, false, self.cfg.ack_timeout, "RX", q as u32)?;
            p.wait_state(queue::STATE_TX, false, self.cfg.ack_timeout, "TX", q as u32)?;
        }
        Ok(())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Quiesce before the rings and buffers are unmapped; posted RX buffers go back
        // to the pool (which outlives the port while mbufs are out).
        if self.shutdown().is_ok() {
            for r in &mut self.rx {
                let idx: Vec<u32> =
                    (0..r.posted()).map(|k| r.bufs[((r.head + k) & r.mask) as usize]).collect();
                self.pool.inner.put_bulk(&idx);
                r.head = r.tail;
            }
            for t in &mut self.tx {
                let idx: Vec<u32> =
                    (0..t.mask - t.free()).map(|k| t.bufs[((t.clean + k) & t.mask) as usize]).collect();
                self.pool.inner.put_bulk(&idx);
                t.clean = t.tail;
            }
        }
    }
}
