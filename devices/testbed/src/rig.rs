//! Device sets served for guests the user starts (`testbed serve`, `testbed up`): one
//! emulated device, or the Nagare switch with its devices behind it, built from the models
//! and served on vfio-user sockets, with the NIC's Ethernet port attached to whatever the
//! user names. Scenarios build their own rigs; this is the general one.

use crate::scenarios::run::{self, DriverExtensions, EngineModel, EnsoSetup, Registers};
use accel::Accelerator;
use anyhow::{bail, Context, Result};
use pcie_model::PciDevice;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// The device models a user can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The Ensō NIC (one function).
    Enso,
    /// The packetized baseline NIC (one function).
    Packetized,
    /// The AES-256-GCM accelerator (one function).
    Crypto,
    /// The int8 MLP accelerator (one function).
    Ml,
    /// The smoke-test device (one function).
    Smoke,
    /// The Nagare switch with an Ensō NIC, the crypto and the ML accelerator behind it (four
    /// functions: nagare, nic, crypto, ml).
    Nagare,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Enso => "enso",
            DeviceKind::Packetized => "packetized",
            DeviceKind::Crypto => "crypto",
            DeviceKind::Ml => "ml",
            DeviceKind::Smoke => "smoke",
            DeviceKind::Nagare => "nagare",
        }
    }

    /// Whether the device has an Ethernet port.
    pub fn has_port(self) -> bool {
        matches!(self, DeviceKind::Enso | DeviceKind::Packetized | DeviceKind::Nagare)
    }

    /// The function names, in the order they are served (and plugged into a guest).
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            DeviceKind::Nagare => &["nagare", "nic", "crypto", "ml"],
            DeviceKind::Enso => &["enso"],
            DeviceKind::Packetized => &["packetized"],
            DeviceKind::Crypto => &["crypto"],
            DeviceKind::Ml => &["ml"],
            DeviceKind::Smoke => &["smoke"],
        }
    }
}

/// A device's configuration.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub kind: DeviceKind,
    /// Ensō pipes served (the NIC's default when None).
    pub pipes: Option<u32>,
    /// The Ensō NIC's queue engine.
    pub model: EngineModel,
    /// The Ensō NIC's register mode, and the extensions the driver that will connect uses
    /// (none: the extension pages trap, so any access is counted).
    pub setup: EnsoSetup,
}

impl DeviceConfig {
    pub fn new(kind: DeviceKind) -> DeviceConfig {
        DeviceConfig { kind, pipes: None, model: EngineModel::Rust, setup: EnsoSetup::default() }
    }

    /// Why this configuration cannot be served, if it cannot (checked before anything is
    /// built or booted).
    pub fn invalid(&self) -> Option<String> {
        let enso = matches!(self.kind, DeviceKind::Enso | DeviceKind::Nagare);
        if self.pipes.is_some() && !enso {
            return Some(format!("pipes applies to enso and nagare, not {}", self.kind.name()));
        }
        if let Some(p) = self.pipes {
            if !(1..=testbed_regs::enso::MAX_PIPES).contains(&p) {
                return Some(format!("pipes must be 1..={}, not {p}", testbed_regs::enso::MAX_PIPES));
            }
        }
        if self.model == EngineModel::Rtl && !enso {
            return Some(format!("model rtl applies to enso and nagare, not {}", self.kind.name()));
        }
        if !enso && self.setup.registers != Registers::Shared {
            return Some(format!("registers applies to enso and nagare, not {}", self.kind.name()));
        }
        if !enso && self.setup.extensions != DriverExtensions::All {
            return Some(format!("extensions applies to enso and nagare, not {}", self.kind.name()));
        }
        None
    }

    fn enso_config(&self) -> enso_nic::EnsoConfig {
        let mut cfg = self.setup.config();
        if let Some(p) = self.pipes {
            cfg.num_pipes = p;
        }
        cfg
    }
}

