//! `testbed bench echo`: the Ensō driver's echo, natively over the vfio-user transport,
//! against the NIC model and the wire generator — plus, in the same run, the ceiling of a
//! raw two-thread shared-memory ring moving the same packets. Figures are medians of
//! several runs and are reported as ratios to that ceiling, since this machine is shared
//! and noisy: absolute numbers from different runs do not compare.
//!
//! `--notify reactive,per-packet,prefetch` runs the Ensō NIC once per notification mode
//! (one result row each); every row also carries `modeled_latency_ns`, the per-packet
//! latency the discrete-event model of [`crate::latency`] gives for its mode.

use crate::latency;
use crate::run::{NicKind, NicUnderTest};
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
    /// Parameters of the latency model ([`crate::latency`]).
    pub model: ModelOptions,
}

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
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub mpps: f64,
    pub driver_ns_per_pkt: f64,
    pub driver_cpu_ns_per_pkt: f64,
    pub ring_ceiling_mpps: f64,
}

/// The result for one NIC and frame size (medians over the runs).
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub nic: String,
    /// Ensō: "reactive", "per-packet" or "prefetch"; packetized: "descriptor" (one
    /// write-back per packet).
    pub notify: String,
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
    /// Interface metadata / (payload + interface metadata).
    pub metadata_fraction: f64,
    /// The packet rate at which the modeled PCIe link (Gen3 x16, 256 B MPS) saturates.
    pub modeled_pcie_mpps: Option<f64>,
    /// Mean per-packet latency from the discrete-event model ([`crate::latency`]) at the
    /// size, the offered load and the measured software cost: arrival at the NIC to the
    /// echo's doorbell at the NIC (ns).
    pub modeled_latency_ns: f64,
    /// Notifications (descriptor write-backs) per packet in the model.
    pub modeled_notifications_per_pkt: f64,
    /// Every packet of every run came back intact.
    pub all_matched: bool,
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
    pub metadata_fraction_enso: f64,
    pub metadata_fraction_packetized: f64,
}

/// The whole benchmark report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub benchmark: String,
    pub build: String,
    pub results: Vec<BenchResult>,
    pub ratios: Vec<Ratio>,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// One NIC's runs at one size.
#[derive(Default)]
struct Acc {
    runs: Vec<Run>,
    /// The first run's PCIe report (per packet; nearly the same in every run).
    pcie: Option<PcieReport>,
    all_matched: bool,
    notif: Vec<f64>,
    trapped: Vec<f64>,
}

