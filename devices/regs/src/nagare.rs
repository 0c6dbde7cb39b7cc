//! The Nagare programmable switch: its management function's registers and the stream
//! window layout (seed §4).
//!
//! BAR2 holds the stream windows: stream `s` owns the [`WINDOW_SIZE`]-byte window at
//! `s * WINDOW_SIZE`. A device (or the CPU) pushes into a stream by writing to its window;
//! the switch matches the write by address and requester, checks the stream's allow list,
//! looks up the next hop of the stream's policy graph, rewrites the destination to the
//! next device's input window (same offset modulo that window's size) and forwards it.
//! The driver tells the switch the bus address its BAR2 got ([`reg::WINDOW_BASE_LO`]),
//! and devices are given bus addresses inside it (as Linux p2pdma does for peers behind
//! one switch: the write is routed before any IOMMU translation).
//!
//! BAR0 (4 KiB, trapped): identity, port table, policy and allow-list programming,
//! counters.

/// PCI vendor ID (see [`crate::smoke::VENDOR_ID`]).
pub const VENDOR_ID: u16 = 0x1172;
/// Device ID of the switch's management function.
pub const DEVICE_ID: u16 = 0x4e47;
/// Class code: PCI bridge, other.
pub const CLASS_CODE: u32 = 0x06_80_00;

/// Management register BAR.
pub const REG_BAR: u8 = 0;
/// Its size.
pub const REG_BAR_SIZE: u64 = 4096;
/// Stream window BAR.
pub const WINDOW_BAR: u8 = 2;
/// Streams the switch holds.
pub const STREAMS: u32 = 8;
/// Bytes of one stream window (an Ensō pipe fits: 2 MiB, 2 MiB aligned).
pub const WINDOW_SIZE: u64 = 2 << 20;
/// Bytes of all stream windows (the start of BAR2).
pub const WINDOWS_SIZE: u64 = STREAMS as u64 * WINDOW_SIZE;
/// The glue memory: the switch's own SRAM, after the windows in BAR2. A legacy device in
/// a graph ([`reg::HOP_GLUE`]) has its command ring, completion ring and input staging
/// there, one [`GLUE_REGION`] per (stream, node); the switch writes its descriptors and
/// rings its doorbell as the CPU would.
pub const GLUE_SRAM: u64 = WINDOWS_SIZE;
/// Bytes of glue memory per (stream, node).
pub const GLUE_REGION: u64 = 256 << 10;
/// Offset of the completion ring in a glue region (the command ring is at 0).
pub const GLUE_CQ: u64 = 16 << 10;
/// Offset of the input staging ring in a glue region.
pub const GLUE_STAGING: u64 = 64 << 10;
/// Size of the staging ring.
pub const GLUE_STAGING_SIZE: u64 = 64 << 10;
/// Offset of the bounce area (a record that wraps the staging ring is copied there).
pub const GLUE_BOUNCE: u64 = 128 << 10;
/// Entries of a glued device's rings.
pub const GLUE_ENTRIES: u32 = 64;
/// Size of BAR2: the windows, then the glue memory.
pub const WINDOW_BAR_SIZE: u64 = 2 * WINDOWS_SIZE;
/// Largest number of nodes in a stream's policy graph (ingress, devices, egress).
pub const MAX_HOPS: u32 = 6;
/// Ports of the fabric; port 0 is the CPU (root port).
pub const MAX_PORTS: u32 = 8;
/// The CPU's port number.
pub const CPU_PORT: u32 = 0;

/// BAR0 registers (32-bit).
pub mod reg {
    /// Identity: "NGR1".
    pub const ID: u64 = 0x00;
    /// Value of [`ID`].
    pub const ID_VALUE: u32 = 0x4e47_5231;
    /// Register map version.
    pub const VERSION: u64 = 0x04;
    /// This map's version.
    pub const VERSION_VALUE: u32 = 1;
    /// Streams (read-only).
    pub const NUM_STREAMS: u64 = 0x08;
    /// Ports (read-only; port 0 is the CPU).
    pub const NUM_PORTS: u64 = 0x0c;
    /// Match-action stages of the pipeline (read-only).
    pub const STAGES: u64 = 0x10;
    /// Clock cycles per stage (read-only).
    pub const CYCLES_PER_STAGE: u64 = 0x14;
    /// Pipeline clock in MHz (read-only).
    pub const CLOCK_MHZ: u64 = 0x18;
    /// Bus address of BAR2 as the host sees it, low half (set by the driver).
    pub const WINDOW_BASE_LO: u64 = 0x20;
    /// High half.
    pub const WINDOW_BASE_HI: u64 = 0x24;
    /// Error status: bit `c` set while error counter `c` is non-zero.
    pub const ERROR_STATUS: u64 = 0x28;

    /// Port table: `PORT_ID + 4 * p` reads `vendor << 16 | device` of the function on
    /// port `p` (0 for the CPU port and for empty ports).
    pub const PORT_ID: u64 = 0x40;

