//! Randomized workloads for differential tests of queue engines: random `QueueEngine`
//! calls (pipes and pairs enabled and disabled, some out of range; packets of 0 to 4 000
//! bytes over many pipes, to disabled, full and wrapping pipes; good and bad head writes;
//! prefetches; TX batches mixing valid sends, empty, too long and 2 MiB-crossing ones,
//! configurations and garbage; DMA that fails; notification rings that fill up), run
//! against a simulated host that records everything the engine does through `EngineIo`,
//! in order, with the answers it gave.
//!
//! Two engines given the same seed must produce the same record, call by call: the RTL
//! engine's bench replays the records (`examples/engine_vectors.rs`), and the co-simulation
//! runs both engines side by side (`devices/rtl-cosim`). Line formats (hex fields):
//! `C op q a b c d` a call (the RTL's command numbering); `O kind q a b c d e` an event;
//! `R ok value` an answer; `E signal addr len` a fetched TX entry the engine acted on. The
//! framer's work is not the engine's: a successful data read is one `O 8` (TX_DATA) event,
//! and transmits and TX_DROP_BAD_FRAME counts are left out.

use super::{EngineIo, NbSetup, PipeSetup, Published, QueueEngine, RxOutcome};
use pcie_model::DmaClass;
use std::collections::HashMap;
use std::fmt::Write as _;
use testbed_regs::enso::{ext::counter as c, notif, NOTIFICATION_SIZE};

/// The engine sizes a workload is made for (the RTL instance's parameters must match).
pub const PIPES: u32 = 8;
/// Notification-buffer pairs.
pub const NBS: u32 = 4;
/// Pipe ring size in flits.
pub const PIPE_FLITS: u32 = 64;
/// Notification ring entries.
pub const ENTRIES: u32 = 16;
/// DMA to addresses at or above this fails (an address outside the guest's mappings).
pub const BAD: u64 = 0xbad0_0000_0000;

/// xorshift64*: small, deterministic, good enough to mix calls.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The engine's world: memory for TX rings, software's RX heads, and the recorded trace.
#[derive(Default)]
struct World {
    out: String,
    answers: String,
    entries: String,
    /// Entries fetched during this call, released when the engine acted on them.
    fetched: String,
    acted: bool,
    mem: HashMap<u64, [u8; NOTIFICATION_SIZE]>,
    sw_rx_head: [u32; NBS as usize],
    tx_head: [u32; NBS as usize],
    rx_tail_nb: [u32; NBS as usize],
    frame_at: usize,
    /// Each pair's TX ring while it is enabled (where software posts its entries).
    tx_ring: [Option<u64>; NBS as usize],
    nb_in_call: u32,
}

fn ok(addr: u64) -> bool {
    addr < BAD
}

impl EngineIo for World {
    fn dma_write(&mut self, addr: u64, data: &[u8], class: DmaClass) -> bool {
        let word =
            |at: usize| data.get(at..at + 8).map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap()) as u32);
        let (cls, d, e) = match class {
            DmaClass::Data => (0, (data.as_ptr() as usize).wrapping_sub(self.frame_at) as u32, 0),
            _ if data.len() == NOTIFICATION_SIZE - 8 => {
                (1, word(notif::RX_QUEUE_ID - 8), word(notif::RX_TAIL - 8))
            }
            _ => (1, word(0), 0),
        };
        if cls == 1 && data.len() == 8 && word(0) == 0 {
            self.acted = true; // a TX completion
        }
        let _ = writeln!(self.out, "O 1 0 {addr:x} {:x} {cls:x} {d:x} {e:x}", data.len());
        let r = ok(addr);
        let _ = writeln!(self.answers, "R {} 0", r as u8);
        r
    }

    fn dma_read(&mut self, addr: u64, buf: &mut [u8], class: DmaClass) -> bool {
        let cls = u32::from(class != DmaClass::Data);
        let _ = writeln!(self.out, "O 2 0 {addr:x} {:x} {cls:x} 0 0", buf.len());
        let r = ok(addr);
        let _ = writeln!(self.answers, "R {} 0", r as u8);
        if r && cls == 1 {
            for (i, e) in buf.chunks_mut(NOTIFICATION_SIZE).enumerate() {
                let slot = self.mem.get(&(addr + (i * NOTIFICATION_SIZE) as u64)).copied().unwrap_or([0; 64]);
                e.copy_from_slice(&slot);
                let w = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().unwrap());
                let _ = writeln!(
                    self.fetched,
                    "E {:x} {:x} {:x}",
                    w(notif::SIGNAL),
                    w(notif::TX_PHYS_ADDR),
                    w(notif::TX_LENGTH)
                );
            }
        } else if r {
            // The framer's input: one event, the same on both sides.
            let _ = writeln!(self.out, "O 8 {:x} 0 {:x} 0 0 0", self.nb_in_call, buf.len());
        }
        r
    }

    fn publish(&mut self, reg: Published, value: u32) {
        let (kind, idx) = match reg {
            Published::PipeRxTail(p) => (0, p),
            Published::NbRxTail(n) => {
                self.rx_tail_nb[n as usize] = value;
                (1, n)
            }
            Published::NbTxHead(n) => {
                self.tx_head[n as usize] = value;
                (2, n)
            }
        };
        let _ = writeln!(self.out, "O 3 {idx:x} 0 {value:x} {kind:x} 0 0");
    }

    fn nb_rx_head(&mut self, nb: u32) -> u32 {
        let v = self.sw_rx_head[nb as usize];
        let _ = writeln!(self.out, "O 4 {nb:x} 0 0 0 0 0");
        let _ = writeln!(self.answers, "R 1 {v:x}");
        v
    }

    fn transmit(&mut self, _frame: &[u8]) {}

    fn configure(&mut self, n: &[u8; 64]) -> bool {
        let w = u64::from_le_bytes(n[8..16].try_into().unwrap());
        let _ = writeln!(self.out, "O 6 {:x} {w:x} 0 0 0 0", self.nb_in_call);
        true
    }

    fn count(&mut self, counter: u32, n: u64) {
        if counter != c::TX_DROP_BAD_FRAME {
            let _ = writeln!(self.out, "O 5 0 0 {n:x} {counter:x} 0 0");
        }
    }
}

