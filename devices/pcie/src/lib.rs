//! The PCI function model every emulated device is built from.
//!
//! Nothing here knows about vfio-user, QEMU or sockets: a device model is a plain Rust
//! state machine that sees a configuration space ([`config`]), register blocks
//! ([`regs`]), shared-memory BAR pages it polls ([`shm`], [`poll`]), a DMA space
//! ([`dma`]), interrupt lines ([`irq`]) and the shared accounting ([`counters`]; what it
//! means on a PCIe link: [`accounting`]). The same model is driven by unit tests, by the
//! vfio-user glue and by the in-process transport.

pub mod accounting;
pub mod config;
pub mod counters;
pub mod device;
pub mod device_counters;
pub mod device_thread;
pub mod dma;
pub mod irq;
pub mod poll;
pub mod regs;
pub mod shm;
pub mod trace;

pub use accounting::{
    ByteClasses, Direction, LinkConfig, LinkConfigError, PcieReport, TlpCounts, TlpRules, TrafficSnapshot,
    TrafficSummary,
};
pub use config::{BarKind, BarSpec, ConfigSpace, ConfigSpaceBuilder, MsixSpec};
pub use counters::{Counters, CountersSnapshot, DmaClass, TlpSnapshot};
pub use device::{BarBacking, DeviceContext, PciDevice};
pub use dma::{Dma, DmaError, DmaSpace, GuestMemory, MapError, MAX_DMA_MAPS};
pub use irq::{IrqSink, NoIrqs};
pub use shm::ShmRegion;
pub use trace::{Op, OpKind, OpRole, OpTrace, TraceCost, TraceTap};
