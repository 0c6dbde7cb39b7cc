//! The Nagare client library (seed §4): configure once, then watch counters.
//!
//! [`Switch::open`] finds where the switch's stream windows sit on the bus (sysfs under
//! VFIO; a fixed address for vfio-user, which has no bus) and tells the switch. It also keeps
//! that range out of this process's IOVAs, so a device given a window address reaches the
//! switch, as with Linux p2pdma between peers behind one switch: the switch routes the
//! write before any IOMMU translation. [`Switch::open_stream`] sets a stream's policy
//! graph and allow list and opens it; from then on the devices push to each other and
//! the CPU only reads counters ([`Switch::egress`], [`Switch::denied`], [`Switch::counters`])
//! or pushes data itself ([`Switch::push`]).

use device_access::{Bar, DeviceAccess};
use testbed_regs::nagare::{self as regs, reg};

/// Where the windows are placed when the transport has no bus (vfio-user): a 2 MiB
/// aligned range far above any DMA buffer.
pub const UNBUSSED_BASE: u64 = 0x7e00_0000_0000;

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error(transparent)]
    Access(#[from] device_access::Error),
    /// Not the switch.
    #[error("not a Nagare switch: ID register reads {0:#x}")]
    NotASwitch(u32),
    /// No function with these IDs behind the switch.
    #[error("no function {0:04x}:{1:04x} behind the switch")]
    NoPort(u16, u16),
    /// The switch refused the stream's graph.
    #[error("the switch refused stream {0}'s policy graph (ERROR_STATUS {1:#x})")]
    PolicyRefused(u32, u32),
    /// A bad stream number or graph size.
    #[error("{0}")]
    Bad(String),
}

/// Result of client calls.
pub type Result<T> = std::result::Result<T, Error>;

/// One node of a policy graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// The port of the function.
    pub port: u32,
    /// `reg::HOP_*`.
    pub kind: u32,
    /// Ingress: the NIC pipe that fills the stream's window.
    pub pipe: u32,
    /// Glue: the opcode of the commands the switch writes for the device.
    pub op: u8,
    /// Glue: their state (key or model ID).
    pub state: [u8; 32],
}

/// A stream's policy graph: ingress, devices in order, egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The nodes.
    pub nodes: Vec<Node>,
}

impl Policy {
    /// NIC pipe `pipe` on `nic` → `devices` in order → the NIC's TX stream window.
    pub fn chain(nic: u32, pipe: u32, devices: &[u32]) -> Policy {
        let node = |port, kind, pipe| Node { port, kind, pipe, op: 0, state: [0; 32] };
        let mut nodes = vec![node(nic, reg::HOP_INGRESS, pipe)];
        nodes.extend(devices.iter().map(|&p| node(p, reg::HOP_STREAM, 0)));
        nodes.push(node(nic, reg::HOP_EGRESS, 0));
        Policy { nodes }
    }

    /// As [`Policy::chain`], with legacy-only devices the switch drives: each given as
    /// (port, opcode, state) for the commands it writes on the CPU's behalf.
    pub fn chain_glue(nic: u32, pipe: u32, devices: &[(u32, u8, [u8; 32])]) -> Policy {
        let mut p = Policy::chain(nic, pipe, &[]);
        let glued =
            devices.iter().map(|&(port, op, state)| Node { port, kind: reg::HOP_GLUE, pipe: 0, op, state });
        p.nodes.splice(1..1, glued);
        p
    }

    /// The ports of the graph, as an allow list.
    pub fn ports_mask(&self) -> u32 {
        self.nodes.iter().fold(0, |m, n| m | 1 << n.port)
    }
}

/// The switch, opened.
pub struct Switch {
    bar0: Bar,
    bar2: Bar,
    base: u64,
    _access: Box<dyn DeviceAccess>,
}

impl Switch {
    /// Opens the switch behind `access` and tells it where its windows are on the bus.
    pub fn open(mut access: Box<dyn DeviceAccess>) -> Result<Switch> {
        let bar0 = access.bar(regs::REG_BAR)?;
        let bar2 = access.bar(regs::WINDOW_BAR)?;
        let id = bar0.read32(reg::ID)?;
        if id != reg::ID_VALUE {
            return Err(Error::NotASwitch(id));
        }
        let base = access.bus_address(regs::WINDOW_BAR).unwrap_or(UNBUSSED_BASE);
        device_access::reserve_iova(base, regs::WINDOW_BAR_SIZE);
        bar0.write32(reg::WINDOW_BASE_LO, base as u32)?;
        bar0.write32(reg::WINDOW_BASE_HI, (base >> 32) as u32)?;
        Ok(Switch { bar0, bar2, base, _access: access })
    }

    /// The bus address of the windows.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The bus address of stream `s`'s window (what devices write to).
    pub fn window(&self, s: u32) -> u64 {
        self.base + s as u64 * regs::WINDOW_SIZE
    }

    /// The port of the function with these IDs.
    pub fn port_of(&self, vendor: u16, device: u16) -> Result<u32> {
        let want = (vendor as u32) << 16 | device as u32;
        let n = self.bar0.read32(reg::NUM_PORTS)?.min(regs::MAX_PORTS);
        for p in 1..n {
            if self.bar0.read32(reg::PORT_ID + 4 * p as u64)? == want {
                return Ok(p);
            }
        }
        Err(Error::NoPort(vendor, device))
    }

