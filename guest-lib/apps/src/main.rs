//! `testbed-guest`: the program the guest image runs (and that runs natively against a
//! device server's socket). Its stdout is the result channel: JSON lines only.
//!
//! Usage: `testbed-guest SCENARIO [key=value ...]`, e.g.
//! `testbed-guest smoke scratch=0x1234 seed=7 [socket=/path/to/vfio-user.sock]`, or
//! `testbed-guest chain chain=crypto,ml key=<hex> items=N [socket=NIC crypto_socket=.. ml_socket=..]`,
//! or `testbed-guest agent [share=/host] [share_error=MSG] [port=NAME]` (the exec agent, see
//! `agent.rs`).

use device_access::{vfio::VfioDevice, vfio_user::VfioUserDevice, DeviceAccess};
use guest_apps::{agent, capture, cardecho, chain, echo, ensogen, garbage, responder, smoke, Report};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The Ensō driver's options from `extensions=all|none` (default all) and
/// `registers=shared|mmio` (mmio: the queue pages trap, so the doorbells may too).
fn enso_options(args: &HashMap<String, String>) -> Result<enso::DeviceOptions, String> {
    let extensions = match args.get("extensions") {
        None => enso::Extensions::All,
        Some(e) => enso::Extensions::parse(e).ok_or(format!("extensions={e}: expected all or none"))?,
    };
    let trapped = match args.get("registers").map(String::as_str) {
        None | Some("shared") => false,
        Some("mmio") => true,
        Some(other) => return Err(format!("registers={other}: expected shared or mmio")),
    };
    Ok(enso::DeviceOptions { extensions, allow_trapped_datapath: trapped, ..enso::DeviceOptions::new(0) })
}

/// `key=N` as milliseconds; `0` means "no limit".
fn millis(args: &HashMap<String, String>, key: &str, default: Option<u64>) -> Option<Duration> {
    args.get(key).and_then(|s| parse_u64(s)).or(default).filter(|&ms| ms > 0).map(Duration::from_millis)
}

fn open_failed(scenario: &str, args: &HashMap<String, String>, e: String) -> Report {
    let mut r = Report::new(scenario, if args.contains_key("socket") { "vfio-user" } else { "vfio" });
    r.fail("open", e);
    r
}

fn open(args: &HashMap<String, String>, vendor: u16, device: u16) -> Result<Box<dyn DeviceAccess>, String> {
    match args.get("socket") {
        Some(s) => VfioUserDevice::connect(Path::new(s)).map(|d| Box::new(d) as _).map_err(|e| e.to_string()),
        None => VfioDevice::open_by_id(vendor, device).map(|d| Box::new(d) as _).map_err(|e| e.to_string()),
    }
}

/// Opens the device at socket argument `key` (vfio-user) or by IDs (VFIO).
fn open_at(
    args: &HashMap<String, String>,
    key: &str,
    vendor: u16,
    device: u16,
) -> Result<Box<dyn DeviceAccess>, String> {
    match args.get(key) {
        Some(s) => VfioUserDevice::connect(Path::new(s)).map(|d| Box::new(d) as _).map_err(|e| e.to_string()),
        None => VfioDevice::open_by_id(vendor, device).map(|d| Box::new(d) as _).map_err(|e| e.to_string()),
    }
}

fn parse_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

