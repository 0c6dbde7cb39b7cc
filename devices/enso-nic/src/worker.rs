//! The device thread: the register decode of the queue pages, the polling of the live
//! queues (shared register mode) or the mailbox of trapped accesses (mmio mode), and the
//! queue engine behind them. One polling round = mailbox (mmio) or background scan and
//! live-queue registers (shared), TX tails, one batch of received frames, one port flush,
//! one counter flush.
//!
//! The decode follows the card (upstream's queue tables are RAMs both sides write):
//! - a queue is live while its address is non-zero (with the ENABLE extension: while
//!   bit 20 of `rx_mem_low` is set); a change of either half while live moves the queue;
//! - a write of a register the device owns (`rx_tail`, `tx_head`) sets the device's value;
//! - every `rx_head` write of a pipe is a head event (mmio: a same-value write is the
//!   card's prefetch; shared: only a changed value is seen).

use crate::engine::{EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RxOutcome};
use crate::flow::{Steer, Steering, SteeringError};
use crate::mac::{RateLimiter, Timestamps};
use crate::mailbox::Access;
use crate::stats::LocalCounts;
use crate::{RegisterMode, Shared};
use pcie_model::{Dma, DmaClass, OpKind, OpRole};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::enso::ext::counter as c;
use testbed_regs::enso::ext::extension;
use testbed_regs::enso::{
    config, ext, nb_page, notif, pipe_page, prefetch, queue, state, EXT_BAR, MAX_PIPES, MAX_RX_PACKET,
    QUEUE_BAR, QUEUE_PAGE,
};
use testbed_regs::record::FRAME_HEADER;
use wire::{EthPort, Frame};

