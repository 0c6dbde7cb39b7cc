//! Real peers on the wire: a second guest whose standard `virtio-net-pci` NIC is backed by
//! our vhost-user-net backend, cabled to the emulated Ensō NIC's Ethernet port, so stock
//! Linux tools (busybox `ping`/`arping`, OpenBSD `nc`) talk to the Rust app behind the
//! Ensō NIC; and EnsōGen, the packet generator, against `echo` NIC to NIC.
//!
//! ```text
//!  peer guest (Linux stack)            tap (host)            Ensō guest (Rust app)
//!  virtio-net ─ vhost-user ─ backend ══ cable ══ tap ══ cable ══ Ensō NIC ─ vfio-user ─ VFIO
//! ```
//!
//! With [`LinkKind::Udp`] the peer's virtio-net is on QEMU's own `-netdev dgram` instead
//! (nothing of ours in the peer's QEMU), and the NIC's port is a [`wire::UdpPort`]: one
//! Ethernet frame per datagram, on loopback or, with the peer's QEMU in another network
//! namespace, across a veth pair, as between two hosts.
//!
//! ```text
//!  virtio-net ─ -netdev dgram ┄ UDP ┄ UdpPort ══ tap ══ cable ══ Ensō NIC
//! ```
//!
//! The tap keeps a copy of every frame, so the host checks each exchange from outside both
//! machines (and writes it as `wire.pcap` next to the logs).

use crate::scenarios::chain::connect;
use crate::scenarios::run::{self, Env, NicKind, NicUnderTest, RunOptions, RunReport, VmLock};
use crate::vm::{DgramNet, VhostNet, Vm, VmExtras, VmOutcome, VmSpec};
use anyhow::{bail, Context, Result};
use guest_apps::ensogen;
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed_regs::inet::checksum;
use vhost_net::{NetConfig, VhostNetBackend};
use wire::tap::{Dir, TapLog};
use wire::udp::UdpStats;

/// The Ensō guest's address on the wire.
pub const ENSO_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The Ensō guest's IPv4 address.
pub const ENSO_IP: [u8; 4] = [10, 0, 0, 2];
/// The peer guest's virtio-net MAC.
pub const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The peer guest's IPv4 address.
pub const PEER_IP: [u8; 4] = [10, 0, 0, 1];

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ip_text(ip: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

/// How the peer guest's virtio-net reaches the NIC's Ethernet port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkKind {
    /// Our vhost-user-net backend, in this process.
    #[default]
    VhostUser,
    /// QEMU's `-netdev dgram`, to a UDP socket that is the NIC's port.
    Udp,
}

impl LinkKind {
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::VhostUser => "vhost-user",
            LinkKind::Udp => "udp",
        }
    }
}

/// The peer's link, and with [`LinkKind::Udp`] its addresses.
#[derive(Clone, Debug, Default)]
pub struct PeerLink {
    pub kind: LinkKind,
    /// The NIC's UDP port binds this, in the testbed's namespace (default 127.0.0.1, any
    /// free port).
    pub udp_local: Option<SocketAddr>,
    /// The peer QEMU's own address (its `-netdev dgram` `local`), where the NIC's port
    /// sends (default 127.0.0.1, a free port). Port 0: QEMU takes any free port and the
    /// NIC's port answers whoever sent the last frame.
    pub udp_remote: Option<SocketAddr>,
    /// Run the peer's QEMU inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// What the peer sends, and to which NIC.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// The NIC the responder runs on (peer-capture always uses the Ensō NIC).
    pub nic: NicKind,
    /// arping requests.
    pub arps: u32,
    /// ICMP echo requests per size (56 and 1400 bytes).
    pub pings: u32,
    /// UDP datagrams to the echo port.
    pub datagrams: u32,
    /// peer-echo: first boot a peer and kill it (QEMU gone, the vhost-user connection cut)
    /// in the middle of its traffic; the next peer must be served as if nothing happened.
    pub kill_first_peer: bool,
    /// How the peer's NIC is cabled to the NIC under test.
    pub link: PeerLink,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            nic: NicKind::Enso,
            arps: 3,
            pings: 10,
            datagrams: 40,
            kill_first_peer: false,
            link: PeerLink::default(),
        }
    }
}

/// The peer's end of the wire.
enum PeerEnd {
    /// Our vhost-user-net backend, serving the peer's QEMU on `sock`.
    VhostUser {
        sock: PathBuf,
        backend: Arc<VhostNetBackend<wire::CableEnd>>,
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<Result<(), vhost_net::backend::ServeError>>,
    },
    /// The NIC's UDP port (inside the tap), bound to `local`; the peer's QEMU is at
    /// `remote` (port 0: whichever port it took), in `netns` when given.
    Udp { stats: Arc<UdpStats>, local: SocketAddr, remote: SocketAddr, netns: Option<String> },
}

impl PeerEnd {
    /// Frames the peer has put on the wire so far.
    fn frames_from_peer(&self) -> u64 {
        match self {
            PeerEnd::VhostUser { backend, .. } => backend.stats().tx_frames,
            PeerEnd::Udp { stats, .. } => stats.snapshot().rx_frames,
        }
    }

    /// The prefix of this end's checks.
    fn who(&self) -> &'static str {
        match self {
            PeerEnd::VhostUser { .. } => "backend",
            PeerEnd::Udp { .. } => "udp",
        }
    }
}

/// A free UDP port on `ip` (bound and released: the peer's QEMU binds it next).
fn free_udp_port(ip: std::net::IpAddr) -> Result<SocketAddr> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).with_context(|| format!("bind a UDP socket on {ip}"))?;
    Ok(s.local_addr()?)
}

/// The cabling of a peer scenario: vhost-user backend (or the NIC's UDP port) ⇄ tap ⇄
/// Ensō NIC.
struct PeerWire {
    nic: NicUnderTest,
    /// "enso" or "packetized": the prefix of the NIC side's checks.
    who: &'static str,
    server: vfio_server::ServerHandle,
    enso_sock: PathBuf,
    peer: PeerEnd,
    tap_stop: Arc<AtomicBool>,
    tap: std::thread::JoinHandle<TapLog>,
}

