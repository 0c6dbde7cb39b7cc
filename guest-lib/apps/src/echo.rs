//! The Ensō echo: every packet received on N pipes (fallback queues, by hash so a flow
//! stays on one pipe) is sent back from the RX buffer itself (zero copy, `RxTxPipe`),
//! with the first UDP payload byte (frame offset 42) incremented so the sender can tell an
//! echo from a reflection.

use crate::report::Report;
use device_access::DeviceAccess;
use enso::{Device, PacketIterMut, RxTxPipe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Frame offset of the byte the echo increments (first UDP payload byte).
pub const MARK_OFFSET: usize = 42;

/// What the echo is asked to do.
#[derive(Clone, Debug)]
pub struct EchoParams {
    /// Pipes (fallback queues) on notification-buffer pair 0.
    pub pipes: u32,
    /// Stop after this many packets (None: no limit).
    pub packets: Option<u64>,
    /// Stop when idle this long after at least one packet (None: never).
    pub idle: Option<Duration>,
    /// Give up when no packet at all arrives for this long (None: wait forever).
    pub start_timeout: Option<Duration>,
    /// How the driver opens the device (its `nb_id` is ignored: pair 0): the extensions it
    /// uses, and whether its doorbells may trap (register mode mmio).
    pub device: enso::DeviceOptions,
}

impl EchoParams {
    /// An echo on `pipes` pipes that runs until it is stopped.
    pub fn until_stopped(pipes: u32) -> Self {
        EchoParams { pipes, packets: None, idle: None, start_timeout: None, device: Default::default() }
    }
}

impl Default for EchoParams {
    fn default() -> Self {
        EchoParams {
            pipes: 4,
            packets: None,
            idle: Some(Duration::from_millis(3000)),
            start_timeout: None,
            device: enso::DeviceOptions::default(),
        }
    }
}

/// What the echo did.
#[derive(Clone, Debug, Default)]
pub struct EchoStats {
    /// Packets echoed.
    pub packets: u64,
    /// Bytes of those packets (frame lengths).
    pub bytes: u64,
    /// Batches (recv + send) handled.
    pub batches: u64,
    /// RX notifications consumed.
    pub notifications: u64,
    /// TX requests posted.
    pub tx_requests: u64,
    /// Doorbell register writes into pages the device polls during the loop (pair
    /// `rx_head` and `tx_tail`, pipe heads, prefetch doorbells: see
    /// `enso::DeviceStats::polled_doorbell_writes`). The device cannot count them; hosts
    /// add them to its PCIe accounting.
    pub doorbell_writes: u64,
    /// Prefetch doorbells rung during the loop (two of `doorbell_writes` each).
    pub prefetches: u64,
    /// From setup done to the last packet.
    pub active: Duration,
    /// From setup done to the end of the loop.
    pub elapsed: Duration,
    /// Time spent handling batches (from a pipe with data to its echo posted): the
    /// driver's per-packet cost without the polling in between.
    pub busy: Duration,
}

impl EchoStats {
    /// Packets per second over the active period.
    pub fn pps(&self) -> f64 {
        rate(self.packets, self.active)
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Why the loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The packet target was reached.
    Packets,
    /// Idle after traffic.
    Idle,
    /// No traffic at all.
    NoTraffic,
    /// The stop flag was raised.
    Flag,
}

/// An echo set up on a device: pipes enabled and steering configured, ready for traffic.
pub struct Echo {
    dev: Device,
    pipes: Vec<RxTxPipe>,
    index: Vec<usize>,
    prefetch: bool,
}

impl Echo {
    /// Opens notification-buffer pair 0, enables `params.pipes` pipes and makes them the
    /// fallback queues.
    pub fn setup(access: Box<dyn DeviceAccess>, params: &EchoParams) -> Result<Echo, enso::Error> {
        let mut dev =
            Device::with_options(access, enso::DeviceOptions { nb_id: 0, ..params.device.clone() })?;
        let n = params.pipes.max(1);
        let pipes: Vec<RxTxPipe> = (0..n).map(|_| dev.alloc_rx_tx_pipe()).collect::<Result<_, _>>()?;
        // Fallback pipes are IDs 0..n-1; map IDs to our vector anyway.
        let mut index = vec![usize::MAX; dev.info().num_pipes as usize];
        for (i, p) in pipes.iter().enumerate() {
            index[p.id() as usize] = i;
        }
        dev.configure_fallback_queues(n, false)?;
        Ok(Echo { dev, pipes, index, prefetch: false })
    }

    /// Echoes until `params` or `stop` say so.
    pub fn run(
        &mut self,
        params: &EchoParams,
        stop: &AtomicBool,
    ) -> Result<(EchoStats, StopReason), enso::Error> {
        echo_loop(&mut self.dev, &mut self.pipes, &self.index, params, self.prefetch, stop)
    }

    /// With `on`, the loop rings a pipe's prefetch doorbell right after it posts the echo
    /// and frees the batch (`send_and_free`), asking for the pipe's next notification
    /// without waiting for the send to complete and the head write that follows (reactive
    /// notifications otherwise wait for it). Off by default.
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
    }

    /// The device, e.g. to read its counters after the run.
    pub fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
}

/// Sets up the device and echoes until `params` or `stop` say so. Usable from a native
/// benchmark: raise `stop` from another thread to end it.
pub fn run_for(
    access: Box<dyn DeviceAccess>,
    params: &EchoParams,
    stop: &AtomicBool,
) -> Result<(EchoStats, StopReason), enso::Error> {
    Echo::setup(access, params)?.run(params, stop)
}

fn echo_loop(
    dev: &mut Device,
    pipes: &mut [RxTxPipe],
    index: &[usize],
    params: &EchoParams,
    prefetch: bool,
    stop: &AtomicBool,
) -> Result<(EchoStats, StopReason), enso::Error> {
    let mut s = EchoStats::default();
    // Set-up (configuration requests, queue enables) is not the datapath's.
    let ds0 = dev.stats();
    let start = Instant::now();
    let mut last_packet = start;
    let mut empty_polls = 0u32;
    let limit = params.packets.unwrap_or(u64::MAX);
    let reason = loop {
        if s.packets >= limit {
            break StopReason::Packets;
        }
        let Some(id) = dev.next_rx_pipe_to_recv() else {
            empty_polls = empty_polls.wrapping_add(1);
            if empty_polls & 255 == 0 {
                if stop.load(Ordering::Relaxed) {
                    break StopReason::Flag;
                }
                let now = Instant::now();
                if s.packets > 0 {
                    if params.idle.is_some_and(|idle| now - last_packet >= idle) {
                        break StopReason::Idle;
                    }
                } else if params.start_timeout.is_some_and(|t| now - start >= t) {
                    break StopReason::NoTraffic;
                }
            }
            if empty_polls & 15 == 0 {
                // Natively the model, the peer and this loop may share two cores.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
            continue;
        };
        let t0 = Instant::now();
        let Some(pipe) = index.get(id as usize).and_then(|&i| pipes.get_mut(i)) else { continue };
        if !echo_batch(dev, pipe, prefetch, &mut s)? {
            continue;
        }
        last_packet = Instant::now();
        s.busy += last_packet - t0;
        empty_polls = 0;
    };
    let _ = dev.wait_tx_idle(Duration::from_secs(2));
    s.active = last_packet - start;
    s.elapsed = start.elapsed();
    // No trapped register reads here: the datapath stays off trapped MMIO (the host reads
    // the device counters itself).
    let ds = dev.stats();
    s.notifications = ds.rx_notifications - ds0.rx_notifications;
    s.tx_requests = ds.tx_requests - ds0.tx_requests;
    s.doorbell_writes = ds.polled_doorbell_writes - ds0.polled_doorbell_writes;
    s.prefetches = ds.prefetches - ds0.prefetches;
    Ok((s, reason))
}

/// One batch: every packet received on `pipe` touched and sent back from the RX buffer
/// (false if there was none). Not inlined: `testbed bench echo` counts its instructions
/// (callgrind) apart from the polling around it.
#[inline(never)]
fn echo_batch(
    dev: &mut Device,
    pipe: &mut RxTxPipe,
    prefetch: bool,
    s: &mut EchoStats,
) -> Result<bool, enso::Error> {
    let buf = pipe.recv_mut(usize::MAX);
    let len = buf.len();
    if len == 0 {
        return Ok(false);
    }
    for pkt in PacketIterMut::new(buf) {
        if let Some(b) = pkt.get_mut(MARK_OFFSET) {
            *b = b.wrapping_add(1);
        }
        s.packets += 1;
        s.bytes += pkt.len() as u64;
    }
    // Everything received goes back out (a malformed tail is the device's to drop).
    pipe.send_and_free(dev, len)?;
    if prefetch {
        pipe.prefetch();
    }
    s.batches += 1;
    Ok(true)
}

/// Runs the echo and reports (one JSON result line from `main`).
pub fn run(access: Box<dyn DeviceAccess>, params: EchoParams) -> Report {
    let mut r = Report::new("echo", access.transport());
    r.value("pipes", params.pipes);
    let stop = AtomicBool::new(false);
    let result = Echo::setup(access, &params).and_then(|mut echo| {
        // Tell the host the pipes are up: its generator starts on this line.
        crate::report::announce(
            serde_json::json!({"event": "ready", "scenario": "echo", "pipes": params.pipes}),
        );
        echo.run(&params, &stop)
    });
    match result {
        Ok((s, reason)) => {
            r.check("setup", true, format!("{} pipes", params.pipes));
            r.check_count("echoed", s.packets, params.packets, format!("{} packets ({reason:?})", s.packets));
            fill_values(&mut r, &s);
            r.value("stop", format!("{reason:?}"));
        }
        Err(e) => r.fail("setup", e),
    }
    r
}

/// Adds the echo's numbers (and the device counters, prefixed `dev_`) to a report.
pub fn fill_values(r: &mut Report, s: &EchoStats) {
    r.value("packets", s.packets);
    r.value("bytes", s.bytes);
    r.value("batches", s.batches);
    r.value("notifications", s.notifications);
    r.value("tx_requests", s.tx_requests);
    r.value("doorbell_writes", s.doorbell_writes);
    r.value("prefetches", s.prefetches);
    r.value("active_s", s.active.as_secs_f64());
    r.value("elapsed_s", s.elapsed.as_secs_f64());
    r.value("pps", s.pps());
    r.value("busy_ns_per_pkt", s.busy.as_nanos() as f64 / s.packets.max(1) as f64);
    r.value("bps", rate(s.bytes * 8, s.active));
    r.value("packets_per_batch", if s.batches == 0 { 0.0 } else { s.packets as f64 / s.batches as f64 });
}

/// The same echo on the packetized baseline NIC (descriptor rings, DPDK-style bursts):
/// `params.pipes` RX queues fed by RSS, the same per-packet touch.
pub fn run_packetized(access: Box<dyn DeviceAccess>, params: EchoParams) -> Report {
    let mut r = Report::new("echo", access.transport());
    r.value("nic", "packetized");
    r.value("queues", params.pipes);
    let cfg = packetized::PortConfig {
        rx_queues: params.pipes.max(1),
        tx_queues: params.pipes.max(1),
        ..Default::default()
    };
    let stop = AtomicBool::new(false);
    let limits = packetized::echo::EchoLimits {
        packets: params.packets,
        idle: params.idle,
        start_timeout: params.start_timeout,
    };
    let result = packetized::Port::new(access, cfg).and_then(|mut port| {
        crate::report::announce(
            serde_json::json!({"event": "ready", "scenario": "echo", "nic": "packetized"}),
        );
        packetized::echo::echo_until(&mut port, &stop, limits)
    });
    match result {
        Ok(s) => {
            r.check("setup", true, format!("{} queues", params.pipes));
            r.check_count("echoed", s.packets, params.packets, format!("{} packets", s.packets));
            r.value("packets", s.packets);
            r.value("bytes", s.bytes);
            r.value("bursts", s.bursts);
            // Tail writes into the polled queue pages (the device cannot count them).
            r.value("doorbell_writes", s.port.doorbells());
            r.value("pps", s.pps());
            r.value("busy_ns_per_pkt", s.busy.as_nanos() as f64 / s.packets.max(1) as f64);
        }
        Err(e) => r.fail("setup", e),
    }
    r
}
