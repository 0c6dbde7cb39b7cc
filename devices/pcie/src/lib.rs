//! The PCI function model every emulated device is built from.
//!
//! Nothing here knows about vfio-user, QEMU or sockets: a device model is a plain Rust
//! state machine that sees a configuration space ([`config`]), register blocks
//! ([`regs`]), shared-memory BAR pages it polls ([`shm`], [`poll`]), a DMA space
//! ([`dma`]), interrupt lines ([`irq`]) and a device thread ([`device_thread`]). What the
//! operations cost on a PCIe link is the `pcie-accounting` crate's business: the model
//! records into its [`Counters`] (re-exported here, as a device's context carries one).
//! The same model is driven by unit tests, by the vfio-user glue and by the in-process
//! transport.

pub mod config;
pub mod device;
pub mod device_counters;
pub mod device_thread;
pub mod dma;
pub mod irq;
pub mod poll;
pub mod regs;
pub mod shm;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{BarKind, BarSpec, ConfigSpace, ConfigSpaceBuilder, MsixSpec};
pub use device::{BarBacking, DeviceContext, PciDevice};
pub use dma::{Dma, DmaError, DmaSpace, GuestMemory, MapError, MAX_DMA_MAPS};
pub use irq::{IrqSink, NoIrqs};
pub use pcie_accounting::{
    ByteClasses, Counters, CountersSnapshot, Direction, DmaClass, LinkConfig, LinkConfigError, Op, OpKind,
    OpRole, OpTrace, PcieReport, TlpCounts, TlpRules, TlpSnapshot, TraceCost, TraceTap, TrafficSnapshot,
    TrafficSummary,
};
pub use shm::ShmRegion;
