//! The smoke device's registers, doorbell page and DMA commands, with guest memory scribbled.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use testbed_fuzz::{Op, Rig};

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

fn make() -> Rig {
    Rig::new(Box::new(testdev::SmokeDevice::new().unwrap()), None)
}

fuzz_target!(|ops: Vec<Op>| {
    testbed_fuzz::with_rig(&RIG, make, |r| r.run(&ops));
});
