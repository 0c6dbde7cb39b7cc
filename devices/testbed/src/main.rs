//! `testbed`: provisions QEMU and the guest image, serves emulated devices over vfio-user,
//! boots guests that run our drivers, and reports what both sides saw.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testbed::accel::AccelChoice;
use testbed::run::Transport;
use testbed::{cache, image, qemu, run};

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
    /// Time limit for one guest run, in seconds (boot included).
    #[arg(long, default_value_t = 300)]
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

#[derive(Subcommand)]
enum Cmd {
    /// Find or build QEMU (>= 10.1 with vfio-user-pci); prints the binary's path.
    Qemu,
    /// Build the guest program and image (cached); prints the kernel and initrd paths.
    Image,
    /// Print the accelerator guests will use (probing KVM if needed).
    Accel {
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
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
    /// Serve an emulated device on a vfio-user socket until interrupted (for your own QEMU
    /// or the native transport).
    Serve {
        /// Device model to serve.
        #[arg(value_parser = ["smoke"])]
        device: String,
        /// Socket path to listen on.
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct EchoArgs {
    /// Packets the host generator sends (every reply is checked).
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Frame size in bytes (60..=9000).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Distinct flows.
    #[arg(long, default_value_t = 16)]
    flows: u32,
    /// Pipes the guest's echo uses.
    #[arg(long, default_value_t = 4)]
    pipes: u32,
    /// Packets in flight at most (closed loop).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// First boot a guest whose driver writes garbage into every register page and posts
    /// bad notifications; the echo then runs against the same server.
    #[arg(long)]
    garbage_first: bool,
    /// The NIC model the guest's echo runs on.
    #[arg(long, value_enum, default_value = "enso")]
    nic: run::NicKind,
    /// The Ensō NIC's queue engine: the Rust model, or the RTL (rtl/enso/enso_queue_engine.sv)
    /// co-simulated under Verilator and clocked by the device thread.
    #[arg(long, value_enum, default_value = "rust")]
    model: run::EngineModel,
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
        transport: Transport,
        /// Frames per app and NIC.
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
        /// Frames in flight at most.
        #[arg(long, default_value_t = 256)]
        window: usize,
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
        /// Frame sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<usize>,
        /// Packets per run.
        #[arg(long, default_value_t = 2_000_000)]
        packets: u64,
        /// Runs per size; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Pipes (Ensō) or RSS queues (packetized) the echo uses; one per driver core, as in
        /// the seed's single-core echo.
        #[arg(long, default_value_t = 1)]
        pipes: u32,
        /// Flows.
        #[arg(long, default_value_t = 16)]
        flows: u32,
        /// NIC models, comma-separated; with both, ratios are reported.
        #[arg(long, value_delimiter = ',', default_value = "enso,packetized")]
        nic: Vec<run::NicKind>,
        /// Ensō notification modes, comma-separated: one result row each (the packetized
        /// NIC runs once). Ratios use the reactive row.
        #[arg(long, value_delimiter = ',', default_value = "reactive")]
        notify: Vec<testbed::bench::Notify>,
        /// Latency model: packets per arrival burst.
        #[arg(long, default_value_t = 32)]
        model_batch: usize,
        /// Latency model: software cost per batch (ns), on top of the measured driver
        /// ns/packet per packet.
        #[arg(long, default_value_t = 100.0)]
        model_sw_batch_ns: f64,
        /// Latency model: poll interval of an idle driver (ns).
        #[arg(long, default_value_t = 100.0)]
        model_poll_ns: f64,
        /// Latency model: offered load (Mpps); default the reactive Ensō row's measured rate.
        #[arg(long)]
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
        #[arg(long, default_value = "crypto,ml", value_parser = ["crypto,ml", "crypto"])]
        chain: String,
        /// Items (encrypted images) the source sends, one at a time.
        #[arg(long, default_value_t = 200)]
        items: u64,
        /// Where the chain's driver runs: in a guest (vm) or in this process (native).
        #[arg(long, value_enum, default_value = "vm")]
        transport: testbed::chain::Transport,
        /// The Ensō NIC's queue engine: the Rust model, or the RTL co-simulated under
        /// Verilator.
        #[arg(long, value_enum, default_value = "rust")]
        model: run::EngineModel,
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
        #[arg(long, value_parser = ["maglev", "nitrosketch", "mica", "logmon"])]
        name: String,
        /// The NIC model.
        #[arg(long, value_enum, default_value = "enso")]
        nic: run::NicKind,
        /// Frames the source sends.
        #[arg(long, default_value_t = 20_000)]
        frames: u64,
        /// Frames in flight at most.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Where the app's driver runs: in a guest (vm) or in this process (native).
        #[arg(long, value_enum, default_value = "vm")]
        transport: testbed::apps::Transport,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// A stock Linux peer guest (virtio-net on our vhost-user backend, cabled to the Ensō
    /// NIC) runs arping, ping and OpenBSD nc against the Rust responder behind the Ensō NIC;
    /// both the peer's tools and the host's wire tap check every reply.
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
        vm: VmArgs,
        #[command(flatten)]
        peer: PeerArgs,
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
    /// EnsōGen in one guest, echo in another, NIC to NIC over the emulated wire: sent,
    /// received, lost and the RTT histogram from the NIC's timestamps.
    GenEcho {
        #[command(flatten)]
        vm: VmArgs,
        /// Frames EnsōGen sends.
        #[arg(long, default_value_t = 2000)]
        packets: u64,
        /// Frame size in bytes (60..=1514; generated flows only).
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(60..=1514))]
        size: u64,
        /// UDP flows (generated flows only).
        #[arg(long, default_value_t = 16)]
        flows: u32,
        /// Frames per second; 0 sends as fast as the NIC takes them.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Replay the frames of this pcap (cycled) instead of generated flows.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Where the two apps run: in two guests (vm) or in this process (native).
        #[arg(long, value_enum, default_value = "vm")]
        transport: Transport,
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

#[derive(clap::Args, Clone, Copy)]
struct PeerArgs {
    /// The NIC cabled to the peer (peer-echo: the responder runs on either; peer-capture:
    /// enso only).
    #[arg(long, value_enum, default_value = "enso")]
    nic: run::NicKind,
    /// ARP requests the peer's arping sends.
    #[arg(long, default_value_t = 3)]
    arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes).
    #[arg(long, default_value_t = 10)]
    pings: u32,
    /// UDP datagrams the peer's nc sends.
    #[arg(long, default_value_t = 40)]
    datagrams: u32,
    /// peer-echo: first boot a peer and kill it in the middle of its traffic; the next peer
    /// must be served as if nothing happened.
    #[arg(long)]
    kill_first_peer: bool,
}

impl PeerArgs {
    fn options(self) -> testbed::peer::PeerOptions {
        testbed::peer::PeerOptions {
            nic: self.nic,
            arps: self.arps,
            pings: self.pings,
            datagrams: self.datagrams,
            kill_first_peer: self.kill_first_peer,
        }
    }
}

fn finish(report: Result<run::RunReport>, json: bool, scenario: &str) -> i32 {
    match report {
        Ok(r) => {
            if json {
                println!("{}", run::json_line(&r));
            } else {
                print!("{}", run::render(&r));
            }
            if r.pass {
                0
            } else {
                1
            }
        }
        Err(e) => {
            if json {
                let v = serde_json::json!({"scenario": scenario, "pass": false, "error": format!("{e:#}")});
                println!("{v}");
            }
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Qemu => match cache::workspace_root().and_then(|r| qemu::ensure_qemu(&r)) {
            Ok(q) => {
                println!("{}", q.bin.display());
                0
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
        Cmd::Image => {
            let r = cache::workspace_root()
                .and_then(|root| image::build_guest_binary(&root))
                .and_then(|g| image::ensure_image(&g));
            match r {
                Ok(img) => {
                    println!("{}\n{}", img.kernel.display(), img.initrd.display());
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Cmd::Accel { accel } => match run::Env::provision(accel) {
            Ok(env) => {
                println!("{}", env.accel.name());
                0
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
        Cmd::Run { scenario: Scenario::Smoke { vm, json, kill_first_guest } } => {
            let r = run::Env::provision(vm.accel)
                .and_then(|env| run::smoke(&env, &vm.options(), kill_first_guest));
            finish(r, json, "smoke")
        }
        Cmd::Run { scenario: Scenario::PeerEcho { vm, peer, json } } => {
            let r = run::Env::provision(vm.accel)
                .and_then(|env| testbed::peer::peer_echo(&env, &vm.options(), peer.options()));
            finish(r, json, "peer-echo")
        }
        Cmd::Run { scenario: Scenario::PeerCapture { vm, peer, json } } => {
            let r = run::Env::provision(vm.accel)
                .and_then(|env| testbed::peer::peer_capture(&env, &vm.options(), peer.options()));
            finish(r, json, "peer-capture")
        }
        Cmd::Run {
            scenario: Scenario::GenEcho { vm, packets, size, flows, rate, pcap, transport, json },
        } => {
            let o =
                testbed::peer::GenEchoOptions { packets, size: size as usize, flows, rate, pcap, transport };
            let r = match transport {
                Transport::Native => testbed::peer::gen_echo(None, &vm.options(), &o),
                Transport::Vm => run::Env::provision(vm.accel)
                    .and_then(|env| testbed::peer::gen_echo(Some(&env), &vm.options(), &o)),
            };
            finish(r, json, "gen-echo")
        }
        Cmd::Run { scenario: Scenario::Echo { vm, echo, json } } => {
            let r =
                run::Env::provision(vm.accel).and_then(|env| run::echo(&env, &vm.options(), echo.options()));
            finish(r, json, "echo")
        }
        Cmd::Run { scenario: Scenario::Chain { vm, mode, chain, items, transport, model, json } } => {
            let o = testbed::chain::ChainOptions {
                items,
                shape: guest_apps::chain::Shape::parse(&chain).unwrap_or(guest_apps::chain::Shape::CryptoMl),
                mode,
                stream: 1,
                transport,
                model,
            };
            let r = match transport {
                testbed::chain::Transport::Native => testbed::chain::run(None, &vm.options(), &o),
                testbed::chain::Transport::Vm => run::Env::provision(vm.accel)
                    .and_then(|env| testbed::chain::run(Some(&env), &vm.options(), &o)),
            };
            finish(r, json, "chain")
        }
        Cmd::Run { scenario: Scenario::App { vm, name, nic, frames, window, transport, json } } => {
            let o = testbed::apps::AppOptions { name, nic, frames, window };
            let r = match transport {
                testbed::apps::Transport::Native => testbed::apps::run(None, &vm.options(), &o, transport),
                testbed::apps::Transport::Vm => run::Env::provision(vm.accel)
                    .and_then(|env| testbed::apps::run(Some(&env), &vm.options(), &o, transport)),
            };
            finish(r, json, "app")
        }
        Cmd::Bench { bench: Bench::Apps { transport, frames, window, json, plot } } => {
            if transport != Transport::Native {
                eprintln!("error: bench apps runs natively only (--transport native)");
                std::process::exit(2);
            }
            match testbed::apps::bench(frames, window) {
                Ok(r) => {
                    let mut failed = false;
                    if let Some(path) = &plot {
                        if let Err(e) = std::fs::write(path, testbed::apps::plot_bench(&r)) {
                            eprintln!("error: cannot write {}: {e}", path.display());
                            failed = true;
                        }
                    }
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        print!("{}", testbed::apps::render_bench(&r));
                    }
                    i32::from(failed || !r.results.iter().all(|x| x.correct))
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Cmd::Demo { vm } => demo(&vm),
        Cmd::Bench {
            bench:
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
                    model_batch,
                    model_sw_batch_ns,
                    model_poll_ns,
                    model_mpps,
                    json,
                    plot,
                },
        } => {
            let o = testbed::bench::BenchOptions {
                sizes,
                packets,
                runs: runs.max(1),
                pipes,
                flows,
                nics: nic,
                notify,
                model: testbed::bench::ModelOptions {
                    batch: model_batch,
                    sw_batch_ns: model_sw_batch_ns,
                    poll_ns: model_poll_ns,
                    offered_mpps: model_mpps,
                },
            };
            let env = match transport {
                Transport::Native => None,
                Transport::Vm => match run::Env::provision(accel) {
                    Ok(env) => Some(env),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        std::process::exit(1);
                    }
                },
            };
            let vm = env.as_ref().map(|env| testbed::bench::VmBench {
                env,
                options: run::RunOptions { timeout: Duration::from_secs(600), keep: false, console: false },
            });
            match testbed::bench::echo(&o, vm.as_ref()) {
                Ok(r) => {
                    let mut plot_failed = false;
                    if let Some(path) = &plot {
                        match std::fs::write(path, testbed::bench::plot(&r)) {
                            Ok(()) => eprintln!("[testbed] bench: plot written to {}", path.display()),
                            Err(e) => {
                                eprintln!("error: cannot write {}: {e}", path.display());
                                plot_failed = true;
                            }
                        }
                    }
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        print!("{}", testbed::bench::render(&r));
                    }
                    i32::from(plot_failed || !r.results.iter().all(|x| x.all_matched))
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        Cmd::Serve { device, socket } => serve(&device, &socket),
    };
    std::process::exit(code);
}

/// The demo's echo: 20 000 packets of 64 B over 16 flows.
fn echo_args() -> EchoArgs {
    EchoArgs {
        packets: 20_000,
        size: 64,
        flows: 16,
        pipes: 4,
        window: 256,
        garbage_first: false,
        nic: run::NicKind::Enso,
        model: run::EngineModel::Rust,
    }
}

/// The demo: the smoke device (every testbed path), the Ensō NIC echoing traffic from the
/// host generator through the guest's driver, the packetized baseline, the accelerator
/// chain, a stock Linux peer on the wire, and the RTL queue engine in the loop.
fn demo(vm: &VmArgs) -> i32 {
    let env = match run::Env::provision(vm.accel) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    eprintln!(
        "[testbed] demo 1/6: the smoke device, served over vfio-user to a QEMU guest running our driver"
    );
    let smoke = finish(run::smoke(&env, &vm.options(), false), false, "smoke");
    println!();
    eprintln!("[testbed] demo 2/6: the Ensō NIC; the guest's echo app answers 20000 packets from the host generator");
    let echo = echo_args();
    let echo = finish(run::echo(&env, &vm.options(), echo.options()), false, "echo");
    println!();
    eprintln!("[testbed] demo 3/6: the same echo on the packetized baseline NIC (per-packet descriptors and buffers)");
    let packetized = EchoArgs { nic: run::NicKind::Packetized, ..echo_args() };
    let packetized = finish(run::echo(&env, &vm.options(), packetized.options()), false, "echo");
    println!();
    eprintln!(
        "[testbed] demo 4/6: the accelerator chain NIC → crypto → ML → NIC, with the CPU in the middle (seed Table 2), then through the Nagare switch (Table 3)"
    );
    let o =
        testbed::chain::ChainOptions { items: 100, mode: testbed::chain::Mode::Both, ..Default::default() };
    let chain = finish(testbed::chain::run(Some(&env), &vm.options(), &o), false, "chain");
    println!();
    eprintln!(
        "[testbed] demo 5/6: a second guest with a stock Linux stack on virtio-net (our vhost-user backend), \
         cabled to the Ensō NIC: its ping, arping and nc are answered by the Rust responder"
    );
    let peer = finish(
        testbed::peer::peer_echo(&env, &vm.options(), testbed::peer::PeerOptions::default()),
        false,
        "peer-echo",
    );
    println!();
    let rtl = if rtl_cosim::available() {
        eprintln!(
            "[testbed] demo 6/6: the echo again, the Ensō NIC's queue engine being the RTL under Verilator"
        );
        let o = EchoArgs { packets: 2000, model: run::EngineModel::Rtl, ..echo_args() };
        finish(run::echo(&env, &vm.options(), o.options()), false, "echo")
    } else {
        eprintln!(
            "[testbed] demo 6/6: not run: this testbed was built without Verilator, so the RTL \
             co-simulation is absent (apt-get install verilator, rebuild, run the demo again)"
        );
        0
    };
    smoke.max(echo).max(packetized).max(chain).max(peer).max(rtl)
}

fn serve(device: &str, socket: &std::path::Path) -> i32 {
    let dev = match device {
        "smoke" => match testdev::SmokeDevice::new() {
            Ok(d) => Arc::new(Mutex::new(d)),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        },
        other => {
            eprintln!("error: unknown device {other}");
            return 2;
        }
    };
    match vfio_server::Server::bind(socket, dev) {
        Ok(s) => {
            let _h = s.spawn();
            eprintln!("[testbed] serving {device} on {} (Ctrl-C to stop)", socket.display());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", socket.display());
            1
        }
    }
}
