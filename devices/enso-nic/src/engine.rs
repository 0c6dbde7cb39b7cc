//! The queue engine seam: the pipe and notification-buffer logic of the NIC, behind a
//! trait so an RTL implementation (pkt_queue_manager and friends, run under a simulator)
//! can replace the behavioural Rust one.
//!
//! Events come in (queue enabled/disabled, head and tail writes, prefetches, packets
//! already steered to a pipe); everything the engine does to the outside world goes
//! through [`EngineIo`]: DMA writes and reads (data or metadata), register values it
//! publishes, frames it transmits, configuration notifications it forwards, counters.

pub mod behavioral;
pub mod workload;

pub use behavioral::{BehavioralEngine, TxFramer, TX_BATCH};
use pcie_model::DmaClass;

/// A register the device owns and publishes in a queue page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// A pipe's `rx_tail`.
    PipeRxTail(u32),
    /// A notification-buffer pair's `rx_tail`.
    NbRxTail(u32),
    /// A notification-buffer pair's `tx_head`.
    NbTxHead(u32),
}

/// Everything an engine does outside itself.
pub trait EngineIo {
    /// A DMA write into host memory; false when it failed (the engine counts it).
    fn dma_write(&mut self, addr: u64, data: &[u8], class: DmaClass) -> bool;
    /// A DMA read from host memory; false when it failed.
    fn dma_read(&mut self, addr: u64, buf: &mut [u8], class: DmaClass) -> bool;
    /// Publishes a device-owned register.
    fn publish(&mut self, reg: Published, value: u32);
    /// The current `rx_head` software wrote for notification-buffer pair `nb` (the engine
    /// asks only when its cached copy says the RX notification ring is full).
    fn nb_rx_head(&mut self, nb: u32) -> u32;
    /// Sends one frame out of the port (applies timestamps and the rate limit, counts
    /// TX_PACKETS/TX_BYTES or TX_DROP_WIRE).
    fn transmit(&mut self, frame: &[u8]);
    /// Applies a configuration notification (signal 2); false when it was refused (the
    /// implementation counts BAD_CONFIG or FLOW_TABLE_FULL).
    fn configure(&mut self, notification: &[u8; 64]) -> bool;
    /// Adds `n` to NIC counter `counter` (`regs::enso::ext::counter`).
    fn count(&mut self, counter: u32, n: u64);
}

/// A pipe as software configured it, read when the pipe was enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipeSetup {
    /// Ring base (IO virtual address).
    pub base: u64,
    /// The notification-buffer pair that gets this pipe's notifications.
    pub nb: u32,
    /// Initial head and tail (flits), from the registers.
    pub head: u32,
    pub tail: u32,
}

/// A notification-buffer pair as software configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NbSetup {
    /// RX notification ring base.
    pub rx_ring: u64,
    /// TX notification ring base.
    pub tx_ring: u64,
    /// Initial RX ring head/tail and TX ring head (entries), from the registers.
    pub rx_head: u32,
    pub rx_tail: u32,
    pub tx_head: u32,
}

/// What happened to a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into the pipe.
    Delivered,
    /// Dropped: the pipe is not enabled (RX_DROP_PIPE_DISABLED, counted by the engine).
    PipeDisabled,
    /// Dropped: no room (RX_DROP_PIPE_FULL, counted by the engine).
    PipeFull,
    /// Dropped: the data DMA failed (RX_DROP_DMA, counted by the engine).
    DmaFailed,
}

/// The queue logic of the NIC.
pub trait QueueEngine: Send {
    /// Starts serving pipe `pipe` (replacing any previous setup).
    fn enable_pipe(&mut self, pipe: u32, setup: PipeSetup);
    /// Stops serving pipe `pipe`: no DMA for it after this returns.
    fn disable_pipe(&mut self, pipe: u32);
    /// Starts serving notification-buffer pair `nb`.
    fn enable_nb(&mut self, nb: u32, setup: NbSetup);
    /// Stops serving pair `nb`: no DMA to its rings after this returns.
    fn disable_nb(&mut self, nb: u32);
    /// Reactive (false) or per-packet (true) notifications.
    fn set_per_packet(&mut self, per_packet: bool);
    /// Marks `pipe` as a stream pipe (or not): it sends no notifications; whoever
    /// consumes it returns head credits.
    fn set_stream(&mut self, pipe: u32, stream: bool);
    /// A frame steered to `pipe`: write it and notify as the notification rule says.
    fn rx_packet(&mut self, pipe: u32, frame: &[u8], io: &mut dyn EngineIo) -> RxOutcome;
    /// Software wrote `head` into the pipe's `rx_head`.
    fn rx_head(&mut self, pipe: u32, head: u32, io: &mut dyn EngineIo);
    /// A prefetch doorbell for `pipe` (upstream: rewriting the unchanged head).
    fn prefetch(&mut self, pipe: u32, io: &mut dyn EngineIo);
    /// Software's `tx_tail` of pair `nb` is `tail`. Returns true when the engine has caught
    /// up with it, false when it stopped early (call again next round).
    fn tx_tail(&mut self, nb: u32, tail: u32, io: &mut dyn EngineIo) -> bool;
    /// The engine's own register front end, if it has one (the RTL's `enso_queue_regs`):
    /// in register mode mmio the device thread then hands it every queue-page access and
    /// decodes none itself (no enable, head or tail calls follow).
    fn front_end(&mut self) -> Option<&mut dyn RegisterFrontEnd> {
        None
    }
}

/// A register front end that decodes the queue pages itself, as the FPGA's register block
/// does (see [`QueueEngine::front_end`]). Queues are the card's: pipe `i` is `i`, pair `j`
/// is `MAX_PIPES + j`; `reg` is the byte offset of one of the card's registers.
pub trait RegisterFrontEnd {
    /// A write; false when the front end refused it (no room for another queue).
    fn write(&mut self, queue: u32, reg: u64, value: u32, io: &mut dyn EngineIo) -> bool;
    /// A read.
    fn read(&mut self, queue: u32, reg: u64) -> u32;
    /// Whether the queue is live.
    fn live(&mut self, queue: u32) -> bool;
    /// Every live queue.
    fn live_queues(&mut self) -> Vec<u32>;
    /// The ENABLE-bit extension on or off (what makes a queue live).
    fn set_extensions(&mut self, enable_bit: bool, io: &mut dyn EngineIo);
    /// Our prefetch doorbell for `pipe`; false when the pipe is not live (refused).
    fn prefetch_doorbell(&mut self, pipe: u32, io: &mut dyn EngineIo) -> bool;
}
