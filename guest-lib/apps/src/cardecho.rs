//! `card-echo`: a conformance program written the way software for the Ensō card is
//! written, from the card's documented interface (shared/design/ENSO-INTERFACE.md), with
//! none of `guest-lib/enso`'s queue logic:
//!
//! - no driver binds the device: it finds it in sysfs, enables memory decoding (sysfs
//!   `enable`) and bus mastering (the command register, through sysfs `config`) itself,
//!   and maps BAR2 through sysfs `resource2`;
//! - it gives the device physical addresses (from `/proc/self/pagemap`) of 2 MiB huge pages
//!   it reserves itself, so the guest runs without a translating IOMMU (off, or
//!   passthrough);
//! - it takes pipes from 8191 down (as upstream's kernel module hands them out), writes the
//!   card's registers in upstream's order (`rx_mem_low`, then `rx_mem_high`, then
//!   `tx_mem_*`), resets a queue by writing 0 and reading it back, steers each flow with a
//!   flow-table entry, and prefetches by rewriting a pipe's unchanged `rx_head`;
//! - it echoes every frame with its byte 63 incremented (upstream's echo does `++pkt[63]`),
//!   sending straight out of the RX pipe (a send that crosses the end of the 2 MiB pipe
//!   is split in two, as upstream's library splits at the huge page boundary), and frees
//!   the pipe space when the send completes.
//!
//! Never BAR0: every register it touches is the card's.

use crate::report::Report;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::enso::{config, notif, queue, MAX_NB_PAIRS, MAX_PIPES, QUEUE_PAGE};

/// The card's ring sizes (set over JTAG on the card; upstream's constants).
const PIPE_FLITS: u32 = testbed_regs::enso::PIPE_FLITS;
const ENTRIES: u32 = testbed_regs::enso::NOTIF_RING_ENTRIES;
const HUGE: usize = 2 << 20;
/// Upstream maps this much of BAR2: every queue page.
const BAR2_MAP: usize = (MAX_PIPES + MAX_NB_PAIRS) as usize * QUEUE_PAGE as usize;
/// Upstream's echo increments this byte of every frame.
pub const MARK: usize = 63;
/// Notifications taken per scan of the RX notification ring.
const BATCH: usize = 64;
/// How long a register read-back or a configuration may take.
const SETTLE: Duration = Duration::from_secs(2);

/// What the program is asked to do.
#[derive(Clone, Debug)]
pub struct CardEchoParams {
    /// Pipes, from 8191 down.
    pub pipes: u32,
    /// The host generator's flows: flow `f` is UDP to `dst_ip`, port `dst_port + f % 1024`.
    pub flows: u32,
    pub dst_ip: [u8; 4],
    pub dst_port: u16,
    /// The notification-buffer pair.
    pub pair: u32,
    /// Stop after this many frames (None: on idleness only).
    pub packets: Option<u64>,
    /// Stop when idle this long after traffic.
    pub idle: Duration,
    /// Give up when nothing arrives for this long.
    pub start_timeout: Duration,
    /// Rewrite each pipe's unchanged head after a batch (upstream's prefetch).
    pub prefetch: bool,
}

impl Default for CardEchoParams {
    fn default() -> Self {
        CardEchoParams {
            pipes: 2,
            flows: 16,
            dst_ip: [10, 1, 0, 1],
            dst_port: 9000,
            pair: 0,
            packets: None,
            idle: Duration::from_secs(3),
            start_timeout: Duration::from_secs(120),
            prefetch: true,
        }
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The Ensō card in sysfs: vendor 0x1172, class 0x020000.
fn find_device() -> Result<PathBuf, String> {
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let dir = std::fs::read_dir("/sys/bus/pci/devices").map_err(|e| err("list /sys/bus/pci/devices", e))?;
    let mut found: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| read(d.join("vendor")) == "0x1172" && read(d.join("class")) == "0x020000")
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| "no Ensō device (vendor 0x1172, class 0x020000) in sysfs".into())
}

