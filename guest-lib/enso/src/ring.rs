//! Pure arithmetic of the Ensō rings: flit rounding, head/tail distances, how a TX request
//! is split, the fallback-queue mask. No device needed: unit-tested on its own.

use testbed_regs::enso::{FLIT, MAX_TX_TRANSFER, TX_BOUNDARY};

/// Bytes rounded up to whole flits, in flits.
#[inline]
pub const fn bytes_to_flits(bytes: usize) -> usize {
    bytes.div_ceil(FLIT)
}

/// Bytes rounded up to a multiple of the flit size.
#[inline]
pub const fn round_up_to_flit(bytes: usize) -> usize {
    bytes_to_flits(bytes) * FLIT
}

/// Indices of a power-of-two ring of `size` slots (flits or notifications).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    mask: u32,
}

impl Ring {
    /// A ring of `size` slots; `size` must be a non-zero power of two.
    pub const fn new(size: u32) -> Option<Ring> {
        if size.is_power_of_two() {
            Some(Ring { mask: size - 1 })
        } else {
            None
        }
    }

    /// Number of slots.
    #[inline]
    pub const fn size(self) -> u32 {
        self.mask + 1
    }

    /// `i + n`, wrapped.
    #[inline]
    pub const fn add(self, i: u32, n: u32) -> u32 {
        i.wrapping_add(n) & self.mask
    }

    /// `i - n`, wrapped.
    #[inline]
    pub const fn sub(self, i: u32, n: u32) -> u32 {
        i.wrapping_sub(n) & self.mask
    }

    /// Slots from `from` up to (not including) `to`, going forward.
    #[inline]
    pub const fn distance(self, from: u32, to: u32) -> u32 {
        to.wrapping_sub(from) & self.mask
    }

    /// Free slots for a producer at `tail` whose consumer is at `head`; one slot always
    /// stays empty so that head == tail means empty.
    #[inline]
    pub const fn free(self, head: u32, tail: u32) -> u32 {
        self.mask - self.distance(head, tail)
    }
}

/// The `fallback_queue_mask` for `n` fallback queues: `n` rounded down to a power of two,
/// minus one (0 for `n <= 1`), as upstream computes it. The device picks `hash & mask`.
pub const fn fallback_mask(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        (1u32 << (31 - n.leading_zeros())) - 1
    }
}

/// The TX requests for `len` bytes starting at byte `offset` of a ring of `ring_bytes`
/// bytes whose first byte is at device address `base`: each request is at most
/// [`MAX_TX_TRANSFER`] bytes, never crosses a [`TX_BOUNDARY`] in device address space,
/// and the ring's end (data that wraps continues at `base`).
#[derive(Clone, Debug)]
pub struct TxChunks {
    base: u64,
    ring_bytes: u64,
    offset: u64,
    left: u64,
}

impl TxChunks {
    /// Splits `len` bytes at `offset` (taken modulo `ring_bytes`).
    pub fn new(base: u64, ring_bytes: usize, offset: usize, len: usize) -> Self {
        let ring_bytes = ring_bytes as u64;
        TxChunks { base, ring_bytes, offset: offset as u64 % ring_bytes.max(1), left: len as u64 }
    }
}

