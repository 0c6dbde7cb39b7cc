//! The Ensō NIC register and notification layout, shared by the device model, the driver
//! (guest-lib `enso`) and the RTL test benches.
//!
//! BAR2 follows upstream Ensō exactly: one 4 KiB page per queue, pipes first (queue
//! `i < MAX_PIPES`), then notification-buffer pairs (queue `MAX_PIPES + j`), each page
//! starting with the 64-byte `QueueRegs` block, with the card's semantics (a queue is live
//! while its address is non-zero). BAR0 (64 KiB, unused by upstream's library) carries our
//! extensions in pages of their own: identity, configuration and counters (trapped), and
//! the doorbells that a shared-memory emulation needs (prefetch doorbells and queue-state
//! acknowledgements). The helpers that change how a register is read (the ENABLE bit, the
//! prefetch doorbells, the queue-state page, the identity and size registers) are off until
//! a driver opts in by writing [`ext::EXT_ENABLE`]. See docs/enso-emulation.md for every
//! deviation from upstream and why.

/// PCI vendor ID of the Ensō card (Intel/Altera FPGA).
pub const VENDOR_ID: u16 = 0x1172;
/// PCI device ID the FPGA design uses (upstream's driver matches any device ID).
pub const DEVICE_ID: u16 = 0x0000;
/// Class code: Ethernet controller.
pub const CLASS_CODE: u32 = 0x02_00_00;

/// Bytes in a flit: the unit of pipe and notification-buffer sizes, heads and tails.
pub const FLIT: usize = 64;
/// Queue pages are 4 KiB apart.
pub const QUEUE_PAGE: u64 = 4096;
/// Upstream's limit on pipes (and the queue index where notification buffers start).
pub const MAX_PIPES: u32 = 8192;
/// Upstream's limit on notification-buffer pairs.
pub const MAX_NB_PAIRS: u32 = 1024;
/// Pipe (RX data ring) size in flits: 32768 flits = 2 MiB, one huge page.
pub const PIPE_FLITS: u32 = 32768;
/// Pipe size in bytes.
pub const PIPE_BYTES: usize = PIPE_FLITS as usize * FLIT;
/// Entries in each notification ring (RX and TX) of a pair.
pub const NOTIF_RING_ENTRIES: u32 = 16384;
/// Bytes of one notification ring; a pair's two rings share one 2 MiB huge page (RX first).
pub const NOTIF_RING_BYTES: usize = NOTIF_RING_ENTRIES as usize * NOTIFICATION_SIZE;
/// Size of one notification.
pub const NOTIFICATION_SIZE: usize = 64;
/// Largest transfer in one TX notification.
pub const MAX_TX_TRANSFER: u64 = 128 << 10;
/// TX transfers never cross this boundary (the huge page size).
pub const TX_BOUNDARY: u64 = 2 << 20;
/// Largest packet the RX path accepts (upstream: 1536 bytes; we take jumbo frames).
pub const MAX_RX_PACKET: usize = 9216;

// ----- BAR layout --------------------------------------------------------------------------

/// BAR0: our extension pages (64 KiB).
pub const EXT_BAR: u8 = 0;
/// Size of BAR0.
pub const EXT_BAR_SIZE: u64 = 64 << 10;
/// BAR2: the upstream queue registers (1 GiB, 64-bit, prefetchable).
pub const QUEUE_BAR: u8 = 2;
/// Size of BAR2.
pub const QUEUE_BAR_SIZE: u64 = 1 << 30;

/// Offset of pipe `i`'s register page in BAR2.
pub const fn pipe_page(i: u32) -> u64 {
    i as u64 * QUEUE_PAGE
}

/// Offset of notification-buffer pair `j`'s register page in BAR2.
pub const fn nb_page(j: u32) -> u64 {
    (MAX_PIPES + j) as u64 * QUEUE_PAGE
}

