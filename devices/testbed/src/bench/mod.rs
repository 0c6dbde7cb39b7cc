//! `testbed bench echo`: the Ensō driver's echo, natively over the vfio-user transport,
//! against the NIC model and the wire generator. Each wall-clock figure (Mpps, Gbps,
//! driver ns per packet, the raw two-thread ring's rate measured after each run) is
//! reported as the median and the spread (min, max) of several runs, alternating the NICs
//! within each round and their order between rounds. This machine is shared and noisy:
//! wall-clock figures, the ring's included, swing several-fold between invocations, so
//! the ring is a rough scale, not a yardstick. The yardstick is [`Instructions`]: one
//! extra short run of each row under callgrind counts the driver's instructions per
//! packet while it handles batches (the same from run to run) and the device thread's.
//!
//! `--notify reactive,per-packet,prefetch` runs the Ensō NIC once per notification mode
//! (one result row each); every row also carries `modeled_latency_ns`, the per-packet
//! latency the discrete-event model of [`crate::bench::latency`] gives for its mode.

pub mod latency;
use crate::scenarios::run::{NicKind, NicUnderTest};
use anyhow::{bail, Context, Result};
use device_access::vfio_user::VfioUserDevice;
use guest_apps::echo::{Echo, EchoParams};
use pcie_model::{ByteClasses, LinkConfig, PcieReport};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed_regs::enso::{FLIT, PIPE_FLITS};
use wire::generator::{GenConfig, Generator, GeneratorPort};

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Frame sizes to measure.
    pub sizes: Vec<usize>,
    /// Packets per run.
    pub packets: u64,
    /// Runs per size (the median is reported).
    pub runs: usize,
    /// Pipes the echo uses.
    pub pipes: u32,
    /// Flows the generator spreads packets over.
    pub flows: u32,
    /// NIC models to measure, alternating within each round.
    pub nics: Vec<NicKind>,
    /// Notification modes the Ensō NIC runs in (one result row each; the packetized NIC
    /// runs once).
    pub notify: Vec<Notify>,
    /// Parameters of the latency model ([`crate::bench::latency`]).
    pub model: ModelOptions,
    /// Pipes the Ensō NIC serves, one result row each (the card's 8192 by default): the
    /// device's polling cost must not grow with them.
    pub served_pipes: Vec<u32>,
}

/// One row of the benchmark: a NIC, its notification mode, the pipes the Ensō NIC serves.
type Variant = (NicKind, Notify, u32);

/// How the Ensō NIC notifies the driver of new data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notify {
    /// One outstanding notification per pipe, re-armed by the head write (the default).
    Reactive,
    /// One notification per packet.
    PerPacket,
    /// Reactive, and the echo rings the pipe's prefetch doorbell right after each batch.
    Prefetch,
}

impl Notify {
    /// "reactive", "per-packet" or "prefetch".
    pub fn name(self) -> &'static str {
        match self {
            Notify::Reactive => "reactive",
            Notify::PerPacket => "per-packet",
            Notify::Prefetch => "prefetch",
        }
    }

    fn model_mode(self) -> latency::Mode {
        match self {
            Notify::Reactive => latency::Mode::Reactive,
            Notify::PerPacket => latency::Mode::PerPacket,
            Notify::Prefetch => latency::Mode::Prefetch,
        }
    }
}

/// The latency model's parameters that the bench does not measure.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Packets per arrival burst.
    pub batch: usize,
    /// Software cost per batch (ns), on top of the measured driver ns/packet per packet.
    pub sw_batch_ns: f64,
    /// Poll interval of an idle driver (ns).
    pub poll_ns: f64,
    /// Offered load (Mpps); `None`: the reactive Ensō row's measured rate at that size
    /// (else the first row's).
    pub offered_mpps: Option<f64>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { batch: 32, sw_batch_ns: 100.0, poll_ns: 100.0, offered_mpps: None }
    }
}

/// The label of a NIC/notification pair in the packetized NIC's rows.
const DESCRIPTOR: &str = "descriptor";

/// One run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub mpps: f64,
    pub driver_ns_per_pkt: f64,
    pub driver_cpu_ns_per_pkt: f64,
    pub ring_ceiling_mpps: f64,
    /// The round (0-based): every row runs once per round.
    pub round: usize,
    /// Its place in the round's order (0 = first); the order reverses every other round.
    pub position: usize,
    /// Why the run failed (then its figures are zero and left out of the statistics).
    pub error: Option<String>,
}

/// One figure over several runs: its median (of an even count, the mean of the middle
/// two) and its spread, min to max. The one statistics helper of `bench echo` and
/// `bench apps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median and spread of `values` (NaN left out); all zero if there are none.
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n == 0 {
            return Spread::default();
        }
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }

    /// The spread of per-round ratios `num[i] / den[i]`, over the rounds where both were
    /// measured (`Some`) and `den` is positive.
    pub fn of_ratios(num: &[Option<f64>], den: &[Option<f64>]) -> Spread {
        let r: Vec<f64> = num
            .iter()
            .zip(den)
            .filter_map(|(n, d)| match (n, d) {
                (Some(n), Some(d)) if *d > 0.0 => Some(n / d),
                _ => None,
            })
            .collect();
        Spread::of(&r)
    }

    /// "median [min–max]" with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!("{:.prec$} [{:.prec$}–{:.prec$}]", self.median, self.min, self.max)
    }
}

/// The spread over a row's runs of each wall-clock figure (and of the notifications per
/// packet, which depend on timing too). The row's plain fields are these medians.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EchoSpread {
    pub mpps: Spread,
    pub gbps: Spread,
    pub driver_ns_per_pkt: Spread,
    pub driver_cpu_ns_per_pkt: Spread,
    pub ring_ceiling_mpps: Spread,
    pub pct_of_ceiling: Spread,
    pub notifications_per_pkt: Spread,
}

