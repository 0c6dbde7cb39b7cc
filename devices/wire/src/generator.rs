//! Closed-loop traffic generator and byte-exact checker for the echo scenarios.
//!
//! The generator drives the far end of a NIC's cable: it sends UDP/IPv4 frames while fewer
//! than `window` are in flight, and checks every frame that comes back against the frame
//! it sent (rebuilt from the flow id and sequence number the frame carries), byte for byte.
//!
//! Frame layout (`size` bytes; below 60 the frame is zero-padded to 60 like Ethernet, the
//! IPv4 total length still says `size - 14`):
//!
//! | bytes    | content                                                              |
//! |----------|----------------------------------------------------------------------|
//! | 0..14    | Ethernet: [`DST_MAC`], [`SRC_MAC`], type 0x0800                      |
//! | 14..34   | IPv4: total length `size - 14`, id = sequence, DF, TTL 64, UDP, valid checksum, addresses from [`flow_tuple`] |
//! | 34..42   | UDP: ports from [`flow_tuple`], length `size - 34`, checksum 0 (none) |
//! | 42       | touch byte (the echo app increments it, wrapping)                    |
//! | 43..47   | flow id, u32 little endian                                           |
//! | 47..55   | per-flow sequence, u64 little endian                                 |
//! | 55..size | pattern derived from (flow, sequence)                                |
//!
//! Packets go round robin over the flows: global packet `g` is flow `g % flows`, sequence
//! `g / flows`, so a returning frame finds its record in O(1) and nothing is allocated per
//! packet (returned frames are reused for the next sends).

use crate::{EthPort, Frame};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Destination MAC of every generated frame (locally administered).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Source MAC of every generated frame.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Byte the echo app increments.
pub const TOUCH_OFFSET: usize = 42;
/// Flow id (u32 LE).
pub const FLOW_OFFSET: usize = 43;
/// Per-flow sequence (u64 LE).
pub const SEQ_OFFSET: usize = 47;
/// Start of the (flow, sequence) pattern.
pub const PATTERN_OFFSET: usize = 55;
/// Smallest `size` the layout fits in (padded to [`ETH_MIN_FRAME`] on the wire).
pub const MIN_SIZE: usize = PATTERN_OFFSET;
/// Largest `size` (jumbo).
pub const MAX_SIZE: usize = 9000;
/// Ethernet minimum frame without FCS.
pub const ETH_MIN_FRAME: usize = 60;
/// Bytes the NIC writes at `timestamp_offset` (Ensō: a 32-bit stamp, by default at 18).
pub const TIMESTAMP_LEN: usize = 4;
/// UDP destination port of every flow.
pub const DST_PORT: u16 = 9000;
/// Destination IPv4 address of every flow (by default).
pub const DST_IP: [u8; 4] = [10, 1, 0, 1];

const RX_BURST: usize = 256;
const MIN_SLOTS: usize = 1 << 16;
const ARRIVED: u64 = u64::MAX;
const EXPIRED: u64 = u64::MAX - 1;

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenConfig {
    /// Packets to send in total.
    pub packets: u64,
    /// Frame bytes including the 14-byte Ethernet header ([`MIN_SIZE`]..=[`MAX_SIZE`]).
    pub size: usize,
    /// Flows (distinct 4-tuples), ≥ 1.
    pub flows: u32,
    /// Most packets in flight at once (closed loop), ≥ 1.
    pub window: usize,
    /// Send rate cap; `None` sends as fast as the window allows.
    pub rate_pps: Option<f64>,
    /// Where the NIC overwrites [`TIMESTAMP_LEN`] bytes with a timestamp; the checker
    /// ignores those bytes.
    pub timestamp_offset: Option<usize>,
    /// The byte the echo increments ([`TOUCH_OFFSET`] for our echo app; upstream Ensō's
    /// echo increments byte 63). It must lie in the frame and outside the flow and
    /// sequence fields the checker identifies a frame by.
    pub touch_offset: usize,
    /// The destination IPv4 address of every flow ([`DST_IP`] by default).
    pub dst_ip: [u8; 4],
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            packets: 1_000_000,
            size: 64,
            flows: 1,
            window: 256,
            rate_pps: None,
            timestamp_offset: None,
            touch_offset: TOUCH_OFFSET,
            dst_ip: DST_IP,
        }
    }
}

impl GenConfig {
    /// Checks the settings; [`Generator::new`] panics with this message when they are wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(format!("size {} outside {MIN_SIZE}..={MAX_SIZE}", self.size));
        }
        if self.flows == 0 || self.window == 0 {
            return Err("flows and window must be at least 1".into());
        }
        if self.touch_offset >= self.size || (FLOW_OFFSET..PATTERN_OFFSET).contains(&self.touch_offset) {
            return Err(format!(
                "touch offset {} must lie in the frame (size {}) and outside bytes {FLOW_OFFSET}..{PATTERN_OFFSET} \
                 (flow and sequence)",
                self.touch_offset, self.size
            ));
        }
        if let Some(r) = self.rate_pps {
            if r.is_nan() || r <= 0.0 {
                return Err(format!("rate_pps {r} must be positive"));
            }
        }
        Ok(())
    }

    /// Bytes on the wire per frame (`size`, padded to 60).
    pub fn frame_len(&self) -> usize {
        self.size.max(ETH_MIN_FRAME)
    }
}

