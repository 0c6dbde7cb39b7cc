//! The ML accelerator: ring registers, doorbells, descriptors and stream records in scribbled memory.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use testbed_fuzz::{Op, Rig};

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

fn make() -> Rig {
    Rig::new(Box::new(accel::Accelerator::ml().unwrap()), None)
}

fuzz_target!(|ops: Vec<Op>| {
    testbed_fuzz::with_rig(&RIG, make, |r| r.run(&ops));
});
