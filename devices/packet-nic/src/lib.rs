//! The packetized baseline NIC model (E810/DPDK style): the interface the seed (§3.1.1)
//! compares Ensō against, on the same PCI glue, Ethernet ports and accounting.
//!
//! Register contract: `testbed_regs::packetized`. BAR0 (64 KiB) is trapped: identity,
//! sizes, RSS configuration, write-back coalescing and the counters. BAR2 holds one
//! shared-memory 4 KiB page per queue pair, which a device thread polls (enable bits,
//! ring sizes, tail doorbells) and writes (heads, the STATE acknowledgement).
//!
//! Per queue, software posts 16-byte descriptors pointing at 2 KiB buffers; the device
//! fetches posted descriptors in bursts (metadata DMA reads), writes each received frame
//! into the next buffer (data DMA write), writes descriptors back with length and DD in
//! coalesced groups of up to WB_BATCH (metadata DMA writes, always flushed at the end of
//! a round) and publishes the head. TX: a tail doorbell makes the device fetch the
//! descriptors, read each buffer (data), send the frame, write DD back (coalesced) and
//! advance the head.
//!
//! Choices where the contract leaves room (also documented there):
//! - Frames over one buffer are chained over consecutive descriptors with EOP on the last
//!   (jumbo frames up to 9216 bytes, as the Ensō model accepts); RX drops a frame whole
//!   (RX_DROP_NO_BUFFER) when fewer descriptors are posted than it needs.
//! - RX data that cannot be written (buffer address unmapped): the frame's descriptors are
//!   written back with DD|ERR and length 0, counted RX_DROP_DMA; the ring keeps moving.
//! - A failed descriptor fetch counts DMA_ERRORS; on RX the frame is dropped
//!   (RX_DROP_DMA) and the next frame retries; on TX the queue stalls until software
//!   writes a new tail (or re-enables it), so an unmapped ring costs one error per doorbell.
//! - RSS is Toeplitz over the IPv4 addresses and TCP/UDP ports (the standard RSS input),
//!   through an implicit 128-entry redirection table filled round-robin; other frames
//!   hash to 0 (queue 0).
//! - Reading the low half of a 64-bit counter latches the high half.
//! - [`PacketNic::counters`] is the NIC's own counter array; the PCIe accounting is
//!   [`PciDevice::counters`] (call it as `PciDevice::counters(&nic)`).
//!
//! The wire backend can be swapped between runs with [`PacketNic::replace_port`] (or taken
//! out with [`PacketNic::take_port`]); the device thread is stopped and restarted around the
//! swap, and queue state is kept.

mod rss;
pub mod stats;
mod worker;

#[cfg(test)]
mod tests;

use pcie_model::config::{BarKind, BarSpec, ConfigSpace, ConfigSpaceBuilder};
use pcie_model::device_thread::{DeviceLoop, Lifecycle};
use pcie_model::regs::dword;
use pcie_model::{BarBacking, Counters, PciDevice, ShmRegion};
use stats::NicCounters;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use testbed_regs::packetized::{self as regs, reg, MAX_QUEUES, RSS_KEY_DEFAULT, RSS_KEY_LEN};
use wire::EthPort;
pub use worker::{Disconnected, RX_BATCH, TX_BUDGET};

/// Number of NIC counters (indices of `regs::packetized::reg::counter`).
pub const COUNT: usize = stats::N;

/// Device configuration (fixed for an instance; read-only in BAR0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketNicConfig {
    /// Queue pairs served (1..=256).
    pub num_queues: u32,
}

impl Default for PacketNicConfig {
    fn default() -> Self {
        PacketNicConfig { num_queues: 8 }
    }
}

impl PacketNicConfig {
    fn check(&self) -> std::io::Result<()> {
        if !(1..=MAX_QUEUES).contains(&self.num_queues) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "num_queues must be 1..=256"));
        }
        Ok(())
    }
}

/// State shared by the trapped-register side and the device thread (atomics only).
pub(crate) struct Shared {
    pub cfg: PacketNicConfig,
    pub bar2: Arc<ShmRegion>,
    pub counters: NicCounters,
    pub pcie: Arc<Counters>,
    pub rss_queues: AtomicU32,
    pub wb_batch: AtomicU32,
    pub rss_key: [AtomicU32; reg::RSS_KEY_WORDS as usize],
    /// Bumped after every RSS_KEY write (the device thread rebuilds its table).
    pub rss_gen: AtomicU32,
}

