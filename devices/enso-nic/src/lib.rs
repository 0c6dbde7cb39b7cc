//! The Ensō NIC device model.
//!
//! Follows the upstream Ensō hardware/software interface (shared/design/ENSO-INTERFACE.md)
//! with the card's register semantics by default, and our extensions in BAR0
//! (`testbed_regs::enso`), off until a driver opts in ([`ext::EXT_ENABLE`]).
//!
//! Two register modes ([`RegisterMode`]):
//! - **shared** (default): BAR2 holds one shared-memory 4 KiB page per pipe and per
//!   notification-buffer pair, offered for mmap; a device thread polls the live queues'
//!   pages and a bounded background scan finds queues that became live (within 10 ms).
//! - **mmio**: BAR2 traps. Every access goes, in order, through a mailbox to the device
//!   thread, which applies each write as the card does (a same-value `rx_head` write is a
//!   prefetch) and answers each read after every earlier write took effect.
//!
//! Layout of the crate, one concern per module:
//! - [`engine`]: the [`engine::QueueEngine`] seam (pipes, notification buffers, reactive
//!   notifications, TX fetch/split/complete) and its behavioural Rust implementation;
//! - [`flow`]: flow table and fallback steering; [`packet`]: header parsing;
//! - [`mac`]: device clock, timestamps, rate limiter; [`stats`]: the NIC counters;
//! - `worker`: the device thread (register decode, polling, the mailbox).
//!
//! Choices where the interface leaves room (keep docs/enso-emulation.md in step):
//! - A queue is live while its address is non-zero (a pipe: `rx_mem_high:rx_mem_low`,
//!   the pair ID bits included, as the card compares it; a pair: its RX or its TX ring
//!   address). The device re-reads a live queue's address registers every polling round
//!   (shared) or as each half is written (mmio), so it follows any write order; between
//!   the two halves it uses the half-written address, as the card would, and a DMA
//!   outside mapped memory is refused and counted. A ring address of 0 is "not set": no
//!   notification is written to it (DMA_ERRORS) and no TX entry is fetched from it (the
//!   tail waits until the address is set).
//! - Software writes of registers the device owns (`rx_tail`, `tx_head`) are taken as the
//!   device's new value, as on the card, and counted (DEVICE_REGISTER_WRITES). In shared
//!   mode the device publishes its own values with a compare-and-swap against the value
//!   it published last, so a software write is never overwritten unseen.
//! - An RX notification is two DMA writes, body (queue ID, tail) then the signal word, so
//!   software never sees a valid signal with stale fields (2 TLPs, 64 metadata bytes).
//! - A notification dropped because the ring is full (or its pair is not live: counted
//!   as DMA_ERRORS) leaves the pipe's outstanding bit clear, so the next packet or head
//!   write retries instead of wedging the pipe (upstream's FIXME).
//! - Non-IPv4 frames skip the flow table and go to the fallback queues.
//! - TX: at most `engine::behavioral::TX_BATCH` notifications per pair per round, so
//!   `tx_head` may advance in steps; ARP frames are sent as 60 bytes when the transfer
//!   holds the padding, else 42.
//! - Refused register values are counted as BAD_REGISTER_WRITES: a pipe naming a pair
//!   beyond NUM_NB_PAIRS (the pipe stays off, no state bit), a prefetch for a pipe that
//!   is not live, NOTIF_MODE ∉ {0, 1}, COUNTERS_CLEAR > 1, an unknown EXT_ENABLE bit, any
//!   other page-0 write, a queue-page write outside the card's registers.
//!   Flow entries naming a pipe beyond NUM_PIPES and fallback counts above it are BAD_CONFIG.
//! - BAR0 is 64-bit and prefetchable, as on the card: no read has a side effect (64-bit
//!   counters are read as two halves; software re-reads the high half to detect a carry).
//! - Every access to BAR0 that reaches the device is counted (EXTENSION_ACCESSES): card
//!   software never touches BAR0.
//! - [`EnsoNic::counters`] is the NIC's own counter array; the PCIe accounting is
//!   [`PciDevice::counters`] (call it as `PciDevice::counters(&nic)`).
//!
//! The wire backend can be swapped between runs with [`EnsoNic::replace_port`] (or taken
//! out with [`EnsoNic::take_port`]); the device thread is stopped and restarted around the
//! swap, and queue state is kept.

