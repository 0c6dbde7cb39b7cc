//! The accelerator chain with the CPU in the middle (seed Figure 8, Table 2): encrypted
//! images arrive on the Ensō NIC; the CPU submits each to the crypto accelerator, waits,
//! submits the plain image to the ML accelerator, waits, and transmits the result.
//!
//! Zero copy where the devices allow it: the crypto device reads the record inside the
//! received frame (the application strips the 42 header bytes by pointing past them), and
//! the last device writes its output just after a reply header the CPU prepared in the TX
//! buffer. The CPU touches only headers. With [`Shape::Crypto`] the chain is the crypto
//! device alone and the decrypted image goes back.

use crate::report::Report;
use accel_driver::{Accel, Command};
use device_access::{DeviceAccess, DmaBuffer, DmaOptions};
use enso::{Device, PacketIter, RxPipe, TxPipe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testbed_regs::inet;
use testbed_regs::record::{self, Header, FRAME_HEADER};

/// Which accelerators the chain has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// NIC → crypto → NIC.
    Crypto,
    /// NIC → crypto → ML → NIC.
    CryptoMl,
}

impl Shape {
    /// Parses "crypto" or "crypto,ml" (also "crypto+ml", for kernel command lines).
    pub fn parse(s: &str) -> Option<Shape> {
        match s {
            "crypto" => Some(Shape::Crypto),
            "crypto,ml" | "crypto+ml" => Some(Shape::CryptoMl),
            _ => None,
        }
    }

    /// The name [`Shape::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Crypto => "crypto",
            Shape::CryptoMl => "crypto,ml",
        }
    }
}

/// What the chain is asked to do.
#[derive(Clone, Debug)]
pub struct ChainParams {
    /// The chain's accelerators.
    pub shape: Shape,
    /// The stream's AES-256 key (provisioned by the tenant).
    pub key: [u8; 32],
    /// The ML model ID.
    pub model: u32,
    /// Stop after this many items (None: no limit).
    pub items: Option<u64>,
    /// Stop when idle this long after at least one item.
    pub idle: Option<Duration>,
    /// Give up when nothing arrives for this long.
    pub start_timeout: Option<Duration>,
    /// How long to wait for one accelerator completion.
    pub accel_timeout: Duration,
    /// How the NIC driver opens the device in CPU mode (pair 0): its extensions, trapped
    /// doorbells. (The switch modes need the stream extension.)
    pub device: enso::DeviceOptions,
    /// On the switch ([`NagareChain`]): use the accelerators as legacy-only devices (the
    /// switch writes their descriptors and rings their doorbells) instead of streaming.
    /// The CPU chain ignores it.
    pub glue: bool,
}

impl ChainParams {
    /// Defaults for `shape` and `key`.
    pub fn new(shape: Shape, key: [u8; 32]) -> Self {
        ChainParams {
            shape,
            key,
            model: 1,
            items: None,
            idle: Some(Duration::from_secs(3)),
            start_timeout: None,
            accel_timeout: Duration::from_secs(5),
            device: enso::DeviceOptions::default(),
            glue: false,
        }
    }
}

/// What the chain did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainStats {
    /// Items that went through the whole chain and were transmitted.
    pub items: u64,
    /// Frames that were not chain records (wrong port, malformed record): dropped.
    pub bad_frames: u64,
    /// Items the crypto device refused (authentication failed): dropped.
    pub auth_failures: u64,
    /// Items an accelerator failed otherwise (status other than OK): dropped.
    pub accel_errors: u64,
    /// Items whose bytes wrapped a ring's end and were copied by the CPU.
    pub bounced: u64,
    /// CPU time of the chain's thread from the first item to the last, per item (ns).
    pub cpu_ns_per_item: f64,
    /// Wall time per item over the same period (ns).
    pub wall_ns_per_item: f64,
    /// Doorbell writes: crypto, ML.
    pub accel_doorbells: u64,
}

