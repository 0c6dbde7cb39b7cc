//! Linux VFIO type1 transport: a PCI device bound to `vfio-pci`, reached through
//! `/dev/vfio/vfio` (the container, i.e. the IOMMU context) and `/dev/vfio/<group>`.
//!
//! Runs inside a QEMU guest behind QEMU's intel-iommu (guest kernel booted with
//! `intel_iommu=on`), or on a real host with the FPGA.
//!
//! The steps of [`VfioDevice::open`]:
//! 1. make sure the device is bound to `vfio-pci` (`driver_override`, `driver/unbind`,
//!    `drivers_probe`) and wait for its IOMMU group and `/dev/vfio/<group>`;
//! 2. open the container, check the API version and the type1 IOMMU extension;
//! 3. open the group, check it is viable, attach it to the container, set the IOMMU type;
//! 4. get the device fd, read its regions (with their capability chains);
//! 5. enable Memory Space and Bus Master in the Command register.
//!
//! Every failing step is logged to stderr with its context, and the returned [`Error`]
//! says what failed and what to check.

use crate::bar::{Mapping, RegionIo};
use crate::mem::{DmaMapper, DmaUnmap, HUGE_PAGE, PAGE};
use crate::{Bar, DeviceAccess, DmaBuffer, DmaOptions, Error, Interrupt, Result, SharedMem};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd};
use std::os::raw::{c_int, c_ulong};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range, vfio_iova_range, vfio_irq_info,
    vfio_irq_set, vfio_region_info, vfio_region_info_cap_sparse_mmap, vfio_region_sparse_mmap_area,
    VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_DEVICE_FLAGS_PCI, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_TYPE1_IOMMU,
};

/// The sysfs root.
const SYS: &str = "/sys";
/// Where the VFIO character devices live.
const DEV_VFIO: &str = "/dev/vfio";
/// How long to wait for `vfio-pci` to bind and the group's device node to appear.
const BIND_TIMEOUT: Duration = Duration::from_secs(2);
/// The first IOVA handed out: above 4 GiB, clear of the x86 MSI window and low holes.
const IOVA_BASE: u64 = 0x1_0000_0000;
/// PCI Command register offset and the bits we set.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x02;
const PCI_COMMAND_MASTER: u16 = 0x04;

/// VFIO ioctl numbers: all `_IO(VFIO_TYPE, VFIO_BASE + n)` in `linux/vfio.h`.
mod nr {
    use std::os::raw::c_ulong;
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE};

    const fn vfio_io(n: u32) -> c_ulong {
        ioctl_expr(_IOC_NONE, VFIO_TYPE as u32, VFIO_BASE + n, 0)
    }

    pub const GET_API_VERSION: c_ulong = vfio_io(0);
    pub const CHECK_EXTENSION: c_ulong = vfio_io(1);
    pub const SET_IOMMU: c_ulong = vfio_io(2);
    pub const GROUP_GET_STATUS: c_ulong = vfio_io(3);
    pub const GROUP_SET_CONTAINER: c_ulong = vfio_io(4);
    pub const GROUP_GET_DEVICE_FD: c_ulong = vfio_io(6);
    pub const DEVICE_GET_INFO: c_ulong = vfio_io(7);
    pub const DEVICE_GET_REGION_INFO: c_ulong = vfio_io(8);
    pub const DEVICE_GET_IRQ_INFO: c_ulong = vfio_io(9);
    pub const DEVICE_SET_IRQS: c_ulong = vfio_io(10);
    pub const IOMMU_GET_INFO: c_ulong = vfio_io(12);
    pub const IOMMU_MAP_DMA: c_ulong = vfio_io(13);
    pub const IOMMU_UNMAP_DMA: c_ulong = vfio_io(14);
}

// ---------------------------------------------------------------------------------------
// Errors and logging

/// Logs an error with the transport's prefix and hands it back.
fn logged(e: Error) -> Error {
    eprintln!("vfio: {e}");
    e
}

/// A setup failure that is not a failed system call: `what` failed, `why` says what to check.
fn setup_err(what: impl Into<String>, why: impl Into<String>) -> Error {
    logged(Error::os(what, io::Error::other(why.into())))
}

/// Turns an ioctl/syscall return value into a result; on failure captures errno first,
/// then builds the message (which may look at the errno for a hint) and logs it.
fn check(ret: c_int, what: impl FnOnce(&io::Error) -> String) -> Result<c_int> {
    if ret >= 0 {
        return Ok(ret);
    }
    let err = io::Error::last_os_error();
    Err(logged(Error::os(what(&err), err)))
}

/// An `io::Error` from a file operation, with context, logged.
fn io_err(what: impl Into<String>, err: io::Error) -> Error {
    logged(Error::os(what, err))
}

fn errno_is(err: &io::Error, code: i32) -> bool {
    err.raw_os_error() == Some(code)
}

// ---------------------------------------------------------------------------------------
// sysfs: finding the device, binding it to vfio-pci, finding its IOMMU group

/// Reads a sysfs ID file such as `vendor` ("0x1234\n").
fn read_hex_id(path: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    u16::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// The BDF of the first PCI device (in sorted order) with the given IDs under
/// `sys_root/bus/pci/devices`.
fn find_bdf(sys_root: &Path, vendor: u16, device: u16) -> Result<String> {
    let dir = sys_root.join("bus/pci/devices");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| io_err(format!("list {} (is sysfs mounted?)", dir.display()), e))?;
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let p = e.path();
            read_hex_id(&p.join("vendor")) == Some(vendor) && read_hex_id(&p.join("device")) == Some(device)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    match found.len() {
        0 => Err(logged(Error::NoDevice { vendor, device })),
        1 => Ok(found.swap_remove(0)),
        _ => {
            eprintln!(
                "vfio: {} devices {vendor:04x}:{device:04x} found ({}); using {}",
                found.len(),
                found.join(", "),
                found[0]
            );
            Ok(found.swap_remove(0))
        }
    }
}

/// Accepts "00:03.0" as well as "0000:00:03.0".
fn normalize_bdf(bdf: &str) -> String {
    let bdf = bdf.trim();
    if bdf.matches(':').count() == 1 {
        format!("0000:{bdf}")
    } else {
        bdf.to_string()
    }
}

/// The last path component of a symlink's target (a driver's or group's name).
fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The driver a device is bound to, if any.
fn current_driver(sys_root: &Path, bdf: &str) -> Option<String> {
    link_name(&sys_root.join("bus/pci/devices").join(bdf).join("driver"))
}

/// The IOMMU group of a device, if it has one.
fn iommu_group(sys_root: &Path, bdf: &str) -> Option<u32> {
    link_name(&sys_root.join("bus/pci/devices").join(bdf).join("iommu_group"))?.parse().ok()
}

