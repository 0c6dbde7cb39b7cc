//! The packetized baseline NIC (E810/DPDK style): register contract, descriptor layout and
//! the RSS hash, shared by the device model (`packet-nic`) and its driver.
//!
//! This is the interface the seed (§3.1.1) compares Ensō against: software posts 2 KiB
//! packet buffers through 16-byte descriptors in per-queue rings in host memory; the NIC
//! writes each received frame into the next posted buffer and writes the descriptor back
//! with the length and a done (DD) bit; TX is the same ring discipline in the other
//! direction.
//!
//! Who writes what:
//! - BAR0 (64 KiB, trapped MMIO, u32 registers): identity and sizes (read-only), RSS
//!   configuration and write-back coalescing (software, read-write), counters (device,
//!   read-only; 64-bit as low/high pairs, reading the low half latches the high half).
//! - BAR2 (shared memory the device polls): one 4 KiB page per queue pair. Software writes
//!   ring addresses, sizes and tails; the device writes heads and the STATE word.
//! - Host memory: descriptor rings (software posts, device writes back), packet buffers.
//!
//! Ring discipline (both directions): indices run `0..size`; descriptors `[head, tail)`
//! belong to the device; `head == tail` is empty, so at most `size - 1` are posted at once.
//! A tail outside the ring, or one that moves backwards past descriptors the device has
//! already taken, is ignored and counted as BAD_TAIL (once per distinct value). The device
//! reads posted descriptors in bursts of up to [`DESC_FETCH_MAX`] (one DMA read, never
//! crossing the end of the ring), like E810's descriptor prefetch, and writes them back in
//! groups of up to WB_BATCH contiguous descriptors (one DMA write), always flushing at the
//! end of each polling round; HEAD is published after the write-back that covers it.
//!
//! Frames larger than one buffer are chained (jumbo frames up to [`MAX_FRAME`]): RX fills
//! `ceil(len / BUF_SIZE)` consecutive descriptors, all but the last with length BUF_SIZE,
//! the last with EOP; when fewer are posted the whole frame is dropped
//! (RX_DROP_NO_BUFFER) — never a partial frame. TX sends the buffers of descriptors up to
//! and including the one with EOP as one frame (at most [`MAX_TX_CHAIN`] descriptors).

/// PCI vendor ID (the Ensō card's, Intel/Altera FPGA: both NICs live on the same "board").
pub const VENDOR_ID: u16 = 0x1172;
/// PCI device ID of the packetized NIC.
pub const DEVICE_ID: u16 = 0x0002;
/// Class code: Ethernet controller.
pub const CLASS_CODE: u32 = 0x02_00_00;

/// Packet buffer size: the most one descriptor holds (DPDK's default mbuf data room).
pub const BUF_SIZE: usize = 2048;
/// Largest frame either direction accepts (jumbo: 9000-byte MTU plus headers), as Ensō.
pub const MAX_FRAME: usize = 9216;
/// Smallest frame (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Most descriptors one TX frame may span; a longer chain without EOP is a bad descriptor.
pub const MAX_TX_CHAIN: usize = 8;
/// Descriptors one descriptor-fetch DMA read takes at most.
pub const DESC_FETCH_MAX: usize = 32;
/// Largest ring, in descriptors (512 KiB).
pub const MAX_RING_SIZE: u32 = 32768;
/// Smallest ring, in descriptors.
pub const MIN_RING_SIZE: u32 = 2;
/// Most queue pairs a device instance can serve.
pub const MAX_QUEUES: u32 = 256;

// ----- BAR layout --------------------------------------------------------------------------

/// BAR0: registers (trapped).
pub const REG_BAR: u8 = 0;
/// Size of BAR0.
pub const REG_BAR_SIZE: u64 = 64 << 10;
/// BAR2: queue pages (shared memory, polled).
pub const QUEUE_BAR: u8 = 2;
/// Queue pages are 4 KiB apart.
pub const QUEUE_PAGE: u64 = 4096;
/// Size of BAR2 (MAX_QUEUES pages).
pub const QUEUE_BAR_SIZE: u64 = MAX_QUEUES as u64 * QUEUE_PAGE;

