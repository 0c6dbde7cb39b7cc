//! Topology files for `testbed up`: guests, the devices in each, and the wires between
//! ports. Everything is checked before anything boots; an error names the line and the
//! field at fault.
//!
//! ```toml
//! [[guest]]
//! name = "guest0"          # letters, digits, '-' and '_'
//! cpus = 1                 # default 1
//! memory_mb = 1024         # default 1024
//! viommu = "on"            # on | off | passthrough (default on; VFIO needs on or passthrough)
//! kernel_args = ""         # appended to the kernel command line
//!
//! [[guest.device]]
//! kind = "enso"            # enso | packetized | crypto | ml | smoke | nagare
//! name = "nic0"            # default: the kind (kind2, kind3… when repeated)
//! pipes = 64               # enso, nagare: pipes served
//! model = "rust"           # enso, nagare: rust | rtl
//! registers = "shared"     # enso, nagare: shared | mmio (every queue-page access traps)
//! extensions = "all"       # enso, nagare: all | none (the driver uses none: BAR0 pages trap)
//! port = "udp"             # NICs: none | udp[:BIND[,PEER]] | pcap:FILE (default none)
//!
//! [[wire]]                 # a cable between two NIC ports
//! a = "guest0.nic0"
//! b = "guest1.nic0"
//! ```

use crate::rig::{DeviceConfig, DeviceKind, PortAttach};
use crate::scenarios::run::{DriverExtensions, EngineModel, EnsoSetup, Registers};
use crate::vm::Viommu;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    guest: Vec<RawGuest>,
    #[serde(default)]
    wire: Vec<RawWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    cpus: Option<Spanned<i64>>,
    memory_mb: Option<Spanned<i64>>,
    viommu: Option<Spanned<String>>,
    #[serde(default)]
    kernel_args: String,
    #[serde(default)]
    device: Vec<RawDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    pipes: Option<Spanned<i64>>,
    model: Option<Spanned<String>>,
    registers: Option<Spanned<String>>,
    extensions: Option<Spanned<String>>,
    port: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWire {
    a: Spanned<String>,
    b: Spanned<String>,
}

/// A checked topology.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Topology {
    pub guests: Vec<Guest>,
    pub wires: Vec<Wire>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Guest {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub viommu: Viommu,
    pub kernel_args: String,
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub kind: DeviceKind,
    pub pipes: Option<u32>,
    pub model: EngineModel,
    /// The Ensō NIC's register mode.
    #[serde(default)]
    pub registers: Registers,
    /// The extensions the guest's driver uses (none: the extension pages trap).
    #[serde(default)]
    pub extensions: DriverExtensions,
    /// The port's attachment when no wire names it.
    pub port: PortAttach,
}

impl Device {
    pub fn config(&self) -> DeviceConfig {
        DeviceConfig {
            kind: self.kind,
            pipes: self.pipes,
            model: self.model,
            setup: EnsoSetup { registers: self.registers, extensions: self.extensions },
        }
    }
}

/// A cable between two ports, each `guest.device`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wire {
    pub a: (String, String),
    pub b: (String, String),
}

/// What is wrong with a topology, and where.
#[derive(Debug, PartialEq, Eq)]
pub struct TopologyError {
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, {}: {}", self.line, self.field, self.message)
    }
}

impl std::error::Error for TopologyError {}

/// The one-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

struct Checker<'a> {
    text: &'a str,
}

