//! Co-simulation: the verilated RTL queue engine (rtl/enso/enso_queue_engine.sv) behind
//! the Ensō model's [`QueueEngine`] seam, so the unchanged NIC model, vfio-user server and
//! guest driver run against the RTL. The device thread clocks the model: each trait call
//! becomes one command on the RTL's `cmd` port, and the thread turns every event the RTL
//! puts on its `io` port into the matching [`EngineIo`] call (doing the DMA the RTL
//! commanded, answering its requests), cycle by cycle, until the RTL reports the call done.
//!
//! Frame bytes never enter the RTL (a data DMA names the frame offset to copy), and the TX
//! framer stays the Rust one ([`TxFramer`]): the RTL validates a send and commands its read;
//! the framer cuts what was read into frames.
//!
//! The verilated model is a shared library that [`provision`] builds on first use and
//! caches (see `model.rs` for why it is not built by build.rs); until it is loaded,
//! [`RtlEngine::factory`] and [`nagare_pipeline`] say what is missing.

use enso_nic::{EngineFactory, EnsoConfig};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The RTL instance's parameters (the module's defaults): queue slots. The card's ID space
/// (8192 pipes, 1024 pairs) is mapped onto them in order of first use (see `Slots`), so a
/// NIC on the RTL serves the card's IDs, at most this many of each at a time.
pub const PIPES: u32 = 64;
/// Notification-buffer pair slots.
pub const NB_PAIRS: u32 = 16;
/// Pipe ring size in flits.
pub const PIPE_FLITS: u32 = 1 << 15;
/// Notification ring entries.
pub const NOTIF_ENTRIES: u32 = 1 << 14;

mod model;
pub use model::{available, provision, provisioned_for_tests};

/// The small instance, for the differential workload (`enso_nic::engine::workload`).
pub fn small_config() -> EnsoConfig {
    use enso_nic::engine::workload as w;
    EnsoConfig {
        num_pipes: w::PIPES,
        num_nb_pairs: w::NBS,
        pipe_flits: w::PIPE_FLITS,
        notif_entries: w::ENTRIES,
        ..EnsoConfig::default()
    }
}

/// Whether `cfg` is the small instance's.
fn is_small(cfg: &EnsoConfig) -> bool {
    let s = small_config();
    (cfg.num_pipes, cfg.num_nb_pairs, cfg.pipe_flits, cfg.notif_entries)
        == (s.num_pipes, s.num_nb_pairs, s.pipe_flits, s.notif_entries)
}

/// Why a configuration cannot run on the RTL instances, if it cannot: the ring sizes are
/// the RTL's parameters (any number of pipes and pairs maps onto its slots).
pub fn unsupported(cfg: &EnsoConfig) -> Option<String> {
    let got = (cfg.pipe_flits, cfg.notif_entries);
    (got != (PIPE_FLITS, NOTIF_ENTRIES) && !is_small(cfg)).then(|| {
        format!(
            "the RTL engine is built for pipes of {PIPE_FLITS} flits and {NOTIF_ENTRIES}-entry notification \
             rings; the NIC asks for pipes of {} flits and rings of {} entries",
            got.0, got.1
        )
    })
}

pub use pipeline::RtlPipeline;
pub use sim::{RtlEngine, RtlRegsEngine};

/// The Nagare switch's pipeline as the RTL (rtl/nagare/nagare_pipeline.sv), for
/// [`nagare::Fabric::with_model`]; with `headers`, every header it rules on is counted
/// there.
pub fn nagare_pipeline(
    headers: Option<Arc<AtomicU64>>,
) -> Result<Box<dyn nagare::pipeline::PipelineModel>, String> {
    Ok(Box::new(RtlPipeline::new(headers)?))
}

mod pipeline {
    use crate::model::Instance;
    use nagare::fabric::Tables;
    use nagare::pipeline::{Phv, PipelineModel, Verdict};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use testbed_regs::nagare as regs;