/// Frames taken from the port per round.
pub const RX_BATCH: usize = 64;
/// A background scan for queues that became live starts this often (shared mode), so a
/// new queue is found within 10 ms.
const SCAN_PERIOD: Duration = Duration::from_millis(2);
/// Queue pages looked at per round by the background scan (it only visits pages software
/// has written: the register file is a sparse memfd, and the scan walks its data).
const SCAN_BUDGET: u32 = 2048;
/// Spare frame buffers kept for TX (RX frames are recycled into it).
const POOL_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, Default)]
struct PipePoll {
    live: bool,
    /// In `enabled_pipes` (it stays there until the list is compacted).
    listed: bool,
    /// `rx_mem_low`/`rx_mem_high` as last looked at.
    low: u32,
    high: u32,
    /// The address in use, and the pair.
    base: u64,
    nb: u32,
    /// The address was refused (pair out of range); counted once per value.
    refused: bool,
    last_head: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct NbPoll {
    live: bool,
    listed: bool,
    /// rx_mem_low, rx_mem_high, tx_mem_low, tx_mem_high as last looked at.
    regs: [u32; 4],
    rx_ring: u64,
    tx_ring: u64,
    last_seq: u32,
    last_tail: u32,
    tx_pending: bool,
}

/// The values the device last wrote into the registers it owns (so a different value
/// there is software's).
#[derive(Debug, Default)]
struct Owned {
    pipe_tail: Vec<u32>,
    nb_rx_tail: Vec<u32>,
    nb_tx_head: Vec<u32>,
}

/// Where the background scan is.
#[derive(Debug)]
struct Scan {
    /// Byte offset of the next page to look at, while a pass runs.
    at: Option<u64>,
    last_start: Instant,
}

pub use wire::Disconnected;

/// Everything the device thread owns; it survives detach/attach and is rebuilt by reset.
pub struct DeviceState {
    engine: Box<dyn QueueEngine>,
    steering: Steering,
    ts: Timestamps,
    rate: RateLimiter,
    pipes: Vec<PipePoll>,
    nbs: Vec<NbPoll>,
    owned: Owned,
    enabled_pipes: Vec<u32>,
    enabled_nbs: Vec<u32>,
    scan: Scan,
    /// The extensions in force, as this thread applies them.
    ext_mask: u32,
    mode: u32,
    /// Mailbox accesses applied so far (mmio), and the ones in hand.
    applied: u64,
    accesses: VecDeque<(u64, Access)>,
    answers: Vec<(u64, u32)>,
    rx: Vec<Frame>,
    pool: Vec<Frame>,
    local: LocalCounts,
    pub(crate) port: Box<dyn EthPort>,
    /// Stream pipes, by pipe index, as of `stream_gen`.
    stream_pipes: Vec<bool>,
    stream_gen: u32,
    tx_frame: Vec<u8>,
}

impl DeviceState {
    /// Power-on state around `engine` and `port`.
    pub fn new(shared: &Shared, engine: Box<dyn QueueEngine>, port: Box<dyn EthPort>) -> Self {
        let cfg = &shared.cfg;
        DeviceState {
            engine,
            steering: Steering::new(cfg.num_pipes),
            ts: Timestamps::default(),
            rate: RateLimiter::default(),
            pipes: vec![PipePoll::default(); cfg.num_pipes as usize],
            nbs: vec![NbPoll::default(); cfg.num_nb_pairs as usize],
            owned: Owned {
                pipe_tail: vec![0; cfg.num_pipes as usize],
                nb_rx_tail: vec![0; cfg.num_nb_pairs as usize],
                nb_tx_head: vec![0; cfg.num_nb_pairs as usize],
            },
            enabled_pipes: Vec::new(),
            enabled_nbs: Vec::new(),
            scan: Scan { at: None, last_start: Instant::now() - SCAN_PERIOD },
            ext_mask: 0,
            mode: ext::MODE_REACTIVE,
            applied: shared.mailbox.posted(),
            accesses: VecDeque::new(),
            answers: Vec::new(),
            rx: Vec::with_capacity(RX_BATCH),
            pool: Vec::new(),
            local: LocalCounts::default(),
            port,
            stream_pipes: vec![false; cfg.num_pipes as usize],
            stream_gen: u32::MAX,
            tx_frame: Vec::new(),
        }
    }
}

/// The address a pipe's registers name, if they make it live (the card: non-zero; the
/// ENABLE extension: bit 20 set, and then not an address bit).
fn pipe_base(mask: u32, low: u32, high: u32) -> Option<u64> {
    let high = (high as u64) << 32;
    if mask & extension::ENABLE_BIT != 0 {
        (low & queue::ENABLE != 0).then_some(high | (low & queue::PIPE_ADDR_MASK & !queue::ENABLE) as u64)
    } else {
        (low != 0 || high != 0).then_some(high | (low & queue::PIPE_ADDR_MASK) as u64)
    }
}

/// The (RX, TX) notification rings a pair's registers name, if they make it live (the
/// card: either address non-zero; the ENABLE extension: bit 20 of `rx_mem_low`).
fn nb_rings(mask: u32, r: [u32; 4]) -> Option<(u64, u64)> {
    let wide = |lo: u32, hi: u32| (hi as u64) << 32 | lo as u64;
    let tx = wide(r[2], r[3]);
    if mask & extension::ENABLE_BIT != 0 {
        (r[0] & queue::ENABLE != 0).then(|| (wide(r[0] & !queue::ENABLE, r[1]), tx))
    } else {
        let rx = wide(r[0], r[1]);
        (rx != 0 || tx != 0).then_some((rx, tx))
    }
}

/// A register as software reads it in mmio mode (or through the trap without a running
/// device thread): the register file, with what the card does not have reading 0.
pub(crate) fn register_file_read(shared: &Shared, bar: u8, off: u64) -> u32 {
    let cfg = &shared.cfg;
    match bar {
        QUEUE_BAR => {
            let (q, reg) = ((off / QUEUE_PAGE) as u32, off % QUEUE_PAGE);
            let ok = if q < MAX_PIPES {
                q < cfg.num_pipes && reg < queue::PIPE_REGS_END
            } else {
                q - MAX_PIPES < cfg.num_nb_pairs && reg < queue::NB_REGS_END
            };
            if ok {
                shared.bar2.read32(off)
            } else {
                0
            }
        }
        EXT_BAR => shared.bar0.read32(off),
        _ => 0,
    }
}

/// Hands a frame to the port, counting it as sent or as dropped by the wire.
fn to_wire(port: &mut dyn EthPort, local: &mut LocalCounts, f: Vec<u8>) {
    let len = f.len() as u64;
    if port.send(f) {
        local.add(c::TX_PACKETS, 1);
        local.add(c::TX_BYTES, len);
    } else {
        local.add(c::TX_DROP_WIRE, 1);
    }
}

/// The engine's window on the world during a round.
struct Io<'a> {
    shared: &'a Shared,
    dma: &'a Dma,
    port: &'a mut dyn EthPort,
    steering: &'a mut Steering,
    ts: &'a mut Timestamps,
    rate: &'a mut RateLimiter,
    pool: &'a mut Vec<Frame>,
    local: &'a mut LocalCounts,
    owned: &'a mut Owned,
    stop: &'a AtomicBool,
}

