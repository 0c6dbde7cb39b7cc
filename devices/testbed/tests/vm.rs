//! VM tests: boot a real guest (KVM when it works here, TCG otherwise — never skipped) and
//! check the scenario's JSON report. Guests run one at a time (the testbed holds a
//! machine-wide lock), so these can share a test binary with other tests.

use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> Value {
    report(Command::new(env!("CARGO_BIN_EXE_testbed")).args(args))
}

/// Runs `cmd` (the testbed binary, perhaps behind `ip netns exec`); its passing report.
fn report(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run the testbed binary");
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
        "device:doorbells_reported",
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
    assert!(d["packets_per_notification"].as_f64().is_some_and(|p| p > 2.0), "{d}");
    // The driver's doorbells are in the PCIe accounting (reported by the guest).
    assert_eq!(assertion(&v, "datapath:doorbells_reported")["pass"], true);
    let per_packet = d["doorbell_writes"].as_f64().unwrap() / 100_000.0;
    assert!(
        per_packet > 0.0 && (d["pcie"]["tlps"]["doorbell"].as_f64().unwrap() - per_packet).abs() < 1e-9,
        "{d}"
    );
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
    assert!(d["doorbell_writes"].as_u64() > Some(0), "the driver's tail writes are counted: {d}");
    assert!(d["packets_per_notification"].is_null(), "descriptors are per packet: {d}");
}

/// Recomputes ops and RTT units from a mode's `trace[]` under the seed's convention (a read
/// costs a round trip, a write half of one), from each operation's kind rather than the
/// weight the report gave it (the report must agree).
fn recompute(mode: &Value) -> (u64, f64) {
    let trace = mode["trace"].as_array().expect("trace[]");
    let critical: Vec<&Value> = trace.iter().filter(|o| o["critical"] == true).collect();
    let rtt = |o: &Value| match o["kind"].as_str() {
        Some("dma_rd") => 1.0,
        Some("dma_wr" | "mmio_wr") => 0.5,
        k => panic!("a critical operation of kind {k:?}"),
    };
    (critical.len() as u64, critical.iter().map(|o| rtt(o)).sum())
}

#[test]
fn chain_in_guests_cpu_is_table_2_and_nagare_is_table_3() {
    let v = run(&["run", "chain", "--mode", "both", "--items", "60", "--json"]);
    let cpu = &v["modes"]["cpu"];
    let ng = &v["modes"]["nagare"];
    assert_eq!(
        (v["convention"]["read_rtt"].as_f64(), v["convention"]["write_rtt"].as_f64()),
        (Some(1.0), Some(0.5))
    );
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

/// What every default peer-echo run shows, whatever the peer's link: the peer's own tools
/// saw every reply, and the host's tap paired every request with a correct reply.
fn every_peer_reply(v: &Value) {
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
    ] {
        assert_eq!(assertion(v, name)["pass"], true, "{name}");
    }
    // ...and the host's tap saw each of them on the wire: 10 pings per size by default.
    assert_eq!(v["traffic"]["icmp"]["requests"], 20);
    assert_eq!(v["traffic"]["icmp"]["replies_ok"], 20);
    // Every datagram echoed (wire:udp checked that they carried all 40 lines, in order).
    assert!(v["traffic"]["udp"]["requests"].as_u64() > Some(0));
    assert_eq!(v["traffic"]["udp"]["replies_ok"], v["traffic"]["udp"]["requests"]);
    assert_eq!(v["guest"]["peer"]["transport"], "virtio-net");
    assert_eq!(v["guest"]["enso"]["transport"], "vfio");
}

#[test]
fn peer_echo_stock_linux_tools_get_every_reply() {
    let v = run(&["run", "peer-echo", "--json"]);
    every_peer_reply(&v);
    assert_eq!(assertion(&v, "backend:no_faults")["pass"], true);
    assert_eq!(v["traffic"]["link"], "vhost-user");
}

/// With `--link udp`: the NIC's UDP port carried exactly the frames the tap saw, between
/// `local` and `remote`, and refused or misread none; no vhost-user backend was involved.
fn udp_port_carried_every_frame(v: &Value, local: Option<&str>, remote: &str) {
    assert_eq!(v["traffic"]["link"], "udp");
    for name in ["udp:no_faults", "udp:every_frame_crossed"] {
        assert_eq!(assertion(v, name)["pass"], true, "{name}");
    }
    let names: Vec<&str> =
        v["assertions"].as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("backend:")),
        "no vhost-user backend on a UDP link: {names:?}"
    );
    assert!(v["servers"]["vhost_net"].is_null());
    let udp = &v["servers"]["udp"];
    let c = &udp["counters"];
    for k in ["rx_runts", "rx_oversize", "tx_no_peer", "tx_errors"] {
        assert_eq!(c[k], 0, "{k}: {udp}");
    }
    let t = &v["traffic"];
    assert_eq!(c["rx_frames"], t["frames_peer_to_enso"], "{udp} {t}");
    assert_eq!(c["tx_frames"], t["frames_enso_to_peer"], "{udp} {t}");
    // At least every request the tap paired (ARP, 20 pings, 10 of them 1400 bytes, the
    // datagrams) went to the NIC, and every correct reply came back.
    let sum = |k: &str| ["arp", "icmp", "udp"].iter().map(|p| t[p][k].as_u64().unwrap()).sum::<u64>();
    assert!(c["rx_frames"].as_u64() >= Some(sum("requests")), "{udp} {t}");
    assert!(c["tx_frames"].as_u64() >= Some(sum("replies_ok")), "{udp} {t}");
    assert!(c["rx_bytes"].as_u64() > Some(10 * 1400) && c["tx_bytes"].as_u64() > Some(10 * 1400), "{udp}");
    assert_eq!(udp["remote"], remote);
    assert_eq!(c["peer"], remote, "the NIC's port sent to the peer's QEMU");
    if let Some(local) = local {
        assert_eq!(udp["local"], local);
    }
}

