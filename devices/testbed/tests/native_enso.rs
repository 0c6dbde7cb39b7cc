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
    let params =
        EchoParams { pipes, packets: None, idle: None, start_timeout: None, device: Default::default() };
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

/// The echo counts every doorbell it writes into the polled pages, prefetch doorbells
/// included (two register writes each), and nothing else: the total is the sum of the
/// driver's per-register counts over the loop.
#[test]
fn the_echo_counts_its_doorbells_prefetch_included() {
    let mut r = rig("doorbells");
    let access = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
    let params = EchoParams {
        pipes: 2,
        packets: Some(20_000),
        idle: None,
        start_timeout: None,
        device: Default::default(),
    };
    let mut echo = Echo::setup(access, &params).expect("echo setup");
    echo.set_prefetch(true);
    let before = echo.device().stats();
    let nic_before = r.nic.lock().unwrap().counter(counter::PREFETCHES);
    let stop = AtomicBool::new(false);
    let (rep, (s, mut echo)) = std::thread::scope(|sc| {
        let t = sc.spawn(|| (echo.run(&params, &stop).expect("echo loop").0, echo));
        let rep = generate(&mut r.gen_end, 20_000, 64, 16);
        (rep, t.join().unwrap())
    });
    assert!(rep.clean() && rep.matched == 20_000, "{rep:?}");
    let d = echo.device().stats();
    let delta = |f: fn(&enso::DeviceStats) -> u64| f(&d) - f(&before);
    assert!(s.batches > 0 && s.packets == 20_000, "{s:?}");
    assert_eq!(s.prefetches, s.batches, "one prefetch doorbell per batch: {s:?}");
    assert_eq!(delta(|x| x.prefetches), s.prefetches);
    let parts = delta(|x| x.rx_head_writes)
        + delta(|x| x.tx_tail_writes)
        + delta(|x| x.pipe_head_writes)
        + 2 * delta(|x| x.prefetches);
    assert_eq!(s.doorbell_writes, parts, "{s:?}\n{d:?}");
    assert_eq!(delta(|x| x.polled_doorbell_writes), parts, "every page is mapped natively");
    assert!(delta(|x| x.tx_tail_writes) >= s.batches, "each batch is sent with a tail write: {d:?}");
    // The device saw some of the prefetches (its polling merges writes), never more.
    let seen = r.nic.lock().unwrap().counter(counter::PREFETCHES) - nic_before;
    assert!(seen > 0 && seen <= s.prefetches, "the NIC saw {seen} of {} prefetches", s.prefetches);
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

#[test]
fn pcap_replayed_into_the_nic_comes_out_of_the_capture_app_byte_for_byte() {
    let mut r = rig("capture");
    let dir = r.sock.parent().unwrap().to_path_buf();
    let out = dir.join("captured.pcap");
    // Mixed-size frames of a few flows, replayed from memory (as from a pcap file).
    let sizes = [64usize, 128, 333, 1500, 9000, 60, 777];
    let frames: Vec<Vec<u8>> = (0..3000u64)
        .map(|i| {
            let size = sizes[i as usize % sizes.len()];
            let mut f = vec![0u8; size.max(60)];
            wire::generator::build_frame(&mut f, size, (i % 5) as u32, i);
            f
        })
        .collect();
    let params = guest_apps::capture::CaptureParams {
        path: out.clone(),
        pipes: 1,
        packets: Some(frames.len() as u64),
        idle: None,
        start_timeout: Some(Duration::from_secs(60)),
        until_done: false,
        upload: false,
    };
    let access = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let capture = std::thread::spawn(move || guest_apps::capture::run_for(access, &params, &s2));
    // The app has configured its fallback queue once the NIC completed that request.
    let t = Instant::now();
    while r.nic.lock().unwrap().counter(counter::TX_COMPLETIONS) == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "capture app never configured the NIC");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Paced: the wire has no backpressure, and a full pipe drops (and counts) frames.
    let replay = wire::pcap::PcapReplay::from_frames(frames.clone()).with_rate(5000.0);
    let rep = replay.run(&mut r.gen_end, &AtomicBool::new(false));
    assert_eq!(rep.sent, frames.len() as u64);
    let t = Instant::now();
    while !capture.is_finished() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let c = r.nic.lock().unwrap().counters();
    let named: Vec<_> = counter::NAMES.iter().zip(c).filter(|(_, v)| *v != 0).collect();
    let stats = capture.join().unwrap().expect("capture ran");
    assert_eq!(stats.packets, frames.len() as u64, "NIC counters: {named:?}");
    let got = wire::pcap::PcapReplay::open(&out).expect("the capture is a readable pcap");
    assert_eq!(got.frames().len(), frames.len());
    for (i, (a, b)) in got.frames().iter().zip(&frames).enumerate() {
        assert_eq!(a, b, "frame {i}");
    }
    // A second reader, when tshark is installed (./ci/test.sh installs it): every frame,
    // with its length, in order.
    let tshark = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&out)
        .args(["-T", "fields", "-e", "frame.len"])
        .output();
    match tshark {
        Ok(o) => {
            assert!(o.status.success(), "tshark reads the capture: {}", String::from_utf8_lossy(&o.stderr));
            let lens: Vec<usize> =
                String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
            assert_eq!(lens, frames.iter().map(Vec::len).collect::<Vec<_>>(), "tshark's frame lengths");
        }
        Err(e) => {
            eprintln!("tshark not run ({e}): the capture was checked with the wire crate's reader only")
        }
    }
}

