//! Interrupts as eventfds: how both VFIO and vfio-user deliver MSI-X vectors.

use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// One interrupt vector, signalled through an eventfd.
pub struct Interrupt {
    fd: OwnedFd,
}

impl Interrupt {
    /// A new non-blocking eventfd.
    pub fn new() -> Result<Self> {
        // SAFETY: eventfd returns a new fd or -1; checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: `fd` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Interrupt { fd })
    }

    /// The eventfd, to hand to the transport.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Returns how many times the vector fired since the last call (0 if none), without
    /// blocking.
    pub fn take(&self) -> u64 {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v` from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    /// Waits up to `timeout` for the vector to fire; returns the count (0 on timeout).
    pub fn wait(&self, timeout: Duration) -> Result<u64> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: polls one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            return Err(Error::last_os("poll eventfd"));
        }
        Ok(self.take())
    }
}
