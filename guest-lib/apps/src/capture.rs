//! Capture: receives on N pipes (fallback queues) and writes every packet to a pcap file.

use crate::report::Report;
use device_access::DeviceAccess;
use enso::{Device, PacketIter, RxPipe};
use pcap_file::pcap::{PcapPacket, PcapWriter};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the capture is asked to do.
#[derive(Clone, Debug)]
pub struct CaptureParams {
    /// The pcap file to write.
    pub path: PathBuf,
    /// Pipes (fallback queues) on notification-buffer pair 0.
    pub pipes: u32,
    /// Stop after this many packets (None: no limit).
    pub packets: Option<u64>,
    /// Stop when idle this long after at least one packet.
    pub idle: Option<Duration>,
    /// Give up when no packet arrives at all for this long (None: wait forever).
    pub start_timeout: Option<Duration>,
    /// Stop after capturing the peer's "done" datagram (UDP to the discard port carrying
    /// `testbed:done`, see [`crate::responder`]).
    pub until_done: bool,
    /// After the capture, write the pcap to stdout (the result channel) as base64 chunks:
    /// `{"event":"pcap","seq":N,"data":"..."}` lines, then the report.
    pub upload: bool,
}

/// What the capture did.
#[derive(Clone, Debug, Default)]
pub struct CaptureStats {
    /// Packets written.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes received that did not parse as packets (skipped).
    pub malformed_bytes: u64,
    /// From setup to the end.
    pub elapsed: Duration,
    /// The peer's "done" datagram was captured.
    pub done: bool,
}

/// Captures until `params` or `stop` say so.
pub fn run_for(
    access: Box<dyn DeviceAccess>,
    params: &CaptureParams,
    stop: &AtomicBool,
) -> Result<CaptureStats, String> {
    let file =
        std::fs::File::create(&params.path).map_err(|e| format!("create {}: {e}", params.path.display()))?;
    let mut w = PcapWriter::new(BufWriter::new(file)).map_err(|e| format!("pcap header: {e}"))?;
    let mut dev = Device::new(access, 0).map_err(|e| e.to_string())?;
    let n = params.pipes.max(1);
    let mut pipes: Vec<RxPipe> =
        (0..n).map(|_| dev.alloc_rx_pipe()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let mut index = vec![usize::MAX; dev.info().num_pipes as usize];
    for (i, p) in pipes.iter().enumerate() {
        index[p.id() as usize] = i;
    }
    dev.configure_fallback_queues(n, false).map_err(|e| e.to_string())?;
    crate::report::announce(serde_json::json!({"event": "ready", "scenario": "capture"}));

    let mut s = CaptureStats::default();
    let start = Instant::now();
    let mut last = start;
    let mut empty = 0u32;
    let limit = params.packets.unwrap_or(u64::MAX);
    while s.packets < limit && !s.done {
        let Some(id) = dev.next_rx_pipe_to_recv() else {
            empty = empty.wrapping_add(1);
            if empty & 255 == 0 {
                let now = Instant::now();
                if stop.load(Ordering::Relaxed)
                    || (s.packets > 0 && params.idle.is_some_and(|i| now - last >= i))
                    || (s.packets == 0 && params.start_timeout.is_some_and(|t| now - start >= t))
                {
                    break;
                }
            }
            if empty & 15 == 0 {
                // Natively the model, the peer and this loop may share two cores.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
            continue;
        };
        let Some(pipe) = index.get(id as usize).and_then(|&i| pipes.get_mut(i)) else { continue };
        let buf = pipe.recv(usize::MAX);
        let len = buf.len();
        if len == 0 {
            continue;
        }
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut it = PacketIter::new(buf);
        for pkt in it.by_ref() {
            if s.packets >= limit {
                break;
            }
            w.write_packet(&PcapPacket::new(ts, pkt.len() as u32, pkt))
                .map_err(|e| format!("pcap write: {e}"))?;
            s.packets += 1;
            s.bytes += pkt.len() as u64;
            if params.until_done && crate::responder::is_done_datagram(pkt) {
                s.done = true;
            }
        }
        s.malformed_bytes += it.remaining() as u64;
        pipe.confirm_bytes(len).map_err(|e| e.to_string())?;
        last = Instant::now();
        empty = 0;
    }
    s.elapsed = start.elapsed();
    w.into_writer().flush().map_err(|e| format!("flush {}: {e}", params.path.display()))?;
    Ok(s)
}

/// Writes `bytes` to stdout as base64 `pcap` events of at most `chunk` input bytes.
pub fn upload(bytes: &[u8], chunk: usize) {
    use base64::Engine;
    let mut out = std::io::stdout().lock();
    for (seq, c) in bytes.chunks(chunk.max(1)).enumerate() {
        let data = base64::engine::general_purpose::STANDARD.encode(c);
        let _ = writeln!(out, "{}", serde_json::json!({"event": "pcap", "seq": seq, "data": data}));
    }
    let _ = out.flush();
}

/// Runs the capture and reports.
pub fn run(access: Box<dyn DeviceAccess>, params: CaptureParams) -> Report {
    let mut r = Report::new("capture", access.transport());
    r.value("path", params.path.display().to_string());
    let stop = AtomicBool::new(false);
    match run_for(access, &params, &stop) {
        Ok(s) => {
            r.check_count("captured", s.packets, params.packets, format!("{} packets", s.packets));
            r.value("packets", s.packets);
            r.value("bytes", s.bytes);
            r.value("malformed_bytes", s.malformed_bytes);
            r.value("elapsed_s", s.elapsed.as_secs_f64());
            r.value("done_seen", s.done);
            if params.until_done {
                r.check("peer_done", s.done, "the peer's done datagram was captured");
            }
            if params.upload {
                match std::fs::read(&params.path) {
                    Ok(b) => {
                        r.value("pcap_bytes", b.len() as u64);
                        upload(&b, 3072);
                    }
                    Err(e) => r.fail("upload", format!("read {}: {e}", params.path.display())),
                }
            }
        }
        Err(e) => r.fail("capture", e),
    }
    r
}
