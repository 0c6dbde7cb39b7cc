//! The accelerator chain over the native transport (vfio-user sockets, the driver in this
//! process): every result checked by the source, and the per-item PCIe trace.

use guest_apps::chain::Shape;
use testbed::chain::{run_native, ChainOptions, Mode, Transport};

fn opts(items: u64, shape: Shape) -> ChainOptions {
    ChainOptions { items, shape, mode: Mode::Cpu, stream: 3, transport: Transport::Native }
}

fn dir(tag: &str) -> std::path::PathBuf {
    testbed::run::private_dir(tag).unwrap()
}

#[test]
fn cpu_chain_is_table_2_and_every_result_is_right() {
    let (m, src, stats, rig) = run_native(&opts(500, Shape::CryptoMl), &dir("chain-t2")).unwrap();
    assert_eq!((src.sent, src.matched, src.mismatched, src.lost), (500, 500, 0, 0), "{src:?}");
    assert_eq!(stats.items, 500);
    assert_eq!((stats.auth_failures, stats.accel_errors, stats.bad_frames), (0, 0, 0));
    assert_eq!((m.ops, m.rtt_units), (12, 9.0), "seed Table 2");
    let critical: Vec<_> = m.trace.iter().filter(|o| o.critical).collect();
    assert_eq!(critical.len(), m.ops);
    assert_eq!(critical.iter().map(|o| o.rtt_weight).sum::<f64>(), m.rtt_units);
    assert_eq!(m.traced_items, 500);
    assert!(m.trace_items * 2 > m.traced_items, "most items share the reported trace");
    insta::assert_json_snapshot!("cpu_chain_item_trace", m.trace);
    rig.stop();
}

#[test]
fn the_trace_follows_the_chain_crypto_only_is_8_ops() {
    let (m, src, _, rig) = run_native(&opts(300, Shape::Crypto), &dir("chain-crypto")).unwrap();
    assert_eq!((src.matched, src.mismatched, src.lost), (300, 0, 0), "{src:?}");
    assert_eq!((m.ops, m.rtt_units), (8, 6.0));
    assert!(!m.trace.iter().any(|o| o.dir.contains("ml")), "no ML device in this chain");
    rig.stop();
}
