//! The one accounting mechanism every model reports through: TLP-equivalents by kind
//! (MMIO read/write, DMA read/write, interrupt) with bytes, split by class, plus errors.
//!
//! Besides the per-operation totals ([`CountersSnapshot`]), every DMA operation is also
//! split into the TLPs a PCIe link would carry (see [`crate::tlp`] for the rules)
//! at record time: [`TlpSnapshot`] keeps those TLP counts and the dword-padding bytes,
//! so nothing is stored per operation and the hot path stays a few atomic adds.

use crate::tlp::{dw_padding, TlpRules, MSIX_BYTES};
use crate::trace::{OpKind, OpRole, TraceTap};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

/// What a DMA transfer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaClass {
    /// Payload: packet bytes, buffers the application asked for.
    Data,
    /// Interface metadata: descriptors, notifications, completions.
    Metadata,
}

impl DmaClass {
    #[inline]
    fn index(self) -> usize {
        match self {
            DmaClass::Data => 0,
            DmaClass::Metadata => 1,
        }
    }
}

/// Per-class TLP accumulators (index: [`DmaClass::index`]), fed by every DMA operation.
#[derive(Debug, Default)]
struct TlpAccumulator {
    dma_write_tlps: [AtomicU64; 2],
    dma_write_pad_bytes: [AtomicU64; 2],
    dma_read_requests: [AtomicU64; 2],
    dma_read_completions: [AtomicU64; 2],
    dma_read_pad_bytes: [AtomicU64; 2],
    doorbell_writes: AtomicU64,
    doorbell_bytes: AtomicU64,
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
    dma_denied: AtomicU64,
    bad_register_writes: AtomicU64,
    /// TLP-level accounting of DMA operations and driver-reported doorbells.
    tlp: TlpAccumulator,
    /// The splitting rules of `tlp`; unset means [`TlpRules::default`].
    tlp_rules: OnceLock<TlpRules>,
    /// Set while `tap` holds an operation trace to record into.
    tracing: AtomicBool,
    tap: Mutex<Option<TraceTap>>,
    /// Who writes the registers this function's polling observes, when not the CPU.
    mmio_source: Mutex<Option<std::sync::Arc<str>>>,
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
    /// DMA accesses refused: address not mapped, bus mastering off, or a write a switch
    /// on the path denied.
    pub dma_errors: u64,
    /// Of those, writes a switch denied (`DmaError::Denied` of the function model): not counted as DMA
    /// writes, and traced as denied.
    pub dma_denied: u64,
    /// Register writes the device rejected (bad value, read-only register, bad offset).
    pub bad_register_writes: u64,
}

/// A point-in-time copy of the TLP-level accounting of [`Counters`]: what the DMA
/// operations became on the link under [`TlpSnapshot::rules`], plus doorbells the driver
/// reported. Turned into bytes and link figures by [`crate::summary`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlpSnapshot {
    /// The splitting rules the counts were made with.
    pub rules: TlpRules,
    /// Memory-write TLPs of DMA writes (all classes).
    pub dma_write_tlps: u64,
    /// Of those, TLPs of metadata writes.
    pub dma_write_meta_tlps: u64,
    /// Dword-alignment padding carried by DMA writes (all classes).
    pub dma_write_pad_bytes: u64,
    /// Of that, padding of metadata writes.
    pub dma_write_meta_pad_bytes: u64,
    /// Memory-read request TLPs of DMA reads (all classes).
    pub dma_read_requests: u64,
    /// Of those, requests of metadata reads.
    pub dma_read_meta_requests: u64,
    /// Completion-with-data TLPs answering DMA reads (all classes).
    pub dma_read_completions: u64,
    /// Of those, completions of metadata reads.
    pub dma_read_meta_completions: u64,
    /// Dword-alignment padding carried by read completions (all classes).
    pub dma_read_pad_bytes: u64,
    /// Of that, padding of metadata reads.
    pub dma_read_meta_pad_bytes: u64,
    /// Doorbell writes reported by the driver side ([`Counters::doorbell_writes`]).
    pub doorbell_writes: u64,
    /// Bytes of those doorbell writes.
    pub doorbell_bytes: u64,
}

