//! Every option of every command is checked before anything is provisioned, built or booted:
//! a bad value (or a combination that does not apply) exits with code 2 and a clap-style
//! message naming the option and what it accepts, without a panic, and with `--json` also
//! prints exactly one JSON object saying `pass: false`.
//!
//! Each case runs the `testbed` binary with `$QEMU` a fake that records every invocation in a
//! marker file, `$TESTBED_CACHE` and `$XDG_RUNTIME_DIR` (where run folders go) empty
//! folders: after a refused command the marker does not exist and both folders are empty.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private folder with the fake QEMU, the cache and the runtime folder.
struct Sandbox {
    root: PathBuf,
    cache: PathBuf,
    runtime: PathBuf,
    marker: PathBuf,
    qemu: PathBuf,
    /// A file that is not a pcap.
    not_pcap: PathBuf,
    /// A topology whose line 4 names an unknown device.
    bad_topology: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let root = std::env::temp_dir().join(format!("testbed-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (cache, runtime) = (root.join("cache"), root.join("runtime"));
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        let marker = root.join("qemu-was-run");
        let qemu = root.join("fake-qemu");
        std::fs::write(&qemu, format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\nexit 1\n", marker.display()))
            .unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let not_pcap = root.join("not-a.pcap");
        std::fs::write(&not_pcap, b"this is text, not a capture\n").unwrap();
        let bad_topology = root.join("bad.toml");
        std::fs::write(&bad_topology, "[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"gpu\"\n").unwrap();
        Sandbox { root, cache, runtime, marker, qemu, not_pcap, bad_topology }
    }

    /// Runs `testbed args` (`{NOT_PCAP}` and `{NO_FILE}` stand for the sandbox's files),
    /// killing it after 20 s.
    fn run(&self, args: &[&str]) -> Output {
        let no_file = self.root.join("no-such.pcap");
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{NOT_PCAP}", &self.not_pcap.to_string_lossy())
                    .replace("{NO_FILE}", &no_file.to_string_lossy())
                    .replace("{NO_DIR}", &self.root.join("no-such-dir").to_string_lossy())
                    .replace("{BAD_TOPOLOGY}", &self.bad_topology.to_string_lossy())
            })
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args(&args)
            .env("QEMU", &self.qemu)
            .env("TESTBED_CACHE", &self.cache)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env("RUST_BACKTRACE", "1")
            .env_remove("TESTBED_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the testbed binary");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait for testbed").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "testbed {args:?} still running after 20 s: it was not refused\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.wait_with_output().expect("collect output")
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false)
    }

    /// Nothing was provisioned and no guest started.
    fn assert_untouched(&self, args: &[&str]) {
        assert!(!self.marker.exists(), "{args:?}: QEMU was run");
        assert!(Self::empty(&self.cache), "{args:?}: the cache is not empty");
        assert!(Self::empty(&self.runtime), "{args:?}: a run folder was made");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn no_panic(args: &[&str], out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains("panicked")
                && !text.contains("RUST_BACKTRACE")
                && !text.contains("stack backtrace"),
            "{args:?} panicked:\n{text}"
        );
    }
}

