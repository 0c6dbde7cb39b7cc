//! A log monitor (AWS CloudWatch-Logs-like): a byte stream of log lines is matched, line
//! by line, against a set of patterns; matches are counted per pattern, and a pattern
//! raises an alert each time its count reaches a multiple of its threshold.
//!
//! Lines arrive in pieces (packets), and a line may straddle any number of them. The
//! patterns are compiled into one multi-pattern DFA (`regex-automata`, `MatchKind::All`),
//! and the matcher walks it byte by byte, keeping its state between pieces. So no line
//! is ever reassembled: every byte is read once, in place, in the NIC's buffer (the Ensō RX
//! ring, or an mbuf). [`LogMonitor::feed`] takes the next piece.

use crate::frame::{self, FiveTuple};
use crate::{Action, PacketApp};
use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::{Anchored, MatchKind};

/// Counts and alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Complete lines seen.
    pub lines: u64,
    /// Matches per pattern (a line counts once per pattern).
    pub matches: Vec<u64>,
    /// Alerts raised: (pattern, line number).
    pub alerts: Vec<(usize, u64)>,
    /// Bytes read.
    pub bytes: u64,
}

/// The monitor.
pub struct LogMonitor {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// The DFA state in the current line, carried across pieces.
    state: StateID,
    /// Patterns matched so far in the current line.
    hit: Vec<bool>,
    threshold: u64,
    pub stats: LogStats,
}

/// Why the patterns were refused.
#[derive(Debug)]
pub struct PatternError(pub String);

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl LogMonitor {
    /// Matches `patterns` (regex syntax, no look-around); alerts every `threshold`
    /// matches of a pattern.
    pub fn new(patterns: &[&str], threshold: u64) -> Result<LogMonitor, PatternError> {
        let dfa = dense::Builder::new()
            .configure(dense::Config::new().match_kind(MatchKind::All))
            .build_many(patterns)
            .map_err(|e| PatternError(e.to_string()))?;
        let start = dfa
            .universal_start_state(Anchored::No)
            .ok_or_else(|| PatternError("patterns with look-around are not supported".into()))?;
        let n = patterns.len();
        Ok(LogMonitor {
            dfa,
            start,
            state: start,
            hit: vec![false; n],
            threshold: threshold.max(1),
            stats: LogStats { matches: vec![0; n], ..LogStats::default() },
        })
    }

    fn note_matches(&mut self, state: StateID) {
        if self.dfa.is_match_state(state) {
            for i in 0..self.dfa.match_len(state) {
                self.hit[self.dfa.match_pattern(state, i).as_usize()] = true;
            }
        }
    }

    fn end_line(&mut self) {
        let eoi = self.dfa.next_eoi_state(self.state);
        self.note_matches(eoi);
        self.stats.lines += 1;
        for i in 0..self.hit.len() {
            if std::mem::take(&mut self.hit[i]) {
                self.stats.matches[i] += 1;
                if self.stats.matches[i].is_multiple_of(self.threshold) {
                    self.stats.alerts.push((i, self.stats.lines));
                }
            }
        }
        self.state = self.start;
    }

    /// Reads the next piece of the stream, in place.
    pub fn feed(&mut self, piece: &[u8]) {
        self.stats.bytes += piece.len() as u64;
        for &b in piece {
            if b == b'\n' {
                self.end_line();
                continue;
            }
            if self.dfa.is_dead_state(self.state) {
                // Nothing more can match in this line: skip to its end.
                continue;
            }
            self.state = self.dfa.next_state(self.state, b);
            self.note_matches(self.state);
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
        let res: Vec<regex::bytes::Regex> =
            PATTERNS.iter().map(|p| regex::bytes::Regex::new(p).unwrap()).collect();
        for i in 0..n {
            let line = match i % 7 {
                0 => format!("{i} ERROR disk full on /dev/sd{}", i % 3),
                1 => format!("{i} INFO user={} login failed", i % 100),
                2 => format!("{i} INFO request done latency_ms={}", (i * 37) % 1200),
                3 => format!("{i} ERROR user=7 login failed latency_ms=999"),
                _ => format!("{i} DEBUG nothing to see here {}", ".".repeat(i % 40)),
            };
            for (k, r) in res.iter().enumerate() {
                want[k] += r.is_match(line.as_bytes()) as u64;
            }
            s.push_str(&line);
            s.push('\n');
        }
        (s.into_bytes(), want)
    }

    #[test]
    fn lines_split_anywhere_are_counted_once_without_reassembly() {
        let (bytes, want) = log(5000);
        for piece in [1usize, 7, 100, 1400] {
            let mut m = LogMonitor::new(&PATTERNS, 100).unwrap();
            bytes.chunks(piece).for_each(|c| m.feed(c));
            assert_eq!(m.stats.lines, 5000);
            assert_eq!(m.stats.matches, want, "pieces of {piece}: same counts as the regex crate per line");
            assert_eq!(m.stats.alerts.len() as u64, want.iter().map(|w| w / 100).sum::<u64>());
            assert_eq!(m.stats.bytes, bytes.len() as u64);
        }
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
        assert!(LogMonitor::new(&[r"\bword\b"], 1).is_err(), "look-around refused");
    }
}
