//! A traffic source as a NIC's own Ethernet port ("source on the device side"): the NIC's
//! polling thread drives it, so a scenario needs no thread to feed the wire. Its `recv`
//! lets the source queue what its window allows; its `send` hands what the NIC transmitted
//! to the source's checker. Traffic starts when the handle's [`SourceHandle::start`] is
//! called (the driver must have its queues up first).

use crate::{EthPort, Frame};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a scenario's source does.
pub trait Source: Send {
    /// Queues the frames to send now (the window's worth).
    fn step(&mut self, to_nic: &mut VecDeque<Frame>);
    /// Checks a frame the NIC transmitted.
    fn check(&mut self, frame: &[u8]);
}

/// The port a NIC is built with.
pub struct SourcePort<S: Source> {
    src: Arc<Mutex<S>>,
    go: Arc<AtomicBool>,
    to_nic: VecDeque<Frame>,
}

/// The scenario's handle on the source inside the NIC.
pub struct SourceHandle<S: Source> {
    src: Arc<Mutex<S>>,
    go: Arc<AtomicBool>,
}

impl<S: Source> Clone for SourceHandle<S> {
    fn clone(&self) -> Self {
        SourceHandle { src: self.src.clone(), go: self.go.clone() }
    }
}

/// A port around `source`, silent until started, and the handle to start and read it.
pub fn source_port<S: Source>(source: S) -> (SourcePort<S>, SourceHandle<S>) {
    let src = Arc::new(Mutex::new(source));
    let go = Arc::new(AtomicBool::new(false));
    (SourcePort { src: src.clone(), go: go.clone(), to_nic: VecDeque::new() }, SourceHandle { src, go })
}

impl<S: Source> SourceHandle<S> {
    /// Starts the traffic.
    pub fn start(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// The source, to read its state.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.src.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: Source> EthPort for SourcePort<S> {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        if !self.go.load(Ordering::Acquire) {
            return 0;
        }
        self.src.lock().unwrap_or_else(|e| e.into_inner()).step(&mut self.to_nic);
        let n = max.min(self.to_nic.len());
        out.extend(self.to_nic.drain(..n));
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.src.lock().unwrap_or_else(|e| e.into_inner()).check(&frame);
        true
    }

    fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count {
        sent: u32,
        seen: Vec<usize>,
    }

    impl Source for Count {
        fn step(&mut self, to_nic: &mut VecDeque<Frame>) {
            if self.sent < 3 {
                to_nic.push_back(vec![0; 60 + self.sent as usize]);
                self.sent += 1;
            }
        }
        fn check(&mut self, frame: &[u8]) {
            self.seen.push(frame.len());
        }
    }

    #[test]
    fn silent_until_started_then_steps_and_checks() {
        let (mut port, h) = source_port(Count { sent: 0, seen: vec![] });
        let mut out = vec![];
        assert_eq!(port.recv(&mut out, 8), 0);
        h.start();
        assert_eq!(port.recv(&mut out, 8), 1);
        assert!(port.send(vec![1; 70]));
        assert_eq!(h.lock().seen, vec![70]);
        assert_eq!(h.lock().sent, 1);
    }
}
