//! The `VhostUserBackend`: two queues (0 = RX, 1 = TX) driven from the guest's kicks and
//! from frames arriving on a [`wire`] port.
//!
//! A pump thread ([`spawn_rx_pump`]) moves frames from the port into a bounded backlog and
//! wakes the vring worker through an eventfd registered as an extra listener; the worker
//! writes the backlog into the RX queue. TX kicks gather frames and send them to the port.
//! Guest faults (malformed chains, bad addresses) are counted, never returned as errors:
//! an error from `handle_event` would end the worker thread.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wire::{CableEnd, EthPort, Frame};

use crate::frames::{process_tx, write_rx_frame, NetStats, RxOutcome};

/// Queue indices.
pub const RX_QUEUE: u16 = 0;
/// TX queue index.
pub const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Listener id of the "frames arrived" eventfd (ids up to `NUM_QUEUES` are reserved).
const RX_PORT_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Frames held for the guest while it has no RX buffers; past that the pump stops pulling
/// and the cable's far end counts the overflow.
pub const RX_BACKLOG: usize = 1024;

/// A port the pump can wait on.
pub trait NetPort: EthPort {
    /// Like [`EthPort::recv`], but blocks up to `timeout` for the first frame.
    fn recv_wait(&mut self, out: &mut Vec<Frame>, max: usize, timeout: Duration) -> usize;
    /// True once the other end is gone (reported as link down).
    fn is_peer_gone(&self) -> bool {
        false
    }
}

impl NetPort for CableEnd {
    fn recv_wait(&mut self, out: &mut Vec<Frame>, max: usize, timeout: Duration) -> usize {
        self.recv_timeout(out, max, timeout)
    }
    fn is_peer_gone(&self) -> bool {
        self.peer_gone()
    }
}

/// Device configuration.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// MAC address reported in the config space (VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// Largest queue size offered.
    pub queue_size: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], queue_size: 256 }
    }
}

#[derive(Default)]
struct State {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    acked: u64,
    stats: NetStats,
    rx_backlog: VecDeque<Frame>,
}

