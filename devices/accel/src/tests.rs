//! Device tests: the legacy ring (happy path, full ring, bad descriptors, DMA outside the
//! map, bad doorbells, phase wrap) and the stream interface, over a `GuestMemory`.

use crate::{crypto, function, ml, Accelerator};
use pcie_model::testing::GuestRam;
use pcie_model::{BarBacking, PciDevice, ShmRegion};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed_regs::accel::reg::counter as c;
use testbed_regs::accel::{self as regs, cqe, db, desc, reg, status};
use testbed_regs::record;

const RAM: u64 = 0x10_0000;
const RAM_LEN: u64 = 1 << 20;
const SQ: u64 = RAM;
const CQ: u64 = RAM + 0x4000;
const IN: u64 = RAM + 0x1_0000;
const OUT: u64 = RAM + 0x8_0000;

struct Rig {
    dev: Accelerator,
    ram: ShmRegion,
    db: Arc<ShmRegion>,
    entries: u32,
    tail: u32,
    phase: u8,
    next_cqe: u32,
}

fn rig(dev: Accelerator, entries: u32) -> Rig {
    let mut dev = dev;
    let guest = GuestRam::new(RAM, RAM_LEN);
    guest.attach(&mut dev);
    let ram = guest.ram;
    let BarBacking::Shared { shm, .. } = dev.bar_backing(regs::DB_BAR) else { panic!() };
    let mut r = Rig { dev, ram, db: shm, entries, tail: 0, phase: 1, next_cqe: 0 };
    r.w(reg::SQ_BASE_LO, SQ as u32);
    r.w(reg::SQ_BASE_HI, 0);
    r.w(reg::CQ_BASE_LO, CQ as u32);
    r.w(reg::RING_ENTRIES, entries);
    r.w(reg::CTRL, reg::CTRL_ENABLE);
    assert_eq!(r.r(reg::STATUS) & reg::STATUS_ENABLED, reg::STATUS_ENABLED);
    r
}

impl Rig {
    fn w(&mut self, off: u64, v: u32) {
        self.dev.bar_write(regs::REG_BAR, off, &v.to_le_bytes());
    }
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(regs::REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn counter(&mut self, idx: u32) -> u64 {
        self.dev.device_counters()[idx as usize]
    }
    fn put(&self, addr: u64, data: &[u8]) {
        self.ram.write_bytes(addr - RAM, data);
    }
    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram.read_bytes(addr - RAM, &mut b);
        b
    }
    /// Writes a descriptor into the tail slot (does not ring).
    #[allow(clippy::too_many_arguments)]
    fn post(&mut self, op: u8, tag: u32, src: u64, len: u32, dst: u64, cap: u32, state: [u8; 32]) {
        let mut d = [0u8; desc::SIZE];
        d[desc::OPCODE] = op;
        d[desc::TAG..desc::TAG + 4].copy_from_slice(&tag.to_le_bytes());
        d[desc::SRC_ADDR..desc::SRC_ADDR + 8].copy_from_slice(&src.to_le_bytes());
        d[desc::SRC_LEN..desc::SRC_LEN + 4].copy_from_slice(&len.to_le_bytes());
        d[desc::DST_CAP..desc::DST_CAP + 4].copy_from_slice(&cap.to_le_bytes());
        d[desc::DST_ADDR..desc::DST_ADDR + 8].copy_from_slice(&dst.to_le_bytes());
        d[desc::STATE..].copy_from_slice(&state);
        self.put(SQ + self.tail as u64 * desc::SIZE as u64, &d);
        self.tail = (self.tail + 1) % self.entries;
    }
    fn ring(&self) {
        self.db.write32(db::SQ_TAIL, self.tail);
    }
    /// Waits for the next completion: (tag, status, out_len).
    fn complete(&mut self) -> (u32, u16, u32) {
        let at = CQ + self.next_cqe as u64 * cqe::SIZE as u64;
        let t = Instant::now();
        while self.get(at + cqe::PHASE as u64, 1)[0] != self.phase {
            assert!(t.elapsed() < Duration::from_secs(10), "no completion in slot {}", self.next_cqe);
            std::thread::yield_now();
        }
        let e = self.get(at, cqe::SIZE);
        self.next_cqe = (self.next_cqe + 1) % self.entries;
        if self.next_cqe == 0 {
            self.phase ^= 1;
        }
        let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
        (u32_at(cqe::TAG), u16::from_le_bytes([e[cqe::STATUS], e[cqe::STATUS + 1]]), u32_at(cqe::OUT_LEN))
    }
}

