//! `testbed`: provisions QEMU and the guest image, serves emulated devices over vfio-user,
//! boots guests that run our drivers, and reports what both sides saw.
//!
//! Every option is checked before anything is provisioned, built or booted: ranges and
//! closed sets by clap while parsing, the combinations clap cannot express by [`check`]
//! right after. Both exit with code 2 and a clap-style message. With `--json`, every exit
//! path of a command prints exactly one JSON object on stdout; a failure prints
//! `{"pass": false, "error": "..."}` with the command's `scenario` or `benchmark`.

mod bench;
mod check;
mod options;
mod scenario;
#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::accel::AccelChoice;
use crate::bench::Notify;
use crate::scenarios::run;
use crate::scenarios::run::{EngineModel, NicKind, Transport};
use crate::up::cli::{self as up, ConsoleArgs, DaemonArgs, DownArgs, ExecArgs, LsArgs, ServeArgs, UpArgs};
use bench::Bench;
use check::*;
use guest_image as image;
use options::*;
use provision::{cache, qemu};
use scenario::Scenario;

#[derive(Parser)]
#[command(name = "testbed", version, about = "Emulated testbed for streaming intra-host communication")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Find or build QEMU (>= 10.1 with vfio-user-pci); prints the binary's path.
    Qemu,
    /// Build the guest program and image (cached); prints the kernel and initrd paths.
    Image {
        /// Also fetch the image kernel's headers (linux-headers, linux-kbuild; cached) and
        /// print their build folder (third line), for `make -C DIR M=$PWD modules`.
        #[arg(long)]
        headers: bool,
    },
    /// Print the accelerator guests will use (probing KVM if needed).
    Accel {
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelChoice,
    },
    /// Provision the RTL co-simulation (`--model rtl`): installs Debian's Verilator when
    /// missing and builds the verilated model (cached); prints the library's path.
    Rtl,
    /// Run a scenario in a guest; exits 0 only if every assertion held.
    Run {
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// The demo: boots a guest with the emulated devices, runs the driver, prints a report.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Benchmarks (run a release build: `cargo run --release -p testbed -- bench …`).
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Serve an emulated device (or the Nagare switch with its devices) on vfio-user sockets
    /// until SIGINT or SIGTERM, for a QEMU you start yourself; prints each function's QEMU
    /// -device option, and the counters as JSON at the end.
    Serve(ServeArgs),
    /// Boot long-lived guests with emulated devices (a topology file, or guest0 with an Ensō
    /// NIC on a UDP port) and return once they are ready.
    Up(UpArgs),
    /// List the guests that are up.
    Ls(LsArgs),
    /// Run a command in a guest: its stdout, stderr (kept apart) and exit status.
    Exec(ExecArgs),
    /// Attach this terminal to a guest's console (Ctrl-] leaves).
    Console(ConsoleArgs),
    /// Stop one guest, or everything `up` started.
    Down(DownArgs),
    /// The daemon `up` starts (internal).
    #[command(name = "__daemon", hide = true)]
    Daemon(DaemonArgs),
    /// Long-lived device servers under turns of echo, chain, garbage and killed clients for
    /// M minutes; checks memory, fds, the traffic's accounting and that every device still
    /// answers a well-behaved client.
    Soak(crate::scenarios::soak::SoakArgs),
}

impl Cmd {
    /// With `--json`: the key and the name this command's JSON object carries
    /// (`"scenario": "echo"`, `"benchmark": "apps"`).
    pub fn json(&self) -> Option<(&'static str, &'static str)> {
        let (json, key, name) = match self {
            Cmd::Run { scenario } => match scenario {
                Scenario::Echo { json, .. } => (json, "scenario", "echo"),
                Scenario::Chain { json, .. } => (json, "scenario", "chain"),
                Scenario::App { json, .. } => (json, "scenario", "app"),
                Scenario::PeerEcho { json, .. } => (json, "scenario", "peer-echo"),
                Scenario::PeerCapture { json, .. } => (json, "scenario", "peer-capture"),
                Scenario::GenEcho { json, .. } => (json, "scenario", "gen-echo"),
                Scenario::CardEcho { json, .. } => (json, "scenario", "card-echo"),
                Scenario::Smoke { json, .. } => (json, "scenario", "smoke"),
            },
            Cmd::Bench { bench: Bench::Apps { json, .. } } => (json, "benchmark", "apps"),
            Cmd::Bench { bench: Bench::Echo { json, .. } } => (json, "benchmark", "echo"),
            _ => return None,
        };
        json.then_some((key, name))
    }
}