impl TlpSnapshot {
    /// Counts accumulated since `earlier` (the rules are this snapshot's).
    pub fn since(&self, earlier: &TlpSnapshot) -> TlpSnapshot {
        TlpSnapshot {
            rules: self.rules,
            dma_write_tlps: self.dma_write_tlps - earlier.dma_write_tlps,
            dma_write_meta_tlps: self.dma_write_meta_tlps - earlier.dma_write_meta_tlps,
            dma_write_pad_bytes: self.dma_write_pad_bytes - earlier.dma_write_pad_bytes,
            dma_write_meta_pad_bytes: self.dma_write_meta_pad_bytes - earlier.dma_write_meta_pad_bytes,
            dma_read_requests: self.dma_read_requests - earlier.dma_read_requests,
            dma_read_meta_requests: self.dma_read_meta_requests - earlier.dma_read_meta_requests,
            dma_read_completions: self.dma_read_completions - earlier.dma_read_completions,
            dma_read_meta_completions: self.dma_read_meta_completions - earlier.dma_read_meta_completions,
            dma_read_pad_bytes: self.dma_read_pad_bytes - earlier.dma_read_pad_bytes,
            dma_read_meta_pad_bytes: self.dma_read_meta_pad_bytes - earlier.dma_read_meta_pad_bytes,
            doorbell_writes: self.doorbell_writes - earlier.doorbell_writes,
            doorbell_bytes: self.doorbell_bytes - earlier.doorbell_bytes,
        }
    }
}

impl Counters {
    /// Counters whose TLP accounting splits DMA operations by `rules` (see
    /// [`crate::link::LinkConfig::tlp_rules`]) instead of the defaults.
    pub fn with_tlp_rules(rules: TlpRules) -> Self {
        let c = Counters::default();
        let _ = c.tlp_rules.set(rules);
        c
    }

    /// Fixes the TLP splitting rules of counters that are already shared. Returns false
    /// (and changes nothing) when rules were already set. Set them before any traffic:
    /// operations counted earlier were split by the defaults.
    pub fn set_tlp_rules(&self, rules: TlpRules) -> bool {
        self.tlp_rules.set(rules).is_ok()
    }

    /// The rules DMA operations are split by.
    #[inline]
    pub fn tlp_rules(&self) -> TlpRules {
        self.tlp_rules.get().copied().unwrap_or_default()
    }

    /// Records every later operation into `tap`'s trace (see [`crate::trace`]).
    pub fn trace_to(&self, tap: TraceTap) {
        *self.tap.lock().unwrap_or_else(|e| e.into_inner()) = Some(tap);
        self.tracing.store(true, Relaxed);
    }

    /// Stops recording into a trace.
    pub fn untrace(&self) {
        self.tracing.store(false, Relaxed);
        *self.tap.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Records a logical operation in the trace, if one is attached. Devices call it for
    /// what only they can see: a doorbell or head write observed in a polled register.
    #[inline]
    pub fn trace_op(&self, kind: OpKind, role: OpRole, bytes: u64) {
        if self.tracing.load(Relaxed) {
            self.trace_slow(kind, role, bytes);
        }
    }

    #[cold]
    fn trace_slow(&self, kind: OpKind, role: OpRole, bytes: u64) {
        let peer = match kind {
            OpKind::MmioWr => self.mmio_source.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            _ => None,
        };
        if let Some(tap) = self.tap.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            tap.record_peer(kind, role, bytes, peer.as_deref());
        }
    }

    /// Names who writes the registers this function polls (a switch that took over the
    /// CPU's doorbells and credits); `None` is the CPU. Only the trace uses it.
    pub fn set_mmio_source(&self, source: Option<&str>) {
        *self.mmio_source.lock().unwrap_or_else(|e| e.into_inner()) = source.map(Into::into);
    }

