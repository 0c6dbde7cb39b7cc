//! The benchmark command runs both NICs, reports the fields others read, and plots.
//! (Small and in a debug build: this checks the machinery, not the figures.)

use serde_json::Value;
use std::process::Command;

#[test]
fn bench_echo_reports_both_nics_ratios_and_a_plot() {
    let plot = std::env::temp_dir().join(format!("bench-test-{}.svg", std::process::id()));
    let v = bench_json(&[
        "--sizes",
        "64,1500",
        "--packets",
        "20000",
        "--runs",
        "1",
        "--plot",
        &plot.to_string_lossy(),
    ]);
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 4, "two NICs × two sizes");
    for r in results {
        for field in ["nic", "size", "mpps", "driver_ns_per_pkt", "ring_ceiling_mpps", "modeled_pcie_mpps"] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
        // Per packet: the frame crosses the link twice (RX write, TX read), padded at
        // most to whole 64-byte flits; metadata (notifications or descriptors, and the
        // driver's doorbells) and TLP overhead are never free.
        let size = r["size"].as_f64().unwrap();
        let payload = r["bytes"]["payload"].as_f64().unwrap();
        assert!(payload >= 2.0 * size && payload <= 2.0 * (size / 64.0).ceil() * 64.0, "payload in {r}");
        assert!(r["bytes"]["interface_metadata"].as_f64().is_some_and(|b| b > 0.0), "metadata in {r}");
        assert!(r["bytes"]["protocol_overhead"].as_f64().is_some_and(|b| b > 0.0), "overhead in {r}");
        // Ensō rows say how many packets each notification covered (what their metadata
        // share depends on); descriptors are per packet.
        match r["nic"].as_str().unwrap() {
            "enso" => assert!(r["packets_per_notification"].as_f64().is_some_and(|p| p >= 1.0), "{r}"),
            _ => assert!(r["packets_per_notification"].is_null(), "{r}"),
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
    let v = bench_json(&[
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
    ]);
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
    let v = bench_json(&["--transport", "vm", "--sizes", "64", "--packets", "20000", "--runs", "1"]);
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["transport"], "vm");
        assert_eq!(r["all_matched"], true, "{r}");
        assert!(r["driver_ns_per_pkt"].as_f64().is_some_and(|n| n > 0.0), "measured in the guest: {r}");
    }
    assert!(v["ratios"][0]["throughput_ratio"].as_f64().is_some_and(|x| x > 0.0));
}

/// Every figure's spread holds its median, and the plain field is that median.
fn assert_spread(v: &Value, what: &str) {
    let (med, min, max) = (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64());
    let (Some(med), Some(min), Some(max)) = (med, min, max) else {
        panic!("{what}: no median/min/max in {v}")
    };
    assert!(min <= med && med <= max, "{what}: median {med} outside [{min}, {max}]");
}

#[test]
fn spread_is_the_median_and_the_range() {
    use testbed::bench::Spread;
    let s = Spread::of(&[5.0, 1.0, 3.0]);
    assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
    let s = Spread::of(&[4.0, 1.0, 3.0, 10.0, f64::NAN]);
    assert_eq!((s.median, s.min, s.max), (3.5, 1.0, 10.0), "even count: the mean of the middle two");
    assert_eq!(Spread::of(&[]), Spread::default());
    // Per-round ratios skip rounds where either side is missing or the divisor is zero.
    let r = Spread::of_ratios(
        &[Some(2.0), Some(9.0), None, Some(4.0)],
        &[Some(1.0), Some(3.0), Some(1.0), Some(0.0)],
    );
    assert_eq!((r.median, r.min, r.max), (2.5, 2.0, 3.0));
}

#[test]
fn bench_echo_rejects_bad_options_with_an_error() {
    let o = testbed::bench::BenchOptions {
        sizes: vec![64],
        packets: 100,
        runs: 1,
        pipes: 1,
        flows: 0,
        nics: vec![testbed::scenarios::run::NicKind::Enso],
        notify: vec![],
        model: testbed::bench::ModelOptions::default(),
        served_pipes: vec![8192],
    };
    let e = testbed::bench::echo(&o, None).expect_err("zero flows is refused, not a panic");
    assert!(format!("{e:#}").contains("flows"), "{e:#}");
    let o = testbed::bench::BenchOptions { flows: 1, served_pipes: vec![8193], ..o };
    let e = testbed::bench::echo(&o, None).expect_err("beyond the card's space");
    assert!(format!("{e:#}").contains("served-pipes"), "{e:#}");
}

