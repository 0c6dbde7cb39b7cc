//! Our stream extension of the NIC, for a switch that chains it with other devices
//! (Nagare): stream RX pipes (records, not frames, and no notifications: the consumer
//! returns head credits) and the TX stream window (records in, frames out, with a header
//! template). Registers in `testbed_regs::enso::ext`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use testbed_regs::enso::ext::{STREAM_ENABLE, STREAM_RX_SLOTS, STREAM_TX_WINDOW_SIZE};
use testbed_regs::enso::{pipe_page, queue};
use testbed_regs::record::{Assembler, FRAME_HEADER};

/// Stream state shared by the register side, the device thread and switch ports.
#[derive(Default)]
pub struct StreamRegs {
    /// `pipe | STREAM_ENABLE` per slot.
    pub rx_slots: [AtomicU32; STREAM_RX_SLOTS as usize],
    /// Bumped on every slot change, so the device thread re-reads them.
    pub rx_gen: AtomicU32,
    pub tx: Mutex<TxStream>,
    /// Set by every write to the TX window, so the device thread takes the window's
    /// lock only when there is something to do.
    pub tx_pending: AtomicBool,
}

pub use testbed_regs::record::NotARecord;

/// The TX stream window's state.
#[derive(Debug)]
pub struct TxStream {
    pub enabled: bool,
    /// The header template (42 bytes used).
    pub template: [u8; 44],
    /// The records being written.
    pub records: Assembler,
    /// Writes or records dropped since the device thread last counted them.
    pub drops: u64,
}

impl Default for TxStream {
    fn default() -> Self {
        TxStream { enabled: false, template: [0; 44], records: Assembler::default(), drops: 0 }
    }
}

impl StreamRegs {
    pub fn tx(&self) -> MutexGuard<'_, TxStream> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of `data` at TX window `offset` (see [`TxStream::push`]).
    pub fn push_tx(&self, offset: u64, data: &[u8]) -> bool {
        let ok = self.tx().push(offset, data);
        self.tx_pending.store(true, Ordering::Release);
        ok
    }

    /// The enabled stream pipes.
    pub fn rx_pipes(&self) -> Vec<u32> {
        self.rx_slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|v| v & STREAM_ENABLE != 0)
            .map(|v| v & !STREAM_ENABLE)
            .collect()
    }
}

impl TxStream {
    /// Accepts a write of `data` at window `offset` ([`Assembler::accept`]). False, and
    /// counted as a drop, when refused or the stream is off.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> bool {
        if !self.enabled || !self.records.accept(offset, data, STREAM_TX_WINDOW_SIZE) {
            self.drops += 1;
            return false;
        }
        true
    }

    /// Takes the next complete record; an error when the bytes there are not a record
    /// (everything pending is dropped).
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, NotARecord> {
        Ok(self.records.next_record()?.map(|(_, rec)| rec))
    }

    /// The frame carrying `rec`: the template with lengths and IPv4 checksum filled in.
    pub fn frame(&self, rec: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.template[..FRAME_HEADER]);
        out.extend_from_slice(rec);
        testbed_regs::inet::set_udp_lengths(out, rec.len());
    }
}

/// A switch's handle on the NIC's TX stream window (device-to-device writes).
#[derive(Clone)]
pub struct TxStreamPort {
    pub(crate) regs: Arc<StreamRegs>,
}

impl TxStreamPort {
    /// Delivers a write at window `offset`; false (counted as TX_DROP_STREAM) if refused.
    pub fn push(&self, offset: u64, data: &[u8]) -> bool {
        self.regs.push_tx(offset, data)
    }
}

/// A switch's handle on the NIC's pipe head registers: how it returns credits for a
/// stream pipe it consumes (a peer write into the NIC's queue page).
#[derive(Clone)]
pub struct CreditPort {
    pub(crate) shared: Arc<crate::Shared>,
}

impl CreditPort {
    /// Writes `head` (in flits) into pipe `pipe`'s RX_HEAD register (in register mode
    /// mmio, a write the device thread applies in order, like any other).
    pub fn set_head(&self, pipe: u32, head: u32) {
        let s = &self.shared;
        if pipe < s.cfg.num_pipes {
            let off = pipe_page(pipe) + queue::RX_HEAD;
            match s.cfg.registers {
                crate::RegisterMode::Shared => s.bar2.write32(off, head),
                crate::RegisterMode::Mmio => s.mailbox.post_write(testbed_regs::enso::QUEUE_BAR, off, head),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_regs::record::{Header, HEADER, KIND_RESULT};

    fn rec(seq: u32, len: usize) -> Vec<u8> {
        let mut r = vec![7u8; HEADER + len];
        Header { len: len as u32, seq, kind: KIND_RESULT, stream: 1, nonce: [0; 12], tag: [0; 16] }
            .write(&mut r);
        r
    }

    #[test]
    fn tx_window_takes_aligned_records_with_padding_and_refuses_the_rest() {
        let mut t = TxStream { enabled: true, ..Default::default() };
        let (a, b) = (rec(1, 44), rec(2, 100));
        assert!(t.push(0, &a[..30]));
        assert_eq!(t.next_record(), Ok(None), "incomplete");
        assert!(t.push(30, &a[30..]));
        assert!(t.push(128, &b), "a forward gap is padding");
        assert_eq!(t.next_record(), Ok(Some(a)));
        assert_eq!(t.next_record(), Ok(Some(b)));
        assert_eq!(t.next_record(), Ok(None));
        assert!(!t.push(5, &[0; 10]), "behind the end: refused");
        assert_eq!(t.drops, 1);
        assert!(t.push(320, &[0xff; 64]));
        assert_eq!(t.next_record(), Err(NotARecord), "not a record");
        assert!(t.records.is_empty());
        let mut f = Vec::new();
        t.template[12] = 8;
        t.template[14] = 0x45;
        t.frame(&rec(3, 44), &mut f);
        assert_eq!(f.len(), FRAME_HEADER + HEADER + 44);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), (28 + HEADER + 44) as u16);
    }
}
