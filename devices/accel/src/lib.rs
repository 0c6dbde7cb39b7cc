//! Accelerator device models: a crypto accelerator (AES-256-GCM, QAT-like) and an ML
//! inference accelerator (an int8 MLP shipped in `models/`), each with the legacy
//! command-ring interface and the streaming interface of `testbed_regs::accel`.
//!
//! - [`crypto`], [`ml`]: the computations, usable on their own (the scenario's generator
//!   seals images and checks results with them);
//! - [`function`]: the [`function::Function`] seam between a computation and the device;
//! - [`device`]: the PCI function ([`Accelerator`]), free of any transport type.
//!
//! The record format every item uses is `testbed_regs::record`; docs/accelerators.md has
//! the whole contract.

pub mod crypto;
pub mod device;
pub mod function;
pub mod ml;

#[cfg(test)]
mod tests;

pub use device::{Accelerator, DoorbellPort, StreamPort};
