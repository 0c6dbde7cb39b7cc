//! [`Device`]: one notification-buffer pair, the RX notification consumer, the TX request
//! producer with in-order completion tracking, and the configuration calls.

use crate::dma::alloc_aligned;
use crate::pipe::{PipeContext, PipeIds, RxPipe, RxShared, RxTxPipe, TxPipe, TxShared};
use crate::regs::{state_is_set, wait_state, Doorbells, RegWindow};
use crate::ring::{fallback_mask, Ring};
use crate::{Error, Result};
use device_access::{Bar, DeviceAccess, DmaBuffer, DmaOptions};
use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::enso::ext::extension;
use testbed_regs::enso::{
    self as regs, config, ext, nb_page, notif, prefetch, queue, state, EXT_BAR, FLIT, MAX_NB_PAIRS,
    MAX_PIPES, NOTIFICATION_SIZE, NOTIF_RING_BYTES, NOTIF_RING_ENTRIES, PIPE_FLITS, QUEUE_BAR,
};

/// RX notifications consumed per scan of the ring (one `rx_head` write per scan).
const RX_NOTIF_BATCH: usize = 64;

/// Which of the emulator's extensions the driver uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Extensions {
    /// Every extension (the ENABLE bit, prefetch doorbells, queue-state acknowledgements,
    /// identity and sizes), opted into by writing BAR0 `EXT_ENABLE`: the emulator only.
    #[default]
    All,
    /// Card mode: only what the FPGA has. BAR0 is never touched; ring sizes and counts are
    /// upstream's constants; queues are enabled by their address, reset by writing 0 and
    /// reading back, and prefetched by rewriting the unchanged `rx_head`.
    None,
}

impl Extensions {
    /// "all" or "none".
    pub fn name(self) -> &'static str {
        match self {
            Extensions::All => "all",
            Extensions::None => "none",
        }
    }

    /// Parses "all" or "none".
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Extensions::All),
            "none" => Some(Extensions::None),
            _ => None,
        }
    }
}

/// How a [`Device`] is set up.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The notification-buffer pair this device handle owns.
    pub nb_id: u32,
    /// How long to wait for the device to acknowledge a queue enable/disable or to complete
    /// a configuration notification.
    pub ack_timeout: Duration,
    /// Let doorbells fall back to trapped MMIO when the transport does not memory-map the
    /// queue pages (the emulator's mmio register mode, or a debugging transport; slow).
    /// Off by default: then a missing mapping is an error.
    pub allow_trapped_datapath: bool,
    /// The emulator's extensions the driver uses (all by default; none on the card).
    pub extensions: Extensions,
}

impl DeviceOptions {
    /// Defaults for pair `nb_id`.
    pub fn new(nb_id: u32) -> Self {
        DeviceOptions {
            nb_id,
            ack_timeout: Duration::from_secs(2),
            allow_trapped_datapath: false,
            extensions: Extensions::All,
        }
    }
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self::new(0)
    }
}

/// What the device reported at setup (in card mode: upstream's constants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Register contract version.
    pub version: u32,
    /// Pipes the device serves.
    pub num_pipes: u32,
    /// Notification-buffer pairs the device serves.
    pub num_nb_pairs: u32,
    /// Pipe ring size in flits.
    pub pipe_flits: u32,
    /// Entries per notification ring.
    pub notif_entries: u32,
}

impl DeviceInfo {
    /// The card's geometry, from upstream's constants (card mode reads nothing from BAR0):
    /// 8192 pipes of 32768 flits, 1024 pairs of 16384-entry rings. Version 0: no contract.
    pub fn card() -> Self {
        DeviceInfo {
            version: 0,
            num_pipes: MAX_PIPES,
            num_nb_pairs: MAX_NB_PAIRS,
            pipe_flits: PIPE_FLITS,
            notif_entries: NOTIF_RING_ENTRIES,
        }
    }
}

/// Driver-side counts (no device access needed to read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// RX notifications consumed.
    pub rx_notifications: u64,
    /// RX notifications for pipes this handle does not know (or already dropped).
    pub stray_notifications: u64,
    /// Writes of the pair's `rx_head`.
    pub rx_head_writes: u64,
    /// TX notifications posted (data requests and configuration).
    pub tx_requests: u64,
    /// Writes of the pair's `tx_tail`.
    pub tx_tail_writes: u64,
    /// TX notifications the device completed.
    pub tx_completions: u64,
    /// Pipe `rx_head` writes done on TX completion (RX/TX pipes).
    pub rx_frees_on_completion: u64,
    /// Pipe `rx_head` writes that freed RX space: on TX completion (the above),
    /// `confirm_bytes`, `clear` and `skip` (set-up writes excluded).
    pub pipe_head_writes: u64,
    /// Prefetch doorbells rung (`prefetch`), two register writes each: the pipe ID, then
    /// a new sequence number.
    pub prefetches: u64,
    /// The datapath's doorbell register writes that went to memory-mapped pages the device
    /// polls: the pair's `rx_head` and `tx_tail`, pipe `rx_head`s and both prefetch
    /// registers. A polled page is plain memory, so the device sees only the latest value
    /// and cannot count these: this is the figure a driver reports for the PCIe accounting
    /// (one 4-byte posted write each). Writes that fell back to trapped MMIO
    /// ([`DeviceOptions::allow_trapped_datapath`]) are not in it: the device counts those
    /// itself.
    pub polled_doorbell_writes: u64,
}