impl Shared {
    pub fn rss_key(&self) -> [u8; RSS_KEY_LEN] {
        let mut k = [0u8; RSS_KEY_LEN];
        for (chunk, w) in k.chunks_exact_mut(4).zip(&self.rss_key) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        k
    }

    /// Power-on register values.
    fn power_on(&self) {
        self.rss_queues.store(1, Ordering::Relaxed);
        self.wb_batch.store(reg::WB_BATCH_DEFAULT, Ordering::Relaxed);
        for (w, chunk) in self.rss_key.iter().zip(RSS_KEY_DEFAULT.chunks_exact(4)) {
            w.store(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]), Ordering::Relaxed);
        }
        self.rss_gen.fetch_add(1, Ordering::Release);
    }
}

/// The packetized NIC.
pub struct PacketNic {
    config: ConfigSpace,
    shared: Arc<Shared>,
    /// The device thread and its state.
    worker: DeviceLoop<worker::DeviceState>,
    /// Latched high half of the last 64-bit counter whose low half was read.
    latch: (u64, u32),
}

impl PacketNic {
    /// A NIC in its power-on state, its Ethernet port connected to `port`.
    pub fn new(cfg: PacketNicConfig, port: Box<dyn EthPort>) -> std::io::Result<PacketNic> {
        cfg.check()?;
        let config = ConfigSpaceBuilder::new(regs::VENDOR_ID, regs::DEVICE_ID)
            .class(regs::CLASS_CODE)
            .bar(BarSpec::mem32(regs::REG_BAR, regs::REG_BAR_SIZE))
            .bar(BarSpec {
                index: regs::QUEUE_BAR,
                size: regs::QUEUE_BAR_SIZE,
                kind: BarKind::Mem64,
                prefetchable: true,
            })
            .build()?;
        let shared = Arc::new(Shared {
            cfg,
            bar2: Arc::new(ShmRegion::new("packet-nic-bar2", regs::queue_page(cfg.num_queues) as usize)?),
            counters: NicCounters::default(),
            pcie: Arc::new(Counters::default()),
            rss_queues: AtomicU32::new(1),
            wb_batch: AtomicU32::new(reg::WB_BATCH_DEFAULT),
            rss_key: std::array::from_fn(|_| AtomicU32::new(0)),
            rss_gen: AtomicU32::new(0),
        });
        shared.power_on();
        let state = worker::DeviceState::new(&shared, port);
        // Should the model ever panic anyway, it comes back unplugged rather than taking
        // the process down.
        let (sh, sh2) = (shared.clone(), shared.clone());
        let worker = DeviceLoop::new(
            "packet-nic",
            state,
            move || worker::DeviceState::new(&sh, Box::new(Disconnected)),
            // Rounds until stopped, backing off when idle; the state stays across
            // detach/attach.
            move |mut st, ctx, stop| {
                pcie_model::poll::poll_until(&stop, || st.round(&sh2, &ctx.dma));
                st
            },
        );
        Ok(PacketNic { config, shared, worker, latch: (u64::MAX, 0) })
    }

    /// The device configuration.
    pub fn nic_config(&self) -> PacketNicConfig {
        self.shared.cfg
    }

    /// A snapshot of the NIC counters, by index of `regs::packetized::reg::counter`.
    pub fn counters(&self) -> [u64; COUNT] {
        self.shared.counters.snapshot()
    }

    /// One NIC counter (0 for an unknown index).
    pub fn counter(&self, idx: u32) -> u64 {
        self.shared.counters.get(idx)
    }

    /// Connects the Ethernet port to `port` and returns the previous backend. The device
    /// thread (if running) is stopped around the swap; queues and counters are kept.
    /// Frames queued in the old port stay there.
    pub fn replace_port(&mut self, port: Box<dyn EthPort>) -> Box<dyn EthPort> {
        self.worker.with_state(|st| std::mem::replace(&mut st.port, port))
    }

    /// Takes the port out, leaving the NIC unplugged ([`Disconnected`]: nothing received,
    /// every transmitted frame counted as TX_DROP_WIRE).
    pub fn take_port(&mut self) -> Box<dyn EthPort> {
        self.replace_port(Box::new(Disconnected))
    }

    fn bad_write(&self) {
        self.shared.counters.add(reg::counter::BAD_REGISTER_WRITES, 1);
        self.shared.pcie.bad_register_write();
    }

