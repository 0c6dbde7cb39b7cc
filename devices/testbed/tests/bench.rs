//! The benchmark command runs both NICs, reports the fields others read, and plots.
//! (Small and in a debug build: this checks the machinery, not the figures.)

use serde_json::Value;
use std::process::Command;

#[test]
fn bench_echo_reports_both_nics_ratios_and_a_plot() {
    let plot = std::env::temp_dir().join(format!("bench-test-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "bench",
            "echo",
            "--sizes",
            "64,1500",
            "--packets",
            "20000",
            "--runs",
            "1",
            "--json",
            "--plot",
        ])
        .arg(&plot)
        .output()
        .expect("run the testbed binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 4, "two NICs × two sizes");
    for r in results {
        for field in ["nic", "size", "mpps", "driver_ns_per_pkt", "ring_ceiling_mpps", "modeled_pcie_mpps"] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
        for class in ["payload", "interface_metadata", "protocol_overhead"] {
            assert!(r["bytes"][class].as_f64().is_some_and(|b| b >= 0.0), "bytes.{class} in {r}");
        }
        assert_eq!(r["all_matched"], true, "{r}");
    }
    let at = |nic: &str, size: u64| results.iter().find(|r| r["nic"] == nic && r["size"] == size).unwrap();
    // The structural claim: per-packet descriptors cost far more metadata than Ensō's
    // notifications (these are byte counts, not timings, so they hold on any machine).
    assert!(at("enso", 64)["metadata_fraction"].as_f64().unwrap() < 0.05);
    assert!(at("packetized", 64)["metadata_fraction"].as_f64().unwrap() > 0.2);
    let ratios = v["ratios"].as_array().expect("ratios[]");
    assert_eq!(ratios.len(), 2);
    for x in ratios {
        for field in ["size", "throughput_ratio", "driver_cost_ratio", "modeled_ratio"] {
            assert!(x[field].as_f64().is_some_and(|f| f > 0.0), "{field} in {x}");
        }
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "an SVG document");
    assert!(svg.contains("packetized") && svg.contains("enso"));
    let _ = std::fs::remove_file(&plot);
}

#[test]
fn bench_echo_notification_modes_trade_notifications_for_latency() {
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "bench",
            "echo",
            "--nic",
            "enso",
            "--notify",
            "reactive,per-packet,prefetch",
            "--sizes",
            "64",
            "--packets",
            "20000",
            "--runs",
            "1",
            "--json",
        ])
        .output()
        .expect("run the testbed binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 3, "one row per mode: {v}");
    let at = |notify: &str| {
        results
            .iter()
            .find(|r| r["nic"] == "enso" && r["notify"] == notify)
            .unwrap_or_else(|| panic!("{notify} row"))
    };
    let f =
        |notify: &str, field: &str| at(notify)[field].as_f64().unwrap_or_else(|| panic!("{notify}.{field}"));
    for m in ["reactive", "per-packet", "prefetch"] {
        assert_eq!(at(m)["all_matched"], true, "{}", at(m));
        assert!(f(m, "modeled_latency_ns") > 0.0);
    }
    // Measured: per-packet mode writes more notifications than reactive mode.
    assert!(
        f("per-packet", "notifications_per_pkt") > f("reactive", "notifications_per_pkt"),
        "per-packet {} vs reactive {}",
        f("per-packet", "notifications_per_pkt"),
        f("reactive", "notifications_per_pkt")
    );
    // Modeled: the prefetch doorbell saves reactive mode's wait for the head write.
    assert!(f("prefetch", "modeled_latency_ns") < f("reactive", "modeled_latency_ns"));
    assert_eq!(f("per-packet", "modeled_notifications_per_pkt"), 1.0);
}

#[test]
fn bench_echo_in_guests_compares_both_nics() {
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "bench",
            "echo",
            "--transport",
            "vm",
            "--sizes",
            "64",
            "--packets",
            "20000",
            "--runs",
            "1",
            "--json",
        ])
        .output()
        .expect("run the testbed binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["transport"], "vm");
        assert_eq!(r["all_matched"], true, "{r}");
        assert!(r["driver_ns_per_pkt"].as_f64().is_some_and(|n| n > 0.0), "measured in the guest: {r}");
    }
    assert!(v["ratios"][0]["throughput_ratio"].as_f64().is_some_and(|x| x > 0.0));
}
