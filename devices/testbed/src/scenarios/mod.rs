//! The scenarios: each boots guests (or drives the devices natively), checks what both
//! sides saw, and returns a [`run::RunReport`]. [`run`] holds what they share (the
//! provisioned environment, the report, the Ensō setup) and the echo and smoke
//! scenarios; a new scenario is a module here plus its arm in `cli::scenario`.

pub mod apps;
pub mod cardecho;
pub mod chain;
pub mod demo;
pub mod hostile;
pub mod peer;
pub mod run;
pub mod soak;
