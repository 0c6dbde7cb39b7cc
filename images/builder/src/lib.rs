//! The guest image: Debian 12's stock kernel (as an uncompressed `vmlinux`, which QEMU boots
//! through PVH) and a small initramfs with busybox, the vfio/uio/virtio-net/9p/virtio-serial
//! modules, Debian's libc, our `/init` (images/init) and the guest program as
//! `/bin/testbed-guest`.
//!
//! Everything is cached under `provision::cache::root()`: the Debian packages in `debs/`
//! (resolved at most once a day through a private apt state dir) and each built image in
//! `image/<key>/`, where the key covers every input of the image. [`ensure_headers`] adds
//! the image kernel's headers (`headers/<kernel>/`) for building out-of-tree modules.
//!
//! The pieces: `packages` (apt), `deb` (unpacking a .deb), `kernel` (vmlinux, modules and
//! tools: the part shared by every image), `initramfs` (the cpio archive), `elf`, `headers`.
//! Nothing here runs dpkg or Python: the packages are read with the `ar`, `tar` and `xz2`
//! crates.

mod deb;
mod elf;
mod headers;
mod initramfs;
mod kernel;
mod packages;

pub use headers::ensure_headers;

use anyhow::{anyhow, Context, Result};
use initramfs::Cpio;
use kernel::KernelMeta;
use provision::cache::{self, KeyHasher};
use provision::steps::{run_logged, step};
use serde::{Deserialize, Serialize};
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
const FORMAT_VERSION: &str = "testbed-image-v5";

const DAY: Duration = Duration::from_secs(24 * 3600);
const WHAT: &str = "guest image";

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
    elf::check_static(&guest).with_context(|| {
        format!(
            "{WHAT}: {} cannot run in the guest image (build it with `-C target-feature=+crt-static`)",
            guest_bin.display()
        )
    })?;

    let root = cache::root();
    let debs = root.join("debs");
    let resolved = step(WHAT, "resolve Debian packages", || packages::resolve(&debs))?;

    // The kernel part (vmlinux, modules, busybox) only depends on the packages; it is shared
    // by the images of every guest program build.
    let mut kh = KeyHasher::default();
    kh.add("format", FORMAT_VERSION.as_bytes())
        .add("kernel", resolved.kernel_package.as_bytes())
        .add("kernel-version", resolved.kernel_package_version.as_bytes())
        .add("busybox", resolved.busybox_version.as_bytes())
        .add("tools", serde_json::to_string(&resolved.tools)?.as_bytes())
        .add("modules", kernel::MODULES.join(",").as_bytes());
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
            let m = in_temp_dir(&kdir, |tmp| kernel::build(tmp, &debs, &resolved))?;
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
    elf::check_static(&bytes).with_context(|| format!("guest program build: {}", bin.display()))?;
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