/// What a NIC's Ethernet port is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortAttach {
    /// Nothing: frames sent are counted as wire drops, nothing arrives.
    None,
    /// A UDP socket, one frame per datagram (QEMU's `-netdev dgram` format): it binds
    /// `bind` and sends to `peer`, or to whoever sent last when there is no peer.
    Udp { bind: SocketAddr, peer: Option<SocketAddr> },
    /// A capture replayed into the port once, then nothing.
    Pcap(PathBuf),
}

impl PortAttach {
    /// Parses `none`, `udp[:BIND[,PEER]]` and `pcap:FILE` (`serve --port`).
    pub fn parse(s: &str) -> Result<PortAttach, String> {
        let addr = |a: &str| -> Result<SocketAddr, String> {
            a.parse().map_err(|_| format!("'{a}' is not an address:port (e.g. 127.0.0.1:7000)"))
        };
        match s.split_once(':') {
            None if s == "none" => Ok(PortAttach::None),
            None if s == "udp" => Ok(PortAttach::Udp { bind: addr("127.0.0.1:0")?, peer: None }),
            Some(("udp", rest)) => {
                let (bind, peer) = match rest.split_once(',') {
                    Some((b, p)) => (addr(b)?, Some(addr(p)?)),
                    None => (addr(rest)?, None),
                };
                Ok(PortAttach::Udp { bind, peer })
            }
            Some(("pcap", file)) => {
                let p = PathBuf::from(file);
                if !p.is_file() {
                    return Err(format!("no capture file {file}"));
                }
                Ok(PortAttach::Pcap(p))
            }
            _ => Err("expected none, udp[:BIND[,PEER]] or pcap:FILE".into()),
        }
    }
}