/// Command line, the option the first line of the message must name, and what the message
/// must say the option accepts (its range or values; "" for an option that does not exist
/// there or a combination).
const REFUSED: &[(&[&str], &str, &str)] = &[
    // run smoke (and the guest options every scenario shares)
    (&["run", "smoke", "--timeout", "0"], "--timeout", "1..=86400"),
    (&["run", "smoke", "--timeout", "86401"], "--timeout", "1..=86400"),
    (&["run", "smoke", "--timeout", "soon"], "--timeout", "1..=86400"),
    (&["run", "smoke", "--timeout", "-5"], "--timeout", ""),
    (&["run", "smoke", "--accel", "xen"], "--accel", "auto, kvm, tcg"),
    (&["run", "smoke", "--kill-first-peer"], "--kill-first-peer", ""),
    // run echo
    (&["run", "echo", "--size", "20"], "--size", "60..=9000"),
    (&["run", "echo", "--size", "59"], "--size", "60..=9000"),
    (&["run", "echo", "--size", "9001"], "--size", "60..=9000"),
    (&["run", "echo", "--size", "64B"], "--size", "60..=9000"),
    (&["run", "echo", "--window", "0"], "--window", "1..=1048576"),
    (&["run", "echo", "--window", "1048577"], "--window", "1..=1048576"),
    (&["run", "echo", "--flows", "0"], "--flows", "1..=65536"),
    (&["run", "echo", "--flows", "65537"], "--flows", "1..=65536"),
    (&["run", "echo", "--pipes", "0"], "--pipes", "1..=64"),
    (&["run", "echo", "--pipes", "65"], "--pipes", "1..=64"),
    (&["run", "echo", "--nic", "packetized", "--pipes", "9"], "--pipes", "1..=8"),
    (&["run", "echo", "--packets", "0"], "--packets", "1.."),
    (&["run", "echo", "--packets", "many"], "--packets", "1.."),
    (&["run", "echo", "--nic", "e1000"], "--nic", "enso, packetized"),
    (&["run", "echo", "--model", "verilog"], "--model", "rust, rtl"),
    (&["run", "echo", "--nic", "packetized", "--garbage-first"], "--garbage-first", "packetized"),
    (&["run", "echo", "--nic", "packetized", "--model", "rtl"], "--model", "--nic enso"),
    (&["run", "echo", "--timeout", "0"], "--timeout", "1..=86400"),
    // run chain
    (&["run", "chain", "--chain", "ml"], "--chain", "crypto,ml, crypto"),
    (&["run", "chain", "--chain", "crypto,ml,crypto"], "--chain", "crypto,ml, crypto"),
    (&["run", "chain", "--items", "0"], "--items", "1..=1000000"),
    (&["run", "chain", "--items", "1000001"], "--items", "1..=1000000"),
    (&["run", "chain", "--mode", "fast"], "--mode", "cpu, nagare, glue, both"),
    (&["run", "chain", "--transport", "pcie"], "--transport", "vm, native"),
    (&["run", "chain", "--model", "x"], "--model", "rust, rtl"),
    (&["run", "chain", "--transport", "native", "--accel", "tcg"], "--accel", "--transport native"),
    (&["run", "chain", "--transport", "native", "--console"], "--console", "--transport native"),
    (&["run", "chain", "--transport", "native", "--timeout", "10"], "--timeout", "--transport native"),
    // run app
    (&["run", "app", "--name", "nginx"], "--name", "maglev, nitrosketch, mica, logmon"),
    (&["run", "app", "--name", "mica", "--frames", "0"], "--frames", "1.."),
    (&["run", "app", "--name", "mica", "--window", "0"], "--window", "1..=1048576"),
    (&["run", "app", "--name", "mica", "--nic", "virtio"], "--nic", "enso, packetized"),
    (&["run", "app", "--name", "mica", "--transport", "bus"], "--transport", "vm, native"),
    (
        &["run", "app", "--name", "logmon", "--transport", "native", "--accel", "kvm"],
        "--accel",
        "--transport native",
    ),
    // run peer-echo
    (&["run", "peer-echo", "--arps", "0"], "--arps", "1.."),
    (&["run", "peer-echo", "--pings", "0"], "--pings", "1.."),
    (&["run", "peer-echo", "--datagrams", "0"], "--datagrams", "1.."),
    (&["run", "peer-echo", "--nic", "ne2000"], "--nic", "enso, packetized"),
    // run peer-capture: no --nic, no --kill-first-peer, no --console
    (&["run", "peer-capture", "--nic", "enso"], "--nic", ""),
    (&["run", "peer-capture", "--kill-first-peer"], "--kill-first-peer", ""),
    (&["run", "peer-capture", "--console"], "--console", ""),
    (&["run", "peer-capture", "--pings", "31"], "--pings", "1..=30"),
    (&["run", "peer-capture", "--arps", "0"], "--arps", "1.."),
    (&["run", "peer-capture", "--datagrams", "0"], "--datagrams", "1.."),
    // run gen-echo
    (&["run", "gen-echo", "--size", "59"], "--size", "60..=1514"),
    (&["run", "gen-echo", "--size", "1515"], "--size", "60..=1514"),
    (&["run", "gen-echo", "--flows", "0"], "--flows", "1..=64512"),
    (&["run", "gen-echo", "--flows", "64513"], "--flows", "1..=64512"),
    (&["run", "gen-echo", "--packets", "0"], "--packets", "1.."),
    (&["run", "gen-echo", "--rate", "1000000001"], "--rate", "0..=1000000000"),
    (&["run", "gen-echo", "--rate", "fast"], "--rate", "0..=1000000000"),
    (&["run", "gen-echo", "--pcap", "{NO_FILE}"], "--pcap", "No such file"),
    (&["run", "gen-echo", "--pcap", "{NOT_PCAP}"], "--pcap", ""),
    (&["run", "gen-echo", "--pcap", "{NOT_PCAP}", "--size", "100"], "--size", "--pcap"),
    (&["run", "gen-echo", "--pcap", "{NOT_PCAP}", "--flows", "4"], "--flows", "--pcap"),
    (&["run", "gen-echo", "--console"], "--console", ""),
    (&["run", "gen-echo", "--transport", "native", "--accel", "tcg"], "--accel", "--transport native"),
    (&["run", "gen-echo", "--transport", "rdma"], "--transport", "vm, native"),
    // bench echo
    (&["bench", "echo", "--sizes", "64,20"], "--sizes", "60..=9000"),
    (&["bench", "echo", "--sizes", "9001"], "--sizes", "60..=9000"),
    (&["bench", "echo", "--sizes", "64,,1500"], "--sizes", "60..=9000"),
    (&["bench", "echo", "--runs", "0"], "--runs", "1.."),
    (&["bench", "echo", "--packets", "0"], "--packets", "1.."),
    (&["bench", "echo", "--pipes", "0"], "--pipes", "1..=64"),
    (&["bench", "echo", "--pipes", "9"], "--pipes", "1..=8"),
    (&["bench", "echo", "--flows", "0"], "--flows", "1..=65536"),
    (&["bench", "echo", "--nic", "enso,e1000"], "--nic", "enso, packetized"),
    (&["bench", "echo", "--notify", "sometimes"], "--notify", "reactive, per-packet, prefetch"),
    (&["bench", "echo", "--transport", "vm", "--notify", "reactive,per-packet"], "--notify", "reactive"),
    (&["bench", "echo", "--accel", "tcg"], "--accel", "--transport native"),
    (&["bench", "echo", "--nic", "packetized", "--notify", "prefetch"], "--notify", "packetized"),
    (&["bench", "echo", "--transport", "cloud"], "--transport", "vm, native"),
    (&["bench", "echo", "--model-batch", "0"], "--model-batch", "1..=4096"),
    (&["bench", "echo", "--model-batch", "4097"], "--model-batch", "1..=4096"),
    (&["bench", "echo", "--model-sw-batch-ns=-1"], "--model-sw-batch-ns", "0..=1000000000"),
    (&["bench", "echo", "--model-sw-batch-ns", "inf"], "--model-sw-batch-ns", "0..=1000000000"),
    (&["bench", "echo", "--model-poll-ns", "NaN"], "--model-poll-ns", "0..=1000000000"),
    (&["bench", "echo", "--model-poll-ns", "1e10"], "--model-poll-ns", "0..=1000000000"),
    (&["bench", "echo", "--model-mpps", "0"], "--model-mpps", "0.001..=10000"),
    (&["bench", "echo", "--model-mpps", "-3"], "--model-mpps", ""),
    (&["bench", "echo", "--model-mpps", "lots"], "--model-mpps", "0.001..=10000"),
    (&["bench", "echo", "--plot", "{NO_DIR}/plot.svg"], "--plot", "no folder"),
    (&["bench", "echo", "--plot", "/"], "--plot", "folder"),
    // bench apps
    (&["bench", "apps", "--transport", "vm"], "--transport", "native"),
    (&["bench", "apps", "--frames", "0"], "--frames", "1.."),
    (&["bench", "apps", "--window", "0"], "--window", "1..=1048576"),
    (&["bench", "apps", "--runs", "0"], "--runs", "1..=100"),
    (&["bench", "apps", "--runs", "101"], "--runs", "1..=100"),
    (&["bench", "apps", "--plot", "{NO_DIR}/apps.svg"], "--plot", "no folder"),
    // demo, accel, serve
    (&["demo", "--timeout", "0"], "--timeout", "1..=86400"),
    (&["demo", "--accel", "hvf"], "--accel", "auto, kvm, tcg"),
    (&["accel", "--accel", "hvf"], "--accel", "auto, kvm, tcg"),
    (&["serve", "nic", "--socket", "/tmp/x.sock"], "<DEVICE>", "smoke"),
    (&["serve", "gpu"], "<DEVICE>", "enso, packetized, crypto, ml, smoke, nagare"),
    (&["serve", "crypto", "--pipes", "4"], "--pipes", "pipes applies to enso and nagare"),
    (&["serve", "enso", "--pipes", "0"], "--pipes", "1..=8192"),
    (&["serve", "ml", "--port", "udp"], "--port", "no Ethernet port"),
    (&["serve", "enso", "--port", "carrier-pigeon"], "--port", "none, udp[:BIND[,PEER]] or pcap:FILE"),
    (&["serve", "enso", "--port", "udp:nowhere"], "--port", "address:port"),
    (&["serve", "enso", "--port", "pcap:{NO_FILE}"], "--port", "no capture file"),
    (&["serve", "packetized", "--model", "rtl"], "--model", "model rtl applies to enso and nagare"),
    // up and friends
    (&["up", "{BAD_TOPOLOGY}"], "line 4, device.kind", "one of enso, packetized, crypto, ml, smoke, nagare"),
    (&["up", "{NO_FILE}"], "no-such.pcap", "No such file"),
    (&["up", "--share", "{NO_DIR}"], "--share", "no such folder"),
    (&["up", "--timeout", "1"], "--timeout", "10..=3600"),
    (&["exec", "--timeout", "0", "guest0", "--", "true"], "--timeout", "1..=86400"),
];