/// Runs `bench echo` on both NICs at 64 B and returns its JSON report.
fn echo_json(packets: &str, runs: &str) -> Value {
    bench_json(&["--sizes", "64", "--packets", packets, "--runs", runs])
}

/// Runs `bench echo ARGS --json`, which must succeed, and returns its JSON report.
fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["bench", "echo"])
        .args(args)
        .arg("--json")
        .output()
        .expect("run the testbed binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn bench_echo_reports_spreads_alternation_and_instructions() {
    let v = echo_json("5000", "3");
    assert_eq!(v["runs"], 3, "{v}");
    assert_eq!(v["failures"].as_array().map(|f| f.len()), Some(0), "{v}");
    assert!(v["instructions_note"].is_null(), "instructions counted (valgrind installed?): {v}");
    let results = v["results"].as_array().expect("results[]");
    assert_eq!(results.len(), 2);
    for r in results {
        let runs = r["runs"].as_array().expect("runs[]");
        assert_eq!(runs.len(), 3, "one run per round: {r}");
        // Two rows per round; the order reverses every other round.
        let first = if r["nic"] == "enso" { 0 } else { 1 };
        for (i, run) in runs.iter().enumerate() {
            assert_eq!(run["round"], i, "{r}");
            assert_eq!(run["position"], if i % 2 == 0 { first } else { 1 - first }, "round {i} of {r}");
            assert!(run["error"].is_null(), "{run}");
        }
        for f in [
            "mpps",
            "gbps",
            "driver_ns_per_pkt",
            "driver_cpu_ns_per_pkt",
            "ring_ceiling_mpps",
            "pct_of_ceiling",
        ] {
            assert_spread(&r["spread"][f], f);
        }
        assert_eq!(r["mpps"], r["spread"]["mpps"]["median"], "mpps is the median: {r}");
        assert_eq!(r["ring_ceiling_mpps"], r["spread"]["ring_ceiling_mpps"]["median"]);
        let min = runs.iter().map(|x| x["mpps"].as_f64().unwrap()).fold(f64::MAX, f64::min);
        assert_eq!(r["spread"]["mpps"]["min"].as_f64(), Some(min), "min over the runs: {r}");
        let n = &r["instructions"];
        assert_eq!(n["tool"], "callgrind", "{r}");
        assert_eq!(n["packets"], 5000);
        let (driver, device) = (n["driver_per_pkt"].as_f64().unwrap(), n["device_per_pkt"].as_f64().unwrap());
        assert!(driver > 5.0 && device > driver, "driver {driver}, device {device} instructions/pkt");
    }
    let ratio = &v["ratios"][0];
    assert_spread(&ratio["spread"]["throughput_ratio"], "throughput_ratio");
    assert_spread(&ratio["spread"]["driver_cost_ratio"], "driver_cost_ratio");
    // Per-packet descriptors, buffers and bursts cost the packetized driver more
    // instructions than the Ensō driver's streaming (about 4× in a release build).
    let ir = ratio["driver_instructions_ratio"].as_f64().expect("driver_instructions_ratio");
    assert!(ir > 1.5, "driver instructions ratio {ir}");
    let table = {
        let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args(["bench", "echo", "--nic", "enso", "--sizes", "64", "--packets", "2000", "--runs", "2"])
            .env("TESTBED_BENCH_INSTRUCTIONS", "0")
            .output()
            .expect("run the testbed binary");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(table.contains("median [min–max] over 2 runs") && table.contains('['), "{table}");
    assert!(table.contains("Instructions not counted: TESTBED_BENCH_INSTRUCTIONS=0"), "{table}");
}

#[test]
fn bench_echo_instruction_counts_repeat_across_invocations() {
    let a = echo_json("5000", "1");
    let b = echo_json("5000", "1");
    for nic in ["enso", "packetized"] {
        let get = |v: &Value| {
            let r = v["results"].as_array().unwrap().iter().find(|r| r["nic"] == nic).unwrap();
            r["instructions"]["driver_per_pkt"].as_f64().unwrap_or_else(|| panic!("{nic}: {r}"))
        };
        let (x, y) = (get(&a), get(&b));
        assert!((x - y).abs() <= 0.01 * x.max(y), "{nic}: {x} vs {y} driver instructions/pkt");
    }
}
