//! A cable: two connected ports. Each end sends batches into a bounded channel the other
//! end reads.

use crate::{EthPort, Frame};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

/// Frames per batch before an automatic flush.
pub const BATCH: usize = 64;

/// One end of a cable.
pub struct CableEnd {
    tx: Sender<Vec<Frame>>,
    rx: Receiver<Vec<Frame>>,
    pending_out: Vec<Frame>,
    pending_in: std::collections::VecDeque<Frame>,
    dropped: u64,
    peer_gone: bool,
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
        peer_gone: false,
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
            match self.rx.recv_timeout(timeout) {
                Ok(b) => self.pending_in.extend(b),
                Err(RecvTimeoutError::Disconnected) => self.peer_gone = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        self.recv(out, max)
    }

    /// Sends copies of `frames` and flushes them to the other end.
    pub fn send_all(&mut self, frames: &[Frame]) {
        for f in frames {
            self.send(f.clone());
        }
        self.flush();
    }

    /// Receives until `n` frames have come or `timeout` has passed; returns what came.
    pub fn recv_n(&mut self, n: usize, timeout: std::time::Duration) -> Vec<Frame> {
        let mut out = vec![];
        let t = std::time::Instant::now();
        while out.len() < n && t.elapsed() < timeout {
            let want = n - out.len();
            self.recv_timeout(&mut out, want, std::time::Duration::from_millis(10));
        }
        out
    }

    /// True once a send (its frames then count as dropped) or a blocking receive found the
    /// other end dropped.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// Frames queued by `send` and not yet handed to the channel.
    pub fn pending_out(&self) -> usize {
        self.pending_out.len()
    }

    fn channel_has_room(&self) -> bool {
        self.tx.capacity().is_none_or(|c| self.tx.len() < c)
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
            Err(TrySendError::Full(b)) => self.dropped += b.len() as u64,
            Err(TrySendError::Disconnected(b)) => {
                self.peer_gone = true;
                self.dropped += b.len() as u64
            }
        }
    }

    fn send_room(&self) -> usize {
        // Only this end fills its channel, so a free slot seen now stays free until used:
        // with one, a full batch can go; without, `send` may fill the batch but not flush it.
        let batch = if self.channel_has_room() { BATCH } else { BATCH - 1 };
        batch.saturating_sub(self.pending_out.len())
    }

    fn try_flush(&mut self) -> bool {
        if self.pending_out.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.pending_out, Vec::with_capacity(BATCH));
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b)) => {
                self.pending_out = b;
                false
            }
            Err(TrySendError::Disconnected(b)) => {
                self.peer_gone = true;
                self.dropped += b.len() as u64;
                true
            }
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

    #[test]
    fn try_flush_keeps_frames_when_full_and_send_room_tracks_it() {
        let (mut a, mut b) = cable(1);
        assert_eq!(a.send_room(), BATCH);
        a.send(vec![1; 60]);
        assert!(a.try_flush());
        assert_eq!(a.send_room(), BATCH - 1, "channel full: a full batch would be dropped");
        for _ in 0..BATCH - 1 {
            a.send(vec![2; 60]);
        }
        assert_eq!(a.send_room(), 0);
        assert!(!a.try_flush(), "full: frames stay queued");
        assert_eq!(a.pending_out(), BATCH - 1);
        assert_eq!(a.dropped(), 0);
        let mut got = vec![];
        assert_eq!(b.recv(&mut got, 100), 1);
        assert!(a.try_flush());
        assert_eq!(b.recv(&mut got, 100), BATCH - 1);
        drop(b);
        a.send(vec![3; 60]);
        assert!(a.try_flush());
        assert!(a.peer_gone());
        assert_eq!(a.dropped(), 1);
    }
}
