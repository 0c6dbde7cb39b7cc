//! Register access for the datapath: BAR2 queue pages and the BAR0 prefetch doorbell are
//! memory-mapped and written with plain volatile stores (on the card, and in the
//! emulator's shared register mode), or reached through trapped accesses when the
//! transport does not map them (the emulator's mmio register mode) and the caller allowed
//! it.

use crate::{Error, Result};
use device_access::Bar;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::enso::{queue, EXT_BAR, QUEUE_BAR};

/// A 32-bit register window that is either memory-mapped (the datapath case) or reached
/// through trapped accesses (only when the caller explicitly allowed it).
#[derive(Clone)]
pub(crate) struct RegWindow {
    bar: Bar,
    base: u64,
    mapped: Option<NonNull<u8>>,
}

// SAFETY: the pointer addresses a device mapping kept alive by `bar` (an Arc'd mapping);
// every access through it is a volatile load or store of an aligned u32, which is what a
// device register (or a polled shared page) tolerates from any thread.
unsafe impl Send for RegWindow {}
// SAFETY: as above.
unsafe impl Sync for RegWindow {}

impl RegWindow {
    /// The `len` bytes at `base` of `bar`. Fails unless memory-mapped, or `allow_trapped`.
    pub(crate) fn new(bar: &Bar, bar_index: u8, base: u64, len: usize, allow_trapped: bool) -> Result<Self> {
        let mapped = bar.mapped_ptr(base, len).and_then(NonNull::new);
        if mapped.is_none() && !allow_trapped {
            return Err(Error::NotMapped { bar: bar_index, offset: base, len });
        }
        Ok(RegWindow { bar: bar.clone(), base, mapped })
    }

    /// A BAR2 queue page (`QueueRegs` block).
    pub(crate) fn queue(bar: &Bar, page: u64, allow_trapped: bool) -> Result<Self> {
        Self::new(bar, QUEUE_BAR, page, queue::SIZE as usize, allow_trapped)
    }

    /// A BAR0 prefetch doorbell slot (8 bytes).
    pub(crate) fn prefetch_slot(bar: &Bar, slot: u64, allow_trapped: bool) -> Result<Self> {
        Self::new(bar, EXT_BAR, slot, 8, allow_trapped)
    }

    /// Whether the window is memory-mapped (a page the device polls) rather than reached
    /// through trapped accesses.
    #[inline]
    pub(crate) fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// Writes the u32 at `off` of the window.
    #[inline]
    pub(crate) fn write(&self, off: u64, v: u32) {
        match self.mapped {
            // SAFETY: `off` is one of the aligned field offsets inside the window checked
            // in `new`; the mapping lives as long as `self.bar`.
            Some(p) => unsafe {
                std::ptr::write_volatile(p.as_ptr().add(off as usize).cast::<u32>(), v.to_le())
            },
            None => {
                // Trapped fallback (explicitly allowed): errors are transport failures
                // that the next setup-path access will report.
                let _ = self.bar.write32(self.base + off, v);
            }
        }
    }

    /// Reads the u32 at `off` of the window.
    #[inline]
    pub(crate) fn read(&self, off: u64) -> u32 {
        match self.mapped {
            Some(p) => {
                // SAFETY: as in `write`.
                let v = unsafe { std::ptr::read_volatile(p.as_ptr().add(off as usize).cast::<u32>()) };
                u32::from_le(v)
            }
            None => self.bar.read32(self.base + off).unwrap_or(0),
        }
    }

    /// Programs a queue's address: high half, then low half (with the enable bit and any
    /// low-bit tag); the low write commits. A release fence first publishes everything the
    /// device will read from the buffer.
    pub(crate) fn enable_queue(&self, addr: u64, low_bits: u32) {
        fence(Ordering::Release);
        self.write(queue::RX_MEM_HIGH, (addr >> 32) as u32);
        fence(Ordering::Release);
        self.write(queue::RX_MEM_LOW, addr as u32 | low_bits | queue::ENABLE);
    }

    /// Clears the enable bit (and the address).
    pub(crate) fn disable_queue(&self) {
        fence(Ordering::Release);
        self.write(queue::RX_MEM_LOW, 0);
        self.write(queue::RX_MEM_HIGH, 0);
    }

