//! The smoke driver: exercises every path of the testbed against the smoke device
//! (trapped registers, the shared doorbell page, DMA both ways, MSI-X, a refused DMA).

use crate::report::Report;
use device_access::{Bar, DeviceAccess, DmaOptions};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::smoke::*;

/// Parameters the host chooses, so it can check the device saw them.
#[derive(Clone, Copy, Debug)]
pub struct SmokeParams {
    /// Value written to the scratch register.
    pub scratch: u32,
    /// Seed of the pattern the device writes.
    pub seed: u32,
    /// Pause after the first DMA, in milliseconds (lets a test kill the guest while it
    /// holds DMA mappings and interrupts).
    pub hold_ms: u32,
}

const TIMEOUT: Duration = Duration::from_secs(20);
const VECTOR: u32 = 1;

struct Doorbell {
    bar: Bar,
    seq: u32,
    /// Register writes into the page while it is memory-mapped (the device polls it and
    /// cannot count them; the host adds them to its PCIe accounting).
    polled_writes: u64,
}

impl Doorbell {
    /// Posts a command and waits for its completion; returns (status, result).
    fn run(&mut self, op: u32, addr: u64, len: u32, seed: u32, vector: u32) -> Result<(u32, u32), String> {
        let polled = self.bar.is_mapped(0, 4096);
        let mut writes = 0u64;
        let mut w = |off, v| {
            writes += 1;
            self.bar.write32(off, v).map_err(|e| e.to_string())
        };
        w(DB_OPCODE, op)?;
        w(DB_ADDR_LO, addr as u32)?;
        w(DB_ADDR_HI, (addr >> 32) as u32)?;
        w(DB_LEN, len)?;
        w(DB_SEED, seed)?;
        w(DB_VECTOR, vector)?;
        self.seq = self.seq.wrapping_add(1);
        fence(Ordering::Release);
        w(DB_SEQ, self.seq)?;
        if polled {
            self.polled_writes += writes;
        }
        let start = Instant::now();
        loop {
            let done = self.bar.read32(DB_DONE_SEQ).map_err(|e| e.to_string())?;
            if done == self.seq {
                break;
            }
            if start.elapsed() > TIMEOUT {
                return Err(format!(
                    "command {} not completed after {TIMEOUT:?} (done_seq {done})",
                    self.seq
                ));
            }
            std::thread::yield_now();
        }
        fence(Ordering::Acquire);
        let st = self.bar.read32(DB_DONE_STATUS).map_err(|e| e.to_string())?;
        let res = self.bar.read32(DB_DONE_RESULT).map_err(|e| e.to_string())?;
        Ok((st, res))
    }
}

/// Runs the smoke sequence on `dev`; never panics, every failure lands in the report.
pub fn run(dev: &mut dyn DeviceAccess, p: SmokeParams) -> Report {
    let mut r = Report::new("smoke", dev.transport());
    if let Err(e) = steps(dev, p, &mut r) {
        r.fail("aborted", e);
    }
    r
}

fn steps(dev: &mut dyn DeviceAccess, p: SmokeParams, r: &mut Report) -> Result<(), String> {
    let regs = dev.bar(REG_BAR).map_err(|e| e.to_string())?;
    let id = regs.read32(REG_ID).map_err(|e| e.to_string())?;
    r.check("id", id == ID_VALUE, format!("{id:#010x}"));
    r.value("id", id);

    regs.write32(REG_SCRATCH, p.scratch).map_err(|e| e.to_string())?;
    let back = regs.read32(REG_SCRATCH).map_err(|e| e.to_string())?;
    r.check("scratch", back == p.scratch, format!("wrote {:#x}, read {back:#x}", p.scratch));
    r.value("scratch", back);

    let db_bar = dev.bar(DOORBELL_BAR).map_err(|e| e.to_string())?;
    r.check("doorbell_mapped", db_bar.is_mapped(0, 4096), "BAR2 is memory-mapped shared memory");
    let mut db = Doorbell {
        seq: db_bar.read32(DB_DONE_SEQ).map_err(|e| e.to_string())?,
        bar: db_bar,
        polled_writes: 0,
    };

    let irqs = dev.enable_msix(MSIX_VECTORS as u32).map_err(|e| e.to_string())?;
    let buf = dev.alloc_dma(64 << 10, DmaOptions::default()).map_err(|e| e.to_string())?;
    r.value("dma_iova", buf.iova());

    // Device → memory.
    let (off, len) = (100usize, 12345usize);
    buf.fill(0);
    let (st, _) = db.run(OP_WRITE_PATTERN, buf.iova() + off as u64, len as u32, p.seed, VECTOR)?;
    let mem = buf.to_vec(0, buf.len());
    let got = &mem[off..off + len];
    let bad = got.iter().enumerate().filter(|(i, b)| **b != pattern_byte(p.seed, *i)).count();
    let untouched = mem[..off].iter().all(|b| *b == 0) && mem[off + len..].iter().all(|b| *b == 0);
    r.check(
        "dma_to_memory",
        st == CMD_OK && bad == 0 && untouched,
        format!("status {st}, {bad} wrong bytes of {len}, outside untouched: {untouched}"),
    );

    if p.hold_ms > 0 {
        eprintln!("smoke: holding for {} ms", p.hold_ms);
        std::thread::sleep(Duration::from_millis(p.hold_ms as u64));
    }
    let fired = irqs[VECTOR as usize].wait(TIMEOUT).map_err(|e| e.to_string())?;
    r.check("msix", fired >= 1, format!("vector {VECTOR} fired {fired} time(s)"));
    r.value("msix_count", fired);

    // Memory → device.
    let data: Vec<u8> =
        (0..40_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ p.seed as u8).collect();
    buf.write_slice(&data, 0);
    fence(Ordering::Release);
    let (st, sum) = db.run(OP_READ_CHECKSUM, buf.iova(), data.len() as u32, 0, NO_VECTOR)?;
    let want = fnv1a32(&data);
    r.check(
        "dma_from_memory",
        st == CMD_OK && sum == want,
        format!("status {st}, checksum {sum:#x}, expected {want:#x}"),
    );
    r.value("checksum", want);

    // A DMA outside mapped memory is refused and counted, and the device keeps serving.
    let errors_before = regs.read32(REG_DMA_ERRORS).map_err(|e| e.to_string())?;
    let (st, _) = db.run(OP_WRITE_PATTERN, 0x7fff_0000_0000, 64, 0, NO_VECTOR)?;
    let errors_after = regs.read32(REG_DMA_ERRORS).map_err(|e| e.to_string())?;
    r.check(
        "dma_refused",
        st == CMD_DMA_ERROR && errors_after == errors_before + 1,
        format!("status {st}, DMA error counter {errors_before} -> {errors_after}"),
    );
    let (st, _) = db.run(OP_WRITE_PATTERN, buf.iova(), 64, p.seed, NO_VECTOR)?;
    r.check("serves_after_error", st == CMD_OK, format!("status {st}"));
    let commands = regs.read32(REG_COMMANDS).map_err(|e| e.to_string())?;
    r.value("commands", commands);
    r.value("doorbell_writes", db.polled_writes);
    Ok(())
}
