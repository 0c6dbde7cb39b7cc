//! The device thread: polls the queue pages and the port. One polling round = enable scan,
//! disables and tail doorbells of the enabled queues (TX sending up to [`TX_BUDGET`] frames
//! per queue), one batch of received frames, write-back flush of every queue, one port
//! flush, one counter flush.

use crate::rss::Rss;
use crate::stats::LocalCounts;
use crate::Shared;
use pcie_model::{Dma, DmaClass};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use testbed_regs::packetized::reg::counter as c;
use testbed_regs::packetized::{
    desc, queue, queue_page, reg, BUF_SIZE, DESC_FETCH_MAX, DESC_SIZE, MAX_FRAME, MAX_RING_SIZE,
    MAX_TX_CHAIN, MIN_FRAME, MIN_RING_SIZE, RSS_KEY_LEN,
};
use wire::{EthPort, Frame};

/// Frames taken from the port per round (as the Ensō model).
pub const RX_BATCH: usize = 64;
/// TX frames sent per queue per round before the other queues and RX get their turn.
pub const TX_BUDGET: usize = 64;
/// Descriptors a ring keeps fetched ahead.
const CACHE_CAP: usize = 2 * DESC_FETCH_MAX;
/// Disabled queue pairs checked for an enable per idle round.
const SCAN_CHUNK: u32 = 64;
/// ... and right after a busy round.
const SCAN_CHUNK_BUSY: u32 = 4;
/// Spare frame buffers kept for TX (RX frames are recycled into it).
const POOL_MAX: usize = 1024;
/// Largest write-back batch, in bytes.
const WB_BYTES: usize = reg::WB_BATCH_MAX as usize * DESC_SIZE;

pub use wire::Disconnected;

/// Register offsets of one direction in a queue page.
#[derive(Clone, Copy)]
struct Dir {
    low: u64,
    high: u64,
    size: u64,
    tail: u64,
    head: u64,
    state: u32,
}

const RX: Dir = Dir {
    low: queue::RX_RING_LOW,
    high: queue::RX_RING_HIGH,
    size: queue::RX_RING_SIZE,
    tail: queue::RX_TAIL,
    head: queue::RX_HEAD,
    state: queue::STATE_RX,
};
const TX: Dir = Dir {
    low: queue::TX_RING_LOW,
    high: queue::TX_RING_HIGH,
    size: queue::TX_RING_SIZE,
    tail: queue::TX_TAIL,
    head: queue::TX_HEAD,
    state: queue::STATE_TX,
};

/// What a round's work needs besides the device state.
struct Cx<'a> {
    shared: &'a Shared,
    dma: &'a Dma,
    /// WB_BATCH for this round.
    wb_batch: u32,
}

/// A fetched descriptor.
#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    addr: u64,
    len: u16,
    flags: u16,
}

/// One descriptor ring (RX or TX) as the device tracks it.
///
/// Ring indices: `[head, head + wb_n)` are done and waiting in the write-back batch,
/// `[head + wb_n, next)` are fetched into `cache`, `[next, tail)` are posted, not fetched.
struct Ring {
    dir: Dir,
    /// Offset of the queue page in BAR2.
    page: u64,
    /// The `*_RING_LOW` value that enabled the ring; 0 while disabled.
    enabled_low: u32,
    /// A `*_RING_LOW` value refused (not re-counted until it changes).
    rejected_low: u32,
    base: u64,
    mask: u32,
    head: u32,
    next: u32,
    tail: u32,
    /// The last TAIL register value seen (valid or not).
    raw_tail: u32,
    /// TX: a descriptor fetch failed; nothing is done until software writes a new tail.
    stalled: bool,
    cache: VecDeque<Desc>,
    wb: Box<[u8; WB_BYTES]>,
    wb_n: u32,
}