#[test]
fn bad_options_are_refused_before_anything_runs() {
    let sb = Sandbox::new("refused");
    for &(args, option, accepts) in REFUSED {
        let started = Instant::now();
        let out = sb.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: exit status\n{stderr}");
        no_panic(args, &out);
        assert!(out.stdout.is_empty(), "{args:?}: stdout {}", String::from_utf8_lossy(&out.stdout));
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: ") && first.contains(option), "{args:?}: first line {first:?}");
        // The message: everything before clap's usage and help hint.
        let message: String = stderr
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(message.contains(accepts), "{args:?}: the message does not say {accepts:?}:\n{stderr}");
        sb.assert_untouched(args);
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?} took {:?}", started.elapsed());
    }
}

/// The same commands with good values get past the checks (here: to provisioning, which
/// the fake QEMU fails), so the table above tests the values, not a broken command line.
#[test]
fn good_values_get_past_the_checks() {
    let sb = Sandbox::new("accepted");
    for args in [
        &["run", "echo", "--size", "9000", "--window", "1048576", "--flows", "65536", "--pipes", "64"][..],
        &["run", "echo", "--nic", "packetized", "--pipes", "8", "--size", "60"],
        &["run", "chain", "--chain", "crypto", "--items", "1000000"],
        &["run", "app", "--name", "nitrosketch", "--window", "1"],
        &["run", "peer-capture", "--pings", "30"],
        &["run", "gen-echo", "--flows", "64512", "--rate", "0", "--size", "1514"],
        &["bench", "echo", "--transport", "vm", "--sizes", "60,9000", "--nic", "enso"],
    ] {
        let out = sb.run(args);
        no_panic(args, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("QEMU"), "{args:?} failed at provisioning: {stderr}");
        assert!(sb.marker.exists(), "{args:?}: QEMU was looked at");
        std::fs::remove_file(&sb.marker).unwrap();
    }
}

