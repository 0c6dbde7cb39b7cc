//! Pipes: [`RxPipe`] (bytes the device wrote into a 2 MiB ring), [`TxPipe`] (a buffer the
//! application fills and the device sends), [`RxTxPipe`] (zero-copy echo: RX data sent
//! straight back out of the RX ring, freed when the send completes).

use crate::device::{Completion, Device, Flow};
use crate::packet::{PacketIter, PacketIterMut};
use crate::regs::{wait_state, Doorbells, RegWindow};
use crate::ring::{bytes_to_flits, Ring, TxChunks};
use crate::{Error, Result};
use device_access::{Bar, DmaBuffer};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testbed_regs::enso::{prefetch, queue, state, FLIT};

/// Which pipe IDs this process uses.
#[derive(Debug)]
pub(crate) struct PipeIds {
    used: Vec<bool>,
}

impl PipeIds {
    pub(crate) fn new(n: u32) -> Self {
        PipeIds { used: vec![false; n as usize] }
    }

    pub(crate) fn take(&mut self, id: u32) -> Result<()> {
        let available = self.used.len() as u32;
        let slot = self.used.get_mut(id as usize).ok_or(Error::BadPipeId { id, available })?;
        if *slot {
            return Err(Error::PipeInUse(id));
        }
        *slot = true;
        Ok(())
    }

    pub(crate) fn take_lowest(&mut self) -> Result<u32> {
        let i = self.used.iter().position(|u| !u).ok_or(Error::NoFreePipe(self.used.len() as u32))?;
        self.used[i] = true;
        Ok(i as u32)
    }

    pub(crate) fn free(&mut self, id: u32) {
        if let Some(u) = self.used.get_mut(id as usize) {
            *u = false;
        }
    }
}

/// The state of one RX pipe that the [`Device`] also reaches: the tail it learns from
/// notifications, the head it advances on TX completions (RX/TX pipes), and the buffer,
/// kept alive while the device may still read it for a send.
pub(crate) struct RxShared {
    id: u32,
    ring: Ring,
    /// Flits freed to the device (the `rx_head` register value).
    head: AtomicU32,
    /// Flits the device announced (last notified tail).
    tail: AtomicU32,
    alive: AtomicBool,
    regs: RegWindow,
    /// The prefetch doorbell slot; None in card mode (a prefetch rewrites the head).
    prefetch: Option<RegWindow>,
    buf: DmaBuffer,
    dev: PipeContext,
}

/// What every RX pipe shares with its [`Device`].
#[derive(Clone)]
pub(crate) struct PipeContext {
    /// BAR0 (the queue-state page, to see a disable acknowledged); None in card mode.
    pub ext: Option<Bar>,
    /// The pipe ID pool (a dropped pipe returns its ID).
    pub ids: Arc<Mutex<PipeIds>>,
    pub ack_timeout: Duration,
    /// The device's datapath doorbell counts.
    pub doorbells: Arc<Doorbells>,
}

impl RxShared {
    /// Pipe `id` over `buf`: its queue registers `regs`, its prefetch doorbell slot.
    pub(crate) fn new(
        id: u32,
        ring: Ring,
        regs: RegWindow,
        prefetch: Option<RegWindow>,
        buf: DmaBuffer,
        dev: PipeContext,
    ) -> Self {
        let (head, tail, alive) = (AtomicU32::new(0), AtomicU32::new(0), AtomicBool::new(true));
        RxShared { id, ring, head, tail, alive, regs, prefetch, buf, dev }
    }

    #[inline]
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_tail(&self, tail: u32) {
        self.tail.store(tail & (self.ring.size() - 1), Ordering::Release);
    }

    #[inline]
    fn tail(&self) -> u32 {
        self.tail.load(Ordering::Acquire)
    }

    #[inline]
    fn head(&self) -> u32 {
        self.head.load(Ordering::Relaxed)
    }

