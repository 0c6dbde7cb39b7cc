//! The smoke test device: the smallest model that exercises every path of the testbed.
//!
//! - BAR0 (trapped): identity, scratch, status and counters, MSI-X table and PBA.
//! - BAR2 (shared memory): a command slot. The driver fills it and writes a new sequence
//!   number; the device thread, polling the page, DMA-writes a pattern or DMA-reads and
//!   checksums a buffer, writes the completion into the page and raises an MSI-X vector.
//!
//! Bad commands and DMA outside mapped memory are completed with an error status, flagged
//! in STATUS and counted; the device keeps serving.

use pcie_model::config::{BarKind, BarSpec, ConfigSpace, ConfigSpaceBuilder, MsixSpec};
use pcie_model::device::{BarBacking, DeviceContext, PciDevice};
use pcie_model::irq::MsixTable;
use pcie_model::regs::{RegisterBlock, WriteOutcome};
use pcie_model::shm::ShmRegion;
use pcie_model::{Counters, DmaClass};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use testbed_regs::smoke::*;

/// State shared by the trapped-register side and the device thread.
struct Shared {
    regs: Mutex<RegisterBlock>,
    msix: Mutex<MsixTable>,
    doorbell: Arc<ShmRegion>,
    counters: Arc<Counters>,
    /// Checksum of the last buffer read by DMA (kept for the host's cross-check).
    last_checksum: AtomicU32,
}

impl Shared {
    fn regs(&self) -> MutexGuard<'_, RegisterBlock> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Worker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The smoke device model.
pub struct SmokeDevice {
    config: ConfigSpace,
    shared: Arc<Shared>,
    worker: Option<Worker>,
}

fn registers() -> RegisterBlock {
    let mut r = RegisterBlock::new(MSIX_TABLE_OFFSET as usize);
    r.define(REG_ID, ID_VALUE, 0, 0)
        .define(REG_VERSION, VERSION_VALUE, 0, 0)
        .define(REG_SCRATCH, 0, u32::MAX, 0)
        .define(REG_STATUS, 0, 0, STATUS_DONE | STATUS_DMA_ERROR)
        .define(REG_COMMANDS, 0, 0, 0)
        .define(REG_DMA_ERRORS, 0, 0, 0)
        .define(REG_BAD_COMMANDS, 0, 0, 0);
    r
}

impl SmokeDevice {
    /// A device in its power-on state.
    pub fn new() -> std::io::Result<Self> {
        let config = ConfigSpaceBuilder::new(VENDOR_ID, DEVICE_ID)
            .class(CLASS_CODE)
            .bar(BarSpec::mem32(REG_BAR, REG_BAR_SIZE))
            .bar(BarSpec {
                index: DOORBELL_BAR,
                size: DOORBELL_BAR_SIZE,
                kind: BarKind::Mem64,
                prefetchable: true,
            })
            .msix(MsixSpec {
                vectors: MSIX_VECTORS,
                table_bar: REG_BAR,
                table_offset: MSIX_TABLE_OFFSET,
                pba_bar: REG_BAR,
                pba_offset: MSIX_PBA_OFFSET,
            })
            .build()?;
        Ok(SmokeDevice {
            config,
            shared: Arc::new(Shared {
                regs: Mutex::new(registers()),
                msix: Mutex::new(MsixTable::new(MSIX_VECTORS)),
                doorbell: Arc::new(ShmRegion::new("smoke-doorbell", DOORBELL_BAR_SIZE as usize)?),
                counters: Arc::new(Counters::default()),
                last_checksum: AtomicU32::new(0),
            }),
            worker: None,
        })
    }

    /// The scratch register's value (what the driver last wrote).
    pub fn scratch(&self) -> u32 {
        self.shared.regs().get(REG_SCRATCH)
    }

    /// Commands completed since power-on or reset.
    pub fn commands(&self) -> u32 {
        self.shared.regs().get(REG_COMMANDS)
    }

