//! A small discrete-event model of the echo's per-packet latency under each notification
//! mode: what `testbed bench echo` reports as `modeled_latency_ns`.
//!
//! The emulated machine cannot show PCIe latency (its "link" is shared memory), so the
//! latency side of the seed's notification trade-off is modeled, from the link model of
//! [`pcie_model::LinkConfig`] (one-way latency, default 379 ns; serialization at the link
//! rate) and a software cost taken from the measured driver.
//!
//! # What is simulated
//! One pipe (or one RX queue), one driver core, `packets` packets of `size` bytes arriving
//! at the NIC in bursts of `batch` (all packets of a burst at the same instant, bursts
//! evenly spaced so the offered load is `offered_mpps`). Events, in time order:
//!
//! 1. **Arrival** at the NIC: the packet's data DMA is queued on the upstream link (device →
//!    host), which serializes every TLP at the link rate (data, then notifications, in
//!    issue order: one FIFO). Ensō data occupies whole 64 B flits; packetized data its
//!    frame length; each TLP of at most `max_payload` bytes adds [`REQUEST_OVERHEAD`].
//! 2. **Data sent** (its last byte left the NIC): the NIC may write a notification after
//!    it (posted writes stay in order, so the notification never overtakes the data):
//!    - *reactive*: only if no notification is outstanding for the pipe ("notify only when
//!      caught up"); it then covers every packet whose data was sent;
//!    - *prefetch*: the same rule, but the outstanding notification is cleared earlier
//!      (see 5);
//!    - *per-packet*: one 64 B notification per packet, no gating;
//!    - *packetized*: one 16 B descriptor write-back per packet, no gating.
//! 3. **Notification lands** in host memory one one-way latency after it left the NIC.
//! 4. **Driver notices** it: an idle driver polls every `poll_ns` (ticks at multiples of
//!    `poll_ns` from time 0); a busy one looks again right after its batch. It takes every
//!    packet whose notification has landed and spends `sw_batch_ns + n × sw_pkt_ns` on them
//!    (receive, touch, post the echo).
//! 5. **Batch done**: the TX doorbell / head write reaches the NIC one one-way latency
//!    later; that instant, minus the packet's arrival, is the packet's latency (the echo's
//!    own transmission is the same in every mode and left out). What re-arms the pipe's
//!    notification (reactive and prefetch):
//!    - *reactive*: the head write that frees the batch's RX space. The zero-copy echo frees
//!      it only when the send completed, i.e. after the NIC read the data back — one PCIe
//!      round trip (`head_delay_ns`, default 2 × one-way) after the TX doorbell arrived —
//!      so the NIC hears of it at `done + one-way + head_delay`;
//!    - *prefetch*: the prefetch doorbell the driver rings right after posting the echo,
//!      at the NIC at `done + one-way`: one round trip early.
//!
//!    When re-armed with data already sent beyond what was notified, the NIC notifies at
//!    once; otherwise the next data sent triggers the notification.
//!
//! # Assumptions and simplifications
//! - One pipe, one core; the link's downstream direction (doorbells, the echo's data
//!   reads) is never congested; host memory writes are visible on landing (no cache or
//!   IOMMU effects); the NIC's own processing takes no time.
//! - Software cost is a constant per batch plus a per-packet term; the bench's default is
//!   `--model-sw-batch-ns` (default 100 ns: the notification read and the doorbell writes)
//!   per batch plus the measured driver ns/packet per packet, so a full batch of `batch`
//!   packets costs about the measured ns/packet × `batch`. The same software cost is used
//!   for every Ensō mode (the reactive row's measurement), so the modes differ only in
//!   their notifications. A cost that were all per batch would make small batches as
//!   expensive as full ones and reward the mode that batches most, i.e. reactive.
//! - Arrivals are deterministic bursts; the mean is over all simulated packets, including
//!   the first bursts (no warm-up is discarded). An offered load beyond what the link or
//!   the software sustains makes the queue, and the latency, grow with `packets`.
//! - Bandwidth: per-packet notifications (64 B + TLP overhead each) share the upstream link
//!   with the data, so at high load they, not the driver, bound the rate; the model reports
//!   the notification link bytes per packet.

