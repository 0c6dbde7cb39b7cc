//! The seed's applications (Table 1) as scenarios and a benchmark: each app's traffic comes
//! from a source on the NIC's Ethernet port (driven by the NIC's polling thread), which
//! checks every reply the app sends back.
//!
//! | app | traffic | the source checks |
//! |---|---|---|
//! | maglev | UDP flows to the VIP | each frame comes back aimed at a backend, the same one for every frame of a flow, payload intact |
//! | nitrosketch | Zipf-distributed flows | each frame comes back unchanged; the app's heavy hitters are the true top flows, estimated within 10 % |
//! | mica | GET/SET over UDP, Zipf keys | each reply answers its request; a GET returns the latest value SET before it, or a miss |
//! | logmon | a log stream cut into pieces at arbitrary bytes | the acknowledged counts equal the lines and matches in the stream |

use crate::bench::Spread;
use crate::report::Tally;
use crate::scenarios::run::{self, Env, NicKind, NicUnderTest, RunOptions, RunReport, VmLock};
use crate::vm::VmSpec;
use anyhow::{Context, Result};
use device_access::vfio_user::VfioUserDevice;
use guest_apps::netapp::{self, IoLimits, IoStats, NetApp, Progress};
use netapps::frame::{self, FiveTuple, Zipf};
use netapps::mica;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::Frame;

pub use crate::scenarios::run::Transport;

/// Parameters of one app run.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// The app (see `guest_apps::netapp::NAMES`).
    pub name: String,
    /// The NIC.
    pub nic: NicKind,
    /// Frames the source sends.
    pub frames: u64,
    /// Frames in flight at most.
    pub window: usize,
}

/// What the source saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceReport {
    /// Requests and replies (a reply matches when it passes the app's check).
    #[serde(flatten)]
    pub tally: Tally,
    /// Frames per second from the first send to the last reply (Mfps).
    pub mfps: f64,
    /// App-specific findings (backend spread, GET misses, expected counts, ...).
    pub app: Value,
}

/// An app's traffic and its checks.
trait Traffic: Send {
    /// The frame for request `seq`.
    fn frame(&mut self, seq: u64) -> Frame;
    /// Checks the reply to request `seq`.
    fn check(&mut self, seq: u64, reply: &[u8]) -> Result<(), String>;
    /// App-specific findings so far.
    fn summary(&self) -> Value;
}

fn udp(src: u32, sport: u16, dst: u32, dport: u16) -> FiveTuple {
    FiveTuple { src_ip: src, dst_ip: dst, src_port: sport, dst_port: dport, proto: 17 }
}

const VIP: u32 = 0x0a01_0001;

/// Maglev: 1024 flows to the VIP.
struct MaglevTraffic {
    sent: HashMap<u64, Frame>,
    backend_of: HashMap<FiveTuple, u32>,
    per_backend: HashMap<u32, u64>,
}

impl Traffic for MaglevTraffic {
    fn frame(&mut self, seq: u64) -> Frame {
        let flow = (seq * 7919) % 1024;
        let t = udp(0x0a00_0000 + flow as u32, 1024 + (flow % 7) as u16, VIP, 80);
        let f = frame::udp_frame(&t, &seq.to_le_bytes());
        self.sent.insert(seq, f.clone());
        f
    }

    fn check(&mut self, seq: u64, r: &[u8]) -> Result<(), String> {
        let sent = self.sent.remove(&seq).ok_or("no such request")?;
        let (t, rt) =
            (FiveTuple::parse(&sent).ok_or("bad request")?, FiveTuple::parse(r).ok_or("not IPv4/UDP")?);
        let backends = 0x0a02_0000..0x0a02_0000 + netapp::MAGLEV_BACKENDS as u32;
        if !backends.contains(&rt.dst_ip) {
            return Err(format!("sent to {:#x}, not a backend", rt.dst_ip));
        }
        if r[frame::L4..] != sent[frame::L4..] || testbed_regs::inet::checksum(&r[14..34]) != 0 {
            return Err("payload or checksum changed".into());
        }
        let b = *self.backend_of.entry(t).or_insert(rt.dst_ip);
        if b != rt.dst_ip {
            return Err(format!("flow moved from backend {b:#x} to {:#x}", rt.dst_ip));
        }
        *self.per_backend.entry(rt.dst_ip).or_default() += 1;
        Ok(())
    }

