//! The options shared by several commands, their limits and their parsers.

use super::*;

// The limits of the options, from the code that consumes each value (the unit tests below
// tie them to the libraries' own constants).

/// Pipes the guest's echo uses at most (each a 2 MiB ring mapped twice; the NIC serves the
/// card's 8192, `enso_nic::EnsoConfig::default().num_pipes`).
pub const ENSO_PIPES: u64 = 64;
/// Pipes the Ensō NIC can serve: the card's space.
pub const MAX_SERVED_PIPES: u64 = testbed_regs::enso::MAX_PIPES as u64;
/// Queue pairs the packetized NIC serves (`packet_nic::PacketNicConfig::default().num_queues`).
pub const PACKETIZED_QUEUES: u32 = 8;
/// Frame sizes of the host generator (`wire::generator`: up to `MAX_SIZE`; 60 is the
/// Ethernet minimum). Both NICs take frames up to 9216 bytes (the packetized one chains its
/// 2 KiB buffers), so every size here works on either.
pub const MIN_FRAME: u64 = 60;
pub const MAX_FRAME: u64 = 9000;
/// Most packets in flight: the generator keeps four 16-byte record slots per packet in
/// flight (64 MiB at this bound).
pub const MAX_WINDOW: u64 = 1 << 20;
/// Most flows of the host generator: each has its own source address (10.0.x.y) and its
/// own order record.
pub const MAX_FLOWS: u64 = 1 << 16;
/// Most flows of EnsōGen: flow `f` is source port 1024 + `f`, a 16-bit number.
pub const ENSOGEN_MAX_FLOWS: u64 = 65_536 - 1024;
/// Longest time limit of one guest run, in seconds (a day).
pub const MAX_TIMEOUT_S: u64 = 86_400;
/// Most chain items: the source's deadline grows 20 ms per item and the trace keeps every
/// item's operations.
pub const MAX_ITEMS: u64 = 1_000_000;
/// Most pings per size in peer-capture: its peer pings every 50 ms for at most 2 s, and the
/// check wants every ping sent.
pub const CAPTURE_MAX_PINGS: u64 = 30;
/// Highest EnsōGen rate, frames per second.
pub const MAX_RATE: u64 = 1_000_000_000;
/// Largest burst of the latency model: the packets it simulates (`latency::Params::new`).
pub const MODEL_MAX_BATCH: u64 = 4096;
/// Largest software cost or poll interval of the latency model (ns): one second.
pub const MODEL_MAX_NS: f64 = 1e9;
/// Offered loads of the latency model (Mpps); the model takes at least 0.001.
pub const MODEL_MIN_MPPS: f64 = 0.001;
pub const MODEL_MAX_MPPS: f64 = 10_000.0;

/// A whole number in `lo..=hi` (`hi` `u64::MAX`: no upper bound) whose error message, unlike
/// clap's ranged parsers', always says the range.
pub fn whole<T>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let range = if hi == u64::MAX { format!("{lo}..") } else { format!("{lo}..={hi}") };
        match s.trim().parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => T::try_from(v).map_err(|_| format!("{s} is too large")),
            Ok(_) => Err(format!("{s} is not in {range}")),
            Err(_) => Err(format!("{s} is not a whole number in {range}")),
        }
    }
}

/// A float in `lo..=hi` (finite), for the latency model's options.
pub fn float_in(s: &str, lo: f64, hi: f64, unit: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of {unit} in {lo}..={hi}")),
    }
}

pub fn model_ns(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, MODEL_MAX_NS, "ns")
}

pub fn model_mpps(s: &str) -> Result<f64, String> {
    float_in(s, MODEL_MIN_MPPS, MODEL_MAX_MPPS, "Mpps")
}