/// Parses and checks the command line.
pub fn parse(args: &[OsString]) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    let m = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))?;
    check(&cli, &cmd, &m)?;
    Ok(cli)
}

/// Prints a command's result: the JSON object under `--json` (when it has one), else the
/// readable text. `pass` decides the exit code.
fn finish(json: bool, text: &str, json_line: &str, pass: bool) -> ExitCode {
    if json && !json_line.is_empty() {
        println!("{json_line}");
    } else {
        print!("{text}");
    }
    status(i32::from(!pass))
}

/// An exit status as `std::process::exit` takes it: only the low 8 bits reach the parent.
fn status(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

/// The guests' environment for the VM transport (none natively).
pub fn provision(transport: Transport, accel: AccelChoice) -> Result<Option<run::Env>> {
    Ok(match transport {
        Transport::Native => None,
        Transport::Vm => Some(run::Env::provision(accel)?),
    })
}

/// Runs a parsed and checked command; `json` is its `--json` flag.
fn execute(cmd: Cmd, json: bool) -> Result<ExitCode> {
    match cmd {
        Cmd::Qemu | Cmd::Image { .. } | Cmd::Rtl | Cmd::Accel { .. } => setup(cmd),
        Cmd::Run { scenario: s } => scenario::handle(s, json),
        Cmd::Bench { bench: b } => bench::handle(b, json),
        Cmd::Demo { vm } => demo(&vm),
        Cmd::Serve(a) => up::serve(&a).map(status),
        Cmd::Up(a) => up::up(&a).map(status),
        Cmd::Ls(a) => up::ls(&a).map(status),
        Cmd::Exec(a) => up::exec(&a).map(status),
        Cmd::Console(a) => up::console(&a).map(status),
        Cmd::Down(a) => up::down(&a).map(status),
        Cmd::Daemon(a) => up::daemon(&a).map(status),
        Cmd::Soak(a) => crate::scenarios::soak::run(&a).map(status),
    }
}

/// `qemu`, `image`, `rtl` and `accel`: provision one thing and print where it is.
fn setup(cmd: Cmd) -> Result<ExitCode> {
    let out = match cmd {
        Cmd::Qemu => {
            format!("{}\n", cache::workspace_root().and_then(|r| qemu::ensure_qemu(&r))?.bin.display())
        }
        Cmd::Image { headers } => {
            let img = cache::workspace_root()
                .and_then(|root| image::build_guest_binary(&root))
                .and_then(|g| image::ensure_image(&g))?;
            let mut out = format!("{}\n{}\n", img.kernel.display(), img.initrd.display());
            if headers {
                out += &format!("{}\n", image::ensure_headers(&img)?.display());
            }
            out
        }
        Cmd::Rtl => format!("{}\n", crate::rtl::ensure()?.display()),
        Cmd::Accel { accel } => format!("{}\n", run::Env::provision(accel)?.accel.name()),
        _ => unreachable!("setup() takes the provisioning commands"),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The demo (see `crate::scenarios::demo`): six steps, then a one-screen summary naming the log
/// that holds the full reports.
fn demo(vm: &VmArgs) -> Result<ExitCode> {
    let d = run::Env::provision(vm.accel).and_then(|env| crate::scenarios::demo::run(&env, &vm.options()))?;
    print!("{}", d.summary());
    Ok(status(i32::from(!d.pass())))
}

/// The `testbed` program: parses and checks the command line (a usage error exits 2),
/// runs the command, and reports a failure once, on stderr (and as the command's JSON
/// object under `--json`).
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = parse(&args).unwrap_or_else(|e| usage_error(e, &args));
    let json = cli.cmd.json();
    execute(cli.cmd, json.is_some()).unwrap_or_else(|e| {
        if let Some((key, name)) = json {
            println!("{}", serde_json::json!({key: name, "pass": false, "error": format!("{e:#}")}));
        }
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
