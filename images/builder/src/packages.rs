//! Finding the Debian packages of the image through a private apt state (`debs/apt/`), and
//! downloading them into `debs/`.

use crate::deb;
use crate::{DAY, WHAT};
use anyhow::{anyhow, bail, Context, Result};
use provision::steps::run_logged;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const APT_SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
deb http://deb.debian.org/debian bookworm-updates main\n\
deb http://deb.debian.org/debian-security bookworm-security main\n";

const KERNEL_META: &str = "linux-image-amd64";
/// Stock Debian tools for the peer guest (`testbed run peer-*`), with the shared libraries
/// they need: OpenBSD netcat (busybox's `nc` has no UDP mode). libc6 and libgcc-s1 also let
/// dynamically linked programs built on a Debian 12 host run in the guest (`testbed exec`).
const TOOL_PKGS: &[&str] = &["netcat-openbsd", "libbsd0", "libmd0", "libc6", "libgcc-s1"];
const BUSYBOX_PKG: &str = "busybox-static";

/// Where the resolved package versions are recorded (`debs/resolved.json`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Resolved {
    /// Seconds since the epoch when the package lookup was done.
    resolved_at: u64,
    /// The sources the lookup used (a change forces a new lookup).
    sources: String,
    /// e.g. `linux-image-6.1.0-28-amd64`.
    pub(crate) kernel_package: String,
    pub(crate) kernel_package_version: String,
    pub(crate) kernel_deb: String,
    pub(crate) busybox_version: String,
    pub(crate) busybox_deb: String,
    /// The peer tools' packages (TOOL_PKGS, in that order).
    #[serde(default)]
    pub(crate) tools: Vec<ToolDeb>,
}

/// One tool package: name, version, .deb file name.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ToolDeb {
    pub(crate) package: String,
    pub(crate) version: String,
    pub(crate) deb: String,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Finds the current kernel and busybox packages and makes sure their .debs are in `debs`.
/// Uses the recorded result without touching the network when it is less than a day old.
pub(crate) fn resolve(debs: &Path) -> Result<Resolved> {
    let record = debs.join("resolved.json");
    let recorded: Option<Resolved> =
        std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let old: Option<Resolved> = recorded.clone().filter(|r: &Resolved| {
        r.sources == APT_SOURCES
            && debs.join(&r.kernel_deb).is_file()
            && debs.join(&r.busybox_deb).is_file()
            && r.tools.iter().map(|t| t.package.as_str()).eq(TOOL_PKGS.iter().copied())
            && r.tools.iter().all(|t| debs.join(&t.deb).is_file())
    });
    if let Some(r) = &old {
        if now_secs().saturating_sub(r.resolved_at) < DAY.as_secs() {
            return Ok(r.clone());
        }
    }
    // A record made for another tool list still tells which kernel .deb we have (~70 MB).
    // apt-get downloads into a folder of this process's, removed whatever happens.
    let dl = debs.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    let looked_up = lookup_packages(debs, &dl, recorded.as_ref());
    let _ = std::fs::remove_dir_all(&dl);
    match looked_up {
        Ok(r) => {
            std::fs::write(&record, serde_json::to_vec_pretty(&r)?)?;
            prune_debs(debs, &r);
            Ok(r)
        }
        Err(e) => match old {
            Some(mut r) => {
                // Try again in an hour rather than on every run.
                r.resolved_at = now_secs().saturating_sub(DAY.as_secs() - 3600);
                let _ = std::fs::write(&record, serde_json::to_vec_pretty(&r)?);
                eprintln!(
                    "[testbed] {WHAT}: warning: cannot refresh the Debian packages ({e:#}); \
                     using the ones resolved before ({}, busybox {})",
                    r.kernel_package, r.busybox_version
                );
                Ok(r)
            }
            None => Err(e.context(
                "cannot download the Debian kernel/busybox packages; check that deb.debian.org \
                 is reachable (and apt-get is installed)",
            )),
        },
    }
}

