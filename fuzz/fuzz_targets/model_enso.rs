//! The Ensō NIC: BAR0 registers and extension pages, queue pages, notification rings and TX entries in scribbled memory, frames on the wire.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use testbed_fuzz::{Op, Rig};

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

fn make() -> Rig {
    let (nic_end, far) = testbed_fuzz::cabled();
    let cfg = enso_nic::EnsoConfig { num_pipes: 16, num_nb_pairs: 4, ..Default::default() };
    Rig::new(Box::new(enso_nic::EnsoNic::new(cfg, nic_end).unwrap()), Some(far))
}

fuzz_target!(|ops: Vec<Op>| {
    testbed_fuzz::with_rig(&RIG, make, |r| r.run(&ops));
});
