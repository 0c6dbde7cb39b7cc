//! The packetized (DPDK-style) driver and its echo against the packet-nic model, natively
//! over the vfio-user transport (no VM): small and MTU-sized frames over many flows spread
//! by RSS, buffer recycling through a pool much smaller than the traffic, and chained
//! jumbo frames.

use device_access::vfio_user::VfioUserDevice;
use packet_nic::{PacketNic, PacketNicConfig};
use packetized::echo::{echo_loop, EchoStats};
use packetized::{Port, PortConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::packetized::reg::counter;
use vfio_server::{Server, ServerHandle};
use wire::generator::{GenConfig, GenReport, Generator};
use wire::CableEnd;

struct Rig {
    sock: PathBuf,
    nic: Arc<Mutex<PacketNic>>,
    gen_end: CableEnd,
    _server: ServerHandle,
}

fn rig(tag: &str, num_queues: u32) -> Rig {
    let dir = std::env::temp_dir().join(format!("native-pktz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("pktz.sock");
    let (nic_end, gen_end) = wire::cable(1024);
    let nic =
        Arc::new(Mutex::new(PacketNic::new(PacketNicConfig { num_queues }, Box::new(nic_end)).unwrap()));
    let server = Server::bind(&sock, nic.clone()).unwrap().spawn();
    Rig { sock, nic, gen_end, _server: server }
}

/// Runs the echo loop on a thread while `f` drives traffic; returns `f`'s result and the
/// echo's stats.
fn with_echo<T>(rig: &mut Rig, cfg: PortConfig, f: impl FnOnce(&mut CableEnd) -> T) -> (T, EchoStats) {
    let access = Box::new(VfioUserDevice::connect(&rig.sock).unwrap());
    let mut port = Port::new(access, cfg).expect("port setup");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || echo_loop(&mut port, &s2).expect("echo loop"));
    let out = f(&mut rig.gen_end);
    stop.store(true, Ordering::Relaxed);
    (out, t.join().unwrap())
}

fn generate(end: &mut CableEnd, packets: u64, size: usize, flows: u32) -> GenReport {
    let cfg = GenConfig { packets, size, flows, window: 128, ..GenConfig::default() };
    Generator::new(cfg).run(end, Instant::now() + Duration::from_secs(120))
}

/// The NIC counters, and a check that no drop or error counter moved.
fn assert_no_drops(rig: &Rig) -> [u64; packet_nic::COUNT] {
    let c = rig.nic.lock().unwrap().counters();
    let named: Vec<_> = counter::NAMES.iter().zip(c).filter(|(_, v)| *v != 0).collect();
    for (i, name) in counter::NAMES.iter().enumerate() {
        if name.contains("drop") || name.starts_with("bad") || *name == "dma_errors" {
            assert_eq!(c[i], 0, "{name}: {named:?}");
        }
    }
    c
}

#[test]
fn small_and_mtu_frames_over_64_flows_and_4_rss_queues() {
    let mut r = rig("rss", 8);
    let cfg = PortConfig { rx_queues: 4, tx_queues: 4, ..PortConfig::default() };
    let (reports, stats) = with_echo(&mut r, cfg, |end| {
        [(200_000u64, 64usize), (20_000, 1500)].map(|(n, size)| (size, generate(end, n, size, 64)))
    });
    let c = assert_no_drops(&r);
    let mut total = 0;
    for (size, rep) in &reports {
        assert!(rep.clean(), "{size} B: {rep:?}");
        assert_eq!(rep.matched, rep.sent, "{size} B");
        total += rep.matched;
    }
    assert_eq!(total, 220_000);
    assert_eq!(stats.packets, 220_000);
    assert_eq!(c[counter::RX_PACKETS as usize], 220_000);
    assert_eq!(c[counter::TX_PACKETS as usize], 220_000);
    // Bursts, not packets, ring doorbells.
    let p = stats.port;
    assert!(p.doorbells() <= 2 * p.rx_bursts + p.tx_bursts + 2 * 4, "{p:?}");
    assert_eq!(p.tx_doorbells, p.tx_bursts);
    assert_eq!(p.rx_errors, 0);
    assert_eq!(stats.per_queue.len(), 4);
    assert!(
        stats.per_queue.iter().all(|&n| n > 0),
        "RSS spreads 64 flows over 4 queues: {:?}",
        stats.per_queue
    );
    assert!(p.doorbells() < 2 * stats.packets, "{p:?}");
    eprintln!(
        "packetized echo: {} packets, {:.2} doorbells/packet, {:.1} packets/RX burst, {p:?}",
        stats.packets,
        stats.doorbells_per_packet(),
        stats.packets as f64 / stats.bursts as f64
    );
}

#[test]
fn buffers_recycle_through_a_pool_much_smaller_than_the_traffic() {
    let mut r = rig("recycle", 2);
    // 2 RX rings of 128 (254 posted) + TX: 320 buffers serve 100k frames.
    let cfg = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        ring_size: 128,
        mbufs: Some(320),
        tx_free_thresh: 16,
        wb_batch: Some(8),
        ..PortConfig::default()
    };
    let (rep, stats) = with_echo(&mut r, cfg, |end| generate(end, 100_000, 256, 32));
    assert!(rep.clean(), "{rep:?}");
    assert_eq!(rep.matched, 100_000);
    assert_no_drops(&r);
    assert!(stats.port.tx_reclaimed >= 100_000 - 320, "{:?}", stats.port);
}

#[test]
fn jumbo_frames_are_chained_both_ways() {
    let mut r = rig("jumbo", 4);
    let cfg = PortConfig { rx_queues: 2, tx_queues: 2, ring_size: 512, ..PortConfig::default() };
    let (rep, stats) = with_echo(&mut r, cfg, |end| generate(end, 10_000, 9000, 16));
    assert!(rep.clean(), "{rep:?}");
    assert_eq!(rep.matched, 10_000);
    let c = assert_no_drops(&r);
    assert_eq!(c[counter::RX_CHAINED as usize], 10_000);
    assert_eq!(c[counter::TX_CHAINED as usize], 10_000);
    assert_eq!(stats.bytes, 10_000 * 9000);
}

#[test]
fn misuse_is_reported_not_sent() {
    let r = rig("misuse", 2);
    let access = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
    let bad = PortConfig { rx_queues: 3, ..PortConfig::default() };
    assert!(matches!(Port::new(access, bad), Err(packetized::Error::Config(_))));
    let access = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
    let mut port = Port::new(access, PortConfig { ring_size: 64, ..PortConfig::default() }).unwrap();
    let mut v = vec![];
    assert!(matches!(port.rx_burst(1, &mut v), Err(packetized::Error::BadQueue { .. })));
    let mut short = port.mempool().alloc_frame(10).unwrap();
    short.data_mut().fill(0);
    let mut pkts = vec![short];
    assert!(matches!(port.tx_burst(0, &mut pkts), Err(packetized::Error::BadLength { .. })));
    assert_eq!(pkts.len(), 1, "nothing posted");
    assert_eq!(port.stats().tx_doorbells, 0);
    drop(pkts);
    drop(port);
    assert_no_drops(&r);
}
