//! Test support for device models (feature `testing`): fake guest RAM behind a DMA space
//! that can log every access, a driver's attach, and the waits and garbage every model's
//! device tests share.

use crate::dma::{DmaError, DmaSpace, GuestMemory};
use crate::{DeviceContext, Dma, NoIrqs, PciDevice, ShmRegion};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One logged DMA access: (write, address, the bytes written, or zeros for a read).
pub type Access = (bool, u64, Vec<u8>);

/// Guest memory that can log every DMA access (for trace snapshots).
#[derive(Default)]
pub struct TracedSpace {
    pub mem: GuestMemory,
    log: Mutex<Option<Vec<Access>>>,
}

impl TracedSpace {
    /// Starts logging (dropping anything logged before).
    pub fn start_log(&self) {
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(vec![]);
    }

    /// Stops logging and returns what was logged.
    pub fn take_log(&self) -> Vec<Access> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default()
    }

    fn record(&self, write: bool, addr: u64, data: Vec<u8>) {
        if let Some(l) = self.log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            l.push((write, addr, data));
        }
    }
}

impl DmaSpace for TracedSpace {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.mem.read(addr, buf);
        self.record(false, addr, vec![0; buf.len()]);
        r
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.record(true, addr, data.to_vec());
        self.mem.write(addr, data)
    }
}

/// `len` bytes of fake guest RAM (a memfd) mapped at bus address `base`.
pub struct GuestRam {
    pub base: u64,
    pub ram: ShmRegion,
    pub space: Arc<TracedSpace>,
}

impl GuestRam {
    pub fn new(base: u64, len: u64) -> GuestRam {
        let ram = ShmRegion::new("ram", len as usize).expect("a memfd for guest RAM");
        let space = Arc::new(TracedSpace::default());
        let fd = ram.dup_fd().expect("dup the RAM fd");
        space.mem.map(base, len, Some(fd), 0, true).expect("map guest RAM");
        GuestRam { base, ram, space }
    }

    /// A driver connects `dev` to this RAM: bus mastering on, interrupts dropped.
    pub fn attach(&self, dev: &mut dyn PciDevice) {
        let dma = Dma::new(self.space.clone(), dev.counters(), Arc::new(AtomicBool::new(true)));
        dev.attach(DeviceContext { dma, irq: Arc::new(NoIrqs) });
    }

    /// Writes `data` at bus address `addr` (inside the RAM).
    pub fn write(&self, addr: u64, data: &[u8]) {
        assert!(self.ram.write_bytes(addr - self.base, data), "{addr:#x} is outside guest RAM");
    }

    /// Reads `len` bytes at bus address `addr` (inside the RAM).
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        assert!(self.ram.read_bytes(addr - self.base, &mut b), "{addr:#x} is outside guest RAM");
        b
    }
}

/// Waits up to 10 s for `f`, failing the test with `what` after that.
pub fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Waits long enough for a device thread to have run several rounds.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(30));
}

/// The next word of a xorshift sequence: reproducible garbage.
pub fn garbage(seed: &mut u64) -> u32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed as u32
}

/// A 32-bit register read at `off` of BAR `bar`, as a trapped access.
pub fn read32(dev: &mut dyn PciDevice, bar: u8, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.bar_read(bar, off, &mut b);
    u32::from_le_bytes(b)
}

/// A 32-bit register write at `off` of BAR `bar`, as a trapped access.
pub fn write32(dev: &mut dyn PciDevice, bar: u8, off: u64, v: u32) {
    dev.bar_write(bar, off, &v.to_le_bytes());
}

/// One round of a garbage storm: scribbles over the first page of BAR 0, hands `inject`
/// a burst of garbage frames for the wire, and lets the device thread run.
pub fn garbage_round(dev: &mut dyn PciDevice, seed: &mut u64, inject: impl FnOnce(&[Vec<u8>])) {
    scribble(dev, 0, 0x1000, seed, 8);
    inject(&garbage_frames(seed, 8));
    std::thread::sleep(Duration::from_millis(2));
}

/// `n` garbage 32-bit writes at aligned offsets below `span` of BAR `bar`.
pub fn scribble(dev: &mut dyn PciDevice, bar: u8, span: u64, seed: &mut u64, n: usize) {
    for _ in 0..n {
        let off = (garbage(seed) as u64 % span) & !3;
        let v = garbage(seed);
        dev.bar_write(bar, off, &v.to_le_bytes());
    }
}

/// `n` frames of garbage, each shorter than 1600 bytes (some empty).
pub fn garbage_frames(seed: &mut u64, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| (0..(garbage(seed) % 1600) as usize).map(|_| garbage(seed) as u8).collect()).collect()
}
