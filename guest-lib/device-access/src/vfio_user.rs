//! vfio-user client transport (being written).