impl PeerWire {
    fn new(dir: &Path, kind: NicKind, link: &PeerLink) -> Result<PeerWire> {
        let (tap_b, nic_end) = wire::cable(1024);
        let tap_stop = Arc::new(AtomicBool::new(false));
        let (peer, tap) = match link.kind {
            LinkKind::VhostUser => {
                let (peer_end, tap_a) = wire::cable(1024);
                let tap = wire::tap::spawn(tap_a, tap_b, tap_stop.clone());
                let backend = Arc::new(
                    VhostNetBackend::new(NetConfig { mac: PEER_MAC, queue_size: 256 }, peer_end)
                        .context("create the vhost-user-net backend")?,
                );
                let sock = dir.join("net.sock");
                let stop = Arc::new(AtomicBool::new(false));
                let thread = {
                    let (b, s, stop) = (backend.clone(), sock.clone(), stop.clone());
                    std::thread::spawn(move || vhost_net::serve(b, &s, stop))
                };
                // The peer's QEMU must find the socket listening.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !sock.exists() {
                    if Instant::now() > deadline || thread.is_finished() {
                        bail!("the vhost-user-net backend did not listen on {}", sock.display());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (PeerEnd::VhostUser { sock, backend, stop, thread }, tap)
            }
            LinkKind::Udp => {
                let lo = std::net::IpAddr::from([127, 0, 0, 1]);
                let local = link.udp_local.unwrap_or(SocketAddr::new(lo, 0));
                let remote = match link.udp_remote {
                    Some(r) => r,
                    None => free_udp_port(lo)?,
                };
                // A fixed peer, unless its port is left to QEMU (then: the last sender).
                let fixed = (remote.port() != 0).then_some(remote);
                let port = wire::UdpPort::bind(local, fixed)
                    .with_context(|| format!("bind the NIC's UDP port on {local}"))?;
                let (local, stats) = (port.local_addr()?, port.stats());
                let tap = wire::tap::spawn_port(port, tap_b, tap_stop.clone());
                (PeerEnd::Udp { stats, local, remote, netns: link.netns.clone() }, tap)
            }
        };
        let nic = NicUnderTest::new(kind, Box::new(nic_end))?;
        let enso_sock = dir.join(format!("{}.sock", kind.name()));
        let server = vfio_server::Server::bind(&enso_sock, nic.device.clone())?.spawn();
        Ok(PeerWire { nic, who: kind.name(), server, enso_sock, peer, tap_stop, tap })
    }

    /// Boots the NIC's guest (`nic`, given the NIC's socket here) and, once it is ready,
    /// the peer (with `kill_first`, a peer killed mid-run before it); then stops the wire.
    /// Returns both guests' results, the tap's log, the NIC guest's outcome and the
    /// consoles (peer, NIC).
    fn run(
        self,
        env: &Env,
        opts: &RunOptions,
        report: &mut RunReport,
        mut nic: VmSpec,
        peer: (VmSpec, VmExtras),
        kill_first: bool,
    ) -> Result<(Value, Value, TapLog, VmOutcome, [PathBuf; 2])> {
        nic.vfio_user = vec![self.enso_sock.clone()];
        let who = self.who;
        let end = &self.peer;
        let mut killed = None;
        let mut interlude = || -> Result<()> {
            if !kill_first {
                return Ok(());
            }
            let victim = VmSpec { name: "peer-killed".into(), ..peer.0.clone() };
            let mut vm = Vm::start_with(&victim, &peer.1, &env.qemu, &env.image)?;
            // Mid-run: the peer's stack has put frames on the wire.
            let reached = vm.wait_for(opts.timeout, |_| end.frames_from_peer() >= 8);
            let frames = end.frames_from_peer();
            vm.kill();
            killed = Some((reached, frames));
            Ok(())
        };
        let ([(nic_out, nc, nq), (peer_out, pc, pq)], placed) =
            two_guests(env, opts, &nic, (&peer.0, &peer.1), &mut interlude)?;
        if let Some((reached, frames)) = killed {
            report.check(
                &format!("{}:peer_killed_mid_run", end.who()),
                reached,
                format!("the first peer's QEMU was killed after {frames} frames; the next peer was served"),
            );
            report.restarts = 1;
        }
        if let Some(ns) = &peer.1.netns {
            let started = peer_out.boot_s.is_some() || !peer_out.events.is_empty();
            report.check(
                "peer:qemu_in_netns",
                placed.is_some() && started,
                placed.unwrap_or_else(|| format!("the peer's QEMU never started in namespace {ns}")),
            );
        }
        let log = self.stop(report);
        let nic_result = guest_checks(report, who, &nic_out, (&nc, &nq));
        let peer_result = guest_checks(report, "peer", &peer_out, (&pc, &pq));
        Ok((nic_result, peer_result, log, nic_out, [pc, nc]))
    }

    /// Stops the peer's end (the backend) and the tap; returns the tap's log. Checks the
    /// backend's result, or the UDP port's counters.
    fn stop(self, report: &mut RunReport) -> TapLog {
        let udp = match self.peer {
            PeerEnd::VhostUser { sock, backend, stop, thread } => {
                stop.store(true, Ordering::Relaxed);
                // The backend checks its stop flag between front ends: one more connection
                // ends it.
                let _ = std::os::unix::net::UnixStream::connect(&sock);
                match thread.join() {
                    Ok(Ok(())) => {
                        report.check("backend:served", true, "vhost-user-net backend ended cleanly")
                    }
                    Ok(Err(e)) => report.check("backend:served", false, e.to_string()),
                    Err(_) => report.check("backend:served", false, "the backend thread panicked"),
                }
                let st = backend.stats();
                report.check(
                    "backend:no_faults",
                    st.rx_malformed == 0 && st.tx_malformed == 0,
                    format!("{st:?}"),
                );
                report.servers.insert("vhost_net".into(), json!(format!("{st:?}")));
                None
            }
            PeerEnd::Udp { stats, local, remote, netns } => Some((stats, local, remote, netns)),
        };
        self.tap_stop.store(true, Ordering::Relaxed);
        let log = self.tap.join().unwrap_or_default();
        if let Some((stats, local, remote, netns)) = udp {
            // The tap owned the port: its counters are final now.
            udp_checks(report, &stats, &log, (local, remote), netns.as_deref());
        }
        let counters = self.nic.counters();
        let drops = run::nonzero_drops(&counters);
        report.check(
            &format!("{}:no_drops", self.who),
            drops.is_empty() && log.dropped_a_to_b == 0 && log.dropped_b_to_a == 0,
            if drops.is_empty() {
                format!("no NIC drops; tap dropped {}/{}", log.dropped_a_to_b, log.dropped_b_to_a)
            } else {
                drops.join(", ")
            },
        );
        report.devices.insert(self.who.into(), Value::Object(run::counters_json(&counters)));
        report.servers.insert(self.who.into(), serde_json::to_value(self.server.stats()).unwrap_or_default());
        self.server.stop();
        log
    }
}

/// With `--link udp`: nothing refused or malformed on the NIC's UDP port, and every frame
/// the tap carried crossed the socket (`local` ⇄ `remote`); its counters go in the report.
fn udp_checks(
    report: &mut RunReport,
    stats: &UdpStats,
    log: &TapLog,
    (local, remote): (SocketAddr, SocketAddr),
    netns: Option<&str>,
) {
    let c = stats.snapshot();
    report.check(
        "udp:no_faults",
        c.rx_runts == 0 && c.rx_oversize == 0 && c.tx_no_peer == 0 && c.tx_errors == 0,
        format!(
            "runts {}, oversize {}, sent before a peer was known {}, refused by the socket {}",
            c.rx_runts, c.rx_oversize, c.tx_no_peer, c.tx_errors
        ),
    );
    let (to_nic, to_peer) = (log.dir(Dir::AtoB).count() as u64, log.dir(Dir::BtoA).count() as u64);
    let peer_ok = if remote.port() == 0 {
        c.peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok()).is_some_and(|p| p.ip() == remote.ip())
    } else {
        c.peer == Some(remote.to_string())
    };
    report.check(
        "udp:every_frame_crossed",
        c.rx_frames == to_nic && c.tx_frames == to_peer && to_nic > 0 && peer_ok,
        format!(
            "{local} received {} datagrams ({} bytes), the tap forwarded {to_nic} to the NIC; it sent {} \
             ({} bytes) to {}, the tap carried {to_peer} from the NIC",
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            c.peer.as_deref().unwrap_or("(no peer)"),
        ),
    );
    report.servers.insert(
        "udp".into(),
        json!({"local": local.to_string(), "remote": remote.to_string(), "peer_netns": netns, "counters": c}),
    );
}