/// Instructions per packet, counted by callgrind in one extra short run of the row's echo
/// ([`INSTRUCTION_PACKETS`] packets, natively). Unlike the wall-clock figures they do not
/// depend on what else the machine is doing.
#[derive(Clone, Debug, Serialize)]
pub struct Instructions {
    /// "callgrind".
    pub tool: String,
    /// Packets in the counted run.
    pub packets: u64,
    /// The driver's instructions per packet while it handles batches (the section
    /// `driver_ns_per_pkt` times: receive, touch, post the send; polling excluded). The
    /// same from run to run, to within a fraction of a per cent where batch sizes differ.
    pub driver_per_pkt: f64,
    /// The device thread's instructions per packet: the NIC model and the wire generator
    /// it drives, idle polling included (so it varies by a few per cent run to run).
    pub device_per_pkt: f64,
}

/// The result for one NIC and frame size (medians over the runs).
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub nic: String,
    /// Ensō: "reactive", "per-packet" or "prefetch"; packetized: "descriptor" (one
    /// write-back per packet).
    pub notify: String,
    /// Pipes the Ensō NIC served (0 for the packetized NIC).
    pub served_pipes: u32,
    pub transport: String,
    pub size: usize,
    pub packets: u64,
    pub mpps: f64,
    pub gbps: f64,
    /// Driver time per packet while handling batches (echo app + driver library: receive,
    /// touch, post the send, free on completion), polling excluded.
    pub driver_ns_per_pkt: f64,
    /// CPU time of the driver thread per packet, polling included.
    pub driver_cpu_ns_per_pkt: f64,
    /// The raw two-thread ring's rate for this size, measured in the same run.
    pub ring_ceiling_mpps: f64,
    /// `mpps` as a percentage of `ring_ceiling_mpps`.
    pub pct_of_ceiling: f64,
    pub notifications_per_pkt: f64,
    pub trapped_mmio_per_pkt: f64,
    /// PCIe bytes per packet by class (both directions, from the first run): payload,
    /// interface metadata (notifications, descriptors, doorbells), protocol overhead (TLP
    /// headers and framing).
    pub bytes: ByteClasses<f64>,
    /// Interface metadata / (payload + interface metadata), the driver's doorbells
    /// (prefetch doorbells included) counted.
    pub metadata_fraction: f64,
    /// Ensō: packets per RX notification in the run the PCIe figures come from. The
    /// metadata share depends on it, and it depends on how fast the emulation runs (a
    /// slower consumer gathers more packets per notification). None for the packetized
    /// NIC, whose descriptors are per packet.
    pub packets_per_notification: Option<f64>,
    /// The packet rate at which the modeled PCIe link (Gen3 x16, 256 B MPS) saturates.
    pub modeled_pcie_mpps: Option<f64>,
    /// Mean per-packet latency from the discrete-event model ([`crate::bench::latency`]) at the
    /// size, the offered load and the measured software cost: arrival at the NIC to the
    /// echo's doorbell at the NIC (ns).
    pub modeled_latency_ns: f64,
    /// Notifications (descriptor write-backs) per packet in the model.
    pub modeled_notifications_per_pkt: f64,
    /// Every packet of every run came back intact.
    pub all_matched: bool,
    /// Median and spread (min, max) over the runs of each wall-clock figure.
    pub spread: EchoSpread,
    /// Instructions per packet (callgrind); None when not counted (see the report's
    /// `instructions_note`).
    pub instructions: Option<Instructions>,
    pub runs: Vec<Run>,
}

/// Ensō against the packetized NIC at one size (both measured in the same invocation).
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub size: usize,
    /// Ensō Mpps / packetized Mpps.
    pub throughput_ratio: f64,
    /// Packetized driver ns/packet / Ensō driver ns/packet: how many times cheaper the
    /// Ensō driver's per-packet work is.
    pub driver_cost_ratio: f64,
    /// Ensō / packetized packet rate at which the modeled PCIe link saturates.
    pub modeled_ratio: f64,
    /// Packetized / Ensō driver instructions per packet while handling batches
    /// (callgrind): the driver cost ratio without the machine's noise.
    pub driver_instructions_ratio: Option<f64>,
    /// `throughput_ratio` and `driver_cost_ratio` are ratios of the medians; this is the
    /// median and spread of the same ratios taken round by round.
    pub spread: RatioSpread,
    pub metadata_fraction_enso: f64,
    pub metadata_fraction_packetized: f64,
    /// The Ensō row's packets per notification (what its metadata share depends on).
    pub packets_per_notification_enso: Option<f64>,
}

/// Per-round ratios of one size: median and spread.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RatioSpread {
    pub throughput_ratio: Spread,
    pub driver_cost_ratio: Spread,
}

/// The whole benchmark report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub benchmark: String,
    pub build: String,
    /// Runs per row (rounds).
    pub runs: usize,
    /// The runs that failed (each also in its row's `runs[]`, with `error`); the
    /// benchmark goes on without them.
    pub failures: Vec<String>,
    pub results: Vec<BenchResult>,
    pub ratios: Vec<Ratio>,
    /// Why instructions were not counted, when they were not (e.g. no valgrind).
    pub instructions_note: Option<String>,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(v: Vec<f64>) -> f64 {
    Spread::of(&v).median
}

/// One NIC's runs at one size.
#[derive(Default)]
struct Acc {
    runs: Vec<Run>,
    /// The first run's PCIe report (per packet; nearly the same in every run) and its
    /// packets per notification.
    pcie: Option<(PcieReport, Option<f64>)>,
    all_matched: bool,
    notif: Vec<f64>,
    trapped: Vec<f64>,
}

