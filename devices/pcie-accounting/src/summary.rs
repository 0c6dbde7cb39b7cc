//! What a stretch of counted traffic was on the link ([`TrafficSummary`]: TLPs and bytes by
//! class per direction) and what it costs on a given link ([`PcieReport`]).

use crate::counters::{Counters, CountersSnapshot, TlpSnapshot};
use crate::link::{Direction, LinkConfig};
use crate::tlp::*;
use serde::Serialize;

/// Bytes in the three classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ByteClasses<T = u64> {
    /// Packet / application data.
    pub payload: T,
    /// Descriptors, notifications, doorbells, MMIO data, MSI-X data.
    pub interface_metadata: T,
    /// TLP headers, framing, sequence numbers, LCRCs, dword padding.
    pub protocol_overhead: T,
}

impl ByteClasses<u64> {
    /// All bytes.
    pub fn total(&self) -> u64 {
        self.payload + self.interface_metadata + self.protocol_overhead
    }

    fn scaled(&self, f: f64) -> ByteClasses<f64> {
        ByteClasses {
            payload: self.payload as f64 * f,
            interface_metadata: self.interface_metadata as f64 * f,
            protocol_overhead: self.protocol_overhead as f64 * f,
        }
    }

    fn add(&self, o: &Self) -> Self {
        ByteClasses {
            payload: self.payload + o.payload,
            interface_metadata: self.interface_metadata + o.interface_metadata,
            protocol_overhead: self.protocol_overhead + o.protocol_overhead,
        }
    }
}

/// TLPs by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct TlpCounts<T = u64> {
    /// Memory writes of DMA writes (up).
    pub dma_write: T,
    /// Read requests of DMA reads (up).
    pub dma_read_request: T,
    /// Completions of DMA reads (down).
    pub dma_read_completion: T,
    /// Trapped MMIO writes (down).
    pub mmio_write: T,
    /// Trapped MMIO read requests (down).
    pub mmio_read_request: T,
    /// Trapped MMIO read completions (up).
    pub mmio_read_completion: T,
    /// Driver-reported doorbell writes (down).
    pub doorbell: T,
    /// MSI-X messages (up).
    pub interrupt: T,
    /// All of the above.
    pub total: T,
}

impl TlpCounts<u64> {
    fn scaled(&self, f: f64) -> TlpCounts<f64> {
        let s = |v: u64| v as f64 * f;
        TlpCounts {
            dma_write: s(self.dma_write),
            dma_read_request: s(self.dma_read_request),
            dma_read_completion: s(self.dma_read_completion),
            mmio_write: s(self.mmio_write),
            mmio_read_request: s(self.mmio_read_request),
            mmio_read_completion: s(self.mmio_read_completion),
            doorbell: s(self.doorbell),
            interrupt: s(self.interrupt),
            total: s(self.total),
        }
    }
}

/// One direction of a [`TrafficSummary`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DirectionSummary {
    /// TLPs in this direction.
    pub tlps: u64,
    /// Their bytes by class.
    pub bytes: ByteClasses,
    /// interface metadata / (payload + interface metadata) in this direction.
    pub metadata_fraction: f64,
    /// Share of this direction's link bytes spent on TLPs that carry interface metadata
    /// (their data and their overhead, including read requests for metadata).
    pub metadata_link_share: f64,
}

/// The accounting of a stretch of traffic (totals; see [`LinkConfig::report`] for per
/// packet figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct TrafficSummary {
    /// The rules the DMA operations were split by.
    pub rules: TlpRules,
    /// TLPs by kind (both directions).
    pub tlps: TlpCounts,
    /// Bytes by class (both directions).
    pub bytes: ByteClasses,
    /// interface metadata / (payload + interface metadata): the metadata share of the
    /// bytes transferred (DMA, doorbells, MMIO, MSI-X data), overhead excluded.
    pub metadata_fraction: f64,
    /// Metadata share of DMA read bytes alone.
    pub dma_read_metadata_fraction: f64,
    /// Metadata share of DMA write bytes alone.
    pub dma_write_metadata_fraction: f64,
    /// Device → host.
    pub upstream: DirectionSummary,
    /// Host → device.
    pub downstream: DirectionSummary,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Totals of one kind of TLP.
struct Part {
    up: bool,
    tlps: u64,
    bytes: ByteClasses,
    /// Link bytes of TLPs carrying interface metadata.
    meta_link: u64,
}

