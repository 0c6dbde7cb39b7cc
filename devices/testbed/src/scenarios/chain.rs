//! The accelerator chain scenario (seed Figure 8): encrypted images from the host
//! source through the Ensō NIC, the crypto accelerator and the ML accelerator, and the
//! inference result back out — with the CPU mediating every step (`--mode cpu`, Table 2).
//!
//! The source sits on the NIC's Ethernet port (driven by the NIC's polling thread, like
//! the echo generator): it seals image `seq` with the stream's key, sends it, and checks
//! that the reply carries exactly the result the reference implementation computes.
//! Items go one at a time (a latency chain), so every logical PCIe operation of the run
//! falls into exactly one item: the three devices record into one [`OpTrace`], cut at
//! every image the NIC writes to the host.

use crate::report::Tally;
use crate::rig;
use crate::scenarios::run::{self, Env, RunOptions, RunReport, VmLock};
use crate::vm::VmSpec;
use accel::{crypto, function, ml, Accelerator};
use anyhow::{Context, Result};
use device_access::vfio_user::VfioUserDevice;
use guest_apps::chain::{Chain, ChainDevices, ChainParams, ChainStats, NagareChain, Shape};
use pcie_accounting::trace::{self, Op, OpKind, OpRole, OpTrace, TraceTap};
use pcie_model::{LinkConfig, PciDevice};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::record::{self, Header, FRAME_HEADER};
use wire::Frame;

/// Who moves the data between the devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The CPU receives every item and submits it to each accelerator in turn.
    Cpu,
    /// The Nagare switch routes the devices' pushes; the CPU only configures and watches.
    Nagare,
    /// The switch drives legacy-only accelerators: it writes the descriptors and rings
    /// the doorbells the CPU would have.
    Glue,
    /// cpu, then nagare, in one invocation.
    Both,
}

impl Mode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::Nagare => "nagare",
            Mode::Glue => "glue",
            Mode::Both => "both",
        }
    }

    /// The single modes this one runs, in order.
    pub fn runs(self) -> Vec<Mode> {
        match self {
            Mode::Both => vec![Mode::Cpu, Mode::Nagare],
            m => vec![m],
        }
    }
}

pub use crate::scenarios::run::Transport;

/// Parameters of `testbed run chain`.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Items the source sends.
    pub items: u64,
    /// The chain's accelerators.
    pub shape: Shape,
    /// The mode.
    pub mode: Mode,
    /// The stream (selects the key).
    pub stream: u8,
    /// Where the driver runs.
    pub transport: Transport,
    /// The Ensō NIC's queue engine.
    pub model: run::EngineModel,
    /// The Ensō NIC's register mode and the extensions the chain's NIC driver uses (the
    /// switch modes need the stream extension: extensions none is CPU mode only).
    pub setup: run::EnsoSetup,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            items: 200,
            shape: Shape::CryptoMl,
            mode: Mode::Cpu,
            stream: 1,
            transport: Transport::Vm,
            model: run::EngineModel::Rust,
            setup: run::EnsoSetup::default(),
        }
    }
}

/// The source's view of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceReport {
    /// Items and replies (a reply matches when it is exactly the expected result; it
    /// mismatches when bytes, length or addressing differ or it names an item not in flight).
    #[serde(flatten)]
    pub tally: Tally,
    /// Round-trip time per item, median (µs).
    pub latency_p50_us: f64,
    /// 99th percentile (µs).
    pub latency_p99_us: f64,
    /// Correct results for items the source did not send (the CPU pushed them).
    pub unsolicited: u64,
}

struct Source {
    items: u64,
    shape: Shape,
    stream: u8,
    key: crypto::Key,
    in_flight: VecDeque<(u32, Instant)>,
    report: SourceReport,
    rtts: Vec<u64>,
    loss_timeout: Duration,
}

/// The source's addresses: it is 10.0.0.2:5000, the chain is 10.1.0.1:7000.
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_PORT: u16 = 5000;

