//! What the fuzz targets share: a device model attached to guest memory, driven by a list
//! of operations a hostile driver could perform (trapped register writes and reads, stores
//! into the shared register pages, scribbles and plausible pointers in guest memory,
//! frames on the wire, resets), while the model's own device thread runs.
//!
//! Every target also ends with a trapped register read: it needs the model's locks, so a
//! device thread that spins with a lock held hangs the input, and libFuzzer's `-timeout`
//! reports it. A panic in any thread aborts (libfuzzer-sys's panic hook).

use arbitrary::Arbitrary;
use pcie_model::{BarBacking, DeviceContext, Dma, GuestMemory, NoIrqs, PciDevice, ShmRegion};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Where guest memory starts (IOVA).
pub const RAM: u64 = 0x10_0000;
/// Guest memory size.
pub const RAM_LEN: usize = 2 << 20;

/// A 32-bit value a driver might write: raw garbage, or something plausible.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Value {
    Raw(u32),
    /// An address inside guest memory (low half).
    Addr(u32),
    /// The high half of guest memory addresses.
    AddrHigh,
    Small(u8),
    Pow2(u8),
    Ones,
}

impl Value {
    pub fn get(self) -> u32 {
        match self {
            Value::Raw(v) => v,
            Value::Addr(o) => (RAM + (o as u64 % RAM_LEN as u64)) as u32,
            Value::AddrHigh => (RAM >> 32) as u32,
            Value::Small(v) => v as u32,
            Value::Pow2(s) => 1u32.wrapping_shl(s as u32 % 32),
            Value::Ones => u32::MAX,
        }
    }
}

/// One thing a driver does.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// A trapped write of 1..=8 bytes (as a message-borne MMIO write).
    Trapped { bar: u8, off: u16, value: Value, len: u8 },
    /// A trapped read.
    Read { bar: u8, off: u16, len: u8 },
    /// A 32-bit store into a shared register page (as a driver's mmap'd store).
    Shared { area: u8, off: u32, value: Value },
    /// Bytes written into guest memory while the device runs.
    Scribble { off: u32, bytes: Vec<u8> },
    /// A plausible 64-bit pointer (into guest memory) stored in guest memory.
    Pointer { at: u32, target: u32 },
    /// A 32-bit value stored in guest memory.
    Word { at: u32, value: Value },
    /// A frame arriving on the device's wire port (NICs).
    Frame(Vec<u8>),
    /// Lets the device thread run for a while.
    Wait(u8),
    /// Device reset (as DEVICE_RESET).
    Reset,
}

/// A device, its guest memory and its shared register pages.
pub struct Rig {
    pub dev: Box<dyn PciDevice>,
    pub ram: ShmRegion,
    pub mem: Arc<GuestMemory>,
    /// (BAR, offset, length, page) of every shared area.
    pub areas: Vec<(u8, u64, u64, Arc<ShmRegion>)>,
    /// The far end of the device's wire, if it has one.
    pub wire: Option<Box<dyn wire::EthPort>>,
    pub bar_sizes: [u64; 6],
}

impl Rig {
    /// Attaches `dev` to fresh guest memory with bus mastering on.
    pub fn new(mut dev: Box<dyn PciDevice>, wire: Option<Box<dyn wire::EthPort>>) -> Rig {
        let ram = ShmRegion::new("fuzz-ram", RAM_LEN).expect("guest memory");
        let mem = Arc::new(GuestMemory::new());
        mem.map(RAM, RAM_LEN as u64, Some(ram.dup_fd().expect("dup")), 0, true).expect("map");
        let mut areas = vec![];
        let mut bar_sizes = [0; 6];
        for bar in 0..6u8 {
            bar_sizes[bar as usize] = dev.config().bar(bar).map_or(0, |b| b.size);
            if let BarBacking::Shared { shm, areas: a } = dev.bar_backing(bar) {
                for (o, l) in a {
                    areas.push((bar, o, l, shm.clone()));
                }
            }
        }
        let dma = Dma::new(mem.clone(), dev.counters(), Arc::new(AtomicBool::new(true)));
        dev.attach(DeviceContext { dma, irq: Arc::new(NoIrqs) });
        Rig { dev, ram, mem, areas, wire, bar_sizes }
    }