    /// Moves the head to `head` and tells the device (one register write, a doorbell
    /// counted in [`crate::DeviceStats`]).
    #[inline]
    fn write_head(&self, head: u32) {
        self.head.store(head, Ordering::Relaxed);
        if self.is_alive() {
            fence(Ordering::Release);
            self.regs.write(queue::RX_HEAD, head);
            self.dev.doorbells.pipe_heads.fetch_add(1, Ordering::Relaxed);
            self.dev.doorbells.wrote(&self.regs, 1);
        }
    }

    /// Frees `flits` more (an RX/TX send completed).
    #[inline]
    pub(crate) fn free_flits(&self, flits: u32) {
        self.write_head(self.ring.add(self.head(), flits));
    }

    /// Disables the pipe and waits until the device stopped writing to it; frees its ID.
    pub(crate) fn disable(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            match &self.dev.ext {
                Some(ext) => {
                    self.regs.disable_queue();
                    let _ = wait_state(
                        ext,
                        state::pipe_bit(self.id),
                        false,
                        self.dev.ack_timeout,
                        "pipe",
                        self.id,
                    );
                }
                None => {
                    let _ = self.regs.card_disable(self.dev.ack_timeout, "pipe", self.id);
                }
            }
            self.dev.ids.lock().unwrap_or_else(|e| e.into_inner()).free(self.id);
        }
    }
}

/// The receive side that [`RxPipe`] and [`RxTxPipe`] share (both dereference to it): the
/// application's read cursor over a pipe's ring. The pipes differ in how received bytes
/// are freed: [`RxPipe::confirm_bytes`], or [`RxTxPipe::send_and_free`] when the send completes.
pub struct RxRing {
    shared: Arc<RxShared>,
    /// Flits handed to the application by `recv`.
    read: u32,
}

impl RxRing {
    /// The pipe ID (the queue the device steers to).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Steers `flow` here.
    pub fn bind(&self, dev: &mut Device, flow: Flow) -> Result<()> {
        dev.insert_flow_entry(flow, self.id())
    }

    /// Size of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.ring_bytes()
    }

    fn ring_bytes(&self) -> usize {
        self.shared.ring.size() as usize * FLIT
    }

    /// Bytes announced by the device and not yet received.
    #[inline]
    pub fn available(&self) -> usize {
        self.shared.ring.distance(self.read, self.shared.tail()) as usize * FLIT
    }

    /// (ring offset, length) of up to `max` bytes (rounded down to flits) at the read
    /// cursor; advances the cursor when `advance`. The offset is below the ring size and
    /// the length at most the ring size: inside the mirrored mapping.
    #[inline]
    fn take(&mut self, max: usize, advance: bool) -> (usize, usize) {
        let len = self.available().min(max / FLIT * FLIT);
        let off = self.read as usize * FLIT;
        if advance {
            self.read = self.shared.ring.add(self.read, (len / FLIT) as u32);
        }
        (off, len)
    }

    /// Receives up to `max` bytes (rounded down to whole flits): a contiguous slice of
    /// whole packets, each on a 64-byte boundary. Empty when nothing new was announced.
    pub(crate) fn recv(&mut self, max: usize) -> &[u8] {
        let (off, len) = self.take(max, true);
        // SAFETY: the hand-over rule: these bytes were announced by the device (Acquire on
        // the tail) and it does not write them again before the application frees them
        // (`confirm_bytes` moves the head past them), which needs `&mut self`, so not
        // while the slice lives.
        unsafe { self.shared.buf.owned(off, len) }
    }

    /// As [`RxRing::recv`], mutable (e.g. to edit packets before forwarding them).
    pub(crate) fn recv_mut(&mut self, max: usize) -> &mut [u8] {
        let (off, len) = self.take(max, true);
        // SAFETY: as in `recv`; the slice lives as long as `&mut self` (which keeps the
        // memory through `shared`), and that makes it the only access on our side (the
        // device only reads received bytes when the application sends them, which also
        // needs `&mut self`).
        unsafe { self.shared.buf.owned_mut(off, len) }
    }

    /// As [`RxPipe::recv`] without consuming: the next recv returns the same bytes.
    pub fn peek(&self, max: usize) -> &[u8] {
        let (off, len) = (self.read as usize * FLIT, self.available().min(max / FLIT * FLIT));
        // SAFETY: as in `recv` (the same range `take` would return); freeing needs `&mut self`.
        unsafe { self.shared.buf.owned(off, len) }
    }

    /// The device address (IOVA) of `data`, part of a slice this pipe returned, so
    /// another device can read it in place; None when the bytes wrap the ring's end (the
    /// application copies those) or are not from this pipe.
    pub fn iova_of(&self, data: &[u8]) -> Option<u64> {
        let ring = self.ring_bytes();
        let off = (data.as_ptr() as usize).checked_sub(self.shared.buf.as_ptr() as usize)?;
        if off >= 2 * ring || off % ring + data.len() > ring {
            return None;
        }
        Some(self.shared.buf.iova() + (off % ring) as u64)
    }

    /// Asks for the pipe's notification: the prefetch doorbell (two register writes: the
    /// pipe ID, then a new sequence number) or, in card mode, upstream's rewrite of the
    /// unchanged `rx_head` (one write; a poller cannot see it, the card and the emulator's
    /// mmio mode can). Counted in [`crate::DeviceStats`].
    pub fn prefetch(&self) {
        let s = &self.shared;
        let d = &s.dev.doorbells;
        match &s.prefetch {
            Some(slot) => {
                let seq = slot.read(prefetch::SEQ).wrapping_add(1);
                slot.write(prefetch::PIPE_ID, s.id);
                fence(Ordering::Release);
                slot.write(prefetch::SEQ, seq);
                d.wrote(slot, 2);
            }
            None => {
                if !s.is_alive() {
                    return;
                }
                s.regs.write(queue::RX_HEAD, s.head());
                d.wrote(&s.regs, 1);
            }
        }
        d.prefetches.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        self.shared.disable();
    }
}

