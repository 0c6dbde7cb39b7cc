//! What clap cannot express, checked right after parsing and before anything is
//! provisioned; and the usage error, with its JSON object under `--json`.

use super::*;

/// The invoked subcommand's matches, and its `clap::Command` for error messages.
pub struct Check<'a> {
    pub cmd: clap::Command,
    pub m: &'a ArgMatches,
}

impl Check<'_> {
    /// Whether `id` was given on the command line (not a default).
    pub fn given(&self, id: &str) -> bool {
        self.m.ids().any(|i| i.as_str() == id) && self.m.value_source(id) == Some(ValueSource::CommandLine)
    }

    /// `--name <NAME>`, as clap writes the argument in its messages.
    pub fn arg(&self, id: &str) -> String {
        self.cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .map_or_else(|| format!("--{}", id.replace('_', "-")), |a| a.to_string())
    }

    pub fn invalid(&self, id: &str, value: impl Display, why: impl Display) -> clap::Error {
        let msg = format!("invalid value '{value}' for '{}': {why}", self.arg(id));
        self.cmd.clone().error(ErrorKind::ValueValidation, msg)
    }

    pub fn conflict(&self, id: &str, other: &str) -> clap::Error {
        let msg = format!("the argument '{}' cannot be used with {other}", self.arg(id));
        self.cmd.clone().error(ErrorKind::ArgumentConflict, msg)
    }

    /// Refuses the options in `ids` (they configure guests) when the driver runs natively.
    pub fn guest_only(&self, transport: Transport, ids: &[&str]) -> Result<(), clap::Error> {
        match ids.iter().find(|id| self.given(id)) {
            Some(id) if transport == Transport::Native => Err(self.conflict(id, "'--transport native'")),
            _ => Ok(()),
        }
    }

    /// `--plot FILE` is written after the run: its folder must exist now.
    pub fn plot(&self, plot: Option<&Path>) -> Result<(), clap::Error> {
        let Some(p) = plot else { return Ok(()) };
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if p.is_dir() {
            Err(self.invalid("plot", p.display(), "this is a folder: give the path of the SVG file to write"))
        } else if !dir.is_dir() {
            Err(self.invalid(
                "plot",
                p.display(),
                format!("no folder {} to write the SVG into", dir.display()),
            ))
        } else {
            Ok(())
        }
    }
}

