//! The accelerator chain over the native transport (vfio-user sockets, the driver in this
//! process): every result checked by the source, and the per-item PCIe trace.

use guest_apps::chain::Shape;
use pcie_model::OpKind;
use testbed::scenarios::chain::{run_native, ChainOptions, Mode, NativeRun, Transport};

fn opts(items: u64, shape: Shape) -> ChainOptions {
    ChainOptions {
        items,
        shape,
        mode: Mode::Cpu,
        stream: 3,
        transport: Transport::Native,
        ..Default::default()
    }
}

/// The seed's convention, stated apart from the code that applies it: a read costs a round
/// trip, a posted write half of one.
fn seed_rtt(kind: OpKind) -> f64 {
    match kind {
        OpKind::DmaRd => 1.0,
        OpKind::MmioWr | OpKind::DmaWr | OpKind::Irq => 0.5,
    }
}

fn dir(tag: &str) -> std::path::PathBuf {
    testbed::scenarios::run::private_dir(tag).unwrap()
}

#[test]
fn cpu_chain_is_table_2_and_every_result_is_right() {
    let NativeRun { mode: m, source: src, stats, rig } =
        run_native(&opts(500, Shape::CryptoMl), Mode::Cpu, &dir("chain-t2")).unwrap();
    assert_eq!(
        (src.tally.sent, src.tally.matched, src.tally.mismatched, src.tally.lost),
        (500, 500, 0, 0),
        "{src:?}"
    );
    assert_eq!(stats.items, 500);
    assert_eq!((stats.auth_failures, stats.accel_errors, stats.bad_frames), (0, 0, 0));
    assert_eq!((m.ops, m.rtt_units), (12, 9.0), "seed Table 2");
    let critical: Vec<_> = m.trace.iter().filter(|o| o.critical).collect();
    assert_eq!(critical.len(), m.ops);
    assert_eq!(critical.iter().map(|o| seed_rtt(o.kind)).sum::<f64>(), m.rtt_units);
    assert_eq!(m.traced_items, 500);
    assert!(m.trace_items * 2 > m.traced_items, "most items share the reported trace");
    insta::assert_json_snapshot!("cpu_chain_item_trace", m.trace);
    rig.stop();
}

#[test]
fn the_json_states_its_counting_convention_and_the_counts_follow_it() {
    let o = ChainOptions { mode: Mode::Cpu, ..opts(60, Shape::CryptoMl) };
    let run_opts = testbed::scenarios::run::RunOptions {
        timeout: std::time::Duration::from_secs(60),
        keep: false,
        console: false,
    };
    let r = testbed::scenarios::chain::run(None, &run_opts, &o).unwrap();
    let v: serde_json::Value = serde_json::from_str(&testbed::scenarios::run::json_line(&r)).unwrap();
    assert_eq!(v["pass"], true, "{}", testbed::scenarios::run::render(&r));
    let c = &v["convention"];
    assert_eq!(c["read_rtt"], 1.0, "{c}");
    assert_eq!(c["write_rtt"], 0.5, "{c}");
    assert_eq!(OpKind::MmioWr.rtt_weight(), 0.5, "MMIO writes are writes too");
    let (merge, item) = (c["merge"].as_str().unwrap(), c["item"].as_str().unwrap());
    for word in ["consecutive", "kind", "role"] {
        assert!(merge.contains(word), "merge rule names `{word}`: {merge}");
    }
    for word in ["critical path", "NIC", "trace_items", "doorbells"] {
        assert!(item.contains(word), "item rule names `{word}`: {item}");
    }
    // The reported counts are the convention applied to the reported trace.
    let m = &v["modes"]["cpu"];
    let critical: Vec<&serde_json::Value> =
        m["trace"].as_array().unwrap().iter().filter(|o| o["critical"] == true).collect();
    let weight = |o: &serde_json::Value| match o["kind"].as_str().unwrap() {
        "dma_rd" => c["read_rtt"].as_f64().unwrap(),
        "dma_wr" | "mmio_wr" => c["write_rtt"].as_f64().unwrap(),
        k => panic!("a critical {k} operation"),
    };
    assert_eq!(m["ops"].as_u64(), Some(critical.len() as u64));
    assert_eq!(m["rtt_units"].as_f64(), Some(critical.iter().map(|o| weight(o)).sum::<f64>()));
    assert_eq!((m["ops"].as_u64(), m["rtt_units"].as_f64()), (Some(12), Some(9.0)), "seed Table 2");
    assert!(m["trace_items"].as_u64().unwrap() * 2 > m["traced_items"].as_u64().unwrap(), "{m}");
    assert!(testbed::scenarios::run::render(&r).contains("a read costs 1 RTT"));
}

#[test]
fn the_trace_follows_the_chain_crypto_only_is_8_ops() {
    let NativeRun { mode: m, source: src, rig, .. } =
        run_native(&opts(300, Shape::Crypto), Mode::Cpu, &dir("chain-crypto")).unwrap();
    assert_eq!((src.tally.matched, src.tally.mismatched, src.tally.lost), (300, 0, 0), "{src:?}");
    assert_eq!((m.ops, m.rtt_units), (8, 6.0));
    assert!(!m.trace.iter().any(|o| o.dir.contains("ml")), "no ML device in this chain");
    rig.stop();
}