    /// The pins, as csrc/engine.cpp's NplPins lays them out.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Pins {
        in_addr: u64,
        cfg_wdata: u32,
        cfg_addr: u16,
        in_len: u16,
        rst: u8,
        cfg_we: u8,
        in_valid: u8,
        in_src: u8,
        out_dest_offset: u32,
        out_credit_pipe: u16,
        out_credit_head: u16,
        out_valid: u8,
        out_verdict: u8,
        out_reason: u8,
        out_stream: u8,
        out_dest_port: u8,
        out_egress: u8,
        out_glue: u8,
        out_credit: u8,
    }

    impl crate::model::Pins for Pins {
        fn rst(&mut self) -> &mut u8 {
            &mut self.rst
        }
    }

    struct Sim {
        rtl: Instance<Pins>,
        /// The configuration registers as last written.
        regs: HashMap<u16, u32>,
    }

    /// The verilated Nagare pipeline behind [`PipelineModel`]: the fabric's tables are
    /// written into its configuration registers (only what changed), each header goes in,
    /// and the verdict comes out `STAGES` cycles later.
    pub struct RtlPipeline {
        sim: Mutex<Sim>,
        headers: Option<Arc<AtomicU64>>,
    }

    impl RtlPipeline {
        /// A fresh pipeline, reset; an error when the model is not loaded ([`crate::provision`]).
        pub fn new(headers: Option<Arc<AtomicU64>>) -> Result<Self, String> {
            let lib = crate::model::library()?;
            // SAFETY: npl_new's instance is clocked with NplPins, laid out as `Pins`.
            let rtl = unsafe { Instance::new(lib, || (lib.npl_new)(), Pins::default()) };
            Ok(RtlPipeline { sim: Mutex::new(Sim { rtl, regs: HashMap::new() }), headers })
        }
    }

    impl PipelineModel for RtlPipeline {
        fn run(&self, t: &Tables, phv: &mut Phv) {
            let mut guard = self.sim.lock().unwrap_or_else(|e| e.into_inner());
            let Sim { rtl, regs } = &mut *guard;
            for (addr, value) in nagare::pipeline::rtl_registers(t) {
                if regs.get(&addr) != Some(&value) {
                    (rtl.pins.cfg_we, rtl.pins.cfg_addr, rtl.pins.cfg_wdata) = (1, addr, value);
                    rtl.cycle();
                    regs.insert(addr, value);
                }
            }
            rtl.pins.cfg_we = 0;
            (rtl.pins.in_valid, rtl.pins.in_src, rtl.pins.in_addr, rtl.pins.in_len) =
                (1, phv.src as u8, phv.addr, phv.len.min(u16::MAX as usize) as u16);
            rtl.cycle();
            rtl.pins.in_valid = 0;
            let mut waited = 0;
            while rtl.pins.out_valid == 0 {
                rtl.cycle();
                waited += 1;
                assert!(waited < 1000, "the RTL pipeline gave no verdict");
            }
            if let Some(h) = &self.headers {
                h.fetch_add(1, Ordering::Relaxed);
            }
            let p = rtl.pins;
            phv.verdict = match p.out_verdict {
                0 => Verdict::Memory,
                1 => Verdict::Forward,
                _ => Verdict::Drop(u32::from(p.out_reason)),
            };
            if phv.verdict == Verdict::Memory {
                return;
            }
            let stream = p.out_stream as usize;
            phv.stream = Some(stream);
            if phv.verdict != Verdict::Forward {
                return;
            }
            phv.dest = Some((u32::from(p.out_dest_port), u64::from(p.out_dest_offset)));
            phv.egress = p.out_egress == 1;
            if p.out_glue == 1 {
                // The glued node follows the requester's (the CPU enters at the ingress).
                let hops = t.streams.get(stream).map_or(&[][..], |s| &s.hops[..]);
                let last = hops.len().saturating_sub(1);
                let node = if phv.src == regs::CPU_PORT {
                    Some(0)
                } else {
                    hops[..last].iter().position(|h| h.port == phv.src)
                };
                phv.glue = node.map(|n| (stream, n + 1));
            }
            if p.out_credit == 1 {
                phv.credit = Some((phv.src, u32::from(p.out_credit_pipe), u32::from(p.out_credit_head)));
            }
        }
    }
}

mod sim {
    use super::*;
    use crate::model::Instance;
    use enso_nic::engine::{
        EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RegisterFrontEnd, RxOutcome, TxFramer,
    };
    use pcie_model::DmaClass;
    use testbed_regs::enso::ext::counter as c;
    use testbed_regs::enso::{MAX_NB_PAIRS, MAX_PIPES, NOTIFICATION_SIZE};

