//! A device model's polling thread. The thread owns the model's datapath state while it
//! runs and hands it back when stopped, so a model can detach, swap its wire backend or
//! reset without losing (or, on reset, deliberately rebuilding) that state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running device thread holding state `S`.
pub struct DeviceThread<S: Send + 'static> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<S>,
}

impl<S: Send + 'static> DeviceThread<S> {
    /// Runs `body(state, stop)` on a thread named `name`; `body` must return its state
    /// once `stop` is raised.
    pub fn spawn(
        name: &str,
        state: S,
        body: impl FnOnce(S, Arc<AtomicBool>) -> S + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || body(state, s2))?;
        Ok(DeviceThread { stop, thread })
    }

    /// Stops the thread and returns its state; `None` if the thread panicked (models do
    /// not panic on driver input, but a caller should come back in a safe state anyway).
    pub fn stop(self) -> Option<S> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_goes_in_and_comes_back() {
        let t = DeviceThread::spawn("t", 5u32, |mut n, stop| {
            while !stop.load(Ordering::Acquire) {
                n = n.saturating_add(1);
                std::thread::yield_now();
            }
            n
        })
        .unwrap();
        assert!(t.stop().is_some_and(|n| n >= 5));
        let p = DeviceThread::spawn("p", (), |_, _| panic!("model bug")).unwrap();
        assert!(p.stop().is_none(), "a panicked thread gives no state back");
    }
}