    fn summary(&self) -> Value {
        let (min, max) = (self.per_backend.values().min(), self.per_backend.values().max());
        json!({"flows": self.backend_of.len(), "backends_used": self.per_backend.len(), "min_per_backend": min, "max_per_backend": max})
    }
}

/// NitroSketch: Zipf(1.1) over 10 000 flows.
struct NitroTraffic {
    zipf: Zipf,
    sent: HashMap<u64, Frame>,
    exact: HashMap<u32, u64>,
}

impl Traffic for NitroTraffic {
    fn frame(&mut self, seq: u64) -> Frame {
        let flow = self.zipf.next_rank() as u32;
        *self.exact.entry(flow).or_default() += 1;
        let f = frame::udp_frame(&udp(0x0a00_0000 + flow, 2000, VIP, 9000), &seq.to_le_bytes());
        self.sent.insert(seq, f.clone());
        f
    }

    fn check(&mut self, seq: u64, r: &[u8]) -> Result<(), String> {
        let sent = self.sent.remove(&seq).ok_or("no such request")?;
        (sent == r).then_some(()).ok_or_else(|| "the frame came back changed".into())
    }

    fn summary(&self) -> Value {
        let mut top: Vec<(u32, u64)> = self.exact.iter().map(|(f, n)| (*f, *n)).collect();
        top.sort_by_key(|&(f, n)| (std::cmp::Reverse(n), f));
        top.truncate(10);
        let top: Vec<Value> =
            top.iter().map(|(f, n)| json!({"src_ip": 0x0a00_0000 + f, "count": n})).collect();
        json!({"top10": top})
    }
}

/// A MICA request in flight: a SET, or a GET with the latest value SET before it (None:
/// the key was never SET).
enum MicaReq {
    Set,
    Get(Option<Vec<u8>>),
}

/// MICA: 25 % SET, 75 % GET over 10 000 Zipf(0.99) keys.
struct MicaTraffic {
    zipf: Zipf,
    /// Per request: its key and what it was.
    pending: HashMap<u64, (Vec<u8>, MicaReq)>,
    latest: HashMap<Vec<u8>, Vec<u8>>,
    gets: u64,
    /// GETs of keys never SET (a miss is the only right answer).
    unset: u64,
    /// GETs of keys that were SET but missed (the lossy index or log dropped them).
    lost: u64,
}

impl Traffic for MicaTraffic {
    fn frame(&mut self, seq: u64) -> Frame {
        let key = format!("key-{}", self.zipf.next_rank()).into_bytes();
        let mut p = Vec::new();
        if seq.is_multiple_of(4) {
            let value = format!("value-{seq}-{}", "v".repeat((seq % 90) as usize)).into_bytes();
            mica::encode(mica::OP_SET, 0, seq, &key, &value, &mut p);
            self.latest.insert(key.clone(), value);
            self.pending.insert(seq, (key, MicaReq::Set));
        } else {
            mica::encode(mica::OP_GET, 0, seq, &key, &[], &mut p);
            let want = self.latest.get(&key).cloned();
            self.pending.insert(seq, (key, MicaReq::Get(want)));
        }
        frame::udp_frame(&udp(0x0a00_0002, 3000, VIP, 11211), &p)
    }

    fn check(&mut self, seq: u64, r: &[u8]) -> Result<(), String> {
        let (key, want) = self.pending.remove(&seq).ok_or("no such request")?;
        let p = r.get(frame::L4 + 8..).ok_or("short reply")?;
        let status = *p.get(1).ok_or("short reply")?;
        let got = mica::Request::parse(p).ok_or("malformed reply")?;
        if got.id != seq || got.key != key {
            return Err(format!(
                "reply {} for key {:?} answers request {seq}",
                got.id,
                String::from_utf8_lossy(got.key)
            ));
        }
        match want {
            MicaReq::Set if status == mica::OK && got.op == mica::OP_SET => Ok(()),
            MicaReq::Get(w) if got.op == mica::OP_GET => {
                self.gets += 1;
                match (status, w) {
                    (mica::MISS, None) => {
                        self.unset += 1;
                        Ok(())
                    }
                    (mica::MISS, Some(_)) => {
                        self.lost += 1;
                        Ok(())
                    }
                    (mica::OK, Some(v)) if v == got.value => Ok(()),
                    (s, w) => Err(format!(
                        "GET {seq}: status {s}, value {:?}, latest {:?}",
                        got.value.len(),
                        w.map(|v| v.len())
                    )),
                }
            }
            _ => Err(format!("request {seq}: unexpected reply status {status}")),
        }
    }