    /// The answers to the engine's io events, the same inputs on the engine and on its
    /// front end (csrc/engine.cpp's Answers).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Answers {
        ent_signal: u64,
        ent_addr: u64,
        ent_len: u64,
        resp_value: u32,
        io_ready: u8,
        resp_valid: u8,
        resp_ok: u8,
        ent_valid: u8,
    }

    /// The engine's pins (csrc/engine.cpp's EqePins).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Pins {
        ans: Answers,
        cmd_a: u64,
        cmd_q: u32,
        cmd_b: u32,
        cmd_c: u32,
        cmd_d: u32,
        rst: u8,
        cmd_valid: u8,
        cmd_op: u8,
        cmd_ready: u8,
        io: Event,
    }

    /// The pins of the register front end (csrc/engine.cpp's EqrPins).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct RegsPins {
        ans: Answers,
        wr_data: u32,
        rx_pipe: u32,
        rx_len: u32,
        rd_data: u32,
        bad_writes: u32,
        wr_queue: u16,
        rd_queue: u16,
        rst: u8,
        wr_valid: u8,
        wr_reg: u8,
        rx_valid: u8,
        rd_reg: u8,
        wr_ready: u8,
        rx_ready: u8,
        io: Event,
    }

    /// The pins of an instance with the engine's io port: the answers in, the events out.
    trait EnginePins: crate::model::Pins {
        fn answers(&mut self) -> &mut Answers;
        fn io(&self) -> Event;
    }

    /// The two engine instances' pins: the reset, the answers and the io port by name.
    macro_rules! engine_pins {
        ($($t:ty),*) => {$(
            impl crate::model::Pins for $t {
                fn rst(&mut self) -> &mut u8 {
                    &mut self.rst
                }
            }
            impl EnginePins for $t {
                fn answers(&mut self) -> &mut Answers {
                    &mut self.ans
                }
                fn io(&self) -> Event {
                    self.io
                }
            }
        )*};
    }
    engine_pins!(Pins, RegsPins);

    // Commands and io events: see the header of rtl/enso/enso_queue_engine.sv.
    const OP_ENABLE_PIPE: u8 = 1;
    const OP_DISABLE_PIPE: u8 = 2;
    const OP_NB_TX_RING: u8 = 3;
    const OP_ENABLE_NB: u8 = 4;
    const OP_DISABLE_NB: u8 = 5;
    const OP_PER_PACKET: u8 = 6;
    const OP_SET_STREAM: u8 = 7;
    const OP_RX_PACKET: u8 = 8;
    const OP_RX_HEAD: u8 = 9;
    const OP_PREFETCH: u8 = 10;
    const OP_TX_TAIL: u8 = 11;
    const IO_DMA_WRITE: u8 = 1;
    const IO_DMA_READ: u8 = 2;
    const IO_PUBLISH: u8 = 3;
    const IO_NB_RX_HEAD: u8 = 4;
    const IO_COUNT: u8 = 5;
    const IO_CONFIGURE: u8 = 6;
    const IO_ENTRY_REQ: u8 = 7;
    const IO_TX_DATA: u8 = 8;
    const IO_DONE: u8 = 9;
    // Our codes of the register front end (rtl/enso/enso_queue_regs.sv).
    const R_PREFETCH: u8 = 0x20;
    const R_MODE: u8 = 0x24;
    const R_STREAM: u8 = 0x28;
    const R_EXT: u8 = 0x2c;
    const R_LIVE: u8 = 0x30;
    /// A call that takes longer than this many cycles means the RTL hung.
    const CYCLE_LIMIT: u64 = 10_000_000;
    const NONE: u32 = u32::MAX;

    /// The RTL holds [`PIPES`] pipes and [`NB_PAIRS`] pairs; the card's ID space (8192 pipes,
    /// 1024 pairs) is mapped onto those slots in order of first use (a queue keeps its slot
    /// until reset). The RTL sees slot numbers; everything it puts out is mapped back (the
    /// queue ID of a notification, the registers it publishes).
    struct Slots {
        pipe_slot: Vec<u32>,
        pipe_id: Vec<u32>,
        nb_slot: Vec<u32>,
        nb_id: Vec<u32>,
    }

    impl Slots {
        fn new() -> Self {
            Slots {
                pipe_slot: vec![NONE; MAX_PIPES as usize],
                pipe_id: Vec::new(),
                nb_slot: vec![NONE; MAX_NB_PAIRS as usize],
                nb_id: Vec::new(),
            }
        }

        fn get(slot_of: &mut [u32], ids: &mut Vec<u32>, max: u32, id: u32, alloc: bool) -> Option<u32> {
            let s = *slot_of.get(id as usize)?;
            if s != NONE {
                return Some(s);
            }
            if !alloc || ids.len() as u32 >= max {
                return None;
            }
            let s = ids.len() as u32;
            ids.push(id);
            slot_of[id as usize] = s;
            Some(s)
        }

        fn pipe(&mut self, id: u32, alloc: bool) -> Option<u32> {
            Self::get(&mut self.pipe_slot, &mut self.pipe_id, PIPES, id, alloc)
        }

        fn nb(&mut self, id: u32, alloc: bool) -> Option<u32> {
            Self::get(&mut self.nb_slot, &mut self.nb_id, NB_PAIRS, id, alloc)
        }

        fn pipe_of(&self, slot: u32) -> u32 {
            self.pipe_id.get(slot as usize).copied().unwrap_or(slot)
        }

        fn nb_of(&self, slot: u32) -> u32 {
            self.nb_id.get(slot as usize).copied().unwrap_or(slot)
        }
    }

    /// The io port: one event the RTL put out, while `valid` (csrc/engine.cpp's IoPort).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    struct Event {
        a: u64,
        q: u32,
        b: u32,
        c: u32,
        d: u32,
        e: u32,
        valid: u8,
        kind: u8,
    }

    /// What an io event needs back.
    enum Reply {
        None,
        Answer(bool, u32),
        Entry(u64, u64, u64),
        Done(u32),
    }

    /// The Rust side of the io port, shared by both instances: the DMA the RTL commands,
    /// the TX entries it fetched and the data it read, the framer, the slot map.
    struct IoSide {
        framer: TxFramer,
        /// TX entries fetched by the current TX_TAIL call, back to back.
        fetch: Vec<u8>,
        /// The current send's data.
        data: Vec<u8>,
        /// The entry the RTL asked for last (a CONFIGURE refers to it).
        entry: usize,
        /// None: the RTL sees the IDs themselves (the small instance of the differential
        /// workload, which probes IDs out of range on purpose).
        slots: Option<Slots>,
        /// RX drop counters seen during the call (the front end keeps DONE to itself).
        rx_drop: Option<u32>,
        /// The last event was a TX notification fetch (a second one continues the batch
        /// across the ring's end; any other starts a new batch).
        fetching: bool,
    }

    impl IoSide {
        /// For `nbs` pairs; `slots`: see the field.
        fn new(nbs: u32, slots: Option<Slots>) -> Self {
            IoSide {
                framer: TxFramer::new(nbs),
                fetch: Vec::new(),
                data: Vec::new(),
                entry: 0,
                slots,
                rx_drop: None,
                fetching: false,
            }
        }

        fn pipe_id(&self, slot: u32) -> u32 {
            self.slots.as_ref().map_or(slot, |s| s.pipe_of(slot))
        }

        fn nb_id(&self, slot: u32) -> u32 {
            self.slots.as_ref().map_or(slot, |s| s.nb_of(slot))
        }

        fn serve(&mut self, ev: Event, frame: &[u8], io: &mut dyn EngineIo) -> Reply {
            let Event { kind, q, a, b, c, d, e, .. } = ev;
            let class = if c == 0 { DmaClass::Data } else { DmaClass::Metadata };
            let fetch = kind == IO_DMA_READ && class == DmaClass::Metadata;
            if fetch && !self.fetching {
                self.fetch.clear();
            }
            self.fetching = fetch;
            match kind {
                IO_DMA_WRITE => {
                    let ok = match class {
                        DmaClass::Data => match frame.get(d as usize..(d + b) as usize) {
                            Some(bytes) => io.dma_write(a, bytes, class),
                            None => false,
                        },
                        _ if b as usize == NOTIFICATION_SIZE - 8 => {
                            // The notification's body: the pipe's ID (not its slot) and tail.
                            let mut body = [0u8; NOTIFICATION_SIZE - 8];
                            body[..8].copy_from_slice(&u64::from(self.pipe_id(d)).to_le_bytes());
                            body[8..16].copy_from_slice(&u64::from(e).to_le_bytes());
                            io.dma_write(a, &body, class)
                        }
                        _ => io.dma_write(a, &u64::from(d).to_le_bytes()[..(b as usize).min(8)], class),
                    };
                    Reply::Answer(ok, 0)
                }
                IO_DMA_READ => {
                    let ok = if class == DmaClass::Metadata {
                        let at = self.fetch.len();
                        self.fetch.resize(at + b as usize, 0);
                        let ok = io.dma_read(a, &mut self.fetch[at..], class);
                        if !ok {
                            self.fetch.truncate(at);
                        }
                        ok
                    } else {
                        self.data.resize(b as usize, 0);
                        io.dma_read(a, &mut self.data, class)
                    };
                    Reply::Answer(ok, 0)
                }
                IO_PUBLISH => {
                    let reg = match c {
                        0 => Published::PipeRxTail(self.pipe_id(q)),
                        1 => Published::NbRxTail(self.nb_id(q)),
                        _ => Published::NbTxHead(self.nb_id(q)),
                    };
                    io.publish(reg, b);
                    Reply::None
                }
                IO_NB_RX_HEAD => Reply::Answer(true, io.nb_rx_head(self.nb_id(q))),
                IO_COUNT => {
                    if [c::RX_DROP_PIPE_DISABLED, c::RX_DROP_PIPE_FULL, c::RX_DROP_DMA].contains(&c) {
                        self.rx_drop = Some(c);
                    }
                    io.count(c, u64::from(b));
                    Reply::None
                }
                IO_CONFIGURE => {
                    let mut n = [0u8; NOTIFICATION_SIZE];
                    if let Some(e) =
                        self.fetch.get(self.entry * NOTIFICATION_SIZE..(self.entry + 1) * NOTIFICATION_SIZE)
                    {
                        n.copy_from_slice(e);
                    }
                    io.configure(&n);
                    Reply::None
                }
                IO_ENTRY_REQ => {
                    self.entry = b as usize;
                    let e =
                        self.fetch.get(self.entry * NOTIFICATION_SIZE..(self.entry + 1) * NOTIFICATION_SIZE);
                    let w = |at: usize| {
                        e.map_or(0, |e| u64::from_le_bytes(e[at..at + 8].try_into().unwrap_or_default()))
                    };
                    Reply::Entry(w(0), w(8), w(16))
                }
                IO_TX_DATA => {
                    let n = (b as usize).min(self.data.len());
                    self.framer.push(q, &self.data[..n], io);
                    Reply::None
                }
                IO_DONE => Reply::Done(b),
                other => panic!("RTL queue engine: unknown io event {other}"),
            }
        }
    }

    /// What both instances share: the verilated instance, the Rust side of its io port,
    /// and where the cycles of each call are added (shared by a NIC's engines).
    struct Core<P> {
        rtl: Instance<P>,
        side: IoSide,
        cycles_sink: Option<Arc<AtomicU64>>,
    }

    impl<P: EnginePins> Core<P> {
        /// Serves the events the RTL puts on its io port, for a call that began at cycle
        /// `start`, until it reports the call done (its result), or until `idle` holds with
        /// no event waiting (None). The call's cycles are added to the sink. Panics with
        /// `hung()` when the call runs past [`CYCLE_LIMIT`] cycles.
        fn serve(
            &mut self,
            start: u64,
            frame: &[u8],
            io: &mut dyn EngineIo,
            idle: impl Fn(&P) -> bool,
            hung: impl Fn() -> String,
        ) -> Option<u32> {
            let result = loop {
                let ev = self.rtl.pins.io();
                if ev.valid == 0 {
                    if idle(&self.rtl.pins) {
                        break None;
                    }
                    self.rtl.cycle();
                    assert!(self.rtl.cycles - start < CYCLE_LIMIT, "{}", hung());
                    continue;
                }
                // The event is taken on the next edge (io_ready is always high).
                self.rtl.cycle();
                match self.side.serve(ev, frame, io) {
                    Reply::None => {}
                    Reply::Answer(ok, v) => {
                        let ans = self.rtl.pins.answers();
                        (ans.resp_valid, ans.resp_ok, ans.resp_value) = (1, ok as u8, v);
                        self.rtl.cycle();
                        self.rtl.pins.answers().resp_valid = 0;
                    }
                    Reply::Entry(s, a, l) => {
                        let ans = self.rtl.pins.answers();
                        (ans.ent_valid, ans.ent_signal, ans.ent_addr, ans.ent_len) = (1, s, a, l);
                        self.rtl.cycle();
                        self.rtl.pins.answers().ent_valid = 0;
                    }
                    Reply::Done(b) => break Some(b),
                }
            };
            if let Some(sink) = &self.cycles_sink {
                sink.fetch_add(self.rtl.cycles - start, std::sync::atomic::Ordering::Relaxed);
            }
            result
        }
    }

    /// The verilated engine behind the [`QueueEngine`] seam.
    pub struct RtlEngine(Core<Pins>);

    impl RtlEngine {
        /// A fresh engine (held in reset for two cycles) for `cfg`, which must fit the RTL
        /// instance ([`unsupported`]).
        pub fn new(cfg: &EnsoConfig) -> Result<RtlEngine, String> {
            if let Some(why) = unsupported(cfg) {
                return Err(why);
            }
            let lib = crate::model::library()?;
            let small = i32::from(is_small(cfg));
            let pins = Pins { ans: Answers { io_ready: 1, ..Answers::default() }, ..Pins::default() };
            // SAFETY: eqe_new's instances are clocked with EqePins, laid out as `Pins`.
            let rtl = unsafe { Instance::new(lib, || (lib.eqe_new)(small), pins) };
            let slots = (small == 0).then(Slots::new);
            let nbs = if small == 1 { cfg.num_nb_pairs } else { NB_PAIRS };
            Ok(RtlEngine(Core { rtl, side: IoSide::new(nbs, slots), cycles_sink: None }))
        }

        /// Clock cycles so far.
        pub fn cycles(&self) -> u64 {
            self.0.rtl.cycles
        }

        /// Engines for a NIC configured as `cfg` ([`enso_nic::EnsoNic::with_engines`]): a
        /// fresh RTL instance at power-on and at every reset. In register mode mmio the
        /// instance is the register front end with the engine behind it ([`RtlRegsEngine`]),
        /// which decodes every queue-page access itself. With `cycles`, every engine adds
        /// the clock cycles it ran there.
        pub fn factory(cfg: &EnsoConfig, cycles: Option<Arc<AtomicU64>>) -> Result<EngineFactory, String> {
            if let Some(why) = unsupported(cfg) {
                return Err(why);
            }
            crate::model::library()?;
            Ok(Arc::new(move |cfg: &EnsoConfig| -> Box<dyn QueueEngine> {
                // The NIC's configuration does not change after it is made: checked above.
                if cfg.registers == enso_nic::RegisterMode::Mmio && !is_small(cfg) {
                    let mut e = RtlRegsEngine::new().expect("the model is loaded");
                    e.0.cycles_sink = cycles.clone();
                    Box::new(e)
                } else {
                    let mut e = RtlEngine::new(cfg).expect("the NIC's configuration fits the RTL instance");
                    e.0.cycles_sink = cycles.clone();
                    Box::new(e)
                }
            }))
        }

        /// One call: the command, then every io event until DONE; returns its result.
        #[allow(clippy::too_many_arguments)]
        fn call(
            &mut self,
            op: u8,
            q: u32,
            a: u64,
            b: u32,
            c: u32,
            d: u32,
            frame: &[u8],
            io: &mut dyn EngineIo,
        ) -> u32 {
            let rtl = &mut self.0.rtl;
            let p = &mut rtl.pins;
            (p.cmd_valid, p.cmd_op, p.cmd_q, p.cmd_a, p.cmd_b, p.cmd_c, p.cmd_d) = (1, op, q, a, b, c, d);
            let start = rtl.cycles;
            // The engine takes a command on an edge where it is idle (cmd_ready).
            let never = || format!("RTL queue engine never took command {op}");
            rtl.offer(|p| p.cmd_ready == 1, start, CYCLE_LIMIT, never);
            rtl.pins.cmd_valid = 0;
            let hung = || format!("RTL queue engine hung in command {op}");
            self.0.serve(start, frame, io, |_| false, hung).expect("the engine's calls end with DONE")
        }

        fn pipe_slot(&mut self, pipe: u32, alloc: bool) -> Option<u32> {
            match &mut self.0.side.slots {
                Some(s) => s.pipe(pipe, alloc),
                None => Some(pipe),
            }
        }

        fn nb_slot(&mut self, nb: u32, alloc: bool) -> Option<u32> {
            match &mut self.0.side.slots {
                Some(s) => s.nb(nb, alloc),
                None => Some(nb),
            }
        }
    }

    impl QueueEngine for RtlEngine {
        fn enable_pipe(&mut self, pipe: u32, s: PipeSetup) {
            let Some(slot) = self.pipe_slot(pipe, true) else { return };
            // A pair without a slot becomes one the RTL does not have (notifications fail,
            // counted).
            let nb = self.nb_slot(s.nb, true).unwrap_or(NB_PAIRS);
            self.call(OP_ENABLE_PIPE, slot, s.base, nb, s.head, s.tail, &[], &mut NoIo);
        }
        fn disable_pipe(&mut self, pipe: u32) {
            if let Some(slot) = self.pipe_slot(pipe, false) {
                self.call(OP_DISABLE_PIPE, slot, 0, 0, 0, 0, &[], &mut NoIo);
            }
        }
        fn enable_nb(&mut self, nb: u32, s: NbSetup) {
            let Some(slot) = self.nb_slot(nb, true) else { return };
            self.call(OP_NB_TX_RING, slot, s.tx_ring, 0, 0, 0, &[], &mut NoIo);
            self.call(OP_ENABLE_NB, slot, s.rx_ring, s.rx_head, s.rx_tail, s.tx_head, &[], &mut NoIo);
            self.0.side.framer.reset(slot);
        }
        fn disable_nb(&mut self, nb: u32) {
            if let Some(slot) = self.nb_slot(nb, false) {
                self.call(OP_DISABLE_NB, slot, 0, 0, 0, 0, &[], &mut NoIo);
                self.0.side.framer.reset(slot);
            }
        }
        fn set_per_packet(&mut self, per_packet: bool) {
            self.call(OP_PER_PACKET, 0, 0, per_packet as u32, 0, 0, &[], &mut NoIo);
        }
        fn set_stream(&mut self, pipe: u32, stream: bool) {
            if let Some(slot) = self.pipe_slot(pipe, stream) {
                self.call(OP_SET_STREAM, slot, 0, stream as u32, 0, 0, &[], &mut NoIo);
            }
        }
        fn rx_packet(&mut self, pipe: u32, frame: &[u8], io: &mut dyn EngineIo) -> RxOutcome {
            let Some(slot) = self.pipe_slot(pipe, false) else {
                io.count(c::RX_DROP_PIPE_DISABLED, 1);
                return RxOutcome::PipeDisabled;
            };
            match self.call(OP_RX_PACKET, slot, 0, frame.len() as u32, 0, 0, frame, io) {
                0 => RxOutcome::Delivered,
                1 => RxOutcome::PipeDisabled,
                2 => RxOutcome::PipeFull,
                _ => RxOutcome::DmaFailed,
            }
        }
        fn rx_head(&mut self, pipe: u32, head: u32, io: &mut dyn EngineIo) {
            if let Some(slot) = self.pipe_slot(pipe, false) {
                self.call(OP_RX_HEAD, slot, 0, head, 0, 0, &[], io);
            }
        }
        fn prefetch(&mut self, pipe: u32, io: &mut dyn EngineIo) {
            if let Some(slot) = self.pipe_slot(pipe, false) {
                self.call(OP_PREFETCH, slot, 0, 0, 0, 0, &[], io);
            }
        }
        fn tx_tail(&mut self, nb: u32, tail: u32, io: &mut dyn EngineIo) -> bool {
            let Some(slot) = self.nb_slot(nb, false) else { return true };
            self.0.side.fetch.clear();
            self.call(OP_TX_TAIL, slot, 0, tail, 0, 0, &[], io) == 1
        }
    }

    /// The verilated register front end (rtl/enso/enso_queue_regs.sv) with the engine
    /// behind it: in register mode mmio the NIC's device thread hands it every queue-page
    /// access ([`RegisterFrontEnd`]), so the register decode the FPGA would carry is what
    /// the guest's driver talks to. Frames still come in through [`QueueEngine::rx_packet`].
    pub struct RtlRegsEngine(Core<RegsPins>);

    impl RtlRegsEngine {
        /// A fresh front end (held in reset for two cycles), the card's ID space mapped onto
        /// its slots.
        pub fn new() -> Result<RtlRegsEngine, String> {
            let lib = crate::model::library()?;
            let pins = RegsPins { ans: Answers { io_ready: 1, ..Answers::default() }, ..RegsPins::default() };
            // SAFETY: eqr_new's instance is clocked with EqrPins, laid out as `RegsPins`.
            let rtl = unsafe { Instance::new(lib, || (lib.eqr_new)(), pins) };
            Ok(RtlRegsEngine(Core {
                rtl,
                side: IoSide::new(NB_PAIRS, Some(Slots::new())),
                cycles_sink: None,
            }))
        }

        /// Clock cycles so far.
        pub fn cycles(&self) -> u64 {
            self.0.rtl.cycles
        }

        /// Holds the write or frame offered in the pins until the front end takes it, then
        /// serves io events until it is idle again. It takes an offer on an edge where it is
        /// idle and no write is offered: rx_ready as sampled last cycle may still see the
        /// write before, so wr_ready is what tells.
        fn offer(&mut self, start: u64, what: &str, frame: &[u8], io: &mut dyn EngineIo) {
            let never = || format!("RTL register front end never took {what}");
            self.0.rtl.offer(|p| p.wr_ready == 1, start, CYCLE_LIMIT, never);
            (self.0.rtl.pins.wr_valid, self.0.rtl.pins.rx_valid) = (0, 0);
            let hung = || "RTL register front end hung".to_string();
            // The front end keeps DONE to itself: it is idle again when it takes writes.
            self.0.serve(start, frame, io, |p| p.wr_ready == 1, hung);
        }

        /// One register write at the front end's port (a queue slot or one of our codes).
        fn write_port(&mut self, queue: u32, reg: u8, value: u32, io: &mut dyn EngineIo) {
            let start = self.0.rtl.cycles;
            let p = &mut self.0.rtl.pins;
            (p.wr_valid, p.wr_queue, p.wr_reg, p.wr_data) = (1, queue as u16, reg, value);
            self.offer(start, "a write", &[], io);
        }

        /// The front end's queue index (pipe slot, or 8192 + pair slot) for queue `queue`.
        fn slot_of(&mut self, queue: u32, alloc: bool) -> Option<u32> {
            let slots = self.0.side.slots.as_mut()?;
            if queue < MAX_PIPES {
                slots.pipe(queue, alloc)
            } else {
                slots.nb(queue - MAX_PIPES, alloc).map(|s| MAX_PIPES + s)
            }
        }

        fn read_port(&mut self, queue: u32, reg: u8) -> u32 {
            let rtl = &mut self.0.rtl;
            (rtl.pins.rd_queue, rtl.pins.rd_reg) = (queue as u16, reg);
            rtl.cycle();
            rtl.pins.rd_data
        }
    }

    impl RegisterFrontEnd for RtlRegsEngine {
        fn write(&mut self, queue: u32, reg: u64, value: u32, io: &mut dyn EngineIo) -> bool {
            let mut value = value;
            if queue < MAX_PIPES && reg == testbed_regs::enso::queue::RX_MEM_LOW {
                // The pair ID in the address's low bits names a pair: the RTL gets its slot.
                let nb = value & testbed_regs::enso::queue::NB_ID_MASK;
                let live = value != 0 || self.read(queue, testbed_regs::enso::queue::RX_MEM_HIGH) != 0;
                if live {
                    let slot = self.0.side.slots.as_mut().and_then(|s| s.nb(nb, true)).unwrap_or(NB_PAIRS);
                    value = (value & !testbed_regs::enso::queue::NB_ID_MASK) | slot;
                }
            }
            // A page without a slot holds zeros: a 0 written there changes nothing.
            let Some(q) = self.slot_of(queue, value != 0) else { return value == 0 };
            self.write_port(q, reg as u8, value, io);
            true
        }

        fn read(&mut self, queue: u32, reg: u64) -> u32 {
            let Some(q) = self.slot_of(queue, false) else { return 0 };
            let v = self.read_port(q, reg as u8);
            if queue < MAX_PIPES && reg == testbed_regs::enso::queue::RX_MEM_LOW {
                // Back from the pair's slot to its ID.
                let nb = self.0.side.nb_id(v & testbed_regs::enso::queue::NB_ID_MASK);
                return (v & !testbed_regs::enso::queue::NB_ID_MASK) | nb;
            }
            v
        }

        fn live(&mut self, queue: u32) -> bool {
            match self.slot_of(queue, false) {
                Some(q) => self.read_port(q, R_LIVE) & 1 == 1,
                None => false,
            }
        }

        fn live_queues(&mut self) -> Vec<u32> {
            let Some(s) = &self.0.side.slots else { return vec![] };
            let ids: Vec<u32> =
                s.pipe_id.iter().copied().chain(s.nb_id.iter().map(|j| MAX_PIPES + j)).collect();
            ids.into_iter().filter(|&q| self.live(q)).collect()
        }

        fn set_extensions(&mut self, enable_bit: bool, io: &mut dyn EngineIo) {
            self.write_port(0, R_EXT, enable_bit as u32, io);
        }

        fn prefetch_doorbell(&mut self, pipe: u32, io: &mut dyn EngineIo) -> bool {
            match self.slot_of(pipe, false) {
                Some(s) if self.live(pipe) => {
                    self.write_port(0, R_PREFETCH, s, io);
                    true
                }
                _ => false,
            }
        }
    }

    impl QueueEngine for RtlRegsEngine {
        // The front end decodes the queue pages itself: the device thread makes none of
        // these calls in register mode mmio.
        fn enable_pipe(&mut self, _: u32, _: PipeSetup) {}
        fn disable_pipe(&mut self, _: u32) {}
        fn enable_nb(&mut self, _: u32, _: NbSetup) {}
        fn disable_nb(&mut self, _: u32) {}
        fn rx_head(&mut self, _: u32, _: u32, _: &mut dyn EngineIo) {}
        fn prefetch(&mut self, pipe: u32, io: &mut dyn EngineIo) {
            self.prefetch_doorbell(pipe, io);
        }
        fn tx_tail(&mut self, _: u32, _: u32, _: &mut dyn EngineIo) -> bool {
            true
        }
        fn set_per_packet(&mut self, per_packet: bool) {
            self.write_port(0, R_MODE, per_packet as u32, &mut NoIo);
        }
        fn set_stream(&mut self, pipe: u32, stream: bool) {
            if let Some(s) = self.slot_of(pipe, stream) {
                self.write_port(0, R_STREAM, s | (stream as u32) << 31, &mut NoIo);
            }
        }
        fn rx_packet(&mut self, pipe: u32, frame: &[u8], io: &mut dyn EngineIo) -> RxOutcome {
            let Some(slot) = self.slot_of(pipe, false) else {
                io.count(c::RX_DROP_PIPE_DISABLED, 1);
                return RxOutcome::PipeDisabled;
            };
            let start = self.0.rtl.cycles;
            self.0.side.rx_drop = None;
            let p = &mut self.0.rtl.pins;
            (p.rx_valid, p.rx_pipe, p.rx_len) = (1, slot, frame.len() as u32);
            self.offer(start, "a frame", frame, io);
            // The front end keeps the call's result to itself; its drop counters tell it.
            match self.0.side.rx_drop.take() {
                None => RxOutcome::Delivered,
                Some(c::RX_DROP_PIPE_DISABLED) => RxOutcome::PipeDisabled,
                Some(c::RX_DROP_PIPE_FULL) => RxOutcome::PipeFull,
                Some(_) => RxOutcome::DmaFailed,
            }
        }
        fn front_end(&mut self) -> Option<&mut dyn RegisterFrontEnd> {
            Some(self)
        }
    }

    /// The io of calls that do no io (enabling and disabling queues).
    struct NoIo;
    impl EngineIo for NoIo {
        fn dma_write(&mut self, _: u64, _: &[u8], _: DmaClass) -> bool {
            unreachable!("configuration calls do no DMA")
        }
        fn dma_read(&mut self, _: u64, _: &mut [u8], _: DmaClass) -> bool {
            unreachable!("configuration calls do no DMA")
        }
        fn publish(&mut self, _: Published, _: u32) {}
        fn nb_rx_head(&mut self, _: u32) -> u32 {
            0
        }
        fn transmit(&mut self, _: &[u8]) {}
        fn configure(&mut self, _: &[u8; 64]) -> bool {
            false
        }
        fn count(&mut self, _: u32, _: u64) {}
    }
}