pub(crate) fn apt_command(apt: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.arg("-o")
        .arg(opt("Dir::Etc::SourceList", &apt.join("sources.list")))
        .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
        .arg("-o")
        .arg(opt("Dir::State::Lists", &apt.join("lists")))
        .arg("-o")
        .arg(opt("Dir::State::Status", &apt.join("status")))
        .arg("-o")
        .arg(opt("Dir::Cache", &apt.join("cache")))
        .args(["-o", "APT::Sandbox::User=root", "-o", "APT::Architecture=amd64", "-q"]);
    cmd
}

/// Prepares the private apt state in `debs/apt` and runs `apt-get update` when the package
/// lists are more than a day old (or always, with `force`). Returns whether it updated.
pub(crate) fn apt_update(debs: &Path, force: bool) -> Result<bool> {
    let apt = debs.join("apt");
    let log = debs.join("apt.log");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let sources = apt.join("sources.list");
    if std::fs::read_to_string(&sources).ok().as_deref() != Some(APT_SOURCES) {
        std::fs::write(&sources, APT_SOURCES)?;
        let _ = std::fs::remove_file(apt.join("updated"));
    }
    // An empty dpkg status, so the host's installed packages play no part.
    if !apt.join("status").exists() {
        std::fs::write(apt.join("status"), "")?;
    }
    let stamp = apt.join("updated");
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < DAY);
    if fresh && !force {
        return Ok(false);
    }
    let mut cmd = apt_command(&apt, "apt-get");
    cmd.args(["update", "--error-on=any"]);
    run_logged("apt-get update (bookworm)", cmd, &log)?;
    std::fs::write(&stamp, "")?;
    Ok(true)
}

fn lookup_packages(debs: &Path, dl: &Path, old: Option<&Resolved>) -> Result<Resolved> {
    let apt = debs.join("apt");
    let log = debs.join("apt.log");
    apt_update(debs, false)?;

    let download = |pkgs: &[&str]| -> Result<()> {
        let mut cmd = apt_command(&apt, "apt-get");
        cmd.current_dir(dl).arg("download").args(pkgs);
        run_logged(&format!("download {}", pkgs.join(" ")), cmd, &log)
    };
    download(&[KERNEL_META, BUSYBOX_PKG])?;
    let meta_deb = find_deb(dl, KERNEL_META)?;
    let depends = deb::field(&meta_deb, "Depends")?;
    let (kernel_package, wanted_version) = kernel_from_depends(&depends)
        .ok_or_else(|| anyhow!("{KERNEL_META}'s Depends has no linux-image-*-amd64 package: {depends:?}"))?;
    let busybox_deb = find_deb(dl, BUSYBOX_PKG)?;
    let busybox_version = deb::field(&busybox_deb, "Version")?;
    std::fs::rename(&busybox_deb, debs.join(file_name(&busybox_deb)))?;
    download(TOOL_PKGS)?;
    let mut tools = vec![];
    for pkg in TOOL_PKGS {
        let deb = find_deb(dl, pkg)?;
        let version = deb::field(&deb, "Version")?;
        std::fs::rename(&deb, debs.join(file_name(&deb)))?;
        tools.push(ToolDeb { package: pkg.to_string(), version, deb: file_name(&deb) });
    }
    // The kernel .deb is ~70 MB: keep the one we have when the metapackage still wants it.
    let (kernel_deb, kernel_package_version) = match old {
        Some(o)
            if o.kernel_package == kernel_package
                && wanted_version.as_deref() == Some(o.kernel_package_version.as_str())
                && debs.join(&o.kernel_deb).is_file() =>
        {
            (o.kernel_deb.clone(), o.kernel_package_version.clone())
        }
        _ => {
            download(&[&kernel_package])?;
            let deb = find_deb(dl, &kernel_package)?;
            let version = deb::field(&deb, "Version")?;
            std::fs::rename(&deb, debs.join(file_name(&deb)))?;
            (file_name(&deb), version)
        }
    };
    let r = Resolved {
        resolved_at: now_secs(),
        sources: APT_SOURCES.to_string(),
        kernel_package_version,
        busybox_version,
        kernel_package,
        kernel_deb,
        busybox_deb: file_name(&busybox_deb),
        tools,
    };
    Ok(r)
}

