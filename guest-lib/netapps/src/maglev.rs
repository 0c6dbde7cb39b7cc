//! Maglev (Eisenbud et al., NSDI '16): a load balancer whose lookup table of prime size
//! `M` is filled from per-backend permutations (`offset + j·skip mod M`), so backends get
//! near-equal shares and a change of the backend set moves few entries. A connection
//! table keeps established flows on their backend across changes.

use crate::frame::{self, FiveTuple};
use crate::{Action, PacketApp};
use std::collections::HashMap;

/// A backend server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Its name (what its permutation derives from).
    pub name: String,
    /// Its MAC and IPv4 address (what the balancer rewrites the destination to).
    pub mac: [u8; 6],
    pub ip: u32,
}

/// Counts of the balancer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevStats {
    /// Frames forwarded to a backend.
    pub forwarded: u64,
    /// Frames dropped: not IPv4 TCP/UDP, or no backend.
    pub dropped: u64,
    /// Forwarded frames that hit the connection table.
    pub tracked: u64,
}

/// The load balancer.
pub struct Maglev {
    size: usize,
    backends: Vec<Option<Backend>>,
    table: Vec<u16>,
    conns: HashMap<FiveTuple, u16>,
    max_conns: usize,
    pub stats: MaglevStats,
}

/// The default table size (prime, as the paper's smaller setting).
pub const DEFAULT_SIZE: usize = 65_537;