fn model_state() -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(&ml::MODEL_ID.to_le_bytes());
    s
}

fn image_record(seq: u32) -> Vec<u8> {
    let (_, img) = ml::synthetic_image(seq);
    let mut r = vec![0u8; record::HEADER + img.len()];
    let nonce = crypto::item_nonce(1, seq);
    record::Header { len: img.len() as u32, seq, kind: record::KIND_IMAGE, stream: 1, nonce, tag: [0; 16] }
        .write(&mut r);
    r[record::HEADER..].copy_from_slice(&img);
    r
}

#[test]
fn identity_and_config_checks() {
    let mut r = rig(Accelerator::crypto().unwrap(), 8);
    assert_eq!(r.r(reg::ID), reg::ID_VALUE);
    assert_eq!(r.r(reg::FUNCTION), reg::FUNCTION_CRYPTO);
    assert_eq!(r.dev.config().device_id(), regs::CRYPTO_DEVICE_ID);
    // Ring registers are read-only while the ring runs.
    r.w(reg::RING_ENTRIES, 16);
    assert_eq!(r.r(reg::RING_ENTRIES), 8);
    assert_eq!(r.counter(c::BAD_REGISTER_WRITES), 1);
    // A disabled ring with a bad size is refused at enable.
    r.w(reg::CTRL, 0);
    r.w(reg::RING_ENTRIES, 6);
    r.w(reg::CTRL, reg::CTRL_ENABLE);
    assert_eq!(r.r(reg::STATUS) & reg::STATUS_ENABLED, 0);
    assert_eq!(r.counter(c::BAD_CONFIG), 1);
    assert_ne!(r.r(reg::ERROR_STATUS) & (1 << c::BAD_CONFIG), 0);
    r.w(reg::COUNTERS_CLEAR, 1);
    assert_eq!(r.r(reg::ERROR_STATUS), 0);
}

#[test]
fn crypto_then_ml_through_the_ring() {
    let mut cr = rig(Accelerator::crypto().unwrap(), 4);
    let key = crypto::stream_key(1);
    let plain = image_record(9);
    let sealed = crypto::seal(&key, 9, 1, crypto::item_nonce(1, 9), &plain[record::HEADER..]);
    cr.put(IN, &sealed);
    cr.post(desc::OP_DECRYPT, 77, IN, sealed.len() as u32, OUT, 4096, key);
    cr.ring();
    assert_eq!(cr.complete(), (77, status::OK, plain.len() as u32));
    assert_eq!(cr.get(OUT, plain.len()), plain);
    assert_eq!(cr.counter(c::COMMANDS), 1);

    let mut m = rig(Accelerator::ml().unwrap(), 4);
    m.put(IN, &plain);
    m.post(desc::OP_INFER, 5, IN, plain.len() as u32, OUT, 4096, model_state());
    m.ring();
    let want = function::expected_result(&plain).unwrap();
    assert_eq!(m.complete(), (5, status::OK, want.len() as u32));
    assert_eq!(m.get(OUT, want.len()), want);
}

