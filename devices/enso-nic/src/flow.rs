//! RX steering: the exact-match flow table (4 sub-tables × 2048 entries, lookup3 hash,
//! no eviction) and the fallback queues for misses, as upstream's RTL does it.

use crate::packet::{rx_flow_key, FlowKey};
use testbed_regs::enso::{config, flow_hash, FLOW_ENTRIES, FLOW_SUBTABLES};

/// Why a configuration notification was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SteeringError {
    /// All four candidate slots of the key are taken (counted as FLOW_TABLE_FULL).
    #[error("flow table: all {FLOW_SUBTABLES} candidate slots are taken; the table does not evict")]
    TableFull,
    /// A field is out of range (counted as BAD_CONFIG).
    #[error("configuration field out of range (pipe or queue count beyond this device)")]
    BadField,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: FlowKey,
    pipe: u32,
    valid: bool,
}

/// The exact-match flow table.
#[derive(Debug)]
pub struct FlowTable {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable { slots: vec![Slot::default(); (FLOW_SUBTABLES * FLOW_ENTRIES) as usize], len: 0 }
    }
}

fn hash(table: u32, k: &FlowKey) -> u32 {
    flow_hash(table, k.src_ip, k.dst_ip, k.src_port, k.dst_port)
}

impl FlowTable {
    fn index(table: u32, h: u32) -> usize {
        (table * FLOW_ENTRIES + h % FLOW_ENTRIES) as usize
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts `key → pipe`, or re-points an existing entry. No eviction.
    pub fn insert(&mut self, key: FlowKey, pipe: u32) -> Result<(), SteeringError> {
        let idx: [usize; FLOW_SUBTABLES as usize] =
            std::array::from_fn(|t| Self::index(t as u32, hash(t as u32, &key)));
        if let Some(&i) = idx.iter().find(|&&i| self.slots[i].valid && self.slots[i].key == key) {
            self.slots[i].pipe = pipe;
            return Ok(());
        }
        let i = *idx.iter().find(|&&i| !self.slots[i].valid).ok_or(SteeringError::TableFull)?;
        self.slots[i] = Slot { key, pipe, valid: true };
        self.len += 1;
        Ok(())
    }

    /// The pipe of `key` (given its sub-table 0 hash `h0`).
    pub fn lookup(&self, key: &FlowKey, h0: u32) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        (0..FLOW_SUBTABLES).find_map(|t| {
            let h = if t == 0 { h0 } else { hash(t, key) };
            let s = &self.slots[Self::index(t, h)];
            (s.valid && s.key == *key).then_some(s.pipe)
        })
    }
}

/// Fallback-queue configuration (config ID 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    pub queues: u32,
    pub mask: u32,
    pub round_robin: bool,
}

/// Where a received frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// To this pipe (which may still turn out to be disabled).
    Pipe(u32),
    /// No flow matched and no fallback queues are configured.
    NoFlow,
}

/// Flow table plus fallback policy.
#[derive(Debug)]
pub struct Steering {
    table: FlowTable,
    fallback: Fallback,
    next_rr: u32,
    num_pipes: u32,
}

fn u16_at(n: &[u8; 64], at: usize) -> u16 {
    u16::from_le_bytes([n[at], n[at + 1]])
}

fn u32_at(n: &[u8; 64], at: usize) -> u32 {
    u32::from_le_bytes([n[at], n[at + 1], n[at + 2], n[at + 3]])
}

fn u64_at(n: &[u8; 64], at: usize) -> u64 {
    u64::from_le_bytes(n[at..at + 8].try_into().unwrap_or_default())
}

impl Steering {
    /// Power-on state for a device with `num_pipes` pipes: empty table, no fallback.
    pub fn new(num_pipes: u32) -> Self {
        Steering { table: FlowTable::default(), fallback: Fallback::default(), next_rr: 0, num_pipes }
    }

    /// The flow table.
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The fallback configuration.
    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// Picks the pipe for `frame`.
    pub fn steer(&mut self, frame: &[u8]) -> Steer {
        let key = rx_flow_key(frame).unwrap_or_default();
        let h0 = hash(0, &key);
        if let Some(p) = self.table.lookup(&key, h0) {
            return Steer::Pipe(p);
        }
        let fb = self.fallback;
        if fb.queues == 0 {
            return Steer::NoFlow;
        }
        if fb.round_robin {
            let p = self.next_rr % fb.queues;
            self.next_rr = (p + 1) % fb.queues;
            Steer::Pipe(p)
        } else {
            Steer::Pipe(h0 & fb.mask)
        }
    }

