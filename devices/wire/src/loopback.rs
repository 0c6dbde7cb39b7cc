//! Trivial ports: [`Loopback`] (a NIC cabled to itself), [`Null`] (a cable to nowhere),
//! and [`echo`], a reference far-end echo (what the echo app does, without a NIC).

use crate::{CableEnd, EthPort, Frame};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Every transmitted frame comes back on the receive side, in order. Holds at most
/// `capacity` frames (sent and flushed or not); beyond that `send` refuses and counts a
/// drop, like a full cable.
pub struct Loopback {
    queue: VecDeque<Frame>,
    capacity: usize,
    sent: u64,
    dropped: u64,
}

impl Loopback {
    pub fn new(capacity: usize) -> Self {
        Loopback { queue: VecDeque::with_capacity(capacity.min(1 << 16)), capacity, sent: 0, dropped: 0 }
    }

    /// Frames accepted by `send`.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Frames refused because `capacity` frames were already waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Default for Loopback {
    fn default() -> Self {
        Loopback::new(4096)
    }
}

impl EthPort for Loopback {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = max.min(self.queue.len());
        out.extend(self.queue.drain(..n));
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        if self.queue.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        self.queue.push_back(frame);
        self.sent += 1;
        true
    }

    fn flush(&mut self) {}

    fn send_room(&self) -> usize {
        self.capacity.saturating_sub(self.queue.len())
    }
}

/// Receives nothing; drops (and counts) everything sent.
#[derive(Default)]
pub struct Null {
    dropped: u64,
    bytes: u64,
}

impl Null {
    /// Frames sent into the void.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl EthPort for Null {
    fn recv(&mut self, _out: &mut Vec<Frame>, _max: usize) -> usize {
        0
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.dropped += 1;
        self.bytes += frame.len() as u64;
        true
    }

    fn flush(&mut self) {}
}

/// A far-end echo on a cable: every frame goes back with byte `touch_offset` incremented
/// (wrapping; frames too short for it go back unchanged), until `stop` is set. Busy-polls
/// with a short blocking wait when idle. Returns the frames echoed.
pub fn echo(port: &mut CableEnd, touch_offset: usize, stop: &AtomicBool) -> u64 {
    let mut buf = Vec::with_capacity(crate::cable::BATCH * 4);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let got = match port.recv(&mut buf, crate::cable::BATCH * 4) {
            0 => port.recv_timeout(&mut buf, crate::cable::BATCH * 4, Duration::from_millis(1)),
            k => k,
        };
        if got == 0 {
            continue;
        }
        for mut f in buf.drain(..) {
            if let Some(b) = f.get_mut(touch_offset) {
                *b = b.wrapping_add(1);
            }
            // Wait for room instead of dropping: the echo never loses a frame.
            while port.send_room() == 0 {
                if !port.try_flush() {
                    std::thread::yield_now();
                }
                if port.peer_gone() {
                    return n;
                }
            }
            port.send(f);
            n += 1;
        }
        while !port.try_flush() {
            if stop.load(Ordering::Relaxed) {
                return n;
            }
            std::thread::yield_now();
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cable;
    use std::sync::Arc;

    #[test]
    fn loopback_returns_frames_in_order_and_bounds_its_queue() {
        let mut l = Loopback::new(3);
        for i in 0..4u8 {
            assert_eq!(l.send(vec![i; 60]), i < 3);
        }
        l.flush();
        assert_eq!((l.sent(), l.dropped(), l.send_room()), (3, 1, 0));
        let mut out = vec![];
        assert_eq!(l.recv(&mut out, 2), 2);
        assert_eq!(l.recv(&mut out, 10), 1);
        assert_eq!(out.iter().map(|f| f[0]).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(l.recv(&mut out, 10), 0);
    }

    #[test]
    fn null_counts_and_returns_nothing() {
        let mut n = Null::default();
        n.send(vec![0; 60]);
        n.send(vec![0; 100]);
        let mut out = vec![];
        assert_eq!(n.recv(&mut out, 10), 0);
        assert_eq!((n.dropped(), n.bytes()), (2, 160));
    }

    #[test]
    fn echo_increments_touch_byte() {
        let (mut a, mut b) = cable(4);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || echo(&mut b, 42, &s2));
        let mut got = vec![];
        for i in 0..1000u32 {
            let mut f = vec![0u8; 64];
            f[42] = i as u8;
            f[50..54].copy_from_slice(&i.to_le_bytes());
            while a.send_room() == 0 {
                a.try_flush();
                a.recv(&mut got, 1000);
            }
            a.send(f);
        }
        while !a.try_flush() {
            a.recv(&mut got, 1000);
        }
        while got.len() < 1000 {
            a.recv_timeout(&mut got, 1000, Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(h.join().unwrap(), 1000);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f[42], (i as u8).wrapping_add(1));
            assert_eq!(u32::from_le_bytes(f[50..54].try_into().unwrap()), i as u32);
        }
    }
}