pub mod engine;
pub mod flow;
pub mod mac;
mod mailbox;
pub mod packet;
pub mod stats;
pub mod stream;
mod worker;

#[cfg(test)]
mod tests;

use engine::{BehavioralEngine, QueueEngine};
use pcie_model::config::{BarKind, BarSpec, ConfigSpace, ConfigSpaceBuilder};
use pcie_model::device_thread::{DeviceLoop, Lifecycle};
use pcie_model::regs::dword;
use pcie_model::{BarBacking, Counters, PciDevice, ShmRegion};
use stats::NicCounters;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use testbed_regs::enso::ext::extension;
use testbed_regs::enso::{self as regs, ext, MAX_NB_PAIRS, MAX_PIPES, NOTIF_RING_ENTRIES, PIPE_FLITS};
use wire::EthPort;
pub use worker::Disconnected;

/// Number of NIC counters (indices of `regs::enso::ext::counter`).
pub const COUNT: usize = stats::N;

/// How the queue registers (BAR2) reach the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegisterMode {
    /// Shared memory the device polls (offered for mmap): fast, but the device sees values,
    /// not writes (a same-value write is invisible).
    #[default]
    Shared,
    /// Trapped: every access reaches the device as an event, in order, as on the card.
    Mmio,
}

impl RegisterMode {
    /// "shared" or "mmio".
    pub fn name(self) -> &'static str {
        match self {
            RegisterMode::Shared => "shared",
            RegisterMode::Mmio => "mmio",
        }
    }
}

/// Device configuration (set over JTAG on the real card; read-only in BAR0 page 0 here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnsoConfig {
    /// Pipes served (1..=8192; the card's 8192 by default).
    pub num_pipes: u32,
    /// Notification-buffer pairs served (1..=1024; the card's 1024 by default).
    pub num_nb_pairs: u32,
    /// Pipe ring size in flits (2..=32768; one 2 MiB page at most).
    pub pipe_flits: u32,
    /// Entries per notification ring (2..=16384; one ring fits 1 MiB).
    pub notif_entries: u32,
    /// How the queue registers reach the device.
    pub registers: RegisterMode,
    /// Offer the extension pages (BAR0 pages 1–3: prefetch doorbells, queue state) for
    /// mmap in shared register mode, for a driver that will opt into them. Off (and always
    /// in mmio mode) they trap, so every access to them is seen and counted. Whether they
    /// are mapped is fixed when a client connects (that is when it asks); whether they
    /// mean anything is the driver's opt-in ([`ext::EXT_ENABLE`]).
    pub map_extension_pages: bool,
}

impl Default for EnsoConfig {
    fn default() -> Self {
        EnsoConfig {
            num_pipes: MAX_PIPES,
            num_nb_pairs: MAX_NB_PAIRS,
            pipe_flits: PIPE_FLITS,
            notif_entries: NOTIF_RING_ENTRIES,
            registers: RegisterMode::Shared,
            map_extension_pages: true,
        }
    }
}

impl EnsoConfig {
    fn check(&self) -> std::io::Result<()> {
        let bad = |what: &str| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()));
        if !(1..=MAX_PIPES).contains(&self.num_pipes) {
            return bad("num_pipes must be 1..=8192");
        }
        if !(1..=MAX_NB_PAIRS).contains(&self.num_nb_pairs) {
            return bad("num_nb_pairs must be 1..=1024");
        }
        if !(2..=PIPE_FLITS).contains(&self.pipe_flits) {
            return bad("pipe_flits must be 2..=32768");
        }
        if !(2..=NOTIF_RING_ENTRIES).contains(&self.notif_entries) {
            return bad("notif_entries must be 2..=16384");
        }
        Ok(())
    }
}

/// State shared by the trapped-register side and the device thread (atomics only).
pub(crate) struct Shared {
    pub cfg: EnsoConfig,
    pub bar0: Arc<ShmRegion>,
    pub bar2: Arc<ShmRegion>,
    pub counters: NicCounters,
    pub pcie: Arc<Counters>,
    pub notif_mode: AtomicU32,
    pub clock: mac::Clock,
    pub stream: Arc<stream::StreamRegs>,
    /// The extensions in force (`ext::EXT_ENABLE`).
    pub ext_mask: AtomicU32,
    /// Register mode mmio: accesses on their way to the device thread, in order.
    pub mailbox: mailbox::Mailbox,
}