/// EnsōGen against the echo, NIC to NIC, both apps in this process.
#[test]
fn gen_echo_native_generated_and_pcap_replay() {
    let bin = env!("CARGO_BIN_EXE_testbed");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["run", "gen-echo", "--transport", "native", "--json", "--packets", "3000"];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(bin).args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(v["pass"] == true, "{}", serde_json::to_string_pretty(&v).unwrap());
        v
    };
    let v = run(&["--size", "256", "--flows", "4"]);
    assert_eq!(v["traffic"]["received"], 3000);
    assert_eq!(v["traffic"]["source"], "generated");
    let hist: u64 =
        v["traffic"]["rtt_histogram"].as_array().unwrap().iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(hist, 3000, "every returned frame is in the histogram");

    // A pcap of three frames (two UDP sizes and one TCP), replayed cyclically.
    let dir = std::env::temp_dir().join(format!("gen-echo-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("replay.pcap");
    let mut w = wire::PcapCapture::create(&path).unwrap();
    for (len, proto) in [(64usize, 17u8), (300, 17), (1000, 6)] {
        let mut f = vec![0u8; len];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[23] = proto;
        w.write_frame(&f, Duration::ZERO).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let v = run(&["--pcap", path.to_str().unwrap()]);
    assert_eq!(v["traffic"]["source"], "pcap");
    assert_eq!(v["traffic"]["received"], 3000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our driver's card mode (no extension) in both register modes, with upstream's prefetch
/// (a rewrite of the unchanged head): every packet echoed, BAR0 never touched, and the
/// prefetches seen by the device only when registers trap.
#[test]
fn the_driver_in_card_mode_in_both_register_modes() {
    for mode in [enso_nic::RegisterMode::Shared, enso_nic::RegisterMode::Mmio] {
        let cfg = EnsoConfig { registers: mode, map_extension_pages: false, ..EnsoConfig::default() };
        let mut r = rig_with(&format!("card-{}", mode.name()), cfg);
        let access = Box::new(VfioUserDevice::connect(&r.sock).unwrap());
        let device = enso::DeviceOptions {
            extensions: enso::Extensions::None,
            allow_trapped_datapath: mode == enso_nic::RegisterMode::Mmio,
            ..enso::DeviceOptions::new(0)
        };
        let params = EchoParams { pipes: 2, packets: None, idle: None, start_timeout: None, device };
        let mut echo = Echo::setup(access, &params).expect("card-mode echo setup");
        assert_eq!(echo.device().info(), enso::DeviceInfo::card(), "upstream's constants, nothing read");
        assert!(matches!(echo.device().counters(), Err(enso::Error::CardMode(_))));
        echo.set_prefetch(true);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || echo.run(&params, &s2).expect("echo loop"));
        let g = generate(&mut r.gen_end, 20_000, 64, 8);
        stop.store(true, Ordering::Relaxed);
        let (s, _) = t.join().unwrap();
        assert_eq!((g.matched, g.lost), (20_000, 0), "{mode:?}: {g:?}");
        assert!(s.prefetches > 0, "{mode:?}");
        let c = r.nic.lock().unwrap().counters();
        use testbed_regs::enso::ext::counter as k;
        assert_eq!(c[k::EXTENSION_ACCESSES as usize], 0, "{mode:?}: card mode never touches BAR0");
        assert_eq!(c[k::BAD_REGISTER_WRITES as usize], 0, "{mode:?}");
        match mode {
            enso_nic::RegisterMode::Mmio => {
                assert!(c[k::PREFETCHES as usize] > 0, "the device saw the head rewrites");
                assert!(c[k::QUEUE_DOORBELLS as usize] > 0);
            }
            enso_nic::RegisterMode::Shared => {
                assert_eq!(c[k::PREFETCHES as usize], 0, "a poller cannot see a same-value store");
                assert_eq!(c[k::QUEUE_DOORBELLS as usize], 0);
            }
        }
    }
}
