//! The accelerator PCI function: the register map of `testbed_regs::accel` around a
//! [`Function`], with the legacy command ring and the stream interface.
//!
//! Choices where the map leaves room (keep docs/accelerators.md in step):
//! - A descriptor that cannot be fetched still consumes its slot and gets a completion
//!   with status DMA_ERROR and tag 0, so a bad ring address cannot wedge the ring.
//! - A completion is two DMA writes: bytes 8..16 first, then 0..8 (tag, status, phase),
//!   so the phase byte is the last thing the driver can see change.
//! - A doorbell naming a tail outside the ring is ignored and counted once per value.
//! - Every enable starts a new ring, even when the device thread never saw it disabled (a
//!   disable, resize and enable between two polls): the previous ring's tail is forgotten.
//!   The thread runs at most 64 commands per hold of the state lock.
//! - Ring registers are read-only while the ring runs (writes counted as
//!   BAD_REGISTER_WRITES); enable with invalid registers is refused (BAD_CONFIG).
//! - Stream records start on 64-byte boundaries of the destination ring. A malformed
//!   stream record cannot be skipped (its length is untrusted): everything buffered is
//!   dropped and counted, and the writer restarts the stream (STREAM_CTRL 0, 1).

use crate::function::Function;
use pcie_model::config::{BarSpec, ConfigSpace, ConfigSpaceBuilder};
use pcie_model::device_counters::{DeviceCounters, LocalCounts};
use pcie_model::device_thread::{DeviceLoop, Lifecycle};
use pcie_model::regs::dword;
use pcie_model::{BarBacking, Counters, Dma, DmaClass, OpKind, OpRole, PciDevice, ShmRegion};
use std::sync::{Arc, Mutex, MutexGuard};
use testbed_regs::accel::reg::counter as c;
use testbed_regs::accel::{self as regs, cqe, db, desc, reg, status};
use testbed_regs::record::{Assembler, NotARecord};

/// Largest command input.
pub const MAX_INPUT: u32 = 64 << 10;
/// Commands run per polling round before the state lock is let go (the register side and
/// the stream wait on it).
const COMMANDS_PER_ROUND: u32 = 64;
/// Counters of the device.
pub type AccelCounters = DeviceCounters<{ c::N }>;

#[derive(Clone, Copy, Debug, Default)]
struct Ring {
    sq_base: u64,
    cq_base: u64,
    entries: u32,
    enabled: bool,
    head: u32,
    phase: u8,
    /// Which enable this ring came from: the device thread restarts its tail tracking when
    /// it changes, even if it never saw the ring disabled in between.
    generation: u32,
}

#[derive(Clone, Debug, Default)]
struct Stream {
    op: u32,
    model: u32,
    dest: u64,
    dest_size: u32,
    key: [u8; 32],
    enabled: bool,
    /// Bytes pushed to the destination.
    dest_off: u64,
    /// The records being written into the window.
    records: Assembler,
}

/// The trapped registers and queue state, shared by the register side and the thread.
#[derive(Debug, Default)]
struct State {
    ring: Ring,
    stream: Stream,
    /// Registers as written (ring bases and size while disabled).
    sq_base: u64,
    cq_base: u64,
    entries: u32,
    /// Enables so far (the next ring's generation).
    enables: u32,
}

