//! The testbed: provisioning (QEMU, guest image, accelerator), guests, scenarios and
//! benchmarks. The `testbed` binary is a thin CLI over this library; integration tests
//! and benchmarks use it directly.

pub mod accel;
pub mod apps;
pub mod bench;
pub mod cache;
pub mod cardecho;
pub mod chain;
pub mod cli;
pub mod demo;
pub mod hostile;
pub mod image;
pub mod latency;
pub mod peer;
pub mod qemu;
pub mod rig;
pub mod rtl;
pub mod run;
pub mod serve;
pub mod soak;
pub mod steps;
pub mod up;
pub mod vm;