/// The plain image record of item `seq` of `stream`.
pub fn image_record(stream: u8, seq: u32) -> Vec<u8> {
    let (_, img) = ml::synthetic_image(seq);
    let mut r = vec![0u8; record::HEADER + img.len()];
    let nonce = crypto::item_nonce(stream, seq);
    Header { len: img.len() as u32, seq, kind: record::KIND_IMAGE, stream, nonce, tag: [0; 16] }
        .write(&mut r);
    r[record::HEADER..].copy_from_slice(&img);
    r
}

/// The frame carrying `rec` from the source to the chain.
fn frame(rec: &[u8]) -> Frame {
    let mut f = vec![0u8; FRAME_HEADER + rec.len()];
    f[0..6].copy_from_slice(&DST_MAC);
    f[6..12].copy_from_slice(&SRC_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + rec.len()) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 1, 0, 1]);
    let c = testbed_regs::inet::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&SRC_PORT.to_be_bytes());
    f[36..38].copy_from_slice(&record::UDP_PORT.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + rec.len()) as u16).to_be_bytes());
    f[FRAME_HEADER..].copy_from_slice(rec);
    f
}

impl Source {
    /// What the chain must send back for item `seq`.
    fn expected(&self, seq: u32) -> Vec<u8> {
        let plain = image_record(self.stream, seq);
        match self.shape {
            Shape::Crypto => plain,
            Shape::CryptoMl => function::expected_result(&plain).unwrap_or_default(),
        }
    }

    fn check_reply(&mut self, f: &[u8]) {
        self.report.tally.received += 1;
        let rec = f.get(FRAME_HEADER..).and_then(|r| Header::parse(r).map(|h| (h, r)));
        let Some((h, rec)) = rec else {
            return self.report.tally.mismatch(format!("a {}-byte reply without a record", f.len()));
        };
        let Some(pos) = self.in_flight.iter().position(|&(s, _)| s == h.seq) else {
            let want = self.expected(h.seq);
            if rec.get(..want.len()) == Some(&want[..]) && h.record_len() == want.len() {
                self.report.unsolicited += 1;
                return;
            }
            return self.report.tally.mismatch(format!("a reply for item {}, which is not in flight", h.seq));
        };
        let (seq, t0) = self.in_flight.remove(pos).unwrap_or((h.seq, Instant::now()));
        let want = self.expected(seq);
        let port = u16::from_be_bytes([f[36], f[37]]);
        if rec.get(..want.len()) != Some(&want[..]) || h.record_len() != want.len() || port != SRC_PORT {
            return self
                .report
                .tally
                .mismatch(format!("item {seq}: reply differs from the reference result"));
        }
        self.report.tally.matched += 1;
        self.rtts.push(t0.elapsed().as_nanos() as u64);
    }

    /// One step: write off late items, send the next one when none is in flight.
    fn next(&mut self, to_nic: &mut VecDeque<Frame>) {
        self.report.tally.expire(&mut self.in_flight, self.loss_timeout);
        if self.in_flight.is_empty() && self.report.tally.sent < self.items {
            let seq = self.report.tally.sent as u32;
            let plain = image_record(self.stream, seq);
            let sealed = crypto::seal(
                &self.key,
                seq,
                self.stream,
                crypto::item_nonce(self.stream, seq),
                &plain[record::HEADER..],
            );
            to_nic.push_back(frame(&sealed));
            self.in_flight.push_back((seq, Instant::now()));
            self.report.tally.sent += 1;
        }
    }

    fn done(&self) -> bool {
        self.report.tally.sent == self.items && self.in_flight.is_empty()
    }

    fn report(&self) -> SourceReport {
        let mut r = self.report.clone();
        let mut v = self.rtts.clone();
        v.sort_unstable();
        let q =
            |p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).map_or(0.0, |&n| n as f64 / 1e3);
        r.latency_p50_us = q(0.5);
        r.latency_p99_us = q(0.99);
        r
    }
}

impl wire::source::Source for Source {
    fn step(&mut self, to_nic: &mut VecDeque<Frame>) {
        self.next(to_nic);
    }

    fn check(&mut self, frame: &[u8]) {
        self.check_reply(frame);
    }
}