struct Shared {
    db: Arc<ShmRegion>,
    state: Mutex<State>,
    counters: AccelCounters,
    pcie: Arc<Counters>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle to push bytes into a device's stream window without the PCI function (what
/// a switch fabric uses to deliver device-to-device writes).
#[derive(Clone)]
pub struct StreamPort {
    shared: Arc<Shared>,
}

impl StreamPort {
    /// Delivers a write of `data` at `offset` of the stream window: at or after the
    /// current end (a gap is padding between records, which start on 64-byte boundaries
    /// of the stream), within half a window. False (and counted as STREAM_DROPS) when it
    /// is behind, too far ahead, overflows the window or the stream is off.
    pub fn push(&self, offset: u64, data: &[u8]) -> bool {
        let mut st = self.shared.state();
        let s = &mut st.stream;
        let ok = s.enabled && s.records.accept(offset, data, regs::STREAM_WINDOW_SIZE);
        if !ok {
            self.shared.counters.add(c::STREAM_DROPS, 1);
        }
        ok
    }
}

/// A peer's handle on the submission-tail register: what a switch that drives the legacy
/// ring on the CPU's behalf writes (a peer write into BAR2).
#[derive(Clone)]
pub struct DoorbellPort {
    db: Arc<ShmRegion>,
}

impl DoorbellPort {
    /// Writes `tail` into SQ_TAIL.
    pub fn ring(&self, tail: u32) {
        self.db.write32(db::SQ_TAIL, tail);
    }
}

fn lock_func(f: &Mutex<Box<dyn Function>>) -> MutexGuard<'_, Box<dyn Function>> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device thread's state.
struct Datapath {
    /// Shared with the device, so a thread that panicked can be replaced by a fresh state
    /// computing the same function.
    func: Arc<Mutex<Box<dyn Function>>>,
    last_tail: u32,
    bad_tail: Option<u32>,
    /// The generation of the ring `last_tail` belongs to.
    ring_generation: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    local: LocalCounts<{ c::N }>,
}

/// An accelerator: crypto or ML, by its [`Function`].
pub struct Accelerator {
    config: ConfigSpace,
    name: &'static str,
    func_id: u32,
    shared: Arc<Shared>,
    func: Arc<Mutex<Box<dyn Function>>>,
    worker: DeviceLoop<Datapath>,
}

impl Accelerator {
    /// A device running `func`, in its power-on state.
    pub fn new(func: Box<dyn Function>) -> std::io::Result<Accelerator> {
        let device_id = match func.id() {
            reg::FUNCTION_CRYPTO => regs::CRYPTO_DEVICE_ID,
            _ => regs::ML_DEVICE_ID,
        };
        let config = ConfigSpaceBuilder::new(regs::VENDOR_ID, device_id)
            .class(regs::CLASS_CODE)
            .bar(BarSpec::mem32(regs::REG_BAR, regs::REG_BAR_SIZE))
            .bar(BarSpec::mem64(regs::DB_BAR, regs::DB_BAR_SIZE))
            .build()?;
        let shared = Arc::new(Shared {
            db: Arc::new(ShmRegion::new("accel-db", db::PAGE as usize)?),
            state: Mutex::new(State::default()),
            counters: AccelCounters::default(),
            pcie: Arc::new(Counters::default()),
        });
        let (name, func_id) = (func.name(), func.id());
        let func = Arc::new(Mutex::new(func));
        // Should the model ever panic anyway, it comes back with a fresh datapath rather
        // than dead.
        let (f2, sh) = (func.clone(), shared.clone());
        let worker = DeviceLoop::new(
            name,
            Datapath::new(&func),
            move || Datapath::new(&f2),
            move |mut st, ctx, stop| {
                pcie_model::poll::poll_until(&stop, || st.round(&sh, &ctx.dma));
                st
            },
        );
        Ok(Accelerator { config, name, func_id, shared, func, worker })
    }

    /// The crypto accelerator.
    pub fn crypto() -> std::io::Result<Accelerator> {
        Accelerator::new(Box::new(crate::function::Crypto))
    }

    /// The ML inference accelerator.
    pub fn ml() -> std::io::Result<Accelerator> {
        Accelerator::new(Box::<crate::function::Inference>::default())
    }

    /// The device's counters, by index of `regs::accel::reg::counter`.
    pub fn device_counters(&self) -> [u64; c::N] {
        self.shared.counters.snapshot()
    }

    /// A peer's handle on the doorbell register (a switch driving the legacy ring).
    pub fn doorbell_port(&self) -> DoorbellPort {
        DoorbellPort { db: self.shared.db.clone() }
    }

    /// A port into the stream window (see [`StreamPort`]).
    pub fn stream_port(&self) -> StreamPort {
        StreamPort { shared: self.shared.clone() }
    }

