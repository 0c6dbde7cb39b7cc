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
//! Built when Verilator is installed (see build.rs); otherwise [`RtlEngine::factory`]
//! says so.

use enso_nic::{EngineFactory, EnsoConfig};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The RTL instance's parameters (the module's defaults).
pub const PIPES: u32 = 64;
/// Notification-buffer pairs.
pub const NB_PAIRS: u32 = 16;
/// Pipe ring size in flits.
pub const PIPE_FLITS: u32 = 1 << 15;
/// Notification ring entries.
pub const NOTIF_ENTRIES: u32 = 1 << 14;

/// What a build without the verilated models says when asked for one.
#[cfg(not(verilated))]
const NOT_BUILT: &str = "this build has no RTL co-simulation: Verilator was not installed when it was built, \
                         or the `verilator` feature of rtl-cosim was off (apt-get install verilator, then rebuild)";

/// Whether this build has the verilated model.
pub fn available() -> bool {
    cfg!(verilated)
}

/// The small instance, for the differential workload (`enso_nic::engine::workload`).
pub fn small_config() -> EnsoConfig {
    use enso_nic::engine::workload as w;
    EnsoConfig {
        num_pipes: w::PIPES,
        num_nb_pairs: w::NBS,
        pipe_flits: w::PIPE_FLITS,
        notif_entries: w::ENTRIES,
    }
}

/// Whether `cfg` is the small instance's.
fn is_small(cfg: &EnsoConfig) -> bool {
    let s = small_config();
    (cfg.num_pipes, cfg.num_nb_pairs, cfg.pipe_flits, cfg.notif_entries)
        == (s.num_pipes, s.num_nb_pairs, s.pipe_flits, s.notif_entries)
}

/// Why a configuration cannot run on the RTL instances, if it cannot.
pub fn unsupported(cfg: &EnsoConfig) -> Option<String> {
    let want = (PIPES, NB_PAIRS, PIPE_FLITS, NOTIF_ENTRIES);
    let got = (cfg.num_pipes, cfg.num_nb_pairs, cfg.pipe_flits, cfg.notif_entries);
    (got != want && !is_small(cfg)).then(|| {
        format!(
            "the RTL engine is built for {PIPES} pipes of {PIPE_FLITS} flits and {NB_PAIRS} pairs of \
             {NOTIF_ENTRIES}-entry rings; the NIC asks for {} pipes of {} flits and {} pairs of {} entries",
            got.0, got.2, got.1, got.3
        )
    })
}

#[cfg(verilated)]
pub use pipeline::RtlPipeline;
#[cfg(verilated)]
pub use sim::RtlEngine;

/// The Nagare switch's pipeline as the RTL (rtl/nagare/nagare_pipeline.sv), for
/// [`nagare::Fabric::with_model`]; with `headers`, every header it rules on is counted
/// there.
pub fn nagare_pipeline(
    headers: Option<Arc<AtomicU64>>,
) -> Result<Box<dyn nagare::pipeline::PipelineModel>, String> {
    #[cfg(verilated)]
    {
        Ok(Box::new(RtlPipeline::new(headers)))
    }
    #[cfg(not(verilated))]
    {
        let _ = headers;
        Err(NOT_BUILT.into())
    }
}

/// What [`RtlEngine`] needs to know when the model is not built.
#[cfg(not(verilated))]
pub struct RtlEngine;

#[cfg(not(verilated))]
impl RtlEngine {
    /// Always an error here: this build has no verilated model.
    pub fn factory(_cfg: &EnsoConfig, _cycles: Option<Arc<AtomicU64>>) -> Result<EngineFactory, String> {
        Err(NOT_BUILT.into())
    }
}

#[cfg(verilated)]
mod pipeline {
    use nagare::fabric::Tables;
    use nagare::pipeline::{Phv, PipelineModel, Verdict};
    use std::collections::HashMap;
    use std::ffi::c_void;
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

    extern "C" {
        fn npl_new() -> *mut c_void;
        fn npl_free(m: *mut c_void);
        fn npl_cycle(m: *mut c_void, pins: *mut Pins);
    }

    struct Model(*mut c_void);

    // SAFETY: a plain C++ object without thread affinity, used under the Mutex below.
    unsafe impl Send for Model {}

    impl Drop for Model {
        fn drop(&mut self) {
            // SAFETY: from npl_new, freed once here.
            unsafe { npl_free(self.0) }
        }
    }

    struct Sim {
        model: Model,
        pins: Pins,
        /// The configuration registers as last written.
        regs: HashMap<u16, u32>,
    }

