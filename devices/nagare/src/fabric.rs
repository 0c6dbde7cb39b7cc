//! The fabric: the switch's ports, its stream tables, and the routing of device writes.
//!
//! Every device behind the switch reaches host memory through a [`FabricSpace`] (its
//! upstream port): a write whose address falls in a stream window goes through the
//! [`Pipeline`] and is forwarded to the next device's input instead of memory; anything
//! else passes through to the device's own DMA space. A write the switch does not deliver
//! (its allow list denied it, the stream has no route for it, or the next hop refused it)
//! is counted by the switch under its reason and refused to the writer as
//! [`DmaError::Denied`]: the writer's counters and the trace show it as denied, never as a
//! routed write.

use crate::pipeline::{Phv, Pipeline, PipelineConfig, PipelineModel, Verdict};
use pcie_model::device_counters::DeviceCounters;
use pcie_model::{Counters, DmaError, DmaSpace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use testbed_regs::nagare::{self as regs, reg, reg::counter as c};
use testbed_regs::record::{Assembler, NotARecord};

/// A device's input window, as the fabric delivers to it.
pub trait Ingress: Send + Sync {
    /// Delivers a write at `offset` of the window; false when the device refused it.
    fn push(&self, offset: u64, data: &[u8]) -> bool;
    /// The window's size (offsets are taken modulo it).
    fn window(&self) -> u64;
}

/// Writes a head credit into a NIC's pipe register: (pipe, head in flits).
pub type CreditFn = Arc<dyn Fn(u32, u32) + Send + Sync>;
/// Writes a legacy device's submission tail (its doorbell register).
pub type DoorbellFn = Arc<dyn Fn(u32) + Send + Sync>;

/// A port of the switch and the function behind it.
#[derive(Clone, Default)]
pub struct Port {
    /// The function's name in traces ("nic", "crypto", ...).
    pub name: Arc<str>,
    /// `vendor << 16 | device` (the port table the driver reads).
    pub pci_id: u32,
    /// Its input window, if it takes pushes.
    pub input: Option<Arc<dyn Ingress>>,
    /// How to return head credits to it, if it has pipes the switch consumes.
    pub credits: Option<CreditFn>,
    /// How to ring its command ring's doorbell, if it has one (a glued device).
    pub doorbell: Option<DoorbellFn>,
    /// Its PCIe counters: the trace labels the register writes the switch makes on its
    /// behalf (doorbells, credits) as coming from the switch.
    pub counters: Option<Arc<Counters>>,
}

/// One node of a stream's policy graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    /// The port.
    pub port: u32,
    /// `reg::HOP_*`.
    pub kind: u32,
    /// Ingress: the pipe the NIC fills.
    pub pipe: u32,
    /// Glue: the opcode of the commands the switch writes.
    pub op: u32,
    /// Glue: the commands' state (key or model ID).
    pub state: [u8; 32],
}

/// One stream.
#[derive(Clone, Debug, Default)]
pub struct StreamEntry {
    /// Open (routing).
    pub open: bool,
    /// The graph, ingress first, egress last.
    pub hops: Vec<Hop>,
    /// Allow list: bit `p` lets port `p` push.
    pub acl: u32,
}

/// The switch's tables.
#[derive(Clone, Default)]
pub struct Tables {
    /// Bus address of the window BAR (0: not set, nothing is routed).
    pub base: u64,
    /// Streams.
    pub streams: Vec<StreamEntry>,
    /// Ports; index 0 is the CPU.
    pub ports: Vec<Port>,
}

/// Per-stream statistics.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Writes delivered to the egress.
    pub egress: AtomicU64,
    /// Pushes the allow list denied.
    pub denied: AtomicU64,
}

/// Counters of the switch.
pub type SwitchCounters = DeviceCounters<{ c::N }>;

/// The fabric.
pub struct Fabric {
    /// The switch's own name in traces (what its memory and drops answer as).
    name: Arc<str>,
    tables: RwLock<Tables>,
    /// Glued devices' state, by (stream, node).
    glue: std::sync::Mutex<std::collections::HashMap<(usize, usize), Glue>>,
    pipeline: Pipeline,
    /// What rules on each header: `pipeline` unless another model was given.
    model: Option<Box<dyn PipelineModel>>,
    /// The switch's own counters.
    pub counters: SwitchCounters,
    /// Per stream.
    pub stats: Vec<StreamStats>,
}

