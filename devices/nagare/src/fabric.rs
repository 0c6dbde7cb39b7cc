//! The fabric: the switch's ports, its stream tables, and the routing of device writes.
//!
//! Every device behind the switch reaches host memory through a [`FabricSpace`] (its
//! upstream port): a write whose address falls in a stream window goes through the
//! [`Pipeline`] and is forwarded to the next device's input instead of memory; anything
//! else passes through to the device's own DMA space. A posted write cannot fail from the
//! writer's point of view, so a dropped one is only counted.

use crate::pipeline::{Phv, Pipeline, PipelineConfig, Verdict};
use pcie_model::device_counters::DeviceCounters;
use pcie_model::{Counters, DmaError, DmaSpace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use testbed_regs::nagare::{self as regs, reg, reg::counter as c};

/// A device's input window, as the fabric delivers to it.
pub trait Ingress: Send + Sync {
    /// Delivers a write at `offset` of the window; false when the device refused it.
    fn push(&self, offset: u64, data: &[u8]) -> bool;
    /// The window's size (offsets are taken modulo it).
    fn window(&self) -> u64;
}

/// Writes a head credit into a NIC's pipe register: (pipe, head in flits).
pub type CreditFn = Arc<dyn Fn(u32, u32) + Send + Sync>;

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
    tables: RwLock<Tables>,
    pipeline: Pipeline,
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
    /// Dropped by the switch (counted).
    Dropped,
}

impl Fabric {
    /// A fabric with the CPU on port 0 and no devices yet.
    pub fn new(config: PipelineConfig) -> Arc<Fabric> {
        let tables = Tables {
            base: 0,
            streams: vec![StreamEntry::default(); regs::STREAMS as usize],
            ports: vec![Port { name: "cpu".into(), ..Port::default() }],
        };
        Arc::new(Fabric {
            tables: RwLock::new(tables),
            pipeline: Pipeline::new(config),
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
        self.counters.clear();
        for s in &self.stats {
            s.egress.store(0, Ordering::Relaxed);
            s.denied.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `addr` falls in the stream windows.
    pub fn claims(&self, addr: u64) -> bool {
        let base = self.tables().base;
        base != 0 && addr >= base && addr - base < regs::WINDOW_BAR_SIZE
    }

    /// Routes a write of `data` at `addr` from port `src`.
    pub fn route(&self, src: u32, addr: u64, data: &[u8]) -> Routed {
        let t = self.tables();
        let mut phv = Phv::new(src, addr, data.len());
        self.pipeline.run(&t, &mut phv);
        match phv.verdict {
            Verdict::Memory | Verdict::Undecided => Routed::Memory,
            Verdict::Drop(why) => {
                self.counters.add(why, 1);
                if why == c::ACL_DENIED {
                    if let Some(s) = phv.stream.and_then(|s| self.stats.get(s)) {
                        s.denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Routed::Dropped
            }
            Verdict::Forward => {
                let Some((port, offset)) = phv.dest else { return Routed::Dropped };
                let Some(p) = t.ports.get(port as usize) else { return Routed::Dropped };
                let delivered = p.input.as_ref().is_some_and(|i| i.push(offset, data));
                if src == regs::CPU_PORT {
                    self.counters.add(c::CPU_PUSHES, 1);
                }
                if !delivered {
                    self.counters.add(c::DELIVERY_DROPS, 1);
                    return Routed::Dropped;
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
                Routed::Delivered(p.name.clone())
            }
        }
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
        // Register writes to the devices of the graph now come from the switch.
        let hops = t.streams[s].hops.clone();
        for h in hops {
            if let Some(cn) = t.ports.get(h.port as usize).and_then(|p| p.counters.as_ref()) {
                if h.kind == reg::HOP_INGRESS {
                    cn.set_mmio_source(Some("nagare"));
                }
            }
        }
        true
    }

    /// Closes stream `s`.
    pub fn close_stream(&self, s: usize) {
        close_stream(&mut self.tables_mut(), s);
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
    let ingress = hops[0].kind == reg::HOP_INGRESS && attached(&hops[0]);
    let middle = hops[1..n - 1].iter().all(|h| h.kind == reg::HOP_STREAM && attached(h) && takes(h));
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
        if self.fabric.claims(addr) {
            // Stream windows are write-only.
            self.fabric.counters.add(c::WINDOW_READS, 1);
            return Err(DmaError::Unmapped { addr, len: buf.len() });
        }
        self.mem.read(addr, buf).map(|()| None)
    }

    fn write_routed(&self, addr: u64, data: &[u8]) -> Result<Option<Arc<str>>, DmaError> {
        match self.fabric.route(self.port, addr, data) {
            Routed::Memory => self.mem.write(addr, data).map(|()| None),
            Routed::Delivered(name) => Ok(Some(name)),
            Routed::Dropped => Ok(Some("nagare".into())),
        }
    }
}