    fn bad_write(&self) {
        self.shared.counters.add(c::BAD_REGISTER_WRITES, 1);
        self.shared.pcie.bad_register_write();
    }

    fn read32(&self, off: u64) -> u32 {
        let st = self.shared.state();
        let s = &st.stream;
        match off {
            reg::ID => reg::ID_VALUE,
            reg::VERSION => reg::VERSION_VALUE,
            reg::FUNCTION => self.func_id,
            reg::MAX_INPUT => MAX_INPUT,
            reg::SQ_BASE_LO => st.sq_base as u32,
            reg::SQ_BASE_HI => (st.sq_base >> 32) as u32,
            reg::CQ_BASE_LO => st.cq_base as u32,
            reg::CQ_BASE_HI => (st.cq_base >> 32) as u32,
            reg::RING_ENTRIES => st.entries,
            reg::CTRL => st.ring.enabled as u32,
            reg::STATUS => {
                (if st.ring.enabled { reg::STATUS_ENABLED } else { 0 })
                    | if s.enabled { reg::STATUS_STREAM } else { 0 }
            }
            reg::ERROR_STATUS => self.shared.counters.error_status(c::FIRST_ERROR),
            reg::STREAM_OP => s.op,
            reg::STREAM_MODEL => s.model,
            reg::STREAM_DEST_LO => s.dest as u32,
            reg::STREAM_DEST_HI => (s.dest >> 32) as u32,
            reg::STREAM_DEST_SIZE => s.dest_size,
            reg::STREAM_CTRL => s.enabled as u32,
            reg::STREAM_DEST_OFFSET => s.dest_off as u32,
            reg::STREAM_IN_OFFSET => s.records.offset() as u32,
            o if (reg::STREAM_KEY..reg::STREAM_KEY + 32).contains(&o) => {
                let i = (o - reg::STREAM_KEY) as usize;
                u32::from_le_bytes(s.key[i..i + 4].try_into().unwrap_or_default())
            }
            o if (reg::COUNTERS..reg::COUNTERS + 8 * c::N as u64).contains(&o) => {
                self.shared.counters.reg_word(o - reg::COUNTERS)
            }
            _ => 0,
        }
    }