#[test]
fn authentication_failure_is_reported_and_nothing_written() {
    let mut r = rig(Accelerator::crypto().unwrap(), 4);
    let key = crypto::stream_key(1);
    let mut sealed = crypto::seal(&key, 1, 1, crypto::item_nonce(1, 1), &[7u8; 100]);
    sealed[record::HEADER] ^= 0x80;
    r.put(IN, &sealed);
    r.put(OUT, &[0xee; 200]);
    r.post(desc::OP_DECRYPT, 1, IN, sealed.len() as u32, OUT, 4096, key);
    r.ring();
    assert_eq!(r.complete(), (1, status::AUTH_FAILED, 0));
    assert_eq!(r.get(OUT, 200), vec![0xee; 200], "no unauthenticated byte reaches memory");
    assert_eq!(r.counter(c::AUTH_FAILURES), 1);
    assert_eq!(r.counter(c::COMMANDS), 0);
}

#[test]
fn bad_descriptors_get_error_completions_and_the_ring_keeps_going() {
    let mut r = rig(Accelerator::ml().unwrap(), 8);
    let img = image_record(3);
    r.put(IN, &img);
    let n = img.len() as u32;
    r.post(0x7f, 1, IN, n, OUT, 4096, model_state()); // unknown opcode
    r.post(desc::OP_DECRYPT, 2, IN, n, OUT, 4096, model_state()); // not this function's
    r.post(desc::OP_INFER, 3, IN, 0, OUT, 4096, model_state()); // empty input
    r.post(desc::OP_INFER, 4, IN, n, OUT, 4096, [0; 32]); // unknown model
    r.post(desc::OP_INFER, 5, 0xdead_0000, n, OUT, 4096, model_state()); // input not mapped
    r.post(desc::OP_INFER, 6, IN, n, 0xdead_0000, 4096, model_state()); // output not mapped
    r.post(desc::OP_INFER, 7, IN, n, OUT, 8, model_state()); // output too small
    r.ring();
    let got: Vec<_> = (0..7).map(|_| r.complete()).collect();
    assert_eq!(
        got,
        vec![
            (1, status::BAD_OPCODE, 0),
            (2, status::BAD_OPCODE, 0),
            (3, status::BAD_LENGTH, 0),
            (4, status::BAD_MODEL, 0),
            (5, status::DMA_ERROR, 0),
            (6, status::DMA_ERROR, 0),
            (7, status::OUTPUT_TOO_SMALL, 0),
        ]
    );
    assert_eq!(r.counter(c::BAD_DESCRIPTORS), 4);
    assert_eq!(r.counter(c::DMA_ERRORS), 2);
    assert_eq!(r.counter(c::OUTPUT_TOO_SMALL), 1);
    // Still serving.
    r.post(desc::OP_INFER, 8, IN, n, OUT, 4096, model_state());
    r.ring();
    assert_eq!(r.complete().1, status::OK);
}

#[test]
fn full_ring_wraps_with_phase_and_bad_doorbells_are_ignored() {
    let entries = 4;
    let mut r = rig(Accelerator::ml().unwrap(), entries);
    let img = image_record(1);
    r.put(IN, &img);
    // A doorbell beyond the ring: ignored, counted once.
    r.db.write32(db::SQ_TAIL, 9);
    std::thread::sleep(Duration::from_millis(20));
    r.db.write32(db::SQ_TAIL, 0);
    assert_eq!(r.counter(c::BAD_DOORBELLS), 1);
    // Several passes over a 4-entry ring, each filled to its capacity (entries − 1).
    let mut tag = 0;
    for _ in 0..5 {
        for _ in 0..entries - 1 {
            tag += 1;
            r.post(desc::OP_INFER, tag, IN, img.len() as u32, OUT, 4096, model_state());
        }
        r.ring();
        for k in 0..entries - 1 {
            let (t, s, _) = r.complete();
            assert_eq!((t, s), (tag - (entries - 2) + k, status::OK));
        }
        assert_eq!(r.db.read32(db::SQ_HEAD), r.tail);
    }
    assert_eq!(r.counter(c::COMMANDS), 15);
    // A descriptor ring outside memory: every slot completes with DMA_ERROR, tag 0.
    r.w(reg::CTRL, 0);
    r.w(reg::SQ_BASE_LO, 0xdead_0000);
    r.w(reg::CTRL, reg::CTRL_ENABLE);
    (r.tail, r.next_cqe, r.phase) = (0, 0, 1);
    r.db.write32(db::SQ_TAIL, 1);
    assert_eq!(r.complete(), (0, status::DMA_ERROR, 0));
}

