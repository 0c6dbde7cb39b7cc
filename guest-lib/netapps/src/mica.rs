//! A MICA-style key-value store (Lim et al., NSDI '14): keys hash to partitions; each
//! partition has a *lossy* set-associative index (a full bucket evicts its oldest entry)
//! over a *circular log* (new items append; old ones are overwritten when the log wraps).
//! A GET therefore returns the latest value SET for the key, or a miss; never a stale one.
//!
//! Requests and replies are UDP payloads (little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | op: 1 GET, 2 SET |
//! | 1 | 1 | status (replies): 0 OK, 1 MISS, 2 BAD REQUEST |
//! | 2 | 2 | key length (1..=[`MAX_KEY`]) |
//! | 4 | 4 | value length (SET requests, GET hits; at most [`MAX_VALUE`]) |
//! | 8 | 8 | request ID (echoed) |
//! | 16 | key, then value | |

use crate::frame::{self, FiveTuple};
use crate::{Action, PacketApp};

/// Request header bytes.
pub const HEADER: usize = 16;
/// GET.
pub const OP_GET: u8 = 1;
/// SET.
pub const OP_SET: u8 = 2;
/// Done (a GET hit, or a SET stored).
pub const OK: u8 = 0;
/// GET of a key not (or no longer) in the store.
pub const MISS: u8 = 1;
/// Malformed request.
pub const BAD: u8 = 2;
/// Longest key.
pub const MAX_KEY: usize = 255;
/// Longest value.
pub const MAX_VALUE: usize = 1024;
/// Slots per index bucket.
const WAYS: usize = 8;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: u8,
    pub id: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Request<'a> {
    /// Parses a request payload.
    pub fn parse(p: &'a [u8]) -> Option<Request<'a>> {
        if p.len() < HEADER {
            return None;
        }
        let klen = u16::from_le_bytes([p[2], p[3]]) as usize;
        let vlen = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let id = u64::from_le_bytes(p[8..16].try_into().ok()?);
        if !(1..=MAX_KEY).contains(&klen) || vlen > MAX_VALUE || p.len() < HEADER + klen + vlen {
            return None;
        }
        let key = &p[HEADER..HEADER + klen];
        let value = &p[HEADER + klen..HEADER + klen + vlen];
        matches!(p[0], OP_GET | OP_SET).then_some(Request { op: p[0], id, key, value })
    }
}

/// Encodes a message (request or reply).
pub fn encode(op: u8, status: u8, id: u64, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(op);
    out.push(status);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u16,
    /// Absolute log offset of the item (0: empty).
    at: u64,
}

/// One partition: index and log.
struct Partition {
    buckets: Vec<[Slot; WAYS]>,
    log: Vec<u8>,
    /// Absolute offset of the next append (starts at 1; 0 marks an empty slot).
    head: u64,
}

impl Partition {
    fn new(buckets: usize, log_bytes: usize) -> Partition {
        Partition {
            buckets: vec![[Slot::default(); WAYS]; buckets.max(1)],
            log: vec![0; log_bytes.max(64)],
            head: 1,
        }
    }

    fn read_at(&self, at: u64, out: &mut [u8]) {
        let n = self.log.len() as u64;
        for (k, b) in out.iter_mut().enumerate() {
            *b = self.log[((at + k as u64) % n) as usize];
        }
    }

    fn write_at(&mut self, at: u64, data: &[u8]) {
        let n = self.log.len() as u64;
        let start = (at % n) as usize;
        let first = data.len().min(self.log.len() - start);
        self.log[start..start + first].copy_from_slice(&data[..first]);
        self.log[..data.len() - first].copy_from_slice(&data[first..]);
    }

    /// The item at `at`, if the log still holds it: (key length, value length).
    fn item(&self, at: u64) -> Option<(usize, usize)> {
        if at == 0 || at + (self.log.len() as u64) < self.head + 6 {
            return None;
        }
        let mut h = [0u8; 6];
        self.read_at(at, &mut h);
        let (k, v) = (
            u16::from_le_bytes([h[0], h[1]]) as usize,
            u32::from_le_bytes([h[2], h[3], h[4], h[5]]) as usize,
        );
        // Intact only if no later append wrapped onto any of its bytes.
        (self.head - at <= self.log.len() as u64 && at + (6 + k + v) as u64 <= self.head).then_some((k, v))
    }

    fn key_matches(&self, at: u64, key: &[u8]) -> Option<usize> {
        let (k, v) = self.item(at)?;
        if k != key.len() {
            return None;
        }
        let mut buf = vec![0u8; k];
        self.read_at(at + 6, &mut buf);
        (buf == key).then_some(v)
    }
}

/// Counts of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MicaStats {
    pub gets: u64,
    pub sets: u64,
    pub hits: u64,
    pub misses: u64,
    pub bad: u64,
    /// Index entries evicted by a full bucket.
    pub evictions: u64,
}

/// The store.
pub struct Mica {
    parts: Vec<Partition>,
    pub stats: MicaStats,
    scratch: Vec<u8>,
}

fn key_hash(key: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    frame::mix(h)
}

impl Mica {
    /// `partitions` partitions, each with `buckets` 8-way buckets and a `log_bytes` log.
    pub fn new(partitions: usize, buckets: usize, log_bytes: usize) -> Mica {
        Mica {
            parts: (0..partitions.max(1)).map(|_| Partition::new(buckets, log_bytes)).collect(),
            stats: MicaStats::default(),
            scratch: Vec::new(),
        }
    }