/// Adds one guest's checks to `report` with a prefix ("enso", "peer", ...); returns its
/// result.
fn guest_checks(report: &mut RunReport, who: &str, out: &VmOutcome, vm_logs: (&Path, &Path)) -> Value {
    let mut r = RunReport::native(who, vm_logs.0);
    run::finish_guest_checks(&mut r, out, vm_logs.0, vm_logs.1);
    if report.boot_s.is_none() {
        report.boot_s = r.boot_s;
    }
    report.absorb(who, r)
}

/// How long the first guest may take to finish after the second powered off.
const FIRST_GUEST_GRACE: Duration = Duration::from_secs(90);

/// Both guests' outcomes with their log paths (console, QEMU's output), and, when the
/// second ran in a network namespace, where its QEMU was found ([`Vm::netns_note`]).
type TwoOutcomes = ([(VmOutcome, PathBuf, PathBuf); 2], Option<String>);

/// Boots `first` and waits for its `ready` event, runs `interlude`, then boots `second`
/// (with its extras); waits for both to power off (the second first).
fn two_guests(
    env: &Env,
    opts: &RunOptions,
    first: &VmSpec,
    second: (&VmSpec, &VmExtras),
    interlude: &mut dyn FnMut() -> Result<()>,
) -> Result<TwoOutcomes> {
    let mut a = Vm::start(first, &env.qemu, &env.image)?;
    let ready =
        a.wait_for(opts.timeout, |ev| ev.iter().any(|e| e["event"] == "ready" || e["event"] == "result"));
    let b = if ready && a.events().0.iter().any(|e| e["event"] == "ready") {
        interlude()?;
        Some(Vm::start_with(second.0, second.1, &env.qemu, &env.image)?)
    } else {
        None
    };
    let placed = b.as_ref().and_then(|b| b.netns_note().map(str::to_string));
    let logs_a = (a.console.clone(), a.qemu_log.clone());
    let out_b = match b {
        Some(b) => {
            let logs = (b.console.clone(), b.qemu_log.clone());
            (b.wait(opts.timeout), logs.0, logs.1)
        }
        None => (
            VmOutcome { exited: false, boot_s: None, events: vec![], garbage_lines: 0 },
            PathBuf::from("(not started: the first guest never became ready)"),
            PathBuf::new(),
        ),
    };
    // The first guest ends on its own once the second is done with it; if the second
    // never ran or failed, do not wait the whole time limit for it.
    let out_a = a.wait(opts.timeout.min(FIRST_GUEST_GRACE));
    Ok(([(out_a, logs_a.0, logs_a.1), out_b], placed))
}

fn spec(env: &Env, dir: &Path, name: &str, scenario: &str, args: Vec<String>) -> VmSpec {
    VmSpec {
        name: name.into(),
        accel: env.accel,
        memory_mb: 512,
        vfio_user: vec![],
        scenario: scenario.into(),
        args,
        dir: dir.to_path_buf(),
        net: vec![],
        files: vec![],
    }
}