/// What the far side does to a frame before it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Expect {
    /// The echo app: touch byte + 1 (wrapping), everything else unchanged.
    Echo,
    /// A pure loopback: the frame comes back unchanged.
    Loopback,
}

/// Counters and latency of a run. Every returned frame lands in exactly one of
/// `matched`, `corrupted`, `reordered`, `duplicated`, `late`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GenReport {
    /// Frames handed to the port.
    pub sent: u64,
    /// Frames that came back (all of them).
    pub received: u64,
    /// Came back intact, first time, in per-flow order.
    pub matched: u64,
    /// Came back with a wrong byte or length (or unidentifiable).
    pub corrupted: u64,
    /// Intact, but after a later packet of the same flow.
    pub reordered: u64,
    /// A packet that had already come back.
    pub duplicated: u64,
    /// Came back after the loss timeout had already written it off.
    pub late: u64,
    /// Sent and not (yet) back: `sent - distinct packets received`. Includes `in_flight`
    /// when the report is taken mid-run or the deadline cut the run short.
    pub lost: u64,
    /// Sent, not back, and not yet written off by the loss timeout.
    pub in_flight: u64,
    /// Frames the port refused at `send` (counted in `sent` and, later, `lost`).
    pub refused: u64,
    /// From the first step to the last frame moved, seconds.
    pub elapsed_s: f64,
    /// `sent / elapsed_s`, millions of packets per second.
    pub tx_mpps: f64,
    /// `received / elapsed_s`.
    pub rx_mpps: f64,
    /// Send → receive wall time of the first arrivals of intact packets, µs (resolution:
    /// 1/16 of the value; one clock read per batch).
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub latency_samples: u64,
}

impl GenReport {
    /// Everything sent came back intact, once, in order.
    pub fn clean(&self) -> bool {
        self.matched == self.sent
            && self.received == self.sent
            && self.corrupted + self.reordered + self.duplicated + self.late + self.lost == 0
    }
}

/// What one [`Generator::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub sent: usize,
    pub received: usize,
    /// All packets sent and none outstanding.
    pub done: bool,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Global index + 1; 0 = never used.
    tag: u64,
    /// Send time in ns since start, or [`ARRIVED`] / [`EXPIRED`].
    sent_ns: u64,
}

/// The generator/checker. Build one per run.
pub struct Generator {
    cfg: GenConfig,
    frame_len: usize,
    expect: Expect,
    loss_timeout_ns: u64,
    start: Option<Instant>,
    now_ns: u64,
    last_activity_ns: u64,
    next_flow: u32,
    next_seq: u64,
    oldest: u64,
    slots: Vec<Slot>,
    mask: u64,
    /// Per flow: highest sequence received intact + 1 (0 = none).
    last_rx: Vec<u64>,
    pool: Vec<Frame>,
    rx_buf: Vec<Frame>,
    scratch: Vec<u8>,
    unique: u64,
    r: GenReport,
    hist: Histogram,
}