/// Checks what clap cannot express, right after parsing, before anything is provisioned.
pub fn check(cli: &Cli, root: &clap::Command, m: &ArgMatches) -> Result<(), clap::Error> {
    let (mut cmd, mut m) = (root, m);
    while let Some((name, sub)) = m.subcommand() {
        let Some(c) = cmd.find_subcommand(name) else { break };
        (cmd, m) = (c, sub);
    }
    let c = Check { cmd: cmd.clone(), m };
    let packetized_pipes = |pipes: u32, with: &str| {
        if pipes > PACKETIZED_QUEUES {
            Err(c.invalid(
                "pipes",
                pipes,
                format!(
                    "{pipes} is not in 1..={PACKETIZED_QUEUES} with {with}: the packetized NIC has \
                     {PACKETIZED_QUEUES} queue pairs"
                ),
            ))
        } else {
            Ok(())
        }
    };
    match &cli.cmd {
        Cmd::Run { scenario: Scenario::Echo { echo, .. } } if echo.nic == NicKind::Packetized => {
            packetized_pipes(echo.pipes, "--nic packetized")?;
            if echo.garbage_first {
                return Err(
                    c.conflict("garbage_first", "'--nic packetized' (it scribbles over Ensō registers)")
                );
            }
            if echo.model == EngineModel::Rtl {
                return Err(c.invalid(
                    "model",
                    "rtl",
                    "the RTL is the Ensō NIC's queue engine: use it with --nic enso",
                ));
            }
            if let Some(id) = ["registers", "extensions"].into_iter().find(|id| c.given(id)) {
                return Err(c.conflict(id, "'--nic packetized' (it sets up the Ensō NIC)"));
            }
        }
        Cmd::Run { scenario: Scenario::Chain { transport, mode, enso, .. } } => {
            c.guest_only(*transport, &["accel", "timeout", "console"])?;
            if enso.extensions == run::DriverExtensions::None && *mode != crate::scenarios::chain::Mode::Cpu {
                return Err(c.conflict(
                    "extensions",
                    "'--mode nagare', 'glue' or 'both' (the switch modes use the NIC's stream extension)",
                ));
            }
        }
        Cmd::Run { scenario: Scenario::App { transport, .. } } => {
            c.guest_only(*transport, &["accel", "timeout", "console"])?;
        }
        Cmd::Run { scenario: Scenario::CardEcho { viommu: crate::vm::Viommu::On, .. } } => {
            return Err(c.invalid(
                "viommu",
                "on",
                "the program gives the device physical addresses: use off or passthrough",
            ));
        }
        Cmd::Run { scenario: Scenario::PeerEcho { peer, .. } } => {
            if peer.link != crate::scenarios::peer::LinkKind::Udp {
                if let Some(id) = ["udp_local", "udp_remote", "peer_netns"].into_iter().find(|id| c.given(id))
                {
                    return Err(c.conflict(id, "'--link vhost-user' (it is a --link udp option)"));
                }
            }
            if let Some(ns) = &peer.peer_netns {
                if peer.udp_local.is_none() || peer.udp_remote.is_none() {
                    return Err(c.invalid(
                        "peer_netns",
                        ns,
                        "give --udp-local and --udp-remote too: 127.0.0.1 here is not the peer's",
                    ));
                }
                if ns.contains('/') || !Path::new("/run/netns").join(ns).exists() {
                    return Err(c.invalid(
                        "peer_netns",
                        ns,
                        "no such network namespace (see `ip netns list`)",
                    ));
                }
            }
        }
        Cmd::Run { scenario: Scenario::GenEcho { transport, pcap, .. } } => {
            c.guest_only(*transport, &["accel"])?;
            if let Some(p) = pcap {
                // The same check EnsōGen makes, so a capture it cannot send is refused now.
                guest_apps::ensogen::load_pcap(p).map_err(|e| c.invalid("pcap", p.display(), e))?;
            }
        }
        Cmd::Bench { bench: Bench::Echo { transport, nic, notify, pipes, plot, .. } } => {
            if nic.contains(&NicKind::Packetized) {
                packetized_pipes(*pipes, "the packetized NIC in --nic")?;
            }
            c.guest_only(*transport, &["accel"])?;
            if !nic.contains(&NicKind::Enso) && c.given("notify") {
                return Err(c.conflict("notify", "'--nic packetized' (the modes are the Ensō NIC's)"));
            }
            if let Some(n) = notify.iter().find(|n| **n != Notify::Reactive) {
                if *transport == Transport::Vm {
                    return Err(c.invalid(
                        "notify",
                        n.name(),
                        "--transport vm runs reactive notifications only",
                    ));
                }
            }
            c.plot(plot.as_deref())?;
        }
        Cmd::Bench { bench: Bench::Apps { plot, .. } } => c.plot(plot.as_deref())?,
        Cmd::Serve(a) => {
            if let Err(why) = a.config() {
                let id = if why.contains("port") {
                    "port"
                } else if why.contains("model") {
                    "model"
                } else {
                    "pipes"
                };
                return Err(c.invalid(id, "", why));
            }
        }
        Cmd::Up(a) => {
            if let Some(d) = a.share.as_ref().filter(|d| !d.is_dir()) {
                return Err(c.invalid("share", d.display(), "no such folder"));
            }
            if let Some(t) = &a.topology {
                if let Err(e) = crate::up::load_topology(t) {
                    return Err(c.cmd.clone().error(ErrorKind::ValueValidation, format!("{e:#}")));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A usage error: clap's message on stderr, exit code 2; with `--json` among the
/// arguments, also the failure's JSON object on stdout.
pub fn usage_error(e: clap::Error, args: &[OsString]) -> ! {
    if e.use_stderr() && args.iter().skip(1).any(|a| a == "--json") {
        let text = e.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let message = message.join(" ");
        let mut o = serde_json::Map::new();
        if let Some((key, name)) = label_from_args(args) {
            o.insert(key.into(), name.into());
        }
        o.insert("pass".into(), false.into());
        o.insert("error".into(), message.strip_prefix("error: ").unwrap_or(&message).into());
        println!("{}", serde_json::Value::Object(o));
    }
    e.exit()
}

/// The JSON key and name of the command that `args` invoke, when they name one that
/// prints JSON (`run <scenario>`, `bench <benchmark>`).
pub fn label_from_args(args: &[OsString]) -> Option<(&'static str, String)> {
    let mut words = args.iter().skip(1).filter_map(|a| a.to_str()).filter(|a| !a.starts_with('-'));
    let top = words.next()?;
    let key = match top {
        "run" => "scenario",
        "bench" => "benchmark",
        _ => return None,
    };
    let name = words.next()?;
    Cli::command().find_subcommand(top)?.find_subcommand(name).map(|_| (key, name.to_string()))
}
