//! The device thread: polls the enabled queues' shared register pages and the port, and
//! drives the queue engine. One polling round = enable/disable scan, head writes,
//! prefetch doorbells and TX tails of the enabled queues, one batch of received frames,
//! one port flush, one counter flush.

use crate::engine::{EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RxOutcome};
use crate::flow::{Steer, Steering, SteeringError};
use crate::mac::{RateLimiter, Timestamps};
use crate::stats::LocalCounts;
use crate::Shared;
use pcie_model::{Dma, DmaClass, OpKind, OpRole};
use std::sync::atomic::{AtomicBool, Ordering};
use testbed_regs::enso::ext::counter as c;
use testbed_regs::enso::{config, ext, nb_page, notif, pipe_page, prefetch, queue, state, MAX_RX_PACKET};
use testbed_regs::record::FRAME_HEADER;
use wire::{EthPort, Frame};

/// Frames taken from the port per round.
pub const RX_BATCH: usize = 64;
/// Disabled queues checked for an enable per idle round (all of them when there are fewer).
const SCAN_CHUNK: u32 = 256;
/// Disabled queues checked per round right after a busy one: each check touches another
/// queue page, so while traffic flows the scan walks the queues a few at a time.
const SCAN_CHUNK_BUSY: u32 = 8;
/// Spare frame buffers kept for TX (RX frames are recycled into it).
const POOL_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, Default)]
struct PipePoll {
    /// The `rx_mem_low` value that enabled the pipe; 0 while disabled.
    enabled_low: u32,
    /// An `rx_mem_low` value we refused (not re-counted until it changes).
    rejected_low: u32,
    last_head: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct NbPoll {
    enabled_low: u32,
    last_seq: u32,
    last_tail: u32,
    tx_pending: bool,
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
    enabled_pipes: Vec<u32>,
    enabled_nbs: Vec<u32>,
    scan_cursor: u32,
    /// The last round found work.
    busy: bool,
    mode: u32,
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
            enabled_pipes: Vec::new(),
            enabled_nbs: Vec::new(),
            scan_cursor: 0,
            busy: false,
            mode: ext::MODE_REACTIVE,
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
        let off = match reg {
            Published::PipeRxTail(p) => pipe_page(p) + queue::RX_TAIL,
            Published::NbRxTail(j) => nb_page(j) + queue::RX_TAIL,
            Published::NbTxHead(j) => nb_page(j) + queue::TX_HEAD,
        };
        self.shared.bar2.write32(off, value);
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
        let len = f.len() as u64;
        if self.port.send(f) {
            self.local.add(c::TX_PACKETS, 1);
            self.local.add(c::TX_BYTES, len);
        } else {
            self.local.add(c::TX_DROP_WIRE, 1);
        }
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

fn set_state_bit(shared: &Shared, (off, bit): (u64, u32), on: bool) {
    let v = shared.bar0.read32(off);
    shared.bar0.write32(off, if on { v | bit } else { v & !bit });
}

impl DeviceState {
    fn bad_register_write(&mut self, shared: &Shared) {
        self.local.add(c::BAD_REGISTER_WRITES, 1);
        shared.pcie.bad_register_write();
    }

    fn try_enable_pipe(&mut self, shared: &Shared, p: u32, low: u32) {
        let page = pipe_page(p);
        let nb = low & queue::NB_ID_MASK;
        if nb >= shared.cfg.num_nb_pairs {
            self.pipes[p as usize].rejected_low = low;
            self.bad_register_write(shared);
            return;
        }
        let high = shared.bar2.read32(page + queue::RX_MEM_HIGH) as u64;
        let raw_head = shared.bar2.read32(page + queue::RX_HEAD);
        let (mut head, mut tail) = (raw_head, shared.bar2.read32(page + queue::RX_TAIL));
        if head >= shared.cfg.pipe_flits || tail >= shared.cfg.pipe_flits {
            // Software should have written 0 to both before enabling: start empty.
            self.local.add(c::BAD_HEAD, 1);
            (head, tail) = (0, 0);
            shared.bar2.write32(page + queue::RX_TAIL, 0);
        }
        let base = high << 32 | (low & queue::PIPE_ADDR_MASK) as u64;
        self.engine.enable_pipe(p, PipeSetup { base, nb, head, tail });
        self.pipes[p as usize] = PipePoll { enabled_low: low, rejected_low: 0, last_head: raw_head };
        self.enabled_pipes.push(p);
        set_state_bit(shared, state::pipe_bit(p), true);
    }

    fn disable_pipe(&mut self, shared: &Shared, p: u32) {
        self.engine.disable_pipe(p);
        self.pipes[p as usize] = PipePoll::default();
        set_state_bit(shared, state::pipe_bit(p), false);
    }

    fn enable_nb(&mut self, shared: &Shared, j: u32, low: u32) {
        let page = nb_page(j);
        let r = |off| shared.bar2.read32(page + off);
        // The RX ring is 2 MiB aligned, so bit 20 of its low half is the enable bit only;
        // the TX ring (1 MiB above it) uses bit 20 as an address bit.
        let rx_ring =
            (r(queue::RX_MEM_HIGH) as u64) << 32 | (low & queue::NB_ADDR_MASK & !queue::ENABLE) as u64;
        let tx_ring =
            (r(queue::TX_MEM_HIGH) as u64) << 32 | (r(queue::TX_MEM_LOW) & queue::NB_ADDR_MASK) as u64;
        let setup = NbSetup {
            rx_ring,
            tx_ring,
            rx_head: r(queue::RX_HEAD),
            rx_tail: r(queue::RX_TAIL),
            tx_head: r(queue::TX_HEAD),
        };
        self.engine.enable_nb(j, setup);
        let tail = r(queue::TX_TAIL);
        let seq = (shared.bar0.read64(prefetch::slot(j)) >> 32) as u32;
        self.nbs[j as usize] =
            NbPoll { enabled_low: low, last_seq: seq, last_tail: tail, tx_pending: tail != setup.tx_head };
        self.enabled_nbs.push(j);
        set_state_bit(shared, state::nb_bit(j), true);
    }

    fn disable_nb(&mut self, shared: &Shared, j: u32) {
        self.engine.disable_nb(j);
        self.nbs[j as usize] = NbPoll::default();
        set_state_bit(shared, state::nb_bit(j), false);
    }

    /// Looks at up to `chunk` queues for the enable bit.
    fn scan(&mut self, shared: &Shared, chunk: u32) {
        let (np, nn) = (shared.cfg.num_pipes, shared.cfg.num_nb_pairs);
        let total = np + nn;
        for _ in 0..chunk.min(total) {
            let i = self.scan_cursor;
            self.scan_cursor = (i + 1) % total;
            if i < np {
                let pp = self.pipes[i as usize];
                if pp.enabled_low != 0 {
                    continue;
                }
                let low = shared.bar2.read32(pipe_page(i) + queue::RX_MEM_LOW);
                if low & queue::ENABLE == 0 {
                    self.pipes[i as usize].rejected_low = 0;
                } else if low != pp.rejected_low {
                    self.try_enable_pipe(shared, i, low);
                }
            } else {
                let j = i - np;
                if self.nbs[j as usize].enabled_low != 0 {
                    continue;
                }
                let low = shared.bar2.read32(nb_page(j) + queue::RX_MEM_LOW);
                if low & queue::ENABLE != 0 {
                    self.enable_nb(shared, j, low);
                }
            }
        }
    }

    /// One polling round; true when it found work.
    pub fn round(&mut self, shared: &Shared, dma: &Dma, stop: &AtomicBool) -> bool {
        let mode = shared.notif_mode.load(Ordering::Relaxed);
        if mode != self.mode {
            self.mode = mode;
            self.engine.set_per_packet(mode == ext::MODE_PER_PACKET);
        }
        self.scan(shared, if self.busy { SCAN_CHUNK_BUSY } else { SCAN_CHUNK });
        let mut work = false;

        // Disables and address changes (re-enabled by a later scan), then head writes.
        let mut gone = false;
        for k in 0..self.enabled_pipes.len() {
            let p = self.enabled_pipes[k];
            let page = pipe_page(p);
            if shared.bar2.read32(page + queue::RX_MEM_LOW) != self.pipes[p as usize].enabled_low {
                self.disable_pipe(shared, p);
                gone = true;
                work = true;
                continue;
            }
            let head = shared.bar2.read32(page + queue::RX_HEAD);
            if head != self.pipes[p as usize].last_head {
                self.pipes[p as usize].last_head = head;
                shared.pcie.trace_op(OpKind::MmioWr, OpRole::Credit, 4);
                let (engine, mut io) = self.split(shared, dma, stop);
                engine.rx_head(p, head, &mut io);
                work = true;
            }
        }
        if gone {
            let pipes = &self.pipes;
            self.enabled_pipes.retain(|&p| pipes[p as usize].enabled_low != 0);
        }

        let mut gone = false;
        for k in 0..self.enabled_nbs.len() {
            let j = self.enabled_nbs[k];
            let page = nb_page(j);
            if shared.bar2.read32(page + queue::RX_MEM_LOW) != self.nbs[j as usize].enabled_low {
                self.disable_nb(shared, j);
                gone = true;
                work = true;
                continue;
            }
            let slot = shared.bar0.read64(prefetch::slot(j));
            let seq = (slot >> 32) as u32;
            if seq != self.nbs[j as usize].last_seq {
                self.nbs[j as usize].last_seq = seq;
                shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 8);
                self.local.add(c::PREFETCHES, 1);
                let pipe = slot as u32;
                if self.pipes.get(pipe as usize).is_some_and(|pp| pp.enabled_low != 0) {
                    let (engine, mut io) = self.split(shared, dma, stop);
                    engine.prefetch(pipe, &mut io);
                } else {
                    self.bad_register_write(shared);
                }
                work = true;
            }
            let tail = shared.bar2.read32(page + queue::TX_TAIL);
            let nbp = &mut self.nbs[j as usize];
            if tail != nbp.last_tail {
                nbp.last_tail = tail;
                shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 4);
                nbp.tx_pending = true;
            }
            if nbp.tx_pending {
                let (engine, mut io) = self.split(shared, dma, stop);
                let done = engine.tx_tail(j, tail, &mut io);
                self.nbs[j as usize].tx_pending = !done;
                work = true;
            }
        }
        if gone {
            let nbs = &self.nbs;
            self.enabled_nbs.retain(|&j| nbs[j as usize].enabled_low != 0);
        }

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
        self.busy = work;
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
                    let len = f.len() as u64;
                    if self.port.send(f) {
                        self.local.add(c::TX_PACKETS, 1);
                        self.local.add(c::TX_BYTES, len);
                    } else {
                        self.local.add(c::TX_DROP_WIRE, 1);
                    }
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
                stop,
            },
        )
    }
}

/// The device thread's body: rounds until `stop`, backing off when idle. Returns the
/// state so the device can keep it across detach/attach.
pub fn run(
    mut st: DeviceState,
    shared: std::sync::Arc<Shared>,
    dma: Dma,
    stop: std::sync::Arc<AtomicBool>,
) -> DeviceState {
    pcie_model::poll::poll_until(&stop, || st.round(&shared, &dma, &stop));
    st
}
