//! Provisioning: what the testbed builds or downloads before it can boot a guest. The cache
//! (`cache`), long steps with progress (`steps`) and QEMU (`qemu`); the guest image is built
//! by the `guest-image` crate (images/builder) on top of these.

pub mod cache;
pub mod qemu;
pub mod steps;
