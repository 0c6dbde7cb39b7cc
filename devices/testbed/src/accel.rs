//! Choosing KVM or TCG. `auto` probes KVM by booting the guest image with the `probe`
//! scenario under a short timeout, remembers the verdict in the cache, and falls back to
//! TCG, saying so once. (On machines whose /dev/kvm is itself nested or paravirtual,
//! stock kernels can crash under KVM; TCG always works, only slower.)

use crate::vm::{Accel, Vm, VmSpec};
use anyhow::{bail, Result};
use guest_image::Image;
use provision::cache::{self, KeyHasher};
use provision::qemu::Qemu;
use std::time::Duration;

/// The `--accel` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe guest boots under it, else TCG.
    Auto,
    /// KVM (fails if /dev/kvm is unusable).
    Kvm,
    /// TCG software emulation.
    Tcg,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

fn kvm_openable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// Boots the probe guest under KVM; Ok when it reported back.
fn probe(qemu: &Qemu, image: &Image) -> Result<(), String> {
    kvm_openable()?;
    let dir = std::env::temp_dir().join(format!("testbed-kvm-probe-{}", std::process::id()));
    let spec = VmSpec {
        name: "probe".into(),
        accel: Accel::Kvm,
        memory_mb: 256,
        vfio_user: vec![],
        scenario: "probe".into(),
        args: vec![],
        dir: dir.clone(),
        net: vec![],
        files: vec![],
    };
    let vm = Vm::start(&spec, qemu, image).map_err(|e| e.to_string())?;
    let qemu_log = vm.qemu_log.clone();
    let out = vm.wait(PROBE_TIMEOUT);
    let ok = out.events.iter().any(|e| e["event"] == "probe" && e["ok"] == true);
    let why = if ok {
        Ok(())
    } else if !out.exited {
        Err(format!("the probe guest did not finish within {PROBE_TIMEOUT:?}"))
    } else {
        let log = crate::vm::tail(&qemu_log, 3).replace('\n', " | ");
        Err(format!("the probe guest did not boot ({log})"))
    };
    let _ = std::fs::remove_dir_all(&dir);
    why
}

/// Resolves `--accel` to the accelerator to use.
pub fn resolve(choice: AccelChoice, qemu: &Qemu, image: &Image) -> Result<Accel> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => match kvm_openable() {
            Ok(()) => Ok(Accel::Kvm),
            Err(e) => bail!("--accel kvm: {e}; use --accel tcg or auto"),
        },
        AccelChoice::Auto => {
            if let Err(e) = kvm_openable() {
                eprintln!("[testbed] accel: no usable KVM ({e}); using TCG (slower)");
                return Ok(Accel::Tcg);
            }
            let mut h = KeyHasher::default();
            h.add("qemu", qemu.bin.to_string_lossy().as_bytes())
                .add("qemu-version", qemu.version.as_bytes())
                .add("kernel", image.kernel_version.as_bytes())
                .add("host", std::fs::read("/proc/sys/kernel/osrelease").unwrap_or_default().as_slice());
            let verdict = cache::root().join(format!("kvm-verdict-{}.txt", h.hex16()));
            let (ok, why) = match std::fs::read_to_string(&verdict) {
                Ok(s) => {
                    let (first, rest) = s.split_once('\n').unwrap_or((s.as_str(), ""));
                    (
                        first.trim() == "kvm-ok",
                        format!("{} (remembered in {})", rest.trim(), verdict.display()),
                    )
                }
                Err(_) => {
                    eprintln!(
                        "[testbed] accel: probing KVM with a tiny guest (at most {PROBE_TIMEOUT:?}, once)"
                    );
                    let r = probe(qemu, image);
                    let ok = r.is_ok();
                    let why = r.err().unwrap_or_default();
                    let _ = std::fs::create_dir_all(cache::root());
                    let _ = std::fs::write(
                        &verdict,
                        format!("{}\n{why}\n", if ok { "kvm-ok" } else { "kvm-unusable" }),
                    );
                    (ok, why)
                }
            };
            if ok {
                Ok(Accel::Kvm)
            } else {
                eprintln!("[testbed] accel: KVM cannot run the guest here: {why}; using TCG (slower)");
                Ok(Accel::Tcg)
            }
        }
    }
}
