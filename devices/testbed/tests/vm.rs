//! VM tests: boot a real guest (KVM when it works here, TCG otherwise — never skipped) and
//! check the scenario's JSON report. Guests run one at a time (the testbed holds a
//! machine-wide lock), so these can share a test binary with other tests.

use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> Value {
    let out =
        Command::new(env!("CARGO_BIN_EXE_testbed")).args(args).output().expect("run the testbed binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout: {stdout}\nstderr: {stderr}"));
    assert_eq!(out.status.success(), v["pass"] == true, "exit status must match pass: {v}");
    assert!(
        v["pass"] == true,
        "scenario failed:\n{}\nstderr:\n{stderr}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    v
}

fn assertion<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["assertions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("assertion {name} missing from {v}"))
}

#[test]
fn smoke_in_a_guest_checks_both_sides() {
    let v = run(&["run", "smoke", "--json"]);
    assert_eq!(v["scenario"], "smoke");
    assert!(v["accel"] == "kvm" || v["accel"] == "tcg");
    assert!(v["boot_s"].as_f64().is_some_and(|b| b > 0.0));
    for name in [
        "guest:id",
        "guest:scratch",
        "guest:doorbell_mapped",
        "guest:dma_to_memory",
        "guest:dma_from_memory",
        "guest:msix",
        "guest:dma_refused",
        "device:scratch",
        "device:checksum",
        "device:msix",
        "device:dma_error_counted",
    ] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
    assert_eq!(v["guest"]["transport"], "vfio", "the guest driver went through VFIO");
    assert!(v["devices"]["smoke"]["irqs"].as_u64() >= Some(1));
}

#[test]
fn server_survives_a_guest_killed_mid_run() {
    let v = run(&["run", "smoke", "--kill-first-guest", "--json"]);
    assert_eq!(v["restarts"], 1);
    assert_eq!(assertion(&v, "killed_guest_was_mid_run")["pass"], true);
    assert_eq!(v["servers"]["smoke"]["connections"], 2);
    assert_eq!(v["servers"]["smoke"]["dropped_connections"], 0);
}

#[test]
fn echo_in_a_guest_answers_every_packet() {
    let v = run(&["run", "echo", "--packets", "100000", "--json"]);
    let t = &v["traffic"];
    assert_eq!(t["sent"], 100_000);
    assert_eq!(t["matched"], t["sent"]);
    for (reason, n) in t["dropped"].as_object().expect("drops by reason") {
        assert_eq!(n, 0, "dropped: {reason}");
    }
    let d = &v["datapath"];
    assert_eq!(d["packets"], 100_000);
    assert!(d["trapped_mmio"].as_u64().unwrap() <= 100, "≤ 1 trapped MMIO per 1000 packets: {d}");
    // Reactive notifications: far fewer notifications than packets.
    assert!(d["notifications_per_packet"].as_f64().unwrap() < 0.5, "{d}");
    assert_eq!(v["guest"]["transport"], "vfio");
}

#[test]
fn a_garbage_guest_is_counted_and_the_next_guest_echoes_clean() {
    let v = run(&["run", "echo", "--garbage-first", "--packets", "20000", "--json"]);
    assert_eq!(assertion(&v, "garbage:guest_ran")["pass"], true);
    assert_eq!(assertion(&v, "garbage:errors_counted")["pass"], true);
    let counted = v["devices"]["enso_after_garbage"].as_object().expect("error counters after the garbage");
    assert!(counted["tx_bad_notification"].as_u64() > Some(0), "{counted:?}");
    assert_eq!(v["traffic"]["matched"], 20_000);
    assert_eq!(v["restarts"], 1);
}