use pcie_accounting::tlp::REQUEST_OVERHEAD;
use pcie_model::LinkConfig;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bytes of an Ensō notification (one 64 B flit).
pub const NOTIFICATION_BYTES: u64 = 64;
/// Bytes of a packetized descriptor write-back.
pub const DESCRIPTOR_BYTES: u64 = 16;
/// Ensō's data granule (flit).
const FLIT: u64 = 64;

/// The notification scheme modeled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Ensō, one outstanding notification per pipe, re-armed by the head write.
    Reactive,
    /// Ensō, one notification per packet.
    PerPacket,
    /// Ensō reactive, re-armed by a prefetch doorbell rung right after the echo is posted.
    Prefetch,
    /// The packetized NIC: one descriptor write-back per packet.
    Packetized,
}

/// Model parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub link: LinkConfig,
    pub mode: Mode,
    /// Frame size (bytes).
    pub size: usize,
    /// Offered load (Mpps).
    pub offered_mpps: f64,
    /// Packets per arrival burst.
    pub batch: usize,
    /// Packets simulated.
    pub packets: usize,
    /// Poll interval of an idle driver (ns; 0: notices at once).
    pub poll_ns: f64,
    /// Software cost per batch (ns).
    pub sw_batch_ns: f64,
    /// Software cost per packet (ns).
    pub sw_pkt_ns: f64,
    /// From the NIC seeing the TX doorbell to the driver's head write leaving the host
    /// (reactive only; ns). `None`: one PCIe round trip (2 × one-way).
    pub head_delay_ns: Option<f64>,
}

impl Params {
    /// Defaults: Gen3 x16 link, 64 B frames, 32-packet bursts at 1 Mpps, 4096 packets,
    /// 100 ns poll, 100 ns software per batch + 50 ns per packet.
    pub fn new(mode: Mode) -> Self {
        Params {
            link: LinkConfig::default(),
            mode,
            size: 64,
            offered_mpps: 1.0,
            batch: 32,
            packets: 4096,
            poll_ns: 100.0,
            sw_batch_ns: 100.0,
            sw_pkt_ns: 50.0,
            head_delay_ns: None,
        }
    }
}

/// What the model says.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Mean latency per packet, arrival at the NIC to the echo's doorbell at the NIC (ns).
    pub mean_latency_ns: f64,
    /// Notifications (or descriptor write-backs) per packet.
    pub notifications_per_pkt: f64,
    /// Upstream link bytes of those notifications per packet (TLP overhead included).
    pub notification_link_bytes_per_pkt: f64,
    /// Driver batches per packet.
    pub batches_per_pkt: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Packet `i` arrives at the NIC.
    Arrive(usize),
    /// The data of packet `i` left the NIC.
    DataSent(usize),
    /// A notification covering packets `..n` landed in host memory.
    NotifLand(usize),
    /// The driver looks for work.
    Poll,
    /// The driver finished packets `from..to`.
    Done(usize, usize),
    /// The re-arming write (head or prefetch doorbell) acknowledging packets `..n` reached the NIC.
    Rearm(usize),
}

/// Time in picoseconds, so events order exactly.
fn ps(ns: f64) -> u64 {
    (ns * 1000.0).round().max(0.0) as u64
}

/// Link bytes of one posted write of `bytes` payload.
fn write_link_bytes(link: &LinkConfig, bytes: u64) -> u64 {
    let mps = u64::from(link.max_payload.max(1));
    bytes + bytes.div_ceil(mps).max(1) * REQUEST_OVERHEAD
}

