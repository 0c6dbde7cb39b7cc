//! MSI-X delivery through the eventfds a client hands over with SET_IRQS.

use pcie_model::IrqSink;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::RwLock;

/// One eventfd slot per MSI-X vector.
#[derive(Debug)]
pub struct EventFdIrqs {
    fds: RwLock<Vec<Option<std::fs::File>>>,
}

impl EventFdIrqs {
    /// `vectors` empty slots.
    pub fn new(vectors: usize) -> Self {
        EventFdIrqs { fds: RwLock::new((0..vectors).map(|_| None).collect()) }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> usize {
        self.fds.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Installs (Some) or removes (None) the eventfds of vectors `start..start + n`.
    /// Returns false when the range is outside the table.
    pub fn set(&self, start: usize, fds: Vec<Option<OwnedFd>>) -> bool {
        let mut t = self.fds.write().unwrap_or_else(|e| e.into_inner());
        if start.checked_add(fds.len()).is_none_or(|end| end > t.len()) {
            return false;
        }
        for (i, fd) in fds.into_iter().enumerate() {
            t[start + i] = fd.map(std::fs::File::from);
        }
        true
    }

    /// Removes every eventfd (disconnect, reset, disable).
    pub fn clear(&self) {
        let mut t = self.fds.write().unwrap_or_else(|e| e.into_inner());
        t.iter_mut().for_each(|s| *s = None);
    }

    /// How many vectors have an eventfd.
    pub fn connected(&self) -> usize {
        self.fds.read().unwrap_or_else(|e| e.into_inner()).iter().flatten().count()
    }
}

impl IrqSink for EventFdIrqs {
    fn raise(&self, vector: u16) -> bool {
        let t = self.fds.read().unwrap_or_else(|e| e.into_inner());
        match t.get(vector as usize) {
            Some(Some(f)) => (&*f).write_all(&1u64.to_le_bytes()).is_ok(),
            _ => false,
        }
    }
}