/// The Ensō NIC.
pub struct EnsoNic {
    config: ConfigSpace,
    shared: Arc<Shared>,
    /// Makes the queue engine (a fresh one at power-on and every reset).
    engines: EngineFactory,
    /// The device thread and its state.
    worker: DeviceLoop<worker::DeviceState>,
}

/// Makes a queue engine for a configuration: the behavioural one, or another behind the
/// same seam (the RTL's, co-simulated).
pub type EngineFactory = Arc<dyn Fn(&EnsoConfig) -> Box<dyn QueueEngine> + Send + Sync>;

/// BAR0 shared-memory size (pages 0–3; page 0 is trapped, the others mmap'd).
const BAR0_SHM: usize = regs::EXT_SHARED_END as usize;

impl EnsoNic {
    /// A NIC in its power-on state, its Ethernet port connected to `port`.
    pub fn new(cfg: EnsoConfig, port: Box<dyn EthPort>) -> std::io::Result<EnsoNic> {
        Self::with_engines(cfg, port, Arc::new(Self::behavioral))
    }

    /// As [`EnsoNic::new`], with queue engines from `engines` (e.g. the RTL's, co-simulated);
    /// they must serve `cfg`'s pipes, pairs and ring sizes.
    pub fn with_engines(
        cfg: EnsoConfig,
        port: Box<dyn EthPort>,
        engines: EngineFactory,
    ) -> std::io::Result<EnsoNic> {
        cfg.check()?;
        let config = ConfigSpaceBuilder::new(regs::VENDOR_ID, regs::DEVICE_ID)
            .class(regs::CLASS_CODE)
            .bar(BarSpec {
                index: regs::EXT_BAR,
                size: regs::EXT_BAR_SIZE,
                kind: BarKind::Mem64,
                prefetchable: true,
            })
            .bar(BarSpec {
                index: regs::QUEUE_BAR,
                size: regs::QUEUE_BAR_SIZE,
                kind: BarKind::Mem64,
                prefetchable: true,
            })
            .build()?;
        let bar2_len = regs::nb_page(cfg.num_nb_pairs) as usize;
        let shared = Arc::new(Shared {
            cfg,
            bar0: Arc::new(ShmRegion::new("enso-bar0", BAR0_SHM)?),
            bar2: Arc::new(ShmRegion::new("enso-bar2", bar2_len)?),
            counters: NicCounters::default(),
            pcie: Arc::new(Counters::default()),
            notif_mode: AtomicU32::new(ext::MODE_REACTIVE),
            clock: mac::Clock::default(),
            stream: Arc::default(),
            ext_mask: AtomicU32::new(0),
            mailbox: mailbox::Mailbox::default(),
        });
        let state = worker::DeviceState::new(&shared, engines(&cfg), port);
        // Should the model ever panic anyway, it comes back unplugged rather than taking
        // the process down.
        let (sh, en) = (shared.clone(), engines.clone());
        let sh2 = shared.clone();
        let worker = DeviceLoop::new(
            "enso-nic",
            state,
            move || Self::unplugged(&sh, &en),
            // Rounds until stopped, backing off when idle; the state stays across
            // detach/attach.
            move |mut st, ctx, stop| {
                pcie_model::poll::poll_until(&stop, || st.round(&sh2, &ctx.dma, &stop));
                st
            },
        );
        Ok(EnsoNic { config, shared, engines, worker })
    }

    /// The behavioural queue engine for `cfg`.
    pub fn behavioral(cfg: &EnsoConfig) -> Box<dyn QueueEngine> {
        Box::new(BehavioralEngine::new(cfg.num_pipes, cfg.num_nb_pairs, cfg.pipe_flits, cfg.notif_entries))
    }

    /// The device configuration.
    pub fn enso_config(&self) -> EnsoConfig {
        self.shared.cfg
    }

    /// A snapshot of the NIC counters, by index of `regs::enso::ext::counter`.
    pub fn counters(&self) -> [u64; COUNT] {
        self.shared.counters.snapshot()
    }

    /// One NIC counter (0 for an unknown index).
    pub fn counter(&self, idx: u32) -> u64 {
        self.shared.counters.get(idx)
    }

    /// A switch's handle on the TX stream window.
    pub fn tx_stream_port(&self) -> stream::TxStreamPort {
        stream::TxStreamPort { regs: self.shared.stream.clone() }
    }

    /// A switch's handle on the pipes' head registers (credits for stream pipes).
    pub fn credit_port(&self) -> stream::CreditPort {
        stream::CreditPort { shared: self.shared.clone() }
    }

