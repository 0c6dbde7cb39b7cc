//! The accelerators (crypto, ML inference): one register map for both, two interfaces.
//!
//! *Legacy* (seed §2.1): a submission ring of [`desc::SIZE`]-byte descriptors and a
//! completion ring of [`cqe::SIZE`]-byte entries, both in host memory, with one entry each
//! per slot. The driver fills descriptors, then writes the new tail to [`db::SQ_TAIL`]
//! (BAR2, a shared page the device polls). The device fetches each descriptor, reads the
//! input, computes, writes the output and then the completion (phase-tagged like NVMe:
//! the phase bit flips on every pass over the ring, so the driver needs no CQ register),
//! and publishes its head in [`db::SQ_HEAD`].
//!
//! *Streaming*: records (see [`crate::record`]) written, in order, into the stream window
//! ([`STREAM_WINDOW`] in BAR2, a ring of [`STREAM_WINDOW_SIZE`] bytes addressed by the
//! writer's running offset modulo its size) are processed in order; each output record is
//! pushed (DMA-written) to the destination ring set in the `STREAM_*` registers.
//!
//! BAR0 (4 KiB, trapped): identity, configuration, error status and 64-bit counters.
//! Completions are polled (no interrupts): the chain's CPU mode busy-polls, as DPDK-style
//! accelerator drivers do.

/// PCI vendor ID (see [`crate::smoke::VENDOR_ID`]).
pub const VENDOR_ID: u16 = 0x1172;
/// Device ID of the crypto accelerator (AES-256-GCM, QAT-like).
pub const CRYPTO_DEVICE_ID: u16 = 0x5a01;
/// Device ID of the ML inference accelerator.
pub const ML_DEVICE_ID: u16 = 0x5a02;
/// Class code: processing accelerator.
pub const CLASS_CODE: u32 = 0x12_00_00;

/// Trapped register BAR.
pub const REG_BAR: u8 = 0;
/// Its size.
pub const REG_BAR_SIZE: u64 = 4096;
/// Doorbell page + stream window BAR.
pub const DB_BAR: u8 = 2;
/// Its size.
pub const DB_BAR_SIZE: u64 = 128 << 10;
/// The stream window's offset in BAR2 (trapped: writes arrive in order).
pub const STREAM_WINDOW: u64 = 64 << 10;
/// The stream window's size.
pub const STREAM_WINDOW_SIZE: u64 = 64 << 10;

/// BAR0 registers (32-bit unless noted).
pub mod reg {
    /// Identity, reads [`ID_VALUE`].
    pub const ID: u64 = 0x00;
    /// "ACC1".
    pub const ID_VALUE: u32 = 0x4143_4331;
    /// Register map version.
    pub const VERSION: u64 = 0x04;
    /// This map's version.
    pub const VERSION_VALUE: u32 = 1;
    /// Function: [`FUNCTION_CRYPTO`] or [`FUNCTION_ML`].
    pub const FUNCTION: u64 = 0x08;
    /// AES-256-GCM.
    pub const FUNCTION_CRYPTO: u32 = 1;
    /// Int8 MLP inference.
    pub const FUNCTION_ML: u32 = 2;
    /// Largest input a command may name (bytes).
    pub const MAX_INPUT: u64 = 0x0c;
    /// Submission ring base, low and high halves (64-byte aligned).
    pub const SQ_BASE_LO: u64 = 0x10;
    /// High half.
    pub const SQ_BASE_HI: u64 = 0x14;
    /// Completion ring base (16-byte aligned).
    pub const CQ_BASE_LO: u64 = 0x18;
    /// High half.
    pub const CQ_BASE_HI: u64 = 0x1c;
    /// Entries of both rings: a power of two in 2..=[`MAX_ENTRIES`].
    pub const RING_ENTRIES: u64 = 0x20;
    /// Largest ring.
    pub const MAX_ENTRIES: u32 = 4096;
    /// Control: [`CTRL_ENABLE`] starts the legacy interface with the ring registers above
    /// (refused, and counted as BAD_CONFIG, when they are invalid); clearing it stops it
    /// and resets head, tail and phase.
    pub const CTRL: u64 = 0x24;
    /// Enable the legacy interface.
    pub const CTRL_ENABLE: u32 = 1 << 0;
    /// Status: [`STATUS_ENABLED`], [`STATUS_STREAM`].
    pub const STATUS: u64 = 0x28;
    /// The legacy interface runs.
    pub const STATUS_ENABLED: u32 = 1 << 0;
    /// The stream interface runs.
    pub const STATUS_STREAM: u32 = 1 << 1;
    /// Error status: bit `c` set while error counter `c` is non-zero.
    pub const ERROR_STATUS: u64 = 0x2c;

