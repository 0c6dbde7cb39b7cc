//! The accelerators' legacy driver: a submission ring of descriptors and a phase-tagged
//! completion ring in DMA memory, one doorbell write per submission batch
//! (`testbed_regs::accel`). The same code drives the crypto and the ML device; the
//! device says which it is in its FUNCTION register.
//!
//! ```no_run
//! # fn f(access: Box<dyn device_access::DeviceAccess>) -> accel_driver::Result<()> {
//! use accel_driver::{Accel, Command};
//! let mut crypto = Accel::open(access, 64)?;
//! let tag = crypto.submit(&Command::decrypt(0x1000, 824, 0x2000, 2048, [0u8; 32]))?;
//! let done = crypto.wait(std::time::Duration::from_secs(1))?;
//! assert_eq!(done.tag, tag);
//! # Ok(()) }
//! ```

use device_access::{Bar, DeviceAccess, DmaBuffer, DmaOptions};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::accel::{self as regs, cqe, db, desc, reg, status};

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error(transparent)]
    Access(#[from] device_access::Error),
    /// The device is not one of ours.
    #[error("not an accelerator: ID register reads {0:#x}")]
    NotAnAccelerator(u32),
    /// The device refused the ring configuration.
    #[error("the device refused a ring of {0} entries (ERROR_STATUS {1:#x})")]
    RingRefused(u32, u32),
    /// The device refused the stream settings.
    #[error("the device refused the stream settings (ERROR_STATUS {0:#x})")]
    StreamRefused(u32),
    /// The ring was handed to another driver (a switch).
    #[error("the ring is driven by someone else now (delegated)")]
    Delegated,
    /// Every slot holds a command not yet completed.
    #[error("the submission ring is full ({0} commands in flight)")]
    RingFull(u32),
    /// Nothing completed in time.
    #[error("no completion within {0:?} ({1} in flight)")]
    Timeout(Duration, u32),
    /// A bad ring size was asked for.
    #[error("ring entries must be a power of two in 2..=4096, not {0}")]
    BadEntries(u32),
}

/// Result of driver calls.
pub type Result<T> = std::result::Result<T, Error>;

/// What the device computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// AES-256-GCM.
    Crypto,
    /// Int8 MLP inference.
    Ml,
    /// Something this driver does not know.
    Unknown(u32),
}

/// A command for the submission ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Opcode (`testbed_regs::accel::desc::OP_*`).
    pub op: u8,
    /// Input address (IOVA).
    pub src: u64,
    /// Input bytes.
    pub len: u32,
    /// Output address (IOVA).
    pub dst: u64,
    /// Output capacity.
    pub cap: u32,
    /// Per-command state: the key (crypto) or the model ID in the first 4 bytes (ML).
    pub state: [u8; 32],
}

impl Command {
    /// Decrypt the sealed record at `src` into `dst` with `key`.
    pub fn decrypt(src: u64, len: u32, dst: u64, cap: u32, key: [u8; 32]) -> Self {
        Command { op: desc::OP_DECRYPT, src, len, dst, cap, state: key }
    }

    /// Seal the plain record at `src` into `dst` with `key`.
    pub fn encrypt(src: u64, len: u32, dst: u64, cap: u32, key: [u8; 32]) -> Self {
        Command { op: desc::OP_ENCRYPT, src, len, dst, cap, state: key }
    }

    /// Run model `model` on the image record at `src`, writing the result record to `dst`.
    pub fn infer(src: u64, len: u32, dst: u64, cap: u32, model: u32) -> Self {
        let mut state = [0u8; 32];
        state[..4].copy_from_slice(&model.to_le_bytes());
        Command { op: desc::OP_INFER, src, len, dst, cap, state }
    }
}

/// The streaming interface's settings (see `testbed_regs::accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Opcode applied to every record.
    pub op: u8,
    /// The key (crypto).
    pub key: [u8; 32],
    /// The model ID (ML).
    pub model: u32,
    /// Where output records go (a 64-byte aligned ring, e.g. a switch's stream window).
    pub dest: u64,
    /// Size of that ring (a multiple of 64).
    pub dest_size: u32,
}

/// A completed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The tag [`Accel::submit`] returned.
    pub tag: u32,
    /// Status (`testbed_regs::accel::status`).
    pub status: u16,
    /// Output bytes written.
    pub out_len: u32,
}

impl Completion {
    /// Whether the command succeeded.
    pub fn ok(&self) -> bool {
        self.status == status::OK
    }