/// A receive pipe: the device writes packets for its flows back to back into a 2 MiB
/// ring; the application receives contiguous slices (the ring is mapped twice) and frees
/// them with [`RxPipe::confirm_bytes`]. The rest of receiving is [`RxRing`]'s (through
/// `Deref`; not `DerefMut`, so no caller can swap a pipe's ring for another's).
pub struct RxPipe {
    core: RxRing,
}

// Slices returned by recv/peek borrow `self`; they stay valid because the device never
// writes between the head and the announced tail.
impl RxPipe {
    pub(crate) fn new(shared: Arc<RxShared>) -> Self {
        RxPipe { core: RxRing { shared, read: 0 } }
    }

    /// Receives up to `max` bytes (rounded down to whole flits): a contiguous slice of
    /// whole packets, each on a 64-byte boundary. Empty when nothing new was announced.
    pub fn recv(&mut self, max: usize) -> &[u8] {
        self.core.recv(max)
    }

    /// As `recv`, mutable (e.g. to edit packets before forwarding them).
    pub fn recv_mut(&mut self, max: usize) -> &mut [u8] {
        self.core.recv_mut(max)
    }

    /// Receives up to `max` bytes and iterates over their packets.
    pub fn recv_packets(&mut self, max: usize) -> PacketIter<'_> {
        PacketIter::new(self.recv(max))
    }

    /// Bytes received and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.core.shared.ring.distance(self.core.shared.head(), self.core.read) as usize * FLIT
    }

    /// Frees the oldest `n` received bytes (rounded up to whole flits) back to the device:
    /// one `rx_head` write.
    pub fn confirm_bytes(&mut self, n: usize) -> Result<()> {
        let received = self.unconfirmed();
        let flits = bytes_to_flits(n);
        if flits * FLIT > received {
            return Err(Error::ConfirmTooMany { requested: n, received });
        }
        if flits > 0 {
            let s = &self.core.shared;
            s.write_head(s.ring.add(s.head(), flits as u32));
        }
        Ok(())
    }

    /// Drops everything received or announced: frees up to the last announced tail.
    pub fn clear(&mut self) {
        let tail = self.core.shared.tail();
        self.core.read = tail;
        self.core.shared.write_head(tail);
    }
}