/// Enables memory decoding (sysfs `enable`) and bus mastering (command register bit 2,
/// written through sysfs `config`); returns the command register as read back.
fn enable(dev: &Path) -> Result<u16, String> {
    std::fs::write(dev.join("enable"), "1").map_err(|e| err("write sysfs enable", e))?;
    let cfg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev.join("config"))
        .map_err(|e| err("open config", e))?;
    let mut cmd = [0u8; 2];
    cfg.read_exact_at(&mut cmd, 4).map_err(|e| err("read the command register", e))?;
    let v = u16::from_le_bytes(cmd) | 0x2 | 0x4;
    cfg.write_all_at(&v.to_le_bytes(), 4).map_err(|e| err("write the command register", e))?;
    cfg.read_exact_at(&mut cmd, 4).map_err(|e| err("read the command register back", e))?;
    Ok(u16::from_le_bytes(cmd))
}

/// BAR2 mapped through sysfs `resource2`.
struct Bar2 {
    ptr: *mut u8,
}

impl Bar2 {
    fn map(dev: &Path) -> Result<Bar2, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("resource2"))
            .map_err(|e| err("open resource2", e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of the device's BAR2 file; the result is checked, and the
        // mapping outlives the file descriptor (closed when `f` drops).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BAR2_MAP,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err("mmap resource2", std::io::Error::last_os_error()));
        }
        Ok(Bar2 { ptr: p.cast() })
    }

    fn at(&self, q: u32, reg: u64) -> *mut u32 {
        let off = q as u64 * QUEUE_PAGE + reg;
        assert!(reg < queue::SIZE && off + 4 <= BAR2_MAP as u64, "queue {q} register {reg:#x}");
        // SAFETY: in bounds of the mapping (checked above), 4-byte aligned.
        unsafe { self.ptr.add(off as usize).cast::<u32>() }
    }

    fn w(&self, q: u32, reg: u64, v: u32) {
        // SAFETY: `at` returns an aligned pointer inside the live mapping; a device register.
        unsafe { std::ptr::write_volatile(self.at(q, reg), v.to_le()) }
    }

    fn r(&self, q: u32, reg: u64) -> u32 {
        // SAFETY: as in `w`.
        u32::from_le(unsafe { std::ptr::read_volatile(self.at(q, reg)) })
    }

    /// Upstream's reset of one register: write 0, read back until it sticks.
    fn zero(&self, q: u32, reg: u64) -> Result<(), String> {
        self.w(q, reg, 0);
        let t = Instant::now();
        while self.r(q, reg) != 0 {
            if t.elapsed() > SETTLE {
                return Err(format!("queue {q} register {reg:#x} never read back 0"));
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// Upstream's queue reset: the address (which stops the queue), then tail and head.
    fn reset(&self, q: u32) -> Result<(), String> {
        for reg in [queue::RX_MEM_LOW, queue::RX_MEM_HIGH, queue::RX_TAIL, queue::RX_HEAD] {
            self.zero(q, reg)?;
        }
        Ok(())
    }
}

impl Drop for Bar2 {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), BAR2_MAP) };
    }
}

/// One 2 MiB huge page, locked, with its physical address.
struct Huge {
    ptr: *mut u8,
    phys: u64,
}