/// The devices of IOMMU group `group` and the driver each one is bound to.
fn group_members(sys_root: &Path, group: u32) -> Vec<(String, Option<String>)> {
    let dir = sys_root.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut v: Vec<(String, Option<String>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|bdf| {
            let drv = current_driver(sys_root, &bdf);
            (bdf, drv)
        })
        .collect();
    v.sort();
    v
}

fn sysfs_write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied { " (run as root)" } else { "" };
        io_err(format!("write {value:?} to {}{hint}", path.display()), e)
    })
}

/// Binds `bdf` to vfio-pci unless it already is. Returns whether it had to rebind.
fn bind_to_vfio(sys_root: &Path, bdf: &str) -> Result<bool> {
    let dev = sys_root.join("bus/pci/devices").join(bdf);
    if !dev.exists() {
        return Err(setup_err(
            format!("open PCI device {bdf}"),
            format!("{} does not exist (check `lspci -D`)", dev.display()),
        ));
    }
    let driver = current_driver(sys_root, bdf);
    if driver.as_deref() == Some("vfio-pci") {
        return Ok(false);
    }
    if !sys_root.join("bus/pci/drivers/vfio-pci").exists() && sys_root == Path::new(SYS) {
        eprintln!("vfio: the vfio-pci driver is not loaded; trying `modprobe vfio-pci`");
        match std::process::Command::new("modprobe").arg("vfio-pci").status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("vfio: `modprobe vfio-pci` failed ({s})"),
            Err(e) => eprintln!("vfio: cannot run modprobe: {e}"),
        }
    }
    eprintln!("vfio: binding {bdf} to vfio-pci (was {})", driver.as_deref().unwrap_or("unbound"));
    sysfs_write(&dev.join("driver_override"), "vfio-pci")?;
    if driver.is_some() {
        sysfs_write(&dev.join("driver/unbind"), bdf)?;
    }
    sysfs_write(&sys_root.join("bus/pci/drivers_probe"), bdf)?;
    Ok(true)
}

