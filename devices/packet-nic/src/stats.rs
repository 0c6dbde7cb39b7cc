//! The NIC's own counters (BAR0), indexed by `regs::packetized::reg::counter`.
//!
//! As in the Ensō model, the device thread batches its increments in a [`LocalCounts`]
//! and flushes them once per polling round, so the hot path costs no atomic
//! read-modify-write per packet; the trapped-register side only loads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use testbed_regs::packetized::reg::counter::{self, COUNT};

/// Number of counters.
pub const N: usize = COUNT as usize;

/// Live counters, shared by the device thread and the register side.
#[derive(Debug)]
pub struct NicCounters {
    values: [AtomicU64; N],
}

impl Default for NicCounters {
    fn default() -> Self {
        NicCounters { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl NicCounters {
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

    /// A copy of every counter.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.values[i].load(Relaxed))
    }

    /// Zeroes every counter (COUNTERS_CLEAR, reset).
    pub fn clear(&self) {
        self.values.iter().for_each(|v| v.store(0, Relaxed));
    }

    /// ERROR_STATUS: bit `c` is set for every drop/error counter `c` that is non-zero.
    pub fn error_status(&self) -> u32 {
        (counter::RX_DROP_NO_BUFFER..COUNT).filter(|&c| self.get(c) != 0).fold(0, |acc, c| acc | 1 << c)
    }
}

/// Increments gathered during one polling round.
#[derive(Debug, Default)]
pub struct LocalCounts {
    pending: [u64; N],
    dirty: bool,
}

impl LocalCounts {
    /// Adds `n` to counter `idx`.
    #[inline]
    pub fn add(&mut self, idx: u32, n: u64) {
        if let Some(v) = self.pending.get_mut(idx as usize) {
            *v += n;
            self.dirty = true;
        }
    }

    /// Publishes the pending increments.
    pub fn flush(&mut self, to: &NicCounters) {
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
        let c = NicCounters::default();
        let mut l = LocalCounts::default();
        l.add(counter::RX_PACKETS, 3);
        l.add(counter::BAD_TAIL, 1);
        l.add(99, 1);
        assert_eq!(c.get(counter::RX_PACKETS), 0);
        l.flush(&c);
        assert_eq!(c.get(counter::RX_PACKETS), 3);
        assert_eq!(c.error_status(), 1 << counter::BAD_TAIL);
        c.clear();
        assert_eq!(c.snapshot(), [0; N]);
    }
}
