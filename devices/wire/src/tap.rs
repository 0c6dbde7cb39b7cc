//! A tap: a thread between two cables (or a port, such as a UDP socket, and a cable) that
//! forwards every frame both ways and keeps a copy
//! with its direction and time, like a passive optical tap on a real link. Scenarios use
//! it to check, from outside both machines, what really crossed the wire.

use crate::{CableEnd, EthPort, Frame};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which way a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the tap's `a` side to its `b` side.
    AtoB,
    /// From `b` to `a`.
    BtoA,
}

/// One frame seen by the tap.
#[derive(Clone, Debug)]
pub struct Seen {
    pub dir: Dir,
    /// Since the tap started.
    pub at: Duration,
    pub frame: Frame,
}

/// What the tap saw, and what it could not forward.
#[derive(Debug, Default)]
pub struct TapLog {
    pub frames: Vec<Seen>,
    /// Frames the far cable could not take because its other end was gone, by direction.
    pub dropped_a_to_b: u64,
    pub dropped_b_to_a: u64,
}

impl TapLog {
    /// The frames that went one way.
    pub fn dir(&self, d: Dir) -> impl Iterator<Item = &Seen> {
        self.frames.iter().filter(move |s| s.dir == d)
    }

    /// Writes every frame to a pcap file, in the order seen.
    pub fn write_pcap(&self, path: &std::path::Path) -> Result<(), crate::pcap::PcapError> {
        let mut w = crate::PcapCapture::create(path)?;
        for s in &self.frames {
            w.write_frame(&s.frame, s.at)?;
        }
        w.flush()
    }
}

/// Forwards between `a` and `b` until `stop` is set; returns the log.
pub fn spawn(a: CableEnd, b: CableEnd, stop: Arc<AtomicBool>) -> JoinHandle<TapLog> {
    std::thread::spawn(move || forward(a, b, &stop, CableEnd::dropped))
}

/// Like [`spawn`], with any port on the `a` side: a [`UdpPort`](crate::UdpPort), say, so the
/// tap sits between a socket carrying a stock QEMU guest's frames and a NIC. Frames that
/// port refuses (its `send` returns false) count as dropped from `b` to `a`.
pub fn spawn_port<A: EthPort + 'static>(a: A, b: CableEnd, stop: Arc<AtomicBool>) -> JoinHandle<TapLog> {
    std::thread::spawn(move || forward(a, b, &stop, |_| 0))
}

/// The tap's loop; `a_dropped` reads what `a` dropped on its own (a cable end's count).
fn forward<A: EthPort>(mut a: A, mut b: CableEnd, stop: &AtomicBool, a_dropped: fn(&A) -> u64) -> TapLog {
    let start = Instant::now();
    let mut log = TapLog::default();
    let mut batch = Vec::with_capacity(crate::cable::BATCH);
    let mut idle = 0u32;
    let (mut refused_a_to_b, mut refused_b_to_a) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let moved = pump(&mut a, &mut b, Dir::AtoB, &mut log, &mut batch, start, &mut refused_a_to_b)
            + pump(&mut b, &mut a, Dir::BtoA, &mut log, &mut batch, start, &mut refused_b_to_a);
        if moved == 0 {
            idle = idle.saturating_add(1);
            // Stay responsive while traffic flows; sleep when the link is quiet.
            if idle > 64 {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        } else {
            idle = 0;
        }
    }
    log.dropped_a_to_b = b.dropped() + refused_a_to_b;
    log.dropped_b_to_a = a_dropped(&a) + refused_b_to_a;
    log
}

/// Moves what `from` received to `to`, logging it; returns how many frames moved and adds
/// the frames `to` refused to `refused`.
fn pump(
    from: &mut dyn EthPort,
    to: &mut dyn EthPort,
    dir: Dir,
    log: &mut TapLog,
    batch: &mut Vec<Frame>,
    start: Instant,
    refused: &mut u64,
) -> usize {
    // Lossless while the far side is only slow: hold back until it takes the frames
    // already forwarded (a gone far side counts them as dropped).
    if !to.try_flush() {
        return 0;
    }
    batch.clear();
    from.recv(batch, crate::cable::BATCH);
    let n = batch.len();
    for f in batch.drain(..) {
        log.frames.push(Seen { dir, at: start.elapsed(), frame: f.clone() });
        if !to.send(f) {
            *refused += 1;
        }
    }
    to.try_flush();
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_and_logs_in_order() {
        let (mut left, tap_a) = crate::cable(8);
        let (tap_b, mut right) = crate::cable(8);
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn(tap_a, tap_b, stop.clone());
        left.send(vec![1; 60]);
        left.flush();
        let mut got = vec![];
        while got.is_empty() {
            right.recv_timeout(&mut got, 8, Duration::from_millis(100));
        }
        assert_eq!(got, vec![vec![1u8; 60]]);
        right.send(vec![2; 70]);
        right.flush();
        got.clear();
        while got.is_empty() {
            left.recv_timeout(&mut got, 8, Duration::from_millis(100));
        }
        assert_eq!(got, vec![vec![2u8; 70]]);
        stop.store(true, Ordering::Relaxed);
        let log = h.join().unwrap();
        assert_eq!(log.frames.len(), 2);
        assert_eq!((log.frames[0].dir, log.frames[1].dir), (Dir::AtoB, Dir::BtoA));
        assert!(log.frames[0].at <= log.frames[1].at);
        assert_eq!(log.dir(Dir::BtoA).count(), 1);
        let p = std::env::temp_dir().join(format!("tap-test-{}.pcap", std::process::id()));
        log.write_pcap(&p).unwrap();
        let frames = crate::PcapReplay::open(&p).unwrap().frames().to_vec();
        assert_eq!(frames, vec![vec![1u8; 60], vec![2u8; 70]]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn counts_frames_the_far_side_cannot_take() {
        let (mut left, tap_a) = crate::cable(8);
        let (tap_b, right) = crate::cable(8);
        drop(right);
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn(tap_a, tap_b, stop.clone());
        for _ in 0..3 {
            left.send(vec![3; 60]);
        }
        left.flush();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let log = h.join().unwrap();
        assert_eq!(log.frames.len(), 3);
        assert_eq!(log.dropped_a_to_b, 3);
    }

    #[test]
    fn taps_a_udp_port_both_ways() {
        use std::net::UdpSocket;
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port =
            crate::UdpPort::bind("127.0.0.1:0".parse().unwrap(), Some(peer.local_addr().unwrap())).unwrap();
        let (to, stats) = (port.local_addr().unwrap(), port.stats());
        let (tap_b, mut nic) = crate::cable(8);
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_port(port, tap_b, stop.clone());
        peer.send_to(&[4; 60], to).unwrap();
        let mut got = vec![];
        while got.is_empty() {
            nic.recv_timeout(&mut got, 8, Duration::from_millis(100));
        }
        assert_eq!(got, vec![vec![4u8; 60]]);
        nic.send(vec![5; 1514]);
        nic.flush();
        let mut buf = [0u8; 2048];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&[5u8; 1514][..], to));
        stop.store(true, Ordering::Relaxed);
        let log = h.join().unwrap();
        assert_eq!(log.frames.len(), 2);
        assert_eq!((log.frames[0].dir, log.frames[1].dir), (Dir::AtoB, Dir::BtoA));
        assert_eq!((log.dropped_a_to_b, log.dropped_b_to_a), (0, 0));
        let s = stats.snapshot();
        assert_eq!((s.rx_frames, s.tx_frames, s.tx_errors), (1, 1, 0));
    }
}