/// Waits up to `timeout` until `bdf` is bound to vfio-pci, has an IOMMU group and the
/// group's node exists under `dev_vfio`. Returns the group number.
fn wait_ready(sys_root: &Path, dev_vfio: &Path, bdf: &str, timeout: Duration) -> Result<u32> {
    let start = Instant::now();
    loop {
        let driver = current_driver(sys_root, bdf);
        let group = iommu_group(sys_root, bdf);
        let node = group.map(|g| dev_vfio.join(g.to_string()));
        let bound = driver.as_deref() == Some("vfio-pci");
        if let (true, Some(g), Some(n)) = (bound, group, &node) {
            if n.exists() {
                return Ok(g);
            }
        }
        if start.elapsed() >= timeout {
            let what = format!("prepare {bdf} for VFIO");
            return Err(match (group, node) {
                (None, _) => setup_err(
                    what,
                    format!(
                        "no IOMMU group ({}/bus/pci/devices/{bdf}/iommu_group is missing): boot \
                         the kernel with intel_iommu=on and give QEMU an IOMMU (-M \
                         q35,kernel-irqchip=split -device intel-iommu,intremap=on); on a host, \
                         enable VT-d in the firmware",
                        sys_root.display()
                    ),
                ),
                (Some(_), _) if !bound => setup_err(
                    what,
                    format!(
                        "bound to {} instead of vfio-pci after {timeout:?}: is the vfio-pci \
                         module loaded (modprobe vfio-pci)? does dmesg say why the probe failed?",
                        driver.as_deref().unwrap_or("no driver")
                    ),
                ),
                (Some(_), node) => setup_err(
                    what,
                    format!(
                        "{} did not appear after {timeout:?}: is the vfio module loaded, and \
                         udev running?",
                        node.map(|n| n.display().to_string()).unwrap_or_default()
                    ),
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Capability chains (`struct vfio_info_cap_header`, offsets relative to the info struct)

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// One capability of a chain: its id, version and offset in the info buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cap {
    id: u16,
    version: u16,
    offset: usize,
}

/// Walks a capability chain starting at `first` (0: none). Stops at a header that does
/// not fit in `buf` or a `next` that does not move forward (the kernel always appends).
fn cap_chain(buf: &[u8], first: u32) -> Vec<Cap> {
    let mut caps = Vec::new();
    let mut off = first as usize;
    while off != 0 {
        let (Some(id), Some(version), Some(next)) =
            (rd_u16(buf, off), rd_u16(buf, off + 2), rd_u32(buf, off + 4))
        else {
            eprintln!("vfio: capability at {off:#x} lies outside the {}-byte info", buf.len());
            break;
        };
        caps.push(Cap { id, version, offset: off });
        if next != 0 && (next as usize) <= off {
            eprintln!("vfio: capability chain loops back ({off:#x} -> {next:#x}); ignoring the rest");
            break;
        }
        off = next as usize;
    }
    caps
}

/// Reads `count` (offset-or-start, size-or-end) u64 pairs at `off`.
fn u64_pairs(buf: &[u8], off: usize, count: u32) -> Option<Vec<(u64, u64)>> {
    (0..count as usize)
        .map(|i| {
            let at = off.checked_add(i.checked_mul(16)?)?;
            Some((rd_u64(buf, at)?, rd_u64(buf, at.checked_add(8)?)?))
        })
        .collect()
}

/// The areas of a `VFIO_REGION_INFO_CAP_SPARSE_MMAP` capability at `cap`: (offset, size).
fn parse_sparse_mmap(buf: &[u8], cap: usize) -> Option<Vec<(u64, u64)>> {
    const _: () = assert!(size_of::<vfio_region_sparse_mmap_area>() == 16);
    let nr = rd_u32(buf, cap + offset_of!(vfio_region_info_cap_sparse_mmap, nr_areas))?;
    let areas = cap + offset_of!(vfio_region_info_cap_sparse_mmap, areas);
    u64_pairs(buf, areas, nr)
}

/// The ranges of a `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability: (start, end
/// inclusive).
fn parse_iova_ranges(buf: &[u8], cap: usize) -> Option<Vec<(u64, u64)>> {
    const _: () = assert!(size_of::<vfio_iova_range>() == 16);
    let nr = rd_u32(buf, cap + offset_of!(vfio_iommu_type1_info_cap_iova_range, nr_iovas))?;
    let ranges = cap + offset_of!(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
    u64_pairs(buf, ranges, nr)
}

/// What we keep of `VFIO_DEVICE_GET_REGION_INFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RegionInfo {
    flags: u32,
    size: u64,
    /// Offset of the region in the device fd.
    offset: u64,
    /// Sparse mmap areas (offset in the region, size), if the kernel gave any.
    sparse: Option<Vec<(u64, u64)>>,
    /// The MSI-X table in this region may be mmap'd.
    msix_mappable: bool,
}

impl RegionInfo {
    /// From the header and the whole info buffer (header + capability chain).
    fn parse(head: &vfio_region_info, buf: &[u8]) -> Self {
        let mut r =
            RegionInfo { flags: head.flags, size: head.size, offset: head.offset, ..Default::default() };
        if head.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
            for cap in cap_chain(buf, head.cap_offset) {
                match u32::from(cap.id) {
                    VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                        r.sparse = parse_sparse_mmap(buf, cap.offset);
                        if r.sparse.is_none() {
                            eprintln!("vfio: region {}: truncated sparse-mmap capability", head.index);
                        }
                    }
                    VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => r.msix_mappable = true,
                    _ => {}
                }
            }
        }
        r
    }

    /// The areas to mmap (offset in the region, size), if the region is mmap-able.
    fn mmap_areas(&self) -> Vec<(u64, u64)> {
        if self.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || self.size == 0 {
            return Vec::new();
        }
        match &self.sparse {
            Some(areas) => areas
                .iter()
                .copied()
                .filter(|&(off, len)| len > 0 && off.checked_add(len).is_some_and(|e| e <= self.size))
                .collect(),
            None => vec![(0, self.size)],
        }
    }
}

/// An 8-byte aligned buffer holding a VFIO info struct `T` followed by room for its
/// capability chain.
struct InfoBuf<T> {
    words: Vec<u64>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy> InfoBuf<T> {
    const FITS: () = assert!(std::mem::align_of::<T>() <= 8);

    /// A zeroed buffer of at least `len` bytes (and at least `size_of::<T>()`) with `head`
    /// at its start.
    fn new(head: T, len: usize) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        let words = len.max(size_of::<T>()).div_ceil(8);
        let mut b = InfoBuf { words: vec![0u64; words], _t: std::marker::PhantomData };
        // SAFETY: the buffer holds at least size_of::<T>() bytes and is 8-byte aligned,
        // which is enough for T (checked by FITS); T is plain old data.
        unsafe { std::ptr::write(b.words.as_mut_ptr().cast::<T>(), head) };
        b
    }

    fn head(&self) -> T {
        // SAFETY: as in `new`: aligned, large enough, and T is plain old data for which any
        // bytes the kernel wrote are valid.
        unsafe { std::ptr::read(self.words.as_ptr().cast::<T>()) }
    }

    fn as_mut_ptr(&mut self) -> *mut T {
        self.words.as_mut_ptr().cast()
    }

    fn len(&self) -> usize {
        self.words.len() * 8
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: viewing initialised u64s as bytes, same length in bytes and lifetime.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len()) }
    }
}

/// Runs an info ioctl whose struct starts with `argsz` and may be followed by a capability
/// chain: retries with a bigger buffer when the kernel asks for one (it then sets `argsz`
/// to the size it needs and leaves `cap_offset` at 0).
fn get_info<T: Copy>(
    fd: &File,
    req: c_ulong,
    head: T,
    argsz: fn(&mut T) -> &mut u32,
    what: &dyn Fn() -> String,
) -> Result<InfoBuf<T>> {
    let mut len = size_of::<T>();
    for _ in 0..4 {
        let mut h = head;
        *argsz(&mut h) = len as u32;
        let mut buf = InfoBuf::new(h, len);
        // SAFETY: `buf` holds at least `len` bytes and argsz says `len`, so the kernel
        // writes inside it; the fd is ours and the return value is checked.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ptr(fd, req, buf.as_mut_ptr()) };
        check(r, |_| what())?;
        let need = *argsz(&mut buf.head()) as usize;
        if need <= len {
            return Ok(buf);
        }
        len = need;
    }
    Err(setup_err(what(), "the kernel keeps asking for a bigger buffer"))
}

// ---------------------------------------------------------------------------------------
// IOVA allocation

/// A bump allocator of IOVAs inside the container's valid ranges.
#[derive(Debug)]
struct IovaAllocator {
    next: u64,
    /// Valid IOVA ranges (start, end inclusive), sorted.
    ranges: Vec<(u64, u64)>,
    /// The smallest IOMMU page size: every IOVA is aligned to at least this.
    min_align: u64,
}

impl IovaAllocator {
    /// Hands out IOVAs from `base` up, inside `ranges` (None: no restriction known).
    fn new(base: u64, ranges: Option<Vec<(u64, u64)>>, min_align: u64) -> Self {
        let mut ranges = ranges.unwrap_or_else(|| vec![(0, u64::MAX)]);
        ranges.retain(|&(s, e)| s <= e);
        ranges.sort_unstable();
        IovaAllocator { next: base, ranges, min_align: min_align.max(1) }
    }

    /// `len` bytes aligned to `align` (a power of two), or None if no range has room.
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(self.min_align);
        debug_assert!(align.is_power_of_two());
        let len = len.max(1);
        let align_up = |v: u64| v.checked_add(align - 1).map(|v| v & !(align - 1));
        for &(start, end) in &self.ranges {
            if end < self.next {
                continue;
            }
            let Some(at) = align_up(self.next.max(start)) else {
                continue;
            };
            let Some(last) = at.checked_add(len - 1) else {
                continue;
            };
            if last <= end {
                self.next = last.saturating_add(1);
                return Some(at);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// The container (IOMMU context), shared with DMA buffers

/// The container and the group attached to it. DMA buffers hold an `Arc` to it, so their
/// mappings stay valid (and can be unmapped) however long they outlive the device.
struct Iommu {
    /// Declared first so it closes first: the group leaves the container, then the
    /// container goes.
    group: File,
    container: File,
}

impl Iommu {
    fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> Result<()> {
        let map = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: passes a properly sized vfio_iommu_type1_dma_map the kernel only reads;
        // `vaddr..vaddr+size` is memory the caller keeps mapped until it unmaps the IOVA.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.container, nr::IOMMU_MAP_DMA, &map) };
        check(r, |e| {
            let hint = if errno_is(e, libc::ENOMEM) {
                " (locked-memory limit too low? run as root or raise `ulimit -l`)"
            } else if errno_is(e, libc::EEXIST) {
                " (IOVA overlaps an existing mapping)"
            } else if errno_is(e, libc::EINVAL) {
                " (IOVA outside the IOMMU's ranges or misaligned?)"
            } else {
                ""
            };
            format!("VFIO_IOMMU_MAP_DMA of {size:#x} bytes at IOVA {iova:#x}{hint}")
        })?;
        Ok(())
    }
}

impl DmaMapper for Iommu {
    fn map(&self, mem: &SharedMem, iova: u64) -> Result<()> {
        self.map_dma(mem.as_ptr() as u64, iova, mem.len() as u64)
    }
}

impl DmaUnmap for Iommu {
    fn unmap(&self, iova: u64, len: usize) {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
            data: Default::default(),
        };
        // SAFETY: passes a properly sized vfio_iommu_type1_dma_unmap (no bitmap); the
        // kernel writes back the unmapped size into it.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.container, nr::IOMMU_UNMAP_DMA, &mut unmap)
        };
        if check(r, |_| format!("VFIO_IOMMU_UNMAP_DMA of {len:#x} bytes at IOVA {iova:#x}")).is_ok()
            && unmap.size != len as u64
        {
            eprintln!(
                "vfio: VFIO_IOMMU_UNMAP_DMA at IOVA {iova:#x} unmapped {:#x} bytes, not {len:#x}",
                unmap.size
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trapped region accesses

/// pread/pwrite on the device fd, at the region's offset.
struct DeviceIo {
    device: Arc<File>,
    /// (offset in the device fd, size) of each region, by index.
    regions: Vec<(u64, u64)>,
}

impl DeviceIo {
    fn locate(&self, index: u32, offset: u64, len: usize) -> Result<u64> {
        let &(base, size) = self
            .regions
            .get(index as usize)
            .ok_or_else(|| Error::Bar { index: index as u8, why: "no such VFIO region".into() })?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(base + offset),
            _ => Err(Error::OutOfBar { index: index as u8, offset, len, size }),
        }
    }
}

impl RegionIo for DeviceIo {
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let at = self.locate(index, offset, data.len())?;
        self.device.read_exact_at(data, at).map_err(|e| {
            io_err(format!("read {} bytes at {offset:#x} of VFIO region {index}", data.len()), e)
        })
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let at = self.locate(index, offset, data.len())?;
        self.device.write_all_at(data, at).map_err(|e| {
            io_err(format!("write {} bytes at {offset:#x} of VFIO region {index}", data.len()), e)
        })
    }
}

// ---------------------------------------------------------------------------------------
// Interrupts

/// A `vfio_irq_set` with `fds` as its eventfd array, as u32 words (4-byte aligned, as the
/// struct needs).
fn irq_set_words(flags: u32, index: u32, start: u32, fds: &[i32]) -> Vec<u32> {
    const HEAD: usize = size_of::<vfio_irq_set>();
    const _: () = assert!(HEAD & 3 == 0 && std::mem::align_of::<vfio_irq_set>() <= 4);
    let head_words = HEAD / 4;
    let mut words = vec![0u32; head_words + fds.len()];
    let set = vfio_irq_set {
        argsz: (HEAD + 4 * fds.len()) as u32,
        flags,
        index,
        start,
        count: fds.len() as u32,
        data: Default::default(),
    };
    // SAFETY: `words` is 4-byte aligned and holds at least HEAD bytes; vfio_irq_set is
    // plain old data of HEAD bytes with alignment <= 4 (checked above).
    unsafe { std::ptr::write(words.as_mut_ptr().cast::<vfio_irq_set>(), set) };
    for (w, fd) in words[head_words..].iter_mut().zip(fds) {
        *w = *fd as u32;
    }
    words
}

// ---------------------------------------------------------------------------------------
// The device

/// A PCI device reached through Linux VFIO type1.
pub struct VfioDevice {
    bdf: String,
    device: Arc<File>,
    iommu: Arc<Iommu>,
    regions: Vec<RegionInfo>,
    io: Arc<DeviceIo>,
    /// BARs already built (so their areas are mapped once).
    bars: [Option<Bar>; 6],
    iova: IovaAllocator,
    /// How many MSI-X vectors are enabled (0: none).
    msix: u32,
    /// Devices every DMA buffer is also mapped into.
    peers: Vec<Arc<dyn DmaMapper>>,
}

impl VfioDevice {
    /// Opens the first PCI device with these IDs (see [`VfioDevice::open`]).
    pub fn open_by_id(vendor: u16, device: u16) -> Result<Self> {
        let bdf = find_bdf(Path::new(SYS), vendor, device)?;
        Self::open(&bdf)
    }

    /// Opens the PCI device at `bdf` ("0000:00:03.0" or "00:03.0"), binding it to
    /// vfio-pci first if needed.
    pub fn open(bdf: &str) -> Result<Self> {
        let bdf = normalize_bdf(bdf);
        let sys = Path::new(SYS);
        bind_to_vfio(sys, &bdf)?;
        let group = wait_ready(sys, Path::new(DEV_VFIO), &bdf, BIND_TIMEOUT)?;
        Self::open_group(sys, &bdf, group)
    }

    /// The device's PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    fn open_group(sys: &Path, bdf: &str, group_id: u32) -> Result<Self> {
        let rw = |path: &Path| {
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
                let extra = match e.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) => " (run as root)",
                    Some(libc::EBUSY) => " (another process, e.g. QEMU or an earlier run, holds the group)",
                    Some(libc::ENOENT) => " (is the vfio-pci module loaded?)",
                    _ => "",
                };
                io_err(format!("open {}{extra}", path.display()), e)
            })
        };

        // The container.
        let container = rw(Path::new("/dev/vfio/vfio"))?;
        // SAFETY: an argument-less ioctl on our container fd; the result is checked.
        let api = unsafe { vmm_sys_util::ioctl::ioctl(&container, nr::GET_API_VERSION) };
        let api = check(api, |_| "VFIO_GET_API_VERSION".into())?;
        if api as u32 != VFIO_API_VERSION {
            return Err(setup_err(
                "VFIO_GET_API_VERSION",
                format!("the kernel speaks VFIO API {api}, we speak {VFIO_API_VERSION}"),
            ));
        }
        let mut iommu_type = None;
        for t in [VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU] {
            // SAFETY: VFIO_CHECK_EXTENSION takes the extension by value; result checked.
            let r = unsafe { vmm_sys_util::ioctl::ioctl_with_val(&container, nr::CHECK_EXTENSION, t.into()) };
            if check(r, |_| format!("VFIO_CHECK_EXTENSION({t})"))? > 0 {
                iommu_type = Some(t);
                break;
            }
        }
        let Some(iommu_type) = iommu_type else {
            return Err(setup_err(
                "VFIO_CHECK_EXTENSION",
                "no type1 IOMMU support (modprobe vfio_iommu_type1; is the IOMMU enabled?)",
            ));
        };

        // The group.
        let group_path = PathBuf::from(format!("{DEV_VFIO}/{group_id}"));
        let group = rw(&group_path)?;
        let mut status = vfio_group_status { argsz: size_of::<vfio_group_status>() as u32, flags: 0 };
        // SAFETY: the kernel fills our properly sized vfio_group_status; result checked.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&group, nr::GROUP_GET_STATUS, &mut status) };
        check(r, |_| format!("VFIO_GROUP_GET_STATUS of group {group_id}"))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            let members = group_members(sys, group_id)
                .into_iter()
                .map(|(b, d)| format!("{b} ({})", d.as_deref().unwrap_or("no driver")))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(setup_err(
                format!("IOMMU group {group_id} of {bdf}"),
                format!(
                    "not viable: every device in the group must be bound to vfio-pci or to no \
                     driver; members: {members}"
                ),
            ));
        }
        let container_fd: c_int = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads an int (the container fd) through the
        // pointer; both fds are ours; result checked.
        let r =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&group, nr::GROUP_SET_CONTAINER, &container_fd) };
        check(r, |_| format!("VFIO_GROUP_SET_CONTAINER (group {group_id})"))?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value; result checked.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_val(&container, nr::SET_IOMMU, iommu_type.into()) };
        check(r, |e| {
            let hint = if errno_is(e, libc::EPERM) {
                " (no interrupt remapping: give QEMU -device intel-iommu,intremap=on with \
                 -M q35,kernel-irqchip=split, or load vfio_iommu_type1 with \
                 allow_unsafe_interrupts=1)"
            } else {
                ""
            };
            format!("VFIO_SET_IOMMU({iommu_type}) for group {group_id}{hint}")
        })?;
        let iova = Self::iova_allocator(&container);
        let iommu = Arc::new(Iommu { group, container });

        // The device.
        let name = CString::new(bdf).map_err(|_| setup_err("device name", "contains a NUL"))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated string; it returns a new fd
        // or -1 (checked).
        let fd = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(&iommu.group, nr::GROUP_GET_DEVICE_FD, name.as_ptr())
        };
        let fd = check(fd, |_| format!("VFIO_GROUP_GET_DEVICE_FD({bdf})"))?;
        // SAFETY: `fd` is a fresh fd that nothing else owns.
        let device = Arc::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });

        let mut info = vfio_device_info { argsz: size_of::<vfio_device_info>() as u32, ..Default::default() };
        // SAFETY: the kernel fills our vfio_device_info (argsz says its size, so no caps are
        // written past it); result checked.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&*device, nr::DEVICE_GET_INFO, &mut info) };
        check(r, |_| format!("VFIO_DEVICE_GET_INFO({bdf})"))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX {
            return Err(setup_err(
                format!("VFIO_DEVICE_GET_INFO({bdf})"),
                format!("not a vfio-pci device (flags {:#x}, {} regions)", info.flags, info.num_regions),
            ));
        }
        let mut regions = Vec::with_capacity(info.num_regions as usize);
        // The BARs, the ROM and config space (VGA and device-specific regions are unused).
        for index in 0..=VFIO_PCI_CONFIG_REGION_INDEX {
            let head = vfio_region_info { index, ..Default::default() };
            let what = || format!("VFIO_DEVICE_GET_REGION_INFO({bdf}, region {index})");
            let buf = get_info(&device, nr::DEVICE_GET_REGION_INFO, head, |h| &mut h.argsz, &what)?;
            regions.push(RegionInfo::parse(&buf.head(), buf.bytes()));
        }
        let io = Arc::new(DeviceIo {
            device: device.clone(),
            regions: regions.iter().map(|r| (r.offset, r.size)).collect(),
        });
        let mut dev = VfioDevice {
            bdf: bdf.to_string(),
            device,
            iommu,
            regions,
            io,
            bars: Default::default(),
            iova,
            msix: 0,
            peers: Vec::new(),
        };
        dev.enable_bus_master()?;
        Ok(dev)
    }

    /// The IOVA allocator for this container: its valid ranges and minimum page size from
    /// VFIO_IOMMU_GET_INFO when available.
    fn iova_allocator(container: &File) -> IovaAllocator {
        let what = || "VFIO_IOMMU_GET_INFO".to_string();
        let head = vfio_iommu_type1_info::default();
        let Ok(buf) = get_info(container, nr::IOMMU_GET_INFO, head, |h| &mut h.argsz, &what) else {
            eprintln!("vfio: no IOMMU info; assuming the whole IOVA space is usable");
            return IovaAllocator::new(IOVA_BASE, None, PAGE as u64);
        };
        let info = buf.head();
        let min_page = if info.flags & VFIO_IOMMU_INFO_PGSIZES != 0 && info.iova_pgsizes != 0 {
            1u64 << info.iova_pgsizes.trailing_zeros()
        } else {
            PAGE as u64
        };
        let mut ranges = None;
        if info.flags & VFIO_IOMMU_INFO_CAPS != 0 {
            for cap in cap_chain(buf.bytes(), info.cap_offset) {
                if u32::from(cap.id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
                    ranges = parse_iova_ranges(buf.bytes(), cap.offset);
                }
            }
        }
        IovaAllocator::new(IOVA_BASE, ranges, min_page)
    }

    fn config_region(&self) -> &RegionInfo {
        &self.regions[VFIO_PCI_CONFIG_REGION_INDEX as usize]
    }

    /// Sets Memory Space and Bus Master in the Command register (vfio-pci leaves bus
    /// mastering to userspace; DMA and MSI-X need it).
    fn enable_bus_master(&mut self) -> Result<()> {
        let mut b = [0u8; 2];
        self.config_read(PCI_COMMAND, &mut b)?;
        let cmd = u16::from_le_bytes(b);
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if want != cmd {
            self.config_write(PCI_COMMAND, &want.to_le_bytes())?;
        }
        Ok(())
    }

    fn set_irqs(&self, flags: u32, index: u32, fds: &[i32]) -> Result<()> {
        let words = irq_set_words(flags, index, 0, fds);
        // SAFETY: `words` is a complete vfio_irq_set followed by `fds.len()` i32s, as its
        // argsz says; the kernel only reads it; result checked.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(&*self.device, nr::DEVICE_SET_IRQS, words.as_ptr())
        };
        check(r, |_| format!("VFIO_DEVICE_SET_IRQS({}, index {index}, {} eventfds)", self.bdf, fds.len()))?;
        Ok(())
    }

    fn build_bar(&self, index: u8) -> Result<Bar> {
        let bar_err = |why: String| logged(Error::Bar { index, why });
        let region = self
            .regions
            .get(index as usize)
            .filter(|_| (index as u32) <= VFIO_PCI_BAR5_REGION_INDEX)
            .ok_or_else(|| bar_err("a PCI device has BARs 0 to 5".into()))?;
        if region.size == 0 {
            return Err(bar_err(format!(
                "not implemented by {} (size 0; the upper half of a 64-bit BAR?)",
                self.bdf
            )));
        }
        let mut mapped = Vec::new();
        for (off, len) in region.mmap_areas() {
            match usize::try_from(len)
                .map_err(|_| Error::Bar { index, why: "area too large".into() })
                .and_then(|l| Mapping::new(self.device.as_fd(), region.offset + off, l))
            {
                Ok(m) => mapped.push((off, Arc::new(m))),
                Err(e) => eprintln!(
                    "vfio: BAR {index}: mmap of {len:#x} bytes at {off:#x} failed ({e}); \
                     using read/write there"
                ),
            }
        }
        Ok(Bar::new(index, VFIO_PCI_BAR0_REGION_INDEX + index as u32, region.size, mapped, self.io.clone()))
    }
}