/// Offset of queue pair `q`'s page in BAR2.
pub const fn queue_page(q: u32) -> u64 {
    q as u64 * QUEUE_PAGE
}

/// Fields of a queue page (u32 each). RX and TX are independent queues sharing the page.
pub mod queue {
    /// Software: RX ring address, low half, with [`ENABLE`](super::queue::ENABLE). Write
    /// RING_HIGH and RING_SIZE (and ideally TAIL) first; writing the low half with ENABLE
    /// set commits. Clearing ENABLE (or changing the address) disables the queue; the
    /// device acknowledges through [`STATE`].
    pub const RX_RING_LOW: u64 = 0x00;
    /// Software: RX ring address, high half.
    pub const RX_RING_HIGH: u64 = 0x04;
    /// Software: RX ring size in descriptors (power of two, MIN_RING_SIZE..=MAX_RING_SIZE),
    /// read when the queue is enabled. A bad size refuses the enable (BAD_REGISTER_WRITES).
    pub const RX_RING_SIZE: u64 = 0x08;
    /// Software: descriptors are posted up to (not including) this index.
    pub const RX_TAIL: u64 = 0x0c;
    /// Device: descriptors before this index are written back (DD set). 0 on enable.
    pub const RX_HEAD: u64 = 0x10;
    /// As RX_RING_LOW, for the TX ring.
    pub const TX_RING_LOW: u64 = 0x20;
    /// As RX_RING_HIGH, for the TX ring.
    pub const TX_RING_HIGH: u64 = 0x24;
    /// As RX_RING_SIZE, for the TX ring.
    pub const TX_RING_SIZE: u64 = 0x28;
    /// Software: descriptors up to (not including) this index are to be sent (the doorbell).
    pub const TX_TAIL: u64 = 0x2c;
    /// Device: descriptors before this index are sent (or dropped) and written back.
    pub const TX_HEAD: u64 = 0x30;
    /// Device: queue-state acknowledgement, [`STATE_RX`] | [`STATE_TX`]. A bit is set once
    /// the queue is enabled and cleared once a disabled queue is quiesced (no DMA to its
    /// ring or buffers follows). Software writes are overwritten.
    pub const STATE: u64 = 0x40;
    /// STATE bit: the RX queue is in use.
    pub const STATE_RX: u32 = 1;
    /// STATE bit: the TX queue is in use.
    pub const STATE_TX: u32 = 2;

    /// `*_RING_LOW` enable bit. Rings are 128-byte aligned: bits 6..0 of the low word are
    /// not address bits (bit 0 is ENABLE, bits 6..1 are ignored).
    pub const ENABLE: u32 = 1;
    /// Address bits of `*_RING_LOW`.
    pub const ADDR_MASK: u32 = !0x7f;
}

// ----- descriptors -------------------------------------------------------------------------

/// Descriptor size (RX and TX).
pub const DESC_SIZE: usize = 16;

/// Descriptor field offsets and flags. RX: software writes `addr` (and zeroes the rest);
/// the device writes the whole descriptor back with `len`, `flags` and `rss_hash`. TX:
/// software writes `addr`, `len`, `flags` (EOP on a frame's last descriptor, DD clear);
/// the device writes it back with DD set.
pub mod desc {
    /// Buffer (IO virtual) address, u64.
    pub const ADDR: usize = 0;
    /// Bytes in the buffer, u16 (RX: written by the device; TX: 1..=BUF_SIZE).
    pub const LEN: usize = 8;
    /// Flags, u16.
    pub const FLAGS: usize = 10;
    /// RX: the frame's RSS hash, u32 (written by the device). TX: reserved.
    pub const RSS_HASH: usize = 12;

