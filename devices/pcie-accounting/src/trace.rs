//! The operation trace: the ordered list of logical PCIe operations of a run, recorded by
//! the shared [`Counters`](crate::Counters) of every function that is attached to one
//! [`OpTrace`], so a scenario can show what one item cost on the interconnect.
//!
//! A *logical operation* is one transfer as software thinks of it (an image written, a
//! descriptor fetched); on the link it may be many TLPs, which the TLP accounting counts
//! separately. Consecutive operations of the same function with the same kind and role
//! (and the same other end, routed or denied alike) are one transfer (a write that wraps
//! a ring, a notification written body first and signal word last): [`MERGE_RULE`].
//!
//! Rules (see docs/accelerators.md):
//! - `critical`: data, descriptor fetches and doorbells are on an item's critical path;
//!   completions/notifications written back to back with the data, interrupts and
//!   credit returns (head pointer updates) are not.
//! - `rtt_weight`: a read costs a round trip (1), a posted write half of one (½).
//! - `rtt_units` of an item = the sum of the weights of its critical operations.
//! - `denied`: a write a switch refused to route ([`crate::DmaError::Denied`]) is
//!   recorded as denied, off the critical path and never as `switched`: it reached
//!   nobody.

use crate::link::LinkConfig;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// How [`TraceTap`] merges recorded operations into logical ones, in words (reports
/// state it next to their counts).
pub const MERGE_RULE: &str = "consecutive operations recorded by one function with the same kind \
(MMIO write, DMA read, DMA write, interrupt), the same role (data, descriptor, completion, doorbell, \
credit, interrupt) and the same other end, both routed by a switch or both not (and both denied or \
both not), are one logical operation whose bytes add up";

/// Which operations count toward an item's cost, in words.
pub const CRITICAL_RULE: &str = "data, descriptor fetches and doorbells are on the critical path; \
completions, notifications, credits (head updates), interrupts and writes a switch denied are not";

/// What kind of transaction carried a logical operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The CPU wrote a device register (a posted write downstream).
    MmioWr,
    /// A device read host (or peer) memory: request plus completions.
    DmaRd,
    /// A device wrote host (or peer) memory: posted writes.
    DmaWr,
    /// A device raised an MSI-X interrupt.
    Irq,
}

/// What a logical operation was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpRole {
    /// Payload: an image, a result, a packet.
    Data,
    /// A command/descriptor fetched by the device.
    Descriptor,
    /// A completion or notification written back by the device.
    Completion,
    /// A doorbell: the CPU telling the device there is work.
    Doorbell,
    /// A credit return: the CPU freeing buffer space (a head pointer update).
    Credit,
    /// An interrupt message.
    Interrupt,
}

impl OpRole {
    /// Whether operations of this role sit on an item's critical path.
    pub fn critical(self) -> bool {
        matches!(self, OpRole::Data | OpRole::Descriptor | OpRole::Doorbell)
    }
}

impl OpKind {
    /// PCIe round trips the operation costs: ½ for posted writes, 1 for reads.
    pub fn rtt_weight(self) -> f64 {
        match self {
            OpKind::DmaRd => 1.0,
            OpKind::MmioWr | OpKind::DmaWr | OpKind::Irq => 0.5,
        }
    }
}

/// One logical operation, as reported in a scenario's `trace[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Source and destination, e.g. `"nic->cpu"`, `"cpu->crypto"`.
    pub dir: String,
    /// The transaction kind.
    pub kind: OpKind,
    /// What it carried.
    pub role: OpRole,
    /// Bytes of the whole transfer.
    pub bytes: u64,
    /// On the item's critical path.
    pub critical: bool,
    /// Round trips it costs (½ for writes, 1 for reads).
    pub rtt_weight: f64,
    /// A switch routed it to (or answered it from) a peer function instead of host
    /// memory; its pipeline delay is added to `modeled_ns`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switched: bool,
    /// A switch refused to route it (allow list, no route, next hop refused): it reached
    /// nobody, so it is off the critical path and not `switched`; `dir` names the switch
    /// as its destination.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub denied: bool,
}

/// The per-item figures recomputable from a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceCost {
    /// Critical operations.
    pub ops: usize,
    /// Sum of the critical operations' round-trip weights.
    pub rtt_units: f64,
    /// Modeled communication time: `rtt_units` round trips of the link, plus the
    /// serialization time of the critical bytes, plus `switch_ns` for every critical
    /// operation a switch routed (its match-action pipeline).
    pub modeled_ns: f64,
}

