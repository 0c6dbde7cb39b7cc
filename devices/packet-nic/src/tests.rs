//! Device-level tests: the model driven as a driver would, through its BAR2 queue pages and
//! BAR0 registers, over fake guest RAM (a memfd behind `GuestMemory`) and a cable as the wire.

use super::*;
use pcie_model::testing::{garbage, garbage_round, read32, settle, wait, write32, GuestRam};
use regs::reg::counter as c;
use regs::{desc, queue, queue_page, rss_input, rss_queue, toeplitz, BUF_SIZE, RSS_KEY_DEFAULT};
use std::time::{Duration, Instant};
use wire::{cable, CableEnd};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: u64 = 32 << 20;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// RX buffers: 2 KiB each, `rx_buf(q, i)`.
const RXBUF: u64 = RAM + 4 * MIB;
/// TX buffers.
const TXBUF: u64 = RAM + 24 * MIB;
/// An address nothing maps.
const NOWHERE: u64 = 0x7_0000_0000;

fn rx_ring(q: u32) -> u64 {
    RAM + q as u64 * 64 * KIB
}
fn tx_ring(q: u32) -> u64 {
    RAM + MIB + q as u64 * 64 * KIB
}
fn rx_buf(q: u32, i: u32) -> u64 {
    RXBUF + (q as u64 * 1024 + i as u64) * BUF_SIZE as u64
}

/// An IPv4 UDP frame of `len` bytes, 10.0.0.1:`sport` → 10.0.0.2:`dport`, payload tagged
/// with `tag` (bytes 42.. are `tag + i`).
fn udp(len: usize, sport: u16, dport: u16, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(42) {
        *b = tag.wrapping_add(i as u8);
    }
    f
}

/// The reference RSS hash of a frame (default key).
fn ref_hash(f: &[u8]) -> u32 {
    let mut input = [0u8; 12];
    let n = rss_input(f, &mut input);
    toeplitz(&RSS_KEY_DEFAULT, &input[..n])
}

/// A UDP frame whose flow RSS sends to queue `q` of `n`.
fn frame_for_queue(q: u32, n: u32, len: usize) -> Vec<u8> {
    (1000u16..)
        .map(|sport| udp(len, sport, 80, 0))
        .find(|f| rss_queue(ref_hash(f), n) == q)
        .expect("some port hashes there")
}

struct Rig {
    nic: PacketNic,
    ram: GuestRam,
    bar2: Arc<ShmRegion>,
    wire: CableEnd,
    rx_tail: Vec<u32>,
    tx_tail: Vec<u32>,
    rx_size: Vec<u32>,
    tx_size: Vec<u32>,
}

fn rig_with(num_queues: u32) -> Rig {
    let (nic_end, wire) = cable(64);
    let mut nic = PacketNic::new(PacketNicConfig { num_queues }, Box::new(nic_end)).unwrap();
    let ram = GuestRam::new(RAM, RAM_LEN);
    ram.attach(&mut nic);
    let BarBacking::Shared { shm: bar2, .. } = nic.bar_backing(2) else { panic!() };
    let n = num_queues as usize;
    Rig {
        nic,
        ram,
        bar2,
        wire,
        rx_tail: vec![0; n],
        tx_tail: vec![0; n],
        rx_size: vec![0; n],
        tx_size: vec![0; n],
    }
}

fn rig() -> Rig {
    rig_with(4)
}

impl Rig {
    fn reg(&mut self, off: u64) -> u32 {
        read32(&mut self.nic, 0, off)
    }
    fn set_reg(&mut self, off: u64, v: u32) {
        write32(&mut self.nic, 0, off, v);
    }
    fn q(&self, q: u32, off: u64) -> u32 {
        self.bar2.read32(queue_page(q) + off)
    }
    fn set_q(&self, q: u32, off: u64, v: u32) {
        self.bar2.write32(queue_page(q) + off, v);
    }