    fn locate(&self, key: &[u8]) -> (usize, usize, u16) {
        let h = key_hash(key);
        let p = (h % self.parts.len() as u64) as usize;
        let b = ((h >> 20) % self.parts[p].buckets.len() as u64) as usize;
        (p, b, (h >> 48) as u16 | 1)
    }

    /// The latest value of `key`, or None (never stored, or lost to the index or log).
    pub fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.stats.gets += 1;
        let (p, b, tag) = self.locate(key);
        let part = &self.parts[p];
        for s in part.buckets[b] {
            if s.tag == tag {
                if let Some(v) = part.key_matches(s.at, key) {
                    let mut out = vec![0u8; v];
                    part.read_at(s.at + 6 + key.len() as u64, &mut out);
                    self.stats.hits += 1;
                    return Some(out);
                }
            }
        }
        self.stats.misses += 1;
        None
    }

    /// Stores `value` for `key`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        self.stats.sets += 1;
        let (p, b, tag) = self.locate(key);
        let part = &mut self.parts[p];
        let at = part.head;
        let mut item = Vec::with_capacity(6 + key.len() + value.len());
        item.extend_from_slice(&(key.len() as u16).to_le_bytes());
        item.extend_from_slice(&(value.len() as u32).to_le_bytes());
        item.extend_from_slice(key);
        item.extend_from_slice(value);
        part.write_at(at, &item);
        part.head += item.len() as u64;
        // The key's own slot, else an empty or dead one, else the oldest (evicted).
        let bucket = part.buckets[b];
        let own = bucket.iter().position(|s| s.tag == tag && part.key_matches(s.at, key).is_some());
        let free = || bucket.iter().position(|s| part.item(s.at).is_none());
        let i = match own.or_else(free) {
            Some(i) => i,
            None => {
                self.stats.evictions += 1;
                (0..WAYS).min_by_key(|&i| bucket[i].at).unwrap_or(0)
            }
        };
        part.buckets[b][i] = Slot { tag, at };
    }

    /// Executes a request payload; the reply payload goes to `out`.
    pub fn execute(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let Some(r) = Request::parse(payload) else {
            self.stats.bad += 1;
            let id = payload.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
            encode(payload.first().copied().unwrap_or(0), BAD, id, &[], &[], out);
            return;
        };
        match r.op {
            OP_GET => match self.get(r.key) {
                Some(v) => encode(OP_GET, OK, r.id, r.key, &v, out),
                None => encode(OP_GET, MISS, r.id, r.key, &[], out),
            },
            _ => {
                self.set(r.key, r.value);
                encode(OP_SET, OK, r.id, r.key, &[], out);
            }
        }
    }
}

impl PacketApp for Mica {
    fn handle(&mut self, frame: &mut [u8], out: &mut Vec<u8>) -> Action {
        let udp = FiveTuple::parse(frame).is_some_and(|t| t.proto == 17);
        if !udp {
            self.stats.bad += 1;
            return Action::Consume;
        }
        let mut reply = std::mem::take(&mut self.scratch);
        self.execute(&frame[frame::L4 + 8..], &mut reply);
        frame::udp_reply(frame, &reply, out);
        self.scratch = reply;
        Action::Reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Zipf;
    use std::collections::HashMap;

    #[test]
    fn every_get_returns_the_latest_set_or_a_miss() {
        // Small enough that the log wraps and buckets overflow.
        let mut m = Mica::new(4, 64, 32 << 10);
        let mut truth: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut z = Zipf::new(5000, 0.99, 3);
        let (mut gets, mut misses) = (0, 0);
        for i in 0..200_000u64 {
            let key = format!("key-{}", z.next_rank()).into_bytes();
            if i % 4 == 0 {
                let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
                m.set(&key, &value);
                truth.insert(key, value);
            } else {
                gets += 1;
                match m.get(&key) {
                    Some(v) => assert_eq!(Some(&v), truth.get(&key), "a GET returned a stale value"),
                    None => misses += 1,
                }
            }
        }
        assert_eq!(m.stats.misses, misses);
        assert!(m.stats.evictions > 0, "the index is lossy under this load");
        // Popular keys stay: most GETs hit.
        assert!(misses * 2 < gets, "{misses} misses of {gets} GETs");
    }

    #[test]
    fn udp_requests_get_replies() {
        let t = FiveTuple { src_ip: 1, dst_ip: 2, src_port: 3000, dst_port: 9000, proto: 17 };
        let mut m = Mica::new(2, 16, 4096);
        let (mut p, mut out) = (Vec::new(), Vec::new());
        encode(OP_SET, 0, 7, b"k", b"v1", &mut p);
        let mut f = frame::udp_frame(&t, &p);
        assert_eq!(m.handle(&mut f, &mut out), Action::Reply);
        let reply = &out[frame::L4 + 8..];
        assert_eq!((reply[0], reply[1]), (OP_SET, OK));
        encode(OP_GET, 0, 8, b"k", &[], &mut p);
        let mut f = frame::udp_frame(&t, &p);
        m.handle(&mut f, &mut out);
        let r = Request::parse(&out[frame::L4 + 8..]).unwrap();
        assert_eq!((r.id, r.key, r.value), (8, &b"k"[..], &b"v1"[..]));
        assert_eq!(out[frame::L4 + 9], OK);
        encode(OP_GET, 0, 9, b"nope", &[], &mut p);
        let mut f = frame::udp_frame(&t, &p);
        m.handle(&mut f, &mut out);
        assert_eq!(out[frame::L4 + 9], MISS);
        let mut f = frame::udp_frame(&t, &[9; 3]);
        m.handle(&mut f, &mut out);
        assert_eq!(out[frame::L4 + 9], BAD);
        assert_eq!(m.stats.bad, 1);
    }
}
