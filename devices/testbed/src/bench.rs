//! `testbed bench echo`: the Ensō driver's echo, natively over the vfio-user transport,
//! against the NIC model and the wire generator — plus, in the same run, the ceiling of a
//! raw two-thread shared-memory ring moving the same packets. Figures are medians of
//! several runs and are reported as ratios to that ceiling, since this machine is shared
//! and noisy: absolute numbers from different runs do not compare.

use anyhow::{bail, Context, Result};
use device_access::vfio_user::VfioUserDevice;
use enso_nic::{EnsoConfig, EnsoNic};
use guest_apps::echo::{Echo, EchoParams};
use pcie_model::{ByteClasses, LinkConfig, PciDevice, PcieReport};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::enso::{ext::counter, FLIT, PIPE_FLITS};
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
}

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
    /// Every packet of every run came back intact.
    pub all_matched: bool,
    pub runs: Vec<Run>,
}

/// The whole benchmark report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub benchmark: String,
    pub build: String,
    pub results: Vec<BenchResult>,
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

/// One echo run of `packets` packets of `size` bytes.
fn echo_run(o: &BenchOptions, size: usize, dir: &std::path::Path) -> Result<RunOutcome> {
    let sock = dir.join(format!("enso-{size}.sock"));
    // In flight at most an eighth of what the pipes hold, so uneven hashing of a few
    // flows and a slow moment never fill one pipe.
    let flits = size.div_ceil(FLIT);
    let window = ((o.pipes as usize * PIPE_FLITS as usize) / flits / 8).clamp(64, 8192);
    let cfg = GenConfig { packets: o.packets, size, flows: o.flows, window, ..GenConfig::default() };
    // The generator runs on the device side, inside the NIC's polling thread: two busy
    // threads (device, driver), like the two-thread ring it is compared with.
    let (port, gen) = GeneratorPort::new(Generator::new(cfg));
    let nic = Arc::new(Mutex::new(EnsoNic::new(EnsoConfig::default(), Box::new(port))?));
    let server = vfio_server::Server::bind(&sock, nic.clone())?.spawn();
    let access = Box::new(VfioUserDevice::connect(&sock).context("connect to the NIC")?);
    let params = EchoParams { pipes: o.pipes, packets: None, idle: None, start_timeout: None };
    let mut echo = Echo::setup(access, &params).context("echo setup")?;
    let snapshot = |n: &Arc<Mutex<EnsoNic>>| {
        let d = n.lock().unwrap_or_else(|e| e.into_inner());
        (d.counters(), PciDevice::counters(&*d).traffic_snapshot())
    };
    let (c0, t0) = snapshot(&nic);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let driver = std::thread::Builder::new().name("echo-driver".into()).spawn(move || {
        let t0 = thread_cpu_ns();
        let r = echo.run(&params, &s2);
        let cpu = thread_cpu_ns() - t0;
        (r, cpu, echo.device().stats())
    })?;
    gen.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gen.done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rep = gen.report();
    stop.store(true, Ordering::Relaxed);
    let (r, cpu_ns, ds) = driver.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    let (stats, _) = r.context("echo loop")?;
    // Doorbells are counted on the driver side (the device's polling merges writes): NB
    // rx_head and tx_tail writes, and the pipe head written on each send completion.
    PciDevice::counters(&*nic.lock().unwrap_or_else(|e| e.into_inner()))
        .doorbell_writes(ds.rx_head_writes + ds.tx_tail_writes + ds.rx_frees_on_completion);
    let (c1, t1) = snapshot(&nic);
    let traffic = t1.since(&t0);
    let p0 = t0.counters;
    let p1 = t1.counters;
    server.stop();
    let _ = std::fs::remove_file(&sock);
    let ring = wire::ring::ring_ceiling(o.packets, size);
    let pkts = rep.matched.max(1) as f64;
    let matched = rep.clean() && rep.matched == o.packets;
    let trouble = if matched {
        String::new()
    } else {
        let drops: Vec<String> = counter::NAMES
            .iter()
            .enumerate()
            .filter(|(i, n)| (n.contains("drop") || n.starts_with("bad")) && c1[*i] > c0[*i])
            .map(|(i, n)| format!("{n} {}", c1[i] - c0[i]))
            .collect();
        format!("generator {rep:?}; NIC {}", drops.join(", "))
    };
    let d = p1.since(&p0);
    let pcie = LinkConfig::default().report(&traffic.summary(), rep.matched, Some(rep.rx_mpps));
    Ok(RunOutcome {
        pcie,
        run: Run {
            mpps: rep.rx_mpps,
            driver_ns_per_pkt: stats.busy.as_nanos() as f64 / stats.packets.max(1) as f64,
            driver_cpu_ns_per_pkt: cpu_ns as f64 / stats.packets.max(1) as f64,
            ring_ceiling_mpps: ring,
        },
        matched,
        notifications_per_pkt: (c1[counter::RX_NOTIFICATIONS as usize]
            - c0[counter::RX_NOTIFICATIONS as usize]) as f64
            / pkts,
        trapped_per_pkt: (d.mmio_reads + d.mmio_writes) as f64 / pkts,
        trouble,
    })
}

