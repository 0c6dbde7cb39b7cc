//! Device-level tests: the model driven as a driver would, through its BAR shared pages,
//! over fake guest RAM (a memfd behind `GuestMemory`) and a cable as the wire.

use super::*;
use crate::packet::build::{ipv4, udp};
use pcie_model::testing::{garbage, garbage_round, read32, settle, wait, write32, GuestRam};
use regs::ext::counter as c;
use regs::{config, nb_page, notif, pipe_page, prefetch, queue, state};
use std::time::{Duration, Instant};
use wire::{cable, CableEnd};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: u64 = 32 << 20;
const MIB: u64 = 1 << 20;
/// TX data buffers live here (2 MiB aligned).
const TXBUF: u64 = RAM + 24 * MIB;
/// An address nothing maps.
const NOWHERE: u64 = 0x7_0000_0000;

fn cfg() -> EnsoConfig {
    EnsoConfig { num_pipes: 8, num_nb_pairs: 2, pipe_flits: 64, notif_entries: 8, ..EnsoConfig::default() }
}
fn pipe_base(p: u32) -> u64 {
    RAM + p as u64 * 2 * MIB
}
fn rx_ring(j: u32) -> u64 {
    RAM + 16 * MIB + j as u64 * 2 * MIB
}
fn tx_ring(j: u32) -> u64 {
    rx_ring(j) + MIB
}

struct Rig {
    nic: EnsoNic,
    ram: GuestRam,
    bar0: Arc<ShmRegion>,
    bar2: Arc<ShmRegion>,
    wire: CableEnd,
    tx_tail: [u32; 2],
    seq: u32,
    /// Register mode mmio: software's queue-page accesses trap (`w`, `r`).
    mmio: bool,
}

fn rig_with(cfg: EnsoConfig) -> Rig {
    let (nic_end, wire) = cable(64);
    let mut nic = EnsoNic::new(cfg, Box::new(nic_end)).unwrap();
    let ram = GuestRam::new(RAM, RAM_LEN);
    ram.attach(&mut nic);
    // The register file itself (what a driver maps in shared mode; inspection only in
    // mmio mode, where software goes through `w` and `r`).
    let (bar0, bar2) = (nic.shared.bar0.clone(), nic.shared.bar2.clone());
    let mmio = cfg.registers == RegisterMode::Mmio;
    Rig { nic, ram, bar0, bar2, wire, tx_tail: [0; 2], seq: 0, mmio }
}

/// A rig whose driver opted into every extension (the ENABLE bit, prefetch doorbells,
/// queue-state acknowledgements, identity): what most tests below drive.
fn rig() -> Rig {
    let mut r = rig_with(cfg());
    r.set_ext(ext::EXT_ENABLE, ext::extension::ALL);
    r
}

fn send_notif(addr: u64, len: u64) -> [u8; 64] {
    let mut n = [0u8; 64];
    n[notif::SIGNAL..][..8].copy_from_slice(&notif::SIGNAL_SEND.to_le_bytes());
    n[notif::TX_PHYS_ADDR..][..8].copy_from_slice(&addr.to_le_bytes());
    n[notif::TX_LENGTH..][..8].copy_from_slice(&len.to_le_bytes());
    n
}

fn config_notif(id: u64, fields: &[(usize, &[u8])]) -> [u8; 64] {
    let mut n = [0u8; 64];
    n[notif::SIGNAL..][..8].copy_from_slice(&notif::SIGNAL_CONFIG.to_le_bytes());
    n[notif::CONFIG_ID..][..8].copy_from_slice(&id.to_le_bytes());
    for (at, b) in fields {
        n[*at..*at + b.len()].copy_from_slice(b);
    }
    n
}

fn flow_entry(dst_ip: u32, dport: u16, src_ip: u32, sport: u16, pipe: u32) -> [u8; 64] {
    config_notif(
        config::FLOW_TABLE,
        &[
            (config::FT_DST_PORT, &dport.to_le_bytes()),
            (config::FT_SRC_PORT, &sport.to_le_bytes()),
            (config::FT_DST_IP, &dst_ip.to_le_bytes()),
            (config::FT_SRC_IP, &src_ip.to_le_bytes()),
            (config::FT_PIPE_ID, &pipe.to_le_bytes()),
        ],
    )
}

fn fallback(n: u32, mask: u32, rr: bool) -> [u8; 64] {
    config_notif(
        config::FALLBACK_QUEUES,
        &[
            (config::FB_COUNT, &n.to_le_bytes()),
            (config::FB_MASK, &mask.to_le_bytes()),
            (config::FB_ENABLE_RR, &(rr as u64).to_le_bytes()),
        ],
    )
}

impl Rig {
    fn ram64(&self, addr: u64) -> u64 {
        self.ram.ram.read64(addr - RAM)
    }

    fn ext(&mut self, off: u64) -> u32 {
        read32(&mut self.nic, 0, off)
    }
    fn set_ext(&mut self, off: u64, v: u32) {
        write32(&mut self.nic, 0, off, v);
    }

    fn enable_nb_at(&self, j: u32, rx: u64, tx: u64) {
        let p = nb_page(j);
        for r in [queue::RX_HEAD, queue::RX_TAIL, queue::TX_HEAD, queue::TX_TAIL] {
            self.bar2.write32(p + r, 0);
        }
        self.bar2.write32(p + queue::TX_MEM_HIGH, (tx >> 32) as u32);
        self.bar2.write32(p + queue::TX_MEM_LOW, tx as u32);
        self.bar2.write32(p + queue::RX_MEM_HIGH, (rx >> 32) as u32);
        self.bar2.write32(p + queue::RX_MEM_LOW, rx as u32 | queue::ENABLE);
        let (off, bit) = state::nb_bit(j);
        wait("NB enable ack", || self.bar0.read32(off) & bit != 0);
    }
    fn enable_nb(&self, j: u32) {
        self.enable_nb_at(j, rx_ring(j), tx_ring(j));
    }

    fn enable_pipe_at(&self, p: u32, base: u64, nb: u32) {
        let pg = pipe_page(p);
        self.bar2.write32(pg + queue::RX_HEAD, 0);
        self.bar2.write32(pg + queue::RX_TAIL, 0);
        self.bar2.write32(pg + queue::RX_MEM_HIGH, (base >> 32) as u32);
        self.bar2.write32(pg + queue::RX_MEM_LOW, base as u32 | queue::ENABLE | nb);
        let (off, bit) = state::pipe_bit(p);
        wait("pipe enable ack", || self.bar0.read32(off) & bit != 0);
    }
    fn enable_pipe(&self, p: u32, nb: u32) {
        self.enable_pipe_at(p, pipe_base(p), nb);
    }

    fn disable_pipe(&self, p: u32) {
        let pg = pipe_page(p);
        let low = self.bar2.read32(pg + queue::RX_MEM_LOW);
        self.bar2.write32(pg + queue::RX_MEM_LOW, low & !queue::ENABLE);
        let (off, bit) = state::pipe_bit(p);
        wait("pipe disable ack", || self.bar0.read32(off) & bit == 0);
    }