/// The devices of one chain run, served over vfio-user, recording into one trace.
pub struct ChainRig {
    pub fabric: Arc<nagare::Fabric>,
    /// The switch's management function (what the CPU's MMIO to it reaches).
    pub switch: Arc<Mutex<nagare::Switch>>,
    pub nic: Arc<Mutex<enso_nic::EnsoNic>>,
    /// Clock cycles of the NIC's RTL queue engine (`--model rtl`).
    pub rtl_cycles: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Headers the switch's RTL pipeline ruled on (`--model rtl`).
    pub rtl_headers: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub crypto: Arc<Mutex<Accelerator>>,
    pub ml: Option<Arc<Mutex<Accelerator>>>,
    pub trace: Arc<OpTrace>,
    servers: Vec<(String, vfio_server::ServerHandle)>,
    /// Sockets: switch, NIC, crypto, ML (if any).
    pub sockets: Vec<PathBuf>,
    src: wire::source::SourceHandle<Source>,
    pub key: crypto::Key,
}

impl ChainRig {
    /// Builds and serves the devices for `o` with sockets in `dir`.
    pub fn new(o: &ChainOptions, dir: &Path) -> Result<ChainRig> {
        let key = crypto::stream_key(o.stream);
        let (port, src) = wire::source::source_port(Source {
            items: o.items,
            shape: o.shape,
            stream: o.stream,
            key,
            in_flight: VecDeque::new(),
            report: SourceReport::default(),
            rtts: Vec::new(),
            loss_timeout: Duration::from_secs(10),
        });
        let (nic, rtl_cycles) = run::enso_nic_config(o.model, o.setup.config(), Box::new(port))?;
        let nic = Arc::new(Mutex::new(nic));
        let crypto = Arc::new(Mutex::new(Accelerator::crypto()?));
        let ml = match o.shape {
            Shape::CryptoMl => Some(Arc::new(Mutex::new(Accelerator::ml()?))),
            Shape::Crypto => None,
        };
        let trace = OpTrace::new();
        PciDevice::counters(&*rig::lock(&nic)).trace_to(TraceTap::new(trace.clone(), "nic"));
        rig::lock(&crypto).counters().trace_to(TraceTap::new(trace.clone(), "crypto"));
        if let Some(m) = &ml {
            rig::lock(m).counters().trace_to(TraceTap::new(trace.clone(), "ml"));
        }
        // The switch, with every device behind one of its ports.
        use testbed_regs::accel as acc;
        // With the RTL, both co-simulated parts: the NIC's queue engine and the switch's
        // match-action pipeline.
        let rtl_headers =
            (o.model == run::EngineModel::Rtl).then(|| Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let fabric = rig::nagare_fabric(o.model, rtl_headers.clone())?;
        let nic_port = rig::attach_nic(&fabric, &rig::lock(&nic));
        let crypto_port = rig::attach_accel(&fabric, &rig::lock(&crypto), "crypto", acc::CRYPTO_DEVICE_ID);
        let ml_port = ml.as_ref().map(|m| rig::attach_accel(&fabric, &rig::lock(m), "ml", acc::ML_DEVICE_ID));
        let switch = Arc::new(Mutex::new(nagare::Switch::new(fabric.clone())?));
        let mut sockets = vec![dir.join("nagare.sock"), dir.join("nic.sock"), dir.join("crypto.sock")];
        let serve = rig::spawn_server;
        let mut servers = vec![("nagare".to_string(), serve(switch.clone(), &sockets[0], None)?)];
        servers.push(("nic".into(), serve(nic.clone(), &sockets[1], Some((&fabric, nic_port)))?));
        servers.push(("crypto".into(), serve(crypto.clone(), &sockets[2], Some((&fabric, crypto_port)))?));
        if let (Some(m), Some(port)) = (&ml, ml_port) {
            sockets.push(dir.join("ml.sock"));
            servers.push(("ml".into(), serve(m.clone(), &sockets[3], Some((&fabric, port)))?));
        }
        Ok(ChainRig {
            fabric,
            switch,
            nic,
            rtl_cycles,
            rtl_headers,
            crypto,
            ml,
            trace,
            servers,
            sockets,
            src,
            key,
        })
    }

    /// The sockets of the devices a guest needs for `mode`, in PCI slot order.
    pub fn guest_sockets(&self, mode: Mode) -> Vec<PathBuf> {
        match mode {
            Mode::Cpu => self.sockets[1..].to_vec(),
            _ => self.sockets.clone(),
        }
    }

    /// Starts the source.
    pub fn start(&self) {
        self.trace.clear();
        self.src.start();
    }

    /// Every item sent and answered (or written off).
    pub fn done(&self) -> bool {
        self.src.lock().done()
    }

    /// The source's report.
    pub fn source(&self) -> SourceReport {
        self.src.lock().report()
    }

    /// The devices' own counters (non-zero ones), by device.
    pub fn device_counters(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        let nz = |names: &[&str], vals: &[u64]| -> Value {
            names
                .iter()
                .zip(vals)
                .filter(|(_, v)| **v != 0)
                .map(|(n, v)| ((*n).to_string(), json!(v)))
                .collect()
        };
        let nic = self.nic.lock().unwrap_or_else(|e| e.into_inner()).counters();
        m.insert("nic".into(), nz(&testbed_regs::enso::ext::counter::NAMES, &nic));
        let sw = self.fabric.counters.snapshot();
        m.insert("nagare".into(), nz(&testbed_regs::nagare::reg::counter::NAMES, &sw));
        let names = testbed_regs::accel::reg::counter::NAMES;
        let c = self.crypto.lock().unwrap_or_else(|e| e.into_inner()).device_counters();
        m.insert("crypto".into(), nz(&names, &c));
        if let Some(ml) = &self.ml {
            let c = ml.lock().unwrap_or_else(|e| e.into_inner()).device_counters();
            m.insert("ml".into(), nz(&names, &c));
        }
        m
    }

    /// Stops the servers.
    pub fn stop(self) -> serde_json::Map<String, Value> {
        let mut stats = serde_json::Map::new();
        for (name, s) in self.servers {
            stats.insert(name, serde_json::to_value(s.stats()).unwrap_or(Value::Null));
            s.stop();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        stats
    }
}

/// The per-item figures of one mode (`modes.<mode>` in the JSON report).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ModeReport {
    /// Items the source sent.
    pub items: u64,
    /// Items whose result came back exactly right.
    pub matched: u64,
    /// The logical PCIe operations of one item, in order (the typical item).
    pub trace: Vec<Op>,
    /// Items whose critical path was `trace`'s (some may differ from it in where an
    /// off-path operation fell).
    pub trace_items: usize,
    /// Items cut out of the run's trace.
    pub traced_items: usize,
    /// Critical operations of `trace`.
    pub ops: usize,
    /// Their round trips (½ per write, 1 per read).
    pub rtt_units: f64,
    /// Modeled communication time of one item on the default link (ns).
    pub modeled_ns: f64,
    /// CPU time of the mediating core per item (ns).
    pub cpu_ns_per_item: f64,
    /// Measured round trip of an item at the source, median (µs; emulation speed).
    pub latency_p50_us: f64,
}

/// How [`mode_report`] cuts a run's trace into items and picks the one it shows.
pub const ITEM_RULE: &str = "the run's trace is cut into items at every DMA write of data by the \
NIC (to the host or into a stream) that no switch denied; operations before the first cut are \
set-up and left out. The item shown has the most common critical path: the sequence of critical \
operations most items share (the first one seen wins a tie; `trace_items` of the `traced_items` \
items share it, and the run passes only when that is more than half), represented by the most \
common full trace among the items with that path (the last one seen wins a tie). `ops` counts \
its critical operations, `rtt_units` sums their weights (read_rtt per DMA read, write_rtt per MMIO or DMA write), and `modeled_ns` is \
rtt_units round trips of the default link plus the serialization of the critical bytes plus the \
switch pipeline's delay per critical operation the switch routed";

/// The counting rules every mode's `ops`, `rtt_units` and `trace` follow: the seed's
/// convention, applied to the live trace (`convention` in the JSON report).
pub fn convention() -> Value {
    json!({
        "read_rtt": OpKind::DmaRd.rtt_weight(),
        "write_rtt": OpKind::DmaWr.rtt_weight(),
        "merge": trace::MERGE_RULE,
        "item": format!("{ITEM_RULE}. Critical: {}.", trace::CRITICAL_RULE),
    })
}

/// Cuts `trace` into items (each starts with the NIC writing an image to the host) and
/// summarizes the typical one.
pub fn mode_report(trace: &OpTrace, src: &SourceReport, cpu_ns_per_item: f64) -> ModeReport {
    // An item starts when the NIC writes it, to the host or into a stream.
    let items = trace.items(|o| {
        o.dir.starts_with("nic->") && o.kind == OpKind::DmaWr && o.role == OpRole::Data && !o.denied
    });
    let (typical, n) = trace::typical(&items).unwrap_or_default();
    let switch_ns = nagare::PipelineConfig::default().latency_ns();
    let cost = trace::cost(&typical, &LinkConfig::default(), switch_ns);
    ModeReport {
        items: src.tally.sent,
        matched: src.tally.matched,
        trace: typical,
        trace_items: n,
        traced_items: items.len(),
        ops: cost.ops,
        rtt_units: cost.rtt_units,
        modeled_ns: cost.modeled_ns,
        cpu_ns_per_item,
        latency_p50_us: src.latency_p50_us,
    }
}

/// A mode's run with the driver in this process: what the source and the driver saw.
pub struct NativeRun {
    /// The mode's figures.
    pub mode: ModeReport,
    /// The source's report.
    pub source: SourceReport,
    /// The driver's statistics.
    pub stats: ChainStats,
    /// The devices (still served).
    pub rig: ChainRig,
}

/// Connects to a socket of the rig.
pub fn connect(p: &Path) -> Result<Box<dyn device_access::DeviceAccess>> {
    Ok(Box::new(VfioUserDevice::connect(p).with_context(|| format!("connect {}", p.display()))?))
}

/// The driver side of a native run, set up and ready to run on its own thread.
enum Driver {
    Cpu(guest_apps::chain::Chain),
    Nagare(guest_apps::chain::NagareChain),
}

impl Driver {
    fn setup(rig: &ChainRig, o: &ChainOptions, mode: Mode) -> Result<Driver> {
        let nic = connect(&rig.sockets[1])?;
        let crypto = connect(&rig.sockets[2])?;
        let ml = match o.shape {
            Shape::CryptoMl => Some(connect(&rig.sockets[3])?),
            Shape::Crypto => None,
        };
        let mut params = ChainParams::new(o.shape, rig.key);
        params.device = o.setup.driver_options();
        params.items = Some(o.items);
        params.idle = Some(Duration::from_secs(15));
        let e = |e: guest_apps::chain::ChainError| anyhow::anyhow!("chain setup: {e}");
        Ok(match mode {
            Mode::Cpu => Driver::Cpu(Chain::setup(ChainDevices { nic, crypto, ml }, params).map_err(e)?),
            _ => {
                let sw = connect(&rig.sockets[0])?;
                let flow = guest_apps::chain::Flow::default();
                params.glue = mode == Mode::Glue;
                let c = NagareChain::setup(ChainDevices { nic, crypto, ml }, sw, params, flow);
                Driver::Nagare(c.map_err(e)?)
            }
        })
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<ChainStats, guest_apps::chain::ChainError> {
        match self {
            Driver::Cpu(c) => c.run(stop),
            Driver::Nagare(c) => c.run(stop),
        }
    }
}

/// Runs one mode of the chain (cpu or nagare) with the driver in this process
/// (vfio-user). `during` runs on the calling thread while the items flow (tests use it to
/// push from elsewhere).
pub fn run_native_with(
    o: &ChainOptions,
    mode: Mode,
    dir: &Path,
    mut during: impl FnMut(&ChainRig),
) -> Result<NativeRun> {
    let rig = ChainRig::new(o, dir)?;
    let mut driver = Driver::setup(&rig, o, mode)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::Builder::new().name("chain".into()).spawn(move || driver.run(&s2))?;
    rig.start();
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(20 * o.items);
    while !rig.done() && Instant::now() < deadline {
        during(&rig);
        std::thread::sleep(Duration::from_millis(2));
    }
    // Let the driver see the last item leave, then stop it.
    let settle = Instant::now();
    while !t.is_finished() && settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let stats = t
        .join()
        .map_err(|_| anyhow::anyhow!("the chain thread panicked"))?
        .map_err(|e| anyhow::anyhow!("chain: {e}"))?;
    let source = rig.source();
    let mode = mode_report(&rig.trace, &source, stats.cpu_ns_per_item);
    Ok(NativeRun { mode, source, stats, rig })
}

/// As [`run_native_with`], with nothing to do meanwhile.
pub fn run_native(o: &ChainOptions, mode: Mode, dir: &Path) -> Result<NativeRun> {
    run_native_with(o, mode, dir, |_| {})
}

fn check_mode(report: &mut RunReport, name: &str, o: &ChainOptions, m: &ModeReport, src: &SourceReport) {
    report.check(
        &format!("{name}:all_matched"),
        src.tally.all_matched(o.items) && src.unsolicited == 0,
        src.tally.summary(),
    );
    report.check(
        &format!("{name}:traced"),
        m.traced_items as u64 == o.items && m.trace_items * 2 > m.traced_items,
        format!("{} items traced, {} share the reported trace", m.traced_items, m.trace_items),
    );
}

/// One mode in a guest: boots it with the rig's devices, starts the source when the
/// guest's chain is ready, and checks both sides.
fn run_vm_mode(
    env: &Env,
    opts: &RunOptions,
    o: &ChainOptions,
    mode: Mode,
    dir: &Path,
    report: &mut RunReport,
) -> Result<(ModeReport, SourceReport, ChainRig)> {
    let rig = ChainRig::new(o, dir)?;
    let key: String = rig.key.iter().map(|b| format!("{b:02x}")).collect();
    let spec = VmSpec {
        name: format!("guest-{}", mode.name()),
        accel: env.accel,
        memory_mb: 512,
        vfio_user: rig.guest_sockets(mode),
        scenario: "chain".into(),
        args: vec![
            format!("mode={}", mode.name()),
            format!("chain={}", o.shape.name().replace(',', "+")),
            format!("items={}", o.items),
            format!("key={key}"),
            "idle_ms=5000".into(),
            format!("registers={}", o.setup.registers.name()),
            format!("extensions={}", o.setup.extensions.name()),
        ],
        dir: dir.to_path_buf(),
        net: vec![],
        files: vec![],
    };
    let mut sub = RunReport::native("chain", dir);
    let (ready, console) =
        run::drive_guest(env, &spec, opts.timeout, &mut sub, || rig.start(), || rig.done())?;
    sub.check("guest_ready", ready, "the guest's chain set up its devices");
    report.boot_s = sub.boot_s;
    let sub_guest = report.absorb(mode.name(), sub);
    let cpu = sub_guest["values"]["cpu_ns_per_item"].as_f64().unwrap_or(0.0);
    let mut guest = report.guest.as_object().cloned().unwrap_or_default();
    guest.insert(mode.name().into(), sub_guest);
    report.guest = Value::Object(guest);
    let src = rig.source();
    let m = mode_report(&rig.trace, &src, cpu);
    if opts.console {
        eprintln!(
            "----- guest console ({}) -----\n{}",
            mode.name(),
            std::fs::read_to_string(&console).unwrap_or_default()
        );
    }
    Ok((m, src, rig))
}

/// `testbed run chain`: the chain's devices behind the switch, served to a guest (or a
/// native driver) running the `chain` app in each mode asked for; the source checks
/// every result of every mode.
pub fn run(env: Option<&Env>, opts: &RunOptions, o: &ChainOptions) -> Result<RunReport> {
    let started = Instant::now();
    let dir = run::private_dir("chain")?;
    let mut report = match (o.transport, env) {
        (Transport::Vm, Some(env)) => RunReport::new("chain", env, &dir),
        (Transport::Vm, None) => anyhow::bail!("the VM transport needs a provisioned environment"),
        (Transport::Native, _) => RunReport::native("chain", &dir),
    };
    if o.setup.extensions == run::DriverExtensions::None && o.mode.runs().iter().any(|m| *m != Mode::Cpu) {
        anyhow::bail!("--extensions none runs the chain in CPU mode only: the switch modes use the NIC's stream extension");
    }
    let _lock = match o.transport {
        Transport::Vm => Some(VmLock::acquire()?),
        Transport::Native => None,
    };
    let mut modes = serde_json::Map::new();
    let mut sources = serde_json::Map::new();
    let mut devices = serde_json::Map::new();
    let mut servers = serde_json::Map::new();
    for mode in o.mode.runs() {
        let sub = dir.join(mode.name());
        std::fs::create_dir_all(&sub)?;
        let (m, src, rig) = match (o.transport, env) {
            (Transport::Vm, Some(env)) => run_vm_mode(env, opts, o, mode, &sub, &mut report)?,
            _ => {
                let r = run_native(o, mode, &sub)?;
                let mut guest = report.guest.as_object().cloned().unwrap_or_default();
                guest.insert(
                    mode.name().into(),
                    json!({"transport": "vfio-user", "stats": format!("{:?}", r.stats)}),
                );
                report.guest = Value::Object(guest);
                (r.mode, r.source, r.rig)
            }
        };
        check_mode(&mut report, mode.name(), o, &m, &src);
        if let Some(cycles) = &rig.rtl_cycles {
            let n = cycles.load(std::sync::atomic::Ordering::Relaxed);
            report.check(
                &format!("{}:rtl_clocked", mode.name()),
                n > 0,
                format!("the NIC's RTL queue engine ran {n} clock cycles"),
            );
        }
        if let Some(h) = &rig.rtl_headers {
            let n = h.load(std::sync::atomic::Ordering::Relaxed);
            report.check(
                &format!("{}:rtl_pipeline", mode.name()),
                n > 0,
                format!("the switch's RTL pipeline ruled on {n} TLP headers"),
            );
        }
        let mut counters = rig.device_counters();
        // Always reported (the counters above leave out zeros).
        let n = rig
            .nic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counter(testbed_regs::enso::ext::counter::EXTENSION_ACCESSES);
        if let Some(Value::Object(nic)) = counters.get_mut("nic") {
            nic.insert("extension_accesses".into(), json!(n));
        }
        if o.setup.extensions == run::DriverExtensions::None {
            report.check(
                &format!("{}:nic:extension_accesses", mode.name()),
                n == 0,
                format!("{n} accesses to the NIC's BAR0 ({}; card mode makes none)", o.setup.describe()),
            );
        }
        devices.insert(mode.name().into(), Value::Object(counters));
        servers.insert(mode.name().into(), Value::Object(rig.stop()));
        sources.insert(mode.name().into(), serde_json::to_value(&src)?);
        modes.insert(mode.name().into(), serde_json::to_value(&m)?);
    }
    report.devices = devices;
    report.servers = servers;
    report.traffic = Value::Object(sources);
    report.modes = Value::Object(modes);
    report.convention = convention();
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// The trace of a mode as a table, Table 2 style.
pub fn render_trace(mode: &str, m: &ModeReport) -> String {
    let mut s = format!(
        "  {mode}: {} critical operations, {} PCIe RTT, modeled {:.0} ns per item\n",
        m.ops, m.rtt_units, m.modeled_ns
    );
    for o in &m.trace {
        let rtt = if o.rtt_weight == 1.0 { "1" } else { "1/2" };
        let kind =
            serde_json::to_value(o.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let role =
            serde_json::to_value(o.role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let via = if o.switched { ", routed by the switch" } else { "" };
        if o.denied {
            s += &format!(
                "    {:<16} {:<8} {:<11} {:>6} B  (denied by the switch)\n",
                o.dir, kind, role, o.bytes
            );
        } else if o.critical {
            s += &format!("    {:<16} {:<8} {:<11} {:>6} B  {rtt} RTT{via}\n", o.dir, kind, role, o.bytes);
        } else {
            s += &format!(
                "    {:<16} {:<8} {:<11} {:>6} B  (off the critical path)\n",
                o.dir, kind, role, o.bytes
            );
        }
    }
    s
}
