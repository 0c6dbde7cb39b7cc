//! The scenario runner: device servers in this process, a guest in QEMU, assertions from
//! both sides, and one report.

use crate::accel::{self, AccelChoice};
pub(crate) use crate::report::{counter_of, counters_json, nonzero_drops};
pub use crate::report::{json_line, render, Assertion, RunReport};
use crate::vm::{self, Accel, Vm, VmOutcome, VmSpec};
use anyhow::{Context, Result};
use guest_image::Image;
use pcie_model::{CountersSnapshot, PciDevice};
use provision::qemu::{self, Qemu};
use serde::Serialize;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options shared by every VM scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Limit for one guest run (boot included).
    pub timeout: Duration,
    /// Keep the run folder (logs) even when the run passed.
    pub keep: bool,
    /// Copy the guest console to stderr after the run.
    pub console: bool,
}

impl RunReport {
    /// A report of a scenario whose driver runs in this process (no guest).
    pub(crate) fn native(scenario: &str, dir: &Path) -> Self {
        Self::with(scenario, "none (native vfio-user driver)".into(), "-".into(), "-".into(), dir)
    }

    pub(crate) fn new(scenario: &str, env: &Env, dir: &Path) -> Self {
        let qemu = format!("{} ({})", env.qemu.bin.display(), env.qemu.version);
        Self::with(scenario, env.accel.name().into(), qemu, env.image.kernel_version.clone(), dir)
    }
}

/// Everything a VM scenario needs, provisioned once.
pub struct Env {
    pub qemu: Qemu,
    pub image: Image,
    pub accel: Accel,
}

impl Env {
    /// Finds or builds QEMU, the guest program and the image; picks the accelerator.
    pub fn provision(choice: AccelChoice) -> Result<Env> {
        let root = provision::cache::workspace_root()?;
        let qemu = qemu::ensure_qemu(&root)?;
        let guest = guest_image::build_guest_binary(&root)?;
        let image = guest_image::ensure_image(&guest)?;
        let accel = accel::resolve(choice, &qemu, &image)?;
        Ok(Env { qemu, image, accel })
    }
}

/// A private (0700) folder for sockets and logs.
pub fn private_dir(tag: &str) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let dir = base.join(format!("testbed-{tag}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Holds the machine-wide VM lock: guests run one at a time (2 cores, TCG).
pub struct VmLock(#[allow(dead_code)] std::fs::File);

impl VmLock {
    pub fn acquire() -> Result<VmLock> {
        use std::os::fd::AsRawFd;
        let path = provision::cache::root().join("vm.lock");
        std::fs::create_dir_all(provision::cache::root())?;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: flock on a file we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("[testbed] waiting for another guest run to finish ({})", path.display());
            // SAFETY: as above, blocking.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).context("lock the VM slot");
            }
        }
        Ok(VmLock(f))
    }
}

fn nonce() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(13) ^ std::process::id()) | 1
}

fn result_event(out: &VmOutcome) -> Option<&Value> {
    out.events.iter().rev().find(|e| e["event"] == "result")
}

pub(crate) fn finish_guest_checks(report: &mut RunReport, out: &VmOutcome, console: &Path, qemu_log: &Path) {
    report.boot_s = out.boot_s;
    let init = out.events.iter().find(|e| e["event"] == "init");
    report.check(
        "guest_booted",
        init.is_some(),
        match init {
            Some(i) => format!("kernel {} in {:.1}s", i["kernel"], out.boot_s.unwrap_or(0.0)),
            None => format!(
                "no init report; QEMU said:\n{}\nconsole tail:\n{}",
                vm::tail(qemu_log, 5),
                vm::tail(console, 15)
            ),
        },
    );
    if let Some(i) = init {
        let failed = i["modules_failed"].as_array().map_or(0, |a| a.len());
        report.check("guest_modules", failed == 0, format!("modules failed: {}", i["modules_failed"]));
    }
    report.check(
        "guest_powered_off",
        out.exited,
        if out.exited { "QEMU exited" } else { "killed at the time limit" },
    );
    report.check(
        "result_channel_clean",
        out.garbage_lines == 0,
        format!("{} non-JSON lines", out.garbage_lines),
    );
    match result_event(out) {
        Some(r) => {
            report.guest = r.clone();
            for c in r["checks"].as_array().into_iter().flatten() {
                let name = format!("guest:{}", c["name"].as_str().unwrap_or("?"));
                report.check(&name, c["pass"] == true, c["detail"].as_str().unwrap_or("").to_string());
            }
            report.check("guest_result", r["pass"] == true, format!("transport {}", r["transport"]));
        }
        None => report.check("guest_result", false, "the guest program reported no result"),
    }
}