    /// Checksum of the last buffer the device read by DMA.
    pub fn last_checksum(&self) -> u32 {
        self.shared.last_checksum.load(Ordering::Acquire)
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Release);
            let _ = w.thread.join();
        }
    }
}

/// Runs one command from the doorbell page; returns (status, result).
fn execute(shared: &Shared, ctx: &DeviceContext) -> (u32, u32) {
    let db = &shared.doorbell;
    let opcode = db.read32(DB_OPCODE);
    let addr = (db.read32(DB_ADDR_HI) as u64) << 32 | db.read32(DB_ADDR_LO) as u64;
    let len = db.read32(DB_LEN);
    let seed = db.read32(DB_SEED);
    if len > MAX_DMA_LEN || !(opcode == OP_WRITE_PATTERN || opcode == OP_READ_CHECKSUM) {
        let mut r = shared.regs();
        let n = r.get(REG_BAD_COMMANDS).wrapping_add(1);
        r.set(REG_BAD_COMMANDS, n);
        return (CMD_BAD, 0);
    }
    let mut buf = vec![0u8; len as usize];
    let outcome = if opcode == OP_WRITE_PATTERN {
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = pattern_byte(seed, i));
        ctx.dma.write(addr, &buf, DmaClass::Data).map(|_| 0)
    } else {
        ctx.dma.read(addr, &mut buf, DmaClass::Data).map(|_| {
            let sum = fnv1a32(&buf);
            shared.last_checksum.store(sum, Ordering::Release);
            sum
        })
    };
    match outcome {
        Ok(result) => (CMD_OK, result),
        Err(_) => {
            let mut r = shared.regs();
            let n = r.get(REG_DMA_ERRORS).wrapping_add(1);
            r.set(REG_DMA_ERRORS, n);
            r.set_bits(REG_STATUS, STATUS_DMA_ERROR);
            (CMD_DMA_ERROR, 0)
        }
    }
}

fn device_loop(shared: Arc<Shared>, ctx: DeviceContext, stop: Arc<AtomicBool>) {
    let db = shared.doorbell.clone();
    pcie_model::poll::poll_until(&stop, || {
        let seq = db.read32(DB_SEQ);
        if seq == db.read32(DB_DONE_SEQ) {
            return false;
        }
        let (status, result) = execute(&shared, &ctx);
        db.write32(DB_DONE_STATUS, status);
        db.write32(DB_DONE_RESULT, result);
        db.write32(DB_DONE_SEQ, seq);
        {
            let mut r = shared.regs();
            let n = r.get(REG_COMMANDS).wrapping_add(1);
            r.set(REG_COMMANDS, n);
            r.set_bits(REG_STATUS, STATUS_DONE);
        }
        let vector = db.read32(DB_VECTOR);
        if vector != NO_VECTOR {
            let v = vector.min(u16::MAX as u32) as u16;
            let delivered = v < MSIX_VECTORS && ctx.raise_irq(v);
            if !delivered {
                shared.msix.lock().unwrap_or_else(|e| e.into_inner()).set_pending(v, true);
            }
        }
        true
    });
}

