//! The switch's RMT-like pipeline: a fixed sequence of match-action stages over the fields
//! of a memory-write TLP (requester port, address, length), each reading the tables and
//! writing the packet header vector ([`Phv`]) the next stage sees.
//!
//! | stage | match | action |
//! |---|---|---|
//! | address | address ∈ window range | stream, offset (else: not a stream write, to memory) |
//! | stream | stream | drop if closed |
//! | access | (stream, requester) | drop if not on the allow list |
//! | next hop | (stream, requester) | the node after the requester's in the policy graph |
//! | rewrite | next node | destination = its port's input window, offset modulo its size |
//! | credit | (stream, ingress node) | head credit for the ingress pipe |
//!
//! The remaining stages of [`PipelineConfig::stages`] are empty here (in hardware they
//! hold further tables); every stage costs [`PipelineConfig::cycles_per_stage`] cycles in
//! the timing model whether or not it matched.

use crate::fabric::{Hop, Tables};
use testbed_regs::nagare::{self as regs, reg::counter as c};

/// Pipeline geometry and clock (the timing model's inputs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Match-action stages.
    pub stages: u32,
    /// Cycles per stage.
    pub cycles_per_stage: u32,
    /// Clock (MHz).
    pub clock_mhz: u32,
}

impl Default for PipelineConfig {
    /// The seed's figure: 10 stages × 10 cycles at 3 GHz ≈ 33 ns.
    fn default() -> Self {
        PipelineConfig { stages: 10, cycles_per_stage: 10, clock_mhz: 3000 }
    }
}

impl PipelineConfig {
    /// Time for one TLP to cross the pipeline (ns).
    pub fn latency_ns(&self) -> f64 {
        self.stages as f64 * self.cycles_per_stage as f64 * 1000.0 / self.clock_mhz.max(1) as f64
    }
}

/// What the pipeline decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still being decided (no stage has ruled).
    Undecided,
    /// Not a stream write: it goes on to host memory.
    Memory,
    /// Forward to the destination.
    Forward,
    /// Dropped; the counter that says why.
    Drop(u32),
}

/// The packet header vector: the TLP's fields plus what the stages decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phv {
    /// Requester port.
    pub src: u32,
    /// Address written.
    pub addr: u64,
    /// Bytes written.
    pub len: usize,
    /// Stream matched.
    pub stream: Option<usize>,
    /// Offset inside the stream's window.
    pub offset: u64,
    /// Index of the requester's node in the stream's graph.
    pub node: Option<usize>,
    /// The next node.
    pub next: Option<Hop>,
    /// Destination: (port, offset in its input window).
    pub dest: Option<(u32, u64)>,
    /// Whether the destination is the stream's egress.
    pub egress: bool,
    /// The destination is a glued device: (stream, its node index); the switch stages
    /// the data and commands the device.
    pub glue: Option<(usize, usize)>,
    /// Head credit to return: (port, pipe, head in flits).
    pub credit: Option<(u32, u32, u32)>,
    /// The ruling.
    pub verdict: Verdict,
}

impl Phv {
    /// The vector for a write of `len` bytes at `addr` from port `src`.
    pub fn new(src: u32, addr: u64, len: usize) -> Self {
        Phv {
            src,
            addr,
            len,
            stream: None,
            offset: 0,
            node: None,
            next: None,
            dest: None,
            egress: false,
            glue: None,
            credit: None,
            verdict: Verdict::Undecided,
        }
    }

    fn decided(&self) -> bool {
        self.verdict != Verdict::Undecided
    }
}

/// One match-action stage.
pub trait Stage: Send + Sync {
    /// The stage's name.
    fn name(&self) -> &'static str;
    /// Applies the stage to `phv` (stages after a ruling do nothing).
    fn apply(&self, t: &Tables, phv: &mut Phv);
}

/// Address → stream.
pub struct MatchAddress;
impl Stage for MatchAddress {
    fn name(&self) -> &'static str {
        "address"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        let span = regs::WINDOWS_SIZE;
        match phv.addr.checked_sub(t.base) {
            Some(rel) if t.base != 0 && rel < span && rel + phv.len as u64 <= span => {
                phv.stream = Some((rel / regs::WINDOW_SIZE) as usize);
                phv.offset = rel % regs::WINDOW_SIZE;
            }
            _ => phv.verdict = Verdict::Memory,
        }
    }
}

/// Stream → open?
pub struct MatchStream;
impl Stage for MatchStream {
    fn name(&self) -> &'static str {
        "stream"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        if phv.decided() {
            return;
        }
        if !phv.stream.and_then(|s| t.streams.get(s)).is_some_and(|s| s.open) {
            phv.verdict = Verdict::Drop(c::NO_ROUTE);
        }
    }
}

/// (stream, requester) → allowed?
pub struct AccessControl;
impl Stage for AccessControl {
    fn name(&self) -> &'static str {
        "access"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        if phv.decided() {
            return;
        }
        let Some(s) = phv.stream.and_then(|s| t.streams.get(s)) else { return };
        if phv.src >= 32 || s.acl & (1 << phv.src) == 0 {
            phv.verdict = Verdict::Drop(c::ACL_DENIED);
        }
    }
}