impl EngineIo for Io<'_> {
    fn dma_write(&mut self, addr: u64, data: &[u8], class: DmaClass) -> bool {
        self.dma.write(addr, data, class).is_ok()
    }

    fn dma_read(&mut self, addr: u64, buf: &mut [u8], class: DmaClass) -> bool {
        self.dma.read(addr, buf, class).is_ok()
    }

    fn publish(&mut self, reg: Published, value: u32) {
        let (off, last) = match reg {
            Published::PipeRxTail(p) => {
                (pipe_page(p) + queue::RX_TAIL, self.owned.pipe_tail.get_mut(p as usize))
            }
            Published::NbRxTail(j) => {
                (nb_page(j) + queue::RX_TAIL, self.owned.nb_rx_tail.get_mut(j as usize))
            }
            Published::NbTxHead(j) => {
                (nb_page(j) + queue::TX_HEAD, self.owned.nb_tx_head.get_mut(j as usize))
            }
        };
        let Some(last) = last else { return };
        match self.shared.cfg.registers {
            // Software may have written the register since (a reset, or a card driver
            // preserving a value): then its value stands, and the next round takes it.
            RegisterMode::Shared => {
                if self.shared.bar2.compare_exchange32(off, *last, value).is_ok() {
                    *last = value;
                }
            }
            // Only this thread writes the register file; software's writes are applied in
            // order from the mailbox.
            RegisterMode::Mmio => {
                self.shared.bar2.write32(off, value);
                *last = value;
            }
        }
    }

    fn nb_rx_head(&mut self, nb: u32) -> u32 {
        self.shared.bar2.read32(nb_page(nb) + queue::RX_HEAD)
    }

    fn transmit(&mut self, frame: &[u8]) {
        let mut f = self.pool.pop().unwrap_or_default();
        f.clear();
        f.extend_from_slice(frame);
        if self.ts.enabled {
            self.ts.stamp_tx(&mut f, self.shared.clock.ticks() as u32);
        }
        if self.rate.enabled() {
            let flits = f.len().div_ceil(64) as u64;
            // Hold the frame until the bucket has the tokens (as the MAC would), unless
            // the device is being stopped.
            while !self.rate.try_take(flits, self.shared.clock.ticks()) && !self.stop.load(Ordering::Relaxed)
            {
                std::hint::spin_loop();
            }
        }
        to_wire(self.port, self.local, f);
    }

    fn configure(&mut self, n: &[u8; 64]) -> bool {
        let id = u64::from_le_bytes(n[notif::CONFIG_ID..notif::CONFIG_ID + 8].try_into().unwrap_or_default());
        let result = match id {
            config::FLOW_TABLE => self.steering.configure_flow(n),
            config::FALLBACK_QUEUES => self.steering.configure_fallback(n),
            config::TIMESTAMP => {
                self.ts.configure(n);
                Ok(())
            }
            config::RATE_LIMIT => {
                if self.rate.configure(n, self.shared.clock.ticks()) {
                    Ok(())
                } else {
                    Err(SteeringError::BadField)
                }
            }
            _ => Err(SteeringError::BadField),
        };
        match result {
            Ok(()) => true,
            Err(SteeringError::TableFull) => {
                self.local.add(c::FLOW_TABLE_FULL, 1);
                false
            }
            Err(SteeringError::BadField) => {
                self.local.add(c::BAD_CONFIG, 1);
                false
            }
        }
    }

    fn count(&mut self, counter: u32, n: u64) {
        self.local.add(counter, n);
    }
}

impl DeviceState {
    fn bad_register_write(&mut self, shared: &Shared) {
        self.local.add(c::BAD_REGISTER_WRITES, 1);
        shared.pcie.bad_register_write();
    }

    /// Sets or clears a queue's bit in the queue-state page (when that extension is on).
    fn set_state_bit(&self, shared: &Shared, (off, bit): (u64, u32), on: bool) {
        if self.ext_mask & extension::QUEUE_STATE != 0 {
            let v = shared.bar0.read32(off);
            shared.bar0.write32(off, if on { v | bit } else { v & !bit });
        }
    }

    /// Head and tail registers of a queue page for a (re)start, in range (else counted as
    /// BAD_HEAD and started empty, the tail register rewritten).
    fn start_pointers(&mut self, shared: &Shared, page: u64, size: u32) -> (u32, u32) {
        let (head, tail) =
            (shared.bar2.read32(page + queue::RX_HEAD), shared.bar2.read32(page + queue::RX_TAIL));
        if head >= size || tail >= size {
            // Software should have written 0 to both before the queue went live.
            self.local.add(c::BAD_HEAD, 1);
            shared.bar2.write32(page + queue::RX_TAIL, 0);
            return (0, 0);
        }
        (head, tail)
    }

    /// Looks at pipe `p`'s address registers and follows them: makes it live, moves it,
    /// or stops it. With `adopt`, software wrote the pipe's `rx_tail`: restart it from
    /// the registers.
    fn refresh_pipe(&mut self, shared: &Shared, p: u32, adopt: bool) {
        let page = pipe_page(p);
        let (low, high) =
            (shared.bar2.read32(page + queue::RX_MEM_LOW), shared.bar2.read32(page + queue::RX_MEM_HIGH));
        let pp = self.pipes[p as usize];
        let same_regs = (low, high) == (pp.low, pp.high);
        self.pipes[p as usize].low = low;
        self.pipes[p as usize].high = high;
        let Some(base) = pipe_base(self.ext_mask, low, high) else {
            self.pipes[p as usize].refused = false;
            if pp.live {
                self.stop_pipe(shared, p);
            }
            return;
        };
        let nb = low & queue::NB_ID_MASK;
        if nb >= shared.cfg.num_nb_pairs {
            if pp.live {
                self.stop_pipe(shared, p);
            }
            if !(pp.refused && same_regs) {
                self.bad_register_write(shared);
            }
            self.pipes[p as usize].refused = true;
            return;
        }
        self.pipes[p as usize].refused = false;
        if pp.live && !adopt && base == pp.base && nb == pp.nb {
            return;
        }
        let (head, tail) = self.start_pointers(shared, page, shared.cfg.pipe_flits);
        self.engine.enable_pipe(p, PipeSetup { base, nb, head, tail });
        self.owned.pipe_tail[p as usize] = shared.bar2.read32(page + queue::RX_TAIL);
        let e = &mut self.pipes[p as usize];
        (e.live, e.base, e.nb, e.last_head) = (true, base, nb, head);
        if !e.listed {
            e.listed = true;
            self.enabled_pipes.push(p);
        }
        self.set_state_bit(shared, state::pipe_bit(p), true);
    }