fn chain_scenario(args: &HashMap<String, String>) -> Report {
    use testbed_regs::accel as acc;
    let shape_arg = args.get("chain").map_or("crypto,ml", |s| s.as_str());
    let Some(shape) = chain::Shape::parse(shape_arg) else {
        return open_failed("chain", args, format!("chain={shape_arg}: expected crypto or crypto,ml"));
    };
    let Some(key) = args.get("key").and_then(|k| parse_key(k)) else {
        return open_failed("chain", args, "key=<64 hex digits> is required".into());
    };
    let mut params = chain::ChainParams::new(shape, key);
    params.device = match enso_options(args) {
        Ok(o) => o,
        Err(e) => return open_failed("chain", args, e),
    };
    params.items = args.get("items").and_then(|s| parse_u64(s));
    params.idle = millis(args, "idle_ms", Some(3000));
    params.start_timeout = millis(args, "timeout_ms", None);
    let nic = open(args, testbed_regs::enso::VENDOR_ID, testbed_regs::enso::DEVICE_ID);
    let crypto = open_at(args, "crypto_socket", acc::VENDOR_ID, acc::CRYPTO_DEVICE_ID);
    let ml = match shape {
        chain::Shape::CryptoMl => open_at(args, "ml_socket", acc::VENDOR_ID, acc::ML_DEVICE_ID).map(Some),
        chain::Shape::Crypto => Ok(None),
    };
    let devices = match (nic, crypto, ml) {
        (Ok(nic), Ok(crypto), Ok(ml)) => chain::ChainDevices { nic, crypto, ml },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return open_failed("chain", args, e),
    };
    match args.get("mode").map_or("cpu", |m| m.as_str()) {
        "cpu" => chain::run(devices, params),
        mode @ ("nagare" | "glue") => {
            use testbed_regs::nagare as ng;
            match open_at(args, "switch_socket", ng::VENDOR_ID, ng::DEVICE_ID) {
                Ok(sw) => {
                    chain::run_nagare(devices, sw, chain::ChainParams { glue: mode == "glue", ..params })
                }
                Err(e) => open_failed("chain", args, e),
            }
        }
        other => open_failed("chain", args, format!("mode={other}: expected cpu, nagare or glue")),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = argv.first().cloned() else {
        eprintln!("usage: testbed-guest SCENARIO [key=value ...]");
        std::process::exit(2);
    };
    let args: HashMap<String, String> = argv[1..]
        .iter()
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let report = match scenario.as_str() {
        "smoke" => {
            use testbed_regs::smoke::{DEVICE_ID, VENDOR_ID};
            let params = smoke::SmokeParams {
                scratch: args.get("scratch").and_then(|s| parse_u32(s)).unwrap_or(0x5eed_0001),
                seed: args.get("seed").and_then(|s| parse_u32(s)).unwrap_or(7),
                hold_ms: args.get("hold_ms").and_then(|s| parse_u32(s)).unwrap_or(0),
            };
            match open(&args, VENDOR_ID, DEVICE_ID) {
                Ok(mut dev) => smoke::run(dev.as_mut(), params),
                Err(e) => {
                    let mut r =
                        Report::new("smoke", if args.contains_key("socket") { "vfio-user" } else { "vfio" });
                    r.fail("open", e);
                    r
                }
            }
        }
        "echo" => {
            use testbed_regs::enso::{DEVICE_ID, VENDOR_ID};
            let device = match enso_options(&args) {
                Ok(o) => o,
                Err(e) => exit_with(open_failed("echo", &args, e)),
            };
            let params = echo::EchoParams {
                pipes: args.get("pipes").and_then(|s| parse_u32(s)).unwrap_or(4),
                packets: args.get("packets").and_then(|s| parse_u64(s)),
                idle: millis(&args, "idle_ms", Some(3000)),
                start_timeout: millis(&args, "timeout_ms", None),
                device,
            };
            if args.get("nic").is_some_and(|n| n == "packetized") {
                use testbed_regs::packetized as pk;
                match open(&args, pk::VENDOR_ID, pk::DEVICE_ID) {
                    Ok(dev) => echo::run_packetized(dev, params),
                    Err(e) => open_failed("echo", &args, e),
                }
            } else {
                match open(&args, VENDOR_ID, DEVICE_ID) {
                    Ok(dev) => echo::run(dev, params),
                    Err(e) => open_failed("echo", &args, e),
                }
            }
        }
        "garbage" => {
            use testbed_regs::enso::{DEVICE_ID, VENDOR_ID};
            let seed = args.get("seed").and_then(|s| parse_u64(s)).unwrap_or(0x9e37_79b9_7f4a_7c15);
            match open(&args, VENDOR_ID, DEVICE_ID) {
                Ok(dev) => garbage::run(dev, seed),
                Err(e) => open_failed("garbage", &args, e),
            }
        }
        "capture" => {
            use testbed_regs::enso::{DEVICE_ID, VENDOR_ID};
            let params = capture::CaptureParams {
                path: args.get("path").map(Into::into).unwrap_or_else(|| "capture.pcap".into()),
                pipes: args.get("pipes").and_then(|s| parse_u32(s)).unwrap_or(1),
                packets: args.get("packets").and_then(|s| parse_u64(s)),
                idle: millis(&args, "idle_ms", Some(3000)),
                start_timeout: millis(&args, "timeout_ms", None),
                until_done: args.get("until_done").is_some_and(|v| v == "1"),
                upload: args.get("upload").is_some_and(|v| v == "1"),
            };
            match open(&args, VENDOR_ID, DEVICE_ID) {
                Ok(dev) => capture::run(dev, params),
                Err(e) => open_failed("capture", &args, e),
            }
        }
        "chain" => chain_scenario(&args),
        // Card-style software: no driver, sysfs resource2, physical addresses.
        "card-echo" => {
            let d = cardecho::CardEchoParams::default();
            let ip = args.get("dst").and_then(|s| s.parse::<std::net::Ipv4Addr>().ok());
            cardecho::run(cardecho::CardEchoParams {
                pipes: args.get("pipes").and_then(|s| parse_u32(s)).unwrap_or(d.pipes),
                flows: args.get("flows").and_then(|s| parse_u32(s)).unwrap_or(d.flows),
                dst_ip: ip.map_or(d.dst_ip, |i| i.octets()),
                dst_port: args.get("dst_port").and_then(|s| s.parse().ok()).unwrap_or(d.dst_port),
                pair: args.get("pair").and_then(|s| parse_u32(s)).unwrap_or(d.pair),
                packets: args.get("packets").and_then(|s| parse_u64(s)),
                idle: millis(&args, "idle_ms", Some(3000)).unwrap_or(d.idle),
                start_timeout: millis(&args, "timeout_ms", None).unwrap_or(d.start_timeout),
                prefetch: args.get("prefetch").is_none_or(|v| v != "0"),
            })
        }
        // The exec agent of `testbed up` guests; runs until the guest powers off.
        "agent" => std::process::exit(agent::run(agent::Options {
            share: args.get("share").cloned(),
            share_error: args.get("share_error").cloned(),
            port_name: args.get("port").cloned(),
        })),
        "responder" => {
            use testbed_regs::enso::{DEVICE_ID, VENDOR_ID};
            let (Some(mac), Some(ip)) = (
                args.get("mac").and_then(|m| parse_mac(m)),
                args.get("ip").and_then(|i| i.parse::<std::net::Ipv4Addr>().ok()),
            ) else {
                exit_with(open_failed("responder", &args, "mac=aa:bb:.. and ip=a.b.c.d are required".into()));
            };
            let params = responder::ResponderParams {
                me: responder::Identity { mac, ip: ip.octets() },
                limit: millis(&args, "limit_ms", Some(300_000)).unwrap_or(Duration::MAX),
            };
            let nic = args.get("nic").map_or("enso", |n| n.as_str());
            let ids = if nic == "packetized" {
                (testbed_regs::packetized::VENDOR_ID, testbed_regs::packetized::DEVICE_ID)
            } else {
                (VENDOR_ID, DEVICE_ID)
            };
            match open(&args, ids.0, ids.1) {
                Ok(dev) => responder::run(dev, params, nic),
                Err(e) => open_failed("responder", &args, e),
            }
        }
        "ensogen" => {
            use testbed_regs::enso::{DEVICE_ID, VENDOR_ID};
            let d = ensogen::GenParams::default();
            let device = match enso_options(&args) {
                Ok(o) => o,
                Err(e) => exit_with(open_failed("ensogen", &args, e)),
            };
            let params = ensogen::GenParams {
                device,
                packets: args.get("packets").and_then(|s| parse_u64(s)).unwrap_or(d.packets),
                size: args.get("size").and_then(|s| parse_u64(s)).map_or(d.size, |v| v as usize),
                flows: args.get("flows").and_then(|s| parse_u32(s)).unwrap_or(d.flows),
                rate_pps: match args.get("rate").and_then(|s| parse_u64(s)) {
                    Some(0) => None,
                    Some(r) => Some(r),
                    None => d.rate_pps,
                },
                pcap: args.get("pcap").map(Into::into),
                drain: millis(&args, "drain_ms", None).unwrap_or(d.drain),
                limit: millis(&args, "limit_ms", None).unwrap_or(d.limit),
            };
            match open(&args, VENDOR_ID, DEVICE_ID) {
                Ok(dev) => ensogen::run(dev, params),
                Err(e) => open_failed("ensogen", &args, e),
            }
        }
        "app" => {
            let name = args.get("name").cloned().unwrap_or_default();
            let nic = args.get("nic").cloned().unwrap_or_else(|| "enso".into());
            let limits = guest_apps::netapp::IoLimits {
                frames: args.get("frames").and_then(|s| parse_u64(s)),
                idle: millis(&args, "idle_ms", Some(3000)),
                start_timeout: millis(&args, "timeout_ms", None),
            };
            let ids = if nic == "packetized" {
                (testbed_regs::packetized::VENDOR_ID, testbed_regs::packetized::DEVICE_ID)
            } else {
                (testbed_regs::enso::VENDOR_ID, testbed_regs::enso::DEVICE_ID)
            };
            match open(&args, ids.0, ids.1) {
                Ok(dev) => guest_apps::netapp::run(dev, &name, &nic, limits),
                Err(e) => open_failed("app", &args, e),
            }
        }
        other => {
            let mut r = Report::new(other, "none");
            r.fail(
                "scenario",
                format!(
                    "unknown scenario '{other}' (known: smoke, echo, capture, garbage, chain, app, \
                     responder, ensogen, card-echo, agent)"
                ),
            );
            r
        }
    };
    exit_with(report)
}

fn exit_with(report: Report) -> ! {
    eprintln!("testbed-guest: {} {}", report.scenario, if report.pass { "passed" } else { "FAILED" });
    println!("{}", report.to_json_line());
    std::process::exit(if report.pass { 0 } else { 1 });
}

/// `02:00:00:00:00:02` → bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split([':', '-']).map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    v.try_into().ok()
}
