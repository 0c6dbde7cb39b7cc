//! The packetized NIC: queue pages, descriptor rings in scribbled memory (the descriptor parser), frames on the wire.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use testbed_fuzz::{Op, Rig};

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

fn make() -> Rig {
    let (nic_end, far) = testbed_fuzz::cabled();
    let cfg = packet_nic::PacketNicConfig { num_queues: 4 };
    Rig::new(Box::new(packet_nic::PacketNic::new(cfg, nic_end).unwrap()), Some(far))
}

fuzz_target!(|ops: Vec<Op>| {
    testbed_fuzz::with_rig(&RIG, make, |r| r.run(&ops));
});