/// `QueueRegs` field offsets inside a queue page (u32 each).
pub mod queue {
    pub const RX_TAIL: u64 = 0x00;
    pub const RX_HEAD: u64 = 0x04;
    pub const RX_MEM_LOW: u64 = 0x08;
    pub const RX_MEM_HIGH: u64 = 0x0c;
    pub const TX_TAIL: u64 = 0x10;
    pub const TX_HEAD: u64 = 0x14;
    pub const TX_MEM_LOW: u64 = 0x18;
    pub const TX_MEM_HIGH: u64 = 0x1c;
    /// Size of the upstream block; the rest of the page is unused.
    pub const SIZE: u64 = 0x40;

    /// Pipe `rx_mem_low`: the notification-buffer pair ID lives in these low bits (the
    /// card clears them from the address; every other bit is address).
    pub const NB_ID_MASK: u32 = 0x3ff;
    /// `rx_mem_low` enable bit: an extension ([`super::ext::extension::ENABLE_BIT`]), off
    /// by default. With it on, a queue is live while this bit is set and the bit is not
    /// an address bit; with it off (the card), bit 20 is an address bit like any other and
    /// a queue is live while its address is non-zero.
    pub const ENABLE: u32 = 1 << 20;
    /// Address bits of `rx_mem_low` for a pipe on the card (everything above the pair ID).
    pub const PIPE_ADDR_MASK: u32 = !NB_ID_MASK;

    /// The card's queue pages: a pipe page has only these four registers (the rest reads 0).
    pub const PIPE_REGS_END: u64 = 0x10;
    /// The card's notification-buffer-pair page: all eight registers.
    pub const NB_REGS_END: u64 = 0x20;
}

/// BAR0 page 0: identity, configuration and counters (trapped MMIO, u32 registers; 64-bit
/// counters as low/high pairs, low first).
pub mod ext {
    /// Identity: reads [`ID_VALUE`].
    pub const ID: u64 = 0x000;
    /// "ENSO".
    pub const ID_VALUE: u32 = 0x454e_534f;
    /// Version of this register contract.
    pub const VERSION: u64 = 0x004;
    /// Current contract version.
    pub const VERSION_VALUE: u32 = 1;
    /// Read-only: pipes this device instance serves (≤ MAX_PIPES).
    pub const NUM_PIPES: u64 = 0x008;
    /// Read-only: notification-buffer pairs this instance serves (≤ MAX_NB_PAIRS).
    pub const NUM_NB_PAIRS: u64 = 0x00c;
    /// Read-only: pipe ring size in flits.
    pub const PIPE_FLITS: u64 = 0x010;
    /// Read-only: entries per notification ring.
    pub const NOTIF_ENTRIES: u64 = 0x014;
    /// Read-write: notification mode, [`MODE_REACTIVE`] (default) or [`MODE_PER_PACKET`].
    pub const NOTIF_MODE: u64 = 0x018;
    /// Reactive notifications: one outstanding notification per pipe (upstream's rule).
    pub const MODE_REACTIVE: u32 = 0;
    /// One notification per packet (for comparison).
    pub const MODE_PER_PACKET: u32 = 1;
    /// Read-only: error summary, one bit per counter class below that is non-zero.
    pub const ERROR_STATUS: u64 = 0x01c;
    /// Write 1: reset all counters to zero.
    pub const COUNTERS_CLEAR: u64 = 0x020;
    /// Read-only: the extensions this device offers ([`extension`] bits). Card software
    /// never touches BAR0, so it never sees it; a driver that opts in knows it talks to the
    /// emulator (it never infers that from a value read here: on the card BAR0 is unused).
    pub const EXT_CAPS: u64 = 0x030;
    /// Read-write: the extensions in force ([`extension`] bits; unknown bits are refused
    /// and counted). 0 after reset: the device then reads every register as the card does.
    pub const EXT_ENABLE: u64 = 0x034;
    /// Read-only: the register mode, [`REGISTERS_SHARED`] or [`REGISTERS_MMIO`].
    pub const REGISTER_MODE: u64 = 0x038;
    /// Queue pages are shared memory the device polls.
    pub const REGISTERS_SHARED: u32 = 0;
    /// Queue pages trap: the device sees every write, in order.
    pub const REGISTERS_MMIO: u32 = 1;

