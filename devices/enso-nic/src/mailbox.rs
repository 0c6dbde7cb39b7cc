//! Register mode mmio: trapped register accesses on their way to the device thread, in the
//! order they arrived. A write is posted (the vCPU goes on at once, as with a PCIe posted
//! write); a read waits until the device thread has applied every access before it and
//! answered, as a PCIe read does not pass the writes before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a read waits for the device thread before it gives up (the caller then reads
/// the register file as it stands).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// A 32-bit write of `value` at `offset` of BAR `bar`.
    Write { bar: u8, offset: u64, value: u32 },
    /// A 32-bit read at `offset` of BAR `bar`.
    Read { bar: u8, offset: u64 },
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<(u64, Access)>,
    /// Sequence number of the next access posted.
    next: u64,
    /// Every access numbered below this has been applied.
    done: u64,
    /// Answers to reads, by sequence number, until their reader takes them.
    answers: VecDeque<(u64, u32)>,
}

/// The mailbox between the trapped-register side and the device thread.
#[derive(Default)]
pub(crate) struct Mailbox {
    inner: Mutex<Inner>,
    answered: Condvar,
    /// `next` as last posted, so the device thread checks for work without the lock.
    posted: AtomicU64,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, a: Access) -> u64 {
        let mut i = self.lock();
        let seq = i.next;
        i.next += 1;
        i.pending.push_back((seq, a));
        self.posted.store(i.next, Ordering::Release);
        seq
    }

    /// Posts a write.
    pub(crate) fn post_write(&self, bar: u8, offset: u64, value: u32) {
        self.post(Access::Write { bar, offset, value });
    }

    /// Posts a read and waits for its answer; None when the device thread did not answer
    /// in time.
    pub(crate) fn read(&self, bar: u8, offset: u64) -> Option<u32> {
        let seq = self.post(Access::Read { bar, offset });
        let mut i = self.lock();
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(k) = i.answers.iter().position(|(s, _)| *s == seq) {
                return i.answers.remove(k).map(|(_, v)| v);
            }
            if i.done > seq {
                // Cleared by a reset before it was answered.
                return None;
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            i = self.answered.wait_timeout(i, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits until every access posted so far has been applied (bounded).
    pub(crate) fn drain(&self) {
        let mut i = self.lock();
        let want = i.next;
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        while i.done < want {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return };
            i = self.answered.wait_timeout(i, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Device thread: whether accesses wait (`applied` is how far it got).
    #[inline]
    pub(crate) fn has_work(&self, applied: u64) -> bool {
        self.posted.load(Ordering::Acquire) != applied
    }

    /// Device thread: takes every pending access, in order.
    pub(crate) fn take(&self, into: &mut VecDeque<(u64, Access)>) {
        let mut i = self.lock();
        into.append(&mut i.pending);
    }

    /// Device thread: accesses below `upto` are applied; `answers` are the reads' values.
    pub(crate) fn applied(&self, upto: u64, answers: &mut Vec<(u64, u32)>) {
        let mut i = self.lock();
        i.done = i.done.max(upto);
        i.answers.extend(answers.drain(..));
        drop(i);
        self.answered.notify_all();
    }

    /// Drops every pending access (device reset); waiting readers give up.
    pub(crate) fn clear(&self) {
        let mut i = self.lock();
        i.pending.clear();
        i.answers.clear();
        i.done = i.next;
        self.posted.store(i.next, Ordering::Release);
        drop(i);
        self.answered.notify_all();
    }

    /// How far the posted sequence has gone (the device thread starts from here).
    pub(crate) fn posted(&self) -> u64 {
        self.posted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reads_wait_for_the_writes_before_them() {
        let m = Arc::new(Mailbox::default());
        m.post_write(2, 0, 5);
        let m2 = m.clone();
        let reader = std::thread::spawn(move || m2.read(2, 4));
        // The "device thread": apply in order, answer the read.
        let mut q = VecDeque::new();
        while q.len() < 2 {
            m.take(&mut q);
            std::thread::yield_now();
        }
        assert_eq!(q[0].1, Access::Write { bar: 2, offset: 0, value: 5 });
        assert_eq!(q[1].1, Access::Read { bar: 2, offset: 4 });
        let mut answers = vec![(q[1].0, 42)];
        m.applied(q[1].0 + 1, &mut answers);
        assert_eq!(reader.join().unwrap(), Some(42));
        assert!(!m.has_work(2));
        m.post_write(2, 8, 1);
        assert!(m.has_work(2));
        m.clear();
        assert_eq!(m.posted(), 3);
        assert!(!m.has_work(3), "a reset drops what was pending");
    }
}