    impl Sim {
        fn cycle(&mut self) {
            // SAFETY: live model; `pins` is laid out as NplPins.
            unsafe { npl_cycle(self.model.0, &mut self.pins) }
        }
    }

    /// The verilated Nagare pipeline behind [`PipelineModel`]: the fabric's tables are
    /// written into its configuration registers (only what changed), each header goes in,
    /// and the verdict comes out `STAGES` cycles later.
    pub struct RtlPipeline {
        sim: Mutex<Sim>,
        headers: Option<Arc<AtomicU64>>,
    }

    impl RtlPipeline {
        /// A fresh pipeline, reset.
        pub fn new(headers: Option<Arc<AtomicU64>>) -> Self {
            // SAFETY: npl_new has no preconditions; the result is owned by `Model`.
            let model = Model(unsafe { npl_new() });
            let mut sim = Sim { model, pins: Pins { rst: 1, ..Pins::default() }, regs: HashMap::new() };
            sim.cycle();
            sim.cycle();
            sim.pins.rst = 0;
            sim.cycle();
            RtlPipeline { sim: Mutex::new(sim), headers }
        }
    }

    impl PipelineModel for RtlPipeline {
        fn run(&self, t: &Tables, phv: &mut Phv) {
            let mut sim = self.sim.lock().unwrap_or_else(|e| e.into_inner());
            for (addr, value) in nagare::pipeline::rtl_registers(t) {
                if sim.regs.get(&addr) != Some(&value) {
                    (sim.pins.cfg_we, sim.pins.cfg_addr, sim.pins.cfg_wdata) = (1, addr, value);
                    sim.cycle();
                    sim.regs.insert(addr, value);
                }
            }
            sim.pins.cfg_we = 0;
            (sim.pins.in_valid, sim.pins.in_src, sim.pins.in_addr, sim.pins.in_len) =
                (1, phv.src as u8, phv.addr, phv.len.min(u16::MAX as usize) as u16);
            sim.cycle();
            sim.pins.in_valid = 0;
            let mut waited = 0;
            while sim.pins.out_valid == 0 {
                sim.cycle();
                waited += 1;
                assert!(waited < 1000, "the RTL pipeline gave no verdict");
            }
            if let Some(h) = &self.headers {
                h.fetch_add(1, Ordering::Relaxed);
            }
            let p = sim.pins;
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

#[cfg(verilated)]
mod sim {
    use super::*;
    use enso_nic::engine::{EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RxOutcome, TxFramer};
    use pcie_model::DmaClass;
    use std::ffi::c_void;
    use testbed_regs::enso::NOTIFICATION_SIZE;

    /// The pins, as csrc/engine.cpp lays them out.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Pins {
        cmd_a: u64,
        ent_signal: u64,
        ent_addr: u64,
        ent_len: u64,
        cmd_q: u32,
        cmd_b: u32,
        cmd_c: u32,
        cmd_d: u32,
        resp_value: u32,
        rst: u8,
        cmd_valid: u8,
        cmd_op: u8,
        io_ready: u8,
        resp_valid: u8,
        resp_ok: u8,
        ent_valid: u8,
        cmd_ready: u8,
        io_valid: u8,
        io_kind: u8,
        io_a: u64,
        io_q: u32,
        io_b: u32,
        io_c: u32,
        io_d: u32,
        io_e: u32,
    }

    extern "C" {
        fn eqe_new(small: i32) -> *mut c_void;
        fn eqe_free(m: *mut c_void, small: i32);
        fn eqe_cycle(m: *mut c_void, small: i32, pins: *mut Pins);
    }

    /// The C++ model object, and which instance it is.
    struct Model(*mut c_void, i32);

    // SAFETY: the model is a plain C++ object with no thread affinity; `RtlEngine` owns it
    // alone and uses it from one thread at a time (`&mut self`).
    unsafe impl Send for Model {}

    impl Drop for Model {
        fn drop(&mut self) {
            // SAFETY: the pointer came from eqe_new and is freed once, here.
            unsafe { eqe_free(self.0, self.1) }
        }
    }

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
    /// A call that takes longer than this many cycles means the RTL hung.
    const CYCLE_LIMIT: u64 = 10_000_000;

    /// The verilated engine behind the [`QueueEngine`] seam.
    pub struct RtlEngine {
        model: Model,
        pins: Pins,
        framer: TxFramer,
        /// TX entries fetched by the current TX_TAIL call, back to back.
        fetch: Vec<u8>,
        /// The current send's data.
        data: Vec<u8>,
        /// The entry the RTL asked for last (a CONFIGURE refers to it).
        entry: usize,
        /// Clock cycles so far.
        pub cycles: u64,
        /// Where the cycles of each call are added (shared by a NIC's engines).
        cycles_sink: Option<Arc<AtomicU64>>,
    }

    impl RtlEngine {
        /// A fresh engine (held in reset for two cycles) for `cfg`, which must match the
        /// RTL instance ([`unsupported`]).
        pub fn new(cfg: &EnsoConfig) -> Result<RtlEngine, String> {
            if let Some(why) = unsupported(cfg) {
                return Err(why);
            }
            let small = i32::from(is_small(cfg));
            // SAFETY: eqe_new has no preconditions; the result is owned by `Model`.
            let model = Model(unsafe { eqe_new(small) }, small);
            let mut e = RtlEngine {
                model,
                pins: Pins { rst: 1, io_ready: 1, ..Pins::default() },
                framer: TxFramer::new(cfg.num_nb_pairs),
                fetch: Vec::new(),
                data: Vec::new(),
                entry: 0,
                cycles: 0,
                cycles_sink: None,
            };
            e.cycle();
            e.cycle();
            e.pins.rst = 0;
            e.cycle();
            Ok(e)
        }

        /// Engines for a NIC configured as `cfg` ([`enso_nic::EnsoNic::with_engines`]): a
        /// fresh RTL instance at power-on and at every reset. With `cycles`, every engine
        /// adds the clock cycles it ran there.
        pub fn factory(cfg: &EnsoConfig, cycles: Option<Arc<AtomicU64>>) -> Result<EngineFactory, String> {
            if let Some(why) = unsupported(cfg) {
                return Err(why);
            }
            Ok(Arc::new(move |cfg: &EnsoConfig| -> Box<dyn QueueEngine> {
                // The NIC's configuration does not change after it is made: checked above.
                let mut e = RtlEngine::new(cfg).expect("the NIC's configuration fits the RTL instance");
                e.cycles_sink = cycles.clone();
                Box::new(e)
            }))
        }

        fn cycle(&mut self) {
            // SAFETY: the model pointer is live (owned by self.model) and `pins` is a
            // repr(C) struct laid out as csrc/engine.cpp's EqePins.
            unsafe { eqe_cycle(self.model.0, self.model.1, &mut self.pins) };
            self.cycles += 1;
        }

        fn answer(&mut self, ok: bool, value: u32) {
            self.pins.resp_valid = 1;
            self.pins.resp_ok = ok as u8;
            self.pins.resp_value = value;
            self.cycle();
            self.pins.resp_valid = 0;
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
            let p = &mut self.pins;
            (p.cmd_valid, p.cmd_op, p.cmd_q, p.cmd_a, p.cmd_b, p.cmd_c, p.cmd_d) = (1, op, q, a, b, c, d);
            let start = self.cycles;
            // The engine takes a command on an edge where it is idle (cmd_ready).
            loop {
                let ready = self.pins.cmd_ready == 1;
                self.cycle();
                if ready {
                    break;
                }
                assert!(self.cycles - start < CYCLE_LIMIT, "RTL queue engine never took command {op}");
            }
            self.pins.cmd_valid = 0;
            loop {
                if self.pins.io_valid == 0 {
                    self.cycle();
                    assert!(self.cycles - start < CYCLE_LIMIT, "RTL queue engine hung in command {op}");
                    continue;
                }
                let (kind, q, a, b, c, d, e) = (
                    self.pins.io_kind,
                    self.pins.io_q,
                    self.pins.io_a,
                    self.pins.io_b,
                    self.pins.io_c,
                    self.pins.io_d,
                    self.pins.io_e,
                );
                // The event is taken on the next edge (io_ready is always high).
                self.cycle();
                let class = if c == 0 { DmaClass::Data } else { DmaClass::Metadata };
                match kind {
                    IO_DMA_WRITE => {
                        let ok = match class {
                            DmaClass::Data => match frame.get(d as usize..(d + b) as usize) {
                                Some(bytes) => io.dma_write(a, bytes, class),
                                None => false,
                            },
                            _ if b as usize == NOTIFICATION_SIZE - 8 => {
                                let mut body = [0u8; NOTIFICATION_SIZE - 8];
                                body[..8].copy_from_slice(&u64::from(d).to_le_bytes());
                                body[8..16].copy_from_slice(&u64::from(e).to_le_bytes());
                                io.dma_write(a, &body, class)
                            }
                            _ => io.dma_write(a, &u64::from(d).to_le_bytes()[..(b as usize).min(8)], class),
                        };
                        self.answer(ok, 0);
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
                        self.answer(ok, 0);
                    }
                    IO_PUBLISH => {
                        let reg = match c {
                            0 => Published::PipeRxTail(q),
                            1 => Published::NbRxTail(q),
                            _ => Published::NbTxHead(q),
                        };
                        io.publish(reg, b);
                    }
                    IO_NB_RX_HEAD => {
                        let v = io.nb_rx_head(q);
                        self.answer(true, v);
                    }
                    IO_COUNT => io.count(c, u64::from(b)),
                    IO_CONFIGURE => {
                        let mut n = [0u8; NOTIFICATION_SIZE];
                        if let Some(e) = self
                            .fetch
                            .get(self.entry * NOTIFICATION_SIZE..(self.entry + 1) * NOTIFICATION_SIZE)
                        {
                            n.copy_from_slice(e);
                        }
                        io.configure(&n);
                    }
                    IO_ENTRY_REQ => {
                        self.entry = b as usize;
                        let e = self
                            .fetch
                            .get(self.entry * NOTIFICATION_SIZE..(self.entry + 1) * NOTIFICATION_SIZE);
                        let w = |at: usize| {
                            e.map_or(0, |e| u64::from_le_bytes(e[at..at + 8].try_into().unwrap_or_default()))
                        };
                        self.pins.ent_valid = 1;
                        (self.pins.ent_signal, self.pins.ent_addr, self.pins.ent_len) = (w(0), w(8), w(16));
                        self.cycle();
                        self.pins.ent_valid = 0;
                    }
                    IO_TX_DATA => {
                        let n = (b as usize).min(self.data.len());
                        self.framer.push(q, &self.data[..n], io);
                    }
                    IO_DONE => {
                        if let Some(sink) = &self.cycles_sink {
                            sink.fetch_add(self.cycles - start, std::sync::atomic::Ordering::Relaxed);
                        }
                        return b;
                    }
                    other => panic!("RTL queue engine: unknown io event {other}"),
                }
            }
        }
    }

    impl QueueEngine for RtlEngine {
        fn enable_pipe(&mut self, pipe: u32, s: PipeSetup) {
            self.call(OP_ENABLE_PIPE, pipe, s.base, s.nb, s.head, s.tail, &[], &mut NoIo);
        }
        fn disable_pipe(&mut self, pipe: u32) {
            self.call(OP_DISABLE_PIPE, pipe, 0, 0, 0, 0, &[], &mut NoIo);
        }
        fn enable_nb(&mut self, nb: u32, s: NbSetup) {
            self.call(OP_NB_TX_RING, nb, s.tx_ring, 0, 0, 0, &[], &mut NoIo);
            self.call(OP_ENABLE_NB, nb, s.rx_ring, s.rx_head, s.rx_tail, s.tx_head, &[], &mut NoIo);
            self.framer.reset(nb);
        }
        fn disable_nb(&mut self, nb: u32) {
            self.call(OP_DISABLE_NB, nb, 0, 0, 0, 0, &[], &mut NoIo);
            self.framer.reset(nb);
        }
        fn set_per_packet(&mut self, per_packet: bool) {
            self.call(OP_PER_PACKET, 0, 0, per_packet as u32, 0, 0, &[], &mut NoIo);
        }
        fn set_stream(&mut self, pipe: u32, stream: bool) {
            self.call(OP_SET_STREAM, pipe, 0, stream as u32, 0, 0, &[], &mut NoIo);
        }
        fn rx_packet(&mut self, pipe: u32, frame: &[u8], io: &mut dyn EngineIo) -> RxOutcome {
            match self.call(OP_RX_PACKET, pipe, 0, frame.len() as u32, 0, 0, frame, io) {
                0 => RxOutcome::Delivered,
                1 => RxOutcome::PipeDisabled,
                2 => RxOutcome::PipeFull,
                _ => RxOutcome::DmaFailed,
            }
        }
        fn rx_head(&mut self, pipe: u32, head: u32, io: &mut dyn EngineIo) {
            self.call(OP_RX_HEAD, pipe, 0, head, 0, 0, &[], io);
        }
        fn prefetch(&mut self, pipe: u32, io: &mut dyn EngineIo) {
            self.call(OP_PREFETCH, pipe, 0, 0, 0, 0, &[], io);
        }
        fn tx_tail(&mut self, nb: u32, tail: u32, io: &mut dyn EngineIo) -> bool {
            self.fetch.clear();
            self.call(OP_TX_TAIL, nb, 0, tail, 0, 0, &[], io) == 1
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

/// The co-simulation is part of the test suite: without Verilator this fails rather than
/// letting the differential tests below vanish.
#[test]
fn the_verilated_model_is_built() {
    assert!(
        available(),
        "the RTL co-simulation was not built: install Debian's verilator (./ci/test.sh does) and rebuild"
    );
}

#[cfg(all(test, verilated))]
mod tests {
    use super::*;
    use enso_nic::engine::workload::Workload;

    /// The Rust engine and the RTL, side by side on the same random workload: every call's
    /// record (events in order, answers, TX entries acted on) must be identical.
    #[test]
    fn rtl_engine_matches_the_rust_engine_on_100k_random_calls() {
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
        assert!(rtl.cycles > 1_000_000, "{} cycles", rtl.cycles);
    }

    #[test]
    fn configurations_the_instances_do_not_have_are_refused() {
        assert!(unsupported(&EnsoConfig::default()).is_none());
        assert!(unsupported(&small_config()).is_none());
        let odd = EnsoConfig { num_pipes: 32, ..EnsoConfig::default() };
        assert!(RtlEngine::new(&odd).is_err());
        assert!(RtlEngine::factory(&odd, None).is_err());
    }
}

#[cfg(all(test, verilated))]
mod pipeline_tests {
    use super::*;
    use nagare::fabric::{Hop, Ingress, Port, StreamEntry, Tables};
    use nagare::pipeline::{Phv, Pipeline, PipelineConfig, PipelineModel};
    use testbed_regs::nagare::{self as regs, reg};

    struct Window(u64);
    impl Ingress for Window {
        fn push(&self, _: u64, _: &[u8]) -> bool {
            true
        }
        fn window(&self) -> u64 {
            self.0
        }
    }

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
        let mut x: u64 = 0x5eed_1234;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const BASE: u64 = 0x40_0000_0000;
        let port = |name: &str, win: Option<u64>| Port {
            name: name.into(),
            input: win.map(|w| Arc::new(Window(w)) as Arc<dyn Ingress>),
            ..Port::default()
        };
        let mut t = Tables {
            base: BASE,
            streams: vec![StreamEntry::default(); regs::STREAMS as usize],
            ports: vec![
                port("cpu", None),
                port("nic", Some(1 << 15)),
                port("crypto", Some(1 << 16)),
                port("ml", Some(1 << 16)),
                port("legacy", None),
            ],
        };
        let rust = Pipeline::new(PipelineConfig::default());
        let rtl = RtlPipeline::new(None);
        let kinds = [reg::HOP_INGRESS, reg::HOP_STREAM, reg::HOP_GLUE, reg::HOP_EGRESS];
        let mut forwarded = 0;
        for i in 0..100_000u32 {
            if i % 500 == 0 {
                // Rewrite a few streams: graphs of 2..=6 nodes, allow lists, open or not.
                for _ in 0..3 {
                    let r = next();
                    let s = (r % u64::from(regs::STREAMS)) as usize;
                    let n = 2 + (r >> 8) as usize % 5;
                    let hops = (0..n)
                        .map(|k| Hop {
                            port: (next() % 5) as u32,
                            kind: if k == 0 { reg::HOP_INGRESS } else { kinds[(next() % 4) as usize] },
                            pipe: (next() % 64) as u32,
                            ..Hop::default()
                        })
                        .collect();
                    t.streams[s] =
                        StreamEntry { open: (r >> 20) % 5 != 0, hops, acl: (r >> 24) as u32 & 0x1f };
                }
            }
            let r = next();
            let src = (r & 7) as u32;
            let stream = (r >> 3) % (u64::from(regs::STREAMS) + 2);
            let len = 1 + ((r >> 8) & 2047) as usize;
            let mut addr = BASE + stream * regs::WINDOW_SIZE + ((r >> 20) & 0x1f_ffff);
            if (r >> 44) & 15 == 0 {
                addr = 0x1000 + ((r >> 48) & 0xffff);
            }
            let (mut a, mut b) = (Phv::new(src, addr, len), Phv::new(src, addr, len));
            rust.run(&t, &mut a);
            PipelineModel::run(&rtl, &t, &mut b);
            assert_eq!(ruling(&a), ruling(&b), "header {i}: src {src} addr {addr:#x} len {len}");
            forwarded += u32::from(a.verdict == nagare::pipeline::Verdict::Forward);
        }
        assert!(forwarded > 5_000, "{forwarded} headers forwarded: the workload must route");
    }
}