fn name_hash(name: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    frame::mix(h)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl Maglev {
    /// A balancer with a table of `size` entries (a prime) over `backends`, tracking up
    /// to `max_conns` connections.
    pub fn new(size: usize, backends: Vec<Backend>, max_conns: usize) -> Maglev {
        assert!(is_prime(size), "the Maglev table size must be prime");
        let mut m = Maglev {
            size,
            backends: backends.into_iter().map(Some).collect(),
            table: Vec::new(),
            conns: HashMap::new(),
            max_conns,
            stats: MaglevStats::default(),
        };
        m.populate();
        m
    }

    /// The lookup table (backend index per entry; `u16::MAX` when there are none).
    pub fn table(&self) -> &[u16] {
        &self.table
    }

    /// Fills the table: backends take turns claiming the next free entry of their
    /// permutation (the paper's Algorithm 1).
    fn populate(&mut self) {
        let m = self.size;
        let live: Vec<usize> = (0..self.backends.len()).filter(|&i| self.backends[i].is_some()).collect();
        self.table = vec![u16::MAX; m];
        if live.is_empty() {
            return;
        }
        let perm: Vec<(usize, usize)> = live
            .iter()
            .map(|&i| {
                let name = &self.backends[i].as_ref().map(|b| b.name.clone()).unwrap_or_default();
                let offset = (name_hash(name, 0x6d61_676c) % m as u64) as usize;
                let skip = (name_hash(name, 0x6576_3031) % (m as u64 - 1) + 1) as usize;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; live.len()];
        let mut filled = 0;
        'fill: loop {
            for (k, &i) in live.iter().enumerate() {
                let (offset, skip) = perm[k];
                let mut c = (offset + next[k] * skip) % m;
                while self.table[c] != u16::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                self.table[c] = i as u16;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }

    /// Adds a backend (the table is rebuilt); returns its index.
    pub fn add_backend(&mut self, b: Backend) -> usize {
        self.backends.push(Some(b));
        self.populate();
        self.backends.len() - 1
    }

    /// Removes backend `i`: the table is rebuilt and its connections forgotten (the
    /// others stay where they are).
    pub fn remove_backend(&mut self, i: usize) {
        if let Some(slot) = self.backends.get_mut(i) {
            *slot = None;
            self.conns.retain(|_, b| *b as usize != i);
            self.populate();
        }
    }

    /// The backend index for `flow` (connection table first, then the lookup table).
    pub fn pick(&mut self, flow: &FiveTuple) -> Option<usize> {
        if let Some(&b) = self.conns.get(flow) {
            self.stats.tracked += 1;
            return Some(b as usize);
        }
        let b = self.table.get((flow.hash(0x4d61_676c_6576) % self.size as u64) as usize).copied()?;
        if b == u16::MAX {
            return None;
        }
        if self.conns.len() >= self.max_conns {
            // A full table restarts (the paper's tables age entries out; this is the
            // simplest bound that keeps memory fixed).
            self.conns.clear();
        }
        self.conns.insert(*flow, b);
        Some(b as usize)
    }

    /// The backend at index `i`.
    pub fn backend(&self, i: usize) -> Option<&Backend> {
        self.backends.get(i).and_then(|b| b.as_ref())
    }
}

impl PacketApp for Maglev {
    fn handle(&mut self, frame: &mut [u8], _out: &mut Vec<u8>) -> Action {
        let Some(t) = FiveTuple::parse(frame) else {
            self.stats.dropped += 1;
            return Action::Consume;
        };
        match self.pick(&t).and_then(|i| self.backend(i).map(|b| (b.mac, b.ip))) {
            Some((mac, ip)) => {
                frame::rewrite_destination(frame, mac, ip);
                self.stats.forwarded += 1;
                Action::Forward
            }
            None => {
                self.stats.dropped += 1;
                Action::Consume
            }
        }
    }
}

/// `n` backends named `backend-<i>` at 10.2.0.i.
pub fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            name: format!("backend-{i}"),
            mac: [2, 0, 0, 2, (i >> 8) as u8, i as u8],
            ip: 0x0a02_0000 + i as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_removing_one_of_n_moves_about_one_nth() {
        let n = 10;
        let mut m = Maglev::new(5003, backends(n), 1 << 16);
        let mut share = vec![0usize; n];
        m.table().iter().for_each(|&b| share[b as usize] += 1);
        let (lo, hi) = (share.iter().min().copied().unwrap(), share.iter().max().copied().unwrap());
        assert!(hi - lo <= 5003 / n / 10, "near-equal shares: {share:?}");
        let before = m.table().to_vec();
        m.remove_backend(3);
        let after = m.table().to_vec();
        assert!(!after.contains(&3));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let lost = before.iter().filter(|&&b| b == 3).count();
        // Every entry of the removed backend moves; of the others, only a few.
        assert!(moved >= lost);
        let extra = (moved - lost) as f64 / 5003.0;
        assert!(moved as f64 / 5003.0 < 1.5 / n as f64, "moved {moved} of 5003 (1/N = {})", 5003 / n);
        assert!(extra < 0.05, "entries moved between surviving backends: {extra}");
        // Adding it back restores most of the table.
        m.add_backend(Backend { name: "backend-3".into(), mac: [0; 6], ip: 7 });
        let restored =
            before.iter().zip(m.table()).filter(|(a, b)| a == b || (**a == 3 && **b == 10)).count();
        assert!(restored as f64 / 5003.0 > 0.9);
    }

    #[test]
    fn connections_stay_on_their_backend_and_frames_are_rewritten() {
        let mut m = Maglev::new(251, backends(4), 1024);
        let t =
            FiveTuple { src_ip: 0x0a00_0005, dst_ip: 0x0a01_0001, src_port: 4000, dst_port: 80, proto: 6 };
        let first = m.pick(&t).unwrap();
        // Remove another backend: the tracked connection does not move.
        let other = (first + 1) % 4;
        m.remove_backend(other);
        assert_eq!(m.pick(&t), Some(first));
        let mut f = frame::udp_frame(&FiveTuple { proto: 17, ..t }, b"x");
        let mut out = Vec::new();
        assert_eq!(m.handle(&mut f, &mut out), Action::Forward);
        let i = m.pick(&FiveTuple { proto: 17, ..t }).unwrap();
        let b = m.backend(i).unwrap().clone();
        assert_eq!(FiveTuple::parse(&f).unwrap().dst_ip, b.ip);
        assert_eq!(&f[0..6], &b.mac);
        assert_eq!(m.handle(&mut [0u8; 20], &mut out), Action::Consume);
        assert_eq!(m.stats.dropped, 1);
    }
}