fn one_json_object(args: &[&str], out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON object ({e}): {stdout:?}"));
    assert!(v.is_object(), "{args:?}: {v}");
    assert_eq!(stdout.trim().lines().count(), 1, "{args:?}: one line: {stdout:?}");
    assert_eq!(v["pass"], false, "{args:?}: {v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{args:?}: {v}");
    v
}

#[test]
fn with_json_a_refused_command_prints_one_json_object() {
    let sb = Sandbox::new("json");
    for (args, key, name, option) in [
        (&["run", "echo", "--size", "20", "--json"][..], "scenario", "echo", "--size"),
        (&["run", "echo", "--json", "--window", "0"], "scenario", "echo", "--window"),
        (
            &["run", "peer-capture", "--kill-first-peer", "--json"],
            "scenario",
            "peer-capture",
            "--kill-first-peer",
        ),
        (&["run", "gen-echo", "--pcap", "{NO_FILE}", "--json"], "scenario", "gen-echo", "--pcap"),
        (&["run", "app", "--json"], "scenario", "app", "--name"),
        (&["bench", "echo", "--runs", "0", "--json"], "benchmark", "echo", "--runs"),
        (&["bench", "apps", "--transport", "vm", "--json"], "benchmark", "apps", "--transport"),
        (&["demo", "--json"], "", "", "--json"),
    ] {
        let out = sb.run(args);
        no_panic(args, &out);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v = one_json_object(args, &out);
        if !key.is_empty() {
            assert_eq!(v[key], name, "{args:?}: {v}");
        }
        assert!(v["error"].as_str().is_some_and(|e| e.contains(option)), "{args:?}: {v}");
        // clap's own text stays on stderr.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: ") && stderr.contains(option), "{args:?}: {stderr}");
        sb.assert_untouched(args);
    }
}

#[test]
fn with_json_a_provisioning_failure_prints_one_json_object() {
    let sb = Sandbox::new("provision");
    for (args, key, name) in [
        (&["run", "smoke", "--json"][..], "scenario", "smoke"),
        (&["run", "echo", "--json"], "scenario", "echo"),
        (&["run", "chain", "--json"], "scenario", "chain"),
        (&["bench", "echo", "--transport", "vm", "--json"], "benchmark", "echo"),
    ] {
        let out = sb.run(args);
        no_panic(args, &out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v = one_json_object(args, &out);
        assert_eq!(v[key], name, "{args:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("QEMU")), "{args:?}: {v}");
        assert!(sb.marker.exists(), "{args:?}: the fake QEMU was probed");
        std::fs::remove_file(&sb.marker).unwrap();
        assert!(Sandbox::empty(&sb.runtime), "{args:?}: no run folder");
    }
}

#[test]
fn help_is_not_an_error_even_with_json() {
    let sb = Sandbox::new("help");
    let out = sb.run(&["run", "echo", "--json", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--size <SIZE>") && stdout.contains("60..=9000"), "{stdout}");
    sb.assert_untouched(&["run", "echo", "--help"]);
}
