//! The benchmark ceiling: two threads moving packets through a raw single-producer
//! single-consumer ring in shared memory — a fixed array of slots, head/tail atomics on
//! their own cache lines, index updates published once per batch, the bytes copied in by
//! the producer and out by the consumer, nothing allocated while it runs. No two-thread
//! NIC emulation can beat it on the same machine, so scenarios measure it in the same run
//! as their own numbers.

use serde::Serialize;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Instant;

/// Slots in the ring (a power of two).
pub const SLOTS: usize = 1024;
/// Index updates are published every this many packets (and whenever a side waits).
pub const BATCH: u64 = 32;
const HDR: usize = 8;

/// Outcome of one [`ring_run`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RingResult {
    pub packets: u64,
    pub size: usize,
    pub secs: f64,
    pub mpps: f64,
    /// Payload bit rate, Gbit/s.
    pub gbps: f64,
    /// Order-sensitive checksum of every byte the producer wrote (0 unless verifying).
    pub checksum_tx: u64,
    /// The same over every byte the consumer read.
    pub checksum_rx: u64,
    /// Packets whose length or sequence number was not the expected one.
    pub errors: u64,
}

impl RingResult {
    pub fn intact(&self) -> bool {
        self.errors == 0 && self.checksum_tx == self.checksum_rx
    }
}

#[repr(align(128))]
struct Padded(AtomicU64);

struct Ring {
    head: Padded,
    tail: Padded,
    stride: usize,
    data: Box<[UnsafeCell<u8>]>,
}

// SAFETY: slot bytes are only touched by the producer between claiming a slot (tail
// acquired past it) and publishing it (head release), and by the consumer between
// acquiring head and releasing tail: the atomics order every access, never concurrent.
unsafe impl Sync for Ring {}

impl Ring {
    fn slot(&self, i: u64) -> *mut u8 {
        let off = (i as usize & (SLOTS - 1)) * self.stride;
        // The pointer comes from the whole slice, so it may reach the whole slot.
        UnsafeCell::raw_get(self.data.as_ptr()).wrapping_add(off)
    }
}

/// Mpps for `packets` packets of `size` bytes through the ring (one measurement; see
/// [`ring_run`]).
pub fn ring_ceiling(packets: u64, size: usize) -> f64 {
    ring_run(packets, size, false).mpps
}

/// Moves `packets` packets of `size` bytes (≥ 8) from a producer thread to a consumer
/// thread. Every packet carries its sequence number in its first 8 bytes, and the
/// consumer checks it and the length. With `verify`, every byte of every packet is a
/// pattern of its sequence and both sides checksum every byte they move (slower: use it
/// for correctness, not for the ceiling).
pub fn ring_run(packets: u64, size: usize, verify: bool) -> RingResult {
    assert!(size >= 8, "packets carry an 8-byte sequence number");
    let stride = (HDR + size).next_multiple_of(64);
    let ring = Ring {
        head: Padded(AtomicU64::new(0)),
        tail: Padded(AtomicU64::new(0)),
        stride,
        data: (0..SLOTS * stride).map(|_| UnsafeCell::new(0)).collect(),
    };
    let barrier = Barrier::new(2);
    let (checksum_tx, (secs, checksum_rx, errors)) = std::thread::scope(|s| {
        let producer = s.spawn(|| produce(&ring, &barrier, packets, size, verify));
        let consumed = consume(&ring, &barrier, packets, size, verify);
        (producer.join().expect("producer panicked"), consumed)
    });
    let mpps = packets as f64 / secs / 1e6;
    RingResult {
        packets,
        size,
        secs,
        mpps,
        gbps: mpps * size as f64 * 8e-3,
        checksum_tx,
        checksum_rx,
        errors,
    }
}

/// Spin briefly, then give the CPU away: on a loaded machine (or fewer free cores than
/// threads) a pure spin would burn the other side's time slice.
struct Idle(u32);