impl Huge {
    fn new() -> Result<Huge, String> {
        let flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_HUGETLB
            | libc::MAP_HUGE_2MB
            | libc::MAP_POPULATE;
        // SAFETY: an anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), HUGE, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(err("mmap a 2 MiB huge page", std::io::Error::last_os_error()));
        }
        let ptr = p.cast::<u8>();
        // SAFETY: the page was just mapped, HUGE bytes, writable.
        unsafe {
            std::ptr::write_bytes(ptr, 0, HUGE);
            libc::mlock(p, HUGE);
        }
        // The physical frame from /proc/self/pagemap: one u64 per 4 KiB page, bits 0..55 the
        // frame number, bit 63 present (root sees the frame numbers).
        let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| err("open pagemap", e))?;
        let mut e = [0u8; 8];
        let index = ptr as u64 / 4096 * 8;
        f.read_exact_at(&mut e, index).map_err(|e| err("read pagemap", e))?;
        let v = u64::from_le_bytes(e);
        let pfn = v & ((1 << 55) - 1);
        if v >> 63 == 0 || pfn == 0 {
            return Err(format!("pagemap gives no frame for the huge page ({v:#x}): not root?"));
        }
        let phys = pfn * 4096;
        if !phys.is_multiple_of(HUGE as u64) {
            return Err(format!("huge page at {phys:#x} is not 2 MiB aligned"));
        }
        Ok(Huge { ptr, phys })
    }

    fn u8_at(&self, off: usize) -> *mut u8 {
        assert!(off < HUGE);
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.add(off) }
    }

    fn u64_at(&self, off: usize) -> *mut u64 {
        assert!(off + 8 <= HUGE && off.is_multiple_of(8));
        self.u8_at(off).cast()
    }

    fn r8(&self, off: usize) -> u8 {
        // SAFETY: in bounds; the device writes this memory, hence volatile.
        unsafe { std::ptr::read_volatile(self.u8_at(off)) }
    }

    fn w8(&self, off: usize, v: u8) {
        // SAFETY: as in `r8`.
        unsafe { std::ptr::write_volatile(self.u8_at(off), v) }
    }

    fn r64(&self, off: usize) -> u64 {
        // SAFETY: in bounds and aligned (checked in `u64_at`).
        u64::from_le(unsafe { std::ptr::read_volatile(self.u64_at(off)) })
    }

    fn w64(&self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { std::ptr::write_volatile(self.u64_at(off), v.to_le()) }
    }
}

impl Drop for Huge {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), HUGE) };
    }
}

/// Reserves at least `n` free 2 MiB huge pages (`/proc/sys/vm/nr_hugepages`).
fn reserve_huge_pages(n: u32) -> Result<u32, String> {
    let path = "/proc/sys/vm/nr_hugepages";
    let cur: u32 = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    std::fs::write(path, (cur + n).to_string()).map_err(|e| err("reserve huge pages", e))?;
    let now: u32 = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if now < cur + n {
        return Err(format!("asked for {} huge pages, the kernel gave {now}", cur + n));
    }
    Ok(now)
}

/// One pipe: its ID, its ring, and what the program knows of it.
struct Pipe {
    id: u32,
    buf: Huge,
    /// Freed to the device (the `rx_head` value).
    head: u32,
    /// Sent up to here (flits).
    sent: u32,
    /// Announced by the device (flits).
    tail: u32,
}

/// What completing a TX notification frees: pipe index and its new head.
type Free = Option<(usize, u32)>;

/// The notification-buffer pair: RX notifications in the first half of its huge page,
/// TX notifications in the second.
struct Pair {
    id: u32,
    buf: Huge,
    rx_head: u32,
    tx_tail: u32,
    tx_done: u32,
    frees: VecDeque<Free>,
}

const TX_RING: usize = HUGE / 2;

#[derive(Default)]
struct Stats {
    packets: u64,
    bytes: u64,
    notifications: u64,
    stray: u64,
    tx_requests: u64,
    prefetches: u64,
    short: u64,
    register_writes: u64,
}

struct Card {
    bar: Bar2,
    pair: Pair,
    pipes: Vec<Pipe>,
    stats: Stats,
}

impl Card {
    fn w(&mut self, q: u32, reg: u64, v: u32) {
        self.stats.register_writes += 1;
        self.bar.w(q, reg, v);
    }

    /// Upstream's `notification_buf_init`, in its order.
    fn setup_pair(bar: &Bar2, id: u32) -> Result<Pair, String> {
        let q = MAX_PIPES + id;
        bar.reset(q)?;
        let buf = Huge::new()?;
        let tx_tail = bar.r(q, queue::TX_TAIL) % ENTRIES;
        // Keep the TX tail, make the head equal to it: nothing stale is fetched.
        bar.w(q, queue::TX_HEAD, tx_tail);
        fence(Ordering::Release);
        // Setting the address enables the queue; the TX ring sits 1 MiB above the RX ring.
        bar.w(q, queue::RX_MEM_LOW, buf.phys as u32);
        bar.w(q, queue::RX_MEM_HIGH, (buf.phys >> 32) as u32);
        let tx = buf.phys + TX_RING as u64;
        bar.w(q, queue::TX_MEM_LOW, tx as u32);
        bar.w(q, queue::TX_MEM_HIGH, (tx >> 32) as u32);
        Ok(Pair { id, buf, rx_head: 0, tx_tail, tx_done: tx_tail, frees: VecDeque::new() })
    }

