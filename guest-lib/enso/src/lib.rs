//! The Ensō driver: pipes over a notification-buffer pair, through the `DeviceAccess` seam.
//!
//! The design follows upstream Ensō's software library (a [`Device`] owns one
//! notification-buffer pair; [`RxPipe`], [`TxPipe`] and [`RxTxPipe`] move bytes, not
//! packets) on our register contract (`testbed_regs::enso`): BAR2 holds the upstream
//! queue pages, BAR0 our extensions (identity, configuration and counters, prefetch
//! doorbells, queue-state acknowledgements).
//!
//! The datapath touches only memory: notification rings and pipe buffers (DMA memory), the
//! memory-mapped BAR2 queue pages (heads and tails) and the BAR0 prefetch doorbells.
//! Trapped MMIO (BAR0 page 0) is used for setup and counters only.
//!
//! With [`Extensions::None`] (card mode) the driver uses only what the FPGA has: it never
//! touches BAR0, takes sizes from upstream's constants, enables a queue by writing its
//! address (low half, then high), resets a queue by writing 0 and reading back, and
//! prefetches by rewriting an unchanged `rx_head`.
//!
//! A typical echo loop:
//!
//! ```no_run
//! # fn demo(access: Box<dyn device_access::DeviceAccess>) -> enso::Result<()> {
//! let mut dev = enso::Device::new(access, 0)?;
//! let mut pipe = dev.alloc_rx_tx_pipe()?;
//! dev.configure_fallback_queues(1, false)?;
//! loop {
//!     let Some(_id) = dev.next_rx_pipe_to_recv() else { continue };
//!     let n = pipe.recv(usize::MAX).len();
//!     pipe.send_and_free(&mut dev, n)?;
//! }
//! # }
//! ```

mod device;
mod dma;
pub mod packet;
mod pipe;
mod regs;
pub mod ring;

pub use device::{
    Counters, Device, DeviceInfo, DeviceOptions, DeviceStats, Extensions, Flow, NotificationMode, StreamPipe,
};
pub use packet::{frame_len, PacketIter, PacketIterMut};
pub use pipe::{RxPipe, RxRing, RxTxPipe, TxPipe};

use std::time::Duration;

/// What can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed (BAR mapping, DMA allocation, register access).
    #[error("device access: {0}")]
    Access(#[from] device_access::Error),
    /// BAR0's ID register does not read "ENSO": not our device, or not reachable.
    #[error("not an Ensō device: BAR0 ID reads {found:#010x}, expected {expected:#010x}")]
    NotEnso { found: u32, expected: u32 },
    /// The register contract version differs from the one this driver speaks.
    #[error("Ensō register contract version {found}, driver speaks {expected}")]
    VersionMismatch { found: u32, expected: u32 },
    /// The device reports a geometry the driver cannot use.
    #[error("unsupported device geometry: {0}")]
    Geometry(String),
    /// A notification-buffer pair ID beyond what the device serves.
    #[error("notification-buffer pair {nb_id} does not exist (device serves {available})")]
    BadNbId { nb_id: u32, available: u32 },
    /// A pipe ID beyond what the device serves.
    #[error("pipe {id} does not exist (device serves {available})")]
    BadPipeId { id: u32, available: u32 },
    /// The pipe ID is already used by another pipe of this process.
    #[error("pipe {0} is already in use")]
    PipeInUse(u32),
    /// Every pipe ID is taken.
    #[error("no free pipe ID (device serves {0})")]
    NoFreePipe(u32),
    /// The device did not acknowledge a queue's enable (or disable) in time.
    #[error("{what} {id} was never {} by the device (waited {waited:?} for its state bit)", if *.enable { "enabled" } else { "quiesced" })]
    NotAcknowledged { what: &'static str, id: u32, enable: bool, waited: Duration },
    /// A register page the datapath needs is not memory-mapped by the transport.
    #[error(
        "BAR{bar} offset {offset:#x} (+{len}) is not memory-mapped; the datapath must not use trapped MMIO"
    )]
    NotMapped { bar: u8, offset: u64, len: usize },
    /// DMA memory could not be placed at the alignment the device needs.
    #[error("could not get {align:#x}-aligned DMA memory (last IOVA {iova:#x})")]
    Misaligned { iova: u64, align: u64 },
    /// `confirm_bytes` asked to free more than was received.
    #[error("cannot confirm {requested} bytes: only {received} received and not yet confirmed")]
    ConfirmTooMany { requested: usize, received: usize },
    /// `send_and_free` on a TX pipe asked for more than `allocate_buf` gave.
    #[error("cannot send {requested} bytes: only {allocated} allocated")]
    SendExceedsAllocation { requested: usize, allocated: usize },
    /// `send_and_free` on an RX/TX pipe asked for more than was received and not yet sent.
    #[error("cannot send {requested} bytes: only {received} received and not yet sent")]
    SendExceedsReceived { requested: usize, received: usize },
    /// A TX buffer request larger than the free space after processing completions.
    #[error("TX buffer has {free} free bytes, {requested} requested")]
    TxBufferFull { requested: usize, free: usize },
    /// The TX notification ring stayed full.
    #[error("TX notification ring full for {0:?}: the device is not completing requests")]
    TxRingFull(Duration),
    /// A configuration notification was not completed in time.
    #[error("configuration notification {config_id} not completed within {waited:?}")]
    ConfigTimeout { config_id: u64, waited: Duration },
    /// An invalid argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A counter name that the device does not have.
    #[error("unknown counter '{0}'")]
    UnknownCounter(String),
    /// Card mode ([`Extensions::None`]): the call needs one of the emulator's extensions.
    #[error("{0} is an extension of the emulator: the driver runs in card mode (extensions none)")]
    CardMode(&'static str),
}

/// Result of a driver operation.
pub type Result<T> = std::result::Result<T, Error>;
