//! `testbed soak --minutes M --seed S`: long-lived device servers (Ensō NIC, packetized
//! NIC, smoke, crypto, ML) taking turns of well-behaved traffic, the accelerator chain,
//! garbage and hostile clients, and clients killed mid-run at seeded random times. After
//! every turn each device must still answer a well-behaved client; the traffic must add up
//! (sent = matched + the NIC's drop counters); and after warm-up the process may grow by
//! at most 5 % of resident memory and by no file descriptor.
//!
//! Clients are driven natively (the in-process vfio-user client, as `--transport native`):
//! VM guests under TCG on this 2-core machine take minutes each. The chain turn builds its
//! own rig (switch, NIC and accelerators behind it) per turn; every other turn goes to the
//! long-lived servers. A killed client is this program run again as a child
//! (`--client SOCKET`, hidden), SIGKILLed while its echo runs.

use crate::rig::DeviceKind;
use crate::scenarios::chain::{self, ChainOptions, Mode, Transport};
use crate::scenarios::hostile::{self, Rng};
use anyhow::{bail, Context, Result};
use device_access::vfio_user::VfioUserDevice;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wire::generator::{GenConfig, GenReport, Generator};

/// The `soak` subcommand's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long to soak, in minutes (fractions allowed).
    #[arg(long, default_value_t = 3.0)]
    pub minutes: f64,
    /// Seed of the turn order, the garbage and the kill times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as the client the soak kills (an echo on the Ensō NIC at SOCKET).
    #[arg(long, hide = true)]
    pub client: Option<PathBuf>,
}

/// Lets every server finish with its last client (each notices a hang-up within its
/// 100 ms poll), so an fd count is not taken mid-teardown.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

