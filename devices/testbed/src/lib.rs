//! The testbed: guests, scenarios and benchmarks, on what `provision` (QEMU, the cache) and
//! `guest-image` (the guest image) provide; the accelerator probe is here. The `testbed` binary is a thin CLI over this library; integration tests
//! and benchmarks use it directly.

pub mod accel;
pub mod apps;
pub mod bench;
pub mod cardecho;
pub mod chain;
pub mod demo;
pub mod hostile;
pub mod latency;
pub mod peer;
pub mod plot;
pub mod rig;
pub mod rtl;
pub mod run;
pub mod serve;
pub mod soak;
pub mod up;
pub mod vm;
