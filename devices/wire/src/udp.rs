//! A port whose far end is a UDP socket carrying one Ethernet frame per datagram: the format
//! of QEMU's `-netdev dgram` (and `-netdev socket,udp=`), so a stock QEMU guest's NIC, on
//! this machine or another host, can be cabled to an emulated NIC.
//!
//! The port binds a local address (127.0.0.1 unless told otherwise) and sends to a fixed
//! peer, or, without one, to whoever sent the last frame. Nothing here blocks: a datagram
//! that cannot be sent at once is refused and counted (the NIC counts its own drop too).

use crate::{EthPort, Frame};
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The largest frame carried (a jumbo frame with headroom); longer datagrams are counted and
/// dropped.
pub const MAX_FRAME: usize = 9216;
/// Shortest Ethernet header: anything shorter is not a frame.
const MIN_FRAME: usize = 14;

/// What crossed the socket, and what was refused.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Datagrams shorter than an Ethernet header.
    pub rx_runts: AtomicU64,
    /// Datagrams longer than [`MAX_FRAME`].
    pub rx_oversize: AtomicU64,
    /// Frames sent before any peer was known (no fixed peer, nothing received yet).
    pub tx_no_peer: AtomicU64,
    /// Frames the socket refused (buffer full, peer unreachable).
    pub tx_errors: AtomicU64,
    /// The peer frames are sent to, once known.
    peer: Mutex<Option<SocketAddr>>,
}

/// A snapshot of [`UdpStats`], for reports.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UdpCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_runts: u64,
    pub rx_oversize: u64,
    pub tx_no_peer: u64,
    pub tx_errors: u64,
    pub peer: Option<String>,
}

impl UdpStats {
    pub fn snapshot(&self) -> UdpCounters {
        UdpCounters {
            rx_frames: self.rx_frames.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_runts: self.rx_runts.load(Relaxed),
            rx_oversize: self.rx_oversize.load(Relaxed),
            tx_no_peer: self.tx_no_peer.load(Relaxed),
            tx_errors: self.tx_errors.load(Relaxed),
            peer: self.peer.lock().ok().and_then(|p| p.map(|a| a.to_string())),
        }
    }
}

/// A NIC port on a UDP socket.
pub struct UdpPort {
    sock: UdpSocket,
    /// A fixed peer; None: the sender of the last frame received.
    fixed_peer: Option<SocketAddr>,
    learned: Option<SocketAddr>,
    stats: Arc<UdpStats>,
    buf: Vec<u8>,
}

impl UdpPort {
    /// Binds `local` (port 0: any free port) and sends to `peer`, or, when None, to whoever
    /// sent the last frame.
    pub fn bind(local: SocketAddr, peer: Option<SocketAddr>) -> io::Result<UdpPort> {
        let sock = UdpSocket::bind(local)?;
        sock.set_nonblocking(true)?;
        let stats = Arc::new(UdpStats::default());
        if let Ok(mut p) = stats.peer.lock() {
            *p = peer;
        }
        Ok(UdpPort { sock, fixed_peer: peer, learned: None, stats, buf: vec![0; MAX_FRAME + 1] })
    }

    /// The address the port listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The port's counters, shared (they stay readable after the port moves into a NIC).
    pub fn stats(&self) -> Arc<UdpStats> {
        self.stats.clone()
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.fixed_peer.or(self.learned)
    }
}

impl EthPort for UdpPort {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let mut n = 0;
        // Bounded by `max`, and by what the socket holds (WouldBlock ends the loop).
        while n < max {
            match self.sock.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    if len < MIN_FRAME {
                        self.stats.rx_runts.fetch_add(1, Relaxed);
                        continue;
                    }
                    if len > MAX_FRAME {
                        self.stats.rx_oversize.fetch_add(1, Relaxed);
                        continue;
                    }
                    if self.fixed_peer.is_none() && self.learned != Some(from) {
                        self.learned = Some(from);
                        if let Ok(mut p) = self.stats.peer.lock() {
                            *p = Some(from);
                        }
                    }
                    self.stats.rx_frames.fetch_add(1, Relaxed);
                    self.stats.rx_bytes.fetch_add(len as u64, Relaxed);
                    out.push(self.buf[..len].to_vec());
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: nothing more now. Other errors (an ICMP port unreachable from an
                // earlier send, reported here on Linux) end this round too.
                Err(_) => break,
            }
        }
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        let Some(peer) = self.peer() else {
            self.stats.tx_no_peer.fetch_add(1, Relaxed);
            return false;
        };
        match self.sock.send_to(&frame, peer) {
            Ok(_) => {
                self.stats.tx_frames.fetch_add(1, Relaxed);
                self.stats.tx_bytes.fetch_add(frame.len() as u64, Relaxed);
                true
            }
            Err(_) => {
                self.stats.tx_errors.fetch_add(1, Relaxed);
                false
            }
        }
    }

    fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn frame(tag: u8, len: usize) -> Frame {
        let mut f = vec![tag; len];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
        f
    }

    fn recv_all(p: &mut UdpPort, want: usize) -> Vec<Frame> {
        let mut out = vec![];
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < want && Instant::now() < deadline {
            p.recv(&mut out, 64);
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    #[test]
    fn two_ports_exchange_frames_both_ways_and_count_them() {
        let lo = "127.0.0.1:0".parse().unwrap();
        let mut a = UdpPort::bind(lo, None).unwrap();
        let mut b = UdpPort::bind(lo, Some(a.local_addr().unwrap())).unwrap();
        // A has no peer until B's first frame arrives: its send is refused and counted.
        assert!(!a.send(frame(9, 60)));
        assert_eq!(a.stats().snapshot().tx_no_peer, 1);
        for i in 0..10 {
            assert!(b.send(frame(i, 60 + usize::from(i))));
        }
        let got = recv_all(&mut a, 10);
        assert_eq!(got.len(), 10);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &frame(i as u8, 60 + i), "frame {i} arrives whole and in order");
        }
        // A learned B's address and answers it.
        assert!(a.send(frame(42, 1514)));
        assert_eq!(recv_all(&mut b, 1), vec![frame(42, 1514)]);
        let (sa, sb) = (a.stats().snapshot(), b.stats().snapshot());
        assert_eq!((sa.rx_frames, sa.tx_frames, sb.tx_frames, sb.rx_frames), (10, 1, 10, 1));
        assert_eq!(sa.peer, Some(b.local_addr().unwrap().to_string()));
    }

    #[test]
    fn runts_and_oversize_datagrams_are_counted_not_delivered() {
        let mut a = UdpPort::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = a.local_addr().unwrap();
        raw.send_to(&[1; 10], to).unwrap();
        raw.send_to(&vec![2; MAX_FRAME + 1], to).unwrap();
        raw.send_to(&frame(3, 64), to).unwrap();
        let got = recv_all(&mut a, 1);
        assert_eq!(got, vec![frame(3, 64)]);
        let s = a.stats().snapshot();
        assert_eq!((s.rx_runts, s.rx_oversize, s.rx_frames), (1, 1, 1));
    }
}