/// The cost of `ops` on `link`, with a switch pipeline of `switch_ns` per routed
/// operation (see [`TraceCost`]).
pub fn cost(ops: &[Op], link: &LinkConfig, switch_ns: f64) -> TraceCost {
    let critical = ops.iter().filter(|o| o.critical);
    let (n, units, bytes, switched) = critical.fold((0, 0.0, 0u64, 0u32), |(n, u, b, s), o| {
        (n + 1, u + o.rtt_weight, b + o.bytes, s + o.switched as u32)
    });
    TraceCost {
        ops: n,
        rtt_units: units,
        modeled_ns: units * 2.0 * link.one_way_latency_ns
            + link.serialization_ns(bytes as f64)
            + switched as f64 * switch_ns,
    }
}

#[derive(Clone, Debug)]
struct Raw {
    source: Arc<str>,
    peer: Arc<str>,
    kind: OpKind,
    role: OpRole,
    bytes: u64,
    routed: bool,
    denied: bool,
}

impl Raw {
    fn op(&self) -> Op {
        let dir = match self.kind {
            OpKind::DmaRd | OpKind::MmioWr => format!("{}->{}", self.peer, self.source),
            OpKind::DmaWr | OpKind::Irq => format!("{}->{}", self.source, self.peer),
        };
        Op {
            dir,
            kind: self.kind,
            role: self.role,
            bytes: self.bytes,
            critical: self.role.critical() && !self.denied,
            rtt_weight: self.kind.rtt_weight(),
            switched: self.routed,
            denied: self.denied,
        }
    }
}

/// An ordered log of logical operations shared by the functions of one run.
#[derive(Debug, Default)]
pub struct OpTrace {
    ops: Mutex<Vec<Raw>>,
}

/// Where one function records into a trace: the trace and the function's name.
#[derive(Clone, Debug)]
pub struct TraceTap {
    trace: Arc<OpTrace>,
    name: Arc<str>,
    host: Arc<str>,
}

impl TraceTap {
    /// Records for function `name` into `trace`; the other end of its DMA is `"cpu"`.
    pub fn new(trace: Arc<OpTrace>, name: &str) -> Self {
        TraceTap { trace, name: name.into(), host: "cpu".into() }
    }

    /// Records one operation (merged into the previous one when it continues it).
    pub fn record(&self, kind: OpKind, role: OpRole, bytes: u64) {
        self.record_peer(kind, role, bytes, None);
    }

    /// As [`TraceTap::record`], with the other end named (a peer device instead of the
    /// CPU, for device-to-device transfers).
    pub fn record_peer(&self, kind: OpKind, role: OpRole, bytes: u64, peer: Option<&str>) {
        self.push(kind, role, bytes, peer, false, false);
    }

    /// Records an operation a switch routed to (or answered from) `peer`.
    pub fn record_routed(&self, kind: OpKind, role: OpRole, bytes: u64, peer: &str) {
        self.push(kind, role, bytes, Some(peer), true, false);
    }

    /// Records an operation the switch `by` refused to route (denied: off the critical
    /// path, not switched).
    pub fn record_denied(&self, kind: OpKind, role: OpRole, bytes: u64, by: &str) {
        self.push(kind, role, bytes, Some(by), false, true);
    }

    fn push(&self, kind: OpKind, role: OpRole, bytes: u64, peer: Option<&str>, routed: bool, denied: bool) {
        let peer: Arc<str> = peer.map_or_else(|| self.host.clone(), Arc::from);
        let mut ops = self.trace.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = ops.last_mut() {
            let same = last.source == self.name && last.kind == kind && last.role == role;
            if same && last.peer == peer && last.routed == routed && last.denied == denied {
                last.bytes += bytes;
                return;
            }
        }
        ops.push(Raw { source: self.name.clone(), peer, kind, role, bytes, routed, denied });
    }
}

impl OpTrace {
    /// An empty trace.
    pub fn new() -> Arc<Self> {
        Arc::new(OpTrace::default())
    }

    /// Every operation recorded so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Raw::op).collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The operations cut into items: a new item starts at every operation `starts`
    /// accepts; operations before the first start are left out (set-up).
    pub fn items(&self, starts: impl Fn(&Op) -> bool) -> Vec<Vec<Op>> {
        let mut items: Vec<Vec<Op>> = Vec::new();
        for op in self.ops() {
            if starts(&op) {
                items.push(vec![op]);
            } else if let Some(cur) = items.last_mut() {
                cur.push(op);
            }
        }
        items
    }
}

