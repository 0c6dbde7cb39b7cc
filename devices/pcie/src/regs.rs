//! A block of 32-bit registers with read-only, read-write and write-1-to-clear bits.

/// One register's definition and value.
#[derive(Clone, Copy, Debug, Default)]
struct Reg {
    value: u32,
    reset: u32,
    rw: u32,
    w1c: u32,
    defined: bool,
}

/// What a write did, so the device can react (e.g. start a command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The register changed from `old` to `new` (may be equal).
    Written { old: u32, new: u32 },
    /// No register at that offset, or a misaligned/odd-sized access: ignored.
    Rejected,
}

/// 32-bit registers at 4-byte-aligned offsets.
#[derive(Clone, Debug)]
pub struct RegisterBlock {
    regs: Vec<Reg>,
}

impl RegisterBlock {
    /// A block covering `size` bytes; offsets without a definition read 0 and ignore writes.
    pub fn new(size: usize) -> Self {
        RegisterBlock { regs: vec![Reg::default(); size / 4] }
    }

    /// Defines the register at `offset` with its reset value, read-write mask and
    /// write-1-to-clear mask. Bits in neither mask are read-only.
    pub fn define(&mut self, offset: u64, reset: u32, rw: u32, w1c: u32) -> &mut Self {
        let r = &mut self.regs[offset as usize / 4];
        *r = Reg { value: reset, reset, rw, w1c, defined: true };
        self
    }

    /// The value of a register (0 for undefined offsets).
    pub fn get(&self, offset: u64) -> u32 {
        self.regs.get(offset as usize / 4).map_or(0, |r| r.value)
    }

    /// Sets a register from the device side, bypassing the masks.
    pub fn set(&mut self, offset: u64, value: u32) {
        if let Some(r) = self.regs.get_mut(offset as usize / 4) {
            r.value = value;
        }
    }

    /// ORs bits in from the device side (e.g. raise a status bit).
    pub fn set_bits(&mut self, offset: u64, bits: u32) {
        let v = self.get(offset);
        self.set(offset, v | bits);
    }

    /// A driver read of `data.len()` bytes (1, 2, 4 or 8) at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = (self.get(o & !3) >> ((o & 3) * 8)) as u8;
        }
    }

    /// A driver write of 4 bytes at a 4-byte-aligned offset (8-byte writes split in two).
    /// Other sizes and undefined offsets are rejected.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> WriteOutcome {
        if !offset.is_multiple_of(4) || !(data.len() == 4 || data.len() == 8) {
            return WriteOutcome::Rejected;
        }
        let mut last = WriteOutcome::Rejected;
        for (i, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes(chunk.try_into().unwrap_or_default());
            let Some(r) = self.regs.get_mut(offset as usize / 4 + i) else {
                return WriteOutcome::Rejected;
            };
            if !r.defined {
                return WriteOutcome::Rejected;
            }
            let old = r.value;
            r.value = ((old & !r.rw) | (v & r.rw)) & !(v & r.w1c);
            last = WriteOutcome::Written { old, new: r.value };
        }
        last
    }

    /// Every register back to its reset value.
    pub fn reset(&mut self) {
        for r in &mut self.regs {
            r.value = r.reset;
        }
    }
}

/// The value of a driver write that is one aligned 32-bit register write (the only
/// register access the models accept), or None.
pub fn dword(offset: u64, data: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = data.try_into().ok()?;
    offset.is_multiple_of(4).then_some(u32::from_le_bytes(bytes))
}

/// Fills `data`, a driver read of any width at `offset`, from the 32-bit registers that
/// `read32(word_offset)` returns (each covering word is read once, in address order).
pub fn read_words(offset: u64, data: &mut [u8], mut read32: impl FnMut(u64) -> u32) {
    let Some(end) = offset.checked_add(data.len() as u64) else {
        return;
    };
    let mut word = offset & !3;
    while word < end {
        for (i, b) in read32(word).to_le_bytes().iter().enumerate() {
            let a = word + i as u64;
            if a >= offset && a < end {
                data[(a - offset) as usize] = *b;
            }
        }
        word += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aligned_dwords_are_register_writes() {
        assert_eq!(dword(8, &[1, 2, 3, 4]), Some(0x0403_0201));
        assert_eq!(dword(2, &[1, 2, 3, 4]), None, "unaligned");
        assert_eq!(dword(8, &[1, 2]), None, "narrow");
        assert_eq!(dword(8, &[0; 8]), None, "wide");
    }

    #[test]
    fn reads_of_any_width_from_words() {
        let mut seen = vec![];
        let mut out = [0u8; 6];
        read_words(2, &mut out, |w| {
            seen.push(w);
            (w as u32 + 1) * 0x0101_0101
        });
        assert_eq!(seen, vec![0, 4], "each covering word once, in order");
        assert_eq!(out, [1, 1, 5, 5, 5, 5]);
        let mut b = [9u8; 2];
        read_words(u64::MAX, &mut b, |_| 0);
        assert_eq!(b, [9, 9], "an overflowing range reads nothing");
    }

    #[test]
    fn masks() {
        let mut b = RegisterBlock::new(64);
        b.define(0, 0x1234, 0, 0) // RO
            .define(4, 0, 0xffff_ffff, 0) // RW
            .define(8, 0, 0x0000_00f0, 0x0000_000f); // mixed
        assert_eq!(b.write(0, &7u32.to_le_bytes()), WriteOutcome::Written { old: 0x1234, new: 0x1234 });
        b.write(4, &0xdead_beefu32.to_le_bytes());
        assert_eq!(b.get(4), 0xdead_beef);
        b.set_bits(8, 0x5);
        b.write(8, &0x31u32.to_le_bytes());
        assert_eq!(b.get(8), 0x34, "bit 0 cleared by w1c, 0x30 written, bit 2 kept");
        let mut r = [0u8; 2];
        b.read(5, &mut r);
        assert_eq!(r, [0xbe, 0xad]);
        assert_eq!(b.write(2, &[0; 4]), WriteOutcome::Rejected, "misaligned");
        assert_eq!(b.write(12, &[0; 4]), WriteOutcome::Rejected, "undefined");
        assert_eq!(b.write(4, &[0; 2]), WriteOutcome::Rejected, "16-bit write");
        assert_eq!(b.write(1000, &[0; 4]), WriteOutcome::Rejected, "outside");
        b.reset();
        assert_eq!(b.get(4), 0);
        assert_eq!(b.get(0), 0x1234);
    }
}