#[test]
fn the_verilated_model_is_built() {
    provisioned_for_tests();
    assert!(available());
    assert!(RtlEngine::new(&small_config()).is_ok());
    assert!(nagare_pipeline(None).is_ok());
}

#[cfg(test)]
mod tests {
    use super::*;
    use enso_nic::engine::workload::Workload;

    /// The Rust engine and the RTL, side by side on the same random workload: every call's
    /// record (events in order, answers, TX entries acted on) must be identical.
    #[test]
    fn rtl_engine_matches_the_rust_engine_on_100k_random_calls() {
        provisioned_for_tests();
        let mut rust = Workload::engine();
        let mut rtl = RtlEngine::new(&small_config()).expect("small instance");
        let (mut a, mut b) = (Workload::new(0x0e15_0e15), Workload::new(0x0e15_0e15));
        let mut events = 0;
        for call in 0..100_000 {
            let (x, y) = (a.step(&mut rust), b.step(&mut rtl));
            if x != y {
                let first = x.text.lines().zip(y.text.lines()).position(|(p, q)| p != q).unwrap_or(0);
                panic!(
                    "call {call}: first difference at line {first} of its record\nRust model:\n{}\nRTL:\n{}",
                    x.text, y.text
                );
            }
            events += x.text.lines().filter(|l| l.starts_with('O')).count();
        }
        assert!(events > 400_000, "{events} events compared");
        assert!(rtl.cycles() > 1_000_000, "{} cycles", rtl.cycles());
    }

