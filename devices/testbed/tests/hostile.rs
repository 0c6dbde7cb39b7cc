//! Issue 17's outside reproducers, run against `testbed serve DEVICE --socket PATH` as a
//! separate process, for smoke, enso, packetized, crypto and ml: a client that resizes the
//! fds it was handed, resets rings under the device thread, stalls mid-message or skips
//! VERSION must neither kill the server nor hang it, and a well-behaved client is served
//! afterwards. `TESTBED_BIN=/path/to/testbed` runs them against another build (this is how
//! they were seen to fail on the code before the fixes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testbed::rig::DeviceKind;
use testbed::scenarios::hostile;

struct Served {
    child: Child,
    sock: PathBuf,
    kind: DeviceKind,
}

impl Served {
    fn start(kind: DeviceKind, tag: &str) -> Served {
        let bin = std::env::var_os("TESTBED_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_testbed")), PathBuf::from);
        let dir = std::env::temp_dir().join(format!("hostile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join(format!("{}.sock", kind.name()));
        let child = Command::new(bin)
            .args(["serve", kind.name(), "--socket"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "testbed serve {} never listened", kind.name());
            std::thread::sleep(Duration::from_millis(20));
        }
        Served { child, sock, kind }
    }

    fn path(&self) -> &Path {
        &self.sock
    }

    /// The server process is still running and a well-behaved client is served.
    fn alive_and_answering(&mut self, after: &str) {
        std::thread::sleep(Duration::from_millis(1500));
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "{}: the server died after {after}: {status:?}", self.kind.name());
        if let Err(e) = hostile::answers(&self.sock, self.kind) {
            panic!("{}: a well-behaved client was not served after {after}: {e:#}", self.kind.name());
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DEVICES: [DeviceKind; 5] =
    [DeviceKind::Smoke, DeviceKind::Enso, DeviceKind::Packetized, DeviceKind::Crypto, DeviceKind::Ml];

/// Defect 3, on every device: the shared-BAR memfds cannot be shrunk.
#[test]
fn shared_bar_fds_cannot_be_shrunk_on_any_device() {
    for kind in DEVICES {
        let mut s = Served::start(kind, &format!("bar-{}", kind.name()));
        let r = hostile::shrink_bar_fds(s.path());
        s.alive_and_answering("a client shrank its shared-BAR memfds");
        let tried = r.unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
        assert!(tried >= 1, "{}: no shared BAR offered", kind.name());
    }
}

/// Defect 1: a DMA memfd shrunk after DMA_MAP.
#[test]
fn a_shrunk_dma_file_is_refused_dma() {
    let mut s = Served::start(DeviceKind::Smoke, "dma");
    let r = hostile::shrink_dma(s.path());
    s.alive_and_answering("a DMA into a shrunk memfd");
    r.unwrap();
}

/// Defect 4: a ring reset under the accelerators' device threads.
#[test]
fn accelerators_survive_a_ring_reset_between_polls() {
    for kind in [DeviceKind::Crypto, DeviceKind::Ml] {
        let mut s = Served::start(kind, &format!("ring-{}", kind.name()));
        let r = hostile::ring_reset(s.path());
        if let Err(e) = r {
            panic!("{}: {e:#}", kind.name());
        }
        s.alive_and_answering("a ring reset");
    }
}

/// Defects 5 and 7, on every device: a stalled client is dropped after the message
/// timeout, and nothing is served before VERSION.
#[test]
fn stalled_clients_are_dropped_and_version_comes_first_on_every_device() {
    for kind in DEVICES {
        let mut s = Served::start(kind, &format!("stall-{}", kind.name()));
        match hostile::stall(s.path()) {
            Ok(waited) => {
                assert!(waited < Duration::from_secs(8), "{}: served after {waited:?}", kind.name())
            }
            Err(e) => panic!("{}: {e:#}", kind.name()),
        }
        if let Err(e) = hostile::before_version(s.path()) {
            panic!("{}: {e:#}", kind.name());
        }
        s.alive_and_answering("a stalled client and requests before VERSION");
    }
}