    /// BAR0 register `off` (4-byte aligned).
    fn reg_read32(&mut self, off: u64) -> u32 {
        let s = &self.shared;
        let key_end = reg::RSS_KEY + 4 * reg::RSS_KEY_WORDS;
        let counters_end = reg::COUNTERS + 8 * COUNT as u64;
        match off {
            reg::ID => reg::ID_VALUE,
            reg::VERSION => reg::VERSION_VALUE,
            reg::NUM_QUEUES => s.cfg.num_queues,
            reg::BUF_SIZE => regs::BUF_SIZE as u32,
            reg::MAX_RING => regs::MAX_RING_SIZE,
            reg::RSS_QUEUES => s.rss_queues.load(Ordering::Relaxed),
            reg::WB_BATCH => s.wb_batch.load(Ordering::Relaxed),
            reg::ERROR_STATUS => s.counters.error_status(stats::FIRST_ERROR),
            o if (reg::RSS_KEY..key_end).contains(&o) => {
                s.rss_key[((o - reg::RSS_KEY) / 4) as usize].load(Ordering::Relaxed)
            }
            o if o == self.latch.0 => self.latch.1,
            o if (reg::COUNTERS..counters_end).contains(&o) => {
                let v = s.counters.get(((o - reg::COUNTERS) / 8) as u32);
                if o.is_multiple_of(8) {
                    self.latch = (off + 4, (v >> 32) as u32);
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A BAR0 register write; false when refused.
    fn reg_write32(&mut self, off: u64, v: u32) -> bool {
        let s = &self.shared;
        match off {
            reg::RSS_QUEUES if (1..=s.cfg.num_queues).contains(&v) => {
                s.rss_queues.store(v, Ordering::Relaxed);
                true
            }
            reg::WB_BATCH if (1..=reg::WB_BATCH_MAX).contains(&v) => {
                s.wb_batch.store(v, Ordering::Relaxed);
                true
            }
            reg::COUNTERS_CLEAR if v <= 1 => {
                if v == 1 {
                    s.counters.clear();
                }
                true
            }
            o if (reg::RSS_KEY..reg::RSS_KEY + 4 * reg::RSS_KEY_WORDS).contains(&o) => {
                s.rss_key[((o - reg::RSS_KEY) / 4) as usize].store(v, Ordering::Relaxed);
                s.rss_gen.fetch_add(1, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// The BAR2 shared area holding `[offset, offset + len)`, if any.
    fn queue_area(&self, index: u8, offset: u64, len: usize) -> Option<&ShmRegion> {
        let end = offset.checked_add(len as u64)?;
        (index == regs::QUEUE_BAR && end <= self.shared.bar2.len() as u64).then_some(&*self.shared.bar2)
    }
}

impl PciDevice for PacketNic {
    fn name(&self) -> &str {
        "packet-nic"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_backing(&self, index: u8) -> BarBacking {
        match index {
            regs::QUEUE_BAR => BarBacking::Shared {
                shm: self.shared.bar2.clone(),
                areas: vec![(0, regs::queue_page(self.shared.cfg.num_queues))],
            },
            _ => BarBacking::Trapped,
        }
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(shm) = self.queue_area(index, offset, data.len()) {
            shm.read_bytes(offset, data);
            return;
        }
        if index != regs::REG_BAR || data.len() > 8 {
            return;
        }
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > regs::REG_BAR_SIZE) {
            return;
        }
        pcie_model::regs::read_words(offset, data, |w| self.reg_read32(w));
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if let Some(shm) = self.queue_area(index, offset, data.len()) {
            shm.write_bytes(offset, data);
            return;
        }
        let ok = index == regs::REG_BAR && dword(offset, data).is_some_and(|v| self.reg_write32(offset, v));
        if !ok {
            self.bad_write();
        }
    }

    fn lifecycle(&mut self) -> Option<&mut dyn Lifecycle> {
        Some(&mut self.worker)
    }

    fn reset(&mut self) {
        // The port stays plugged in; everything else returns to power-on.
        let shared = self.shared.clone();
        self.worker.replace(|old| {
            let port = old.map_or_else(|| Box::new(Disconnected) as Box<dyn EthPort>, |st| st.port);
            shared.bar2.clear();
            shared.counters.clear();
            shared.power_on();
            worker::DeviceState::new(&shared, port)
        });
        self.latch = (u64::MAX, 0);
    }

    fn counters(&self) -> Arc<Counters> {
        self.shared.pcie.clone()
    }
}
