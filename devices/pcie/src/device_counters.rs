//! A device's own event counters (what NIC models expose in a register page): a fixed set
//! of 64-bit atomics, plus per-round batching for the device thread.
//!
//! The device thread gathers its increments in [`LocalCounts`] and flushes them once per
//! polling round, so the hot path costs no atomic read-modify-write per packet; the
//! trapped-register side only loads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `N` live counters, shared by the device thread and the register side.
#[derive(Debug)]
pub struct DeviceCounters<const N: usize> {
    values: [AtomicU64; N],
}

impl<const N: usize> Default for DeviceCounters<N> {
    fn default() -> Self {
        DeviceCounters { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl<const N: usize> DeviceCounters<N> {
    /// The value of counter `idx` (0 for an unknown index).
    pub fn get(&self, idx: u32) -> u64 {
        self.values.get(idx as usize).map_or(0, |v| v.load(Relaxed))
    }

    /// Adds `n` to counter `idx` (unknown indices are ignored).
    pub fn add(&self, idx: u32, n: u64) {
        if let Some(v) = self.values.get(idx as usize) {
            v.fetch_add(n, Relaxed);
        }
    }

    /// The 32-bit register word at byte `rel` of a counter block laid out as 64-bit
    /// counters, low half first (0 past the end).
    pub fn reg_word(&self, rel: u64) -> u32 {
        let v = self.get((rel / 8) as u32);
        if rel.is_multiple_of(8) {
            v as u32
        } else {
            (v >> 32) as u32
        }
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.values[i].load(Relaxed))
    }

    /// Zeroes every counter (a counters-clear register, reset).
    pub fn clear(&self) {
        self.values.iter().for_each(|v| v.store(0, Relaxed));
    }

    /// An error-status word: bit `c` set for every counter `c >= first_error` (the
    /// drop/error counters) that is non-zero.
    pub fn error_status(&self, first_error: u32) -> u32 {
        (first_error..N.min(32) as u32).filter(|&c| self.get(c) != 0).fold(0, |acc, c| acc | 1 << c)
    }
}

/// Increments gathered during one polling round.
#[derive(Debug)]
pub struct LocalCounts<const N: usize> {
    pending: [u64; N],
    dirty: bool,
}

impl<const N: usize> Default for LocalCounts<N> {
    fn default() -> Self {
        LocalCounts { pending: [0; N], dirty: false }
    }
}

impl<const N: usize> LocalCounts<N> {
    /// Adds `n` to counter `idx`.
    #[inline]
    pub fn add(&mut self, idx: u32, n: u64) {
        if let Some(v) = self.pending.get_mut(idx as usize) {
            *v += n;
            self.dirty = true;
        }
    }

    /// Publishes the pending increments.
    pub fn flush(&mut self, to: &DeviceCounters<N>) {
        if !self.dirty {
            return;
        }
        for (i, v) in self.pending.iter_mut().enumerate() {
            if *v != 0 {
                to.add(i as u32, *v);
                *v = 0;
            }
        }
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_error_status() {
        let c = DeviceCounters::<8>::default();
        let mut l = LocalCounts::<8>::default();
        l.add(0, 3);
        l.add(6, 1);
        l.add(99, 1);
        assert_eq!(c.get(0), 0, "nothing published before the flush");
        l.flush(&c);
        assert_eq!(c.get(0), 3);
        assert_eq!(c.error_status(4), 1 << 6);
        assert_eq!(c.error_status(7), 0);
        c.clear();
        assert_eq!(c.snapshot(), [0; 8]);
    }
}