    /// As [`Counters::dma_read_at`], for a read a switch answered from `peer` (None: host
    /// memory).
    #[inline]
    pub fn dma_read_from(&self, addr: u64, bytes: usize, class: DmaClass, peer: Option<&str>) {
        match peer {
            None => self.dma_read_at(addr, bytes, class),
            Some(p) => {
                self.count_read(addr, bytes, class);
                if self.tracing.load(Relaxed) {
                    let role = if class == DmaClass::Data { OpRole::Data } else { OpRole::Descriptor };
                    self.trace_peer(OpKind::DmaRd, role, bytes as u64, p);
                }
            }
        }
    }

    /// As [`Counters::dma_write_at`], for a write a switch delivered to `peer` (None: host
    /// memory).
    #[inline]
    pub fn dma_write_to(&self, addr: u64, bytes: usize, class: DmaClass, peer: Option<&str>) {
        match peer {
            None => self.dma_write_at(addr, bytes, class),
            Some(p) => {
                self.count_write(addr, bytes, class);
                if self.tracing.load(Relaxed) {
                    let role = if class == DmaClass::Data { OpRole::Data } else { OpRole::Completion };
                    self.trace_peer(OpKind::DmaWr, role, bytes as u64, p);
                }
            }
        }
    }

    #[cold]
    fn trace_peer(&self, kind: OpKind, role: OpRole, bytes: u64, peer: &str) {
        if let Some(tap) = self.tap.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            tap.record_routed(kind, role, bytes, peer);
        }
    }

    /// Counts a DMA read of `bytes` at guest address `addr`, with its TLPs.
    #[inline]
    pub fn dma_read_at(&self, addr: u64, bytes: usize, class: DmaClass) {
        let role = if class == DmaClass::Data { OpRole::Data } else { OpRole::Descriptor };
        self.trace_op(OpKind::DmaRd, role, bytes as u64);
        self.count_read(addr, bytes, class);
    }

    #[inline]
    fn count_read(&self, addr: u64, bytes: usize, class: DmaClass) {
        self.dma_reads.fetch_add(1, Relaxed);
        self.dma_read_bytes.fetch_add(bytes as u64, Relaxed);
        if class == DmaClass::Metadata {
            self.dma_read_meta_bytes.fetch_add(bytes as u64, Relaxed);
        }
        let (rules, len, i) = (self.tlp_rules(), bytes as u64, class.index());
        self.tlp.dma_read_requests[i].fetch_add(rules.read_requests(addr, len), Relaxed);
        self.tlp.dma_read_completions[i].fetch_add(rules.read_completions(addr, len), Relaxed);
        let pad = dw_padding(addr, len);
        if pad != 0 {
            self.tlp.dma_read_pad_bytes[i].fetch_add(pad, Relaxed);
        }
    }

    /// Counts a DMA write of `bytes` at guest address `addr`, with its TLPs.
    #[inline]
    pub fn dma_write_at(&self, addr: u64, bytes: usize, class: DmaClass) {
        let role = if class == DmaClass::Data { OpRole::Data } else { OpRole::Completion };
        self.trace_op(OpKind::DmaWr, role, bytes as u64);
        self.count_write(addr, bytes, class);
    }

    #[inline]
    fn count_write(&self, addr: u64, bytes: usize, class: DmaClass) {
        self.dma_writes.fetch_add(1, Relaxed);
        self.dma_write_bytes.fetch_add(bytes as u64, Relaxed);
        if class == DmaClass::Metadata {
            self.dma_write_meta_bytes.fetch_add(bytes as u64, Relaxed);
        }
        let (rules, len, i) = (self.tlp_rules(), bytes as u64, class.index());
        self.tlp.dma_write_tlps[i].fetch_add(rules.write_tlps(addr, len), Relaxed);
        let pad = dw_padding(addr, len);
        if pad != 0 {
            self.tlp.dma_write_pad_bytes[i].fetch_add(pad, Relaxed);
        }
    }

    /// Counts `n` 4-byte doorbell writes the driver made to registers the device polls
    /// (shared BAR pages are not trapped, and polling merges writes, so only the driver
    /// knows how many it made). Each is one posted memory write downstream.
    pub fn doorbell_writes(&self, n: u64) {
        self.doorbell_writes_of(n, 4);
    }

    /// Counts `n` doorbell writes of `bytes_each` bytes (e.g. 8 for a 64-bit register).
    pub fn doorbell_writes_of(&self, n: u64, bytes_each: u64) {
        self.tlp.doorbell_writes.fetch_add(n, Relaxed);
        self.tlp.doorbell_bytes.fetch_add(n * bytes_each, Relaxed);
    }

    /// A copy of the current TLP-level accounting.
    pub fn tlp_snapshot(&self) -> TlpSnapshot {
        let t = &self.tlp;
        let both = |a: &[AtomicU64; 2]| a[0].load(Relaxed) + a[1].load(Relaxed);
        let meta = |a: &[AtomicU64; 2]| a[1].load(Relaxed);
        TlpSnapshot {
            rules: self.tlp_rules(),
            dma_write_tlps: both(&t.dma_write_tlps),
            dma_write_meta_tlps: meta(&t.dma_write_tlps),
            dma_write_pad_bytes: both(&t.dma_write_pad_bytes),
            dma_write_meta_pad_bytes: meta(&t.dma_write_pad_bytes),
            dma_read_requests: both(&t.dma_read_requests),
            dma_read_meta_requests: meta(&t.dma_read_requests),
            dma_read_completions: both(&t.dma_read_completions),
            dma_read_meta_completions: meta(&t.dma_read_completions),
            dma_read_pad_bytes: both(&t.dma_read_pad_bytes),
            dma_read_meta_pad_bytes: meta(&t.dma_read_pad_bytes),
            doorbell_writes: t.doorbell_writes.load(Relaxed),
            doorbell_bytes: t.doorbell_bytes.load(Relaxed),
        }
    }

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

    /// Counts a DMA read. Its TLPs are counted as if it started on a 4 KiB boundary;
    /// prefer [`Counters::dma_read_at`], which knows the address.
    pub fn dma_read(&self, bytes: usize, class: DmaClass) {
        self.dma_read_at(0, bytes, class);
    }

    /// Counts a DMA write. Its TLPs are counted as if it started on a 4 KiB boundary;
    /// prefer [`Counters::dma_write_at`], which knows the address.
    pub fn dma_write(&self, bytes: usize, class: DmaClass) {
        self.dma_write_at(0, bytes, class);
    }

    /// Counts a delivered interrupt.
    pub fn irq(&self) {
        self.trace_op(OpKind::Irq, OpRole::Interrupt, MSIX_BYTES);
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

    /// Counts a DMA write of `bytes` that the switch `by` refused to route: a refused
    /// access (`dma_errors`) and a denied one (`dma_denied`), traced as a denied
    /// operation, never as a write or a routed one.
    pub fn dma_denied(&self, bytes: usize, class: DmaClass, by: &str) {
        self.dma_errors.fetch_add(1, Relaxed);
        self.dma_denied.fetch_add(1, Relaxed);
        if self.tracing.load(Relaxed) {
            let role = if class == DmaClass::Data { OpRole::Data } else { OpRole::Completion };
            if let Some(tap) = self.tap.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                tap.record_denied(OpKind::DmaWr, role, bytes as u64, by);
            }
        }
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
            dma_denied: self.dma_denied.load(Relaxed),
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
            dma_denied: self.dma_denied - earlier.dma_denied,
            bad_register_writes: self.bad_register_writes - earlier.bad_register_writes,
        }
    }
}