    /// Posts TX notifications on pair `j` and waits until the device has taken them.
    fn post(&mut self, j: u32, entries: &[[u8; 64]]) {
        let n = self.nic.enso_config().notif_entries;
        for e in entries {
            let t = self.tx_tail[j as usize];
            self.ram.write(tx_ring(j) + 64 * t as u64, e);
            self.tx_tail[j as usize] = (t + 1) % n;
        }
        let tail = self.tx_tail[j as usize];
        self.w(nb_page(j) + queue::TX_TAIL, tail);
        wait("tx_head", || self.bar2.read32(nb_page(j) + queue::TX_HEAD) == tail);
    }

    /// A queue-page write as software makes it: a store into the mapped page (shared) or
    /// a trapped write (mmio).
    fn w(&mut self, off: u64, v: u32) {
        if self.mmio {
            self.nic.bar_write(regs::QUEUE_BAR, off, &v.to_le_bytes());
        } else {
            self.bar2.write32(off, v);
        }
    }
    /// A queue-page read as software makes it.
    fn r(&mut self, off: u64) -> u32 {
        if self.mmio {
            let mut b = [0u8; 4];
            self.nic.bar_read(regs::QUEUE_BAR, off, &mut b);
            u32::from_le_bytes(b)
        } else {
            self.bar2.read32(off)
        }
    }

    fn pipe_tail(&self, p: u32) -> u32 {
        self.bar2.read32(pipe_page(p) + queue::RX_TAIL)
    }
    fn nb_rx_tail(&self, j: u32) -> u32 {
        self.bar2.read32(nb_page(j) + queue::RX_TAIL)
    }
    fn set_head(&mut self, p: u32, h: u32) {
        self.w(pipe_page(p) + queue::RX_HEAD, h);
    }
    /// RX notification `i` of pair `j`: (signal, queue id, tail).
    fn rx_notif(&self, j: u32, i: u32) -> (u64, u64, u64) {
        let a = rx_ring(j) + 64 * i as u64;
        (self.ram64(a), self.ram64(a + 8), self.ram64(a + 16))
    }
    /// Consumes RX notification `i` as software does (clear the signal, advance rx_head).
    fn consume(&mut self, j: u32, i: u32) {
        self.ram.ram.write64(rx_ring(j) + 64 * i as u64 - RAM, 0);
        let n = self.nic.enso_config().notif_entries;
        self.w(nb_page(j) + queue::RX_HEAD, (i + 1) % n);
    }

    fn inject(&mut self, frames: &[Vec<u8>]) {
        self.wire.send_all(frames);
    }

    fn prefetch(&mut self, j: u32, pipe: u32) {
        self.seq += 1;
        self.bar0.write32(prefetch::slot(j) + prefetch::PIPE_ID, pipe);
        self.bar0.write32(prefetch::slot(j) + prefetch::SEQ, self.seq);
    }

    fn wait_counter(&self, idx: u32, v: u64) {
        wait(regs::ext::counter::NAMES[idx as usize], || self.nic.counter(idx) >= v);
        assert_eq!(self.nic.counter(idx), v, "{}", regs::ext::counter::NAMES[idx as usize]);
    }

    fn received(&mut self, n: usize) -> Vec<Vec<u8>> {
        self.wire.recv_n(n, Duration::from_secs(10))
    }

    /// Pair 0 + pipe 0, every frame to pipe 0 through a single fallback queue.
    fn basic(&mut self) {
        self.enable_nb(0);
        self.enable_pipe(0, 0);
        self.post(0, &[fallback(1, 0, false)]);
    }
}

#[test]
fn identity_config_space_and_page0() {
    let mut r = rig();
    let cs = r.nic.config();
    assert_eq!((cs.vendor_id(), cs.device_id()), (0x1172, 0x0000));
    assert_eq!(&cs.bytes()[0x09..0x0c], &[0x00, 0x00, 0x02]);
    assert!(cs.msix().is_none(), "the card polls only");
    let b0 = cs.bar(0).unwrap();
    let b2 = cs.bar(2).unwrap();
    assert_eq!((b0.size, b0.kind, b0.prefetchable), (64 << 10, BarKind::Mem64, true), "as on the card");
    assert_eq!((b2.size, b2.kind, b2.prefetchable), (1 << 30, BarKind::Mem64, true));
    assert_eq!(r.ext(ext::ID), ext::ID_VALUE);
    assert_eq!(r.ext(ext::VERSION), ext::VERSION_VALUE);
    assert_eq!([r.ext(ext::NUM_PIPES), r.ext(ext::NUM_NB_PAIRS)], [8, 2]);
    assert_eq!([r.ext(ext::PIPE_FLITS), r.ext(ext::NOTIF_ENTRIES)], [64, 8]);
    r.set_ext(ext::NOTIF_MODE, 1);
    assert_eq!(r.ext(ext::NOTIF_MODE), 1);
    r.set_ext(ext::NOTIF_MODE, 7);
    assert_eq!(r.ext(ext::NOTIF_MODE), 1, "bad mode ignored");
    r.set_ext(ext::ID, 0);
    r.set_ext(0x0ffc, 1);
    r.nic.bar_write(0, ext::NOTIF_MODE, &[0, 0]);
    r.nic.bar_write(2, 0x3000_0000, &[1, 2, 3, 4]);
    assert_eq!(r.nic.counter(c::BAD_REGISTER_WRITES), 5, "mode 7, ID, unknown, short, BAR2 hole");
    assert_eq!(r.nic.counters()[c::BAD_REGISTER_WRITES as usize], 5);
    assert_eq!(PciDevice::counters(&r.nic).snapshot().bad_register_writes, 5);
    let lo = ext::COUNTERS + 8 * c::BAD_REGISTER_WRITES as u64;
    assert_eq!((r.ext(lo), r.ext(lo + 4)), (5, 0));
    let mut b = [0u8; 8];
    r.nic.bar_read(0, lo, &mut b);
    assert_eq!(u64::from_le_bytes(b), 5);
    assert_eq!(r.ext(ext::ERROR_STATUS), 1 << c::BAD_REGISTER_WRITES);
    let t0 = r.ext(ext::TIMESTAMP_LO) as u64 | (r.ext(ext::TIMESTAMP_HI) as u64) << 32;
    std::thread::sleep(Duration::from_millis(1));
    assert!(r.nic.ticks() >= t0 + 200_000, "200 MHz clock");
    r.set_ext(ext::COUNTERS_CLEAR, 1);
    assert_eq!(r.nic.counters(), [0; COUNT]);
    assert_eq!(r.ext(ext::ERROR_STATUS), 0);
    // Shared pages read through the trap path too.
    r.bar0.write32(prefetch::slot(1), 0x55);
    assert_eq!(r.ext(prefetch::slot(1)), 0x55);
}

#[test]
fn reactive_notifications() {
    let mut r = rig();
    r.basic();
    r.inject(&[udp(64, 1, 1), udp(64, 1, 1), udp(64, 1, 1)]);
    wait("3 packets", || r.pipe_tail(0) == 3);
    r.wait_counter(c::RX_PACKETS, 3);
    assert_eq!(r.nb_rx_tail(0), 1, "one notification for the burst");
    assert_eq!(r.rx_notif(0, 0), (1, 0, 1));
    r.consume(0, 0);
    r.set_head(0, 1);
    wait("notification after head update", || r.nb_rx_tail(0) == 2);
    assert_eq!(r.rx_notif(0, 1), (1, 0, 3), "current tail");
    r.consume(0, 1);
    r.set_head(0, 3);
    r.wait_counter(c::HEAD_UPDATES, 2);
    settle();
    assert_eq!(r.nb_rx_tail(0), 2, "head == tail: bit cleared, no notification");
    r.inject(&[udp(100, 1, 1)]);
    wait("next notification", || r.nb_rx_tail(0) == 3);
    assert_eq!(r.rx_notif(0, 2), (1, 0, 5), "100 B = 2 flits");
    assert_eq!(r.nic.counter(c::RX_NOTIFICATIONS), 3);
    let pcie = PciDevice::counters(&r.nic).snapshot();
    assert!(
        pcie.dma_write_meta_bytes >= 3 * 64
            && pcie.dma_write_bytes - pcie.dma_write_meta_bytes >= 3 * 64 + 100
    );
}