    /// Upstream's `enso_pipe_init`, in its order (the pair's ID in the address's low bits).
    fn setup_pipe(bar: &Bar2, id: u32, pair: u32) -> Result<Pipe, String> {
        bar.reset(id)?;
        let buf = Huge::new()?;
        fence(Ordering::Release);
        bar.w(id, queue::RX_MEM_LOW, buf.phys as u32 + pair);
        bar.w(id, queue::RX_MEM_HIGH, (buf.phys >> 32) as u32);
        Ok(Pipe { id, buf, head: 0, sent: 0, tail: 0 })
    }

    fn tx_slot(i: u32) -> usize {
        TX_RING + i as usize * 64
    }

    /// Takes completed TX notifications (signal back to 0, in order); frees pipe space.
    fn completions(&mut self) {
        while self.pair.tx_done != self.pair.tx_tail
            && self.pair.buf.r64(Self::tx_slot(self.pair.tx_done)) == 0
        {
            fence(Ordering::Acquire);
            if let Some(Some((k, head))) = self.pair.frees.pop_front() {
                self.pipes[k].head = head;
                let id = self.pipes[k].id;
                self.w(id, queue::RX_HEAD, head);
            }
            self.pair.tx_done = (self.pair.tx_done + 1) % ENTRIES;
        }
    }

    /// Posts one TX notification (words 1.. of it in `fields`), waiting for a free slot.
    fn post(&mut self, signal: u64, fields: &[(usize, &[u8])], free: Free) -> Result<u32, String> {
        let t = Instant::now();
        while (self.pair.tx_tail + 1) % ENTRIES == self.pair.tx_done {
            self.completions();
            if t.elapsed() > SETTLE {
                return Err("the TX notification ring stayed full".into());
            }
        }
        let slot = self.pair.tx_tail;
        let base = Self::tx_slot(slot);
        for k in (8..64).step_by(8) {
            self.pair.buf.w64(base + k, 0);
        }
        for (off, bytes) in fields {
            for (i, b) in bytes.iter().enumerate() {
                self.pair.buf.w8(base + off + i, *b);
            }
        }
        fence(Ordering::Release);
        self.pair.buf.w64(base, signal);
        self.pair.frees.push_back(free);
        self.pair.tx_tail = (slot + 1) % ENTRIES;
        self.stats.tx_requests += 1;
        Ok(slot)
    }

    fn ring_tx(&mut self) {
        fence(Ordering::Release);
        let (q, t) = (MAX_PIPES + self.pair.id, self.pair.tx_tail);
        self.w(q, queue::TX_TAIL, t);
    }

    /// A configuration notification, and the wait for its completion.
    fn configure(&mut self, id: u64, fields: &[(usize, &[u8])]) -> Result<(), String> {
        let id_bytes = id.to_le_bytes();
        let mut all = vec![(notif::CONFIG_ID, &id_bytes[..])];
        all.extend_from_slice(fields);
        let slot = self.post(notif::SIGNAL_CONFIG, &all, None)?;
        self.ring_tx();
        let t = Instant::now();
        while self.pair.buf.r64(Self::tx_slot(slot)) != 0 {
            if t.elapsed() > SETTLE {
                return Err(format!("configuration {id} was never completed"));
            }
            std::hint::spin_loop();
        }
        self.completions();
        Ok(())
    }

    /// Takes up to a batch of RX notifications; returns how many.
    fn notifications(&mut self) -> usize {
        let mut n = 0;
        let mut head = self.pair.rx_head;
        while n < BATCH {
            let at = head as usize * 64;
            if self.pair.buf.r64(at) == 0 {
                break;
            }
            fence(Ordering::Acquire);
            let (q, tail) =
                (self.pair.buf.r64(at + notif::RX_QUEUE_ID), self.pair.buf.r64(at + notif::RX_TAIL));
            self.pair.buf.w64(at, 0);
            match self.pipes.iter_mut().find(|p| u64::from(p.id) == q) {
                Some(p) => p.tail = tail as u32 % PIPE_FLITS,
                None => self.stats.stray += 1,
            }
            head = (head + 1) % ENTRIES;
            n += 1;
        }
        if n > 0 {
            self.pair.rx_head = head;
            self.stats.notifications += n as u64;
            fence(Ordering::Release);
            let q = MAX_PIPES + self.pair.id;
            self.w(q, queue::RX_HEAD, head);
        }
        n
    }

