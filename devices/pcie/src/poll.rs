//! Adaptive polling for device threads: spin briefly while work keeps coming, then yield,
//! then sleep with growing pauses. The machine this runs on is small and shared by TCG
//! vCPUs, device threads and generators, so an idle device must not hold a core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A device thread's main loop: runs `round` until `stop` is raised, spinning while rounds
/// find work (`round` returns true) and backing off while they do not.
pub fn poll_until(stop: &AtomicBool, mut round: impl FnMut() -> bool) {
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::Acquire) {
        if round() {
            backoff.reset();
        } else {
            backoff.idle();
        }
    }
}

/// Backoff state of one polling loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    idle_rounds: u32,
    spin_rounds: u32,
    yield_rounds: u32,
    max_sleep: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(200, 50, Duration::from_millis(1))
    }
}

impl Backoff {
    /// Spin `spin_rounds` idle rounds, yield for `yield_rounds` more, then sleep, doubling
    /// from 10 µs up to `max_sleep`.
    pub fn new(spin_rounds: u32, yield_rounds: u32, max_sleep: Duration) -> Self {
        Backoff { idle_rounds: 0, spin_rounds, yield_rounds, max_sleep }
    }

    /// Work was found: go back to spinning.
    pub fn reset(&mut self) {
        self.idle_rounds = 0;
    }

    /// Nothing to do this round: wait a little, longer the longer we have been idle.
    pub fn idle(&mut self) {
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        if self.idle_rounds <= self.spin_rounds {
            std::hint::spin_loop();
        } else if self.idle_rounds <= self.spin_rounds + self.yield_rounds {
            std::thread::yield_now();
        } else {
            let n = (self.idle_rounds - self.spin_rounds - self.yield_rounds).min(16);
            let sleep = Duration::from_micros(10u64 << n.min(10)).min(self.max_sleep);
            std::thread::sleep(sleep);
        }
    }

    /// Whether the loop has backed off to sleeping.
    pub fn is_sleeping(&self) -> bool {
        self.idle_rounds > self.spin_rounds + self.yield_rounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_stopped() {
        let stop = AtomicBool::new(false);
        let mut rounds = 0;
        poll_until(&stop, || {
            rounds += 1;
            if rounds == 10 {
                stop.store(true, Ordering::Release);
            }
            rounds % 2 == 0
        });
        assert_eq!(rounds, 10);
    }

    #[test]
    fn escalates_and_resets() {
        let mut b = Backoff::new(2, 2, Duration::from_micros(20));
        for _ in 0..4 {
            b.idle();
        }
        assert!(!b.is_sleeping());
        b.idle();
        assert!(b.is_sleeping());
        b.reset();
        assert!(!b.is_sleeping());
    }
}