    fn enable_rx_at(&mut self, q: u32, ring: u64, size: u32) {
        self.set_q(q, queue::RX_TAIL, 0);
        self.set_q(q, queue::RX_RING_HIGH, (ring >> 32) as u32);
        self.set_q(q, queue::RX_RING_SIZE, size);
        self.set_q(q, queue::RX_RING_LOW, ring as u32 | queue::ENABLE);
        wait("RX enable ack", || self.q(q, queue::STATE) & queue::STATE_RX != 0);
        self.rx_tail[q as usize] = 0;
        self.rx_size[q as usize] = size;
    }
    fn enable_rx(&mut self, q: u32, size: u32) {
        self.enable_rx_at(q, rx_ring(q), size);
    }
    fn disable_rx(&self, q: u32) {
        let low = self.q(q, queue::RX_RING_LOW);
        self.set_q(q, queue::RX_RING_LOW, low & !queue::ENABLE);
        wait("RX disable ack", || self.q(q, queue::STATE) & queue::STATE_RX == 0);
    }
    fn enable_tx_at(&mut self, q: u32, ring: u64, size: u32) {
        self.set_q(q, queue::TX_TAIL, 0);
        self.set_q(q, queue::TX_RING_HIGH, (ring >> 32) as u32);
        self.set_q(q, queue::TX_RING_SIZE, size);
        self.set_q(q, queue::TX_RING_LOW, ring as u32 | queue::ENABLE);
        wait("TX enable ack", || self.q(q, queue::STATE) & queue::STATE_TX != 0);
        self.tx_tail[q as usize] = 0;
        self.tx_size[q as usize] = size;
    }
    fn enable_tx(&mut self, q: u32, size: u32) {
        self.enable_tx_at(q, tx_ring(q), size);
    }

    /// Posts RX buffers at `addrs` on queue `q` (descriptors zeroed but for the address).
    fn post_rx(&mut self, q: u32, addrs: &[u64]) {
        let size = self.rx_size[q as usize];
        for &a in addrs {
            let t = self.rx_tail[q as usize];
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&a.to_le_bytes());
            self.ram.write(rx_ring(q) + 16 * t as u64, &d);
            self.rx_tail[q as usize] = (t + 1) % size;
        }
        self.set_q(q, queue::RX_TAIL, self.rx_tail[q as usize]);
    }
    /// Posts `n` buffers, buffer `i` for ring slot `i`.
    fn post_rx_slots(&mut self, q: u32, n: u32) {
        let size = self.rx_size[q as usize];
        let t = self.rx_tail[q as usize];
        let addrs: Vec<u64> = (0..n).map(|k| rx_buf(q, (t + k) % size)).collect();
        self.post_rx(q, &addrs);
    }
    /// RX descriptor `i` of queue `q`: (addr, len, flags, rss_hash).
    fn rx_desc(&self, q: u32, i: u32) -> (u64, u16, u16, u32) {
        let d = self.ram.read(rx_ring(q) + 16 * i as u64, 16);
        (
            u64::from_le_bytes(d[0..8].try_into().unwrap()),
            u16::from_le_bytes([d[8], d[9]]),
            u16::from_le_bytes([d[10], d[11]]),
            u32::from_le_bytes(d[12..16].try_into().unwrap()),
        )
    }
    fn tx_desc_flags(&self, q: u32, i: u32) -> u16 {
        let d = self.ram.read(tx_ring(q) + 16 * i as u64 + desc::FLAGS as u64, 2);
        u16::from_le_bytes([d[0], d[1]])
    }

    /// Posts TX descriptors (addr, len, flags) and rings the doorbell.
    fn post_tx(&mut self, q: u32, descs: &[(u64, u16, u16)]) {
        let size = self.tx_size[q as usize];
        for &(a, l, f) in descs {
            let t = self.tx_tail[q as usize];
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&a.to_le_bytes());
            d[8..10].copy_from_slice(&l.to_le_bytes());
            d[10..12].copy_from_slice(&f.to_le_bytes());
            self.ram.write(tx_ring(q) + 16 * t as u64, &d);
            self.tx_tail[q as usize] = (t + 1) % size;
        }
        self.set_q(q, queue::TX_TAIL, self.tx_tail[q as usize]);
    }
    fn wait_tx_done(&self, q: u32) {
        let t = self.tx_tail[q as usize];
        wait("tx_head", || self.q(q, queue::TX_HEAD) == t);
    }

    fn inject(&mut self, frames: &[Vec<u8>]) {
        self.wire.send_all(frames);
    }

    fn wait_counter(&self, idx: u32, v: u64) {
        let name = regs::reg::counter::NAMES[idx as usize];
        wait(name, || self.nic.counter(idx) >= v);
        assert_eq!(self.nic.counter(idx), v, "{name}");
    }

    fn received(&mut self, n: usize) -> Vec<Vec<u8>> {
        self.wire.recv_n(n, Duration::from_secs(10))
    }
}