#[test]
fn per_packet_mode() {
    let mut r = rig();
    r.basic();
    r.set_ext(ext::NOTIF_MODE, ext::MODE_PER_PACKET);
    settle();
    r.inject(&[udp(64, 1, 1), udp(64, 1, 1), udp(64, 1, 1)]);
    wait("3 notifications", || r.nb_rx_tail(0) == 3);
    let tails: Vec<u64> = (0..3).map(|i| r.rx_notif(0, i).2).collect();
    assert_eq!(tails, [1, 2, 3]);
}

#[test]
fn ring_wraps_and_never_overwrites() {
    let mut r = rig();
    r.basic();
    let f = |len: usize, tag: u8| {
        let mut v = udp(len, 1, 1);
        v[len - 1] = tag;
        v
    };
    r.inject(&[f(1000, 1), f(1000, 2)]);
    wait("32 flits", || r.pipe_tail(0) == 32);
    r.set_head(0, 32);
    r.inject(&[f(1500, 3)]);
    wait("56 flits", || r.pipe_tail(0) == 56);
    let wrapped = f(1000, 4);
    r.inject(std::slice::from_ref(&wrapped));
    wait("wrapped to 8", || r.pipe_tail(0) == 8);
    let mut got = r.ram.read(pipe_base(0) + 56 * 64, 512);
    got.extend(r.ram.read(pipe_base(0), 1000 - 512));
    assert_eq!(got, wrapped, "split across the end of the ring");
    r.set_head(0, 56);
    r.inject(&[f(1000, 5), f(1000, 6), f(1000, 7)]);
    r.wait_counter(c::RX_DROP_PIPE_FULL, 1);
    assert_eq!(r.pipe_tail(0), 40);
    assert_eq!(r.ram.read(pipe_base(0) + 56 * 64, 1), vec![wrapped[0]], "unread data intact");
    // Free everything and keep going.
    r.set_head(0, 40);
    r.inject(&[f(1000, 8)]);
    wait("after drop", || r.pipe_tail(0) == 56);
}

#[test]
fn prefetch_doorbell() {
    let mut r = rig();
    r.enable_nb(0);
    r.enable_pipe(0, 0);
    r.enable_pipe(1, 0);
    r.post(0, &[flow_entry(9, 80, 0, 0, 0), flow_entry(9, 81, 0, 0, 1)]);
    r.inject(&[udp(64, 9, 80), udp(64, 9, 81)]);
    wait("two notifications", || r.nb_rx_tail(0) == 2);
    r.inject(&[udp(64, 9, 81)]);
    wait("pipe 1 tail", || r.pipe_tail(1) == 2);
    settle();
    assert_eq!(r.nb_rx_tail(0), 2, "pipe 1's bit is set");
    r.prefetch(0, 1);
    wait("prefetched notification", || r.nb_rx_tail(0) == 3);
    assert_eq!(r.rx_notif(0, 2), (1, 1, 2));
    assert_eq!(r.nic.counter(c::PREFETCHES), 1);
    r.prefetch(0, 7); // pipe 7 is not enabled
    r.wait_counter(c::BAD_REGISTER_WRITES, 1);
}

/// Keys (dst IPs of UDP flows) that, inserted in order, fill all four candidate slots of
/// `target`: each filler lands in its sub-table because its lower slots are taken first.
fn colliding_keys(target: u32) -> Vec<u32> {
    use regs::{flow_hash, FLOW_ENTRIES, FLOW_SUBTABLES};
    use std::collections::HashSet;
    let slot = |t: u32, ip: u32| flow_hash(t, 0, ip, 0, 80) % FLOW_ENTRIES;
    fn place(
        t: u32,
        s: u32,
        taken: &mut HashSet<(u32, u32)>,
        next: &mut u32,
        out: &mut Vec<u32>,
        slot: &dyn Fn(u32, u32) -> u32,
    ) {
        let ip = loop {
            *next += 1;
            if slot(t, *next) == s {
                break *next;
            }
        };
        for u in 0..t {
            let su = slot(u, ip);
            if !taken.contains(&(u, su)) {
                place(u, su, taken, next, out, slot);
            }
        }
        taken.insert((t, s));
        out.push(ip);
    }
    let mut taken = HashSet::new();
    let mut next = 1_000_000;
    let mut out = vec![];
    for t in 0..FLOW_SUBTABLES {
        let s = slot(t, target);
        if !taken.contains(&(t, s)) {
            place(t, s, &mut taken, &mut next, &mut out, &slot);
        }
    }
    out
}

#[test]
fn flow_table_and_fallback() {
    let mut r = rig();
    r.enable_nb(0);
    for p in 0..4 {
        r.enable_pipe(p, 0);
    }
    // Miss without fallback queues.
    r.inject(&[udp(64, 5, 5)]);
    r.wait_counter(c::RX_DROP_NO_FLOW, 1);
    // Exact match: UDP keys have src = 0; TCP uses the full key except on SYN.
    r.post(0, &[flow_entry(5, 5, 0, 0, 3), flow_entry(6, 80, 7, 1000, 2), flow_entry(6, 80, 0, 0, 1)]);
    r.inject(&[udp(64, 5, 5), ipv4(64, 6, 7, 6, 1000, 80, 0x10), ipv4(64, 6, 7, 6, 1000, 80, 0x02)]);
    wait("hits", || r.pipe_tail(3) == 1 && r.pipe_tail(2) == 1 && r.pipe_tail(1) == 1);
    // Fallback by hash: two queues, mask 1.
    r.post(0, &[fallback(2, 1, false)]);
    let h0 = regs::flow_hash(0, 0, 77, 0, 7);
    r.inject(&[udp(64, 77, 7)]);
    let p = h0 & 1;
    wait("hash fallback", || r.pipe_tail(p) == 1 + (p == 1) as u32);
    // Round robin over 0..n−1.
    r.post(0, &[fallback(4, 3, true)]);
    let before: Vec<u32> = (0..4).map(|p| r.pipe_tail(p)).collect();
    r.inject(&[udp(64, 77, 7), udp(64, 77, 7), udp(64, 77, 7), udp(64, 77, 7)]);
    wait("round robin", || (0..4).all(|p| r.pipe_tail(p) == before[p as usize] + 1));
    // Table full: the four candidate slots of a key taken, no eviction.
    let target = 4242;
    let fillers = colliding_keys(target);
    let mut local = crate::flow::FlowTable::default();
    for ip in &fillers {
        local.insert(crate::packet::FlowKey { dst_ip: *ip, dst_port: 80, ..Default::default() }, 0).unwrap();
    }
    assert!(local
        .insert(crate::packet::FlowKey { dst_ip: target, dst_port: 80, ..Default::default() }, 0)
        .is_err());
    for chunk in fillers.chunks(6) {
        let entries: Vec<[u8; 64]> = chunk.iter().map(|ip| flow_entry(*ip, 80, 0, 0, 0)).collect();
        r.post(0, &entries);
    }
    r.post(0, &[flow_entry(target, 80, 0, 0, 1)]);
    r.wait_counter(c::FLOW_TABLE_FULL, 1);
    assert_eq!(r.nic.counter(c::BAD_CONFIG), 0);
}