#[test]
fn stream_processes_records_in_order_and_pushes_output() {
    let mut r = rig(Accelerator::crypto().unwrap(), 4);
    let key = crypto::stream_key(2);
    r.w(reg::STREAM_OP, desc::OP_DECRYPT as u32);
    for (i, w) in key.chunks(4).enumerate() {
        r.w(reg::STREAM_KEY + 4 * i as u64, u32::from_le_bytes(w.try_into().unwrap()));
    }
    r.w(reg::STREAM_DEST_LO, OUT as u32);
    r.w(reg::STREAM_DEST_SIZE, 4096);
    r.w(reg::STREAM_CTRL, 1);
    assert_ne!(r.r(reg::STATUS) & reg::STATUS_STREAM, 0);
    let port = r.dev.stream_port();
    let mut off = 0u64;
    let mut want = Vec::new();
    for seq in 0..6u32 {
        let payload = vec![seq as u8; 700];
        let sealed = crypto::seal(&key, seq, 2, crypto::item_nonce(2, seq), &payload);
        // Pushed in two writes, as a fabric might split it.
        let (a, b) = sealed.split_at(100);
        assert!(port.push(off % regs::STREAM_WINDOW_SIZE, a));
        off += a.len() as u64;
        r.dev.bar_write(regs::DB_BAR, regs::STREAM_WINDOW + off % regs::STREAM_WINDOW_SIZE, b);
        // The next record starts on the next 64-byte boundary (the gap is padding).
        off = (off + b.len() as u64).next_multiple_of(64);
        let mut p = Vec::new();
        crypto::open(&key, &sealed, &mut p).unwrap();
        want.push(p);
    }
    let t = Instant::now();
    while r.counter(c::STREAM_RECORDS) < 6 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    // 6 records of 740 bytes, each at a 64-byte boundary of a 4 KiB ring: the sixth
    // wraps, overwriting the start of the first (the ring has no credits: the reader must
    // keep up), so the last five are checked.
    let mut at = 768u64;
    for p in &want[1..] {
        let mut got = Vec::new();
        for k in 0..p.len() as u64 {
            got.push(r.get(OUT + (at + k) % 4096, 1)[0]);
        }
        assert_eq!(&got, p);
        at += (p.len() as u64).next_multiple_of(64);
    }
    assert_eq!(r.r(reg::STREAM_DEST_OFFSET) as u64, at);
    assert_eq!(r.r(reg::STREAM_IN_OFFSET) as u64, 5 * 768 + 740);
    // A write behind the end is dropped and counted; the stream goes on.
    assert!(!port.push(5, &[0; 10]));
    assert_eq!(r.counter(c::STREAM_DROPS), 1);
    // Records start on 64-byte boundaries: a writer may leave padding between them.
    let sealed = crypto::seal(&key, 9, 2, crypto::item_nonce(2, 9), &[1u8; 10]);
    assert_ne!(off, 5 * 768 + 740, "the last record left a gap to the next boundary");
    assert!(port.push(off % regs::STREAM_WINDOW_SIZE, &sealed), "a forward gap is padding");
    let t = Instant::now();
    while r.counter(c::STREAM_RECORDS) < 7 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    assert_eq!(r.counter(c::STREAM_BAD_RECORDS), 0);
}

