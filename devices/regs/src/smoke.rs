//! The smoke test device: the smallest device that exercises every path of the testbed
//! (trapped MMIO, a shared-memory doorbell page polled by a device thread, DMA in both
//! directions and MSI-X).
//!
//! BAR0 (4 KiB, trapped): identity, scratch and counters, plus the MSI-X table and PBA.
//! BAR2 (4 KiB, shared memory): one command slot the driver fills and rings; the device
//! thread polls it, runs the command and writes the completion back into the same page.

/// PCI vendor ID: the FPGA vendor (Intel/Altera) the Ensō card also carries, since our
/// devices are meant to become FPGA designs.
pub const VENDOR_ID: u16 = 0x1172;
/// PCI device ID of the smoke device.
pub const DEVICE_ID: u16 = 0x5301;
/// Class code: "other" unclassified device.
pub const CLASS_CODE: u32 = 0xff_00_00;

/// Index of the trapped register BAR.
pub const REG_BAR: u8 = 0;
/// Size of the trapped register BAR.
pub const REG_BAR_SIZE: u64 = 4096;
/// Index of the shared-memory doorbell BAR.
pub const DOORBELL_BAR: u8 = 2;
/// Size of the shared-memory doorbell BAR.
pub const DOORBELL_BAR_SIZE: u64 = 4096;

/// Read-only identity register; reads [`ID_VALUE`].
pub const REG_ID: u64 = 0x00;
/// Value of [`REG_ID`]: "SMK1".
pub const ID_VALUE: u32 = 0x534d_4b31;
/// Read-only register version.
pub const REG_VERSION: u64 = 0x04;
/// Version of this register map.
pub const VERSION_VALUE: u32 = 1;
/// Read-write scratch register.
pub const REG_SCRATCH: u64 = 0x08;
/// Status: bit 0 set when a command completed, bit 1 on a DMA error. Write 1 to clear.
pub const REG_STATUS: u64 = 0x0c;
/// Status bit: a command completed.
pub const STATUS_DONE: u32 = 1 << 0;
/// Status bit: a DMA access failed (address not mapped).
pub const STATUS_DMA_ERROR: u32 = 1 << 1;
/// Read-only: number of commands the device completed.
pub const REG_COMMANDS: u64 = 0x10;
/// Read-only: number of DMA accesses refused because the address was not mapped.
pub const REG_DMA_ERRORS: u64 = 0x14;
/// Read-only: number of malformed commands (bad opcode, length over [`MAX_DMA_LEN`]).
pub const REG_BAD_COMMANDS: u64 = 0x18;

/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x800;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0xc00;
/// Number of MSI-X vectors.
pub const MSIX_VECTORS: u16 = 4;

// Doorbell page (BAR2), little-endian u32 fields.
/// Driver: the command's sequence number; writing a new value rings the doorbell.
/// Written last, after the other command fields.
pub const DB_SEQ: u64 = 0x00;
/// Driver: the opcode ([`OP_WRITE_PATTERN`] or [`OP_READ_CHECKSUM`]).
pub const DB_OPCODE: u64 = 0x04;
/// Driver: DMA address, low half.
pub const DB_ADDR_LO: u64 = 0x08;
/// Driver: DMA address, high half.
pub const DB_ADDR_HI: u64 = 0x0c;
/// Driver: DMA length in bytes (at most [`MAX_DMA_LEN`]).
pub const DB_LEN: u64 = 0x10;
/// Driver: pattern seed for [`OP_WRITE_PATTERN`].
pub const DB_SEED: u64 = 0x14;
/// Driver: MSI-X vector to raise on completion, or [`NO_VECTOR`].
pub const DB_VECTOR: u64 = 0x18;
/// Device: sequence number of the last completed command.
pub const DB_DONE_SEQ: u64 = 0x40;
/// Device: completion status ([`CMD_OK`], [`CMD_DMA_ERROR`] or [`CMD_BAD`]).
pub const DB_DONE_STATUS: u64 = 0x44;
/// Device: result (FNV-1a 32 of the bytes read for [`OP_READ_CHECKSUM`]).
pub const DB_DONE_RESULT: u64 = 0x48;

/// Opcode: the device DMA-writes `len` pattern bytes ([`pattern_byte`]) to the address.
pub const OP_WRITE_PATTERN: u32 = 1;
/// Opcode: the device DMA-reads `len` bytes and reports their FNV-1a 32 checksum.
pub const OP_READ_CHECKSUM: u32 = 2;
/// Vector value meaning "raise no interrupt".
pub const NO_VECTOR: u32 = 0xffff_ffff;
/// Completion status: success.
pub const CMD_OK: u32 = 0;
/// Completion status: the DMA address range was not mapped.
pub const CMD_DMA_ERROR: u32 = 1;
/// Completion status: bad opcode or length.
pub const CMD_BAD: u32 = 2;
/// Largest DMA length of one command.
pub const MAX_DMA_LEN: u32 = 1 << 20;

/// Byte `i` of the pattern the device writes for `seed`.
pub fn pattern_byte(seed: u32, i: usize) -> u8 {
    (seed as usize).wrapping_add(i.wrapping_mul(131)).wrapping_add(i >> 8) as u8
}

/// FNV-1a, 32 bit: the checksum both sides compute over DMA'd bytes.
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}
