//! PCIe accounting, apart from the PCI function model: what the operations a device
//! model performs become on a PCIe link, what that link costs, and the per-item trace of
//! those operations.
//!
//! Modules, each depending only on those before it: [`tlp`] (the splitting rules),
//! [`link`] (the link model), [`trace`] (the operation trace and its cost), [`counters`]
//! (the tally every model records into), [`summary`] (a counters delta as link traffic,
//! and its report on a link).
//!
//! [`Counters`] counts operations (DMA reads/writes with bytes and a metadata share,
//! trapped MMIO, interrupts) and, at record time, the TLPs every DMA operation splits
//! into ([`TlpSnapshot`]). The crate holds the splitting rules, turns a counters delta
//! into a [`TrafficSummary`] — TLPs by kind and bytes in three classes per link direction
//! — and a [`LinkConfig`] turns a summary over `P` packets into a [`PcieReport`]: bytes
//! per packet, link utilisation and `modeled_pcie_mpps`, the packet rate at which the
//! busier direction of the link saturates.
//!
//! # Byte classes
//! - **payload**: DMA bytes of class [`DmaClass::Data`](crate::counters::DmaClass::Data) (packet bytes).
//! - **interface metadata**: DMA bytes of class [`DmaClass::Metadata`](crate::counters::DmaClass::Metadata) (descriptors,
//!   notifications, completions), the data of trapped MMIO reads and writes, doorbell
//!   writes the driver reported ([`Counters::doorbell_writes`]) and the 4 data bytes of
//!   each MSI-X message.
//! - **protocol overhead**: everything else on the link per TLP (below) plus dword
//!   padding.
//!
//! # Rules
//! Directions are separate resources (PCIe links are dual simplex): *upstream* is device
//! → host, *downstream* host → device.
//!
//! | operation | TLPs | direction | overhead per TLP |
//! |---|---|---|---|
//! | DMA write of `n` B at `a` | memory writes: `[a, a+n)` cut at 4 KiB boundaries, each piece into `ceil(len / MPS)` | up | 24 B |
//! | DMA read of `n` B at `a` | read requests: cut at 4 KiB, each piece into `ceil(len / MRRS)` | up | 24 B |
//! |  | completions: each request cut at `C`-aligned addresses, `C = min(RCB, MPS)` | down | 20 B |
//! | trapped MMIO write | 1 posted memory write | down | 24 B |
//! | trapped MMIO read | 1 read request + 1 completion | down + up | 24 B + 20 B |
//! | doorbell (driver-reported) | 1 posted memory write of 4 B (or as reported) | down | 24 B |
//! | MSI-X (delivered) | 1 memory write of 4 B | up | 24 B |
//!
//! Sources and assumptions:
//! - *Per-TLP overhead* (PCIe Base Spec ch. 2–4; same constants as pcie-bench's model,
//!   Neugebauer et al., "Understanding PCIe performance for end host networking",
//!   SIGCOMM 2018): 2 B framing (Gen1/2 STP + END symbols; Gen3+ the 4 B STP token
//!   carries the sequence number) + 2 B sequence number + 4 B LCRC, i.e. 8 B of physical
//!   and data-link layer, plus the TLP header: 16 B for memory requests with 64-bit
//!   addresses (4 DW), 12 B for completions (3 DW). So 24 B per memory write / read
//!   request and 20 B per completion. No ECRC. Requests always use the 64-bit format:
//!   the testbed's IOVAs say nothing about where a real host would place buffers, and
//!   server buffers usually sit above 4 GiB (below it the spec requires the 12 B 32-bit
//!   format; MMIO to a 32-bit BAR would also use it — we ignore that 4 B difference).
//! - *4 KiB*: requests must not cross a 4 KiB boundary (spec §2.2.7). Writes and read
//!   requests are then cut into MPS- / MRRS-sized pieces from the start of each 4 KiB
//!   piece, as DMA engines like Corundum's do. Engines that cut at MPS-aligned addresses
//!   instead can need one TLP more for unaligned transfers.
//! - *Completions*: a completer may split a read at RCB-aligned addresses (spec §2.3.1.1);
//!   Intel root complexes do so at 64 B, so every completion carries at most
//!   `C = min(RCB, MPS)` bytes and is cut at `C`-aligned addresses. A request of `[s, e)`
//!   thus gets `ceil(e / C) - floor(s / C)` completions.
//! - *Dword padding*: TLP payloads are whole dwords; a transfer at `a` of `n` bytes
//!   carries `round_up(a % 4 + n, 4) - n` padding bytes, counted as overhead once per
//!   operation (intermediate TLP boundaries are assumed dword-aligned). Trapped MMIO and
//!   doorbells are assumed dword-sized.
//! - *Not modeled*: DLLPs (Ack and flow-control updates, 8 B each, a few % of a busy
//!   link in pcie-bench), SKP ordered sets, replays, completion timeouts, ordering stalls,
//!   the descriptor prefetching and write combining a real NIC may do beyond what the
//!   model issues. DMA accounted through [`Counters::dma_read`] / [`Counters::dma_write`]
//!   (no address) is split as if it started on a 4 KiB boundary.
//!
//! # Link model
//! Per-lane rates (GT/s) and line encodings, per direction:
//!
//! | gen | GT/s | encoding | GB/s per lane |
//! |---|---|---|---|
//! | 1 | 2.5 | 8b/10b | 0.25 |
//! | 2 | 5 | 8b/10b | 0.5 |
//! | 3 | 8 | 128b/130b | 0.985 |
//! | 4 | 16 | 128b/130b | 1.969 |
//! | 5 | 32 | 128b/130b | 3.938 |
//! | 6 | 64 | FLIT mode, 242 of 256 B (as pcie-bench) | 7.563 |
//!
//! Gen6 runs in FLIT mode (PAM4, FEC and CRC per 256 B flit) rather than 128b/130b; we
//! keep the per-TLP overheads above for it too, which overstates its overhead a little.
//! The modeled link carries `lanes × GB/s per lane` bytes per second in each direction;
//! `modeled_pcie_mpps` is that divided by the bytes per packet of the busier direction.
//! Latency: [`LinkConfig::batch_latency_ns`] = one-way latency (default 379 ns, the seed's
//! intra-host figure) × link crossings + serialization time of the bytes.

pub mod counters;
pub mod link;
pub mod summary;
pub mod tlp;
pub mod trace;

pub use counters::{Counters, CountersSnapshot, DmaClass, TlpSnapshot};
pub use link::{Direction, LinkConfig};
pub use summary::{ByteClasses, PcieReport, TlpCounts, TrafficSnapshot, TrafficSummary};
pub use tlp::{LinkConfigError, TlpRules};
pub use trace::{Op, OpKind, OpRole, OpTrace, TraceCost, TraceTap};