    /// Applies a register write; false when refused.
    fn write32(&mut self, off: u64, v: u32) -> bool {
        let shared = self.shared.clone();
        let mut st = shared.state();
        let ring_on = st.ring.enabled;
        let stream_on = st.stream.enabled;
        let lo = |r: u64| (r & !0xffff_ffff) | v as u64;
        let hi = |r: u64| (r & 0xffff_ffff) | (v as u64) << 32;
        match off {
            reg::SQ_BASE_LO if !ring_on => st.sq_base = lo(st.sq_base),
            reg::SQ_BASE_HI if !ring_on => st.sq_base = hi(st.sq_base),
            reg::CQ_BASE_LO if !ring_on => st.cq_base = lo(st.cq_base),
            reg::CQ_BASE_HI if !ring_on => st.cq_base = hi(st.cq_base),
            reg::RING_ENTRIES if !ring_on => st.entries = v,
            reg::CTRL if v == reg::CTRL_ENABLE && !ring_on => {
                let ok = st.entries.is_power_of_two()
                    && (2..=reg::MAX_ENTRIES).contains(&st.entries)
                    && st.sq_base.is_multiple_of(desc::SIZE as u64)
                    && st.cq_base.is_multiple_of(cqe::SIZE as u64);
                if !ok {
                    drop(st);
                    self.shared.counters.add(c::BAD_CONFIG, 1);
                    return true;
                }
                st.enables = st.enables.wrapping_add(1);
                st.ring = Ring {
                    sq_base: st.sq_base,
                    cq_base: st.cq_base,
                    entries: st.entries,
                    enabled: true,
                    head: 0,
                    phase: 1,
                    generation: st.enables,
                };
                // Start from an empty ring: the tail the driver writes next counts.
                self.shared.db.write32(db::SQ_TAIL, 0);
                self.shared.db.write32(db::SQ_HEAD, 0);
            }
            reg::CTRL if v == 0 => st.ring = Ring::default(),
            reg::CTRL if v == reg::CTRL_ENABLE => {}
            reg::STREAM_OP if !stream_on => st.stream.op = v,
            reg::STREAM_MODEL if !stream_on => st.stream.model = v,
            reg::STREAM_DEST_LO if !stream_on => st.stream.dest = lo(st.stream.dest),
            reg::STREAM_DEST_HI if !stream_on => st.stream.dest = hi(st.stream.dest),
            reg::STREAM_DEST_SIZE if !stream_on => st.stream.dest_size = v,
            o if !stream_on && (reg::STREAM_KEY..reg::STREAM_KEY + 32).contains(&o) => {
                let i = (o - reg::STREAM_KEY) as usize;
                st.stream.key[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            reg::STREAM_CTRL if v == 1 && !stream_on => {
                let s = &mut st.stream;
                let ok = s.dest_size >= 64 && s.dest_size.is_multiple_of(64) && s.dest.is_multiple_of(64);
                if !ok {
                    drop(st);
                    self.shared.counters.add(c::BAD_CONFIG, 1);
                    return true;
                }
                s.enabled = true;
                s.dest_off = 0;
                s.records = Assembler::default();
            }
            reg::STREAM_CTRL if v == 0 => {
                let s = &mut st.stream;
                s.enabled = false;
                s.records.clear();
            }
            reg::STREAM_CTRL if v == 1 => {}
            reg::COUNTERS_CLEAR if v == 1 => self.shared.counters.clear(),
            _ => return false,
        }
        true
    }
}

impl Datapath {
    fn new(func: &Arc<Mutex<Box<dyn Function>>>) -> Datapath {
        Datapath {
            func: func.clone(),
            last_tail: 0,
            bad_tail: None,
            ring_generation: 0,
            input: Vec::new(),
            output: Vec::new(),
            local: LocalCounts::default(),
        }
    }

    /// One polling round: the doorbell, the ring's commands, the stream's records.
    fn round(&mut self, shared: &Shared, dma: &Dma) -> bool {
        let mut work = false;
        let mut st = shared.state();
        let tail = shared.db.read32(db::SQ_TAIL);
        if st.ring.enabled {
            let entries = st.ring.entries;
            if st.ring.generation != self.ring_generation {
                // A new ring (possibly re-enabled with other registers before this thread
                // saw it disabled): the previous ring's tail means nothing here.
                self.ring_generation = st.ring.generation;
                self.last_tail = 0;
                self.bad_tail = None;
            }
            if tail != self.last_tail {
                if tail >= entries {
                    if self.bad_tail != Some(tail) {
                        self.bad_tail = Some(tail);
                        self.local.add(c::BAD_DOORBELLS, 1);
                    }
                } else {
                    self.last_tail = tail;
                    shared.pcie.trace_op(OpKind::MmioWr, OpRole::Doorbell, 4);
                }
            }
            // Bounded: `last_tail < entries` (checked above, for this ring), and at most
            // COMMANDS_PER_ROUND commands run before the lock is let go.
            let mut budget = COMMANDS_PER_ROUND;
            while st.ring.head != self.last_tail && self.last_tail < entries && budget > 0 {
                self.command(&mut st.ring, dma);
                shared.db.write32(db::SQ_HEAD, st.ring.head);
                work = true;
                budget -= 1;
            }
        } else {
            self.last_tail = 0;
            self.bad_tail = None;
        }
        if st.stream.enabled && !st.stream.records.is_empty() {
            // Take the complete records out, then compute and push without the lock: a
            // push may reach another device whose own thread pushes back to us.
            let records = self.take_records(&mut st.stream);
            let cfg = StreamCfg { op: st.stream.op, model: st.stream.model, key: st.stream.key };
            let (dest, size) = (st.stream.dest, st.stream.dest_size as u64);
            let mut off = st.stream.dest_off;
            drop(st);
            work |= !records.is_empty();
            for r in &records {
                self.stream_record(&cfg, r, dest, size, &mut off, dma);
            }
            let mut st = shared.state();
            if st.stream.enabled && st.stream.dest == dest {
                st.stream.dest_off = off;
            }
        } else {
            drop(st);
        }
        self.local.flush(&shared.counters);
        work
    }

    /// Runs the command in the head slot and completes it.
    fn command(&mut self, ring: &mut Ring, dma: &Dma) {
        let slot = ring.head as u64;
        let mut d = [0u8; desc::SIZE];
        let (tag, status, out_len) = if dma
            .read(ring.sq_base.wrapping_add(slot * desc::SIZE as u64), &mut d, DmaClass::Metadata)
            .is_err()
        {
            self.local.add(c::DMA_ERRORS, 1);
            (0, status::DMA_ERROR, 0)
        } else {
            let tag = u32::from_le_bytes(d[desc::TAG..desc::TAG + 4].try_into().unwrap_or_default());
            let (st, n) = self.execute(&d, dma);
            (tag, st, n)
        };
        let mut e = [0u8; cqe::SIZE];
        e[cqe::TAG..cqe::TAG + 4].copy_from_slice(&tag.to_le_bytes());
        e[cqe::STATUS..cqe::STATUS + 2].copy_from_slice(&status.to_le_bytes());
        e[cqe::PHASE] = ring.phase;
        e[cqe::OUT_LEN..cqe::OUT_LEN + 4].copy_from_slice(&out_len.to_le_bytes());
        let at = ring.cq_base.wrapping_add(slot * cqe::SIZE as u64);
        let ok = dma.write(at + 8, &e[8..], DmaClass::Metadata).is_ok()
            && dma.write(at, &e[..8], DmaClass::Metadata).is_ok();
        if !ok {
            self.local.add(c::DMA_ERRORS, 1);
        }
        ring.head = (ring.head + 1) % ring.entries;
        if ring.head == 0 {
            ring.phase ^= 1;
        }
    }

    /// Validates and runs descriptor `d`; returns (status, output bytes).
    fn execute(&mut self, d: &[u8; desc::SIZE], dma: &Dma) -> (u16, u32) {
        let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap_or_default());
        let (op, flags) = (d[desc::OPCODE], d[desc::FLAGS]);
        let (src, len, dst, cap) =
            (u64_at(desc::SRC_ADDR), u32_at(desc::SRC_LEN), u64_at(desc::DST_ADDR), u32_at(desc::DST_CAP));
        if flags != 0 || !matches!(op, desc::OP_DECRYPT | desc::OP_ENCRYPT | desc::OP_INFER) {
            self.local.add(c::BAD_DESCRIPTORS, 1);
            return (status::BAD_OPCODE, 0);
        }
        if len == 0 || len > MAX_INPUT {
            self.local.add(c::BAD_DESCRIPTORS, 1);
            return (status::BAD_LENGTH, 0);
        }
        self.input.resize(len as usize, 0);
        if dma.read(src, &mut self.input, DmaClass::Data).is_err() {
            self.local.add(c::DMA_ERRORS, 1);
            return (status::DMA_ERROR, 0);
        }
        let state: [u8; 32] = d[desc::STATE..desc::STATE + 32].try_into().unwrap_or([0; 32]);
        let st = lock_func(&self.func).execute(op, &state, &self.input, &mut self.output);
        match st {
            status::OK => {}
            status::AUTH_FAILED => {
                self.local.add(c::AUTH_FAILURES, 1);
                return (st, 0);
            }
            _ => {
                self.local.add(c::BAD_DESCRIPTORS, 1);
                return (st, 0);
            }
        }
        if self.output.len() > cap as usize {
            self.local.add(c::OUTPUT_TOO_SMALL, 1);
            return (status::OUTPUT_TOO_SMALL, 0);
        }
        if dma.write(dst, &self.output, DmaClass::Data).is_err() {
            self.local.add(c::DMA_ERRORS, 1);
            return (status::DMA_ERROR, 0);
        }
        self.local.add(c::COMMANDS, 1);
        self.local.add(c::INPUT_BYTES, len as u64);
        self.local.add(c::OUTPUT_BYTES, self.output.len() as u64);
        (status::OK, self.output.len() as u32)
    }

    /// Takes the complete records out of the stream's buffer (each starts on a 64-byte
    /// boundary of the stream). A header that is not a record drops everything buffered.
    fn take_records(&mut self, s: &mut Stream) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match s.records.next_record() {
                Ok(Some((_, rec))) => out.push(rec),
                Ok(None) => break,
                Err(NotARecord) => {
                    self.local.add(c::STREAM_BAD_RECORDS, 1);
                    break;
                }
            }
        }
        out
    }

