//! `testbed run SCENARIO`: the scenarios' options and their handler.

use super::*;

#[derive(Subcommand)]
pub enum Scenario {
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
        mode: crate::scenarios::chain::Mode,
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
        transport: crate::scenarios::chain::Transport,
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
        transport: crate::scenarios::apps::Transport,
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
        viommu: crate::vm::Viommu,
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

/// Runs scenario `s` and prints its report (one JSON object with `json`).
pub fn handle(s: Scenario, json: bool) -> Result<ExitCode> {
    let r = report(s)?;
    Ok(finish(json, &run::render(&r), &run::json_line(&r), r.pass))
}

fn report(s: Scenario) -> Result<run::RunReport> {
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
            let o = crate::scenarios::cardecho::CardEchoOptions {
                packets,
                size,
                flows,
                pipes,
                window,
                registers,
                model,
                viommu,
            };
            crate::scenarios::cardecho::card_echo(&env, &vm.options(), o)
        }
        Scenario::PeerEcho { vm, peer, .. } => {
            let env = run::Env::provision(vm.accel)?;
            crate::scenarios::peer::peer_echo(&env, &vm.options(), peer.options())
        }
        Scenario::PeerCapture { vm, peer, .. } => {
            let env = run::Env::provision(vm.accel)?;
            crate::scenarios::peer::peer_capture(&env, &vm.options(), peer.options())
        }
        Scenario::GenEcho { vm, packets, size, flows, rate, pcap, transport, enso, .. } => {
            let setup = enso.setup();
            let o = crate::scenarios::peer::GenEchoOptions {
                packets,
                size: size as usize,
                flows,
                rate,
                pcap,
                transport,
                setup,
            };
            let env = provision(transport, vm.accel)?;
            crate::scenarios::peer::gen_echo(env.as_ref(), &vm.options(), &o)
        }
        Scenario::Chain { vm, mode, chain, items, transport, model, enso, .. } => {
            let o = crate::scenarios::chain::ChainOptions {
                items,
                shape: chain.shape(),
                mode,
                stream: 1,
                transport,
                model,
                setup: enso.setup(),
            };
            let env = provision(transport, vm.accel)?;
            crate::scenarios::chain::run(env.as_ref(), &vm.options(), &o)
        }
        Scenario::App { vm, name, nic, frames, window, transport, .. } => {
            let o = crate::scenarios::apps::AppOptions { name: name.name().into(), nic, frames, window };
            let env = provision(transport, vm.accel)?;
            crate::scenarios::apps::run(env.as_ref(), &vm.options(), &o, transport)
        }
    }
}
