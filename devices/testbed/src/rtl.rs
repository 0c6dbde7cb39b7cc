//! Provisioning the RTL co-simulation (`--model rtl`) the way QEMU and the guest image are
//! provisioned: on first use, with progress, cached. Debian's Verilator (with g++ and make)
//! is installed when missing, then `rtl_cosim` verilates and compiles the model into the
//! cache and loads it.

use anyhow::{bail, Result};
use provision::cache;
use std::process::Command;
use std::time::Instant;

/// The Debian packages the co-simulation needs, by the program each provides.
const PACKAGES: [(&str, &str); 3] = [("verilator", "verilator"), ("g++", "g++"), ("make", "make")];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Installs the missing packages with apt-get (as root, or through sudo).
fn install(packages: &[&str]) -> Result<()> {
    let root = nix_is_root();
    if !root && !on_path("sudo") {
        bail!(
            "the RTL co-simulation needs {}: install them (apt-get install {}) or run as root",
            packages.join(", "),
            packages.join(" ")
        );
    }
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            cmd.arg("apt-get");
        }
        let out = cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args).output()?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).lines().rev().take(8).collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    };
    let t = Instant::now();
    eprintln!("[testbed] rtl: installing {} (Debian packages, once) ...", packages.join(", "));
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)?;
    eprintln!("[testbed] rtl: installed in {:.0?}", t.elapsed());
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes the co-simulation model available in this process: installs Verilator, g++ and
/// make when missing, builds the model into the cache when this build's RTL has none yet
/// (about a minute, once), and loads it. Cheap when already loaded. Returns the library.
pub fn ensure() -> Result<std::path::PathBuf> {
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(prog, _)| !on_path(prog)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        install(&missing)?;
    }
    let start = Instant::now();
    let built = std::sync::atomic::AtomicBool::new(false);
    let progress = |step: &str| {
        if !built.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("[testbed] rtl: building the co-simulation model (once per RTL change)");
        }
        eprintln!("[testbed] rtl: {step} ({:.0?} so far)", start.elapsed());
    };
    let lib = rtl_cosim::provision(&cache::root(), &progress).map_err(anyhow::Error::msg)?;
    if built.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("[testbed] rtl: model built in {:.0?}: {}", start.elapsed(), lib.display());
    }
    Ok(lib)
}