    /// Echoes what pipe `k` holds between what was sent and the announced tail: byte 63 of
    /// every frame incremented, sent straight out of the pipe (split at the ring's end).
    fn echo_pipe(&mut self, k: usize, prefetch: bool) -> Result<bool, String> {
        let (sent, tail) = (self.pipes[k].sent, self.pipes[k].tail);
        if sent == tail {
            return Ok(false);
        }
        let ring = PIPE_FLITS as usize * 64;
        let buf = &self.pipes[k].buf;
        let mut at = sent as usize * 64;
        let end = tail as usize * 64;
        while at != end {
            let byte = |i: usize| buf.r8((at + i) % ring);
            let len = usize::from(u16::from_be_bytes([byte(16), byte(17)])) + 14;
            if len > MARK {
                let m = (at + MARK) % ring;
                buf.w8(m, buf.r8(m).wrapping_add(1));
            } else {
                self.stats.short += 1;
            }
            self.stats.packets += 1;
            self.stats.bytes += len as u64;
            at = (at + len.div_ceil(64).max(1) * 64) % ring;
        }
        let phys = self.pipes[k].buf.phys;
        let from = sent as usize * 64;
        let bytes = (tail as usize + PIPE_FLITS as usize - sent as usize) % PIPE_FLITS as usize * 64;
        let first = bytes.min(ring - from);
        let chunks: Vec<(u64, usize)> = if first == bytes {
            vec![(phys + from as u64, bytes)]
        } else {
            vec![(phys + from as u64, first), (phys, bytes - first)]
        };
        let last = chunks.len() - 1;
        for (i, (addr, len)) in chunks.into_iter().enumerate() {
            let free = (i == last).then_some((k, tail));
            let (a, l) = (addr.to_le_bytes(), (len as u64).to_le_bytes());
            self.post(notif::SIGNAL_SEND, &[(notif::TX_PHYS_ADDR, &a), (notif::TX_LENGTH, &l)], free)?;
        }
        self.ring_tx();
        self.pipes[k].sent = tail;
        if prefetch {
            // Upstream's prefetch: rewrite the pipe's unchanged head, asking for its next
            // notification now rather than after the send completes.
            let (id, head) = (self.pipes[k].id, self.pipes[k].head);
            self.w(id, queue::RX_HEAD, head);
            self.stats.prefetches += 1;
        }
        Ok(true)
    }