/// What became of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Not a stream write: it goes to memory.
    Memory,
    /// Delivered to the named function.
    Delivered(Arc<str>),
    /// Refused by the switch, delivered nowhere; the switch counter (`reg::counter::*`,
    /// already incremented) that says why: `ACL_DENIED`, `NO_ROUTE` or `DELIVERY_DROPS`.
    Dropped(u32),
}

impl Fabric {
    /// A fabric with the CPU on port 0 and no devices yet.
    pub fn new(config: PipelineConfig) -> Arc<Fabric> {
        Self::build(config, None)
    }

    /// As [`Fabric::new`], with `model` ruling on every header instead of the Rust
    /// pipeline (which still gives the timing model its stages).
    pub fn with_model(config: PipelineConfig, model: Box<dyn PipelineModel>) -> Arc<Fabric> {
        Self::build(config, Some(model))
    }

    fn build(config: PipelineConfig, model: Option<Box<dyn PipelineModel>>) -> Arc<Fabric> {
        let tables = Tables {
            base: 0,
            streams: vec![StreamEntry::default(); regs::STREAMS as usize],
            ports: vec![Port { name: "cpu".into(), ..Port::default() }],
        };
        Arc::new(Fabric {
            name: "nagare".into(),
            tables: RwLock::new(tables),
            glue: Default::default(),
            pipeline: Pipeline::new(config),
            model,
            counters: SwitchCounters::default(),
            stats: (0..regs::STREAMS).map(|_| StreamStats::default()).collect(),
        })
    }