    /// Extension bits of [`EXT_CAPS`] and [`EXT_ENABLE`].
    pub mod extension {
        /// `rx_mem_low` bit 20 ([`crate::enso::queue::ENABLE`]) enables a queue; without
        /// it, a queue is live while its address is non-zero (the card).
        pub const ENABLE_BIT: u32 = 1 << 0;
        /// The prefetch doorbell page ([`crate::enso::prefetch`]); without it, a prefetch
        /// is a rewrite of the unchanged `rx_head` (the card; invisible in shared mode).
        pub const PREFETCH_DOORBELL: u32 = 1 << 1;
        /// The queue-state (disable acknowledge) page ([`crate::enso::state`]); without
        /// it, it reads 0.
        pub const QUEUE_STATE: u32 = 1 << 2;
        /// ID, VERSION, NUM_PIPES, NUM_NB_PAIRS, PIPE_FLITS, NOTIF_ENTRIES; without it
        /// they read 0.
        pub const IDENTITY: u32 = 1 << 3;
        /// Every extension.
        pub const ALL: u32 = ENABLE_BIT | PREFETCH_DOORBELL | QUEUE_STATE | IDENTITY;
    }
    /// Read-only: device time in 5 ns ticks (200 MHz), low half.
    pub const TIMESTAMP_LO: u64 = 0x028;
    /// Read-only: device time, high half.
    pub const TIMESTAMP_HI: u64 = 0x02c;

    /// Start of the 64-bit counters (index `c` at `COUNTERS + 8 * c`).
    pub const COUNTERS: u64 = 0x100;

    /// Stream RX slots (our extension for a switch that consumes a pipe, e.g. Nagare):
    /// `STREAM_RX_PIPE + 4 * k`, k < [`STREAM_RX_SLOTS`], holds `pipe | STREAM_ENABLE`. A
    /// stream pipe receives records, not frames (the 42-byte Ethernet/IPv4/UDP header is
    /// stripped, each record starting on a flit) and sends no notifications: whoever
    /// consumes the pipe returns head credits.
    pub const STREAM_RX_PIPE: u64 = 0x040;
    /// Stream RX slots.
    pub const STREAM_RX_SLOTS: u32 = 4;
    /// Enable bit of a stream RX slot.
    pub const STREAM_ENABLE: u32 = 1 << 31;
    /// TX stream window control: 1 starts it (offsets from 0), 0 stops it.
    pub const STREAM_TX_CTRL: u64 = 0x060;
    /// TX stream window: bytes accepted so far (read-only).
    pub const STREAM_TX_OFFSET: u64 = 0x064;
    /// TX stream header template: 42 bytes (Ethernet, IPv4, UDP) as 11 little-endian
    /// words; the NIC fills in the IPv4 total length and checksum and the UDP length.
    pub const STREAM_TX_TEMPLATE: u64 = 0x080;
    /// The TX stream window in BAR0 (trapped): records written there in order (each on a
    /// 64-byte boundary of the writer's running offset) are framed with the template
    /// and sent.
    pub const STREAM_TX_WINDOW: u64 = 0x8000;
    /// Its size.
    pub const STREAM_TX_WINDOW_SIZE: u64 = 0x8000;