    /// Descriptor done: written back by the device.
    pub const DD: u16 = 1 << 0;
    /// End of packet: the frame's last descriptor.
    pub const EOP: u16 = 1 << 1;
    /// RX: the frame was dropped (its buffer could not be written: RX_DROP_DMA); the buffer
    /// holds nothing and `len` is 0. Software recycles it like any other.
    pub const ERR: u16 = 1 << 2;
}

// ----- BAR0 registers ----------------------------------------------------------------------

/// BAR0 registers (trapped MMIO, u32; any other write is counted as BAD_REGISTER_WRITES).
pub mod reg {
    /// Identity: reads [`ID_VALUE`].
    pub const ID: u64 = 0x000;
    /// "PKTZ".
    pub const ID_VALUE: u32 = 0x504b_545a;
    /// Version of this register contract.
    pub const VERSION: u64 = 0x004;
    /// Current contract version.
    pub const VERSION_VALUE: u32 = 1;
    /// Read-only: queue pairs this instance serves (≤ MAX_QUEUES).
    pub const NUM_QUEUES: u64 = 0x008;
    /// Read-only: packet buffer size (BUF_SIZE).
    pub const BUF_SIZE: u64 = 0x00c;
    /// Read-only: largest ring size (MAX_RING_SIZE).
    pub const MAX_RING: u64 = 0x010;
    /// Read-write: RX queues RSS spreads over, 1..=NUM_QUEUES (power-on 1: everything to
    /// queue 0). Queue = `rss_queue(hash, RSS_QUEUES)`.
    pub const RSS_QUEUES: u64 = 0x014;
    /// Read-write: write-back coalescing, descriptors per write-back DMA, 1..=WB_BATCH_MAX
    /// (power-on [`WB_BATCH_DEFAULT`]).
    pub const WB_BATCH: u64 = 0x018;
    /// Power-on WB_BATCH.
    pub const WB_BATCH_DEFAULT: u32 = 4;
    /// Largest WB_BATCH.
    pub const WB_BATCH_MAX: u32 = 64;
    /// Read-only: error summary, bit `c` set for every counter `c` ≥ RX_DROP_NO_BUFFER
    /// that is non-zero.
    pub const ERROR_STATUS: u64 = 0x01c;
    /// Write 1: reset all counters to zero.
    pub const COUNTERS_CLEAR: u64 = 0x020;
    /// Read-write: the 40-byte Toeplitz key, ten u32 words, byte `4i` of the key in the low
    /// byte of word `i` (power-on [`RSS_KEY_DEFAULT`]). Takes effect within a polling round.
    pub const RSS_KEY: u64 = 0x040;
    /// Words of RSS_KEY.
    pub const RSS_KEY_WORDS: u64 = 10;

    /// Start of the 64-bit counters (index `c` at `COUNTERS + 8 * c`).
    pub const COUNTERS: u64 = 0x100;

