//! PCI configuration space (type 0 header) with per-byte write masks.
//!
//! Semantics follow the PCI spec the way hardware implements them: every byte has a
//! read-write mask and a write-1-to-clear mask; BAR sizing falls out of the masks (the
//! size bits of a BAR are read-only zeros, so writing all ones reads back `!(size - 1)`).

use thiserror::Error;

/// Size of the configuration space we expose (conventional PCI).
pub const CONFIG_SIZE: usize = 256;

/// Standard register offsets.
pub mod offsets {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYS_VENDOR_ID: usize = 0x2c;
    pub const SUBSYS_ID: usize = 0x2e;
    pub const ROM: usize = 0x30;
    pub const CAP_PTR: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Where the MSI-X capability lives in our layout.
pub const MSIX_CAP_OFFSET: usize = 0x40;

/// Kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (takes two BAR slots).
    Mem64,
}

/// A memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BarSpec {
    /// BAR index 0..=5 (the first slot for 64-bit BARs).
    pub index: u8,
    /// Size in bytes: a power of two, at least 4 KiB.
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

impl BarSpec {
    /// A non-prefetchable 32-bit memory BAR.
    pub fn mem32(index: u8, size: u64) -> BarSpec {
        BarSpec { index, size, kind: BarKind::Mem32, prefetchable: false }
    }

    /// A non-prefetchable 64-bit memory BAR.
    pub fn mem64(index: u8, size: u64) -> BarSpec {
        BarSpec { index, size, kind: BarKind::Mem64, prefetchable: false }
    }
}

/// The MSI-X capability: where its table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MsixSpec {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

/// A configuration space that cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0}: size {1:#x} is not a power of two of at least 4 KiB")]
    BarSize(u8, u64),
    #[error("BAR {0}: index out of range (0..=5, 64-bit BARs 0..=4)")]
    BarIndex(u8),
    #[error("BAR {0}: slot already used")]
    BarOverlap(u8),
    #[error("BAR {0}: a 32-bit BAR cannot be {1:#x} bytes")]
    BarTooBig(u8, u64),
    #[error("MSI-X: {0}")]
    Msix(String),
}

impl From<ConfigError> for std::io::Error {
    fn from(e: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// A configuration-space access outside the space.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("config access at {offset:#x} (+{len}) is outside the {CONFIG_SIZE}-byte space")]
pub struct OutOfRange {
    pub offset: u64,
    pub len: usize,
}

/// Builds a [`ConfigSpace`].
#[derive(Clone, Debug)]
pub struct ConfigSpaceBuilder {
    vendor: u16,
    device: u16,
    class: u32,
    revision: u8,
    subsystem: (u16, u16),
    bars: Vec<BarSpec>,
    msix: Option<MsixSpec>,
}

impl ConfigSpaceBuilder {
    /// A function with the given vendor and device IDs.
    pub fn new(vendor: u16, device: u16) -> Self {
        ConfigSpaceBuilder {
            vendor,
            device,
            class: 0xff_00_00,
            revision: 1,
            subsystem: (vendor, device),
            bars: vec![],
            msix: None,
        }
    }

    /// 24-bit class code (class, subclass, programming interface).
    pub fn class(mut self, class: u32) -> Self {
        self.class = class & 0xff_ff_ff;
        self
    }

    /// Revision ID.
    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }

    /// Subsystem vendor and ID.
    pub fn subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.subsystem = (vendor, id);
        self
    }

    /// Adds a memory BAR.
    pub fn bar(mut self, bar: BarSpec) -> Self {
        self.bars.push(bar);
        self
    }

    /// Adds the MSI-X capability.
    pub fn msix(mut self, msix: MsixSpec) -> Self {
        self.msix = Some(msix);
        self
    }

