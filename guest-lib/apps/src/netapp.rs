//! The seed's applications (`netapps`) on either NIC: the same per-frame logic behind two
//! thin I/O wrappers, Ensō pipes ([`serve_enso`]) and the packetized burst API
//! ([`serve_packetized`]), as the seed compared them.
//!
//! On Ensō, frames the app forwards leave straight from the RX ring (zero copy, one send
//! per run of forwarded frames); frames it consumes or answers are skipped in place; its
//! replies go out through a TX pipe. On the packetized NIC, forwarded mbufs go back out,
//! replies get a new mbuf, consumed mbufs return to the pool.

use crate::report::Report;
use device_access::DeviceAccess;
use netapps::{logmon::LogMonitor, maglev::Maglev, mica::Mica, nitro::NitroSketch, Action, PacketApp};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The apps, by name.
pub const NAMES: [&str; 4] = ["maglev", "nitrosketch", "mica", "logmon"];

/// The log monitor's patterns (the scenario's generator writes lines that match them).
pub const LOG_PATTERNS: [&str; 3] = [r"ERROR", r"user=\d+ login failed", r"latency_ms=([5-9]\d{2}|\d{4,})"];

/// Maglev backends in the scenarios.
pub const MAGLEV_BACKENDS: usize = 16;

/// One of the apps, with its standard configuration.
pub enum NetApp {
    Maglev(Maglev),
    Nitro(NitroSketch),
    Mica(Mica),
    Logmon(Box<LogMonitor>),
}

impl NetApp {
    /// The app called `name` (see [`NAMES`]).
    pub fn by_name(name: &str) -> Result<NetApp, String> {
        Ok(match name {
            "maglev" => NetApp::Maglev(Maglev::new(
                netapps::maglev::DEFAULT_SIZE,
                netapps::maglev::backends(MAGLEV_BACKENDS),
                1 << 20,
            )),
            "nitrosketch" => NetApp::Nitro(NitroSketch::new(5, 4096, 0.1, 64, 0x006e_6974_726f)),
            "mica" => NetApp::Mica(Mica::new(4, 4096, 8 << 20)),
            "logmon" => NetApp::Logmon(Box::new(
                LogMonitor::new(&LOG_PATTERNS, 100).map_err(|e| format!("logmon patterns: {e}"))?,
            )),
            _ => return Err(format!("unknown app '{name}' (known: {})", NAMES.join(", "))),
        })
    }

    /// What the app found, for its report.
    pub fn values(&self) -> serde_json::Map<String, Value> {
        let v = match self {
            NetApp::Maglev(m) => {
                json!({"forwarded": m.stats.forwarded, "dropped": m.stats.dropped, "tracked": m.stats.tracked})
            }
            NetApp::Nitro(n) => {
                let top: Vec<Value> = n
                    .heavy_hitters(10)
                    .iter()
                    .map(|(f, e)| json!({"src_ip": f.src_ip, "src_port": f.src_port, "estimate": e.round()}))
                    .collect();
                json!({"packets": n.packets, "updates": n.updates, "heavy_hitters": top})
            }
            NetApp::Mica(m) => json!({
                "gets": m.stats.gets, "sets": m.stats.sets, "hits": m.stats.hits,
                "misses": m.stats.misses, "bad": m.stats.bad, "evictions": m.stats.evictions,
            }),
            NetApp::Logmon(l) => json!({
                "lines": l.stats.lines, "matches": l.stats.matches, "alerts": l.stats.alerts.len(),
                "bytes": l.stats.bytes,
            }),
        };
        v.as_object().cloned().unwrap_or_default()
    }
}

impl PacketApp for NetApp {
    fn handle(&mut self, frame: &mut [u8], out: &mut Vec<u8>) -> Action {
        match self {
            NetApp::Maglev(a) => a.handle(frame, out),
            NetApp::Nitro(a) => a.handle(frame, out),
            NetApp::Mica(a) => a.handle(frame, out),
            NetApp::Logmon(a) => a.handle(frame, out),
        }
    }
}

/// When to stop.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoLimits {
    /// After this many frames.
    pub frames: Option<u64>,
    /// When idle this long after at least one frame.
    pub idle: Option<Duration>,
    /// When nothing arrives for this long.
    pub start_timeout: Option<Duration>,
}

/// What the wrapper did.
#[derive(Clone, Debug, Default)]
pub struct IoStats {
    pub frames: u64,
    pub forwarded: u64,
    pub replied: u64,
    pub consumed: u64,
    /// Time spent handling frames (from a batch in hand to its sends posted).
    pub busy: Duration,
    /// From the first frame to the last.
    pub active: Duration,
}

impl IoStats {
    /// Frames per second over the active period.
    pub fn fps(&self) -> f64 {
        if self.active.is_zero() {
            0.0
        } else {
            self.frames as f64 / self.active.as_secs_f64()
        }
    }
}

/// A shared progress counter (frames handled) a harness can watch.
pub type Progress = std::sync::Arc<AtomicU64>;

