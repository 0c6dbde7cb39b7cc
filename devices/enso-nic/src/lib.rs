//! The Ensō NIC model (being written).