#[test]
fn tx_splits_frames_and_completes_in_order() {
    let mut r = rig();
    r.basic();
    let frames = [udp(60, 1, 1), udp(100, 2, 2), udp(1500, 3, 3)];
    let mut off = 0u64;
    for f in &frames {
        r.ram.write(TXBUF + off, f);
        off += (f.len() as u64).next_multiple_of(64);
    }
    assert_eq!(off, 192 + 1536);
    let len = 192 + 1500; // frames at 0, 64 and 192; the last one unpadded
    let single = udp(200, 4, 4);
    r.ram.write(TXBUF + 4096, &single);
    r.ram.write(TXBUF + 2 * MIB - 64, &udp(128, 1, 1));
    let before = r.nic.counter(c::TX_COMPLETIONS);
    r.post(
        0,
        &[send_notif(TXBUF, len), send_notif(TXBUF + 2 * MIB - 64, 128), send_notif(TXBUF + 4096, 200)],
    );
    let got = r.received(4);
    assert_eq!(got.len(), 4);
    assert_eq!(&got[..3], &frames);
    assert_eq!(got[3], single);
    r.wait_counter(c::TX_BAD_NOTIFICATION, 1);
    r.wait_counter(c::TX_COMPLETIONS, before + 3);
    r.wait_counter(c::TX_PACKETS, 4);
    assert_eq!(r.nic.counter(c::TX_BYTES), 60 + 100 + 1500 + 200);
    for i in 1..4 {
        assert_eq!(r.ram64(tx_ring(0) + 64 * i), 0, "completion {i}: signal 0");
    }
    assert_eq!(r.bar2.read32(nb_page(0) + queue::TX_HEAD), 4);
    let pcie = PciDevice::counters(&r.nic).snapshot();
    assert!(pcie.dma_read_meta_bytes >= 4 * 64);
}

#[test]
fn timestamps_and_rate_limit() {
    let mut r = rig();
    r.basic();
    r.post(0, &[config_notif(config::TIMESTAMP, &[(config::TS_ENABLE, &1u64.to_le_bytes())])]);
    // TX: the device clock, big-endian at byte 18.
    r.ram.write(TXBUF, &udp(64, 1, 1));
    let t0 = r.nic.ticks() as u32;
    r.post(0, &[send_notif(TXBUF, 64)]);
    let t1 = r.nic.ticks() as u32;
    let got = r.received(1);
    let stamp = u32::from_be_bytes(got[0][18..22].try_into().unwrap());
    assert!(t0 <= stamp && stamp <= t1, "{t0} <= {stamp} <= {t1}");
    // RX: now − stamp.
    let mut f = udp(64, 1, 1);
    let sent = (r.nic.ticks() as u32).wrapping_sub(1000);
    f[18..22].copy_from_slice(&sent.to_be_bytes());
    r.inject(&[f]);
    wait("rx", || r.pipe_tail(0) == 1);
    let rtt = u32::from_be_bytes(r.ram.read(pipe_base(0) + 18, 4).try_into().unwrap());
    assert!((1000..1000 + 200_000_000).contains(&rtt), "rtt {rtt}");
    // Rate limit: 1 flit per 2000 cycles (10 µs) → 20 one-flit frames take ≥ ~200 µs.
    r.post(
        0,
        &[config_notif(
            config::RATE_LIMIT,
            &[
                (config::RL_DENOMINATOR, &2000u16.to_le_bytes()),
                (config::RL_NUMERATOR, &1u16.to_le_bytes()),
                (config::RL_ENABLE, &1u32.to_le_bytes()),
            ],
        )],
    );
    let sends: Vec<[u8; 64]> = (0..5).map(|_| send_notif(TXBUF, 64)).collect();
    let t = Instant::now();
    for _ in 0..4 {
        r.post(0, &sends);
    }
    assert!(t.elapsed() >= Duration::from_micros(180), "{:?}", t.elapsed());
    assert_eq!(r.received(20).len(), 20);
    r.post(0, &[config_notif(config::RATE_LIMIT, &[(config::RL_ENABLE, &1u32.to_le_bytes())])]);
    r.wait_counter(c::BAD_CONFIG, 1);
}

#[test]
fn every_error_is_counted_and_the_device_keeps_serving() {
    let mut r = rig();
    r.basic();
    r.enable_pipe_at(3, NOWHERE, 0); // data DMA will fail
    r.enable_nb_at(1, NOWHERE, NOWHERE);
    r.enable_pipe(4, 1); // notifications to an unmapped ring
    r.post(0, &[flow_entry(3, 3, 0, 0, 3), flow_entry(4, 4, 0, 0, 4), flow_entry(6, 6, 0, 0, 6)]);

    r.inject(&[vec![0u8; 10]]);
    r.wait_counter(c::RX_DROP_MALFORMED, 1);
    r.inject(&[udp(64, 6, 6)]);
    r.wait_counter(c::RX_DROP_PIPE_DISABLED, 1);
    r.inject(&[udp(64, 3, 3)]);
    r.wait_counter(c::RX_DROP_DMA, 1);
    r.inject(&[udp(64, 4, 4)]);
    r.wait_counter(c::DMA_ERRORS, 1);
    assert_eq!(r.pipe_tail(4), 1, "data delivered, notification lost");

    // Bad head: beyond the tail.
    r.inject(&[udp(64, 1, 1)]);
    wait("rx", || r.pipe_tail(0) == 1);
    r.set_head(0, 5);
    r.wait_counter(c::BAD_HEAD, 1);
    r.set_head(0, 1000);
    r.wait_counter(c::BAD_HEAD, 2);

    // Notification ring full (8 entries: 7 usable), per-packet mode, nothing consumed.
    r.set_ext(ext::NOTIF_MODE, ext::MODE_PER_PACKET);
    settle();
    r.inject(&vec![udp(64, 1, 1); 8]);
    r.wait_counter(c::RX_NOTIF_DROP_RING_FULL, 2);
    assert_eq!(r.nb_rx_tail(0), 7);
    assert_eq!(r.pipe_tail(0), 9, "data still delivered");

    // TX: unknown signal, zero length, oversized, unmapped data, garbage frame, bad config.
    r.ram.write(TXBUF, &[0xee; 256]);
    let mut odd = [0u8; 64];
    odd[0] = 7;
    r.post(
        0,
        &[
            odd,
            send_notif(TXBUF, 0),
            send_notif(TXBUF, regs::MAX_TX_TRANSFER + 64),
            send_notif(NOWHERE, 64),
            send_notif(TXBUF, 256),
            config_notif(99, &[]),
        ],
    );
    r.wait_counter(c::TX_BAD_NOTIFICATION, 3);
    r.wait_counter(c::TX_DROP_DMA, 1);
    r.wait_counter(c::TX_DROP_BAD_FRAME, 1);
    r.wait_counter(c::BAD_CONFIG, 1);
    // Bad tail.
    r.bar2.write32(nb_page(0) + queue::TX_TAIL, 100);
    r.wait_counter(c::BAD_TAIL, 1);
    r.bar2.write32(nb_page(0) + queue::TX_TAIL, r.tx_tail[0]);
    // Bad register writes.
    r.set_ext(ext::VERSION, 3);
    r.wait_counter(c::BAD_REGISTER_WRITES, 1);
    // A TX stream window write while the window is stopped.
    r.nic.bar_write(regs::EXT_BAR, ext::STREAM_TX_WINDOW, &[0; 8]);
    r.wait_counter(c::TX_DROP_STREAM, 1);
    // Unplugged wire.
    let port = r.nic.take_port();
    r.ram.write(TXBUF, &udp(64, 1, 1));
    r.post(0, &[send_notif(TXBUF, 64)]);
    r.wait_counter(c::TX_DROP_WIRE, 1);
    r.nic.replace_port(port);

    // Still serving: TX and RX.
    r.post(0, &[send_notif(TXBUF, 64)]);
    assert_eq!(r.received(1).len(), 1);
    r.set_ext(ext::NOTIF_MODE, ext::MODE_REACTIVE);
    for i in 0..7 {
        r.consume(0, i);
    }
    r.set_head(0, 9);
    r.inject(&[udp(64, 1, 1)]);
    wait("rx after errors", || r.pipe_tail(0) == 10);
    for idx in c::RX_DROP_PIPE_FULL..=c::LAST_ERROR {
        if idx != c::RX_DROP_PIPE_FULL && idx != c::FLOW_TABLE_FULL && idx != c::RX_DROP_NO_FLOW {
            assert_ne!(r.nic.counter(idx), 0, "{}", regs::ext::counter::NAMES[idx as usize]);
        }
    }
    assert_ne!(r.ext(ext::ERROR_STATUS), 0);
}