/// How long a serve loop runs, and who watches it: the same for every NIC.
pub struct Serve<'a> {
    pub limits: IoLimits,
    /// Set by another thread to end the loop (seen on idle polls).
    pub stop: &'a AtomicBool,
    /// Frames handled so far, for a harness to watch.
    pub progress: Option<&'a Progress>,
}

impl<'a> Serve<'a> {
    /// Until `limits` or `stop` say so, unwatched.
    pub fn new(limits: IoLimits, stop: &'a AtomicBool) -> Self {
        Serve { limits, stop, progress: None }
    }
}

/// A serve loop's clock: when to stop, what to report.
struct Loop<'a> {
    serve: Serve<'a>,
    start: Instant,
    first: Option<Instant>,
    last: Instant,
    polls: u32,
}

impl<'a> Loop<'a> {
    fn new(serve: Serve<'a>) -> Self {
        let now = Instant::now();
        Loop { serve, start: now, first: None, last: now, polls: 0 }
    }

    /// The frame limit (u64::MAX for none).
    fn limit(&self) -> u64 {
        self.serve.limits.frames.unwrap_or(u64::MAX)
    }

    /// An idle poll: true when it is time to stop.
    fn idle(&mut self, s: &IoStats) -> bool {
        let limits = &self.serve.limits;
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(256) {
            let now = Instant::now();
            if self.serve.stop.load(Ordering::Relaxed)
                || (s.frames > 0 && limits.idle.is_some_and(|d| now - self.last >= d))
                || (s.frames == 0 && limits.start_timeout.is_some_and(|d| now - self.start >= d))
            {
                return true;
            }
        }
        if self.polls.is_multiple_of(16) {
            std::thread::yield_now();
        }
        false
    }

    /// Frames were handled: publishes the count and restarts the idle clock.
    fn worked(&mut self, s: &IoStats) {
        if let Some(p) = self.serve.progress {
            p.store(s.frames, Ordering::Relaxed);
        }
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.polls = 0;
    }

    /// Time from the first frame to the last.
    fn active(&self) -> Duration {
        self.first.map_or(Duration::ZERO, |f| self.last - f)
    }
}

/// Runs `app` on Ensō: `pipes` RX/TX pipes as fallback queues, one TX pipe for replies.
pub fn serve_enso(
    access: Box<dyn DeviceAccess>,
    pipes: u32,
    app: &mut dyn PacketApp,
    serve: Serve<'_>,
    ready: impl FnOnce(),
) -> Result<IoStats, enso::Error> {
    let mut dev = enso::Device::new(access, 0)?;
    let n = pipes.max(1);
    let mut rx: Vec<enso::RxTxPipe> = (0..n).map(|_| dev.alloc_rx_tx_pipe()).collect::<Result<_, _>>()?;
    let mut index = vec![usize::MAX; dev.info().num_pipes as usize];
    for (i, p) in rx.iter().enumerate() {
        index[p.id() as usize] = i;
    }
    let mut tx = dev.alloc_tx_pipe()?;
    dev.configure_fallback_queues(n, false)?;
    ready();
    let mut s = IoStats::default();
    let mut lp = Loop::new(serve);
    let mut out = Vec::new();
    // (action, bytes the frame occupies in the ring) of the batch in hand, and replies.
    let mut plan: Vec<(Action, usize)> = Vec::new();
    // The batch's replies, back to back on flit boundaries (the TX stream's layout).
    let mut replies: Vec<u8> = Vec::new();
    let limit = lp.limit();
    while s.frames < limit {
        let Some(id) = dev.next_rx_pipe_to_recv() else {
            if lp.idle(&s) {
                break;
            }
            continue;
        };
        let Some(pipe) = index.get(id as usize).and_then(|&i| rx.get_mut(i)) else { continue };
        let t0 = Instant::now();
        plan.clear();
        replies.clear();
        let buf = pipe.recv_mut(usize::MAX);
        let len = buf.len();
        let mut off = 0;
        while off < len {
            let Some(flen) = enso::packet::frame_len(&buf[off..]) else {
                // Not a frame: skip the rest of the batch (the NIC counted what it dropped).
                plan.push((Action::Consume, len - off));
                break;
            };
            let step = flen.next_multiple_of(64).min(len - off);
            let action = app.handle(&mut buf[off..off + flen], &mut out);
            if action == Action::Reply {
                replies.resize(replies.len().next_multiple_of(64), 0);
                replies.extend_from_slice(&out);
            }
            plan.push((action, step));
            off += step;
        }
        // Runs of forwarded frames go out in place; runs of the others are skipped.
        let (mut fwd, mut skip) = (0usize, 0usize);
        for &(action, step) in &plan {
            if action == Action::Forward {
                if skip > 0 {
                    pipe.skip(&mut dev, std::mem::take(&mut skip))?;
                }
                fwd += step;
                s.forwarded += 1;
            } else {
                if fwd > 0 {
                    pipe.send_and_free(&mut dev, std::mem::take(&mut fwd))?;
                }
                skip += step;
                if action == Action::Reply {
                    s.replied += 1;
                } else {
                    s.consumed += 1;
                }
            }
        }
        if fwd > 0 {
            pipe.send_and_free(&mut dev, fwd)?;
        }
        if skip > 0 {
            pipe.skip(&mut dev, skip)?;
        }
        // The batch's replies leave together: one TX buffer, each frame on a flit
        // boundary, one send.
        if !replies.is_empty() {
            let b = tx.allocate_buf(&mut dev, replies.len())?;
            b.copy_from_slice(&replies);
            tx.send_and_free(&mut dev, replies.len())?;
        }
        s.frames += plan.len() as u64;
        s.busy += t0.elapsed();
        lp.worked(&s);
    }
    let _ = dev.wait_tx_idle(Duration::from_secs(2));
    s.active = lp.active();
    Ok(s)
}