impl std::ops::Deref for RxPipe {
    type Target = RxRing;
    fn deref(&self) -> &RxRing {
        &self.core
    }
}

/// A pipe that sends received data straight back out of its RX ring (zero-copy echo). RX
/// space is freed only when the device reports the send complete. The rest of receiving is
/// [`RxRing`]'s (through `Deref` only, as for [`RxPipe`]).
pub struct RxTxPipe {
    core: RxRing,
    /// Flits sent (or queued to send); between the head and the read cursor.
    sent: u32,
}

impl RxTxPipe {
    pub(crate) fn new(shared: Arc<RxShared>) -> Self {
        RxTxPipe { core: RxRing { shared, read: 0 }, sent: 0 }
    }

    /// Receives up to `max` bytes (rounded down to whole flits): a contiguous slice of
    /// whole packets, each on a 64-byte boundary. Empty when nothing new was announced.
    pub fn recv(&mut self, max: usize) -> &[u8] {
        self.core.recv(max)
    }

    /// As `recv`, mutable (e.g. to edit packets before forwarding them).
    pub fn recv_mut(&mut self, max: usize) -> &mut [u8] {
        self.core.recv_mut(max)
    }

    /// Receives up to `max` bytes and iterates mutably over their packets.
    pub fn recv_packets_mut(&mut self, max: usize) -> PacketIterMut<'_> {
        PacketIterMut::new(self.recv_mut(max))
    }

    /// Bytes received and not yet sent.
    pub fn unsent(&self) -> usize {
        self.core.shared.ring.distance(self.sent, self.core.read) as usize * FLIT
    }

    /// Sends the oldest `n` received-and-unsent bytes back out (split at 128 KiB and at the
    /// ring's end, one `tx_tail` write); their RX space is freed when the send completes.
    pub fn send_and_free(&mut self, dev: &mut Device, n: usize) -> Result<()> {
        let received = self.unsent();
        let flits = bytes_to_flits(n);
        if flits * FLIT > received {
            return Err(Error::SendExceedsReceived { requested: n, received });
        }
        if n == 0 {
            return Ok(());
        }
        let chunks =
            TxChunks::new(self.core.shared.buf.iova(), self.core.ring_bytes(), self.sent as usize * FLIT, n);
        dev.post_send(chunks, Completion::Rx(self.core.shared.clone(), flits as u32))?;
        self.sent = self.core.shared.ring.add(self.sent, flits as u32);
        Ok(())
    }

    /// Drops the oldest `n` received-and-unsent bytes without sending them (a frame the
    /// application consumed or answered from elsewhere); their space is freed in order,
    /// after any send before them completes.
    pub fn skip(&mut self, dev: &mut Device, n: usize) -> Result<()> {
        let received = self.unsent();
        let flits = bytes_to_flits(n);
        if flits * FLIT > received {
            return Err(Error::SendExceedsReceived { requested: n, received });
        }
        if flits > 0 {
            dev.free_after_pending(&self.core.shared, flits as u32);
            self.sent = self.core.shared.ring.add(self.sent, flits as u32);
        }
        Ok(())
    }
}

impl std::ops::Deref for RxTxPipe {
    type Target = RxRing;
    fn deref(&self) -> &RxRing {
        &self.core
    }
}

/// A TX pipe's buffer, kept alive (by the device's completion records) until every send
/// from it completed.
pub(crate) struct TxShared {
    buf: DmaBuffer,
    /// Bytes whose sends completed.
    completed: AtomicU64,
}

impl TxShared {
    pub(crate) fn new(buf: DmaBuffer) -> Self {
        TxShared { buf, completed: AtomicU64::new(0) }
    }

    #[inline]
    pub(crate) fn complete(&self, bytes: u64) {
        self.completed.fetch_add(bytes, Ordering::Release);
    }
}