/// Deletes .debs that the current resolution no longer uses (old kernels are ~70 MB each).
fn prune_debs(debs: &Path, r: &Resolved) {
    let Ok(rd) = std::fs::read_dir(debs) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let used = name == r.kernel_deb || name == r.busybox_deb || r.tools.iter().any(|t| t.deb == name);
        if name.ends_with(".deb") && !used {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(crate) fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(e.path());
        }
    }
    bail!("apt-get download did not produce {package}_*.deb in {}", dir.display())
}

// One look-up in one Depends field: the relation parsers on crates.io bring a syntax-tree
// library for it.

/// The kernel package a metapackage's Depends names, with the version it pins:
/// `linux-image-6.1.0-28-amd64 (= 6.1.119-1)` → (`linux-image-6.1.0-28-amd64`, `6.1.119-1`).
fn kernel_from_depends(depends: &str) -> Option<(String, Option<String>)> {
    depends.split([',', '|']).find_map(|d| {
        let mut words = d.split_whitespace();
        let name = words.next()?;
        if !(name.starts_with("linux-image-") && name.ends_with("-amd64") && name != KERNEL_META) {
            return None;
        }
        let rest = words.collect::<Vec<_>>().join(" ");
        let version = rest.strip_prefix("(=").and_then(|v| v.strip_suffix(')')).map(|v| v.trim().to_string());
        Some((name.to_string(), version))
    })
}

/// Whether `apt-cache madison` output lists `package` at `version`.
fn madison_has(text: &str, package: &str, version: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        f.len() >= 2 && f[0] == package && f[1] == version
    })
}

/// Downloads `packages` at exactly `version` into `dl`, with the image's apt state. When
/// the (up to a day old) package lists lack one, they are refreshed once before giving up.
pub(crate) fn download_exact(
    debs: &Path,
    dl: &Path,
    packages: &[String],
    version: &str,
    kver: &str,
) -> Result<()> {
    let apt = debs.join("apt");
    let log = debs.join("apt.log");
    let missing = || -> Result<Vec<String>> {
        let out = apt_command(&apt, "apt-cache")
            .arg("madison")
            .args(packages)
            .output()
            .context("cannot run apt-cache (install apt)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(packages.iter().filter(|p| !madison_has(&text, p, version)).cloned().collect())
    };
    let updated = apt_update(debs, false)?;
    let mut gone = missing()?;
    if !gone.is_empty() && !updated {
        apt_update(debs, true)?;
        gone = missing()?;
    }
    if !gone.is_empty() {
        bail!(
            "the Debian archive (bookworm, bookworm-updates, bookworm-security) no longer has \
             version {version} of {} — the headers of the image's kernel {kver}. Debian only keeps \
             the newest kernel: rebuild the image on the current kernel (delete {} and run \
             `testbed image`), then ask for the headers again",
            gone.join(", "),
            debs.join("resolved.json").display()
        );
    }
    let mut cmd = apt_command(&apt, "apt-get");
    cmd.current_dir(dl).arg("download").args(packages.iter().map(|p| format!("{p}={version}")));
    run_logged(&format!("download {}", packages.join(" ")), cmd, &log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_from_metapackage_depends() {
        let pinned = |p: &str, v: &str| Some((p.to_string(), Some(v.to_string())));
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-28-amd64 (= 6.1.119-1)"),
            pinned("linux-image-6.1.0-28-amd64", "6.1.119-1")
        );
        assert_eq!(kernel_from_depends("foo, bar"), None);
        assert_eq!(
            kernel_from_depends("foo (>= 1), linux-image-6.1.0-57-amd64 (= 6.1.158-1) | bar"),
            pinned("linux-image-6.1.0-57-amd64", "6.1.158-1")
        );
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-57-amd64"),
            Some(("linux-image-6.1.0-57-amd64".to_string(), None))
        );
    }

    #[test]
    fn madison_lines() {
        let text = "linux-kbuild-6.1 |  6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
linux-kbuild-6.1 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert!(madison_has(text, "linux-kbuild-6.1", "6.1.176-1"));
        assert!(madison_has(text, "linux-kbuild-6.1", "6.1.192-3"));
        assert!(!madison_has(text, "linux-kbuild-6.1", "6.1.192-2"));
        assert!(!madison_has(text, "linux-kbuild-6.12", "6.1.192-3"));
    }
}