    /// Card mode: writes 0 to the register at `off` and reads it back until it sticks
    /// (upstream's reset). On the card, and in the emulator's mmio mode, the read returns
    /// after the write took effect in the device.
    pub(crate) fn zero_and_read_back(
        &self,
        off: u64,
        timeout: Duration,
        what: &'static str,
        id: u32,
    ) -> Result<()> {
        self.write(off, 0);
        let start = Instant::now();
        while self.read(off) != 0 {
            if start.elapsed() > timeout {
                return Err(Error::NotAcknowledged { what, id, enable: false, waited: timeout });
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Card mode: upstream's queue reset, in its order: the address (which stops the
    /// queue), then the tail and the head, each written 0 and read back.
    pub(crate) fn card_reset(&self, timeout: Duration, what: &'static str, id: u32) -> Result<()> {
        fence(Ordering::Release);
        for off in [queue::RX_MEM_LOW, queue::RX_MEM_HIGH, queue::RX_TAIL, queue::RX_HEAD] {
            self.zero_and_read_back(off, timeout, what, id)?;
        }
        Ok(())
    }

    /// Card mode: programs a queue's address in upstream's order, the low half (with the
    /// low-bit tag) first; the card takes the queue as live once the address is non-zero.
    /// A release fence first publishes everything the device will read from the buffer.
    pub(crate) fn card_enable(&self, addr: u64, low_bits: u32) {
        fence(Ordering::Release);
        self.write(queue::RX_MEM_LOW, addr as u32 | low_bits);
        self.write(queue::RX_MEM_HIGH, (addr >> 32) as u32);
    }

    /// Card mode: stops a queue (address 0, read back). The card acknowledges nothing: on
    /// a polled page (the emulator's shared mode) the device sees the new address at its
    /// next polling round, so wait [`CARD_QUIESCE`] before the buffers go; a trapped
    /// read-back returns after the device applied the write.
    pub(crate) fn card_disable(&self, timeout: Duration, what: &'static str, id: u32) -> Result<()> {
        fence(Ordering::Release);
        self.zero_and_read_back(queue::RX_MEM_LOW, timeout, what, id)?;
        self.zero_and_read_back(queue::RX_MEM_HIGH, timeout, what, id)?;
        if self.is_mapped() {
            std::thread::sleep(CARD_QUIESCE);
        }
        Ok(())
    }
}

/// Card mode: how long the driver waits after stopping a queue on a mapped page before it
/// frees the queue's buffers (the card has no acknowledgement; the emulator re-reads a live
/// queue's address every polling round, rounds are at most about a millisecond apart).
pub(crate) const CARD_QUIESCE: Duration = Duration::from_millis(5);

/// Datapath doorbell writes counted on the driver side, shared by a [`crate::Device`]
/// and its pipes (which write their heads and prefetch doorbells without it).
#[derive(Debug, Default)]
pub(crate) struct Doorbells {
    /// Pipe `rx_head` writes that free RX space.
    pub(crate) pipe_heads: AtomicU64,
    /// Prefetch doorbells rung (two register writes each).
    pub(crate) prefetches: AtomicU64,
    /// Pipe head and prefetch register writes that went to memory-mapped (polled) pages.
    pub(crate) polled: AtomicU64,
}

impl Doorbells {
    /// Counts `n` register writes just made through `w` toward `polled` when `w` is a
    /// polled page (a trapped write is counted by the device as trapped MMIO).
    #[inline]
    pub(crate) fn wrote(&self, w: &RegWindow, n: u64) {
        if w.is_mapped() {
            self.polled.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Waits until the state bit at (`word`, `bit`) of BAR0 reads `want`, polling for at most
/// `timeout`.
pub(crate) fn wait_state(
    ext: &Bar,
    (word, bit): (u64, u32),
    want: bool,
    timeout: Duration,
    what: &'static str,
    id: u32,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let v = ext.read32(word)?;
        if (v & bit != 0) == want {
            fence(Ordering::Acquire);
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::NotAcknowledged { what, id, enable: want, waited: timeout });
        }
        std::thread::yield_now();
    }
}

/// Whether the state bit is currently set.
pub(crate) fn state_is_set(ext: &Bar, (word, bit): (u64, u32)) -> Result<bool> {
    Ok(ext.read32(word)? & bit != 0)
}
