//! `testbed`: provisions QEMU and the guest image, serves emulated devices over vfio-user,
//! boots guests that run our drivers, and reports what both sides saw.
//!
//! Every option is checked before anything is provisioned, built or booted: ranges and
//! closed sets by clap while parsing, the combinations clap cannot express by [`check`]
//! right after. Both exit with code 2 and a clap-style message. With `--json`, every exit
//! path of a command prints exactly one JSON object on stdout; a failure prints
//! `{"pass": false, "error": "..."}` with the command's `scenario` or `benchmark`.

use anyhow::Result;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use provision::{cache, qemu};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testbed::accel::AccelChoice;
use testbed::bench::Notify;
use testbed::run;
use testbed::run::{EngineModel, NicKind, Transport};
use testbed::up::cli::{ConsoleArgs, DaemonArgs, DownArgs, ExecArgs, LsArgs, ServeArgs, UpArgs};

// The limits of the options, from the code that consumes each value (the unit tests below
// tie them to the libraries' own constants).

/// Pipes the guest's echo uses at most (each a 2 MiB ring mapped twice; the NIC serves the
/// card's 8192, `enso_nic::EnsoConfig::default().num_pipes`).
const ENSO_PIPES: u64 = 64;
/// Pipes the Ensō NIC can serve: the card's space.
const MAX_SERVED_PIPES: u64 = testbed_regs::enso::MAX_PIPES as u64;
/// Queue pairs the packetized NIC serves (`packet_nic::PacketNicConfig::default().num_queues`).
const PACKETIZED_QUEUES: u32 = 8;
/// Frame sizes of the host generator (`wire::generator`: up to `MAX_SIZE`; 60 is the
/// Ethernet minimum). Both NICs take frames up to 9216 bytes (the packetized one chains its
/// 2 KiB buffers), so every size here works on either.
const MIN_FRAME: u64 = 60;
const MAX_FRAME: u64 = 9000;
/// Most packets in flight: the generator keeps four 16-byte record slots per packet in
/// flight (64 MiB at this bound).
const MAX_WINDOW: u64 = 1 << 20;
/// Most flows of the host generator: each has its own source address (10.0.x.y) and its
/// own order record.
const MAX_FLOWS: u64 = 1 << 16;
/// Most flows of EnsōGen: flow `f` is source port 1024 + `f`, a 16-bit number.
const ENSOGEN_MAX_FLOWS: u64 = 65_536 - 1024;
/// Longest time limit of one guest run, in seconds (a day).
const MAX_TIMEOUT_S: u64 = 86_400;
/// Most chain items: the source's deadline grows 20 ms per item and the trace keeps every
/// item's operations.
const MAX_ITEMS: u64 = 1_000_000;
/// Most pings per size in peer-capture: its peer pings every 50 ms for at most 2 s, and the
/// check wants every ping sent.
const CAPTURE_MAX_PINGS: u64 = 30;
/// Highest EnsōGen rate, frames per second.
const MAX_RATE: u64 = 1_000_000_000;
/// Largest burst of the latency model: the packets it simulates (`latency::Params::new`).
const MODEL_MAX_BATCH: u64 = 4096;
/// Largest software cost or poll interval of the latency model (ns): one second.
const MODEL_MAX_NS: f64 = 1e9;
/// Offered loads of the latency model (Mpps); the model takes at least 0.001.
const MODEL_MIN_MPPS: f64 = 0.001;
const MODEL_MAX_MPPS: f64 = 10_000.0;

/// A whole number in `lo..=hi` (`hi` `u64::MAX`: no upper bound) whose error message, unlike
/// clap's ranged parsers', always says the range.
fn whole<T>(lo: u64, hi: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
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
fn float_in(s: &str, lo: f64, hi: f64, unit: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of {unit} in {lo}..={hi}")),
    }
}

fn model_ns(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, MODEL_MAX_NS, "ns")
}

fn model_mpps(s: &str) -> Result<f64, String> {
    float_in(s, MODEL_MIN_MPPS, MODEL_MAX_MPPS, "Mpps")
}

#[derive(Parser)]
#[command(name = "testbed", version, about = "Emulated testbed for streaming intra-host communication")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct VmArgs {
    /// Accelerator: auto probes KVM once and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Time limit for one guest run, in seconds (boot included; 1..=86400).
    #[arg(long, allow_negative_numbers = true, default_value_t = 300,
          value_parser = whole::<u64>(1, MAX_TIMEOUT_S))]
    timeout: u64,
    /// Keep the run folder (console log, result channel, QEMU log) even on success.
    #[arg(long)]
    keep: bool,
    /// Print the guest console after the run.
    #[arg(long)]
    console: bool,
}

impl VmArgs {
    fn options(&self) -> run::RunOptions {
        run::RunOptions { timeout: Duration::from_secs(self.timeout), keep: self.keep, console: self.console }
    }
}

/// [`VmArgs`] of the scenarios that do not print a guest console.
#[derive(clap::Args, Clone)]
struct GuestArgs {
    /// Accelerator: auto probes KVM once and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Time limit for one guest run, in seconds (boot included; 1..=86400).
    #[arg(long, allow_negative_numbers = true, default_value_t = 300,
          value_parser = whole::<u64>(1, MAX_TIMEOUT_S))]
    timeout: u64,
    /// Keep the run folder (console log, result channel, QEMU log) even on success.
    #[arg(long)]
    keep: bool,
}