/// A built port and what to report about it.
pub struct BuiltPort {
    pub port: Box<dyn wire::EthPort>,
    /// The UDP socket's address (with the port the system chose), for udp ports.
    pub udp_addr: Option<SocketAddr>,
    counters: Box<dyn Fn() -> Value + Send + Sync>,
    /// Ends a helper thread (pcap replay) when the port goes.
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Drop for BuiltPort {
    fn drop(&mut self) {
        if let Some(s) = &self.stop {
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl BuiltPort {
    /// A port cabled to another NIC's (`to` names it in reports).
    pub fn cable(end: wire::CableEnd, to: &str) -> BuiltPort {
        let to = to.to_string();
        BuiltPort {
            port: Box::new(end),
            udp_addr: None,
            counters: Box::new(move || json!({"attached": "cable", "to": to})),
            stop: None,
        }
    }

    /// Builds the port for `attach`.
    pub fn build(attach: &PortAttach) -> Result<BuiltPort> {
        Ok(match attach {
            PortAttach::None => BuiltPort {
                port: Box::new(wire::Disconnected),
                udp_addr: None,
                counters: Box::new(|| json!({"attached": "none"})),
                stop: None,
            },
            PortAttach::Udp { bind, peer } => {
                let p = wire::UdpPort::bind(*bind, *peer).with_context(|| format!("bind UDP {bind}"))?;
                let addr = p.local_addr()?;
                let stats = p.stats();
                BuiltPort {
                    port: Box::new(p),
                    udp_addr: Some(addr),
                    counters: Box::new(
                        move || json!({"attached": "udp", "local": addr.to_string(), "udp": stats.snapshot()}),
                    ),
                    stop: None,
                }
            }
            PortAttach::Pcap(file) => {
                let (nic_end, replay_end) = wire::cable(1024);
                let replay = wire::PcapReplay::open(file)
                    .with_context(|| format!("open capture {}", file.display()))?;
                let report = Arc::new(Mutex::new(None));
                let r2 = report.clone();
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stop2 = stop.clone();
                std::thread::Builder::new().name("pcap-replay".into()).spawn(move || {
                    let mut end = replay_end;
                    let r = replay.with_loops(1).run(&mut end, &stop2);
                    *r2.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    // Keep the far end open until the port is stopped (frames the NIC sends
                    // are taken and dropped).
                    let mut sink = vec![];
                    while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                        sink.clear();
                        wire::EthPort::recv(&mut end, &mut sink, 256);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                })?;
                let file = file.display().to_string();
                BuiltPort {
                    port: Box::new(nic_end),
                    udp_addr: None,
                    counters: Box::new(move || {
                        let r = report.lock().unwrap_or_else(|e| e.into_inner());
                        json!({"attached": "pcap", "file": file, "replay": serde_json::to_value(&*r).unwrap_or(Value::Null)})
                    }),
                    stop: Some(stop),
                }
            }
        })
    }
}

/// One served function.
#[derive(Clone, Debug, Serialize)]
pub struct Function {
    /// nagare, nic, crypto, ml, enso, packetized or smoke.
    pub name: String,
    pub socket: PathBuf,
}

impl Function {
    /// QEMU's `-device` option for this function (the JSON form is the one QEMU parses for
    /// vfio-user-pci), with `addr` when given (a PCI slot, e.g. "0x10").
    pub fn qemu_device(&self, addr: Option<&str>) -> String {
        let mut v = json!({
            "driver": "vfio-user-pci",
            "socket": {"path": self.socket.display().to_string(), "type": "unix"},
        });
        if let Some(a) = addr {
            v["addr"] = json!(a);
        }
        v.to_string()
    }
}

/// A device set being served.
pub struct Served {
    pub kind: DeviceKind,
    pub functions: Vec<Function>,
    servers: Vec<vfio_server::ServerHandle>,
    counters: Box<dyn Fn() -> Value + Send + Sync>,
    port: Option<BuiltPort>,
}

/// Restricts a socket to its owner (0600).
fn owner_only(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// Serves `dev` on `sock` (a new socket, owner only); behind the switch's port `port` when
/// given.
pub(crate) fn spawn_server(
    dev: Arc<Mutex<dyn PciDevice>>,
    sock: &Path,
    behind: Option<(&Arc<nagare::Fabric>, u32)>,
) -> Result<vfio_server::ServerHandle> {
    if sock.exists() {
        bail!("{} exists: another server may be using it (remove it if not)", sock.display());
    }
    let mut server =
        vfio_server::Server::bind(sock, dev).with_context(|| format!("listen on {}", sock.display()))?;
    owner_only(sock)?;
    if let Some((fabric, port)) = behind {
        let fabric = fabric.clone();
        server = server.with_upstream(Arc::new(move |mem: Arc<pcie_model::GuestMemory>| {
            Arc::new(nagare::FabricSpace::new(fabric.clone(), port, mem)) as Arc<dyn pcie_model::DmaSpace>
        }));
    }
    Ok(server.spawn())
}

fn named(names: &[&str], values: &[u64]) -> Value {
    names.iter().zip(values).map(|(n, v)| ((*n).to_string(), json!(v))).collect()
}

/// Locks a served device (a poisoned lock still holds a usable device).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Served {
    /// Builds `cfg`'s device set with its port attached to `attach` (NICs only) and serves
    /// it: a single function on `place` (a socket path), or, for nagare, one socket per
    /// function in the folder `place` (`nagare.sock`, `nic.sock`, `crypto.sock`, `ml.sock`).
    pub fn start(cfg: &DeviceConfig, attach: &PortAttach, place: &Path) -> Result<Served> {
        if !cfg.kind.has_port() && *attach != PortAttach::None {
            bail!("{} has no Ethernet port to attach", cfg.kind.name());
        }
        let port = cfg.kind.has_port().then(|| BuiltPort::build(attach)).transpose()?;
        Self::start_with_port(cfg, port, place)
    }

    /// [`start`](Self::start) with a port already built (None: not connected).
    pub fn start_with_port(cfg: &DeviceConfig, port: Option<BuiltPort>, place: &Path) -> Result<Served> {
        if let Some(why) = cfg.invalid() {
            bail!("{why}");
        }
        let sock_of = |f: &str| -> PathBuf {
            if cfg.kind == DeviceKind::Nagare {
                place.join(format!("{f}.sock"))
            } else {
                place.to_path_buf()
            }
        };
        if cfg.kind == DeviceKind::Nagare {
            private_dir(place)?;
        } else if let Some(parent) = place.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                private_dir(parent)?;
            }
        }
        let mut port = port;
        let take_port = |p: &mut Option<BuiltPort>| -> Box<dyn wire::EthPort> {
            p.as_mut().map_or_else(
                || Box::new(wire::Disconnected) as Box<dyn wire::EthPort>,
                |b| std::mem::replace(&mut b.port, Box::new(wire::Disconnected)),
            )
        };
        let mut servers = vec![];
        let counters: Box<dyn Fn() -> Value + Send + Sync> = match cfg.kind {
            DeviceKind::Enso => {
                let (nic, cycles) = run::enso_nic_config(cfg.model, cfg.enso_config(), take_port(&mut port))?;
                let nic = Arc::new(Mutex::new(nic));
                servers.push(spawn_server(nic.clone(), &sock_of("enso"), None)?);
                Box::new(move || {
                    let mut v = named(&testbed_regs::enso::ext::counter::NAMES, &lock(&nic).counters());
                    if let Some(c) = &cycles {
                        v["rtl_cycles"] = json!(c.load(std::sync::atomic::Ordering::Relaxed));
                    }
                    v
                })
            }
            DeviceKind::Packetized => {
                let nic = Arc::new(Mutex::new(packet_nic::PacketNic::new(
                    packet_nic::PacketNicConfig::default(),
                    take_port(&mut port),
                )?));
                servers.push(spawn_server(nic.clone(), &sock_of("packetized"), None)?);
                Box::new(move || {
                    named(&testbed_regs::packetized::reg::counter::NAMES, &lock(&nic).counters())
                })
            }
            DeviceKind::Crypto | DeviceKind::Ml => {
                let dev = Arc::new(Mutex::new(if cfg.kind == DeviceKind::Crypto {
                    Accelerator::crypto()?
                } else {
                    Accelerator::ml()?
                }));
                servers.push(spawn_server(dev.clone(), &sock_of(cfg.kind.name()), None)?);
                Box::new(move || {
                    named(&testbed_regs::accel::reg::counter::NAMES, &lock(&dev).device_counters())
                })
            }
            DeviceKind::Smoke => {
                let dev = Arc::new(Mutex::new(testdev::SmokeDevice::new()?));
                servers.push(spawn_server(dev.clone(), &sock_of("smoke"), None)?);
                Box::new(move || {
                    let t = PciDevice::counters(&*lock(&dev)).snapshot();
                    serde_json::to_value(t).unwrap_or(Value::Null)
                })
            }
            DeviceKind::Nagare => {
                let set = nagare_set(cfg, take_port(&mut port))?;
                servers.push(spawn_server(set.switch.clone(), &sock_of("nagare"), None)?);
                servers.push(spawn_server(
                    set.nic.clone(),
                    &sock_of("nic"),
                    Some((&set.fabric, set.ports[0])),
                )?);
                servers.push(spawn_server(
                    set.crypto.clone(),
                    &sock_of("crypto"),
                    Some((&set.fabric, set.ports[1])),
                )?);
                servers.push(spawn_server(
                    set.ml.clone(),
                    &sock_of("ml"),
                    Some((&set.fabric, set.ports[2])),
                )?);
                Box::new(move || set.counters())
            }
        };
        let functions = cfg
            .kind
            .functions()
            .iter()
            .map(|f| Function { name: (*f).to_string(), socket: sock_of(f) })
            .collect();
        Ok(Served { kind: cfg.kind, functions, servers, counters, port })
    }

    /// The UDP address of the NIC's port, when it is attached to a UDP socket.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.port.as_ref().and_then(|p| p.udp_addr)
    }

    /// Every counter: the device's own, the port's and each server's.
    pub fn counters(&self) -> Value {
        let mut v = json!({
            "device": self.kind.name(),
            "counters": (self.counters)(),
            "servers": self.servers.iter().zip(&self.functions)
                .map(|(s, f)| (f.name.clone(), serde_json::to_value(s.stats()).unwrap_or(Value::Null)))
                .collect::<serde_json::Map<_, _>>(),
        });
        if let Some(p) = &self.port {
            v["port"] = (p.counters)();
        }
        v
    }

    /// Stops every server and removes the sockets.
    pub fn stop(self) {
        for s in self.servers {
            s.stop();
        }
        for f in &self.functions {
            let _ = std::fs::remove_file(&f.socket);
        }
    }
}

/// The NIC's TX stream window, as the switch delivers to it.
struct NicTxInput(enso_nic::stream::TxStreamPort);
impl nagare::Ingress for NicTxInput {
    fn push(&self, offset: u64, data: &[u8]) -> bool {
        self.0.push(offset, data)
    }
    fn window(&self) -> u64 {
        testbed_regs::enso::ext::STREAM_TX_WINDOW_SIZE
    }
}

/// An accelerator's stream window, as the switch delivers to it.
struct AccelInput(accel::StreamPort);
impl nagare::Ingress for AccelInput {
    fn push(&self, offset: u64, data: &[u8]) -> bool {
        self.0.push(offset, data)
    }
    fn window(&self) -> u64 {
        testbed_regs::accel::STREAM_WINDOW_SIZE
    }
}

/// The switch's fabric: its pipeline in Rust, or with `model` rtl the co-simulated RTL
/// (counting the headers it rules on into `headers`, when given).
pub fn nagare_fabric(model: EngineModel, headers: Option<Arc<AtomicU64>>) -> Result<Arc<nagare::Fabric>> {
    if model != EngineModel::Rtl {
        return Ok(nagare::Fabric::new(nagare::PipelineConfig::default()));
    }
    crate::rtl::ensure()?;
    let pipeline = rtl_cosim::nagare_pipeline(headers).map_err(anyhow::Error::msg)?;
    Ok(nagare::Fabric::with_model(nagare::PipelineConfig::default(), pipeline))
}

/// Puts the Ensō NIC behind a switch port: its TX stream window and head credits.
pub fn attach_nic(fabric: &nagare::Fabric, nic: &enso_nic::EnsoNic) -> u32 {
    use testbed_regs::enso as en;
    let credits = nic.credit_port();
    fabric.attach(nagare::Port {
        name: "nic".into(),
        pci_id: pci_id(en::VENDOR_ID, en::DEVICE_ID),
        input: Some(Arc::new(NicTxInput(nic.tx_stream_port()))),
        credits: Some(Arc::new(move |pipe, head| credits.set_head(pipe, head))),
        doorbell: None,
        counters: Some(PciDevice::counters(nic)),
    })
}

/// Puts an accelerator behind a switch port: its stream window and its doorbell.
pub fn attach_accel(fabric: &nagare::Fabric, a: &Accelerator, name: &str, device: u16) -> u32 {
    let bell = a.doorbell_port();
    fabric.attach(nagare::Port {
        name: name.into(),
        pci_id: pci_id(testbed_regs::accel::VENDOR_ID, device),
        input: Some(Arc::new(AccelInput(a.stream_port()))),
        credits: None,
        doorbell: Some(Arc::new(move |tail| bell.ring(tail))),
        counters: Some(PciDevice::counters(a)),
    })
}

/// The switch and the devices behind it.
struct NagareSet {
    fabric: Arc<nagare::Fabric>,
    switch: Arc<Mutex<nagare::Switch>>,
    nic: Arc<Mutex<enso_nic::EnsoNic>>,
    crypto: Arc<Mutex<Accelerator>>,
    ml: Arc<Mutex<Accelerator>>,
    /// The switch ports of nic, crypto and ml.
    ports: [u32; 3],
}

impl NagareSet {
    fn counters(&self) -> Value {
        json!({
            "nagare": named(&testbed_regs::nagare::reg::counter::NAMES, &self.fabric.counters.snapshot()),
            "nic": named(&testbed_regs::enso::ext::counter::NAMES, &lock(&self.nic).counters()),
            "crypto": named(&testbed_regs::accel::reg::counter::NAMES, &lock(&self.crypto).device_counters()),
            "ml": named(&testbed_regs::accel::reg::counter::NAMES, &lock(&self.ml).device_counters()),
        })
    }
}

fn pci_id(vendor: u16, device: u16) -> u32 {
    (vendor as u32) << 16 | device as u32
}

/// The switch with an Ensō NIC (its port on `port`), the crypto and the ML accelerator.
fn nagare_set(cfg: &DeviceConfig, port: Box<dyn wire::EthPort>) -> Result<NagareSet> {
    use testbed_regs::accel as acc;
    let (nic, _) = run::enso_nic_config(cfg.model, cfg.enso_config(), port)?;
    let nic = Arc::new(Mutex::new(nic));
    let crypto = Arc::new(Mutex::new(Accelerator::crypto()?));
    let ml = Arc::new(Mutex::new(Accelerator::ml()?));
    let fabric = nagare_fabric(cfg.model, None)?;
    let ports = [
        attach_nic(&fabric, &lock(&nic)),
        attach_accel(&fabric, &lock(&crypto), "crypto", acc::CRYPTO_DEVICE_ID),
        attach_accel(&fabric, &lock(&ml), "ml", acc::ML_DEVICE_ID),
    ];
    let switch = Arc::new(Mutex::new(nagare::Switch::new(fabric.clone())?));
    Ok(NagareSet { fabric, switch, nic, crypto, ml, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_attachments_parse_and_refuse_nonsense() {
        assert_eq!(PortAttach::parse("none"), Ok(PortAttach::None));
        assert_eq!(
            PortAttach::parse("udp:127.0.0.1:7000,127.0.0.1:7001"),
            Ok(PortAttach::Udp {
                bind: "127.0.0.1:7000".parse().unwrap(),
                peer: Some("127.0.0.1:7001".parse().unwrap())
            })
        );
        assert!(matches!(PortAttach::parse("udp"), Ok(PortAttach::Udp { peer: None, .. })));
        assert!(PortAttach::parse("udp:nowhere").is_err());
        assert!(PortAttach::parse("pcap:/no/such/file.pcap").is_err());
        assert!(PortAttach::parse("carrier-pigeon").is_err());
    }

    #[test]
    fn configurations_that_cannot_be_served_are_refused() {
        let mut c = DeviceConfig::new(DeviceKind::Crypto);
        c.pipes = Some(8);
        assert!(c.invalid().is_some());
        let mut c = DeviceConfig::new(DeviceKind::Enso);
        c.pipes = Some(0);
        assert!(c.invalid().is_some());
        c.pipes = Some(8192);
        assert!(c.invalid().is_none());
    }

    #[test]
    fn every_device_serves_on_private_sockets_and_stops_cleanly() {
        let dir = std::env::temp_dir().join(format!("rig-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir).unwrap();
        for kind in [
            DeviceKind::Enso,
            DeviceKind::Packetized,
            DeviceKind::Crypto,
            DeviceKind::Ml,
            DeviceKind::Smoke,
            DeviceKind::Nagare,
        ] {
            let place = if kind == DeviceKind::Nagare {
                dir.join("nagare")
            } else {
                dir.join(format!("{}.sock", kind.name()))
            };
            let s = Served::start(&DeviceConfig::new(kind), &PortAttach::None, &place).unwrap();
            assert_eq!(s.functions.len(), kind.functions().len());
            for f in &s.functions {
                let mode = std::fs::metadata(&f.socket).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.socket.display());
                assert!(f.qemu_device(None).contains("vfio-user-pci"));
            }
            assert!(s.counters()["counters"].is_object(), "{kind:?}");
            let socks: Vec<PathBuf> = s.functions.iter().map(|f| f.socket.clone()).collect();
            s.stop();
            assert!(socks.iter().all(|p| !p.exists()), "sockets removed");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