/// Runs `app` on the packetized NIC (`queues` RX and TX queues).
pub fn serve_packetized(
    access: Box<dyn DeviceAccess>,
    queues: u32,
    app: &mut dyn PacketApp,
    serve: Serve<'_>,
    ready: impl FnOnce(),
) -> Result<IoStats, packetized::Error> {
    let cfg =
        packetized::PortConfig { rx_queues: queues.max(1), tx_queues: queues.max(1), ..Default::default() };
    let mut port = packetized::Port::new(access, cfg)?;
    ready();
    let mut s = IoStats::default();
    let mut lp = Loop::new(serve);
    let mut pkts = Vec::new();
    let mut send = Vec::new();
    let mut out = Vec::new();
    let (nrx, ntx) = (port.rx_queues(), port.tx_queues());
    let limit = lp.limit();
    while s.frames < limit {
        let mut any = false;
        for q in 0..nrx {
            if port.rx_burst(q, &mut pkts)? == 0 {
                continue;
            }
            any = true;
            let t0 = Instant::now();
            for mut m in pkts.drain(..) {
                s.frames += 1;
                match app.handle(m.data_mut(), &mut out) {
                    Action::Forward => {
                        s.forwarded += 1;
                        send.push(m);
                    }
                    Action::Reply => {
                        s.replied += 1;
                        let mut r = port.mempool().alloc_frame(out.len())?;
                        r.copy_from(&out)?;
                        send.push(r);
                    }
                    Action::Consume => s.consumed += 1,
                }
            }
            let since = Instant::now();
            while !send.is_empty() {
                if port.tx_burst(q % ntx, &mut send)? == 0 {
                    if since.elapsed() > Duration::from_secs(2) {
                        return Err(packetized::Error::TxStalled {
                            queue: q % ntx,
                            waited: Duration::from_secs(2),
                        });
                    }
                    std::thread::yield_now();
                }
            }
            s.busy += t0.elapsed();
        }
        if any {
            lp.worked(&s);
        } else if lp.idle(&s) {
            break;
        }
    }
    port.wait_tx_idle(Duration::from_secs(2))?;
    s.active = lp.active();
    Ok(s)
}

/// Runs `app` with one queue on NIC `nic` ("packetized", or the Ensō NIC otherwise).
pub fn serve_on(
    nic: &str,
    access: Box<dyn DeviceAccess>,
    app: &mut dyn PacketApp,
    serve: Serve<'_>,
    ready: impl FnOnce(),
) -> Result<IoStats, String> {
    match nic {
        "packetized" => serve_packetized(access, 1, app, serve, ready).map_err(|e| e.to_string()),
        _ => serve_enso(access, 1, app, serve, ready).map_err(|e| e.to_string()),
    }
}

/// The `app` scenario: runs app `name` on NIC `nic` ("enso" or "packetized").
pub fn run(access: Box<dyn DeviceAccess>, name: &str, nic: &str, limits: IoLimits) -> Report {
    let mut r = Report::new("app", access.transport());
    r.value("app", name);
    r.value("nic", nic);
    let mut app = match NetApp::by_name(name) {
        Ok(a) => a,
        Err(e) => {
            r.fail("app", e);
            return r;
        }
    };
    let stop = AtomicBool::new(false);
    let ready =
        || crate::report::announce(json!({"event": "ready", "scenario": "app", "app": name, "nic": nic}));
    let res = serve_on(nic, access, &mut app, Serve::new(limits, &stop), ready);
    match res {
        Ok(s) => {
            r.check_count("frames", s.frames, limits.frames, format!("{} frames handled", s.frames));
            r.value("frames", s.frames);
            r.value("forwarded", s.forwarded);
            r.value("replied", s.replied);
            r.value("consumed", s.consumed);
            r.value("busy_ns_per_frame", s.busy.as_nanos() as f64 / s.frames.max(1) as f64);
            for (k, v) in app.values() {
                r.value(&k, v);
            }
        }
        Err(e) => r.fail("serve", e),
    }
    r
}