impl GuestArgs {
    fn options(&self) -> run::RunOptions {
        run::RunOptions { timeout: Duration::from_secs(self.timeout), keep: self.keep, console: false }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Find or build QEMU (>= 10.1 with vfio-user-pci); prints the binary's path.
    Qemu,
    /// Build the guest program and image (cached); prints the kernel and initrd paths.
    Image {
        /// Also fetch the image kernel's headers (linux-headers, linux-kbuild; cached) and
        /// print their build folder (third line), for `make -C DIR M=$PWD modules`.
        #[arg(long)]
        headers: bool,
    },
    /// Print the accelerator guests will use (probing KVM if needed).
    Accel {
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
    /// Provision the RTL co-simulation (`--model rtl`): installs Debian's Verilator when
    /// missing and builds the verilated model (cached); prints the library's path.
    Rtl,
    /// Run a scenario in a guest; exits 0 only if every assertion held.
    Run {
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// The demo: boots a guest with the emulated devices, runs the driver, prints a report.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Benchmarks (run a release build: `cargo run --release -p testbed -- bench …`).
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Serve an emulated device (or the Nagare switch with its devices) on vfio-user sockets
    /// until SIGINT or SIGTERM, for a QEMU you start yourself; prints each function's QEMU
    /// -device option, and the counters as JSON at the end.
    Serve(ServeArgs),
    /// Boot long-lived guests with emulated devices (a topology file, or guest0 with an Ensō
    /// NIC on a UDP port) and return once they are ready.
    Up(UpArgs),
    /// List the guests that are up.
    Ls(LsArgs),
    /// Run a command in a guest: its stdout, stderr (kept apart) and exit status.
    Exec(ExecArgs),
    /// Attach this terminal to a guest's console (Ctrl-] leaves).
    Console(ConsoleArgs),
    /// Stop one guest, or everything `up` started.
    Down(DownArgs),
    /// The daemon `up` starts (internal).
    #[command(name = "__daemon", hide = true)]
    Daemon(DaemonArgs),
    /// Long-lived device servers under turns of echo, chain, garbage and killed clients for
    /// M minutes; checks memory, fds, the traffic's accounting and that every device still
    /// answers a well-behaved client.
    Soak(testbed::soak::SoakArgs),
}

/// The accelerators of the chain (`--chain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ChainShape {
    /// NIC → crypto → ML → NIC.
    #[value(name = "crypto,ml")]
    CryptoMl,
    /// NIC → crypto → NIC.
    Crypto,
}

impl ChainShape {
    fn shape(self) -> guest_apps::chain::Shape {
        match self {
            ChainShape::CryptoMl => guest_apps::chain::Shape::CryptoMl,
            ChainShape::Crypto => guest_apps::chain::Shape::Crypto,
        }
    }
}

/// The seed's applications (`guest_apps::netapp::NAMES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AppName {
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
    fn name(self) -> &'static str {
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
enum AppsTransport {
    /// In this process, over the vfio-user client.
    Native,
}

#[derive(clap::Args, Clone)]
struct EchoArgs {
    /// Packets the host generator sends (every reply is checked).
    #[arg(long, allow_negative_numbers = true, default_value_t = 20_000,
          value_parser = whole::<u64>(1, u64::MAX))]
    packets: u64,
    /// Frame size in bytes (60..=9000).
    #[arg(long, allow_negative_numbers = true, default_value_t = 64,
          value_parser = whole::<usize>(MIN_FRAME, MAX_FRAME))]
    size: usize,
    /// Distinct flows (1..=65536).
    #[arg(long, allow_negative_numbers = true, default_value_t = 16,
          value_parser = whole::<u32>(1, MAX_FLOWS))]
    flows: u32,
    /// Pipes the guest's echo uses (1..=64; the packetized NIC has 8 queue pairs).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4,
          value_parser = whole::<u32>(1, ENSO_PIPES))]
    pipes: u32,
    /// Packets in flight at most (closed loop; 1..=1048576).
    #[arg(long, allow_negative_numbers = true, default_value_t = 256,
          value_parser = whole::<usize>(1, MAX_WINDOW))]
    window: usize,
    /// First boot a guest whose driver writes garbage into every register page and posts
    /// bad notifications; the echo then runs against the same server (--nic enso).
    #[arg(long)]
    garbage_first: bool,
    /// The NIC model the guest's echo runs on.
    #[arg(long, value_enum, default_value = "enso")]
    nic: NicKind,
    /// The Ensō NIC's queue engine: the Rust model, or the RTL (rtl/enso/enso_queue_engine.sv)
    /// co-simulated under Verilator and clocked by the device thread (--nic enso).
    #[arg(long, value_enum, default_value = "rust")]
    model: EngineModel,
    #[command(flatten)]
    enso: run::EnsoArgs,
}