impl Idle {
    fn wait(&mut self) {
        self.0 += 1;
        if self.0 > 256 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

fn fill_pattern(buf: &mut [u8], seq: u64) {
    for (k, c) in buf.chunks_mut(8).enumerate() {
        let w = (seq ^ 0x5555_5555_5555_5555).wrapping_mul(k as u64 * 2 + 1).to_le_bytes();
        c.copy_from_slice(&w[..c.len()]);
    }
}

fn hash(mut h: u64, bytes: &[u8]) -> u64 {
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn produce(ring: &Ring, barrier: &Barrier, packets: u64, size: usize, verify: bool) -> u64 {
    let mut src = vec![0u8; size];
    let mut sum = 0u64;
    let (mut head, mut tail_seen) = (0u64, 0u64);
    let mut idle = Idle(0);
    barrier.wait();
    while head < packets {
        if head - tail_seen >= SLOTS as u64 {
            tail_seen = ring.tail.0.load(Ordering::Acquire);
            if head - tail_seen >= SLOTS as u64 {
                ring.head.0.store(head, Ordering::Release);
                idle.wait();
                continue;
            }
            idle.reset();
        }
        if verify {
            fill_pattern(&mut src, head);
        }
        src[..8].copy_from_slice(&head.to_le_bytes());
        if verify {
            sum = hash(sum, &src);
        }
        let slot = ring.slot(head);
        // SAFETY: slot `head` is ours (head - tail < SLOTS, tail acquired), `stride` ≥
        // HDR + size bytes long, and `src` does not overlap the ring.
        unsafe {
            slot.cast::<u64>().write_unaligned(size as u64);
            std::ptr::copy_nonoverlapping(src.as_ptr(), slot.add(HDR), size);
        }
        head += 1;
        if head % BATCH == 0 {
            ring.head.0.store(head, Ordering::Release);
        }
    }
    ring.head.0.store(head, Ordering::Release);
    sum
}

fn consume(ring: &Ring, barrier: &Barrier, packets: u64, size: usize, verify: bool) -> (f64, u64, u64) {
    let mut dst = vec![0u8; size];
    let (mut sum, mut errors) = (0u64, 0u64);
    let (mut tail, mut head_seen) = (0u64, 0u64);
    let mut idle = Idle(0);
    barrier.wait();
    let t0 = Instant::now();
    while tail < packets {
        if tail == head_seen {
            head_seen = ring.head.0.load(Ordering::Acquire);
            if tail == head_seen {
                ring.tail.0.store(tail, Ordering::Release);
                idle.wait();
                continue;
            }
            idle.reset();
        }
        let slot = ring.slot(tail);
        // SAFETY: slot `tail` was published (tail < head, head acquired) and is not
        // reused before we release tail past it; `dst` does not overlap the ring.
        let len = unsafe {
            let len = slot.cast::<u64>().read_unaligned();
            std::ptr::copy_nonoverlapping(slot.add(HDR), dst.as_mut_ptr(), size);
            len
        };
        let seq = u64::from_le_bytes(dst[..8].try_into().unwrap());
        errors += u64::from(seq != tail || len != size as u64);
        if verify {
            sum = hash(sum, &dst);
        }
        tail += 1;
        if tail % BATCH == 0 {
            ring.tail.0.store(tail, Ordering::Release);
        }
    }
    ring.tail.0.store(tail, Ordering::Release);
    (t0.elapsed().as_secs_f64(), sum, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_every_packet_intact() {
        for size in [8, 60, 64, 1500, 9000] {
            let r = ring_run(if size > 1500 { 20_000 } else { 200_000 }, size, true);
            assert!(r.intact(), "{size} B: {r:?}");
            assert_ne!(r.checksum_tx, 0);
        }
    }

    #[test]
    fn checksum_sees_a_changed_byte() {
        let mut a = vec![0u8; 64];
        fill_pattern(&mut a, 5);
        let h = hash(0, &a);
        a[63] ^= 1;
        assert_ne!(hash(0, &a), h);
        let mut b = vec![0u8; 64];
        fill_pattern(&mut b, 6);
        assert_ne!(hash(hash(0, &a), &b), hash(hash(0, &b), &a), "order matters");
    }

    #[test]
    fn ceiling_is_measured() {
        let r = ring_run(2_000_000, 64, false);
        assert_eq!(r.errors, 0);
        println!("ring ceiling, 64 B: {:.1} Mpps ({:.1} Gbit/s)", r.mpps, r.gbps);
    }
}