#[test]
fn echo_on_the_packetized_nic_in_a_guest() {
    let v = run(&["run", "echo", "--nic", "packetized", "--packets", "20000", "--json"]);
    assert_eq!(v["traffic"]["matched"], 20_000);
    for (reason, n) in v["traffic"]["dropped"].as_object().expect("drops by reason") {
        assert_eq!(n, 0, "dropped: {reason}");
    }
    let d = &v["datapath"];
    assert_eq!(d["trapped_mmio"], 0, "doorbells go to shared pages: {d}");
    // Per-packet descriptors: interface metadata is a large share of the DMA bytes.
    assert!(d["pcie"]["metadata_fraction"].as_f64().unwrap() > 0.2, "{d}");
    assert!(v["devices"]["packetized"]["descriptor_writebacks"].as_u64() > Some(0));
}

/// Recomputes ops and RTT units from a mode's `trace[]` (the report must agree).
fn recompute(mode: &Value) -> (u64, f64) {
    let trace = mode["trace"].as_array().expect("trace[]");
    let critical: Vec<&Value> = trace.iter().filter(|o| o["critical"] == true).collect();
    (critical.len() as u64, critical.iter().map(|o| o["rtt_weight"].as_f64().unwrap()).sum())
}

#[test]
fn chain_in_guests_cpu_is_table_2_and_nagare_is_table_3() {
    let v = run(&["run", "chain", "--mode", "both", "--items", "60", "--json"]);
    let cpu = &v["modes"]["cpu"];
    let ng = &v["modes"]["nagare"];
    for m in [cpu, ng] {
        assert_eq!((m["items"].as_u64(), m["matched"].as_u64()), (Some(60), Some(60)), "{m}");
    }
    assert_eq!((cpu["ops"].as_u64(), cpu["rtt_units"].as_f64()), (Some(12), Some(9.0)));
    assert_eq!(recompute(cpu), (12, 9.0), "ops and RTT units follow from trace[]");
    assert_eq!((ng["ops"].as_u64(), ng["rtt_units"].as_f64()), (Some(3), Some(1.5)));
    assert_eq!(recompute(ng), (3, 1.5));
    assert!(cpu["modeled_ns"].as_f64() > ng["modeled_ns"].as_f64());
    assert!(cpu["cpu_ns_per_item"].as_f64().is_some_and(|n| n > 0.0), "the guest measured its CPU time");
    assert_eq!(v["guest"]["cpu"]["transport"], "vfio", "the chain ran through VFIO in the guest");
    assert_eq!(v["guest"]["nagare"]["transport"], "vfio");
    assert_eq!(v["devices"]["cpu"]["crypto"]["commands"], 60);
    assert_eq!(v["devices"]["nagare"]["crypto"]["stream_records"], 60);
    assert_eq!(
        v["devices"]["nagare"]["nagare"]["routed"], 180,
        "three pushes per item went through the switch"
    );
}

#[test]
fn every_app_on_both_nics_in_a_guest() {
    for name in ["maglev", "nitrosketch", "mica", "logmon"] {
        for nic in ["enso", "packetized"] {
            let v = run(&["run", "app", "--name", name, "--nic", nic, "--frames", "4000", "--json"]);
            assert_eq!(v["guest"]["transport"], "vfio", "{name} on {nic} ran in the guest");
            assert_eq!(assertion(&v, &format!("{name}:all_matched"))["pass"], true);
            assert_eq!(v["traffic"]["matched"], 4000, "{name} on {nic}");
        }
    }
}

#[test]
fn chain_glue_in_a_guest_drives_legacy_accelerators() {
    let v = run(&["run", "chain", "--mode", "glue", "--items", "40", "--json"]);
    let m = &v["modes"]["glue"];
    assert_eq!((m["items"].as_u64(), m["matched"].as_u64()), (Some(40), Some(40)), "{m}");
    assert_eq!((m["ops"].as_u64(), m["rtt_units"].as_f64()), (Some(9), Some(6.5)));
    assert_eq!(recompute(m), (9, 6.5));
    assert_eq!(v["devices"]["glue"]["crypto"]["commands"], 40, "the crypto device ran its legacy ring");
    assert_eq!(v["devices"]["glue"]["nagare"]["glue_commands"], 80);
}

