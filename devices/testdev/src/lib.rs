//! smoke device.