/// The guest of a scenario: accelerator, time limit, and whether to keep its run folder.
#[derive(clap::Args, Clone)]
pub struct GuestArgs {
    /// Accelerator: auto probes KVM once and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Time limit for one guest run, in seconds (boot included; 1..=86400).
    #[arg(long, allow_negative_numbers = true, default_value_t = 300,
          value_parser = whole::<u64>(1, MAX_TIMEOUT_S))]
    pub timeout: u64,
    /// Keep the run folder (console log, result channel, QEMU log) even on success.
    #[arg(long)]
    pub keep: bool,
}

impl GuestArgs {
    pub fn options(&self) -> run::RunOptions {
        run::RunOptions { timeout: Duration::from_secs(self.timeout), keep: self.keep, console: false }
    }
}

/// [`GuestArgs`] of the scenarios that can also print the guest's console.
#[derive(clap::Args, Clone)]
pub struct VmArgs {
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Print the guest console after the run.
    #[arg(long)]
    pub console: bool,
}

impl std::ops::Deref for VmArgs {
    type Target = GuestArgs;

    fn deref(&self) -> &GuestArgs {
        &self.guest
    }
}

impl VmArgs {
    pub fn options(&self) -> run::RunOptions {
        run::RunOptions { console: self.console, ..self.guest.options() }
    }
}

/// The accelerators of the chain (`--chain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChainShape {
    /// NIC → crypto → ML → NIC.
    #[value(name = "crypto,ml")]
    CryptoMl,
    /// NIC → crypto → NIC.
    Crypto,
}

impl ChainShape {
    pub fn shape(self) -> guest_apps::chain::Shape {
        match self {
            ChainShape::CryptoMl => guest_apps::chain::Shape::CryptoMl,
            ChainShape::Crypto => guest_apps::chain::Shape::Crypto,
        }
    }
}

/// The seed's applications (`guest_apps::netapp::NAMES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppName {
    /// Maglev load balancing to backends.
    Maglev,
    /// NitroSketch heavy-hitter detection.
    Nitrosketch,
    /// MICA key-value store.
    Mica,
    /// Log monitor (pattern counts over a byte stream).
    Logmon,
}

impl AppName {
    pub fn name(self) -> &'static str {
        match self {
            AppName::Maglev => "maglev",
            AppName::Nitrosketch => "nitrosketch",
            AppName::Mica => "mica",
            AppName::Logmon => "logmon",
        }
    }
}

/// Where `bench apps` runs the apps: natively only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppsTransport {
    /// In this process, over the vfio-user client.
    Native,
}

#[derive(clap::Args, Clone)]
pub struct EchoArgs {
    /// Packets the host generator sends (every reply is checked).
    #[arg(long, allow_negative_numbers = true, default_value_t = 20_000,
          value_parser = whole::<u64>(1, u64::MAX))]
    pub packets: u64,
    /// Frame size in bytes (60..=9000).
    #[arg(long, allow_negative_numbers = true, default_value_t = 64,
          value_parser = whole::<usize>(MIN_FRAME, MAX_FRAME))]
    pub size: usize,
    /// Distinct flows (1..=65536).
    #[arg(long, allow_negative_numbers = true, default_value_t = 16,
          value_parser = whole::<u32>(1, MAX_FLOWS))]
    pub flows: u32,
    /// Pipes the guest's echo uses (1..=64; the packetized NIC has 8 queue pairs).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4,
          value_parser = whole::<u32>(1, ENSO_PIPES))]
    pub pipes: u32,
    /// Packets in flight at most (closed loop; 1..=1048576).
    #[arg(long, allow_negative_numbers = true, default_value_t = 256,
          value_parser = whole::<usize>(1, MAX_WINDOW))]
    pub window: usize,
    /// First boot a guest whose driver writes garbage into every register page and posts
    /// bad notifications; the echo then runs against the same server (--nic enso).
    #[arg(long)]
    pub garbage_first: bool,
    /// The NIC model the guest's echo runs on.
    #[arg(long, value_enum, default_value = "enso")]
    pub nic: NicKind,
    /// The Ensō NIC's queue engine: the Rust model, or the RTL (rtl/enso/enso_queue_engine.sv)
    /// co-simulated under Verilator and clocked by the device thread (--nic enso).
    #[arg(long, value_enum, default_value = "rust")]
    pub model: EngineModel,
    #[command(flatten)]
    pub enso: run::EnsoArgs,
}