/// A transmit buffer: [`TxPipe::allocate_buf`] hands out contiguous space (the 2 MiB ring
/// is mapped twice), [`TxPipe::send_and_free`] posts it; the space returns when the
/// device completes the send.
pub struct TxPipe {
    shared: Arc<TxShared>,
    /// Ring offset of the next allocation (flit-aligned).
    begin: usize,
    /// Bytes posted so far (flit-rounded per send).
    sent: u64,
    /// Bytes handed out by the last `allocate_buf` and not yet sent.
    allocated: usize,
}

impl TxPipe {
    /// Ring size in bytes.
    pub const BYTES: usize = 2 << 20;

    pub(crate) fn new(shared: Arc<TxShared>) -> Self {
        TxPipe { shared, begin: 0, sent: 0, allocated: 0 }
    }

    /// Free bytes (without processing completions).
    pub fn free(&self) -> usize {
        let in_flight = self.sent - self.shared.completed.load(Ordering::Acquire);
        Self::BYTES - in_flight as usize
    }

    /// Contiguous space for `len` bytes at the ring's current position; processes the
    /// device's completions once if the space is not free yet.
    pub fn allocate_buf(&mut self, dev: &mut Device, len: usize) -> Result<&mut [u8]> {
        if len > Self::BYTES {
            return Err(Error::TxBufferFull { requested: len, free: Self::BYTES });
        }
        if self.free() < len {
            dev.process_completions();
            if self.free() < len {
                return Err(Error::TxBufferFull { requested: len, free: self.free() });
            }
        }
        self.allocated = len;
        // SAFETY: the hand-over rule: the bytes are free (their earlier sends completed),
        // so the device neither reads nor writes them until `send_and_free` posts them,
        // which needs `&mut self` and so ends the slice first (the slice lives as long as
        // `&mut self`, which keeps the memory through `shared`). (`begin` < BYTES and
        // `len` <= BYTES: inside the mirrored mapping.)
        Ok(unsafe { self.shared.buf.owned_mut(self.begin, len) })
    }

    /// The device address (IOVA) of the space the next [`TxPipe::allocate_buf`] of `len`
    /// bytes returns, so another device can write a frame's body there; None when that
    /// space wraps the ring's end (in the device's view it is not contiguous).
    pub fn next_iova(&self, len: usize) -> Option<u64> {
        (self.begin + len <= Self::BYTES).then(|| self.shared.buf.iova() + self.begin as u64)
    }

    /// Sends the first `len` bytes of the allocated space; the space is reused after the
    /// device completes the send. Frames must start on 64-byte boundaries.
    pub fn send_and_free(&mut self, dev: &mut Device, len: usize) -> Result<()> {
        if len > self.allocated {
            return Err(Error::SendExceedsAllocation { requested: len, allocated: self.allocated });
        }
        if len == 0 {
            return Ok(());
        }
        let step = bytes_to_flits(len) * FLIT;
        let chunks = TxChunks::new(self.shared.buf.iova(), Self::BYTES, self.begin, len);
        dev.post_send(chunks, Completion::Tx(self.shared.clone(), step as u64))?;
        self.begin = (self.begin + step) % Self::BYTES;
        self.sent += step as u64;
        self.allocated = self.allocated.saturating_sub(step);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_id_allocation() {
        let mut ids = PipeIds::new(4);
        assert_eq!(ids.take_lowest().unwrap(), 0);
        ids.take(2).unwrap();
        assert!(matches!(ids.take(2), Err(Error::PipeInUse(2))));
        assert!(matches!(ids.take(9), Err(Error::BadPipeId { id: 9, available: 4 })));
        assert_eq!(ids.take_lowest().unwrap(), 1);
        assert_eq!(ids.take_lowest().unwrap(), 3);
        assert!(matches!(ids.take_lowest(), Err(Error::NoFreePipe(4))));
        ids.free(1);
        assert_eq!(ids.take_lowest().unwrap(), 1);
    }
}