impl EchoArgs {
    fn options(&self) -> run::EchoOptions {
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

#[derive(Subcommand)]
enum Bench {
    /// The seed's applications (Table 1): maglev, nitrosketch, mica and logmon on both
    /// NICs, with the Ensō/packetized ratio per app. Build it with `--release`.
    Apps {
        /// Where the apps run (native only).
        #[arg(long, value_enum, default_value = "native")]
        transport: AppsTransport,
        /// Frames per app and NIC.
        #[arg(long, allow_negative_numbers = true, default_value_t = 200_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        frames: u64,
        /// Frames in flight at most (1..=1048576).
        #[arg(long, allow_negative_numbers = true, default_value_t = 256,
              value_parser = whole::<usize>(1, MAX_WINDOW))]
        window: usize,
        /// Rounds (1..=100): each runs every app on both NICs, the NIC order reversing
        /// every other round; medians and spreads (min, max) are reported.
        #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, 100))]
        runs: u32,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write an SVG bar chart.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// The Ensō echo: Mpps, Gbps, driver ns per packet, and the raw ring ceiling.
    Echo {
        /// Where the driver runs.
        #[arg(long, value_enum, default_value = "native")]
        transport: Transport,
        /// Accelerator for `--transport vm`.
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
        /// Frame sizes in bytes, comma-separated (each 60..=9000).
        #[arg(long, allow_negative_numbers = true, value_delimiter = ',', default_value = "64,1500",
              value_parser = whole::<usize>(MIN_FRAME, MAX_FRAME))]
        sizes: Vec<usize>,
        /// Packets per run.
        #[arg(long, allow_negative_numbers = true, default_value_t = 2_000_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        packets: u64,
        /// Runs per size; the median is reported.
        #[arg(long, allow_negative_numbers = true, default_value_t = 5,
              value_parser = whole::<usize>(1, u64::MAX))]
        runs: usize,
        /// Pipes (Ensō) or RSS queues (packetized) the echo uses; one per driver core, as in
        /// the seed's single-core echo (1..=64; the packetized NIC has 8 queue pairs).
        #[arg(long, allow_negative_numbers = true, default_value_t = 1,
              value_parser = whole::<u32>(1, ENSO_PIPES))]
        pipes: u32,
        /// Flows (1..=65536).
        #[arg(long, allow_negative_numbers = true, default_value_t = 16,
              value_parser = whole::<u32>(1, MAX_FLOWS))]
        flows: u32,
        /// NIC models, comma-separated; with both, ratios are reported.
        #[arg(long, value_delimiter = ',', default_value = "enso,packetized")]
        nic: Vec<NicKind>,
        /// Ensō notification modes, comma-separated: one result row each (the packetized
        /// NIC runs once). Ratios use the reactive row. `--transport vm` runs reactive only.
        #[arg(long, value_delimiter = ',', default_value = "reactive")]
        notify: Vec<Notify>,
        /// Pipes the Ensō NIC serves, comma-separated (each --pipes..=8192): one result
        /// row each, e.g. 64,8192 to show the polling cost does not grow with them.
        #[arg(long, allow_negative_numbers = true, value_delimiter = ',', default_value = "8192",
              value_parser = whole::<u32>(1, MAX_SERVED_PIPES))]
        served_pipes: Vec<u32>,
        /// Latency model: packets per arrival burst (1..=4096).
        #[arg(long, allow_negative_numbers = true, default_value_t = 32,
              value_parser = whole::<usize>(1, MODEL_MAX_BATCH))]
        model_batch: usize,
        /// Latency model: software cost per batch (ns, 0..=1e9), on top of the measured
        /// driver ns/packet per packet.
        #[arg(long, allow_negative_numbers = true, default_value_t = 100.0, value_parser = model_ns)]
        model_sw_batch_ns: f64,
        /// Latency model: poll interval of an idle driver (ns, 0..=1e9; 0 notices at once).
        #[arg(long, allow_negative_numbers = true, default_value_t = 100.0, value_parser = model_ns)]
        model_poll_ns: f64,
        /// Latency model: offered load (Mpps, 0.001..=10000); default the reactive Ensō
        /// row's measured rate.
        #[arg(long, allow_negative_numbers = true, value_parser = model_mpps)]
        model_mpps: Option<f64>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write an SVG plot (throughput and metadata fraction vs frame size).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Scenario {
    /// The Ensō NIC: the guest's echo app answers every packet of the host generator.
    Echo {
        #[command(flatten)]
        vm: VmArgs,
        #[command(flatten)]
        echo: EchoArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// The accelerator chain (seed Figure 8): encrypted images from the host source go
    /// NIC → crypto → ML → NIC; the source checks every inference result and the report
    /// lists the PCIe operations one item costs (seed Table 2).
    Chain {
        #[command(flatten)]
        vm: VmArgs,
        /// Who moves data between the devices: cpu (the CPU mediates every step), nagare
        /// (the switch routes the devices' pushes), glue (the switch drives legacy
        /// accelerators), both (cpu, then nagare).
        #[arg(long, value_enum, default_value = "cpu")]
        mode: testbed::chain::Mode,
        /// The chain's accelerators: crypto,ml or crypto.
        #[arg(long, value_enum, default_value = "crypto,ml")]
        chain: ChainShape,
        /// Items (encrypted images) the source sends, one at a time (1..=1000000).
        #[arg(long, allow_negative_numbers = true, default_value_t = 200,
              value_parser = whole::<u64>(1, MAX_ITEMS))]
        items: u64,
        /// Where the chain's driver runs: in a guest (vm) or in this process (native; then
        /// --accel, --timeout and --console do not apply).
        #[arg(long, value_enum, default_value = "vm")]
        transport: testbed::chain::Transport,
        /// The Ensō NIC's queue engine: the Rust model, or the RTL co-simulated under
        /// Verilator.
        #[arg(long, value_enum, default_value = "rust")]
        model: EngineModel,
        #[command(flatten)]
        enso: run::EnsoArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// One of the seed's applications (maglev, nitrosketch, mica, logmon) on a NIC; the
    /// host source checks every reply.
    App {
        #[command(flatten)]
        vm: VmArgs,
        /// The app.
        #[arg(long, value_enum)]
        name: AppName,
        /// The NIC model.
        #[arg(long, value_enum, default_value = "enso")]
        nic: NicKind,
        /// Frames the source sends.
        #[arg(long, allow_negative_numbers = true, default_value_t = 20_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        frames: u64,
        /// Frames in flight at most (1..=1048576).
        #[arg(long, allow_negative_numbers = true, default_value_t = 32,
              value_parser = whole::<usize>(1, MAX_WINDOW))]
        window: usize,
        /// Where the app's driver runs: in a guest (vm) or in this process (native; then
        /// --accel, --timeout and --console do not apply).
        #[arg(long, value_enum, default_value = "vm")]
        transport: testbed::apps::Transport,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// A stock Linux peer guest (virtio-net on our vhost-user backend, or with --link udp on
    /// QEMU's -netdev dgram, cabled to the Ensō NIC) runs arping, ping and OpenBSD nc against
    /// the Rust responder behind the Ensō NIC; both the peer's tools and the host's wire tap
    /// check every reply.
    PeerEcho {
        #[command(flatten)]
        vm: VmArgs,
        #[command(flatten)]
        peer: PeerArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// The peer's traffic is captured by the Ensō guest into a pcap that tshark parses.
    PeerCapture {
        #[command(flatten)]
        vm: GuestArgs,
        #[command(flatten)]
        peer: CaptureArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// EnsōGen in one guest, echo in another, NIC to NIC over the emulated wire: sent,
    /// received, lost and the RTT histogram from the NIC's timestamps.
    GenEcho {
        #[command(flatten)]
        vm: GuestArgs,
        /// Frames EnsōGen sends.
        #[arg(long, allow_negative_numbers = true, default_value_t = 2000,
              value_parser = whole::<u64>(1, u64::MAX))]
        packets: u64,
        /// Frame size in bytes (60..=1514; generated flows only).
        #[arg(long, allow_negative_numbers = true, default_value_t = 128,
              value_parser = whole::<u64>(60, 1514),
              conflicts_with = "pcap")]
        size: u64,
        /// UDP flows (1..=64512; generated flows only).
        #[arg(long, allow_negative_numbers = true, default_value_t = 16,
              value_parser = whole::<u32>(1, ENSOGEN_MAX_FLOWS),
              conflicts_with = "pcap")]
        flows: u32,
        /// Frames per second (0..=1000000000); 0 sends as fast as the NIC takes them.
        #[arg(long, allow_negative_numbers = true, default_value_t = 10_000,
              value_parser = whole::<u64>(0, MAX_RATE))]
        rate: u64,
        /// Replay the frames of this pcap (cycled) instead of generated flows.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Where the two apps run: in two guests (vm) or in this process (native; then
        /// --accel does not apply).
        #[arg(long, value_enum, default_value = "vm")]
        transport: Transport,
        #[command(flatten)]
        enso: run::EnsoArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// Card-style software (no driver, sysfs resource2, physical addresses, pipes from
    /// 8191 down, upstream's register order) echoes in a guest without a translating
    /// IOMMU, byte 63 incremented; the host generator checks every reply.
    CardEcho {
        #[command(flatten)]
        vm: VmArgs,
        /// Packets the host generator sends.
        #[arg(long, allow_negative_numbers = true, default_value_t = 5_000,
              value_parser = whole::<u64>(1, u64::MAX))]
        packets: u64,
        /// Frame size in bytes (64..=9000: the program increments byte 63).
        #[arg(long, allow_negative_numbers = true, default_value_t = 64,
              value_parser = whole::<usize>(64, MAX_FRAME))]
        size: usize,
        /// Distinct flows (1..=1024: one flow-table entry each, keyed on the destination port).
        #[arg(long, allow_negative_numbers = true, default_value_t = 16, value_parser = whole::<u32>(1, 1024))]
        flows: u32,
        /// Pipes the program takes, from 8191 down (1..=16).
        #[arg(long, allow_negative_numbers = true, default_value_t = 2, value_parser = whole::<u32>(1, 16))]
        pipes: u32,
        /// Packets in flight at most (closed loop; 1..=1048576).
        #[arg(long, allow_negative_numbers = true, default_value_t = 64,
              value_parser = whole::<usize>(1, MAX_WINDOW))]
        window: usize,
        /// How the Ensō NIC's queue registers reach it.
        #[arg(long, value_enum, default_value = "shared")]
        registers: run::Registers,
        /// The Ensō NIC's queue engine.
        #[arg(long, value_enum, default_value = "rust")]
        model: EngineModel,
        /// The guest's IOMMU: off or passthrough (the program hands out physical addresses).
        #[arg(long, value_enum, default_value = "off")]
        viommu: testbed::vm::Viommu,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// The smoke device: ID, scratch, DMA both ways, MSI-X, a refused DMA.
    Smoke {
        #[command(flatten)]
        vm: VmArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
        /// First boot a guest and kill it mid-run, then run the scenario against the same
        /// server (checks that the server survives a vanished client).
        #[arg(long)]
        kill_first_guest: bool,
    },
}