    /// The tables, for reading.
    pub fn tables(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The tables, for programming.
    pub fn tables_mut(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Attaches `port` to the next free port number and returns it.
    pub fn attach(&self, port: Port) -> u32 {
        let mut t = self.tables_mut();
        t.ports.push(port);
        (t.ports.len() - 1) as u32
    }

    /// Clears the streams and the window base (a reset of the management function);
    /// ports stay attached.
    pub fn reset(&self) {
        let mut t = self.tables_mut();
        for s in 0..t.streams.len() {
            close_stream(&mut t, s);
        }
        t.base = 0;
        drop(t);
        self.glue.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.counters.clear();
        for s in &self.stats {
            s.egress.store(0, Ordering::Relaxed);
            s.denied.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `addr` falls in the switch's BAR2 (stream windows and glue memory).
    pub fn claims(&self, addr: u64) -> bool {
        let base = self.tables().base;
        base != 0 && addr >= base && addr - base < regs::WINDOW_BAR_SIZE
    }

    /// Routes a write of `data` at `addr` from port `src`.
    pub fn route(&self, src: u32, addr: u64, data: &[u8]) -> Routed {
        let t = self.tables();
        let mut phv = Phv::new(src, addr, data.len());
        match &self.model {
            Some(m) => m.run(&t, &mut phv),
            None => self.pipeline.run(&t, &mut phv),
        }
        match phv.verdict {
            Verdict::Memory | Verdict::Undecided => Routed::Memory,
            Verdict::Drop(why) => {
                self.counters.add(why, 1);
                if why == c::ACL_DENIED {
                    if let Some(s) = phv.stream.and_then(|s| self.stats.get(s)) {
                        s.denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Routed::Dropped(why)
            }
            Verdict::Forward => {
                let no_route = || {
                    self.counters.add(c::NO_ROUTE, 1);
                    Routed::Dropped(c::NO_ROUTE)
                };
                let Some((port, offset)) = phv.dest else { return no_route() };
                let Some(p) = t.ports.get(port as usize) else { return no_route() };
                let delivered = match phv.glue {
                    Some(node) => self.glue_push(&t, node, offset, data),
                    None => p.input.as_ref().is_some_and(|i| i.push(offset, data)),
                };
                if src == regs::CPU_PORT {
                    self.counters.add(c::CPU_PUSHES, 1);
                }
                if !delivered {
                    self.counters.add(c::DELIVERY_DROPS, 1);
                    return Routed::Dropped(c::DELIVERY_DROPS);
                }
                self.counters.add(c::ROUTED, 1);
                self.counters.add(c::ROUTED_BYTES, data.len() as u64);
                if phv.egress {
                    if let Some(s) = phv.stream.and_then(|s| self.stats.get(s)) {
                        s.egress.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some((cport, pipe, head)) = phv.credit {
                    if let Some(f) = t.ports.get(cport as usize).and_then(|p| p.credits.as_ref()) {
                        f(pipe, head);
                        self.counters.add(c::CREDITS, 1);
                    }
                }
                if phv.glue.is_some() {
                    // The data landed in the switch's staging memory.
                    return Routed::Delivered(self.name.clone());
                }
                Routed::Delivered(p.name.clone())
            }
        }
    }

    /// The bus address of glue region (`s`, `n`).
    fn glue_addr(&self, t: &Tables, s: usize, n: usize) -> u64 {
        t.base + regs::GLUE_SRAM + (s * regs::MAX_HOPS as usize + n) as u64 * regs::GLUE_REGION
    }

    /// The (stream, node) and offset of a glue memory address.
    fn glue_slot(&self, addr: u64) -> Option<((usize, usize), u64)> {
        let base = self.tables().base;
        let rel = addr.checked_sub(base + regs::GLUE_SRAM)?;
        let region = (rel / regs::GLUE_REGION) as usize;
        let per = regs::MAX_HOPS as usize;
        (rel < regs::WINDOWS_SIZE).then_some(((region / per, region % per), rel % regs::GLUE_REGION))
    }

    /// Stages a write for glued node `node` and commands the device for every record
    /// now complete; false when refused (out of order, too far ahead, stream gone).
    fn glue_push(&self, t: &Tables, node: (usize, usize), offset: u64, data: &[u8]) -> bool {
        let mut glue = self.glue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = glue.get_mut(&node) else { return false };
        if !g.accept(offset, data) {
            return false;
        }
        let region = self.glue_addr(t, node.0, node.1);
        let window = t.base + node.0 as u64 * regs::WINDOW_SIZE;
        let doorbell = t.ports.get(g.port as usize).and_then(|p| p.doorbell.clone());
        while let Some(rec) = g.next_record() {
            match g.command(&rec, region, window) {
                Some(tail) => {
                    self.counters.add(c::GLUE_COMMANDS, 1);
                    if let Some(d) = &doorbell {
                        d(tail);
                    }
                }
                None => self.counters.add(c::GLUE_DROPS, 1),
            }
        }
        if g.malformed {
            g.malformed = false;
            self.counters.add(c::GLUE_DROPS, 1);
        }
        true
    }

    /// A device reads glue memory (its descriptors and input); false when the address
    /// is no glued device's.
    pub fn glue_read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some((node, off)) = self.glue_slot(addr) else { return false };
        let glue = self.glue.lock().unwrap_or_else(|e| e.into_inner());
        match glue.get(&node).and_then(|g| g.mem.get(off as usize..off as usize + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    /// A device writes glue memory (its completions); false when the address is no glued
    /// device's.
    pub fn glue_write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((node, off)) = self.glue_slot(addr) else { return false };
        let mut glue = self.glue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = glue.get_mut(&node) else { return false };
        let Some(dst) = g.mem.get_mut(off as usize..off as usize + data.len()) else { return false };
        dst.copy_from_slice(data);
        let errors = g.reap();
        drop(glue);
        if errors > 0 {
            self.counters.add(c::GLUE_ERRORS, errors);
        }
        true
    }

    /// Checks stream `s`'s graph and opens it; false (counted as BAD_POLICY) when the
    /// graph is not ingress, streaming devices, egress over attached ports.
    pub fn open_stream(&self, s: usize) -> bool {
        let mut t = self.tables_mut();
        let base_ok = t.base != 0 && t.base.is_multiple_of(regs::WINDOW_SIZE);
        let ok = base_ok && t.streams.get(s).is_some_and(|st| valid_graph(&st.hops, &t.ports));
        if !ok {
            drop(t);
            self.counters.add(c::BAD_POLICY, 1);
            return false;
        }
        t.streams[s].open = true;
        // Register writes to the devices of the graph (credits, doorbells) now come from
        // the switch.
        let hops = t.streams[s].hops.clone();
        let mut glue = self.glue.lock().unwrap_or_else(|e| e.into_inner());
        for (n, h) in hops.iter().enumerate() {
            if let Some(cn) = t.ports.get(h.port as usize).and_then(|p| p.counters.as_ref()) {
                if h.kind == reg::HOP_INGRESS || h.kind == reg::HOP_GLUE {
                    cn.set_mmio_source(Some("nagare"));
                }
            }
            if h.kind == reg::HOP_GLUE {
                glue.insert((s, n), Glue::new(h));
            }
        }
        true
    }

    /// The bus address of glued node (`s`, `n`)'s command ring.
    pub fn glue_ring(&self, s: usize, n: usize) -> u64 {
        self.glue_addr(&self.tables(), s, n)
    }

    /// Closes stream `s`.
    pub fn close_stream(&self, s: usize) {
        close_stream(&mut self.tables_mut(), s);
        self.glue.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.0 != s);
    }
}

fn close_stream(t: &mut Tables, s: usize) {
    let Some(st) = t.streams.get_mut(s) else { return };
    let was_open = std::mem::replace(&mut st.open, false);
    let hops = st.hops.clone();
    if was_open {
        for h in hops {
            if let Some(cn) = t.ports.get(h.port as usize).and_then(|p| p.counters.as_ref()) {
                cn.set_mmio_source(None);
            }
        }
    }
}

/// A graph is ingress → streaming devices → egress over attached ports, every device
/// node and the egress taking pushes, no device twice.
pub fn valid_graph(hops: &[Hop], ports: &[Port]) -> bool {
    let n = hops.len();
    if !(2..=regs::MAX_HOPS as usize).contains(&n) {
        return false;
    }
    let attached = |h: &Hop| (h.port as usize) < ports.len() && h.port != regs::CPU_PORT;
    let takes = |h: &Hop| ports.get(h.port as usize).is_some_and(|p| p.input.is_some());
    let rings = |h: &Hop| ports.get(h.port as usize).is_some_and(|p| p.doorbell.is_some());
    let ingress = hops[0].kind == reg::HOP_INGRESS && attached(&hops[0]);
    let device = |h: &Hop| match h.kind {
        reg::HOP_STREAM => takes(h),
        reg::HOP_GLUE => rings(h),
        _ => false,
    };
    let middle = hops[1..n - 1].iter().all(|h| attached(h) && device(h));
    let egress = hops[n - 1].kind == reg::HOP_EGRESS && attached(&hops[n - 1]) && takes(&hops[n - 1]);
    let distinct = (1..n - 1).all(|i| hops[1..i].iter().all(|h| h.port != hops[i].port));
    ingress && middle && egress && distinct
}

/// A device's upstream port: its DMA goes through the fabric before host memory.
pub struct FabricSpace {
    fabric: Arc<Fabric>,
    port: u32,
    mem: Arc<dyn DmaSpace>,
}

impl FabricSpace {
    /// The space of the device on `port`, over its own memory `mem`.
    pub fn new(fabric: Arc<Fabric>, port: u32, mem: Arc<dyn DmaSpace>) -> Self {
        FabricSpace { fabric, port, mem }
    }
}

impl DmaSpace for FabricSpace {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.read_routed(addr, buf).map(|_| ())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.write_routed(addr, data).map(|_| ())
    }

    fn read_routed(&self, addr: u64, buf: &mut [u8]) -> Result<Option<Arc<str>>, DmaError> {
        if self.fabric.glue_read(addr, buf) {
            return Ok(Some(self.fabric.name.clone()));
        }
        if self.fabric.claims(addr) {
            // Stream windows are write-only.
            self.fabric.counters.add(c::WINDOW_READS, 1);
            return Err(DmaError::Unmapped { addr, len: buf.len() });
        }
        self.mem.read(addr, buf).map(|()| None)
    }

    fn write_routed(&self, addr: u64, data: &[u8]) -> Result<Option<Arc<str>>, DmaError> {
        if self.fabric.glue_write(addr, data) {
            return Ok(Some(self.fabric.name.clone()));
        }
        match self.fabric.route(self.port, addr, data) {
            Routed::Memory => self.mem.write(addr, data).map(|()| None),
            Routed::Delivered(name) => Ok(Some(name)),
            // Refused, not routed: the writer counts and traces it as denied.
            Routed::Dropped(_) => {
                Err(DmaError::Denied { addr, len: data.len(), by: self.fabric.name.to_string() })
            }
        }
    }
}

/// The switch's side of a glued (legacy-only) device: its rings and input staging in the
/// switch's memory, and the bookkeeping a driver would keep.
struct Glue {
    port: u32,
    op: u8,
    state: [u8; 32],
    /// The glue region: command ring, completion ring, staging, bounce.
    mem: Vec<u8>,
    /// The records being written into the staging ring.
    records: Assembler,
    /// Bytes that did not parse as a record were dropped.
    malformed: bool,
    tail: u32,
    in_flight: u32,
    cq_head: u32,
    phase: u8,
    tag: u32,
    /// Where the next output goes in the stream's window.
    out: u64,
}

impl Glue {
    fn new(h: &Hop) -> Glue {
        Glue {
            port: h.port,
            op: h.op as u8,
            state: h.state,
            mem: vec![0; regs::GLUE_REGION as usize],
            records: Assembler::default(),
            malformed: false,
            tail: 0,
            in_flight: 0,
            cq_head: 0,
            phase: 1,
            tag: 0,
            out: 0,
        }
    }

    /// As a device's stream window ([`Assembler::accept`] over the staging ring).
    fn accept(&mut self, offset: u64, data: &[u8]) -> bool {
        self.records.accept(offset, data, regs::GLUE_STAGING_SIZE)
    }

    /// The next complete record (64-byte aligned in the stream) and its stream offset.
    fn next_record(&mut self) -> Option<(u64, Vec<u8>)> {
        self.records.next_record().unwrap_or_else(|NotARecord| {
            self.malformed = true;
            None
        })
    }

    /// Stages `rec` and writes its descriptor; the new tail, or None when the ring is full.
    fn command(&mut self, (at, rec): &(u64, Vec<u8>), region: u64, window: u64) -> Option<u32> {
        use testbed_regs::accel::desc;
        if self.in_flight + 1 >= regs::GLUE_ENTRIES {
            return None;
        }
        let size = regs::GLUE_STAGING_SIZE;
        let pos = at % size;
        let src_off =
            if pos + rec.len() as u64 <= size { regs::GLUE_STAGING + pos } else { regs::GLUE_BOUNCE };
        self.mem[src_off as usize..src_off as usize + rec.len()].copy_from_slice(rec);
        // Outputs follow one another on 64-byte boundaries of the window; an output never
        // straddles the window's end.
        let out_len = if self.op == desc::OP_INFER { 128 } else { (rec.len() as u64).next_multiple_of(64) };
        if self.out % regs::WINDOW_SIZE + out_len > regs::WINDOW_SIZE {
            self.out = self.out.next_multiple_of(regs::WINDOW_SIZE);
        }
        let dst = window + self.out % regs::WINDOW_SIZE;
        self.out += out_len;
        let mut d = [0u8; desc::SIZE];
        d[desc::OPCODE] = self.op;
        self.tag = self.tag.wrapping_add(1);
        d[desc::TAG..desc::TAG + 4].copy_from_slice(&self.tag.to_le_bytes());
        d[desc::SRC_ADDR..desc::SRC_ADDR + 8].copy_from_slice(&(region + src_off).to_le_bytes());
        d[desc::SRC_LEN..desc::SRC_LEN + 4].copy_from_slice(&(rec.len() as u32).to_le_bytes());
        d[desc::DST_CAP..desc::DST_CAP + 4].copy_from_slice(&(out_len as u32).to_le_bytes());
        d[desc::DST_ADDR..desc::DST_ADDR + 8].copy_from_slice(&dst.to_le_bytes());
        d[desc::STATE..desc::STATE + 32].copy_from_slice(&self.state);
        let slot = self.tail as usize * desc::SIZE;
        self.mem[slot..slot + desc::SIZE].copy_from_slice(&d);
        self.tail = (self.tail + 1) % regs::GLUE_ENTRIES;
        self.in_flight += 1;
        Some(self.tail)
    }

    /// Consumes the completions the device wrote; returns how many reported an error.
    fn reap(&mut self) -> u64 {
        use testbed_regs::accel::cqe;
        let mut errors = 0;
        while self.in_flight > 0 {
            let e = regs::GLUE_CQ as usize + self.cq_head as usize * cqe::SIZE;
            if self.mem[e + cqe::PHASE] != self.phase {
                break;
            }
            let status = u16::from_le_bytes([self.mem[e + cqe::STATUS], self.mem[e + cqe::STATUS + 1]]);
            errors += (status != testbed_regs::accel::status::OK) as u64;
            self.in_flight -= 1;
            self.cq_head = (self.cq_head + 1) % regs::GLUE_ENTRIES;
            if self.cq_head == 0 {
                self.phase ^= 1;
            }
        }
        errors
    }
}
