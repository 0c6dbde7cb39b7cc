//! The vfio-user side of the testbed: serves a [`pcie_model::PciDevice`] over a vfio-user
//! socket, to QEMU's `vfio-user-pci` or to our native client transport.
//!
//! This is the only crate that knows vfio-user. It owns the protocol loop (the `vfio_user`
//! crate's server desynchronises on unknown commands and panics on malformed input):
//! every message is length-checked and drained, errors are answered with an errno, and
//! nothing a client sends can panic the server or leave the device touching memory the
//! client unmapped. Nothing but VERSION is served before VERSION; a message (or a reply)
//! that takes longer than [`MESSAGE_TIMEOUT`] disconnects its client, and stop is noticed
//! while waiting; DMA_MAP is limited to `max_dma_maps` windows (ENOSPC beyond).
//! [`client::RawClient`] is a bare client for tests, fuzzing and hostile reproducers.
//!
//! Mapping of the model onto vfio-user:
//! - regions 0–5 are the BARs: trapped ones go to `bar_read`/`bar_write`; BARs backed by
//!   shared memory are offered for mmap (sparse-mmap capability plus the memfd), so the
//!   driver's doorbell writes never leave its CPU;
//! - region 7 is configuration space; the command register's bus-master bit gates DMA;
//! - DMA_MAP fds become a [`pcie_model::GuestMemory`] (one mmap per file, pages merged);
//! - SET_IRQS eventfds become the device's [`pcie_model::IrqSink`] for MSI-X.

pub mod client;
mod irqs;
mod server;
mod wire;

pub use irqs::EventFdIrqs;
pub use server::{Server, ServerHandle, ServerStats, ServerStatsSnapshot, Upstream, MESSAGE_TIMEOUT};
pub use wire::{Command, ProtocolError};