/// Notification mode (BAR0 `NOTIF_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationMode {
    /// One outstanding notification per pipe (upstream's rule, the default).
    Reactive,
    /// One notification per packet.
    PerPacket,
}

/// The device's counters (BAR0 page 0), by index and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: [u64; ext::counter::COUNT as usize],
}

impl Counters {
    /// The counter called `name` (see `testbed_regs::enso::ext::counter::NAMES`).
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = ext::counter::NAMES.iter().position(|n| *n == name)?;
        Some(self.values[i])
    }

    /// The counter called `name`, or an error naming it.
    pub fn by_name(&self, name: &str) -> Result<u64> {
        self.get(name).ok_or_else(|| Error::UnknownCounter(name.into()))
    }

    /// The counter with index `index` (`ext::counter::*`).
    pub fn by_index(&self, index: u32) -> Option<u64> {
        self.values.get(index as usize).copied()
    }

    /// (name, value) for every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ext::counter::NAMES.iter().copied().zip(self.values.iter().copied())
    }
}

/// What to do when a TX notification completes.
pub(crate) enum Completion {
    /// Nothing (configuration, or a non-final chunk).
    None,
    /// Free `flits` of an RX/TX pipe's ring (write its `rx_head`).
    Rx(Arc<RxShared>, u32),
    /// Return `bytes` to a TX pipe's buffer.
    Tx(Arc<TxShared>, u64),
}

/// A flow the device steers by: ports and IPv4 addresses in host byte order, and the IP
/// protocol number. Named fields, so no two of them can be swapped unnoticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub dst_port: u16,
    pub src_port: u16,
    pub dst_ip: u32,
    pub src_ip: u32,
    pub protocol: u32,
}

/// One notification-buffer pair and everything that goes through it.
pub struct Device {
    // Field order matters on drop: rings and pipes go before the access handle.
    nb_buf: DmaBuffer,
    nb_regs: RegWindow,
    /// BAR0: None in card mode, which never touches it.
    ext: Option<Bar>,
    queues: Bar,
    opts: DeviceOptions,
    info: DeviceInfo,
    notif_ring: Ring,
    /// Next RX notification to look at.
    rx_notif_head: u32,
    /// Next free TX notification slot.
    tx_tail: u32,
    /// Oldest TX notification not yet seen completed.
    tx_done: u32,
    /// Per TX slot: what its completion means.
    completions: Vec<Completion>,
    /// Pipes of this pair by ID, to deliver new tails.
    rx_pipes: Vec<Option<Arc<RxShared>>>,
    /// Pipe IDs with data announced and not yet handed out by `next_rx_pipe_to_recv`.
    pending: VecDeque<u32>,
    pending_flag: Vec<bool>,
    ids: Arc<Mutex<PipeIds>>,
    fallback: (u32, bool),
    stats: DeviceStats,
    /// Doorbells the pipes write without `self` (heads, prefetches).
    doorbells: Arc<Doorbells>,
    access: Box<dyn DeviceAccess>,
}

impl Device {
    /// Opens notification-buffer pair `nb_id` with default options.
    pub fn new(access: Box<dyn DeviceAccess>, nb_id: u32) -> Result<Self> {
        Self::with_options(access, DeviceOptions::new(nb_id))
    }