impl Checker<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Result<T, TopologyError> {
        Err(TopologyError {
            line: line_of(self.text, span.start),
            field: field.into(),
            message: message.into(),
        })
    }

    fn range(
        &self,
        v: &Option<Spanned<i64>>,
        field: &str,
        lo: i64,
        hi: i64,
        default: i64,
    ) -> Result<u32, TopologyError> {
        match v {
            None => Ok(default as u32),
            Some(s) if (lo..=hi).contains(s.get_ref()) => Ok(*s.get_ref() as u32),
            Some(s) => self.err(s.span(), field, format!("{} is out of range {lo}..={hi}", s.get_ref())),
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 32 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses and checks a topology file's text.
pub fn parse(text: &str) -> Result<Topology, TopologyError> {
    let raw: RawTopology = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        let msg = e.message().to_string();
        // serde's messages name the field ("unknown field `x`", "missing field `name`").
        let field = msg.split('`').nth(1).unwrap_or("file").to_string();
        TopologyError { line, field, message: msg }
    })?;
    let c = Checker { text };
    if raw.guest.is_empty() {
        return Err(TopologyError {
            line: 1,
            field: "guest".into(),
            message: "no [[guest]] is defined".into(),
        });
    }
    let mut guests = vec![];
    let mut names = BTreeSet::new();
    for g in raw.guest {
        let name = g.name.get_ref().clone();
        if !valid_name(&name) {
            return c.err(
                g.name.span(),
                "guest.name",
                format!("'{name}': use 1-32 letters, digits, '-' or '_'"),
            );
        }
        if !names.insert(name.clone()) {
            return c.err(g.name.span(), "guest.name", format!("guest '{name}' is defined twice"));
        }
        let cpus = c.range(&g.cpus, "guest.cpus", 1, 8, 1)?;
        let memory_mb = c.range(&g.memory_mb, "guest.memory_mb", 256, 16384, 1024)?;
        let viommu = match &g.viommu {
            None => Viommu::On,
            Some(v) => match v.get_ref().as_str() {
                "on" => Viommu::On,
                "off" => Viommu::Off,
                "passthrough" => Viommu::Passthrough,
                other => {
                    return c.err(
                        v.span(),
                        "guest.viommu",
                        format!("'{other}' is not one of on, off, passthrough"),
                    )
                }
            },
        };
        if g.kernel_args.contains(['\n', '"']) {
            return c.err(g.name.span(), "guest.kernel_args", "no newlines or quotes in kernel arguments");
        }
        let mut devices: Vec<Device> = vec![];
        for d in g.device {
            let kind = match d.kind.get_ref().as_str() {
                "enso" => DeviceKind::Enso,
                "packetized" => DeviceKind::Packetized,
                "crypto" => DeviceKind::Crypto,
                "ml" => DeviceKind::Ml,
                "smoke" => DeviceKind::Smoke,
                "nagare" => DeviceKind::Nagare,
                other => {
                    return c.err(
                        d.kind.span(),
                        "device.kind",
                        format!(
                            "unknown device '{other}' (one of enso, packetized, crypto, ml, smoke, nagare)"
                        ),
                    )
                }
            };
            let dname = match &d.name {
                Some(n) => {
                    if !valid_name(n.get_ref()) {
                        return c.err(
                            n.span(),
                            "device.name",
                            format!("'{}': use letters, digits, '-' or '_'", n.get_ref()),
                        );
                    }
                    n.get_ref().clone()
                }
                None => {
                    let same = devices.iter().filter(|x| x.kind == kind).count();
                    if same == 0 {
                        kind.name().to_string()
                    } else {
                        format!("{}{}", kind.name(), same + 1)
                    }
                }
            };
            if devices.iter().any(|x| x.name == dname) {
                let span = d.name.as_ref().map_or(d.kind.span(), |n| n.span());
                return c.err(span, "device.name", format!("guest '{name}' has two devices named '{dname}'"));
            }
            let pipes = match &d.pipes {
                None => None,
                Some(p) => Some(c.range(
                    &Some(p.clone()),
                    "device.pipes",
                    1,
                    i64::from(testbed_regs::enso::MAX_PIPES),
                    0,
                )?),
            };
            let model = match &d.model {
                None => EngineModel::Rust,
                Some(m) => match m.get_ref().as_str() {
                    "rust" => EngineModel::Rust,
                    "rtl" => EngineModel::Rtl,
                    other => {
                        return c.err(m.span(), "device.model", format!("'{other}' is not one of rust, rtl"))
                    }
                },
            };
            let registers = match &d.registers {
                None => Registers::Shared,
                Some(m) => match m.get_ref().as_str() {
                    "shared" => Registers::Shared,
                    "mmio" => Registers::Mmio,
                    other => {
                        return c.err(
                            m.span(),
                            "device.registers",
                            format!("'{other}' is not one of shared, mmio"),
                        )
                    }
                },
            };
            let extensions = match &d.extensions {
                None => DriverExtensions::All,
                Some(m) => match m.get_ref().as_str() {
                    "all" => DriverExtensions::All,
                    "none" => DriverExtensions::None,
                    other => {
                        return c.err(
                            m.span(),
                            "device.extensions",
                            format!("'{other}' is not one of all, none"),
                        )
                    }
                },
            };
            let port = match &d.port {
                None => PortAttach::None,
                Some(p) => {
                    if !kind.has_port() {
                        return c.err(
                            p.span(),
                            "device.port",
                            format!("{} has no Ethernet port", kind.name()),
                        );
                    }
                    PortAttach::parse(p.get_ref()).or_else(|e| c.err(p.span(), "device.port", e))?
                }
            };
            let dev = Device { name: dname, kind, pipes, model, registers, extensions, port };
            if let Some(why) = dev.config().invalid() {
                return c.err(d.kind.span(), "device", why);
            }
            devices.push(dev);
        }
        if devices.len() > 16 {
            return c.err(g.name.span(), "guest.device", "at most 16 devices per guest");
        }
        guests.push(Guest {
            name,
            cpus,
            memory_mb,
            viommu,
            kernel_args: g.kernel_args.trim().to_string(),
            devices,
        });
    }
    let mut wires = vec![];
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for w in raw.wire {
        let mut ends = vec![];
        for (field, end) in [("wire.a", &w.a), ("wire.b", &w.b)] {
            let Some((g, d)) = end.get_ref().split_once('.') else {
                return c.err(end.span(), field, format!("'{}': name a port as GUEST.DEVICE", end.get_ref()));
            };
            let Some(guest) = guests.iter().find(|x| x.name == g) else {
                return c.err(end.span(), field, format!("no guest '{g}'"));
            };
            let Some(dev) = guest.devices.iter().find(|x| x.name == d) else {
                return c.err(end.span(), field, format!("guest '{g}' has no device '{d}'"));
            };
            if !dev.kind.has_port() {
                return c.err(
                    end.span(),
                    field,
                    format!("{g}.{d} is a {} and has no Ethernet port", dev.kind.name()),
                );
            }
            if dev.port != PortAttach::None {
                return c.err(
                    end.span(),
                    field,
                    format!("{g}.{d} already has port = \"…\"; a port takes one attachment"),
                );
            }
            let key = (g.to_string(), d.to_string());
            if !used.insert(key.clone()) {
                return c.err(end.span(), field, format!("{g}.{d} is wired twice"));
            }
            ends.push(key);
        }
        let b = ends.pop().unwrap_or_default();
        let a = ends.pop().unwrap_or_default();
        wires.push(Wire { a, b });
    }
    Ok(Topology { guests, wires })
}