/// (stream, requester) → next node of the graph.
pub struct NextHop;
impl Stage for NextHop {
    fn name(&self) -> &'static str {
        "next_hop"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        if phv.decided() {
            return;
        }
        let Some(s) = phv.stream.and_then(|s| t.streams.get(s)) else { return };
        let last = s.hops.len().saturating_sub(1);
        // The CPU pushes where the ingress would; a device, after its own node.
        let node = if phv.src == regs::CPU_PORT {
            Some(0)
        } else {
            s.hops[..last].iter().position(|h| h.port == phv.src)
        };
        match node {
            Some(i) => {
                phv.node = Some(i);
                phv.next = Some(s.hops[i + 1]);
                phv.egress = i + 1 == last;
            }
            None => phv.verdict = Verdict::Drop(c::NO_ROUTE),
        }
    }
}

/// Next node → destination (its port's input window, the offset modulo its size).
pub struct Rewrite;
impl Stage for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        if phv.decided() {
            return;
        }
        let Some(next) = phv.next else { return };
        if next.kind == regs::reg::HOP_GLUE {
            // Into the switch's own staging for the glued device.
            if let (Some(s), Some(n)) = (phv.stream, phv.node) {
                phv.dest = Some((next.port, phv.offset % regs::GLUE_STAGING_SIZE));
                phv.glue = Some((s, n + 1));
                phv.verdict = Verdict::Forward;
            }
            return;
        }
        match t.ports.get(next.port as usize).and_then(|p| p.input.as_ref()) {
            Some(input) => {
                phv.dest = Some((next.port, phv.offset % input.window()));
                phv.verdict = Verdict::Forward;
            }
            None => phv.verdict = Verdict::Drop(c::NO_ROUTE),
        }
    }
}

/// Ingress node with a pipe → head credit (the pipe never fills).
pub struct Credit;
impl Stage for Credit {
    fn name(&self) -> &'static str {
        "credit"
    }
    fn apply(&self, t: &Tables, phv: &mut Phv) {
        if phv.verdict != Verdict::Forward || phv.node != Some(0) || phv.src == regs::CPU_PORT {
            return;
        }
        let Some(s) = phv.stream.and_then(|s| t.streams.get(s)) else { return };
        let ingress = s.hops[0];
        if ingress.kind == regs::reg::HOP_INGRESS && ingress.port == phv.src {
            let flits = (regs::WINDOW_SIZE / 64) as u32;
            let end = (phv.offset + phv.len as u64).div_ceil(64) as u32;
            phv.credit = Some((phv.src, ingress.pipe, end % flits));
        }
    }
}

/// A stage with no table (timing only).
pub struct Empty;
impl Stage for Empty {
    fn name(&self) -> &'static str {
        "empty"
    }
    fn apply(&self, _t: &Tables, _phv: &mut Phv) {}
}

/// The tables as register writes into the RTL pipeline (rtl/nagare/nagare_pipeline.sv), in
/// its flattened layout: window base, each port's input window (log2), each stream's nodes,
/// node count, allow list and open bit (written last). Every register is listed, so the
/// writes set the whole configuration.
pub fn rtl_registers(t: &Tables) -> Vec<(u16, u32)> {
    let mut r = vec![(0x000, t.base as u32), (0x004, (t.base >> 32) as u32)];
    for p in 0..8u16 {
        let win =
            t.ports.get(p as usize).and_then(|p| p.input.as_ref()).map_or(0, |i| i.window().trailing_zeros());
        r.push((0x40 + 4 * p, win));
    }
    for s in 0..regs::STREAMS as u16 {
        let e = t.streams.get(s as usize);
        let hops = e.map_or(&[][..], |e| &e.hops[..]);
        let b = 0x100 + 0x40 * s;
        for h in 0..regs::MAX_HOPS as u16 {
            let v = hops.get(h as usize).map_or(0, |h| h.port | h.kind << 4 | h.pipe << 16);
            r.push((b + 0x10 + 4 * h, v));
        }
        r.push((b + 8, hops.len() as u32));
        r.push((b + 4, e.map_or(0, |e| e.acl)));
        r.push((b, e.is_some_and(|e| e.open) as u32));
    }
    r
}

/// What rules on a TLP header: the Rust pipeline, or another behind the same seam (the
/// RTL's, co-simulated). The fabric uses `stream`, `dest`, `egress`, `glue`, `credit` and
/// `verdict` of the vector.
pub trait PipelineModel: Send + Sync {
    /// Runs `phv` through the pipeline against tables `t`.
    fn run(&self, t: &Tables, phv: &mut Phv);
}

impl PipelineModel for Pipeline {
    fn run(&self, t: &Tables, phv: &mut Phv) {
        Pipeline::run(self, t, phv)
    }
}

/// The pipeline: its stages in order.
pub struct Pipeline {
    pub config: PipelineConfig,
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// The functional stages, padded with empty ones to `config.stages`.
    pub fn new(config: PipelineConfig) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = vec![
            Box::new(MatchAddress),
            Box::new(MatchStream),
            Box::new(AccessControl),
            Box::new(NextHop),
            Box::new(Rewrite),
            Box::new(Credit),
        ];
        while stages.len() < config.stages as usize {
            stages.push(Box::new(Empty));
        }
        Pipeline { config, stages }
    }

    /// The stages' names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs `phv` through every stage.
    pub fn run(&self, t: &Tables, phv: &mut Phv) {
        for s in &self.stages {
            s.apply(t, phv);
        }
        if phv.verdict == Verdict::Undecided {
            phv.verdict = Verdict::Drop(c::NO_ROUTE);
        }
    }
}
