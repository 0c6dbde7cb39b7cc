//! EnsōGen: the packet generator of the seed, on the Ensō API. It sends generated UDP
//! flows (or replays the frames of a pcap) at a set rate or as fast as the NIC takes them,
//! receives the traffic that comes back, and reports sent/received/lost with a round-trip
//! histogram taken from the NIC's hardware timestamps: the NIC stamps its clock into each
//! frame on TX and replaces it with the elapsed ticks on RX (ENSO-INTERFACE: 5 ns ticks,
//! offset 18), so the RTT excludes this program's own delays.
//!
//! Generated frames carry a sequence number, so every returned frame is also checked:
//! payload intact, echo mark incremented (the `echo` app's), no duplicate, order per flow.

use crate::report::Report;
use device_access::DeviceAccess;
use enso::{Device, PacketIter, RxPipe, TxPipe};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testbed_regs::enso::{config, NS_PER_TICK};

/// Where the sequence number sits in a generated frame (after the echo's mark byte at 42).
pub const SEQ_OFFSET: usize = 46;
/// Smallest generated frame: headers, mark and sequence number.
pub const MIN_SIZE: usize = 60;
/// Largest generated frame.
pub const MAX_SIZE: usize = 1514;
/// The byte the echo increments.
pub const MARK_OFFSET: usize = crate::echo::MARK_OFFSET;
const FLIT: usize = 64;

/// What EnsōGen sends.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Frames to send in all.
    pub packets: u64,
    /// Generated frame size in bytes (ignored with `pcap`).
    pub size: usize,
    /// Distinct UDP flows (source ports).
    pub flows: u32,
    /// Frames per second; None: as fast as the NIC takes them.
    pub rate_pps: Option<u64>,
    /// Replay these frames (cycled) instead of generating flows.
    pub pcap: Option<PathBuf>,
    /// After the last send, wait this long for the rest to come back.
    pub drain: Duration,
    /// Give up sending after this long.
    pub limit: Duration,
    /// How the driver opens the device (pair 0): its extensions, trapped doorbells.
    pub device: enso::DeviceOptions,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            packets: 2000,
            size: 128,
            flows: 16,
            rate_pps: Some(10_000),
            pcap: None,
            drain: Duration::from_secs(3),
            limit: Duration::from_secs(120),
            device: enso::DeviceOptions::default(),
        }
    }
}

/// The payload byte at `i` of frame `seq` (a pattern the receiver can recompute).
fn pattern(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

/// A generated UDP/IPv4 frame: flow `seq % flows`, sequence number `seq`.
pub fn generated_frame(seq: u64, size: usize, flows: u32, out: &mut [u8]) {
    let size = size.clamp(MIN_SIZE, MAX_SIZE);
    let f = &mut out[..size];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0xe0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xe0, 0x01]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((size - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 1, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 1, 2]);
    let c = testbed_regs::inet::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let flow = (seq % u64::from(flows.max(1))) as u16;
    f[34..36].copy_from_slice(&(1024 + flow).to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&((size - 34) as u16).to_be_bytes());
    f[40..42].fill(0); // no UDP checksum: the NIC's timestamp rewrites bytes 18..22
    f[MARK_OFFSET..SEQ_OFFSET].fill(0);
    f[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in f[SEQ_OFFSET + 8..].iter_mut().enumerate() {
        *b = pattern(seq, i);
    }
}

/// What came back, and when.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub sent: u64,
    pub received: u64,
    /// Returned frames whose payload or mark was wrong.
    pub corrupted: u64,
    pub duplicated: u64,
    /// Returned before a later frame of the same flow.
    pub reordered: u64,
    /// Returned frames that were not ours (bad sequence number, runts).
    pub unexpected: u64,
    /// Round-trip times in ns, from the NIC's timestamps.
    pub rtt_ns: Vec<u64>,
    /// From the first send to the last.
    pub send_time: Duration,
    pub elapsed: Duration,
}

