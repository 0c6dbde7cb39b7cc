//! A cable: two connected ports. Each end sends batches into a bounded channel the other
//! end reads.

use crate::{EthPort, Frame};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// Frames per batch before an automatic flush.
const BATCH: usize = 64;

/// One end of a cable.
pub struct CableEnd {
    tx: Sender<Vec<Frame>>,
    rx: Receiver<Vec<Frame>>,
    pending_out: Vec<Frame>,
    pending_in: std::collections::VecDeque<Frame>,
    dropped: u64,
}

/// A cable holding up to `batches` in-flight batches per direction.
pub fn cable(batches: usize) -> (CableEnd, CableEnd) {
    let (atx, brx) = bounded(batches);
    let (btx, arx) = bounded(batches);
    let end = |tx, rx| CableEnd {
        tx,
        rx,
        pending_out: Vec::with_capacity(BATCH),
        pending_in: Default::default(),
        dropped: 0,
    };
    (end(atx, arx), end(btx, brx))
}

impl CableEnd {
    /// Frames this end could not hand to the other (channel full or disconnected).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Blocks up to `timeout` for at least one frame; returns how many were moved to `out`.
    pub fn recv_timeout(&mut self, out: &mut Vec<Frame>, max: usize, timeout: std::time::Duration) -> usize {
        if self.pending_in.is_empty() {
            if let Ok(b) = self.rx.recv_timeout(timeout) {
                self.pending_in.extend(b);
            }
        }
        self.recv(out, max)
    }
}

impl EthPort for CableEnd {
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        while self.pending_in.len() < max {
            match self.rx.try_recv() {
                Ok(b) => self.pending_in.extend(b),
                Err(_) => break,
            }
        }
        let n = max.min(self.pending_in.len());
        out.extend(self.pending_in.drain(..n));
        n
    }

    fn send(&mut self, frame: Frame) -> bool {
        self.pending_out.push(frame);
        if self.pending_out.len() >= BATCH {
            self.flush();
        }
        true
    }

    fn flush(&mut self) {
        if self.pending_out.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending_out, Vec::with_capacity(BATCH));
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => self.dropped += b.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_overflow_is_counted() {
        let (mut a, mut b) = cable(2);
        for i in 0..10u8 {
            a.send(vec![i; 60]);
        }
        a.flush();
        let mut got = vec![];
        assert_eq!(b.recv(&mut got, 100), 10);
        assert!(got.iter().enumerate().all(|(i, f)| f[0] == i as u8));
        for _ in 0..3 {
            a.send(vec![0; 60]);
            a.flush();
        }
        assert_eq!(a.dropped(), 1, "third batch did not fit a 2-batch cable");
    }
}