    /// The status's name.
    pub fn status_name(&self) -> &'static str {
        status::name(self.status)
    }
}

/// An accelerator driven through its legacy ring.
pub struct Accel {
    bar0: Bar,
    db: Bar,
    sq: DmaBuffer,
    cq: DmaBuffer,
    entries: u32,
    tail: u32,
    /// Next completion slot to look at.
    cq_head: u32,
    phase: u8,
    in_flight: u32,
    next_tag: u32,
    function: Function,
    doorbells: u64,
    delegated: bool,
    /// Kept last: the DMA buffers above unmap through it.
    access: Box<dyn DeviceAccess>,
}

impl Accel {
    /// Opens the device behind `access` and starts a ring of `entries` slots.
    pub fn open(mut access: Box<dyn DeviceAccess>, entries: u32) -> Result<Accel> {
        if !entries.is_power_of_two() || !(2..=reg::MAX_ENTRIES).contains(&entries) {
            return Err(Error::BadEntries(entries));
        }
        let bar0 = access.bar(regs::REG_BAR)?;
        let db = access.bar(regs::DB_BAR)?;
        let id = bar0.read32(reg::ID)?;
        if id != reg::ID_VALUE {
            return Err(Error::NotAnAccelerator(id));
        }
        let function = match bar0.read32(reg::FUNCTION)? {
            reg::FUNCTION_CRYPTO => Function::Crypto,
            reg::FUNCTION_ML => Function::Ml,
            f => Function::Unknown(f),
        };
        let sq = access.alloc_dma(entries as usize * desc::SIZE, DmaOptions::default())?;
        let cq = access.alloc_dma(entries as usize * cqe::SIZE, DmaOptions::default())?;
        sq.fill(0);
        cq.fill(0);
        bar0.write32(reg::CTRL, 0)?;
        bar0.write32(reg::SQ_BASE_LO, sq.iova() as u32)?;
        bar0.write32(reg::SQ_BASE_HI, (sq.iova() >> 32) as u32)?;
        bar0.write32(reg::CQ_BASE_LO, cq.iova() as u32)?;
        bar0.write32(reg::CQ_BASE_HI, (cq.iova() >> 32) as u32)?;
        bar0.write32(reg::RING_ENTRIES, entries)?;
        bar0.write32(reg::CTRL, reg::CTRL_ENABLE)?;
        if bar0.read32(reg::STATUS)? & reg::STATUS_ENABLED == 0 {
            return Err(Error::RingRefused(entries, bar0.read32(reg::ERROR_STATUS)?));
        }
        Ok(Accel {
            bar0,
            db,
            sq,
            cq,
            entries,
            tail: 0,
            cq_head: 0,
            phase: 1,
            in_flight: 0,
            next_tag: 1,
            function,
            doorbells: 0,
            delegated: false,
            access,
        })
    }

    /// What the device computes.
    pub fn function(&self) -> Function {
        self.function
    }