impl GenStats {
    /// Sent but not returned.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received - self.duplicated.min(self.received))
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Buckets of a log2 histogram in µs: (upper bound in µs, count), up to the largest
/// non-empty bucket.
pub fn histogram_us(rtt_ns: &[u64]) -> Vec<(u64, u64)> {
    let mut buckets = vec![0u64; 40];
    for &ns in rtt_ns {
        let us = ns.div_ceil(1000).max(1);
        let b = (64 - (us - 1).leading_zeros()) as usize; // us <= 2^b
        buckets[b.min(39)] += 1;
    }
    let last = buckets.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    buckets[..last].iter().enumerate().map(|(b, &c)| (1u64 << b, c)).collect()
}

/// Loads the frames of a pcap (Ethernet link type).
pub fn load_pcap(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use pcap_file::pcap::PcapReader;
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut r = PcapReader::new(f).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut frames = vec![];
    while let Some(p) = r.next_packet() {
        let p = p.map_err(|e| format!("{}: {e}", path.display()))?;
        let d = p.data.into_owned();
        match enso::frame_len(&d) {
            // Trailing bytes past the IPv4 length (Ethernet padding) are not sent by the NIC.
            Some(n) if (22..=MAX_SIZE).contains(&n) => frames.push(d[..n].to_vec()),
            _ => {
                return Err(format!(
                    "{}: frame {} ({} bytes) is not an IPv4/ARP/IPv6 frame the NIC can send",
                    path.display(),
                    frames.len() + 1,
                    d.len()
                ))
            }
        }
    }
    if frames.is_empty() {
        return Err(format!("{}: no frames", path.display()));
    }
    Ok(frames)
}

struct Receiver {
    seen: Vec<u64>,
    last_per_flow: Vec<Option<u64>>,
    flows: u32,
    size: usize,
    check_payload: bool,
}

impl Receiver {
    fn take(&mut self, s: &mut GenStats, frame: &[u8]) {
        if frame.len() < 22 {
            s.unexpected += 1;
            return;
        }
        let ticks = u32::from_be_bytes([frame[18], frame[19], frame[20], frame[21]]);
        if !self.check_payload {
            s.received += 1;
            s.rtt_ns.push(u64::from(ticks) * NS_PER_TICK);
            return;
        }
        if frame.len() != self.size.clamp(MIN_SIZE, MAX_SIZE) {
            s.unexpected += 1;
            return;
        }
        let seq = u64::from_le_bytes(frame[SEQ_OFFSET..SEQ_OFFSET + 8].try_into().unwrap_or_default());
        if seq >= s.sent {
            s.unexpected += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        s.received += 1;
        if self.seen[word] & (1 << bit) != 0 {
            s.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        s.rtt_ns.push(u64::from(ticks) * NS_PER_TICK);
        let intact = frame[MARK_OFFSET] == 1
            && frame[SEQ_OFFSET + 8..].iter().enumerate().all(|(i, &b)| b == pattern(seq, i));
        if !intact {
            s.corrupted += 1;
        }
        let flow = (seq % u64::from(self.flows.max(1))) as usize;
        match self.last_per_flow[flow] {
            Some(last) if last > seq => s.reordered += 1,
            _ => self.last_per_flow[flow] = Some(seq),
        }
    }
}

/// Runs EnsōGen on an Ensō NIC; prints the `ready` event when its pipes are set up.
pub fn run(access: Box<dyn DeviceAccess>, params: GenParams) -> Report {
    run_with(access, params, || {
        crate::report::announce(serde_json::json!({"event": "ready", "scenario": "ensogen"}))
    })
}

/// As [`run`], calling `ready` instead of printing (for a caller in the same process).
pub fn run_with(access: Box<dyn DeviceAccess>, params: GenParams, ready: impl FnOnce()) -> Report {
    let mut r = Report::new("ensogen", access.transport());
    match generate(access, &params, ready) {
        Ok(mut s) => {
            s.rtt_ns.sort_unstable();
            r.check(
                "sent",
                s.sent == params.packets,
                format!("{} of {} frames sent", s.sent, params.packets),
            );
            r.check("returned", s.received > 0, format!("{} frames came back", s.received));
            r.check(
                "timestamps",
                s.rtt_ns.first().is_some_and(|&min| min > 0),
                format!("smallest RTT {} ns", s.rtt_ns.first().copied().unwrap_or(0)),
            );
            r.value("sent", s.sent);
            r.value("received", s.received);
            r.value("lost", s.lost());
            r.value("corrupted", s.corrupted);
            r.value("duplicated", s.duplicated);
            r.value("reordered", s.reordered);
            r.value("unexpected", s.unexpected);
            r.value("rate_pps", params.rate_pps.unwrap_or(0));
            let tx_pps = if s.send_time.is_zero() { 0.0 } else { s.sent as f64 / s.send_time.as_secs_f64() };
            r.value("tx_pps", tx_pps);
            r.value("source", if params.pcap.is_some() { "pcap" } else { "generated" });
            r.value(
                "rtt_ns",
                serde_json::json!({
                    "min": s.rtt_ns.first().copied().unwrap_or(0),
                    "p50": quantile(&s.rtt_ns, 0.5),
                    "p99": quantile(&s.rtt_ns, 0.99),
                    "max": s.rtt_ns.last().copied().unwrap_or(0),
                }),
            );
            let hist: Vec<_> = histogram_us(&s.rtt_ns)
                .into_iter()
                .map(|(le, n)| serde_json::json!({"le_us": le, "count": n}))
                .collect();
            r.value("rtt_histogram", hist);
        }
        Err(e) => r.fail("ensogen", e),
    }
    r
}

fn generate(access: Box<dyn DeviceAccess>, p: &GenParams, ready: impl FnOnce()) -> Result<GenStats, String> {
    let e = |e: enso::Error| e.to_string();
    let replay = match &p.pcap {
        Some(path) => Some(load_pcap(path)?),
        None => None,
    };
    let mut dev =
        Device::with_options(access, enso::DeviceOptions { nb_id: 0, ..p.device.clone() }).map_err(e)?;
    let mut rx: RxPipe = dev.alloc_rx_pipe().map_err(e)?;
    let mut tx: TxPipe = dev.alloc_tx_pipe().map_err(e)?;
    dev.configure_fallback_queues(1, false).map_err(e)?;
    dev.enable_timestamp(Some(config::TS_DEFAULT_OFFSET)).map_err(e)?;
    ready();

    let mut s = GenStats::default();
    let mut recv = Receiver {
        seen: vec![],
        last_per_flow: vec![None; p.flows.max(1) as usize],
        flows: p.flows,
        size: p.size,
        check_payload: replay.is_none(),
    };
    let frame_of = |seq: u64, out: &mut [u8]| -> usize {
        match &replay {
            Some(frames) => {
                let f = &frames[(seq % frames.len() as u64) as usize];
                out[..f.len()].copy_from_slice(f);
                f.len()
            }
            None => {
                generated_frame(seq, p.size, p.flows, out);
                p.size.clamp(MIN_SIZE, MAX_SIZE)
            }
        }
    };
    let start = Instant::now();
    let mut last_activity = start;
    let mut batch = vec![0u8; 32 * 1536];
    loop {
        // Send what is due.
        if s.sent < p.packets && start.elapsed() < p.limit {
            let due = match p.rate_pps {
                Some(rate) => {
                    let t = start.elapsed().as_secs_f64();
                    ((t * rate as f64) as u64 + 1).min(p.packets)
                }
                None => p.packets,
            };
            let n = due.saturating_sub(s.sent).min(32);
            if n > 0 {
                // Frames back to back, each on a 64-byte boundary, posted as one send.
                let mut len = 0;
                let mut end = 0;
                for k in 0..n {
                    let l = frame_of(s.sent + k, &mut batch[len..]);
                    end = len + l;
                    len = end.next_multiple_of(FLIT);
                }
                match tx.allocate_buf(&mut dev, end) {
                    Ok(buf) => {
                        buf.copy_from_slice(&batch[..end]);
                        tx.send_and_free(&mut dev, end).map_err(e)?;
                        s.sent += n;
                        last_activity = Instant::now();
                        if s.sent == p.packets {
                            s.send_time = start.elapsed();
                        }
                    }
                    Err(enso::Error::TxBufferFull { .. }) => {}
                    Err(err) => return Err(err.to_string()),
                }
            }
        } else if s.sent < p.packets && s.send_time.is_zero() {
            s.send_time = start.elapsed();
        }
        // Receive what came back.
        if dev.next_rx_pipe_to_recv().is_some() {
            let buf = rx.recv(usize::MAX);
            let len = buf.len();
            let mut it = PacketIter::new(buf);
            for f in it.by_ref() {
                recv.take(&mut s, f);
            }
            if it.remaining() > 0 {
                // Bytes that do not parse as a frame: skipped, counted.
                s.unexpected += 1;
            }
            rx.confirm_bytes(len).map_err(e)?;
            last_activity = Instant::now();
        } else {
            std::hint::spin_loop();
        }
        let sending_done = s.sent == p.packets || start.elapsed() >= p.limit;
        if sending_done && (s.received >= s.sent || last_activity.elapsed() >= p.drain) {
            break;
        }
    }
    dev.process_completions();
    s.elapsed = start.elapsed();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_frames_are_valid_ipv4_udp_of_the_asked_size() {
        let mut f = vec![0u8; 2048];
        for size in [MIN_SIZE, 64, 128, 1514] {
            generated_frame(77, size, 8, &mut f);
            assert_eq!(enso::frame_len(&f[..size]), Some(size));
            assert_eq!(testbed_regs::inet::checksum(&f[14..34]), 0);
            assert_eq!(u64::from_le_bytes(f[SEQ_OFFSET..SEQ_OFFSET + 8].try_into().unwrap()), 77);
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 1024 + 77 % 8);
        }
    }

    fn echoed(seq: u64, size: usize, rtt_ticks: u32) -> Vec<u8> {
        let mut f = vec![0u8; size];
        generated_frame(seq, size, 4, &mut f);
        f[MARK_OFFSET] += 1;
        f[18..22].copy_from_slice(&rtt_ticks.to_be_bytes());
        f
    }

    #[test]
    fn receiver_counts_and_checks_every_returned_frame() {
        let mut s = GenStats { sent: 10, ..Default::default() };
        let mut r =
            Receiver { seen: vec![], last_per_flow: vec![None; 4], flows: 4, size: 100, check_payload: true };
        for seq in [0, 1, 2, 3, 4, 8, 5] {
            r.take(&mut s, &echoed(seq, 100, 200));
        }
        r.take(&mut s, &echoed(1, 100, 200)); // duplicate
        let mut bad = echoed(6, 100, 200);
        bad[90] ^= 1;
        r.take(&mut s, &bad);
        r.take(&mut s, &echoed(42, 100, 200)); // never sent
        r.take(&mut s, &echoed(7, 64, 200)); // wrong size
        assert_eq!(s.received, 9);
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.corrupted, 1);
        assert_eq!(s.unexpected, 2);
        assert_eq!(s.reordered, 0, "4 then 8 then 5: flows 0, 0, 1; in order per flow");
        r.take(&mut s, &echoed(4, 100, 200)); // duplicate again, not a reorder
        let mut t = GenStats { sent: 10, ..Default::default() };
        let mut r2 =
            Receiver { seen: vec![], last_per_flow: vec![None; 4], flows: 4, size: 100, check_payload: true };
        r2.take(&mut t, &echoed(5, 100, 1));
        r2.take(&mut t, &echoed(1, 100, 1)); // same flow (1), earlier
        assert_eq!(t.reordered, 1);
        assert_eq!(s.rtt_ns.iter().copied().max(), Some(200 * NS_PER_TICK));
        assert_eq!(s.lost(), 10 - 8);
    }

    #[test]
    fn quantiles_and_histogram() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile(&v, 0.5), 51_000);
        assert_eq!(quantile(&v, 0.99), 99_000);
        assert_eq!(quantile(&[], 0.5), 0);
        let h = histogram_us(&[500, 1000, 1500, 3000, 9000]);
        assert_eq!(h, vec![(1, 2), (2, 1), (4, 1), (8, 0), (16, 1)]);
        assert_eq!(h.iter().map(|b| b.1).sum::<u64>(), 5);
    }
}
