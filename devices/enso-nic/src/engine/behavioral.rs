//! The behavioural Rust queue engine: pipes, notification-buffer pairs, the reactive
//! notification rule (upstream's pkt_queue_manager.sv) and the TX fetch/split/complete path.

use super::{EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RxOutcome};
use crate::packet::{tx_frame, TxFrame};
use pcie_model::DmaClass;
use testbed_regs::enso::ext::counter as c;
use testbed_regs::enso::{notif, FLIT, MAX_TX_TRANSFER, NOTIFICATION_SIZE, TX_BOUNDARY};

/// TX notifications handled per call, so one busy pair cannot starve RX for long.
pub const TX_BATCH: u32 = 256;

#[derive(Clone, Copy, Debug, Default)]
struct Pipe {
    enabled: bool,
    base: u64,
    nb: u32,
    head: u32,
    tail: u32,
    /// Upstream's "notification outstanding" bit.
    outstanding: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Nb {
    enabled: bool,
    rx_ring: u64,
    tx_ring: u64,
    rx_tail: u32,
    /// Last `rx_head` seen from software (refreshed when the ring looks full).
    rx_head: u32,
    tx_head: u32,
}

/// TX is a byte stream per pair: a frame may start in one transfer and end in the next
/// (an echo sending straight out of an RX ring splits frames at the ring's end). A
/// transfer that ends inside a frame's padding ends that frame: the next transfer starts
/// a new one.
#[derive(Clone, Debug, Default)]
struct TxStream {
    /// The start of a frame whose end has not arrived yet.
    pending: Vec<u8>,
}

/// The TX framer: cuts each pair's transfers into frames and transmits them. It is the
/// data path after the queue engine (the engine validates a send and reads its bytes), so
/// the behavioural engine and the RTL engine's wrapper share it.
#[derive(Clone, Debug)]
pub struct TxFramer {
    streams: Vec<TxStream>,
}

impl TxFramer {
    /// A framer for `nbs` notification-buffer pairs.
    pub fn new(nbs: u32) -> Self {
        TxFramer { streams: vec![TxStream::default(); nbs as usize] }
    }

    /// Forgets pair `nb`'s unfinished frame (the pair was enabled or disabled).
    pub fn reset(&mut self, nb: u32) {
        if let Some(st) = self.streams.get_mut(nb as usize) {
            *st = TxStream::default();
        }
    }

