//! pcap files in and out of a port: [`PcapReplay`] feeds a capture's frames into the NIC
//! side of a cable; [`PcapCapture`] writes every frame it receives into a file Wireshark
//! and tshark open (classic pcap, Ethernet link type, microsecond timestamps).
//!
//! Both are drivers of a cable end, run on the caller's thread (`run`) or their own
//! (`spawn`) until a stop flag is set, and report counts.

use crate::{CableEnd, EthPort, Frame};
use pcap_file::pcap::{PcapHeader, PcapReader};
use pcap_file::{DataLink, Endianness, TsResolution};
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub use pcap_file::PcapError;

/// Snap length of captures (tcpdump's default: every frame, jumbo or TSO-sized, fits
/// whole). A longer frame is written truncated; note pcap-file's reader rejects such a
/// record (orig_len > snaplen), Wireshark does not.
pub const SNAPLEN: u32 = 262_144;

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Frames handed to the port.
    pub sent: u64,
    pub bytes: u64,
    /// Frames the port refused at `send`.
    pub refused: u64,
    /// Complete passes over the file.
    pub loops_done: u64,
    pub elapsed_s: f64,
    pub pps: f64,
    /// Stopped by the flag before finishing its loops.
    pub stopped: bool,
}

/// Replays a capture's frames (read into memory once) into a port.
pub struct PcapReplay {
    frames: Vec<Frame>,
    rate_pps: Option<f64>,
    loops: u64,
}

impl PcapReplay {
    /// Reads every frame of a pcap file (any link type is replayed as is; the NIC expects
    /// Ethernet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        Self::read(BufReader::new(File::open(path).map_err(PcapError::IoError)?))
    }

    /// Reads every frame of a pcap stream.
    pub fn read(r: impl Read) -> Result<Self, PcapError> {
        let mut reader = PcapReader::new(r)?;
        let mut frames = Vec::new();
        while let Some(p) = reader.next_packet() {
            frames.push(p?.data.into_owned());
        }
        Ok(Self::from_frames(frames))
    }

    /// Replays these frames instead of a file's.
    pub fn from_frames(frames: Vec<Frame>) -> Self {
        PcapReplay { frames, rate_pps: None, loops: 1 }
    }

    /// Paces the replay to `pps` frames per second (default: as fast as the port takes
    /// them).
    pub fn with_rate(mut self, pps: f64) -> Self {
        assert!(pps > 0.0, "rate must be positive");
        self.rate_pps = Some(pps);
        self
    }

    /// Plays the file `n` times (default 1; 0 = until stopped).
    pub fn with_loops(mut self, n: u64) -> Self {
        self.loops = n;
        self
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Replays until the loops are done or `stop` is set. Never drops on a full link: it
    /// waits for room (at a set rate it then falls behind, and `pps` shows it).
    pub fn run<P: EthPort + ?Sized>(&self, port: &mut P, stop: &AtomicBool) -> ReplayReport {
        let mut r = ReplayReport::default();
        let t0 = Instant::now();
        let ns_per_pkt = self.rate_pps.map(|pps| 1e9 / pps);
        'outer: while !self.frames.is_empty() && (self.loops == 0 || r.loops_done < self.loops) {
            for f in &self.frames {
                if stop.load(Ordering::Relaxed) {
                    r.stopped = true;
                    break 'outer;
                }
                if let Some(ns) = ns_per_pkt {
                    let due = Duration::from_nanos((r.sent as f64 * ns) as u64);
                    let mut now = t0.elapsed();
                    if now < due {
                        port.try_flush();
                        while now < due {
                            if due - now > Duration::from_micros(200) {
                                std::thread::sleep(due - now - Duration::from_micros(100));
                            } else {
                                std::hint::spin_loop();
                            }
                            now = t0.elapsed();
                        }
                    }
                }
                while port.send_room() == 0 {
                    if !port.try_flush() {
                        if stop.load(Ordering::Relaxed) {
                            r.stopped = true;
                            break 'outer;
                        }
                        std::thread::yield_now();
                    }
                }
                if !port.send(f.clone()) {
                    r.refused += 1;
                }
                r.sent += 1;
                r.bytes += f.len() as u64;
            }
            r.loops_done += 1;
        }
        while !port.try_flush() && !stop.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        r.elapsed_s = t0.elapsed().as_secs_f64();
        if r.elapsed_s > 0.0 {
            r.pps = r.sent as f64 / r.elapsed_s;
        }
        r
    }

    /// [`run`](Self::run) on a new thread; the port comes back with the report.
    pub fn spawn(self, mut port: CableEnd, stop: Arc<AtomicBool>) -> JoinHandle<(ReplayReport, CableEnd)> {
        std::thread::Builder::new()
            .name("pcap-replay".into())
            .spawn(move || (self.run(&mut port, &stop), port))
            .expect("spawn pcap-replay")
    }
}