impl TrafficSummary {
    /// The accounting of a counters delta (`c` and `t` from the same interval, e.g. both
    /// `since` the same earlier snapshot).
    pub fn new(c: &CountersSnapshot, t: &TlpSnapshot) -> Self {
        let (ro, co) = (REQUEST_OVERHEAD, COMPLETION_OVERHEAD);
        let bytes = |payload, interface_metadata, protocol_overhead| ByteClasses {
            payload,
            interface_metadata,
            protocol_overhead,
        };
        let doorbell_overhead = t.doorbell_writes * ro;
        let parts = [
            // DMA writes: memory writes, up.
            Part {
                up: true,
                tlps: t.dma_write_tlps,
                bytes: bytes(
                    c.dma_write_bytes - c.dma_write_meta_bytes,
                    c.dma_write_meta_bytes,
                    t.dma_write_tlps * ro + t.dma_write_pad_bytes,
                ),
                meta_link: c.dma_write_meta_bytes + t.dma_write_meta_tlps * ro + t.dma_write_meta_pad_bytes,
            },
            // DMA reads: requests up ...
            Part {
                up: true,
                tlps: t.dma_read_requests,
                bytes: bytes(0, 0, t.dma_read_requests * ro),
                meta_link: t.dma_read_meta_requests * ro,
            },
            // ... completions down.
            Part {
                up: false,
                tlps: t.dma_read_completions,
                bytes: bytes(
                    c.dma_read_bytes - c.dma_read_meta_bytes,
                    c.dma_read_meta_bytes,
                    t.dma_read_completions * co + t.dma_read_pad_bytes,
                ),
                meta_link: c.dma_read_meta_bytes
                    + t.dma_read_meta_completions * co
                    + t.dma_read_meta_pad_bytes,
            },
            // Trapped MMIO writes, down.
            Part {
                up: false,
                tlps: c.mmio_writes,
                bytes: bytes(0, c.mmio_write_bytes, c.mmio_writes * ro),
                meta_link: c.mmio_write_bytes + c.mmio_writes * ro,
            },
            // Trapped MMIO reads: request down ...
            Part {
                up: false,
                tlps: c.mmio_reads,
                bytes: bytes(0, 0, c.mmio_reads * ro),
                meta_link: c.mmio_reads * ro,
            },
            // ... completion up.
            Part {
                up: true,
                tlps: c.mmio_reads,
                bytes: bytes(0, c.mmio_read_bytes, c.mmio_reads * co),
                meta_link: c.mmio_read_bytes + c.mmio_reads * co,
            },
            // Doorbells, down.
            Part {
                up: false,
                tlps: t.doorbell_writes,
                bytes: bytes(0, t.doorbell_bytes, doorbell_overhead),
                meta_link: t.doorbell_bytes + doorbell_overhead,
            },
            // MSI-X, up.
            Part {
                up: true,
                tlps: c.irqs,
                bytes: bytes(0, c.irqs * MSIX_BYTES, c.irqs * ro),
                meta_link: c.irqs * (MSIX_BYTES + ro),
            },
        ];
        let mut up = (0u64, ByteClasses::default(), 0u64);
        let mut down = (0u64, ByteClasses::default(), 0u64);
        for p in &parts {
            let d = if p.up { &mut up } else { &mut down };
            d.0 += p.tlps;
            d.1 = d.1.add(&p.bytes);
            d.2 += p.meta_link;
        }
        let direction = |(tlps, b, meta_link): (u64, ByteClasses, u64)| DirectionSummary {
            tlps,
            bytes: b,
            metadata_fraction: ratio(b.interface_metadata, b.payload + b.interface_metadata),
            metadata_link_share: ratio(meta_link, b.total()),
        };
        let total = up.1.add(&down.1);
        let tlps = TlpCounts {
            dma_write: t.dma_write_tlps,
            dma_read_request: t.dma_read_requests,
            dma_read_completion: t.dma_read_completions,
            mmio_write: c.mmio_writes,
            mmio_read_request: c.mmio_reads,
            mmio_read_completion: c.mmio_reads,
            doorbell: t.doorbell_writes,
            interrupt: c.irqs,
            total: up.0 + down.0,
        };
        TrafficSummary {
            rules: t.rules,
            tlps,
            bytes: total,
            metadata_fraction: ratio(total.interface_metadata, total.payload + total.interface_metadata),
            dma_read_metadata_fraction: ratio(c.dma_read_meta_bytes, c.dma_read_bytes),
            dma_write_metadata_fraction: ratio(c.dma_write_meta_bytes, c.dma_write_bytes),
            upstream: direction(up),
            downstream: direction(down),
        }
    }
}