#[test]
fn nagare_chain_is_table_3_and_a_denied_push_is_dropped_while_it_runs() {
    use testbed_regs::nagare as ng;
    let mut pushes = 0u64;
    let run = testbed::scenarios::chain::run_native_with(
        &opts(400, Shape::CryptoMl),
        Mode::Nagare,
        &dir("chain-t3"),
        |rig| {
            // The CPU is not on the stream's allow list: its pushes are dropped and counted.
            if pushes < 5 {
                use pcie_model::PciDevice;
                rig.switch.lock().unwrap().bar_write(ng::WINDOW_BAR, 4096 * pushes, b"not allowed here");
                pushes += 1;
            }
        },
    )
    .unwrap();
    let (m, src) = (&run.mode, &run.source);
    assert_eq!(
        (src.tally.sent, src.tally.matched, src.tally.mismatched, src.tally.lost),
        (400, 400, 0, 0),
        "{src:?}"
    );
    assert_eq!((m.ops, m.rtt_units), (3, 1.5), "seed Table 3");
    assert!(
        m.trace.iter().filter(|o| o.critical).all(|o| o.switched),
        "every critical op went through the switch"
    );
    assert!(!m.trace.iter().any(|o| o.dir.contains("cpu")), "the CPU is on no item's path");
    let critical: Vec<_> = m.trace.iter().filter(|o| o.critical).collect();
    assert_eq!(critical.iter().map(|o| seed_rtt(o.kind)).sum::<f64>(), m.rtt_units);
    let switch_ns = nagare::PipelineConfig::default().latency_ns();
    assert!(m.modeled_ns > 1.5 * 2.0 * 379.0 + 3.0 * switch_ns, "the pipeline delay is in modeled_ns");
    insta::assert_json_snapshot!("nagare_chain_item_trace", m.trace);
    let denied = run.rig.fabric.counters.get(ng::reg::counter::ACL_DENIED);
    assert_eq!(denied, pushes, "every denied push counted");
    assert_eq!(run.rig.fabric.stats[0].denied.load(std::sync::atomic::Ordering::Relaxed), pushes);
    // The CPU only watches a counter every few ms: it saw every item leave, and it spent
    // a small fraction of each item's wall time doing so (the cpu mode's core spins).
    let st = &run.stats;
    assert_eq!(st.items, 400, "{st:?}");
    assert!(st.cpu_ns_per_item > 0.0 && st.cpu_ns_per_item * 10.0 < st.wall_ns_per_item, "{st:?}");
    run.rig.stop();
}

#[test]
fn nagare_crypto_only_is_2_ops() {
    let run = run_native(&opts(300, Shape::Crypto), Mode::Nagare, &dir("chain-t3c")).unwrap();
    assert_eq!((run.source.tally.matched, run.source.tally.lost), (300, 0));
    assert_eq!((run.mode.ops, run.mode.rtt_units), (2, 1.0));
    run.rig.stop();
}

#[test]
fn the_cpu_pushes_into_a_stream_and_the_switch_forwards_it() {
    use guest_apps::chain::{ChainDevices, ChainParams, Flow, NagareChain};
    let o = opts(0, Shape::CryptoMl);
    let d = dir("chain-push");
    let rig = testbed::scenarios::chain::ChainRig::new(&o, &d).unwrap();
    let c = |i: usize| testbed::scenarios::chain::connect(&rig.sockets[i]).unwrap();
    let mut chain = NagareChain::setup(
        ChainDevices { nic: c(1), crypto: c(2), ml: Some(c(3)) },
        c(0),
        ChainParams::new(Shape::CryptoMl, rig.key),
        Flow::default(),
    )
    .unwrap();
    let s = chain.stream();
    let sw = chain.switch();
    let mask = (1 << 1) | (1 << 2) | (1 << 3);
    sw.set_acl(s, mask | 1).unwrap();
    // Three sealed images pushed by the CPU (records on 64-byte boundaries of the stream).
    let mut off = 0u64;
    for seq in 1000..1003u32 {
        let plain = testbed::scenarios::chain::image_record(3, seq);
        let sealed = accel::crypto::seal(&rig.key, seq, 3, accel::crypto::item_nonce(3, seq), &plain[40..]);
        sw.push(s, off, &sealed).unwrap();
        off = (off + sealed.len() as u64).next_multiple_of(64);
    }
    let t = std::time::Instant::now();
    while rig.source().unsolicited < 3 && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let src = rig.source();
    assert_eq!((src.unsolicited, src.tally.mismatched), (3, 0), "the NIC sent the right results: {src:?}");
    assert_eq!(sw.counter("cpu_pushes").unwrap(), 3);
    assert_eq!(sw.egress(s).unwrap(), 3);
    // Off the list again: the next push is denied and visible to the CPU.
    sw.set_acl(s, mask).unwrap();
    sw.push(s, off, b"late").unwrap();
    assert_eq!(sw.denied(s).unwrap(), 1);
    assert_eq!(sw.counter("acl_denied").unwrap(), 1);
    drop(chain);
    rig.stop();
}

#[test]
fn legacy_glue_drives_unmodified_accelerators() {
    let run = run_native(&opts(300, Shape::CryptoMl), Mode::Glue, &dir("chain-glue")).unwrap();
    let (m, src) = (&run.mode, &run.source);
    assert_eq!((src.tally.matched, src.tally.mismatched, src.tally.lost), (300, 0, 0), "{src:?}");
    // Each glued device: doorbell ½ + descriptor 1 + input 1 + output ½, plus the NIC's write.
    assert_eq!((m.ops, m.rtt_units), (9, 6.5));
    assert!(m.trace.iter().any(|o| o.dir == "nagare->crypto" && o.role == pcie_model::OpRole::Doorbell));
    assert!(!m.trace.iter().any(|o| o.dir.contains("cpu")), "the CPU is on no item's path");
    let c = run.rig.device_counters();
    assert_eq!(c["crypto"]["commands"], 300, "the crypto device ran its legacy ring");
    assert_eq!(c["nagare"]["glue_commands"], 600);
    assert!(c["nagare"].get("glue_errors").is_none());
    run.rig.stop();
}