    /// Checks the layout and builds the space.
    pub fn build(self) -> Result<ConfigSpace, ConfigError> {
        let mut cs = ConfigSpace {
            data: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            w1cmask: [0; CONFIG_SIZE],
            bars: [None; 6],
            msix: None,
        };
        cs.put16(offsets::VENDOR_ID, self.vendor);
        cs.put16(offsets::DEVICE_ID, self.device);
        cs.data[offsets::REVISION] = self.revision;
        cs.data[offsets::CLASS_PROG] = self.class as u8;
        cs.data[offsets::CLASS_PROG + 1] = (self.class >> 8) as u8;
        cs.data[offsets::CLASS_PROG + 2] = (self.class >> 16) as u8;
        cs.data[offsets::HEADER_TYPE] = 0;
        cs.put16(offsets::SUBSYS_VENDOR_ID, self.subsystem.0);
        cs.put16(offsets::SUBSYS_ID, self.subsystem.1);
        let cmd_rw = command::MEMORY | command::BUS_MASTER | command::SERR | command::INTX_DISABLE;
        cs.wmask[offsets::COMMAND..offsets::COMMAND + 2].copy_from_slice(&cmd_rw.to_le_bytes());
        // Status: detected parity error, signalled/received aborts are write-1-to-clear.
        cs.w1cmask[offsets::STATUS + 1] = 0xf9;
        cs.wmask[offsets::INTERRUPT_LINE] = 0xff;
        // No INTx: interrupt pin 0. Interrupts are MSI-X only.

        let mut used = [false; 6];
        for bar in &self.bars {
            let i = bar.index as usize;
            let slots = if bar.kind == BarKind::Mem64 { 2 } else { 1 };
            if i + slots > 6 {
                return Err(ConfigError::BarIndex(bar.index));
            }
            if !bar.size.is_power_of_two() || bar.size < 4096 {
                return Err(ConfigError::BarSize(bar.index, bar.size));
            }
            if bar.kind == BarKind::Mem32 && bar.size > 1 << 31 {
                return Err(ConfigError::BarTooBig(bar.index, bar.size));
            }
            if used[i..i + slots].iter().any(|u| *u) {
                return Err(ConfigError::BarOverlap(bar.index));
            }
            used[i..i + slots].iter_mut().for_each(|u| *u = true);
            let flags: u32 = match bar.kind {
                BarKind::Mem32 => 0,
                BarKind::Mem64 => 0b100,
            } | if bar.prefetchable { 0b1000 } else { 0 };
            let off = offsets::BAR0 + 4 * i;
            cs.put32(off, flags);
            let mask = !(bar.size - 1);
            cs.wmask[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
            if bar.kind == BarKind::Mem64 {
                cs.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
            }
            cs.bars[i] = Some(*bar);
        }

        if let Some(m) = self.msix {
            if m.vectors == 0 || m.vectors > 2048 {
                return Err(ConfigError::Msix(format!("{} vectors (1..=2048)", m.vectors)));
            }
            for (what, bar, off, len) in [
                ("table", m.table_bar, m.table_offset, 16 * m.vectors as u64),
                ("PBA", m.pba_bar, m.pba_offset, (m.vectors as u64).div_ceil(64) * 8),
            ] {
                let spec = cs
                    .bars
                    .get(bar as usize)
                    .copied()
                    .flatten()
                    .ok_or_else(|| ConfigError::Msix(format!("{what} BAR {bar} does not exist")))?;
                if off % 8 != 0 || off as u64 + len > spec.size {
                    return Err(ConfigError::Msix(format!(
                        "{what} at {off:#x} (+{len:#x}) does not fit BAR {bar} or is unaligned"
                    )));
                }
            }
            let c = MSIX_CAP_OFFSET;
            cs.data[offsets::CAP_PTR] = c as u8;
            cs.data[offsets::STATUS] |= 1 << 4; // capabilities list
            cs.data[c] = CAP_ID_MSIX;
            cs.data[c + 1] = 0;
            cs.put16(c + 2, m.vectors - 1);
            cs.wmask[c + 3] = 0xc0; // enable (15) and function mask (14)
            cs.put32(c + 4, m.table_offset | m.table_bar as u32);
            cs.put32(c + 8, m.pba_offset | m.pba_bar as u32);
            cs.msix = Some(m);
        }
        Ok(cs)
    }
}

/// A function's configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    w1cmask: [u8; CONFIG_SIZE],
    bars: [Option<BarSpec>; 6],
    msix: Option<MsixSpec>,
}

