//! The Ethernet-side features: the 200 MHz device clock, hardware timestamps and the TX
//! rate limiter.

use std::time::Instant;
use testbed_regs::enso::{config, NS_PER_TICK};

/// The device clock: 5 ns ticks since power-on, from the monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { epoch: Instant::now() }
    }
}

impl Clock {
    /// Ticks since the epoch.
    pub fn ticks(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() / NS_PER_TICK as u128) as u64
    }
}

/// Timestamp configuration (config ID 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamps {
    pub enabled: bool,
    pub offset: usize,
}

impl Default for Timestamps {
    fn default() -> Self {
        Timestamps { enabled: false, offset: config::TS_DEFAULT_OFFSET as usize }
    }
}

impl Timestamps {
    /// Applies a configuration notification.
    pub fn configure(&mut self, n: &[u8; 64]) {
        let enable =
            u64::from_le_bytes(n[config::TS_ENABLE..config::TS_ENABLE + 8].try_into().unwrap_or_default());
        let offset = n[config::TS_OFFSET];
        self.enabled = enable != 0;
        self.offset = if offset == 0 { config::TS_DEFAULT_OFFSET } else { offset } as usize;
    }

    /// TX: stamps `now` (big-endian) at the offset, when the frame is long enough.
    pub fn stamp_tx(&self, frame: &mut [u8], now: u32) {
        if let Some(b) = frame.get_mut(self.offset..self.offset + 4) {
            b.copy_from_slice(&now.to_be_bytes());
        }
    }

    /// RX: replaces the stamp at the offset by the round-trip time `now − stamp`.
    pub fn stamp_rx(&self, frame: &mut [u8], now: u32) {
        if let Some(b) = frame.get_mut(self.offset..self.offset + 4) {
            let sent = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            b.copy_from_slice(&now.wrapping_sub(sent).to_be_bytes());
        }
    }
}

/// Largest frame in flits (so one frame always fits the bucket).
const MAX_FRAME_FLITS: u64 = (testbed_regs::enso::MAX_RX_PACKET as u64).div_ceil(64);

/// TX rate limiter (config ID 3): `numerator` flits every `denominator` cycles, as a
/// token bucket holding at most a burst of max(numerator, one jumbo frame) flits.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimiter {
    enabled: bool,
    num: u64,
    den: u64,
    /// Tokens in units of 1/den flit.
    tokens: u64,
    last: u64,
}

impl RateLimiter {
    /// Applies a configuration notification; false when enabling with a zero rate.
    pub fn configure(&mut self, n: &[u8; 64], now: u64) -> bool {
        let den = u16::from_le_bytes([n[config::RL_DENOMINATOR], n[config::RL_DENOMINATOR + 1]]) as u64;
        let num = u16::from_le_bytes([n[config::RL_NUMERATOR], n[config::RL_NUMERATOR + 1]]) as u64;
        let enable = n[config::RL_ENABLE..config::RL_ENABLE + 4].iter().any(|b| *b != 0);
        if enable && (den == 0 || num == 0) {
            return false;
        }
        *self = RateLimiter { enabled: enable, num, den, tokens: 0, last: now };
        true
    }

    /// Whether the limiter is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn capacity(&self) -> u64 {
        self.num.max(MAX_FRAME_FLITS) * self.den
    }

    /// Takes `flits` tokens at time `now` (ticks); false when there are not enough yet.
    pub fn try_take(&mut self, flits: u64, now: u64) -> bool {
        if !self.enabled {
            return true;
        }
        let elapsed = now.saturating_sub(self.last);
        self.last = now;
        self.tokens = self.tokens.saturating_add(elapsed.saturating_mul(self.num)).min(self.capacity());
        let need = flits.min(self.num.max(MAX_FRAME_FLITS)) * self.den;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ts = Timestamps { enabled: true, offset: 18 };
        let mut f = vec![0u8; 64];
        ts.stamp_tx(&mut f, 1000);
        assert_eq!(&f[18..22], &1000u32.to_be_bytes());
        ts.stamp_rx(&mut f, 1250);
        assert_eq!(&f[18..22], &250u32.to_be_bytes());
        let mut short = vec![0u8; 20];
        ts.stamp_tx(&mut short, 1); // too short: untouched, no panic
        assert_eq!(short, vec![0u8; 20]);
    }

    #[test]
    fn rate_limiter_meters_flits() {
        let mut n = [0u8; 64];
        n[config::RL_DENOMINATOR..][..2].copy_from_slice(&10u16.to_le_bytes());
        n[config::RL_NUMERATOR..][..2].copy_from_slice(&1u16.to_le_bytes());
        n[config::RL_ENABLE] = 1;
        let mut rl = RateLimiter::default();
        assert!(rl.configure(&n, 0));
        assert!(!rl.try_take(2, 10), "one flit after 10 cycles");
        assert!(rl.try_take(2, 20));
        assert!(!rl.try_take(1, 25));
        n[config::RL_NUMERATOR..][..2].copy_from_slice(&0u16.to_le_bytes());
        assert!(!rl.configure(&n, 0), "zero rate refused");
    }
}