/// Boots `spec`, waits for the guest program's "ready" event, calls `start` and waits
/// (bounded by `timeout`) until `done`, then waits for the guest to power off. Adds the
/// guest checks to `report`; returns whether the guest became ready, and its console log.
pub(crate) fn drive_guest(
    env: &Env,
    spec: &VmSpec,
    timeout: Duration,
    report: &mut RunReport,
    start: impl FnOnce(),
    done: impl Fn() -> bool,
) -> Result<(bool, PathBuf)> {
    let mut vm = Vm::start(spec, &env.qemu, &env.image)?;
    let (console, qemu_log) = (vm.console.clone(), vm.qemu_log.clone());
    let ready = vm.wait_for(timeout, |ev| ev.iter().any(|e| e["event"] == "ready" || e["event"] == "result"));
    let ready = ready && vm.events().0.iter().any(|e| e["event"] == "ready");
    if ready {
        start();
        let deadline = Instant::now() + timeout;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let out = vm.wait(timeout);
    finish_guest_checks(report, &out, &console, &qemu_log);
    Ok((ready, console))
}

/// `testbed run smoke`: the smoke device, the guest's smoke driver over VFIO.
pub fn smoke(env: &Env, opts: &RunOptions, kill_first_guest: bool) -> Result<RunReport> {
    let started = Instant::now();
    let _lock = VmLock::acquire()?;
    let dir = private_dir("smoke")?;
    let dev = Arc::new(Mutex::new(testdev::SmokeDevice::new()?));
    let sock = dir.join("smoke.sock");
    let server = vfio_server::Server::bind(&sock, dev.clone())?.spawn();
    let scratch = nonce();
    let seed = nonce().rotate_left(7) & 0xffff;
    let spec = |name: &str, hold_ms: u32| VmSpec {
        name: name.into(),
        accel: env.accel,
        memory_mb: 512,
        vfio_user: vec![sock.clone()],
        scenario: "smoke".into(),
        args: vec![format!("scratch={scratch:#x}"), format!("seed={seed}"), format!("hold_ms={hold_ms}")],
        dir: dir.clone(),
        net: vec![],
        files: vec![],
    };
    let mut report = RunReport::new("smoke", env, &dir);

    if kill_first_guest {
        // Boot a guest that pauses after its first DMA, holding DMA mappings and MSI-X
        // vectors; kill it there outright. The next guest must find a working server.
        let mut vm = Vm::start(&spec("killed", 600_000), &env.qemu, &env.image)?;
        let d2 = dev.clone();
        let reached = vm.wait_for(opts.timeout, |_| d2.lock().map(|d| d.commands() >= 1).unwrap_or(false));
        let mid_run = reached && dev.lock().map(|d| d.commands() == 1).unwrap_or(false);
        let at = vm.elapsed();
        vm.kill();
        report.check(
            "killed_guest_was_mid_run",
            mid_run,
            format!(
                "killed {at:.1}s after start, device had completed {} command(s)",
                dev.lock().unwrap().commands()
            ),
        );
        report.restarts = 1;
    }

    let before = dev.lock().unwrap().counters().traffic_snapshot();
    let vm = Vm::start(&spec("guest", 0), &env.qemu, &env.image)?;
    let (console, qemu_log) = (vm.console.clone(), vm.qemu_log.clone());
    let out = vm.wait(opts.timeout);
    finish_guest_checks(&mut report, &out, &console, &qemu_log);

    // The device side of each check.
    let d = dev.lock().unwrap();
    let mut traffic = d.counters().traffic_snapshot().since(&before);
    // The driver's writes into the polled doorbell page, which the device cannot count.
    let doorbells = report.guest["values"]["doorbell_writes"].as_u64();
    traffic.add_doorbells(doorbells.unwrap_or(0), 4);
    let c: CountersSnapshot = traffic.counters;
    // The PCIe view of the run, per device command (the smoke device's unit of work).
    report.datapath = json!({
        "commands": d.commands(),
        "doorbell_writes": doorbells,
        "pcie": pcie_model::LinkConfig::default().report(&traffic.summary(), d.commands() as u64, None),
    });
    report.check(
        "device:scratch",
        d.scratch() == scratch,
        format!("device holds {:#x}, host chose {scratch:#x}", d.scratch()),
    );
    let guest_sum = report.guest["values"]["checksum"].as_u64();
    report.check(
        "device:checksum",
        guest_sum == Some(d.last_checksum() as u64),
        format!("device computed {:#x}, guest expected {:?}", d.last_checksum(), guest_sum),
    );
    let guest_cmds = report.guest["values"]["commands"].as_u64();
    report.check(
        "device:commands",
        guest_cmds == Some(d.commands() as u64) && d.commands() >= 4,
        format!("device completed {}, guest saw {:?}", d.commands(), guest_cmds),
    );
    report.check("device:id_read_trapped", c.mmio_reads >= 1, format!("{} trapped MMIO reads", c.mmio_reads));
    report.check(
        "device:dma_write",
        c.dma_writes >= 2,
        format!("{} DMA writes, {} bytes", c.dma_writes, c.dma_write_bytes),
    );
    report.check(
        "device:dma_read",
        c.dma_reads >= 1,
        format!("{} DMA reads, {} bytes", c.dma_reads, c.dma_read_bytes),
    );
    report.check(
        "device:msix",
        c.irqs >= 1 && c.irqs_dropped == 0,
        format!("{} delivered, {} dropped", c.irqs, c.irqs_dropped),
    );
    report.check(
        "device:dma_error_counted",
        // The guest provokes exactly one refused DMA.
        c.dma_errors == 1,
        format!("{} refused DMA accesses", c.dma_errors),
    );
    // Each command is seven register writes into the polled page (opcode, address low
    // and high, length, seed, vector, sequence number).
    report.check(
        "device:doorbells_reported",
        doorbells == Some(7 * d.commands() as u64),
        format!("the guest reported {doorbells:?} doorbell writes for {} commands", d.commands()),
    );
    drop(d);
    let stats = server.stats();
    let want_conn = 1 + kill_first_guest as u64;
    report.check(
        "server:connections",
        stats.connections == want_conn && stats.dropped_connections == 0,
        format!(
            "{} connection(s), {} dropped by protocol errors",
            stats.connections, stats.dropped_connections
        ),
    );
    report.devices.insert("smoke".into(), serde_json::to_value(c)?);
    report.servers.insert("smoke".into(), serde_json::to_value(stats)?);
    server.stop();
    if opts.console {
        eprintln!("----- guest console -----\n{}", std::fs::read_to_string(&console).unwrap_or_default());
    }
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// Where a scenario's (or benchmark's) driver runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// In a QEMU guest, over VFIO (one guest per run; slow under TCG).
    Vm,
    /// In this process, over the vfio-user client.
    Native,
}

/// Which NIC model a traffic scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NicKind {
    /// The Ensō NIC (streaming pipes, reactive notifications).
    Enso,
    /// The packetized baseline (descriptor rings, per-packet buffers).
    Packetized,
}