struct RunOutcome {
    run: Run,
    matched: bool,
    notifications_per_pkt: f64,
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
            let params = EchoParams { pipes, packets: None, idle: None, start_timeout: None };
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
                let ds = echo.device().stats();
                // NB rx_head and tx_tail writes, and the pipe head on each send completion.
                let doorbells = ds.rx_head_writes + ds.tx_tail_writes + ds.rx_frees_on_completion;
                Ok(DriverRun { packets: s.packets, busy: s.busy, cpu_ns, doorbells })
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

/// One echo run of `packets` packets of `size` bytes on `nic`.
fn echo_run(
    o: &BenchOptions,
    nic: NicKind,
    notify: Notify,
    size: usize,
    dir: &std::path::Path,
) -> Result<RunOutcome> {
    let sock = dir.join(format!("{}-{}-{size}.sock", nic.name(), notify.name()));
    let cfg = GenConfig {
        packets: o.packets,
        size,
        flows: o.flows,
        window: window_for(o, size),
        ..GenConfig::default()
    };
    // The generator runs on the device side, inside the NIC's polling thread: two busy
    // threads (device, driver), like the two-thread ring it is compared with.
    let (port, gen) = GeneratorPort::new(Generator::new(cfg));
    let dev = NicUnderTest::new(nic, Box::new(port))?;
    let server = vfio_server::Server::bind(&sock, dev.device.clone())?.spawn();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = spawn_driver(nic, notify, &sock, o.pipes, stop.clone())?;
    let (c0, t0) = (dev.counters(), dev.traffic());
    gen.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gen.done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rep = gen.report();
    stop.store(true, Ordering::Relaxed);
    let d = driver.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    // Doorbells are counted on the driver side: the device's polling merges writes.
    dev.device.lock().unwrap_or_else(|e| e.into_inner()).counters().doorbell_writes(d.doorbells);
    let (c1, t1) = (dev.counters(), dev.traffic());
    let traffic = t1.since(&t0);
    server.stop();
    let _ = std::fs::remove_file(&sock);
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
    Ok(RunOutcome {
        pcie,
        run: Run {
            mpps: rep.rx_mpps,
            driver_ns_per_pkt: d.busy.as_nanos() as f64 / d.packets.max(1) as f64,
            driver_cpu_ns_per_pkt: d.cpu_ns as f64 / d.packets.max(1) as f64,
            ring_ceiling_mpps: ring,
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
fn model_latency(o: &BenchOptions, rows: &mut [BenchResult], variants: &[(NicKind, Notify)]) {
    let reference = rows
        .iter()
        .zip(variants)
        .find(|(_, v)| **v == (NicKind::Enso, Notify::Reactive))
        .or_else(|| rows.iter().zip(variants).find(|(_, v)| v.0 == NicKind::Enso))
        .map(|(r, _)| (r.mpps, r.driver_ns_per_pkt));
    let load = o
        .model
        .offered_mpps
        .or(reference.map(|r| r.0))
        .or(rows.first().map(|r| r.mpps))
        .unwrap_or(1.0)
        .max(0.001);
    for (row, &(nic, mode)) in rows.iter_mut().zip(variants) {
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
    let p = crate::run::EchoOptions {
        packets: o.packets,
        size,
        flows: o.flows,
        pipes: o.pipes,
        window: window_for(o, size),
        garbage_first: false,
        nic,
        model: crate::run::EngineModel::Rust,
    };
    let r = crate::run::echo(vm.env, &vm.options, p)?;
    let d = &r.datapath;
    let pkts = d["packets"].as_f64().unwrap_or(0.0).max(1.0);
    let pcie: PcieReport = serde_json::from_value(d["pcie"].clone()).map_err(|e| {
        anyhow::anyhow!("the echo run reported no PCIe summary ({e}): {}", crate::run::json_line(&r))
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
        },
        matched: r.pass,
        notifications_per_pkt: notifications / pkts,
        trapped_per_pkt: d["trapped_mmio"].as_f64().unwrap_or(0.0) / pkts,
        trouble,
        pcie,
    })
}

/// What `--transport vm` needs: the provisioned QEMU, image and accelerator.
pub struct VmBench<'a> {
    pub env: &'a crate::run::Env,
    pub options: crate::run::RunOptions,
}

/// Runs the benchmark, printing progress on stderr: natively, or in guests with `vm`.
pub fn echo(o: &BenchOptions, vm: Option<&VmBench>) -> Result<BenchReport> {
    if o.sizes.iter().any(|s| !(60..=9000).contains(s)) {
        bail!("--sizes must lie in 60..=9000 bytes");
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("[testbed] bench: this is a debug build; use `cargo run --release -p testbed -- bench …` for real figures");
    }
    let dir = crate::run::private_dir("bench")?;
    let mut results = vec![];
    let mut ratios = vec![];
    // What to measure: every NIC, the Ensō one once per notification mode.
    let mut notify = o.notify.clone();
    if notify.is_empty() {
        notify.push(Notify::Reactive);
    }
    notify.dedup();
    let variants: Vec<(NicKind, Notify)> = o
        .nics
        .iter()
        .flat_map(|&nic| match nic {
            NicKind::Enso => notify.iter().map(|&m| (nic, m)).collect::<Vec<_>>(),
            NicKind::Packetized => vec![(nic, Notify::Reactive)],
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
            // Alternate the NICs (and modes) within each round, so all see the same machine state.
            for (k, &(nic, mode)) in variants.iter().enumerate() {
                let out = match vm {
                    None => echo_run(o, nic, mode, size, &dir)?,
                    Some(vm) => vm_run(vm, o, nic, mode, size)?,
                };
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
                a.pcie.get_or_insert(out.pcie);
                a.notif.push(out.notifications_per_pkt);
                a.trapped.push(out.trapped_per_pkt);
                a.runs.push(out.run);
            }
        }
        let first = results.len();
        for (k, Acc { runs, pcie, all_matched, notif, trapped }) in acc.into_iter().enumerate() {
            let (nic, mode) = variants[k];
            let mpps = median(runs.iter().map(|r| r.mpps).collect());
            let ceiling = median(runs.iter().map(|r| r.ring_ceiling_mpps).collect());
            results.push(BenchResult {
                nic: nic.name().into(),
                notify: label(nic, mode).into(),
                transport: if vm.is_some() { "vm" } else { "native" }.into(),
                size,
                packets: o.packets,
                mpps,
                gbps: mpps * size as f64 * 8.0 / 1000.0,
                driver_ns_per_pkt: median(runs.iter().map(|r| r.driver_ns_per_pkt).collect()),
                driver_cpu_ns_per_pkt: median(runs.iter().map(|r| r.driver_cpu_ns_per_pkt).collect()),
                ring_ceiling_mpps: ceiling,
                pct_of_ceiling: if ceiling > 0.0 { 100.0 * mpps / ceiling } else { 0.0 },
                notifications_per_pkt: median(notif),
                trapped_mmio_per_pkt: median(trapped),
                bytes: pcie.as_ref().map_or(ByteClasses::default(), |p| p.bytes),
                metadata_fraction: pcie.as_ref().map_or(0.0, |p| p.metadata_fraction),
                modeled_pcie_mpps: pcie.as_ref().and_then(|p| p.modeled_pcie_mpps),
                modeled_latency_ns: 0.0,
                modeled_notifications_per_pkt: 0.0,
                all_matched,
                runs,
            });
        }
        model_latency(o, &mut results[first..], &variants);
        let by =
            |name: &str, notify: &str| results[first..].iter().find(|r| r.nic == name && r.notify == notify);
        let enso = by("enso", "reactive").or_else(|| results[first..].iter().find(|r| r.nic == "enso"));
        if let (Some(e), Some(p)) = (enso, by("packetized", DESCRIPTOR)) {
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            ratios.push(Ratio {
                size,
                throughput_ratio: div(e.mpps, p.mpps),
                driver_cost_ratio: div(p.driver_ns_per_pkt, e.driver_ns_per_pkt),
                modeled_ratio: div(e.modeled_pcie_mpps.unwrap_or(0.0), p.modeled_pcie_mpps.unwrap_or(0.0)),
                metadata_fraction_enso: e.metadata_fraction,
                metadata_fraction_packetized: p.metadata_fraction,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport { benchmark: "echo".into(), build: build.into(), results, ratios })
}

/// The throughput and interface-metadata plot of a report (SVG): one line per NIC
/// across frame sizes.
pub fn plot(r: &BenchReport) -> String {
    use crate::plot::{render_svg, Panel, Series};
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
            title: "Echo throughput (native, median)".into(),
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
    let mut s = format!("echo benchmark ({} build, native vfio-user transport, medians)\n", r.build);
    s += "  nic        notify      size      Mpps     Gbps  driver ns/pkt  driver CPU ns/pkt  ring ceiling Mpps  % of ceiling  \
          notif/pkt  trapped MMIO/pkt  metadata %  modeled PCIe Mpps  modeled latency ns  all matched\n";
    for x in &r.results {
        s += &format!(
            "  {:<10} {:<10} {:>5} {:>9.2} {:>8.2} {:>14.1} {:>18.0} {:>18.2} {:>13.0} {:>10.4} {:>17.4} {:>11.3} {:>17.1} {:>19.0}  {}\n",
            x.nic,
            x.notify,
            x.size,
            x.mpps,
            x.gbps,
            x.driver_ns_per_pkt,
            x.driver_cpu_ns_per_pkt,
            x.ring_ceiling_mpps,
            x.pct_of_ceiling,
            x.notifications_per_pkt,
            x.trapped_mmio_per_pkt,
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
            s += &format!(
                "                     {:>5} {:>10.2}x {:>33.2}x {:>12.2}x {:>13.2} vs {:.1}\n",
                x.size,
                x.throughput_ratio,
                x.driver_cost_ratio,
                x.modeled_ratio,
                100.0 * x.metadata_fraction_enso,
                100.0 * x.metadata_fraction_packetized
            );
        }
    }
    s
}
