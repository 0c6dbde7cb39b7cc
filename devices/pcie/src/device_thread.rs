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

/// A model's device thread and the state it runs on: parked while no thread runs, handed
/// to the thread on start and parked again on stop. One lifecycle for every model (attach,
/// detach, reset, swapping a backend), including what happens when a thread panicked:
/// the model comes back with the fresh state its caller supplies instead of dying.
pub struct Worker<S: Send + 'static> {
    parked: Option<S>,
    running: Option<DeviceThread<S>>,
}

impl<S: Send + 'static> Worker<S> {
    /// A stopped worker holding `state`.
    pub fn new(state: S) -> Self {
        Worker { parked: Some(state), running: None }
    }

    /// Whether a thread runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the thread (if any) and parks its state; a thread that panicked parks
    /// `fresh()` instead. True when a thread was running.
    pub fn stop(&mut self, fresh: impl FnOnce() -> S) -> bool {
        let Some(t) = self.running.take() else {
            return false;
        };
        self.parked = Some(t.stop().unwrap_or_else(fresh));
        true
    }

    /// The parked state, or `fresh()` parked when there is none (call with the thread
    /// stopped).
    pub fn parked_or(&mut self, fresh: impl FnOnce() -> S) -> &mut S {
        self.parked.get_or_insert_with(fresh)
    }

    /// The parked state, if any.
    pub fn parked_mut(&mut self) -> Option<&mut S> {
        self.parked.as_mut()
    }

    /// Takes the parked state out.
    pub fn take_parked(&mut self) -> Option<S> {
        self.parked.take()
    }

    /// Parks `state` (replacing any parked one).
    pub fn park(&mut self, state: S) {
        self.parked = Some(state);
    }

    /// Runs `body` on a thread named `name` over the parked state; nothing happens when
    /// a thread already runs or no state is parked.
    pub fn start(&mut self, name: &str, body: impl FnOnce(S, Arc<AtomicBool>) -> S + Send + 'static) {
        if self.running.is_some() {
            return;
        }
        let Some(state) = self.parked.take() else { return };
        let t = DeviceThread::spawn(name, state, body);
        self.running = Some(t.unwrap_or_else(|e| panic!("spawn the {name} device thread: {e}")));
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

    #[test]
    fn worker_parks_runs_and_recovers_from_a_panic() {
        let mut w = Worker::new(1u32);
        assert!(!w.stop(|| 0), "nothing ran");
        w.start("w", |n, stop| {
            while !stop.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            n + 1
        });
        assert!(w.is_running() && w.parked_mut().is_none());
        assert!(w.stop(|| 0));
        assert_eq!(w.take_parked(), Some(2));
        w.start("none parked", |n, _| n);
        assert!(!w.is_running());
        w.park(5);
        w.start("p", |_, _| panic!("model bug"));
        assert!(w.stop(|| 9));
        assert_eq!(*w.parked_or(|| 0), 9, "a panicked thread comes back with the fresh state");
    }
}