    /// Upstream's teardown: every address to 0 (read back here).
    fn stop(&mut self) {
        let t = Instant::now();
        while self.pair.tx_done != self.pair.tx_tail && t.elapsed() < SETTLE {
            self.completions();
        }
        for p in &self.pipes {
            let _ = self.bar.zero(p.id, queue::RX_MEM_LOW);
            let _ = self.bar.zero(p.id, queue::RX_MEM_HIGH);
        }
        let q = MAX_PIPES + self.pair.id;
        let _ = self.bar.zero(q, queue::RX_MEM_LOW);
        let _ = self.bar.zero(q, queue::RX_MEM_HIGH);
        self.bar.w(q, queue::TX_MEM_LOW, 0);
        self.bar.w(q, queue::TX_MEM_HIGH, 0);
        // Give a polling device a moment to see it before the pages go.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the program and reports (one JSON result line from `main`).
pub fn run(p: CardEchoParams) -> Report {
    let mut r = Report::new("card-echo", "sysfs");
    let pipe_ids: Vec<u32> = (0..p.pipes.max(1)).map(|i| MAX_PIPES - 1 - i).collect();
    r.value("pipes_used", pipe_ids.clone());
    let dev = match find_device() {
        Ok(d) => d,
        Err(e) => {
            r.fail("device_found", e);
            return r;
        }
    };
    r.check("device_found", true, dev.display().to_string());
    let bound = dev.join("driver").exists();
    r.check("no_driver_bound", !bound, if bound { "a driver is bound" } else { "none" });
    match enable(&dev) {
        Ok(cmd) => r.check("enabled", cmd & 0x6 == 0x6, format!("command register {cmd:#06x}")),
        Err(e) => {
            r.fail("enabled", e);
            return r;
        }
    };
    let setup = || -> Result<Card, String> {
        let pages = reserve_huge_pages(1 + pipe_ids.len() as u32)?;
        let bar = Bar2::map(&dev)?;
        let pair = Card::setup_pair(&bar, p.pair)?;
        let pipes =
            pipe_ids.iter().map(|&id| Card::setup_pipe(&bar, id, p.pair)).collect::<Result<Vec<_>, _>>()?;
        let _ = pages;
        Ok(Card { bar, pair, pipes, stats: Stats::default() })
    };
    let mut card = match setup() {
        Ok(c) => c,
        Err(e) => {
            r.fail("setup", e);
            return r;
        }
    };
    r.value("pair_phys", format!("{:#x}", card.pair.buf.phys));
    r.value("pipe_phys", card.pipes.iter().map(|x| format!("{:#x}", x.buf.phys)).collect::<Vec<_>>());
    r.check(
        "setup",
        true,
        format!("pair {} and pipes {pipe_ids:?} reset by read-back and enabled by address", p.pair),
    );
    // One flow-table entry per flow: UDP is keyed on the destination only.
    let mut entries = 0;
    for f in 0..p.flows.min(1024) {
        let pipe = pipe_ids[f as usize % pipe_ids.len()];
        let port = p.dst_port.wrapping_add(f as u16);
        let ip = u32::from_be_bytes(p.dst_ip);
        let fields: [(usize, &[u8]); 6] = [
            (config::FT_DST_PORT, &port.to_le_bytes()),
            (config::FT_SRC_PORT, &0u16.to_le_bytes()),
            (config::FT_DST_IP, &ip.to_le_bytes()),
            (config::FT_SRC_IP, &0u32.to_le_bytes()),
            (config::FT_PROTOCOL, &17u32.to_le_bytes()),
            (config::FT_PIPE_ID, &pipe.to_le_bytes()),
        ];
        if let Err(e) = card.configure(config::FLOW_TABLE, &fields) {
            r.fail("flow_entries", e);
            card.stop();
            return r;
        }
        entries += 1;
    }
    r.check("flow_entries", true, format!("{entries} flow entries to pipes {pipe_ids:?}"));
    crate::report::announce(
        serde_json::json!({"event": "ready", "scenario": "card-echo", "pipes": pipe_ids}),
    );

    let start = Instant::now();
    let mut last = start;
    let limit = p.packets.unwrap_or(u64::MAX);
    let mut failed = None;
    let mut idle_polls = 0u32;
    while card.stats.packets < limit {
        card.completions();
        card.notifications();
        let mut any = false;
        for k in 0..card.pipes.len() {
            match card.echo_pipe(k, p.prefetch) {
                Ok(x) => any |= x,
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_some() {
            break;
        }
        if any {
            last = Instant::now();
            idle_polls = 0;
            continue;
        }
        idle_polls += 1;
        if idle_polls.is_multiple_of(256) {
            let now = Instant::now();
            if card.stats.packets > 0 && now - last > p.idle
                || card.stats.packets == 0 && now - start > p.start_timeout
            {
                break;
            }
            std::thread::yield_now();
        }
    }
    let active = last - start;
    card.stop();
    let s = &card.stats;
    match failed {
        Some(e) => r.fail("echo", e),
        None => {
            r.check_count("echoed", s.packets, p.packets, format!("{} frames", s.packets));
        }
    }
    r.check("frames_at_least_64_bytes", s.short == 0, format!("{} shorter frames", s.short));
    r.value("packets", s.packets);
    r.value("bytes", s.bytes);
    r.value("notifications", s.notifications);
    r.value("stray_notifications", s.stray);
    r.value("tx_requests", s.tx_requests);
    r.value("prefetches", s.prefetches);
    r.value("register_writes", s.register_writes);
    r.value("register_writes_per_packet", s.register_writes as f64 / s.packets.max(1) as f64);
    r.value("active_s", active.as_secs_f64());
    r.value("pps", if active.is_zero() { 0.0 } else { s.packets as f64 / active.as_secs_f64() });
    r
}