/// The vhost-user-net backend over a port `P`.
pub struct VhostNetBackend<P: NetPort> {
    cfg: NetConfig,
    port: Mutex<P>,
    state: Mutex<State>,
    rx_event: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: NetPort> VhostNetBackend<P> {
    /// A backend whose Ethernet side is `port`.
    pub fn new(cfg: NetConfig, port: P) -> io::Result<Self> {
        Ok(VhostNetBackend {
            cfg,
            port: Mutex::new(port),
            state: Mutex::new(State::default()),
            rx_event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        lock(&self.state).stats
    }

    /// Link status as reported in the config space.
    pub fn link_up(&self) -> bool {
        !lock(&self.port).is_peer_gone()
    }

    /// The virtio-net config space: mac, status, max_virtqueue_pairs.
    fn config_space(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.cfg.mac);
        let status = if self.link_up() { VIRTIO_NET_S_LINK_UP as u16 } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Forgets the guest (its memory, features and the undelivered backlog): called on
    /// reset and when the front end disconnects.
    pub fn forget_guest(&self) {
        let mut st = lock(&self.state);
        st.mem = None;
        st.acked = 0;
        st.rx_backlog.clear();
    }

    /// Pulls frames from the port into the backlog, waiting up to `timeout` for the first;
    /// true when any arrived (the pump then signals the worker).
    fn pump_once(&self, timeout: Duration) -> bool {
        let room = RX_BACKLOG.saturating_sub(lock(&self.state).rx_backlog.len());
        if room == 0 {
            std::thread::sleep(timeout);
            return false;
        }
        let mut got = Vec::new();
        lock(&self.port).recv_wait(&mut got, room.min(wire::cable::BATCH), timeout);
        if got.is_empty() {
            return false;
        }
        lock(&self.state).rx_backlog.extend(got);
        true
    }

    fn process_rx(&self, vring: &VringRwLock) {
        let mut st = lock(&self.state);
        let Some(mem) = st.mem.as_ref().map(|m| m.memory()) else { return };
        let mergeable = st.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut vs = vring.get_mut();
        if !vs.is_enabled() || !vs.get_queue().ready() {
            return;
        }
        let mut delivered = false;
        let st = &mut *st;
        while let Some(frame) = st.rx_backlog.front() {
            match write_rx_frame(&*mem, vs.get_queue_mut(), frame, mergeable, &mut st.stats) {
                Ok(RxOutcome::NoBuffers) => break,
                Ok(RxOutcome::Delivered { .. }) => delivered = true,
                Ok(RxOutcome::DroppedMalformed) => delivered = true,
                Ok(RxOutcome::DroppedNoRoom) => {}
                Err(e) => {
                    tracing::warn!("vhost-net: RX queue error: {e}");
                    st.stats.rx_malformed += 1;
                    st.rx_backlog.pop_front();
                    break;
                }
            }
            st.rx_backlog.pop_front();
        }
        if delivered {
            Self::signal(&mut vs);
        }
    }

    fn process_tx(&self, vring: &VringRwLock) {
        let mut st = lock(&self.state);
        let Some(mem) = st.mem.as_ref().map(|m| m.memory()) else { return };
        let mut vs = vring.get_mut();
        let mut port = lock(&self.port);
        let res = process_tx(&*mem, vs.get_queue_mut(), &mut st.stats, |f| port.send(f));
        port.flush();
        drop(port);
        match res {
            Ok(out) if out.chains > 0 => Self::signal(&mut vs),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("vhost-net: TX queue error: {e}");
                st.stats.tx_malformed += 1;
            }
        }
    }

    fn signal(vs: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>) {
        if vs.needs_notification().unwrap_or(true) {
            if let Err(e) = vs.signal_used_queue() {
                tracing::warn!("vhost-net: cannot signal the guest: {e}");
            }
        }
    }
}

impl<P: NetPort> VhostUserBackend for VhostNetBackend<P> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        self.cfg.queue_size as usize
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            // QEMU's vhost-user-net needs SET_VRING_ENABLE, hence protocol features (see
            // crate::shim for the ordering the shim smooths over).
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        lock(&self.state).acked = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Not CONFIG: QEMU's virtio-net keeps the config space itself (MAC from -device,
        // link status from the vhost-user connection) and warns when a backend offers it.
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.forget_guest();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered, so this is never enabled.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let (o, s) = (offset as usize, size as usize);
        match o.checked_add(s) {
            Some(end) if end <= c.len() => c[o..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per daemon: without one the vring worker can never be told to exit,
        // and dropping the daemon after a disconnect would wait for it forever.
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!("vhost-net: no exit event: {e}");
                None
            }
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        lock(&self.state).mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!("vhost-net: event {device_event} {evset:?}");
        if evset != EventSet::IN {
            return Ok(());
        }
        match device_event {
            RX_QUEUE => self.process_rx(&vrings[RX_QUEUE as usize]),
            TX_QUEUE => {
                self.process_tx(&vrings[TX_QUEUE as usize]);
                // TX may have freed the port; frames may be waiting too.
                self.process_rx(&vrings[RX_QUEUE as usize]);
            }
            RX_PORT_EVENT => {
                let _ = self.rx_event.read();
                self.process_rx(&vrings[RX_QUEUE as usize]);
            }
            other => tracing::warn!("vhost-net: unknown event {other}"),
        }
        Ok(())
    }
}

/// Starts the thread moving frames from the port into the backlog until `stop` is set.
pub fn spawn_rx_pump<P: NetPort + 'static>(
    backend: Arc<VhostNetBackend<P>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if backend.pump_once(Duration::from_micros(200)) {
                let _ = backend.rx_event.write(1);
            }
        }
    })
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The vhost-user daemon failed (not a front-end disconnect, which is survived).
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

