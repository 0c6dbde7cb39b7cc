//! The seed's applications (Table 1) as packet logic that does not know which NIC it runs
//! on: each app sees one frame at a time through [`PacketApp`], and thin I/O wrappers (Ensō
//! pipes, the packetized burst API) feed it, exactly as the seed compared them.
//!
//! - [`maglev`]: Maglev consistent hashing with connection tracking (load balancer);
//! - [`nitro`]: NitroSketch telemetry (a Count sketch with geometric sampling) and heavy
//!   hitters;
//! - [`mica`]: a MICA-style key-value store (partitioned lossy index, circular logs) over
//!   UDP;
//! - [`logmon`]: a log monitor (lines matched against a regex set, counts and alerts).

pub mod frame;
pub mod logmon;
pub mod maglev;
pub mod mica;
pub mod nitro;

/// What an app does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the frame back out (the app may have edited it in place).
    Forward,
    /// Send the frame the app wrote into `out` instead.
    Reply,
    /// Nothing to send (consumed or dropped; the app counts which).
    Consume,
}

/// An application's per-frame logic.
pub trait PacketApp {
    /// Handles one frame; may edit it in place, or write a reply into `out`.
    fn handle(&mut self, frame: &mut [u8], out: &mut Vec<u8>) -> Action;
}