/// What the peer of `run peer-echo` sends, and to which NIC.
#[derive(clap::Args, Clone)]
struct PeerArgs {
    /// The NIC cabled to the peer (the responder runs on either).
    #[arg(long, value_enum, default_value = "enso")]
    nic: NicKind,
    /// ARP requests the peer's arping sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, u64::MAX))]
    arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10,
          value_parser = whole::<u32>(1, u64::MAX))]
    pings: u32,
    /// UDP datagrams the peer's nc sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 40,
          value_parser = whole::<u32>(1, u64::MAX))]
    datagrams: u32,
    /// First boot a peer and kill it in the middle of its traffic; the next peer must be
    /// served as if nothing happened.
    #[arg(long)]
    kill_first_peer: bool,
    /// The peer's virtio-net: on our vhost-user-net backend, or on QEMU's own `-netdev
    /// dgram` to a UDP socket that is the NIC's port (one Ethernet frame per datagram).
    #[arg(long, value_enum, default_value = "vhost-user")]
    link: testbed::peer::LinkKind,
    /// --link udp: the address the NIC's UDP port binds here (default 127.0.0.1, any port).
    #[arg(long, value_name = "ADDR:PORT")]
    udp_local: Option<std::net::SocketAddr>,
    /// --link udp: the peer QEMU's address, where the NIC's port sends (default 127.0.0.1,
    /// a free port; port 0: QEMU's choice, learned from its first frame).
    #[arg(long, value_name = "ADDR:PORT")]
    udp_remote: Option<std::net::SocketAddr>,
    /// --link udp: run the peer's QEMU in this network namespace (`ip netns exec NS`),
    /// standing for another host; needs --udp-local and --udp-remote.
    #[arg(long, value_name = "NS")]
    peer_netns: Option<String>,
}

impl PeerArgs {
    fn options(self) -> testbed::peer::PeerOptions {
        testbed::peer::PeerOptions {
            nic: self.nic,
            arps: self.arps,
            pings: self.pings,
            datagrams: self.datagrams,
            kill_first_peer: self.kill_first_peer,
            link: testbed::peer::PeerLink {
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
struct CaptureArgs {
    /// ARP requests the peer's arping sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3, value_parser = whole::<u32>(1, u64::MAX))]
    arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes; 1..=30: the peer pings every 50 ms
    /// for at most 2 s).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10,
          value_parser = whole::<u32>(1, CAPTURE_MAX_PINGS))]
    pings: u32,
    /// UDP datagrams the peer's nc sends.
    #[arg(long, allow_negative_numbers = true, default_value_t = 40,
          value_parser = whole::<u32>(1, u64::MAX))]
    datagrams: u32,
}

impl CaptureArgs {
    fn options(self) -> testbed::peer::PeerOptions {
        testbed::peer::PeerOptions {
            nic: NicKind::Enso,
            arps: self.arps,
            pings: self.pings,
            datagrams: self.datagrams,
            kill_first_peer: false,
            link: Default::default(),
        }
    }
}

impl Cmd {
    /// With `--json`: the key and the name this command's JSON object carries
    /// (`"scenario": "echo"`, `"benchmark": "apps"`).
    fn json(&self) -> Option<(&'static str, &'static str)> {
        let (json, key, name) = match self {
            Cmd::Run { scenario } => match scenario {
                Scenario::Echo { json, .. } => (json, "scenario", "echo"),
                Scenario::Chain { json, .. } => (json, "scenario", "chain"),
                Scenario::App { json, .. } => (json, "scenario", "app"),
                Scenario::PeerEcho { json, .. } => (json, "scenario", "peer-echo"),
                Scenario::PeerCapture { json, .. } => (json, "scenario", "peer-capture"),
                Scenario::GenEcho { json, .. } => (json, "scenario", "gen-echo"),
                Scenario::CardEcho { json, .. } => (json, "scenario", "card-echo"),
                Scenario::Smoke { json, .. } => (json, "scenario", "smoke"),
            },
            Cmd::Bench { bench: Bench::Apps { json, .. } } => (json, "benchmark", "apps"),
            Cmd::Bench { bench: Bench::Echo { json, .. } } => (json, "benchmark", "echo"),
            _ => return None,
        };
        json.then_some((key, name))
    }
}