    /// Counter indices. Every dropped packet lands in exactly one `RX_DROP_*`/`TX_DROP_*`.
    pub mod counter {
        pub const RX_PACKETS: u32 = 0;
        pub const RX_BYTES: u32 = 1;
        pub const TX_PACKETS: u32 = 2;
        pub const TX_BYTES: u32 = 3;
        pub const RX_NOTIFICATIONS: u32 = 4;
        pub const TX_COMPLETIONS: u32 = 5;
        pub const PREFETCHES: u32 = 6;
        pub const HEAD_UPDATES: u32 = 7;
        /// RX packet did not fit in its pipe (the pipe is full): dropped, never overwritten.
        pub const RX_DROP_PIPE_FULL: u32 = 8;
        /// RX packet steered to a pipe that is not enabled.
        pub const RX_DROP_PIPE_DISABLED: u32 = 9;
        /// RX packet matched no flow and no fallback queues are configured.
        pub const RX_DROP_NO_FLOW: u32 = 10;
        /// RX packet malformed (too short for Ethernet, or over MAX_RX_PACKET).
        pub const RX_DROP_MALFORMED: u32 = 11;
        /// RX data could not be written by DMA (address not mapped).
        pub const RX_DROP_DMA: u32 = 12;
        /// RX notification dropped because the notification ring was full (data delivered).
        pub const RX_NOTIF_DROP_RING_FULL: u32 = 13;
        /// Software wrote a head outside the ring or beyond the tail.
        pub const BAD_HEAD: u32 = 14;
        /// Software posted a TX notification with an unknown signal, a zero or oversized
        /// length, or one crossing the 2 MiB boundary.
        pub const TX_BAD_NOTIFICATION: u32 = 15;
        /// TX data held a frame whose length could not be parsed: rest of transfer dropped.
        pub const TX_DROP_BAD_FRAME: u32 = 16;
        /// TX data could not be read by DMA.
        pub const TX_DROP_DMA: u32 = 17;
        /// A configuration notification with an unknown ID or bad fields.
        pub const BAD_CONFIG: u32 = 18;
        /// A flow-table insert found all four candidate slots taken.
        pub const FLOW_TABLE_FULL: u32 = 19;
        /// Software wrote a tail outside the TX notification ring.
        pub const BAD_TAIL: u32 = 20;
        /// Any other DMA failure (notification writes and fetches).
        pub const DMA_ERRORS: u32 = 21;
        /// A register write the device rejected (read-only, bad offset, bad value).
        pub const BAD_REGISTER_WRITES: u32 = 22;
        /// Frames the wire backend refused (link down, backpressure).
        pub const TX_DROP_WIRE: u32 = 23;
        /// TX stream window writes or records dropped (out of order, malformed, stopped).
        pub const TX_DROP_STREAM: u32 = 24;
        /// The last drop/error counter (ERROR_STATUS has a bit for each up to here).
        pub const LAST_ERROR: u32 = TX_DROP_STREAM;
        /// Accesses to BAR0 that reached the device: every BAR0 register is ours (the card
        /// leaves BAR0 unused), so card software makes none. Accesses to extension pages
        /// offered for mmap are plain memory and not seen.
        pub const EXTENSION_ACCESSES: u32 = 25;
        /// Doorbell writes the device saw as writes (register mode mmio: every pipe
        /// `rx_head`, pair `rx_head` and `tx_tail` write and every prefetch-doorbell write;
        /// shared mode: none, the driver reports its own).
        pub const QUEUE_DOORBELLS: u32 = 26;
        /// Writes by software of a register the device owns (a pipe's or pair's `rx_tail`,
        /// a pair's `tx_head`): the device takes the value as its own, as the card does.
        pub const DEVICE_REGISTER_WRITES: u32 = 27;
        /// Queue-page accesses (mmio mode) that went through the RTL register front end
        /// (`rtl/enso/enso_queue_regs.sv`) instead of the Rust decode.
        pub const RTL_REGISTER_ACCESSES: u32 = 28;
        /// Number of counters.
        pub const COUNT: u32 = 29;

        /// Counter names, in index order (JSON field names of the testbed report).
        pub const NAMES: [&str; COUNT as usize] = [
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "rx_notifications",
            "tx_completions",
            "prefetches",
            "head_updates",
            "rx_drop_pipe_full",
            "rx_drop_pipe_disabled",
            "rx_drop_no_flow",
            "rx_drop_malformed",
            "rx_drop_dma",
            "rx_notif_drop_ring_full",
            "bad_head",
            "tx_bad_notification",
            "tx_drop_bad_frame",
            "tx_drop_dma",
            "bad_config",
            "flow_table_full",
            "bad_tail",
            "dma_errors",
            "bad_register_writes",
            "tx_drop_wire",
            "tx_drop_stream",
            "extension_accesses",
            "queue_doorbells",
            "device_register_writes",
            "rtl_register_accesses",
        ];
    }
}