impl Generator {
    /// A generator for the echo app. Panics on an invalid config ([`GenConfig::validate`]).
    pub fn new(cfg: GenConfig) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid GenConfig: {e}");
        }
        let nslots = (cfg.window.saturating_mul(4)).next_power_of_two().max(MIN_SLOTS);
        let frame_len = cfg.frame_len();
        Generator {
            frame_len,
            expect: Expect::Echo,
            loss_timeout_ns: 500_000_000,
            start: None,
            now_ns: 0,
            last_activity_ns: 0,
            next_flow: 0,
            next_seq: 0,
            oldest: 0,
            slots: vec![Slot::default(); nslots],
            mask: nslots as u64 - 1,
            last_rx: vec![0; cfg.flows as usize],
            pool: Vec::with_capacity(cfg.window.min(1 << 20) + RX_BURST),
            rx_buf: Vec::with_capacity(RX_BURST),
            scratch: vec![0; frame_len],
            unique: 0,
            r: GenReport::default(),
            hist: Histogram::default(),
            cfg,
        }
    }

    /// Sets what the far side does to frames (default [`Expect::Echo`]).
    pub fn with_expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// A packet not back after this long is written off as lost and frees its window
    /// place (default 500 ms); if it turns up later it counts as `late`.
    pub fn with_loss_timeout(mut self, t: Duration) -> Self {
        self.loss_timeout_ns = t.as_nanos().min(u64::MAX as u128 / 2) as u64;
        self
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// All packets sent and none outstanding.
    pub fn done(&self) -> bool {
        self.r.sent == self.cfg.packets && self.r.in_flight == 0
    }

    /// Runs until every packet is back (or written off) or `deadline` passes; returns the
    /// report. Busy-polls, yielding the CPU when nothing moves.
    pub fn run<P: EthPort + ?Sized>(&mut self, port: &mut P, deadline: Instant) -> GenReport {
        let mut idle = 0u32;
        loop {
            let s = self.step(port);
            if s.done {
                break;
            }
            if s.sent == 0 && s.received == 0 {
                idle += 1;
                if idle > 16 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            } else {
                idle = 0;
            }
            if self.start.is_some_and(|t| t + Duration::from_nanos(self.now_ns) >= deadline) {
                break;
            }
        }
        port.try_flush();
        self.report()
    }

    /// One non-blocking round: take in what came back, write off timed-out packets, send
    /// what the window, the rate and the port allow. Interleave with other work freely.
    pub fn step<P: EthPort + ?Sized>(&mut self, port: &mut P) -> Step {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        self.now_ns = now.duration_since(start).as_nanos() as u64;
        let mut step = Step::default();

        // Receive and check.
        let mut rx = std::mem::take(&mut self.rx_buf);
        loop {
            let n = port.recv(&mut rx, RX_BURST);
            for f in rx.drain(..) {
                self.check(&f);
                self.pool.push(f);
            }
            step.received += n;
            if n < RX_BURST {
                break;
            }
        }
        self.rx_buf = rx;

        self.retire();

        // Send.
        let mut budget = (self.cfg.packets - self.r.sent)
            .min((self.cfg.window as u64).saturating_sub(self.r.in_flight))
            .min(self.slots.len() as u64 - (self.r.sent - self.oldest));
        if let Some(rate) = self.cfg.rate_pps {
            let allowed = (self.now_ns as f64 * 1e-9 * rate) as u64 + 1;
            budget = budget.min(allowed.saturating_sub(self.r.sent));
        }
        while budget > 0 {
            let mut room = port.send_room() as u64;
            if room == 0 {
                if !port.try_flush() {
                    break;
                }
                room = port.send_room() as u64;
                if room == 0 {
                    break;
                }
            }
            let n = budget.min(room);
            for _ in 0..n {
                self.send_one(port);
            }
            budget -= n;
            step.sent += n as usize;
        }
        port.try_flush();

        if step.sent + step.received > 0 {
            self.last_activity_ns = self.now_ns;
        }
        step.done = self.done();
        step
    }

    fn send_one<P: EthPort + ?Sized>(&mut self, port: &mut P) {
        let (flow, seq) = (self.next_flow, self.next_seq);
        self.next_flow += 1;
        if self.next_flow == self.cfg.flows {
            self.next_flow = 0;
            self.next_seq += 1;
        }
        let mut buf = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(self.frame_len));
        buf.resize(self.frame_len, 0);
        build_frame_to(&mut buf, self.cfg.size, flow, seq, self.cfg.dst_ip);
        let g = self.r.sent;
        self.slots[(g & self.mask) as usize] = Slot { tag: g + 1, sent_ns: self.now_ns };
        self.r.sent += 1;
        self.r.in_flight += 1;
        if !port.send(buf) {
            self.r.refused += 1;
        }
    }

    /// Moves `oldest` past resolved packets, writing off those older than the timeout.
    fn retire(&mut self) {
        while self.oldest < self.r.sent {
            let slot = &mut self.slots[(self.oldest & self.mask) as usize];
            match slot.sent_ns {
                ARRIVED | EXPIRED => {}
                t if self.now_ns.saturating_sub(t) >= self.loss_timeout_ns => {
                    slot.sent_ns = EXPIRED;
                    self.r.in_flight -= 1;
                }
                _ => break,
            }
            self.oldest += 1;
        }
    }

    fn check(&mut self, f: &[u8]) {
        self.r.received += 1;
        if f.len() < PATTERN_OFFSET {
            self.r.corrupted += 1;
            return;
        }
        let flow = u32::from_le_bytes(f[FLOW_OFFSET..FLOW_OFFSET + 4].try_into().unwrap());
        let seq = u64::from_le_bytes(f[SEQ_OFFSET..SEQ_OFFSET + 8].try_into().unwrap());
        let g = seq.checked_mul(self.cfg.flows as u64).and_then(|x| x.checked_add(flow as u64));
        let g = match g {
            Some(g) if flow < self.cfg.flows && g < self.r.sent => g,
            _ => {
                self.r.corrupted += 1;
                return;
            }
        };
        let intact = self.intact(f, flow, seq);
        let slot = &mut self.slots[(g & self.mask) as usize];
        if slot.tag != g + 1 {
            // Its record was recycled: back after being written off long ago.
            self.r.late += 1;
            return;
        }
        match slot.sent_ns {
            ARRIVED => {
                self.r.duplicated += 1;
                return;
            }
            EXPIRED => {
                slot.sent_ns = ARRIVED;
                self.unique += 1;
                self.r.late += 1;
                return;
            }
            t => {
                slot.sent_ns = ARRIVED;
                self.r.in_flight -= 1;
                self.unique += 1;
                if intact {
                    self.hist.record(self.now_ns.saturating_sub(t));
                }
            }
        }
        if !intact {
            self.r.corrupted += 1;
            return;
        }
        let last = &mut self.last_rx[flow as usize];
        if seq < *last {
            self.r.reordered += 1;
        } else {
            *last = seq + 1;
            self.r.matched += 1;
        }
    }

    fn intact(&mut self, f: &[u8], flow: u32, seq: u64) -> bool {
        let size = self.cfg.size;
        // A sender that trims the padding (length from the IPv4 header) is fine too.
        if f.len() != self.frame_len && f.len() != size {
            return false;
        }
        let ts = self.cfg.timestamp_offset.map(|o| o..(o + TIMESTAMP_LEN).min(f.len()));
        let (touch, dst) = (self.cfg.touch_offset, self.cfg.dst_ip);
        let custom = touch != TOUCH_OFFSET || dst != DST_IP;
        if custom || ts.as_ref().is_some_and(|r| r.end > PATTERN_OFFSET && r.start < r.end) {
            // Stamp inside the pattern, or another touch byte or destination: rebuild the
            // whole frame and compare (slow path).
            let exp = &mut self.scratch[..f.len()];
            build_frame_to(exp, size, flow, seq, dst);
            if self.expect == Expect::Echo {
                exp[touch] = exp[touch].wrapping_add(1);
            }
            if let Some(r) = ts.filter(|r| r.start < r.end) {
                exp[r.clone()].copy_from_slice(&f[r]);
            }
            return f == &exp[..];
        }
        let mut hdr = build_header(size, flow, seq);
        if self.expect == Expect::Echo {
            hdr[TOUCH_OFFSET] = hdr[TOUCH_OFFSET].wrapping_add(1);
        }
        if let Some(r) = ts.filter(|r| r.start < r.end) {
            hdr[r.clone()].copy_from_slice(&f[r]);
        }
        header_eq(&f[..PATTERN_OFFSET], &hdr)
            && pattern_matches(&f[PATTERN_OFFSET..size], pattern_seed(flow, seq))
            && f[size..].iter().all(|&b| b == 0)
    }

    /// The counters so far (see [`GenReport::lost`] for what counts as lost mid-run).
    pub fn report(&self) -> GenReport {
        let mut r = self.r.clone();
        r.lost = r.sent - self.unique;
        r.elapsed_s = self.last_activity_ns as f64 * 1e-9;
        if r.elapsed_s > 0.0 {
            r.tx_mpps = r.sent as f64 / r.elapsed_s / 1e6;
            r.rx_mpps = r.received as f64 / r.elapsed_s / 1e6;
        }
        r.latency_samples = self.hist.count;
        r.latency_p50_us = self.hist.quantile(0.50) as f64 / 1e3;
        r.latency_p99_us = self.hist.quantile(0.99) as f64 / 1e3;
        r.latency_max_us = self.hist.max as f64 / 1e3;
        r
    }
}