    /// Counter indices. Names match Ensō's where they mean the same thing. Every dropped
    /// RX frame lands in exactly one `RX_DROP_*`; every dropped TX frame in exactly one of
    /// TX_DROP_DMA, TX_BAD_DESCRIPTOR, TX_DROP_WIRE.
    pub mod counter {
        pub const RX_PACKETS: u32 = 0;
        pub const RX_BYTES: u32 = 1;
        pub const TX_PACKETS: u32 = 2;
        pub const TX_BYTES: u32 = 3;
        /// Descriptor-fetch DMA reads (RX and TX).
        pub const DESCRIPTOR_FETCHES: u32 = 4;
        /// Descriptor write-back DMA writes (RX and TX).
        pub const DESCRIPTOR_WRITEBACKS: u32 = 5;
        /// RX frames that spanned more than one descriptor.
        pub const RX_CHAINED: u32 = 6;
        /// TX frames that spanned more than one descriptor.
        pub const TX_CHAINED: u32 = 7;
        /// RX frame dropped: not enough descriptors posted on its queue.
        pub const RX_DROP_NO_BUFFER: u32 = 8;
        /// RX frame hashed to a queue that is not enabled.
        pub const RX_DROP_QUEUE_DISABLED: u32 = 9;
        /// RX frame malformed (shorter than an Ethernet header, or over MAX_FRAME).
        pub const RX_DROP_MALFORMED: u32 = 10;
        /// RX frame lost to DMA: its buffer could not be written (descriptor written back
        /// with ERR) or its descriptors could not be fetched.
        pub const RX_DROP_DMA: u32 = 11;
        /// TX frame lost to DMA: a buffer could not be read.
        pub const TX_DROP_DMA: u32 = 12;
        /// TX frame dropped for a bad descriptor: length 0 or over BUF_SIZE, a frame shorter
        /// than MIN_FRAME or longer than MAX_FRAME, or a chain over MAX_TX_CHAIN without EOP.
        pub const TX_BAD_DESCRIPTOR: u32 = 13;
        /// Software wrote a tail outside the ring or behind descriptors already taken.
        pub const BAD_TAIL: u32 = 14;
        /// DMA failures on rings: descriptor fetches and write-backs.
        pub const DMA_ERRORS: u32 = 15;
        /// A register write the device rejected (read-only, bad offset, bad value, a
        /// queue enable with a bad ring size).
        pub const BAD_REGISTER_WRITES: u32 = 16;
        /// Frames the wire backend refused (link down, backpressure).
        pub const TX_DROP_WIRE: u32 = 17;
        /// Number of counters.
        pub const COUNT: u32 = 18;

        /// Counter names, in index order (JSON field names of the testbed report).
        pub const NAMES: [&str; COUNT as usize] = [
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "descriptor_fetches",
            "descriptor_writebacks",
            "rx_chained",
            "tx_chained",
            "rx_drop_no_buffer",
            "rx_drop_queue_disabled",
            "rx_drop_malformed",
            "rx_drop_dma",
            "tx_drop_dma",
            "tx_bad_descriptor",
            "bad_tail",
            "dma_errors",
            "bad_register_writes",
            "tx_drop_wire",
        ];
    }
}

// ----- RSS ---------------------------------------------------------------------------------

/// Length of the Toeplitz key.
pub const RSS_KEY_LEN: usize = 40;

/// Power-on RSS key: the Microsoft RSS verification key (also DPDK's and most drivers').
pub const RSS_KEY_DEFAULT: [u8; RSS_KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0,
    0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42,
    0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Entries of the (implicit) redirection table: queue = RETA[hash & (RETA_SIZE - 1)], the
/// table filled round-robin over RSS_QUEUES (DPDK's default fill).
pub const RETA_SIZE: u32 = 128;

/// The Toeplitz hash of `input` under `key` (input at most 32 bytes).
pub fn toeplitz(key: &[u8; RSS_KEY_LEN], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    for (i, &b) in input.iter().enumerate().take(RSS_KEY_LEN - 4) {
        for bit in 0..8 {
            if b & (0x80 >> bit) != 0 {
                hash ^= key_window(key, i * 8 + bit);
            }
        }
    }
    hash
}

/// The 32 key bits starting at bit `pos` (bit 0 = the most significant bit of byte 0).
pub fn key_window(key: &[u8; RSS_KEY_LEN], pos: usize) -> u32 {
    let byte = pos / 8;
    let shift = pos % 8;
    let at = |i: usize| key.get(i).copied().unwrap_or(0) as u64;
    let w = at(byte) << 32 | at(byte + 1) << 24 | at(byte + 2) << 16 | at(byte + 3) << 8 | at(byte + 4);
    (w >> (8 - shift)) as u32
}

/// What RSS hashes for a frame, as the hash input bytes (network order): IPv4 TCP/UDP:
/// source address, destination address, source port, destination port (12 bytes);
/// other IPv4 (and fragments): the two addresses (8 bytes); anything else: nothing, hash 0
/// (queue 0). Returns the input length written to `out`.
pub fn rss_input(frame: &[u8], out: &mut [u8; 12]) -> usize {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return 0;
    }
    out[..8].copy_from_slice(&frame[26..34]);
    let ihl = (frame[14] & 0xf) as usize * 4;
    let proto = frame[23];
    let frag = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff;
    let l4 = 14 + ihl;
    if ihl >= 20 && frag == 0 && (proto == 6 || proto == 17) && frame.len() >= l4 + 4 {
        out[8..12].copy_from_slice(&frame[l4..l4 + 4]);
        12
    } else {
        8
    }
}