/// One call's record: the call line(s), then the events, answers and TX entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The whole record, in the vector file's line format.
    pub text: String,
    /// What happened to a packet (RX calls only).
    pub rx: Option<RxOutcome>,
}

/// A seeded random workload and the host it simulates.
pub struct Workload {
    rng: Rng,
    w: World,
    frame: Vec<u8>,
}

impl Workload {
    /// A workload for an engine of the sizes above; the same seed gives the same calls.
    pub fn new(seed: u64) -> Self {
        Workload { rng: Rng(seed.max(1)), w: World::default(), frame: vec![0u8; 4096] }
    }

    /// An engine of the workload's sizes.
    pub fn engine() -> super::BehavioralEngine {
        super::BehavioralEngine::new(PIPES, NBS, PIPE_FLITS, ENTRIES)
    }

    /// Makes one random call on `eng` and returns its record.
    pub fn step(&mut self, eng: &mut dyn QueueEngine) -> Step {
        let (rng, w, frame) = (&mut self.rng, &mut self.w, &self.frame);
        let mut pre = String::new();
        let mut rx = None;
        // Addresses: mostly good 2 MiB-aligned buffers, sometimes bad ones.
        let buf_addr = |rng: &mut Rng| -> u64 {
            if rng.chance(4) {
                BAD + (rng.below(4) << 21)
            } else {
                0x1_0000_0000 + (rng.below(64) << 21)
            }
        };
        let mut line = String::new();
        let roll = rng.below(1000);
        w.acted = false;
        w.fetched.clear();
        let result: u32 = if roll < 25 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            let s = PipeSetup {
                base: buf_addr(rng),
                nb: rng.below(u64::from(NBS) + 1) as u32,
                head: if rng.chance(90) { 0 } else { rng.below(100) as u32 },
                tail: if rng.chance(90) { 0 } else { rng.below(100) as u32 },
            };
            let _ = write!(line, "C 1 {pipe:x} {:x} {:x} {:x} {:x}", s.base, s.nb, s.head, s.tail);
            eng.enable_pipe(pipe, s);
            0
        } else if roll < 30 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            let _ = write!(line, "C 2 {pipe:x} 0 0 0 0");
            eng.disable_pipe(pipe);
            0
        } else if roll < 45 {
            let nb = rng.below(u64::from(NBS) + 1) as u32;
            let tx_ring = buf_addr(rng) + (1 << 20);
            let s = NbSetup {
                rx_ring: buf_addr(rng),
                tx_ring,
                rx_head: if rng.chance(90) { 0 } else { rng.below(20) as u32 },
                rx_tail: if rng.chance(90) { 0 } else { rng.below(20) as u32 },
                tx_head: if rng.chance(90) { 0 } else { rng.below(20) as u32 },
            };
            // Two calls on the RTL side: the TX ring is latched first.
            let _ = writeln!(pre, "C 3 {nb:x} {tx_ring:x} 0 0 0\nO 9 0 0 0 0 0 0");
            let _ =
                write!(line, "C 4 {nb:x} {:x} {:x} {:x} {:x}", s.rx_ring, s.rx_head, s.rx_tail, s.tx_head);
            eng.enable_nb(nb, s);
            if nb < NBS {
                w.tx_head[nb as usize] = s.tx_head % ENTRIES;
                w.rx_tail_nb[nb as usize] = s.rx_tail % ENTRIES;
                w.sw_rx_head[nb as usize] = s.rx_head;
                w.tx_ring[nb as usize] = Some(tx_ring);
            }
            0
        } else if roll < 48 {
            let nb = rng.below(u64::from(NBS) + 1) as u32;
            let _ = write!(line, "C 5 {nb:x} 0 0 0 0");
            if let Some(r) = w.tx_ring.get_mut(nb as usize) {
                *r = None;
            }
            eng.disable_nb(nb);
            0
        } else if roll < 51 {
            let on = rng.chance(30);
            let _ = write!(line, "C 6 0 0 {:x} 0 0", on as u32);
            eng.set_per_packet(on);
            0
        } else if roll < 55 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            let on = rng.chance(20);
            let _ = write!(line, "C 7 {pipe:x} 0 {:x} 0 0", on as u32);
            eng.set_stream(pipe, on);
            0
        } else if roll < 700 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            let len = match rng.below(10) {
                0 => 0,
                1..=5 => 60 + rng.below(100) as usize,
                6..=8 => 64 + rng.below(1500) as usize,
                _ => 1500 + rng.below(2500) as usize,
            };
            let _ = write!(line, "C 8 {pipe:x} 0 {len:x} 0 0");
            w.frame_at = frame.as_ptr() as usize;
            let r = eng.rx_packet(pipe, &frame[..len], w);
            rx = Some(r);
            match r {
                RxOutcome::Delivered => 0,
                RxOutcome::PipeDisabled => 1,
                RxOutcome::PipeFull => 2,
                RxOutcome::DmaFailed => 3,
            }
        } else if roll < 860 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            // Software's head: mostly somewhere it may legally be, sometimes anywhere.
            let head =
                if rng.chance(85) { rng.below(u64::from(PIPE_FLITS)) as u32 } else { rng.below(200) as u32 };
            // Notification rings fill up when software does not keep up.
            for nb in 0..NBS as usize {
                if rng.chance(30) {
                    w.sw_rx_head[nb] = if rng.chance(50) {
                        (w.rx_tail_nb[nb] + 1) % ENTRIES
                    } else {
                        rng.below(u64::from(ENTRIES)) as u32
                    };
                }
            }
            let _ = write!(line, "C 9 {pipe:x} 0 {head:x} 0 0");
            eng.rx_head(pipe, head, w);
            0
        } else if roll < 900 {
            let pipe = rng.below(u64::from(PIPES) + 1) as u32;
            let _ = write!(line, "C a {pipe:x} 0 0 0 0");
            eng.prefetch(pipe, w);
            0
        } else {
            let nb = rng.below(u64::from(NBS) + 1) as u32;
            w.nb_in_call = nb;
            // Software posts k entries at the pair's head, of every kind.
            let k = rng.below(u64::from(ENTRIES)) as u32;
            if nb < NBS {
                let head = w.tx_head[nb as usize];
                let ring = w.tx_ring[nb as usize];
                for i in 0..k {
                    let mut e = [0u8; 64];
                    let (sig, addr, len) = match rng.below(20) {
                        0 => (2, rng.below(5), 0),                       // configuration
                        1 => (rng.below(9) + 3, rng.next(), rng.next()), // garbage
                        2 => (1, 0x1_0000_0000 + (1 << 21) - 64, 128),   // crosses 2 MiB
                        3 => (1, 0x1_0000_0000, (128 << 10) + 64),       // too long
                        4 => (1, 0x1_0000_0000, 0),                      // empty
                        5 => (1, BAD + 4096, 256),                       // DMA fails
                        _ => (1, 0x1_0000_0000 + (rng.below(1000) << 12), 64 + rng.below(4000)),
                    };
                    e[notif::SIGNAL..][..8].copy_from_slice(&sig.to_le_bytes());
                    e[notif::TX_PHYS_ADDR..][..8].copy_from_slice(&addr.to_le_bytes());
                    e[notif::TX_LENGTH..][..8].copy_from_slice(&len.to_le_bytes());
                    if let Some(r) = ring {
                        w.mem.insert(r + u64::from((head + i) % ENTRIES) * 64, e);
                    }
                }
            }
            let tail = if rng.chance(5) {
                ENTRIES + rng.below(10) as u32
            } else {
                (w.tx_head.get(nb as usize).copied().unwrap_or(0) + k) % ENTRIES
            };
            let _ = write!(line, "C b {nb:x} 0 {tail:x} 0 0");
            u32::from(eng.tx_tail(nb, tail, w))
        };
        if w.acted {
            w.entries.push_str(&w.fetched);
        }
        let mut text = pre;
        let _ = writeln!(text, "{line}");
        text.push_str(&w.out);
        let _ = writeln!(text, "O 9 0 0 {result:x} 0 0 0");
        text.push_str(&w.answers);
        text.push_str(&w.entries);
        w.out.clear();
        w.answers.clear();
        w.entries.clear();
        Step { text, rx }
    }
}