    /// Checks the device, allocates and enables the notification-buffer pair.
    pub fn with_options(mut access: Box<dyn DeviceAccess>, opts: DeviceOptions) -> Result<Self> {
        let queues = access.bar(QUEUE_BAR)?;
        let (ext, info) = match opts.extensions {
            Extensions::All => {
                let ext = access.bar(EXT_BAR)?;
                // Opt in first: until then the emulator reads every register as the card
                // does (and its identity registers read 0).
                ext.write32(ext::EXT_ENABLE, extension::ALL)?;
                let id = ext.read32(ext::ID)?;
                if id != ext::ID_VALUE {
                    return Err(Error::NotEnso { found: id, expected: ext::ID_VALUE });
                }
                let version = ext.read32(ext::VERSION)?;
                if version != ext::VERSION_VALUE {
                    return Err(Error::VersionMismatch { found: version, expected: ext::VERSION_VALUE });
                }
                let info = DeviceInfo {
                    version,
                    num_pipes: ext.read32(ext::NUM_PIPES)?,
                    num_nb_pairs: ext.read32(ext::NUM_NB_PAIRS)?,
                    pipe_flits: ext.read32(ext::PIPE_FLITS)?,
                    notif_entries: ext.read32(ext::NOTIF_ENTRIES)?,
                };
                (Some(ext), info)
            }
            Extensions::None => (None, DeviceInfo::card()),
        };
        check_geometry(&info)?;
        if opts.nb_id >= info.num_nb_pairs {
            return Err(Error::BadNbId { nb_id: opts.nb_id, available: info.num_nb_pairs });
        }
        let notif_ring = Ring::new(info.notif_entries).expect("checked by check_geometry");

        // Both rings in one 2 MiB region: RX ring at 0, TX ring 1 MiB above.
        let nb_buf = alloc_aligned(
            access.as_mut(),
            2 * NOTIF_RING_BYTES,
            DmaOptions { huge: true, mirrored: false, iova_align: 0 },
        )?;
        nb_buf.fill(0);
        let nb_regs = RegWindow::queue(&queues, nb_page(opts.nb_id), opts.allow_trapped_datapath)?;
        let rx_addr = nb_buf.iova();
        let tx_addr = rx_addr + NOTIF_RING_BYTES as u64;
        const PAIR: &str = "notification-buffer pair";
        let tx_start = match &ext {
            Some(ext) => {
                let bit = state::nb_bit(opts.nb_id);
                if state_is_set(ext, bit)? {
                    // Left enabled by an earlier user: quiesce it before reprogramming.
                    nb_regs.disable_queue();
                    wait_state(ext, bit, false, opts.ack_timeout, PAIR, opts.nb_id)?;
                }
                for r in [queue::RX_HEAD, queue::RX_TAIL, queue::TX_TAIL, queue::TX_HEAD] {
                    nb_regs.write(r, 0);
                }
                nb_regs.write(queue::TX_MEM_LOW, tx_addr as u32);
                nb_regs.write(queue::TX_MEM_HIGH, (tx_addr >> 32) as u32);
                nb_regs.enable_queue(rx_addr, 0);
                wait_state(ext, bit, true, opts.ack_timeout, PAIR, opts.nb_id)?;
                0
            }
            None => {
                // Upstream's order: stop the pair and zero its RX pointers (read back),
                // keep the TX tail and make the head equal to it (so nothing is fetched),
                // then the RX ring's address (the pair is live from here), then the TX
                // ring's.
                nb_regs.card_reset(opts.ack_timeout, PAIR, opts.nb_id)?;
                let t = nb_regs.read(queue::TX_TAIL) % info.notif_entries;
                nb_regs.write(queue::TX_HEAD, t);
                nb_regs.card_enable(rx_addr, 0);
                nb_regs.write(queue::TX_MEM_LOW, tx_addr as u32);
                nb_regs.write(queue::TX_MEM_HIGH, (tx_addr >> 32) as u32);
                t
            }
        };

        let n = info.num_pipes as usize;
        Ok(Device {
            nb_buf,
            nb_regs,
            ext,
            queues,
            notif_ring,
            rx_notif_head: 0,
            tx_tail: tx_start,
            tx_done: tx_start,
            completions: (0..info.notif_entries).map(|_| Completion::None).collect(),
            rx_pipes: vec![None; n],
            pending: VecDeque::with_capacity(RX_NOTIF_BATCH.max(n.min(4096))),
            pending_flag: vec![false; n],
            ids: Arc::new(Mutex::new(PipeIds::new(info.num_pipes))),
            fallback: (0, false),
            stats: DeviceStats::default(),
            doorbells: Arc::default(),
            opts,
            info,
            access,
        })
    }

    /// What the device reported (in card mode: upstream's constants).
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The extensions this handle uses.
    pub fn extensions(&self) -> Extensions {
        self.opts.extensions
    }

    /// BAR0, or the card-mode error naming what needed it.
    fn ext_bar(&self, what: &'static str) -> Result<&Bar> {
        self.ext.as_ref().ok_or(Error::CardMode(what))
    }

    /// The notification-buffer pair this handle owns.
    pub fn nb_id(&self) -> u32 {
        self.opts.nb_id
    }

    /// Driver-side counts.
    pub fn stats(&self) -> DeviceStats {
        let d = &self.doorbells;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        DeviceStats {
            pipe_head_writes: load(&d.pipe_heads),
            prefetches: load(&d.prefetches),
            polled_doorbell_writes: self.stats.polled_doorbell_writes + load(&d.polled),
            ..self.stats
        }
    }