    /// The extensions in force (what `ext::EXT_ENABLE` reads).
    pub fn extensions(&self) -> u32 {
        self.shared.ext_mask.load(Ordering::Acquire)
    }

    /// Device time in 5 ns ticks (what TIMESTAMP_LO/HI read).
    pub fn ticks(&self) -> u64 {
        self.shared.clock.ticks()
    }

    /// Connects the Ethernet port to `port` and returns the previous backend. The device
    /// thread (if running) is stopped around the swap; queues, flow table and counters
    /// are kept. Frames queued in the old port stay there.
    pub fn replace_port(&mut self, port: Box<dyn EthPort>) -> Box<dyn EthPort> {
        self.worker.with_state(|st| std::mem::replace(&mut st.port, port))
    }

    /// Takes the port out, leaving the NIC unplugged ([`Disconnected`]: nothing received,
    /// every transmitted frame counted as TX_DROP_WIRE).
    pub fn take_port(&mut self) -> Box<dyn EthPort> {
        self.replace_port(Box::new(Disconnected))
    }

    /// Power-on datapath state with the port unplugged.
    fn unplugged(shared: &Shared, engines: &EngineFactory) -> worker::DeviceState {
        worker::DeviceState::new(shared, engines(&shared.cfg), Box::new(Disconnected))
    }

    /// Returns the registers, counters, stream and mailbox state to power-on (a hole
    /// punch zeroes the shared pages and keeps the sparse BAR2 file sparse).
    fn power_on(shared: &Shared) {
        shared.bar0.clear();
        let bar2 = &shared.bar2;
        // SAFETY: fallocate on our own memfd; the result is checked and the mapping stays
        // valid (punched ranges read back as zeros).
        let punched = unsafe {
            libc::fallocate(
                bar2.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                bar2.len() as libc::off_t,
            )
        } == 0;
        if !punched {
            bar2.clear();
        }
        shared.counters.clear();
        shared.notif_mode.store(ext::MODE_REACTIVE, Ordering::Relaxed);
        for slot in &shared.stream.rx_slots {
            slot.store(0, Ordering::Release);
        }
        shared.stream.rx_gen.fetch_add(1, Ordering::AcqRel);
        *shared.stream.tx() = stream::TxStream::default();
        shared.ext_mask.store(0, Ordering::Release);
        shared.mailbox.clear();
    }

    fn bad_write(&self) {
        self.shared.counters.add(ext::counter::BAD_REGISTER_WRITES, 1);
        self.shared.pcie.bad_register_write();
    }

    /// BAR0 page 0 register `off` (4-byte aligned). No read has a side effect (BAR0 is
    /// prefetchable, as on the card).
    fn ext_read32(&self, off: u64) -> u32 {
        let s = &self.shared;
        let c = &s.cfg;
        let ident = s.ext_mask.load(Ordering::Acquire) & extension::IDENTITY != 0;
        let id = |v: u32| if ident { v } else { 0 };
        match off {
            ext::ID => id(ext::ID_VALUE),
            ext::VERSION => id(ext::VERSION_VALUE),
            ext::NUM_PIPES => id(c.num_pipes),
            ext::NUM_NB_PAIRS => id(c.num_nb_pairs),
            ext::PIPE_FLITS => id(c.pipe_flits),
            ext::NOTIF_ENTRIES => id(c.notif_entries),
            ext::NOTIF_MODE => s.notif_mode.load(Ordering::Relaxed),
            ext::ERROR_STATUS => {
                s.counters.error_status(stats::FIRST_ERROR) & ((2u32 << ext::counter::LAST_ERROR) - 1)
            }
            ext::EXT_CAPS => extension::ALL,
            ext::EXT_ENABLE => s.ext_mask.load(Ordering::Acquire),
            ext::REGISTER_MODE => match c.registers {
                RegisterMode::Shared => ext::REGISTERS_SHARED,
                RegisterMode::Mmio => ext::REGISTERS_MMIO,
            },
            ext::TIMESTAMP_LO => s.clock.ticks() as u32,
            ext::TIMESTAMP_HI => (s.clock.ticks() >> 32) as u32,
            o if (ext::STREAM_RX_PIPE..ext::STREAM_RX_PIPE + 4 * ext::STREAM_RX_SLOTS as u64)
                .contains(&o) =>
            {
                s.stream.rx_slots[((o - ext::STREAM_RX_PIPE) / 4) as usize].load(Ordering::Acquire)
            }
            ext::STREAM_TX_CTRL => s.stream.tx().enabled as u32,
            ext::STREAM_TX_OFFSET => s.stream.tx().records.offset() as u32,
            o if (ext::STREAM_TX_TEMPLATE..ext::STREAM_TX_TEMPLATE + 44).contains(&o) => {
                let i = (o - ext::STREAM_TX_TEMPLATE) as usize;
                u32::from_le_bytes(s.stream.tx().template[i..i + 4].try_into().unwrap_or_default())
            }
            o if (ext::COUNTERS..ext::COUNTERS + 8 * COUNT as u64).contains(&o) => {
                s.counters.reg_word(o - ext::COUNTERS)
            }
            _ => 0,
        }
    }

