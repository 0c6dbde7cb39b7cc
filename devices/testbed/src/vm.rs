//! Booting a guest: the QEMU command line, the console log, the result channel.
//!
//! The guest reports on its second serial port (ttyS1), which QEMU writes to a file: JSON
//! lines only, so the host never scrapes console text. The console (ttyS0) goes to a log.

use anyhow::{Context, Result};
use guest_image::Image;
use provision::qemu::Qemu;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which accelerator a VM runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// "kvm" or "tcg".
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Used in file names.
    pub name: String,
    pub accel: Accel,
    pub memory_mb: u32,
    /// vfio-user device sockets, in PCI slot order.
    pub vfio_user: Vec<PathBuf>,
    /// Scenario for the guest's init (`testbed.scenario=`).
    pub scenario: String,
    /// Arguments for the guest program (`testbed.args=`, comma-joined; no spaces or commas
    /// inside an argument).
    pub args: Vec<String>,
    /// Folder for the console log, the result file and QEMU's own output.
    pub dir: PathBuf,
    /// virtio-net-pci NICs whose backend is a vhost-user socket (ours: `vhost-net`).
    pub net: Vec<VhostNet>,
    /// Extra files for the guest's root file system (image path, bytes), appended to the
    /// initrd for this run only.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The guest's IOMMU: VFIO drivers (ours) need it on; software that hands the device
/// physical addresses needs it off or in passthrough.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Viommu {
    /// intel-iommu, translating (`intel_iommu=on`): what VFIO needs.
    #[default]
    On,
    /// No vIOMMU: devices see guest-physical addresses. Debian's kernel has no VFIO
    /// no-IOMMU mode, so VFIO drivers cannot run.
    Off,
    /// intel-iommu present, identity-mapped for the kernel's own DMA (`iommu=pt`); VFIO
    /// still works.
    Passthrough,
}

/// What a long-lived guest (`testbed up`) adds to a [`VmSpec`]: several CPUs, the vIOMMU
/// mode, a host folder, the exec agent's and the console's sockets, fixed PCI slots; and
/// what a peer guest on a UDP link adds: virtio-net NICs on `-netdev dgram`, and a network
/// namespace to run QEMU in.
#[derive(Clone, Debug, Default)]
pub struct VmExtras {
    /// vCPUs (1 when 0).
    pub cpus: u32,
    pub viommu: Viommu,
    /// A host folder mounted in the guest at /host (9p, mount tag `host`).
    pub share: Option<PathBuf>,
    /// The exec agent's socket (a virtio-serial port named `testbed.agent`; QEMU listens).
    pub agent: Option<PathBuf>,
    /// The console as a socket QEMU listens on (the console log is still written).
    pub console: Option<PathBuf>,
    /// The PCI slot of the first vfio-user device on the root bus; the others follow.
    pub first_slot: Option<u8>,
    /// Extra kernel command line.
    pub kernel_args: String,
    /// virtio-net-pci NICs on `-netdev dgram`: one Ethernet frame per UDP datagram (after
    /// the vhost-user ones of [`VmSpec::net`]).
    pub dgram: Vec<DgramNet>,
    /// Run QEMU inside this network namespace (`ip netns exec NS qemu…`, which execs QEMU:
    /// the child's pid is QEMU's, checked at start).
    pub netns: Option<String>,
}

/// A virtio-net-pci device on `-netdev dgram` with inet addresses: QEMU binds `local` and
/// sends every frame the guest transmits to `remote` as one datagram.
#[derive(Clone, Debug)]
pub struct DgramNet {
    /// QEMU's own address (port 0: any free port; the far end then learns it).
    pub local: SocketAddr,
    /// Where QEMU sends the guest's frames.
    pub remote: SocketAddr,
    pub mac: [u8; 6],
}

impl DgramNet {
    /// The `-netdev` option's value, for the netdev `id`.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host={},local.port={},remote.type=inet,remote.host={},remote.port={}",
            self.local.ip(),
            self.local.port(),
            self.remote.ip(),
            self.remote.port()
        )
    }
}

fn mac_text(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A virtio-net-pci device backed by a vhost-user-net socket.
#[derive(Clone, Debug)]
pub struct VhostNet {
    pub socket: PathBuf,
    pub mac: [u8; 6],
}

/// A running guest.
pub struct Vm {
    child: Child,
    pub console: PathBuf,
    pub result: PathBuf,
    pub qemu_log: PathBuf,
    started: Instant,
    boot_s: Option<f64>,
    /// With [`VmExtras::netns`]: where QEMU was checked to run.
    netns: Option<String>,
}

/// How a guest run ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// QEMU exited by itself (the guest powered off) before the deadline.
    pub exited: bool,
    /// Seconds from QEMU start to the guest's init report.
    pub boot_s: Option<f64>,
    /// Every JSON line of the result channel, in order.
    pub events: Vec<Value>,
    /// Lines on the result channel that were not JSON (should be none).
    pub garbage_lines: usize,
}