    /// Computes one stream record and pushes the output to the destination ring at `off`.
    fn stream_record(&mut self, cfg: &StreamCfg, rec: &[u8], dest: u64, size: u64, off: &mut u64, dma: &Dma) {
        let mut state = cfg.key;
        if lock_func(&self.func).id() == reg::FUNCTION_ML {
            state[..4].copy_from_slice(&cfg.model.to_le_bytes());
        }
        let st = lock_func(&self.func).execute(cfg.op as u8, &state, rec, &mut self.output);
        if st != status::OK {
            self.local
                .add(if st == status::AUTH_FAILED { c::AUTH_FAILURES } else { c::STREAM_BAD_RECORDS }, 1);
            return;
        }
        let at = *off % size;
        let first = (self.output.len() as u64).min(size - at) as usize;
        let ok = self.output.len() as u64 <= size
            && dma.write(dest + at, &self.output[..first], DmaClass::Data).is_ok()
            && (first == self.output.len() || dma.write(dest, &self.output[first..], DmaClass::Data).is_ok());
        if !ok {
            self.local.add(c::DMA_ERRORS, 1);
            return;
        }
        *off += (self.output.len() as u64).next_multiple_of(64);
        self.local.add(c::STREAM_RECORDS, 1);
        self.local.add(c::INPUT_BYTES, rec.len() as u64);
        self.local.add(c::OUTPUT_BYTES, self.output.len() as u64);
    }
}