impl DeviceAccess for VfioDevice {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<()> {
        let cfg = self.config_region().offset;
        self.io
            .read(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
            .inspect_err(|_| eprintln!("vfio: {}: config read at {offset:#x} (fd offset {cfg:#x})", self.bdf))
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let cfg = self.config_region().offset;
        self.io.write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data).inspect_err(|_| {
            eprintln!("vfio: {}: config write at {offset:#x} (fd offset {cfg:#x})", self.bdf)
        })
    }

    fn bar(&mut self, index: u8) -> Result<Bar> {
        if let Some(bar) = self.bars.get(index as usize).and_then(|b| b.as_ref()) {
            return Ok(bar.clone());
        }
        let bar = self.build_bar(index)?;
        self.bars[index as usize] = Some(bar.clone());
        Ok(bar)
    }

    fn alloc_dma(&mut self, len: usize, opts: DmaOptions) -> Result<DmaBuffer> {
        let mem = SharedMem::new(len, opts)
            .inspect_err(|e| eprintln!("vfio: allocating {len} bytes of DMA memory ({opts:?}): {e}"))?;
        let align = opts.alignment(if mem.huge() { HUGE_PAGE } else { PAGE } as u64);
        let size = mem.len() as u64;
        self.iova.next = self.iova.next.max(crate::mem::iova_floor());
        self.iova.next = crate::mem::skip_reserved(self.iova.next, size, align);
        let iova = self.iova.alloc(size, align).ok_or_else(|| logged(Error::IovaExhausted(mem.len())))?;
        crate::mem::raise_iova_floor(iova + size);
        self.iommu.map_dma(mem.as_ptr() as u64, iova, size)?;
        let mut buf = DmaBuffer::new(mem, iova, self.iommu.clone());
        for p in &self.peers {
            buf.share_with(p.clone())?;
        }
        Ok(buf)
    }

