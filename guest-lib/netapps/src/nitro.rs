//! NitroSketch (Liu et al., SIGCOMM '19): a Count sketch whose rows are updated only with
//! probability `p` per packet, the skipped updates found by geometric sampling (one
//! random draw per *update*, not per packet), each update adding ±1/p; plus a heavy-hitter
//! set kept from the sampled updates. The telemetry app counts every flow and forwards
//! every packet unchanged.

use crate::frame::{self, FiveTuple};
use crate::{Action, PacketApp};
use std::collections::HashMap;

/// The sketch.
pub struct NitroSketch {
    rows: usize,
    width: usize,
    counters: Vec<f64>,
    p: f64,
    /// Updates to skip before the next one (over the flattened packet × row sequence).
    skip: u64,
    /// Row the next update applies to.
    row: usize,
    rng: u64,
    /// Heavy-hitter candidates and their last estimate.
    heavy: HashMap<FiveTuple, f64>,
    heavy_cap: usize,
    /// Packets seen.
    pub packets: u64,
    /// Row updates made (about `packets × rows × p`).
    pub updates: u64,
    /// Frames that were not IPv4 TCP/UDP (forwarded, not counted).
    pub unparsed: u64,
}

impl NitroSketch {
    /// `rows` × `width` counters, sampling probability `p` (0 < p ≤ 1), keeping up to
    /// `heavy_cap` heavy-hitter candidates.
    pub fn new(rows: usize, width: usize, p: f64, heavy_cap: usize, seed: u64) -> NitroSketch {
        let mut s = NitroSketch {
            rows: rows.max(1),
            width: width.max(1),
            counters: vec![0.0; rows.max(1) * width.max(1)],
            p: p.clamp(1e-6, 1.0),
            skip: 0,
            row: 0,
            rng: seed,
            heavy: HashMap::new(),
            heavy_cap: heavy_cap.max(1),
            packets: 0,
            updates: 0,
            unparsed: 0,
        };
        s.skip = s.geometric();
        s
    }

    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        ((frame::mix(self.rng) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Updates skipped before the next sampled one: Geometric(p) − 1.
    fn geometric(&mut self) -> u64 {
        if self.p >= 1.0 {
            return 0;
        }
        (self.uniform().ln() / (1.0 - self.p).ln()).floor() as u64
    }

    fn slot(&self, flow: &FiveTuple, row: usize) -> (usize, f64) {
        let h = flow.hash(0x6e69_7472_6f00 + row as u64);
        let col = (h % self.width as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        (row * self.width + col, sign)
    }

    /// Counts one packet of `flow`.
    pub fn update(&mut self, flow: &FiveTuple) {
        self.packets += 1;
        // This packet offers `rows` update slots; take the sampled ones.
        let mut left = self.rows - self.row;
        let mut sampled = false;
        while self.skip < left as u64 {
            let r = self.row + self.skip as usize;
            let (i, sign) = self.slot(flow, r);
            self.counters[i] += sign / self.p;
            self.updates += 1;
            sampled = true;
            left -= self.skip as usize + 1;
            self.row = r + 1;
            self.skip = self.geometric();
        }
        self.skip -= left as u64;
        self.row = 0;
        if sampled {
            self.track(flow);
        }
    }

    fn track(&mut self, flow: &FiveTuple) {
        let est = self.estimate(flow);
        if self.heavy.len() < self.heavy_cap || self.heavy.contains_key(flow) {
            self.heavy.insert(*flow, est);
            return;
        }
        // Replace the smallest candidate if this flow is now larger.
        let min = self.heavy.iter().min_by(|a, b| a.1.total_cmp(b.1)).map(|(k, v)| (*k, *v));
        if let Some((k, v)) = min {
            if est > v {
                self.heavy.remove(&k);
                self.heavy.insert(*flow, est);
            }
        }
    }

    /// The estimated packet count of `flow` (median over rows).
    pub fn estimate(&self, flow: &FiveTuple) -> f64 {
        let mut v: Vec<f64> = (0..self.rows)
            .map(|r| {
                let (i, sign) = self.slot(flow, r);
                sign * self.counters[i]
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    }

    /// The `k` flows with the largest estimates among the candidates, largest first.
    pub fn heavy_hitters(&self, k: usize) -> Vec<(FiveTuple, f64)> {
        let mut v: Vec<(FiveTuple, f64)> = self.heavy.keys().map(|f| (*f, self.estimate(f))).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(k);
        v
    }
}

impl PacketApp for NitroSketch {
    fn handle(&mut self, frame: &mut [u8], _out: &mut Vec<u8>) -> Action {
        match FiveTuple::parse(frame) {
            Some(t) => self.update(&t),
            None => self.unparsed += 1,
        }
        Action::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Zipf;

    fn flow(i: usize) -> FiveTuple {
        FiveTuple {
            src_ip: 0x0a00_0000 + i as u32,
            dst_ip: 0x0a01_0001,
            src_port: 1000,
            dst_port: 80,
            proto: 17,
        }
    }

    #[test]
    fn heavy_hitters_of_a_zipf_workload_are_found_and_estimated_closely() {
        let (flows, packets) = (10_000, 400_000);
        let mut z = Zipf::new(flows, 1.1, 42);
        let mut exact = vec![0u64; flows];
        let mut s = NitroSketch::new(5, 4096, 0.1, 64, 9);
        for _ in 0..packets {
            let r = z.next_rank();
            exact[r] += 1;
            s.update(&flow(r));
        }
        // About p of the row updates were made: the point of NitroSketch.
        let want = packets as f64 * 5.0 * 0.1;
        assert!(
            (s.updates as f64 - want).abs() < want * 0.05,
            "{} updates, expected about {want}",
            s.updates
        );
        // The top 10 flows: each found, each estimate within 10 % of its exact count.
        let top = s.heavy_hitters(10);
        let mut true_top: Vec<usize> = (0..flows).collect();
        true_top.sort_by_key(|&i| std::cmp::Reverse(exact[i]));
        let found = true_top[..10].iter().filter(|&&i| top.iter().any(|(f, _)| *f == flow(i))).count();
        assert!(found >= 9, "found {found} of the top 10");
        for &i in &true_top[..10] {
            let e = s.estimate(&flow(i));
            let x = exact[i] as f64;
            assert!((e - x).abs() < 0.1 * x, "flow {i}: estimate {e}, exact {x}");
        }
    }

    #[test]
    fn with_p_one_it_is_an_exact_count_sketch_for_a_few_flows() {
        let mut s = NitroSketch::new(3, 1024, 1.0, 8, 1);
        for i in 0..5 {
            for _ in 0..(i + 1) * 10 {
                s.update(&flow(i));
            }
        }
        for i in 0..5 {
            assert_eq!(s.estimate(&flow(i)), ((i + 1) * 10) as f64);
        }
        assert_eq!(s.updates, 150 * 3);
        let mut f = crate::frame::udp_frame(&flow(1), b"x");
        assert_eq!(s.handle(&mut f, &mut Vec::new()), Action::Forward);
        assert_eq!(s.packets, 151);
    }
}
