//! The Nagare switch's stream tables: random programming through the management
//! function's registers (window base, stream select, hops, allow lists, stream control,
//! glue), interleaved with writes the fabric must route (from any port, to any address in
//! and around the stream windows), CPU pushes into the switch's BAR2, and resets.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nagare::{Fabric, Ingress, PipelineConfig, Port, Switch};
use pcie_model::PciDevice;
use std::sync::{Arc, Mutex, OnceLock};
use testbed_regs::nagare::{self as regs, reg};

const BASE: u64 = 0x40_0000_0000;

struct Sink;
impl Ingress for Sink {
    fn push(&self, _offset: u64, data: &[u8]) -> bool {
        !data.is_empty()
    }
    fn window(&self) -> u64 {
        64 << 10
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A register write; `pick` chooses a meaningful register most of the time.
    Reg {
        pick: u8,
        off: u16,
        value: testbed_fuzz::Value,
    },
    Read {
        off: u16,
    },
    /// A write some port makes: into a stream window (`stream`, `at`), or anywhere.
    Route {
        src: u8,
        stream: u8,
        at: u32,
        anywhere: Option<u64>,
        len: u16,
    },
    /// A CPU write into the switch's BAR2 (trapped).
    Push {
        off: u32,
        data: Vec<u8>,
    },
    Reset,
}

const REGS: [u64; 12] = [
    reg::WINDOW_BASE_LO,
    reg::WINDOW_BASE_HI,
    reg::STREAM_SEL,
    reg::POLICY_HOPS,
    reg::HOP_SEL,
    reg::HOP_PORT,
    reg::HOP_KIND,
    reg::HOP_PIPE,
    reg::ACL,
    reg::STREAM_CTRL,
    reg::ID,
    reg::NUM_PORTS,
];

static SW: OnceLock<Mutex<Switch>> = OnceLock::new();

fn make() -> Mutex<Switch> {
    let fabric = Fabric::new(PipelineConfig::default());
    for (name, id) in [("nic", 0x1172_0000u32), ("crypto", 0x1172_5a01), ("ml", 0x1172_5a02)] {
        fabric.attach(Port {
            name: name.into(),
            pci_id: id,
            input: Some(Arc::new(Sink)),
            credits: Some(Arc::new(|_, _| {})),
            doorbell: Some(Arc::new(|_| {})),
            counters: None,
        });
    }
    Mutex::new(Switch::new(fabric).unwrap())
}

fuzz_target!(|ops: Vec<Op>| {
    let mut sw = SW.get_or_init(make).lock().unwrap();
    sw.reset();
    let w = |sw: &mut Switch, off: u64, v: u32| sw.bar_write(regs::REG_BAR, off, &v.to_le_bytes());
    w(&mut sw, reg::WINDOW_BASE_LO, BASE as u32);
    w(&mut sw, reg::WINDOW_BASE_HI, (BASE >> 32) as u32);
    let bar2 = sw.config().bar(regs::WINDOW_BAR).map_or(0, |b| b.size);
    for op in ops.iter().take(256) {
        match op {
            Op::Reg { pick, off, value } => {
                let off = match REGS.get(*pick as usize % 16) {
                    Some(r) => *r,
                    None => (*off as u64 % regs::REG_BAR_SIZE) & !3,
                };
                let v = match value {
                    testbed_fuzz::Value::Small(s) => *s as u32 % 8,
                    v => v.get(),
                };
                w(&mut sw, off, v);
            }
            Op::Read { off } => {
                let mut b = [0u8; 4];
                sw.bar_read(regs::REG_BAR, (*off as u64 % regs::REG_BAR_SIZE) & !3, &mut b);
            }
            Op::Route { src, stream, at, anywhere, len } => {
                let addr = anywhere.unwrap_or(
                    BASE + (*stream as u64 % regs::STREAMS as u64) * regs::WINDOW_SIZE
                        + *at as u64 % regs::WINDOW_SIZE,
                );
                let data = vec![0x5a; *len as usize % 4096 + 1];
                let _ = sw.fabric().route(*src as u32 % 5, addr, &data);
            }
            Op::Push { off, data } => {
                if bar2 > 0 {
                    let data = &data[..data.len().min(4096)];
                    sw.bar_write(regs::WINDOW_BAR, *off as u64 % bar2, data);
                }
            }
            Op::Reset => sw.reset(),
        }
    }
});
