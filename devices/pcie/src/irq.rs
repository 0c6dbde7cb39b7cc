//! Interrupt lines: a device raises MSI-X vectors through an [`IrqSink`] the transport
//! provides (eventfds from VFIO/vfio-user SET_IRQS), and keeps its MSI-X table and PBA in
//! an [`MsixTable`].

use std::sync::Mutex;

/// Where a device's interrupts go.
pub trait IrqSink: Send + Sync {
    /// Signals MSI-X vector `vector`. Returns false when the driver has not set it up.
    fn raise(&self, vector: u16) -> bool;
}

/// An interrupt sink with nothing connected: every raise is undeliverable.
#[derive(Debug, Default)]
pub struct NoIrqs;

impl IrqSink for NoIrqs {
    fn raise(&self, _vector: u16) -> bool {
        false
    }
}

/// A sink that records raised vectors (tests and the in-process transport).
#[derive(Debug, Default)]
pub struct RecordingIrqs {
    raised: Mutex<Vec<u16>>,
}

impl RecordingIrqs {
    /// Vectors raised so far, in order; clears the record.
    pub fn take(&self) -> Vec<u16> {
        std::mem::take(&mut *self.raised.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl IrqSink for RecordingIrqs {
    fn raise(&self, vector: u16) -> bool {
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).push(vector);
        true
    }
}

/// MSI-X table and pending-bit array storage, as a device exposes them in a BAR.
///
/// QEMU and the Linux VFIO driver emulate the table towards the guest and hand the
/// device one eventfd per vector, so the device's copy only has to read back what was
/// written; the PBA is the device's own.
#[derive(Debug, Clone)]
pub struct MsixTable {
    table: Vec<u8>,
    pending: Vec<u64>,
}

impl MsixTable {
    /// Storage for `vectors` entries, all masked (the reset state).
    pub fn new(vectors: u16) -> Self {
        let mut table = vec![0u8; 16 * vectors as usize];
        for e in table.chunks_mut(16) {
            e[12] = 1; // vector control: masked
        }
        MsixTable { table, pending: vec![0; (vectors as usize).div_ceil(64)] }
    }

    /// Size of the table in bytes.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64
    }

    /// Size of the PBA in bytes.
    pub fn pba_len(&self) -> u64 {
        8 * self.pending.len() as u64
    }

    /// A read inside the table.
    pub fn read_table(&self, offset: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.table.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    /// A write inside the table.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(t) = self.table.get_mut(offset as usize + i) {
                *t = *b;
            }
        }
    }

    /// A read inside the PBA.
    pub fn read_pba(&self, offset: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let o = offset as usize + i;
            *b = self.pending.get(o / 8).map_or(0, |w| (w >> ((o % 8) * 8)) as u8);
        }
    }

    /// Marks a vector pending (it could not be delivered).
    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        if let Some(w) = self.pending.get_mut(vector as usize / 64) {
            let bit = 1u64 << (vector % 64);
            if pending {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    /// Back to reset: all masked, nothing pending.
    pub fn reset(&mut self) {
        *self = MsixTable::new((self.table.len() / 16) as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_pba() {
        let mut t = MsixTable::new(4);
        let mut b = [0u8; 4];
        t.read_table(12, &mut b);
        assert_eq!(b, [1, 0, 0, 0], "masked at reset");
        t.write_table(16, &0xfee0_0000u32.to_le_bytes());
        t.read_table(16, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_0000);
        t.set_pending(2, true);
        let mut p = [0u8; 8];
        t.read_pba(0, &mut p);
        assert_eq!(p[0], 0b100);
        t.set_pending(2, false);
        t.read_pba(0, &mut p);
        assert_eq!(p[0], 0);
        t.read_table(1000, &mut b);
        assert_eq!(b, [0; 4], "outside reads 0");
    }
}