    fn stop_pipe(&mut self, shared: &Shared, p: u32) {
        self.engine.disable_pipe(p);
        self.pipes[p as usize].live = false;
        self.set_state_bit(shared, state::pipe_bit(p), false);
    }

    /// As [`refresh_pipe`](Self::refresh_pipe) for notification-buffer pair `j`.
    fn refresh_nb(&mut self, shared: &Shared, j: u32, adopt: bool) {
        let page = nb_page(j);
        let r = |off| shared.bar2.read32(page + off);
        let regs = [r(queue::RX_MEM_LOW), r(queue::RX_MEM_HIGH), r(queue::TX_MEM_LOW), r(queue::TX_MEM_HIGH)];
        let nbp = self.nbs[j as usize];
        self.nbs[j as usize].regs = regs;
        let Some((rx_ring, tx_ring)) = nb_rings(self.ext_mask, regs) else {
            if nbp.live {
                self.engine.disable_nb(j);
                self.nbs[j as usize].live = false;
                self.set_state_bit(shared, state::nb_bit(j), false);
            }
            return;
        };
        if nbp.live && !adopt && (rx_ring, tx_ring) == (nbp.rx_ring, nbp.tx_ring) {
            return;
        }
        let entries = shared.cfg.notif_entries;
        let setup = NbSetup {
            rx_ring,
            tx_ring,
            rx_head: r(queue::RX_HEAD),
            rx_tail: r(queue::RX_TAIL) % entries,
            tx_head: r(queue::TX_HEAD) % entries,
        };
        self.engine.enable_nb(j, setup);
        self.owned.nb_rx_tail[j as usize] = r(queue::RX_TAIL);
        self.owned.nb_tx_head[j as usize] = r(queue::TX_HEAD);
        let tail = r(queue::TX_TAIL);
        let seq = (shared.bar0.read64(prefetch::slot(j)) >> 32) as u32;
        let e = &mut self.nbs[j as usize];
        e.live = true;
        (e.rx_ring, e.tx_ring, e.last_seq, e.last_tail) = (rx_ring, tx_ring, seq, tail);
        e.tx_pending = tail != setup.tx_head;
        if !e.listed {
            e.listed = true;
            self.enabled_nbs.push(j);
        }
        self.set_state_bit(shared, state::nb_bit(j), true);
    }

    /// Drops the queues that stopped from the lists of live queues.
    fn compact(&mut self) {
        let pipes = &mut self.pipes;
        self.enabled_pipes.retain(|&p| {
            let keep = pipes[p as usize].live;
            pipes[p as usize].listed = keep;
            keep
        });
        let nbs = &mut self.nbs;
        self.enabled_nbs.retain(|&j| {
            let keep = nbs[j as usize].live;
            nbs[j as usize].listed = keep;
            keep
        });
    }

    /// Looks at queue page `q` (not live) for an address that makes it live.
    fn scan_page(&mut self, shared: &Shared, q: u32) {
        if q < shared.cfg.num_pipes {
            let pp = self.pipes[q as usize];
            if pp.live {
                return;
            }
            let page = pipe_page(q);
            let (low, high) =
                (shared.bar2.read32(page + queue::RX_MEM_LOW), shared.bar2.read32(page + queue::RX_MEM_HIGH));
            if pipe_base(self.ext_mask, low, high).is_some() || pp.refused {
                self.refresh_pipe(shared, q, false);
            }
        } else if q >= MAX_PIPES && q - MAX_PIPES < shared.cfg.num_nb_pairs {
            let j = q - MAX_PIPES;
            if self.nbs[j as usize].live {
                return;
            }
            let page = nb_page(j);
            let r = |off| shared.bar2.read32(page + off);
            let regs =
                [r(queue::RX_MEM_LOW), r(queue::RX_MEM_HIGH), r(queue::TX_MEM_LOW), r(queue::TX_MEM_HIGH)];
            if nb_rings(self.ext_mask, regs).is_some() {
                self.refresh_nb(shared, j, false);
            }
        }
    }

    /// The background scan (shared mode): every [`SCAN_PERIOD`], a pass over the queue
    /// pages software has written (the data of the sparse register file), at most
    /// `budget` pages per round; `budget` None finishes a pass at once. True while a pass
    /// is unfinished.
    fn scan(&mut self, shared: &Shared, budget: Option<u32>) -> bool {
        let now = Instant::now();
        if self.scan.at.is_none() {
            if budget.is_some() && now - self.scan.last_start < SCAN_PERIOD {
                return false;
            }
            self.scan.at = Some(0);
            self.scan.last_start = now;
        }
        let fd = shared.bar2.fd();
        let len = shared.bar2.len() as u64;
        let mut left = budget.unwrap_or(u32::MAX);
        let mut at = self.scan.at.unwrap_or(0);
        while left > 0 && at < len {
            // SAFETY: lseek on our own memfd; it only reports where data lies.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                at = len; // ENXIO: no data after `at`
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let end = if hole < 0 { len } else { (hole as u64).min(len) };
            let mut page = (data as u64) / QUEUE_PAGE * QUEUE_PAGE;
            while page < end && left > 0 {
                self.scan_page(shared, (page / QUEUE_PAGE) as u32);
                page += QUEUE_PAGE;
                left -= 1;
            }
            at = page;
        }
        if at >= len {
            self.scan.at = None;
            false
        } else {
            self.scan.at = Some(at);
            true
        }
    }