impl PciDevice for SmokeDevice {
    fn name(&self) -> &str {
        "smoke"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_backing(&self, index: u8) -> BarBacking {
        if index == DOORBELL_BAR {
            BarBacking::Shared { shm: self.shared.doorbell.clone(), areas: vec![(0, DOORBELL_BAR_SIZE)] }
        } else {
            BarBacking::Trapped
        }
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if index != REG_BAR {
            return;
        }
        let t = MSIX_TABLE_OFFSET as u64;
        let p = MSIX_PBA_OFFSET as u64;
        let msix = self.shared.msix.lock().unwrap_or_else(|e| e.into_inner());
        if offset >= p {
            msix.read_pba(offset - p, data);
        } else if offset >= t {
            msix.read_table(offset - t, data);
        } else {
            drop(msix);
            self.shared.regs().read(offset, data);
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        let t = MSIX_TABLE_OFFSET as u64;
        let p = MSIX_PBA_OFFSET as u64;
        let rejected = match index {
            REG_BAR if offset >= p => true, // the PBA is read-only
            REG_BAR if offset >= t => {
                self.shared.msix.lock().unwrap_or_else(|e| e.into_inner()).write_table(offset - t, data);
                false
            }
            REG_BAR => self.shared.regs().write(offset, data) == WriteOutcome::Rejected,
            _ => true,
        };
        if rejected {
            self.shared.counters.bad_register_write();
        }
    }

    fn attach(&mut self, ctx: DeviceContext) {
        self.stop_worker();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("smoke-device".into())
            .spawn(move || device_loop(shared, ctx, s2))
            .expect("spawn the smoke device thread");
        self.worker = Some(Worker { stop, thread });
    }

    fn detach(&mut self) {
        self.stop_worker();
    }

    fn reset(&mut self) {
        self.shared.regs().reset();
        self.shared.msix.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.shared.doorbell.clear();
        self.shared.last_checksum.store(0, Ordering::Release);
    }

    fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }
}

impl Drop for SmokeDevice {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcie_model::dma::{Dma, GuestMemory};
    use pcie_model::irq::RecordingIrqs;
    use std::time::{Duration, Instant};

    struct Rig {
        dev: SmokeDevice,
        mem: Arc<GuestMemory>,
        irqs: Arc<RecordingIrqs>,
        db: Arc<ShmRegion>,
        seq: u32,
    }

    fn rig() -> Rig {
        let mut dev = SmokeDevice::new().unwrap();
        let mem = Arc::new(GuestMemory::new());
        let ram = ShmRegion::new("ram", 1 << 20).unwrap();
        mem.map(0x10_0000, 1 << 20, Some(ram.dup_fd().unwrap()), 0, true).unwrap();
        let irqs = Arc::new(RecordingIrqs::default());
        let dma = Dma::new(mem.clone(), dev.counters(), Arc::new(AtomicBool::new(true)));
        dev.attach(DeviceContext { dma, irq: irqs.clone() });
        let BarBacking::Shared { shm, .. } = dev.bar_backing(DOORBELL_BAR) else { panic!() };
        Rig { dev, mem, irqs, db: shm, seq: 0 }
    }

    impl Rig {
        fn run(&mut self, op: u32, addr: u64, len: u32, seed: u32, vector: u32) -> (u32, u32) {
            self.seq += 1;
            self.db.write32(DB_OPCODE, op);
            self.db.write32(DB_ADDR_LO, addr as u32);
            self.db.write32(DB_ADDR_HI, (addr >> 32) as u32);
            self.db.write32(DB_LEN, len);
            self.db.write32(DB_SEED, seed);
            self.db.write32(DB_VECTOR, vector);
            self.db.write32(DB_SEQ, self.seq);
            let t = Instant::now();
            while self.db.read32(DB_DONE_SEQ) != self.seq {
                assert!(t.elapsed() < Duration::from_secs(10), "device did not complete");
                std::thread::yield_now();
            }
            (self.db.read32(DB_DONE_STATUS), self.db.read32(DB_DONE_RESULT))
        }

        fn reg(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.bar_read(REG_BAR, off, &mut b);
            u32::from_le_bytes(b)
        }
    }

    #[test]
    fn identity_scratch_and_masks() {
        let mut r = rig();
        assert_eq!(r.reg(REG_ID), ID_VALUE);
        r.dev.bar_write(REG_BAR, REG_ID, &0u32.to_le_bytes());
        assert_eq!(r.reg(REG_ID), ID_VALUE, "read-only");
        r.dev.bar_write(REG_BAR, REG_SCRATCH, &0x1234_5678u32.to_le_bytes());
        assert_eq!(r.reg(REG_SCRATCH), 0x1234_5678);
        r.dev.bar_write(REG_BAR, 0x7fc, &1u32.to_le_bytes());
        r.dev.bar_write(REG_BAR, REG_SCRATCH, &[1, 2]);
        assert_eq!(r.dev.counters().snapshot().bad_register_writes, 2);
    }

