//! The echo over a [`Port`]: every frame received on any RX queue goes back out of the TX
//! queue with the same index (so a flow, which RSS keeps on one RX queue, stays in order),
//! zero copy, with the first UDP payload byte (frame offset 42) incremented so the sender
//! can tell an echo from a reflection — the same per-packet logic as the Ensō echo.

use crate::{Error, Mbuf, Port, PortStats, Result, BURST};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Frame offset of the byte the echo increments (first UDP payload byte).
pub const MARK_OFFSET: usize = 42;

/// How long a TX queue may stay full before the loop gives up.
const TX_STALL: Duration = Duration::from_secs(2);

/// What the echo did.
#[derive(Clone, Debug, Default)]
pub struct EchoStats {
    /// Frames echoed.
    pub packets: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Non-empty RX bursts.
    pub bursts: u64,
    /// From the start of the loop to the last frame.
    pub active: Duration,
    /// From the start of the loop to its end.
    pub elapsed: Duration,
    /// Time spent handling bursts (from a burst received to its echo posted): the
    /// driver's per-packet cost without the polling in between.
    pub busy: Duration,
    /// The port's counts at the end (doorbells included).
    pub port: PortStats,
    /// Frames received per RX queue.
    pub per_queue: Vec<u64>,
}

impl EchoStats {
    /// Frames per second over the active period.
    pub fn pps(&self) -> f64 {
        if self.active.is_zero() {
            0.0
        } else {
            self.packets as f64 / self.active.as_secs_f64()
        }
    }

    /// Doorbell writes per echoed frame.
    pub fn doorbells_per_packet(&self) -> f64 {
        if self.packets == 0 {
            0.0
        } else {
            self.port.doorbells() as f64 / self.packets as f64
        }
    }
}

/// When an echo stops by itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoLimits {
    /// After this many packets.
    pub packets: Option<u64>,
    /// When idle this long after at least one packet.
    pub idle: Option<Duration>,
    /// When no packet at all arrived for this long.
    pub start_timeout: Option<Duration>,
}

/// Echoes on every RX queue of `port` until `stop` is raised; then waits (bounded) for
/// the TX queues to drain.
pub fn echo_loop(port: &mut Port, stop: &AtomicBool) -> Result<EchoStats> {
    echo_until(port, stop, EchoLimits::default())
}

/// As [`echo_loop`], also stopping at `limits`.
pub fn echo_until(port: &mut Port, stop: &AtomicBool, limits: EchoLimits) -> Result<EchoStats> {
    let mut s = EchoStats::default();
    let mut pkts: Vec<Mbuf> = Vec::with_capacity(BURST);
    let start = Instant::now();
    let mut last = start;
    let mut empty = 0u32;
    let (nrx, ntx) = (port.rx_queues(), port.tx_queues());
    let limit = limits.packets.unwrap_or(u64::MAX);
    while s.packets < limit {
        let mut any = false;
        for q in 0..nrx {
            let n = port.rx_burst(q, &mut pkts)?;
            if n == 0 {
                continue;
            }
            any = true;
            let t0 = Instant::now();
            echo_burst(port, q % ntx, &mut pkts, &mut s)?;
            s.busy += t0.elapsed();
        }
        if any {
            last = Instant::now();
            empty = 0;
            continue;
        }
        empty = empty.wrapping_add(1);
        if empty & 63 == 0 {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed)
                || (s.packets > 0 && limits.idle.is_some_and(|i| now - last >= i))
                || (s.packets == 0 && limits.start_timeout.is_some_and(|t| now - start >= t))
            {
                break;
            }
        }
        if empty & 15 == 0 {
            // Natively the model, the peer and this loop may share a few cores.
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    port.wait_tx_idle(TX_STALL)?;
    s.active = last - start;
    s.elapsed = start.elapsed();
    s.port = port.stats();
    s.per_queue = port.rx_queue_packets().to_vec();
    Ok(s)
}

/// One burst: every packet touched and posted on TX queue `q`. Not inlined: `testbed bench
/// echo` counts its instructions (callgrind) apart from the polling around it.
#[inline(never)]
fn echo_burst(port: &mut Port, q: u32, pkts: &mut Vec<Mbuf>, s: &mut EchoStats) -> Result<()> {
    s.bursts += 1;
    for m in pkts.iter_mut() {
        if let Some(b) = m.byte_mut(MARK_OFFSET) {
            *b = b.wrapping_add(1);
        }
        s.packets += 1;
        s.bytes += m.len() as u64;
    }
    send_all(port, q, pkts)
}

/// Posts all of `pkts` on TX queue `q`, retrying (bounded) while the ring is full.
fn send_all(port: &mut Port, q: u32, pkts: &mut Vec<Mbuf>) -> Result<()> {
    let mut since: Option<Instant> = None;
    while !pkts.is_empty() {
        if port.tx_burst(q, pkts)? > 0 {
            since = None;
            continue;
        }
        let t = *since.get_or_insert_with(Instant::now);
        if t.elapsed() > TX_STALL {
            return Err(Error::TxStalled { queue: q, waited: TX_STALL });
        }
        std::thread::yield_now();
    }
    Ok(())
}
