//! The Ensō queue engine behind its seam: RX notifications it writes and the TX
//! notifications and TX entries it fetches and parses, with every DMA read answered by
//! fuzz bytes (signals, addresses, lengths, configuration notifications, frame data) and
//! DMA writes failing at random; queues enabled, disabled and moved under it.
#![no_main]
use arbitrary::Arbitrary;
use enso_nic::engine::{BehavioralEngine, EngineIo, NbSetup, PipeSetup, Published, QueueEngine};
use libfuzzer_sys::fuzz_target;
use pcie_model::DmaClass;

const PIPES: u32 = 8;
const NBS: u32 = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    EnablePipe { pipe: u8, base: u64, nb: u16, head: u16, tail: u16 },
    DisablePipe(u8),
    EnableNb { nb: u8, rx_ring: u64, tx_ring: u64, rx_head: u16, rx_tail: u16, tx_head: u16 },
    DisableNb(u8),
    PerPacket(bool),
    Stream { pipe: u8, on: bool },
    Rx { pipe: u8, frame: Vec<u8> },
    RxHead { pipe: u8, head: u32 },
    Prefetch(u8),
    TxTail { nb: u8, tail: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// What memory holds: every DMA read is answered from here, cyclically.
    memory: Vec<u8>,
    /// Which DMA writes fail (bit i of the i-th write).
    write_faults: u64,
    ops: Vec<Op>,
}

struct Io<'a> {
    memory: &'a [u8],
    at: usize,
    writes: u32,
    write_faults: u64,
}

impl EngineIo for Io<'_> {
    fn dma_write(&mut self, _addr: u64, _data: &[u8], _class: DmaClass) -> bool {
        self.writes += 1;
        self.write_faults >> (self.writes % 64) & 1 == 0
    }
    fn dma_read(&mut self, _addr: u64, buf: &mut [u8], _class: DmaClass) -> bool {
        if self.memory.is_empty() {
            return false;
        }
        for b in buf.iter_mut() {
            *b = self.memory[self.at % self.memory.len()];
            self.at += 1;
        }
        true
    }
    fn publish(&mut self, _reg: Published, _value: u32) {}
    fn nb_rx_head(&mut self, nb: u32) -> u32 {
        nb.wrapping_mul(7) ^ self.writes
    }
    fn transmit(&mut self, frame: &[u8]) {
        assert!(frame.len() <= 128 << 10, "a frame of {} bytes", frame.len());
    }
    fn configure(&mut self, n: &[u8; 64]) -> bool {
        n[1] & 1 == 0
    }
    fn count(&mut self, _counter: u32, _n: u64) {}
}

fuzz_target!(|input: Input| {
    let mut eng = BehavioralEngine::new(PIPES, NBS, 64, 16);
    let mut io = Io { memory: &input.memory, at: 0, writes: 0, write_faults: input.write_faults };
    for op in input.ops.iter().take(256) {
        match op {
            Op::EnablePipe { pipe, base, nb, head, tail } => eng.enable_pipe(
                *pipe as u32 % PIPES,
                PipeSetup { base: *base, nb: *nb as u32 % (NBS + 2), head: *head as u32, tail: *tail as u32 },
            ),
            Op::DisablePipe(p) => eng.disable_pipe(*p as u32 % PIPES),
            Op::EnableNb { nb, rx_ring, tx_ring, rx_head, rx_tail, tx_head } => eng.enable_nb(
                *nb as u32 % NBS,
                NbSetup {
                    rx_ring: *rx_ring,
                    tx_ring: *tx_ring,
                    rx_head: *rx_head as u32,
                    rx_tail: *rx_tail as u32,
                    tx_head: *tx_head as u32,
                },
            ),
            Op::DisableNb(nb) => eng.disable_nb(*nb as u32 % NBS),
            Op::PerPacket(on) => eng.set_per_packet(*on),
            Op::Stream { pipe, on } => eng.set_stream(*pipe as u32 % PIPES, *on),
            Op::Rx { pipe, frame } => {
                let _ = eng.rx_packet(*pipe as u32 % PIPES, frame, &mut io);
            }
            Op::RxHead { pipe, head } => eng.rx_head(*pipe as u32 % PIPES, *head, &mut io),
            Op::Prefetch(p) => eng.prefetch(*p as u32 % PIPES, &mut io),
            Op::TxTail { nb, tail } => {
                // The device thread calls again next round until the engine caught up:
                // it must, within a bounded number of rounds.
                let mut rounds = 0;
                while !eng.tx_tail(*nb as u32 % NBS, *tail, &mut io) {
                    rounds += 1;
                    assert!(rounds < 100_000, "tx_tail never catches up");
                }
            }
        }
    }
});