/// Addresses of a flow: (source IP, destination IP, source port, destination port).
/// Source 10.0.x.y with x.y the low 16 bits of the flow, source port 1024 + the high bits,
/// destination 10.1.0.1, port 9000 + (flow mod 1024).
pub fn flow_tuple(flow: u32) -> ([u8; 4], [u8; 4], u16, u16) {
    let sport = 1024 + ((flow >> 16) % 64512) as u16;
    // Distinct destination ports too: NICs that key UDP flows on the destination only
    // (Ensō does) still see distinct flows.
    ([10, 0, (flow >> 8) as u8, flow as u8], DST_IP, sport, DST_PORT + (flow % 1024) as u16)
}

/// Writes the generated frame `(flow, seq)` for `size` into all of `buf` (its length is
/// the frame length: `size`, or more with zero padding).
pub fn build_frame(buf: &mut [u8], size: usize, flow: u32, seq: u64) {
    build_frame_to(buf, size, flow, seq, DST_IP);
}

/// As [`build_frame`], to destination `dst` instead of [`DST_IP`].
pub fn build_frame_to(buf: &mut [u8], size: usize, flow: u32, seq: u64, dst: [u8; 4]) {
    debug_assert!(size >= MIN_SIZE && buf.len() >= size);
    let mut hdr = build_header(size, flow, seq);
    if dst != DST_IP {
        set_destination(&mut hdr, dst);
    }
    buf[..PATTERN_OFFSET].copy_from_slice(&hdr);
    fill_pattern(&mut buf[PATTERN_OFFSET..size], pattern_seed(flow, seq));
    buf[size..].fill(0);
}