/// What a capture wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CaptureReport {
    pub frames: u64,
    /// Bytes on the wire (before any truncation to [`SNAPLEN`]).
    pub bytes: u64,
    /// Frames longer than [`SNAPLEN`], written truncated.
    pub truncated: u64,
}

/// Writes received frames into a pcap file (the header through pcap-file, the records
/// directly: little endian, as pcap-file's reader and every pcap tool read them).
pub struct PcapCapture<W: Write = BufWriter<File>> {
    writer: W,
    report: CaptureReport,
    limit: Option<u64>,
}

impl PcapCapture<BufWriter<File>> {
    /// Creates (truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        Self::new(BufWriter::with_capacity(1 << 20, File::create(path).map_err(PcapError::IoError)?))
    }
}

impl<W: Write> PcapCapture<W> {
    /// Writes the file header to `w`.
    pub fn new(w: W) -> Result<Self, PcapError> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::Little,
        };
        let mut w = w;
        header.write_to(&mut w)?;
        Ok(PcapCapture { writer: w, report: Default::default(), limit: None })
    }

    /// Stops `run` after this many frames.
    pub fn with_limit(mut self, frames: u64) -> Self {
        self.limit = Some(frames);
        self
    }

    /// Appends one frame with timestamp `ts` (since the Unix epoch).
    pub fn write_frame(&mut self, frame: &[u8], ts: Duration) -> Result<(), PcapError> {
        let keep = frame.len().min(SNAPLEN as usize);
        self.report.truncated += u64::from(keep < frame.len());
        let secs = u32::try_from(ts.as_secs()).map_err(|_| PcapError::InvalidField("timestamp past 2106"))?;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&secs.to_le_bytes());
        rec[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        rec[8..12].copy_from_slice(&(keep as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.writer.write_all(&rec).map_err(PcapError::IoError)?;
        self.writer.write_all(&frame[..keep]).map_err(PcapError::IoError)?;
        self.report.frames += 1;
        self.report.bytes += frame.len() as u64;
        Ok(())
    }

    pub fn report(&self) -> &CaptureReport {
        &self.report
    }

    /// Captures until `stop` is set (then takes what is already queued), the limit is
    /// reached, or the other end goes away; flushes the file.
    pub fn run(&mut self, port: &mut CableEnd, stop: &AtomicBool) -> Result<CaptureReport, PcapError> {
        let mut buf = Vec::with_capacity(1024);
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let room = self.limit.map_or(1024, |l| l.saturating_sub(self.report.frames).min(1024) as usize);
            if room == 0 {
                break;
            }
            let n = if stopping {
                port.recv(&mut buf, room)
            } else {
                port.recv_timeout(&mut buf, room, Duration::from_millis(5))
            };
            if n > 0 {
                let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                for f in buf.drain(..) {
                    self.write_frame(&f, ts)?;
                }
            } else if stopping || port.peer_gone() {
                break;
            }
        }
        self.flush()?;
        Ok(self.report.clone())
    }

    pub fn flush(&mut self) -> Result<(), PcapError> {
        self.writer.flush().map_err(PcapError::IoError)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, PcapError> {
        self.flush()?;
        Ok(self.writer)
    }
}

impl<W: Write + Send + 'static> PcapCapture<W> {
    /// [`run`](Self::run) on a new thread; the file is flushed when it returns.
    pub fn spawn(
        mut self,
        mut port: CableEnd,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<Result<CaptureReport, PcapError>> {
        std::thread::Builder::new()
            .name("pcap-capture".into())
            .spawn(move || self.run(&mut port, &stop))
            .expect("spawn pcap-capture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cable::{cable, BATCH};
    use crate::generator::build_frame;

    fn frames(n: usize) -> Vec<Frame> {
        (0..n)
            .map(|i| {
                let size = [64, 60, 1500, 9000, 128][i % 5];
                let mut f = vec![0; size];
                build_frame(&mut f, size, i as u32 % 7, i as u64);
                f
            })
            .collect()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("wire-{}-{name}.pcap", std::process::id()))
    }

    #[test]
    fn capture_then_replay_round_trips() {
        let path = tmp("roundtrip");
        let sent = frames(500);
        // Capture: frames sent into a cable end the capture drives.
        let (mut nic, far) = cable(8);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = PcapCapture::create(&path).unwrap().spawn(far, stop.clone());
        for f in &sent {
            while nic.send_room() == 0 {
                nic.try_flush();
            }
            nic.send(f.clone());
        }
        while !nic.try_flush() {}
        stop.store(true, Ordering::Relaxed);
        let rep = cap.join().unwrap().unwrap();
        assert_eq!(rep.frames, 500);
        assert_eq!(rep.bytes, sent.iter().map(|f| f.len() as u64).sum::<u64>());

        // The file: classic little-endian µs pcap, Ethernet.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 1, "LINKTYPE_ETHERNET");
        let mut rd = PcapReader::new(&bytes[..]).unwrap();
        let p = rd.next_packet().unwrap().unwrap();
        let age = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap() - p.timestamp;
        assert!(age < Duration::from_secs(60), "wall-clock timestamps");

        // Replay: twice, into a cable the test reads.
        let replay = PcapReplay::open(&path).unwrap().with_loops(2);
        assert_eq!(replay.frames(), &sent[..]);
        let (mut nic, far) = cable(8);
        let h = replay.spawn(far, Arc::new(AtomicBool::new(false)));
        let mut got = vec![];
        while got.len() < 1000 {
            nic.recv_timeout(&mut got, 1000, Duration::from_millis(100));
        }
        let (rep, _) = h.join().unwrap();
        assert_eq!((rep.sent, rep.loops_done, rep.refused, rep.stopped), (1000, 2, 0, false));
        assert_eq!(&got[..500], &sent[..]);
        assert_eq!(&got[500..], &sent[..]);

        if let Ok(out) = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .arg("-T")
            .arg("fields")
            .arg("-e")
            .arg("frame.len")
            .output()
        {
            if out.status.success() {
                let lens: Vec<usize> =
                    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().unwrap()).collect();
                assert_eq!(lens, sent.iter().map(|f| f.len()).collect::<Vec<_>>(), "tshark reads it");
            }
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn replay_paces_to_rate_and_stops_on_flag() {
        let replay = PcapReplay::from_frames(frames(10)).with_rate(10_000.0).with_loops(50);
        let mut port = crate::loopback::Null::default();
        let r = replay.run(&mut port, &AtomicBool::new(false));
        assert_eq!((r.sent, r.loops_done), (500, 50));
        assert!((0.045..0.5).contains(&r.elapsed_s), "500 frames at 10 kpps: {} s", r.elapsed_s);
        assert_eq!(port.dropped(), 500);

        let stop = Arc::new(AtomicBool::new(false));
        let (_nic, far) = cable(2);
        let h = PcapReplay::from_frames(frames(3)).with_loops(0).spawn(far, stop.clone());
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        let (r, port) = h.join().unwrap();
        assert!(r.stopped);
        // A full 2-batch cable nobody reads: two batches in it, one short of a batch queued
        // at the port, and the replay waits instead of dropping.
        assert_eq!((r.sent, port.pending_out()), (2 * BATCH as u64 + BATCH as u64 - 1, BATCH - 1));
        assert_eq!(port.dropped(), 0);
    }

    #[test]
    fn capture_truncates_past_snaplen_and_honours_limit() {
        let mut c = PcapCapture::new(Vec::new()).unwrap();
        c.write_frame(&vec![7u8; SNAPLEN as usize + 10], Duration::from_micros(1_500_000)).unwrap();
        let rep = c.report().clone();
        assert_eq!((rep.frames, rep.truncated), (1, 1));
        let bytes = c.finish().unwrap();
        let mut rd = PcapReader::new(&bytes[..]).unwrap();
        let p = rd.next_raw_packet().unwrap().unwrap();
        assert_eq!((p.data.len(), p.incl_len, p.orig_len), (SNAPLEN as usize, SNAPLEN, SNAPLEN + 10));
        assert_eq!((p.ts_sec, p.ts_frac), (1, 500_000));

        let (mut nic, far) = cable(8);
        for f in frames(20) {
            nic.send(f);
        }
        nic.flush();
        drop(nic);
        let mut far = far;
        let mut c = PcapCapture::new(Vec::new()).unwrap().with_limit(15);
        let rep = c.run(&mut far, &AtomicBool::new(false)).unwrap();
        assert_eq!(rep.frames, 15);
        let mut c = PcapCapture::new(Vec::new()).unwrap();
        assert_eq!(c.run(&mut far, &AtomicBool::new(false)).unwrap().frames, 5, "peer gone: drains, returns");
    }
}
