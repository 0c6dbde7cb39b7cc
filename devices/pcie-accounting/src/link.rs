//! The link model: generation, width, TLP settings and one-way latency; what the link
//! carries per second and how long a batch takes.

use crate::tlp::{LinkConfigError, TlpRules};
use serde::Serialize;

/// A PCIe link: generation, width, the TLP settings and the one-way latency.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct LinkConfig {
    /// PCIe generation, 1..=6.
    pub gen: u8,
    /// Link width.
    pub lanes: u8,
    /// Max payload size (bytes).
    pub max_payload: u32,
    /// Max read request size (bytes).
    pub max_read_request: u32,
    /// Read completion boundary (bytes).
    pub read_completion_boundary: u32,
    /// One-way device ↔ host latency (ns).
    pub one_way_latency_ns: f64,
}

impl Default for LinkConfig {
    /// Gen3 x16 (the seed's Ensō FPGA; an E810 is Gen4 x16), MPS 256, MRRS 512, RCB 64,
    /// 379 ns one way (the seed's intra-host PCIe latency).
    fn default() -> Self {
        let r = TlpRules::default();
        LinkConfig {
            gen: 3,
            lanes: 16,
            max_payload: r.max_payload,
            max_read_request: r.max_read_request,
            read_completion_boundary: r.read_completion_boundary,
            one_way_latency_ns: 379.0,
        }
    }
}

/// A direction of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Device → host: DMA writes, read requests, MSI-X, MMIO read completions.
    Upstream,
    /// Host → device: read completions, MMIO writes and read requests, doorbells.
    Downstream,
}

impl LinkConfig {
    /// The configuration checked; returns its TLP rules.
    pub fn tlp_rules(&self) -> Result<TlpRules, LinkConfigError> {
        if !(1..=6).contains(&self.gen) {
            return Err(LinkConfigError::Gen(self.gen));
        }
        if !matches!(self.lanes, 1 | 2 | 4 | 8 | 12 | 16 | 32) {
            return Err(LinkConfigError::Lanes(self.lanes));
        }
        if !(self.one_way_latency_ns.is_finite() && self.one_way_latency_ns >= 0.0) {
            return Err(LinkConfigError::Latency(self.one_way_latency_ns));
        }
        TlpRules::new(self.max_payload, self.max_read_request, self.read_completion_boundary)
    }

    /// Transfer rate of one lane (GT/s) of generation `gen` (0 for an unknown one).
    pub fn gts_per_lane(gen: u8) -> f64 {
        match gen {
            1 => 2.5,
            2 => 5.0,
            3 => 8.0,
            4 => 16.0,
            5 => 32.0,
            6 => 64.0,
            _ => 0.0,
        }
    }

    /// Fraction of the line rate that carries link-layer bytes for generation `gen`.
    pub fn encoding_efficiency(gen: u8) -> f64 {
        match gen {
            1 | 2 => 8.0 / 10.0,
            3..=5 => 128.0 / 130.0,
            6 => 242.0 / 256.0,
            _ => 0.0,
        }
    }

    /// Bytes per second the link carries in each direction.
    pub fn bytes_per_second(&self) -> f64 {
        Self::gts_per_lane(self.gen) * 1e9 * Self::encoding_efficiency(self.gen) * f64::from(self.lanes) / 8.0
    }

    /// Time to put `bytes` on one direction of the link (ns).
    pub fn serialization_ns(&self, bytes: f64) -> f64 {
        bytes / self.bytes_per_second() * 1e9
    }

    /// Modeled latency of a batch (ns): `crossings` one-way link traversals on the
    /// critical path (a posted write is 1, a DMA read 2: request and completion) plus the
    /// serialization of `link_bytes` (payload, metadata and overhead) on one direction.
    pub fn batch_latency_ns(&self, crossings: u32, link_bytes: f64) -> f64 {
        self.one_way_latency_ns * f64::from(crossings) + self.serialization_ns(link_bytes)
    }
}