#[test]
fn identity_config_space_and_registers() {
    let mut r = rig();
    let cs = r.nic.config();
    assert_eq!((cs.vendor_id(), cs.device_id()), (0x1172, 0x0002));
    assert_eq!(&cs.bytes()[0x09..0x0c], &[0x00, 0x00, 0x02]);
    let b0 = cs.bar(0).unwrap();
    let b2 = cs.bar(2).unwrap();
    assert_eq!((b0.size, b0.kind, b0.prefetchable), (64 << 10, BarKind::Mem32, false));
    assert_eq!((b2.size, b2.kind, b2.prefetchable), (1 << 20, BarKind::Mem64, true));
    assert!(matches!(r.nic.bar_backing(0), BarBacking::Trapped));
    let BarBacking::Shared { areas, .. } = r.nic.bar_backing(2) else { panic!() };
    assert_eq!(areas, vec![(0, 4 * 4096)]);
    assert_eq!(r.reg(reg::ID), reg::ID_VALUE);
    assert_eq!(r.reg(reg::VERSION), reg::VERSION_VALUE);
    assert_eq!(r.reg(reg::NUM_QUEUES), 4);
    assert_eq!(r.reg(reg::BUF_SIZE), 2048);
    assert_eq!(r.reg(reg::MAX_RING), 32768);
    assert_eq!((r.reg(reg::RSS_QUEUES), r.reg(reg::WB_BATCH)), (1, 4));
    assert_eq!(r.reg(reg::RSS_KEY), u32::from_le_bytes([0x6d, 0x5a, 0x56, 0xda]));
    r.set_reg(reg::RSS_QUEUES, 4);
    r.set_reg(reg::WB_BATCH, 16);
    assert_eq!((r.reg(reg::RSS_QUEUES), r.reg(reg::WB_BATCH)), (4, 16));
    // Refused: RSS over 0 or 5 queues, WB_BATCH 0 and 65, ID, unknown offset, a short
    // write, a BAR2 write beyond the 4 queue pages, COUNTERS_CLEAR 2.
    r.set_reg(reg::RSS_QUEUES, 0);
    r.set_reg(reg::RSS_QUEUES, 5);
    r.set_reg(reg::WB_BATCH, 0);
    r.set_reg(reg::WB_BATCH, 65);
    r.set_reg(reg::ID, 0);
    r.set_reg(0x0ffc, 1);
    r.nic.bar_write(0, reg::WB_BATCH, &[1, 0]);
    r.nic.bar_write(2, 4 * 4096, &[1, 2, 3, 4]);
    r.set_reg(reg::COUNTERS_CLEAR, 2);
    assert_eq!((r.reg(reg::RSS_QUEUES), r.reg(reg::WB_BATCH)), (4, 16), "bad values ignored");
    assert_eq!(r.nic.counter(c::BAD_REGISTER_WRITES), 9);
    assert_eq!(PciDevice::counters(&r.nic).snapshot().bad_register_writes, 9);
    let lo = reg::COUNTERS + 8 * c::BAD_REGISTER_WRITES as u64;
    assert_eq!((r.reg(lo), r.reg(lo + 4)), (9, 0));
    let mut b = [0u8; 8];
    r.nic.bar_read(0, lo, &mut b);
    assert_eq!(u64::from_le_bytes(b), 9);
    assert_eq!(r.reg(reg::ERROR_STATUS), 1 << c::BAD_REGISTER_WRITES);
    r.set_reg(reg::COUNTERS_CLEAR, 1);
    assert_eq!(r.nic.counters(), [0; COUNT]);
    assert_eq!(r.reg(reg::ERROR_STATUS), 0);
    // Queue pages read and write through the trap path too.
    r.nic.bar_write(2, queue_page(1) + queue::RX_TAIL, &7u32.to_le_bytes());
    assert_eq!(r.q(1, queue::RX_TAIL), 7);
    r.nic.bar_read(2, queue_page(1) + queue::RX_TAIL, &mut b[..4]);
    assert_eq!(b[..4], 7u32.to_le_bytes());
    assert!(PacketNic::new(PacketNicConfig { num_queues: 0 }, Box::new(Disconnected)).is_err());
    assert!(PacketNic::new(PacketNicConfig { num_queues: 257 }, Box::new(Disconnected)).is_err());
}

