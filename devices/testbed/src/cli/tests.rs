//! The command line: its shape, its limits, and the checks that refuse bad combinations.

use super::*;

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn limits_match_the_code_that_consumes_the_values() {
    assert!(ENSO_PIPES <= u64::from(enso_nic::EnsoConfig::default().num_pipes));
    assert_eq!(PACKETIZED_QUEUES, packet_nic::PacketNicConfig::default().num_queues);
    assert_eq!(MAX_FRAME as usize, wire::generator::MAX_SIZE);
    assert!(MIN_FRAME as usize >= wire::generator::MIN_SIZE);
    assert!(MAX_FRAME as usize <= testbed_regs::enso::MAX_RX_PACKET);
    assert!(MAX_FRAME as usize <= testbed_regs::packetized::MAX_FRAME);
    assert_eq!(guest_apps::ensogen::MIN_SIZE, 60);
    assert_eq!(guest_apps::ensogen::MAX_SIZE, 1514);
    assert_eq!(1024 + (ENSOGEN_MAX_FLOWS - 1), u64::from(u16::MAX));
    let model = crate::bench::latency::Params::new(crate::bench::latency::Mode::Reactive);
    assert_eq!(MODEL_MAX_BATCH as usize, model.packets);
    let names: Vec<&str> = AppName::value_variants().iter().map(|a| a.name()).collect();
    assert_eq!(names, guest_apps::netapp::NAMES);
    for a in AppName::value_variants() {
        assert_eq!(a.to_possible_value().map(|v| v.get_name().to_string()), Some(a.name().to_string()));
    }
    for s in ChainShape::value_variants() {
        let spelled = s.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        assert_eq!(guest_apps::chain::Shape::parse(&spelled), Some(s.shape()));
        assert_eq!(s.shape().name(), spelled);
    }
    for d in crate::rig::DeviceKind::value_variants() {
        assert_eq!(d.to_possible_value().map(|v| v.get_name().to_string()), Some(d.name().to_string()));
    }
}

fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
    let args: Vec<OsString> =
        std::iter::once("testbed").chain(args.iter().copied()).map(Into::into).collect();
    parse(&args)
}

#[test]
fn defaults_pass_the_checks() {
    for args in [
        &["run", "smoke"][..],
        &["run", "echo"],
        &["run", "echo", "--nic", "packetized"],
        &["run", "chain"],
        &["run", "chain", "--transport", "native", "--keep"],
        &["run", "app", "--name", "mica"],
        &["run", "app", "--name", "logmon", "--transport", "native"],
        &["run", "peer-echo"],
        &["run", "peer-echo", "--link", "udp"],
        &[
            "run",
            "peer-echo",
            "--link",
            "udp",
            "--udp-local",
            "127.0.0.1:0",
            "--udp-remote",
            "127.0.0.1:7701",
        ],
        &["run", "peer-capture"],
        &["run", "gen-echo"],
        &["run", "card-echo"],
        &["run", "card-echo", "--registers", "mmio", "--model", "rtl", "--viommu", "passthrough"],
        &["run", "echo", "--registers", "mmio", "--extensions", "none"],
        &["run", "chain", "--registers", "mmio", "--extensions", "none"],
        &["run", "gen-echo", "--registers", "mmio", "--extensions", "none"],
        &["serve", "enso", "--registers", "mmio", "--extensions", "none"],
        &["bench", "echo", "--served-pipes", "64,8192"],
        &["run", "gen-echo", "--transport", "native", "--timeout", "30"],
        &["bench", "echo"],
        &["bench", "echo", "--transport", "vm", "--accel", "tcg"],
        &["bench", "apps", "--transport", "native"],
        &["demo"],
        &["accel"],
        &["serve", "smoke", "--socket", "/tmp/x.sock"],
    ] {
        if let Err(e) = parse_args(args) {
            panic!("{args:?}: {}", e.render());
        }
    }
}

#[test]
fn documented_spellings_parse() {
    let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::Chain { chain, .. } } }) =
        parse_args(&["run", "chain", "--chain", "crypto,ml"])
    else {
        panic!("--chain crypto,ml")
    };
    assert_eq!(chain, ChainShape::CryptoMl);
    let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::Chain { chain, .. } } }) =
        parse_args(&["run", "chain", "--chain", "crypto"])
    else {
        panic!("--chain crypto")
    };
    assert_eq!(chain, ChainShape::Crypto);
    let Ok(Cli { cmd: Cmd::Run { scenario: Scenario::App { name, .. } } }) =
        parse_args(&["run", "app", "--name", "nitrosketch"])
    else {
        panic!("--name nitrosketch")
    };
    assert_eq!(name, AppName::Nitrosketch);
}

#[test]
fn combinations_are_refused_with_the_option_named() {
    for (args, option) in [
        (&["run", "echo", "--nic", "packetized", "--pipes", "9"][..], "--pipes"),
        (&["run", "echo", "--nic", "packetized", "--garbage-first"], "--garbage-first"),
        (&["run", "echo", "--nic", "packetized", "--model", "rtl"], "--model"),
        (&["run", "echo", "--nic", "packetized", "--registers", "mmio"], "--registers"),
        (&["run", "chain", "--mode", "both", "--extensions", "none"], "--extensions"),
        (&["run", "card-echo", "--viommu", "on"], "--viommu"),
        (&["run", "card-echo", "--size", "60"], "--size"),
        (&["run", "chain", "--transport", "native", "--accel", "tcg"], "--accel"),
        (&["run", "app", "--name", "mica", "--transport", "native", "--console"], "--console"),
        (&["run", "gen-echo", "--transport", "native", "--accel", "kvm"], "--accel"),
        (&["run", "gen-echo", "--pcap", "/nonexistent/x.pcap"], "--pcap"),
        (&["run", "peer-echo", "--udp-remote", "127.0.0.1:7701"], "--udp-remote"),
        (&["run", "peer-echo", "--link", "udp", "--peer-netns", "tbA"], "--peer-netns"),
        (
            &[
                "run",
                "peer-echo",
                "--link",
                "udp",
                "--peer-netns",
                "no-such-ns-here",
                "--udp-local",
                "10.77.0.2:7702",
                "--udp-remote",
                "10.77.0.1:7701",
            ],
            "--peer-netns",
        ),
        (&["run", "peer-echo", "--link", "udp", "--udp-local", "nowhere"], "--udp-local"),
        (&["bench", "echo", "--pipes", "9"], "--pipes"),
        (&["bench", "echo", "--accel", "tcg"], "--accel"),
        (&["bench", "echo", "--nic", "packetized", "--notify", "reactive"], "--notify"),
        (&["bench", "echo", "--transport", "vm", "--notify", "per-packet"], "--notify"),
        (&["bench", "echo", "--plot", "/nonexistent/x.svg"], "--plot"),
        (&["bench", "apps", "--plot", "/"], "--plot"),
    ] {
        match parse_args(args) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{args:?}");
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                assert!(first.starts_with("error: ") && first.contains(option), "{args:?}: {text}");
            }
        }
    }
}