    fn summary(&self) -> Value {
        json!({"gets": self.gets, "misses_never_set": self.unset, "misses_lost": self.lost})
    }
}

/// The log monitor: a log stream cut into 700–1200-byte pieces at arbitrary bytes.
struct LogTraffic {
    stream: Vec<u8>,
    /// Each line's end offset in `stream` and which patterns it matches.
    index: Vec<(usize, Vec<bool>)>,
    pos: usize,
    next_line: usize,
    lines: u64,
    matches: Vec<u64>,
    /// Per request: (lines, matches) complete once the app has its bytes.
    pending: HashMap<u64, (u64, Vec<u64>)>,
    acked: (u64, Vec<u64>),
}

impl LogTraffic {
    fn new() -> LogTraffic {
        let res: Vec<regex::bytes::Regex> = netapp::LOG_PATTERNS
            .iter()
            .map(|p| regex::bytes::Regex::new(p).expect("valid pattern"))
            .collect();
        let (mut stream, mut index) = (Vec::new(), Vec::new());
        for i in 0..100_000usize {
            let line = match i % 7 {
                0 => format!("{i} ERROR disk full on /dev/sd{}", i % 3),
                1 => format!("{i} INFO user={} login failed", i % 100),
                2 => format!("{i} INFO request done latency_ms={}", (i * 37) % 1200),
                _ => format!("{i} DEBUG nothing to see {}", ".".repeat(i % 40)),
            };
            let m: Vec<bool> = res.iter().map(|r| r.is_match(line.as_bytes())).collect();
            stream.extend_from_slice(line.as_bytes());
            stream.push(b'\n');
            index.push((stream.len(), m));
        }
        let n = res.len();
        LogTraffic {
            stream,
            index,
            pos: 0,
            next_line: 0,
            lines: 0,
            matches: vec![0; n],
            pending: HashMap::new(),
            acked: (0, vec![0; n]),
        }
    }
}

impl Traffic for LogTraffic {
    fn frame(&mut self, seq: u64) -> Frame {
        let len = 700 + (seq as usize * 131) % 500;
        let start = self.pos;
        let end = (start + len).min(self.stream.len());
        // Lines that end inside this piece are complete once the app has it.
        while let Some((e, m)) = self.index.get(self.next_line).filter(|(e, _)| *e <= end) {
            let _ = e;
            self.lines += 1;
            for (k, hit) in m.iter().enumerate() {
                self.matches[k] += *hit as u64;
            }
            self.next_line += 1;
        }
        if end == self.stream.len() {
            // The stream starts over (it ends on a line boundary).
            self.pos = 0;
            self.next_line = 0;
        } else {
            self.pos = end;
        }
        self.pending.insert(seq, (self.lines, self.matches.clone()));
        frame::udp_frame(&udp(0x0a00_0003, 514, VIP, 514), &self.stream[start..end])
    }

    fn check(&mut self, seq: u64, r: &[u8]) -> Result<(), String> {
        let (lines, matches) = self.pending.remove(&seq).ok_or("no such request")?;
        let p = r.get(frame::L4 + 8..).ok_or("short ack")?;
        let words: Vec<u64> =
            p.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        if words.first() != Some(&lines) || words[1..] != matches[..] {
            return Err(format!("ack {seq}: {words:?}, expected {lines} lines and {matches:?}"));
        }
        self.acked = (lines, matches);
        Ok(())
    }

    fn summary(&self) -> Value {
        json!({"lines": self.acked.0, "matches": self.acked.1})
    }
}