/// The peer guest running `scenario` of images/peer, its NIC on the wire's backend (or on
/// `-netdev dgram` to the NIC's UDP port), with the extras that takes.
fn peer_spec(env: &Env, dir: &Path, w: &PeerWire, scenario: &str, p: &PeerOptions) -> (VmSpec, VmExtras) {
    let mut args = vec![format!("ip={}", ip_text(PEER_IP)), format!("target={}", ip_text(ENSO_IP))];
    if scenario == "peer-traffic" {
        // Nobody answers ARP there: a static neighbour entry lets ping and nc send.
        args.push(format!("target_mac={}", mac_text(ENSO_MAC)));
    }
    args.extend([
        format!("arps={}", p.arps),
        format!("pings={}", p.pings),
        format!("datagrams={}", p.datagrams),
    ]);
    let mut peer = spec(env, dir, "peer", scenario, args);
    let mut x = VmExtras::default();
    match &w.peer {
        PeerEnd::VhostUser { sock, .. } => peer.net = vec![VhostNet { socket: sock.clone(), mac: PEER_MAC }],
        PeerEnd::Udp { local, remote, netns, .. } => {
            // QEMU's `local` is the NIC port's `remote`, and the other way round.
            x.dgram = vec![DgramNet { local: *remote, remote: *local, mac: PEER_MAC }];
            x.netns = netns.clone();
        }
    }
    (peer, x)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// An IPv4 frame's parts: (header, protocol, src, dst, L4 bytes), trimmed to its length.
type Ipv4Parts<'a> = (&'a [u8], u8, [u8; 4], [u8; 4], &'a [u8]);

fn ipv4(f: &[u8]) -> Option<Ipv4Parts<'_>> {
    if be16(f, 12)? != 0x0800 {
        return None;
    }
    let ihl = usize::from(*f.get(14)? & 0xf) * 4;
    let total = usize::from(be16(f, 16)?);
    let ip = f.get(14..14 + total)?;
    let hdr = ip.get(..ihl)?;
    Some((hdr, ip[9], ip[12..16].try_into().ok()?, ip[16..20].try_into().ok()?, ip.get(ihl..)?))
}

/// What the tap saw of the peer's exchanges with the Ensō guest, checked frame by frame.
#[derive(Debug, Default)]
pub struct Exchanges {
    pub arp_requests: u64,
    pub arp_replies_ok: u64,
    pub icmp_requests: u64,
    pub icmp_replies_ok: u64,
    pub udp_requests: u64,
    pub udp_replies_ok: u64,
    /// The payloads of the UDP datagrams to the echo port, in the order they crossed the
    /// wire.
    pub udp_payloads: Vec<Vec<u8>>,
    /// Every correct UDP echo crossed the wire after the previous datagram's echo.
    pub udp_echoes_in_order: bool,
    /// Replies that were malformed or matched no request.
    pub bad: Vec<String>,
}

/// What the peer's `nc` sends to the echo port (`images/peer`): `n` numbered lines, one
/// datagram each (a slow reader may coalesce a few), in order.
pub fn expected_datagrams(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("testbed datagram {i:04} 0123456789abcdefghijklmnopqrstuvwxyz\n").into_bytes())
        .collect()
}

/// Pairs every request the peer sent to the Ensō guest with its reply on the wire and
/// checks the reply independently of the app: addresses swapped, identifiers and payload
/// kept, checksums valid.
pub fn check_exchanges(log: &TapLog) -> Exchanges {
    let mut x = Exchanges { udp_echoes_in_order: true, ..Exchanges::default() };
    // Replies with their place on the wire.
    let mut replies: Vec<(usize, &[u8])> = log
        .frames
        .iter()
        .enumerate()
        .filter(|(_, s)| s.dir == Dir::BtoA)
        .map(|(i, s)| (i, &s.frame[..]))
        .collect();
    // The first reply `pred` accepts, taken; its place on the wire.
    let mut take_at = |pred: &dyn Fn(&[u8]) -> bool| -> Option<usize> {
        let i = replies.iter().position(|(_, r)| pred(r))?;
        Some(replies.remove(i).0)
    };
    let mut last_udp_echo: Option<usize> = None;
    for s in log.dir(Dir::AtoB) {
        let f = s.frame.as_slice();
        if be16(f, 12) == Some(0x0806) && f.len() >= 42 && be16(f, 20) == Some(1) && f[38..42] == ENSO_IP {
            x.arp_requests += 1;
            let ok = take_at(&|r: &[u8]| {
                r.len() >= 42
                    && be16(r, 12) == Some(0x0806)
                    && be16(r, 20) == Some(2)
                    && r[0..6] == f[6..12]
                    && r[22..28] == ENSO_MAC
                    && r[28..32] == ENSO_IP
                    && r[32..38] == f[22..28]
                    && r[38..42] == f[28..32]
            })
            .is_some();
            x.arp_replies_ok += u64::from(ok);
            if !ok {
                x.bad.push(format!("ARP request at {:?} got no correct reply", s.at));
            }
            continue;
        }
        let Some((_, proto, src, dst, l4)) = ipv4(f) else { continue };
        if dst != ENSO_IP {
            continue;
        }
        // Whether `r`'s Ethernet and IPv4 headers answer the request's and its L4 bytes
        // pass `l4_ok`.
        let answers = |r: &[u8], l4_ok: &dyn Fn(&[u8]) -> bool| match ipv4(r) {
            Some((hdr, p, rs, rd, rl4)) => {
                p == proto
                    && rs == dst
                    && rd == src
                    && checksum(hdr) == 0
                    && r[0..6] == f[6..12]
                    && l4_ok(rl4)
            }
            None => false,
        };
        match proto {
            1 if l4.first() == Some(&8) => {
                x.icmp_requests += 1;
                let ok = take_at(&|r: &[u8]| {
                    answers(r, &|rl4| {
                        rl4.len() == l4.len() && rl4[0] == 0 && rl4[4..] == l4[4..] && checksum(rl4) == 0
                    })
                })
                .is_some();
                x.icmp_replies_ok += u64::from(ok);
                if !ok {
                    x.bad.push(format!("ICMP echo seq {:?} got no correct reply", be16(l4, 6)));
                }
            }
            17 if be16(l4, 2) == Some(guest_apps::responder::ECHO_PORT) => {
                x.udp_requests += 1;
                x.udp_payloads.push(l4.get(8..).unwrap_or_default().to_vec());
                let at = take_at(&|r: &[u8]| {
                    answers(r, &|rl4| {
                        rl4.len() == l4.len()
                            && rl4[0..2] == l4[2..4]
                            && rl4[2..4] == l4[0..2]
                            && rl4[8..] == l4[8..]
                    })
                });
                if let Some(at) = at {
                    x.udp_echoes_in_order &= last_udp_echo.is_none_or(|prev| at > prev);
                    last_udp_echo = Some(at);
                }
                let ok = at.is_some();
                x.udp_replies_ok += u64::from(ok);
                if !ok {
                    x.bad.push(format!("UDP datagram at {:?} got no correct echo", s.at));
                }
            }
            _ => {}
        }
    }
    for (_, r) in replies {
        x.bad.push(format!("unrequested frame from the Ensō guest ({} bytes)", r.len()));
    }
    x
}