/// Runs the model.
pub fn simulate(p: &Params) -> Outcome {
    let n = p.packets.max(1);
    let batch = p.batch.max(1);
    let l = ps(p.link.one_way_latency_ns);
    let head_delay = ps(p.head_delay_ns.unwrap_or(2.0 * p.link.one_way_latency_ns));
    let data_bytes = match p.mode {
        Mode::Packetized => p.size as u64,
        _ => (p.size as u64).div_ceil(FLIT) * FLIT,
    };
    let notif_bytes = match p.mode {
        Mode::Packetized => DESCRIPTOR_BYTES,
        _ => NOTIFICATION_BYTES,
    };
    let ser_data = ps(p.link.serialization_ns(write_link_bytes(&p.link, data_bytes) as f64));
    let notif_link = write_link_bytes(&p.link, notif_bytes);
    let ser_notif = ps(p.link.serialization_ns(notif_link as f64));
    let poll = ps(p.poll_ns);
    let burst_gap = if p.offered_mpps > 0.0 { ps(batch as f64 * 1000.0 / p.offered_mpps) } else { 0 };
    let sw = |k: usize| ps(p.sw_batch_ns + k as f64 * p.sw_pkt_ns);
    let gated = matches!(p.mode, Mode::Reactive | Mode::Prefetch);

    let mut q: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<_>, t: u64, e: Event| {
        seq += 1;
        q.push(Reverse((t, seq, e)));
    };
    let arrival: Vec<u64> = (0..n).map(|i| (i / batch) as u64 * burst_gap).collect();
    for (i, &t) in arrival.iter().enumerate() {
        push(&mut q, t, Event::Arrive(i));
    }
    // NIC state.
    let mut link_free = 0u64; // upstream link busy until
    let mut sent = 0usize; // packets whose data left the NIC
    let mut notified = 0usize; // packets covered by notifications sent
    let mut armed = true; // reactive/prefetch: no notification outstanding
    let mut notifications = 0u64;
    // Host state.
    let mut landed = 0usize; // packets covered by landed notifications
    let mut consumed = 0usize; // packets the driver took
    let mut busy = false;
    let mut poll_pending = false;
    let mut batches = 0u64;
    let mut latency_sum = 0u128;

    while let Some(Reverse((t, _, e))) = q.pop() {
        // Set by the events after which the NIC sends a notification.
        let mut notify = false;
        match e {
            Event::Arrive(i) => {
                let start = t.max(link_free);
                link_free = start + ser_data;
                push(&mut q, link_free, Event::DataSent(i));
            }
            Event::DataSent(i) => {
                sent = sent.max(i + 1);
                notify = !gated || armed;
            }
            Event::NotifLand(upto) => {
                landed = landed.max(upto);
                if !busy && !poll_pending {
                    poll_pending = true;
                    let tick = if poll == 0 { t } else { t.div_ceil(poll) * poll };
                    push(&mut q, tick, Event::Poll);
                }
            }
            Event::Poll => {
                poll_pending = false;
                if !busy && landed > consumed {
                    busy = true;
                    batches += 1;
                    let k = landed - consumed;
                    push(&mut q, t + sw(k), Event::Done(consumed, landed));
                    consumed = landed;
                }
            }
            Event::Done(from, to) => {
                busy = false;
                let at_nic = t + l;
                for &a in &arrival[from..to] {
                    latency_sum += u128::from(at_nic - a);
                }
                match p.mode {
                    Mode::Reactive => push(&mut q, at_nic + head_delay, Event::Rearm(to)),
                    Mode::Prefetch => push(&mut q, at_nic, Event::Rearm(to)),
                    Mode::PerPacket | Mode::Packetized => {}
                }
                if landed > consumed {
                    poll_pending = true;
                    push(&mut q, t, Event::Poll);
                }
            }
            Event::Rearm(upto) => {
                // Caught up: the acknowledged batch covered everything notified.
                if upto >= notified {
                    armed = true;
                    notify = sent > notified;
                }
            }
        }
        if notify {
            armed = false;
            let start = t.max(link_free);
            link_free = start + ser_notif;
            notified = sent;
            notifications += 1;
            push(&mut q, link_free + l, Event::NotifLand(sent));
        }
    }
    let nf = n as f64;
    let notifications_per_pkt = notifications as f64 / nf;
    Outcome {
        mean_latency_ns: latency_sum as f64 / 1000.0 / nf,
        notifications_per_pkt,
        notification_link_bytes_per_pkt: notifications_per_pkt * notif_link as f64,
        batches_per_pkt: batches as f64 / nf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_packet(mode: Mode) -> Params {
        Params {
            packets: 1,
            batch: 1,
            poll_ns: 0.0,
            sw_batch_ns: 200.0,
            sw_pkt_ns: 10.0,
            ..Params::new(mode)
        }
    }

    #[test]
    fn one_packet_on_an_idle_link_adds_up_by_hand() {
        let link = LinkConfig::default();
        // Data: one 64 B flit + 24 B TLP overhead; notification: 64 B + 24 B.
        let data = link.serialization_ns(88.0);
        let notif = link.serialization_ns(88.0);
        // data DMA + notification serialization + one way + software + doorbell one way.
        let want = data + notif + 379.0 + 200.0 + 10.0 + 379.0;
        for mode in [Mode::Reactive, Mode::Prefetch, Mode::PerPacket] {
            let o = simulate(&one_packet(mode));
            assert!((o.mean_latency_ns - want).abs() < 0.01, "{mode:?}: {} vs {want}", o.mean_latency_ns);
            assert_eq!(o.notifications_per_pkt, 1.0);
            assert_eq!(o.batches_per_pkt, 1.0);
        }
        // Packetized: 16 B descriptor (+24 B) after the 64 B frame (+24 B).
        let o = simulate(&one_packet(Mode::Packetized));
        let want = data + link.serialization_ns(40.0) + 379.0 + 210.0 + 379.0;
        assert!((o.mean_latency_ns - want).abs() < 0.01, "{} vs {want}", o.mean_latency_ns);
    }

    #[test]
    fn the_poll_interval_rounds_the_notice_up_to_a_tick() {
        let mut p = one_packet(Mode::Reactive);
        p.poll_ns = 1000.0;
        // The notification lands at ~390 ns, seen at the 1000 ns tick.
        let o = simulate(&p);
        assert!((o.mean_latency_ns - (1000.0 + 210.0 + 379.0)).abs() < 0.01, "{}", o.mean_latency_ns);
    }

    #[test]
    fn reactive_waits_for_the_head_write_and_prefetch_saves_the_round_trip() {
        // Two packets 1 µs apart, no software cost to speak of: reactive's second
        // notification waits for the first batch's head write (done + 3 one-way).
        let base = Params {
            packets: 2,
            batch: 1,
            offered_mpps: 1.0,
            poll_ns: 0.0,
            sw_batch_ns: 0.0,
            ..Params::new(Mode::Reactive)
        };
        let r = simulate(&base);
        let f = simulate(&Params { mode: Mode::Prefetch, ..base.clone() });
        let pp = simulate(&Params { mode: Mode::PerPacket, ..base.clone() });
        // Packet 1 is done at ~390 ns, its doorbell at the NIC at ~769 ns. Packet 2 arrives
        // at 1000 ns: under reactive the pipe re-arms only at ~769 + 2 × 379 ≈ 1527 ns,
        // so packet 2 waits ~527 ns more; under prefetch the re-arm came at ~769 ns,
        // before it arrived, so it is notified at once (as with per-packet notifications).
        assert!(r.mean_latency_ns > f.mean_latency_ns + 200.0, "{r:?} vs {f:?}");
        assert!((f.mean_latency_ns - pp.mean_latency_ns).abs() < 0.01, "{f:?} vs {pp:?}");
        assert_eq!(r.notifications_per_pkt, 1.0);
    }

    #[test]
    fn bursts_trade_notifications_for_latency() {
        let p = Params { offered_mpps: 5.0, ..Params::new(Mode::Reactive) };
        let r = simulate(&p);
        let f = simulate(&Params { mode: Mode::Prefetch, ..p.clone() });
        let pp = simulate(&Params { mode: Mode::PerPacket, ..p.clone() });
        assert!(f.mean_latency_ns < r.mean_latency_ns, "{f:?} vs {r:?}");
        assert_eq!(pp.notifications_per_pkt, 1.0);
        assert!(r.notifications_per_pkt < 0.5, "{r:?}");
        assert!(pp.notification_link_bytes_per_pkt == 88.0);
        assert!(r.notification_link_bytes_per_pkt < pp.notification_link_bytes_per_pkt);
    }
}