    /// Stream operation: an opcode of [`super::desc`] (decrypt, encrypt, infer).
    pub const STREAM_OP: u64 = 0x40;
    /// Stream model ID (ML).
    pub const STREAM_MODEL: u64 = 0x44;
    /// Stream destination ring base, low half.
    pub const STREAM_DEST_LO: u64 = 0x48;
    /// High half.
    pub const STREAM_DEST_HI: u64 = 0x4c;
    /// Destination ring size in bytes (a multiple of 64).
    pub const STREAM_DEST_SIZE: u64 = 0x50;
    /// Stream control: 1 starts (validating the stream registers; BAD_CONFIG if not),
    /// 0 stops and resets both offsets.
    pub const STREAM_CTRL: u64 = 0x54;
    /// Read-only: bytes pushed to the destination so far (the writer's running offset).
    pub const STREAM_DEST_OFFSET: u64 = 0x58;
    /// Read-only: bytes accepted from the window so far.
    pub const STREAM_IN_OFFSET: u64 = 0x5c;
    /// Stream key (crypto): 32 bytes, eight little-endian words.
    pub const STREAM_KEY: u64 = 0x60;

    /// Write 1 to zero every counter.
    pub const COUNTERS_CLEAR: u64 = 0xfc;
    /// Counters: 64-bit each, `COUNTERS + 8 * index` (see [`counter`]).
    pub const COUNTERS: u64 = 0x100;

    /// Counter indices. Those from [`counter::FIRST_ERROR`] on are errors and drops.
    pub mod counter {
        /// Commands completed successfully.
        pub const COMMANDS: u32 = 0;
        /// Input bytes processed.
        pub const INPUT_BYTES: u32 = 1;
        /// Output bytes written.
        pub const OUTPUT_BYTES: u32 = 2;
        /// Records processed by the stream interface.
        pub const STREAM_RECORDS: u32 = 3;
        /// First error counter.
        pub const FIRST_ERROR: u32 = 8;
        /// Descriptors refused (bad opcode, length, model): error completion.
        pub const BAD_DESCRIPTORS: u32 = 8;
        /// Authentication failures (tag mismatch): error completion, no output.
        pub const AUTH_FAILURES: u32 = 9;
        /// DMA accesses refused (descriptor, input, output or completion).
        pub const DMA_ERRORS: u32 = 10;
        /// Doorbells naming a tail outside the ring (ignored).
        pub const BAD_DOORBELLS: u32 = 11;
        /// Register writes refused (read-only register, bad value, bad offset).
        pub const BAD_REGISTER_WRITES: u32 = 12;
        /// Configurations refused (ring or stream registers invalid at enable).
        pub const BAD_CONFIG: u32 = 13;
        /// Outputs larger than the command's output capacity.
        pub const OUTPUT_TOO_SMALL: u32 = 14;
        /// Stream records refused (bad header or length, failed authentication) and
        /// dropped.
        pub const STREAM_BAD_RECORDS: u32 = 15;
        /// Stream writes dropped: out of order, beyond the window, or stream stopped.
        pub const STREAM_DROPS: u32 = 16;
        /// Number of counters.
        pub const N: usize = 17;
        /// Names, by index (for reports and the driver's counter dump).
        pub const NAMES: [&str; N] = [
            "commands",
            "input_bytes",
            "output_bytes",
            "stream_records",
            "reserved4",
            "reserved5",
            "reserved6",
            "reserved7",
            "bad_descriptors",
            "auth_failures",
            "dma_errors",
            "bad_doorbells",
            "bad_register_writes",
            "bad_config",
            "output_too_small",
            "stream_bad_records",
            "stream_drops",
        ];
    }
}