impl Ring {
    fn new(dir: Dir, q: u32) -> Ring {
        Ring {
            dir,
            page: queue_page(q),
            enabled_low: 0,
            rejected_low: 0,
            base: 0,
            mask: 0,
            head: 0,
            next: 0,
            tail: 0,
            raw_tail: 0,
            stalled: false,
            cache: VecDeque::with_capacity(CACHE_CAP),
            wb: Box::new([0; WB_BYTES]),
            wb_n: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.enabled_low != 0
    }

    fn size(&self) -> u32 {
        self.mask + 1
    }

    /// Reads the TAIL register; a new value is taken when it lies in the ring and does not
    /// take back descriptors the device already fetched, else counted as BAD_TAIL.
    fn refresh_tail(&mut self, shared: &Shared, local: &mut LocalCounts) -> bool {
        let raw = shared.bar2.read32(self.page + self.dir.tail);
        if raw == self.raw_tail {
            return false;
        }
        self.raw_tail = raw;
        let taken = self.next.wrapping_sub(self.head) & self.mask;
        if raw > self.mask || (raw.wrapping_sub(self.head) & self.mask) < taken {
            local.add(c::BAD_TAIL, 1);
            return false;
        }
        self.tail = raw;
        self.stalled = false;
        true
    }

    /// Fetches posted descriptors until `want` are cached or none are left, in bursts of at
    /// most DESC_FETCH_MAX (one metadata DMA read each, never across the ring end). False
    /// when a fetch failed.
    fn fetch(&mut self, want: usize, dma: &Dma, local: &mut LocalCounts) -> bool {
        let mut raw = [0u8; DESC_FETCH_MAX * DESC_SIZE];
        while self.cache.len() < want.min(CACHE_CAP) && self.next != self.tail {
            let posted = self.tail.wrapping_sub(self.next) & self.mask;
            let to_end = self.size() - self.next;
            let n = (posted.min(to_end) as usize).min(DESC_FETCH_MAX).min(CACHE_CAP - self.cache.len());
            let buf = &mut raw[..n * DESC_SIZE];
            if dma.read(self.base + self.next as u64 * DESC_SIZE as u64, buf, DmaClass::Metadata).is_err() {
                local.add(c::DMA_ERRORS, 1);
                return false;
            }
            local.add(c::DESCRIPTOR_FETCHES, 1);
            for d in buf.chunks_exact(DESC_SIZE) {
                self.cache.push_back(Desc {
                    addr: u64::from_le_bytes(d[desc::ADDR..desc::ADDR + 8].try_into().unwrap_or_default()),
                    len: u16::from_le_bytes([d[desc::LEN], d[desc::LEN + 1]]),
                    flags: u16::from_le_bytes([d[desc::FLAGS], d[desc::FLAGS + 1]]),
                });
            }
            self.next = (self.next + n as u32) & self.mask;
        }
        true
    }

    /// Queues the write-back of the oldest fetched descriptor; flushes when the batch is
    /// full or reaches the end of the ring (the next one would not be contiguous).
    fn complete(&mut self, d: Desc, len: u16, flags: u16, hash: u32, cx: &Cx, local: &mut LocalCounts) {
        let at = self.wb_n as usize * DESC_SIZE;
        let e = &mut self.wb[at..at + DESC_SIZE];
        e[desc::ADDR..desc::ADDR + 8].copy_from_slice(&d.addr.to_le_bytes());
        e[desc::LEN..desc::LEN + 2].copy_from_slice(&len.to_le_bytes());
        e[desc::FLAGS..desc::FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
        e[desc::RSS_HASH..desc::RSS_HASH + 4].copy_from_slice(&hash.to_le_bytes());
        self.wb_n += 1;
        if self.wb_n >= cx.wb_batch || self.head + self.wb_n == self.size() {
            self.flush(cx.shared, cx.dma, local);
        }
    }

    /// Writes the pending descriptors back (one metadata DMA write) and publishes HEAD.
    fn flush(&mut self, shared: &Shared, dma: &Dma, local: &mut LocalCounts) {
        if self.wb_n == 0 {
            return;
        }
        let bytes = &self.wb[..self.wb_n as usize * DESC_SIZE];
        if dma.write(self.base + self.head as u64 * DESC_SIZE as u64, bytes, DmaClass::Metadata).is_ok() {
            local.add(c::DESCRIPTOR_WRITEBACKS, 1);
        } else {
            local.add(c::DMA_ERRORS, 1);
        }
        self.head = (self.head + self.wb_n) & self.mask;
        self.wb_n = 0;
        shared.bar2.write32(self.page + self.dir.head, self.head);
    }
}

/// Everything the device thread owns; it survives detach/attach and is rebuilt by reset.
pub struct DeviceState {
    rx: Vec<Ring>,
    tx: Vec<Ring>,
    rx_enabled: Vec<u32>,
    tx_enabled: Vec<u32>,
    scan_cursor: u32,
    busy: bool,
    rss: Rss,
    rss_gen: u32,
    batch: Vec<Frame>,
    pool: Vec<Frame>,
    local: LocalCounts,
    pub(crate) port: Box<dyn EthPort>,
}

impl DeviceState {
    /// Power-on state around `port`.
    pub fn new(shared: &Shared, port: Box<dyn EthPort>) -> Self {
        let n = shared.cfg.num_queues;
        DeviceState {
            rx: (0..n).map(|q| Ring::new(RX, q)).collect(),
            tx: (0..n).map(|q| Ring::new(TX, q)).collect(),
            rx_enabled: Vec::with_capacity(n as usize),
            tx_enabled: Vec::with_capacity(n as usize),
            scan_cursor: 0,
            busy: false,
            rss: Rss::new(&shared.rss_key()),
            rss_gen: shared.rss_gen.load(Ordering::Acquire),
            batch: Vec::with_capacity(RX_BATCH),
            pool: Vec::new(),
            local: LocalCounts::default(),
            port,
        }
    }

    /// One polling round; true when it found work.
    // Never inlined: `bench echo` counts the device's instructions in this function by name.
    #[inline(never)]
    pub fn round(&mut self, shared: &Shared, dma: &Dma) -> bool {
        let wb_batch = shared.wb_batch.load(Ordering::Relaxed).clamp(1, reg::WB_BATCH_MAX);
        let rss_queues = shared.rss_queues.load(Ordering::Relaxed);
        let gen = shared.rss_gen.load(Ordering::Acquire);
        if gen != self.rss_gen {
            self.rss_gen = gen;
            let key: [u8; RSS_KEY_LEN] = shared.rss_key();
            self.rss.set_key(&key);
        }
        let cx = Cx { shared, dma, wb_batch };
        self.scan(shared, if self.busy { SCAN_CHUNK_BUSY } else { SCAN_CHUNK });
        let mut work = false;

        // RX: disables and address changes (re-enabled by a later scan), tail doorbells.
        let mut gone = false;
        for k in 0..self.rx_enabled.len() {
            let q = self.rx_enabled[k] as usize;
            let r = &mut self.rx[q];
            if shared.bar2.read32(r.page + RX.low) != r.enabled_low {
                disable(r, shared, dma, &mut self.local);
                gone = true;
                work = true;
            } else if r.refresh_tail(shared, &mut self.local) {
                work = true;
            }
        }
        if gone {
            let rx = &self.rx;
            self.rx_enabled.retain(|&q| rx[q as usize].enabled());
        }

        // TX: disables, tail doorbells, sending.
        let mut gone = false;
        for k in 0..self.tx_enabled.len() {
            let q = self.tx_enabled[k] as usize;
            let r = &mut self.tx[q];
            if shared.bar2.read32(r.page + TX.low) != r.enabled_low {
                disable(r, shared, dma, &mut self.local);
                gone = true;
                work = true;
                continue;
            }
            r.refresh_tail(shared, &mut self.local);
            if !r.stalled && (r.next != r.tail || !r.cache.is_empty()) {
                work |= transmit(r, &cx, &mut *self.port, &mut self.pool, &mut self.local);
            }
        }
        if gone {
            let tx = &self.tx;
            self.tx_enabled.retain(|&q| tx[q as usize].enabled());
        }

        // RX: one batch from the port.
        let mut batch = std::mem::take(&mut self.batch);
        if self.port.recv(&mut batch, RX_BATCH) > 0 {
            work = true;
            for frame in batch.drain(..) {
                self.receive(&cx, rss_queues, &frame);
                if self.pool.len() < POOL_MAX {
                    self.pool.push(frame);
                }
            }
        }
        self.batch = batch;

        // Every write-back is flushed at the end of the round.
        for &q in &self.rx_enabled {
            self.rx[q as usize].flush(shared, dma, &mut self.local);
        }
        for &q in &self.tx_enabled {
            self.tx[q as usize].flush(shared, dma, &mut self.local);
        }
        self.port.flush();
        self.local.flush(&shared.counters);
        self.busy = work;
        work
    }

    fn receive(&mut self, cx: &Cx, rss_queues: u32, frame: &[u8]) {
        let (shared, dma) = (cx.shared, cx.dma);
        let len = frame.len();
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            self.local.add(c::RX_DROP_MALFORMED, 1);
            return;
        }
        let hash = self.rss.hash(frame);
        let q = testbed_regs::packetized::rss_queue(hash, rss_queues);
        let Some(r) = self.rx.get_mut(q as usize).filter(|r| r.enabled()) else {
            self.local.add(c::RX_DROP_QUEUE_DISABLED, 1);
            return;
        };
        let need = len.div_ceil(BUF_SIZE);
        if r.cache.len() < need {
            r.refresh_tail(shared, &mut self.local);
            if !r.fetch(need.max(DESC_FETCH_MAX), dma, &mut self.local) {
                self.local.add(c::RX_DROP_DMA, 1);
                return;
            }
            if r.cache.len() < need {
                self.local.add(c::RX_DROP_NO_BUFFER, 1);
                return;
            }
        }
        let ok = frame
            .chunks(BUF_SIZE)
            .zip(r.cache.iter())
            .all(|(chunk, d)| dma.write(d.addr, chunk, DmaClass::Data).is_ok());
        for (k, chunk) in frame.chunks(BUF_SIZE).enumerate() {
            let Some(d) = r.cache.pop_front() else { break };
            let eop = if k + 1 == need { desc::EOP } else { 0 };
            let (l, flags) =
                if ok { (chunk.len() as u16, desc::DD | eop) } else { (0, desc::DD | desc::ERR | eop) };
            r.complete(d, l, flags, hash, cx, &mut self.local);
        }
        if ok {
            self.local.add(c::RX_PACKETS, 1);
            self.local.add(c::RX_BYTES, len as u64);
            if need > 1 {
                self.local.add(c::RX_CHAINED, 1);
            }
        } else {
            self.local.add(c::RX_DROP_DMA, 1);
        }
    }

    /// Looks at up to `chunk` queue pairs for enable bits.
    fn scan(&mut self, shared: &Shared, chunk: u32) {
        let n = shared.cfg.num_queues;
        for _ in 0..chunk.min(n) {
            let q = self.scan_cursor;
            self.scan_cursor = (q + 1) % n;
            for (ring, list) in [
                (&mut self.rx[q as usize], &mut self.rx_enabled),
                (&mut self.tx[q as usize], &mut self.tx_enabled),
            ] {
                if ring.enabled() {
                    continue;
                }
                let low = shared.bar2.read32(ring.page + ring.dir.low);
                if low & queue::ENABLE == 0 {
                    ring.rejected_low = 0;
                } else if low != ring.rejected_low && enable(ring, shared, low, &mut self.local) {
                    list.push(q);
                }
            }
        }
    }
}

fn set_state(shared: &Shared, page: u64, bit: u32, on: bool) {
    let v = shared.bar2.read32(page + queue::STATE);
    shared.bar2.write32(page + queue::STATE, if on { v | bit } else { v & !bit });
}

/// Enables a ring from its page; false (counted) when the ring size is bad.
fn enable(r: &mut Ring, shared: &Shared, low: u32, local: &mut LocalCounts) -> bool {
    let reg = |off| shared.bar2.read32(r.page + off);
    let size = reg(r.dir.size);
    if !size.is_power_of_two() || !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&size) {
        r.rejected_low = low;
        local.add(c::BAD_REGISTER_WRITES, 1);
        shared.pcie.bad_register_write();
        return false;
    }
    r.base = (reg(r.dir.high) as u64) << 32 | (low & queue::ADDR_MASK) as u64;
    r.mask = size - 1;
    r.head = 0;
    r.next = 0;
    r.tail = 0;
    r.stalled = false;
    r.cache.clear();
    r.wb_n = 0;
    r.enabled_low = low;
    r.rejected_low = 0;
    // Software should have written the tail before enabling; take it when it is valid.
    let raw = reg(r.dir.tail);
    r.raw_tail = raw;
    if raw > r.mask {
        local.add(c::BAD_TAIL, 1);
    } else {
        r.tail = raw;
    }
    shared.bar2.write32(r.page + r.dir.head, 0);
    set_state(shared, r.page, r.dir.state, true);
    true
}