#[test]
fn garbage_from_a_buggy_driver_is_counted_and_the_device_keeps_serving() {
    let mut r = rig(Accelerator::ml().unwrap(), 4);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5000 {
        let v = next();
        let off = (v >> 8) % regs::REG_BAR_SIZE;
        let len = [1usize, 2, 4, 8][(v & 3) as usize];
        let data = (v >> 32).to_le_bytes();
        match v % 5 {
            0 => r.dev.bar_write(regs::REG_BAR, off, &data[..len]),
            1 => r.db.write32(db::SQ_TAIL, (v >> 40) as u32 % 16),
            2 => {
                let o = regs::STREAM_WINDOW + (v >> 16) % regs::STREAM_WINDOW_SIZE;
                r.dev.bar_write(regs::DB_BAR, o, &data);
            }
            3 => {
                let mut d = [0u8; desc::SIZE];
                d.iter_mut().for_each(|b| *b = next() as u8);
                r.put(SQ + (v >> 20) % 4 * desc::SIZE as u64, &d);
            }
            _ => {
                let mut b = [0u8; 8];
                r.dev.bar_read(regs::REG_BAR, off, &mut b[..len]);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(r.r(reg::ERROR_STATUS), 0, "the garbage was flagged");
    // A driver that starts over gets a working device.
    r.w(reg::CTRL, 0);
    r.w(reg::STREAM_CTRL, 0);
    r.w(reg::COUNTERS_CLEAR, 1);
    r.w(reg::SQ_BASE_LO, SQ as u32);
    r.w(reg::SQ_BASE_HI, 0);
    r.w(reg::CQ_BASE_LO, CQ as u32);
    r.w(reg::CQ_BASE_HI, 0);
    r.w(reg::RING_ENTRIES, 4);
    r.w(reg::CTRL, reg::CTRL_ENABLE);
    (r.tail, r.next_cqe, r.phase) = (0, 0, 1);
    r.put(CQ, &[0; 64]);
    let img = image_record(4);
    r.put(IN, &img);
    r.post(desc::OP_INFER, 42, IN, img.len() as u32, OUT, 4096, model_state());
    r.ring();
    assert_eq!(r.complete(), (42, status::OK, (record::HEADER + ml::RESULT_BYTES) as u32));
    assert_eq!(r.r(reg::ERROR_STATUS), 0);
}

/// Issue 17, defect 4: a 4096-entry ring runs to head 3000; then (as one REGION_WRITE_MULTI
/// would, faster than the device thread polls) the driver disables it, resizes it to 2
/// entries, re-enables it and writes tail 3000 again. The device thread must not chase the
/// old tail forever with the state lock held: registers stay readable, the bad tail is
/// counted, and the new ring works.
#[test]
fn a_ring_reset_between_polls_does_not_hang_the_device() {
    for dev in [Accelerator::crypto().unwrap(), Accelerator::ml().unwrap()] {
        let mut r = rig(dev, 4096);
        r.tail = 3000;
        r.ring();
        let t = Instant::now();
        while r.db.read32(db::SQ_HEAD) != 3000 {
            assert!(t.elapsed() < Duration::from_secs(20), "3000 commands never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the device thread back off into its sleeping polls, then reset in one go.
        std::thread::sleep(Duration::from_millis(50));
        r.w(reg::CTRL, 0);
        r.w(reg::RING_ENTRIES, 2);
        r.w(reg::CTRL, reg::CTRL_ENABLE);
        r.db.write32(db::SQ_TAIL, 3000);
        std::thread::sleep(Duration::from_millis(50));
        // A register read needs the state lock: it must come back.
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let status = r.r(reg::STATUS);
            let _ = tx.send(status);
            r
        });
        let status =
            rx.recv_timeout(Duration::from_secs(5)).expect("the device thread holds the lock forever");
        assert_eq!(status & reg::STATUS_ENABLED, reg::STATUS_ENABLED);
        let mut r = handle.join().unwrap();
        assert!(r.counter(c::BAD_DOORBELLS) >= 1, "tail 3000 of a 2-entry ring is counted");
        // The new ring serves from slot 0.
        r.entries = 2;
        r.tail = 0;
        r.phase = 1;
        r.next_cqe = 0;
        r.put(CQ, &[0; 2 * cqe::SIZE]); // the old ring's completions are stale
        r.post(0xee, 77, IN, 16, OUT, 64, [0; 32]);
        r.ring();
        assert_eq!(r.complete(), (77, status::BAD_OPCODE, 0));
    }
}