#[test]
fn rx_descriptors_ring_wrap_and_no_buffer() {
    let mut r = rig();
    r.enable_rx(0, 8);
    r.post_rx_slots(0, 7);
    let frames: Vec<Vec<u8>> = (0..7).map(|i| udp(60 + 10 * i, 1, 2, i as u8)).collect();
    r.inject(&frames);
    wait("7 written back", || r.q(0, queue::RX_HEAD) == 7);
    r.wait_counter(c::RX_PACKETS, 7);
    for (i, f) in frames.iter().enumerate() {
        let (addr, len, flags, hash) = r.rx_desc(0, i as u32);
        assert_eq!(
            (addr, len as usize, flags, hash),
            (rx_buf(0, i as u32), f.len(), desc::DD | desc::EOP, ref_hash(f))
        );
        assert_eq!(&r.ram.read(addr, f.len()), f);
    }
    // Ring full: an eighth frame has no descriptor.
    r.inject(&[udp(64, 1, 2, 99)]);
    r.wait_counter(c::RX_DROP_NO_BUFFER, 1);
    // Software consumes 7, re-posts 7: the tail wraps to 6; frames land in slots 7, 0..5.
    r.post_rx_slots(0, 7);
    assert_eq!(r.rx_tail[0], 6);
    let frames: Vec<Vec<u8>> = (0..7).map(|i| udp(100, 1, 2, 50 + i as u8)).collect();
    r.inject(&frames);
    wait("wrapped head", || r.q(0, queue::RX_HEAD) == 6);
    for (k, f) in frames.iter().enumerate() {
        let slot = (7 + k as u32) % 8;
        let (addr, len, flags, _) = r.rx_desc(0, slot);
        assert_eq!((addr, len as usize, flags), (rx_buf(0, slot), f.len(), desc::DD | desc::EOP));
        assert_eq!(&r.ram.read(addr, f.len()), f);
    }
    r.wait_counter(c::RX_PACKETS, 14);
    assert_eq!(r.nic.counter(c::RX_BYTES), (60..=120).step_by(10).sum::<u64>() + 700);
    let pcie = PciDevice::counters(&r.nic).snapshot();
    assert_eq!(pcie.dma_write_bytes - pcie.dma_write_meta_bytes, r.nic.counter(c::RX_BYTES));
    assert_eq!(pcie.dma_write_meta_bytes, 14 * 16, "one 16-byte write-back per descriptor");
    assert_eq!(pcie.dma_read_meta_bytes, 14 * 16, "each descriptor fetched once");
}

#[test]
fn buffer_recycling_long_run() {
    let mut r = rig();
    r.enable_rx(0, 16);
    // Buffers live in a pool larger than the ring; software recycles each buffer it has
    // consumed into the next free slot, as a DPDK driver refills from its mempool.
    let mut pool: std::collections::VecDeque<u64> = (0..32).map(|i| rx_buf(0, i)).collect();
    let first: Vec<u64> = (0..15).map(|_| pool.pop_front().unwrap()).collect();
    r.post_rx(0, &first);
    let mut head = 0u32;
    let mut seq = 0u32;
    for burst in 0..250u32 {
        let n = 1 + burst % 5;
        let frames: Vec<Vec<u8>> =
            (0..n).map(|k| udp(64 + (seq + k) as usize % 1400, 7, 7, (seq + k) as u8)).collect();
        r.inject(&frames);
        let want = (head + n) % 16;
        wait("burst written back", || r.q(0, queue::RX_HEAD) == want);
        let mut done = vec![];
        for f in &frames {
            let (addr, len, flags, _) = r.rx_desc(0, head);
            assert_eq!((len as usize, flags), (f.len(), desc::DD | desc::EOP), "frame {seq}");
            assert_eq!(&r.ram.read(addr, f.len()), f, "frame {seq}");
            done.push(addr);
            head = (head + 1) % 16;
            seq += 1;
        }
        pool.extend(done);
        let refill: Vec<u64> = (0..n).map(|_| pool.pop_front().unwrap()).collect();
        r.post_rx(0, &refill);
    }
    r.wait_counter(c::RX_PACKETS, seq as u64);
    assert!(seq > 16 * 40, "the ring wrapped many times");
    assert_eq!(r.nic.counter(c::RX_DROP_NO_BUFFER), 0);
}