/// Quiesces a ring: pending write-backs go out, then the STATE bit clears.
fn disable(r: &mut Ring, shared: &Shared, dma: &Dma, local: &mut LocalCounts) {
    r.flush(shared, dma, local);
    r.cache.clear();
    r.enabled_low = 0;
    r.rejected_low = 0;
    set_state(shared, r.page, r.dir.state, false);
}

/// Sends up to TX_BUDGET frames from a TX ring; true when it did anything.
fn transmit(
    r: &mut Ring,
    cx: &Cx,
    port: &mut dyn EthPort,
    pool: &mut Vec<Frame>,
    local: &mut LocalCounts,
) -> bool {
    let dma = cx.dma;
    let mut work = false;
    for _ in 0..TX_BUDGET {
        if r.cache.len() < MAX_TX_CHAIN && !r.fetch(CACHE_CAP, dma, local) {
            r.stalled = true;
            return true;
        }
        let Some(eop) = r.cache.iter().take(MAX_TX_CHAIN).position(|d| d.flags & desc::EOP != 0) else {
            if r.cache.len() < MAX_TX_CHAIN {
                // The frame's last descriptor is not posted yet.
                return work;
            }
            // A chain longer than any frame: drop its descriptors.
            local.add(c::TX_BAD_DESCRIPTOR, 1);
            for _ in 0..MAX_TX_CHAIN {
                if let Some(d) = r.cache.pop_front() {
                    r.complete(d, d.len, d.flags | desc::DD, 0, cx, local);
                }
            }
            work = true;
            continue;
        };
        work = true;
        let n = eop + 1;
        let total: usize = r.cache.iter().take(n).map(|d| d.len as usize).sum();
        let lens_ok = r.cache.iter().take(n).all(|d| (1..=BUF_SIZE).contains(&(d.len as usize)));
        if !lens_ok || !(MIN_FRAME..=MAX_FRAME).contains(&total) {
            local.add(c::TX_BAD_DESCRIPTOR, 1);
        } else {
            let mut f = pool.pop().unwrap_or_default();
            f.clear();
            f.resize(total, 0);
            let mut off = 0;
            let mut ok = true;
            for d in r.cache.iter().take(n) {
                let l = d.len as usize;
                if dma.read(d.addr, &mut f[off..off + l], DmaClass::Data).is_err() {
                    ok = false;
                    break;
                }
                off += l;
            }
            if !ok {
                local.add(c::TX_DROP_DMA, 1);
                if pool.len() < POOL_MAX {
                    pool.push(f);
                }
            } else if port.send(f) {
                local.add(c::TX_PACKETS, 1);
                local.add(c::TX_BYTES, total as u64);
                if n > 1 {
                    local.add(c::TX_CHAINED, 1);
                }
            } else {
                local.add(c::TX_DROP_WIRE, 1);
            }
        }
        for _ in 0..n {
            if let Some(d) = r.cache.pop_front() {
                r.complete(d, d.len, d.flags | desc::DD, 0, cx, local);
            }
        }
    }
    work
}
