//! A DPDK-style poll-mode driver for the packetized baseline NIC
//! (`testbed_regs::packetized`, modelled by `packet-nic`), through the `DeviceAccess` seam.
//!
//! - [`Mempool`]: 2 KiB packet buffers carved from one DMA region; buffer handles move in
//!   bulk (no per-packet allocation). [`Mbuf`] is a handle to one frame (one buffer, or a
//!   chain of up to [`MAX_SEGS`] for jumbo frames); it returns to its pool when dropped
//!   or once the device has sent it.
//! - [`Port`]: identity check, RSS and write-back configuration (trapped BAR0, setup only),
//!   RX/TX descriptor rings enabled through the memory-mapped BAR2 queue pages with a
//!   bounded wait for the STATE acknowledgement. [`Port::rx_burst`] scans for DD from the
//!   software head, hands out up to [`BURST`] frames, refills the ring in bulk and rings
//!   one tail doorbell; [`Port::tx_burst`] writes descriptors and rings one tail doorbell,
//!   reclaiming sent buffers by their DD bits when fewer than `tx_free_thresh` descriptors
//!   are free (DPDK's `tx_free_thresh`).
//! - [`echo`]: the echo loop (first UDP payload byte incremented), as the Ensō echo.
//!
//! The datapath touches only memory: descriptor rings and buffers (DMA memory) and the
//! memory-mapped queue pages. Trapped MMIO is used for setup and counters only.

pub mod echo;
mod mempool;
mod port;

pub use mempool::{Mbuf, Mempool, MAX_SEGS};
pub use port::{Port, PortConfig, PortStats, BURST};

use std::time::Duration;

/// What can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed (BAR mapping, DMA allocation, register access).
    #[error("device access: {0}")]
    Access(#[from] device_access::Error),
    /// BAR0's ID register does not read "PKTZ".
    #[error("not a packetized NIC: BAR0 ID reads {found:#010x}, expected {expected:#010x}")]
    NotPacketized { found: u32, expected: u32 },
    /// The register contract version differs from the one this driver speaks.
    #[error("packetized register contract version {found}, driver speaks {expected}")]
    VersionMismatch { found: u32, expected: u32 },
    /// The device reports a geometry the driver cannot use.
    #[error("unsupported device geometry: {0}")]
    Geometry(String),
    /// A bad [`PortConfig`].
    #[error("invalid port configuration: {0}")]
    Config(String),
    /// A queue index beyond what the port set up.
    #[error("{dir} queue {queue} does not exist (port has {available})")]
    BadQueue { dir: &'static str, queue: u32, available: u32 },
    /// The device did not acknowledge a queue enable (or disable) in time.
    #[error("{dir} queue {queue} was never {} by the device (waited {waited:?} for its STATE bit)", if *.enable { "enabled" } else { "quiesced" })]
    NotAcknowledged { dir: &'static str, queue: u32, enable: bool, waited: Duration },
    /// A queue page the datapath needs is not memory-mapped by the transport.
    #[error("BAR2 offset {offset:#x} (+{len}) is not memory-mapped; the datapath must not use trapped MMIO")]
    NotMapped { offset: u64, len: usize },
    /// DMA memory not aligned as the device needs.
    #[error("DMA memory at IOVA {iova:#x} is not {align}-byte aligned")]
    Misaligned { iova: u64, align: u64 },
    /// The mempool cannot provide the buffers asked for.
    #[error("mempool exhausted: {wanted} buffers wanted, {free} free")]
    PoolExhausted { wanted: usize, free: usize },
    /// A frame length the buffer (chain) or the device cannot take.
    #[error("bad frame length {len}: {why}")]
    BadLength { len: usize, why: &'static str },
    /// An mbuf that belongs to another mempool handed to this port.
    #[error("mbuf from another mempool")]
    ForeignMbuf,
    /// The TX ring stayed full: the device is not completing descriptors.
    #[error("TX queue {queue} stayed full for {waited:?}")]
    TxStalled { queue: u32, waited: Duration },
}

/// Result of a driver operation.
pub type Result<T> = std::result::Result<T, Error>;
