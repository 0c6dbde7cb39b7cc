//! The Ensō driver (being written).