/// Serves front ends on `socket`, one after the other, until `stop` is set (checked
/// between connections). A front end that disconnects, cleanly or not, only ends its own
/// connection: the backend forgets it and listens again.
pub fn serve<P: NetPort + 'static>(
    backend: Arc<VhostNetBackend<P>>,
    socket: &Path,
    stop: Arc<AtomicBool>,
) -> Result<(), ServeError> {
    let pump = spawn_rx_pump(backend.clone(), stop.clone());
    let result = (|| {
        // The vhost crate's handler listens on a private socket; the public one is ours,
        // and each front end is relayed through the shim (see [`crate::shim`]).
        let internal = socket.with_extension("backend.sock");
        let mut listener = Listener::new(&internal, true).map_err(|e| ServeError::Daemon(e.to_string()))?;
        let _ = std::fs::remove_file(socket);
        let public = std::os::unix::net::UnixListener::bind(socket)
            .map_err(|e| ServeError::Daemon(format!("bind {}: {e}", socket.display())))?;
        while !stop.load(Ordering::Relaxed) {
            let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
            let mut daemon = VhostUserDaemon::new("vhost-net".into(), backend.clone(), mem)
                .map_err(|e| ServeError::Daemon(e.to_string()))?;
            for h in daemon.get_epoll_handlers() {
                h.register_listener(
                    std::os::fd::AsRawFd::as_raw_fd(&backend.rx_event),
                    EventSet::IN,
                    u64::from(RX_PORT_EVENT),
                )
                .map_err(|e| ServeError::Daemon(e.to_string()))?;
            }
            // A front end connecting while the previous one is torn down waits in the
            // public socket's backlog.
            let (front, _) = public.accept().map_err(|e| ServeError::Daemon(format!("accept: {e}")))?;
            let back = std::os::unix::net::UnixStream::connect(&internal)
                .map_err(|e| ServeError::Daemon(format!("connect {}: {e}", internal.display())))?;
            let relay = std::thread::spawn(move || crate::shim::relay(front, back));
            daemon.start(&mut listener).map_err(|e| ServeError::Daemon(e.to_string()))?;
            let r = daemon.wait();
            // Dropping the daemon ends its vring worker threads (and closes its end of
            // the relay).
            drop(daemon);
            backend.forget_guest();
            match relay.join() {
                Ok(Ok(early)) => {
                    tracing::debug!("vhost-net: front end done ({early} early ring enables answered)")
                }
                Ok(Err(e)) => tracing::debug!("vhost-net: relay ended with: {e}"),
                Err(_) => tracing::warn!("vhost-net: relay thread panicked"),
            }
            if let Err(e) = r {
                tracing::debug!("vhost-net: front end ended with: {e}");
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = pump.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_config_and_link_status() {
        let (a, b) = wire::cable(4);
        let be = VhostNetBackend::new(NetConfig::default(), a).unwrap();
        let f = be.features();
        for bit in [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
        }
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert!(be.protocol_features().contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
        assert_eq!(be.get_config(0, 6), NetConfig::default().mac.to_vec());
        assert_eq!(be.get_config(6, 2), vec![1, 0], "link up");
        assert!(be.get_config(8, 8).is_empty(), "out of range");
        drop(b);
        // The port learns the far end left on its next blocking receive.
        let mut out = vec![];
        lock(&be.port).recv_wait(&mut out, 1, Duration::from_millis(1));
        assert_eq!(be.get_config(6, 2), vec![0, 0], "link down once the peer is gone");
    }

    #[test]
    fn pump_fills_the_backlog_from_the_cable() {
        let (a, mut b) = wire::cable(4);
        let be = Arc::new(VhostNetBackend::new(NetConfig::default(), a).unwrap());
        b.send(vec![1; 60]);
        b.send(vec![2; 60]);
        b.flush();
        assert!(be.pump_once(Duration::from_millis(100)));
        assert_eq!(lock(&be.state).rx_backlog.len(), 2);
    }

    #[test]
    fn serve_survives_front_ends_that_disconnect() {
        let dir = std::env::temp_dir().join(format!("vhost-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("net.sock");
        let (a, _b) = wire::cable(4);
        let be = Arc::new(VhostNetBackend::new(NetConfig::default(), a).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (be, sock, stop) = (be.clone(), sock.clone(), stop.clone());
            std::thread::spawn(move || serve(be, &sock, stop))
        };
        let connect = || {
            for _ in 0..500 {
                if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("backend never listened");
        };
        for _ in 0..3 {
            drop(connect());
        }
        stop.store(true, Ordering::Relaxed);
        // The stop flag is read between connections: one more ends the loop.
        drop(connect());
        server.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
