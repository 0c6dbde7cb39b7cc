//! `testbed serve DEVICE`: one device set served in the foreground for a QEMU the user starts
//! by hand, until SIGINT or SIGTERM; then its counters as one JSON object.

use crate::rig::{self, DeviceConfig, DeviceKind, PortAttach, Served};
use anyhow::{Context, Result};
use provision::cache;
use std::path::PathBuf;

/// Where sockets go by default: `$XDG_RUNTIME_DIR/enso-testbed`, else `run/` under the
/// cache; created 0700.
pub fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("enso-testbed"),
        None => cache::root().join("run"),
    }
}

/// The default socket (or, for nagare, folder) of a device.
pub fn default_place(kind: DeviceKind) -> PathBuf {
    let dir = default_socket_dir();
    match kind {
        DeviceKind::Nagare => dir.join("nagare"),
        k => dir.join(format!("{}.sock", k.name())),
    }
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts afterwards), so that
/// [`wait_for_signal`] receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local set; pthread_sigmask changes only this
    // thread's mask (threads spawned later inherit it, which is what we want: the signals are
    // then taken by sigwait below and never interrupt a server thread).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM; returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block_signals and `sig` is a valid out pointer.
    while unsafe { libc::sigwait(set, &mut sig) } != 0 {}
    sig
}

/// Serves `cfg` on `socket` (or the default place) with its port on `attach`. Prints each
/// function's QEMU `-device` option on stdout, waits for SIGINT/SIGTERM, stops, and prints
/// the counters as one JSON object on stdout.
pub fn serve(cfg: &DeviceConfig, attach: &PortAttach, socket: Option<PathBuf>) -> Result<()> {
    let set = block_signals();
    let place = socket.unwrap_or_else(|| default_place(cfg.kind));
    if cfg.kind != DeviceKind::Nagare {
        if let Some(parent) = place.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            rig::private_dir(parent)?;
        }
    }
    let served = Served::start(cfg, attach, &place)
        .with_context(|| format!("serve {} on {}", cfg.kind.name(), place.display()))?;
    for f in &served.functions {
        println!("-device {}", shell_quote(&f.qemu_device(None)));
    }
    eprintln!(
        "[testbed] serving {} ({} function(s)); Ctrl-C or SIGTERM stops it",
        cfg.kind.name(),
        served.functions.len()
    );
    if let Some(a) = served.udp_addr() {
        eprintln!(
            "[testbed] Ethernet port: UDP {a}, one frame per datagram (QEMU: -netdev dgram,id=n,local.type=inet,\
             local.host=127.0.0.1,local.port=PORT,remote.type=inet,remote.host={},remote.port={})",
            a.ip(),
            a.port()
        );
    }
    eprintln!(
        "[testbed] QEMU needs shared guest memory (-object memory-backend-memfd,id=mem,size=512M,share=on \
         -machine q35,memory-backend=mem) and, for VFIO drivers in the guest, -device intel-iommu,caching-mode=on \
         before the devices and intel_iommu=on on the kernel line"
    );
    let sig = wait_for_signal(&set);
    eprintln!("[testbed] signal {sig}: stopping");
    let counters = served.counters();
    served.stop();
    println!("{counters}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_json_one_word() {
        assert_eq!(shell_quote("plain/path.sock"), "plain/path.sock");
        assert_eq!(shell_quote(r#"{"a":"b c"}"#), r#"'{"a":"b c"}'"#);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