struct RunOutcome {
    run: Run,
    matched: bool,
    notifications_per_pkt: f64,
    /// Ensō: packets per RX notification (None for the packetized NIC).
    packets_per_notification: Option<f64>,
    trapped_per_pkt: f64,
    /// Non-zero NIC drop/error counters and the generator's verdict, when not clean.
    trouble: String,
    /// The run's PCIe traffic per packet and the link model's verdict.
    pcie: PcieReport,
}

/// Packets in flight at most for frames of `size` bytes: the same for both NICs, a fraction
/// of what the smaller of their receive buffers holds, so uneven hashing of a few flows
/// and a slow moment never overflow either.
fn window_for(o: &BenchOptions, size: usize) -> usize {
    let enso = (o.pipes as usize * PIPE_FLITS as usize) / size.div_ceil(FLIT) / 8;
    let packetized = o.pipes as usize * (packetized::PortConfig::default().ring_size as usize - 1) / 2;
    enso.min(packetized).clamp(64, 8192)
}

/// What the driver thread did.
struct DriverRun {
    packets: u64,
    busy: Duration,
    cpu_ns: u64,
    /// Doorbell writes into polled pages (the device cannot count them).
    doorbells: u64,
}

/// Runs the echo driver of `nic` natively against the socket until `stop`.
fn spawn_driver(
    nic: NicKind,
    notify: Notify,
    sock: &std::path::Path,
    pipes: u32,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<DriverRun>>> {
    let access = Box::new(VfioUserDevice::connect(sock).context("connect to the NIC")?);
    let thread = std::thread::Builder::new().name("echo-driver".into());
    Ok(match nic {
        NicKind::Enso => {
            let params = EchoParams {
                pipes,
                packets: None,
                idle: None,
                start_timeout: None,
                device: Default::default(),
            };
            let mut echo = Echo::setup(access, &params).context("echo setup")?;
            if notify == Notify::PerPacket {
                echo.device()
                    .set_notification_mode(enso::NotificationMode::PerPacket)
                    .context("set per-packet notifications")?;
            }
            echo.set_prefetch(notify == Notify::Prefetch);
            thread.spawn(move || {
                let t0 = thread_cpu_ns();
                let (s, _) = echo.run(&params, &stop).context("echo loop")?;
                let cpu_ns = thread_cpu_ns() - t0;
                // The pair's rx_head and tx_tail, pipe heads and prefetch doorbells.
                Ok(DriverRun { packets: s.packets, busy: s.busy, cpu_ns, doorbells: s.doorbell_writes })
            })?
        }
        NicKind::Packetized => {
            let cfg = packetized::PortConfig { rx_queues: pipes, tx_queues: pipes, ..Default::default() };
            let mut port = packetized::Port::new(access, cfg).context("packetized port setup")?;
            thread.spawn(move || {
                let t0 = thread_cpu_ns();
                let s = packetized::echo::echo_loop(&mut port, &stop).context("echo loop")?;
                let cpu_ns = thread_cpu_ns() - t0;
                Ok(DriverRun { packets: s.packets, busy: s.busy, cpu_ns, doorbells: s.port.doorbells() })
            })?
        }
    })
}

/// How long a reply may take before the generator writes it off as lost.
const LOSS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an echo run may go without any reply before it is given up.
const STALL: Duration = Duration::from_secs(30);

/// A NIC served on a socket, stopped (and its socket removed) when dropped: on every way
/// out of a run.
struct Serving {
    server: Option<vfio_server::ServerHandle>,
    sock: std::path::PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// One echo run of `packets` packets of `size` bytes on `nic`.
fn echo_run(
    o: &BenchOptions,
    (nic, notify, served): Variant,
    size: usize,
    dir: &std::path::Path,
) -> Result<RunOutcome> {
    let sock = dir.join(format!("{}-{}-{served}-{size}.sock", nic.name(), notify.name()));
    let cfg = GenConfig {
        packets: o.packets,
        size,
        flows: o.flows,
        window: window_for(o, size),
        ..GenConfig::default()
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("invalid echo traffic: {e}"))?;
    // The generator runs on the device side, inside the NIC's polling thread: two busy
    // threads (device, driver), like the two-thread ring it is compared with. A reply is
    // written off as lost only after 10 s: on a loaded machine a thread can be descheduled
    // for over a second (1.7 s seen with six busy loops on two cores), and a reply that
    // slow is late, not lost.
    let (port, gen) = GeneratorPort::new(Generator::new(cfg).with_loss_timeout(LOSS_TIMEOUT));
    let dev = match nic {
        NicKind::Enso => NicUnderTest::enso(
            Box::new(port),
            crate::scenarios::run::EngineModel::Rust,
            enso_nic::EnsoConfig { num_pipes: served, ..enso_nic::EnsoConfig::default() },
        )?,
        NicKind::Packetized => NicUnderTest::new(nic, Box::new(port))?,
    };
    let server = Serving {
        server: Some(vfio_server::Server::bind(&sock, dev.device.clone())?.spawn()),
        sock: sock.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let driver = spawn_driver(nic, notify, &sock, o.pipes, stop.clone())?;
    let (c0, t0) = (dev.counters(), dev.traffic());
    gen.start();
    let started = Instant::now();
    // No fixed deadline (a loaded machine may take minutes for --packets): the run ends
    // when every packet is back, when the driver stops early (an error), or when no reply
    // has come back for STALL.
    let (mut seen, mut last_progress, mut polls) = (0u64, Instant::now(), 0u32);
    while !gen.done() && !driver.is_finished() && last_progress.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(2));
        polls += 1;
        if polls % 50 == 0 {
            let received = gen.report().received;
            if received != seen {
                (seen, last_progress) = (received, Instant::now());
            }
        }
    }
    let rep = gen.report();
    stop.store(true, Ordering::Relaxed);
    let d = match driver.join() {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            return Err(e.context(format!(
                "after {:.1} s, the generator having sent {} and matched {}",
                started.elapsed().as_secs_f64(),
                rep.sent,
                rep.matched
            )))
        }
        Err(_) => bail!("the echo thread panicked"),
    };
    let (c1, t1) = (dev.counters(), dev.traffic());
    let mut traffic = t1.since(&t0);
    // Doorbells are counted on the driver side: the device's polling merges writes.
    traffic.add_doorbells(d.doorbells, 4);
    drop(server);
    let ring = wire::ring::ring_ceiling(o.packets, size);
    let pkts = rep.matched.max(1) as f64;
    let matched = rep.clean() && rep.matched == o.packets;
    let delta = |name: &str| {
        let get = |c: &[(&str, u64)]| c.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
        get(&c1) - get(&c0)
    };
    let trouble = if matched {
        String::new()
    } else {
        let drops: Vec<String> = c1
            .iter()
            .filter(|(n, _)| (n.contains("drop") || n.starts_with("bad")) && delta(n) > 0)
            .map(|(n, _)| format!("{n} {}", delta(n)))
            .collect();
        format!("generator {rep:?}; NIC {}", drops.join(", "))
    };
    let p = traffic.counters;
    let pcie = LinkConfig::default().report(&traffic.summary(), rep.matched, Some(rep.rx_mpps));
    // Ensō: RX notifications; packetized: descriptor write-backs.
    let notifications = delta("rx_notifications") + delta("descriptor_writebacks");
    let packets_per_notification = match nic {
        NicKind::Enso if notifications > 0 => Some(rep.matched as f64 / notifications as f64),
        _ => None,
    };
    Ok(RunOutcome {
        pcie,
        packets_per_notification,
        run: Run {
            mpps: rep.rx_mpps,
            driver_ns_per_pkt: d.busy.as_nanos() as f64 / d.packets.max(1) as f64,
            driver_cpu_ns_per_pkt: d.cpu_ns as f64 / d.packets.max(1) as f64,
            ring_ceiling_mpps: ring,
            ..Run::default()
        },
        matched,
        notifications_per_pkt: notifications as f64 / pkts,
        trapped_per_pkt: (p.mmio_reads + p.mmio_writes) as f64 / pkts,
        trouble,
    })
}