    /// Frames one transfer of pair `nb`, continuing a frame the previous one left
    /// unfinished; transmits every whole frame, counts TX_DROP_BAD_FRAME for garbage.
    pub fn push(&mut self, nb_id: u32, data: &[u8], io: &mut dyn EngineIo) {
        let Some(stream) = self.streams.get_mut(nb_id as usize) else { return };
        let mut data = data;
        let joined;
        if !stream.pending.is_empty() {
            // Finish the frame the last transfer started (at most one frame is copied).
            stream.pending.extend_from_slice(data);
            joined = std::mem::take(&mut stream.pending);
            data = &joined;
        }
        let mut off = 0;
        while off < data.len() {
            match tx_frame(&data[off..]) {
                TxFrame::Complete(flen) => {
                    io.transmit(&data[off..off + flen]);
                    off += flen.next_multiple_of(FLIT);
                }
                TxFrame::Partial => {
                    stream.pending.extend_from_slice(&data[off..]);
                    return;
                }
                TxFrame::Invalid => {
                    io.count(c::TX_DROP_BAD_FRAME, 1);
                    return;
                }
            }
        }
    }
}

/// The behavioural engine.
#[derive(Debug)]
pub struct BehavioralEngine {
    pipes: Vec<Pipe>,
    /// Stream pipes (no notifications), by pipe index.
    stream: Vec<bool>,
    nbs: Vec<Nb>,
    framer: TxFramer,
    pipe_flits: u32,
    entries: u32,
    per_packet: bool,
    /// Reused buffers: fetched TX notifications and TX transfer data.
    fetch: Vec<u8>,
    data: Vec<u8>,
}

impl BehavioralEngine {
    /// An engine for `pipes` pipes of `pipe_flits` flits and `nbs` pairs of rings with
    /// `entries` notifications each.
    pub fn new(pipes: u32, nbs: u32, pipe_flits: u32, entries: u32) -> Self {
        BehavioralEngine {
            pipes: vec![Pipe::default(); pipes as usize],
            stream: vec![false; pipes as usize],
            nbs: vec![Nb::default(); nbs as usize],
            framer: TxFramer::new(nbs),
            pipe_flits: pipe_flits.max(2),
            entries: entries.max(2),
            per_packet: false,
            fetch: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Writes an RX notification for `pipe` with `tail`; true when it was written.
    fn notify(&mut self, pipe: u32, tail: u32, io: &mut dyn EngineIo) -> bool {
        let nb_id = self.pipes[pipe as usize].nb;
        let entries = self.entries;
        let Some(nb) = self.nbs.get_mut(nb_id as usize).filter(|n| n.enabled && n.rx_ring != 0) else {
            // Nowhere to write it: the pair is not live, or its RX ring address is not set.
            io.count(c::DMA_ERRORS, 1);
            return false;
        };
        let next = (nb.rx_tail + 1) % entries;
        if next == nb.rx_head {
            nb.rx_head = io.nb_rx_head(nb_id);
            if next == nb.rx_head {
                io.count(c::RX_NOTIF_DROP_RING_FULL, 1);
                return false;
            }
        }
        let addr = nb.rx_ring.wrapping_add(nb.rx_tail as u64 * NOTIFICATION_SIZE as u64);
        // Body first, then the signal word, so software never sees a valid signal with a
        // stale queue ID or tail.
        let mut body = [0u8; NOTIFICATION_SIZE - 8];
        body[notif::RX_QUEUE_ID - 8..][..8].copy_from_slice(&(pipe as u64).to_le_bytes());
        body[notif::RX_TAIL - 8..][..8].copy_from_slice(&(tail as u64).to_le_bytes());
        if !io.dma_write(addr.wrapping_add(8), &body, DmaClass::Metadata)
            || !io.dma_write(addr, &1u64.to_le_bytes(), DmaClass::Metadata)
        {
            io.count(c::DMA_ERRORS, 1);
            return false;
        }
        nb.rx_tail = next;
        io.publish(Published::NbRxTail(nb_id), next);
        io.count(c::RX_NOTIFICATIONS, 1);
        true
    }

    /// A head event (head write or prefetch): notify with the tail if there is data
    /// left, else clear the outstanding bit.
    fn head_event(&mut self, pipe: u32, io: &mut dyn EngineIo) {
        if self.stream[pipe as usize] {
            return;
        }
        let p = self.pipes[pipe as usize];
        if p.head != p.tail {
            let sent = self.notify(pipe, p.tail, io);
            self.pipes[pipe as usize].outstanding = sent;
        } else {
            self.pipes[pipe as usize].outstanding = false;
        }
    }

    /// Handles one TX send request of pair `nb_id`: the data is DMA-read and cut into
    /// frames, continuing a frame the previous transfer left unfinished.
    fn send(&mut self, nb_id: u32, addr: u64, len: u64, io: &mut dyn EngineIo) {
        if len == 0 || len > MAX_TX_TRANSFER || (addr % TX_BOUNDARY) + len > TX_BOUNDARY {
            io.count(c::TX_BAD_NOTIFICATION, 1);
            return;
        }
        self.data.resize(len as usize, 0);
        if !io.dma_read(addr, &mut self.data, DmaClass::Data) {
            io.count(c::TX_DROP_DMA, 1);
            return;
        }
        self.framer.push(nb_id, &self.data, io);
    }
}

impl QueueEngine for BehavioralEngine {
    fn enable_pipe(&mut self, pipe: u32, s: PipeSetup) {
        let size = self.pipe_flits;
        if let Some(p) = self.pipes.get_mut(pipe as usize) {
            *p = Pipe {
                enabled: true,
                base: s.base,
                nb: s.nb,
                head: if s.head < size { s.head } else { 0 },
                tail: if s.tail < size { s.tail } else { 0 },
                outstanding: false,
            };
        }
    }

    fn disable_pipe(&mut self, pipe: u32) {
        if let Some(p) = self.pipes.get_mut(pipe as usize) {
            *p = Pipe::default();
        }
    }

    fn enable_nb(&mut self, nb: u32, s: NbSetup) {
        let n = self.entries;
        if let Some(b) = self.nbs.get_mut(nb as usize) {
            *b = Nb {
                enabled: true,
                rx_ring: s.rx_ring,
                tx_ring: s.tx_ring,
                rx_tail: s.rx_tail % n,
                rx_head: s.rx_head,
                tx_head: s.tx_head % n,
            };
        }
        self.framer.reset(nb);
    }

    fn disable_nb(&mut self, nb: u32) {
        if let Some(b) = self.nbs.get_mut(nb as usize) {
            *b = Nb::default();
        }
        self.framer.reset(nb);
    }

    fn set_per_packet(&mut self, per_packet: bool) {
        self.per_packet = per_packet;
    }

    fn set_stream(&mut self, pipe: u32, stream: bool) {
        if let Some(s) = self.stream.get_mut(pipe as usize) {
            *s = stream;
        }
    }

    fn rx_packet(&mut self, pipe: u32, frame: &[u8], io: &mut dyn EngineIo) -> RxOutcome {
        let size = self.pipe_flits;
        let Some(p) = self.pipes.get(pipe as usize).copied().filter(|p| p.enabled) else {
            io.count(c::RX_DROP_PIPE_DISABLED, 1);
            return RxOutcome::PipeDisabled;
        };
        let flits = frame.len().div_ceil(FLIT) as u64;
        let used = (p.tail + size - p.head) % size;
        if flits > (size - used - 1) as u64 {
            io.count(c::RX_DROP_PIPE_FULL, 1);
            return RxOutcome::PipeFull;
        }
        let room = (size - p.tail) as usize * FLIT;
        let first = frame.len().min(room);
        let at = p.base.wrapping_add(p.tail as u64 * FLIT as u64);
        let ok = io.dma_write(at, &frame[..first], DmaClass::Data)
            && (first == frame.len() || io.dma_write(p.base, &frame[first..], DmaClass::Data));
        if !ok {
            io.count(c::RX_DROP_DMA, 1);
            return RxOutcome::DmaFailed;
        }
        let tail = ((p.tail as u64 + flits) % size as u64) as u32;
        self.pipes[pipe as usize].tail = tail;
        io.publish(Published::PipeRxTail(pipe), tail);
        if (self.per_packet || !p.outstanding) && !self.stream[pipe as usize] {
            let sent = self.notify(pipe, tail, io);
            self.pipes[pipe as usize].outstanding = sent;
        }
        RxOutcome::Delivered
    }

    fn rx_head(&mut self, pipe: u32, head: u32, io: &mut dyn EngineIo) {
        let size = self.pipe_flits;
        let Some(p) = self.pipes.get(pipe as usize).copied().filter(|p| p.enabled) else {
            return;
        };
        io.count(c::HEAD_UPDATES, 1);
        let advance = (head.wrapping_add(size).wrapping_sub(p.head)) % size;
        let pending = (p.tail + size - p.head) % size;
        if head >= size || advance > pending {
            io.count(c::BAD_HEAD, 1);
            return;
        }
        self.pipes[pipe as usize].head = head;
        self.head_event(pipe, io);
    }

    fn prefetch(&mut self, pipe: u32, io: &mut dyn EngineIo) {
        if self.pipes.get(pipe as usize).is_some_and(|p| p.enabled) {
            self.head_event(pipe, io);
        }
    }

    fn tx_tail(&mut self, nb_id: u32, tail: u32, io: &mut dyn EngineIo) -> bool {
        let entries = self.entries;
        let Some(nb) = self.nbs.get(nb_id as usize).copied().filter(|n| n.enabled) else {
            return true;
        };
        if tail >= entries {
            io.count(c::BAD_TAIL, 1);
            return true;
        }
        let n = ((tail + entries - nb.tx_head) % entries).min(TX_BATCH);
        if n == 0 {
            return true;
        }
        // Fetch the entries (one read, two when the ring wraps).
        let first = n.min(entries - nb.tx_head);
        self.fetch.resize(n as usize * NOTIFICATION_SIZE, 0);
        let slot =
            |i: u32| nb.tx_ring.wrapping_add(((nb.tx_head + i) % entries) as u64 * NOTIFICATION_SIZE as u64);
        let (a, b) = self.fetch.split_at_mut(first as usize * NOTIFICATION_SIZE);
        let fetched = io.dma_read(slot(0), a, DmaClass::Metadata)
            && (b.is_empty() || io.dma_read(slot(first), b, DmaClass::Metadata));
        if fetched {
            for i in 0..n {
                let mut e = [0u8; NOTIFICATION_SIZE];
                e.copy_from_slice(&self.fetch[i as usize * NOTIFICATION_SIZE..][..NOTIFICATION_SIZE]);
                let word = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().unwrap_or_default());
                match word(notif::SIGNAL) {
                    notif::SIGNAL_SEND => {
                        self.send(nb_id, word(notif::TX_PHYS_ADDR), word(notif::TX_LENGTH), io)
                    }
                    notif::SIGNAL_CONFIG => {
                        io.configure(&e);
                    }
                    _ => io.count(c::TX_BAD_NOTIFICATION, 1),
                }
                // Completion: the signal word back to 0, in order.
                if io.dma_write(slot(i), &0u64.to_le_bytes(), DmaClass::Metadata) {
                    io.count(c::TX_COMPLETIONS, 1);
                } else {
                    io.count(c::DMA_ERRORS, 1);
                }
            }
        } else {
            // Nothing to act on; consume the entries so a bad ring address cannot wedge
            // the pair.
            io.count(c::DMA_ERRORS, 1);
        }
        let head = (nb.tx_head + n) % entries;
        self.nbs[nb_id as usize].tx_head = head;
        io.publish(Published::NbTxHead(nb_id), head);
        head == tail
    }
}
