//! The RTL register front end (`--model rtl --registers mmio`) driven the way card software
//! drives the card: every queue-page access trapped, in upstream's order, pipes from 8191
//! down, flow entries, prefetch by head rewrite, frees on TX completion.

use enso_nic::{EnsoConfig, EnsoNic, RegisterMode};
use pcie_model::dma::GuestMemory;
use pcie_model::{BarBacking, DeviceContext, Dma, NoIrqs, PciDevice, ShmRegion};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed_regs::enso::ext::counter as c;
use testbed_regs::enso::{config, nb_page, notif, pipe_page, queue, QUEUE_BAR};
use wire::{cable, CableEnd, EthPort};

const RAM: u64 = 0x4000_0000;
const MIB: u64 = 1 << 20;
const RAM_LEN: u64 = 16 * MIB;
const PAIR: u64 = RAM;
const TX: u64 = RAM + MIB;
const PIPES: [(u32, u64); 2] = [(8191, RAM + 2 * MIB), (8190, RAM + 4 * MIB)];

struct Card {
    nic: EnsoNic,
    ram: ShmRegion,
    wire: CableEnd,
}

impl Card {
    fn w(&mut self, off: u64, v: u32) {
        self.nic.bar_write(QUEUE_BAR, off, &v.to_le_bytes());
    }
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.nic.bar_read(QUEUE_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn reset(&mut self, page: u64) {
        for reg in [queue::RX_MEM_LOW, queue::RX_MEM_HIGH, queue::RX_TAIL, queue::RX_HEAD] {
            self.w(page + reg, 0);
            assert_eq!(self.r(page + reg), 0);
        }
    }
    fn m64(&self, addr: u64) -> u64 {
        self.ram.read64(addr - RAM)
    }
    fn set64(&self, addr: u64, v: u64) {
        self.ram.write64(addr - RAM, v);
    }
}

fn udp(dport: u16, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 1, 0, 2]);
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[63] = tag;
    f
}

#[test]
fn card_software_through_the_rtl_register_front_end() {
    rtl_cosim::provisioned_for_tests();
    let cfg =
        EnsoConfig { registers: RegisterMode::Mmio, map_extension_pages: false, ..EnsoConfig::default() };
    let cycles = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (nic_end, wire) = cable(256);
    let mut nic = EnsoNic::with_engines(
        cfg,
        Box::new(nic_end),
        rtl_cosim::RtlEngine::factory(&cfg, Some(cycles.clone())).unwrap(),
    )
    .unwrap();
    assert!(matches!(nic.bar_backing(2), BarBacking::Trapped));
    let ram = ShmRegion::new("ram", RAM_LEN as usize).unwrap();
    let mem = GuestMemory::new();
    mem.map(RAM, RAM_LEN, Some(ram.dup_fd().unwrap()), 0, true).unwrap();
    let dma = Dma::new(Arc::new(mem), PciDevice::counters(&nic), Arc::new(AtomicBool::new(true)));
    nic.attach(DeviceContext { dma, irq: Arc::new(NoIrqs) });
    let mut k = Card { nic, ram, wire };

    // Pair 0, upstream's order.
    let pg = nb_page(0);
    k.reset(pg);
    let t = k.r(pg + queue::TX_TAIL);
    k.w(pg + queue::TX_HEAD, t);
    k.w(pg + queue::RX_MEM_LOW, PAIR as u32);
    k.w(pg + queue::RX_MEM_HIGH, 0);
    k.w(pg + queue::TX_MEM_LOW, TX as u32);
    k.w(pg + queue::TX_MEM_HIGH, 0);
    for (id, base) in PIPES {
        k.reset(pipe_page(id));
        k.w(pipe_page(id) + queue::RX_MEM_LOW, base as u32);
        k.w(pipe_page(id) + queue::RX_MEM_HIGH, 0);
    }
    // Flow entries: dport 9000 -> 8191, 9001 -> 8190.
    let mut tx_tail = 0u32;
    let mut post = |k: &mut Card, words: &[(usize, u64)]| -> u32 {
        let slot = TX + 64 * tx_tail as u64;
        for o in (8..64).step_by(8) {
            k.set64(slot + o, 0);
        }
        for &(o, v) in words.iter().skip(1) {
            k.set64(slot + o as u64, v);
        }
        k.set64(slot, words[0].1);
        tx_tail += 1;
        tx_tail
    };
    for (i, (id, _)) in PIPES.iter().enumerate() {
        let fields = (9000u64 + i as u64) | (0x0a01_0002u64 << 32);
        let t = post(
            &mut k,
            &[
                (0, notif::SIGNAL_CONFIG),
                (8, config::FLOW_TABLE),
                (16, fields),
                (24, 17u64 << 32),
                (32, *id as u64),
            ],
        );
        k.w(pg + queue::TX_TAIL, t);
    }
    assert_eq!(k.r(pg + queue::TX_HEAD), 2, "both entries taken");
    assert_eq!(k.nic.counter(c::BAD_CONFIG), 0);

    // Traffic: a frame per flow, echoed from the pipe with a TX notification; the pipe's
    // head is rewritten right after (prefetch) and freed on completion.
    let mut rx_head = 0u32;
    let mut heads = [0u32; 2];
    let mut echoed = 0;
    let start = Instant::now();
    for n in 0..300u32 {
        let p = (n % 2) as usize;
        k.wire.send(udp(9000 + p as u16, n as u8));
        k.wire.flush();
        // Notifications until one for this frame's pipe (a prefetch may bring another's).
        let tail = loop {
            let at = PAIR + 64 * rx_head as u64;
            while k.m64(at) == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no notification for frame {n}: {:?}",
                    k.nic.counters()
                );
                std::thread::yield_now();
            }
            let (q, tail) = (k.m64(at + 8), k.m64(at + 16) as u32);
            k.set64(at, 0);
            rx_head += 1;
            k.w(pg + queue::RX_HEAD, rx_head);
            assert!(PIPES.iter().any(|(id, _)| u64::from(*id) == q), "notification for pipe {q}");
            if q == u64::from(PIPES[p].0) && tail != heads[p] {
                break tail;
            }
        };
        let from = heads[p];
        let t = post(
            &mut k,
            &[(0, notif::SIGNAL_SEND), (8, PIPES[p].1 + 64 * from as u64), (16, 64 * (tail - from) as u64)],
        );
        k.w(pg + queue::TX_TAIL, t);
        k.w(pipe_page(PIPES[p].0) + queue::RX_HEAD, from); // prefetch: the unchanged head
        let mut got = vec![];
        while got.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "no echo of frame {n}");
            k.wire.recv(&mut got, 8);
        }
        assert_eq!(got[0][63], n as u8);
        // Completion: free the pipe's space.
        while k.m64(TX + 64 * (t - 1) as u64) != 0 {
            std::thread::yield_now();
        }
        heads[p] = tail;
        k.w(pipe_page(PIPES[p].0) + queue::RX_HEAD, tail);
        echoed += 1;
    }
    assert_eq!(echoed, 300);
    let counters = k.nic.counters();
    assert!(counters[c::RTL_REGISTER_ACCESSES as usize] > 900, "{counters:?}");
    assert_eq!(counters[c::EXTENSION_ACCESSES as usize], 0);
    assert!(counters[c::PREFETCHES as usize] >= 300, "{counters:?}");
    assert!(cycles.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
