//! `testbed bench echo`: the Ensō driver's echo, natively over the vfio-user transport,
//! against the NIC model and the wire generator — plus, in the same run, the ceiling of a
//! raw two-thread shared-memory ring moving the same packets. Figures are medians of
//! several runs and are reported as ratios to that ceiling, since this machine is shared
//! and noisy: absolute numbers from different runs do not compare.

use anyhow::{bail, Context, Result};
use device_access::vfio_user::VfioUserDevice;
use enso_nic::{EnsoConfig, EnsoNic};
use guest_apps::echo::{Echo, EchoParams};
use pcie_model::PciDevice;
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
        (d.counters(), PciDevice::counters(&*d).snapshot())
    };
    let (c0, p0) = snapshot(&nic);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let driver = std::thread::Builder::new().name("echo-driver".into()).spawn(move || {
        let t0 = thread_cpu_ns();
        let r = echo.run(&params, &s2);
        (r, thread_cpu_ns() - t0)
    })?;
    gen.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gen.done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rep = gen.report();
    stop.store(true, Ordering::Relaxed);
    let (r, cpu_ns) = driver.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    let (stats, _) = r.context("echo loop")?;
    let (c1, p1) = snapshot(&nic);
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
    Ok(RunOutcome {
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
          notif/pkt  trapped MMIO/pkt  all matched\n";
    for x in &r.results {
        s += &format!(
            "  {:<5} {:>5} {:>9.2} {:>8.2} {:>14.1} {:>18.0} {:>18.2} {:>13.0} {:>10.4} {:>17.4}  {}\n",
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
            x.all_matched
        );
    }
    s
}