/// BAR0 pages 1–2 (an extension, [`ext::extension::PREFETCH_DOORBELL`]): one 8-byte prefetch
/// doorbell per notification-buffer pair. Upstream asks for a pipe's notification by rewriting the unchanged `rx_head`, a
/// write a polling device cannot see; here software writes `{pipe_id: u32, seq: u32}` to
/// slot `j` (pipe id first, then a new sequence number) and the device treats it as that
/// head write.
pub mod prefetch {
    /// Offset of the prefetch doorbell page in BAR0.
    pub const PAGE: u64 = 0x1000;
    /// Offset of pair `j`'s slot.
    pub const fn slot(j: u32) -> u64 {
        PAGE + 8 * j as u64
    }
    /// Pipe ID field (u32) inside a slot.
    pub const PIPE_ID: u64 = 0;
    /// Sequence field (u32) inside a slot; a change rings the doorbell.
    pub const SEQ: u64 = 4;
}

/// BAR0 page 3 (an extension, [`ext::extension::QUEUE_STATE`]; written by the device):
/// queue-state acknowledgements,
/// one bit per queue, set while the device uses the queue and cleared once a disabled
/// queue is quiesced (no DMA to it will follow). Software waits on these instead of
/// upstream's "write 0 and read back until it sticks".
pub mod state {
    /// Offset of the pipe bitmap (MAX_PIPES bits = 1 KiB).
    pub const PIPES: u64 = 0x3000;
    /// Offset of the notification-buffer-pair bitmap (MAX_NB_PAIRS bits = 128 B).
    pub const NB_PAIRS: u64 = 0x3400;
    /// Offset of the u32 word holding queue `i`'s bit, and the bit.
    pub const fn pipe_bit(i: u32) -> (u64, u32) {
        (PIPES + 4 * (i / 32) as u64, 1 << (i % 32))
    }
    /// As [`pipe_bit`] for notification-buffer pair `j`.
    pub const fn nb_bit(j: u32) -> (u64, u32) {
        (NB_PAIRS + 4 * (j / 32) as u64, 1 << (j % 32))
    }
}

/// BAR0 pages that can be shared memory (offered for mmap when the device is configured
/// to map its extension pages in shared register mode): prefetch doorbells and state.
pub const EXT_SHARED_START: u64 = 0x1000;
/// End of the shared extension pages.
pub const EXT_SHARED_END: u64 = 0x4000;

// ----- notifications -----------------------------------------------------------------------

/// Notification field offsets (u64 each, little-endian).
pub mod notif {
    /// RX and TX: the signal word. RX: non-zero = valid, software zeroes it after reading.
    /// TX: [`SIGNAL_SEND`] or [`SIGNAL_CONFIG`]; the device writes 0 back on completion.
    pub const SIGNAL: usize = 0;
    /// RX: the pipe (queue) ID.
    pub const RX_QUEUE_ID: usize = 8;
    /// RX: the pipe's new tail, in flits.
    pub const RX_TAIL: usize = 16;
    /// TX: the data's (IO virtual) address.
    pub const TX_PHYS_ADDR: usize = 8;
    /// TX: the data's length in bytes.
    pub const TX_LENGTH: usize = 16;
    /// TX: configuration ID (signal = 2).
    pub const CONFIG_ID: usize = 8;

    /// TX signal: send the data.
    pub const SIGNAL_SEND: u64 = 1;
    /// TX signal: configuration notification.
    pub const SIGNAL_CONFIG: u64 = 2;
}

/// Configuration notifications (signal = 2): IDs and field offsets (bytes from the start
/// of the 64-byte notification), as upstream packs them.
pub mod config {
    pub const FLOW_TABLE: u64 = 1;
    pub const TIMESTAMP: u64 = 2;
    pub const RATE_LIMIT: u64 = 3;
    pub const FALLBACK_QUEUES: u64 = 4;