/// Fills `modeled_latency_ns` of one size's rows from the discrete-event model: one
/// offered load for all rows (the option, else the reactive Ensō row's measured rate);
/// the software cost per packet is the reactive Ensō row's measured driver ns/packet for
/// every Ensō mode (so the modes differ only in notifications), the packetized row's own
/// for the packetized NIC.
fn model_latency(o: &BenchOptions, rows: &mut [BenchResult], variants: &[Variant]) {
    let reference = rows
        .iter()
        .zip(variants)
        .find(|(_, v)| (v.0, v.1) == (NicKind::Enso, Notify::Reactive))
        .or_else(|| rows.iter().zip(variants).find(|(_, v)| v.0 == NicKind::Enso))
        .map(|(r, _)| (r.mpps, r.driver_ns_per_pkt));
    let load = o
        .model
        .offered_mpps
        .or(reference.map(|r| r.0))
        .or(rows.first().map(|r| r.mpps))
        .unwrap_or(1.0)
        .max(0.001);
    for (row, &(nic, mode, _)) in rows.iter_mut().zip(variants) {
        let (m, sw_pkt) = match nic {
            NicKind::Enso => (mode.model_mode(), reference.map_or(row.driver_ns_per_pkt, |r| r.1)),
            NicKind::Packetized => (latency::Mode::Packetized, row.driver_ns_per_pkt),
        };
        let out = latency::simulate(&latency::Params {
            size: row.size,
            offered_mpps: load,
            batch: o.model.batch.max(1),
            poll_ns: o.model.poll_ns,
            sw_batch_ns: o.model.sw_batch_ns,
            sw_pkt_ns: sw_pkt,
            ..latency::Params::new(m)
        });
        row.modeled_latency_ns = out.mean_latency_ns;
        row.modeled_notifications_per_pkt = out.notifications_per_pkt;
    }
}

/// One echo run in a guest: `testbed run echo` on `nic` (reactive notifications), its
/// report turned into the benchmark's figures. The driver's CPU time is not measured in a
/// guest (reported as 0); its ns/packet while handling batches comes from the guest app.
fn vm_run(vm: &VmBench, o: &BenchOptions, nic: NicKind, notify: Notify, size: usize) -> Result<RunOutcome> {
    if notify != Notify::Reactive {
        anyhow::bail!("--notify modes other than reactive run with --transport native");
    }
    let p = crate::scenarios::run::EchoOptions {
        packets: o.packets,
        size,
        flows: o.flows,
        pipes: o.pipes,
        window: window_for(o, size),
        garbage_first: false,
        nic,
        model: crate::scenarios::run::EngineModel::Rust,
        setup: Default::default(),
    };
    let r = crate::scenarios::run::echo(vm.env, &vm.options, p)?;
    let d = &r.datapath;
    let pkts = d["packets"].as_f64().unwrap_or(0.0).max(1.0);
    let pcie: PcieReport = serde_json::from_value(d["pcie"].clone()).map_err(|e| {
        anyhow::anyhow!(
            "the echo run reported no PCIe summary ({e}): {}",
            crate::scenarios::run::json_line(&r)
        )
    })?;
    let notifications =
        d["rx_notifications"].as_f64().unwrap_or(0.0) + d["descriptor_writebacks"].as_f64().unwrap_or(0.0);
    let trouble = r
        .assertions
        .iter()
        .filter(|a| !a.pass)
        .map(|a| format!("{}: {}", a.name, a.detail))
        .collect::<Vec<_>>()
        .join("; ");
    Ok(RunOutcome {
        run: Run {
            mpps: r.traffic["mpps"].as_f64().unwrap_or(0.0),
            driver_ns_per_pkt: r.guest["values"]["busy_ns_per_pkt"].as_f64().unwrap_or(0.0),
            driver_cpu_ns_per_pkt: 0.0,
            ring_ceiling_mpps: wire::ring::ring_ceiling(o.packets, size),
            ..Run::default()
        },
        matched: r.pass,
        notifications_per_pkt: notifications / pkts,
        packets_per_notification: d["packets_per_notification"].as_f64(),
        trapped_per_pkt: d["trapped_mmio"].as_f64().unwrap_or(0.0) / pkts,
        trouble,
        pcie,
    })
}

