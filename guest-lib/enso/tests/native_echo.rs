//! The driver against the real Ensō model, natively over vfio-user: a wire generator on
//! the other end of a cable sends frames, the driver echoes them (RxTxPipe, zero copy,
//! first payload byte incremented), the generator checks every echo.

use device_access::vfio_user::VfioUserDevice;
use enso::{Device, PacketIterMut, RxTxPipe};
use enso_nic::{EnsoConfig, EnsoNic};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_server::Server;
use wire::generator::{GenConfig, Generator};

/// Yield every this many empty polls (a power of two).
const YIELD_EVERY: u32 = 16;

fn echo_until(dev: &mut Device, pipes: &mut [RxTxPipe], stop: &AtomicBool) -> u64 {
    let mut packets = 0u64;
    let mut empty = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(id) = dev.next_rx_pipe_to_recv() else {
            // Three spinning parties (generator, model, driver) share two cores here.
            empty += 1;
            if empty & (YIELD_EVERY - 1) == 0 {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
            continue;
        };
        empty = 0;
        let pipe = &mut pipes[id as usize];
        let buf = pipe.recv_mut(usize::MAX);
        let len = buf.len();
        for p in PacketIterMut::new(buf) {
            p[42] = p[42].wrapping_add(1);
            packets += 1;
        }
        pipe.send_and_free(dev, len).unwrap();
    }
    packets
}

#[test]
fn echo_100k_packets_through_the_model() {
    let dir = std::env::temp_dir().join(format!("enso-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("enso.sock");
    let (nic_end, mut gen_end) = wire::cable(1024);
    let nic = EnsoNic::new(EnsoConfig::default(), Box::new(nic_end)).unwrap();
    let server = Server::bind(&sock, Arc::new(Mutex::new(nic))).unwrap().spawn();

    let access = Box::new(VfioUserDevice::connect(&sock).unwrap());
    let mut dev = Device::new(access, 0).unwrap();
    let mut pipes: Vec<RxTxPipe> = (0..4).map(|_| dev.alloc_rx_tx_pipe().unwrap()).collect();
    dev.configure_fallback_queues(4, false).unwrap();

    // ENSO_ECHO_PACKETS / ENSO_ECHO_WINDOW scale the run up for a benchmark.
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let packets = env("ENSO_ECHO_PACKETS", 100_000);
    let window = env("ENSO_ECHO_WINDOW", 512) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let cfg = GenConfig { packets, size: 64, flows: 16, window, ..GenConfig::default() };
            let r = Generator::new(cfg).run(&mut gen_end, Instant::now() + Duration::from_secs(60));
            stop.store(true, Ordering::Relaxed);
            r
        })
    };
    let echoed = echo_until(&mut dev, &mut pipes, &stop);
    let report = generator.join().unwrap();
    dev.wait_tx_idle(Duration::from_secs(2)).unwrap();
    let c = dev.counters().unwrap();
    eprintln!("echoed {echoed}, stats {:?}", dev.stats());
    eprintln!("generator {report:?}");
    for (n, v) in c.iter().filter(|(_, v)| *v != 0) {
        eprintln!("  {n} = {v}");
    }
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.matched, packets);
    assert!(echoed >= packets);
    drop(pipes);
    drop(dev);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