fn traffic(name: &str) -> Option<Box<dyn Traffic>> {
    Some(match name {
        "maglev" => Box::new(MaglevTraffic {
            sent: HashMap::new(),
            backend_of: HashMap::new(),
            per_backend: HashMap::new(),
        }),
        "nitrosketch" => Box::new(NitroTraffic {
            zipf: Zipf::new(10_000, 1.1, 42),
            sent: HashMap::new(),
            exact: HashMap::new(),
        }),
        "mica" => Box::new(MicaTraffic {
            zipf: Zipf::new(10_000, 0.99, 7),
            pending: HashMap::new(),
            latest: HashMap::new(),
            gets: 0,
            unset: 0,
            lost: 0,
        }),
        "logmon" => Box::new(LogTraffic::new()),
        _ => return None,
    })
}

struct Source {
    traffic: Box<dyn Traffic>,
    frames: u64,
    window: usize,
    in_flight: VecDeque<(u64, Instant)>,
    report: SourceReport,
    first: Option<Instant>,
    last: Instant,
    loss_timeout: Duration,
}

impl wire::source::Source for Source {
    fn step(&mut self, to_nic: &mut VecDeque<Frame>) {
        let tally = &mut self.report.tally;
        tally.expire(&mut self.in_flight, self.loss_timeout);
        let now = Instant::now();
        while self.in_flight.len() < self.window && tally.sent < self.frames {
            to_nic.push_back(self.traffic.frame(tally.sent));
            self.in_flight.push_back((tally.sent, now));
            self.first.get_or_insert(now);
            tally.sent += 1;
        }
    }

    fn check(&mut self, f: &[u8]) {
        self.report.tally.received += 1;
        // The app answers in order (one queue): the reply is for the oldest request.
        let Some((seq, _)) = self.in_flight.pop_front() else {
            return self.report.tally.mismatch("a reply with nothing in flight");
        };
        match self.traffic.check(seq, f) {
            Ok(()) => self.report.tally.matched += 1,
            Err(e) => self.report.tally.mismatch(e),
        }
        self.last = Instant::now();
    }
}

impl Source {
    fn done(&self) -> bool {
        self.report.tally.sent == self.frames && self.in_flight.is_empty()
    }

    fn report(&self) -> SourceReport {
        let mut r = self.report.clone();
        let t = self.first.map_or(0.0, |f| (self.last - f).as_secs_f64());
        r.mfps = if t > 0.0 { r.tally.matched as f64 / t / 1e6 } else { 0.0 };
        r.app = self.traffic.summary();
        r
    }
}

/// A NIC serving one app run, with its source.
pub struct AppRig {
    pub nic: NicUnderTest,
    server: vfio_server::ServerHandle,
    pub socket: std::path::PathBuf,
    src: wire::source::SourceHandle<Source>,
}

impl AppRig {
    /// The NIC of `o.nic`, served on a socket in `dir`, its port the app's source.
    pub fn new(o: &AppOptions, dir: &std::path::Path) -> Result<AppRig> {
        let traffic = traffic(&o.name).with_context(|| format!("unknown app '{}'", o.name))?;
        let (port, src) = wire::source::source_port(Source {
            traffic,
            frames: o.frames,
            window: o.window.max(1),
            in_flight: VecDeque::new(),
            report: SourceReport::default(),
            first: None,
            last: Instant::now(),
            loss_timeout: Duration::from_secs(10),
        });
        let nic = NicUnderTest::new(o.nic, Box::new(port))?;
        let socket = dir.join(format!("{}-{}.sock", o.name, o.nic.name()));
        let server = vfio_server::Server::bind(&socket, nic.device.clone())?.spawn();
        Ok(AppRig { nic, server, socket, src })
    }

    /// Starts the traffic.
    pub fn start(&self) {
        self.src.start();
    }

    /// All frames answered (or written off).
    pub fn done(&self) -> bool {
        self.src.lock().done()
    }

    /// The source's report.
    pub fn source(&self) -> SourceReport {
        self.src.lock().report()
    }

