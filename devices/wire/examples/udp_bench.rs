//! The UDP wire's throughput: two [`UdpPort`]s on loopback, one Ethernet frame per datagram
//! (QEMU's `-netdev dgram` format), 64- and 1500-byte frames for a few seconds each.
//!
//! `cargo run --release -p wire --example udp_bench [seconds] [window]`; prints one JSON
//! line per case. Two cases per size: `window` keeps at most `window` frames in flight
//! (default 64; the sender waits for the receiver, so the receiving socket's buffer, about
//! 200 KiB by default, does not overflow: the rate the wire sustains without loss), `open`
//! sends as fast as the socket takes datagrams (what the kernel drops, or the sender's
//! socket refuses, is reported). Every frame carries a sequence number; the receiver counts
//! frames that arrive out of order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{EthPort, UdpPort};

fn frame(seq: u64, size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    f
}

fn run(size: usize, secs: f64, window: Option<u64>) -> serde_json::Value {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut rx = UdpPort::bind(lo, None).unwrap();
    let mut tx = UdpPort::bind(lo, Some(rx.local_addr().unwrap())).unwrap();
    let (rx_stats, tx_stats) = (rx.stats(), tx.stats());
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(64);
            let (mut next, mut reordered) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                out.clear();
                if rx.recv(&mut out, 64) == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                for f in &out {
                    let seq = u64::from_be_bytes(f[14..22].try_into().unwrap());
                    if seq < next {
                        reordered += 1;
                    }
                    next = next.max(seq + 1);
                }
                received.fetch_add(out.len() as u64, Relaxed);
            }
            reordered
        })
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut seq = 0u64;
    let mut refused = 0u64;
    let (mut stalls, mut lost_in_window) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..32 {
            if let Some(w) = window {
                // A frame lost in the kernel would hold the window forever: after 50 ms,
                // count a stall and go on.
                let waited = Instant::now();
                while seq - lost_in_window - received.load(Relaxed) >= w {
                    if waited.elapsed() > Duration::from_millis(50) {
                        stalls += 1;
                        lost_in_window = seq - received.load(Relaxed);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if tx.send(frame(seq, size)) {
                seq += 1;
            } else {
                refused += 1;
            }
        }
    }
    let sent_s = start.elapsed().as_secs_f64();
    // Let what is in flight arrive.
    let settle = Instant::now() + Duration::from_millis(500);
    while received.load(Relaxed) < seq && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Relaxed);
    let reordered = receiver.join().unwrap();
    let got = received.load(Relaxed);
    let (r, t) = (rx_stats.snapshot(), tx_stats.snapshot());
    serde_json::json!({
        "size": size,
        "mode": if window.is_some() { "window" } else { "open" },
        "window": window,
        "seconds": sent_s,
        "sent": seq,
        "received": got,
        "lost": seq - got,
        "refused_by_socket": refused,
        "window_stalls": stalls,
        "reordered": reordered,
        "tx_frames_per_s": seq as f64 / sent_s,
        "rx_frames_per_s": got as f64 / sent_s,
        "rx_gbit_per_s": got as f64 * size as f64 * 8.0 / sent_s / 1e9,
        "rx_runts_oversize": r.rx_runts + r.rx_oversize,
        "tx_errors": t.tx_errors,
    })
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let window: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    for size in [64, 1500] {
        for w in [Some(window), None] {
            println!("{}", run(size, secs, w));
        }
    }
}