impl NicKind {
    /// "enso" or "packetized".
    pub fn name(self) -> &'static str {
        match self {
            NicKind::Enso => "enso",
            NicKind::Packetized => "packetized",
        }
    }
}

/// Which queue engine the Ensō NIC model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineModel {
    /// The behavioural Rust engine.
    Rust,
    /// The RTL engine (rtl/enso/enso_queue_engine.sv), co-simulated under Verilator.
    Rtl,
}

/// How the Ensō NIC's queue registers reach it (`--registers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registers {
    /// Shared memory the device polls (fast; it sees values, not writes).
    #[default]
    Shared,
    /// Trapped: every queue-page access reaches the device as an event, in order.
    Mmio,
}

impl Registers {
    /// "shared" or "mmio".
    pub fn name(self) -> &'static str {
        self.mode().name()
    }

    /// The model's register mode.
    pub fn mode(self) -> enso_nic::RegisterMode {
        match self {
            Registers::Shared => enso_nic::RegisterMode::Shared,
            Registers::Mmio => enso_nic::RegisterMode::Mmio,
        }
    }
}

/// Which of the emulator's extensions our driver uses (`--extensions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverExtensions {
    /// Every extension (the ENABLE bit, prefetch doorbells, queue-state acknowledgements,
    /// identity): the extension pages are offered for mmap.
    #[default]
    All,
    /// Card mode: the driver uses only what the FPGA has and never touches BAR0; the
    /// extension pages trap, so any access would be counted.
    None,
}

impl DriverExtensions {
    /// "all" or "none".
    pub fn name(self) -> &'static str {
        match self {
            DriverExtensions::All => "all",
            DriverExtensions::None => "none",
        }
    }
}

/// `--registers` and `--extensions` of the scenarios that serve an Ensō NIC.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct EnsoArgs {
    /// How the Ensō NIC's queue registers reach it: shared (memory the device polls) or
    /// mmio (every access traps and reaches the device in order, as on the card).
    #[arg(long, value_enum, default_value = "shared")]
    pub registers: Registers,
    /// The emulator's extensions our driver uses: all, or none (card mode: only what the
    /// FPGA has; the device then counts any access to BAR0 as extension_accesses).
    #[arg(long, value_enum, default_value = "all")]
    pub extensions: DriverExtensions,
}