    #[test]
    fn dma_both_ways_and_msix() {
        let mut r = rig();
        let (st, _) = r.run(OP_WRITE_PATTERN, 0x10_0000 + 4000, 9000, 7, 1);
        assert_eq!(st, CMD_OK);
        let mut buf = vec![0u8; 9000];
        pcie_model::DmaSpace::read(&*r.mem, 0x10_0000 + 4000, &mut buf).unwrap();
        assert!(buf.iter().enumerate().all(|(i, b)| *b == pattern_byte(7, i)));
        assert_eq!(r.irqs.take(), vec![1]);
        let data: Vec<u8> = (0..5000).map(|i| (i * 3) as u8).collect();
        pcie_model::DmaSpace::write(&*r.mem, 0x18_0000, &data).unwrap();
        let (st, res) = r.run(OP_READ_CHECKSUM, 0x18_0000, 5000, 0, NO_VECTOR);
        assert_eq!((st, res), (CMD_OK, fnv1a32(&data)));
        assert!(r.irqs.take().is_empty());
        assert_eq!(r.reg(REG_COMMANDS), 2);
        assert_eq!(r.reg(REG_STATUS) & STATUS_DONE, STATUS_DONE);
        r.dev.bar_write(REG_BAR, REG_STATUS, &STATUS_DONE.to_le_bytes());
        assert_eq!(r.reg(REG_STATUS), 0, "write 1 to clear");
        let c = r.dev.counters().snapshot();
        assert_eq!((c.dma_writes, c.dma_write_bytes, c.dma_reads, c.irqs), (1, 9000, 1, 1));
    }

    #[test]
    fn bad_commands_are_counted_and_the_device_keeps_serving() {
        let mut r = rig();
        assert_eq!(r.run(OP_WRITE_PATTERN, 0xdead_0000_0000, 64, 0, 0).0, CMD_DMA_ERROR);
        assert_eq!(r.run(99, 0x10_0000, 64, 0, 0).0, CMD_BAD);
        assert_eq!(r.run(OP_READ_CHECKSUM, 0x10_0000, MAX_DMA_LEN + 1, 0, 0).0, CMD_BAD);
        assert_eq!(r.run(OP_WRITE_PATTERN, 0x10_0000, 64, 0, 77).0, CMD_OK, "bad vector still completes");
        assert_eq!(r.reg(REG_DMA_ERRORS), 1);
        assert_eq!(r.reg(REG_BAD_COMMANDS), 2);
        assert_ne!(r.reg(REG_STATUS) & STATUS_DMA_ERROR, 0);
        let c = r.dev.counters().snapshot();
        assert_eq!(c.dma_errors, 1);
        assert_eq!(r.run(OP_WRITE_PATTERN, 0x10_0000, 64, 1, 0).0, CMD_OK);
    }

    #[test]
    fn reset_and_reattach() {
        let mut r = rig();
        r.run(OP_WRITE_PATTERN, 0x10_0000, 64, 1, NO_VECTOR);
        r.dev.detach();
        r.dev.reset();
        assert_eq!(r.reg(REG_COMMANDS), 0);
        assert_eq!(r.db.read32(DB_DONE_SEQ), 0);
        let dma = Dma::new(r.mem.clone(), r.dev.counters(), Arc::new(AtomicBool::new(true)));
        r.dev.attach(DeviceContext { dma, irq: r.irqs.clone() });
        r.seq = 0;
        assert_eq!(r.run(OP_WRITE_PATTERN, 0x10_0000, 64, 1, NO_VECTOR).0, CMD_OK);
    }
}
