//! The guest image: Debian 12's stock kernel (as an uncompressed `vmlinux`, which QEMU boots
//! through PVH) and a small initramfs with busybox, the vfio/uio/virtio-net/9p/virtio-serial
//! modules, Debian's libc, our `/init` (images/init) and the guest program as
//! `/bin/testbed-guest`.
//!
//! Everything is cached under `cache::root()`: the Debian packages in `debs/` (resolved at
//! most once a day through a private apt state dir) and each built image in
//! `image/<key>/`, where the key covers every input of the image. [`ensure_headers`] adds
//! the image kernel's headers (`headers/<kernel>/`) for building out-of-tree modules.

use crate::cache::{self, KeyHasher};
use crate::steps::{run_logged, step};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A built guest image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel to pass to `-kernel`: an ELF `vmlinux` (booted via PVH), or the bzImage
    /// when the extraction failed.
    pub kernel: PathBuf,
    /// The gzip'ed newc initramfs.
    pub initrd: PathBuf,
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-28-amd64`.
    pub kernel_version: String,
    /// The Debian version of the kernel package, e.g. `6.1.119-1` (what [`ensure_headers`]
    /// asks the archive for).
    pub kernel_package_version: String,
}

/// Bump when the way the image is put together changes.
const FORMAT_VERSION: &str = "testbed-image-v4";

/// The modules the guest loads (their dependencies are added from the kernel package).
/// virtio_pci is needed for virtio_net to find a virtio-net-pci device (it is a module in
/// Debian's kernel). 9p + 9pnet_virtio mount a host folder (virtio-9p-pci), virtio_console
/// gives the named virtio-serial ports (the exec agent's channel).
const MODULES: &[&str] = &[
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
    "uio",
    "uio_pci_generic",
    "virtio_pci",
    "virtio_net",
    "9p",
    "9pnet_virtio",
    "virtio_console",
];

const APT_SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
deb http://deb.debian.org/debian bookworm-updates main\n\
deb http://deb.debian.org/debian-security bookworm-security main\n";

const KERNEL_META: &str = "linux-image-amd64";
/// Stock Debian tools for the peer guest (`testbed run peer-*`), with the shared libraries
/// they need: OpenBSD netcat (busybox's `nc` has no UDP mode). libc6 and libgcc-s1 also let
/// dynamically linked programs built on a Debian 12 host run in the guest (`testbed exec`).
const TOOL_PKGS: &[&str] = &["netcat-openbsd", "libbsd0", "libmd0", "libc6", "libgcc-s1"];
/// The tool binaries, by their path in a package and in the image.
const TOOL_BINS: &[(&str, &str)] = &[("bin/nc.openbsd", "usr/bin/nc.openbsd")];
/// The shared libraries, installed as `lib/x86_64-linux-gnu/NAME` (found by their soname in
/// the packages' `lib/x86_64-linux-gnu` or `usr/lib/x86_64-linux-gnu`); the loader is also
/// linked as `/lib64/ld-linux-x86-64.so.2` (the ELF interpreter path of x86-64 programs).
const TOOL_LIBS: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "libgcc_s.so.1",
    "libbsd.so.0",
    "libmd.so.0",
];
const BUSYBOX_PKG: &str = "busybox-static";
const DAY: Duration = Duration::from_secs(24 * 3600);
const WHAT: &str = "guest image";

/// Where the resolved package versions are recorded (`debs/resolved.json`).
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Resolved {
    /// Seconds since the epoch when the package lookup was done.
    resolved_at: u64,
    /// The sources the lookup used (a change forces a new lookup).
    sources: String,
    /// e.g. `linux-image-6.1.0-28-amd64`.
    kernel_package: String,
    kernel_package_version: String,
    kernel_deb: String,
    busybox_version: String,
    busybox_deb: String,
    /// The peer tools' packages (TOOL_PKGS, in that order).
    #[serde(default)]
    tools: Vec<ToolDeb>,
}

/// One tool package: name, version, .deb file name.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ToolDeb {
    package: String,
    version: String,
    deb: String,
}

/// What is recorded next to the kernel part (`kernel/<key>/kernel.json`).
#[derive(Serialize, Deserialize, Debug)]
struct KernelMeta {
    kernel_file: String,
    kernel_version: String,
    #[serde(default)]
    kernel_package_version: String,
    kernel_is_vmlinux: bool,
    /// Module names in load order (files `modules/<name>.ko`).
    modules: Vec<String>,
    /// Busybox applet paths (e.g. `sbin/poweroff`); empty if busybox could not run here.
    applets: Vec<String>,
    /// Peer tool files by image path (stored under `tools/` with the same path).
    tools: Vec<String>,
}

/// What is recorded next to a built image (`image/<key>/image.json`).
#[derive(Serialize, Deserialize, Debug)]
struct ImageMeta {
    kernel_file: String,
    kernel_version: String,
    #[serde(default)]
    kernel_package_version: String,
    kernel_is_vmlinux: bool,
    modules: Vec<String>,
}

/// How many images (one per guest program build) stay in the cache.
const KEEP_IMAGES: usize = 8;

/// Builds (or finds in the cache) the guest image. `guest_bin` is the statically linked guest
/// program (installed as /bin/testbed-guest). Prints progress on stderr, never on stdout.
pub fn ensure_image(guest_bin: &Path) -> Result<Image> {
    let workspace = cache::workspace_root()?;
    let images_dir = workspace.join("images");
    let init_path = images_dir.join("init");
    let init =
        std::fs::read(&init_path).with_context(|| format!("{WHAT}: cannot read {}", init_path.display()))?;
    let peer_path = images_dir.join("peer");
    let peer =
        std::fs::read(&peer_path).with_context(|| format!("{WHAT}: cannot read {}", peer_path.display()))?;
    let guest = std::fs::read(guest_bin)
        .with_context(|| format!("{WHAT}: cannot read the guest program {}", guest_bin.display()))?;
    check_static_elf(&guest).with_context(|| {
        format!(
            "{WHAT}: {} cannot run in the guest image (build it with `-C target-feature=+crt-static`)",
            guest_bin.display()
        )
    })?;
    let unxz = images_dir.join("unxz.py");

    let root = cache::root();
    let debs = root.join("debs");
    let resolved = step(WHAT, "resolve Debian packages", || resolve_packages(&debs))?;

    // The kernel part (vmlinux, modules, busybox) only depends on the packages; it is shared
    // by the images of every guest program build.
    let mut kh = KeyHasher::default();
    kh.add("format", FORMAT_VERSION.as_bytes())
        .add("kernel", resolved.kernel_package.as_bytes())
        .add("kernel-version", resolved.kernel_package_version.as_bytes())
        .add("busybox", resolved.busybox_version.as_bytes())
        .add("tools", serde_json::to_string(&resolved.tools)?.as_bytes())
        .add("modules", MODULES.join(",").as_bytes());
    if let Ok(s) = std::fs::read(&unxz) {
        kh.add("unxz", &s);
    }
    let kkey = kh.hex16();
    let kdir = root.join("kernel").join(&kkey);

    let mut h = KeyHasher::default();
    h.add("format", FORMAT_VERSION.as_bytes())
        .add("kernel-part", kkey.as_bytes())
        .add("init", &init)
        .add("peer", &peer)
        .add("guest", &guest);
    let key = h.hex16();
    let dir = root.join("image").join(&key);
    if let Some(img) = load_image(&dir) {
        touch(&dir);
        eprintln!("[testbed] {WHAT}: cached in {}", dir.display());
        return Ok(img);
    }

    let kmeta = match load_kernel(&kdir) {
        Some(m) => m,
        None => {
            let m = in_temp_dir(&kdir, |tmp| build_kernel_part(tmp, &debs, &resolved, &unxz))?;
            prune(&root.join("kernel"), 1, &kdir);
            m
        }
    };
    in_temp_dir(&dir, |tmp| {
        let meta = build_image(tmp, &kdir, &kmeta, &init, &peer, &guest)?;
        std::fs::write(tmp.join("image.json"), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    })?;
    prune(&root.join("image"), KEEP_IMAGES, &dir);
    let img = load_image(&dir).ok_or_else(|| anyhow!("{WHAT}: image in {} is incomplete", dir.display()))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "[testbed] {WHAT}: built in {} ({} {} MB, initrd {} KB)",
        dir.display(),
        kmeta.kernel_file,
        size(&img.kernel) / 1_000_000,
        size(&img.initrd) / 1000
    );
    Ok(img)
}

/// Runs `build` on a fresh temporary directory next to `dest`, then renames it to `dest`
/// (so `dest` is either absent or complete). If another process finished `dest` first, its
/// result is kept.
fn in_temp_dir<T>(dest: &Path, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let r = build(&tmp).and_then(|v| {
        if let Err(e) = std::fs::rename(&tmp, dest) {
            if !dest.is_dir() {
                return Err(e).with_context(|| format!("{WHAT}: cannot move to {}", dest.display()));
            }
        }
        Ok(v)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

/// Marks a cache entry as recently used.
fn touch(dir: &Path) {
    let _ = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now()));
}

/// Keeps `keep` entries of `parent` (the most recently used, always including `current`),
/// deleting the others and stale temporary dirs older than a day.
fn prune(parent: &Path, keep: usize, current: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let mut entries: Vec<(SystemTime, PathBuf)> = vec![];
    for e in rd.flatten() {
        let p = e.path();
        let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
        if e.file_name().to_string_lossy().starts_with('.') {
            if mtime.elapsed().is_ok_and(|age| age > DAY) {
                let _ = std::fs::remove_dir_all(&p);
            }
        } else if p != current {
            entries.push((mtime, p));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(keep.saturating_sub(1)) {
        let _ = std::fs::remove_dir_all(&p);
    }
}

/// Builds the static guest program from guest-lib (cargo build --release -p guest-apps --bin
/// testbed-guest --target x86_64-unknown-linux-gnu with static CRT, target dir
/// `<workspace>/target/guest`) and returns the binary's path.
pub fn build_guest_binary(workspace: &Path) -> Result<PathBuf> {
    const TRIPLE: &str = "x86_64-unknown-linux-gnu";
    let target_dir = workspace.join("target").join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "-p", "guest-apps", "--bin", "testbed-guest", "--target", TRIPLE])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static")
        // Keep a RUSTFLAGS from the caller's environment from overriding the target flags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_logged("guest program build", cmd, &target_dir.join("build.log"))?;
    let bin = target_dir.join(TRIPLE).join("release").join("testbed-guest");
    let bytes = std::fs::read(&bin)
        .with_context(|| format!("guest program build: {} missing after the build", bin.display()))?;
    check_static_elf(&bytes).with_context(|| format!("guest program build: {}", bin.display()))?;
    Ok(bin)
}

/// Writes `out`: the image's initrd followed by a second gzip'ed cpio holding `files`
/// (image path, bytes). The kernel unpacks concatenated archives in order, so the files
/// appear in the guest's root file system: how a run hands the guest its inputs (e.g. a
/// pcap to replay) without rebuilding the image.
pub fn initrd_with_files(image: &Image, files: &[(String, Vec<u8>)], out: &Path) -> Result<()> {
    let mut bytes =
        std::fs::read(&image.initrd).with_context(|| format!("read {}", image.initrd.display()))?;
    let mut cpio = Cpio::default();
    for (path, data) in files {
        cpio.file(path, 0o644, data.clone());
    }
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    cpio.write_to(&mut gz)?;
    bytes.extend(gz.finish()?);
    std::fs::write(out, bytes).with_context(|| format!("write {}", out.display()))
}

fn load_image(dir: &Path) -> Option<Image> {
    let meta: ImageMeta = serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()?;
    let kernel = dir.join(&meta.kernel_file);
    let initrd = dir.join("initrd.gz");
    (kernel.is_file() && initrd.is_file()).then_some(Image {
        kernel,
        initrd,
        kernel_version: meta.kernel_version,
        kernel_package_version: meta.kernel_package_version,
    })
}

fn load_kernel(kdir: &Path) -> Option<KernelMeta> {
    let meta: KernelMeta = serde_json::from_slice(&std::fs::read(kdir.join("kernel.json")).ok()?).ok()?;
    kdir.join(&meta.kernel_file).is_file().then_some(meta)
}

// ---------------------------------------------------------------------------------------------
// Debian packages

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Finds the current kernel and busybox packages and makes sure their .debs are in `debs`.
/// Uses the recorded result without touching the network when it is less than a day old.
fn resolve_packages(debs: &Path) -> Result<Resolved> {
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
    let looked_up = lookup_packages(debs, recorded.as_ref());
    let _ = std::fs::remove_dir_all(debs.join(format!(".download-{}", std::process::id())));
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
                 is reachable (and apt-get/dpkg-deb are installed)",
            )),
        },
    }
}

fn apt_command(apt: &Path, program: &str) -> Command {
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
fn apt_update(debs: &Path, force: bool) -> Result<bool> {
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

fn lookup_packages(debs: &Path, old: Option<&Resolved>) -> Result<Resolved> {
    let apt = debs.join("apt");
    let log = debs.join("apt.log");
    apt_update(debs, false)?;

    let dl = debs.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    let download = |pkgs: &[&str]| -> Result<()> {
        let mut cmd = apt_command(&apt, "apt-get");
        cmd.current_dir(&dl).arg("download").args(pkgs);
        run_logged(&format!("download {}", pkgs.join(" ")), cmd, &log)
    };
    download(&[KERNEL_META, BUSYBOX_PKG])?;
    let meta_deb = find_deb(&dl, KERNEL_META)?;
    let depends = deb_field(&meta_deb, "Depends")?;
    let kernel_package = kernel_package_from_depends(&depends)
        .ok_or_else(|| anyhow!("{KERNEL_META}'s Depends has no linux-image-*-amd64 package: {depends:?}"))?;
    let busybox_deb = find_deb(&dl, BUSYBOX_PKG)?;
    let busybox_version = deb_field(&busybox_deb, "Version")?;
    std::fs::rename(&busybox_deb, debs.join(file_name(&busybox_deb)))?;
    download(TOOL_PKGS)?;
    let mut tools = vec![];
    for pkg in TOOL_PKGS {
        let deb = find_deb(&dl, pkg)?;
        let version = deb_field(&deb, "Version")?;
        std::fs::rename(&deb, debs.join(file_name(&deb)))?;
        tools.push(ToolDeb { package: pkg.to_string(), version, deb: file_name(&deb) });
    }
    // The kernel .deb is ~70 MB: keep the one we have when the metapackage still wants it.
    let wanted_version = depends_version(&depends, &kernel_package);
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
            let deb = find_deb(&dl, &kernel_package)?;
            let version = deb_field(&deb, "Version")?;
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
    let _ = std::fs::remove_dir_all(&dl);
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

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(e.path());
        }
    }
    bail!("apt-get download did not produce {package}_*.deb in {}", dir.display())
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .context("cannot run dpkg-deb (install dpkg)")?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} {field}: {}", deb.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `linux-image-6.1.0-28-amd64 (= 6.1.119-1)` → `linux-image-6.1.0-28-amd64`.
fn kernel_package_from_depends(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|n| n.starts_with("linux-image-") && n.ends_with("-amd64") && *n != KERNEL_META)
        .map(str::to_string)
}

/// The version in `PACKAGE (= VERSION)` of a Depends field.
fn depends_version(depends: &str, package: &str) -> Option<String> {
    depends.split([',', '|']).find_map(|d| {
        let (name, rest) = d.trim().split_once(' ')?;
        let v = rest.trim().strip_prefix("(=")?.strip_suffix(')')?;
        (name == package).then(|| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// Kernel headers

const HEADERS_WHAT: &str = "kernel headers";
/// Bump when the way the headers are unpacked or fixed up changes.
const HEADERS_FORMAT: &str = "testbed-headers-v1";

/// What is recorded next to unpacked headers (`headers/<kernel>/headers.json`).
#[derive(Serialize, Deserialize, Debug)]
struct HeadersMeta {
    format: String,
    kernel_version: String,
    kernel_package_version: String,
    packages: Vec<String>,
}

/// Makes sure the headers of `image`'s kernel are unpacked in the cache and returns the
/// build directory to pass to `make -C DIR M=$PWD modules` (the `-amd64` headers tree).
///
/// Downloads `linux-headers-<ABI>-amd64`, `linux-headers-<ABI>-common` and
/// `linux-kbuild-<major.minor>` at exactly the kernel package's version (same private apt
/// state as the image), unpacks them into `headers/<kernel>_<version>/` and turns their
/// absolute paths (`include /usr/src/...` in the Makefile, links to `/usr/src/...`) into
/// relative ones, so the tree works where it is. Fails, naming the version, when the
/// archive no longer has it. Prints progress on stderr, never on stdout.
pub fn ensure_headers(image: &Image) -> Result<PathBuf> {
    let kver = &image.kernel_version;
    let pver = &image.kernel_package_version;
    if pver.is_empty() {
        bail!("{HEADERS_WHAT}: the image does not record its kernel's package version; rebuild it (`testbed image`)");
    }
    let packages = header_packages(kver)?;
    let root = cache::root();
    let dir = root.join("headers").join(format!("{kver}_{pver}"));
    let build = dir.join("usr/src").join(format!("linux-headers-{kver}"));
    let meta_ok = |dir: &Path| {
        std::fs::read(dir.join("headers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<HeadersMeta>(&b).ok())
            .is_some_and(|m| m.format == HEADERS_FORMAT)
    };
    if meta_ok(&dir) && build.join("Makefile").is_file() {
        touch(&dir);
        eprintln!("[testbed] {HEADERS_WHAT}: cached in {}", dir.display());
        return Ok(build);
    }
    if dir.exists() {
        // From an older format (or incomplete): unpack again.
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let debs = root.join("debs");
    in_temp_dir(&dir, |tmp| {
        let dl = tmp.join("debs");
        std::fs::create_dir_all(&dl)?;
        step(HEADERS_WHAT, &format!("download the headers of {kver} ({pver})"), || {
            download_exact(&debs, &dl, &packages, pver, kver)
        })?;
        step(HEADERS_WHAT, "unpack", || {
            for p in &packages {
                dpkg_extract(&find_deb(&dl, p)?, tmp)?;
            }
            std::fs::remove_dir_all(&dl)?;
            Ok(())
        })?;
        step(HEADERS_WHAT, "fix up absolute paths", || fix_up_headers(tmp))?;
        let tmp_build = tmp.join("usr/src").join(format!("linux-headers-{kver}"));
        if !tmp_build.join("Makefile").is_file() {
            bail!("{HEADERS_WHAT}: {} has no Makefile", packages[0]);
        }
        let meta = HeadersMeta {
            format: HEADERS_FORMAT.to_string(),
            kernel_version: kver.clone(),
            kernel_package_version: pver.clone(),
            packages: packages.clone(),
        };
        std::fs::write(tmp.join("headers.json"), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    })?;
    prune(&root.join("headers"), 2, &dir);
    eprintln!("[testbed] {HEADERS_WHAT}: unpacked in {}", dir.display());
    let cc = format!("gcc-{}", kernel_gcc_major(&build).unwrap_or_else(|| "12".into()));
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!(
            "[testbed] {HEADERS_WHAT}: note: the kernel was built with {cc}, which is not installed \
             here; install it or pass CC=gcc to make"
        );
    }
    Ok(build)
}

/// The header packages of kernel release `6.1.0-28-amd64`: `linux-headers-6.1.0-28-amd64`,
/// `linux-headers-6.1.0-28-common`, `linux-kbuild-6.1`.
fn header_packages(kver: &str) -> Result<Vec<String>> {
    let abi = kver
        .strip_suffix("-amd64")
        .ok_or_else(|| anyhow!("{HEADERS_WHAT}: kernel release {kver:?} is not an -amd64 flavour"))?;
    let mut parts = abi.split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("{HEADERS_WHAT}: cannot tell the major.minor of kernel release {kver:?}");
    };
    let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) || minor.is_empty() {
        bail!("{HEADERS_WHAT}: cannot tell the major.minor of kernel release {kver:?}");
    }
    Ok(vec![
        format!("linux-headers-{abi}-amd64"),
        format!("linux-headers-{abi}-common"),
        format!("linux-kbuild-{major}.{minor}"),
    ])
}

/// The gcc major version from the headers' `.kernelvariables` (`... gcc-12`).
fn kernel_gcc_major(build: &Path) -> Option<String> {
    let text = std::fs::read_to_string(build.join(".kernelvariables")).ok()?;
    let at = text.find("gcc-")? + 4;
    let v: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    (!v.is_empty()).then_some(v)
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
fn download_exact(debs: &Path, dl: &Path, packages: &[String], version: &str, kver: &str) -> Result<()> {
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

/// Makes the unpacked header packages under `root` independent of their place: absolute
/// symlinks that point into the tree become relative, and Makefile lines
/// `include /usr/src/...` (the -amd64 tree includes the -common tree's Makefile) include
/// relative to the Makefile's own directory.
fn fix_up_headers(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let ty = e.file_type()?;
            let rel_dir = format!("/{}", dir.strip_prefix(root)?.to_string_lossy());
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_symlink() {
                let target = std::fs::read_link(&p)?;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') && root.join(t.trim_start_matches('/')).symlink_metadata().is_ok() {
                    std::fs::remove_file(&p)?;
                    std::os::unix::fs::symlink(rel_path(&rel_dir, &t), &p)
                        .with_context(|| format!("relink {}", p.display()))?;
                }
            } else if e.file_name() == "Makefile" {
                let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
                if let Some(fixed) = relative_includes(&text, &rel_dir) {
                    std::fs::write(&p, fixed)?;
                }
            }
        }
    }
    Ok(())
}

/// `text` with every `include /abs/path` line rewritten relative to the including
/// Makefile's directory `dir` (an absolute path as installed), or None if there is none.
fn relative_includes(text: &str, dir: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("include /") {
            Some(rest) if !rest.contains(char::is_whitespace) => {
                changed = true;
                format!("include $(dir $(lastword $(MAKEFILE_LIST))){}", rel_path(dir, &format!("/{rest}")))
            }
            _ => l.to_string(),
        })
        .collect();
    changed.then(|| lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" })
}

/// The relative path from directory `from` to `to` (both absolute, no `..`).
fn rel_path(from: &str, to: &str) -> String {
    let f: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

// ---------------------------------------------------------------------------------------------
// Building the image

/// Unpacks the packages into `tmp`: the kernel (`vmlinux`, or `vmlinuz` if the extraction
/// fails), the modules in `modules/`, and `busybox`.
fn build_kernel_part(tmp: &Path, debs: &Path, r: &Resolved, unxz: &Path) -> Result<KernelMeta> {
    let kpkg = tmp.join("kernel-pkg");
    let bpkg = tmp.join("busybox-pkg");
    step(WHAT, &format!("unpack {}", r.kernel_package), || dpkg_extract(&debs.join(&r.kernel_deb), &kpkg))?;
    step(WHAT, "unpack busybox-static", || dpkg_extract(&debs.join(&r.busybox_deb), &bpkg))?;
    let release = r.kernel_package.trim_start_matches("linux-image-").to_string();

    let vmlinuz = kpkg.join("boot").join(format!("vmlinuz-{release}"));
    let (kernel_file, is_vmlinux) = step(WHAT, "extract vmlinux", || {
        let bz = std::fs::read(&vmlinuz).with_context(|| format!("read {}", vmlinuz.display()))?;
        match extract_vmlinux(&bz, unxz) {
            Ok(elf) => {
                std::fs::write(tmp.join("vmlinux"), elf)?;
                Ok(("vmlinux", true))
            }
            Err(e) => {
                eprintln!(
                    "[testbed] {WHAT}: warning: cannot extract vmlinux from {} ({e:#}); \
                     using the bzImage (boots slower under TCG)",
                    vmlinuz.display()
                );
                std::fs::write(tmp.join("vmlinuz"), &bz)?;
                Ok(("vmlinuz", false))
            }
        }
    })?;

    let modules = step(WHAT, "collect modules", || {
        let moddir = kpkg.join("lib/modules").join(&release);
        let index = index_modules(&moddir)?;
        let deps = module_deps(&moddir, &index, unxz)?;
        let order = module_order(MODULES, &deps)?;
        std::fs::create_dir_all(tmp.join("modules"))?;
        for m in &order {
            let rel = index.get(m).ok_or_else(|| anyhow!("module {m} is not in {}", moddir.display()))?;
            let ko = read_module(&moddir.join(rel), unxz)?;
            std::fs::write(tmp.join("modules").join(format!("{m}.ko")), ko)?;
        }
        Ok(order)
    })?;

    let busybox_path = bpkg.join("bin/busybox");
    std::fs::copy(&busybox_path, tmp.join("busybox"))
        .with_context(|| format!("busybox-static has no bin/busybox ({})", busybox_path.display()))?;
    // The applet links; if busybox cannot run here, /init runs `busybox --install -s`.
    let mut applets = vec![];
    match Command::new(&busybox_path).arg("--list-full").output() {
        Ok(out) if out.status.success() => {
            for applet in String::from_utf8_lossy(&out.stdout).lines() {
                let applet = applet.trim().trim_start_matches('/');
                if !applet.is_empty() && applet != "bin/busybox" && !applet.contains("..") {
                    applets.push(applet.to_string());
                }
            }
        }
        _ => {
            eprintln!("[testbed] {WHAT}: note: cannot run busybox here; /init installs the applets")
        }
    }

    std::fs::remove_dir_all(&kpkg)?;
    std::fs::remove_dir_all(&bpkg)?;
    let tools = step(WHAT, "collect peer tools (netcat-openbsd and its libraries)", || {
        collect_tools(tmp, debs, &r.tools)
    })?;
    let meta = KernelMeta {
        kernel_file: kernel_file.to_string(),
        kernel_version: release,
        kernel_package_version: r.kernel_package_version.clone(),
        kernel_is_vmlinux: is_vmlinux,
        modules,
        applets,
        tools,
    };
    std::fs::write(tmp.join("kernel.json"), serde_json::to_vec_pretty(&meta)?)?;
    Ok(meta)
}

/// Writes the image into `tmp`: the kernel (a hard link to the shared kernel part) and the
/// initrd.
fn build_image(
    tmp: &Path,
    kdir: &Path,
    k: &KernelMeta,
    init: &[u8],
    peer: &[u8],
    guest: &[u8],
) -> Result<ImageMeta> {
    let kernel = kdir.join(&k.kernel_file);
    if std::fs::hard_link(&kernel, tmp.join(&k.kernel_file)).is_err() {
        std::fs::copy(&kernel, tmp.join(&k.kernel_file))
            .with_context(|| format!("copy {}", kernel.display()))?;
    }
    step(WHAT, "write initrd", || {
        let mut cpio = Cpio::default();
        for d in
            ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "root", "run", "etc", "lib/modules"]
        {
            cpio.dir(d, 0o755);
        }
        cpio.dir("tmp", 0o1777);
        cpio.char_dev("dev/console", 0o600, 5, 1);
        let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("read {}", p.display()));
        cpio.file("bin/busybox", 0o755, read(kdir.join("busybox"))?);
        cpio.symlink("bin/sh", "/bin/busybox");
        for applet in &k.applets {
            cpio.symlink(applet, "/bin/busybox");
        }
        for m in &k.modules {
            let ko = read(kdir.join("modules").join(format!("{m}.ko")))?;
            cpio.file(&format!("lib/modules/{m}.ko"), 0o644, ko);
        }
        let order: String = k.modules.iter().map(|m| format!("{m}.ko\n")).collect();
        cpio.file("etc/modules.order", 0o644, order.into_bytes());
        for t in &k.tools {
            cpio.file(t, 0o755, read(kdir.join("tools").join(t))?);
        }
        cpio.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        // For programs that look up the user (whoami, id, getpwuid).
        cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
        cpio.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
        cpio.file("init", 0o755, init.to_vec());
        cpio.file("bin/testbed-peer", 0o755, peer.to_vec());
        cpio.file("bin/testbed-guest", 0o755, guest.to_vec());
        let f = std::fs::File::create(tmp.join("initrd.gz"))?;
        let mut gz = flate2::GzBuilder::new().mtime(0).write(f, flate2::Compression::default());
        cpio.write_to(&mut gz)?;
        gz.finish()?.sync_all()?;
        Ok(())
    })?;
    Ok(ImageMeta {
        kernel_file: k.kernel_file.clone(),
        kernel_version: k.kernel_version.clone(),
        kernel_package_version: k.kernel_package_version.clone(),
        kernel_is_vmlinux: k.kernel_is_vmlinux,
        modules: k.modules.clone(),
    })
}

/// Unpacks the tool packages and copies the tool binaries and libraries into `tmp/tools/`
/// under their image paths; returns those paths.
fn collect_tools(tmp: &Path, debs: &Path, tools: &[ToolDeb]) -> Result<Vec<String>> {
    let root = tmp.join("tools-pkg");
    for t in tools {
        dpkg_extract(&debs.join(&t.deb), &root)?;
    }
    let mut out = vec![];
    let mut put = |image_path: String, from: &Path| -> Result<()> {
        // Follow the package's relative symlinks (libfoo.so.0 -> libfoo.so.0.1.2).
        let real = std::fs::canonicalize(from).with_context(|| format!("resolve {}", from.display()))?;
        if !real.starts_with(std::fs::canonicalize(&root)?) {
            bail!("{} points outside the unpacked packages", from.display());
        }
        let dest = tmp.join("tools").join(&image_path);
        std::fs::create_dir_all(dest.parent().unwrap_or(tmp))?;
        std::fs::copy(&real, &dest).with_context(|| format!("copy {}", real.display()))?;
        out.push(image_path);
        Ok(())
    };
    for (in_pkg, in_image) in TOOL_BINS {
        let alt = format!("usr/{in_pkg}");
        let from = [root.join(in_pkg), root.join(alt)]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("the tool packages have no {in_pkg}"))?;
        put(in_image.to_string(), &from)?;
    }
    for lib in TOOL_LIBS {
        let from = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| root.join(d).join(lib))
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("the tool packages have no {lib}"))?;
        put(format!("lib/x86_64-linux-gnu/{lib}"), &from)?;
    }
    std::fs::remove_dir_all(&root)?;
    Ok(out)
}

fn dpkg_extract(deb: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .output()
        .context("cannot run dpkg (install dpkg)")?;
    if !out.status.success() {
        bail!("dpkg -x {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";

/// Finds the compressed kernel inside a bzImage and decompresses it to the ELF `vmlinux`.
/// The payload's place comes from the boot protocol header (2.08+); failing that, from the
/// first XZ/gzip magic.
fn extract_vmlinux(bz: &[u8], unxz: &Path) -> Result<Vec<u8>> {
    let payload = bzimage_payload(bz)
        .or_else(|| {
            let at = find(bz, XZ_MAGIC).or_else(|| find(bz, GZIP_MAGIC))?;
            Some(&bz[at..])
        })
        .ok_or_else(|| anyhow!("no XZ or gzip payload found"))?;
    let elf = if payload.starts_with(XZ_MAGIC) {
        run_unxz(unxz, payload)?
    } else if payload.starts_with(GZIP_MAGIC) {
        let mut out = vec![];
        std::io::copy(&mut flate2::read::GzDecoder::new(payload), &mut out).context("gunzip the payload")?;
        out
    } else {
        bail!(
            "the payload's compression is not XZ or gzip (magic {:02x?})",
            &payload[..payload.len().min(6)]
        );
    };
    if !elf.starts_with(b"\x7fELF") {
        bail!("the decompressed payload is not an ELF file");
    }
    Ok(elf)
}

/// The payload described by the bzImage header (`payload_offset`/`payload_length`).
fn bzimage_payload(bz: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(bz.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bz.get(o..o + 4)?.try_into().ok()?) as usize);
    if bz.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let p = bz.get(start..start.checked_add(u32_at(0x24c)?)?)?;
    (p.starts_with(XZ_MAGIC) || p.starts_with(GZIP_MAGIC)).then_some(p)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decompresses one XZ stream with python3's lzma module (images/unxz.py), which ignores
/// the bytes after the stream (the kernel appends its size).
fn run_unxz(script: &Path, data: &[u8]) -> Result<Vec<u8>> {
    use std::process::Stdio;
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run python3 (needed to decompress XZ)")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// A module file, decompressed if the package ships it compressed.
fn read_module(path: &Path, unxz: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let name = path.to_string_lossy();
    let ko = if name.ends_with(".ko.xz") {
        run_unxz(unxz, &bytes)?
    } else if name.ends_with(".ko.gz") {
        let mut out = vec![];
        std::io::copy(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)?;
        out
    } else if name.ends_with(".ko") {
        bytes
    } else {
        bail!("{}: unsupported module compression", path.display());
    };
    if !ko.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF module", path.display());
    }
    Ok(ko)
}

/// Module names use `_` where file names may use `-` (vfio-pci.ko is module vfio_pci).
fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Module name → path relative to the modules directory, for every .ko(.xz/.gz/.zst) file.
fn index_modules(moddir: &Path) -> Result<BTreeMap<String, String>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))?.flatten() {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".ko") {
                let rel = p.strip_prefix(moddir)?.to_string_lossy().into_owned();
                index.insert(module_name(&rel), rel);
            }
        }
    }
    if index.is_empty() {
        bail!("no kernel modules in {}", moddir.display());
    }
    Ok(index)
}

/// The dependency map: from the package's modules.dep when it has one, otherwise from each
/// module's `.modinfo` `depends=` (Debian generates modules.dep only at install time).
fn module_deps(
    moddir: &Path,
    index: &BTreeMap<String, String>,
    unxz: &Path,
) -> Result<BTreeMap<String, Vec<String>>> {
    if let Ok(text) = std::fs::read_to_string(moddir.join("modules.dep")) {
        return Ok(parse_modules_dep(&text));
    }
    let mut deps = BTreeMap::new();
    let mut todo: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    while let Some(m) = todo.pop() {
        if deps.contains_key(&m) {
            continue;
        }
        let Some(rel) = index.get(&m) else { continue };
        let ko = read_module(&moddir.join(rel), unxz)?;
        let d = modinfo_depends(&ko).with_context(|| format!("read .modinfo of {rel}"))?;
        todo.extend(d.iter().cloned());
        deps.insert(m, d);
    }
    Ok(deps)
}

/// Parses modules.dep (`kernel/a/b.ko: kernel/c.ko kernel/d.ko`) into name → dependencies.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (module_name(m.trim()), d.split_whitespace().map(module_name).collect()))
        .collect()
}

/// The `depends=` entry of a module's `.modinfo` section.
fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>> {
    let info = elf_section(ko, ".modinfo").ok_or_else(|| anyhow!("no .modinfo section"))?;
    Ok(info
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).split(',').filter(|s| !s.is_empty()).map(module_name).collect())
        .unwrap_or_default())
}

/// The contents of a named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?) as usize);
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let sh = |i: usize| -> Option<(usize, usize, usize)> {
        let b = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32::from_le_bytes(elf.get(b..b + 4)?.try_into().ok()?) as usize;
        Some((name, u64_at(b + 0x18)?, u64_at(b + 0x20)?))
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (n, off, size) = sh(i)?;
        let s = strtab.get(n..)?;
        let s = &s[..s.iter().position(|&b| b == 0)?];
        (s == name.as_bytes()).then(|| elf.get(off..off.checked_add(size)?))?
    })
}

/// The load order for `wanted`: every module after all its dependencies, each once.
fn module_order(wanted: &[&str], deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(m) {
            return Ok(());
        }
        if path.iter().any(|p| p == m) {
            bail!("module dependency cycle: {} -> {m}", path.join(" -> "));
        }
        let d = deps.get(m).ok_or_else(|| anyhow!("module {m} is not in the kernel package"))?;
        path.push(m.to_string());
        for dep in d {
            visit(dep, deps, done, path, out)?;
        }
        path.pop();
        done.insert(m.to_string());
        out.push(m.to_string());
        Ok(())
    }
    let (mut done, mut out) = (BTreeSet::new(), vec![]);
    for m in wanted {
        visit(&module_name(m), deps, &mut done, &mut vec![], &mut out)?;
    }
    Ok(out)
}

/// Fails unless `bin` is an x86-64 ELF executable without a dynamic loader (static or
/// static-pie), which is what runs in the busybox-only initramfs.
fn check_static_elf(bin: &[u8]) -> Result<()> {
    if !bin.starts_with(b"\x7fELF\x02\x01") || bin.get(0x12..0x14) != Some(&[0x3e, 0][..]) {
        bail!("not an x86-64 ELF executable");
    }
    let u16_at = |o: usize| bin.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| bin.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let (phoff, phentsize, phnum) =
        (u64_at(0x20).unwrap_or(0), u16_at(0x36).unwrap_or(0), u16_at(0x38).unwrap_or(0));
    for i in 0..phnum {
        let b = phoff + i * phentsize;
        let ty = bin.get(b..b + 4).map(|t| u32::from_le_bytes(t.try_into().unwrap()));
        if ty == Some(3) {
            bail!("dynamically linked (has an ELF interpreter)");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The newc cpio writer

#[derive(Debug, Clone, PartialEq)]
enum CpioKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

/// An in-memory archive written in the "newc" format (as the kernel's initramfs unpacker
/// reads it), sorted by path with fixed owners and times so the output is reproducible.
#[derive(Default)]
struct Cpio {
    entries: BTreeMap<String, (u32, CpioKind)>,
}

impl Cpio {
    fn add(&mut self, path: &str, perm: u32, kind: CpioKind) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for comp in path.split('/').collect::<Vec<_>>().split_last().map(|x| x.1).unwrap_or(&[]) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert((0o755, CpioKind::Dir));
        }
        self.entries.insert(path.to_string(), (perm, kind));
    }
    fn dir(&mut self, path: &str, perm: u32) {
        self.add(path, perm, CpioKind::Dir);
    }
    fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.add(path, perm, CpioKind::File(data));
    }
    fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, 0o777, CpioKind::Symlink(target.to_string()));
    }
    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.add(path, perm, CpioKind::CharDev(major, minor));
    }

    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut off = 0usize;
        for (ino, (path, (perm, kind))) in self.entries.iter().enumerate() {
            let (ty, data, rdev, nlink): (u32, &[u8], (u32, u32), u32) = match kind {
                CpioKind::Dir => (0o040000, &[], (0, 0), 2),
                CpioKind::File(d) => (0o100000, d, (0, 0), 1),
                CpioKind::Symlink(t) => (0o120000, t.as_bytes(), (0, 0), 1),
                CpioKind::CharDev(ma, mi) => (0o020000, &[], (*ma, *mi), 1),
            };
            off += write_entry(w, ino as u32 + 1, ty | (perm & 0o7777), nlink, path, data, rdev)?;
        }
        off += write_entry(w, 0, 0, 1, "TRAILER!!!", &[], (0, 0))?;
        // Pad the archive to a multiple of 512 bytes, as cpio(1) does.
        w.write_all(&vec![0; (512 - off % 512) % 512])
    }
}

fn write_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) -> std::io::Result<usize> {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut hdr = String::from("070701");
    for f in fields {
        hdr.push_str(&format!("{f:08x}"));
    }
    let pad = |n: usize| (4 - n % 4) % 4;
    let head = hdr.len() + name.len() + 1;
    w.write_all(hdr.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad(head)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad(data.len())])?;
    Ok(head + pad(head) + data.len() + pad(data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: (name, mode, nlink, rdev, data).
    type Parsed = (String, u32, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader that checks the magic, padding and trailer.
    fn read_cpio(mut b: &[u8]) -> Vec<Parsed> {
        let total = b.len();
        let mut out = vec![];
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&b[..6], b"070701");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
            };
            let (mode, nlink, mtime, size, rdev, namesize) =
                (f(1), f(4), f(5), f(6) as usize, (f(9), f(10)), f(11) as usize);
            assert_eq!(mtime, 0);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(b[110 + namesize - 1], 0, "name not NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            assert!(b[110 + namesize..data_at].iter().all(|&x| x == 0), "name padding not zero");
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(b[data_at + size..next].iter().all(|&x| x == 0), "data padding not zero");
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.iter().all(|&x| x == 0), "garbage after the trailer");
                assert_eq!(total % 512, 0);
                return out;
            }
            out.push((name, mode, nlink, rdev, data));
        }
    }

    #[test]
    fn cpio_round_trip() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        c.file("lib/modules/vfio.ko", 0o644, vec![1, 2, 3, 4, 5]);
        c.file("etc/a", 0o600, vec![]);
        c.symlink("bin/sh", "/bin/busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.dir("tmp", 0o1777);
        let mut buf = vec![];
        c.write_to(&mut buf).unwrap();
        let got = read_cpio(&buf);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/a",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/vfio.ko",
                "tmp"
            ]
        );
        let get = |n: &str| got.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("init").4, b"#!/bin/sh\n");
        assert_eq!(get("lib/modules/vfio.ko").4, [1, 2, 3, 4, 5]);
        assert_eq!(get("etc/a").1, 0o100600);
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").4, b"/bin/busybox");
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("lib").1, 0o040755);
        assert_eq!(get("lib").2, 2);
        assert_eq!(get("tmp").1, 0o041777);
        // Deterministic: the same content gives the same bytes.
        let mut again = vec![];
        c.write_to(&mut again).unwrap();
        assert_eq!(buf, again);
    }

    #[test]
    fn cpio_matches_system_cpio_if_present() {
        // Cross-check with GNU cpio when it is installed.
        let Ok(out) = Command::new("cpio").arg("--version").output() else {
            return;
        };
        if !out.status.success() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cpio::default();
        c.file("a/b/c.txt", 0o644, b"hello".to_vec());
        c.symlink("a/link", "b/c.txt");
        let mut buf = vec![];
        c.write_to(&mut buf).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-H", "newc", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a\na/b\na/b/c.txt\na/link\n");
    }

    #[test]
    fn modules_dep_order() {
        let dep = "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko kernel/drivers/vfio/vfio_virqfd.ko kernel/virt/lib/irqbypass.ko\n\
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/drivers/vfio/vfio_virqfd.ko kernel/virt/lib/irqbypass.ko\n\
kernel/drivers/vfio/vfio.ko:\n\
kernel/drivers/vfio/vfio_virqfd.ko:\n\
kernel/virt/lib/irqbypass.ko:\n\
kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
kernel/net/core/failover.ko:\n";
        let deps = parse_modules_dep(dep);
        assert_eq!(deps["vfio_pci_core"], ["vfio", "vfio_virqfd", "irqbypass"]);
        let order = module_order(&["vfio-pci", "vfio_iommu_type1", "virtio_net"], &deps).unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} missing"));
        for (m, ds) in &deps {
            if order.contains(m) {
                for d in ds {
                    assert!(pos(d) < pos(m), "{d} must load before {m}: {order:?}");
                }
            }
        }
        assert_eq!(order.len(), 9, "each module once: {order:?}");
        assert!(module_order(&["nope"], &deps).is_err());
        let cyc = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        assert!(module_order(&["a"], &cyc).is_err());
    }

    #[test]
    fn kernel_package_from_metapackage_depends() {
        assert_eq!(
            kernel_package_from_depends("linux-image-6.1.0-28-amd64 (= 6.1.119-1)").as_deref(),
            Some("linux-image-6.1.0-28-amd64")
        );
        assert_eq!(kernel_package_from_depends("foo, bar"), None);
        assert_eq!(
            depends_version("linux-image-6.1.0-28-amd64 (= 6.1.119-1)", "linux-image-6.1.0-28-amd64")
                .as_deref(),
            Some("6.1.119-1")
        );
    }

    #[test]
    fn header_package_names() {
        assert_eq!(
            header_packages("6.1.0-28-amd64").unwrap(),
            ["linux-headers-6.1.0-28-amd64", "linux-headers-6.1.0-28-common", "linux-kbuild-6.1"]
        );
        assert_eq!(header_packages("6.12.9-amd64").unwrap()[2], "linux-kbuild-6.12");
        assert!(header_packages("6.1.0-28-arm64").is_err());
        assert!(header_packages("x-amd64").is_err());
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

    #[test]
    fn relative_paths() {
        assert_eq!(
            rel_path(
                "/usr/src/linux-headers-6.1.0-28-amd64",
                "/usr/src/linux-headers-6.1.0-28-common/Makefile"
            ),
            "../linux-headers-6.1.0-28-common/Makefile"
        );
        assert_eq!(
            rel_path("/lib/modules/6.1.0-28-amd64", "/usr/src/linux-headers-6.1.0-28-amd64"),
            "../../../usr/src/linux-headers-6.1.0-28-amd64"
        );
        assert_eq!(rel_path("/usr/src", "/usr/lib/linux-kbuild-6.1"), "../lib/linux-kbuild-6.1");
        assert_eq!(rel_path("/a", "/a"), ".");
        let mk = "include /usr/src/linux-headers-6.1.0-28-common/Makefile\n";
        assert_eq!(
            relative_includes(mk, "/usr/src/linux-headers-6.1.0-28-amd64").as_deref(),
            Some("include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.1.0-28-common/Makefile\n")
        );
        assert_eq!(relative_includes("include foo.mk\nall:\n", "/x"), None);
    }

    #[test]
    fn fix_up_header_tree() {
        let root = std::env::temp_dir().join(format!("headers-fixup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let amd64 = root.join("usr/src/linux-headers-1.2.0-3-amd64");
        let common = root.join("usr/src/linux-headers-1.2.0-3-common");
        let kbuild = root.join("usr/lib/linux-kbuild-1.2/scripts");
        let modules = root.join("lib/modules/1.2.0-3-amd64");
        for d in [&amd64, &common, &kbuild, &modules] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(amd64.join("Makefile"), "include /usr/src/linux-headers-1.2.0-3-common/Makefile\n")
            .unwrap();
        std::fs::write(common.join("Makefile"), "all:\n\t@echo common-$(KERNELRELEASE)\n").unwrap();
        std::os::unix::fs::symlink("/usr/lib/linux-kbuild-1.2/scripts", amd64.join("scripts")).unwrap();
        std::os::unix::fs::symlink("/usr/src/linux-headers-1.2.0-3-amd64", modules.join("build")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/elsewhere", modules.join("other")).unwrap();
        fix_up_headers(&root).unwrap();
        assert_eq!(
            std::fs::read_link(amd64.join("scripts")).unwrap(),
            Path::new("../../lib/linux-kbuild-1.2/scripts")
        );
        assert!(amd64.join("scripts").is_dir());
        assert!(modules.join("build").join("Makefile").is_file());
        assert_eq!(std::fs::read_link(modules.join("other")).unwrap(), Path::new("/nonexistent/elsewhere"));
        // The include works from the tree's own place (when make is installed).
        if let Ok(out) = Command::new("make").arg("-s").arg("-C").arg(&amd64).arg("KERNELRELEASE=x").output()
        {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "common-x");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// `ensure_headers` for the current image kernel, then a hello-world module built
    /// against it with the host's gcc and make.
    #[test]
    #[ignore = "downloads the kernel headers (~14 MB) and needs make and gcc"]
    fn headers_build_a_module() {
        let r = resolve_packages(&cache::root().join("debs")).unwrap();
        let image = Image {
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_version: r.kernel_package.trim_start_matches("linux-image-").to_string(),
            kernel_package_version: r.kernel_package_version.clone(),
        };
        let build = ensure_headers(&image).unwrap();
        assert!(build.ends_with(format!("linux-headers-{}", image.kernel_version)), "{}", build.display());
        // Cached the second time.
        assert_eq!(ensure_headers(&image).unwrap(), build);
        let m = std::env::temp_dir().join(format!("hello-module-{}", std::process::id()));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("Makefile"), "obj-m := hello.o\n").unwrap();
        std::fs::write(
            m.join("hello.c"),
            "#include <linux/module.h>\nstatic int __init hello_init(void) { pr_info(\"hello\\n\"); return 0; }\n\
             static void __exit hello_exit(void) {}\nmodule_init(hello_init);\nmodule_exit(hello_exit);\n\
             MODULE_LICENSE(\"GPL\");\n",
        )
        .unwrap();
        let out = Command::new("make")
            .arg("-C")
            .arg(&build)
            .arg(format!("M={}", m.display()))
            .arg("modules")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ko = std::fs::read(m.join("hello.ko")).unwrap();
        let info = elf_section(&ko, ".modinfo").unwrap();
        let vermagic = format!("vermagic={} ", image.kernel_version);
        assert!(find(info, vermagic.as_bytes()).is_some(), "{}", String::from_utf8_lossy(info));
        let _ = std::fs::remove_dir_all(&m);
    }

    #[test]
    fn bzimage_header_payload() {
        let mut bz = vec![0u8; 4096];
        bz[0x1f1] = 3;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        bz[4 * 512 + 16..4 * 512 + 22].copy_from_slice(XZ_MAGIC);
        assert_eq!(bzimage_payload(&bz).map(|p| p.len()), Some(8));
    }
}