impl EnsoArgs {
    /// The setup these flags ask for.
    pub fn setup(self) -> EnsoSetup {
        EnsoSetup { registers: self.registers, extensions: self.extensions }
    }
}

/// How the Ensō NIC of a scenario is set up and driven: its register mode, and the
/// extensions the guest's driver uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EnsoSetup {
    pub registers: Registers,
    pub extensions: DriverExtensions,
}

impl EnsoSetup {
    /// The NIC's configuration: the card's full space, this register mode, the extension
    /// pages mapped only for a driver that uses them.
    pub fn config(self) -> enso_nic::EnsoConfig {
        enso_nic::EnsoConfig {
            registers: self.registers.mode(),
            map_extension_pages: self.extensions == DriverExtensions::All,
            ..enso_nic::EnsoConfig::default()
        }
    }

    /// The guest program's arguments for it (`registers=`, `extensions=`).
    pub fn guest_args(self) -> Vec<String> {
        vec![format!("registers={}", self.registers.name()), format!("extensions={}", self.extensions.name())]
    }

    /// Our driver's options for it, when it runs in this process (native transport).
    pub fn driver_options(self) -> enso::DeviceOptions {
        enso::DeviceOptions {
            allow_trapped_datapath: self.registers == Registers::Mmio,
            extensions: match self.extensions {
                DriverExtensions::All => enso::Extensions::All,
                DriverExtensions::None => enso::Extensions::None,
            },
            ..enso::DeviceOptions::new(0)
        }
    }

    /// The register mode and extensions, for report details.
    pub fn describe(self) -> String {
        format!("registers {}, extensions {}", self.registers.name(), self.extensions.name())
    }
}

/// The Ensō NIC with the queue engine `model`; with the RTL, also the counter of the
/// RTL's clock cycles.
pub fn enso_nic_with(
    model: EngineModel,
    port: Box<dyn wire::EthPort>,
) -> Result<(enso_nic::EnsoNic, Option<Arc<std::sync::atomic::AtomicU64>>)> {
    enso_nic_config(model, enso_nic::EnsoConfig::default(), port)
}

/// [`enso_nic_with`] for a NIC configured as `cfg`.
pub fn enso_nic_config(
    model: EngineModel,
    cfg: enso_nic::EnsoConfig,
    port: Box<dyn wire::EthPort>,
) -> Result<(enso_nic::EnsoNic, Option<Arc<std::sync::atomic::AtomicU64>>)> {
    Ok(match model {
        EngineModel::Rust => (enso_nic::EnsoNic::new(cfg, port)?, None),
        EngineModel::Rtl => {
            crate::rtl::ensure()?;
            let cycles = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let engines =
                rtl_cosim::RtlEngine::factory(&cfg, Some(cycles.clone())).map_err(anyhow::Error::msg)?;
            (enso_nic::EnsoNic::with_engines(cfg, port, engines)?, Some(cycles))
        }
    })
}

/// A NIC model under test: the device to serve, and its counters by name.
pub struct NicUnderTest {
    pub kind: NicKind,
    pub device: Arc<Mutex<dyn PciDevice>>,
    counters: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send>,
    /// Clock cycles the RTL queue engine ran (`--model rtl`).
    pub rtl_cycles: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl NicUnderTest {
    /// A NIC of `kind` cabled to `port`.
    pub fn new(kind: NicKind, port: Box<dyn wire::EthPort>) -> Result<NicUnderTest> {
        Self::with_model(kind, port, EngineModel::Rust)
    }

    /// A NIC of `kind` cabled to `port`, the Ensō NIC's queue engine being `model`.
    pub fn with_model(
        kind: NicKind,
        port: Box<dyn wire::EthPort>,
        model: EngineModel,
    ) -> Result<NicUnderTest> {
        Self::with_setup(kind, port, model, EnsoSetup::default())
    }

    /// The Ensō NIC configured as `cfg`, cabled to `port`.
    pub fn enso(
        port: Box<dyn wire::EthPort>,
        model: EngineModel,
        cfg: enso_nic::EnsoConfig,
    ) -> Result<NicUnderTest> {
        let (nic, rtl_cycles) = enso_nic_config(model, cfg, port)?;
        let nic = Arc::new(Mutex::new(nic));
        let n2 = nic.clone();
        let counters = Box::new(move || {
            let c = n2.lock().unwrap_or_else(|e| e.into_inner()).counters();
            testbed_regs::enso::ext::counter::NAMES.iter().copied().zip(c).collect()
        });
        Ok(NicUnderTest { kind: NicKind::Enso, device: nic, counters, rtl_cycles })
    }

    /// As [`with_model`](Self::with_model), the Ensō NIC set up as `setup` says.
    pub fn with_setup(
        kind: NicKind,
        port: Box<dyn wire::EthPort>,
        model: EngineModel,
        setup: EnsoSetup,
    ) -> Result<NicUnderTest> {
        if model == EngineModel::Rtl && kind != NicKind::Enso {
            anyhow::bail!("--model rtl co-simulates the Ensō NIC's queue engine: use it with --nic enso");
        }
        Ok(match kind {
            NicKind::Enso => Self::enso(port, model, setup.config())?,
            NicKind::Packetized => {
                let nic = Arc::new(Mutex::new(packet_nic::PacketNic::new(
                    packet_nic::PacketNicConfig::default(),
                    port,
                )?));
                let n2 = nic.clone();
                let counters = Box::new(move || {
                    let c = n2.lock().unwrap_or_else(|e| e.into_inner()).counters();
                    testbed_regs::packetized::reg::counter::NAMES.iter().copied().zip(c).collect()
                });
                NicUnderTest { kind, device: nic, counters, rtl_cycles: None }
            }
        })
    }

    /// The NIC's counters by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (self.counters)()
    }