/// The invoked subcommand's matches, and its `clap::Command` for error messages.
struct Check<'a> {
    cmd: clap::Command,
    m: &'a ArgMatches,
}

impl Check<'_> {
    /// Whether `id` was given on the command line (not a default).
    fn given(&self, id: &str) -> bool {
        self.m.ids().any(|i| i.as_str() == id) && self.m.value_source(id) == Some(ValueSource::CommandLine)
    }

    /// `--name <NAME>`, as clap writes the argument in its messages.
    fn arg(&self, id: &str) -> String {
        self.cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .map_or_else(|| format!("--{}", id.replace('_', "-")), |a| a.to_string())
    }

    fn invalid(&self, id: &str, value: impl Display, why: impl Display) -> clap::Error {
        let msg = format!("invalid value '{value}' for '{}': {why}", self.arg(id));
        self.cmd.clone().error(ErrorKind::ValueValidation, msg)
    }

    fn conflict(&self, id: &str, other: &str) -> clap::Error {
        let msg = format!("the argument '{}' cannot be used with {other}", self.arg(id));
        self.cmd.clone().error(ErrorKind::ArgumentConflict, msg)
    }

    /// Refuses the options in `ids` (they configure guests) when the driver runs natively.
    fn guest_only(&self, transport: Transport, ids: &[&str]) -> Result<(), clap::Error> {
        match ids.iter().find(|id| self.given(id)) {
            Some(id) if transport == Transport::Native => Err(self.conflict(id, "'--transport native'")),
            _ => Ok(()),
        }
    }

    /// `--plot FILE` is written after the run: its folder must exist now.
    fn plot(&self, plot: Option<&Path>) -> Result<(), clap::Error> {
        let Some(p) = plot else { return Ok(()) };
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if p.is_dir() {
            Err(self.invalid("plot", p.display(), "this is a folder: give the path of the SVG file to write"))
        } else if !dir.is_dir() {
            Err(self.invalid(
                "plot",
                p.display(),
                format!("no folder {} to write the SVG into", dir.display()),
            ))
        } else {
            Ok(())
        }
    }
}