    /// The transport.
    pub fn access(&mut self) -> &mut dyn DeviceAccess {
        self.access.as_mut()
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Doorbell writes made so far.
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    /// Hands the legacy ring to another driver: the rings at `sq` and `cq` (device
    /// addresses, e.g. in a switch's memory) of `entries` slots. This driver then no
    /// longer submits.
    pub fn delegate_ring(&mut self, sq: u64, cq: u64, entries: u32) -> Result<()> {
        let b = &self.bar0;
        b.write32(reg::CTRL, 0)?;
        b.write32(reg::SQ_BASE_LO, sq as u32)?;
        b.write32(reg::SQ_BASE_HI, (sq >> 32) as u32)?;
        b.write32(reg::CQ_BASE_LO, cq as u32)?;
        b.write32(reg::CQ_BASE_HI, (cq >> 32) as u32)?;
        b.write32(reg::RING_ENTRIES, entries)?;
        b.write32(reg::CTRL, reg::CTRL_ENABLE)?;
        if b.read32(reg::STATUS)? & reg::STATUS_ENABLED == 0 {
            return Err(Error::RingRefused(entries, b.read32(reg::ERROR_STATUS)?));
        }
        self.delegated = true;
        Ok(())
    }

    /// Writes `cmd` into the next slot without ringing; returns its tag.
    pub fn post(&mut self, cmd: &Command) -> Result<u32> {
        if self.delegated {
            return Err(Error::Delegated);
        }
        if self.in_flight == self.entries - 1 {
            return Err(Error::RingFull(self.in_flight));
        }
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let mut d = [0u8; desc::SIZE];
        d[desc::OPCODE] = cmd.op;
        d[desc::TAG..desc::TAG + 4].copy_from_slice(&tag.to_le_bytes());
        d[desc::SRC_ADDR..desc::SRC_ADDR + 8].copy_from_slice(&cmd.src.to_le_bytes());
        d[desc::SRC_LEN..desc::SRC_LEN + 4].copy_from_slice(&cmd.len.to_le_bytes());
        d[desc::DST_CAP..desc::DST_CAP + 4].copy_from_slice(&cmd.cap.to_le_bytes());
        d[desc::DST_ADDR..desc::DST_ADDR + 8].copy_from_slice(&cmd.dst.to_le_bytes());
        d[desc::STATE..].copy_from_slice(&cmd.state);
        let at = self.tail as usize * desc::SIZE;
        self.sq.write_slice(&d, at);
        self.tail = (self.tail + 1) % self.entries;
        self.in_flight += 1;
        Ok(tag)
    }

    /// Tells the device about every posted command (one doorbell write).
    pub fn ring(&mut self) -> Result<()> {
        // The descriptors must be visible before the tail that announces them.
        fence(Ordering::Release);
        self.db.write32(db::SQ_TAIL, self.tail)?;
        self.doorbells += 1;
        Ok(())
    }

    /// Posts `cmd` and rings; returns its tag.
    pub fn submit(&mut self, cmd: &Command) -> Result<u32> {
        let tag = self.post(cmd)?;
        self.ring()?;
        Ok(tag)
    }

    /// The next completion, if the device wrote it.
    pub fn poll(&mut self) -> Option<Completion> {
        if self.in_flight == 0 {
            return None;
        }
        let at = self.cq_head as usize * cqe::SIZE;
        // The device writes the phase byte: a volatile load.
        let phase: u8 = self.cq.read_obj(at + cqe::PHASE);
        if phase != self.phase {
            return None;
        }
        fence(Ordering::Acquire);
        let mut e = [0u8; cqe::SIZE];
        self.cq.read_slice(&mut e, at);
        let u32_at = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let c = Completion {
            tag: u32_at(cqe::TAG),
            status: u16::from_le_bytes([e[cqe::STATUS], e[cqe::STATUS + 1]]),
            out_len: u32_at(cqe::OUT_LEN),
        };
        self.cq_head = (self.cq_head + 1) % self.entries;
        if self.cq_head == 0 {
            self.phase ^= 1;
        }
        self.in_flight -= 1;
        Some(c)
    }

    /// Busy-polls for the next completion, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Completion> {
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.poll() {
                return Ok(c);
            }
            spins += 1;
            if spins.is_multiple_of(1024) {
                if t.elapsed() > timeout {
                    return Err(Error::Timeout(timeout, self.in_flight));
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }

    /// Starts the streaming interface with `c` (records written to the device's stream
    /// window are processed in order, each output pushed to `c.dest`).
    pub fn start_stream(&mut self, c: &StreamConfig) -> Result<()> {
        let b = &self.bar0;
        b.write32(reg::STREAM_CTRL, 0)?;
        b.write32(reg::STREAM_OP, c.op as u32)?;
        b.write32(reg::STREAM_MODEL, c.model)?;
        for (i, w) in c.key.chunks(4).enumerate() {
            b.write32(reg::STREAM_KEY + 4 * i as u64, u32::from_le_bytes([w[0], w[1], w[2], w[3]]))?;
        }
        b.write32(reg::STREAM_DEST_LO, c.dest as u32)?;
        b.write32(reg::STREAM_DEST_HI, (c.dest >> 32) as u32)?;
        b.write32(reg::STREAM_DEST_SIZE, c.dest_size)?;
        b.write32(reg::STREAM_CTRL, 1)?;
        if b.read32(reg::STATUS)? & reg::STATUS_STREAM == 0 {
            return Err(Error::StreamRefused(b.read32(reg::ERROR_STATUS)?));
        }
        Ok(())
    }

    /// Stops the streaming interface.
    pub fn stop_stream(&mut self) -> Result<()> {
        self.bar0.write32(reg::STREAM_CTRL, 0)?;
        Ok(())
    }

    /// The device's counters by name.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        Ok(self.bar0.read_counters(reg::COUNTERS, &reg::counter::NAMES)?)
    }
}

impl Drop for Accel {
    fn drop(&mut self) {
        // Stop the ring before its memory goes away.
        let _ = self.bar0.write32(reg::CTRL, 0);
    }
}