impl EchoArgs {
    pub fn options(&self) -> run::EchoOptions {
        run::EchoOptions {
            packets: self.packets,
            size: self.size,
            flows: self.flows,
            pipes: self.pipes,
            window: self.window,
            garbage_first: self.garbage_first,
            nic: self.nic,
            model: self.model,
            setup: self.enso.setup(),
        }
    }
}

/// What the peer of `run peer-echo` sends, and to which NIC.
#[derive(clap::Args, Clone)]
pub struct PeerArgs {
    /// The NIC cabled to the peer (the responder runs on either).
    #[arg(long, value_enum, default_value = "enso")]
    pub nic: NicKind,
    /// ARP requests the peer's arping sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, u64::MAX))]
    pub arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10,
          value_parser = whole::<u32>(1, u64::MAX))]
    pub pings: u32,
    /// UDP datagrams the peer's nc sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 40,
          value_parser = whole::<u32>(1, u64::MAX))]
    pub datagrams: u32,
    /// First boot a peer and kill it in the middle of its traffic; the next peer must be
    /// served as if nothing happened.
    #[arg(long)]
    pub kill_first_peer: bool,
    /// The peer's virtio-net: on our vhost-user-net backend, or on QEMU's own `-netdev
    /// dgram` to a UDP socket that is the NIC's port (one Ethernet frame per datagram).
    #[arg(long, value_enum, default_value = "vhost-user")]
    pub link: crate::scenarios::peer::LinkKind,
    /// --link udp: the address the NIC's UDP port binds here (default 127.0.0.1, any port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp_local: Option<std::net::SocketAddr>,
    /// --link udp: the peer QEMU's address, where the NIC's port sends (default 127.0.0.1,
    /// a free port; port 0: QEMU's choice, learned from its first frame).
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp_remote: Option<std::net::SocketAddr>,
    /// --link udp: run the peer's QEMU in this network namespace (`ip netns exec NS`),
    /// standing for another host; needs --udp-local and --udp-remote.
    #[arg(long, value_name = "NS")]
    pub peer_netns: Option<String>,
}

impl PeerArgs {
    pub fn options(self) -> crate::scenarios::peer::PeerOptions {
        crate::scenarios::peer::PeerOptions {
            nic: self.nic,
            arps: self.arps,
            pings: self.pings,
            datagrams: self.datagrams,
            kill_first_peer: self.kill_first_peer,
            link: crate::scenarios::peer::PeerLink {
                kind: self.link,
                udp_local: self.udp_local,
                udp_remote: self.udp_remote,
                netns: self.peer_netns,
            },
        }
    }
}

/// What the peer of `run peer-capture` sends (to the Ensō NIC, whose guest captures it).
#[derive(clap::Args, Clone, Copy)]
pub struct CaptureArgs {
    /// ARP requests the peer's arping sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, u64::MAX))]
    pub arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes; 1..=30: the peer pings every 50 ms
    /// for at most 2 s).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10,
          value_parser = whole::<u32>(1, CAPTURE_MAX_PINGS))]
    pub pings: u32,
    /// UDP datagrams the peer's nc sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 40,
          value_parser = whole::<u32>(1, u64::MAX))]
    pub datagrams: u32,
}

impl CaptureArgs {
    pub fn options(self) -> crate::scenarios::peer::PeerOptions {
        crate::scenarios::peer::PeerOptions {
            nic: NicKind::Enso,
            arps: self.arps,
            pings: self.pings,
            datagrams: self.datagrams,
            kill_first_peer: false,
            link: Default::default(),
        }
    }
}