/// What `--transport vm` needs: the provisioned QEMU, image and accelerator.
pub struct VmBench<'a> {
    pub env: &'a crate::scenarios::run::Env,
    pub options: crate::scenarios::run::RunOptions,
}

/// Runs the benchmark, printing progress on stderr: natively, or in guests with `vm`.
pub fn echo(o: &BenchOptions, vm: Option<&VmBench>) -> Result<BenchReport> {
    if o.sizes.iter().any(|s| !(60..=9000).contains(s)) {
        bail!("--sizes must lie in 60..=9000 bytes");
    }
    if o.sizes.is_empty() || o.nics.is_empty() {
        bail!("nothing to measure: give --sizes and --nic");
    }
    if o.packets == 0 || o.runs == 0 || o.pipes == 0 || o.flows == 0 {
        bail!("--packets, --runs, --pipes and --flows must be at least 1");
    }
    let mut served = o.served_pipes.clone();
    if served.is_empty() {
        served.push(testbed_regs::enso::MAX_PIPES);
    }
    served.dedup();
    if served.iter().any(|&p| p < o.pipes || p > testbed_regs::enso::MAX_PIPES) {
        bail!("--served-pipes must lie in --pipes..=8192");
    }
    if vm.is_some() && served != [testbed_regs::enso::MAX_PIPES] {
        bail!("--served-pipes applies to --transport native");
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("[testbed] bench: this is a debug build; use `cargo run --release -p testbed -- bench …` for real figures");
    }
    let dir = crate::scenarios::run::private_dir("bench")?;
    let mut results = vec![];
    let mut ratios = vec![];
    let mut errors: Vec<String> = vec![];
    let mut instructions_note: Option<String> = None;
    // What to measure: every NIC, the Ensō one once per notification mode.
    let mut notify = o.notify.clone();
    if notify.is_empty() {
        notify.push(Notify::Reactive);
    }
    notify.dedup();
    let variants: Vec<Variant> = o
        .nics
        .iter()
        .flat_map(|&nic| match nic {
            NicKind::Enso => {
                served.iter().flat_map(|&p| notify.iter().map(move |&m| (nic, m, p))).collect::<Vec<_>>()
            }
            NicKind::Packetized => vec![(nic, Notify::Reactive, 0)],
        })
        .collect();
    let label = |nic: NicKind, m: Notify| match nic {
        NicKind::Enso => m.name(),
        NicKind::Packetized => DESCRIPTOR,
    };
    for &size in &o.sizes {
        let mut acc: Vec<Acc> =
            variants.iter().map(|_| Acc { all_matched: true, ..Default::default() }).collect();
        for i in 0..o.runs {
            // Alternate the NICs (and modes) within each round, so all see the same machine
            // state, and reverse their order every other round, so none is always first.
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            for (position, &k) in order.iter().enumerate() {
                let (nic, mode, _) = variants[k];
                let out = match vm {
                    None => echo_run(o, variants[k], size, &dir),
                    Some(vm) => vm_run(vm, o, nic, mode, size),
                };
                // A failed run (e.g. a driver that timed out under load) is recorded and
                // the benchmark goes on: the report says what failed.
                let mut out = match out {
                    Ok(out) => out,
                    Err(e) => {
                        let what =
                            format!("{} ({}) {size} B run {}: {e:#}", nic.name(), label(nic, mode), i + 1);
                        eprintln!("[testbed] bench: {what}");
                        errors.push(what);
                        let a = &mut acc[k];
                        a.all_matched = false;
                        a.runs.push(Run {
                            round: i,
                            position,
                            error: Some(format!("{e:#}")),
                            ..Run::default()
                        });
                        continue;
                    }
                };
                out.run.round = i;
                out.run.position = position;
                eprintln!(
                    "[testbed] bench: {} ({}) {size} B run {}/{}: {:.2} Mpps, driver {:.1} ns/pkt, {:.3} notif/pkt, ring ceiling {:.2} Mpps",
                    nic.name(),
                    label(nic, mode),
                    i + 1,
                    o.runs,
                    out.run.mpps,
                    out.run.driver_ns_per_pkt,
                    out.notifications_per_pkt,
                    out.run.ring_ceiling_mpps
                );
                if !out.matched {
                    eprintln!(
                        "[testbed] bench: {} ({}) {size} B run {}: not every packet came back intact: {}",
                        nic.name(),
                        label(nic, mode),
                        i + 1,
                        out.trouble
                    );
                }
                let a = &mut acc[k];
                a.all_matched &= out.matched;
                a.pcie.get_or_insert((out.pcie, out.packets_per_notification));
                a.notif.push(out.notifications_per_pkt);
                a.trapped.push(out.trapped_per_pkt);
                a.runs.push(out.run);
            }
        }
        // The yardstick: instructions per packet, one short callgrind run per row.
        let mut instructions: Vec<Option<Instructions>> = vec![None; variants.len()];
        if vm.is_some() {
            instructions_note
                .get_or_insert_with(|| "instructions are counted with --transport native".into());
        } else if let Some(why) = instructions_off() {
            instructions_note.get_or_insert(why);
        } else {
            for (k, &(nic, mode, served)) in variants.iter().enumerate() {
                match count_instructions(o, (nic, mode, served), size, &dir) {
                    Ok(n) => {
                        eprintln!(
                            "[testbed] bench: {} ({}) {size} B under callgrind: driver {:.1} instructions/pkt, device thread {:.0}",
                            nic.name(),
                            label(nic, mode),
                            n.driver_per_pkt,
                            n.device_per_pkt
                        );
                        instructions[k] = Some(n);
                    }
                    Err(e) => {
                        eprintln!("[testbed] bench: instructions not counted: {e:#}");
                        instructions_note.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }
        let first = results.len();
        for (k, Acc { runs, pcie, all_matched, notif, trapped }) in acc.into_iter().enumerate() {
            let (nic, mode, served) = variants[k];
            // Statistics over the runs that completed.
            let ok: Vec<&Run> = runs.iter().filter(|r| r.error.is_none()).collect();
            let of = |f: &dyn Fn(&Run) -> f64| Spread::of(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
            let spread = EchoSpread {
                mpps: of(&|r| r.mpps),
                gbps: of(&|r| r.mpps * size as f64 * 8.0 / 1000.0),
                driver_ns_per_pkt: of(&|r| r.driver_ns_per_pkt),
                driver_cpu_ns_per_pkt: of(&|r| r.driver_cpu_ns_per_pkt),
                ring_ceiling_mpps: of(&|r| r.ring_ceiling_mpps),
                pct_of_ceiling: of(&|r| {
                    if r.ring_ceiling_mpps > 0.0 {
                        100.0 * r.mpps / r.ring_ceiling_mpps
                    } else {
                        0.0
                    }
                }),
                notifications_per_pkt: Spread::of(&notif),
            };
            let mpps = spread.mpps.median;
            let ceiling = spread.ring_ceiling_mpps.median;
            results.push(BenchResult {
                nic: nic.name().into(),
                notify: label(nic, mode).into(),
                served_pipes: served,
                transport: if vm.is_some() { "vm" } else { "native" }.into(),
                size,
                packets: o.packets,
                mpps,
                gbps: mpps * size as f64 * 8.0 / 1000.0,
                driver_ns_per_pkt: spread.driver_ns_per_pkt.median,
                driver_cpu_ns_per_pkt: spread.driver_cpu_ns_per_pkt.median,
                ring_ceiling_mpps: ceiling,
                pct_of_ceiling: if ceiling > 0.0 { 100.0 * mpps / ceiling } else { 0.0 },
                notifications_per_pkt: median(notif),
                trapped_mmio_per_pkt: median(trapped),
                bytes: pcie.as_ref().map_or(ByteClasses::default(), |p| p.0.bytes),
                metadata_fraction: pcie.as_ref().map_or(0.0, |p| p.0.metadata_fraction),
                packets_per_notification: pcie.as_ref().and_then(|p| p.1),
                modeled_pcie_mpps: pcie.as_ref().and_then(|p| p.0.modeled_pcie_mpps),
                modeled_latency_ns: 0.0,
                modeled_notifications_per_pkt: 0.0,
                all_matched,
                spread,
                instructions: instructions[k].take(),
                runs,
            });
        }
        model_latency(o, &mut results[first..], &variants);
        let by =
            |name: &str, notify: &str| results[first..].iter().find(|r| r.nic == name && r.notify == notify);
        let enso = by("enso", "reactive").or_else(|| results[first..].iter().find(|r| r.nic == "enso"));
        if let (Some(e), Some(p)) = (enso, by("packetized", DESCRIPTOR)) {
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            // Round by round (both rows ran once per round; failed runs are left out).
            let per_round = |x: &BenchResult, f: fn(&Run) -> f64| -> Vec<Option<f64>> {
                (0..o.runs)
                    .map(|i| x.runs.iter().find(|r| r.round == i && r.error.is_none()).map(f))
                    .collect()
            };
            let spread = RatioSpread {
                throughput_ratio: Spread::of_ratios(&per_round(e, |r| r.mpps), &per_round(p, |r| r.mpps)),
                driver_cost_ratio: Spread::of_ratios(
                    &per_round(p, |r| r.driver_ns_per_pkt),
                    &per_round(e, |r| r.driver_ns_per_pkt),
                ),
            };
            let driver_instructions_ratio = match (&e.instructions, &p.instructions) {
                (Some(e), Some(p)) if e.driver_per_pkt > 0.0 => Some(p.driver_per_pkt / e.driver_per_pkt),
                _ => None,
            };
            ratios.push(Ratio {
                size,
                throughput_ratio: div(e.mpps, p.mpps),
                driver_cost_ratio: div(p.driver_ns_per_pkt, e.driver_ns_per_pkt),
                modeled_ratio: div(e.modeled_pcie_mpps.unwrap_or(0.0), p.modeled_pcie_mpps.unwrap_or(0.0)),
                driver_instructions_ratio,
                spread,
                metadata_fraction_enso: e.metadata_fraction,
                metadata_fraction_packetized: p.metadata_fraction,
                packets_per_notification_enso: e.packets_per_notification,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport {
        benchmark: "echo".into(),
        build: build.into(),
        runs: o.runs,
        failures: errors,
        results,
        ratios,
        instructions_note,
    })
}

/// Packets in the callgrind run that counts a row's instructions.
pub const INSTRUCTION_PACKETS: u64 = 20_000;
/// Set in the callgrind run's environment, so that run counts nothing itself.
const UNDER_CALLGRIND: &str = "TESTBED_BENCH_UNDER_CALLGRIND";
/// Counted: the drivers' per-batch work (not inlined, so that it has a name) ...
const DRIVER_FNS: [&str; 2] = ["guest_apps::echo::echo_batch", "packetized::echo::echo_burst"];
/// ... and the NIC models' polling rounds (not inlined either).
const DEVICE_FNS: [&str; 2] =
    ["enso_nic::worker::DeviceState::round", "packet_nic::worker::DeviceState::round"];

/// Why instructions are not to be counted, if they are not: this is the counted run
/// itself, or `TESTBED_BENCH_INSTRUCTIONS=0`.
fn instructions_off() -> Option<String> {
    if std::env::var_os(UNDER_CALLGRIND).is_some() {
        return Some("this is the callgrind run".into());
    }
    (std::env::var("TESTBED_BENCH_INSTRUCTIONS").as_deref() == Ok("0"))
        .then(|| "TESTBED_BENCH_INSTRUCTIONS=0".into())
}

/// Runs this binary's echo of one row again, [`INSTRUCTION_PACKETS`] packets, under
/// `valgrind --tool=callgrind`, collecting only in [`DRIVER_FNS`] and [`DEVICE_FNS`], one
/// profile per thread; instructions per packet from the profiles' totals.
fn count_instructions(
    o: &BenchOptions,
    (nic, notify, served): Variant,
    size: usize,
    dir: &std::path::Path,
) -> Result<Instructions> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("find the testbed binary")?;
    let out = dir.join(format!("callgrind-{}-{}-{served}-{size}", nic.name(), notify.name()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let packets = o.packets.min(INSTRUCTION_PACKETS);
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--separate-threads=yes", "--collect-atstart=no"]);
    for f in DRIVER_FNS.iter().chain(&DEVICE_FNS) {
        cmd.arg(format!("--toggle-collect={f}"));
    }
    cmd.arg(format!("--callgrind-out-file={}", out.join("callgrind.%p").display()))
        .arg(&exe)
        .args(["bench", "echo", "--transport", "native", "--nic", nic.name()])
        .args(if nic == NicKind::Enso {
            vec![
                "--notify".to_string(),
                notify.name().to_string(),
                "--served-pipes".into(),
                served.to_string(),
            ]
        } else {
            vec![]
        })
        .args(["--sizes", &size.to_string(), "--packets", &packets.to_string(), "--runs", "1"])
        .args(["--pipes", &o.pipes.to_string(), "--flows", &o.flows.to_string(), "--json"])
        .env(UNDER_CALLGRIND, "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("stdout"))?)
        .stderr(std::fs::File::create(out.join("stderr"))?);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("valgrind not found: install Debian's valgrind to count instructions")
        }
        Err(e) => return Err(e).context("start valgrind"),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the callgrind run took over 600 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(out.join("stderr")).unwrap_or_default();
    let tail = || stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("stdout"))?)
        .with_context(|| format!("the callgrind run ({status}) printed no report: {}", tail()))?;
    if let Some(e) = report["error"].as_str() {
        bail!("the callgrind run failed ({status}): {e}");
    }
    let row = &report["results"][0];
    if row["all_matched"] != true {
        bail!("the callgrind run lost packets ({status}): {}", tail());
    }
    let counted = row["packets"].as_u64().unwrap_or(packets).max(1);
    let (mut driver, mut device) = (0u64, 0u64);
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("callgrind.")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        // One profile per thread; a thread is known by the counted function it ran.
        if DRIVER_FNS.iter().any(|f| text.contains(f)) {
            driver += total;
        } else if DEVICE_FNS.iter().any(|f| text.contains(f)) {
            device += total;
        }
    }
    if driver == 0 || device == 0 {
        bail!(
            "callgrind counted no instructions in {} or {} (renamed, inlined, or a stripped binary?)",
            DRIVER_FNS.join(", "),
            DEVICE_FNS.join(", ")
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(Instructions {
        tool: "callgrind".into(),
        packets: counted,
        driver_per_pkt: driver as f64 / counted as f64,
        device_per_pkt: device as f64 / counted as f64,
    })
}

/// The throughput and interface-metadata plot of a report (SVG): one line per NIC
/// across frame sizes.
pub fn plot(r: &BenchReport) -> String {
    use testbed_plots::{render_svg, Panel, Series};
    // One line per NIC (and Ensō notification mode other than the default).
    let name = |x: &BenchResult| match x.notify.as_str() {
        "reactive" | DESCRIPTOR => x.nic.clone(),
        m => format!("{} ({m})", x.nic),
    };
    let mut lines: Vec<String> = r.results.iter().map(name).collect();
    lines.sort_unstable();
    lines.dedup();
    let series = |f: &dyn Fn(&BenchResult) -> f64| -> Vec<Series> {
        lines
            .iter()
            .map(|n| Series {
                name: n.clone(),
                points: r.results.iter().filter(|x| name(x) == *n).map(|x| (x.size as f64, f(x))).collect(),
            })
            .collect()
    };
    let panels = [
        Panel {
            title: format!(
                "Echo throughput ({}, median)",
                r.results.first().map_or("native", |x| x.transport.as_str())
            ),
            y_label: "Mpps".into(),
            series: series(&|x| x.mpps),
            y_percent: false,
        },
        Panel {
            title: "Interface metadata in PCIe DMA bytes".into(),
            y_label: "% of payload + metadata".into(),
            series: series(&|x| 100.0 * x.metadata_fraction),
            y_percent: true,
        },
    ];
    render_svg("Ensō vs packetized NIC: echo", "frame size (bytes)", &panels)
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    let transport = match r.results.first().map(|x| x.transport.as_str()) {
        Some("vm") => "guests over VFIO",
        _ => "native vfio-user transport",
    };
    let mut s = format!("echo benchmark ({} build, {transport}, medians of {} runs)\n", r.build, r.runs);
    s += "  nic        notify     served  size      Mpps     Gbps  driver ns/pkt  driver CPU ns/pkt  ring ceiling Mpps  % of ceiling  \
          notif/pkt  trapped MMIO/pkt  pkts/notif  metadata %  modeled PCIe Mpps  modeled latency ns  all matched\n";
    for x in &r.results {
        let ppn = x.packets_per_notification.map_or("-".to_string(), |p| format!("{p:.1}"));
        s += &format!(
            "  {:<10} {:<10} {:>6} {:>5} {:>9.2} {:>8.2} {:>14.1} {:>18.0} {:>18.2} {:>13.0} {:>10.4} {:>17.4} {:>11} {:>11.3} {:>17.1} {:>19.0}  {}\n",
            x.nic,
            x.notify,
            x.served_pipes,
            x.size,
            x.mpps,
            x.gbps,
            x.driver_ns_per_pkt,
            x.driver_cpu_ns_per_pkt,
            x.ring_ceiling_mpps,
            x.pct_of_ceiling,
            x.notifications_per_pkt,
            x.trapped_mmio_per_pkt,
            ppn,
            100.0 * x.metadata_fraction,
            x.modeled_pcie_mpps.unwrap_or(0.0),
            x.modeled_latency_ns,
            x.all_matched
        );
    }
    if !r.ratios.is_empty() {
        s += "  Ensō (reactive, else the first mode) / packetized:\n";
        s += "                     size  throughput  driver cost (packetized/Ensō ns)  modeled PCIe  metadata % Ensō vs packetized\n";
        for x in &r.ratios {
            let ppn = x.packets_per_notification_enso.map_or("-".to_string(), |p| format!("{p:.1}"));
            s += &format!(
                "                     {:>5} {:>10.2}x {:>33.2}x {:>12.2}x {:>13.2} vs {:.1}  (Ensō at {ppn} packets per notification)\n",
                x.size,
                x.throughput_ratio,
                x.driver_cost_ratio,
                x.modeled_ratio,
                100.0 * x.metadata_fraction_enso,
                100.0 * x.metadata_fraction_packetized
            );
        }
    }
    s += &render_spread(r);
    s
}

/// The spread of the wall-clock figures, the instruction counts and the verdict.
fn render_spread(r: &BenchReport) -> String {
    let mut s = format!(
        "  Wall clock, median [min–max] over {} runs (this machine is shared: these swing between invocations):\n",
        r.runs
    );
    s += &format!(
        "  {:<10} {:<10} {:>5}  {:<24} {:<24} {:<24} {:<24} {:<24}\n",
        "nic", "notify", "size", "Mpps", "Gbps", "driver ns/pkt", "driver CPU ns/pkt", "ring ceiling Mpps"
    );
    for x in &r.results {
        let e = &x.spread;
        s += &format!(
            "  {:<10} {:<10} {:>5}  {:<24} {:<24} {:<24} {:<24} {:<24}\n",
            x.nic,
            x.notify,
            x.size,
            e.mpps.show(2),
            e.gbps.show(2),
            e.driver_ns_per_pkt.show(1),
            e.driver_cpu_ns_per_pkt.show(0),
            e.ring_ceiling_mpps.show(1)
        );
    }
    if r.results.iter().any(|x| x.instructions.is_some()) {
        s += "  Instructions per packet (callgrind, one short run per row; repeatable, unlike the wall clock):\n";
        s += &format!(
            "  {:<10} {:<10} {:>5}  {:>14}  {:>14}\n",
            "nic", "notify", "size", "driver", "device thread"
        );
        for x in &r.results {
            let Some(n) = &x.instructions else { continue };
            s += &format!(
                "  {:<10} {:<10} {:>5}  {:>14.1}  {:>14.0}\n",
                x.nic, x.notify, x.size, n.driver_per_pkt, n.device_per_pkt
            );
        }
    }
    if let Some(why) = &r.instructions_note {
        s += &format!("  Instructions not counted: {why}\n");
    }
    if !r.ratios.is_empty() {
        s += "  Ratios round by round, median [min–max]; driver instructions (packetized/Ensō):\n";
        for x in &r.ratios {
            s += &format!(
                "  {:>5} B  throughput {}  driver cost {}  driver instructions {}\n",
                x.size,
                x.spread.throughput_ratio.show(2),
                x.spread.driver_cost_ratio.show(2),
                x.driver_instructions_ratio.map_or("-".into(), |v| format!("{v:.2}x"))
            );
        }
    }
    s += &match r.failure() {
        None => "  pass: every run completed and every packet came back intact\n".to_string(),
        Some(e) => format!("  FAIL: {e}\n"),
    };
    s
}

impl BenchReport {
    /// What went wrong, if anything: failed runs, or rows where not every packet came
    /// back intact. None: every run passed.
    pub fn failure(&self) -> Option<String> {
        let lossy: Vec<String> = self
            .results
            .iter()
            .filter(|x| !x.all_matched && x.runs.iter().all(|r| r.error.is_none()))
            .map(|x| format!("{} ({}) {} B: not every packet came back intact", x.nic, x.notify, x.size))
            .collect();
        let all: Vec<String> = self.failures.iter().cloned().chain(lossy).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}