    #[test]
    fn configurations_the_instances_do_not_have_are_refused() {
        provisioned_for_tests();
        assert!(unsupported(&EnsoConfig::default()).is_none(), "the card's ID space maps onto the slots");
        assert!(unsupported(&small_config()).is_none());
        let odd = EnsoConfig { pipe_flits: 1024, ..EnsoConfig::default() };
        assert!(RtlEngine::new(&odd).is_err());
        assert!(RtlEngine::factory(&odd, None).is_err());
    }
}

#[cfg(test)]
mod pipeline_tests {
    use super::*;
    use nagare::fabric::{Hop, StreamEntry, Tables};
    use nagare::pipeline::{Phv, Pipeline, PipelineConfig, PipelineModel};
    use nagare::workload::{self, port, Rng, BASE};
    use testbed_regs::nagare::{self as regs, reg};

    /// What the fabric uses of a ruling: the verdict; for a drop, the stream (its denied
    /// count); for a forward, the destination, egress, glue and credit too.
    fn ruling(p: &Phv) -> String {
        use nagare::pipeline::Verdict;
        match p.verdict {
            Verdict::Memory | Verdict::Undecided => "memory".into(),
            Verdict::Drop(why) => format!("drop {why} stream {:?}", p.stream),
            Verdict::Forward => {
                format!("forward {:?} {:?} {} {:?} {:?}", p.stream, p.dest, p.egress, p.glue, p.credit)
            }
        }
    }

