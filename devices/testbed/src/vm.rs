//! Booting a guest: the QEMU command line, the console log, the result channel.
//!
//! The guest reports on its second serial port (ttyS1), which QEMU writes to a file: JSON
//! lines only, so the host never scrapes console text. The console (ttyS0) goes to a log.

use crate::image::Image;
use crate::qemu::Qemu;
use anyhow::{Context, Result};
use serde_json::Value;
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
    fn command(&self, qemu: &Qemu, image: &Image, initrd: &Path, console: &Path, result: &Path) -> Command {
        let mut c = Command::new(&qemu.bin);
        let mem = format!("{}M", self.memory_mb);
        let machine = match self.accel {
            Accel::Kvm => "q35,accel=kvm,kernel-irqchip=split,memory-backend=mem",
            Accel::Tcg => "q35,accel=tcg,memory-backend=mem",
        };
        c.args(["-machine", machine]);
        c.args(["-cpu", if self.accel == Accel::Kvm { "host" } else { "max" }]);
        c.args(["-smp", "1", "-m", &mem]);
        c.args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")]);
        c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        c.args(["-chardev", &format!("file,id=console,path={}", console.display())]);
        c.args(["-serial", "chardev:console"]);
        c.args(["-chardev", &format!("file,id=result,path={}", result.display())]);
        c.args(["-serial", "chardev:result"]);
        if let Some(fw) = &qemu.firmware {
            c.arg("-L").arg(fw);
        }
        c.arg("-kernel").arg(&image.kernel).arg("-initrd").arg(initrd);
        let mut append = String::from("console=ttyS0 quiet panic=-1 intel_iommu=on");
        append.push_str(&format!(" testbed.scenario={}", self.scenario));
        if !self.args.is_empty() {
            append.push_str(&format!(" testbed.args={}", self.args.join(",")));
        }
        c.arg("-append").arg(append);
        // The vIOMMU must come before the devices it translates for.
        c.args(["-device", "intel-iommu,caching-mode=on"]);
        for s in &self.vfio_user {
            let dev = serde_json::json!({
                "driver": "vfio-user-pci",
                "socket": {"path": s.display().to_string(), "type": "unix"},
            });
            c.args(["-device", &dev.to_string()]);
        }
        for (i, n) in self.net.iter().enumerate() {
            // The guest's RAM is a shared memfd (above), so the backend can map it. No option
            // ROM: the guest boots from -kernel, not the network.
            c.args(["-chardev", &format!("socket,id=vhost{i},path={}", n.socket.display())]);
            c.args(["-netdev", &format!("vhost-user,id=net{i},chardev=vhost{i}")]);
            let m = n.mac;
            let mac =
                format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
            c.args(["-device", &format!("virtio-net-pci,netdev=net{i},mac={mac},mrg_rxbuf=on,romfile=")]);
        }
        c
    }
}

impl Vm {
    /// Starts QEMU for `spec`.
    pub fn start(spec: &VmSpec, qemu: &Qemu, image: &Image) -> Result<Vm> {
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
            crate::image::initrd_with_files(image, &spec.files, &p)?;
            p
        };
        let mut cmd = spec.command(qemu, image, &initrd, &console, &result);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("start {}", qemu.bin.display()))?;
        Ok(Vm { child, console, result, qemu_log, started: Instant::now(), boot_s: None })
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