/// The `wire:udp` verdict: the datagrams to the echo port carried every one of the
/// peer's `datagrams` numbered lines, in order (after a killed first peer, they end with
/// them), and each got a correct echo, the echoes in the datagrams' order.
pub fn check_udp(x: &Exchanges, datagrams: u32, after_a_killed_peer: bool) -> (bool, String) {
    let expected = expected_datagrams(datagrams);
    let stream = x.udp_payloads.concat();
    let every_line = if after_a_killed_peer { stream.ends_with(&expected) } else { stream == expected };
    let ok = every_line && x.udp_replies_ok == x.udp_requests && x.udp_echoes_in_order;
    let detail = format!(
        "{} datagrams to port 7 carrying {} of the {} bytes of {datagrams} numbered lines ({}), \
         {} correct echoes{}",
        x.udp_requests,
        stream.len(),
        expected.len(),
        if every_line { "every line, in order" } else { "lines missing, altered or out of order" },
        x.udp_replies_ok,
        if x.udp_echoes_in_order { ", in order" } else { ", OUT OF ORDER" },
    );
    (ok, detail)
}

/// `testbed run peer-echo`: the peer's arping, ping and UDP datagrams are answered by the
/// Rust responder behind the Ensō NIC; the peer checks every reply with its own tools, the
/// host checks every exchange on the wire.
pub fn peer_echo(env: &Env, opts: &RunOptions, p: PeerOptions) -> Result<RunReport> {
    let started = Instant::now();
    let _lock = VmLock::acquire()?;
    let dir = run::private_dir("peer-echo")?;
    let mut report = RunReport::new("peer-echo", env, &dir);
    let w = PeerWire::new(&dir, p.nic, &p.link)?;
    let who = w.who;
    let enso = spec(
        env,
        &dir,
        who,
        "responder",
        vec![
            format!("mac={}", mac_text(ENSO_MAC)),
            format!("ip={}", ip_text(ENSO_IP)),
            format!("nic={who}"),
            "limit_ms=60000".into(),
        ],
    );
    let peer = peer_spec(env, &dir, &w, "peer-echo", &p);
    let (responder, peer_result, log, _, [pc, ec]) =
        w.run(env, opts, &mut report, enso, peer, p.kill_first_peer)?;
    let _ = log.write_pcap(&dir.join("wire.pcap"));

    let x = check_exchanges(&log);
    let want = |n: u32| u64::from(n);
    report.check(
        "wire:arp",
        x.arp_requests >= want(p.arps) && x.arp_replies_ok == x.arp_requests,
        format!(
            "{} ARP requests for {}, {} correct replies",
            x.arp_requests,
            ip_text(ENSO_IP),
            x.arp_replies_ok
        ),
    );
    report.check(
        "wire:icmp",
        // A killed first peer adds its own requests (all answered too).
        (x.icmp_requests == 2 * want(p.pings) || p.kill_first_peer && x.icmp_requests >= 2 * want(p.pings))
            && x.icmp_replies_ok == x.icmp_requests,
        format!("{} echo requests, {} correct replies", x.icmp_requests, x.icmp_replies_ok),
    );
    let (udp_ok, udp_detail) = check_udp(&x, p.datagrams, p.kill_first_peer);
    report.check("wire:udp", udp_ok, udp_detail);
    report.check(
        "wire:nothing_else",
        x.bad.is_empty(),
        if x.bad.is_empty() {
            "every reply matched a request".to_string()
        } else {
            x.bad[..x.bad.len().min(5)].join("; ")
        },
    );
    let rv = &responder["values"];
    report.check(
        &format!("{who}:counts_match_wire"),
        rv["icmp_replies"].as_u64() == Some(x.icmp_requests)
            && rv["udp_replies"].as_u64() == Some(x.udp_requests),
        format!(
            "responder answered {} ICMP and {} UDP; the wire carried {} and {}",
            rv["icmp_replies"], rv["udp_replies"], x.icmp_requests, x.udp_requests
        ),
    );
    report.guest = json!({who: responder, "peer": peer_result});
    report.traffic = json!({
        "link": p.link.kind.name(),
        "frames_peer_to_enso": log.dir(Dir::AtoB).count(),
        "frames_enso_to_peer": log.dir(Dir::BtoA).count(),
        "arp": {"requests": x.arp_requests, "replies_ok": x.arp_replies_ok},
        "icmp": {"requests": x.icmp_requests, "replies_ok": x.icmp_replies_ok},
        "udp": {"requests": x.udp_requests, "replies_ok": x.udp_replies_ok},
    });
    if opts.console {
        for c in [&pc, &ec] {
            eprintln!("----- {} -----\n{}", c.display(), std::fs::read_to_string(c).unwrap_or_default());
        }
    }
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// Reassembles the pcap a guest uploaded as `pcap` events.
pub fn uploaded_pcap(events: &[Value]) -> Result<Vec<u8>> {
    use base64::Engine;
    let mut chunks: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["event"] == "pcap")
        .filter_map(|e| Some((e["seq"].as_u64()?, e["data"].as_str()?)))
        .collect();
    chunks.sort_by_key(|c| c.0);
    if chunks.is_empty() {
        bail!("the guest uploaded no pcap");
    }
    let mut out = vec![];
    for (i, (seq, data)) in chunks.iter().enumerate() {
        if *seq != i as u64 {
            bail!("pcap chunk {i} is missing (next is {seq})");
        }
        out.extend(
            base64::engine::general_purpose::STANDARD.decode(data).context("pcap chunk is not base64")?,
        );
    }
    Ok(out)
}