/// The most common critical path among `items` (the sequence of their critical
/// operations, which cause one another and so come in a fixed order), the number of items
/// that had it, and, as the representative, the most common full trace among those items
/// (off-path operations such as credits may land in a different place from item to item).
pub fn typical(items: &[Vec<Op>]) -> Option<(Vec<Op>, usize)> {
    let path = |it: &[Op]| -> Vec<Op> { it.iter().filter(|o| o.critical).cloned().collect() };
    let paths: Vec<Vec<Op>> = items.iter().map(|it| path(it)).collect();
    let mut best: Option<(usize, usize)> = None;
    for (i, p) in paths.iter().enumerate() {
        if best.is_some_and(|(b, _)| paths[b] == *p) {
            continue;
        }
        let n = paths.iter().filter(|q| *q == p).count();
        if best.is_none_or(|(_, bn)| n > bn) {
            best = Some((i, n));
        }
    }
    let (b, n) = best?;
    let members: Vec<&Vec<Op>> =
        items.iter().zip(&paths).filter(|(_, p)| **p == paths[b]).map(|(it, _)| it).collect();
    let rep =
        members.iter().max_by_key(|m| members.iter().filter(|x| **x == **m).count()).map(|m| (*m).clone())?;
    Some((rep, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_continuations_and_cuts_items() {
        let t = OpTrace::new();
        let nic = TraceTap::new(t.clone(), "nic");
        let acc = TraceTap::new(t.clone(), "crypto");
        nic.record(OpKind::MmioWr, OpRole::Credit, 4); // set-up, before the first item
        for _ in 0..2 {
            nic.record(OpKind::DmaWr, OpRole::Data, 500);
            nic.record(OpKind::DmaWr, OpRole::Data, 300); // wraps the ring: same transfer
            nic.record(OpKind::DmaWr, OpRole::Completion, 56);
            nic.record(OpKind::DmaWr, OpRole::Completion, 8);
            acc.record(OpKind::MmioWr, OpRole::Doorbell, 4);
            acc.record(OpKind::DmaRd, OpRole::Descriptor, 64);
            acc.record(OpKind::DmaRd, OpRole::Data, 800);
            acc.record_routed(OpKind::DmaWr, OpRole::Data, 800, "ml");
        }
        let items = t.items(|o| o.dir == "nic->cpu" && o.role == OpRole::Data);
        assert_eq!(items.len(), 2);
        let it = &items[0];
        assert_eq!(it.len(), 6);
        assert_eq!(it[0].bytes, 800);
        assert_eq!(it[1].bytes, 64);
        assert!(!it[1].critical);
        assert_eq!(it[2].dir, "cpu->crypto");
        assert_eq!(it[3].dir, "cpu->crypto");
        assert_eq!(it[5].dir, "crypto->ml");
        assert!(it[5].switched && !it[4].switched);
        let c = cost(it, &LinkConfig::default(), 0.0);
        assert_eq!(c.ops, 5);
        assert_eq!(c.rtt_units, 0.5 + 0.5 + 1.0 + 1.0 + 0.5);
        assert!(c.modeled_ns > 3.5 * 758.0);
        let with_switch = cost(it, &LinkConfig::default(), 33.0);
        assert_eq!(with_switch.modeled_ns - c.modeled_ns, 33.0, "one routed critical op");
        let (shape, n) = typical(&items).unwrap();
        assert_eq!((shape.len(), n), (6, 2));
    }

    #[test]
    fn a_denied_write_is_neither_routed_nor_critical_nor_merged_with_a_routed_one() {
        let t = OpTrace::new();
        let ml = TraceTap::new(t.clone(), "ml");
        ml.record_routed(OpKind::DmaWr, OpRole::Data, 128, "nic");
        ml.record_denied(OpKind::DmaWr, OpRole::Data, 64, "nagare");
        ml.record_denied(OpKind::DmaWr, OpRole::Data, 64, "nagare");
        let ops = t.ops();
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(ops[0].switched && !ops[0].denied && ops[0].critical);
        assert_eq!((ops[1].dir.as_str(), ops[1].bytes), ("ml->nagare", 128));
        assert!(ops[1].denied && !ops[1].switched && !ops[1].critical, "{:?}", ops[1]);
        assert_eq!(cost(&ops, &LinkConfig::default(), 33.0).ops, 1);
        let json = serde_json::to_value(&ops[1]).unwrap();
        assert_eq!(json["denied"], true);
        assert!(serde_json::to_value(&ops[0]).unwrap().get("denied").is_none());
    }
}
