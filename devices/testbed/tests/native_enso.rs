//! The Ensō driver and echo app against the Ensō NIC model, natively over the vfio-user
//! transport (no VM): a million packets of mixed sizes, and a garbage-writing driver that
//! must leave the server serving the next, well-behaved client.

use device_access::vfio_user::VfioUserDevice;
use enso_nic::{EnsoConfig, EnsoNic};
use guest_apps::echo::{Echo, EchoParams};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::enso::ext::counter;
use vfio_server::{Server, ServerHandle};
use wire::generator::{GenConfig, GenReport, Generator};
use wire::CableEnd;

struct Rig {
    sock: PathBuf,
    nic: Arc<Mutex<EnsoNic>>,
    gen_end: CableEnd,
    _server: ServerHandle,
}

fn rig(tag: &str) -> Rig {
    rig_with(tag, EnsoConfig::default())
}

fn rig_with(tag: &str, cfg: EnsoConfig) -> Rig {
    let dir = std::env::temp_dir().join(format!("native-enso-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("enso.sock");
    let (nic_end, gen_end) = wire::cable(1024);
    let nic = Arc::new(Mutex::new(EnsoNic::new(cfg, Box::new(nic_end)).unwrap()));
    let server = Server::bind(&sock, nic.clone()).unwrap().spawn();
    Rig { sock, nic, gen_end, _server: server }
}

/// Runs the real echo app on a thread while `f` drives traffic; returns what `f` returned.
fn with_echo<T>(rig: &mut Rig, pipes: u32, f: impl FnOnce(&mut CableEnd) -> T) -> T {
    let access = Box::new(VfioUserDevice::connect(&rig.sock).unwrap());
    let params = EchoParams { pipes, packets: None, idle: None, start_timeout: None };
    let mut echo = Echo::setup(access, &params).expect("echo setup");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || echo.run(&params, &s2).expect("echo loop"));
    let out = f(&mut rig.gen_end);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    out
}

fn generate(end: &mut CableEnd, packets: u64, size: usize, flows: u32) -> GenReport {
    let cfg = GenConfig { packets, size, flows, window: 128, ..GenConfig::default() };
    Generator::new(cfg).run(end, Instant::now() + Duration::from_secs(120))
}

#[test]
fn a_million_packets_of_mixed_sizes_over_many_flows() {
    let mut r = rig("million");
    let phases: [(u64, usize); 6] =
        [(500_000, 64), (200_000, 128), (150_000, 512), (100_000, 1500), (30_000, 4000), (20_000, 9000)];
    let reports = with_echo(&mut r, 4, |end| {
        phases.iter().map(|&(n, size)| (size, generate(end, n, size, 256))).collect::<Vec<_>>()
    });
    let mut total = 0;
    let c = r.nic.lock().unwrap().counters();
    let named: Vec<_> = counter::NAMES.iter().zip(c).filter(|(_, v)| *v != 0).collect();
    for (size, rep) in &reports {
        assert!(rep.clean(), "{size} B: {rep:?}\nNIC counters: {named:?}");
        assert_eq!(rep.matched, rep.sent, "{size} B");
        total += rep.matched;
    }
    assert_eq!(total, 1_000_000);
    let c = r.nic.lock().unwrap().counters();
    assert_eq!(c[counter::RX_PACKETS as usize], 1_000_000);
    assert_eq!(c[counter::TX_PACKETS as usize], 1_000_000);
    for (i, name) in counter::NAMES.iter().enumerate() {
        if name.contains("drop") || name.starts_with("bad") || *name == "dma_errors" {
            assert_eq!(c[i], 0, "{name}");
        }
    }
}

/// Tiny rings make every ring wrap thousands of times; races between the device writing a
/// notification and the driver clearing it (the driver polls and writes back the same
/// words) show up here as stale notifications, duplicates and a stuck pipe.
#[test]
fn small_rings_wrap_thousands_of_times_cleanly() {
    let cfg = EnsoConfig { notif_entries: 64, pipe_flits: 1024, ..EnsoConfig::default() };
    let mut r = rig_with("small", cfg);
    let rep = with_echo(&mut r, 4, |end| {
        let cfg = GenConfig { packets: 600_000, size: 64, flows: 64, window: 200, ..GenConfig::default() };
        Generator::new(cfg).run(end, Instant::now() + Duration::from_secs(30))
    });
    let c = r.nic.lock().unwrap().counters();
    assert!(rep.clean() && rep.matched == 600_000, "{rep:?}\n{c:?}");
    assert!(c[counter::RX_NOTIFICATIONS as usize] > 64 * 20, "the notification ring wrapped many times");
    for (i, name) in counter::NAMES.iter().enumerate() {
        if name.contains("drop") || name.starts_with("bad") {
            assert_eq!(c[i], 0, "{name}");
        }
    }
}

#[test]
fn a_garbage_driver_leaves_the_server_serving_the_next_client() {
    let mut r = rig("garbage");
    {
        // Frames from the wire, malformed and well formed, waiting for the garbage.
        let mut g = guest_apps::garbage::Garbage::new(7);
        for i in 0..2000u32 {
            let len = 14 + (g.next_u32() as usize % 1600);
            let mut f: Vec<u8> = (0..len).map(|_| g.next_u32() as u8).collect();
            if i % 2 == 0 {
                f.truncate(8);
            }
            wire::EthPort::send(&mut r.gen_end, f);
        }
        wire::EthPort::flush(&mut r.gen_end);
        let dev = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
        let report = guest_apps::garbage::run(dev, 0x9e37_79b9_7f4a_7c15);
        assert!(report.pass, "{}", report.to_json_line());
    } // the garbage driver disconnects
    let c = r.nic.lock().unwrap().counters();
    for idx in [
        counter::TX_BAD_NOTIFICATION,
        counter::BAD_TAIL,
        counter::BAD_REGISTER_WRITES,
        counter::RX_DROP_MALFORMED,
    ] {
        assert!(c[idx as usize] > 0, "{} not counted: {c:?}", counter::NAMES[idx as usize]);
    }
    let errors: u64 = [
        counter::BAD_HEAD,
        counter::DMA_ERRORS,
        counter::TX_DROP_DMA,
        counter::RX_DROP_DMA,
        counter::BAD_CONFIG,
    ]
    .iter()
    .map(|&i| c[i as usize])
    .sum();
    assert!(errors > 0, "head/DMA/config errors counted: {c:?}");
    // Drain what the garbage left on the wire, then a well-behaved client runs clean.
    let mut sink = vec![];
    while wire::EthPort::recv(&mut r.gen_end, &mut sink, 4096) > 0 {}
    let rep = with_echo(&mut r, 2, |end| generate(end, 20_000, 256, 32));
    assert!(rep.clean(), "{rep:?}");
    assert_eq!(rep.matched, 20_000);
}