    /// The PCIe traffic counted so far.
    pub fn traffic(&self) -> pcie_model::TrafficSnapshot {
        self.device.lock().unwrap_or_else(|e| e.into_inner()).counters().traffic_snapshot()
    }
}

/// Parameters of `testbed run echo`.
#[derive(Clone, Copy, Debug)]
pub struct EchoOptions {
    /// Packets the host generator sends.
    pub packets: u64,
    /// Frame size in bytes.
    pub size: usize,
    /// Flows (distinct 5-tuples).
    pub flows: u32,
    /// Pipes the guest's echo uses (fallback queues).
    pub pipes: u32,
    /// Packets in flight at most (the closed loop's window).
    pub window: usize,
    /// First boot a guest whose driver writes garbage into every register page and
    /// posts bad notifications; its errors must be counted and the echo must then run
    /// clean against the same server.
    pub garbage_first: bool,
    /// The NIC model.
    pub nic: NicKind,
    /// The Ensō NIC's queue engine.
    pub model: EngineModel,
    /// The Ensō NIC's register mode and the extensions the guest's driver uses.
    pub setup: EnsoSetup,
}

/// `testbed run echo`: a NIC model served to a guest running the `echo` app (the same
/// per-packet logic on either NIC); the host generator sends every packet through the
/// NIC's Ethernet port and checks every reply.
pub fn echo(env: &Env, opts: &RunOptions, p: EchoOptions) -> Result<RunReport> {
    use testbed_regs::enso::ext::counter;
    if p.garbage_first && p.nic != NicKind::Enso {
        anyhow::bail!("--garbage-first scribbles over Ensō registers: use it with --nic enso");
    }
    let gen_config = wire::generator::GenConfig {
        packets: p.packets,
        size: p.size,
        flows: p.flows,
        window: p.window,
        rate_pps: None,
        timestamp_offset: None,
        ..Default::default()
    };
    // Refused here rather than by the generator's panic, after the guest booted.
    gen_config.validate().map_err(|e| anyhow::anyhow!("invalid echo traffic: {e}"))?;
    let started = Instant::now();
    let _lock = VmLock::acquire()?;
    let dir = private_dir("echo")?;
    let (nic_end, mut gen_end) = wire::cable(1024);
    let nic = NicUnderTest::with_setup(p.nic, Box::new(nic_end), p.model, p.setup)?;
    let sock = dir.join(format!("{}.sock", p.nic.name()));
    let server = vfio_server::Server::bind(&sock, nic.device.clone())?.spawn();
    let mut report = RunReport::new("echo", env, &dir);
    if p.garbage_first {
        let spec = VmSpec {
            name: "garbage".into(),
            accel: env.accel,
            memory_mb: 512,
            vfio_user: vec![sock.clone()],
            scenario: "garbage".into(),
            args: vec![],
            dir: dir.clone(),
            net: vec![],
            files: vec![],
        };
        let vm = Vm::start(&spec, &env.qemu, &env.image)?;
        let out = vm.wait(opts.timeout);
        let ok = result_event(&out).is_some_and(|r| r["pass"] == true);
        report.check("garbage:guest_ran", ok && out.exited, "the garbage guest scribbled and powered off");
        // Read the counters before the next client connects (connecting resets the device).
        let c = nic.counters();
        let named: serde_json::Map<String, Value> = c
            .iter()
            .filter(|(n, v)| *v != 0 && (n.contains("bad") || n.contains("drop") || n.contains("error")))
            .map(|(n, v)| ((*n).to_string(), json!(v)))
            .collect();
        let must = [counter::TX_BAD_NOTIFICATION, counter::BAD_TAIL, counter::BAD_REGISTER_WRITES];
        report.check(
            "garbage:errors_counted",
            must.iter().all(|&i| counter_of(&c, counter::NAMES[i as usize]) > 0),
            format!("{}", Value::Object(named.clone())),
        );
        report.devices.insert("enso_after_garbage".into(), Value::Object(named));
        report.restarts = 1;
    }
    let spec = VmSpec {
        name: "guest".into(),
        accel: env.accel,
        memory_mb: 512,
        vfio_user: vec![sock.clone()],
        scenario: "echo".into(),
        args: [
            vec![
                format!("pipes={}", p.pipes),
                format!("packets={}", p.packets),
                "idle_ms=3000".into(),
                format!("nic={}", p.nic.name()),
            ],
            if p.nic == NicKind::Enso { p.setup.guest_args() } else { vec![] },
        ]
        .concat(),
        dir: dir.clone(),
        net: vec![],
        files: vec![],
    };
    let mut vm = Vm::start(&spec, &env.qemu, &env.image)?;
    let (console, qemu_log) = (vm.console.clone(), vm.qemu_log.clone());
    let ready =
        vm.wait_for(opts.timeout, |ev| ev.iter().any(|e| e["event"] == "ready" || e["event"] == "result"));
    let before = nic.traffic();
    let nic_before = nic.counters();
    let mut gen = wire::generator::Generator::new(gen_config);
    let traffic = if ready && vm.events().0.iter().any(|e| e["event"] == "ready") {
        let deadline = Instant::now() + opts.timeout;
        Some(gen.run(&mut gen_end, deadline))
    } else {
        None
    };
    let after = nic.traffic();
    let nic_after = nic.counters();
    let out = vm.wait(opts.timeout);
    finish_guest_checks(&mut report, &out, &console, &qemu_log);
    report.check("guest_ready", ready, "the guest's echo set up its pipes");

    let delta = |name: &str| counter_of(&nic_after, name) - counter_of(&nic_before, name);
    let mut traffic_pcie = after.since(&before);
    // The driver's doorbells: plain stores into pages the device polls, which it cannot
    // count, so the guest reports them (its datapath loop only). In register mode mmio the
    // same stores trap (the guest cannot tell: its pages are mapped either way) and are in
    // the device's `mmio_writes` already: the driver's figure is then only reported.
    let doorbells = report.guest["values"]["doorbell_writes"].as_u64();
    let polled = p.nic != NicKind::Enso || p.setup.registers == Registers::Shared;
    if polled {
        traffic_pcie.add_doorbells(doorbells.unwrap_or(0), 4);
    }
    let pc = traffic_pcie.counters;
    let trapped = pc.mmio_reads + pc.mmio_writes;
    match traffic {
        Some(t) => {
            let traffic = generator_checks(
                &mut report,
                &t,
                p.packets,
                "",
                (&nic_before, &nic_after),
                json!({
                    "size": p.size,
                    "flows": p.flows,
                    "model": p.model,
                    "registers": p.setup.registers,
                    "extensions": p.setup.extensions,
                    "window": p.window,
                }),
            );
            rtl_checks(&mut report, nic.rtl_cycles.as_deref(), t.matched, p.setup.registers, &nic_after);
            let enso_checks =
                EnsoChecks::new(p.setup, (&nic_before, &nic_after), &traffic_pcie, doorbells, t.matched);
            if p.nic == NicKind::Enso {
                enso_checks.check(&mut report);
            } else {
                report.check(
                    "datapath:trapped_mmio",
                    trapped * 1000 <= t.sent.max(1),
                    format!("{trapped} trapped MMIO accesses for {} packets (limit 1 per 1000)", t.sent),
                );
                report.check(
                    "datapath:doorbells_reported",
                    doorbells.is_some_and(|n| n > 0),
                    format!(
                        "the guest driver reported {} doorbell writes into polled pages for {} packets",
                        doorbells.map_or("no".to_string(), |n| n.to_string()),
                        t.matched
                    ),
                );
            }
            report.traffic = traffic;
            // The packetized NIC's notifications are its descriptor write-backs; the
            // per-packet figure is Ensō's only.
            report.datapath = datapath_json(
                &t,
                &traffic_pcie,
                &delta,
                (enso_checks.device_doorbells, doorbells),
                p.nic == NicKind::Enso,
                json!({
                    "descriptor_writebacks": delta("descriptor_writebacks"),
                    "descriptor_fetches": delta("descriptor_fetches"),
                }),
            );
        }
        None => report.check("traffic:all_matched", false, "no traffic: the guest never became ready"),
    }
    file_nic(&mut report, p.nic.name(), &nic_after, pc, &server)?;
    server.stop();
    if opts.console {
        eprintln!("----- guest console -----\n{}", std::fs::read_to_string(&console).unwrap_or_default());
    }
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// The host generator's verdict over an echo: every packet answered and matched
/// (`echo` says how a reply matches), nothing corrupted or out of order, and no drop,
/// neither the NIC's (its `*drop*` counters over the run) nor the wire's. Returns the
/// report's `traffic` object with what the generator saw (counts, `dropped`, rate and
/// latency) and the scenario's own fields from `more`.
pub(crate) fn generator_checks(
    report: &mut RunReport,
    t: &wire::generator::GenReport,
    want: u64,
    echo: &str,
    (before, after): (&NamedCounters, &NamedCounters),
    more: Value,
) -> Value {
    let mut dropped = serde_json::Map::new();
    for (name, v) in after {
        if name.contains("drop") {
            dropped.insert((*name).into(), json!(v - counter_of(before, name)));
        }
    }
    let nic_drops: u64 = dropped.values().filter_map(Value::as_u64).sum();
    dropped.insert("lost".into(), json!(t.lost));
    dropped.insert("refused_by_cable".into(), json!(t.refused));
    report.check(
        "traffic:all_matched",
        t.matched == t.sent && t.sent == want,
        format!("sent {}, received {}, matched {}{echo}", t.sent, t.received, t.matched),
    );
    report.check(
        "traffic:intact",
        t.corrupted == 0 && t.reordered == 0 && t.duplicated == 0 && t.late == 0,
        format!(
            "corrupted {}, reordered {}, duplicated {}, late {}",
            t.corrupted, t.reordered, t.duplicated, t.late
        ),
    );
    report.check(
        "traffic:no_drops",
        nic_drops == 0 && t.lost == 0,
        format!("NIC drops {nic_drops}, lost {}", t.lost),
    );
    let mut traffic = json!({
        "sent": t.sent,
        "received": t.received,
        "matched": t.matched,
        "corrupted": t.corrupted,
        "reordered": t.reordered,
        "dropped": dropped,
        "mpps": t.rx_mpps,
        "latency_us": {"p50": t.latency_p50_us, "p99": t.latency_p99_us, "max": t.latency_max_us},
    });
    if let (Value::Object(t), Value::Object(m)) = (&mut traffic, more) {
        t.extend(m);
    }
    traffic
}

/// The report's `datapath` object of an echo: what the `t.matched` packets cost in trapped
/// MMIO (`pcie`), notifications (`delta` of the NIC counters), doorbells (the device's, the
/// driver's) and DMA bytes, and the modeled PCIe link. `per_notification` adds packets per
/// RX notification (what Ensō's metadata share depends on, and it on how fast the
/// emulation runs); `more` adds the scenario's own fields.
pub(crate) fn datapath_json(
    t: &wire::generator::GenReport,
    pcie: &pcie_model::TrafficSnapshot,
    delta: &dyn Fn(&str) -> u64,
    (device_doorbells, doorbells): (u64, Option<u64>),
    per_notification: bool,
    more: Value,
) -> Value {
    let pc = &pcie.counters;
    let per_packet = |n: u64| n as f64 / t.matched.max(1) as f64;
    let rx_notif = delta("rx_notifications");
    let mut d = json!({
        "packets": t.matched,
        "trapped_mmio": pc.mmio_reads + pc.mmio_writes,
        "trapped_writes": pc.mmio_writes,
        "trapped_writes_per_packet": per_packet(pc.mmio_writes),
        "device_doorbells": device_doorbells,
        "doorbell_writes": doorbells,
        "rx_notifications": rx_notif,
        "tx_notifications": delta("tx_completions"),
        "notifications_per_packet": per_packet(rx_notif),
        "packets_per_notification": (per_notification && rx_notif > 0).then(|| t.matched as f64 / rx_notif as f64),
        "dma_read_bytes": pc.dma_read_bytes,
        "dma_write_bytes": pc.dma_write_bytes,
        "dma_metadata_bytes": pc.dma_read_meta_bytes + pc.dma_write_meta_bytes,
        // The device's DMA, MMIO and interrupts plus the driver's doorbells.
        "pcie": pcie_model::LinkConfig::default().report(&pcie.summary(), t.matched, Some(t.rx_mpps)),
    });
    if let (Value::Object(d), Value::Object(m)) = (&mut d, more) {
        d.extend(m);
    }
    d
}

/// Files a NIC's counters (`name`), its PCIe counters (`name_pcie`) and its server's
/// statistics into the report.
pub(crate) fn file_nic(
    report: &mut RunReport,
    name: &str,
    counters: &NamedCounters,
    pcie: CountersSnapshot,
    server: &vfio_server::ServerHandle,
) -> Result<()> {
    report.devices.insert(name.into(), Value::Object(counters_json(counters)));
    report.devices.insert(format!("{name}_pcie"), serde_json::to_value(pcie)?);
    report.servers.insert(name.into(), serde_json::to_value(server.stats())?);
    Ok(())
}

/// With the RTL queue engine (`cycles`): it was clocked; in register mode mmio, the queue
/// pages went through its register front end.
pub(crate) fn rtl_checks(
    report: &mut RunReport,
    cycles: Option<&std::sync::atomic::AtomicU64>,
    packets: u64,
    registers: Registers,
    counters: &NamedCounters,
) {
    let Some(cycles) = cycles else { return };
    let n = cycles.load(std::sync::atomic::Ordering::Relaxed);
    report.check(
        "rtl:clocked",
        n > 0,
        format!(
            "the RTL queue engine ran {n} clock cycles ({:.1} per packet)",
            n as f64 / packets.max(1) as f64
        ),
    );
    if registers == Registers::Mmio {
        rtl_front_end_check(report, counters);
    }
}

/// With the RTL in register mode mmio: the queue-page accesses went through the RTL's
/// register front end (`rtl_register_accesses`), not the Rust decode.
fn rtl_front_end_check(report: &mut RunReport, counters: &NamedCounters) {
    let n = counter_of(counters, "rtl_register_accesses");
    report.check(
        "rtl:register_front_end",
        n > 0,
        format!("{n} queue-page accesses went through rtl/enso/enso_queue_regs.sv"),
    );
}

/// Counters by name, as a NIC under test reports them.
pub(crate) type NamedCounters = [(&'static str, u64)];

/// The Ensō NIC's side of a traffic scenario's datapath checks, by register mode and
/// driver extensions.
pub(crate) struct EnsoChecks {
    setup: EnsoSetup,
    /// Trapped MMIO accesses during the datapath phase.
    trapped: u64,
    /// Doorbell writes the device saw as writes (mmio mode).
    pub device_doorbells: u64,
    /// Doorbell writes the driver reported into polled pages.
    driver_doorbells: Option<u64>,
    /// BAR0 accesses over the whole run.
    extension_accesses: u64,
    packets: u64,
    /// Doorbells the PCIe accounting took from the driver's report.
    accounted_doorbells: u64,
}

impl EnsoChecks {
    pub(crate) fn new(
        setup: EnsoSetup,
        (before, after): (&NamedCounters, &NamedCounters),
        traffic: &pcie_model::TrafficSnapshot,
        driver_doorbells: Option<u64>,
        packets: u64,
    ) -> Self {
        let pc = traffic.counters;
        EnsoChecks {
            setup,
            trapped: pc.mmio_reads + pc.mmio_writes,
            device_doorbells: counter_of(after, "queue_doorbells") - counter_of(before, "queue_doorbells"),
            driver_doorbells,
            extension_accesses: counter_of(after, "extension_accesses"),
            packets,
            accounted_doorbells: traffic.tlp.doorbell_writes,
        }
    }

    pub(crate) fn check(&self, report: &mut RunReport) {
        let (t, n) = (self.trapped, self.packets);
        match self.setup.registers {
            Registers::Shared => {
                report.check(
                    "datapath:trapped_mmio",
                    t * 1000 <= n.max(1),
                    format!("{t} trapped MMIO accesses for {n} packets (limit 1 per 1000)"),
                );
                report.check(
                    "datapath:doorbells_reported",
                    self.driver_doorbells.is_some_and(|d| d > 0) && self.device_doorbells == 0,
                    format!(
                        "the guest driver reported {} doorbell writes into polled pages for {n} packets; the \
                         device saw {} as writes",
                        self.driver_doorbells.map_or("no".to_string(), |d| d.to_string()),
                        self.device_doorbells
                    ),
                );
            }
            Registers::Mmio => {
                // Every doorbell is the device's to count: they trapped. The driver's own
                // figure (it cannot tell a trapping page from a polled one) is reported
                // beside it, not added to the PCIe accounting.
                report.check(
                    "datapath:doorbells_counted_once",
                    self.device_doorbells > 0 && self.accounted_doorbells == 0,
                    format!(
                        "the device saw {} doorbell writes ({:.3} per packet, {t} trapped accesses); the driver \
                         reported {:?}; doorbells added to the PCIe accounting from the driver: {}",
                        self.device_doorbells,
                        self.device_doorbells as f64 / n.max(1) as f64,
                        self.driver_doorbells,
                        self.accounted_doorbells
                    ),
                );
            }
        }
        if self.setup.extensions == DriverExtensions::None {
            report.check(
                "device:extension_accesses",
                self.extension_accesses == 0,
                format!("{} accesses to BAR0 (card mode makes none)", self.extension_accesses),
            );
        }
    }
}