impl VmSpec {
    fn command(
        &self,
        qemu: &Qemu,
        image: &Image,
        initrd: &Path,
        console: &Path,
        result: &Path,
        x: &VmExtras,
    ) -> Command {
        let mut c = match &x.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&qemu.bin);
                c
            }
            None => Command::new(&qemu.bin),
        };
        let mem = format!("{}M", self.memory_mb);
        let machine = match self.accel {
            Accel::Kvm => "q35,accel=kvm,kernel-irqchip=split,memory-backend=mem",
            Accel::Tcg => "q35,accel=tcg,memory-backend=mem",
        };
        c.args(["-machine", machine]);
        c.args(["-cpu", if self.accel == Accel::Kvm { "host" } else { "max" }]);
        c.args(["-smp", &x.cpus.max(1).to_string(), "-m", &mem]);
        c.args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")]);
        c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        match &x.console {
            Some(sock) => c.args([
                "-chardev",
                &format!(
                    "socket,id=console,path={},server=on,wait=off,logfile={}",
                    sock.display(),
                    console.display()
                ),
            ]),
            None => c.args(["-chardev", &format!("file,id=console,path={}", console.display())]),
        };
        c.args(["-serial", "chardev:console"]);
        c.args(["-chardev", &format!("file,id=result,path={}", result.display())]);
        c.args(["-serial", "chardev:result"]);
        if let Some(fw) = &qemu.firmware {
            c.arg("-L").arg(fw);
        }
        c.arg("-kernel").arg(&image.kernel).arg("-initrd").arg(initrd);
        let mut append = String::from("console=ttyS0 quiet panic=-1");
        append.push_str(match x.viommu {
            Viommu::On => " intel_iommu=on",
            Viommu::Off => "",
            Viommu::Passthrough => " intel_iommu=on iommu=pt",
        });
        if x.share.is_some() {
            append.push_str(" testbed.share=host");
        }
        if !x.kernel_args.trim().is_empty() {
            append.push(' ');
            append.push_str(x.kernel_args.trim());
        }
        append.push_str(&format!(" testbed.scenario={}", self.scenario));
        if !self.args.is_empty() {
            append.push_str(&format!(" testbed.args={}", self.args.join(",")));
        }
        c.arg("-append").arg(append);
        // The vIOMMU must come before the devices it translates for.
        if x.viommu != Viommu::Off {
            c.args(["-device", "intel-iommu,caching-mode=on"]);
        }
        for (i, s) in self.vfio_user.iter().enumerate() {
            let mut dev = serde_json::json!({
                "driver": "vfio-user-pci",
                "socket": {"path": s.display().to_string(), "type": "unix"},
            });
            if let Some(first) = x.first_slot {
                dev["addr"] = serde_json::json!(format!("{:#04x}", usize::from(first) + i));
            }
            c.args(["-device", &dev.to_string()]);
        }
        if let Some(dir) = &x.share {
            c.args(["-fsdev", &format!("local,id=host,path={},security_model=none", dir.display())]);
            c.args(["-device", "virtio-9p-pci,fsdev=host,mount_tag=host"]);
        }
        if let Some(sock) = &x.agent {
            c.args(["-device", "virtio-serial-pci,id=vser"]);
            c.args(["-chardev", &format!("socket,id=agent,path={},server=on,wait=off", sock.display())]);
            c.args(["-device", "virtserialport,chardev=agent,name=testbed.agent"]);
        }
        for (i, n) in self.net.iter().enumerate() {
            // The guest's RAM is a shared memfd (above), so the backend can map it. No option
            // ROM: the guest boots from -kernel, not the network.
            c.args(["-chardev", &format!("socket,id=vhost{i},path={}", n.socket.display())]);
            c.args(["-netdev", &format!("vhost-user,id=net{i},chardev=vhost{i}")]);
            let mac = mac_text(n.mac);
            c.args(["-device", &format!("virtio-net-pci,netdev=net{i},mac={mac},mrg_rxbuf=on,romfile=")]);
        }
        for (i, n) in x.dgram.iter().enumerate() {
            // A stock virtio-net on QEMU's own UDP backend: no shared memory, no vhost.
            c.args(["-netdev", &n.netdev(&format!("dgram{i}"))]);
            let mac = mac_text(n.mac);
            c.args(["-device", &format!("virtio-net-pci,netdev=dgram{i},mac={mac},mrg_rxbuf=on,romfile=")]);
        }
        c
    }
}

