//! The NIC's own counters (BAR0), indexed by `regs::packetized::reg::counter`, on the
//! shared [`pcie_model::device_counters`] mechanism.

use testbed_regs::packetized::reg::counter::{self, COUNT};

/// Number of counters.
pub const N: usize = COUNT as usize;

/// Live counters, shared by the device thread and the register side.
pub type NicCounters = pcie_model::device_counters::DeviceCounters<N>;

/// Increments gathered during one polling round.
pub type LocalCounts = pcie_model::device_counters::LocalCounts<N>;

/// The first drop/error counter: ERROR_STATUS has a bit for it and each one after.
pub const FIRST_ERROR: u32 = counter::RX_DROP_NO_BUFFER;
