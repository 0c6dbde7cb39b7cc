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

/// The key of our build: a hash of everything in qemu-patches/ (the patches, the device
/// set and the build script). The cache folder is `qemu/<debian version>-<key>`: the version
/// is whichever the build script found newest in Debian's archive when it built.
pub fn build_key(root: &Path) -> Result<String> {
    let patches = root.join("qemu-patches");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&patches)
        .with_context(|| format!("read {}", patches.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = KeyHasher::default();
    for f in &files {
        h.add_file(f)?;
    }
    Ok(h.hex16())
}

/// Our cached builds for `key`, newest Debian version first (the folder names sort by
/// version well enough for the few a cache holds; ties do not matter).
fn cached_builds(parent: &Path, key: &str) -> Vec<PathBuf> {
    let suffix = format!("-{key}");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&suffix))
                && p.join("bin/qemu-system-x86_64").is_file()
        })
        .collect();
    dirs.sort();
    dirs.reverse();
    dirs
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
    let key = build_key(root)?;
    let parent = cache::root().join("qemu");
    let dir = match cached_builds(&parent, &key).into_iter().next() {
        Some(dir) => dir,
        None => {
            eprintln!(
                "[testbed] qemu: building the newest QEMU >= 10.1 from Debian's sources, with vfio-user \
                 (a few minutes, once)"
            );
            std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
            let mut cmd = Command::new("bash");
            cmd.arg(root.join("qemu-patches/build-qemu.sh")).arg(&parent).arg(&key);
            let log = parent.join(format!("build-{key}.log"));
            let _ = std::fs::remove_file(&log);
            if let Err(e) = steps::run_logged("qemu build", cmd, &log) {
                // The script explains a failed source search in its last lines: show them.
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(12).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{e:#}\n{}", tail.join("\n"));
            }
            cached_builds(&parent, &key).into_iter().next().with_context(|| {
                format!(
                    "the QEMU build finished but left no {}/*-{key}/bin/qemu-system-x86_64",
                    parent.display()
                )
            })?
        }
    };
    let bin = dir.join("bin/qemu-system-x86_64");
    if let Some(why) = unusable(&bin) {
        bail!("the QEMU built at {} {why}; delete {} to rebuild", bin.display(), dir.display());
    }
    let version = version_of(&bin).map(|v| v.1).unwrap_or_default();
    Ok(Qemu { bin, firmware: Some(dir.join("fw")), version })
}