/// Both snapshots of [`Counters`] at one point in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficSnapshot {
    /// Operation totals.
    pub counters: CountersSnapshot,
    /// TLP-level accounting.
    pub tlp: TlpSnapshot,
}

impl TrafficSnapshot {
    /// Traffic since `earlier`.
    pub fn since(&self, earlier: &TrafficSnapshot) -> TrafficSnapshot {
        TrafficSnapshot {
            counters: self.counters.since(&earlier.counters),
            tlp: self.tlp.since(&earlier.tlp),
        }
    }

    /// Adds `n` doorbell writes of `bytes_each` bytes that a driver reported for this
    /// stretch of traffic (as [`Counters::doorbell_writes_of`] would have counted them).
    /// Drivers report only writes to pages the device polls, which the device cannot
    /// count; their trapped writes are already in `counters.mmio_writes`.
    pub fn add_doorbells(&mut self, n: u64, bytes_each: u64) {
        self.tlp.doorbell_writes += n;
        self.tlp.doorbell_bytes += n * bytes_each;
    }

    /// The accounting of this snapshot (of a delta, usually).
    pub fn summary(&self) -> TrafficSummary {
        TrafficSummary::new(&self.counters, &self.tlp)
    }
}

impl Counters {
    /// Operation totals and TLP accounting, taken together.
    pub fn traffic_snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot { counters: self.snapshot(), tlp: self.tlp_snapshot() }
    }
}

/// One direction of a [`PcieReport`], per packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DirectionModel {
    /// TLPs per packet.
    pub tlps: f64,
    /// Bytes per packet by class.
    pub bytes: ByteClasses<f64>,
    /// All link bytes per packet (the sum of `bytes`).
    pub link_bytes: f64,
    /// interface metadata / (payload + interface metadata) in this direction.
    pub metadata_fraction: f64,
    /// Share of this direction's link bytes on TLPs carrying interface metadata.
    pub metadata_link_share: f64,
    /// Packet rate (Mpps) that saturates this direction; None without traffic.
    pub saturation_mpps: Option<f64>,
}

/// Modeled link utilisation per direction at a packet rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LinkUtilisation {
    /// The packet rate (Mpps) the utilisation is given at.
    pub at_mpps: f64,
    /// Fraction of the upstream bandwidth used (may exceed 1 above saturation).
    pub upstream: f64,
    /// Fraction of the downstream bandwidth used.
    pub downstream: f64,
}

/// The link model's view of a run: per-packet bytes and TLPs, link utilisation and the
/// PCIe-bound packet rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct PcieReport {
    /// The modeled link.
    pub link: LinkConfig,
    /// Its bandwidth per direction (bytes/s).
    pub link_bytes_per_second: f64,
    /// Packets the traffic is divided by.
    pub packets: u64,
    /// TLPs per packet by kind.
    pub tlps: TlpCounts<f64>,
    /// Bytes per packet by class, both directions.
    pub bytes: ByteClasses<f64>,
    /// interface metadata / (payload + interface metadata), both directions.
    pub metadata_fraction: f64,
    /// Packet rate (Mpps) at which the busier direction saturates; None without traffic.
    pub modeled_pcie_mpps: Option<f64>,
    /// The busier direction.
    pub bottleneck: Option<Direction>,
    /// Utilisation at the offered (or, without one, the modeled) packet rate.
    pub link_utilisation: LinkUtilisation,
    /// Device → host, per packet.
    pub upstream: DirectionModel,
    /// Host → device, per packet.
    pub downstream: DirectionModel,
    /// Modeled latency of one packet's traffic on the busier direction: one crossing
    /// plus serialization ([`LinkConfig::batch_latency_ns`]).
    pub batch_latency_ns: f64,
}