    /// Flow table: dst_port u16 @16, src_port u16 @18, dst_ip u32 @20, src_ip u32 @24,
    /// protocol u32 @28, pipe_id u32 @32 (ports and addresses in host order).
    pub const FT_DST_PORT: usize = 16;
    pub const FT_SRC_PORT: usize = 18;
    pub const FT_DST_IP: usize = 20;
    pub const FT_SRC_IP: usize = 24;
    pub const FT_PROTOCOL: usize = 28;
    pub const FT_PIPE_ID: usize = 32;

    /// Timestamp: enable u64 @16 (non-zero = on), offset u8 @24 (byte offset in the packet
    /// where TX writes the stamp and RX writes the RTT; 0 means the default 18).
    pub const TS_ENABLE: usize = 16;
    pub const TS_OFFSET: usize = 24;
    /// Default timestamp offset.
    pub const TS_DEFAULT_OFFSET: u8 = 18;

    /// Rate limit: denominator u16 @16, numerator u16 @18, enable u32 @20: `numerator`
    /// flits every `denominator` cycles (200 MHz).
    pub const RL_DENOMINATOR: usize = 16;
    pub const RL_NUMERATOR: usize = 18;
    pub const RL_ENABLE: usize = 20;

    /// Fallback queues: nb_fallback_queues u32 @16, fallback_queue_mask u32 @20,
    /// enable_rr u64 @24.
    pub const FB_COUNT: usize = 16;
    pub const FB_MASK: usize = 20;
    pub const FB_ENABLE_RR: usize = 24;
}

/// Device clock: 200 MHz, 5 ns per tick.
pub const NS_PER_TICK: u64 = 5;

/// Jenkins lookup3 `final()` mix, as the RTL's flow-table hash uses it.
pub fn lookup3_final(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// The flow-table hash of a key in sub-table `table` (0..4): a = b = c = 0xdeadbefb +
/// table, the key words added in, then `final()`.
pub fn flow_hash(table: u32, src_ip: u32, dst_ip: u32, src_port: u16, dst_port: u16) -> u32 {
    let init = 0xdead_befbu32.wrapping_add(table);
    let a = init.wrapping_add(src_ip);
    let b = init.wrapping_add(dst_ip);
    let c = init.wrapping_add(((src_port as u32) << 16) | dst_port as u32);
    lookup3_final(a, b, c)
}

/// Flow-table geometry: 4 sub-tables of 2048 entries.
pub const FLOW_SUBTABLES: u32 = 4;
/// Entries per flow sub-table.
pub const FLOW_ENTRIES: u32 = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_upstream() {
        assert_eq!(nb_page(0), 8192 * 4096);
        assert_eq!(nb_page(MAX_NB_PAIRS - 1) + QUEUE_PAGE, 36 << 20, "upstream maps 36 MiB");
        assert_eq!(PIPE_BYTES, 2 << 20);
        assert_eq!(2 * NOTIF_RING_BYTES, 2 << 20);
        assert_eq!(ext::counter::NAMES.len(), ext::counter::COUNT as usize);
        assert!(state::NB_PAIRS + (MAX_NB_PAIRS / 8) as u64 <= EXT_SHARED_END);
        assert!(prefetch::slot(MAX_NB_PAIRS - 1) + 8 <= state::PIPES);
        assert_eq!(queue::NB_ID_MASK & queue::ENABLE, 0);
        assert_eq!(queue::PIPE_ADDR_MASK & queue::NB_ID_MASK, 0);
        const { assert!(ext::COUNTERS + 8 * ext::counter::COUNT as u64 <= ext::STREAM_TX_WINDOW) };
        const { assert!(ext::REGISTER_MODE < ext::STREAM_RX_PIPE) };
        assert_eq!(ext::extension::ALL, 0xf);
    }

    #[test]
    fn hash_differs_by_table() {
        let h: Vec<u32> = (0..4).map(|t| flow_hash(t, 0x0a000001, 0x0a000002, 1234, 80)).collect();
        assert!(h.windows(2).all(|w| w[0] != w[1]));
    }
}