    /// Selects the stream the `POLICY_*`, `STREAM_CTRL` and `ACL` registers act on.
    pub const STREAM_SEL: u64 = 0x80;
    /// Selects the hop (node of the policy graph) `HOP_*` act on.
    pub const HOP_SEL: u64 = 0x84;
    /// Nodes in the selected stream's graph (2..=MAX_HOPS): node 0 is the ingress, the
    /// last the egress.
    pub const POLICY_HOPS: u64 = 0x88;
    /// The selected node's port.
    pub const HOP_PORT: u64 = 0x8c;
    /// The selected node's kind ([`HOP_INGRESS`], [`HOP_STREAM`], [`HOP_EGRESS`]).
    pub const HOP_KIND: u64 = 0x90;
    /// Ingress node: the Ensō pipe the NIC fills with the stream (the switch returns its
    /// head credits). Other nodes: unused.
    pub const HOP_PIPE: u64 = 0x94;
    /// Ingress: the NIC's RX pipe writes into the window.
    pub const HOP_INGRESS: u32 = 1;
    /// A device with a streaming interface: records are forwarded into its input window.
    pub const HOP_STREAM: u32 = 2;
    /// Egress: the NIC's TX stream window.
    pub const HOP_EGRESS: u32 = 3;
    /// A device with only a legacy command ring: the switch stages each record in its
    /// glue memory, writes the descriptor and rings the doorbell; the device writes its
    /// output into the stream's window (the descriptor's destination), which the switch
    /// routes on.
    pub const HOP_GLUE: u32 = 4;
    /// Write 1 to open the selected stream (validating its graph; BAD_POLICY if invalid),
    /// 0 to close it. Reads 1 while open.
    pub const STREAM_CTRL: u64 = 0x98;
    /// Allow list of the selected stream: bit `p` lets port `p` push into it.
    pub const ACL: u64 = 0x9c;
    /// Records (egress writes) the selected stream delivered, low half (read-only).
    pub const STREAM_EGRESS_LO: u64 = 0xa0;
    /// High half.
    pub const STREAM_EGRESS_HI: u64 = 0xa4;
    /// Pushes denied on the selected stream by its allow list (read-only, 32 bits).
    pub const STREAM_DENIED: u64 = 0xa8;

    /// Glue node: the opcode of the descriptors the switch writes.
    pub const HOP_OP: u64 = 0xb0;
    /// Glue node: bus address of its command ring, low half (read-only; program the
    /// device's ring there; its completion ring is [`super::GLUE_CQ`] above).
    pub const HOP_RING_LO: u64 = 0xb4;
    /// High half.
    pub const HOP_RING_HI: u64 = 0xb8;
    /// Glue node: the 32 bytes of per-command state (key or model ID), eight words.
    pub const HOP_STATE: u64 = 0xc0;

    /// Write 1 to zero every counter.
    pub const COUNTERS_CLEAR: u64 = 0xfc;
    /// Counters, 64-bit each, `COUNTERS + 8 * index` (see [`counter`]).
    pub const COUNTERS: u64 = 0x100;

    /// Counter indices; from [`counter::FIRST_ERROR`] on they are errors and drops.
    pub mod counter {
        /// Writes routed to a peer.
        pub const ROUTED: u32 = 0;
        /// Bytes of those writes.
        pub const ROUTED_BYTES: u32 = 1;
        /// Writes the CPU pushed into a window.
        pub const CPU_PUSHES: u32 = 2;
        /// Head credits returned to an ingress pipe.
        pub const CREDITS: u32 = 3;
        /// Commands the switch wrote for glued devices.
        pub const GLUE_COMMANDS: u32 = 4;
        /// First error counter.
        pub const FIRST_ERROR: u32 = 8;
        /// Pushes dropped by a stream's allow list.
        pub const ACL_DENIED: u32 = 8;
        /// Writes into a closed stream, or from a port with no place in its graph.
        pub const NO_ROUTE: u32 = 9;
        /// Writes the next hop refused (its input out of order, full or stopped).
        pub const DELIVERY_DROPS: u32 = 10;
        /// Reads of a stream window (windows are write-only).
        pub const WINDOW_READS: u32 = 11;
        /// Register writes refused.
        pub const BAD_REGISTER_WRITES: u32 = 12;
        /// Streams refused at open (invalid graph).
        pub const BAD_POLICY: u32 = 13;
        /// Glued commands that completed with an error status.
        pub const GLUE_ERRORS: u32 = 14;
        /// Records dropped because a glued device's ring was full or the record malformed.
        pub const GLUE_DROPS: u32 = 15;
        /// Number of counters.
        pub const N: usize = 16;
        /// Names by index.
        pub const NAMES: [&str; N] = [
            "routed",
            "routed_bytes",
            "cpu_pushes",
            "credits",
            "glue_commands",
            "reserved5",
            "reserved6",
            "reserved7",
            "acl_denied",
            "no_route",
            "delivery_drops",
            "window_reads",
            "bad_register_writes",
            "bad_policy",
            "glue_errors",
            "glue_drops",
        ];
    }
}