    /// Applies a flow-table configuration notification (config ID 1).
    pub fn configure_flow(&mut self, n: &[u8; 64]) -> Result<(), SteeringError> {
        let pipe = u32_at(n, config::FT_PIPE_ID);
        if pipe >= self.num_pipes {
            return Err(SteeringError::BadField);
        }
        let key = FlowKey {
            src_ip: u32_at(n, config::FT_SRC_IP),
            dst_ip: u32_at(n, config::FT_DST_IP),
            src_port: u16_at(n, config::FT_SRC_PORT),
            dst_port: u16_at(n, config::FT_DST_PORT),
        };
        self.table.insert(key, pipe)
    }

    /// Applies a fallback-queues configuration notification (config ID 4).
    pub fn configure_fallback(&mut self, n: &[u8; 64]) -> Result<(), SteeringError> {
        let queues = u32_at(n, config::FB_COUNT);
        if queues > self.num_pipes {
            return Err(SteeringError::BadField);
        }
        self.fallback = Fallback {
            queues,
            mask: u32_at(n, config::FB_MASK),
            round_robin: u64_at(n, config::FB_ENABLE_RR) != 0,
        };
        self.next_rr = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;

    fn flow_notif(dst_ip: u32, dport: u16, src_ip: u32, sport: u16, pipe: u32) -> [u8; 64] {
        let mut n = [0u8; 64];
        n[0..8].copy_from_slice(&2u64.to_le_bytes());
        n[8..16].copy_from_slice(&config::FLOW_TABLE.to_le_bytes());
        n[config::FT_DST_PORT..][..2].copy_from_slice(&dport.to_le_bytes());
        n[config::FT_SRC_PORT..][..2].copy_from_slice(&sport.to_le_bytes());
        n[config::FT_DST_IP..][..4].copy_from_slice(&dst_ip.to_le_bytes());
        n[config::FT_SRC_IP..][..4].copy_from_slice(&src_ip.to_le_bytes());
        n[config::FT_PIPE_ID..][..4].copy_from_slice(&pipe.to_le_bytes());
        n
    }

    #[test]
    fn insert_hit_miss_and_full() {
        let mut s = Steering::new(64);
        assert_eq!(s.steer(&udp(64, 7, 80)), Steer::NoFlow);
        s.configure_flow(&flow_notif(7, 80, 0, 0, 5)).unwrap();
        assert_eq!(s.steer(&udp(64, 7, 80)), Steer::Pipe(5));
        assert_eq!(s.steer(&udp(64, 7, 81)), Steer::NoFlow);
        assert_eq!(s.configure_flow(&flow_notif(7, 80, 0, 0, 64)), Err(SteeringError::BadField));
        s.configure_flow(&flow_notif(7, 80, 0, 0, 6)).unwrap();
        assert_eq!(s.steer(&udp(64, 7, 80)), Steer::Pipe(6), "re-pointed, not duplicated");
        assert_eq!(s.table().len(), 1);
        // Fill the table until some key finds its four slots taken.
        let mut t = FlowTable::default();
        let mut full = None;
        for i in 0..(FLOW_SUBTABLES * FLOW_ENTRIES) {
            let k = FlowKey { dst_ip: i, ..Default::default() };
            if t.insert(k, 1) == Err(SteeringError::TableFull) {
                full = Some(i);
                break;
            }
        }
        assert!(full.is_some(), "no eviction: a full candidate set is refused");
    }

    #[test]
    fn fallback_hash_and_round_robin() {
        let mut s = Steering::new(64);
        let mut n = [0u8; 64];
        n[config::FB_COUNT..][..4].copy_from_slice(&4u32.to_le_bytes());
        n[config::FB_MASK..][..4].copy_from_slice(&3u32.to_le_bytes());
        s.configure_fallback(&n).unwrap();
        let f = udp(64, 9, 99);
        let h0 = flow_hash(0, 0, 9, 0, 99);
        assert_eq!(s.steer(&f), Steer::Pipe(h0 & 3));
        n[config::FB_ENABLE_RR] = 1;
        s.configure_fallback(&n).unwrap();
        let got: Vec<Steer> = (0..6).map(|_| s.steer(&f)).collect();
        let want: Vec<Steer> = [0, 1, 2, 3, 0, 1].into_iter().map(Steer::Pipe).collect();
        assert_eq!(got, want);
        n[config::FB_COUNT..][..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(s.configure_fallback(&n), Err(SteeringError::BadField));
    }
}
