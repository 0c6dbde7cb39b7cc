//! Register maps and wire formats shared by device models, guest drivers and RTL test
//! benches.
//!
//! One module per device. Offsets are byte offsets inside the named BAR. Models and
//! drivers import these constants; nobody retypes them.

pub mod accel;
pub mod enso;
pub mod inet;
pub mod nagare;
pub mod packetized;
pub mod record;
pub mod smoke;
