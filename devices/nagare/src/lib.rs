//! The Nagare programmable PCIe switch (seed §4), as a model: a management PCI function
//! ([`Switch`]) and the fabric inside the testbed process ([`Fabric`]) that routes the
//! writes of the devices behind it by address, as a PCIe switch routes untranslated
//! addresses between its ports.
//!
//! - **Streams and push**: stream `s` is a window of the switch's BAR2; any device (or
//!   the CPU) pushes into the stream by writing there, without knowing the chain.
//! - **Policy graph**: per stream, the ordered nodes ingress (the NIC's RX pipe) →
//!   streaming devices → egress (the NIC's TX stream window), set once by the CPU.
//! - **Pipeline**: RMT-like match-action stages ([`pipeline`]) decide each write: stream,
//!   allow list, next hop, destination rewrite, ingress credits. Its latency (stages ×
//!   cycles ÷ clock, 33 ns by default) is a timing-model figure.
//! - **Allow lists**: a push from a port not on the stream's list is dropped and counted
//!   (switch counter and per-stream register), and the stream keeps going.
//!
//! Devices join with [`Fabric::attach`] and reach memory through a [`FabricSpace`]
//! (plug it into a vfio-user server with `vfio_server::Server::with_upstream`).

pub mod fabric;
pub mod pipeline;
pub mod switch;
pub mod workload;

#[cfg(test)]
mod tests;

pub use fabric::{Fabric, FabricSpace, Hop, Ingress, Port, Routed};
pub use pipeline::PipelineConfig;
pub use switch::Switch;