impl Iterator for TxChunks {
    /// (device address, length in bytes).
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        if self.left == 0 {
            return None;
        }
        let addr = self.base + self.offset;
        let to_ring_end = self.ring_bytes - self.offset;
        let to_boundary = TX_BOUNDARY - addr % TX_BOUNDARY;
        let len = self.left.min(MAX_TX_TRANSFER).min(to_ring_end).min(to_boundary);
        self.left -= len;
        self.offset = (self.offset + len) % self.ring_bytes;
        Some((addr, len as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_regs::enso::{NOTIF_RING_ENTRIES, PIPE_BYTES, PIPE_FLITS};

    #[test]
    fn flit_rounding() {
        assert_eq!(bytes_to_flits(0), 0);
        assert_eq!(bytes_to_flits(1), 1);
        assert_eq!(bytes_to_flits(64), 1);
        assert_eq!(bytes_to_flits(65), 2);
        assert_eq!(round_up_to_flit(60), 64);
        assert_eq!(round_up_to_flit(128), 128);
        assert_eq!(round_up_to_flit(1514), 1536);
    }

    #[test]
    fn ring_arithmetic_wraps() {
        let r = Ring::new(PIPE_FLITS).unwrap();
        assert_eq!(r.size(), 32768);
        assert_eq!(r.add(32767, 1), 0);
        assert_eq!(r.add(32760, 20), 12);
        assert_eq!(r.distance(32760, 12), 20);
        assert_eq!(r.distance(5, 5), 0);
        assert_eq!(r.free(0, 0), 32767, "one slot stays empty");
        assert_eq!(r.free(10, 9), 0);
        assert_eq!(r.free(100, 50), 32767 - (32768 - 50));
        let n = Ring::new(NOTIF_RING_ENTRIES).unwrap();
        assert_eq!(n.add(NOTIF_RING_ENTRIES - 1, 2), 1);
        assert!(Ring::new(0).is_none());
        assert!(Ring::new(3000).is_none());
    }

    #[test]
    fn fallback_masks() {
        assert_eq!(fallback_mask(0), 0);
        assert_eq!(fallback_mask(1), 0);
        assert_eq!(fallback_mask(2), 1);
        assert_eq!(fallback_mask(3), 1);
        assert_eq!(fallback_mask(4), 3);
        assert_eq!(fallback_mask(7), 3);
        assert_eq!(fallback_mask(8), 7);
        assert_eq!(fallback_mask(8192), 8191);
        assert_eq!(fallback_mask(u32::MAX), (1 << 31) - 1);
    }

    #[test]
    fn tx_split_at_128k() {
        let base = 0x1_0000_0000u64; // 2 MiB aligned
        let c: Vec<_> = TxChunks::new(base, PIPE_BYTES, 0, 300 << 10).collect();
        assert_eq!(
            c,
            vec![(base, 128 << 10), (base + (128 << 10), 128 << 10), (base + (256 << 10), 44 << 10)]
        );
        let small: Vec<_> = TxChunks::new(base, PIPE_BYTES, 640, 64).collect();
        assert_eq!(small, vec![(base + 640, 64)]);
        assert_eq!(TxChunks::new(base, PIPE_BYTES, 0, 0).count(), 0);
        assert_eq!(TxChunks::new(base, PIPE_BYTES, 0, 128 << 10).count(), 1);
    }

    #[test]
    fn tx_split_at_ring_end_and_2m_boundary() {
        let base = 0x1_0000_0000u64;
        // 4 KiB before the end of a 2 MiB ring: the first request stops at the end (the
        // 2 MiB boundary), the rest continues at the ring's start.
        let off = PIPE_BYTES - 4096;
        let c: Vec<_> = TxChunks::new(base, PIPE_BYTES, off, 8192).collect();
        assert_eq!(c, vec![(base + off as u64, 4096), (base, 4096)]);
        // A buffer that is not 2 MiB aligned: the device-address boundary splits too.
        let base2 = 0x1_001f_f000u64; // 4 KiB below a 2 MiB boundary
        let c: Vec<_> = TxChunks::new(base2, 4 << 20, 0, 12288).collect();
        assert_eq!(c, vec![(base2, 4096), (0x1_0020_0000, 8192)]);
        for (a, l) in TxChunks::new(base2, 4 << 20, 1000 * 64, 3 << 20) {
            assert!(l as u64 <= MAX_TX_TRANSFER);
            assert_eq!(a / TX_BOUNDARY, (a + l as u64 - 1) / TX_BOUNDARY, "{a:#x}+{l} crosses 2 MiB");
        }
        let total: u64 = TxChunks::new(base2, 4 << 20, 1000 * 64, 3 << 20).map(|(_, l)| l as u64).sum();
        assert_eq!(total, 3 << 20);
    }
}