    /// The transport's name ("vfio" or "vfio-user").
    pub fn transport(&self) -> &'static str {
        self.access.transport()
    }

    // ----- pipes ---------------------------------------------------------------------

    /// A new RX pipe with the lowest free ID (fallback queues are pipes 0..n-1, so
    /// allocate those first).
    pub fn alloc_rx_pipe(&mut self) -> Result<RxPipe> {
        let id = self.take_id(None)?;
        self.make_rx(id).map(RxPipe::new)
    }

    /// A new RX pipe with the given ID.
    pub fn alloc_rx_pipe_with_id(&mut self, id: u32) -> Result<RxPipe> {
        let id = self.take_id(Some(id))?;
        self.make_rx(id).map(RxPipe::new)
    }

    /// A new RX/TX pipe (zero-copy echo) with the lowest free ID.
    pub fn alloc_rx_tx_pipe(&mut self) -> Result<RxTxPipe> {
        let id = self.take_id(None)?;
        self.make_rx(id).map(RxTxPipe::new)
    }

    /// A new RX/TX pipe with the given ID.
    pub fn alloc_rx_tx_pipe_with_id(&mut self, id: u32) -> Result<RxTxPipe> {
        let id = self.take_id(Some(id))?;
        self.make_rx(id).map(RxTxPipe::new)
    }

    /// A new TX pipe (a 2 MiB buffer, mapped twice so allocations never wrap).
    pub fn alloc_tx_pipe(&mut self) -> Result<TxPipe> {
        let buf = alloc_aligned(
            self.access.as_mut(),
            TxPipe::BYTES,
            DmaOptions { huge: true, mirrored: true, iova_align: 0 },
        )?;
        if buf.len() != TxPipe::BYTES || !buf.mirrored() {
            return Err(Error::Geometry(format!(
                "TX buffer of {} bytes, mirrored {}",
                buf.len(),
                buf.mirrored()
            )));
        }
        Ok(TxPipe::new(Arc::new(TxShared::new(buf))))
    }

    /// Makes pipe `id` a *stream pipe* writing into `window` (a 2 MiB aligned device
    /// address, e.g. a switch's stream window): the NIC strips the frame headers, writes
    /// the records back to back on flit boundaries and sends no notifications, and the
    /// window's owner returns the head credits (our extension; see
    /// docs/enso-emulation.md). Steer flows to it with [`Device::insert_flow_entry`].
    pub fn enable_stream_pipe(&mut self, id: u32, window: u64) -> Result<StreamPipe> {
        if !window.is_multiple_of(2 << 20) {
            return Err(Error::Geometry(format!("stream window {window:#x} is not 2 MiB aligned")));
        }
        let id = self.take_id(Some(id))?;
        let r = self.enable_stream_inner(id, window);
        if r.is_err() {
            self.ids.lock().unwrap_or_else(|e| e.into_inner()).free(id);
        }
        r
    }

    fn enable_stream_inner(&mut self, id: u32, window: u64) -> Result<StreamPipe> {
        use testbed_regs::enso::ext::{STREAM_ENABLE, STREAM_RX_PIPE, STREAM_RX_SLOTS};
        let ext = self.ext_bar("a stream pipe")?.clone();
        let slots = (0..STREAM_RX_SLOTS).map(|k| STREAM_RX_PIPE + 4 * k as u64);
        let mut free = None;
        for off in slots {
            if ext.read32(off)? & STREAM_ENABLE == 0 {
                free = Some(off);
                break;
            }
        }
        let slot = free.ok_or_else(|| Error::Geometry("every stream RX slot is taken".into()))?;
        ext.write32(slot, id | STREAM_ENABLE)?;
        let regs = RegWindow::queue(&self.queues, regs::pipe_page(id), true)?;
        let bit = state::pipe_bit(id);
        regs.write(queue::RX_HEAD, 0);
        regs.write(queue::RX_TAIL, 0);
        regs.enable_queue(window, self.opts.nb_id & queue::NB_ID_MASK);
        if let Err(e) = wait_state(&ext, bit, true, self.opts.ack_timeout, "pipe", id) {
            regs.disable_queue();
            let _ = ext.write32(slot, 0);
            return Err(e);
        }
        Ok(StreamPipe { id, slot, regs, ext, ids: self.ids.clone() })
    }

    /// Starts the NIC's TX stream window with `template` (Ethernet, IPv4 and UDP headers
    /// of the frames it sends; lengths and checksum are filled in per record).
    pub fn start_tx_stream(&mut self, template: &[u8; 42]) -> Result<()> {
        use testbed_regs::enso::ext::{STREAM_TX_CTRL, STREAM_TX_TEMPLATE};
        let mut t = [0u8; 44];
        t[..42].copy_from_slice(template);
        let ext = self.ext_bar("the TX stream window")?;
        for (i, w) in t.chunks(4).enumerate() {
            ext.write32(STREAM_TX_TEMPLATE + 4 * i as u64, u32::from_le_bytes([w[0], w[1], w[2], w[3]]))?;
        }
        ext.write32(STREAM_TX_CTRL, 1)?;
        Ok(())
    }

    /// Stops the TX stream window.
    pub fn stop_tx_stream(&mut self) -> Result<()> {
        self.ext_bar("the TX stream window")?.write32(testbed_regs::enso::ext::STREAM_TX_CTRL, 0)?;
        Ok(())
    }

    fn take_id(&mut self, want: Option<u32>) -> Result<u32> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        match want {
            Some(id) => ids.take(id).map(|()| id),
            None => ids.take_lowest(),
        }
    }

    fn make_rx(&mut self, id: u32) -> Result<Arc<RxShared>> {
        let r = self.make_rx_inner(id);
        if r.is_err() {
            self.ids.lock().unwrap_or_else(|e| e.into_inner()).free(id);
        }
        r
    }

    fn make_rx_inner(&mut self, id: u32) -> Result<Arc<RxShared>> {
        let ring_bytes = self.info.pipe_flits as usize * FLIT;
        let huge = ring_bytes == 2 << 20;
        let buf = alloc_aligned(
            self.access.as_mut(),
            ring_bytes,
            DmaOptions { huge, mirrored: true, iova_align: 0 },
        )?;
        if buf.len() != ring_bytes || !buf.mirrored() {
            return Err(Error::Geometry(format!(
                "pipe buffer of {} bytes (ring {ring_bytes}), mirrored {}",
                buf.len(),
                buf.mirrored()
            )));
        }
        let regs = RegWindow::queue(&self.queues, regs::pipe_page(id), self.opts.allow_trapped_datapath)?;
        let nb_tag = self.opts.nb_id & queue::NB_ID_MASK;
        let prefetch_slot = match &self.ext {
            Some(ext) => {
                let slot = RegWindow::prefetch_slot(
                    ext,
                    prefetch::slot(self.opts.nb_id),
                    self.opts.allow_trapped_datapath,
                )?;
                let bit = state::pipe_bit(id);
                if state_is_set(ext, bit)? {
                    regs.disable_queue();
                    wait_state(ext, bit, false, self.opts.ack_timeout, "pipe", id)?;
                }
                regs.write(queue::RX_HEAD, 0);
                regs.write(queue::RX_TAIL, 0);
                regs.enable_queue(buf.iova(), nb_tag);
                Some(slot)
            }
            None => {
                // Upstream's order: reset (address, tail, head: each written 0 and read
                // back), then the address, low half (with the pair's ID) first.
                regs.card_reset(self.opts.ack_timeout, "pipe", id)?;
                regs.card_enable(buf.iova(), nb_tag);
                None
            }
        };
        let shared = Arc::new(RxShared::new(
            id,
            Ring::new(self.info.pipe_flits).expect("checked by check_geometry"),
            regs,
            prefetch_slot,
            buf,
            PipeContext {
                ext: self.ext.clone(),
                ids: self.ids.clone(),
                ack_timeout: self.opts.ack_timeout,
                doorbells: self.doorbells.clone(),
            },
        ));
        if let Some(ext) = &self.ext {
            if let Err(e) = wait_state(ext, state::pipe_bit(id), true, self.opts.ack_timeout, "pipe", id) {
                shared.disable();
                return Err(e);
            }
        }
        self.rx_pipes[id as usize] = Some(shared.clone());
        self.pending_flag[id as usize] = false;
        Ok(shared)
    }

    // ----- RX notifications ------------------------------------------------------------

    /// The next pipe with data the device announced, or None. Consumes RX notifications in
    /// batches (one `rx_head` write per batch) and updates each pipe's known tail; also
    /// processes TX completions, which free RX/TX pipe space.
    #[inline]
    pub fn next_rx_pipe_to_recv(&mut self) -> Option<u32> {
        if self.pending.is_empty() {
            self.process_completions();
            self.poll_rx_notifications();
        }
        let id = self.pending.pop_front()?;
        self.pending_flag[id as usize] = false;
        Some(id)
    }

    /// Consumes up to one batch of RX notifications; returns how many.
    pub fn poll_rx_notifications(&mut self) -> usize {
        let base = self.nb_buf.as_ptr();
        let mut head = self.rx_notif_head;
        let mut n = 0;
        while n < RX_NOTIF_BATCH {
            // SAFETY: `head` < notif_entries <= NOTIF_RING_ENTRIES, so the 64-byte entry lies
            // inside the RX ring (the first 1 MiB of `nb_buf`), 8-byte aligned.
            let entry = unsafe { base.add(head as usize * NOTIFICATION_SIZE) }.cast::<u64>();
            // SAFETY: as above; the device writes this word, hence the volatile read.
            let signal = unsafe { std::ptr::read_volatile(entry.add(notif::SIGNAL / 8)) };
            if signal == 0 {
                break;
            }
            fence(Ordering::Acquire);
            // SAFETY: as above; the entry is complete once its signal is set (Acquire).
            let (queue_id, tail) = unsafe {
                let q = std::ptr::read_volatile(entry.add(notif::RX_QUEUE_ID / 8));
                let t = std::ptr::read_volatile(entry.add(notif::RX_TAIL / 8));
                std::ptr::write_volatile(entry.add(notif::SIGNAL / 8), 0);
                (q, t)
            };
            head = self.notif_ring.add(head, 1);
            n += 1;
            self.deliver_tail(queue_id, tail);
        }
        if n > 0 {
            self.rx_notif_head = head;
            self.stats.rx_notifications += n as u64;
            fence(Ordering::Release);
            self.nb_regs.write(queue::RX_HEAD, head);
            self.stats.rx_head_writes += 1;
            self.stats.polled_doorbell_writes += u64::from(self.nb_regs.is_mapped());
        }
        n
    }

    #[inline]
    fn deliver_tail(&mut self, queue_id: u64, tail: u64) {
        let shared =
            usize::try_from(queue_id).ok().and_then(|i| self.rx_pipes.get(i)).and_then(|s| s.as_ref());
        match shared {
            Some(s) if s.is_alive() => {
                s.set_tail(tail as u32);
                let i = queue_id as usize;
                if !self.pending_flag[i] {
                    self.pending_flag[i] = true;
                    self.pending.push_back(i as u32);
                }
            }
            _ => self.stats.stray_notifications += 1,
        }
    }

    // ----- TX ---------------------------------------------------------------------------

    /// Processes TX completions (in order, until the first entry still pending); returns
    /// how many completed.
    pub fn process_completions(&mut self) -> u32 {
        let base = self.tx_ring_base();
        let mut n = 0;
        let mut done = self.tx_done;
        while done != self.tx_tail {
            // SAFETY: `done` < notif_entries: the entry lies inside the TX ring.
            let entry = unsafe { base.add(done as usize * NOTIFICATION_SIZE) }.cast::<u64>();
            // SAFETY: as above; the device writes the signal back to 0 on completion.
            let signal = unsafe { std::ptr::read_volatile(entry) };
            if signal != 0 {
                break;
            }
            fence(Ordering::Acquire);
            match std::mem::replace(&mut self.completions[done as usize], Completion::None) {
                Completion::None => {}
                Completion::Rx(pipe, flits) => {
                    pipe.free_flits(flits);
                    self.stats.rx_frees_on_completion += 1;
                }
                Completion::Tx(pipe, bytes) => pipe.complete(bytes),
            }
            done = self.notif_ring.add(done, 1);
            n += 1;
        }
        self.tx_done = done;
        self.stats.tx_completions += n as u64;
        n
    }

    /// Frees `flits` of `pipe` that follow its bytes in flight without sending them: they
    /// are added to the pipe's latest pending send (freed when it completes, since frees
    /// move the head in order); with nothing of the pipe in flight they are freed now.
    pub(crate) fn free_after_pending(&mut self, pipe: &Arc<RxShared>, flits: u32) {
        let mut slot = self.tx_tail;
        while slot != self.tx_done {
            slot = self.notif_ring.sub(slot, 1);
            if let Completion::Rx(p, f) = &mut self.completions[slot as usize] {
                if Arc::ptr_eq(p, pipe) {
                    *f += flits;
                    return;
                }
            }
        }
        pipe.free_flits(flits);
    }

    /// TX notifications posted and not yet completed.
    pub fn tx_in_flight(&self) -> u32 {
        self.notif_ring.distance(self.tx_done, self.tx_tail)
    }

    /// Waits until every posted TX notification completed (bounded by `timeout`).
    pub fn wait_tx_idle(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while {
            self.process_completions();
            self.tx_in_flight() > 0
        } {
            if start.elapsed() > timeout {
                return Err(Error::TxRingFull(timeout));
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn tx_ring_base(&self) -> *mut u8 {
        // SAFETY: the TX ring starts NOTIF_RING_BYTES into the 2 MiB `nb_buf`.
        unsafe { self.nb_buf.as_ptr().add(NOTIF_RING_BYTES) }
    }

    /// Makes room for `slots` TX notifications, processing completions (bounded wait).
    #[inline]
    fn reserve_tx(&mut self, slots: u32) -> Result<()> {
        if self.notif_ring.free(self.tx_done, self.tx_tail) >= slots {
            return Ok(());
        }
        if slots > self.notif_ring.size() - 1 {
            return Err(Error::Invalid(format!("{slots} TX requests exceed the notification ring")));
        }
        let start = Instant::now();
        loop {
            self.process_completions();
            if self.notif_ring.free(self.tx_done, self.tx_tail) >= slots {
                return Ok(());
            }
            if start.elapsed() > self.opts.ack_timeout {
                return Err(Error::TxRingFull(self.opts.ack_timeout));
            }
            std::hint::spin_loop();
        }
    }

    /// Writes one TX notification (without moving the tail register). `words` are the
    /// notification's u64 words 1..8; the signal is written last.
    #[inline]
    fn write_tx_entry(&mut self, signal: u64, words: &[u64], completion: Completion) {
        let slot = self.tx_tail;
        // SAFETY: `slot` < notif_entries: the entry lies inside the TX ring; the device
        // does not read it before the tail register moves past it, and its previous use
        // has completed (reserve_tx).
        unsafe {
            let entry = self.tx_ring_base().add(slot as usize * NOTIFICATION_SIZE).cast::<u64>();
            for (i, w) in words.iter().enumerate().take(7) {
                std::ptr::write_volatile(entry.add(1 + i), *w);
            }
            std::ptr::write_volatile(entry, signal);
        }
        self.completions[slot as usize] = completion;
        self.tx_tail = self.notif_ring.add(slot, 1);
        self.stats.tx_requests += 1;
    }

    #[inline]
    fn ring_tx_doorbell(&mut self) {
        fence(Ordering::Release);
        self.nb_regs.write(queue::TX_TAIL, self.tx_tail);
        self.stats.tx_tail_writes += 1;
        self.stats.polled_doorbell_writes += u64::from(self.nb_regs.is_mapped());
    }

    /// Posts send requests for `chunks` (device address, length); `completion` is attached
    /// to the last one. One tail write for the whole batch.
    pub(crate) fn post_send(
        &mut self,
        chunks: impl Iterator<Item = (u64, u32)> + Clone,
        completion: Completion,
    ) -> Result<()> {
        let count = chunks.clone().count() as u32;
        if count == 0 {
            return Ok(());
        }
        self.reserve_tx(count)?;
        let mut completion = Some(completion);
        for (i, (addr, len)) in chunks.enumerate() {
            let c = if i as u32 + 1 == count {
                completion.take().unwrap_or(Completion::None)
            } else {
                Completion::None
            };
            self.write_tx_entry(notif::SIGNAL_SEND, &[addr, len as u64], c);
        }
        self.ring_tx_doorbell();
        Ok(())
    }

    // ----- configuration ---------------------------------------------------------------

    /// Sends a configuration notification (`body` = bytes 16..64, `config_id` at 8) and
    /// waits until the device has completed it.
    fn send_config(&mut self, config_id: u64, body: &[(usize, &[u8])]) -> Result<()> {
        let mut raw = [0u8; NOTIFICATION_SIZE];
        raw[notif::CONFIG_ID..notif::CONFIG_ID + 8].copy_from_slice(&config_id.to_le_bytes());
        for (off, bytes) in body {
            raw[*off..*off + bytes.len()].copy_from_slice(bytes);
        }
        let words: Vec<u64> =
            raw[8..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        self.reserve_tx(1)?;
        let slot = self.tx_tail;
        self.write_tx_entry(notif::SIGNAL_CONFIG, &words, Completion::None);
        self.ring_tx_doorbell();
        let start = Instant::now();
        loop {
            self.process_completions();
            // Still pending while `slot` lies in [tx_done, tx_tail).
            let pending = self.notif_ring.distance(self.tx_done, slot) < self.tx_in_flight();
            if !pending {
                return Ok(());
            }
            if start.elapsed() > self.opts.ack_timeout {
                return Err(Error::ConfigTimeout { config_id, waited: self.opts.ack_timeout });
            }
            std::thread::yield_now();
        }
    }

    /// Steers `flow` to `pipe_id`.
    pub fn insert_flow_entry(&mut self, flow: Flow, pipe_id: u32) -> Result<()> {
        let Flow { dst_port, src_port, dst_ip, src_ip, protocol } = flow;
        if pipe_id >= self.info.num_pipes {
            return Err(Error::BadPipeId { id: pipe_id, available: self.info.num_pipes });
        }
        self.send_config(
            config::FLOW_TABLE,
            &[
                (config::FT_DST_PORT, &dst_port.to_le_bytes()),
                (config::FT_SRC_PORT, &src_port.to_le_bytes()),
                (config::FT_DST_IP, &dst_ip.to_le_bytes()),
                (config::FT_SRC_IP, &src_ip.to_le_bytes()),
                (config::FT_PROTOCOL, &protocol.to_le_bytes()),
                (config::FT_PIPE_ID, &pipe_id.to_le_bytes()),
            ],
        )
    }

    /// Sends unmatched packets to pipes 0..n-1: by hash (`hash & mask`, mask = n rounded
    /// down to a power of two, minus one) or round robin.
    pub fn configure_fallback_queues(&mut self, n: u32, round_robin: bool) -> Result<()> {
        if n > self.info.num_pipes {
            return Err(Error::BadPipeId { id: n.saturating_sub(1), available: self.info.num_pipes });
        }
        let mask = fallback_mask(n);
        self.send_config(
            config::FALLBACK_QUEUES,
            &[
                (config::FB_COUNT, &n.to_le_bytes()),
                (config::FB_MASK, &mask.to_le_bytes()),
                (config::FB_ENABLE_RR, &(round_robin as u64).to_le_bytes()),
            ],
        )?;
        self.fallback = (n, round_robin);
        Ok(())
    }

    /// The configured (fallback queue count, round robin).
    pub fn fallback_queues(&self) -> (u32, bool) {
        self.fallback
    }

    /// Round-robin fallback steering (keeps the queue count).
    pub fn enable_round_robin(&mut self) -> Result<()> {
        self.configure_fallback_queues(self.fallback.0, true)
    }

    /// Hash fallback steering (keeps the queue count).
    pub fn disable_round_robin(&mut self) -> Result<()> {
        self.configure_fallback_queues(self.fallback.0, false)
    }

    /// Timestamps: TX stamps the device time at `offset` (None: the default, byte 18), RX
    /// writes the round-trip time there.
    pub fn enable_timestamp(&mut self, offset: Option<u8>) -> Result<()> {
        let off = offset.unwrap_or(config::TS_DEFAULT_OFFSET);
        self.send_config(
            config::TIMESTAMP,
            &[(config::TS_ENABLE, &1u64.to_le_bytes()), (config::TS_OFFSET, &[off])],
        )
    }

    /// Turns timestamps off.
    pub fn disable_timestamp(&mut self) -> Result<()> {
        self.send_config(config::TIMESTAMP, &[(config::TS_ENABLE, &0u64.to_le_bytes())])
    }

    /// TX rate limit: `num` flits every `den` device cycles (200 MHz).
    pub fn enable_rate_limit(&mut self, num: u16, den: u16) -> Result<()> {
        if num == 0 || den == 0 {
            return Err(Error::Invalid(format!("rate limit {num}/{den}: both must be non-zero")));
        }
        self.send_config(
            config::RATE_LIMIT,
            &[
                (config::RL_DENOMINATOR, &den.to_le_bytes()),
                (config::RL_NUMERATOR, &num.to_le_bytes()),
                (config::RL_ENABLE, &1u32.to_le_bytes()),
            ],
        )
    }

    /// Turns the rate limiter off.
    pub fn disable_rate_limit(&mut self) -> Result<()> {
        self.send_config(config::RATE_LIMIT, &[(config::RL_ENABLE, &0u32.to_le_bytes())])
    }

    /// Selects reactive or per-packet notifications (BAR0 `NOTIF_MODE`, setup path).
    pub fn set_notification_mode(&mut self, mode: NotificationMode) -> Result<()> {
        let v = match mode {
            NotificationMode::Reactive => ext::MODE_REACTIVE,
            NotificationMode::PerPacket => ext::MODE_PER_PACKET,
        };
        self.ext_bar("the notification mode")?.write32(ext::NOTIF_MODE, v)?;
        Ok(())
    }

    /// Reads every device counter (trapped MMIO: not for the datapath).
    pub fn counters(&self) -> Result<Counters> {
        let ext = self.ext_bar("the counters")?;
        let mut values = [0u64; ext::counter::COUNT as usize];
        for (i, v) in values.iter_mut().enumerate() {
            *v = read_wide(ext, ext::COUNTERS + 8 * i as u64)?;
        }
        Ok(Counters { values })
    }

    /// Reads one counter by name.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let i = ext::counter::NAMES
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::UnknownCounter(name.into()))?;
        read_wide(self.ext_bar("the counters")?, ext::COUNTERS + 8 * i as u64)
    }

    /// Resets the device counters.
    pub fn clear_counters(&mut self) -> Result<()> {
        self.ext_bar("the counters")?.write32(ext::COUNTERS_CLEAR, 1)?;
        Ok(())
    }

    /// Device time in 5 ns ticks.
    pub fn timestamp(&self) -> Result<u64> {
        read_wide(self.ext_bar("the device clock")?, ext::TIMESTAMP_LO)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Let posted sends finish so pipe buffers are not freed under the device, then
        // stop the pair before its rings are freed.
        let _ = self.wait_tx_idle(self.opts.ack_timeout);
        const PAIR: &str = "notification-buffer pair";
        match &self.ext {
            Some(ext) => {
                self.nb_regs.disable_queue();
                let _ = wait_state(
                    ext,
                    state::nb_bit(self.opts.nb_id),
                    false,
                    self.opts.ack_timeout,
                    PAIR,
                    self.opts.nb_id,
                );
            }
            None => {
                // Upstream clears both rings' addresses.
                let _ = self.nb_regs.card_disable(self.opts.ack_timeout, PAIR, self.opts.nb_id);
                self.nb_regs.write(queue::TX_MEM_LOW, 0);
                self.nb_regs.write(queue::TX_MEM_HIGH, 0);
            }
        }
    }
}

/// A 64-bit register read as two halves (BAR0 is prefetchable: no read latches anything):
/// high, low, high again, until the high half holds still.
fn read_wide(bar: &Bar, off: u64) -> Result<u64> {
    loop {
        let hi = bar.read32(off + 4)?;
        let lo = bar.read32(off)?;
        if bar.read32(off + 4)? == hi {
            return Ok((hi as u64) << 32 | lo as u64);
        }
    }
}

/// Checks what the driver relies on: power-of-two rings within the sizes our buffers hold.
pub(crate) fn check_geometry(info: &DeviceInfo) -> Result<()> {
    let bad = |what: String| Err(Error::Geometry(what));
    if info.num_pipes == 0 || info.num_pipes > regs::MAX_PIPES {
        return bad(format!("{} pipes (1..={} supported)", info.num_pipes, regs::MAX_PIPES));
    }
    if info.num_nb_pairs == 0 || info.num_nb_pairs > regs::MAX_NB_PAIRS {
        return bad(format!("{} notification-buffer pairs", info.num_nb_pairs));
    }
    // Pipe buffers are mapped twice back to back: the ring must fill whole 4 KiB pages.
    if !info.pipe_flits.is_power_of_two() || info.pipe_flits > PIPE_FLITS || info.pipe_flits < 64 {
        return bad(format!("pipe ring of {} flits (a power of two, 64..={PIPE_FLITS})", info.pipe_flits));
    }
    if !info.notif_entries.is_power_of_two()
        || info.notif_entries > NOTIF_RING_ENTRIES
        || info.notif_entries < 2
    {
        return bad(format!(
            "notification rings of {} entries (a power of two, 2..={NOTIF_RING_ENTRIES})",
            info.notif_entries
        ));
    }
    Ok(())
}

/// A stream pipe (see [`Device::enable_stream_pipe`]); disabled when dropped.
pub struct StreamPipe {
    id: u32,
    slot: u64,
    regs: RegWindow,
    ext: Bar,
    ids: Arc<Mutex<PipeIds>>,
}

impl StreamPipe {
    /// The pipe ID (what flow entries steer to).
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for StreamPipe {
    fn drop(&mut self) {
        self.regs.disable_queue();
        let _ = self.ext.write32(self.slot, 0);
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).free(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        DeviceInfo {
            version: 1,
            num_pipes: 8192,
            num_nb_pairs: 1024,
            pipe_flits: 32768,
            notif_entries: 16384,
        }
    }

    #[test]
    fn geometry_checks() {
        assert!(check_geometry(&info()).is_ok());
        assert!(check_geometry(&DeviceInfo { pipe_flits: 1024, notif_entries: 512, ..info() }).is_ok());
        for bad in [
            DeviceInfo { pipe_flits: 3000, ..info() },
            DeviceInfo { pipe_flits: 65536, ..info() },
            DeviceInfo { pipe_flits: 32, ..info() },
            DeviceInfo { notif_entries: 32768, ..info() },
            DeviceInfo { num_pipes: 0, ..info() },
            DeviceInfo { num_nb_pairs: 2000, ..info() },
        ] {
            let e = check_geometry(&bad).unwrap_err();
            assert!(matches!(e, Error::Geometry(_)), "{e}");
        }
    }

    #[test]
    fn counters_by_name() {
        let mut values = [0u64; ext::counter::COUNT as usize];
        values[ext::counter::TX_PACKETS as usize] = 42;
        let c = Counters { values };
        assert_eq!(c.get("tx_packets"), Some(42));
        assert_eq!(c.by_index(ext::counter::TX_PACKETS), Some(42));
        assert!(matches!(c.by_name("nope"), Err(Error::UnknownCounter(n)) if n == "nope"));
        assert_eq!(c.iter().count(), ext::counter::COUNT as usize);
    }
}
