//! The Ethernet side of the NIC models.
//!
//! A NIC model owns one [`EthPort`]: the end of a cable. Whatever is at the other end (a
//! traffic generator, a pcap file, another NIC, a vhost-user peer) is a backend in this
//! crate. Frames travel in batches over bounded channels, so a port costs one channel
//! operation per batch, not per frame.

pub mod cable;

pub use cable::{cable, CableEnd};

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
}