#[test]
fn peer_echo_stock_linux_tools_get_every_reply() {
    let v = run(&["run", "peer-echo", "--json"]);
    // The peer's own tools saw the replies...
    for name in [
        "peer:guest:link",
        "peer:guest:arping",
        "peer:guest:ping_56",
        "peer:guest:ping_1400",
        "peer:guest:udp_echo",
        "enso:guest:peer_done",
        "wire:arp",
        "wire:icmp",
        "wire:udp",
        "wire:nothing_else",
        "enso:counts_match_wire",
        "enso:no_drops",
        "backend:no_faults",
    ] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
    // ...and the host's tap saw each of them on the wire: 10 pings per size by default.
    assert_eq!(v["traffic"]["icmp"]["requests"], 20);
    assert_eq!(v["traffic"]["icmp"]["replies_ok"], 20);
    assert!(v["traffic"]["udp"]["replies_ok"].as_u64() >= Some(1));
    assert_eq!(v["guest"]["peer"]["transport"], "virtio-net");
    assert_eq!(v["guest"]["enso"]["transport"], "vfio");
}

#[test]
fn peer_capture_is_parsed_by_tshark() {
    let v = run(&["run", "peer-capture", "--json"]);
    for name in ["capture:frames_match_wire", "tshark:parsed", "tshark:protocols", "enso:guest:peer_done"] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
    assert!(v["traffic"]["arp"].as_u64() >= Some(3));
    assert_eq!(v["traffic"]["icmp"], 20);
}

#[test]
fn gen_echo_between_two_guests_loses_nothing() {
    let v = run(&["run", "gen-echo", "--json"]);
    for name in ["gen:zero_loss", "gen:intact", "gen:rtt_histogram", "nics:no_drops", "echo:guest_result"] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
    assert_eq!(v["traffic"]["sent"], 2000);
    assert_eq!(v["traffic"]["lost"], 0);
    assert!(v["traffic"]["rtt_ns"]["p99"].as_u64() >= v["traffic"]["rtt_ns"]["p50"].as_u64());
}

#[test]
fn peer_echo_on_the_packetized_nic() {
    let v = run(&["run", "peer-echo", "--nic", "packetized", "--json"]);
    for name in ["peer:guest:ping_1400", "peer:guest:udp_echo", "wire:icmp", "packetized:counts_match_wire"] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
    assert_eq!(v["guest"]["packetized"]["values"]["nic"], "packetized");
}

#[test]
fn echo_on_the_rtl_queue_engine_matches_every_packet() {
    let v = run(&["run", "echo", "--model", "rtl", "--packets", "2000", "--json"]);
    assert_eq!(v["traffic"]["matched"], 2000);
    assert_eq!(v["traffic"]["model"], "rtl");
    assert_eq!(assertion(&v, "rtl:clocked")["pass"], true);
    assert_eq!(assertion(&v, "traffic:no_drops")["pass"], true);
}

#[test]
fn chain_on_the_rtl_queue_engine_in_a_guest() {
    let v = run(&["run", "chain", "--mode", "both", "--model", "rtl", "--items", "20", "--json"]);
    for name in [
        "cpu:all_matched",
        "cpu:rtl_clocked",
        "nagare:all_matched",
        "nagare:rtl_clocked",
        "nagare:rtl_pipeline",
    ] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
}

#[test]
fn a_peer_killed_mid_run_does_not_take_the_wire_down() {
    let v = run(&["run", "peer-echo", "--kill-first-peer", "--json"]);
    assert_eq!(v["restarts"], 1);
    for name in [
        "backend:peer_killed_mid_run",
        "backend:served",
        "peer:guest:ping_56",
        "peer:guest:udp_echo",
        "wire:icmp",
    ] {
        assert_eq!(assertion(&v, name)["pass"], true, "{name}");
    }
}
