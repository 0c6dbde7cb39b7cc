//! A log monitor (AWS CloudWatch-Logs-like): a byte stream of log lines is matched, line
//! by line, against a set of patterns (the `regex` crate's `RegexSet`); matches are
//! counted per pattern and a pattern raises an alert each time its count reaches a
//! multiple of its threshold.
//!
//! Lines arrive in pieces (packets). [`LogMonitor::feed_contiguous`] processes every complete
//! line of a contiguous byte range in place and reports how many bytes it consumed: a
//! caller whose ring keeps the unconsumed tail in front of the next bytes (an Ensō pipe
//! carrying the stream) gives it the rest of a straddling line with no copy.
//! [`LogMonitor::feed`] is for discontiguous pieces: only the piece of a line that straddles
//! two pieces is copied.

use crate::frame::{self, FiveTuple};
use crate::{Action, PacketApp};
use regex::bytes::RegexSet;

/// Counts and alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Complete lines seen.
    pub lines: u64,
    /// Matches per pattern.
    pub matches: Vec<u64>,
    /// Alerts raised: (pattern, line number).
    pub alerts: Vec<(usize, u64)>,
    /// Bytes copied to join lines that straddled pieces.
    pub copied: u64,
    /// Lines longer than the limit, dropped.
    pub overlong: u64,
}

/// The monitor.
pub struct LogMonitor {
    set: RegexSet,
    threshold: u64,
    carry: Vec<u8>,
    max_line: usize,
    pub stats: LogStats,
}

impl LogMonitor {
    /// Matches `patterns`; alerts every `threshold` matches of a pattern.
    pub fn new(patterns: &[&str], threshold: u64) -> Result<LogMonitor, regex::Error> {
        let set = RegexSet::new(patterns)?;
        let n = set.len();
        Ok(LogMonitor {
            set,
            threshold: threshold.max(1),
            carry: Vec::new(),
            max_line: 16 << 10,
            stats: LogStats { matches: vec![0; n], ..LogStats::default() },
        })
    }

    fn line(&mut self, line: &[u8]) {
        self.stats.lines += 1;
        for i in self.set.matches(line).iter() {
            self.stats.matches[i] += 1;
            if self.stats.matches[i].is_multiple_of(self.threshold) {
                self.stats.alerts.push((i, self.stats.lines));
            }
        }
    }

    /// Processes the complete lines at the start of `bytes` in place; returns the bytes
    /// consumed (through the last newline). The rest is an unfinished line.
    pub fn feed_contiguous(&mut self, bytes: &[u8]) -> usize {
        let mut start = 0;
        while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            self.line(&bytes[start..end]);
            start = end + 1;
        }
        if bytes.len() - start > self.max_line {
            self.stats.overlong += 1;
            return bytes.len();
        }
        start
    }

    /// Processes one piece of the stream (no ring behind it): complete lines in place,
    /// the unfinished tail kept for the next piece.
    pub fn feed(&mut self, piece: &[u8]) {
        let mut rest = piece;
        if !self.carry.is_empty() {
            match piece.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&piece[..nl]);
                    self.stats.copied += nl as u64;
                    self.line(&line);
                    line.clear();
                    self.carry = line;
                    rest = &piece[nl + 1..];
                }
                None => {
                    self.stats.copied += piece.len() as u64;
                    self.carry.extend_from_slice(piece);
                    if self.carry.len() > self.max_line {
                        self.stats.overlong += 1;
                        self.carry.clear();
                    }
                    return;
                }
            }
        }
        let used = self.feed_contiguous(rest);
        if used < rest.len() {
            self.stats.copied += (rest.len() - used) as u64;
            self.carry.extend_from_slice(&rest[used..]);
        }
    }
}

impl LogMonitor {
    /// The acknowledgement payload: lines so far, then the matches of each pattern, as
    /// little-endian u64s (the stream's flow control, as a TCP-like receiver acks).
    pub fn ack(&self) -> Vec<u8> {
        std::iter::once(self.stats.lines)
            .chain(self.stats.matches.iter().copied())
            .flat_map(u64::to_le_bytes)
            .collect()
    }
}

impl PacketApp for LogMonitor {
    /// Each UDP payload is the next piece of the stream; it is acknowledged with the
    /// counts so far.
    fn handle(&mut self, frame: &mut [u8], out: &mut Vec<u8>) -> Action {
        if FiveTuple::parse(frame).is_none_or(|t| t.proto != 17) {
            return Action::Consume;
        }
        let piece = &frame[frame::L4 + 8..];
        self.feed(piece);
        frame::udp_reply(frame, &self.ack(), out);
        Action::Reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERNS: [&str; 3] = [r"ERROR", r"user=\d+ login failed", r"latency_ms=([5-9]\d{2}|\d{4,})"];

    fn log(n: usize) -> (Vec<u8>, Vec<u64>) {
        let mut s = String::new();
        let mut want = vec![0u64; 3];
        for i in 0..n {
            let line = match i % 7 {
                0 => format!("{i} ERROR disk full on /dev/sd{}", i % 3),
                1 => format!("{i} INFO user={} login failed", i % 100),
                2 => format!("{i} INFO request done latency_ms={}", (i * 37) % 1200),
                _ => format!("{i} DEBUG nothing to see here {}", ".".repeat(i % 40)),
            };
            let b = line.as_bytes();
            for (k, p) in PATTERNS.iter().enumerate() {
                want[k] += regex::bytes::Regex::new(p).unwrap().is_match(b) as u64;
            }
            s.push_str(&line);
            s.push('\n');
        }
        (s.into_bytes(), want)
    }

    #[test]
    fn lines_split_anywhere_are_counted_once() {
        let (bytes, want) = log(5000);
        for piece in [1usize, 7, 100, 1400] {
            let mut m = LogMonitor::new(&PATTERNS, 100).unwrap();
            bytes.chunks(piece).for_each(|c| m.feed(c));
            assert_eq!(m.stats.lines, 5000);
            assert_eq!(m.stats.matches, want, "pieces of {piece}");
            assert_eq!(m.stats.alerts.len() as u64, want.iter().map(|w| w / 100).sum::<u64>());
        }
        // In a ring, nothing is copied: the caller keeps the unfinished tail in place.
        let mut m = LogMonitor::new(&PATTERNS, 100).unwrap();
        let (mut start, mut end) = (0, 0);
        while start < bytes.len() {
            end = (end + 1400).min(bytes.len());
            start += m.feed_contiguous(&bytes[start..end]);
        }
        assert_eq!((m.stats.matches.clone(), m.stats.copied), (want, 0));
    }

    #[test]
    fn udp_pieces_and_bad_patterns() {
        let mut m = LogMonitor::new(&PATTERNS, 1).unwrap();
        let t = FiveTuple { src_ip: 1, dst_ip: 2, src_port: 514, dst_port: 514, proto: 17 };
        let mut f = frame::udp_frame(&t, b"1 ERROR x\n2 ER");
        let mut out = Vec::new();
        assert_eq!(m.handle(&mut f, &mut out), Action::Reply);
        let mut f = frame::udp_frame(&t, b"ROR y\n");
        m.handle(&mut f, &mut out);
        assert_eq!((m.stats.lines, m.stats.matches[0], m.stats.alerts.len()), (2, 2, 2));
        assert_eq!(&out[frame::L4 + 8..frame::L4 + 16], &2u64.to_le_bytes(), "acked with the line count");
        assert_eq!(m.handle(&mut [0u8; 10], &mut out), Action::Consume);
        assert!(LogMonitor::new(&["("], 1).is_err());
    }
}
