//! A device model's polling thread. The thread owns the model's datapath state while it
//! runs and hands it back when stopped, so a model can detach, swap its wire backend or
//! reset without losing (or, on reset, deliberately rebuilding) that state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::device::DeviceContext;

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

/// What attaching and detaching a driver does to a model's device thread (see
/// [`crate::PciDevice::lifecycle`]).
pub trait Lifecycle {
    /// A driver connected: (re)start the thread with its context.
    fn attach(&mut self, ctx: DeviceContext);
    /// The driver left: stop the thread before returning.
    fn detach(&mut self);
}

impl<S: Send + 'static> Lifecycle for DeviceLoop<S> {
    fn attach(&mut self, ctx: DeviceContext) {
        DeviceLoop::attach(self, ctx);
    }

    fn detach(&mut self) {
        DeviceLoop::detach(self);
    }
}

/// The body of a device thread: runs over the state until `stop` is raised, then returns it.
type Body<S> = Arc<dyn Fn(S, DeviceContext, Arc<AtomicBool>) -> S + Send + Sync>;

/// The attach/detach/reset lifecycle every threaded model shares: a [`Worker`] that runs
/// while a driver is attached. The model supplies its thread's body and how to make a
/// fresh state (after a panic, or for a reset); its `PciDevice` methods delegate here.
pub struct DeviceLoop<S: Send + 'static> {
    name: String,
    worker: Worker<S>,
    ctx: Option<DeviceContext>,
    fresh: Box<dyn Fn() -> S + Send>,
    body: Body<S>,
}

impl<S: Send + 'static> DeviceLoop<S> {
    /// A detached loop over `state`, whose thread (named `name`) runs `body`.
    pub fn new(
        name: &str,
        state: S,
        fresh: impl Fn() -> S + Send + 'static,
        body: impl Fn(S, DeviceContext, Arc<AtomicBool>) -> S + Send + Sync + 'static,
    ) -> Self {
        DeviceLoop {
            name: name.into(),
            worker: Worker::new(state),
            ctx: None,
            fresh: Box::new(fresh),
            body: Arc::new(body),
        }
    }

    /// A driver connected: (re)starts the thread with its context.
    pub fn attach(&mut self, ctx: DeviceContext) {
        self.stop();
        self.ctx = Some(ctx);
        self.start();
    }

    /// The driver left: stops the thread, keeping its state parked.
    pub fn detach(&mut self) {
        self.stop();
        self.ctx = None;
    }

    /// Stops the thread; true when it was running. A thread that panicked comes back with
    /// a fresh state rather than taking the process down.
    pub fn stop(&mut self) -> bool {
        self.worker.stop(&self.fresh)
    }

    /// Starts the thread when a driver is attached and none runs.
    pub fn start(&mut self) {
        let Some(ctx) = self.ctx.clone() else { return };
        let body = self.body.clone();
        self.worker.start(&self.name, move |st, stop| body(st, ctx, stop));
    }

    /// Whether the thread runs.
    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }

    /// Runs `f` on the state with the thread stopped, then restarts it if it ran.
    pub fn with_state<T>(&mut self, f: impl FnOnce(&mut S) -> T) -> T {
        let running = self.stop();
        let out = f(self.worker.parked_or(&self.fresh));
        if running {
            self.start();
        }
        out
    }

    /// Replaces the state by `f(old)` with the thread stopped (a reset), then restarts it
    /// if it ran.
    pub fn replace(&mut self, f: impl FnOnce(Option<S>) -> S) {
        let running = self.stop();
        let old = self.worker.take_parked();
        self.worker.park(f(old));
        if running {
            self.start();
        }
    }
}

impl<S: Send + 'static> Drop for DeviceLoop<S> {
    fn drop(&mut self) {
        self.stop();
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

    #[test]
    fn the_loop_runs_only_while_attached_and_keeps_its_state() {
        use crate::dma::{Dma, GuestMemory};
        use crate::irq::NoIrqs;
        use crate::Counters;
        let ctx = || DeviceContext {
            dma: Dma::new(
                Arc::new(GuestMemory::new()),
                Arc::new(Counters::default()),
                Arc::new(AtomicBool::new(true)),
            ),
            irq: Arc::new(NoIrqs),
        };
        let mut l = DeviceLoop::new(
            "l",
            0u32,
            || 100,
            |n, _ctx, stop| {
                while !stop.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                n + 1
            },
        );
        l.start();
        assert!(!l.is_running(), "no thread before a driver attaches");
        l.attach(ctx());
        assert!(l.is_running());
        assert_eq!(l.with_state(|n| *n), 1, "stopped around the call, state handed back");
        assert!(l.is_running(), "restarted after it");
        l.replace(|old| old.unwrap() + 10);
        l.detach();
        assert!(!l.is_running());
        assert_eq!(l.with_state(|n| *n), 13, "replace, then the thread's +1 on each stop");
        assert!(!l.is_running(), "not restarted while detached");
    }
}