/// What each open fd of this process is.
fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Resident memory (KiB) and open fds of this process.
fn rss_and_fds() -> (u64, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

struct Nic<T> {
    dev: Arc<Mutex<T>>,
    gen_end: wire::CableEnd,
    sock: PathBuf,
    server: vfio_server::ServerHandle,
}

struct Servers {
    enso: Nic<enso_nic::EnsoNic>,
    packetized: Nic<packet_nic::PacketNic>,
    /// smoke, crypto, ml.
    others: Vec<(DeviceKind, PathBuf, vfio_server::ServerHandle)>,
}

impl Servers {
    fn start(dir: &Path) -> Result<Servers> {
        let (nic_end, gen_end) = wire::cable(1024);
        let enso = Arc::new(Mutex::new(enso_nic::EnsoNic::new(Default::default(), Box::new(nic_end))?));
        let sock = dir.join("enso.sock");
        let server = vfio_server::Server::bind(&sock, enso.clone())?.spawn();
        let enso = Nic { dev: enso, gen_end, sock, server };
        let (nic_end, gen_end) = wire::cable(1024);
        let cfg = packet_nic::PacketNicConfig::default();
        let pk = Arc::new(Mutex::new(packet_nic::PacketNic::new(cfg, Box::new(nic_end))?));
        let sock = dir.join("packetized.sock");
        let server = vfio_server::Server::bind(&sock, pk.clone())?.spawn();
        let packetized = Nic { dev: pk, gen_end, sock, server };
        let mut others = vec![];
        for kind in [DeviceKind::Smoke, DeviceKind::Crypto, DeviceKind::Ml] {
            let dev: Arc<Mutex<dyn pcie_model::PciDevice>> = match kind {
                DeviceKind::Smoke => Arc::new(Mutex::new(testdev::SmokeDevice::new()?)),
                DeviceKind::Crypto => Arc::new(Mutex::new(accel::Accelerator::crypto()?)),
                _ => Arc::new(Mutex::new(accel::Accelerator::ml()?)),
            };
            let sock = dir.join(format!("{}.sock", kind.name()));
            let server = vfio_server::Server::bind(&sock, dev)?.spawn();
            others.push((kind, sock, server));
        }
        Ok(Servers { enso, packetized, others })
    }

    fn sockets(&self) -> Vec<(DeviceKind, PathBuf)> {
        let mut v = vec![
            (DeviceKind::Enso, self.enso.sock.clone()),
            (DeviceKind::Packetized, self.packetized.sock.clone()),
        ];
        v.extend(self.others.iter().map(|(k, p, _)| (*k, p.clone())));
        v
    }

    /// Every device answers a well-behaved client.
    fn all_answer(&self) -> Result<()> {
        for (kind, sock) in self.sockets() {
            hostile::answers(&sock, kind).with_context(|| format!("{} after the turn", kind.name()))?;
        }
        Ok(())
    }

    fn stats(&self) -> Value {
        let mut v = serde_json::Map::new();
        v.insert("enso".into(), json!(self.enso.server.stats()));
        v.insert("packetized".into(), json!(self.packetized.server.stats()));
        for (k, _, s) in &self.others {
            v.insert(k.name().into(), json!(s.stats()));
        }
        Value::Object(v)
    }
}

/// Sum of the counters whose name says they count drops.
fn drops(names: &[&str], values: &[u64]) -> u64 {
    names.iter().zip(values).filter(|(n, _)| n.contains("drop")).map(|(_, v)| v).sum()
}

fn generate(end: &mut wire::CableEnd, packets: u64, size: usize, secs: u64) -> GenReport {
    let cfg = GenConfig { packets, size, flows: 16, window: 64, ..GenConfig::default() };
    Generator::new(cfg).run(end, Instant::now() + Duration::from_secs(secs))
}

/// Drains whatever a previous turn left on a wire.
fn drain(end: &mut wire::CableEnd) {
    let mut sink = vec![];
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(200) {
        if wire::EthPort::recv(end, &mut sink, 4096) == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        sink.clear();
    }
}

/// What the turns added up to.
#[derive(Default, serde::Serialize)]
struct Totals {
    turns: u64,
    echo_turns: u64,
    chain_turns: u64,
    garbage_turns: u64,
    kill_turns: u64,
    sent: u64,
    matched: u64,
    nic_drops: u64,
    chain_items: u64,
    garbage_messages: u64,
    garbage_refused: u64,
    /// The slowest garbage step (one request and its reply), per device, in microseconds.
    garbage_max_step_us: std::collections::BTreeMap<String, u64>,
    failures: Vec<String>,
}

fn echo_turn(s: &mut Servers, rng: &mut Rng, t: &mut Totals) -> Result<()> {
    let packets = 5_000 + rng.below(20_000);
    let size = [64usize, 128, 512, 1500][rng.below(4) as usize];
    let packetized = rng.below(3) == 0;
    let (rep, drops_delta) = if packetized {
        let nic = &mut s.packetized;
        drain(&mut nic.gen_end);
        let access = Box::new(VfioUserDevice::connect(&nic.sock)?);
        // After the connect: a new client finds the device reset, its counters cleared.
        let before = nic.dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
        let cfg = packetized::PortConfig { rx_queues: 2, tx_queues: 2, ..Default::default() };
        let mut port =
            packetized::Port::new(access, cfg).map_err(|e| anyhow::anyhow!("packetized port: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let th = std::thread::spawn(move || {
            let limits = packetized::echo::EchoLimits { packets: None, idle: None, start_timeout: None };
            packetized::echo::echo_until(&mut port, &s2, limits).map(|_| ())
        });
        let rep = generate(&mut nic.gen_end, packets, size, 60);
        stop.store(true, Ordering::Relaxed);
        th.join()
            .map_err(|_| anyhow::anyhow!("packetized echo panicked"))?
            .map_err(|e| anyhow::anyhow!("packetized echo: {e}"))?;
        let after = nic.dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
        let names = &testbed_regs::packetized::reg::counter::NAMES;
        (rep, drops(names, &after).saturating_sub(drops(names, &before)))
    } else {
        let nic = &mut s.enso;
        drain(&mut nic.gen_end);
        let access = Box::new(VfioUserDevice::connect(&nic.sock)?);
        let before = nic.dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
        let params = guest_apps::echo::EchoParams::until_stopped(1 + rng.below(4) as u32);
        let mut echo =
            guest_apps::echo::Echo::setup(access, &params).map_err(|e| anyhow::anyhow!("echo setup: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let th = std::thread::spawn(move || echo.run(&params, &s2).map(|_| ()));
        let rep = generate(&mut nic.gen_end, packets, size, 60);
        stop.store(true, Ordering::Relaxed);
        th.join().map_err(|_| anyhow::anyhow!("echo panicked"))?.map_err(|e| anyhow::anyhow!("echo: {e}"))?;
        let after = nic.dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
        let names = &testbed_regs::enso::ext::counter::NAMES;
        (rep, drops(names, &after).saturating_sub(drops(names, &before)))
    };
    t.echo_turns += 1;
    t.sent += rep.sent;
    t.matched += rep.matched;
    t.nic_drops += drops_delta;
    if rep.sent != rep.matched + drops_delta || rep.corrupted + rep.duplicated + rep.reordered > 0 {
        bail!(
            "{} echo: sent {} != matched {} + NIC drops {drops_delta} ({rep:?})",
            if packetized { "packetized" } else { "enso" },
            rep.sent,
            rep.matched
        );
    }
    Ok(())
}

fn chain_turn(dir: &Path, rng: &mut Rng, t: &mut Totals) -> Result<()> {
    let items = 20 + rng.below(40);
    let o = ChainOptions { items, transport: Transport::Native, ..ChainOptions::default() };
    let mode = if rng.below(2) == 0 { Mode::Cpu } else { Mode::Nagare };
    let sub = dir.join(format!("chain-{}", t.turns));
    std::fs::create_dir_all(&sub)?;
    let r = chain::run_native(&o, mode, &sub)?;
    let src = &r.source.tally;
    r.rig.stop();
    let _ = std::fs::remove_dir_all(&sub);
    t.chain_turns += 1;
    t.chain_items += src.matched;
    if src.matched != items || src.mismatched != 0 {
        bail!("chain ({}): {} of {items} matched, {} mismatched", mode.name(), src.matched, src.mismatched);
    }
    Ok(())
}

fn garbage_turn(s: &mut Servers, rng: &mut Rng, t: &mut Totals, first: bool) -> Result<()> {
    t.garbage_turns += 1;
    for (kind, sock) in s.sockets() {
        let n = 200 + rng.below(400);
        let g = hostile::garbage(&sock, rng, n).with_context(|| format!("garbage on {}", kind.name()))?;
        t.garbage_messages += g.messages;
        t.garbage_refused += g.refused;
        let m = t.garbage_max_step_us.entry(kind.name().to_string()).or_default();
        *m = (*m).max(g.max_step_us);
        hostile::shrink_bar_fds(&sock).with_context(|| format!("shrink BAR fds of {}", kind.name()))?;
        hostile::before_version(&sock).with_context(|| format!("before VERSION on {}", kind.name()))?;
        match kind {
            DeviceKind::Smoke => hostile::shrink_dma(&sock)?,
            DeviceKind::Crypto | DeviceKind::Ml if rng.below(3) == 0 => hostile::ring_reset(&sock)?,
            _ => {}
        }
    }
    if first || rng.below(4) == 0 {
        // The Ensō garbage driver (every register page, bad TX notifications).
        let dev = Box::new(VfioUserDevice::connect(&s.enso.sock)?);
        let _ = guest_apps::garbage::run(dev, rng.next_u64());
    }
    if first {
        let waited = hostile::stall(&s.smoke_sock())?;
        if waited > Duration::from_secs(8) {
            bail!("a stalled client held the smoke server for {waited:?}");
        }
    }
    Ok(())
}

impl Servers {
    fn smoke_sock(&self) -> PathBuf {
        self.others[0].1.clone()
    }
}

/// Runs this program again as an echo client on the Ensō NIC, with traffic flowing, and
/// SIGKILLs it after a seeded random time.
fn kill_turn(s: &mut Servers, rng: &mut Rng, t: &mut Totals) -> Result<()> {
    t.kill_turns += 1;
    // /proc/self/exe: this very binary, even if a rebuild replaced the file meanwhile.
    let exe = PathBuf::from("/proc/self/exe");
    drain(&mut s.enso.gen_end);
    let mut child = std::process::Command::new(exe)
        .args(["soak", "--client"])
        .arg(&s.enso.sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let after = Duration::from_millis(100 + rng.below(1500));
    // Traffic while it runs (lost when it dies: not accounted).
    let _ = generate(&mut s.enso.gen_end, 1_000_000, 64, after.as_secs() + 1);
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    drain(&mut s.enso.gen_end);
    Ok(())
}

/// The killed client's body: an echo until killed.
fn client(sock: &Path) -> Result<i32> {
    let access = Box::new(VfioUserDevice::connect(sock)?);
    let params = guest_apps::echo::EchoParams::until_stopped(2);
    let mut echo =
        guest_apps::echo::Echo::setup(access, &params).map_err(|e| anyhow::anyhow!("echo setup: {e}"))?;
    let stop = AtomicBool::new(false);
    echo.run(&params, &stop).map_err(|e| anyhow::anyhow!("echo: {e}"))?;
    Ok(0)
}

/// `testbed soak`.
pub fn run(a: &SoakArgs) -> Result<i32> {
    if let Some(sock) = &a.client {
        return client(sock);
    }
    // One malloc arena: glibc gives each new thread (every turn starts some) an arena of
    // its own, up to 8 per core, each keeping freed memory; RSS then climbs for minutes
    // before it levels off, which would hide (or fake) a leak. With one arena the resident
    // size after warm-up is flat unless something really leaks.
    // SAFETY: mallopt only sets an allocator parameter; called before any server thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let dir = crate::scenarios::run::private_dir("soak")?;
    let mut s = Servers::start(&dir)?;
    let mut rng = Rng(a.seed);
    let mut t = Totals::default();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(a.minutes.max(0.05) * 60.0);
    let mut warm: Option<(u64, usize)> = None;
    let warm_until = started + (end - started) / 4;
    let mut warm_fds = vec![];
    let mut start_figures = None;
    // The first rotation (warm-up) runs every kind of turn once; then the order is seeded.
    let mut order: Vec<u64> = vec![0, 1, 2, 3];
    while Instant::now() < end || t.turns < 4 {
        let kind = if let Some(k) = order.pop() { k } else { rng.below(4) };
        let r = match kind {
            0 => echo_turn(&mut s, &mut rng, &mut t),
            1 => chain_turn(&dir, &mut rng, &mut t),
            2 => {
                let first = t.garbage_turns == 0;
                garbage_turn(&mut s, &mut rng, &mut t, first)
            }
            _ => kill_turn(&mut s, &mut rng, &mut t),
        };
        t.turns += 1;
        if let Err(e) = r {
            t.failures.push(format!("turn {} ({kind}): {e:#}", t.turns));
        }
        if let Err(e) = s.all_answer() {
            t.failures.push(format!("turn {}: {e:#}", t.turns));
        }
        if start_figures.is_none() {
            start_figures = Some(rss_and_fds());
        }
        // Warm-up: every kind of turn once, and a quarter of the run (allocator pools,
        // thread stacks and lazily built tables reach their working size).
        if warm.is_none() && t.turns >= 4 && Instant::now() >= warm_until {
            settle();
            warm = Some(rss_and_fds());
            warm_fds = fd_targets();
        }
        if !a.json {
            let (rss, fds) = rss_and_fds();
            eprintln!(
                "[testbed] soak: turn {} ({}) at {:.0}s: RSS {} KiB, {} fds, {} failure(s)",
                t.turns,
                ["echo", "chain", "garbage", "kill"][kind as usize],
                started.elapsed().as_secs_f64(),
                rss,
                fds,
                t.failures.len()
            );
        }
    }
    // Every device answers a well-behaved client at the end, too.
    if let Err(e) = s.all_answer() {
        t.failures.push(format!("end: {e:#}"));
    }
    settle();
    let (rss_end, fds_end) = rss_and_fds();
    let (rss_warm, fds_warm) = warm.unwrap_or((rss_end, fds_end));
    let rss_ok = rss_end as f64 <= rss_warm as f64 * 1.05;
    let fds_ok = fds_end <= fds_warm;
    if !rss_ok {
        t.failures.push(format!("RSS grew from {rss_warm} KiB after warm-up to {rss_end} KiB (> +5 %)"));
    }
    if !fds_ok {
        let now = fd_targets();
        let new: Vec<&String> = now.iter().filter(|f| !warm_fds.contains(f)).collect();
        t.failures.push(format!("fds grew from {fds_warm} after warm-up to {fds_end}: {new:?}"));
    }
    let pass = t.failures.is_empty();
    let report = json!({
        "scenario": "soak",
        "pass": pass,
        "seed": a.seed,
        "minutes": started.elapsed().as_secs_f64() / 60.0,
        "clients": "native (in-process vfio-user client; killed clients are child processes)",
        "memory": {
            "after_first_turn": {"rss_kib": start_figures.map(|f| f.0), "fds": start_figures.map(|f| f.1)},
            "after_warm_up": {"rss_kib": rss_warm, "fds": fds_warm},
            "end": {"rss_kib": rss_end, "fds": fds_end},
        },
        "totals": t,
        "servers": s.stats(),
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "soak: {} turns in {:.1} min (seed {}): echo {}, chain {}, garbage {}, kills {}\n  traffic: sent {}, matched {}, NIC drops {}; chain items {}; garbage messages {} ({} refused), slowest reply (µs) {:?}\n  after warm-up: RSS {} KiB, {} fds; end: RSS {} KiB, {} fds\n  {}",
            t.turns,
            started.elapsed().as_secs_f64() / 60.0,
            a.seed,
            t.echo_turns,
            t.chain_turns,
            t.garbage_turns,
            t.kill_turns,
            t.sent,
            t.matched,
            t.nic_drops,
            t.chain_items,
            t.garbage_messages,
            t.garbage_refused,
            t.garbage_max_step_us,
            rss_warm,
            fds_warm,
            rss_end,
            fds_end,
            if pass { "pass".to_string() } else { format!("FAIL:\n  {}", t.failures.join("\n  ")) }
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if pass { 0 } else { 1 })
}