    fn ext_write32(&mut self, off: u64, v: u32) -> bool {
        match off {
            ext::NOTIF_MODE if v == ext::MODE_REACTIVE || v == ext::MODE_PER_PACKET => {
                self.shared.notif_mode.store(v, Ordering::Relaxed);
                true
            }
            o if (ext::STREAM_RX_PIPE..ext::STREAM_RX_PIPE + 4 * ext::STREAM_RX_SLOTS as u64)
                .contains(&o) =>
            {
                let pipe = v & !ext::STREAM_ENABLE;
                if v & ext::STREAM_ENABLE != 0 && pipe >= self.shared.cfg.num_pipes {
                    return false;
                }
                let st = &self.shared.stream;
                st.rx_slots[((o - ext::STREAM_RX_PIPE) / 4) as usize].store(v, Ordering::Release);
                st.rx_gen.fetch_add(1, Ordering::AcqRel);
                true
            }
            ext::STREAM_TX_CTRL if v <= 1 => {
                let mut t = self.shared.stream.tx();
                let template = t.template;
                *t = stream::TxStream { enabled: v == 1, template, ..Default::default() };
                true
            }
            o if (ext::STREAM_TX_TEMPLATE..ext::STREAM_TX_TEMPLATE + 44).contains(&o) => {
                let i = (o - ext::STREAM_TX_TEMPLATE) as usize;
                self.shared.stream.tx().template[i..i + 4].copy_from_slice(&v.to_le_bytes());
                true
            }
            ext::COUNTERS_CLEAR if v <= 1 => {
                if v == 1 {
                    self.shared.counters.clear();
                }
                true
            }
            ext::EXT_ENABLE if v & !extension::ALL == 0 => {
                match self.shared.cfg.registers {
                    // In order with the queue-page writes around it.
                    RegisterMode::Mmio => self.shared.mailbox.post_write(regs::EXT_BAR, off, v),
                    RegisterMode::Shared => self.shared.ext_mask.store(v, Ordering::Release),
                }
                true
            }
            _ => false,
        }
    }

    /// Whether the device thread is running (it answers the mailbox).
    fn serving(&self) -> bool {
        self.worker.is_running()
    }