#[test]
fn garbage_everywhere_then_reset() {
    let mut r = rig();
    r.basic();
    r.post(0, &[flow_entry(5, 5, 0, 0, 0)]);
    r.inject(&[udp(64, 1, 1)]);
    wait("rx", || r.pipe_tail(0) == 1);
    let mut seed = 0x1234_5678_9abc_def1;
    // Garbage in every register, doorbell and TX ring entry, with frames flowing.
    for round in 0..20 {
        for p in 0..8 {
            for off in (0..queue::SIZE).step_by(4) {
                r.bar2.write32(pipe_page(p) + off, garbage(&mut seed));
            }
        }
        for j in 0..2 {
            for off in (0..queue::SIZE).step_by(4) {
                r.bar2.write32(nb_page(j) + off, garbage(&mut seed) & if round % 2 == 0 { !0 } else { 0xff });
            }
        }
        for off in (0x1000..0x4000).step_by(4) {
            r.bar0.write32(off, garbage(&mut seed));
        }
        for off in (0..64 * 8).step_by(4) {
            r.ram.ram.write32(tx_ring(0) - RAM + off, garbage(&mut seed));
        }
        garbage_round(&mut r.nic, &mut seed, |f| r.wire.send_all(f));
    }
    settle();
    // Reset: power-on state, then serve again.
    r.nic.reset();
    assert_eq!(r.nic.counters(), [0; COUNT]);
    assert_eq!(r.bar0.read32(state::PIPES), 0);
    assert_eq!(r.bar2.read32(pipe_page(0) + queue::RX_MEM_LOW), 0);
    assert_eq!(r.ext(ext::NOTIF_MODE), 0);
    assert_eq!(r.ext(ext::EXT_ENABLE), 0, "extensions are off after a reset");
    r.set_ext(ext::EXT_ENABLE, ext::extension::ALL);
    r.ram.ram.clear();
    r.tx_tail = [0; 2];
    r.enable_nb(0);
    r.enable_pipe(0, 0);
    let mut drain = vec![];
    r.wire.recv(&mut drain, 10_000);
    r.inject(&[udp(64, 5, 5)]);
    r.wait_counter(c::RX_DROP_NO_FLOW, 1); // flow table and fallback are gone
    r.post(0, &[fallback(1, 0, false)]);
    r.inject(&[udp(64, 5, 5)]);
    wait("rx after reset", || r.pipe_tail(0) == 1);
    assert_eq!(r.rx_notif(0, 0), (1, 0, 1));
    // Detach/attach keeps queue state.
    r.nic.detach();
    r.ram.attach(&mut r.nic);
    r.inject(&[udp(64, 5, 5)]);
    wait("rx after reattach", || r.pipe_tail(0) == 2);
    r.disable_pipe(0);
    r.inject(&[udp(64, 5, 5)]);
    r.wait_counter(c::RX_DROP_PIPE_DISABLED, 1);
}

#[test]
fn register_map_snapshot() {
    use std::fmt::Write;
    let mut s = String::new();
    let r = rig();
    let cs = r.nic.config();
    writeln!(
        s,
        "vendor {:#06x} device {:#06x} class {:#08x}",
        cs.vendor_id(),
        cs.device_id(),
        regs::CLASS_CODE
    )
    .unwrap();
    for b in cs.bars() {
        writeln!(s, "BAR{} {:#x} {:?} prefetchable={}", b.index, b.size, b.kind, b.prefetchable).unwrap();
    }
    for i in [0u8, 2] {
        if let BarBacking::Shared { areas, .. } = r.nic.bar_backing(i) {
            writeln!(s, "BAR{i} shared areas (8 pipes, 2 pairs): {areas:x?}").unwrap();
        }
    }
    writeln!(
        s,
        "BAR2 pipe_page(i) = i * {:#x}; nb_page(j) = {:#x} + j * {:#x}",
        regs::QUEUE_PAGE,
        nb_page(0),
        regs::QUEUE_PAGE
    )
    .unwrap();
    for (n, o) in [
        ("rx_tail", queue::RX_TAIL),
        ("rx_head", queue::RX_HEAD),
        ("rx_mem_low", queue::RX_MEM_LOW),
        ("rx_mem_high", queue::RX_MEM_HIGH),
        ("tx_tail", queue::TX_TAIL),
        ("tx_head", queue::TX_HEAD),
        ("tx_mem_low", queue::TX_MEM_LOW),
        ("tx_mem_high", queue::TX_MEM_HIGH),
    ] {
        writeln!(s, "  queue +{o:#04x} {n}").unwrap();
    }
    writeln!(
        s,
        "  rx_mem_low: NB_ID_MASK {:#x} PIPE_ADDR_MASK {:#x} (card); ENABLE {:#x} (extension)",
        queue::NB_ID_MASK,
        queue::PIPE_ADDR_MASK,
        queue::ENABLE,
    )
    .unwrap();
    writeln!(s, "BAR0 page 0 (trapped):").unwrap();
    for (n, o) in [
        ("ID", ext::ID),
        ("VERSION", ext::VERSION),
        ("NUM_PIPES", ext::NUM_PIPES),
        ("NUM_NB_PAIRS", ext::NUM_NB_PAIRS),
        ("PIPE_FLITS", ext::PIPE_FLITS),
        ("NOTIF_ENTRIES", ext::NOTIF_ENTRIES),
        ("NOTIF_MODE", ext::NOTIF_MODE),
        ("ERROR_STATUS", ext::ERROR_STATUS),
        ("COUNTERS_CLEAR", ext::COUNTERS_CLEAR),
        ("EXT_CAPS", ext::EXT_CAPS),
        ("EXT_ENABLE", ext::EXT_ENABLE),
        ("REGISTER_MODE", ext::REGISTER_MODE),
        ("TIMESTAMP_LO", ext::TIMESTAMP_LO),
        ("TIMESTAMP_HI", ext::TIMESTAMP_HI),
    ] {
        writeln!(s, "  {o:#05x} {n}").unwrap();
    }
    for (i, n) in regs::ext::counter::NAMES.iter().enumerate() {
        writeln!(s, "  {:#05x} counter {i:2} {n}", ext::COUNTERS + 8 * i as u64).unwrap();
    }
    writeln!(
        s,
        "BAR0 page 1-2 (extension, shared or trapped): prefetch slot(j) = {:#x} + 8j {{pipe_id u32, seq u32}}",
        prefetch::PAGE
    )
    .unwrap();
    writeln!(
        s,
        "BAR0 page 3 (extension, shared or trapped): pipe state bits @ {:#x}, pair state bits @ {:#x}",
        state::PIPES,
        state::NB_PAIRS
    )
    .unwrap();
    insta::assert_snapshot!("register_map", s);
}