    fn enable_msix(&mut self, count: u32) -> Result<Vec<Interrupt>> {
        let mut info = vfio_irq_info {
            argsz: size_of::<vfio_irq_info>() as u32,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            ..Default::default()
        };
        // SAFETY: the kernel fills our properly sized vfio_irq_info; result checked.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&*self.device, nr::DEVICE_GET_IRQ_INFO, &mut info)
        };
        check(r, |_| format!("VFIO_DEVICE_GET_IRQ_INFO({}, MSI-X)", self.bdf))?;
        if count > info.count || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(setup_err(
                format!("enable {count} MSI-X vectors on {}", self.bdf),
                format!("the device offers {} MSI-X vectors (flags {:#x})", info.count, info.flags),
            ));
        }
        // vfio-pci cannot grow an enabled MSI-X block: switch it off first.
        if self.msix != 0 {
            self.set_irqs(
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSIX_IRQ_INDEX,
                &[],
            )?;
            self.msix = 0;
        }
        let irqs = (0..count).map(|_| Interrupt::new().map_err(logged)).collect::<Result<Vec<_>>>()?;
        if count > 0 {
            let fds: Vec<i32> = irqs.iter().map(|i| i.raw_fd()).collect();
            self.set_irqs(
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSIX_IRQ_INDEX,
                &fds,
            )?;
            self.msix = count;
        }
        self.enable_bus_master()?;
        Ok(irqs)
    }

    fn transport(&self) -> &'static str {
        "vfio"
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.iommu.clone()
    }

    fn bus_address(&self, index: u8) -> Option<u64> {
        // Line `index` of sysfs `resource`: "start end flags", hexadecimal.
        let text =
            std::fs::read_to_string(Path::new(SYS).join("bus/pci/devices").join(&self.bdf).join("resource"))
                .ok()?;
        let line = text.lines().nth(index as usize)?;
        let start = line.split_whitespace().next()?;
        u64::from_str_radix(start.trim_start_matches("0x"), 16).ok().filter(|&a| a != 0)
    }

    fn add_dma_peer(&mut self, peer: Arc<dyn DmaMapper>) {
        self.peers.push(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch directory removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "vfio-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Tree(p)
        }

        fn file(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }

        fn dir(&self, rel: &str) {
            std::fs::create_dir_all(self.0.join(rel)).unwrap();
        }

        fn link(&self, rel: &str, target: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.0.join(rel)).unwrap()
        }

        /// A PCI device in the fake sysfs, optionally bound and in an IOMMU group.
        fn device(&self, bdf: &str, vendor: u16, device: u16, driver: Option<&str>, group: Option<u32>) {
            let d = format!("bus/pci/devices/{bdf}");
            self.file(&format!("{d}/vendor"), &format!("{vendor:#06x}\n"));
            self.file(&format!("{d}/device"), &format!("{device:#06x}\n"));
            if let Some(drv) = driver {
                self.file(&format!("bus/pci/drivers/{drv}/unbind"), "");
                let target = self.0.join(format!("bus/pci/drivers/{drv}"));
                self.link(&format!("{d}/driver"), target.to_str().unwrap());
            }
            if let Some(g) = group {
                self.dir(&format!("kernel/iommu_groups/{g}/devices"));
                let target = self.0.join(format!("kernel/iommu_groups/{g}"));
                self.link(&format!("{d}/iommu_group"), target.to_str().unwrap());
                let target = self.0.join(&d);
                self.link(&format!("kernel/iommu_groups/{g}/devices/{bdf}"), target.to_str().unwrap());
            }
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        // _IO(';', 100 + n) = 0x3b00 | (100 + n), from /usr/include/linux/vfio.h.
        assert_eq!(nr::GET_API_VERSION, 0x3b64);
        assert_eq!(nr::CHECK_EXTENSION, 0x3b65);
        assert_eq!(nr::SET_IOMMU, 0x3b66);
        assert_eq!(nr::GROUP_GET_STATUS, 0x3b67);
        assert_eq!(nr::GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(nr::GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(nr::DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(nr::DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(nr::DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(nr::DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(nr::IOMMU_GET_INFO, 0x3b70);
        assert_eq!(nr::IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(nr::IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!((VFIO_API_VERSION, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU), (0, 1, 3));
        assert_eq!(VFIO_PCI_CONFIG_REGION_INDEX, 7);
        assert_eq!(VFIO_PCI_MSIX_IRQ_INDEX, 2);
    }

    #[test]
    fn finds_device_by_id() {
        let t = Tree::new();
        t.device("0000:00:01.0", 0x8086, 0x29c0, None, None);
        t.device("0000:00:04.0", 0x1b36, 0x0010, Some("nvme"), Some(4));
        t.device("0000:00:03.0", 0x1b36, 0x0010, None, Some(3));
        // Two matches: the lowest BDF wins.
        assert_eq!(find_bdf(&t.0, 0x1b36, 0x0010).unwrap(), "0000:00:03.0");
        assert_eq!(find_bdf(&t.0, 0x8086, 0x29c0).unwrap(), "0000:00:01.0");
        match find_bdf(&t.0, 0x1234, 0x5678) {
            Err(Error::NoDevice { vendor: 0x1234, device: 0x5678 }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(find_bdf(&t.0.join("nope"), 1, 2).is_err());
    }

    #[test]
    fn normalizes_bdf() {
        assert_eq!(normalize_bdf("00:03.0"), "0000:00:03.0");
        assert_eq!(normalize_bdf("0000:00:03.0\n"), "0000:00:03.0");
    }

    #[test]
    fn binds_to_vfio_pci() {
        let t = Tree::new();
        t.file("bus/pci/drivers_probe", "");
        t.dir("bus/pci/drivers/vfio-pci");
        t.device("0000:00:03.0", 0x1b36, 0x0010, Some("nvme"), Some(3));
        assert!(bind_to_vfio(&t.0, "0000:00:03.0").unwrap());
        assert_eq!(t.read("bus/pci/devices/0000:00:03.0/driver_override"), "vfio-pci");
        assert_eq!(t.read("bus/pci/drivers/nvme/unbind"), "0000:00:03.0");
        assert_eq!(t.read("bus/pci/drivers_probe"), "0000:00:03.0");

        // Unbound device: no unbind.
        t.device("0000:00:05.0", 0x1b36, 0x0011, None, Some(5));
        t.file("bus/pci/drivers/nvme/unbind", "");
        assert!(bind_to_vfio(&t.0, "0000:00:05.0").unwrap());
        assert_eq!(t.read("bus/pci/drivers/nvme/unbind"), "");
        assert_eq!(t.read("bus/pci/drivers_probe"), "0000:00:05.0");

        // Already bound: nothing written.
        t.device("0000:00:06.0", 0x1b36, 0x0012, Some("vfio-pci"), Some(6));
        t.file("bus/pci/drivers_probe", "");
        assert!(!bind_to_vfio(&t.0, "0000:00:06.0").unwrap());
        assert_eq!(t.read("bus/pci/drivers_probe"), "");

        assert!(bind_to_vfio(&t.0, "0000:00:07.0").is_err());
    }

    #[test]
    fn waits_for_group_node() {
        let t = Tree::new();
        t.device("0000:00:03.0", 0x1b36, 0x0010, Some("vfio-pci"), Some(7));
        t.device("0000:00:04.0", 0x1b36, 0x0010, Some("vfio-pci"), None);
        t.device("0000:00:05.0", 0x1b36, 0x0010, Some("nvme"), Some(9));
        t.file("dev/vfio/7", "");
        let dev = t.0.join("dev/vfio");
        let short = Duration::from_millis(50);
        assert_eq!(wait_ready(&t.0, &dev, "0000:00:03.0", short).unwrap(), 7);

        let msg = wait_ready(&t.0, &dev, "0000:00:04.0", short).unwrap_err().to_string();
        assert!(msg.contains("no IOMMU group") && msg.contains("intel_iommu=on"), "{msg}");
        let msg = wait_ready(&t.0, &dev, "0000:00:05.0", short).unwrap_err().to_string();
        assert!(msg.contains("bound to nvme") && msg.contains("modprobe vfio-pci"), "{msg}");
        t.device("0000:00:06.0", 0x1b36, 0x0010, Some("vfio-pci"), Some(8));
        let msg = wait_ready(&t.0, &dev, "0000:00:06.0", short).unwrap_err().to_string();
        assert!(msg.contains("dev/vfio/8 did not appear"), "{msg}");

        // The node shows up while waiting.
        let node = t.0.join("dev/vfio/8");
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            std::fs::write(node, "").unwrap();
        });
        assert_eq!(wait_ready(&t.0, &dev, "0000:00:06.0", Duration::from_secs(2)).unwrap(), 8);
        h.join().unwrap();
    }

    #[test]
    fn lists_group_members() {
        let t = Tree::new();
        t.device("0000:00:04.0", 0x1b36, 0x0010, Some("e1000e"), Some(3));
        t.device("0000:00:03.0", 0x1b36, 0x0010, Some("vfio-pci"), Some(3));
        t.device("0000:00:05.0", 0x1b36, 0x0010, None, Some(3));
        assert_eq!(
            group_members(&t.0, 3),
            vec![
                ("0000:00:03.0".to_string(), Some("vfio-pci".to_string())),
                ("0000:00:04.0".to_string(), Some("e1000e".to_string())),
                ("0000:00:05.0".to_string(), None),
            ]
        );
        assert!(group_members(&t.0, 4).is_empty());
    }

    #[test]
    fn iova_allocator_aligns_and_bumps() {
        let mut a = IovaAllocator::new(IOVA_BASE, None, PAGE as u64);
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x1_0000_0000));
        assert_eq!(a.alloc(0x3000, PAGE as u64), Some(0x1_0000_1000));
        assert_eq!(a.alloc(HUGE_PAGE as u64, HUGE_PAGE as u64), Some(0x1_0020_0000));
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x1_0040_0000));
        // The IOMMU's minimum page size wins over a smaller alignment.
        let mut a = IovaAllocator::new(IOVA_BASE + 0x1000, None, 0x10000);
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x1_0001_0000));
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x1_0002_0000));
    }

    #[test]
    fn iova_allocator_skips_reserved_holes() {
        // As the kernel reports for x86: a hole for the MSI window, and (made up) a hole
        // just above the base.
        let ranges = vec![(0x2_0000_1000, 0x7f_ffff_ffff), (0, 0xfedf_ffff), (0xfef0_0000, 0x1_0000_ffff)];
        let mut a = IovaAllocator::new(IOVA_BASE, Some(ranges), PAGE as u64);
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x1_0000_0000));
        assert_eq!(a.alloc(0xf000, PAGE as u64), Some(0x1_0000_1000));
        // Does not fit in what is left of the second range: next range, aligned up.
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x2_0000_1000));
        assert_eq!(a.alloc(HUGE_PAGE as u64, HUGE_PAGE as u64), Some(0x2_0020_0000));
        // Larger than any range: exhausted, and the allocator is unchanged.
        assert_eq!(a.alloc(0x100_0000_0000, PAGE as u64), None);
        assert_eq!(a.alloc(0x1000, PAGE as u64), Some(0x2_0040_0000));
        // Base below every range: starts at the first range.
        let mut a = IovaAllocator::new(IOVA_BASE, Some(vec![(0x8_0000_0000, 0x8_ffff_ffff)]), 4096);
        assert_eq!(a.alloc(0x1000, 4096), Some(0x8_0000_0000));
        // End of the address space: no overflow.
        let mut a = IovaAllocator::new(u64::MAX - 0xfff, None, 4096);
        assert_eq!(a.alloc(0x1000, 4096), Some(u64::MAX - 0xfff));
        assert_eq!(a.alloc(0x1000, 4096), None);
    }

    fn put_u16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_cap(b: &mut [u8], off: usize, id: u32, version: u16, next: u32) {
        put_u16(b, off, id as u16);
        put_u16(b, off + 2, version);
        put_u32(b, off + 4, next);
    }

    /// A region info as the kernel returns for a BAR with the MSI-X table: the header, a
    /// sparse-mmap capability with two areas, then an MSIX_MAPPABLE capability.
    fn region_buf() -> (vfio_region_info, Vec<u8>) {
        let mut b = vec![0u8; 32 + 48 + 8];
        let head = vfio_region_info {
            argsz: b.len() as u32,
            flags: VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS | 3,
            index: 2,
            cap_offset: 32,
            size: 0x10000,
            offset: 0x2_0000_0000_0000,
        };
        put_u32(&mut b, 0, head.argsz);
        put_cap(&mut b, 32, VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 80);
        put_u32(&mut b, 40, 2);
        put_u64(&mut b, 48, 0);
        put_u64(&mut b, 56, 0x3000);
        put_u64(&mut b, 64, 0x4000);
        put_u64(&mut b, 72, 0xc000);
        put_cap(&mut b, 80, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0);
        (head, b)
    }

    #[test]
    fn parses_region_caps() {
        let (head, b) = region_buf();
        assert_eq!(
            cap_chain(&b, 32),
            vec![Cap { id: 1, version: 1, offset: 32 }, Cap { id: 3, version: 1, offset: 80 }]
        );
        let r = RegionInfo::parse(&head, &b);
        assert_eq!(r.sparse, Some(vec![(0, 0x3000), (0x4000, 0xc000)]));
        assert!(r.msix_mappable);
        assert_eq!((r.size, r.offset), (0x10000, 0x2_0000_0000_0000));
        assert_eq!(r.mmap_areas(), vec![(0, 0x3000), (0x4000, 0xc000)]);

        // Without the CAPS flag the chain is not read; the whole region is mapped.
        let plain = vfio_region_info { flags: VFIO_REGION_INFO_FLAG_MMAP, ..head };
        let r = RegionInfo::parse(&plain, &b);
        assert_eq!((r.sparse.clone(), r.msix_mappable), (None, false));
        assert_eq!(r.mmap_areas(), vec![(0, 0x10000)]);
        // Not mmap-able: nothing mapped.
        let r = RegionInfo::parse(&vfio_region_info { flags: 3, ..head }, &b);
        assert!(r.mmap_areas().is_empty());
    }

    #[test]
    fn cap_chain_survives_bad_input() {
        let (head, mut b) = region_buf();
        // A loop back to the first capability stops the walk.
        put_cap(&mut b, 80, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 32);
        assert_eq!(cap_chain(&b, 32).len(), 2);
        // A chain running off the buffer stops there.
        put_cap(&mut b, 80, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 4096);
        assert_eq!(cap_chain(&b, 32).len(), 2);
        assert!(cap_chain(&b, 0).is_empty());
        // A sparse-mmap cap claiming more areas than the buffer holds is dropped.
        put_u32(&mut b, 40, 100);
        let r = RegionInfo::parse(&head, &b);
        assert_eq!(r.sparse, None);
        // Areas beyond the region are not mapped.
        put_u32(&mut b, 40, 2);
        put_u64(&mut b, 72, 0xd000);
        assert_eq!(RegionInfo::parse(&head, &b).mmap_areas(), vec![(0, 0x3000)]);
    }

    #[test]
    fn parses_iova_ranges() {
        // vfio_iommu_type1_info (24 bytes), a migration cap (32 bytes), the IOVA cap.
        let mut b = vec![0u8; 24 + 32 + 16 + 2 * 16];
        put_cap(&mut b, 24, 2, 1, 56);
        put_cap(&mut b, 56, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0);
        put_u32(&mut b, 64, 2);
        put_u64(&mut b, 72, 0);
        put_u64(&mut b, 80, 0xfedf_ffff);
        put_u64(&mut b, 88, 0xfef0_0000);
        put_u64(&mut b, 96, 0x7f_ffff_ffff);
        let caps = cap_chain(&b, 24);
        let cap = caps.iter().find(|c| u32::from(c.id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE).unwrap();
        assert_eq!(
            parse_iova_ranges(&b, cap.offset),
            Some(vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)])
        );
        assert_eq!(parse_iova_ranges(&b[..90], cap.offset), None);
    }

    #[test]
    fn info_buf_round_trips_header() {
        let head = vfio_region_info { argsz: 32, index: 7, size: 256, ..Default::default() };
        let b = InfoBuf::new(head, 100);
        assert_eq!(b.len(), 104);
        assert_eq!(b.head(), head);
        assert_eq!(rd_u32(b.bytes(), 8), Some(7));
        assert_eq!(rd_u64(b.bytes(), 16), Some(256));
    }

    #[test]
    fn irq_set_layout() {
        let w = irq_set_words(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            VFIO_PCI_MSIX_IRQ_INDEX,
            0,
            &[10, 11, -1],
        );
        assert_eq!(w, vec![32, 0x24, 2, 0, 3, 10, 11, u32::MAX]);
        let w = irq_set_words(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, &[]);
        assert_eq!(w, vec![20, 0x21, 2, 0, 0]);
    }

    #[test]
    fn device_io_checks_bounds() {
        let f = File::open("/dev/zero").unwrap();
        let io = DeviceIo { device: Arc::new(f), regions: vec![(0, 0x100), (0x1000, 0x10)] };
        let mut b = [1u8; 4];
        io.read(1, 0xc, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(matches!(io.read(1, 0xd, &mut b), Err(Error::OutOfBar { index: 1, .. })));
        assert!(matches!(io.read(5, 0, &mut b), Err(Error::Bar { index: 5, .. })));
    }
}