/// Runs the benchmark, printing progress on stderr.
pub fn echo(o: &BenchOptions) -> Result<BenchReport> {
    if o.sizes.iter().any(|s| !(60..=9000).contains(s)) {
        bail!("--sizes must lie in 60..=9000 bytes");
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    if cfg!(debug_assertions) {
        eprintln!("[testbed] bench: this is a debug build; use `cargo run --release -p testbed -- bench …` for real figures");
    }
    let dir = crate::run::private_dir("bench")?;
    let mut results = vec![];
    for &size in &o.sizes {
        let mut runs = vec![];
        let mut pcie = None;
        let mut all_matched = true;
        let (mut notif, mut trapped) = (vec![], vec![]);
        for i in 0..o.runs {
            let out = echo_run(o, size, &dir)?;
            eprintln!(
                "[testbed] bench: {size} B run {}/{}: {:.2} Mpps, driver {:.0} ns/pkt, ring ceiling {:.2} Mpps",
                i + 1,
                o.runs,
                out.run.mpps,
                out.run.driver_ns_per_pkt,
                out.run.ring_ceiling_mpps
            );
            if !out.matched {
                eprintln!(
                    "[testbed] bench: {size} B run {}: not every packet came back intact: {}",
                    i + 1,
                    out.trouble
                );
            }
            all_matched &= out.matched;
            pcie.get_or_insert(out.pcie);
            notif.push(out.notifications_per_pkt);
            trapped.push(out.trapped_per_pkt);
            runs.push(out.run);
        }
        let mpps = median(runs.iter().map(|r| r.mpps).collect());
        let ceiling = median(runs.iter().map(|r| r.ring_ceiling_mpps).collect());
        results.push(BenchResult {
            nic: "enso".into(),
            transport: "native".into(),
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
            all_matched,
            runs,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport { benchmark: "echo".into(), build: build.into(), results })
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    let mut s = format!("echo benchmark ({} build, native vfio-user transport, medians)\n", r.build);
    s += "  nic   size      Mpps     Gbps  driver ns/pkt  driver CPU ns/pkt  ring ceiling Mpps  % of ceiling  \
          notif/pkt  trapped MMIO/pkt  metadata %  modeled PCIe Mpps  all matched\n";
    for x in &r.results {
        s += &format!(
            "  {:<5} {:>5} {:>9.2} {:>8.2} {:>14.1} {:>18.0} {:>18.2} {:>13.0} {:>10.4} {:>17.4} {:>11.3} {:>17.1}  {}\n",
            x.nic,
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
            x.all_matched
        );
    }
    s
}