/// The topology of `testbed up` without a file: `guest0` with an Ensō NIC whose port is a
/// UDP socket on 127.0.0.1 (any free port; `up` prints it).
pub fn default_topology() -> Topology {
    Topology {
        guests: vec![Guest {
            name: "guest0".into(),
            cpus: 1,
            memory_mb: 1024,
            viommu: Viommu::On,
            kernel_args: String::new(),
            devices: vec![Device {
                name: "enso".into(),
                kind: DeviceKind::Enso,
                pipes: None,
                model: EngineModel::Rust,
                registers: Registers::Shared,
                extensions: DriverExtensions::All,
                port: PortAttach::Udp { bind: "127.0.0.1:0".parse().expect("literal address"), peer: None },
            }],
        }],
        wires: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[guest]]
name = "a"
viommu = "passthrough"
[[guest.device]]
kind = "enso"
name = "nic0"
[[guest.device]]
kind = "crypto"

[[guest]]
name = "b"
cpus = 2
[[guest.device]]
kind = "enso"
name = "nic0"
pipes = 8192
registers = "mmio"
extensions = "none"

[[wire]]
a = "a.nic0"
b = "b.nic0"
"#;

    #[test]
    fn a_two_guest_topology_parses_with_defaults() {
        let t = parse(TWO).unwrap();
        assert_eq!(t.guests.len(), 2);
        assert_eq!(t.guests[0].viommu, Viommu::Passthrough);
        assert_eq!(t.guests[0].devices[1].name, "crypto");
        assert_eq!((t.guests[1].cpus, t.guests[1].memory_mb), (2, 1024));
        assert_eq!(t.guests[1].devices[0].pipes, Some(8192));
        assert_eq!(t.guests[0].devices[0].registers, Registers::Shared, "the default");
        let setup = t.guests[1].devices[0].config().setup;
        assert_eq!((setup.registers, setup.extensions), (Registers::Mmio, DriverExtensions::None));
        assert_eq!(setup.config().registers, enso_nic::RegisterMode::Mmio);
        assert!(!setup.config().map_extension_pages);
        assert_eq!(t.wires, vec![Wire { a: ("a".into(), "nic0".into()), b: ("b".into(), "nic0".into()) }]);
    }

    /// Each refused topology names its line and field.
    #[test]
    fn refused_topologies_name_the_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"gpu\"\n", 4, "device.kind", "unknown device 'gpu'"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"enso\"\n[[wire]]\na = \"g.enso\"\nb = \"h.nic\"\n", 7, "wire.b", "no guest 'h'"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"enso\"\n[[wire]]\na = \"g.enso\"\nb = \"g.nic\"\n", 7, "wire.b", "has no device 'nic'"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"crypto\"\nport = \"udp\"\n", 5, "device.port", "no Ethernet port"),
            ("[[guest]]\nname = \"g\"\ncpus = 99\n", 3, "guest.cpus", "out of range"),
            ("[[guest]]\nname = \"g\"\nviommu = \"maybe\"\n", 3, "guest.viommu", "not one of on, off, passthrough"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"enso\"\nregisters = \"polled\"\n", 5, "device.registers", "not one of shared, mmio"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"crypto\"\nregisters = \"mmio\"\n", 4, "device", "registers applies to enso"),
            ("[[guest]]\nname = \"g\"\ncolour = \"red\"\n", 3, "colour", "unknown field"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"crypto\"\npipes = 4\n", 4, "device", "pipes applies to enso"),
            ("[[guest]]\nname = \"g\"\n[[guest]]\nname = \"g\"\n", 4, "guest.name", "defined twice"),
            ("[[guest]]\nname = \"g\"\n[[guest.device]]\nkind = \"enso\"\n[[wire]]\na = \"g.enso\"\nb = \"g.enso\"\n", 7, "wire.b", "wired twice"),
            ("", 1, "guest", "no [[guest]]"),
        ];
        for (text, line, field, msg) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.field.as_str()), (*line, *field), "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
    }

    #[test]
    fn the_default_topology_is_one_guest_with_an_enso_nic_on_udp() {
        let t = default_topology();
        assert_eq!(t.guests[0].name, "guest0");
        assert!(matches!(t.guests[0].devices[0].port, PortAttach::Udp { peer: None, .. }));
    }
}