/// A stream's computation settings, copied out of the registers for one round.
struct StreamCfg {
    op: u32,
    model: u32,
    key: [u8; 32],
}

impl PciDevice for Accelerator {
    fn name(&self) -> &str {
        self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_backing(&self, index: u8) -> BarBacking {
        match index {
            regs::DB_BAR => BarBacking::Shared { shm: self.shared.db.clone(), areas: vec![(0, db::PAGE)] },
            _ => BarBacking::Trapped,
        }
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match index {
            regs::DB_BAR if offset + data.len() as u64 <= db::PAGE => {
                self.shared.db.read_bytes(offset, data);
            }
            regs::REG_BAR if data.len() <= 8 && offset < regs::REG_BAR_SIZE => {
                pcie_model::regs::read_words(offset, data, |w| self.read32(w));
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        let ok = match index {
            regs::DB_BAR if end <= db::PAGE => self.shared.db.write_bytes(offset, data),
            regs::DB_BAR if offset >= regs::STREAM_WINDOW && end <= regs::DB_BAR_SIZE => {
                // Counted as a stream drop when refused, not as a bad register write.
                self.stream_port().push(offset - regs::STREAM_WINDOW, data);
                true
            }
            regs::REG_BAR => dword(offset, data).is_some_and(|v| self.write32(offset, v)),
            _ => false,
        };
        if !ok {
            self.bad_write();
        }
    }

    fn lifecycle(&mut self) -> Option<&mut dyn Lifecycle> {
        Some(&mut self.worker)
    }

    fn reset(&mut self) {
        let (shared, func) = (self.shared.clone(), self.func.clone());
        self.worker.replace(|old| {
            *shared.state() = State::default();
            shared.db.clear();
            shared.counters.clear();
            let mut w = old.unwrap_or_else(|| Datapath::new(&func));
            w.last_tail = 0;
            w.bad_tail = None;
            w.ring_generation = 0;
            w
        });
    }

    fn counters(&self) -> Arc<Counters> {
        self.shared.pcie.clone()
    }
}