/// Checks what clap cannot express, right after parsing, before anything is provisioned.
fn check(cli: &Cli, root: &clap::Command, m: &ArgMatches) -> Result<(), clap::Error> {
    let (mut cmd, mut m) = (root, m);
    while let Some((name, sub)) = m.subcommand() {
        let Some(c) = cmd.find_subcommand(name) else { break };
        (cmd, m) = (c, sub);
    }
    let c = Check { cmd: cmd.clone(), m };
    let packetized_pipes = |pipes: u32, with: &str| {
        if pipes > PACKETIZED_QUEUES {
            Err(c.invalid(
                "pipes",
                pipes,
                format!(
                    "{pipes} is not in 1..={PACKETIZED_QUEUES} with {with}: the packetized NIC has \
                     {PACKETIZED_QUEUES} queue pairs"
                ),
            ))
        } else {
            Ok(())
        }
    };
    match &cli.cmd {
        Cmd::Run { scenario: Scenario::Echo { echo, .. } } if echo.nic == NicKind::Packetized => {
            packetized_pipes(echo.pipes, "--nic packetized")?;
            if echo.garbage_first {
                return Err(
                    c.conflict("garbage_first", "'--nic packetized' (it scribbles over Ensō registers)")
                );
            }
            if echo.model == EngineModel::Rtl {
                return Err(c.invalid(
                    "model",
                    "rtl",
                    "the RTL is the Ensō NIC's queue engine: use it with --nic enso",
                ));
            }
            if let Some(id) = ["registers", "extensions"].into_iter().find(|id| c.given(id)) {
                return Err(c.conflict(id, "'--nic packetized' (it sets up the Ensō NIC)"));
            }
        }
        Cmd::Run { scenario: Scenario::Chain { transport, mode, enso, .. } } => {
            c.guest_only(*transport, &["accel", "timeout", "console"])?;
            if enso.extensions == run::DriverExtensions::None && *mode != testbed::chain::Mode::Cpu {
                return Err(c.conflict(
                    "extensions",
                    "'--mode nagare', 'glue' or 'both' (the switch modes use the NIC's stream extension)",
                ));
            }
        }
        Cmd::Run { scenario: Scenario::App { transport, .. } } => {
            c.guest_only(*transport, &["accel", "timeout", "console"])?;
        }
        Cmd::Run { scenario: Scenario::CardEcho { viommu: testbed::vm::Viommu::On, .. } } => {
            return Err(c.invalid(
                "viommu",
                "on",
                "the program gives the device physical addresses: use off or passthrough",
            ));
        }
        Cmd::Run { scenario: Scenario::PeerEcho { peer, .. } } => {
            if peer.link != testbed::peer::LinkKind::Udp {
                if let Some(id) = ["udp_local", "udp_remote", "peer_netns"].into_iter().find(|id| c.given(id))
                {
                    return Err(c.conflict(id, "'--link vhost-user' (it is a --link udp option)"));
                }
            }
            if let Some(ns) = &peer.peer_netns {
                if peer.udp_local.is_none() || peer.udp_remote.is_none() {
                    return Err(c.invalid(
                        "peer_netns",
                        ns,
                        "give --udp-local and --udp-remote too: 127.0.0.1 here is not the peer's",
                    ));
                }
                if ns.contains('/') || !Path::new("/run/netns").join(ns).exists() {
                    return Err(c.invalid(
                        "peer_netns",
                        ns,
                        "no such network namespace (see `ip netns list`)",
                    ));
                }
            }
        }
        Cmd::Run { scenario: Scenario::GenEcho { transport, pcap, .. } } => {
            c.guest_only(*transport, &["accel"])?;
            if let Some(p) = pcap {
                // The same check EnsōGen makes, so a capture it cannot send is refused now.
                guest_apps::ensogen::load_pcap(p).map_err(|e| c.invalid("pcap", p.display(), e))?;
            }
        }
        Cmd::Bench { bench: Bench::Echo { transport, nic, notify, pipes, plot, .. } } => {
            if nic.contains(&NicKind::Packetized) {
                packetized_pipes(*pipes, "the packetized NIC in --nic")?;
            }
            c.guest_only(*transport, &["accel"])?;
            if !nic.contains(&NicKind::Enso) && c.given("notify") {
                return Err(c.conflict("notify", "'--nic packetized' (the modes are the Ensō NIC's)"));
            }
            if let Some(n) = notify.iter().find(|n| **n != Notify::Reactive) {
                if *transport == Transport::Vm {
                    return Err(c.invalid(
                        "notify",
                        n.name(),
                        "--transport vm runs reactive notifications only",
                    ));
                }
            }
            c.plot(plot.as_deref())?;
        }
        Cmd::Bench { bench: Bench::Apps { plot, .. } } => c.plot(plot.as_deref())?,
        Cmd::Serve(a) => {
            if let Err(why) = a.config() {
                let id = if why.contains("port") {
                    "port"
                } else if why.contains("model") {
                    "model"
                } else {
                    "pipes"
                };
                return Err(c.invalid(id, "", why));
            }
        }
        Cmd::Up(a) => {
            if let Some(d) = a.share.as_ref().filter(|d| !d.is_dir()) {
                return Err(c.invalid("share", d.display(), "no such folder"));
            }
            if let Some(t) = &a.topology {
                if let Err(e) = testbed::up::load_topology(t) {
                    return Err(c.cmd.clone().error(ErrorKind::ValueValidation, format!("{e:#}")));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses and checks the command line.
fn parse(args: &[OsString]) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    let m = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))?;
    check(&cli, &cmd, &m)?;
    Ok(cli)
}

/// A usage error: clap's message on stderr, exit code 2; with `--json` among the
/// arguments, also the failure's JSON object on stdout.
fn usage_error(e: clap::Error, args: &[OsString]) -> ! {
    if e.use_stderr() && args.iter().skip(1).any(|a| a == "--json") {
        let text = e.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let message = message.join(" ");
        let mut o = serde_json::Map::new();
        if let Some((key, name)) = label_from_args(args) {
            o.insert(key.into(), name.into());
        }
        o.insert("pass".into(), false.into());
        o.insert("error".into(), message.strip_prefix("error: ").unwrap_or(&message).into());
        println!("{}", serde_json::Value::Object(o));
    }
    e.exit()
}

/// The JSON key and name of the command that `args` invoke, when they name one that
/// prints JSON (`run <scenario>`, `bench <benchmark>`).
fn label_from_args(args: &[OsString]) -> Option<(&'static str, String)> {
    let mut words = args.iter().skip(1).filter_map(|a| a.to_str()).filter(|a| !a.starts_with('-'));
    let top = words.next()?;
    let key = match top {
        "run" => "scenario",
        "bench" => "benchmark",
        _ => return None,
    };
    let name = words.next()?;
    Cli::command().find_subcommand(top)?.find_subcommand(name).map(|_| (key, name.to_string()))
}

/// What a command produced: the readable text, the JSON object (`--json`), the exit code.
struct Outcome {
    text: String,
    json: String,
    code: i32,
}

impl Outcome {
    fn text(text: String) -> Outcome {
        Outcome { text, json: String::new(), code: 0 }
    }

    fn code(code: i32) -> Outcome {
        Outcome { text: String::new(), json: String::new(), code }
    }

    fn report(r: &run::RunReport) -> Outcome {
        Outcome { text: run::render(r), json: run::json_line(r), code: i32::from(!r.pass) }
    }

    fn print(self, json: bool) -> i32 {
        if json && !self.json.is_empty() {
            println!("{}", self.json);
        } else {
            print!("{}", self.text);
        }
        self.code
    }
}

/// A benchmark's report with its verdict: `pass`, and `error` when the run went well but
/// writing the plot did not.
#[derive(Serialize)]
struct Judged<'a, T: Serialize> {
    #[serde(flatten)]
    report: &'a T,
    pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Writes the plot (if asked); returns what went wrong.
fn write_plot(plot: Option<&Path>, svg: impl FnOnce() -> String) -> Option<String> {
    let path = plot?;
    match std::fs::write(path, svg()) {
        Ok(()) => {
            eprintln!("[testbed] bench: plot written to {}", path.display());
            None
        }
        Err(e) => {
            let e = format!("cannot write {}: {e}", path.display());
            eprintln!("error: {e}");
            Some(e)
        }
    }
}

/// The guests' environment for the VM transport (none natively).
fn provision(transport: Transport, accel: AccelChoice) -> Result<Option<run::Env>> {
    Ok(match transport {
        Transport::Native => None,
        Transport::Vm => Some(run::Env::provision(accel)?),
    })
}

fn scenario(s: Scenario) -> Result<run::RunReport> {
    match s {
        Scenario::Smoke { vm, kill_first_guest, .. } => {
            let env = run::Env::provision(vm.accel)?;
            run::smoke(&env, &vm.options(), kill_first_guest)
        }
        Scenario::Echo { vm, echo, .. } => {
            let env = run::Env::provision(vm.accel)?;
            run::echo(&env, &vm.options(), echo.options())
        }
        Scenario::CardEcho { vm, packets, size, flows, pipes, window, registers, model, viommu, .. } => {
            let env = run::Env::provision(vm.accel)?;
            let o = testbed::cardecho::CardEchoOptions {
                packets,
                size,
                flows,
                pipes,
                window,
                registers,
                model,
                viommu,
            };
            testbed::cardecho::card_echo(&env, &vm.options(), o)
        }
        Scenario::PeerEcho { vm, peer, .. } => {
            let env = run::Env::provision(vm.accel)?;
            testbed::peer::peer_echo(&env, &vm.options(), peer.options())
        }
        Scenario::PeerCapture { vm, peer, .. } => {
            let env = run::Env::provision(vm.accel)?;
            testbed::peer::peer_capture(&env, &vm.options(), peer.options())
        }
        Scenario::GenEcho { vm, packets, size, flows, rate, pcap, transport, enso, .. } => {
            let setup = enso.setup();
            let o = testbed::peer::GenEchoOptions {
                packets,
                size: size as usize,
                flows,
                rate,
                pcap,
                transport,
                setup,
            };
            let env = provision(transport, vm.accel)?;
            testbed::peer::gen_echo(env.as_ref(), &vm.options(), &o)
        }
        Scenario::Chain { vm, mode, chain, items, transport, model, enso, .. } => {
            let o = testbed::chain::ChainOptions {
                items,
                shape: chain.shape(),
                mode,
                stream: 1,
                transport,
                model,
                setup: enso.setup(),
            };
            let env = provision(transport, vm.accel)?;
            testbed::chain::run(env.as_ref(), &vm.options(), &o)
        }
        Scenario::App { vm, name, nic, frames, window, transport, .. } => {
            let o = testbed::apps::AppOptions { name: name.name().into(), nic, frames, window };
            let env = provision(transport, vm.accel)?;
            testbed::apps::run(env.as_ref(), &vm.options(), &o, transport)
        }
    }
}

fn bench(b: Bench) -> Result<Outcome> {
    match b {
        Bench::Apps { transport: AppsTransport::Native, frames, window, runs, plot, .. } => {
            let r = testbed::apps::bench(frames, window, runs as usize)?;
            let plot_error = write_plot(plot.as_deref(), || testbed::apps::plot_bench(&r));
            // Failed runs and failed checks, then the plot.
            let error = match (r.failure(), plot_error) {
                (Some(f), Some(p)) => Some(format!("{f}; {p}")),
                (f, p) => f.or(p),
            };
            let pass = error.is_none() && r.results.iter().all(|x| x.correct);
            let json = serde_json::to_string(&Judged { report: &r, pass, error })?;
            Ok(Outcome { text: testbed::apps::render_bench(&r), json, code: i32::from(!pass) })
        }
        Bench::Echo {
            transport,
            accel,
            sizes,
            packets,
            runs,
            pipes,
            flows,
            nic,
            notify,
            served_pipes,
            model_batch,
            model_sw_batch_ns,
            model_poll_ns,
            model_mpps,
            plot,
            ..
        } => {
            let o = testbed::bench::BenchOptions {
                sizes,
                packets,
                runs,
                pipes,
                flows,
                nics: nic,
                notify,
                served_pipes,
                model: testbed::bench::ModelOptions {
                    batch: model_batch,
                    sw_batch_ns: model_sw_batch_ns,
                    poll_ns: model_poll_ns,
                    offered_mpps: model_mpps,
                },
            };
            let env = provision(transport, accel)?;
            let vm = env.as_ref().map(|env| testbed::bench::VmBench {
                env,
                options: run::RunOptions { timeout: Duration::from_secs(600), keep: false, console: false },
            });
            let r = testbed::bench::echo(&o, vm.as_ref())?;
            let plot_error = write_plot(plot.as_deref(), || testbed::bench::plot(&r));
            // Failed runs and lossy rows, then the plot.
            let error = match (r.failure(), plot_error) {
                (Some(f), Some(p)) => Some(format!("{f}; {p}")),
                (f, p) => f.or(p),
            };
            let pass = error.is_none() && r.results.iter().all(|x| x.all_matched);
            let json = serde_json::to_string(&Judged { report: &r, pass, error })?;
            Ok(Outcome { text: testbed::bench::render(&r), json, code: i32::from(!pass) })
        }
    }
}

/// Runs a parsed and checked command.
fn execute(cmd: Cmd) -> Result<Outcome> {
    Ok(match cmd {
        Cmd::Qemu => {
            let q = cache::workspace_root().and_then(|r| qemu::ensure_qemu(&r))?;
            Outcome::text(format!("{}\n", q.bin.display()))
        }
        Cmd::Image { headers } => {
            let img = cache::workspace_root()
                .and_then(|root| guest_image::build_guest_binary(&root))
                .and_then(|g| guest_image::ensure_image(&g))?;
            let mut out = format!("{}\n{}\n", img.kernel.display(), img.initrd.display());
            if headers {
                out += &format!("{}\n", guest_image::ensure_headers(&img)?.display());
            }
            Outcome::text(out)
        }
        Cmd::Rtl => Outcome::text(format!("{}\n", testbed::rtl::ensure()?.display())),
        Cmd::Accel { accel } => Outcome::text(format!("{}\n", run::Env::provision(accel)?.accel.name())),
        Cmd::Run { scenario: s } => Outcome::report(&scenario(s)?),
        Cmd::Bench { bench: b } => bench(b)?,
        Cmd::Demo { vm } => Outcome::code(demo(&vm)),
        Cmd::Serve(a) => Outcome::code(testbed::up::cli::serve(&a)?),
        Cmd::Up(a) => Outcome::code(testbed::up::cli::up(&a)?),
        Cmd::Ls(a) => Outcome::code(testbed::up::cli::ls(&a)?),
        Cmd::Exec(a) => Outcome::code(testbed::up::cli::exec(&a)?),
        Cmd::Console(a) => Outcome::code(testbed::up::cli::console(&a)?),
        Cmd::Down(a) => Outcome::code(testbed::up::cli::down(&a)?),
        Cmd::Daemon(a) => Outcome::code(testbed::up::cli::daemon(&a)?),
        Cmd::Soak(a) => Outcome::code(testbed::soak::run(&a)?),
    })
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = parse(&args).unwrap_or_else(|e| usage_error(e, &args));
    let json = cli.cmd.json();
    let code = match execute(cli.cmd) {
        Ok(out) => out.print(json.is_some()),
        Err(e) => {
            // The one place a failed command is reported.
            if let Some((key, name)) = json {
                println!("{}", serde_json::json!({key: name, "pass": false, "error": format!("{e:#}")}));
            }
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The demo (see `testbed::demo`): six steps, then a one-screen summary naming the log
/// that holds the full reports.
fn demo(vm: &VmArgs) -> i32 {
    let r = run::Env::provision(vm.accel).and_then(|env| testbed::demo::run(&env, &vm.options()));
    match r {
        Ok(d) => {
            print!("{}", d.summary());
            i32::from(!d.pass())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_match_the_code_that_consumes_the_values() {
        assert!(ENSO_PIPES <= u64::from(enso_nic::EnsoConfig::default().num_pipes));
        assert_eq!(PACKETIZED_QUEUES, packet_nic::PacketNicConfig::default().num_queues);
        assert_eq!(MAX_FRAME as usize, wire::generator::MAX_SIZE);
        assert!(MIN_FRAME as usize >= wire::generator::MIN_SIZE);
        assert!(MAX_FRAME as usize <= testbed_regs::enso::MAX_RX_PACKET);
        assert!(MAX_FRAME as usize <= testbed_regs::packetized::MAX_FRAME);
        assert_eq!(guest_apps::ensogen::MIN_SIZE, 60);
        assert_eq!(guest_apps::ensogen::MAX_SIZE, 1514);
        assert_eq!(1024 + (ENSOGEN_MAX_FLOWS - 1), u64::from(u16::MAX));
        let model = testbed::latency::Params::new(testbed::latency::Mode::Reactive);
        assert_eq!(MODEL_MAX_BATCH as usize, model.packets);
        let names: Vec<&str> = AppName::value_variants().iter().map(|a| a.name()).collect();
        assert_eq!(names, guest_apps::netapp::NAMES);
        for a in AppName::value_variants() {
            assert_eq!(a.to_possible_value().map(|v| v.get_name().to_string()), Some(a.name().to_string()));
        }
        for s in ChainShape::value_variants() {
            let spelled = s.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
            assert_eq!(guest_apps::chain::Shape::parse(&spelled), Some(s.shape()));
            assert_eq!(s.shape().name(), spelled);
        }
        for d in testbed::rig::DeviceKind::value_variants() {
            assert_eq!(d.to_possible_value().map(|v| v.get_name().to_string()), Some(d.name().to_string()));
        }
    }

    fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
        let args: Vec<OsString> =
            std::iter::once("testbed").chain(args.iter().copied()).map(Into::into).collect();
        parse(&args)
    }

    #[test]
    fn defaults_pass_the_checks() {
        for args in [
            &["run", "smoke"][..],
            &["run", "echo"],
            &["run", "echo", "--nic", "packetized"],
            &["run", "chain"],
            &["run", "chain", "--transport", "native", "--keep"],
            &["run", "app", "--name", "mica"],
            &["run", "app", "--name", "logmon", "--transport", "native"],
            &["run", "peer-echo"],
            &["run", "peer-echo", "--link", "udp"],
            &[
                "run",
                "peer-echo",
                "--link",
                "udp",
                "--udp-local",
                "127.0.0.1:0",
                "--udp-remote",
                "127.0.0.1:7701",
            ],
            &["run", "peer-capture"],
            &["run", "gen-echo"],
            &["run", "card-echo"],
            &["run", "card-echo", "--registers", "mmio", "--model", "rtl", "--viommu", "passthrough"],
            &["run", "echo", "--registers", "mmio", "--extensions", "none"],
            &["run", "chain", "--registers", "mmio", "--extensions", "none"],
            &["run", "gen-echo", "--registers", "mmio", "--extensions", "none"],
            &["serve", "enso", "--registers", "mmio", "--extensions", "none"],
            &["bench", "echo", "--served-pipes", "64,8192"],
            &["run", "gen-echo", "--transport", "native", "--timeout", "30"],
            &["bench", "echo"],
            &["bench", "echo", "--transport", "vm", "--accel", "tcg"],
            &["bench", "apps", "--transport", "native"],
            &["demo"],
            &["accel"],
            &["serve", "smoke", "--socket", "/tmp/x.sock"],
        ] {
            if let Err(e) = parse_args(args) {
                panic!("{args:?}: {}", e.render());
            }
        }
    }

    #[test]
    fn documented_spellings_parse() {
        let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::Chain { chain, .. } } }) =
            parse_args(&["run", "chain", "--chain", "crypto,ml"])
        else {
            panic!("--chain crypto,ml")
        };
        assert_eq!(chain, ChainShape::CryptoMl);
        let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::Chain { chain, .. } } }) =
            parse_args(&["run", "chain", "--chain", "crypto"])
        else {
            panic!("--chain crypto")
        };
        assert_eq!(chain, ChainShape::Crypto);
        let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::App { name, .. } } }) =
            parse_args(&["run", "app", "--name", "nitrosketch"])
        else {
            panic!("--name nitrosketch")
        };
        assert_eq!(name, AppName::Nitrosketch);
    }

    #[test]
    fn combinations_are_refused_with_the_option_named() {
        for (args, option) in [
            (&["run", "echo", "--nic", "packetized", "--pipes", "9"][..], "--pipes"),
            (&["run", "echo", "--nic", "packetized", "--garbage-first"], "--garbage-first"),
            (&["run", "echo", "--nic", "packetized", "--model", "rtl"], "--model"),
            (&["run", "echo", "--nic", "packetized", "--registers", "mmio"], "--registers"),
            (&["run", "chain", "--mode", "both", "--extensions", "none"], "--extensions"),
            (&["run", "card-echo", "--viommu", "on"], "--viommu"),
            (&["run", "card-echo", "--size", "60"], "--size"),
            (&["run", "chain", "--transport", "native", "--accel", "tcg"], "--accel"),
            (&["run", "app", "--name", "mica", "--transport", "native", "--console"], "--console"),
            (&["run", "gen-echo", "--transport", "native", "--accel", "kvm"], "--accel"),
            (&["run", "gen-echo", "--pcap", "/nonexistent/x.pcap"], "--pcap"),
            (&["run", "peer-echo", "--udp-remote", "127.0.0.1:7701"], "--udp-remote"),
            (&["run", "peer-echo", "--link", "udp", "--peer-netns", "tbA"], "--peer-netns"),
            (
                &[
                    "run",
                    "peer-echo",
                    "--link",
                    "udp",
                    "--peer-netns",
                    "no-such-ns-here",
                    "--udp-local",
                    "10.77.0.2:7702",
                    "--udp-remote",
                    "10.77.0.1:7701",
                ],
                "--peer-netns",
            ),
            (&["run", "peer-echo", "--link", "udp", "--udp-local", "nowhere"], "--udp-local"),
            (&["bench", "echo", "--pipes", "9"], "--pipes"),
            (&["bench", "echo", "--accel", "tcg"], "--accel"),
            (&["bench", "echo", "--nic", "packetized", "--notify", "reactive"], "--notify"),
            (&["bench", "echo", "--transport", "vm", "--notify", "per-packet"], "--notify"),
            (&["bench", "echo", "--plot", "/nonexistent/x.svg"], "--plot"),
            (&["bench", "apps", "--plot", "/"], "--plot"),
        ] {
            match parse_args(args) {
                Ok(_) => panic!("{args:?} accepted"),
                Err(e) => {
                    assert_eq!(e.exit_code(), 2, "{args:?}");
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or_default();
                    assert!(first.starts_with("error: ") && first.contains(option), "{args:?}: {text}");
                }
            }
        }
    }
}
