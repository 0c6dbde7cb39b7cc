//! The switch's management function: a PCI function whose BAR0 programs the fabric
//! (window base, policy graphs, allow lists) and exposes its counters, and whose BAR2 is
//! the stream windows, where the CPU pushes (seed §4.5).

use crate::fabric::{Fabric, Hop};
use pcie_model::config::{BarSpec, ConfigSpace, ConfigSpaceBuilder};
use pcie_model::regs::dword;
use pcie_model::{BarBacking, Counters, DeviceContext, PciDevice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use testbed_regs::nagare::{self as regs, reg, reg::counter as c};

/// The management function.
pub struct Switch {
    config: ConfigSpace,
    fabric: Arc<Fabric>,
    pcie: Arc<Counters>,
    stream_sel: u32,
    hop_sel: u32,
}

impl Switch {
    /// The management function of `fabric`.
    pub fn new(fabric: Arc<Fabric>) -> std::io::Result<Switch> {
        let config = ConfigSpaceBuilder::new(regs::VENDOR_ID, regs::DEVICE_ID)
            .class(regs::CLASS_CODE)
            .bar(BarSpec::mem32(regs::REG_BAR, regs::REG_BAR_SIZE))
            .bar(BarSpec::mem64(regs::WINDOW_BAR, regs::WINDOW_BAR_SIZE))
            .build()?;
        Ok(Switch { config, fabric, pcie: Arc::new(Counters::default()), stream_sel: 0, hop_sel: 0 })
    }

    /// The fabric.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    fn read32(&self, off: u64) -> u32 {
        let f = &self.fabric;
        let t = f.tables();
        let s = self.stream_sel as usize;
        let stream = t.streams.get(s);
        let hop = stream.and_then(|st| st.hops.get(self.hop_sel as usize)).copied().unwrap_or_default();
        let stats = f.stats.get(s);
        let pc = f.pipeline().config;
        match off {
            reg::ID => reg::ID_VALUE,
            reg::VERSION => reg::VERSION_VALUE,
            reg::NUM_STREAMS => regs::STREAMS,
            reg::NUM_PORTS => t.ports.len() as u32,
            reg::STAGES => pc.stages,
            reg::CYCLES_PER_STAGE => pc.cycles_per_stage,
            reg::CLOCK_MHZ => pc.clock_mhz,
            reg::WINDOW_BASE_LO => t.base as u32,
            reg::WINDOW_BASE_HI => (t.base >> 32) as u32,
            reg::ERROR_STATUS => f.counters.error_status(c::FIRST_ERROR),
            o if (reg::PORT_ID..reg::PORT_ID + 4 * regs::MAX_PORTS as u64).contains(&o) => {
                t.ports.get(((o - reg::PORT_ID) / 4) as usize).map_or(0, |p| p.pci_id)
            }
            reg::STREAM_SEL => self.stream_sel,
            reg::HOP_SEL => self.hop_sel,
            reg::POLICY_HOPS => stream.map_or(0, |st| st.hops.len() as u32),
            reg::HOP_PORT => hop.port,
            reg::HOP_KIND => hop.kind,
            reg::HOP_PIPE => hop.pipe,
            reg::HOP_OP => hop.op,
            reg::HOP_RING_LO | reg::HOP_RING_HI => {
                drop(t);
                let a = f.glue_ring(s, self.hop_sel as usize);
                if off == reg::HOP_RING_LO {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            o if (reg::HOP_STATE..reg::HOP_STATE + 32).contains(&o) => {
                let i = (o - reg::HOP_STATE) as usize;
                u32::from_le_bytes(hop.state[i..i + 4].try_into().unwrap_or_default())
            }
            reg::STREAM_CTRL => stream.is_some_and(|st| st.open) as u32,
            reg::ACL => stream.map_or(0, |st| st.acl),
            reg::STREAM_EGRESS_LO => stats.map_or(0, |x| x.egress.load(Ordering::Relaxed) as u32),
            reg::STREAM_EGRESS_HI => stats.map_or(0, |x| (x.egress.load(Ordering::Relaxed) >> 32) as u32),
            reg::STREAM_DENIED => stats.map_or(0, |x| x.denied.load(Ordering::Relaxed) as u32),
            o if (reg::COUNTERS..reg::COUNTERS + 8 * c::N as u64).contains(&o) => {
                f.counters.reg_word(o - reg::COUNTERS)
            }
            _ => 0,
        }
    }

    /// Applies a register write; false when refused.
    fn write32(&mut self, off: u64, v: u32) -> bool {
        let f = self.fabric.clone();
        let s = self.stream_sel as usize;
        let open = f.tables().streams.get(s).is_some_and(|st| st.open);
        let set_hop = |update: &dyn Fn(&mut Hop)| -> bool {
            let mut t = f.tables_mut();
            match t.streams.get_mut(s).and_then(|st| st.hops.get_mut(self.hop_sel as usize)) {
                Some(h) => {
                    update(h);
                    true
                }
                None => false,
            }
        };
        match off {
            reg::WINDOW_BASE_LO | reg::WINDOW_BASE_HI => {
                let mut t = f.tables_mut();
                if t.streams.iter().any(|st| st.open) {
                    return false;
                }
                let base = if off == reg::WINDOW_BASE_LO {
                    (t.base & !0xffff_ffff) | v as u64
                } else {
                    (t.base & 0xffff_ffff) | (v as u64) << 32
                };
                // The whole BAR2 must fit below 2^64 (a BAR cannot wrap the address
                // space): every address the fabric derives from the base is then in range.
                if base.checked_add(regs::WINDOW_BAR_SIZE).is_none() {
                    return false;
                }
                t.base = base;
                true
            }
            reg::STREAM_SEL if v < regs::STREAMS => {
                self.stream_sel = v;
                true
            }
            reg::HOP_SEL if v < regs::MAX_HOPS => {
                self.hop_sel = v;
                true
            }
            reg::POLICY_HOPS if !open && v <= regs::MAX_HOPS => {
                f.tables_mut().streams[s].hops.resize(v as usize, Hop::default());
                true
            }
            reg::HOP_PORT if !open && v < regs::MAX_PORTS => set_hop(&|h| h.port = v),
            reg::HOP_KIND if !open && (reg::HOP_INGRESS..=reg::HOP_GLUE).contains(&v) => {
                set_hop(&|h| h.kind = v)
            }
            reg::HOP_PIPE if !open => set_hop(&|h| h.pipe = v),
            reg::HOP_OP if !open => set_hop(&|h| h.op = v),
            o if !open && (reg::HOP_STATE..reg::HOP_STATE + 32).contains(&o) => {
                let i = (o - reg::HOP_STATE) as usize;
                set_hop(&|h| h.state[i..i + 4].copy_from_slice(&v.to_le_bytes()))
            }
            reg::ACL => {
                // Allow lists may change while the stream runs (revoking a device).
                f.tables_mut().streams[s].acl = v;
                true
            }
            reg::STREAM_CTRL if v == 1 => {
                // A refused graph is counted as BAD_POLICY, not as a bad register write.
                if !open {
                    f.open_stream(s);
                }
                true
            }
            reg::STREAM_CTRL if v == 0 => {
                f.close_stream(s);
                true
            }
            reg::COUNTERS_CLEAR if v == 1 => {
                f.counters.clear();
                true
            }
            _ => false,
        }
    }
}

impl PciDevice for Switch {
    fn name(&self) -> &str {
        "nagare"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_backing(&self, _index: u8) -> BarBacking {
        BarBacking::Trapped
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match index {
            regs::REG_BAR if data.len() <= 8 && offset < regs::REG_BAR_SIZE => {
                pcie_model::regs::read_words(offset, data, |w| self.read32(w));
            }
            regs::WINDOW_BAR => {
                self.fabric.counters.add(c::WINDOW_READS, 1);
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        let ok = match index {
            regs::REG_BAR => dword(offset, data).is_some_and(|v| self.write32(offset, v)),
            regs::WINDOW_BAR if offset + data.len() as u64 <= regs::WINDOW_BAR_SIZE => {
                // A CPU push: the window's bus address is what the pipeline matches.
                let base = self.fabric.tables().base;
                self.fabric.route(regs::CPU_PORT, base.wrapping_add(offset), data);
                true
            }
            _ => false,
        };
        if !ok {
            self.fabric.counters.add(c::BAD_REGISTER_WRITES, 1);
            self.pcie.bad_register_write();
        }
    }

    fn attach(&mut self, _ctx: DeviceContext) {}

    fn detach(&mut self) {}

    fn reset(&mut self) {
        self.fabric.reset();
        self.stream_sel = 0;
        self.hop_sel = 0;
    }

    fn counters(&self) -> Arc<Counters> {
        self.pcie.clone()
    }
}
