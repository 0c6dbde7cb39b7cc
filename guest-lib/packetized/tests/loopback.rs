//! The driver against the packet-nic model over vfio-user, frame by frame: RX delivery
//! with the RSS hash, TX of single and chained frames, mempool accounting.

use device_access::vfio_user::VfioUserDevice;
use packet_nic::{PacketNic, PacketNicConfig};
use packetized::{Error, Mbuf, Port, PortConfig, BURST};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::packetized::{reg::counter, rss_input, toeplitz, RSS_KEY_DEFAULT};
use vfio_server::{Server, ServerHandle};
use wire::{cable, CableEnd, EthPort};

fn serve(tag: &str) -> (std::path::PathBuf, Arc<Mutex<PacketNic>>, CableEnd, ServerHandle) {
    let dir = std::env::temp_dir().join(format!("pktz-lib-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("nic.sock");
    let (nic_end, peer) = cable(64);
    let nic =
        Arc::new(Mutex::new(PacketNic::new(PacketNicConfig { num_queues: 4 }, Box::new(nic_end)).unwrap()));
    let h = Server::bind(&sock, nic.clone()).unwrap().spawn();
    (sock, nic, peer, h)
}

fn udp(len: usize, sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&[0, 80]);
    for (i, b) in f.iter_mut().enumerate().skip(42) {
        *b = i as u8 ^ sport as u8;
    }
    f
}

fn rx_until(port: &mut Port, q: u32, n: usize) -> Vec<Mbuf> {
    let mut out = vec![];
    let t = Instant::now();
    while out.len() < n {
        port.rx_burst(q, &mut out).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "got {} of {n} frames", out.len());
    }
    out
}

fn wire_until(peer: &mut CableEnd, n: usize) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let t = Instant::now();
    while out.len() < n {
        peer.recv(&mut out, 64);
        assert!(t.elapsed() < Duration::from_secs(10), "got {} of {n} frames off the wire", out.len());
    }
    out
}

#[test]
fn frames_round_trip_with_hash_chaining_and_pool_accounting() {
    let (sock, nic, mut peer, _h) = serve("rt");
    let access = Box::new(VfioUserDevice::connect(&sock).unwrap());
    let cfg =
        PortConfig { rx_queues: 1, tx_queues: 1, ring_size: 64, mbufs: Some(200), ..PortConfig::default() };
    let mut port = Port::new(access, cfg).unwrap();
    let pool = port.mempool().clone();
    assert_eq!(pool.free_count(), 200 - 63, "RX ring filled");

    // RX: 40 frames (more than one burst), one of them jumbo (chained over 5 buffers).
    let frames: Vec<Vec<u8>> =
        (0..40u16).map(|i| udp(if i == 7 { 9000 } else { 60 + i as usize * 30 }, i)).collect();
    for f in &frames {
        peer.send(f.clone());
    }
    peer.flush();
    let mut got = vec![];
    let t = Instant::now();
    while got.len() < frames.len() {
        let n = port.rx_burst(0, &mut got).unwrap();
        assert!(n <= BURST);
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    for (m, f) in got.iter().zip(&frames) {
        assert_eq!(&m.to_vec(), f);
        let mut input = [0u8; 12];
        let k = rss_input(f, &mut input);
        assert_eq!(m.rss_hash(), toeplitz(&RSS_KEY_DEFAULT, &input[..k]));
    }
    assert_eq!(got[7].nb_segs(), 5);
    assert_eq!(port.stats().rx_packets, 40);

    // TX them back, modified; buffers return to the pool once sent.
    for m in got.iter_mut() {
        *m.byte_mut(42).unwrap() ^= 0xff;
    }
    let n = got.len();
    assert_eq!(port.tx_burst(0, &mut got).unwrap(), n);
    assert!(got.is_empty());
    assert_eq!(port.stats().tx_doorbells, 1, "one doorbell per burst");
    let back = wire_until(&mut peer, n);
    for (b, f) in back.iter().zip(&frames) {
        let mut want = f.clone();
        want[42] ^= 0xff;
        assert_eq!(b, &want);
    }
    port.wait_tx_idle(Duration::from_secs(5)).unwrap();
    assert_eq!(pool.free_count(), 200 - 63);

    // A frame built from scratch, chained.
    let f = udp(5000, 999);
    let mut m = pool.alloc_frame(f.len()).unwrap();
    m.copy_from(&f).unwrap();
    assert_eq!(port.tx_burst(0, &mut vec![m]).unwrap(), 1);
    assert_eq!(wire_until(&mut peer, 1)[0], f);

    // Bulk alloc/free, all or nothing.
    let mut v = vec![];
    pool.alloc_bulk(&mut v, 10).unwrap();
    assert!(matches!(pool.alloc_bulk(&mut v, 1000), Err(Error::PoolExhausted { .. })));
    assert_eq!(v.len(), 10);
    pool.free_bulk(&mut v);
    port.wait_tx_idle(Duration::from_secs(5)).unwrap();
    assert_eq!(pool.free_count(), 200 - 63);

    let c = port.counters().unwrap();
    assert_eq!(c[counter::RX_PACKETS as usize], 40);
    assert_eq!(c[counter::TX_PACKETS as usize], 41);
    assert_eq!(c[counter::RX_CHAINED as usize], 1);
    assert_eq!(c[counter::TX_CHAINED as usize], 2);
    drop(port);
    // The port quiesced its queues; the pool outlives it while handles exist.
    assert_eq!(pool.free_count(), 200);
    let c = nic.lock().unwrap().counters();
    assert_eq!(c[counter::BAD_TAIL as usize] + c[counter::BAD_REGISTER_WRITES as usize], 0, "{c:?}");
}

#[test]
fn a_short_pool_refills_later_and_nothing_leaks() {
    let (sock, _nic, mut peer, _h) = serve("short");
    let access = Box::new(VfioUserDevice::connect(&sock).unwrap());
    // Exactly one ring's worth (plus the minimum slack): held mbufs starve the refill.
    let cfg =
        PortConfig { rx_queues: 1, tx_queues: 1, ring_size: 32, mbufs: Some(36), ..PortConfig::default() };
    let mut port = Port::new(access, cfg).unwrap();
    for i in 0..20u16 {
        peer.send(udp(64, i));
    }
    peer.flush();
    let held = rx_until(&mut port, 0, 20);
    assert!(port.stats().rx_refill_short > 0, "{:?}", port.stats());
    drop(held);
    // The next burst refills the ring from the returned buffers.
    for i in 0..25u16 {
        peer.send(udp(64, i));
    }
    peer.flush();
    let more = rx_until(&mut port, 0, 25);
    assert_eq!(more.len(), 25);
    assert!(matches!(port.tx_burst(9, &mut vec![]), Err(Error::BadQueue { .. })));
}