    /// The extensions changed: every queue is looked at again (what makes a queue live
    /// changed) and the queue-state page is rewritten.
    fn extensions_changed(&mut self, shared: &Shared, mask: u32) {
        self.ext_mask = mask;
        for off in (state::PIPES..testbed_regs::enso::EXT_SHARED_END).step_by(4) {
            shared.bar0.write32(off, 0);
        }
        for k in 0..self.enabled_pipes.len() {
            let p = self.enabled_pipes[k];
            if self.pipes[p as usize].live {
                self.refresh_pipe(shared, p, false);
                if self.pipes[p as usize].live {
                    self.set_state_bit(shared, state::pipe_bit(p), true);
                }
            }
        }
        for k in 0..self.enabled_nbs.len() {
            let j = self.enabled_nbs[k];
            if self.nbs[j as usize].live {
                self.refresh_nb(shared, j, false);
                if self.nbs[j as usize].live {
                    self.set_state_bit(shared, state::nb_bit(j), true);
                }
            }
        }
        self.compact();
        // Queues the new rule makes live.
        self.scan.at = None;
        self.scan(shared, None);
    }

    /// A head event of live pipe `p` (software wrote `head` into its `rx_head`).
    fn head_write(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, p: u32, head: u32) {
        let pp = &mut self.pipes[p as usize];
        if head == pp.last_head {
            // The card's prefetch: a rewrite of the unchanged head.
            self.local.add(c::PREFETCHES, 1);
        }
        pp.last_head = head;
        shared.pcie.trace_op(OpKind::MmioWr, OpRole::Credit, 4);
        let (engine, mut io) = self.split(shared, dma, stop);
        engine.rx_head(p, head, &mut io);
    }