/// The RX queue a hash selects when RSS spreads over `n` queues.
pub const fn rss_queue(hash: u32, n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        (hash & (RETA_SIZE - 1)) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The layout holds together (checked at compile time).
    const _: () = {
        assert!(reg::counter::NAMES.len() == reg::counter::COUNT as usize);
        assert!(reg::COUNTERS + 8 * reg::counter::COUNT as u64 <= 0x1000);
        assert!(reg::RSS_KEY + 4 * reg::RSS_KEY_WORDS <= reg::COUNTERS);
        assert!(queue::STATE + 4 <= QUEUE_PAGE);
        assert!(queue::ADDR_MASK & queue::ENABLE == 0);
        assert!(MAX_RING_SIZE as usize * DESC_SIZE == 512 << 10);
        assert!(MAX_FRAME.div_ceil(BUF_SIZE) <= MAX_TX_CHAIN);
        assert!(reg::WB_BATCH_DEFAULT <= reg::WB_BATCH_MAX);
    };

    /// (destination, destination port, source, source port, hash with ports, IP-only hash).
    type Case = ([u8; 4], u16, [u8; 4], u16, u32, u32);

    /// The Microsoft RSS verification suite (IPv4 rows).
    #[test]
    fn toeplitz_matches_the_verification_suite() {
        let k = &RSS_KEY_DEFAULT;
        let cases: [Case; 3] = [
            ([161, 142, 100, 80], 1766, [66, 9, 149, 187], 2794, 0x51cc_c178, 0x323e_8fc2),
            ([65, 69, 140, 83], 4739, [199, 92, 111, 2], 14230, 0xc626_b0ea, 0xd718_262a),
            ([12, 22, 207, 184], 38024, [24, 19, 198, 95], 12898, 0x5c2b_394a, 0xd2d0_a5de),
        ];
        for (dst, dport, src, sport, with_ports, ip_only) in cases {
            let mut input = [0u8; 12];
            input[..4].copy_from_slice(&src);
            input[4..8].copy_from_slice(&dst);
            input[8..10].copy_from_slice(&sport.to_be_bytes());
            input[10..12].copy_from_slice(&dport.to_be_bytes());
            assert_eq!(toeplitz(k, &input), with_ports);
            assert_eq!(toeplitz(k, &input[..8]), ip_only);
        }
    }

    #[test]
    fn input_and_queue() {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[1, 2, 3, 4]);
        f[30..34].copy_from_slice(&[5, 6, 7, 8]);
        f[34..38].copy_from_slice(&[0, 9, 0, 10]);
        let mut i = [0u8; 12];
        assert_eq!(rss_input(&f, &mut i), 12);
        assert_eq!(i, [1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 0, 10]);
        f[23] = 1;
        assert_eq!(rss_input(&f, &mut i), 8);
        f[12] = 0x86;
        assert_eq!(rss_input(&f, &mut i), 0);
        assert_eq!(rss_input(&f[..20], &mut i), 0);
        assert_eq!(rss_queue(0x85, 4), 1);
        assert_eq!(rss_queue(7, 0), 0);
    }
}
