//! The trait a device model implements so any transport can drive it.

use crate::config::ConfigSpace;
use crate::device_thread::Lifecycle;
use crate::dma::Dma;
use crate::irq::IrqSink;
use crate::shm::ShmRegion;
use pcie_accounting::Counters;
use std::sync::Arc;

/// How a BAR's contents are reached.
#[derive(Clone, Debug)]
pub enum BarBacking {
    /// Every access traps to [`PciDevice::bar_read`] / [`PciDevice::bar_write`].
    Trapped,
    /// Parts of the BAR are backed by shared memory the driver side maps: `areas`
    /// (offset, length; page aligned) of the BAR are the same offsets of `shm`. Accesses
    /// that still arrive as messages inside an area read/write `shm` directly; accesses
    /// outside every area trap to `bar_read`/`bar_write`.
    Shared {
        /// The memory.
        shm: Arc<ShmRegion>,
        /// Mmap-able areas (page aligned).
        areas: Vec<(u64, u64)>,
    },
}

/// What a transport gives a device when a driver connects.
#[derive(Clone)]
pub struct DeviceContext {
    /// DMA into the driver's memory (counted, bus-master gated).
    pub dma: Dma,
    /// Interrupt delivery.
    pub irq: Arc<dyn IrqSink>,
}

impl DeviceContext {
    /// Raises MSI-X `vector`, counting it as delivered or dropped.
    pub fn raise_irq(&self, vector: u16) -> bool {
        let ok = self.irq.raise(vector);
        if ok {
            self.dma.counters().irq();
        } else {
            self.dma.counters().irq_dropped();
        }
        ok
    }
}

/// A PCI function model, free of any transport type.
///
/// Register writes arrive through `bar_write` (trapped) or land in shared memory the
/// model's own thread polls. The model must never panic on driver input: bad values are
/// counted in its [`Counters`] and flagged in its registers, as hardware would.
pub trait PciDevice: Send {
    /// A short name for logs and reports ("smoke", "enso-nic", ...).
    fn name(&self) -> &str;
    /// The configuration space.
    fn config(&self) -> &ConfigSpace;
    /// The configuration space, for writes (the transport applies them).
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// How BAR `index` is backed.
    fn bar_backing(&self, index: u8) -> BarBacking;
    /// A trapped read of BAR `index` at `offset`.
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]);
    /// A trapped write of BAR `index` at `offset`.
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]);
    /// The device thread that `attach` starts and `detach` stops, for models built on a
    /// [`DeviceLoop`](crate::device_thread::DeviceLoop); None (the default) for models that implement both themselves.
    fn lifecycle(&mut self) -> Option<&mut dyn Lifecycle> {
        None
    }
    /// A driver connected: the device may start its threads and use `ctx`.
    fn attach(&mut self, ctx: DeviceContext) {
        if let Some(l) = self.lifecycle() {
            l.attach(ctx);
        }
    }
    /// The driver went away or unmapped memory: stop touching DMA before returning.
    fn detach(&mut self) {
        if let Some(l) = self.lifecycle() {
            l.detach();
        }
    }
    /// Function-level reset: registers and queues back to power-on state.
    fn reset(&mut self);
    /// The device's counters.
    fn counters(&self) -> Arc<Counters>;
}