/// BAR2 page 0: the doorbell page (shared memory the device polls).
pub mod db {
    /// Submission tail, written by the driver (0..entries).
    pub const SQ_TAIL: u64 = 0x0;
    /// Submission head, published by the device.
    pub const SQ_HEAD: u64 = 0x4;
    /// Size of the shared page.
    pub const PAGE: u64 = 4096;
}

/// Submission descriptor layout (64 bytes, little endian).
pub mod desc {
    /// Size of a descriptor.
    pub const SIZE: usize = 64;
    /// u8: opcode.
    pub const OPCODE: usize = 0;
    /// u8: flags (none defined; must be 0).
    pub const FLAGS: usize = 1;
    /// u32: the driver's tag, echoed in the completion.
    pub const TAG: usize = 4;
    /// u64: input address.
    pub const SRC_ADDR: usize = 8;
    /// u32: input length.
    pub const SRC_LEN: usize = 16;
    /// u32: output capacity.
    pub const DST_CAP: usize = 20;
    /// u64: output address.
    pub const DST_ADDR: usize = 24;
    /// 32 bytes of per-command state: the AES-256 key (crypto) or, in its first u32, the
    /// model ID (ML).
    pub const STATE: usize = 32;
    /// Decrypt and authenticate a sealed record into a plain one.
    pub const OP_DECRYPT: u8 = 1;
    /// Seal a plain record.
    pub const OP_ENCRYPT: u8 = 2;
    /// Run inference on an image record, producing a result record.
    pub const OP_INFER: u8 = 3;
}

/// Completion entry layout (16 bytes, little endian).
pub mod cqe {
    /// Size of a completion entry.
    pub const SIZE: usize = 16;
    /// u32: the descriptor's tag.
    pub const TAG: usize = 0;
    /// u16: status ([`super::status`]).
    pub const STATUS: usize = 4;
    /// u8: phase, 1 on the first pass over the ring, flipping on every wrap; written last.
    pub const PHASE: usize = 6;
    /// u32: output bytes written.
    pub const OUT_LEN: usize = 8;
}

/// Completion status codes.
pub mod status {
    /// Done; the output is valid.
    pub const OK: u16 = 0;
    /// Unknown opcode or one this function does not do.
    pub const BAD_OPCODE: u16 = 1;
    /// Input length out of range or inconsistent with the record it holds.
    pub const BAD_LENGTH: u16 = 2;
    /// The output does not fit the capacity given.
    pub const OUTPUT_TOO_SMALL: u16 = 3;
    /// A DMA access of the command was refused.
    pub const DMA_ERROR: u16 = 4;
    /// The record failed authentication.
    pub const AUTH_FAILED: u16 = 5;
    /// The model ID is unknown or the input is not an image of the model's size.
    pub const BAD_MODEL: u16 = 6;
    /// Names, by code.
    pub fn name(code: u16) -> &'static str {
        match code {
            OK => "ok",
            BAD_OPCODE => "bad_opcode",
            BAD_LENGTH => "bad_length",
            OUTPUT_TOO_SMALL => "output_too_small",
            DMA_ERROR => "dma_error",
            AUTH_FAILED => "auth_failed",
            BAD_MODEL => "bad_model",
            _ => "unknown",
        }
    }
}