#[test]
fn rss_spreads_flows_and_keeps_each_on_one_queue() {
    let mut r = rig();
    r.set_reg(reg::RSS_QUEUES, 4);
    for q in 0..4 {
        r.enable_rx(q, 256);
        r.post_rx_slots(q, 255);
    }
    // 64 flows, three packets each.
    let flows: Vec<Vec<u8>> = (0..64u16).map(|i| udp(64, 5000 + i, 53, i as u8)).collect();
    let mut expect = [0u32; 4];
    for f in &flows {
        expect[rss_queue(ref_hash(f), 4) as usize] += 3;
    }
    assert!(expect.iter().all(|&n| n > 0), "Toeplitz spreads 64 flows over 4 queues: {expect:?}");
    for _ in 0..3 {
        r.inject(&flows);
    }
    for q in 0..4 {
        wait("queue filled", || r.q(q, queue::RX_HEAD) == expect[q as usize]);
    }
    r.wait_counter(c::RX_PACKETS, 192);
    for q in 0..4 {
        for i in 0..expect[q as usize] {
            let (addr, _, flags, hash) = r.rx_desc(q, i);
            let got = r.ram.read(addr, 64);
            assert_eq!(flags, desc::DD | desc::EOP);
            assert_eq!(hash, ref_hash(&got), "descriptor carries the RSS hash");
            assert_eq!(rss_queue(hash, 4), q, "flow on its queue");
        }
    }
    // A new key moves flows; the hash in the descriptor follows it.
    r.set_reg(reg::RSS_QUEUES, 1);
    r.set_reg(reg::RSS_KEY, 0x1234_5678);
    settle();
    let f = udp(64, 5000, 53, 0);
    r.inject(std::slice::from_ref(&f));
    wait("queue 0", || r.q(0, queue::RX_HEAD) == expect[0] + 1);
    let mut key = RSS_KEY_DEFAULT;
    key[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    let mut input = [0u8; 12];
    let n = rss_input(&f, &mut input);
    assert_eq!(r.rx_desc(0, expect[0]).3, toeplitz(&key, &input[..n]));
    // Non-IP frames hash to 0.
    let mut arp = vec![0u8; 60];
    arp[12..14].copy_from_slice(&[8, 6]);
    r.inject(&[arp]);
    wait("arp", || r.q(0, queue::RX_HEAD) == expect[0] + 2);
    assert_eq!(r.rx_desc(0, expect[0] + 1).3, 0);
}

#[test]
fn jumbo_frames_chain_descriptors() {
    let mut r = rig();
    r.enable_rx(0, 16);
    r.post_rx_slots(0, 2);
    let big = udp(5000, 1, 1, 3);
    r.inject(std::slice::from_ref(&big));
    r.wait_counter(c::RX_DROP_NO_BUFFER, 1);
    assert_eq!(r.q(0, queue::RX_HEAD), 0, "never a partial frame");
    r.post_rx_slots(0, 4);
    r.inject(&[big.clone(), udp(9216, 2, 2, 4)]);
    r.wait_counter(c::RX_CHAINED, 1);
    r.wait_counter(c::RX_DROP_NO_BUFFER, 2);
    wait("head", || r.q(0, queue::RX_HEAD) == 3);
    let mut got = vec![];
    for (i, want) in [(2048, desc::DD), (2048, desc::DD), (904, desc::DD | desc::EOP)].into_iter().enumerate()
    {
        let (addr, len, flags, _) = r.rx_desc(0, i as u32);
        assert_eq!((len, flags), want);
        got.extend(r.ram.read(addr, len as usize));
    }
    assert_eq!(got, big);
    // TX: a 9000-byte frame over five descriptors plus a small one.
    r.enable_tx(0, 16);
    let jumbo = udp(9000, 3, 3, 5);
    let mut descs = vec![];
    for (k, chunk) in jumbo.chunks(BUF_SIZE).enumerate() {
        let a = TXBUF + 4096 * k as u64;
        r.ram.write(a, chunk);
        descs.push((a, chunk.len() as u16, if k == 4 { desc::EOP } else { 0 }));
    }
    let small = udp(64, 4, 4, 6);
    r.ram.write(TXBUF + 64 * KIB, &small);
    descs.push((TXBUF + 64 * KIB, 64, desc::EOP));
    r.post_tx(0, &descs);
    assert_eq!(r.received(2), vec![jumbo, small]);
    r.wait_tx_done(0);
    r.wait_counter(c::TX_CHAINED, 1);
}

#[test]
fn tx_several_frames_with_wrap_and_write_back() {
    let mut r = rig();
    r.enable_tx(0, 8);
    let mut sent = vec![];
    for round in 0..4u32 {
        let frames: Vec<Vec<u8>> =
            (0..5u32).map(|k| udp(60 + 100 * k as usize, 9, 9, (round * 5 + k) as u8)).collect();
        let start = r.tx_tail[0];
        let mut descs = vec![];
        for (k, f) in frames.iter().enumerate() {
            let a = TXBUF + 4096 * (round as u64 * 8 + k as u64);
            r.ram.write(a, f);
            descs.push((a, f.len() as u16, desc::EOP));
        }
        r.post_tx(0, &descs);
        r.wait_tx_done(0);
        assert_eq!(r.received(5), frames, "round {round}");
        for k in 0..5 {
            assert_eq!(r.tx_desc_flags(0, (start + k) % 8), desc::DD | desc::EOP);
        }
        sent.extend(frames);
    }
    r.wait_counter(c::TX_PACKETS, 20);
    assert_eq!(r.nic.counter(c::TX_BYTES), sent.iter().map(|f| f.len() as u64).sum::<u64>());
    let pcie = PciDevice::counters(&r.nic).snapshot();
    assert_eq!(pcie.dma_read_bytes - pcie.dma_read_meta_bytes, r.nic.counter(c::TX_BYTES));
    assert_eq!(pcie.dma_read_meta_bytes, 20 * 16);
    assert_eq!(pcie.dma_write_meta_bytes, 20 * 16);
}

#[test]
fn write_back_coalescing() {
    let mut r = rig();
    r.enable_rx(0, 16);
    let wbs = |r: &Rig| r.nic.counter(c::DESCRIPTOR_WRITEBACKS);
    let mut total = 0;
    // (WB_BATCH, frames in one batch, expected write-backs): full groups, then the rest at
    // the end of the round; the ring end (slot 15 → 0) also splits a group.
    for (batch, frames, expect) in [(4, 6, 2), (1, 5, 5), (64, 4, 1), (4, 9, 3), (64, 10, 2)] {
        r.set_reg(reg::WB_BATCH, batch);
        settle();
        r.post_rx_slots(0, frames);
        let before = wbs(&r);
        let head = r.q(0, queue::RX_HEAD);
        r.inject(&vec![udp(64, 1, 1, 0); frames as usize]);
        wait("written back", || r.q(0, queue::RX_HEAD) == (head + frames) % 16);
        settle();
        assert_eq!(wbs(&r) - before, expect, "WB_BATCH {batch}, {frames} frames from slot {head}");
        total += frames;
    }
    assert_eq!(r.nic.counter(c::RX_PACKETS), total as u64);
    let pcie = PciDevice::counters(&r.nic).snapshot();
    assert_eq!(pcie.dma_writes - r.nic.counter(c::RX_PACKETS), wbs(&r), "metadata writes = write-backs");
}

#[test]
fn dma_trace_snapshot() {
    let mut r = rig();
    r.enable_rx(0, 16);
    r.enable_tx(0, 16);
    r.post_rx_slots(0, 8);
    settle();
    r.ram.space.start_log();
    // Scenario: a batch of six 64-byte frames (WB_BATCH 4), then one TX doorbell for three
    // frames, the first chained over two descriptors.
    r.inject(&vec![udp(64, 1, 1, 0); 6]);
    wait("rx", || r.q(0, queue::RX_HEAD) == 6);
    let big = udp(3000, 2, 2, 1);
    r.ram.write(TXBUF, &big[..2048]);
    r.ram.write(TXBUF + 4096, &big[2048..]);
    r.ram.write(TXBUF + 8192, &udp(64, 3, 3, 2));
    r.ram.write(TXBUF + 12288, &udp(100, 4, 4, 3));
    r.post_tx(
        0,
        &[
            (TXBUF, 2048, 0),
            (TXBUF + 4096, 952, desc::EOP),
            (TXBUF + 8192, 64, desc::EOP),
            (TXBUF + 12288, 100, desc::EOP),
        ],
    );
    r.wait_tx_done(0);
    assert_eq!(r.received(3).len(), 3);
    settle();
    let log = r.ram.space.take_log();
    let name = |a: u64| {
        if a >= TXBUF {
            format!("txbuf+{:#x}", a - TXBUF)
        } else if a >= RXBUF {
            format!("rxbuf[{}]+{}", (a - RXBUF) / 2048, (a - RXBUF) % 2048)
        } else if a >= tx_ring(0) {
            format!("tx0.ring[{}]", (a - tx_ring(0)) / 16)
        } else {
            format!("rx0.ring[{}]", (a - rx_ring(0)) / 16)
        }
    };
    let mut s = String::new();
    let mut meta_writes = 0;
    for (write, addr, data) in log {
        let len = data.len();
        let meta = addr < RXBUF;
        meta_writes += (write && meta) as u32;
        let class = if meta { "metadata" } else { "data" };
        let op = if write { "write" } else { "read " };
        s.push_str(&format!("DMA {op} {:<16} {len:>5} B {class}\n", name(addr)));
    }
    assert_eq!(meta_writes, 3, "RX: a group of 4 + the round's last 2; TX: one group of 4");
    assert_eq!(r.nic.counter(c::DESCRIPTOR_WRITEBACKS), 3);
    assert_eq!(r.nic.counter(c::DESCRIPTOR_FETCHES), 2);
    insta::assert_snapshot!("dma_trace", s);
}

#[test]
fn every_error_is_counted_and_the_device_keeps_serving() {
    let mut r = rig();
    r.set_reg(reg::RSS_QUEUES, 2);
    r.enable_rx(0, 8);
    // Malformed: too short, too long.
    r.inject(&[vec![0u8; 10], udp(9300, 1, 1, 0)]);
    r.wait_counter(c::RX_DROP_MALFORMED, 2);
    // Queue 1 is not enabled.
    r.inject(&[frame_for_queue(1, 2, 64)]);
    r.wait_counter(c::RX_DROP_QUEUE_DISABLED, 1);
    // Queue 0 has nothing posted.
    let to0 = frame_for_queue(0, 2, 64);
    r.inject(std::slice::from_ref(&to0));
    r.wait_counter(c::RX_DROP_NO_BUFFER, 1);
    // A buffer nobody mapped: written back with ERR, the ring moves on.
    r.post_rx(0, &[NOWHERE]);
    r.inject(std::slice::from_ref(&to0));
    r.wait_counter(c::RX_DROP_DMA, 1);
    wait("err write-back", || r.q(0, queue::RX_HEAD) == 1);
    assert_eq!(r.rx_desc(0, 0), (NOWHERE, 0, desc::DD | desc::EOP | desc::ERR, ref_hash(&to0)));
    // Queue 1's ring is unmapped: the fetch fails.
    r.set_q(1, queue::RX_TAIL, 4);
    r.set_q(1, queue::RX_RING_HIGH, (NOWHERE >> 32) as u32);
    r.set_q(1, queue::RX_RING_SIZE, 8);
    r.set_q(1, queue::RX_RING_LOW, NOWHERE as u32 | queue::ENABLE);
    wait("q1", || r.q(1, queue::STATE) & queue::STATE_RX != 0);
    r.inject(&[frame_for_queue(1, 2, 64)]);
    r.wait_counter(c::DMA_ERRORS, 1);
    r.wait_counter(c::RX_DROP_DMA, 2);
    // Bad RX tails: outside the ring; behind what the device took.
    r.set_q(0, queue::RX_TAIL, 1000);
    r.wait_counter(c::BAD_TAIL, 1);
    r.set_q(0, queue::RX_TAIL, 1);

    // TX: zero length, oversized, a frame under 14 bytes, a chain with no EOP, unmapped data.
    r.enable_tx(0, 32);
    r.ram.write(TXBUF, &udp(64, 1, 1, 0));
    let chain = [(TXBUF, 64u16, 0u16); regs::MAX_TX_CHAIN];
    let mut bad = vec![(TXBUF, 0, desc::EOP), (TXBUF, 3000, desc::EOP), (TXBUF, 10, desc::EOP)];
    bad.extend(chain);
    bad.push((NOWHERE, 64, desc::EOP));
    r.post_tx(0, &bad);
    r.wait_tx_done(0);
    r.wait_counter(c::TX_BAD_DESCRIPTOR, 4);
    r.wait_counter(c::TX_DROP_DMA, 1);
    assert!((0..bad.len() as u32).all(|i| r.tx_desc_flags(0, i) & desc::DD != 0), "all written back");
    // Bad TX tail.
    r.set_q(0, queue::TX_TAIL, 100);
    r.wait_counter(c::BAD_TAIL, 2);
    r.set_q(0, queue::TX_TAIL, r.tx_tail[0]);
    // A TX ring nobody mapped: one error, then the queue waits for a new tail.
    r.set_q(1, queue::TX_TAIL, 2);
    r.set_q(1, queue::TX_RING_HIGH, (NOWHERE >> 32) as u32);
    r.set_q(1, queue::TX_RING_SIZE, 8);
    r.set_q(1, queue::TX_RING_LOW, NOWHERE as u32 | queue::ENABLE);
    r.wait_counter(c::DMA_ERRORS, 2);
    settle();
    assert_eq!(r.nic.counter(c::DMA_ERRORS), 2, "a stalled queue does not spin on errors");
    // Bad ring size: the enable is refused once, not every round.
    r.set_q(2, queue::TX_RING_SIZE, 3);
    r.set_q(2, queue::TX_RING_LOW, tx_ring(2) as u32 | queue::ENABLE);
    r.wait_counter(c::BAD_REGISTER_WRITES, 1);
    settle();
    assert_eq!(r.nic.counter(c::BAD_REGISTER_WRITES), 1);
    assert_eq!(r.q(2, queue::STATE), 0);
    r.set_reg(reg::VERSION, 3);
    r.wait_counter(c::BAD_REGISTER_WRITES, 2);
    // Unplugged wire.
    let port = r.nic.take_port();
    r.post_tx(0, &[(TXBUF, 64, desc::EOP)]);
    r.wait_counter(c::TX_DROP_WIRE, 1);
    r.nic.replace_port(port);

    // Still serving: TX and RX.
    r.post_tx(0, &[(TXBUF, 64, desc::EOP)]);
    assert_eq!(r.received(1), vec![udp(64, 1, 1, 0)]);
    r.post_rx_slots(0, 1);
    r.inject(std::slice::from_ref(&to0));
    r.wait_counter(c::RX_PACKETS, 1);
    assert_eq!(r.rx_desc(0, 1).2, desc::DD | desc::EOP);
    for idx in c::RX_DROP_NO_BUFFER..c::COUNT {
        assert_ne!(r.nic.counter(idx), 0, "{}", regs::reg::counter::NAMES[idx as usize]);
    }
    assert_eq!(r.reg(reg::ERROR_STATUS), ((1u32 << c::COUNT) - 1) & !((1 << c::RX_DROP_NO_BUFFER) - 1));
}

#[test]
fn garbage_everywhere_then_reset() {
    let mut r = rig();
    r.enable_rx(0, 16);
    r.enable_tx(0, 16);
    r.post_rx_slots(0, 15);
    let mut seed = 0x1234_5678_9abc_def1;
    for round in 0..20 {
        for q in 0..4 {
            for off in (0..=queue::STATE).step_by(4) {
                let v = garbage(&mut seed);
                // Half the rounds keep addresses inside RAM and sizes small, so the garbage
                // reaches the rings and buffers rather than only the DMA checks.
                let v = if round % 2 == 0 { v } else { v & 0x3f | (RAM as u32 & queue::ADDR_MASK) };
                r.set_q(q, off, v);
            }
        }
        for off in (0..64 * 16).step_by(4) {
            r.ram.ram.write32(rx_ring(0) - RAM + off, garbage(&mut seed));
            r.ram.ram.write32(tx_ring(0) - RAM + off, garbage(&mut seed));
        }
        garbage_round(&mut r.nic, &mut seed, |f| r.wire.send_all(f));
    }
    settle();
    // Reset: power-on state, then serve again.
    r.nic.reset();
    assert_eq!(r.nic.counters(), [0; COUNT]);
    for q in 0..4 {
        assert_eq!((r.q(q, queue::STATE), r.q(q, queue::RX_RING_LOW), r.q(q, queue::TX_TAIL)), (0, 0, 0));
    }
    assert_eq!((r.reg(reg::RSS_QUEUES), r.reg(reg::WB_BATCH)), (1, reg::WB_BATCH_DEFAULT));
    assert_eq!(r.reg(reg::RSS_KEY + 36), u32::from_le_bytes([0xbe, 0xac, 0x01, 0xfa]));
    r.ram.ram.clear();
    let mut drain = vec![];
    r.wire.recv(&mut drain, 10_000);
    r.enable_rx(0, 16);
    r.enable_tx(0, 16);
    r.post_rx_slots(0, 4);
    let f = udp(200, 5, 5, 5);
    r.inject(std::slice::from_ref(&f));
    wait("rx after reset", || r.q(0, queue::RX_HEAD) == 1);
    assert_eq!(r.ram.read(rx_buf(0, 0), 200), f);
    r.ram.write(TXBUF, &f);
    r.post_tx(0, &[(TXBUF, 200, desc::EOP)]);
    assert_eq!(r.received(1), vec![f.clone()]);
    // Detach/attach keeps queue state.
    r.nic.detach();
    r.ram.attach(&mut r.nic);
    r.inject(std::slice::from_ref(&f));
    wait("rx after reattach", || r.q(0, queue::RX_HEAD) == 2);
    // Disable: acknowledged, then frames for it are dropped.
    r.disable_rx(0);
    assert_eq!(r.q(0, queue::STATE), queue::STATE_TX);
    r.inject(std::slice::from_ref(&f));
    r.wait_counter(c::RX_DROP_QUEUE_DISABLED, 1);
    assert_eq!(r.nic.counter(c::RX_PACKETS), 2);
}

/// RX throughput of the model alone (64 B frames, one queue, software re-posting every
/// buffer as soon as it is written back).
/// `cargo test -p packet-nic --release -- --ignored rx_throughput --nocapture`
#[test]
#[ignore]
fn rx_throughput() {
    let mut r = rig();
    let size = 4096;
    r.enable_rx(0, size);
    r.post_rx_slots(0, size - 1);
    // The last slot gets its buffer too: the ring is re-posted in place below.
    r.ram.write(rx_ring(0) + 16 * (size - 1) as u64, &rx_buf(0, size - 1).to_le_bytes());
    let n = 2_000_000u64;
    let frame = udp(64, 1, 1, 0);
    let t = Instant::now();
    let mut sent = 0;
    while r.nic.counter(c::RX_PACKETS) + r.nic.counter(c::RX_DROP_NO_BUFFER) < n - r.wire.dropped() {
        let done = r.nic.counter(c::RX_PACKETS) + r.nic.counter(c::RX_DROP_NO_BUFFER);
        if sent < n && sent - done < 4096 {
            for _ in 0..64 {
                r.wire.send(frame.clone());
            }
            r.wire.flush();
            sent += 64;
        }
        // Written-back descriptors keep their buffer address: re-post them in place.
        let head = r.q(0, queue::RX_HEAD);
        r.set_q(0, queue::RX_TAIL, (head + size - 1) % size);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "stuck: {sent} sent, {:?}, head {head}",
            r.nic.counters()
        );
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "{n} frames in {s:.3} s: {:.2} Mpps (no buffer {}, wire drops {})",
        n as f64 / s / 1e6,
        r.nic.counter(c::RX_DROP_NO_BUFFER),
        r.wire.dropped()
    );
}
