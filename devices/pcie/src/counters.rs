//! The one accounting mechanism every model reports through: TLP-equivalents by kind
//! (MMIO read/write, DMA read/write, interrupt) with bytes, split by class, plus errors.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a DMA transfer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaClass {
    /// Payload: packet bytes, buffers the application asked for.
    Data,
    /// Interface metadata: descriptors, notifications, completions.
    Metadata,
}

/// Live counters of one function. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Counters {
    mmio_reads: AtomicU64,
    mmio_read_bytes: AtomicU64,
    mmio_writes: AtomicU64,
    mmio_write_bytes: AtomicU64,
    dma_reads: AtomicU64,
    dma_read_bytes: AtomicU64,
    dma_read_meta_bytes: AtomicU64,
    dma_writes: AtomicU64,
    dma_write_bytes: AtomicU64,
    dma_write_meta_bytes: AtomicU64,
    irqs: AtomicU64,
    irqs_dropped: AtomicU64,
    dma_errors: AtomicU64,
    bad_register_writes: AtomicU64,
}

/// A point-in-time copy of [`Counters`], as reported in JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Trapped MMIO reads (register reads that went through the transport).
    pub mmio_reads: u64,
    /// Bytes of trapped MMIO reads.
    pub mmio_read_bytes: u64,
    /// Trapped MMIO writes.
    pub mmio_writes: u64,
    /// Bytes of trapped MMIO writes.
    pub mmio_write_bytes: u64,
    /// DMA reads the device issued.
    pub dma_reads: u64,
    /// Bytes read by DMA (all classes).
    pub dma_read_bytes: u64,
    /// Of those, metadata bytes.
    pub dma_read_meta_bytes: u64,
    /// DMA writes the device issued.
    pub dma_writes: u64,
    /// Bytes written by DMA (all classes).
    pub dma_write_bytes: u64,
    /// Of those, metadata bytes.
    pub dma_write_meta_bytes: u64,
    /// Interrupts delivered.
    pub irqs: u64,
    /// Interrupts that could not be delivered (vector not set up by the driver).
    pub irqs_dropped: u64,
    /// DMA accesses refused: address not mapped, or bus mastering off.
    pub dma_errors: u64,
    /// Register writes the device rejected (bad value, read-only register, bad offset).
    pub bad_register_writes: u64,
}

impl Counters {
    /// Counts a trapped MMIO read of `bytes`.
    pub fn mmio_read(&self, bytes: usize) {
        self.mmio_reads.fetch_add(1, Relaxed);
        self.mmio_read_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts a trapped MMIO write of `bytes`.
    pub fn mmio_write(&self, bytes: usize) {
        self.mmio_writes.fetch_add(1, Relaxed);
        self.mmio_write_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts a DMA read.
    pub fn dma_read(&self, bytes: usize, class: DmaClass) {
        self.dma_reads.fetch_add(1, Relaxed);
        self.dma_read_bytes.fetch_add(bytes as u64, Relaxed);
        if class == DmaClass::Metadata {
            self.dma_read_meta_bytes.fetch_add(bytes as u64, Relaxed);
        }
    }

    /// Counts a DMA write.
    pub fn dma_write(&self, bytes: usize, class: DmaClass) {
        self.dma_writes.fetch_add(1, Relaxed);
        self.dma_write_bytes.fetch_add(bytes as u64, Relaxed);
        if class == DmaClass::Metadata {
            self.dma_write_meta_bytes.fetch_add(bytes as u64, Relaxed);
        }
    }

    /// Counts a delivered interrupt.
    pub fn irq(&self) {
        self.irqs.fetch_add(1, Relaxed);
    }

    /// Counts an interrupt that had nowhere to go.
    pub fn irq_dropped(&self) {
        self.irqs_dropped.fetch_add(1, Relaxed);
    }

    /// Counts a refused DMA access.
    pub fn dma_error(&self) {
        self.dma_errors.fetch_add(1, Relaxed);
    }

    /// Counts a rejected register write.
    pub fn bad_register_write(&self) {
        self.bad_register_writes.fetch_add(1, Relaxed);
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            mmio_reads: self.mmio_reads.load(Relaxed),
            mmio_read_bytes: self.mmio_read_bytes.load(Relaxed),
            mmio_writes: self.mmio_writes.load(Relaxed),
            mmio_write_bytes: self.mmio_write_bytes.load(Relaxed),
            dma_reads: self.dma_reads.load(Relaxed),
            dma_read_bytes: self.dma_read_bytes.load(Relaxed),
            dma_read_meta_bytes: self.dma_read_meta_bytes.load(Relaxed),
            dma_writes: self.dma_writes.load(Relaxed),
            dma_write_bytes: self.dma_write_bytes.load(Relaxed),
            dma_write_meta_bytes: self.dma_write_meta_bytes.load(Relaxed),
            irqs: self.irqs.load(Relaxed),
            irqs_dropped: self.irqs_dropped.load(Relaxed),
            dma_errors: self.dma_errors.load(Relaxed),
            bad_register_writes: self.bad_register_writes.load(Relaxed),
        }
    }
}

impl CountersSnapshot {
    /// Counts accumulated since `earlier` (for per-phase reports).
    pub fn since(&self, earlier: &CountersSnapshot) -> CountersSnapshot {
        CountersSnapshot {
            mmio_reads: self.mmio_reads - earlier.mmio_reads,
            mmio_read_bytes: self.mmio_read_bytes - earlier.mmio_read_bytes,
            mmio_writes: self.mmio_writes - earlier.mmio_writes,
            mmio_write_bytes: self.mmio_write_bytes - earlier.mmio_write_bytes,
            dma_reads: self.dma_reads - earlier.dma_reads,
            dma_read_bytes: self.dma_read_bytes - earlier.dma_read_bytes,
            dma_read_meta_bytes: self.dma_read_meta_bytes - earlier.dma_read_meta_bytes,
            dma_writes: self.dma_writes - earlier.dma_writes,
            dma_write_bytes: self.dma_write_bytes - earlier.dma_write_bytes,
            dma_write_meta_bytes: self.dma_write_meta_bytes - earlier.dma_write_meta_bytes,
            irqs: self.irqs - earlier.irqs,
            irqs_dropped: self.irqs_dropped - earlier.irqs_dropped,
            dma_errors: self.dma_errors - earlier.dma_errors,
            bad_register_writes: self.bad_register_writes - earlier.bad_register_writes,
        }
    }
}