/// `tshark -r FILE`: per frame, its protocol stack (`eth:ethertype:ip:icmp:data`).
pub fn tshark_protocols(pcap: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args(["-T", "fields", "-e", "frame.protocols"])
        .output()
        .context("cannot run tshark (install it: apt-get install tshark)")?;
    if !out.status.success() {
        bail!("tshark -r {}: {}", pcap.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// `testbed run peer-capture`: the peer's traffic is captured by the Ensō guest into a
/// pcap, uploaded to the host and parsed by `tshark`.
pub fn peer_capture(env: &Env, opts: &RunOptions, p: PeerOptions) -> Result<RunReport> {
    let started = Instant::now();
    let _lock = VmLock::acquire()?;
    let dir = run::private_dir("peer-capture")?;
    let mut report = RunReport::new("peer-capture", env, &dir);
    if p.nic != NicKind::Enso {
        bail!("peer-capture runs the Ensō capture app: use it with --nic enso");
    }
    if p.kill_first_peer {
        bail!("--kill-first-peer is a peer-echo option");
    }
    let w = PeerWire::new(&dir, NicKind::Enso, &p.link)?;
    let enso = spec(
        env,
        &dir,
        "enso",
        "capture",
        vec![
            "path=/tmp/capture.pcap".into(),
            "pipes=1".into(),
            "until_done=1".into(),
            "upload=1".into(),
            "idle_ms=0".into(),
            "timeout_ms=600000".into(),
        ],
    );
    let peer = peer_spec(env, &dir, &w, "peer-traffic", &p);
    let (capture, peer_result, log, enso_out, _) = w.run(env, opts, &mut report, enso, peer, false)?;
    let _ = log.write_pcap(&dir.join("wire.pcap"));

    let sent: Vec<&[u8]> = log.dir(Dir::AtoB).map(|s| s.frame.as_slice()).collect();
    let pcap_path = dir.join("capture.pcap");
    let mut protocols = vec![];
    match uploaded_pcap(&enso_out.events) {
        Ok(bytes) => {
            std::fs::write(&pcap_path, &bytes)?;
            // The capture holds exactly the frames the peer put on the wire, in order
            // (each as long as its IPv4/ARP length says: the Ethernet padding stays out).
            let captured = wire::PcapReplay::open(&pcap_path).map(|r| r.frames().to_vec());
            match captured {
                Ok(frames) => {
                    let same = frames.len() == sent.len()
                        && frames.iter().zip(&sent).all(|(c, s)| s.len() >= c.len() && s[..c.len()] == c[..]);
                    report.check(
                        "capture:frames_match_wire",
                        same,
                        format!("{} frames captured, {} sent by the peer", frames.len(), sent.len()),
                    );
                }
                Err(e) => report.check("capture:frames_match_wire", false, e.to_string()),
            }
            match tshark_protocols(&pcap_path) {
                Ok(p) => protocols = p,
                Err(e) => report.check("tshark:parsed", false, format!("{e:#}")),
            }
        }
        Err(e) => report.check("capture:uploaded", false, format!("{e:#}")),
    }
    if !protocols.is_empty() || report.assertions.iter().all(|a| a.name != "tshark:parsed") {
        let count =
            |proto: &str| protocols.iter().filter(|l| l.split(':').any(|p| p == proto)).count() as u64;
        let (arp, icmp, udp) = (count("arp"), count("icmp"), count("udp"));
        report.check(
            "tshark:parsed",
            protocols.len() == sent.len() && !sent.is_empty(),
            format!("tshark read {} frames; the peer sent {}", protocols.len(), sent.len()),
        );
        // UDP: as many datagrams as the tap saw the peer send, and those to the echo port
        // carried every numbered line, in order.
        let wire_udp =
            sent.iter().filter(|f| ipv4(f).is_some_and(|(_, proto, ..)| proto == 17)).count() as u64;
        let lines = check_exchanges(&log).udp_payloads.concat() == expected_datagrams(p.datagrams);
        report.check(
            "tshark:protocols",
            arp >= u64::from(p.arps) && icmp == 2 * u64::from(p.pings) && udp == wire_udp && lines,
            format!(
                "arp {arp} (sent {}), icmp {icmp} (sent {}), udp {udp} (on the wire {wire_udp}; \
                 the {} numbered lines all there, in order: {lines})",
                p.arps,
                2 * p.pings,
                p.datagrams
            ),
        );
        report.traffic = json!({"frames": protocols.len(), "arp": arp, "icmp": icmp, "udp": udp});
    }
    report.guest = json!({"enso": capture, "peer": peer_result});
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

/// Parameters of `testbed run gen-echo`.
#[derive(Clone, Debug)]
pub struct GenEchoOptions {
    pub packets: u64,
    pub size: usize,
    pub flows: u32,
    /// Frames per second; 0: as fast as possible.
    pub rate: u64,
    /// Replay this pcap instead of generated flows.
    pub pcap: Option<PathBuf>,
    pub transport: run::Transport,
    /// Both Ensō NICs' register mode and the extensions both drivers use.
    pub setup: run::EnsoSetup,
}

/// `testbed run gen-echo`: EnsōGen in one guest, `echo` in another, their Ensō NICs
/// cabled back to back.
pub fn gen_echo(env: Option<&Env>, opts: &RunOptions, o: &GenEchoOptions) -> Result<RunReport> {
    let started = Instant::now();
    let dir = run::private_dir("gen-echo")?;
    let mut report = match env {
        Some(env) => RunReport::new("gen-echo", env, &dir),
        None => RunReport::native("gen-echo", &dir),
    };
    let pcap_bytes = match &o.pcap {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            // Refuse a capture EnsōGen cannot send before booting anything.
            let tmp = dir.join("replay.pcap");
            std::fs::write(&tmp, &b)?;
            ensogen::load_pcap(&tmp).map_err(anyhow::Error::msg)?;
            Some(b)
        }
        None => None,
    };
    let (gen_end, echo_end) = wire::cable(1024);
    let model = run::EngineModel::Rust;
    let gen_nic = NicUnderTest::with_setup(NicKind::Enso, Box::new(gen_end), model, o.setup)?;
    let echo_nic = NicUnderTest::with_setup(NicKind::Enso, Box::new(echo_end), model, o.setup)?;
    let gen_sock = dir.join("gen.sock");
    let echo_sock = dir.join("echo.sock");
    let gen_server = vfio_server::Server::bind(&gen_sock, gen_nic.device.clone())?.spawn();
    let echo_server = vfio_server::Server::bind(&echo_sock, echo_nic.device.clone())?.spawn();
    let gen_args = |pcap: Option<&str>| {
        let mut a = vec![
            format!("packets={}", o.packets),
            format!("size={}", o.size),
            format!("flows={}", o.flows),
            format!("rate={}", o.rate),
        ];
        if let Some(p) = pcap {
            a.push(format!("pcap={p}"));
        }
        a.extend(o.setup.guest_args());
        a
    };
    let mut echo_args = vec![format!("pipes=2"), format!("packets={}", o.packets), "idle_ms=5000".into()];
    echo_args.extend(o.setup.guest_args());
    let gen_result = match (o.transport, env) {
        (run::Transport::Vm, Some(env)) => {
            let _lock = VmLock::acquire()?;
            let mut echo = spec(env, &dir, "echo", "echo", echo_args);
            echo.vfio_user = vec![echo_sock.clone()];
            let mut gen = spec(
                env,
                &dir,
                "ensogen",
                "ensogen",
                gen_args(pcap_bytes.as_ref().map(|_| "/data/replay.pcap")),
            );
            gen.vfio_user = vec![gen_sock.clone()];
            if let Some(b) = &pcap_bytes {
                gen.files = vec![("data/replay.pcap".into(), b.clone())];
            }
            let ([(echo_out, ec, eq), (gen_out, gc, gq)], _) =
                two_guests(env, opts, &echo, (&gen, &VmExtras::default()), &mut || Ok(()))?;
            let _ = guest_checks(&mut report, "echo", &echo_out, (&ec, &eq));
            guest_checks(&mut report, "ensogen", &gen_out, (&gc, &gq))
        }
        (run::Transport::Vm, None) => bail!("gen-echo --transport vm needs a provisioned environment"),
        (run::Transport::Native, _) => {
            let params = guest_apps::echo::EchoParams {
                pipes: 2,
                packets: Some(o.packets),
                idle: Some(Duration::from_secs(5)),
                start_timeout: Some(opts.timeout),
                device: o.setup.driver_options(),
            };
            let echo_dev = connect(&echo_sock)?;
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let echo = std::thread::spawn(move || {
                let stop = AtomicBool::new(false);
                let r = guest_apps::echo::Echo::setup(echo_dev, &params).map_err(|e| e.to_string());
                let _ = ready_tx.send(r.is_ok());
                r.and_then(|mut e| e.run(&params, &stop).map_err(|e| e.to_string()))
            });
            if ready_rx.recv() != Ok(true) {
                let e = echo.join().map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
                bail!("the echo did not set up: {:?}", e.err());
            }
            let mut gp = ensogen::GenParams {
                packets: o.packets,
                size: o.size,
                flows: o.flows,
                rate_pps: (o.rate > 0).then_some(o.rate),
                device: o.setup.driver_options(),
                ..Default::default()
            };
            if pcap_bytes.is_some() {
                gp.pcap = Some(dir.join("replay.pcap"));
            }
            let r = ensogen::run_with(connect(&gen_sock)?, gp, || {});
            match echo.join() {
                Ok(Ok((s, _))) => report.check("echo:ran", true, format!("{} packets echoed", s.packets)),
                Ok(Err(e)) => report.check("echo:ran", false, e),
                Err(_) => report.check("echo:ran", false, "the echo thread panicked"),
            }
            for c in &r.checks {
                report.check(&format!("ensogen:guest:{}", c.name), c.pass, c.detail.clone());
            }
            serde_json::to_value(&r)?
        }
    };
    let v = &gen_result["values"];
    let (sent, received, lost) = (v["sent"].as_u64(), v["received"].as_u64(), v["lost"].as_u64());
    report.check(
        "gen:zero_loss",
        sent == Some(o.packets) && received == sent && lost == Some(0),
        format!("sent {sent:?}, received {received:?}, lost {lost:?}"),
    );
    let bad = ["corrupted", "duplicated", "reordered", "unexpected"]
        .map(|k| (k, v[k].as_u64().unwrap_or(u64::MAX)));
    report.check(
        "gen:intact",
        bad.iter().all(|(_, n)| *n == 0),
        bad.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
    );
    let hist_total: u64 =
        v["rtt_histogram"].as_array().into_iter().flatten().filter_map(|b| b["count"].as_u64()).sum();
    let rtt = &v["rtt_ns"];
    report.check(
        "gen:rtt_histogram",
        hist_total == received.unwrap_or(0)
            && hist_total > 0
            && rtt["p50"].as_u64() > Some(0)
            && rtt["p99"].as_u64() >= rtt["p50"].as_u64(),
        format!("{hist_total} samples, p50 {} ns, p99 {} ns", rtt["p50"], rtt["p99"]),
    );
    let mut drops = vec![];
    for (name, nic) in [("gen_nic", &gen_nic), ("echo_nic", &echo_nic)] {
        let c = nic.counters();
        if o.setup.extensions == run::DriverExtensions::None {
            let n = c.iter().find(|(k, _)| *k == "extension_accesses").map_or(0, |(_, v)| *v);
            report.check(
                &format!("{name}:extension_accesses"),
                n == 0,
                format!("{n} accesses to BAR0 ({}; card mode makes none)", o.setup.describe()),
            );
        }
        drops.extend(run::nonzero_drops(&c).into_iter().map(|d| format!("{name}.{d}")));
        report.devices.insert(name.into(), Value::Object(run::counters_json(&c)));
    }
    report.check(
        "nics:no_drops",
        drops.is_empty(),
        if drops.is_empty() { "none".into() } else { drops.join(", ") },
    );
    report.traffic = json!({
        "sent": v["sent"], "received": v["received"], "lost": v["lost"],
        "rate_pps": o.rate, "tx_pps": v["tx_pps"], "size": o.size, "flows": o.flows,
        "source": v["source"], "rtt_ns": v["rtt_ns"], "rtt_histogram": v["rtt_histogram"],
    });
    report.guest = gen_result;
    gen_server.stop();
    echo_server.stop();
    report.finish(&dir, opts.keep, started);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_apps::responder::{respond, Identity};
    use testbed_regs::inet::checksum;
    use wire::tap::Seen;

    const ME: Identity = Identity { mac: ENSO_MAC, ip: ENSO_IP };

    fn ipv4_frame(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = ENSO_MAC.to_vec();
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&PEER_IP);
        h[16..20].copy_from_slice(&ENSO_IP);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(l4);
        f
    }

    fn ping(seq: u16) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0, 9, 0, seq as u8];
        icmp.extend((0..56u8).map(|i| i ^ seq as u8));
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4_frame(1, &icmp)
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0x9c, 0x40, 0, 7];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        ipv4_frame(17, &u)
    }

    fn arp() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&PEER_IP);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&ENSO_IP);
        f
    }

    fn reply(req: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        let n = match respond(req, &ME, &mut out) {
            guest_apps::responder::Answer::Arp(n)
            | guest_apps::responder::Answer::Icmp(n)
            | guest_apps::responder::Answer::Udp(n) => n,
            other => panic!("no reply: {other:?}"),
        };
        out.truncate(n);
        out
    }

    fn log(frames: Vec<(Dir, Vec<u8>)>) -> TapLog {
        TapLog {
            frames: frames
                .into_iter()
                .enumerate()
                .map(|(i, (dir, frame))| Seen { dir, at: Duration::from_micros(i as u64), frame })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_request_paired_with_a_correct_reply() {
        let reqs = [arp(), ping(1), ping(2), udp(b"one"), udp(b"two")];
        let mut frames = vec![];
        for r in &reqs {
            frames.push((Dir::AtoB, r.clone()));
            frames.push((Dir::BtoA, reply(r)));
        }
        let x = check_exchanges(&log(frames));
        assert_eq!((x.arp_requests, x.arp_replies_ok), (1, 1));
        assert_eq!((x.icmp_requests, x.icmp_replies_ok), (2, 2));
        assert_eq!((x.udp_requests, x.udp_replies_ok), (2, 2));
        assert!(x.bad.is_empty(), "{:?}", x.bad);
    }

    #[test]
    fn wrong_missing_and_unrequested_replies_are_reported() {
        let p1 = ping(1);
        let mut bad_payload = reply(&p1);
        let last = bad_payload.len() - 1;
        bad_payload[last] ^= 0xff; // ICMP checksum now wrong too
        let u = udp(b"datagram");
        let mut bad_ip = reply(&u);
        bad_ip[24] ^= 1; // IPv4 header checksum
        let x = check_exchanges(&log(vec![
            (Dir::AtoB, p1),
            (Dir::BtoA, bad_payload),
            (Dir::AtoB, ping(2)), // no reply at all
            (Dir::AtoB, u),
            (Dir::BtoA, bad_ip),
            (Dir::BtoA, reply(&ping(7))), // nobody asked
        ]));
        assert_eq!((x.icmp_requests, x.icmp_replies_ok), (2, 0));
        assert_eq!((x.udp_requests, x.udp_replies_ok), (1, 0));
        // Three unanswered requests plus three frames that matched nothing.
        assert_eq!(x.bad.len(), 6, "{:?}", x.bad);
    }

    /// The peer's datagrams, one line each, and the tap's log of them with their echoes
    /// (in the order given).
    fn datagrams(n: u32) -> Vec<Vec<u8>> {
        let all = expected_datagrams(n);
        all.split_inclusive(|b| *b == b'\n').map(udp).collect()
    }

    #[test]
    fn wire_udp_checks_every_datagram_in_order() {
        let sent = datagrams(40);
        let echoed = |order: &[usize], sent: &[Vec<u8>]| {
            let mut frames: Vec<(Dir, Vec<u8>)> = sent.iter().map(|d| (Dir::AtoB, d.clone())).collect();
            frames.extend(order.iter().map(|&i| (Dir::BtoA, reply(&sent[i]))));
            check_exchanges(&log(frames))
        };
        let in_order: Vec<usize> = (0..40).collect();
        let (ok, detail) = check_udp(&echoed(&in_order, &sent), 40, false);
        assert!(ok, "{detail}");
        // One datagram of forty, correctly echoed: not enough.
        let (ok, detail) = check_udp(&echoed(&[0], &sent[..1]), 40, false);
        assert!(!ok, "{detail}");
        // All forty, echoes swapped.
        let mut swapped = in_order.clone();
        swapped.swap(3, 4);
        let (ok, detail) = check_udp(&echoed(&swapped, &sent), 40, false);
        assert!(!ok && detail.contains("OUT OF ORDER"), "{detail}");
        // Lines reordered on the wire.
        let mut reordered = sent.clone();
        reordered.swap(10, 11);
        let (ok, detail) = check_udp(&echoed(&in_order, &reordered), 40, false);
        assert!(!ok, "{detail}");
        // One echo missing.
        let (ok, detail) = check_udp(&echoed(&in_order[..39], &sent), 40, false);
        assert!(!ok, "{detail}");
        // After a killed peer's first lines, the next peer's forty still count.
        let mut twice = datagrams(40)[..5].to_vec();
        twice.extend(sent.clone());
        let all: Vec<usize> = (0..45).collect();
        let (ok, detail) = check_udp(&echoed(&all, &twice), 40, true);
        assert!(ok, "{detail}");
    }

    #[test]
    fn uploaded_pcap_reassembles_in_order_and_refuses_gaps() {
        use base64::Engine;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let ev = vec![
            json!({"event": "pcap", "seq": 1, "data": b64(b"world")}),
            json!({"event": "ready"}),
            json!({"event": "pcap", "seq": 0, "data": b64(b"hello ")}),
        ];
        assert_eq!(uploaded_pcap(&ev).unwrap(), b"hello world");
        let gap = vec![json!({"event": "pcap", "seq": 1, "data": b64(b"x")})];
        assert!(uploaded_pcap(&gap).is_err());
        assert!(uploaded_pcap(&[]).is_err());
    }
}
