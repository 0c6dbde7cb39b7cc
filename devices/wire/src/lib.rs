//! The Ethernet side of the NIC models.
//!
//! A NIC model owns one [`EthPort`]: the end of a cable. Whatever is at the other end (a
//! traffic generator, a pcap file, another NIC, a vhost-user peer) is a backend in this
//! crate. Frames travel in batches over bounded channels, so a port costs one channel
//! operation per batch, not per frame.

//!
//! Backends: [`generator`] (closed-loop traffic generator and byte-exact checker),
//! [`pcap`] (replay a capture into a port, capture a port into a file), [`loopback`] (a port
//! cabled to itself, and a null port), and [`ring`] (the raw two-thread shared-memory ring
//! that bounds what any two-thread emulation can reach on this machine).

pub mod cable;
pub mod generator;
pub mod loopback;
pub mod pcap;
pub mod ring;
pub mod source;
pub mod tap;
pub mod udp;

pub use cable::{cable, CableEnd};
pub use generator::{GenConfig, GenReport, Generator};
pub use loopback::{Loopback, Null};
pub use pcap::{CaptureReport, PcapCapture, PcapReplay, ReplayReport};
pub use ring::ring_ceiling;
pub use udp::UdpPort;

/// One Ethernet frame (destination MAC first, no FCS).
pub type Frame = Vec<u8>;

/// A NIC's Ethernet port.
pub trait EthPort: Send {
    /// Moves up to `max` received frames into `out` without blocking; returns how many.
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize;
    /// Queues a frame for transmission. False when the link refused it (down, or the far
    /// side is not keeping up): the NIC counts that as a drop.
    fn send(&mut self, frame: Frame) -> bool;
    /// Pushes queued frames out (the NIC calls this at the end of each polling round).
    fn flush(&mut self);

    /// How many more frames `send` can take right now without any being dropped for lack
    /// of room (backends that pace themselves use it; a NIC model need not). Unbounded by
    /// default.
    fn send_room(&self) -> usize {
        usize::MAX
    }

    /// Like [`flush`](EthPort::flush), but keeps the queued frames when the link is
    /// momentarily full instead of dropping them; true when nothing is left queued.
    fn try_flush(&mut self) -> bool {
        self.flush();
        true
    }
}

/// A port with nothing at the other end (a NIC whose cable was taken away): nothing
/// arrives, and every frame sent is refused (the NIC counts it as a wire drop).
#[derive(Debug, Default)]
pub struct Disconnected;

impl EthPort for Disconnected {
    fn recv(&mut self, _out: &mut Vec<Frame>, _max: usize) -> usize {
        0
    }

    fn send(&mut self, _frame: Frame) -> bool {
        false
    }

    fn flush(&mut self) {}
}
