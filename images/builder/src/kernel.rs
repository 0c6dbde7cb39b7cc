//! The part of the image shared by every guest program build: the kernel as an ELF `vmlinux`
//! (decompressed from Debian's bzImage), the modules the guest loads in dependency order,
//! busybox, and the peer tools with their shared libraries.

use crate::packages::{Resolved, ToolDeb};
use crate::{deb, elf, WHAT};
use anyhow::{anyhow, bail, Context, Result};
use provision::steps::step;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// The modules the guest loads (their dependencies are added from the kernel package).
/// virtio_pci is needed for virtio_net to find a virtio-net-pci device (it is a module in
/// Debian's kernel). 9p + 9pnet_virtio mount a host folder (virtio-9p-pci), virtio_console
/// gives the named virtio-serial ports (the exec agent's channel).
pub(crate) const MODULES: &[&str] = &[
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

/// What is recorded next to the kernel part (`kernel/<key>/kernel.json`).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct KernelMeta {
    pub(crate) kernel_file: String,
    pub(crate) kernel_version: String,
    #[serde(default)]
    pub(crate) kernel_package_version: String,
    pub(crate) kernel_is_vmlinux: bool,
    /// Module names in load order (files `modules/<name>.ko`).
    pub(crate) modules: Vec<String>,
    /// Busybox applet paths (e.g. `sbin/poweroff`); empty if busybox could not run here.
    pub(crate) applets: Vec<String>,
    /// Peer tool files by image path (stored under `tools/` with the same path).
    pub(crate) tools: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Building the image

/// Unpacks the packages into `tmp`: the kernel (`vmlinux`, or `vmlinuz` if the extraction
/// fails), the modules in `modules/`, and `busybox`.
pub(crate) fn build(tmp: &Path, debs: &Path, r: &Resolved) -> Result<KernelMeta> {
    let kpkg = tmp.join("kernel-pkg");
    let bpkg = tmp.join("busybox-pkg");
    step(WHAT, &format!("unpack {}", r.kernel_package), || deb::extract(&debs.join(&r.kernel_deb), &kpkg))?;
    step(WHAT, "unpack busybox-static", || deb::extract(&debs.join(&r.busybox_deb), &bpkg))?;
    let release = r.kernel_package.trim_start_matches("linux-image-").to_string();

    let vmlinuz = kpkg.join("boot").join(format!("vmlinuz-{release}"));
    let (kernel_file, is_vmlinux) = step(WHAT, "extract vmlinux", || {
        let bz = std::fs::read(&vmlinuz).with_context(|| format!("read {}", vmlinuz.display()))?;
        match extract_vmlinux(&bz) {
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
        let deps = module_deps(&moddir, &index)?;
        let order = module_order(MODULES, &deps)?;
        std::fs::create_dir_all(tmp.join("modules"))?;
        for m in &order {
            let rel = index.get(m).ok_or_else(|| anyhow!("module {m} is not in {}", moddir.display()))?;
            let ko = read_module(&moddir.join(rel))?;
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

/// Unpacks the tool packages and copies the tool binaries and libraries into `tmp/tools/`
/// under their image paths; returns those paths.
fn collect_tools(tmp: &Path, debs: &Path, tools: &[ToolDeb]) -> Result<Vec<String>> {
    let root = tmp.join("tools-pkg");
    for t in tools {
        deb::extract(&debs.join(&t.deb), &root)?;
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

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";

/// Finds the compressed kernel inside a bzImage and decompresses it to the ELF `vmlinux`
/// (xz2 is liblzma, which has the x86 BCJ filter the kernel's XZ payload uses).
/// The payload's place comes from the boot protocol header (2.08+); failing that, from the
/// first XZ/gzip magic.
fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let payload = bzimage_payload(bz)
        .or_else(|| {
            let at = find(bz, XZ_MAGIC).or_else(|| find(bz, GZIP_MAGIC))?;
            Some(&bz[at..])
        })
        .ok_or_else(|| anyhow!("no XZ or gzip payload found"))?;
    let Some(elf) = decompress(payload).context("decompress the payload")? else {
        bail!(
            "the payload's compression is not XZ or gzip (magic {:02x?})",
            &payload[..payload.len().min(6)]
        );
    };
    if !elf::is_elf64(&elf) {
        bail!("the decompressed payload is not an ELF file");
    }
    Ok(elf)
}

/// The payload described by the bzImage header (`payload_offset`/`payload_length`).
/// Hand-written: four fields at fixed offsets of the boot protocol; the crates that know the
/// header (linux-loader) load a kernel into guest memory rather than read it.
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

/// Decompresses one XZ stream, ignoring what follows it (the kernel appends its size).
/// Drives liblzma's stream decoder directly: xz2's readers fail on bytes after the stream.
/// Decompresses XZ or gzip data, told apart by their magic; None when it is neither.
fn decompress(data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    if data.starts_with(XZ_MAGIC) {
        return unxz(data).map(Some);
    }
    if !data.starts_with(GZIP_MAGIC) {
        return Ok(None);
    }
    let mut out = vec![];
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(Some(out))
}

fn unxz(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0)?;
    let mut out = Vec::with_capacity(data.len().saturating_mul(4));
    loop {
        let before = (stream.total_in(), stream.total_out());
        out.reserve(1 << 20);
        let input = &data[stream.total_in() as usize..];
        if stream.process_vec(input, &mut out, Action::Finish)? == Status::StreamEnd {
            return Ok(out);
        }
        if (stream.total_in(), stream.total_out()) == before {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated XZ stream"));
        }
    }
}

/// A module file, decompressed if the package ships it compressed.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let name = path.to_string_lossy();
    let ko = if name.ends_with(".ko") {
        bytes
    } else if name.ends_with(".ko.xz") || name.ends_with(".ko.gz") {
        decompress(&bytes)
            .with_context(|| format!("decompress {}", path.display()))?
            .ok_or_else(|| anyhow!("{}: not XZ or gzip data", path.display()))?
    } else {
        bail!("{}: unsupported module compression", path.display());
    };
    if !elf::is_elf64(&ko) {
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
fn module_deps(moddir: &Path, index: &BTreeMap<String, String>) -> Result<BTreeMap<String, Vec<String>>> {
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
        let ko = read_module(&moddir.join(rel))?;
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
    let info = elf::section(ko, ".modinfo").ok_or_else(|| anyhow!("no .modinfo section"))?;
    Ok(info
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).split(',').filter(|s| !s.is_empty()).map(module_name).collect())
        .unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A payload as the kernel's build makes it: XZ with the x86 BCJ filter and CRC32,
    /// followed by the uncompressed size.
    #[test]
    fn unxz_bcj_payload_with_trailer() {
        let plain: Vec<u8> = (0..100_000u32).flat_map(|i| [0xe8, (i % 251) as u8, 0, 0, 0]).collect();
        let mut filters = xz2::stream::Filters::new();
        filters.x86();
        filters.lzma2(&xz2::stream::LzmaOptions::new_preset(6).unwrap());
        let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).unwrap();
        let mut packed = vec![];
        xz2::read::XzEncoder::new_stream(&plain[..], stream).read_to_end(&mut packed).unwrap();
        packed.extend((plain.len() as u32).to_le_bytes());
        assert_eq!(unxz(&packed).unwrap(), plain);
        assert!(unxz(&packed[..packed.len() / 2]).is_err(), "a truncated stream is an error");
    }
}
