//! `DeviceAccess`: how a driver reaches its device, whatever carries it.
//!
//! Two transports implement it:
//! - [`vfio::VfioDevice`]: Linux VFIO type1 (in a QEMU guest behind intel-iommu, or on a
//!   real host with the FPGA);
//! - [`vfio_user::VfioUserDevice`]: a vfio-user client talking straight to the device
//!   server's socket, DMA-mapping its own memfd memory (native tests and benchmarks).
//!
//! Both hand out the same things: BARs (memory-mapped where the device allows it,
//! register reads/writes otherwise), DMA memory with IOVAs, and interrupt eventfds.

pub mod bar;
pub mod irq;
pub mod mem;
pub mod vfio;
pub mod vfio_user;

pub use bar::Bar;
pub use irq::Interrupt;
pub use mem::{DmaBuffer, DmaMapper, SharedMem};
/// The volatile accessors [`SharedMem::volatile`] hands out.
pub use vm_memory;

use std::io;

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No PCI device with the vendor/device ID was found.
    #[error("no PCI device {vendor:04x}:{device:04x} found in /sys/bus/pci/devices")]
    NoDevice { vendor: u16, device: u16 },
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The vfio-user server refused or failed a request.
    #[error("vfio-user: {0}")]
    VfioUser(String),
    /// The device does not have the requested BAR or it is unusable.
    #[error("BAR {index}: {why}")]
    Bar { index: u8, why: String },
    /// A register access outside a BAR.
    #[error("access at offset {offset:#x} (+{len}) is outside BAR {index} ({size} bytes)")]
    OutOfBar { index: u8, offset: u64, len: usize, size: u64 },
    /// The IOVA space of the transport is used up.
    #[error("out of IOVA space for a {0}-byte mapping")]
    IovaExhausted(usize),
}

impl Error {
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> Self {
        Error::Os { what: what.into(), source }
    }

    pub(crate) fn last_os(what: impl Into<String>) -> Self {
        Error::os(what, io::Error::last_os_error())
    }
}

/// Result of a transport operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Options for DMA memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaOptions {
    /// Back the memory with 2 MiB huge pages when the system has them (falls back to 4 KiB
    /// pages silently; [`DmaBuffer::huge`] tells which one was used).
    pub huge: bool,
    /// Map the memory twice back to back in virtual memory, so data that wraps the end of
    /// a ring reads contiguously (the Ensō pipe trick). The IOVA mapping covers one copy.
    pub mirrored: bool,
    /// Alignment of the IOVA (a power of two; 0 = the page size in use). Devices that
    /// keep flags in the low bits of a buffer address need more than 4 KiB even when no
    /// huge pages are configured.
    pub iova_align: u64,
}

impl DmaOptions {
    /// The IOVA alignment to use for memory of `page` bytes per page.
    pub fn alignment(&self, page: u64) -> u64 {
        self.iova_align.max(page).next_power_of_two()
    }
}

/// The seam every driver in `guest-lib` uses to reach its device.
pub trait DeviceAccess: Send {
    /// Reads `data.len()` bytes of PCI configuration space at `offset`.
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<()>;
    /// Writes PCI configuration space at `offset`.
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Maps BAR `index`: memory-mapped where the transport offers it, else trapped accesses.
    fn bar(&mut self, index: u8) -> Result<Bar>;
    /// Allocates `len` bytes of DMA memory (rounded up to the page size) and maps it for
    /// the device; the buffer's [`DmaBuffer::iova`] is the address to give the device.
    fn alloc_dma(&mut self, len: usize, opts: DmaOptions) -> Result<DmaBuffer>;
    /// Enables `count` MSI-X vectors, each signalled through its own eventfd.
    fn enable_msix(&mut self, count: u32) -> Result<Vec<Interrupt>>;
    /// A short name of the transport ("vfio" or "vfio-user"), for reports.
    fn transport(&self) -> &'static str;
    /// The bus address BAR `index` was assigned (what a peer device must write to reach
    /// it), when the transport knows one: from sysfs for VFIO; None for vfio-user, where
    /// there is no bus.
    fn bus_address(&self, _index: u8) -> Option<u64> {
        None
    }
    /// What maps memory into this device's DMA space (for [`share_dma`]).
    fn dma_mapper(&self) -> std::sync::Arc<dyn DmaMapper>;
    /// Maps every later [`DeviceAccess::alloc_dma`] buffer into `peer` too, at the same
    /// IOVA, so `peer` can reach it (the chain's devices read each other's buffers).
    fn add_dma_peer(&mut self, peer: std::sync::Arc<dyn DmaMapper>);
}

/// Keeps `[base, base + len)` out of every later IOVA allocation of this process (a
/// peer's BAR that devices reach by bus address, as p2pdma does).
pub fn reserve_iova(base: u64, len: u64) {
    mem::reserve_iova(base, len);
}

/// Makes the devices share one DMA view: every buffer later allocated through any of
/// them is mapped into all of them at the same IOVA (IOVAs are unique per process).
pub fn share_dma(devs: &mut [&mut dyn DeviceAccess]) {
    let mappers: Vec<_> = devs.iter().map(|d| d.dma_mapper()).collect();
    for (i, d) in devs.iter_mut().enumerate() {
        for (j, m) in mappers.iter().enumerate() {
            if i != j {
                d.add_dma_peer(m.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_alignment() {
        let o = DmaOptions::default();
        assert_eq!(o.alignment(4096), 4096);
        let o = DmaOptions { iova_align: 2 << 20, ..o };
        assert_eq!(o.alignment(4096), 2 << 20, "more than the page when asked");
        assert_eq!(DmaOptions { iova_align: 100, ..o }.alignment(4096), 4096);
    }
}
