//! A vhost-user-net backend whose Ethernet side is a [`wire`] port.
//!
//! [`frames`] holds the virtio-net frame logic (headers, TX gathering, mergeable RX), free
//! of any socket; [`backend`] is the `VhostUserBackend` that drives it from the guest's
//! queues and a [`wire::EthPort`].

pub mod backend;
pub mod frames;
pub mod shim;

pub use backend::{serve, spawn_rx_pump, NetConfig, NetPort, VhostNetBackend};
pub use frames::{NetStats, RxOutcome};