    fn select(&self, s: u32) -> Result<()> {
        if s >= regs::STREAMS {
            return Err(Error::Bad(format!("stream {s} (the switch has {})", regs::STREAMS)));
        }
        self.bar0.write32(reg::STREAM_SEL, s)?;
        Ok(())
    }

    /// Sets stream `s`'s graph and allow list (`acl`, bit per port) and opens it.
    pub fn open_stream(&mut self, s: u32, policy: &Policy, acl: u32) -> Result<()> {
        if policy.nodes.len() > regs::MAX_HOPS as usize {
            return Err(Error::Bad(format!("{} nodes (at most {})", policy.nodes.len(), regs::MAX_HOPS)));
        }
        self.select(s)?;
        let b = &self.bar0;
        b.write32(reg::STREAM_CTRL, 0)?;
        b.write32(reg::POLICY_HOPS, policy.nodes.len() as u32)?;
        for (i, n) in policy.nodes.iter().enumerate() {
            b.write32(reg::HOP_SEL, i as u32)?;
            b.write32(reg::HOP_PORT, n.port)?;
            b.write32(reg::HOP_KIND, n.kind)?;
            b.write32(reg::HOP_PIPE, n.pipe)?;
            b.write32(reg::HOP_OP, n.op as u32)?;
            for (k, w) in n.state.chunks(4).enumerate() {
                b.write32(reg::HOP_STATE + 4 * k as u64, u32::from_le_bytes([w[0], w[1], w[2], w[3]]))?;
            }
        }
        b.write32(reg::ACL, acl)?;
        b.write32(reg::STREAM_CTRL, 1)?;
        if b.read32(reg::STREAM_CTRL)? != 1 {
            return Err(Error::PolicyRefused(s, b.read32(reg::ERROR_STATUS)?));
        }
        Ok(())
    }

    /// The device addresses of glued node `node`'s command and completion rings (in the
    /// switch's memory) and their size: program the legacy device's ring with them.
    pub fn glue_ring(&self, s: u32, node: u32) -> Result<(u64, u64, u32)> {
        self.select(s)?;
        self.bar0.write32(reg::HOP_SEL, node)?;
        let lo = self.bar0.read32(reg::HOP_RING_LO)? as u64;
        let hi = self.bar0.read32(reg::HOP_RING_HI)? as u64;
        let sq = hi << 32 | lo;
        Ok((sq, sq + regs::GLUE_CQ, regs::GLUE_ENTRIES))
    }

    /// Closes stream `s`.
    pub fn close_stream(&mut self, s: u32) -> Result<()> {
        self.select(s)?;
        self.bar0.write32(reg::STREAM_CTRL, 0)?;
        Ok(())
    }

    /// Replaces stream `s`'s allow list (it may change while the stream runs).
    pub fn set_acl(&mut self, s: u32, acl: u32) -> Result<()> {
        self.select(s)?;
        self.bar0.write32(reg::ACL, acl)?;
        Ok(())
    }

    /// Writes the stream delivered to its egress.
    pub fn egress(&self, s: u32) -> Result<u64> {
        self.select(s)?;
        let lo = self.bar0.read32(reg::STREAM_EGRESS_LO)? as u64;
        let hi = self.bar0.read32(reg::STREAM_EGRESS_HI)? as u64;
        Ok(hi << 32 | lo)
    }

    /// Pushes the stream's allow list denied.
    pub fn denied(&self, s: u32) -> Result<u32> {
        self.select(s)?;
        Ok(self.bar0.read32(reg::STREAM_DENIED)?)
    }

    /// The switch's counters by name.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        Ok(self.bar0.read_counters(reg::COUNTERS, &reg::counter::NAMES)?)
    }

    /// One counter by name (0 when unknown).
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.counters()?.into_iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| v))
    }

    /// The CPU pushes `data` into stream `s` at window `offset` (seed §4.5): the switch
    /// forwards it to the stream's first device, as it would the ingress's writes.
    pub fn push(&self, s: u32, offset: u64, data: &[u8]) -> Result<()> {
        if s >= regs::STREAMS || offset + data.len() as u64 > regs::WINDOW_SIZE {
            return Err(Error::Bad(format!("push of {} bytes at {offset:#x} of stream {s}", data.len())));
        }
        self.bar2.write_bytes(s as u64 * regs::WINDOW_SIZE + offset, data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_policy_and_mask() {
        let p = Policy::chain(1, 63, &[2, 3]);
        let kinds: Vec<u32> = p.nodes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, vec![reg::HOP_INGRESS, reg::HOP_STREAM, reg::HOP_STREAM, reg::HOP_EGRESS]);
        assert_eq!(p.nodes[0].pipe, 63);
        assert_eq!(p.ports_mask(), 0b1110);
        assert_eq!(UNBUSSED_BASE % regs::WINDOW_SIZE, 0);
        let g = Policy::chain_glue(1, 63, &[(2, 1, [7; 32]), (3, 3, [0; 32])]);
        let kinds: Vec<u32> = g.nodes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, vec![reg::HOP_INGRESS, reg::HOP_GLUE, reg::HOP_GLUE, reg::HOP_EGRESS]);
        assert_eq!((g.nodes[1].op, g.nodes[1].state[0]), (1, 7));
    }
}