impl Vm {
    /// Starts QEMU for `spec`.
    pub fn start(spec: &VmSpec, qemu: &Qemu, image: &Image) -> Result<Vm> {
        Self::start_with(spec, &VmExtras::default(), qemu, image)
    }

    /// Starts QEMU for `spec` with a long-lived guest's extras.
    pub fn start_with(spec: &VmSpec, x: &VmExtras, qemu: &Qemu, image: &Image) -> Result<Vm> {
        std::fs::create_dir_all(&spec.dir)?;
        let console = spec.dir.join(format!("{}.console.log", spec.name));
        let result = spec.dir.join(format!("{}.result.jsonl", spec.name));
        let qemu_log = spec.dir.join(format!("{}.qemu.log", spec.name));
        for f in [&console, &result] {
            let _ = std::fs::remove_file(f);
        }
        let log = std::fs::File::create(&qemu_log)?;
        let initrd = if spec.files.is_empty() {
            image.initrd.clone()
        } else {
            let p = spec.dir.join(format!("{}.initrd.gz", spec.name));
            guest_image::initrd_with_files(image, &spec.files, &p)?;
            p
        };
        let mut cmd = spec.command(qemu, image, &initrd, &console, &result, x);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("start {}", qemu.bin.display()))?;
        let mut vm =
            Vm { child, console, result, qemu_log, started: Instant::now(), boot_s: None, netns: None };
        if let Some(ns) = &x.netns {
            match vm.placed_in(ns, qemu) {
                Ok(note) => vm.netns = Some(note),
                Err(e) => {
                    vm.kill();
                    return Err(e.context(format!("QEMU's log: {}", tail(&vm.qemu_log, 5))));
                }
            }
        }
        Ok(vm)
    }

    /// Waits until `ip netns exec` has exec'd QEMU (the child's pid is QEMU's, so `kill`
    /// reaches QEMU) and checks that QEMU runs in namespace `ns`; returns a note saying so.
    fn placed_in(&mut self, ns: &str, qemu: &Qemu) -> Result<String> {
        use std::os::unix::fs::MetadataExt;
        let want = std::fs::canonicalize(&qemu.bin).unwrap_or_else(|_| qemu.bin.clone());
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if exe.as_deref() == Some(want.as_path()) {
                break;
            }
            if !self.running() {
                anyhow::bail!("`ip netns exec {ns}` exited before it ran QEMU");
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "pid {pid} is {exe:?}, not QEMU ({}), 10 s after `ip netns exec {ns}`",
                    want.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let theirs = id(&format!("/proc/{pid}/ns/net")).context("QEMU's network namespace")?;
        let named = id(&format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
        let ours = id("/proc/self/ns/net").context("our network namespace")?;
        if theirs != named || theirs == ours {
            anyhow::bail!(
                "QEMU (pid {pid}) is in net namespace inode {}, {ns} is {}, ours is {}",
                theirs.1,
                named.1,
                ours.1
            );
        }
        Ok(format!(
            "pid {pid} is QEMU ({}), in namespace {ns} (net:[{}]; ours net:[{}])",
            want.display(),
            theirs.1,
            ours.1
        ))
    }

    /// With [`VmExtras::netns`]: how QEMU was found placed (its pid, its namespace).
    pub fn netns_note(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The result channel's JSON lines so far (and the count of non-JSON lines).
    pub fn events(&self) -> (Vec<Value>, usize) {
        let text = std::fs::read_to_string(&self.result).unwrap_or_default();
        let mut events = vec![];
        let mut garbage = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => events.push(v),
                _ => garbage += 1,
            }
        }
        (events, garbage)
    }

    fn note_boot(&mut self) {
        if self.boot_s.is_none() && self.events().0.iter().any(|e| e["event"] == "init") {
            self.boot_s = Some(self.started.elapsed().as_secs_f64());
        }
    }

    /// Polls until `pred` holds for the events so far, QEMU exits, or `timeout` passes.
    /// Returns whether `pred` held.
    pub fn wait_for(&mut self, timeout: Duration, mut pred: impl FnMut(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.note_boot();
            if pred(&self.events().0) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                return pred(&self.events().0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit (the guest powers off when done), killing it at `timeout`.
    pub fn wait(mut self, timeout: Duration) -> VmOutcome {
        let deadline = Instant::now() + timeout;
        let exited = loop {
            self.note_boot();
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => break false,
            }
        };
        if !exited {
            self.kill();
        }
        self.note_boot();
        let (events, garbage_lines) = self.events();
        VmOutcome { exited, boot_s: self.boot_s, events, garbage_lines }
    }

    /// QEMU's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills QEMU at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
