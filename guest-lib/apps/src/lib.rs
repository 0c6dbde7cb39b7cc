//! Applications that run on our drivers, in a guest (VFIO) or natively (vfio-user client).
//!
//! Each application reports its outcome as a [`Report`]: the JSON object the guest writes
//! to its result channel and the host parses.

pub mod agent;
pub mod capture;
pub mod cardecho;
pub mod chain;
pub mod echo;
pub mod ensogen;
pub mod garbage;
pub mod netapp;
pub mod report;
pub mod responder;
pub mod smoke;

pub use report::{Check, Report};