impl ConfigSpace {
    fn put16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }

    fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap_or_default())
    }

    fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRange> {
        let end = offset.checked_add(len as u64).filter(|e| *e <= CONFIG_SIZE as u64);
        match end {
            Some(end) => Ok(offset as usize..end as usize),
            None => Err(OutOfRange { offset, len }),
        }
    }

    /// Reads bytes at `offset`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), OutOfRange> {
        let r = Self::range(offset, out.len())?;
        out.copy_from_slice(&self.data[r]);
        Ok(())
    }

    /// Writes bytes at `offset`, honouring read-only, read-write and write-1-to-clear bits.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), OutOfRange> {
        let r = Self::range(offset, bytes.len())?;
        for (i, &v) in r.zip(bytes) {
            let w = self.wmask[i];
            let c = self.w1cmask[i];
            self.data[i] = ((self.data[i] & !w) | (v & w)) & !(v & c);
        }
        Ok(())
    }

    /// The raw bytes (for snapshots and debugging).
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.data
    }

    /// Vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.get16(offsets::VENDOR_ID)
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        self.get16(offsets::DEVICE_ID)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get16(offsets::COMMAND)
    }

    /// Whether the function may master the bus (issue DMA).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// The BARs, by index.
    pub fn bars(&self) -> impl Iterator<Item = BarSpec> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// The BAR at `index`, if one starts there.
    pub fn bar(&self, index: u8) -> Option<BarSpec> {
        self.bars.get(index as usize).copied().flatten()
    }

    /// The bus address software assigned to BAR `index` (None when unassigned).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let spec = self.bar(index)?;
        let off = offsets::BAR0 + 4 * index as usize;
        let lo = (self.get32(off) & !0xf) as u64;
        let hi = match spec.kind {
            BarKind::Mem64 => self.get32(off + 4) as u64,
            BarKind::Mem32 => 0,
        };
        let addr = (hi << 32) | lo;
        // The all-ones sizing pattern (as it reads back) is not an address.
        let sizing = match spec.kind {
            BarKind::Mem64 => !(spec.size - 1),
            BarKind::Mem32 => !(spec.size - 1) & 0xffff_ffff,
        };
        (addr != 0 && addr != sizing).then_some(addr)
    }

    /// The MSI-X capability, if any.
    pub fn msix(&self) -> Option<MsixSpec> {
        self.msix
    }

    /// MSI-X enable bit.
    pub fn msix_enabled(&self) -> bool {
        self.msix.is_some() && self.get16(MSIX_CAP_OFFSET + 2) & 0x8000 != 0
    }

    /// MSI-X function mask bit.
    pub fn msix_masked(&self) -> bool {
        self.msix.is_some() && self.get16(MSIX_CAP_OFFSET + 2) & 0x4000 != 0
    }

    /// Back to power-on state: command, status and BAR addresses cleared.
    pub fn reset(&mut self) {
        for i in 0..CONFIG_SIZE {
            // Only software-writable bits change; clear them.
            self.data[i] &= !self.wmask[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigSpace {
        ConfigSpaceBuilder::new(0x1172, 0x5301)
            .class(0x02_00_00)
            .bar(BarSpec { index: 0, size: 4096, kind: BarKind::Mem32, prefetchable: false })
            .bar(BarSpec { index: 2, size: 1 << 30, kind: BarKind::Mem64, prefetchable: true })
            .msix(MsixSpec { vectors: 4, table_bar: 0, table_offset: 0x800, pba_bar: 0, pba_offset: 0xc00 })
            .build()
            .unwrap()
    }

    fn r32(cs: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0; 4];
        cs.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn w32(cs: &mut ConfigSpace, off: u64, v: u32) {
        cs.write(off, &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn identity_is_read_only() {
        let mut cs = sample();
        w32(&mut cs, 0, 0xdead_beef);
        assert_eq!(r32(&cs, 0), 0x5301_1172);
        assert_eq!(r32(&cs, 8) >> 8, 0x02_00_00);
    }

    #[test]
    fn bar_sizing_32_and_64() {
        let mut cs = sample();
        w32(&mut cs, 0x10, 0xffff_ffff);
        assert_eq!(r32(&cs, 0x10), 0xffff_f000);
        assert_eq!(cs.bar_address(0), None, "sizing pattern is not an address");
        w32(&mut cs, 0x18, 0xffff_ffff);
        w32(&mut cs, 0x1c, 0xffff_ffff);
        assert_eq!(r32(&cs, 0x18), 0xc000_000c, "1 GiB, 64-bit, prefetchable");
        assert_eq!(r32(&cs, 0x1c), 0xffff_ffff);
        w32(&mut cs, 0x10, 0xfe00_0000);
        w32(&mut cs, 0x18, 0x4000_0000);
        w32(&mut cs, 0x1c, 0x1);
        assert_eq!(cs.bar_address(0), Some(0xfe00_0000));
        assert_eq!(cs.bar_address(2), Some(0x1_4000_0000));
        // Unused BAR slots stay zero whatever is written.
        w32(&mut cs, 0x14, 0xffff_ffff);
        assert_eq!(r32(&cs, 0x14), 0);
        w32(&mut cs, 0x30, 0xffff_ffff);
        assert_eq!(r32(&cs, 0x30), 0, "no expansion ROM");
    }

    #[test]
    fn command_mask_and_status_w1c() {
        let mut cs = sample();
        cs.write(4, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(
            cs.command(),
            command::MEMORY | command::BUS_MASTER | command::SERR | command::INTX_DISABLE
        );
        assert!(cs.bus_master());
        cs.data[offsets::STATUS + 1] = 0x80; // a detected parity error
        cs.write(offsets::STATUS as u64, &0x8000u16.to_le_bytes()).unwrap();
        assert_eq!(cs.data[offsets::STATUS + 1], 0, "write 1 clears");
        assert_eq!(cs.data[offsets::STATUS] & 0x10, 0x10, "cap list bit is read-only");
    }

    #[test]
    fn msix_capability() {
        let mut cs = sample();
        assert_eq!(cs.data[offsets::CAP_PTR], 0x40);
        assert_eq!(r32(&cs, 0x40) & 0x7ff_00ff, 0x003_0011, "id and table size - 1");
        assert!(!cs.msix_enabled());
        cs.write(0x42, &0xffffu16.to_le_bytes()).unwrap();
        assert!(cs.msix_enabled() && cs.msix_masked());
        assert_eq!(cs.get16(0x42) & 0x7ff, 3, "table size is read-only");
        assert_eq!(r32(&cs, 0x44), 0x800);
        assert_eq!(r32(&cs, 0x48), 0xc00);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut cs = sample();
        let mut b = [0; 4];
        assert!(cs.read(254, &mut b).is_err());
        assert!(cs.write(u64::MAX, &b).is_err());
    }

    #[test]
    fn reset_clears_writable_state() {
        let mut cs = sample();
        w32(&mut cs, 0x10, 0xfe00_0000);
        cs.write(4, &0x6u16.to_le_bytes()).unwrap();
        cs.reset();
        assert_eq!(cs.command(), 0);
        assert_eq!(cs.bar_address(0), None);
        assert_eq!(cs.vendor_id(), 0x1172);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let b = |index, size, kind| {
            ConfigSpaceBuilder::new(1, 2)
                .bar(BarSpec { index, size, kind, prefetchable: false })
                .build()
                .map(|_| ())
        };
        assert_eq!(b(0, 3000, BarKind::Mem32), Err(ConfigError::BarSize(0, 3000)));
        assert_eq!(b(5, 4096, BarKind::Mem64), Err(ConfigError::BarIndex(5)));
        assert_eq!(b(0, 1 << 32, BarKind::Mem32), Err(ConfigError::BarTooBig(0, 1 << 32)));
        let msix = ConfigSpaceBuilder::new(1, 2)
            .bar(BarSpec { index: 0, size: 4096, kind: BarKind::Mem32, prefetchable: false })
            .msix(MsixSpec { vectors: 300, table_bar: 0, table_offset: 0, pba_bar: 0, pba_offset: 0 })
            .build();
        assert!(matches!(msix, Err(ConfigError::Msix(_))));
    }

    #[test]
    fn layout_snapshot() {
        let cs = sample();
        let dump: Vec<String> = cs
            .bytes()
            .chunks(16)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|b| *b != 0))
            .map(|(i, c)| {
                let hex: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
                format!("{:02x}: {}", i * 16, hex.join(" "))
            })
            .collect();
        insta::assert_snapshot!(dump.join("\n"));
    }
}