/// Errors that stop the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The NIC driver failed.
    #[error("NIC: {0}")]
    Nic(#[from] enso::Error),
    /// An accelerator driver failed.
    #[error("accelerator: {0}")]
    Accel(#[from] accel_driver::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Access(#[from] device_access::Error),
    /// The chain's devices do not match its shape.
    #[error("{0}")]
    Setup(String),
    /// The switch refused or failed.
    #[error("switch: {0}")]
    Switch(#[from] nagare_client::Error),
}

/// Slot size of the intermediate buffer (one record between crypto and ML).
const SLOT: usize = 16 << 10;

/// The chain set up on its devices.
pub struct Chain {
    rx: RxPipe,
    /// The rest, apart from `rx`: a received batch borrowed from `rx` stays valid while
    /// its items go through the stages.
    stages: Stages,
}

/// What handling one item uses besides the receive pipe.
struct Stages {
    dev: Device,
    tx: TxPipe,
    crypto: Accel,
    ml: Option<Accel>,
    /// Intermediate records (crypto output, ML input) and bounce space.
    mid: DmaBuffer,
    params: ChainParams,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; the result is checked.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply header for a request header `req`, carrying `payload` UDP payload bytes:
/// addresses and ports swapped, lengths and checksum redone.
fn reply_header(req: &[u8; FRAME_HEADER], payload: usize) -> [u8; FRAME_HEADER] {
    let mut h = *req;
    h[0..6].copy_from_slice(&req[6..12]);
    h[6..12].copy_from_slice(&req[0..6]);
    h[26..30].copy_from_slice(&req[30..34]);
    h[30..34].copy_from_slice(&req[26..30]);
    h[34..36].copy_from_slice(&req[36..38]);
    h[36..38].copy_from_slice(&req[34..36]);
    inet::set_udp_lengths(&mut h, payload);
    h
}

/// The record inside a chain frame (UDP to [`record::UDP_PORT`]), if it is one.
fn frame_record(f: &[u8]) -> Option<&[u8]> {
    let eth_ip = f.len() >= FRAME_HEADER && f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 17;
    if !eth_ip || u16::from_be_bytes([f[36], f[37]]) != record::UDP_PORT {
        return None;
    }
    let h = Header::parse(&f[FRAME_HEADER..])?;
    f.get(FRAME_HEADER..FRAME_HEADER + h.record_len())
}

/// The chain's NIC and accelerators, as the caller opened them.
pub struct ChainDevices {
    pub nic: Box<dyn DeviceAccess>,
    pub crypto: Box<dyn DeviceAccess>,
    /// The ML accelerator: there exactly when the shape is [`Shape::CryptoMl`].
    pub ml: Option<Box<dyn DeviceAccess>>,
}

impl ChainDevices {
    /// The devices fit `shape` (an ML device exactly for crypto,ml).
    fn check(&self, shape: Shape) -> Result<(), ChainError> {
        if (shape == Shape::CryptoMl) == self.ml.is_some() {
            return Ok(());
        }
        let need = if self.ml.is_some() { "no" } else { "an" };
        Err(ChainError::Setup(format!("chain '{}' needs {need} ML device", shape.name())))
    }
}

/// Tells the host the chain is up: its source starts on this line.
fn announce_ready(shape: Shape) {
    crate::report::announce(
        serde_json::json!({"event": "ready", "scenario": "chain", "chain": shape.name()}),
    );
}

impl Chain {
    /// Sets the devices up: one DMA view shared by all three, NIC pair 0 with one RX pipe
    /// as the fallback queue and one TX pipe, and a ring on each accelerator.
    pub fn setup(devices: ChainDevices, params: ChainParams) -> Result<Chain, ChainError> {
        devices.check(params.shape)?;
        let ChainDevices { mut nic, mut crypto, mut ml } = devices;
        {
            let mut devs: Vec<&mut dyn DeviceAccess> = vec![nic.as_mut(), crypto.as_mut()];
            if let Some(m) = ml.as_mut() {
                devs.push(m.as_mut());
            }
            device_access::share_dma(&mut devs);
        }
        let mut crypto = Accel::open(crypto, 64)?;
        if crypto.function() != accel_driver::Function::Crypto {
            return Err(ChainError::Setup(format!("the crypto device is {:?}", crypto.function())));
        }
        let ml = match ml {
            Some(a) => {
                let m = Accel::open(a, 64)?;
                if m.function() != accel_driver::Function::Ml {
                    return Err(ChainError::Setup(format!("the ML device is {:?}", m.function())));
                }
                Some(m)
            }
            None => None,
        };
        let mid = crypto.access().alloc_dma(2 * SLOT, DmaOptions::default())?;
        let mut dev = Device::with_options(nic, enso::DeviceOptions { nb_id: 0, ..params.device.clone() })?;
        let rx = dev.alloc_rx_pipe()?;
        let tx = dev.alloc_tx_pipe()?;
        dev.configure_fallback_queues(1, false)?;
        Ok(Chain { rx, stages: Stages { dev, tx, crypto, ml, mid, params } })
    }

    /// Runs until `items` items, idleness, or `stop`.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<ChainStats, ChainError> {
        let mut s = ChainStats::default();
        let start = Instant::now();
        let mut last = start;
        let mut first: Option<(Instant, u64)> = None;
        let mut end = (start, 0u64);
        let mut polls = 0u32;
        let limit = self.stages.params.items.unwrap_or(u64::MAX);
        while s.items < limit {
            if self.stages.dev.next_rx_pipe_to_recv().is_none() {
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(256) {
                    let now = Instant::now();
                    let idle = if first.is_some() {
                        self.stages.params.idle
                    } else {
                        self.stages.params.start_timeout
                    };
                    let since = if first.is_some() { last } else { start };
                    if stop.load(Ordering::Relaxed) || idle.is_some_and(|d| now - since >= d) {
                        break;
                    }
                    self.stages.dev.process_completions();
                }
                if polls.is_multiple_of(16) {
                    std::thread::yield_now();
                }
                continue;
            }
            if first.is_none() {
                first = Some((Instant::now(), thread_cpu_ns()));
            }
            // Peek, handle every frame in place, then consume and free the bytes.
            // The batch stays borrowed from `rx` (the pipe hands the bytes out until
            // `confirm_bytes` frees them) while the stages handle its items.
            let batch = self.rx.peek(usize::MAX);
            let len = batch.len();
            for frame in PacketIter::new(batch) {
                self.stages.item(&self.rx, frame, &mut s)?;
            }
            let _ = self.rx.recv(len);
            self.rx.confirm_bytes(len)?;
            last = Instant::now();
            end = (last, thread_cpu_ns());
        }
        if let Some((t0, c0)) = first {
            let n = s.items.max(1) as f64;
            s.cpu_ns_per_item = end.1.saturating_sub(c0) as f64 / n;
            s.wall_ns_per_item = (end.0 - t0).as_nanos() as f64 / n;
        }
        let _ = self.stages.dev.wait_tx_idle(Duration::from_secs(2));
        s.accel_doorbells =
            self.stages.crypto.doorbells() + self.stages.ml.as_ref().map_or(0, |m| m.doorbells());
        Ok(s)
    }
}

impl Stages {
    /// Runs one accelerator command and waits for it; the completion's output length on
    /// success, None (counted) when the device refused the item.
    fn step(
        accel: &mut Accel,
        cmd: &Command,
        timeout: Duration,
        s: &mut ChainStats,
    ) -> Result<Option<u32>, ChainError> {
        accel.submit(cmd)?;
        let c = accel.wait(timeout)?;
        if c.ok() {
            return Ok(Some(c.out_len));
        }
        if c.status == testbed_regs::accel::status::AUTH_FAILED {
            s.auth_failures += 1;
        } else {
            s.accel_errors += 1;
        }
        Ok(None)
    }

    /// Handles one received frame: the whole chain, then the reply.
    fn item(&mut self, rx: &RxPipe, frame: &[u8], s: &mut ChainStats) -> Result<(), ChainError> {
        let Some(rec) = frame_record(frame) else {
            s.bad_frames += 1;
            return Ok(());
        };
        let mut req = [0u8; FRAME_HEADER];
        req.copy_from_slice(&frame[..FRAME_HEADER]);
        let p = &self.params;
        let to = p.accel_timeout;
        // The record in place (the crypto device reads it from the RX ring), or a copy
        // when it wraps the ring's end.
        let src = match rx.iova_of(rec) {
            Some(a) => a,
            None => {
                s.bounced += 1;
                self.mid.write_slice(rec, SLOT);
                self.mid.iova() + SLOT as u64
            }
        };
        // Where the last device writes: just after the reply header in the TX ring.
        let out_cap = match p.shape {
            Shape::Crypto => rec.len(),
            Shape::CryptoMl => record::HEADER + 64,
        };
        let direct = self.tx.next_iova(FRAME_HEADER + out_cap);
        let last_dst = direct.map_or(self.mid.iova() + SLOT as u64, |a| a + FRAME_HEADER as u64);
        let rec_len = rec.len() as u32;
        let (mid_iova, slot) = (self.mid.iova(), SLOT as u32);
        let out = match p.shape {
            Shape::Crypto => Self::step(
                &mut self.crypto,
                &Command::decrypt(src, rec_len, last_dst, out_cap as u32, p.key),
                to,
                s,
            )?,
            Shape::CryptoMl => {
                let dec = Command::decrypt(src, rec_len, mid_iova, slot, p.key);
                match Self::step(&mut self.crypto, &dec, to, s)? {
                    Some(n) => {
                        let ml = self.ml.as_mut().ok_or_else(|| ChainError::Setup("no ML device".into()))?;
                        let inf = Command::infer(mid_iova, n, last_dst, out_cap as u32, p.model);
                        Self::step(ml, &inf, to, s)?
                    }
                    None => None,
                }
            }
        };
        let Some(n) = out else { return Ok(()) };
        let n = n as usize;
        let bounce = if direct.is_none() {
            s.bounced += 1;
            Some(self.mid.to_vec(SLOT, n))
        } else {
            None
        };
        let buf = self.tx.allocate_buf(&mut self.dev, FRAME_HEADER + out_cap)?;
        buf[..FRAME_HEADER].copy_from_slice(&reply_header(&req, n));
        if let Some(b) = bounce {
            buf[FRAME_HEADER..FRAME_HEADER + n].copy_from_slice(&b);
        }
        self.tx.send_and_free(&mut self.dev, FRAME_HEADER + n)?;
        s.items += 1;
        Ok(())
    }
}

/// The chain's flow: our end and the peer's (the source that sends the images).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Our MAC, IPv4 address and UDP port.
    pub local: ([u8; 6], [u8; 4], u16),
    /// The peer's.
    pub peer: ([u8; 6], [u8; 4], u16),
}

impl Default for Flow {
    /// The testbed source's flow: 10.0.0.2:5000 → 10.1.0.1:7000.
    fn default() -> Self {
        Flow {
            local: ([0x02, 0, 0, 0, 0, 0x01], [10, 1, 0, 1], record::UDP_PORT),
            peer: ([0x02, 0, 0, 0, 0, 0x02], [10, 0, 0, 2], 5000),
        }
    }
}

impl Flow {
    /// The header of our replies (lengths and checksum left for the NIC).
    pub fn reply_template(&self) -> [u8; FRAME_HEADER] {
        let mut h = [0u8; FRAME_HEADER];
        h[0..6].copy_from_slice(&self.peer.0);
        h[6..12].copy_from_slice(&self.local.0);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        h[14] = 0x45;
        h[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
        h[22] = 64;
        h[23] = 17;
        h[26..30].copy_from_slice(&self.local.1);
        h[30..34].copy_from_slice(&self.peer.1);
        h[34..36].copy_from_slice(&self.local.2.to_be_bytes());
        h[36..38].copy_from_slice(&self.peer.2.to_be_bytes());
        h
    }
}

/// The chain on the Nagare switch: the CPU configures every device and the stream once,
/// then only watches counters while the devices push to each other.
pub struct NagareChain {
    sw: nagare_client::Switch,
    dev: Device,
    _pipe: enso::StreamPipe,
    crypto: Accel,
    ml: Option<Accel>,
    stream: u32,
    params: ChainParams,
}

impl NagareChain {
    /// Sets up stream 0: the NIC's stream pipe fills the stream's window, each
    /// accelerator's stream interface pushes its output back into it, and the switch
    /// forwards along `params.shape` to the NIC's TX stream window. With `params.glue`,
    /// the accelerators are used as legacy-only devices: the switch writes their
    /// descriptors and rings their doorbells (their rings live in the switch's memory).
    pub fn setup(
        devices: ChainDevices,
        switch: Box<dyn DeviceAccess>,
        params: ChainParams,
        flow: Flow,
    ) -> Result<NagareChain, ChainError> {
        let glue = params.glue;
        use testbed_regs::{accel as acc, enso as en};
        devices.check(params.shape)?;
        let ChainDevices { nic, crypto, ml } = devices;
        let mut sw = nagare_client::Switch::open(switch)?;
        let stream = 0;
        let window = sw.window(stream);
        let nic_port = sw.port_of(en::VENDOR_ID, en::DEVICE_ID)?;
        let crypto_port = sw.port_of(acc::VENDOR_ID, acc::CRYPTO_DEVICE_ID)?;
        let mut dev = Device::with_options(nic, enso::DeviceOptions { nb_id: 0, ..params.device.clone() })?;
        let pipe_id = dev.info().num_pipes - 1;
        let pipe = dev.enable_stream_pipe(pipe_id, window)?;
        let ip = |a: [u8; 4]| u32::from_be_bytes(a);
        // Ensō keys UDP flows on the destination only.
        let steer = enso::Flow {
            dst_port: flow.local.2,
            dst_ip: ip(flow.local.1),
            protocol: 17,
            ..Default::default()
        };
        dev.insert_flow_entry(steer, pipe.id())?;
        dev.start_tx_stream(&flow.reply_template())?;
        let ring = acc::STREAM_WINDOW_SIZE as u32;
        let mut crypto = Accel::open(crypto, 2)?;
        let mut ml = match ml {
            Some(a) => Some((Accel::open(a, 2)?, sw.port_of(acc::VENDOR_ID, acc::ML_DEVICE_ID)?)),
            None => None,
        };
        let mut model = [0u8; 32];
        model[..4].copy_from_slice(&params.model.to_le_bytes());
        let policy = if glue {
            let mut devices = vec![(crypto_port, acc::desc::OP_DECRYPT, params.key)];
            if let Some((_, port)) = &ml {
                devices.push((*port, acc::desc::OP_INFER, model));
            }
            nagare_client::Policy::chain_glue(nic_port, pipe.id(), &devices)
        } else {
            let stream_to_window = |a: &mut Accel, op, key, model| {
                a.start_stream(&accel_driver::StreamConfig { op, key, model, dest: window, dest_size: ring })
            };
            stream_to_window(&mut crypto, acc::desc::OP_DECRYPT, params.key, 0)?;
            let mut devices = vec![crypto_port];
            if let Some((m, port)) = ml.as_mut() {
                stream_to_window(m, acc::desc::OP_INFER, [0; 32], params.model)?;
                devices.push(*port);
            }
            nagare_client::Policy::chain(nic_port, pipe.id(), &devices)
        };
        sw.open_stream(stream, &policy, policy.ports_mask())?;
        if glue {
            // The legacy rings now live in the switch, which drives them.
            let (sq, cq, n) = sw.glue_ring(stream, 1)?;
            crypto.delegate_ring(sq, cq, n)?;
            if let Some((m, _)) = ml.as_mut() {
                let (sq, cq, n) = sw.glue_ring(stream, 2)?;
                m.delegate_ring(sq, cq, n)?;
            }
        }
        let ml = ml.map(|(m, _)| m);
        Ok(NagareChain { sw, dev, _pipe: pipe, crypto, ml, stream, params })
    }

    /// The switch (e.g. to push from the CPU or change the allow list while it runs).
    pub fn switch(&mut self) -> &mut nagare_client::Switch {
        &mut self.sw
    }

    /// The stream's number.
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Watches the NIC's TX counter until `items` items left, idleness, or `stop`.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<ChainStats, ChainError> {
        let mut s = ChainStats::default();
        let base = self.dev.counter("tx_packets")?;
        let start = Instant::now();
        let (c0, mut last_change) = (thread_cpu_ns(), start);
        let limit = self.params.items.unwrap_or(u64::MAX);
        let mut sent = 0;
        while sent < limit && !stop.load(Ordering::Relaxed) {
            // Watching is all the CPU does: a counter read every few milliseconds.
            std::thread::sleep(Duration::from_millis(5));
            let now_sent = self.dev.counter("tx_packets")? - base;
            let now = Instant::now();
            if now_sent != sent {
                sent = now_sent;
                last_change = now;
            }
            let idle = if sent > 0 { self.params.idle } else { self.params.start_timeout };
            if idle.is_some_and(|d| now - last_change >= d) {
                break;
            }
        }
        s.items = sent;
        let n = if sent == 0 { f64::INFINITY } else { sent as f64 };
        s.cpu_ns_per_item = thread_cpu_ns().saturating_sub(c0) as f64 / n;
        s.wall_ns_per_item = (last_change - start).as_nanos() as f64 / n;
        let failures = |a: &Accel, name: &str| {
            a.counters().ok().and_then(|c| c.into_iter().find(|(n, _)| *n == name)).map_or(0, |(_, v)| v)
        };
        s.auth_failures = failures(&self.crypto, "auth_failures");
        let bad = |a: &Accel| failures(a, "stream_bad_records") + failures(a, "bad_descriptors");
        s.accel_errors = bad(&self.crypto) + self.ml.as_ref().map_or(0, bad);
        Ok(s)
    }
}

/// The `chain` scenario on the switch (`mode=nagare`, or `mode=glue` with `params.glue`).
pub fn run_nagare(devices: ChainDevices, switch: Box<dyn DeviceAccess>, params: ChainParams) -> Report {
    let mut r = Report::new("chain", devices.nic.transport());
    r.value("shape", params.shape.name());
    r.value("mode", if params.glue { "glue" } else { "nagare" });
    let want = params.items;
    let shape = params.shape;
    let setup = NagareChain::setup(devices, switch, params, Flow::default());
    let result = setup.and_then(|mut c| {
        announce_ready(shape);
        let base = c.switch().base();
        let s = c.run(&AtomicBool::new(false))?;
        println!("{}", serde_json::json!({"event": "switch", "window_base": format!("{base:#x}")}));
        let routed = c.switch().counter("routed")?;
        let denied = c.switch().counter("acl_denied")?;
        Ok((s, routed, denied))
    });
    match result {
        Ok((s, routed, denied)) => {
            let n = want.unwrap_or(s.items.max(1));
            r.check("items", s.items == n, format!("{} of {n} items left the NIC", s.items));
            r.check("refusals", s.auth_failures + s.accel_errors == 0, format!("{s:?}"));
            r.value("items", s.items);
            r.value("cpu_ns_per_item", s.cpu_ns_per_item);
            r.value("switch_routed", routed);
            r.value("switch_acl_denied", denied);
        }
        Err(e) => r.fail("chain", e),
    }
    r
}

/// The `chain` scenario: runs the chain and reports what it did.
pub fn run(devices: ChainDevices, params: ChainParams) -> Report {
    let mut r = Report::new("chain", devices.nic.transport());
    r.value("shape", params.shape.name());
    let want = params.items;
    let shape = params.shape;
    let result = Chain::setup(devices, params).and_then(|mut c| {
        announce_ready(shape);
        c.run(&AtomicBool::new(false))
    });
    match result {
        Ok(s) => {
            if let Some(n) = want {
                r.check("items", s.items == n, format!("{} of {n} items through the chain", s.items));
            } else {
                r.check_count("items", s.items, None, format!("{} items through the chain", s.items));
            }
            r.check("refusals", s.auth_failures + s.accel_errors + s.bad_frames == 0, format!("{s:?}"));
            r.value("items", s.items);
            r.value("bad_frames", s.bad_frames);
            r.value("auth_failures", s.auth_failures);
            r.value("accel_errors", s.accel_errors);
            r.value("bounced", s.bounced);
            r.value("cpu_ns_per_item", s.cpu_ns_per_item);
            r.value("wall_ns_per_item", s.wall_ns_per_item);
            r.value("accel_doorbells", s.accel_doorbells);
        }
        Err(e) => r.fail("chain", e),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_header_swaps_and_fixes_lengths() {
        let mut req = [0u8; FRAME_HEADER];
        req[0..6].copy_from_slice(&[1; 6]);
        req[6..12].copy_from_slice(&[2; 6]);
        req[12..14].copy_from_slice(&[8, 0]);
        req[14] = 0x45;
        req[23] = 17;
        req[26..30].copy_from_slice(&[10, 0, 0, 2]);
        req[30..34].copy_from_slice(&[10, 1, 0, 1]);
        req[34..36].copy_from_slice(&5000u16.to_be_bytes());
        req[36..38].copy_from_slice(&record::UDP_PORT.to_be_bytes());
        let h = reply_header(&req, 84);
        assert_eq!((&h[0..6], &h[6..12]), (&[2u8; 6][..], &[1u8; 6][..]));
        assert_eq!(&h[26..30], &[10, 1, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[36], h[37]]), 5000);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 112);
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 92);
        assert_eq!(inet::checksum(&h[inet::IPV4]), 0, "a valid header sums to zero");
        assert!(frame_record(&h).is_none(), "not to the chain port, and no record");
    }
}