    /// The Rust pipeline and the RTL side by side: 100 000 random headers (in and out of
    /// the windows, every requester) with the stream tables rewritten at random between
    /// them; every ruling must be the same.
    #[test]
    fn rtl_pipeline_matches_the_rust_pipeline_under_table_updates() {
        provisioned_for_tests();
        let mut rng = Rng(0x5eed_1234);
        let mut t = Tables {
            base: BASE,
            streams: vec![StreamEntry::default(); regs::STREAMS as usize],
            ports: std::iter::once(port("cpu", None)).chain(workload::ports()).collect(),
        };
        let rust = Pipeline::new(PipelineConfig::default());
        let rtl = RtlPipeline::new(None).expect("the model is loaded");
        let kinds = [reg::HOP_INGRESS, reg::HOP_STREAM, reg::HOP_GLUE, reg::HOP_EGRESS];
        let mut forwarded = 0;
        for i in 0..100_000u32 {
            if i % 500 == 0 {
                // Rewrite a few streams: graphs of 2..=6 nodes, allow lists, open or not.
                for _ in 0..3 {
                    let r = rng.next();
                    let s = (r % u64::from(regs::STREAMS)) as usize;
                    let n = 2 + (r >> 8) as usize % 5;
                    let hops = (0..n)
                        .map(|k| Hop {
                            port: (rng.next() % 5) as u32,
                            kind: if k == 0 { reg::HOP_INGRESS } else { kinds[(rng.next() % 4) as usize] },
                            pipe: (rng.next() % 64) as u32,
                            ..Hop::default()
                        })
                        .collect();
                    t.streams[s] = StreamEntry {
                        open: !(r >> 20).is_multiple_of(5),
                        hops,
                        acl: (r >> 24) as u32 & 0x1f,
                    };
                }
            }
            let (src, addr, len) = rng.header();
            let (mut a, mut b) = (Phv::new(src, addr, len), Phv::new(src, addr, len));
            rust.run(&t, &mut a);
            PipelineModel::run(&rtl, &t, &mut b);
            assert_eq!(ruling(&a), ruling(&b), "header {i}: src {src} addr {addr:#x} len {len}");
            forwarded += u32::from(a.verdict == nagare::pipeline::Verdict::Forward);
        }
        assert!(forwarded > 5_000, "{forwarded} headers forwarded: the workload must route");
    }
}