    /// A prefetch doorbell of pair `j` (the extension): the pipe in its slot.
    fn prefetch_doorbell(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, j: u32) {
        shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 8);
        self.local.add(c::PREFETCHES, 1);
        let pipe = shared.bar0.read32(prefetch::slot(j) + prefetch::PIPE_ID);
        if self.pipes.get(pipe as usize).is_some_and(|pp| pp.live) {
            let (engine, mut io) = self.split(shared, dma, stop);
            engine.prefetch(pipe, &mut io);
        } else {
            self.bad_register_write(shared);
        }
    }

    /// Whether the engine decodes the queue pages itself (the RTL's register front end).
    fn has_front_end(&mut self) -> bool {
        self.engine.front_end().is_some()
    }

    /// Whether `reg` of queue `q` is one of the card's registers of a queue this instance
    /// serves.
    fn card_register(shared: &Shared, q: u32, reg: u64) -> bool {
        if q < MAX_PIPES {
            q < shared.cfg.num_pipes && reg < queue::PIPE_REGS_END && reg.is_multiple_of(4)
        } else {
            q - MAX_PIPES < shared.cfg.num_nb_pairs && reg < queue::NB_REGS_END && reg.is_multiple_of(4)
        }
    }

    /// Register mode mmio with the engine's own front end: the write goes to it, as it
    /// came; this thread only counts (and keeps the queue-state page).
    fn front_end_write(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, q: u32, reg: u64, v: u32) {
        if !Self::card_register(shared, q, reg) {
            // Not a register of the card (padding, a pipe page's TX half, a queue not
            // served): the card ignores it; refused here, never passed on.
            return self.bad_register_write(shared);
        }
        let fe_live = |st: &mut Self, q: u32| st.engine.front_end().is_some_and(|fe| fe.live(q));
        let live = fe_live(self, q);
        let pipe = q < MAX_PIPES;
        match reg {
            queue::RX_HEAD => {
                self.local.add(c::QUEUE_DOORBELLS, 1);
                if pipe {
                    shared.pcie.trace_op(OpKind::MmioWr, OpRole::Credit, 4);
                    let pp = &mut self.pipes[q as usize];
                    if live && v == pp.last_head {
                        self.local.add(c::PREFETCHES, 1);
                    }
                    pp.last_head = v;
                }
            }
            queue::TX_TAIL => {
                self.local.add(c::QUEUE_DOORBELLS, 1);
                shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 4);
            }
            queue::RX_TAIL | queue::TX_HEAD if live => self.local.add(c::DEVICE_REGISTER_WRITES, 1),
            _ => {}
        }
        self.local.add(c::RTL_REGISTER_ACCESSES, 1);
        let taken = {
            let (engine, mut io) = self.split(shared, dma, stop);
            engine.front_end().is_some_and(|fe| fe.write(q, reg, v, &mut io))
        };
        if !taken {
            // No slot left for another queue in the RTL.
            self.bad_register_write(shared);
        }
        if matches!(reg, queue::RX_MEM_LOW | queue::RX_MEM_HIGH | queue::TX_MEM_LOW | queue::TX_MEM_HIGH) {
            let now = fe_live(self, q);
            let bit = if pipe { state::pipe_bit(q) } else { state::nb_bit(q - MAX_PIPES) };
            self.set_state_bit(shared, bit, now);
        }
    }

    /// Register mode mmio: one trapped write, applied as the card applies it.
    fn apply_write(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, bar: u8, off: u64, v: u32) {
        if bar == EXT_BAR {
            return self.apply_ext_write(shared, dma, stop, off, v);
        }
        let (q, reg) = ((off / QUEUE_PAGE) as u32, off % QUEUE_PAGE);
        if self.has_front_end() {
            return self.front_end_write(shared, dma, stop, q, reg, v);
        }
        if q < shared.cfg.num_pipes && reg < queue::PIPE_REGS_END {
            shared.bar2.write32(off, v);
            let live = self.pipes[q as usize].live;
            match reg {
                queue::RX_MEM_LOW | queue::RX_MEM_HIGH => self.refresh_pipe(shared, q, false),
                queue::RX_TAIL if live => {
                    self.local.add(c::DEVICE_REGISTER_WRITES, 1);
                    self.refresh_pipe(shared, q, true);
                }
                queue::RX_HEAD => {
                    self.local.add(c::QUEUE_DOORBELLS, 1);
                    if live {
                        self.head_write(shared, dma, stop, q, v);
                    }
                }
                _ => {}
            }
        } else if q >= MAX_PIPES && q - MAX_PIPES < shared.cfg.num_nb_pairs && reg < queue::NB_REGS_END {
            let j = q - MAX_PIPES;
            shared.bar2.write32(off, v);
            let live = self.nbs[j as usize].live;
            match reg {
                queue::RX_MEM_LOW | queue::RX_MEM_HIGH | queue::TX_MEM_LOW | queue::TX_MEM_HIGH => {
                    self.refresh_nb(shared, j, false)
                }
                queue::RX_TAIL | queue::TX_HEAD if live => {
                    self.local.add(c::DEVICE_REGISTER_WRITES, 1);
                    self.refresh_nb(shared, j, true);
                }
                queue::RX_HEAD => self.local.add(c::QUEUE_DOORBELLS, 1),
                queue::TX_TAIL => {
                    self.local.add(c::QUEUE_DOORBELLS, 1);
                    shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 4);
                    if live {
                        let n = &mut self.nbs[j as usize];
                        n.last_tail = v;
                        n.tx_pending = true;
                    }
                }
                _ => {}
            }
        } else {
            // Outside the card's registers (a pipe page's TX half, padding, a queue this
            // instance does not serve).
            self.bad_register_write(shared);
        }
    }

    /// Register mode mmio: a write of the extension-enable mask or of an extension page.
    fn apply_ext_write(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, off: u64, v: u32) {
        if off == ext::EXT_ENABLE {
            shared.ext_mask.store(v, Ordering::Release);
            if self.has_front_end() {
                self.ext_mask = v;
                self.local.add(c::RTL_REGISTER_ACCESSES, 1);
                let live = {
                    let (engine, mut io) = self.split(shared, dma, stop);
                    let fe = engine.front_end().expect("checked above");
                    fe.set_extensions(v & extension::ENABLE_BIT != 0, &mut io);
                    fe.live_queues()
                };
                for off in (state::PIPES..testbed_regs::enso::EXT_SHARED_END).step_by(4) {
                    shared.bar0.write32(off, 0);
                }
                for q in live {
                    let bit = if q < MAX_PIPES { state::pipe_bit(q) } else { state::nb_bit(q - MAX_PIPES) };
                    self.set_state_bit(shared, bit, true);
                }
                return;
            }
            return self.extensions_changed(shared, v);
        }
        if !(prefetch::PAGE..state::PIPES).contains(&off) {
            // The queue-state page is the device's.
            return self.bad_register_write(shared);
        }
        shared.bar0.write32(off, v);
        self.local.add(c::QUEUE_DOORBELLS, 1);
        let j = ((off - prefetch::PAGE) / 8) as u32;
        let on = self.ext_mask & extension::PREFETCH_DOORBELL != 0;
        if on && (off - prefetch::PAGE) % 8 == prefetch::SEQ && self.has_front_end() {
            shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 8);
            self.local.add(c::PREFETCHES, 1);
            self.local.add(c::RTL_REGISTER_ACCESSES, 1);
            let pipe = shared.bar0.read32(prefetch::slot(j) + prefetch::PIPE_ID);
            let ok = {
                let (engine, mut io) = self.split(shared, dma, stop);
                engine.front_end().is_some_and(|fe| fe.prefetch_doorbell(pipe, &mut io))
            };
            if !ok {
                self.bad_register_write(shared);
            }
            return;
        }
        if on
            && (off - prefetch::PAGE) % 8 == prefetch::SEQ
            && self.nbs.get(j as usize).is_some_and(|n| n.live)
        {
            self.nbs[j as usize].last_seq = v;
            self.prefetch_doorbell(shared, dma, stop, j);
        }
    }

    /// Register mode mmio: applies every access the mailbox holds, in order, and answers
    /// the reads. True when there was any.
    fn mailbox_round(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool) -> bool {
        if !shared.mailbox.has_work(self.applied) {
            return false;
        }
        let mut accesses = std::mem::take(&mut self.accesses);
        shared.mailbox.take(&mut accesses);
        let mut last = self.applied;
        for (seq, a) in accesses.drain(..) {
            match a {
                Access::Write { bar, offset, value } => {
                    self.apply_write(shared, dma, stop, bar, offset, value)
                }
                Access::Read { bar, offset } => {
                    let (q, reg) = ((offset / QUEUE_PAGE) as u32, offset % QUEUE_PAGE);
                    let v = if bar == QUEUE_BAR && self.has_front_end() {
                        if Self::card_register(shared, q, reg) {
                            self.local.add(c::RTL_REGISTER_ACCESSES, 1);
                            self.engine.front_end().map_or(0, |fe| fe.read(q, reg))
                        } else {
                            0
                        }
                    } else {
                        register_file_read(shared, bar, offset)
                    };
                    self.answers.push((seq, v));
                }
            }
            last = seq + 1;
        }
        self.accesses = accesses;
        self.compact();
        // Counters first, so a read that follows sees what the writes did.
        self.local.flush(&shared.counters);
        self.applied = last;
        shared.mailbox.applied(last, &mut self.answers);
        true
    }

    /// Shared mode: the live queues' registers (address halves, the registers the device
    /// owns, heads, prefetch doorbells, TX tails). True when anything changed.
    fn poll_live(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool) -> bool {
        let mut work = false;
        for k in 0..self.enabled_pipes.len() {
            let p = self.enabled_pipes[k];
            if !self.pipes[p as usize].live {
                continue;
            }
            let page = pipe_page(p);
            let pp = self.pipes[p as usize];
            if shared.bar2.read32(page + queue::RX_MEM_LOW) != pp.low
                || shared.bar2.read32(page + queue::RX_MEM_HIGH) != pp.high
            {
                self.refresh_pipe(shared, p, false);
                work = true;
                if !self.pipes[p as usize].live {
                    continue;
                }
            }
            if shared.bar2.read32(page + queue::RX_TAIL) != self.owned.pipe_tail[p as usize] {
                self.local.add(c::DEVICE_REGISTER_WRITES, 1);
                self.refresh_pipe(shared, p, true);
                work = true;
            }
            let head = shared.bar2.read32(page + queue::RX_HEAD);
            if head != self.pipes[p as usize].last_head {
                self.head_write(shared, dma, stop, p, head);
                work = true;
            }
        }
        let prefetch_on = self.ext_mask & extension::PREFETCH_DOORBELL != 0;
        for k in 0..self.enabled_nbs.len() {
            let j = self.enabled_nbs[k];
            if !self.nbs[j as usize].live {
                continue;
            }
            let page = nb_page(j);
            let r = |off| shared.bar2.read32(page + off);
            let regs =
                [r(queue::RX_MEM_LOW), r(queue::RX_MEM_HIGH), r(queue::TX_MEM_LOW), r(queue::TX_MEM_HIGH)];
            if regs != self.nbs[j as usize].regs {
                self.refresh_nb(shared, j, false);
                work = true;
                if !self.nbs[j as usize].live {
                    continue;
                }
            }
            if r(queue::RX_TAIL) != self.owned.nb_rx_tail[j as usize]
                || r(queue::TX_HEAD) != self.owned.nb_tx_head[j as usize]
            {
                self.local.add(c::DEVICE_REGISTER_WRITES, 1);
                self.refresh_nb(shared, j, true);
                work = true;
            }
            if prefetch_on {
                let seq = (shared.bar0.read64(prefetch::slot(j)) >> 32) as u32;
                if seq != self.nbs[j as usize].last_seq {
                    self.nbs[j as usize].last_seq = seq;
                    self.prefetch_doorbell(shared, dma, stop, j);
                    work = true;
                }
            }
            let tail = r(queue::TX_TAIL);
            let nbp = &mut self.nbs[j as usize];
            if tail != nbp.last_tail {
                nbp.last_tail = tail;
                shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 4);
                nbp.tx_pending = true;
            }
        }
        work
    }

    /// The TX tails the device has not caught up with (pairs whose TX ring is set).
    fn tx_round(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool) -> bool {
        let mut work = false;
        for k in 0..self.enabled_nbs.len() {
            let j = self.enabled_nbs[k];
            let nbp = self.nbs[j as usize];
            if !nbp.live || !nbp.tx_pending || nbp.tx_ring == 0 {
                continue;
            }
            let (engine, mut io) = self.split(shared, dma, stop);
            let done = engine.tx_tail(j, nbp.last_tail, &mut io);
            self.nbs[j as usize].tx_pending = !done;
            work = true;
        }
        work
    }

    /// One polling round; true when it found work.
    // Never inlined: `bench echo` counts the device's instructions in this function by name.
    #[inline(never)]
    pub fn round(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool) -> bool {
        let mode = shared.notif_mode.load(Ordering::Relaxed);
        if mode != self.mode {
            self.mode = mode;
            self.engine.set_per_packet(mode == ext::MODE_PER_PACKET);
        }
        let mut work = false;
        match shared.cfg.registers {
            RegisterMode::Shared => {
                let mask = shared.ext_mask.load(Ordering::Acquire);
                if mask != self.ext_mask {
                    self.extensions_changed(shared, mask);
                    work = true;
                }
                // An unfinished scan pass keeps the thread from backing off to sleep.
                work |= self.scan(shared, Some(SCAN_BUDGET));
                work |= self.poll_live(shared, dma, stop);
                self.compact();
            }
            RegisterMode::Mmio => work |= self.mailbox_round(shared, dma, stop),
        }
        work |= self.tx_round(shared, dma, stop);
        work |= self.stream_round(shared);

        let mut rx = std::mem::take(&mut self.rx);
        if self.port.recv(&mut rx, RX_BATCH) > 0 {
            work = true;
            for frame in rx.drain(..) {
                self.receive(shared, dma, stop, frame);
            }
        }
        self.rx = rx;
        self.port.flush();
        self.local.flush(&shared.counters);
        work
    }

    fn receive(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool, mut frame: Frame) {
        let len = frame.len();
        if !(14..=MAX_RX_PACKET).contains(&len) {
            self.local.add(c::RX_DROP_MALFORMED, 1);
        } else {
            match self.steering.steer(&frame) {
                Steer::NoFlow => self.local.add(c::RX_DROP_NO_FLOW, 1),
                Steer::Pipe(p) => {
                    if shared.cfg.registers == RegisterMode::Shared
                        && self.pipes.get(p as usize).is_some_and(|pp| !pp.live)
                    {
                        // The card reads a queue's address for every packet: look at this
                        // pipe's registers now rather than wait for the background scan.
                        self.scan_page(shared, p);
                        self.compact();
                    }
                    if self.ts.enabled {
                        self.ts.stamp_rx(&mut frame, shared.clock.ticks() as u32);
                    }
                    // A stream pipe takes the record, not the frame.
                    let stream = self.stream_pipes.get(p as usize).copied().unwrap_or(false);
                    let skip = if stream { FRAME_HEADER } else { 0 };
                    if len <= skip {
                        self.local.add(c::RX_DROP_MALFORMED, 1);
                    } else {
                        let (engine, mut io) = self.split(shared, dma, stop);
                        if engine.rx_packet(p, &frame[skip..], &mut io) == RxOutcome::Delivered {
                            self.local.add(c::RX_PACKETS, 1);
                            self.local.add(c::RX_BYTES, len as u64);
                        }
                    }
                }
            }
        }
        if self.pool.len() < POOL_MAX {
            self.pool.push(frame);
        }
    }

    /// Picks up stream-pipe changes and sends the records complete in the TX stream
    /// window; true when it did anything.
    fn stream_round(&mut self, shared: &Shared) -> bool {
        let gen = shared.stream.rx_gen.load(Ordering::Acquire);
        if gen != self.stream_gen {
            self.stream_gen = gen;
            let on = shared.stream.rx_pipes();
            for p in 0..self.stream_pipes.len() as u32 {
                let s = on.contains(&p);
                if self.stream_pipes[p as usize] != s {
                    self.stream_pipes[p as usize] = s;
                    self.engine.set_stream(p, s);
                }
            }
        }
        if !shared.stream.tx_pending.swap(false, Ordering::AcqRel) {
            return false;
        }
        let mut tx = shared.stream.tx();
        let mut work = false;
        if tx.drops > 0 {
            self.local.add(c::TX_DROP_STREAM, std::mem::take(&mut tx.drops));
        }
        loop {
            match tx.next_record() {
                Ok(Some(rec)) => {
                    let mut f = self.pool.pop().unwrap_or_default();
                    tx.frame(&rec, &mut self.tx_frame);
                    f.clear();
                    f.extend_from_slice(&self.tx_frame);
                    to_wire(&mut *self.port, &mut self.local, f);
                    work = true;
                }
                Ok(None) => break,
                Err(crate::stream::NotARecord) => {
                    self.local.add(c::TX_DROP_STREAM, 1);
                    work = true;
                    break;
                }
            }
        }
        work
    }

    fn split<'a>(
        &'a mut self,
        shared: &'a Shared,
        dma: &'a Dma,
        stop: &'a AtomicBool,
    ) -> (&'a mut dyn QueueEngine, Io<'a>) {
        (
            &mut *self.engine,
            Io {
                shared,
                dma,
                port: &mut *self.port,
                steering: &mut self.steering,
                ts: &mut self.ts,
                rate: &mut self.rate,
                pool: &mut self.pool,
                local: &mut self.local,
                owned: &mut self.owned,
                stop,
            },
        )
    }
}
