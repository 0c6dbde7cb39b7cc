//! Finding or building the QEMU that runs our guests: 10.1 or newer with `vfio-user-pci`.
//!
//! Order: `$QEMU`, then `qemu-system-x86_64` on PATH, if either is new enough and lists
//! the device (every patch in qemu-patches/ is a build-only fix, so a stock QEMU works);
//! otherwise our build from Debian's QEMU source package, cached under the user's cache
//! directory by QEMU version + patch hash.

use crate::cache::{self, KeyHasher};
use crate::steps;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian source package version we build.
pub const QEMU_DEBIAN_VERSION: &str = "1:10.2.2+ds-1";

/// A QEMU binary and the firmware folder to pass with `-L` (None: its built-in path).
#[derive(Clone, Debug)]
pub struct Qemu {
    pub bin: PathBuf,
    pub firmware: Option<PathBuf>,
    pub version: String,
}

/// `(major, minor)` and the version text of a QEMU binary.
fn version_of(bin: &Path) -> Option<((u32, u32), String)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?.to_string();
    let mut it = v.split('.').map(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u32>());
    let major = it.next()?.ok()?;
    let minor = it.next()?.ok()?;
    Some(((major, minor), v))
}

fn has_vfio_user(bin: &Path) -> bool {
    Command::new(bin)
        .args(["-machine", "none", "-device", "help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("vfio-user-pci"))
}

/// Why a candidate QEMU was passed over, or None when it is usable.
fn unusable(bin: &Path) -> Option<String> {
    match version_of(bin) {
        None => Some("does not run or print a version".into()),
        Some((v, text)) if v < (10, 1) => Some(format!("is version {text}; 10.1 or newer is needed")),
        Some(_) if !has_vfio_user(bin) => Some("has no vfio-user-pci device".into()),
        Some(_) => None,
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The cache folder of our build for the current patches.
pub fn build_dir(root: &Path) -> Result<PathBuf> {
    let patches = root.join("qemu-patches");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&patches)
        .with_context(|| format!("read {}", patches.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = KeyHasher::default();
    h.add("version", QEMU_DEBIAN_VERSION.as_bytes());
    for f in &files {
        h.add_file(f)?;
    }
    let ver = QEMU_DEBIAN_VERSION.replace([':', '+', '~'], "_");
    Ok(cache::root().join("qemu").join(format!("{ver}-{}", h.hex16())))
}

/// Finds a usable QEMU or builds one. Progress goes to stderr.
pub fn ensure_qemu(root: &Path) -> Result<Qemu> {
    if let Some(q) = std::env::var_os("QEMU") {
        let bin = PathBuf::from(q);
        match unusable(&bin) {
            None => {
                let version = version_of(&bin).map(|v| v.1).unwrap_or_default();
                return Ok(Qemu { bin, firmware: None, version });
            }
            Some(why) => bail!("$QEMU={} {why}; unset QEMU to let the testbed build one", bin.display()),
        }
    }
    if let Some(bin) = which("qemu-system-x86_64") {
        match unusable(&bin) {
            None => {
                let version = version_of(&bin).map(|v| v.1).unwrap_or_default();
                return Ok(Qemu { bin, firmware: None, version });
            }
            Some(why) => eprintln!("[testbed] qemu: {} {why}; using the testbed's own build", bin.display()),
        }
    }
    let dir = build_dir(root)?;
    let bin = dir.join("bin/qemu-system-x86_64");
    if !bin.is_file() {
        eprintln!("[testbed] qemu: building QEMU {QEMU_DEBIAN_VERSION} with vfio-user (a few minutes, once)");
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("qemu-patches/build-qemu.sh")).arg(&dir).arg(QEMU_DEBIAN_VERSION);
        let log = dir.with_extension("log");
        let _ = std::fs::remove_file(&log);
        steps::run_logged("qemu build", cmd, &log)?;
    }
    if let Some(why) = unusable(&bin) {
        bail!("the QEMU built at {} {why}; delete {} to rebuild", bin.display(), dir.display());
    }
    let version = version_of(&bin).map(|v| v.1).unwrap_or_default();
    Ok(Qemu { bin, firmware: Some(dir.join("fw")), version })
}