/// Bytes `0..PATTERN_OFFSET` of frame `(flow, seq)`, built in registers: the IPv4
/// checksum is summed from the header's words directly (same value as [`testbed_regs::inet::checksum`]).
#[inline]
fn build_header(size: usize, flow: u32, seq: u64) -> [u8; PATTERN_OFFSET] {
    let (sip, dip, sport, dport) = flow_tuple(flow);
    let ip_len = (size - 14) as u16;
    let id = seq as u16;
    let word = |a: [u8; 4]| u16::from_be_bytes([a[0], a[1]]) as u32 + u16::from_be_bytes([a[2], a[3]]) as u32;
    // Version/IHL/TOS, total length, id, flags, TTL/protocol, addresses (checksum 0).
    let mut sum = 0x4500 + ip_len as u32 + id as u32 + 0x4000 + (64 << 8 | 17) + word(sip) + word(dip);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = !(sum as u16);
    let mut buf = [0u8; PATTERN_OFFSET];
    buf[0..6].copy_from_slice(&DST_MAC);
    buf[6..12].copy_from_slice(&SRC_MAC);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip[12..16].copy_from_slice(&sip);
    ip[16..20].copy_from_slice(&dip);
    buf[34..36].copy_from_slice(&sport.to_be_bytes());
    buf[36..38].copy_from_slice(&dport.to_be_bytes());
    buf[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    buf[40..42].copy_from_slice(&[0, 0]);
    buf[TOUCH_OFFSET] = seq as u8;
    buf[FLOW_OFFSET..FLOW_OFFSET + 4].copy_from_slice(&flow.to_le_bytes());
    buf[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&seq.to_le_bytes());
    buf
}

/// Rewrites a header's IPv4 destination (and its checksum).
fn set_destination(hdr: &mut [u8; PATTERN_OFFSET], dst: [u8; 4]) {
    hdr[30..34].copy_from_slice(&dst);
    hdr[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = hdr[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    hdr[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// `a == b` for a header, word by word (no `memcmp` call for 55 bytes).
#[inline]
fn header_eq(a: &[u8], b: &[u8; PATTERN_OFFSET]) -> bool {
    let Ok(a) = <&[u8; PATTERN_OFFSET]>::try_from(a) else { return false };
    let w =
        |x: &[u8; PATTERN_OFFSET], i: usize| u64::from_le_bytes(x[i..i + 8].try_into().unwrap_or_default());
    let mut diff = 0u64;
    for i in (0..PATTERN_OFFSET - 8).step_by(8) {
        diff |= w(a, i) ^ w(b, i);
    }
    // The last (overlapping) word covers the tail.
    diff |= w(a, PATTERN_OFFSET - 8) ^ w(b, PATTERN_OFFSET - 8);
    diff == 0
}

fn pattern_seed(flow: u32, seq: u64) -> u64 {
    splitmix64(seq.rotate_left(32) ^ flow as u64)
}

const PATTERN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut w = seed;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&w.to_le_bytes());
        w = w.wrapping_add(PATTERN_STEP);
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&w.to_le_bytes()[..n]);
}

fn pattern_matches(buf: &[u8], seed: u64) -> bool {
    let mut w = seed;
    let mut chunks = buf.chunks_exact(8);
    let mut diff = 0u64;
    for c in &mut chunks {
        diff |= u64::from_le_bytes(c.try_into().unwrap()) ^ w;
        w = w.wrapping_add(PATTERN_STEP);
    }
    let rest = chunks.remainder();
    // The tail (< 8 bytes) as the low bytes of a word, compared under a mask.
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let mask = if rest.is_empty() { 0 } else { u64::MAX >> (64 - 8 * rest.len()) };
    diff |= (u64::from_le_bytes(tail) ^ w) & mask;
    diff == 0
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Log-linear histogram of nanosecond values: 16 buckets per power of two (≤ 6.25 %
/// relative error), 8 KiB, no allocation after construction.
#[derive(Clone)]
pub struct Histogram {
    buckets: Box<[u64; 1024]>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: Box::new([0; 1024]), count: 0, max: 0 }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 16 {
            v as usize
        } else {
            let e = 63 - v.leading_zeros() as usize; // ≥ 4
            (e - 3) * 16 + ((v >> (e - 4)) & 15) as usize
        }
    }

    /// Midpoint of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 16 {
            i as u64
        } else {
            let e = i / 16 + 3;
            let lo = (16 + (i % 16) as u64) << (e - 4);
            lo + (1u64 << (e - 4)) / 2
        }
    }

    pub fn record(&mut self, v: u64) {
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), 0 when empty; never above the recorded maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cable::{cable, CableEnd};
    use crate::loopback::Loopback;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn cfg(packets: u64, size: usize, flows: u32) -> GenConfig {
        GenConfig { packets, size, flows, ..Default::default() }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// Echo thread: touch byte + 1; `fault` may rewrite the batch (by packet index).
    fn echo_with<F>(mut port: CableEnd, stop: Arc<AtomicBool>, mut fault: F) -> std::thread::JoinHandle<u64>
    where
        F: FnMut(u64, Frame, &mut Vec<Frame>) + Send + 'static,
    {
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(256);
            let mut out = Vec::with_capacity(256);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if port.recv_timeout(&mut buf, 256, Duration::from_millis(1)) == 0 {
                    continue;
                }
                for mut f in buf.drain(..) {
                    f[TOUCH_OFFSET] = f[TOUCH_OFFSET].wrapping_add(1);
                    fault(n, f, &mut out);
                    n += 1;
                }
                for f in out.drain(..) {
                    port.send(f);
                }
                port.flush();
            }
            n
        })
    }

    fn run_echo<F>(c: GenConfig, timeout: Duration, fault: F) -> GenReport
    where
        F: FnMut(u64, Frame, &mut Vec<Frame>) + Send + 'static,
    {
        let (mut a, b) = cable(64);
        let stop = Arc::new(AtomicBool::new(false));
        let h = echo_with(b, stop.clone(), fault);
        let mut g = Generator::new(c).with_loss_timeout(timeout);
        let r = g.run(&mut a, deadline());
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        r
    }

    #[test]
    fn header_checksum_verifies_for_many_flows_sizes_and_sequences() {
        for (flow, seq, size) in
            [(0, 0, 55), (0xffff_ffff, u64::MAX, 9000), (0x00ff_ff00, 0xfffe, 64), (77, 65_535, 1500)]
        {
            let mut f = vec![0; size.max(ETH_MIN_FRAME)];
            build_frame(&mut f, size, flow, seq);
            assert_eq!(testbed_regs::inet::checksum(&f[14..34]), 0, "{flow} {seq} {size}");
            let mut g = f.clone();
            assert!(header_eq(&g[..PATTERN_OFFSET], &build_header(size, flow, seq)));
            g[PATTERN_OFFSET - 1] ^= 1;
            assert!(!header_eq(&g[..PATTERN_OFFSET], &build_header(size, flow, seq)));
        }
    }

    #[test]
    fn pattern_check_sees_every_byte() {
        for len in 0..40 {
            let mut b = vec![0; len];
            fill_pattern(&mut b, 12345);
            assert!(pattern_matches(&b, 12345), "{len}");
            for i in 0..len {
                b[i] ^= 0x80;
                assert!(!pattern_matches(&b, 12345), "{len} {i}");
                b[i] ^= 0x80;
            }
        }
    }

    #[test]
    fn frame_is_valid_udp_ipv4() {
        let mut f = vec![0; 64];
        build_frame(&mut f, 64, 0x0001_0203, 7);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize + 14, 64, "IPv4 total length + 14");
        assert_eq!(testbed_regs::inet::checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(&f[26..30], &[10, 0, 2, 3]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 1025);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 64 - 34);
        assert_eq!(u32::from_le_bytes(f[43..47].try_into().unwrap()), 0x0001_0203);
        assert_eq!(u64::from_le_bytes(f[47..55].try_into().unwrap()), 7);
        let mut g = vec![0; 64];
        build_frame(&mut g, 64, 0x0001_0203, 8);
        assert_ne!(f[55..], g[55..], "pattern depends on the sequence");
        // Padded below 60: IPv4 says 56 - 14, the frame is 60 with zero padding.
        let mut p = vec![0xff; 60];
        build_frame(&mut p, 56, 3, 1);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 42);
        assert_eq!(&p[56..], &[0; 4]);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.07, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.07, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        for v in 0..100_000u64 {
            let i = Histogram::index(v);
            let mid = Histogram::value(i);
            assert!(mid.abs_diff(v) * 16 <= v.max(16), "{v} -> {i} -> {mid}");
        }
    }

    #[test]
    fn loopback_port_is_clean() {
        for (size, flows) in [(64, 1), (55, 3), (1500, 7), (9000, 2)] {
            let mut port = Loopback::new(4096);
            let mut g = Generator::new(cfg(20_000, size, flows)).with_expect(Expect::Loopback);
            let r = g.run(&mut port, deadline());
            assert!(r.clean(), "{size} B: {r:?}");
            assert_eq!(r.matched, 20_000);
            assert_eq!(r.latency_samples, 20_000);
        }
    }

    #[test]
    fn loopback_without_echo_transform_is_caught_in_echo_mode() {
        let mut port = Loopback::new(4096);
        let mut g = Generator::new(cfg(1000, 64, 4));
        let r = g.run(&mut port, deadline());
        assert_eq!(r.corrupted, 1000, "touch byte not incremented: {r:?}");
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn echo_thread_over_cable_is_clean() {
        let r = run_echo(cfg(200_000, 64, 16), Duration::from_secs(5), |_, f, out| out.push(f));
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.matched, 200_000);
        assert!(r.latency_p50_us > 0.0 && r.latency_p99_us >= r.latency_p50_us);
        println!("{r:?}");
    }

    #[test]
    fn timestamp_bytes_are_ignored() {
        let c = GenConfig { timestamp_offset: Some(18), ..cfg(10_000, 128, 4) };
        let r = run_echo(c.clone(), Duration::from_secs(5), |n, mut f, out| {
            f[18..22].copy_from_slice(&(n as u32).wrapping_mul(2654435761).to_le_bytes());
            out.push(f)
        });
        assert!(r.clean() && r.matched == 10_000, "{r:?}");
        // One byte past the stamp is still checked.
        let r = run_echo(c, Duration::from_secs(5), |n, mut f, out| {
            if n == 77 {
                f[22] ^= 1;
            }
            out.push(f)
        });
        assert_eq!((r.corrupted, r.matched), (1, 9_999), "{r:?}");
        // A stamp inside the pattern (slow path), and a byte past it.
        let c = GenConfig { timestamp_offset: Some(60), ..cfg(10_000, 128, 4) };
        let r = run_echo(c, Duration::from_millis(200), |n, mut f, out| {
            f[60..64].copy_from_slice(&(n as u32 | 1).to_le_bytes());
            if n == 5 {
                f[64] ^= 0x80;
            }
            out.push(f)
        });
        assert_eq!((r.corrupted, r.matched), (1, 9_999), "{r:?}");
    }

    #[test]
    fn the_touch_byte_and_destination_are_parameters() {
        // Upstream's echo: byte 63 incremented, to 10.1.0.2. The echo thread here touches
        // byte 42; undo that and touch 63 instead.
        let c = GenConfig { touch_offset: 63, dst_ip: [10, 1, 0, 2], ..cfg(3_000, 64, 4) };
        let r = run_echo(c.clone(), Duration::from_millis(200), |n, mut f, out| {
            assert_eq!(&f[30..34], &[10, 1, 0, 2]);
            assert_eq!(testbed_regs::inet::checksum(&f[14..34]), 0);
            f[TOUCH_OFFSET] = f[TOUCH_OFFSET].wrapping_sub(1);
            if n != 9 {
                f[63] = f[63].wrapping_add(1);
            }
            out.push(f)
        });
        assert_eq!((r.corrupted, r.matched), (1, 2_999), "the one frame touched at 42 only: {r:?}");
        for bad in [43, 54, 64] {
            assert!(GenConfig { touch_offset: bad, ..c.clone() }.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn padded_frames_may_come_back_trimmed_but_padding_is_checked() {
        let r = run_echo(cfg(2_000, 56, 2), Duration::from_millis(200), |n, mut f, out| {
            assert_eq!(f.len(), 60);
            if n % 2 == 0 {
                f.truncate(56); // the IPv4 total length + 14 rule
            } else if n == 7 {
                f[58] = 1;
            }
            out.push(f)
        });
        assert_eq!((r.corrupted, r.matched, r.lost), (1, 1_999, 0), "{r:?}");
    }

    #[test]
    fn corrupted_byte_is_detected() {
        for (at, size) in [(63usize, 64usize), (TOUCH_OFFSET, 64), (20, 64), (5, 64), (1499, 1500)] {
            let r = run_echo(cfg(5_000, size, 3), Duration::from_millis(200), move |n, mut f, out| {
                if n == 1234 {
                    f[at] ^= 0x10;
                }
                out.push(f)
            });
            assert_eq!(r.corrupted, 1, "byte {at}: {r:?}");
            assert_eq!(r.matched, 4_999, "byte {at}: {r:?}");
            assert_eq!((r.lost, r.reordered, r.duplicated), (0, 0, 0), "byte {at}: {r:?}");
        }
        // A truncated frame too.
        let r = run_echo(cfg(5_000, 128, 3), Duration::from_millis(200), |n, mut f, out| {
            if n == 99 {
                f.pop();
            }
            out.push(f)
        });
        assert_eq!((r.corrupted, r.matched), (1, 4_999), "{r:?}");
    }

    #[test]
    fn dropped_packet_is_lost() {
        let r = run_echo(cfg(5_000, 64, 2), Duration::from_millis(100), |n, f, out| {
            if n != 2500 {
                out.push(f)
            }
        });
        assert_eq!((r.sent, r.received, r.matched, r.lost), (5_000, 4_999, 4_999, 1), "{r:?}");
        assert_eq!((r.corrupted, r.reordered, r.duplicated, r.in_flight), (0, 0, 0, 0), "{r:?}");
    }

    #[test]
    fn reordered_pair_and_duplicate_are_detected() {
        let mut held: Option<Frame> = None;
        let r = run_echo(cfg(5_000, 64, 1), Duration::from_millis(200), move |n, f, out| {
            if n == 1000 {
                held = Some(f);
            } else {
                out.push(f);
                if n == 1001 {
                    out.push(held.take().unwrap());
                }
            }
        });
        assert_eq!((r.reordered, r.matched, r.lost, r.corrupted), (1, 4_999, 0, 0), "{r:?}");

        let r = run_echo(cfg(5_000, 64, 1), Duration::from_millis(200), |n, f, out| {
            if n == 10 {
                out.push(f.clone());
            }
            out.push(f)
        });
        assert_eq!((r.duplicated, r.matched, r.received, r.lost), (1, 5_000, 5_001, 0), "{r:?}");
    }

    #[test]
    fn rate_limit_paces_sends() {
        let mut port = Loopback::new(1024);
        let c = GenConfig { rate_pps: Some(20_000.0), ..cfg(2_000, 64, 1) };
        let t = Instant::now();
        let r = Generator::new(c).with_expect(Expect::Loopback).run(&mut port, deadline());
        let secs = t.elapsed().as_secs_f64();
        // All of them: a run cut short would also be quick.
        assert!(r.clean() && r.matched == 2_000, "{r:?}");
        assert!((0.08..0.5).contains(&secs), "2000 packets at 20 kpps took {secs} s");
    }

    #[test]
    fn window_bounds_in_flight_and_step_interleaves() {
        let mut port = Loopback::new(1 << 16);
        let mut g = Generator::new(GenConfig { window: 10, ..cfg(100, 64, 1) }).with_expect(Expect::Loopback);
        let s = g.step(&mut port);
        assert_eq!(s.sent, 10, "window of 10");
        assert_eq!(g.report().in_flight, 10);
        let mut steps = 1;
        while !g.step(&mut port).done {
            steps += 1;
            assert!(steps < 1000);
        }
        let r = g.report();
        assert!(r.clean() && r.matched == 100, "{r:?}");
    }

    #[test]
    fn deadline_cuts_a_silent_link_short() {
        let mut port = crate::loopback::Null::default();
        let mut g = Generator::new(cfg(1_000, 64, 1));
        let r = g.run(&mut port, Instant::now() + Duration::from_millis(50));
        assert_eq!((r.sent, r.received, r.lost, r.in_flight), (256, 0, 256, 256), "{r:?}");
        assert_eq!(port.dropped(), 256);
    }

    #[test]
    fn report_serializes() {
        let r = GenReport { sent: 3, ..Default::default() };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["sent"], 3);
        assert!(j.get("latency_p99_us").is_some());
    }
}

/// The generator as the NIC's own Ethernet port ("generator on the device side"): the NIC's
/// polling thread drives it, so a benchmark needs no third thread to feed the wire. The
/// NIC's `recv` runs one generator step (checking what the NIC sent since, sending what
/// the window allows); its `send` hands an echoed frame to the checker.
pub struct GeneratorPort {
    gen: std::sync::Arc<std::sync::Mutex<Generator>>,
    /// Traffic starts once this is set (the driver must have its queues up first).
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
    to_nic: std::collections::VecDeque<Frame>,
    from_nic: Vec<Frame>,
}

/// The generator's side of the shim: what it sends goes to the NIC, what it receives
/// comes from the NIC.
struct Shim<'a> {
    to_nic: &'a mut std::collections::VecDeque<Frame>,
    from_nic: &'a mut Vec<Frame>,
}

