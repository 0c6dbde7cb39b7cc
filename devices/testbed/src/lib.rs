//! The testbed: guests, device servers, scenarios and benchmarks over the device models,
//! on what `provision` (QEMU, the cache, progress steps) and `guest-image` (the guest
//! image and kernel headers) provide. The `testbed` binary is a thin CLI ([`cli`]) over
//! this library; integration tests use it directly. `docs/architecture.md` says where each
//! piece of the workspace lives.
//!
//! - [`scenarios`]: `testbed run ...`, the demo and the soak: each drives devices from a
//!   guest or natively and returns a [`report::RunReport`].
//! - [`report`]: the report and its renderings; the plots are the `testbed-plots` crate.
//! - [`bench`]: `testbed bench ...` and its latency model.
//! - [`rig`], [`serve`], [`up`]: device sets, vfio-user servers, long-lived guests.
//! - [`vm`], [`accel`], [`rtl`]: QEMU guests, KVM/TCG choice, the RTL co-simulation.

pub mod accel;
pub mod bench;
pub mod cli;
pub mod report;
pub mod rig;
pub mod rtl;
pub mod scenarios;
pub mod serve;
pub mod up;
pub mod vm;