    /// Runs `ops`, then checks the device still answers a trapped read.
    pub fn run(&mut self, ops: &[Op]) {
        for op in ops.iter().take(512) {
            self.step(op);
        }
        let mut b = [0u8; 4];
        self.dev.bar_read(0, 0, &mut b);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Trapped { bar, off, value, len } => {
                let bar = bar % 6;
                let size = self.bar_sizes[bar as usize];
                if size == 0 {
                    return;
                }
                let len = (*len as usize % 8) + 1;
                let off = (*off as u64) % size;
                let v = (value.get() as u64).to_le_bytes();
                self.dev.bar_write(bar, off.min(size.saturating_sub(len as u64)), &v[..len]);
            }
            Op::Read { bar, off, len } => {
                let bar = bar % 6;
                let size = self.bar_sizes[bar as usize];
                let len = (*len as usize % 8) + 1;
                if size >= len as u64 {
                    let mut b = [0u8; 8];
                    self.dev.bar_read(bar, (*off as u64 % size).min(size - len as u64), &mut b[..len]);
                }
            }
            Op::Shared { area, off, value } => {
                if self.areas.is_empty() {
                    return;
                }
                let (_, o, l, shm) = &self.areas[*area as usize % self.areas.len()];
                shm.write32(o + (*off as u64 % l.max(&4)) / 4 * 4, value.get());
            }
            Op::Scribble { off, bytes } => {
                let off = *off as u64 % RAM_LEN as u64;
                let n = bytes.len().min(RAM_LEN - off as usize);
                self.ram.write_bytes(off, &bytes[..n]);
            }
            Op::Pointer { at, target } => {
                let at = (*at as u64 % (RAM_LEN as u64 - 8)) & !7;
                let p = RAM + (*target as u64 % RAM_LEN as u64);
                self.ram.write_bytes(at, &p.to_le_bytes());
            }
            Op::Word { at, value } => {
                let at = (*at as u64 % (RAM_LEN as u64 - 4)) & !3;
                self.ram.write_bytes(at, &value.get().to_le_bytes());
            }
            Op::Frame(f) => {
                if let Some(w) = &mut self.wire {
                    w.send(f.clone());
                    w.flush();
                }
            }
            Op::Wait(n) => {
                for _ in 0..(*n % 8) {
                    std::thread::yield_now();
                }
                if *n >= 250 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
            Op::Reset => {
                self.dev.reset();
            }
        }
        // Frames the device sent are taken (and dropped) so the wire never fills.
        if let Some(w) = &mut self.wire {
            let mut sink = vec![];
            w.recv(&mut sink, 256);
        }
    }

    /// Back to power-on state with zeroed guest memory (between inputs).
    pub fn clear(&mut self) {
        self.dev.reset();
        self.dev.config_mut().reset();
        // Bus mastering and memory decoding as a driver leaves them.
        let _ = self.dev.config_mut().write(4, &6u16.to_le_bytes());
        self.ram.clear();
    }
}

/// One rig per target process, kept across inputs (built once; cleared per input).
pub fn with_rig(cell: &'static OnceLock<Mutex<Rig>>, make: fn() -> Rig, f: impl FnOnce(&mut Rig)) {
    let m = cell.get_or_init(|| Mutex::new(make()));
    let mut r: MutexGuard<'_, Rig> = m.lock().unwrap_or_else(|e| e.into_inner());
    r.clear();
    f(&mut r);
}

/// A NIC's port cabled to a far end the rig drives.
pub fn cabled() -> (Box<dyn wire::EthPort>, Box<dyn wire::EthPort>) {
    let (a, b) = wire::cable(64);
    (Box::new(a), Box::new(b))
}