impl EthPort for Shim<'_> {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = max.min(self.from_nic.len());
        out.extend(self.from_nic.drain(..n));
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.to_nic.push_back(frame);
        true
    }

    fn flush(&mut self) {}
}

impl GeneratorPort {
    /// A port around `gen`, silent until [`GeneratorPort::start`]'s flag is raised; keep
    /// the returned handle to watch progress and read the report.
    pub fn new(gen: Generator) -> (GeneratorPort, GeneratorHandle) {
        let gen = std::sync::Arc::new(std::sync::Mutex::new(gen));
        let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let port = GeneratorPort {
            gen: gen.clone(),
            go: go.clone(),
            to_nic: Default::default(),
            from_nic: Vec::new(),
        };
        (port, GeneratorHandle { gen, go })
    }
}

/// The benchmark's handle on a [`GeneratorPort`] owned by a NIC.
#[derive(Clone)]
pub struct GeneratorHandle {
    gen: std::sync::Arc<std::sync::Mutex<Generator>>,
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GeneratorHandle {
    /// Starts the traffic.
    pub fn start(&self) {
        self.go.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Every packet sent and back (or written off).
    pub fn done(&self) -> bool {
        self.gen.lock().unwrap_or_else(|e| e.into_inner()).done()
    }

    /// The report so far.
    pub fn report(&self) -> GenReport {
        self.gen.lock().unwrap_or_else(|e| e.into_inner()).report()
    }
}

impl EthPort for GeneratorPort {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        if !self.go.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
        if self.to_nic.len() < max {
            let mut g = self.gen.lock().unwrap_or_else(|e| e.into_inner());
            g.step(&mut Shim { to_nic: &mut self.to_nic, from_nic: &mut self.from_nic });
        }
        let n = max.min(self.to_nic.len());
        out.extend(self.to_nic.drain(..n));
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.from_nic.push(frame);
        true
    }

    fn flush(&mut self) {}
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn generator_port_checks_what_a_loop_sends_back() {
        let cfg = GenConfig { packets: 10_000, size: 128, flows: 8, window: 64, ..GenConfig::default() };
        let (mut port, gen) = GeneratorPort::new(Generator::new(cfg).with_expect(Expect::Loopback));
        let mut frames = vec![];
        assert_eq!(port.recv(&mut frames, 32), 0, "silent until started");
        gen.start();
        let t = Instant::now();
        while !gen.done() {
            assert!(t.elapsed().as_secs() < 20, "loop did not finish");
            port.recv(&mut frames, 32);
            for f in frames.drain(..) {
                port.send(f);
            }
        }
        let r = gen.report();
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.matched, 10_000);
    }
}