    /// Stops the server.
    pub fn stop(self) {
        self.server.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One native run: the source's report, the wrapper's statistics, the app's findings.
pub struct NativeApp {
    pub source: SourceReport,
    pub io: IoStats,
    pub app: serde_json::Map<String, Value>,
    pub nic_counters: Vec<(&'static str, u64)>,
}

/// Runs app `o.name` with its driver in this process (vfio-user).
pub fn run_native(o: &AppOptions, dir: &std::path::Path) -> Result<NativeApp> {
    let rig = AppRig::new(o, dir)?;
    let access = VfioUserDevice::connect(&rig.socket).context("connect to the NIC")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, name, nic) = (stop.clone(), o.name.clone(), o.nic);
    let progress: Progress = Arc::default();
    let p2 = progress.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let driver = std::thread::Builder::new().name(format!("app-{name}")).spawn(move || {
        let mut app = NetApp::by_name(&name)?;
        let limits = IoLimits { frames: None, idle: None, start_timeout: None };
        let ready = move || {
            let _ = ready_tx.send(());
        };
        let serve = netapp::Serve { limits, stop: &s2, progress: Some(&p2) };
        let io = netapp::serve_on(nic.name(), Box::new(access), &mut app, serve, ready)?;
        Ok::<_, String>((io, app.values()))
    })?;
    let ready = ready_rx.recv_timeout(Duration::from_secs(30)).is_ok();
    if ready {
        rig.start();
        // Until every frame is answered, the app thread stops early (an error), or no
        // reply has come for 30 s: a loaded machine may take long, but keeps answering.
        let (mut seen, mut last_progress) = (0u64, Instant::now());
        while !rig.done() && !driver.is_finished() && last_progress.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
            let received = rig.src.lock().report.tally.received;
            if received != seen {
                (seen, last_progress) = (received, Instant::now());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (io, app) = driver
        .join()
        .map_err(|_| anyhow::anyhow!("the app thread panicked"))?
        .map_err(|e| anyhow::anyhow!("{}: {e}", o.name))?;
    anyhow::ensure!(ready, "the app never set up its NIC");
    let source = rig.source();
    let nic_counters = rig.nic.counters();
    rig.stop();
    Ok(NativeApp { source, io, app, nic_counters })
}

/// The checks every run makes, from the source and the app's findings.
pub fn check(
    name: &str,
    frames: u64,
    src: &SourceReport,
    app: &serde_json::Map<String, Value>,
) -> Vec<(String, bool, String)> {
    let mut c = vec![("all_matched".to_string(), src.tally.all_matched(frames), src.tally.summary())];
    match name {
        "maglev" => {
            let used = src.app["backends_used"].as_u64().unwrap_or(0);
            c.push(("spread".into(), used == netapp::MAGLEV_BACKENDS as u64, format!("{}", src.app)));
        }
        "nitrosketch" => {
            // The app's top 10 against the source's exact top 10.
            let exact: Vec<(u64, u64)> = src.app["top10"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| (v["src_ip"].as_u64().unwrap_or(0), v["count"].as_u64().unwrap_or(0)))
                .collect();
            let est: HashMap<u64, f64> = app
                .get("heavy_hitters")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .map(|v| (v["src_ip"].as_u64().unwrap_or(0), v["estimate"].as_f64().unwrap_or(0.0)))
                .collect();
            let found = exact.iter().filter(|(ip, _)| est.contains_key(ip)).count();
            // Within 10 %, or within 4 standard deviations of the sampling error
            // (count × (1 − p) / p) for small counts.
            let p = 0.1;
            let close = exact
                .iter()
                .filter(|(ip, n)| {
                    let x = *n as f64;
                    let tol = (0.1 * x).max(4.0 * (x * (1.0 - p) / p).sqrt());
                    est.get(ip).is_some_and(|e| (e - x).abs() <= tol)
                })
                .count();
            c.push((
                "heavy_hitters".into(),
                found >= 8 && close >= 8,
                format!("{found} of the true top 10 reported, {close} within max(10 %, 4σ of sampling)"),
            ));
        }
        "mica" => {
            // Every reply was already checked (latest value or a miss); the lossy index
            // may lose items, but with this load and capacity few.
            let n = |k: &str| src.app[k].as_u64().unwrap_or(0);
            let (gets, unset, lost) = (n("gets"), n("misses_never_set"), n("misses_lost"));
            c.push((
                "hits".into(),
                gets > unset && lost * 100 <= gets - unset,
                format!("{gets} GETs: {unset} of keys never SET, {lost} of SET keys lost by the index"),
            ));
        }
        "logmon" => {
            let lines = src.app["lines"].as_u64().unwrap_or(0);
            c.push((
                "lines".into(),
                lines > 0 && app.get("lines").and_then(|v| v.as_u64()) == Some(lines),
                format!("{} acknowledged, app {}", lines, app.get("lines").cloned().unwrap_or_default()),
            ));
        }
        _ => {}
    }
    c
}

/// `testbed run app`: one app on one NIC, in a guest (or natively); every reply checked.
pub fn run(env: Option<&Env>, opts: &RunOptions, o: &AppOptions, transport: Transport) -> Result<RunReport> {
    let started = Instant::now();
    let dir = run::private_dir("app")?;
    let (mut report, src, app) = match (transport, env) {
        (Transport::Native, _) => {
            let mut report = RunReport::native("app", &dir);
            let r = run_native(o, &dir)?;
            report.guest = json!({"transport": "vfio-user", "values": r.app, "frames": r.io.frames});
            report.devices.insert(
                o.nic.name().into(),
                r.nic_counters
                    .iter()
                    .filter(|(_, v)| *v != 0)
                    .map(|(n, v)| ((*n).to_string(), json!(v)))
                    .collect(),
            );
            (report, r.source, r.app)
        }
        (Transport::Vm, None) => anyhow::bail!("the VM transport needs a provisioned environment"),
        (Transport::Vm, Some(env)) => {
            let _lock = VmLock::acquire()?;
            let mut report = RunReport::new("app", env, &dir);
            let rig = AppRig::new(o, &dir)?;
            let spec = VmSpec {
                name: "guest".into(),
                accel: env.accel,
                memory_mb: 512,
                vfio_user: vec![rig.socket.clone()],
                scenario: "app".into(),
                args: vec![
                    format!("name={}", o.name),
                    format!("nic={}", o.nic.name()),
                    "idle_ms=3000".into(),
                ],
                dir: dir.clone(),
                net: vec![],
                files: vec![],
            };
            let (ready, _) =
                run::drive_guest(env, &spec, opts.timeout, &mut report, || rig.start(), || rig.done())?;
            report.check("guest_ready", ready, "the guest's app set up its NIC");
            let app = report.guest["values"].as_object().cloned().unwrap_or_default();
            let src = rig.source();
            report.devices.insert(
                o.nic.name().into(),
                rig.nic
                    .counters()
                    .iter()
                    .filter(|(_, v)| *v != 0)
                    .map(|(n, v)| ((*n).to_string(), json!(v)))
                    .collect(),
            );
            rig.stop();
            (report, src, app)
        }
    };
    for (name, pass, detail) in check(&o.name, o.frames, &src, &app) {
        report.check(&format!("{}:{name}", o.name), pass, detail);
    }
    report.traffic = serde_json::to_value(&src)?;
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// One run of one app on one NIC in `testbed bench apps`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchRun {
    /// The round (0-based): each round runs every app on both NICs.
    pub round: usize,
    /// The NIC's place in the app's pair this round (0 = first); the NIC order reverses
    /// every other round.
    pub position: usize,
    pub mfps: f64,
    pub busy_ns_per_frame: f64,
    pub correct: bool,
    /// Why the run failed (then its figures are zero and left out of the statistics).
    pub error: Option<String>,
}

/// The spread over a row's runs of its wall-clock figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchRowSpread {
    pub mfps: Spread,
    pub busy_ns_per_frame: Spread,
}

/// One row of `testbed bench apps`: one app on one NIC, medians over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub app: String,
    pub nic: String,
    /// Frames per second the source measured, closed loop (millions).
    pub mfps: f64,
    /// The app thread's busy time per frame (ns): the per-frame cost of the app plus its
    /// I/O wrapper.
    pub busy_ns_per_frame: f64,
    /// Every run completed and passed every check.
    pub correct: bool,
    /// Median and spread (min, max) of each figure over the runs.
    pub spread: BenchRowSpread,
    pub runs: Vec<BenchRun>,
}

/// The spread of a Table 1 line's ratios, taken round by round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchRatioSpread {
    pub throughput_ratio: Spread,
    pub cost_ratio: Spread,
}

/// A Table 1 line: one app on both NICs.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRatio {
    pub app: String,
    /// Ensō / packetized throughput (ratio of the medians).
    pub throughput_ratio: f64,
    /// Packetized / Ensō busy time per frame (how much cheaper Ensō's I/O makes a frame;
    /// ratio of the medians).
    pub cost_ratio: f64,
    /// The same ratios round by round (both NICs run the app once per round): median and
    /// spread (min, max).
    pub spread: BenchRatioSpread,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub frames: u64,
    pub window: usize,
    /// Rounds: runs per app and NIC.
    pub runs: usize,
    /// The runs that failed (each also in its row's `runs[]`, with `error`).
    pub failures: Vec<String>,
    pub results: Vec<BenchRow>,
    pub ratios: Vec<BenchRatio>,
}