impl LinkConfig {
    /// The link model applied to `summary`, a run of `packets` packets. Utilisation is
    /// given at `offered_mpps` (e.g. the measured packet rate) or, without one, at the
    /// modeled saturation rate (the busier direction then reads 1.0).
    pub fn report(&self, summary: &TrafficSummary, packets: u64, offered_mpps: Option<f64>) -> PcieReport {
        let per = if packets == 0 { 0.0 } else { 1.0 / packets as f64 };
        let bps = self.bytes_per_second();
        let dir = |d: &DirectionSummary| {
            let link_bytes = d.bytes.total() as f64 * per;
            DirectionModel {
                tlps: d.tlps as f64 * per,
                bytes: d.bytes.scaled(per),
                link_bytes,
                metadata_fraction: d.metadata_fraction,
                metadata_link_share: d.metadata_link_share,
                saturation_mpps: (link_bytes > 0.0).then(|| bps / link_bytes / 1e6),
            }
        };
        let (upstream, downstream) = (dir(&summary.upstream), dir(&summary.downstream));
        let (bottleneck, busier) = if upstream.link_bytes >= downstream.link_bytes {
            (Direction::Upstream, upstream.link_bytes)
        } else {
            (Direction::Downstream, downstream.link_bytes)
        };
        let modeled_pcie_mpps = (busier > 0.0).then(|| bps / busier / 1e6);
        let at_mpps = offered_mpps.or(modeled_pcie_mpps).unwrap_or(0.0);
        let util = |d: &DirectionModel| d.link_bytes * at_mpps * 1e6 / bps;
        PcieReport {
            link: *self,
            link_bytes_per_second: bps,
            packets,
            tlps: summary.tlps.scaled(per),
            bytes: summary.bytes.scaled(per),
            metadata_fraction: summary.metadata_fraction,
            modeled_pcie_mpps,
            bottleneck: modeled_pcie_mpps.map(|_| bottleneck),
            link_utilisation: LinkUtilisation {
                at_mpps,
                upstream: util(&upstream),
                downstream: util(&downstream),
            },
            upstream,
            downstream,
            batch_latency_ns: self.batch_latency_ns(1, busier),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::DmaClass;

    /// Reference splitter: the TLP pieces of `[addr, addr + len)`, enumerated.
    fn pieces(addr: u64, len: u64, unit: u64) -> Vec<(u64, u64)> {
        let (mut out, mut a, end) = (Vec::new(), addr, addr + len);
        while a < end {
            let page_end = (a / PAGE + 1) * PAGE;
            let seg_end = page_end.min(end);
            while a < seg_end {
                let e = (a + unit).min(seg_end);
                out.push((a, e));
                a = e;
            }
        }
        out
    }

    fn ref_completions(r: &TlpRules, addr: u64, len: u64) -> u64 {
        let c = u64::from(r.completion_size());
        pieces(addr, len, r.max_read_request.into()).iter().map(|&(s, e)| e.div_ceil(c) - s / c).sum()
    }

    fn counters(trace: impl FnOnce(&Counters)) -> TrafficSummary {
        let c = Counters::default();
        let before = c.traffic_snapshot();
        trace(&c);
        c.traffic_snapshot().since(&before).summary()
    }

    #[test]
    fn write_of_64_bytes_is_one_tlp() {
        let s = counters(|c| c.dma_write_at(0x1000, 64, DmaClass::Data));
        assert_eq!(s.tlps.dma_write, 1);
        assert_eq!(s.tlps.total, 1);
        assert_eq!(
            s.upstream.bytes,
            ByteClasses { payload: 64, interface_metadata: 0, protocol_overhead: 24 }
        );
        assert_eq!(s.downstream.bytes.total(), 0);
    }

    #[test]
    fn write_of_1500_bytes_across_a_page_boundary() {
        // 700 B before the boundary: 256 + 256 + 188; 800 B after: 256 * 3 + 32. 7 TLPs.
        let a = 0x2000 - 700;
        assert_eq!(pieces(a, 1500, 256).len(), 7);
        let s = counters(|c| c.dma_write_at(a, 1500, DmaClass::Data));
        assert_eq!(s.tlps.dma_write, 7);
        assert_eq!(s.upstream.bytes.protocol_overhead, 7 * 24);
        // The same write starting on a page: 6 TLPs (5 × 256 + 220).
        let s = counters(|c| c.dma_write_at(0x2000, 1500, DmaClass::Data));
        assert_eq!(s.tlps.dma_write, 6);
        // At 4 KiB - 2: one 2 B TLP, then 1498 B in 6. 4094 % 4 = 2: the dwords carry 2
        // bytes before the data and, 2 + 1500 = 1502 rounding up to 1504, 2 after it.
        let s = counters(|c| c.dma_write_at(0x1000 - 2, 1500, DmaClass::Data));
        assert_eq!(s.tlps.dma_write, 1 + 6);
        assert_eq!(s.upstream.bytes.protocol_overhead, 7 * 24 + 4);
    }

    #[test]
    fn read_of_2_kib_with_mrrs_512_and_rcb_64() {
        // Aligned: 4 requests of 512 B up, 2048 / 64 = 32 completions down.
        let s = counters(|c| c.dma_read_at(0x10000, 2048, DmaClass::Data));
        assert_eq!((s.tlps.dma_read_request, s.tlps.dma_read_completion), (4, 32));
        assert_eq!(
            s.upstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 0, protocol_overhead: 4 * 24 }
        );
        assert_eq!(
            s.downstream.bytes,
            ByteClasses { payload: 2048, interface_metadata: 0, protocol_overhead: 32 * 20 }
        );
        // Unaligned by 32 B: 33 blocks touched, and the 3 inner request boundaries each
        // split one: 36 completions.
        let s = counters(|c| c.dma_read_at(0x10020, 2048, DmaClass::Metadata));
        assert_eq!((s.tlps.dma_read_request, s.tlps.dma_read_completion), (4, 36));
        assert_eq!(s.downstream.bytes.interface_metadata, 2048);
        assert_eq!(s.downstream.metadata_link_share, 1.0);
        assert_eq!(s.dma_read_metadata_fraction, 1.0);
    }

    #[test]
    fn msix_doorbell_and_trapped_mmio() {
        let s = counters(|c| c.irq());
        assert_eq!((s.tlps.interrupt, s.upstream.tlps, s.downstream.tlps), (1, 1, 0));
        assert_eq!(
            s.upstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 4, protocol_overhead: 24 }
        );

        let s = counters(|c| c.doorbell_writes(1));
        assert_eq!((s.tlps.doorbell, s.upstream.tlps, s.downstream.tlps), (1, 0, 1));
        assert_eq!(
            s.downstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 4, protocol_overhead: 24 }
        );
        let s = counters(|c| c.doorbell_writes_of(3, 8));
        assert_eq!(
            s.downstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 24, protocol_overhead: 72 }
        );

        let s = counters(|c| c.mmio_write(4));
        assert_eq!((s.tlps.mmio_write, s.downstream.tlps), (1, 1));
        assert_eq!(s.downstream.bytes.total(), 28);

        let s = counters(|c| c.mmio_read(4));
        assert_eq!((s.tlps.mmio_read_request, s.tlps.mmio_read_completion, s.tlps.total), (1, 1, 2));
        assert_eq!(
            s.downstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 0, protocol_overhead: 24 }
        );
        assert_eq!(
            s.upstream.bytes,
            ByteClasses { payload: 0, interface_metadata: 4, protocol_overhead: 20 }
        );
        assert_eq!(s.metadata_fraction, 1.0);
    }

    #[test]
    fn dropped_interrupts_and_errors_are_not_traffic() {
        let s = counters(|c| {
            c.irq_dropped();
            c.dma_error();
            c.bad_register_write();
            c.dma_write_at(0, 0, DmaClass::Data);
        });
        assert_eq!(s.tlps.total, 0);
        assert_eq!(s.bytes.total(), 0);
    }

    #[test]
    fn closed_forms_match_the_enumeration() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (mps, mrrs, rcb) in
            [(128, 128, 64), (256, 512, 64), (128, 512, 128), (512, 4096, 128), (4096, 256, 64)]
        {
            let r = TlpRules::new(mps, mrrs, rcb).unwrap();
            for _ in 0..2000 {
                let addr = next() % (1 << 20);
                let len = match next() % 4 {
                    0 => next() % 16,
                    1 => next() % 300,
                    _ => next() % 20_000,
                };
                let what = format!("{r:?} {addr:#x}+{len}");
                assert_eq!(r.write_tlps(addr, len), pieces(addr, len, mps.into()).len() as u64, "{what}");
                assert_eq!(r.read_requests(addr, len), pieces(addr, len, mrrs.into()).len() as u64, "{what}");
                assert_eq!(r.read_completions(addr, len), ref_completions(&r, addr, len), "{what}");
                let pad = dw_padding(addr, len);
                // Dwords from the one holding the first byte to the one holding the last.
                let dwords = if len == 0 { 0 } else { (addr + len - 1) / 4 - addr / 4 + 1 };
                assert_eq!(len + pad, dwords * 4, "{what}");
            }
        }
    }

    #[test]
    fn unaddressed_dma_is_split_from_a_page_boundary() {
        let s = counters(|c| {
            c.dma_write(1500, DmaClass::Data);
            c.dma_read(2048, DmaClass::Data);
        });
        assert_eq!((s.tlps.dma_write, s.tlps.dma_read_request, s.tlps.dma_read_completion), (6, 4, 32));
    }

    #[test]
    fn rules_are_per_counters_and_checked() {
        let r = TlpRules::new(128, 256, 128).unwrap();
        let c = Counters::with_tlp_rules(r);
        assert!(!c.set_tlp_rules(TlpRules::default()), "fixed at construction");
        c.dma_write_at(0, 1024, DmaClass::Data);
        c.dma_read_at(0, 1024, DmaClass::Data);
        let t = c.tlp_snapshot();
        assert_eq!(t.rules, r);
        // MPS 128: 8 writes; MRRS 256: 4 requests; completions of min(128, 128): 8.
        assert_eq!((t.dma_write_tlps, t.dma_read_requests, t.dma_read_completions), (8, 4, 8));
        let d = Counters::default();
        assert_eq!(d.tlp_rules(), TlpRules::default());
        assert!(d.set_tlp_rules(r));
        assert_eq!(d.tlp_rules(), r);

        assert_eq!(TlpRules::new(100, 512, 64), Err(LinkConfigError::MaxPayload(100)));
        assert_eq!(TlpRules::new(256, 8192, 64), Err(LinkConfigError::MaxReadRequest(8192)));
        assert_eq!(TlpRules::new(256, 512, 256), Err(LinkConfigError::ReadCompletionBoundary(256)));
        let bad = |f: fn(&mut LinkConfig)| {
            let mut l = LinkConfig::default();
            f(&mut l);
            l.tlp_rules().unwrap_err()
        };
        assert_eq!(bad(|l| l.gen = 7), LinkConfigError::Gen(7));
        assert_eq!(bad(|l| l.gen = 0), LinkConfigError::Gen(0));
        assert_eq!(bad(|l| l.lanes = 3), LinkConfigError::Lanes(3));
        assert!(matches!(bad(|l| l.one_way_latency_ns = f64::NAN), LinkConfigError::Latency(_)));
        assert_eq!(LinkConfig::default().tlp_rules(), Ok(TlpRules::default()));
    }

    #[test]
    fn link_rate_table() {
        let rows: Vec<String> = (1..=6)
            .map(|gen| {
                let l = LinkConfig { gen, lanes: 1, ..LinkConfig::default() };
                let x16 = LinkConfig { gen, lanes: 16, ..LinkConfig::default() };
                format!(
                    "gen{gen}: {:>4} GT/s x {:.6} = {:.4} GB/s per lane, x16 {:.3} GB/s",
                    LinkConfig::gts_per_lane(gen),
                    LinkConfig::encoding_efficiency(gen),
                    l.bytes_per_second() / 1e9,
                    x16.bytes_per_second() / 1e9,
                )
            })
            .collect();
        insta::assert_snapshot!(rows.join("\n"));
        // Hand-computed anchors.
        let bw = |gen, lanes| LinkConfig { gen, lanes, ..LinkConfig::default() }.bytes_per_second();
        assert_eq!(bw(1, 1), 250e6);
        assert_eq!(bw(2, 8), 4e9);
        assert!((bw(3, 16) - 8e9 * 16.0 * 128.0 / 130.0 / 8.0).abs() < 1.0);
        assert!((bw(3, 16) - 15.754e9).abs() < 1e6);
        assert!((bw(4, 16) - 31.508e9).abs() < 1e6);
        assert_eq!(LinkConfig::gts_per_lane(7), 0.0);
    }

    #[test]
    fn link_model_per_packet_and_latency() {
        // One 64 B packet received and echoed by a packetized NIC, per packet: RX data
        // write, RX descriptor write-back (16 B), TX descriptor read (16 B), TX data read,
        // one doorbell per packet (unbatched, for easy numbers).
        let s = counters(|c| {
            c.dma_write_at(0x10_0000, 64, DmaClass::Data);
            c.dma_write_at(0x20_0000, 16, DmaClass::Metadata);
            c.dma_read_at(0x30_0000, 16, DmaClass::Metadata);
            c.dma_read_at(0x10_0000, 64, DmaClass::Data);
            c.doorbell_writes(1);
        });
        // Up: 2 writes (64 + 24, 16 + 24) + 2 read requests (24 + 24) = 176 B.
        assert_eq!(s.upstream.bytes.total(), 88 + 40 + 48);
        // Down: completions 16 + 20 and 64 + 20, doorbell 4 + 24 = 148 B.
        assert_eq!(s.downstream.bytes.total(), 36 + 84 + 28);
        assert_eq!(s.metadata_fraction, 36.0 / 164.0);
        let link = LinkConfig::default();
        let r = link.report(&s, 1, None);
        assert_eq!(r.bottleneck, Some(Direction::Upstream));
        let mpps = r.modeled_pcie_mpps.unwrap();
        assert!((mpps - link.bytes_per_second() / 176.0 / 1e6).abs() < 1e-9);
        assert!((r.link_utilisation.upstream - 1.0).abs() < 1e-12);
        assert!((r.link_utilisation.downstream - 148.0 / 176.0).abs() < 1e-12);
        // Over 10 packets the per-packet figures are a tenth.
        let r10 = link.report(&s, 10, Some(mpps));
        assert!((r10.upstream.link_bytes - 17.6).abs() < 1e-9);
        assert!((r10.link_utilisation.upstream - 0.1).abs() < 1e-12);
        // Latency: 379 ns per crossing + 176 B at 15.75 GB/s.
        let ns = link.batch_latency_ns(2, 176.0);
        assert!((ns - (758.0 + 176.0 / 15.753_846_153_846_154)).abs() < 1e-6, "{ns}");
        // No traffic: nothing saturates.
        let r0 = link.report(&TrafficSummary::default(), 0, None);
        assert_eq!((r0.modeled_pcie_mpps, r0.bottleneck), (None, None));
        assert_eq!(r0.link_utilisation.upstream, 0.0);
    }

    /// A short mixed trace: a packetized RX and TX of two 64 B packets and one 1500 B
    /// packet (descriptor write-back and fetch, data, doorbells, an interrupt, a trapped
    /// register read) against an Ensō-style RX of the same bytes (back-to-back data, one
    /// notification, one doorbell).
    #[test]
    fn mixed_trace_snapshot() {
        let packetized = counters(|c| {
            let mut buf = 0x10_0000u64;
            for (i, len) in [64usize, 64, 1500].into_iter().enumerate() {
                let i = i as u64;
                c.dma_read_at(0x4_0000 + i * 16, 16, DmaClass::Metadata); // RX descriptor fetch
                c.dma_write_at(buf, len, DmaClass::Data); // RX data
                c.dma_write_at(0x4_0000 + i * 16, 16, DmaClass::Metadata); // write-back
                c.dma_read_at(0x5_0000 + i * 16, 16, DmaClass::Metadata); // TX descriptor
                c.dma_read_at(buf, len, DmaClass::Data); // TX data
                c.dma_write_at(0x5_0000 + i * 16, 16, DmaClass::Metadata); // TX write-back
                buf += 2048;
            }
            c.doorbell_writes(2); // RX tail, TX tail
            c.irq();
            c.mmio_read(4);
        });
        let enso = counters(|c| {
            c.dma_write_at(0x20_0000, 64 + 64 + 1500, DmaClass::Data); // back-to-back in the pipe
            c.dma_write_at(0x30_0000, 16, DmaClass::Metadata); // one notification
            c.dma_read_at(0x20_0000, 64 + 64 + 1500, DmaClass::Data); // TX of the same bytes
            c.dma_write_at(0x30_0010, 16, DmaClass::Metadata); // TX completion notification
            c.doorbell_writes(2);
        });
        let link = LinkConfig::default();
        let out = serde_json::json!({
            "packetized": { "summary": packetized, "report": link.report(&packetized, 3, None) },
            "enso": { "summary": enso, "report": link.report(&enso, 3, None) },
        });
        insta::assert_snapshot!(serde_json::to_string_pretty(&out).unwrap());
    }
}
