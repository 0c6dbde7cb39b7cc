//! The command-line side of `serve`, `up`, `ls`, `exec`, `console` and `down`: argument
//! structs (flattened into the `testbed` CLI) and their handlers, each returning the
//! process's exit code.

use crate::accel::AccelChoice;
use crate::rig::{DeviceConfig, DeviceKind, PortAttach};
use crate::scenarios::run::{EngineModel, EnsoArgs};
use anyhow::{bail, Result};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// `testbed serve DEVICE`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The device model: one function, or nagare (the switch with an Ensō NIC, the crypto
    /// and the ML accelerator behind it: four functions).
    #[arg(value_enum)]
    pub device: DeviceKind,
    /// Where to listen: a socket path, or for nagare a folder that gets one socket per
    /// function. Default: $XDG_RUNTIME_DIR/enso-testbed/DEVICE.sock (or a folder under the
    /// cache), created 0700; sockets are 0600.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Ensō pipes served (enso, nagare).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub pipes: Option<u32>,
    /// The Ensō NIC's queue engine (enso, nagare).
    #[arg(long, value_enum, default_value = "rust")]
    pub model: EngineModel,
    /// What the NIC's Ethernet port is attached to (enso, packetized, nagare): none,
    /// udp[:BIND[,PEER]] (one frame per datagram, as QEMU's -netdev dgram; BIND defaults to
    /// 127.0.0.1:0, and without PEER frames go to whoever sent last) or pcap:FILE (replayed
    /// once).
    #[arg(long, value_parser = PortAttach::parse, default_value = "none")]
    pub port: PortAttach,
    /// The Ensō NIC's register mode (enso, nagare), and the extensions the driver you will
    /// connect uses (none: the extension pages trap, so the final counters show any
    /// access as extension_accesses).
    #[command(flatten)]
    pub enso: EnsoArgs,
}

impl ServeArgs {
    /// Checks what clap cannot (before anything is served).
    pub fn config(&self) -> Result<DeviceConfig, String> {
        let cfg = DeviceConfig {
            kind: self.device,
            pipes: self.pipes,
            model: self.model,
            setup: self.enso.setup(),
        };
        if let Some(why) = cfg.invalid() {
            return Err(why);
        }
        if !self.device.has_port() && self.port != PortAttach::None {
            return Err(format!("--port: {} has no Ethernet port", self.device.name()));
        }
        Ok(cfg)
    }
}

/// `testbed serve`.
pub fn serve(a: &ServeArgs) -> Result<i32> {
    let cfg = a.config().map_err(anyhow::Error::msg)?;
    crate::serve::serve(&cfg, &a.port, a.socket.clone())?;
    Ok(0)
}

/// Where `up` and friends keep their state.
#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// The state folder (default: $TESTBED_STATE, else up/ under $XDG_RUNTIME_DIR/enso-testbed
    /// or the cache). Separate folders keep separate sets of guests apart.
    #[arg(long)]
    pub state: Option<PathBuf>,
}

/// `testbed up`.
#[derive(clap::Args, Clone, Debug)]
pub struct UpArgs {
    /// A topology file (TOML; see the README). Without one: guest0 with an Ensō NIC whose
    /// port is a UDP socket on 127.0.0.1.
    pub topology: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// The host folder mounted in every guest at /host (default: the working directory).
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// Accelerator: auto probes KVM once and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// How long the guests may take to be ready, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub timeout: u64,
    /// Print the state as JSON (as `ls --json`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `testbed up`.
pub fn up(a: &UpArgs) -> Result<i32> {
    // The topology is checked before anything is provisioned or booted.
    if let Some(p) = &a.topology {
        super::load_topology(p)?;
    }
    if let Some(s) = &a.share {
        if !s.is_dir() {
            bail!("--share {}: no such folder", s.display());
        }
    }
    let o = super::UpOptions {
        topology: a.topology.clone(),
        state: a.state.state.clone(),
        share: a.share.clone(),
        accel: a.accel,
        timeout: Duration::from_secs(a.timeout),
    };
    let st = super::up(&o)?;
    if a.json {
        println!("{}", super::ls_json(&st.guests));
    } else {
        print!("{}", super::render_up(&st, &super::state_dir(a.state.state.clone())));
    }
    Ok(0)
}

/// `testbed ls`.
#[derive(clap::Args, Clone, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// `[{name, state, devices: [{kind, pci}]}]`.
    #[arg(long)]
    pub json: bool,
}

pub fn ls(a: &LsArgs) -> Result<i32> {
    let guests = super::ls(a.state.state.clone());
    if a.json {
        println!("{}", super::ls_json(&guests));
    } else if guests.is_empty() {
        println!("no guests are up");
    } else {
        for g in &guests {
            let devs: Vec<String> = g
                .devices
                .iter()
                .flat_map(|d| d.functions.iter().map(move |f| format!("{}={}", f.name, f.pci)))
                .collect();
            println!("{:<12} {:<8} {}", g.name, g.state, devs.join(" "));
        }
    }
    Ok(0)
}

/// `testbed exec VM -- CMD…`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Send this process's standard input to the command (read to its end first).
    #[arg(short, long)]
    pub interactive: bool,
    /// Kill the command after this many seconds (exit status 124).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// The guest.
    pub vm: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn exec(a: &ExecArgs) -> Result<i32> {
    let stdin = if a.interactive {
        let mut b = vec![];
        std::io::stdin().read_to_end(&mut b)?;
        Some(b)
    } else {
        None
    };
    super::exec(a.state.state.clone(), &a.vm, &a.command, stdin, a.timeout.map(Duration::from_secs))
}

/// `testbed console VM`.
#[derive(clap::Args, Clone, Debug)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The guest.
    pub vm: String,
}

pub fn console(a: &ConsoleArgs) -> Result<i32> {
    super::console(a.state.state.clone(), &a.vm)?;
    Ok(0)
}

/// `testbed down [VM]`.
#[derive(clap::Args, Clone, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// One guest to stop (default: everything).
    pub vm: Option<String>,
}

pub fn down(a: &DownArgs) -> Result<i32> {
    let stopped = super::down(a.state.state.clone(), a.vm.as_deref())?;
    if stopped.is_empty() {
        eprintln!("[testbed] nothing was up");
    } else {
        eprintln!("[testbed] stopped {}", stopped.join(", "));
    }
    Ok(0)
}

/// `testbed __daemon` (started by `up`; not for people).
#[derive(clap::Args, Clone, Debug)]
pub struct DaemonArgs {
    #[arg(long)]
    pub state: PathBuf,
}

pub fn daemon(a: &DaemonArgs) -> Result<i32> {
    super::daemon(&a.state)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn serve_refuses_options_that_do_not_apply() {
        let t = T::try_parse_from(["t", "crypto", "--pipes", "4"]).unwrap();
        assert!(t.serve.config().unwrap_err().contains("pipes"));
        let t = T::try_parse_from(["t", "ml", "--port", "udp"]).unwrap();
        assert!(t.serve.config().unwrap_err().contains("no Ethernet port"));
        assert!(T::try_parse_from(["t", "enso", "--pipes", "0"]).is_err());
        assert!(T::try_parse_from(["t", "gpu"]).is_err());
        let t = T::try_parse_from(["t", "enso", "--pipes", "8192", "--port", "udp:127.0.0.1:0"]).unwrap();
        assert!(t.serve.config().is_ok());
    }
}