impl BenchReport {
    /// What went wrong, if anything: failed runs, or rows whose checks failed.
    pub fn failure(&self) -> Option<String> {
        let wrong: Vec<String> = self
            .results
            .iter()
            .filter(|x| !x.correct && x.runs.iter().all(|r| r.error.is_none()))
            .map(|x| format!("{} on {}: a check failed", x.app, x.nic))
            .collect();
        let all: Vec<String> = self.failures.iter().cloned().chain(wrong).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

/// `testbed bench apps`: every app on both NICs, natively, `runs` rounds. Each round runs
/// every app on both NICs, one right after the other, the NIC order reversing every other
/// round (so neither NIC always goes first). A failed run is recorded and the benchmark
/// goes on.
pub fn bench(frames: u64, window: usize, runs: usize) -> Result<BenchReport> {
    anyhow::ensure!(frames >= 1 && window >= 1 && runs >= 1, "frames, window and runs must be at least 1");
    let dir = run::private_dir("bench-apps")?;
    let nics = [NicKind::Enso, NicKind::Packetized];
    // rows[app][nic]
    let mut rows: Vec<[Vec<BenchRun>; 2]> = netapp::NAMES.iter().map(|_| Default::default()).collect();
    let mut failures = Vec::new();
    for round in 0..runs {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (a, name) in netapp::NAMES.iter().enumerate() {
            for (position, &k) in order.iter().enumerate() {
                let nic = nics[k];
                let o = AppOptions { name: (*name).into(), nic, frames, window };
                eprintln!("[testbed] bench apps: round {}/{runs}: {name} on {}", round + 1, nic.name());
                let run = match run_native(&o, &dir) {
                    Ok(r) => BenchRun {
                        round,
                        position,
                        mfps: r.source.mfps,
                        busy_ns_per_frame: r.io.busy.as_nanos() as f64 / r.io.frames.max(1) as f64,
                        correct: check(name, frames, &r.source, &r.app).iter().all(|c| c.1),
                        error: None,
                    },
                    Err(e) => {
                        let what = format!("{name} on {} round {}: {e:#}", nic.name(), round + 1);
                        eprintln!("[testbed] bench apps: {what}");
                        failures.push(what);
                        BenchRun { round, position, error: Some(format!("{e:#}")), ..Default::default() }
                    }
                };
                rows[a][k].push(run);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for (a, name) in netapp::NAMES.iter().enumerate() {
        let [enso, packetized] = std::mem::take(&mut rows[a]);
        // Per round, the figure of a run that completed.
        let per_round = |runs: &[BenchRun], f: fn(&BenchRun) -> f64| -> Vec<Option<f64>> {
            runs.iter().map(|r| r.error.is_none().then(|| f(r))).collect()
        };
        let mut pair = Vec::new();
        for (nic, runs) in nics.iter().zip([enso, packetized]) {
            let ok = |f: fn(&BenchRun) -> f64| per_round(&runs, f).into_iter().flatten().collect::<Vec<_>>();
            let spread = BenchRowSpread {
                mfps: Spread::of(&ok(|r| r.mfps)),
                busy_ns_per_frame: Spread::of(&ok(|r| r.busy_ns_per_frame)),
            };
            pair.push(BenchRow {
                app: (*name).into(),
                nic: nic.name().into(),
                mfps: spread.mfps.median,
                busy_ns_per_frame: spread.busy_ns_per_frame.median,
                correct: runs.iter().all(|r| r.correct && r.error.is_none()),
                spread,
                runs,
            });
        }
        let (e, p) = (&pair[0], &pair[1]);
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        ratios.push(BenchRatio {
            app: (*name).into(),
            throughput_ratio: div(e.mfps, p.mfps),
            cost_ratio: div(p.busy_ns_per_frame, e.busy_ns_per_frame),
            spread: BenchRatioSpread {
                throughput_ratio: Spread::of_ratios(
                    &per_round(&e.runs, |r| r.mfps),
                    &per_round(&p.runs, |r| r.mfps),
                ),
                cost_ratio: Spread::of_ratios(
                    &per_round(&p.runs, |r| r.busy_ns_per_frame),
                    &per_round(&e.runs, |r| r.busy_ns_per_frame),
                ),
            },
        });
        results.extend(pair);
    }
    Ok(BenchReport { frames, window, runs, failures, results, ratios })
}

/// The benchmark as a table shaped like the seed's Table 1: medians, and each figure's
/// spread (min–max) over the runs.
pub fn render_bench(r: &BenchReport) -> String {
    let mut s = format!(
        "apps: {} frames each, window {}, native transport, one app core; median [min–max] of {} runs\n",
        r.frames, r.window, r.runs
    );
    s += &format!(
        "  {:<12} | {:<22} | {:<22} | {:<19} | {:<19} | {:<19} | {:<19} | correct\n",
        "app", "Ensō Mfps", "packetized Mfps", "ratio", "Ensō ns/frame", "packetized ns/frame", "cost ratio"
    );
    for ratio in &r.ratios {
        let row = |nic: &str| r.results.iter().find(|x| x.app == ratio.app && x.nic == nic);
        let (Some(e), Some(p)) = (row("enso"), row("packetized")) else { continue };
        // The ratio columns: the ratio of the medians, then the per-round spread.
        let ratio_col =
            |of_medians: f64, sp: &Spread| format!("{of_medians:.2} [{:.2}–{:.2}]", sp.min, sp.max);
        s += &format!(
            "  {:<12} | {:<22} | {:<22} | {:<19} | {:<19} | {:<19} | {:<19} | {}\n",
            ratio.app,
            e.spread.mfps.show(3),
            p.spread.mfps.show(3),
            ratio_col(ratio.throughput_ratio, &ratio.spread.throughput_ratio),
            e.spread.busy_ns_per_frame.show(0),
            p.spread.busy_ns_per_frame.show(0),
            ratio_col(ratio.cost_ratio, &ratio.spread.cost_ratio),
            if e.correct && p.correct { "yes" } else { "NO" }
        );
    }
    s += "  (ratio columns: the ratio of the medians [min–max of the ratios round by round])\n";
    if let Some(f) = r.failure() {
        s += &format!("  FAIL: {f}\n");
    }
    s
}

/// The benchmark as an SVG bar chart: median Mfps per app, Ensō and packetized side by
/// side, a whisker from the runs' min to max on each bar, the ratio above each pair.
pub fn plot_bench(r: &BenchReport) -> String {
    use testbed_plots::{render_bars, Bar, BarChart, BarGroup};
    let groups = r
        .ratios
        .iter()
        .map(|ratio| BarGroup {
            label: ratio.app.clone(),
            bars: ["enso", "packetized"]
                .iter()
                .map(|nic| {
                    let row = r.results.iter().find(|x| x.app == ratio.app && x.nic == *nic);
                    let sp = row.map_or(Spread::default(), |x| x.spread.mfps);
                    Bar { value: row.map_or(0.0, |x| x.mfps), min: sp.min, max: sp.max }
                })
                .collect(),
            note: format!("×{:.2}", ratio.throughput_ratio),
        })
        .collect();
    render_bars(&BarChart {
        title: "The seed's applications, one core: Ensō vs packetized (Mfps, native)".into(),
        y_label: "Mfps (median; whisker: min–max of runs)".into(),
        series: vec!["Ensō".into(), "packetized".into()],
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tally is flattened: the report's JSON has the source's fields at the top level.
    #[test]
    fn source_report_json_fields() {
        let mut r = SourceReport { mfps: 1.5, app: json!({"gets": 2}), ..Default::default() };
        r.tally.sent = 3;
        r.tally.mismatch("first");
        r.tally.mismatch("second");
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["app", "first_mismatch", "lost", "matched", "mfps", "mismatched", "received", "sent"]
        );
        assert_eq!((v["sent"].as_u64(), v["mismatched"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["first_mismatch"], "first");
        assert!(!r.tally.all_matched(3));
        assert_eq!(r.tally.summary(), "sent 3, received 0, matched 0, mismatched 2, lost 0 (first: first)");
    }
}