#[test]
fn peer_echo_over_udp_on_loopback() {
    let v = run(&["run", "peer-echo", "--link", "udp", "--json"]);
    every_peer_reply(&v);
    let remote = v["servers"]["udp"]["remote"].as_str().expect("the peer QEMU's address").to_string();
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    assert!(v["servers"]["udp"]["local"].as_str().is_some_and(|l| l.starts_with("127.0.0.1:")));
    udp_port_carried_every_frame(&v, None, &remote);
    assert!(v["servers"]["udp"]["peer_netns"].is_null());
}

/// Two network namespaces standing for two hosts, a veth pair between them (10.77.0.1/30
/// and 10.77.0.2/30: addresses only these namespaces have); deleted when dropped, even
/// when the test fails.
struct TwoHosts {
    /// The peer's namespace, and the testbed's.
    a: String,
    b: String,
    veth: [String; 2],
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip (iproute2: apt-get install iproute2)")
}

impl TwoHosts {
    const A_IP: &'static str = "10.77.0.1";
    const B_IP: &'static str = "10.77.0.2";

    fn create() -> TwoHosts {
        let id = std::process::id();
        let hosts = TwoHosts {
            a: format!("tbA{id}"),
            b: format!("tbB{id}"),
            veth: [format!("tbva{id}"), format!("tbvb{id}")],
        };
        let (a, b) = (hosts.a.as_str(), hosts.b.as_str());
        let [va, vb] = [hosts.veth[0].as_str(), hosts.veth[1].as_str()];
        let a_cidr = format!("{}/30", Self::A_IP);
        let b_cidr = format!("{}/30", Self::B_IP);
        for cmd in [
            &["netns", "add", a][..],
            &["netns", "add", b],
            &["link", "add", va, "type", "veth", "peer", "name", vb],
            &["link", "set", va, "netns", a],
            &["link", "set", vb, "netns", b],
            &["-n", a, "addr", "add", &a_cidr, "dev", va],
            &["-n", b, "addr", "add", &b_cidr, "dev", vb],
            &["-n", a, "link", "set", va, "up"],
            &["-n", b, "link", "set", vb, "up"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
        ] {
            let out = ip(cmd);
            assert!(
                out.status.success(),
                "ip {}: {} (this test creates network namespaces: run it as root)",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        hosts
    }

    /// A veth end's (rx, tx) packet counts.
    fn packets(&self, ns: &str, dev: &str) -> (u64, u64) {
        let out = ip(&["-j", "-s", "-n", ns, "link", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link show");
        let s = &v[0]["stats64"];
        (s["rx"]["packets"].as_u64().unwrap(), s["tx"]["packets"].as_u64().unwrap())
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it (and so the pair); the link
        // delete covers a pair that never left this namespace.
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.veth[0]]);
    }
}

#[test]
fn peer_echo_over_udp_between_two_network_namespaces() {
    let hosts = TwoHosts::create();
    let (local, remote) = (format!("{}:7702", TwoHosts::B_IP), format!("{}:7701", TwoHosts::A_IP));
    // The testbed (the NIC, its UDP port, the NIC's guest) in namespace B; the peer's QEMU
    // in namespace A, which it enters by `ip netns exec`.
    let v = report(
        Command::new("ip").args(["netns", "exec", &hosts.b]).arg(env!("CARGO_BIN_EXE_testbed")).args([
            "run",
            "peer-echo",
            "--link",
            "udp",
            "--peer-netns",
            &hosts.a,
            "--udp-local",
            &local,
            "--udp-remote",
            &remote,
            "--json",
        ]),
    );
    every_peer_reply(&v);
    udp_port_carried_every_frame(&v, Some(&local), &remote);
    assert_eq!(v["servers"]["udp"]["peer_netns"], hosts.a.as_str());
    let placed = assertion(&v, "peer:qemu_in_netns");
    assert_eq!(placed["pass"], true, "{placed}");
    assert!(
        placed["detail"].as_str().is_some_and(|d| d.contains("is QEMU") && d.contains(&hosts.a)),
        "{placed}"
    );
    // The frames crossed the veth pair, not a loopback: the peer's end sent at least every
    // frame the NIC's port received, and received at least every frame it sent.
    let c = &v["servers"]["udp"]["counters"];
    let (a_rx, a_tx) = hosts.packets(&hosts.a, &hosts.veth[0]);
    assert!(
        a_tx >= c["rx_frames"].as_u64().unwrap() && a_rx >= c["tx_frames"].as_u64().unwrap(),
        "veth {a_rx}/{a_tx}: {c}"
    );
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

// ----- card semantics (issue 16): register modes, card mode, card-style software, RTL ------

/// The Ensō NIC's counters of a report (`devices.enso`).
fn enso_counter(v: &Value, name: &str) -> u64 {
    v["devices"]["enso"][name].as_u64().unwrap_or_else(|| panic!("devices.enso.{name} missing: {v}"))
}

#[test]
fn echo_in_card_mode_with_trapped_registers() {
    let v =
        run(&["run", "echo", "--registers", "mmio", "--extensions", "none", "--packets", "5000", "--json"]);
    assert_eq!(v["traffic"]["matched"], 5000);
    assert_eq!(
        (v["traffic"]["registers"].as_str(), v["traffic"]["extensions"].as_str()),
        (Some("mmio"), Some("none"))
    );
    assert_eq!(enso_counter(&v, "extension_accesses"), 0, "card mode never touches BAR0");
    assert_eq!(assertion(&v, "datapath:doorbells_counted_once")["pass"], true);
    let d = &v["datapath"];
    // Every doorbell trapped; none added twice from the driver's report.
    assert!(d["trapped_writes_per_packet"].as_f64().is_some_and(|w| w > 0.0), "{d}");
    assert!(d["device_doorbells"].as_u64().is_some_and(|n| n > 0), "{d}");
    assert_eq!(d["pcie"]["tlps"]["doorbell"].as_f64(), Some(0.0), "{d}");
}

#[test]
fn chain_and_gen_echo_in_card_mode_with_trapped_registers() {
    let v = run(&[
        "run",
        "chain",
        "--mode",
        "cpu",
        "--registers",
        "mmio",
        "--extensions",
        "none",
        "--items",
        "50",
        "--json",
    ]);
    assert_eq!(v["traffic"]["cpu"]["matched"], 50);
    assert_eq!(v["devices"]["cpu"]["nic"]["extension_accesses"], 0);
    let v = run(&[
        "run",
        "gen-echo",
        "--registers",
        "mmio",
        "--extensions",
        "none",
        "--packets",
        "1000",
        "--json",
    ]);
    assert_eq!(assertion(&v, "gen:zero_loss")["pass"], true);
    for nic in ["gen_nic", "echo_nic"] {
        assert_eq!(v["devices"][nic]["extension_accesses"], 0, "{nic}");
        assert!(
            v["devices"][nic]["queue_doorbells"].as_u64() > Some(0),
            "{nic}: the device saw the doorbells"
        );
    }
}

#[test]
fn card_style_software_echoes_in_both_register_modes() {
    for registers in ["shared", "mmio"] {
        let v = run(&["run", "card-echo", "--registers", registers, "--packets", "3000", "--json"]);
        let t = &v["traffic"];
        assert_eq!((t["sent"].as_u64(), t["matched"].as_u64()), (Some(3000), Some(3000)), "{registers}: {t}");
        assert_eq!(t["touch_offset"], 63);
        assert_eq!(v["pipes_used"], serde_json::json!([8191, 8190]), "{registers}");
        assert_eq!(enso_counter(&v, "extension_accesses"), 0, "{registers}");
        for c in ["bad_config", "rx_drop_no_flow", "bad_register_writes"] {
            assert_eq!(enso_counter(&v, c), 0, "{registers}: {c}");
        }
        assert_eq!(v["guest"]["transport"], "sysfs");
        // Upstream's prefetch (a rewrite of the unchanged head) reaches the device only
        // when registers trap.
        let prefetches = enso_counter(&v, "prefetches");
        assert_eq!(prefetches > 0, registers == "mmio", "{registers}: {prefetches} prefetches seen");
    }
}

#[test]
fn the_rtl_register_front_end_serves_our_driver_and_card_software() {
    let v = run(&["run", "echo", "--model", "rtl", "--registers", "mmio", "--packets", "3000", "--json"]);
    assert_eq!(v["traffic"]["matched"], 3000);
    assert!(enso_counter(&v, "rtl_register_accesses") > 0);
    assert_eq!(assertion(&v, "rtl:register_front_end")["pass"], true);
    let v =
        run(&["run", "card-echo", "--model", "rtl", "--registers", "mmio", "--packets", "2000", "--json"]);
    assert_eq!(v["traffic"]["matched"], 2000);
    assert_eq!(v["pipes_used"], serde_json::json!([8191, 8190]), "pipe IDs mapped onto the RTL's slots");
    assert!(enso_counter(&v, "rtl_register_accesses") > 0);
    assert_eq!(enso_counter(&v, "extension_accesses"), 0);
}