#[test]
fn notification_trace_snapshot() {
    let mut r = rig();
    r.basic();
    r.ram.space.start_log();
    // Scenario: a burst of two frames, software catches up in two head writes, then a TX
    // transfer of two frames.
    r.inject(&[udp(64, 1, 1), udp(100, 1, 1)]);
    wait("burst", || r.nb_rx_tail(0) == 1 && r.pipe_tail(0) == 3);
    r.consume(0, 0);
    r.set_head(0, 1);
    wait("catch-up notification", || r.nb_rx_tail(0) == 2);
    r.consume(0, 1);
    r.set_head(0, 3);
    r.wait_counter(c::HEAD_UPDATES, 2);
    r.ram.write(TXBUF, &udp(64, 2, 2));
    r.ram.write(TXBUF + 64, &udp(64, 3, 3));
    r.post(0, &[send_notif(TXBUF, 128)]);
    assert_eq!(r.received(2).len(), 2);
    settle();
    let log = r.ram.space.take_log();
    let name = |a: u64| {
        if a >= TXBUF {
            format!("txbuf+{:#x}", a - TXBUF)
        } else if a >= tx_ring(0) {
            format!("nb0.tx[{}]+{}", (a - tx_ring(0)) / 64, (a - tx_ring(0)) % 64)
        } else if a >= rx_ring(0) {
            format!("nb0.rx[{}]+{}", (a - rx_ring(0)) / 64, (a - rx_ring(0)) % 64)
        } else {
            format!("pipe0+{:#x}", a - pipe_base(0))
        }
    };
    let mut s = String::new();
    for (write, addr, data) in log {
        let words: Vec<u64> = data
            .chunks(8)
            .take(2)
            .filter(|w| w.len() == 8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        let what = if !write {
            format!("DMA read  {:<16} {:>4} B", name(addr), data.len())
        } else if addr < rx_ring(0) {
            format!("DMA write {:<16} {:>4} B data", name(addr), data.len())
        } else {
            format!("DMA write {:<16} {:>4} B {:?}", name(addr), data.len(), words)
        };
        s.push_str(&what);
        s.push('\n');
    }
    insta::assert_snapshot!("notification_trace", s);
}

/// RX throughput of the model alone (64 B frames, one pipe, software keeping up).
/// `cargo test -p enso-nic --release -- --ignored rx_throughput --nocapture`
#[test]
#[ignore]
fn rx_throughput() {
    let mut r = rig_with(EnsoConfig { pipe_flits: 32768, notif_entries: 16384, ..cfg() });
    r.set_ext(ext::EXT_ENABLE, ext::extension::ALL);
    r.basic();
    let n = 2_000_000u64;
    let frame = udp(64, 1, 1);
    let batches: Vec<Vec<Vec<u8>>> = (0..n / 64).map(|_| vec![frame.clone(); 64]).collect();
    let t = Instant::now();
    let mut batches = batches.into_iter();
    let mut sent = 0;
    while r.nic.counter(c::RX_PACKETS) < n - r.wire.dropped() {
        if sent - r.nic.counter(c::RX_PACKETS) < 4096 {
            if let Some(b) = batches.next() {
                for f in b {
                    r.wire.send(f);
                }
                r.wire.flush();
                sent += 64;
            }
        }
        r.set_head(0, r.pipe_tail(0));
        let rx_head = r.nb_rx_tail(0);
        r.bar2.write32(nb_page(0) + queue::RX_HEAD, rx_head);
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!("{} frames in {s:.3} s: {:.2} Mpps (wire drops {})", n, n as f64 / s / 1e6, r.wire.dropped());
}

#[test]
fn tx_is_a_stream_frames_continue_across_transfers() {
    let mut r = rig();
    r.basic();
    // One 1500-byte frame cut in three transfers (the header itself split), then a whole one.
    let big = udp(1500, 9, 9);
    let small = udp(100, 8, 8);
    r.ram.write(TXBUF, &big);
    r.ram.write(TXBUF + 4096, &small);
    r.post(0, &[send_notif(TXBUF, 10), send_notif(TXBUF + 10, 1000), send_notif(TXBUF + 1010, 490)]);
    r.post(0, &[send_notif(TXBUF + 4096, 100)]);
    let got = r.received(2);
    assert_eq!(got, vec![big, small]);
    assert_eq!(r.nic.counter(c::TX_DROP_BAD_FRAME), 0);
}

// ----- the card's semantics (no extension), in both register modes ----------------------

/// A NIC as card software finds it: no extension opted into, the extension pages trapped.
fn card_rig(mode: RegisterMode) -> Rig {
    rig_with(EnsoConfig { registers: mode, map_extension_pages: false, ..cfg() })
}

const MODES: [RegisterMode; 2] = [RegisterMode::Shared, RegisterMode::Mmio];

impl Rig {
    /// Resets a queue as upstream's library does: address 0, read back until it sticks,
    /// then `rx_tail` and `rx_head` the same way.
    fn card_reset(&mut self, page: u64) {
        for reg in [queue::RX_MEM_LOW, queue::RX_MEM_HIGH, queue::RX_TAIL, queue::RX_HEAD] {
            self.w(page + reg, 0);
            wait("read back 0", || self.r(page + reg) == 0);
        }
    }

    /// Pair `j` the upstream way: reset, `tx_head` = `tx_tail`, then `rx_mem_low`,
    /// `rx_mem_high`, `tx_mem_low`, `tx_mem_high` (the queue is live from the first).
    fn card_pair(&mut self, j: u32) {
        let page = nb_page(j);
        self.card_reset(page);
        let t = self.r(page + queue::TX_TAIL);
        self.w(page + queue::TX_HEAD, t);
        self.tx_tail[j as usize] = t;
        let (rx, tx) = (rx_ring(j), tx_ring(j));
        self.w(page + queue::RX_MEM_LOW, rx as u32);
        self.w(page + queue::RX_MEM_HIGH, (rx >> 32) as u32);
        self.w(page + queue::TX_MEM_LOW, tx as u32);
        self.w(page + queue::TX_MEM_HIGH, (tx >> 32) as u32);
    }

    /// Pipe `p` at `base` the upstream way: reset, then `rx_mem_low` (address + pair ID),
    /// then `rx_mem_high`.
    fn card_pipe(&mut self, p: u32, base: u64, nb: u32) {
        let page = pipe_page(p);
        self.card_reset(page);
        self.w(page + queue::RX_MEM_LOW, base as u32 + nb);
        self.w(page + queue::RX_MEM_HIGH, (base >> 32) as u32);
    }
}

#[test]
fn card_software_runs_in_both_modes_without_any_extension() {
    for mode in MODES {
        let mut r = card_rig(mode);
        r.card_pair(0);
        r.card_pipe(0, pipe_base(0), 0);
        // Bit 20 is an address bit: a pipe 1 MiB into its buffer receives there.
        r.card_pipe(1, pipe_base(1) + MIB, 0);
        r.post(0, &[flow_entry(9, 80, 0, 0, 0), flow_entry(9, 81, 0, 0, 1)]);
        r.inject(&[udp(64, 9, 80), udp(64, 9, 81)]);
        wait("two notifications", || r.nb_rx_tail(0) == 2);
        assert_eq!(r.rx_notif(0, 0), (1, 0, 1), "{mode:?}");
        assert_eq!(r.rx_notif(0, 1), (1, 1, 1), "{mode:?}");
        assert_eq!(r.ram.read(pipe_base(1) + MIB, 64), udp(64, 9, 81), "{mode:?}: bit 20 moved the DMA");
        assert_eq!(r.ram.read(pipe_base(1), 64), vec![0; 64], "{mode:?}");
        // TX through the same pair.
        r.ram.write(TXBUF, &udp(64, 1, 1));
        r.post(0, &[send_notif(TXBUF, 64)]);
        assert_eq!(r.received(1), vec![udp(64, 1, 1)], "{mode:?}");
        assert_eq!(r.nic.counter(c::EXTENSION_ACCESSES), 0, "{mode:?}: card software never touches BAR0");
        assert_eq!(r.nic.counter(c::BAD_REGISTER_WRITES), 0, "{mode:?}");
        assert_eq!(r.nic.counter(c::QUEUE_DOORBELLS) > 0, mode == RegisterMode::Mmio, "{mode:?}");
    }
}

#[test]
fn either_write_order_and_a_late_tx_ring() {
    for mode in MODES {
        let mut r = card_rig(mode);
        // High half first, TX ring before RX ring, tail posted before the TX ring is set.
        let page = nb_page(0);
        r.card_reset(page);
        r.ram.write(tx_ring(0), &fallback(1, 0, false));
        r.w(page + queue::TX_TAIL, 1);
        r.tx_tail[0] = 1;
        r.w(page + queue::RX_MEM_HIGH, (rx_ring(0) >> 32) as u32);
        r.w(page + queue::RX_MEM_LOW, rx_ring(0) as u32);
        settle();
        assert_eq!(r.r(page + queue::TX_HEAD), 0, "{mode:?}: no TX ring yet, nothing fetched");
        r.w(page + queue::TX_MEM_HIGH, (tx_ring(0) >> 32) as u32);
        r.w(page + queue::TX_MEM_LOW, tx_ring(0) as u32);
        wait("the waiting tail is served", || r.r(page + queue::TX_HEAD) == 1);
        let pp = pipe_page(0);
        r.card_reset(pp);
        r.w(pp + queue::RX_MEM_HIGH, (pipe_base(0) >> 32) as u32);
        r.w(pp + queue::RX_MEM_LOW, pipe_base(0) as u32);
        // A read flushes the posted writes (mmio), as on PCIe; shared mode looks at the
        // pipe's registers when its first packet arrives.
        assert_eq!(r.r(pp + queue::RX_MEM_LOW), pipe_base(0) as u32);
        r.inject(&[udp(64, 1, 1)]);
        wait(&format!("{mode:?} notification"), || r.nb_rx_tail(0) == 1);
        assert_eq!(r.rx_notif(0, 0), (1, 0, 1), "{mode:?}");
    }
}

#[test]
fn a_torn_address_is_used_as_written_and_dma_outside_memory_is_refused() {
    const HIGH_RAM: u64 = 0x1_8000_0000;
    for mode in MODES {
        let mut r = card_rig(mode);
        // The same RAM seen at a 64-bit address too.
        r.ram.space.mem.map(HIGH_RAM, RAM_LEN, Some(r.ram.ram.dup_fd().unwrap()), 0, true).unwrap();
        r.card_pair(0);
        r.post(0, &[fallback(1, 0, false)]);
        let base = HIGH_RAM + (pipe_base(0) - RAM);
        let pp = pipe_page(0);
        r.card_reset(pp);
        // Only the low half: the device uses 0x0000_0000_8000_0000, which maps nothing.
        r.w(pp + queue::RX_MEM_LOW, base as u32);
        settle();
        r.inject(&[udp(64, 1, 1)]);
        r.wait_counter(c::RX_DROP_DMA, 1);
        assert_eq!(r.r(pp + queue::RX_TAIL), 0, "{mode:?}: a refused packet does not move the tail");
        // The high half arrives: the next packet lands in RAM.
        r.w(pp + queue::RX_MEM_HIGH, (base >> 32) as u32);
        settle();
        r.inject(&[udp(64, 1, 1)]);
        wait("rx", || r.nb_rx_tail(0) == 1);
        assert_eq!(r.ram.read(pipe_base(0), 64), udp(64, 1, 1), "{mode:?}");
        assert_eq!(r.nic.counter(c::RX_DROP_DMA), 1, "{mode:?}");
        assert!(PciDevice::counters(&r.nic).snapshot().dma_errors >= 1, "{mode:?}");
    }
}

#[test]
fn software_writes_of_device_owned_registers_and_reset_by_read_back() {
    for mode in MODES {
        let mut r = card_rig(mode);
        r.card_pair(0);
        r.card_pipe(0, pipe_base(0), 0);
        r.post(0, &[fallback(1, 0, false)]);
        r.inject(&[udp(64, 1, 1), udp(64, 1, 1), udp(64, 1, 1)]);
        wait("3 packets", || r.r(pipe_page(0) + queue::RX_TAIL) == 3);
        // Software moves the device's tail back to 1 (and the head with it): the next
        // packet is written at flit 1, as on the card.
        r.set_head(0, 1);
        r.w(pipe_page(0) + queue::RX_TAIL, 1);
        r.wait_counter(c::DEVICE_REGISTER_WRITES, 1);
        let mut tagged = udp(128, 1, 1);
        tagged[100] = 0xab;
        r.inject(std::slice::from_ref(&tagged));
        wait("tail 3 again", || r.r(pipe_page(0) + queue::RX_TAIL) == 3);
        assert_eq!(r.ram.read(pipe_base(0) + 64, 128), tagged, "{mode:?}: written at the tail software set");
        // The pair's tx_head: software declares every posted entry done.
        let page = nb_page(0);
        let t = r.tx_tail[0];
        r.ram.write(tx_ring(0) + 64 * t as u64, &send_notif(TXBUF, 0));
        r.w(page + queue::TX_HEAD, t + 1);
        r.w(page + queue::TX_TAIL, t + 1);
        r.tx_tail[0] = t + 1;
        settle();
        assert_eq!(r.nic.counter(c::TX_BAD_NOTIFICATION), 0, "{mode:?}: the entry was never fetched");
        assert_eq!(r.nic.counter(c::DEVICE_REGISTER_WRITES), 2, "{mode:?}");
        // Reset by write-0-and-read-back: the queue stops, then its tail sticks at 0.
        r.card_reset(pipe_page(0));
        r.inject(&[udp(64, 1, 1)]);
        r.wait_counter(c::RX_DROP_PIPE_DISABLED, 1);
        assert_eq!(r.r(pipe_page(0) + queue::RX_TAIL), 0, "{mode:?}");
        // A pipe page has only the card's four registers: the rest reads 0 (mmio).
        if mode == RegisterMode::Mmio {
            r.w(pipe_page(0) + queue::TX_TAIL, 5);
            r.wait_counter(c::BAD_REGISTER_WRITES, 1);
            assert_eq!(r.r(pipe_page(0) + queue::TX_TAIL), 0);
        }
    }
}

#[test]
fn a_same_value_head_write_is_a_prefetch_in_mmio_mode_only() {
    for mode in MODES {
        let mut r = card_rig(mode);
        r.card_pair(0);
        r.card_pipe(0, pipe_base(0), 0);
        r.post(0, &[fallback(1, 0, false)]);
        r.inject(&[udp(64, 1, 1)]);
        wait("first notification", || r.nb_rx_tail(0) == 1);
        r.inject(&[udp(64, 1, 1)]);
        wait("second packet", || r.pipe_tail(0) == 2);
        settle();
        assert_eq!(r.nb_rx_tail(0), 1, "{mode:?}: the outstanding bit holds the notification back");
        // Rewrite the unchanged head (0).
        r.set_head(0, 0);
        settle();
        match mode {
            RegisterMode::Mmio => {
                // Every write is an event, and the read-back comes after it took effect.
                assert_eq!(r.r(nb_page(0) + queue::RX_TAIL), 2, "prefetched");
                assert_eq!(r.rx_notif(0, 1), (1, 0, 2));
                assert_eq!(r.nic.counter(c::PREFETCHES), 1);
                assert_eq!(r.nic.counter(c::HEAD_UPDATES), 1);
            }
            RegisterMode::Shared => {
                assert_eq!(r.nb_rx_tail(0), 1, "a same-value store is invisible to a poller");
                assert_eq!(r.nic.counter(c::PREFETCHES), 0);
                // The lost prefetch is recovered by the next head change.
                r.set_head(0, 1);
                wait("notification after the head moved", || r.nb_rx_tail(0) == 2);
                assert_eq!(r.rx_notif(0, 1), (1, 0, 2));
            }
        }
    }
}

#[test]
fn pipe_8191_and_its_flow_entry_on_the_full_card_space() {
    for mode in MODES {
        let mut r = rig_with(EnsoConfig {
            registers: mode,
            map_extension_pages: false,
            ..EnsoConfig { pipe_flits: 64, notif_entries: 8, ..EnsoConfig::default() }
        });
        assert_eq!((r.nic.enso_config().num_pipes, r.nic.enso_config().num_nb_pairs), (8192, 1024));
        r.card_pair(0);
        r.card_pipe(8191, pipe_base(0), 0);
        r.post(0, &[flow_entry(9, 80, 0, 0, 8191)]);
        r.inject(&[udp(64, 9, 80)]);
        wait("notification", || r.nb_rx_tail(0) == 1);
        assert_eq!(r.rx_notif(0, 0), (1, 8191, 1), "{mode:?}");
        for idx in [c::BAD_CONFIG, c::RX_DROP_NO_FLOW, c::BAD_REGISTER_WRITES, c::EXTENSION_ACCESSES] {
            assert_eq!(r.nic.counter(idx), 0, "{mode:?}: {}", regs::ext::counter::NAMES[idx as usize]);
        }
        // The highest pair's page is the card's too.
        let page = nb_page(1023);
        r.w(page + queue::RX_HEAD, 5);
        assert_eq!(r.r(page + queue::RX_HEAD), 5, "{mode:?}");
    }
}

#[test]
fn a_new_queue_is_found_within_10_ms_on_the_full_space() {
    // Shared mode, every page of the card's space served; the queue-state extension only
    // to see when the device took the queue.
    let mut r = rig_with(EnsoConfig { pipe_flits: 64, notif_entries: 8, ..EnsoConfig::default() });
    r.set_ext(ext::EXT_ENABLE, ext::extension::QUEUE_STATE);
    // Software has touched many pages already (the scan walks written pages only).
    for p in (0..8192).step_by(3) {
        r.bar2.write32(pipe_page(p) + queue::RX_HEAD, 0);
    }
    let mut took = vec![];
    for p in [8191u32, 4000, 17, 6001, 8190] {
        let t = Instant::now();
        r.bar2.write32(pipe_page(p) + queue::RX_MEM_LOW, pipe_base(0) as u32);
        let (off, bit) = state::pipe_bit(p);
        wait("found", || r.bar0.read32(off) & bit != 0);
        took.push(t.elapsed());
    }
    took.sort();
    assert!(took[2] < Duration::from_millis(10), "median {:?} (all {took:?})", took[2]);
    assert!(took[4] < Duration::from_millis(100), "{took:?}");
}

#[test]
fn extensions_are_off_until_opted_in_and_every_bar0_access_is_counted() {
    let mut r = card_rig(RegisterMode::Shared);
    assert!(matches!(r.nic.bar_backing(0), BarBacking::Trapped), "extension pages trap");
    assert_eq!(r.ext(ext::ID), 0, "no identity until opted in");
    assert_eq!(r.ext(ext::EXT_CAPS), ext::extension::ALL);
    // The ENABLE bit is an address bit: a pipe "enabled" the extension way is live at
    // address base | bit 20.
    r.card_pair(0);
    r.post(0, &[fallback(1, 0, false)]);
    r.w(pipe_page(0) + queue::RX_MEM_LOW, pipe_base(0) as u32 | queue::ENABLE);
    settle();
    r.inject(&[udp(64, 1, 1)]);
    wait("rx", || r.nb_rx_tail(0) == 1);
    assert_eq!(r.ram.read(pipe_base(0) + MIB, 64), udp(64, 1, 1));
    // The prefetch doorbell does nothing, and the access is seen.
    r.inject(&[udp(64, 1, 1)]);
    wait("second packet", || r.pipe_tail(0) == 2);
    let before = r.nic.counter(c::EXTENSION_ACCESSES);
    r.nic.bar_write(0, prefetch::slot(0), &0u32.to_le_bytes());
    r.nic.bar_write(0, prefetch::slot(0) + 4, &1u32.to_le_bytes());
    settle();
    assert_eq!(r.nb_rx_tail(0), 1, "no prefetch without the extension");
    assert_eq!(r.nic.counter(c::EXTENSION_ACCESSES), before + 2);
    assert_eq!(r.ext(state::PIPES), 0, "no queue-state bits without the extension");
    // Opting in: identity and state bits appear; the ENABLE bit now means enable.
    r.set_ext(ext::EXT_ENABLE, ext::extension::ALL);
    assert_eq!(r.ext(ext::ID), ext::ID_VALUE);
    r.set_ext(ext::EXT_ENABLE, 0x100);
    assert_eq!(r.ext(ext::EXT_ENABLE), ext::extension::ALL, "unknown bits refused");
    assert!(r.nic.counter(c::BAD_REGISTER_WRITES) >= 1);
    wait("state bit", || r.ext(state::PIPES) & 1 != 0);
}
