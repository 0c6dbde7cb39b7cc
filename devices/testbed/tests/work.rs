//! Working in a guest: `testbed serve` under a hand-written QEMU command line (the README's
//! example, run as written), and `testbed up` / `exec` / `down` with topologies. Real guests
//! (KVM when it works here, TCG otherwise — never skipped). The tests here run one at a
//! time (they share the machine's two cores with their guests).

use serde_json::Value;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_testbed"))
}

/// A fresh private folder.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("testbed-work-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The README's `serve` example: the shell block after `<!-- serve-example -->`.
fn readme_serve_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let after = readme.split("<!-- serve-example -->").nth(1).expect("the README has the serve example");
    let block = after.split("```sh\n").nth(1).expect("a sh block follows the marker");
    block.split("\n```").next().unwrap().to_string()
}

/// A UDP frame the echo app answers: IPv4/UDP, `size` bytes, one flow (so one pipe and
/// replies in order), numbered by `seq`.
fn frame(seq: u64, size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    wire::generator::build_frame(&mut f, size, 0, seq);
    f
}

#[test]
fn serve_enso_under_the_readme_qemu_command_line_echoes_every_frame() {
    let _one = serial();
    let dir = scratch("serve");
    let script = readme_serve_example();
    assert!(script.contains("testbed serve enso"), "{script}");
    // The script as written, with `testbed` on PATH.
    let path = format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut sh = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e\n{script}"))
        .current_dir(&dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest's echo says ready on its result channel; then 1000 frames go to the NIC's
    // UDP port and every reply must come back with the echo's byte incremented.
    let result = dir.join("result.jsonl");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !std::fs::read_to_string(&result).unwrap_or_default().contains("\"ready\"") {
        if let Ok(Some(st)) = sh.try_wait() {
            let out = sh.wait_with_output().unwrap();
            panic!(
                "the script ended ({st}) before the guest's echo was ready:\n{}\n{}\nconsole:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the guest never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let n = 1000u64;
    let mut matched = 0;
    let mut buf = vec![0u8; 2048];
    let mut seq = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while matched < n && Instant::now() < deadline {
        // A small window, so nothing is lost to a full ring.
        while seq < n && seq < matched + 32 {
            sock.send_to(&frame(seq, 64), "127.0.0.1:7700").unwrap();
            seq += 1;
        }
        let Ok((len, _)) = sock.recv_from(&mut buf) else { continue };
        let got = &buf[..len];
        let s = u64::from(got[wire::generator::TOUCH_OFFSET].wrapping_sub(1));
        let mut want = frame(matched, 64);
        want[wire::generator::TOUCH_OFFSET] = want[wire::generator::TOUCH_OFFSET].wrapping_add(1);
        assert_eq!(
            got,
            &want[..],
            "reply {matched} (byte says {s}) must be frame {matched} with byte 42 + 1"
        );
        matched += 1;
    }
    assert_eq!(matched, n, "every frame answered, in order");
    let out = sh.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // counters.json: the -device line serve printed, then the NIC's counters.
    let text = std::fs::read_to_string(dir.join("counters.json")).unwrap();
    let mut lines = text.lines();
    let device = lines.next().unwrap();
    assert!(
        device.starts_with("-device ") && device.contains("vfio-user-pci") && device.contains("enso.sock"),
        "{device}"
    );
    let counters: Value = serde_json::from_str(lines.next().expect("counters after the signal")).unwrap();
    assert_eq!(counters["device"], "enso");
    assert_eq!(counters["port"]["udp"]["rx_frames"], n, "{counters}");
    assert_eq!(counters["port"]["udp"]["tx_frames"], n, "{counters}");
    assert!(!dir.join("enso.sock").exists(), "serve removed its socket");
    let events = std::fs::read_to_string(&result).unwrap();
    assert!(events.contains("\"event\":\"exit\",\"code\":0"), "the guest's echo exited 0: {events}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `testbed ARGS` with the state folder `state`; returns (exit code, stdout, stderr).
fn testbed(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg(args[0])
        .arg("--state")
        .arg(state)
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON line of `stdout` whose "event" is `event`.
fn event(stdout: &str, event: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == event)
        .unwrap_or_else(|| panic!("no {event} event in:\n{stdout}"))
}

/// Everything `up` left: QEMUs whose command line names the state folder, sockets in it.
fn leftovers(state: &Path) -> Vec<String> {
    let mut left = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&*state.to_string_lossy()) && !cmd.contains("--state") {
            left.push(format!("process {}: {cmd}", e.file_name().to_string_lossy()));
        }
        if cmd.contains("__daemon") && cmd.contains(&*state.to_string_lossy()) {
            left.push(format!("daemon {}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    let mut stack = vec![state.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                left.push(format!("socket {}", e.path().display()));
            } else if e.file_name() == "state.json" || e.file_name() == "daemon.pid" {
                left.push(format!("state file {}", e.path().display()));
            }
        }
    }
    left
}

fn hugepages_free() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("HugePages_Free") || l.starts_with("HugePages_Total"))
        .collect::<Vec<_>>()
        .join(" ")
}

const TWO_GUESTS: &str = r#"
[[guest]]
name = "echo"
[[guest.device]]
kind = "enso"
name = "nic0"

[[guest]]
name = "gen"
[[guest.device]]
kind = "enso"
name = "nic0"

[[wire]]
a = "echo.nic0"
b = "gen.nic0"
"#;

#[test]
fn two_cabled_guests_come_up_echo_from_host_answers_ensogen_and_down_leaves_nothing() {
    let _one = serial();
    let dir = scratch("up2");
    let (state, share) = (dir.join("state"), dir.join("share"));
    std::fs::create_dir_all(&share).unwrap();
    // Our guest program, built on the host, run from /host in one guest.
    let root = provision::cache::workspace_root().unwrap();
    let guest_bin = guest_image::build_guest_binary(&root).unwrap();
    std::fs::copy(&guest_bin, share.join("testbed-guest")).unwrap();
    std::fs::write(dir.join("two.toml"), TWO_GUESTS).unwrap();
    let huge_before = hugepages_free();

    let started = Instant::now();
    let (code, out, err) = testbed(
        &state,
        &["up", dir.join("two.toml").to_str().unwrap(), "--share", share.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "up failed:\n{out}\n{err}");
    let up_s = started.elapsed().as_secs_f64();
    let guests: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(guests.as_array().map(Vec::len), Some(2), "{guests}");
    for g in guests.as_array().unwrap() {
        assert_eq!(g["state"], "ready", "{g}");
        assert_eq!(g["devices"][0]["kind"], "enso");
        assert_eq!(g["devices"][0]["pci"], "0000:00:10.0");
    }
    let (_, ls, _) = testbed(&state, &["ls", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(ls.trim()).unwrap(), guests, "ls --json agrees with up");

    // exec's round trip, and stdout/stderr/status kept apart.
    let t = Instant::now();
    let (code, out, err) =
        testbed(&state, &["exec", "echo", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let exec_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));

    // The echo from /host in one guest, EnsōGen from the image in the other.
    let n = 2000;
    let mut echo = Command::new(bin())
        .args(["exec", "--state", state.to_str().unwrap(), "echo", "--", "/host/testbed-guest", "echo"])
        .args(["pipes=2", &format!("packets={n}"), "idle_ms=10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut echo_out = std::io::BufReader::new(echo.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut echo_out, &mut first).unwrap();
    assert!(first.contains("\"ready\""), "the echo's first line is its ready event: {first}");
    let (code, gen_out, gen_err) = testbed(
        &state,
        &[
            "exec",
            "gen",
            "--",
            "testbed-guest",
            "ensogen",
            &format!("packets={n}"),
            "size=64",
            "flows=4",
            "rate=10000",
        ],
    );
    let gen = event(&gen_out, "result");
    assert_eq!(code, 0, "ensogen:\n{gen_out}\n{gen_err}");
    let v = &gen["values"];
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64(), v["lost"].as_u64()),
        (Some(n), Some(n), Some(0)),
        "{v}"
    );
    for k in ["corrupted", "duplicated", "reordered", "unexpected"] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut echo_out, &mut rest).unwrap();
    let status = echo.wait().unwrap();
    let echo_result = event(&rest, "result");
    assert!(status.success() && echo_result["pass"] == true, "echo: {rest}");

    // down: no QEMU, daemon, socket, state file or hugepage left behind.
    let (code, _, err) = testbed(&state, &["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("echo") && err.contains("gen"), "down names what it stopped: {err}");
    let left = leftovers(&state);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(hugepages_free(), huge_before);
    let (_, ls, _) = testbed(&state, &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]");
    eprintln!("figures: up to ready {up_s:.1}s for two guests, exec round trip {exec_ms:.0} ms");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_topology_boots_nothing_and_names_line_and_field() {
    let _one = serial();
    let dir = scratch("refused");
    let state = dir.join("state");
    let cases = [
        ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"gpu\"\n", "line 4, device.kind: unknown device 'gpu'"),
        (
            "[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"enso\"\n[[wire]]\na = \"g.enso\"\nb = \"h.nic0\"\n",
            "line 7, wire.b: no guest 'h'",
        ),
        ("[[guest]]\nname = \"g\"\nmemory_mb = 64\n", "line 3, guest.memory_mb: 64 is out of range"),
    ];
    for (text, want) in cases {
        let f = dir.join("t.toml");
        std::fs::write(&f, text).unwrap();
        let (code, out, err) = testbed(&state, &["up", f.to_str().unwrap()]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(leftovers(&state).is_empty() && !state.join("daemon.log").exists(), "nothing started");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn from_host_a_dynamic_c_program_runs_and_a_module_built_against_the_headers_loads() {
    let _one = serial();
    let dir = scratch("host");
    let (state, share) = (dir.join("state"), dir.join("share"));
    std::fs::create_dir_all(&share).unwrap();
    // A C program against Debian 12's libc (dynamically linked), built here.
    std::fs::write(
        share.join("hello.c"),
        "#include <stdio.h>\n#include <math.h>\nint main(int c, char **v) { printf(\"hi %s %.0f\\n\", v[1], sqrt(49.0)); fprintf(stderr, \"e\\n\"); return 5; }\n",
    )
    .unwrap();
    let cc =
        Command::new("gcc").current_dir(&share).args(["-o", "hello", "hello.c", "-lm"]).status().unwrap();
    assert!(cc.success());
    // A module against the image kernel's headers.
    let img = Command::new(bin()).args(["image", "--headers"]).output().unwrap();
    let (code, out, err) = (
        img.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&img.stdout).into_owned(),
        String::from_utf8_lossy(&img.stderr).into_owned(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let headers = out.lines().nth(2).expect("the headers folder on the third line").to_string();
    std::fs::write(
        share.join("tbhello.c"),
        "#include <linux/module.h>\nstatic int __init h_init(void) { pr_info(\"tbhello: loaded\\n\"); return 0; }\nstatic void __exit h_exit(void) {}\nmodule_init(h_init);\nmodule_exit(h_exit);\nMODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    std::fs::write(share.join("Makefile"), "obj-m := tbhello.o\n").unwrap();
    let make = Command::new("make")
        .args(["-C", &headers, &format!("M={}", share.display()), "modules"])
        .output()
        .unwrap();
    assert!(
        make.status.success(),
        "{}{}",
        String::from_utf8_lossy(&make.stdout),
        String::from_utf8_lossy(&make.stderr)
    );

    let (code, out, err) = testbed(&state, &["up", "--share", share.to_str().unwrap()]);
    assert_eq!(code, 0, "up: {out}{err}");
    let (code, out, err) = testbed(&state, &["exec", "guest0", "--", "/host/hello", "there"]);
    assert_eq!((code, out.as_str(), err.as_str()), (5, "hi there 7\n", "e\n"));
    let (code, out, err) = testbed(&state, &["exec", "guest0", "--", "insmod", "/host/tbhello.ko"]);
    assert_eq!(code, 0, "insmod: {out}{err}");
    let (_, modules, _) = testbed(&state, &["exec", "guest0", "--", "cat", "/proc/modules"]);
    assert!(modules.contains("tbhello"), "{modules}");
    let (_, dmesg, _) = testbed(&state, &["exec", "guest0", "--", "dmesg"]);
    assert!(dmesg.contains("tbhello: loaded"), "{dmesg}");
    // Files the guest writes appear on the host.
    let (code, _, _) =
        testbed(&state, &["exec", "guest0", "--", "sh", "-c", "echo from-guest > /host/written"]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(share.join("written")).unwrap(), "from-guest\n");
    let (code, _, err) = testbed(&state, &["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(leftovers(&state).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