    /// Register mode mmio: a trapped access to a queue page (or an extension page),
    /// applied by the device thread in order. A read returns once every earlier write took
    /// effect; without a running device thread it reads the register file as it stands.
    fn mailbox_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        let shared = &self.shared;
        let serving = self.serving();
        pcie_model::regs::read_words(offset, data, |w| {
            if serving {
                match shared.mailbox.read(index, w) {
                    Some(v) => v,
                    None => {
                        // The device thread did not answer in time (it was stopped): read
                        // the register file as it stands.
                        worker::register_file_read(shared, index, w)
                    }
                }
            } else {
                worker::register_file_read(shared, index, w)
            }
        });
    }

    /// Splits a trapped write into aligned 32-bit words; false when it is not whole words.
    fn words(offset: u64, data: &[u8]) -> Option<Vec<(u64, u32)>> {
        if !offset.is_multiple_of(4) || !data.len().is_multiple_of(4) || data.is_empty() {
            return None;
        }
        Some(
            data.chunks_exact(4)
                .enumerate()
                .map(|(i, w)| (offset + 4 * i as u64, u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect(),
        )
    }

    fn shared_area(&self, index: u8, offset: u64, len: usize) -> Option<&ShmRegion> {
        let end = offset.checked_add(len as u64)?;
        let BarBacking::Shared { areas, .. } = self.bar_backing(index) else {
            return None;
        };
        let inside = areas.iter().any(|&(a, l)| offset >= a && end <= a + l);
        match index {
            regs::EXT_BAR if inside => Some(&self.shared.bar0),
            regs::QUEUE_BAR if inside => Some(&self.shared.bar2),
            _ => None,
        }
    }

    /// Whether `offset..+len` of BAR0 lies in the extension pages (prefetch, state).
    fn in_ext_pages(offset: u64, len: usize) -> bool {
        offset >= regs::EXT_SHARED_START && offset + len as u64 <= regs::EXT_SHARED_END
    }

    fn count_extension_access(&self) {
        self.shared.counters.add(ext::counter::EXTENSION_ACCESSES, 1);
    }
}

impl PciDevice for EnsoNic {
    fn name(&self) -> &str {
        "enso-nic"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_backing(&self, index: u8) -> BarBacking {
        let c = &self.shared.cfg;
        let shared = c.registers == RegisterMode::Shared;
        match index {
            regs::EXT_BAR if shared && c.map_extension_pages => BarBacking::Shared {
                shm: self.shared.bar0.clone(),
                areas: vec![(regs::EXT_SHARED_START, regs::EXT_SHARED_END - regs::EXT_SHARED_START)],
            },
            regs::QUEUE_BAR if shared => BarBacking::Shared {
                shm: self.shared.bar2.clone(),
                areas: vec![
                    (regs::pipe_page(0), c.num_pipes as u64 * regs::QUEUE_PAGE),
                    (regs::nb_page(0), c.num_nb_pairs as u64 * regs::QUEUE_PAGE),
                ],
            },
            _ => BarBacking::Trapped,
        }
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if index == regs::EXT_BAR {
            self.count_extension_access();
        }
        if let Some(shm) = self.shared_area(index, offset, data.len()) {
            shm.read_bytes(offset, data);
            return;
        }
        let mmio = self.shared.cfg.registers == RegisterMode::Mmio;
        match index {
            regs::QUEUE_BAR if mmio => self.mailbox_read(index, offset, data),
            regs::EXT_BAR if Self::in_ext_pages(offset, data.len()) => {
                if mmio {
                    self.mailbox_read(index, offset, data);
                } else {
                    self.shared.bar0.read_bytes(offset, data);
                }
            }
            regs::EXT_BAR if offset < regs::EXT_SHARED_START && data.len() <= 8 => {
                if mmio && self.serving() {
                    // Reads do not pass the writes before them (EXT_ENABLE is applied in
                    // order by the device thread).
                    self.shared.mailbox.drain();
                }
                pcie_model::regs::read_words(offset, data, |w| self.ext_read32(w));
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index == regs::EXT_BAR {
            self.count_extension_access();
        }
        if let Some(shm) = self.shared_area(index, offset, data.len()) {
            shm.write_bytes(offset, data);
            return;
        }
        let mmio = self.shared.cfg.registers == RegisterMode::Mmio;
        if index == regs::QUEUE_BAR && mmio
            || index == regs::EXT_BAR && Self::in_ext_pages(offset, data.len())
        {
            let Some(words) = Self::words(offset, data) else {
                self.bad_write();
                return;
            };
            for (off, v) in words {
                if mmio {
                    self.shared.mailbox.post_write(index, off, v);
                } else {
                    // A trapped extension page in shared mode: the device polls it.
                    self.shared.bar0.write32(off, v);
                }
            }
            return;
        }
        let tx_window = ext::STREAM_TX_WINDOW..ext::STREAM_TX_WINDOW + ext::STREAM_TX_WINDOW_SIZE;
        if index == regs::EXT_BAR && tx_window.contains(&offset) {
            // The TX stream window (a refused write is counted as TX_DROP_STREAM).
            self.shared.stream.push_tx(offset - ext::STREAM_TX_WINDOW, data);
            return;
        }
        let ok = index == regs::EXT_BAR && dword(offset, data).is_some_and(|v| self.ext_write32(offset, v));
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
        let engines = self.engines.clone();
        self.worker.replace(|old| {
            let port = old.map_or_else(|| Box::new(Disconnected) as Box<dyn EthPort>, |st| st.port);
            Self::power_on(&shared);
            worker::DeviceState::new(&shared, engines(&shared.cfg), port)
        });
    }

    fn counters(&self) -> Arc<Counters> {
        self.shared.pcie.clone()
    }
}
