//! The protocol loop: one client at a time, reconnects welcome.

use crate::irqs::EventFdIrqs;
use crate::wire::{self, Body, Command, Message, Out, ProtocolError, Short, FLAG_NO_REPLY};
use pcie_model::config::CONFIG_SIZE;
use pcie_model::{BarBacking, DeviceContext, Dma, DmaSpace, GuestMemory, PciDevice};
use serde::Serialize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use vfio_bindings::bindings::vfio::*;

const EINVAL: u32 = libc::EINVAL as u32;
const ENOTSUP: u32 = libc::ENOTSUP as u32;
const EEXIST: u32 = libc::EEXIST as u32;
const E2BIG: u32 = libc::E2BIG as u32;
const ENOSPC: u32 = libc::ENOSPC as u32;

/// How long one message may take to arrive whole, and a reply to be taken by the client,
/// before the client is disconnected: a stalled client must not hold the server.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// vfio-user region indices (VFIO PCI layout).
const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
const NUM_REGIONS: u32 = VFIO_PCI_NUM_REGIONS;
const NUM_IRQS: u32 = VFIO_PCI_NUM_IRQS;
const SIZEOF_REGION_INFO: usize = 32;

/// Connection-level counters of one server.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicU64,
    messages: AtomicU64,
    error_replies: AtomicU64,
    dropped_connections: AtomicU64,
    dma_maps: AtomicU64,
    dma_unmaps: AtomicU64,
    before_version: AtomicU64,
    stalled: AtomicU64,
}

/// A copy of [`ServerStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerStatsSnapshot {
    /// Clients that connected.
    pub connections: u64,
    /// Messages handled.
    pub messages: u64,
    /// Requests answered with an errno (malformed or unsupported).
    pub error_replies: u64,
    /// Connections closed because the stream could not be resynchronised.
    pub dropped_connections: u64,
    /// DMA_MAP requests.
    pub dma_maps: u64,
    /// DMA_UNMAP requests.
    pub dma_unmaps: u64,
    /// Requests refused because VERSION had not been negotiated first (or came twice).
    pub before_version: u64,
    /// Clients disconnected because a message stayed incomplete, or a reply untaken, for
    /// [`MESSAGE_TIMEOUT`] (also counted in `dropped_connections`).
    pub stalled: u64,
}

impl ServerStats {
    /// A copy of the counters.
    pub fn snapshot(&self) -> ServerStatsSnapshot {
        ServerStatsSnapshot {
            connections: self.connections.load(Relaxed),
            messages: self.messages.load(Relaxed),
            error_replies: self.error_replies.load(Relaxed),
            dropped_connections: self.dropped_connections.load(Relaxed),
            dma_maps: self.dma_maps.load(Relaxed),
            dma_unmaps: self.dma_unmaps.load(Relaxed),
            before_version: self.before_version.load(Relaxed),
            stalled: self.stalled.load(Relaxed),
        }
    }
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(dev: &SharedDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// A vfio-user server for one PCI function.
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    device: SharedDevice,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    upstream: Option<Upstream>,
    timeout: Duration,
}

/// What sits between a device and the client's memory: given the client's DMA space, the
/// space the device's DMA goes through (e.g. a switch port that routes peer writes).
pub type Upstream = Arc<dyn Fn(Arc<GuestMemory>) -> Arc<dyn DmaSpace> + Send + Sync>;

/// A server running on its own thread.
pub struct ServerHandle {
    path: PathBuf,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops serving (the current client is disconnected) and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Server {
    /// Listens on `path` (a stale socket file there is replaced) for clients of `device`.
    pub fn bind(path: &Path, device: SharedDevice) -> std::io::Result<Server> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            device,
            stats: Arc::default(),
            stop: Arc::default(),
            upstream: None,
            timeout: MESSAGE_TIMEOUT,
        })
    }

    /// Disconnects a client whose message stays incomplete (or whose reply stays untaken)
    /// for `timeout` instead of [`MESSAGE_TIMEOUT`] (tests and fuzzing).
    pub fn with_message_timeout(mut self, timeout: Duration) -> Server {
        self.timeout = timeout;
        self
    }

    /// Serves one connected client on the calling thread until it disconnects, misbehaves
    /// beyond repair or `stop` is raised, then detaches the device from its memory (what
    /// the server thread does for each client; exposed for fuzzing and in-process tests).
    pub fn serve_client(
        device: SharedDevice,
        stream: UnixStream,
        stats: &Arc<ServerStats>,
        stop: &AtomicBool,
        timeout: Duration,
    ) {
        serve_one(stream, device, stats, None, stop, timeout);
    }

    /// Puts `upstream` between the device's DMA and every client's memory (a switch
    /// port), instead of the memory itself.
    pub fn with_upstream(mut self, upstream: Upstream) -> Server {
        self.upstream = Some(upstream);
        self
    }

    /// Serves clients one after another on a new thread until the handle is stopped.
    pub fn spawn(self) -> ServerHandle {
        let handle_stop = self.stop.clone();
        let stats = self.stats.clone();
        let path = self.path.clone();
        let name = format!("vfio-user-{}", lock(&self.device).name());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run())
            .expect("spawn the vfio-user server thread");
        ServerHandle { path, stats, stop: handle_stop, thread: Some(thread) }
    }

    fn run(self) {
        while !self.stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let up = self.upstream.as_ref();
                    serve_one(stream, self.device.clone(), &self.stats, up, &self.stop, self.timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Serves one client, then detaches the device from it.
fn serve_one(
    stream: UnixStream,
    device: SharedDevice,
    stats: &Arc<ServerStats>,
    up: Option<&Upstream>,
    stop: &AtomicBool,
    timeout: Duration,
) {
    let _ = stream.set_nonblocking(false);
    // A reply the client does not take within the timeout drops the client.
    let _ = stream.set_write_timeout(Some(timeout));
    stats.connections.fetch_add(1, Relaxed);
    let mut conn = Connection::new(stream, device, stats.clone(), up, timeout);
    if let Err(e) = conn.serve(stop) {
        if matches!(&e, ProtocolError::Stalled(_))
            || matches!(&e, ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
        {
            stats.stalled.fetch_add(1, Relaxed);
        }
        if !matches!(e, ProtocolError::Closed | ProtocolError::Stopped) {
            stats.dropped_connections.fetch_add(1, Relaxed);
            tracing::warn!("vfio-user connection dropped: {e}");
        }
    }
    conn.teardown();
}

struct Connection {
    stream: UnixStream,
    device: SharedDevice,
    stats: Arc<ServerStats>,
    mem: Arc<GuestMemory>,
    irqs: Arc<EventFdIrqs>,
    bus_master: Arc<AtomicBool>,
    ctx: DeviceContext,
    vectors: u32,
    timeout: Duration,
    /// VERSION was negotiated: nothing else is served before it.
    negotiated: bool,
}

type Reply = Result<(Vec<u8>, Option<i32>), u32>;

impl Connection {
    fn new(
        stream: UnixStream,
        device: SharedDevice,
        stats: Arc<ServerStats>,
        up: Option<&Upstream>,
        timeout: Duration,
    ) -> Self {
        let mem = Arc::new(GuestMemory::new());
        let space: Arc<dyn DmaSpace> = match up {
            Some(f) => f(mem.clone()),
            None => mem.clone(),
        };
        let (vectors, counters) = {
            let d = lock(&device);
            (d.config().msix().map_or(0, |m| m.vectors as u32), d.counters())
        };
        let bus_master = Arc::new(AtomicBool::new(false));
        let irqs = Arc::new(EventFdIrqs::new(vectors as usize));
        let dma = Dma::new(space, counters, bus_master.clone());
        let ctx = DeviceContext { dma, irq: irqs.clone() };
        {
            // A new client finds the device in its power-on state. (The previous client's
            // state stays readable until then, as a card's registers do.)
            let mut d = lock(&device);
            d.reset();
            d.config_mut().reset();
            d.attach(ctx.clone());
        }
        Connection { stream, device, stats, mem, irqs, bus_master, ctx, vectors, timeout, negotiated: false }
    }

    /// Stops the device from touching the client's memory (its mappings are gone after
    /// this) and from signalling its eventfds; the next client resets it.
    fn teardown(&mut self) {
        let mut d = lock(&self.device);
        d.detach();
        self.mem.unmap_all();
        self.irqs.clear();
        self.bus_master.store(false, Ordering::Release);
    }

    fn serve(&mut self, stop: &AtomicBool) -> Result<(), ProtocolError> {
        loop {
            // Wait for data in short slices so a stop request is noticed.
            let mut pfd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: polls one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 100) };
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if r <= 0 {
                continue;
            }
            let msg = match wire::read_message(&mut self.stream, stop, self.timeout) {
                Err(ProtocolError::Stopped) => return Ok(()),
                r => r?,
            };
            self.stats.messages.fetch_add(1, Relaxed);
            let no_reply = msg.header.flags & FLAG_NO_REPLY != 0;
            let reply = if msg.oversized { Err(E2BIG) } else { self.handle(&msg) };
            let (body, fd, errno) = match reply {
                Ok((b, fd)) => (b, fd, 0),
                Err(e) => {
                    self.stats.error_replies.fetch_add(1, Relaxed);
                    (vec![], None, e)
                }
            };
            if !no_reply {
                wire::send_reply(&mut self.stream, &msg.header, &body, errno, fd)?;
            }
        }
    }

    fn handle(&mut self, msg: &Message) -> Reply {
        let mut b = Body::new(&msg.body);
        let short = |_: Short| EINVAL;
        let command = Command::from_u16(msg.header.command);
        // The protocol's state machine: VERSION first, once; nothing else before it.
        if self.negotiated == (command == Command::Version) {
            self.stats.before_version.fetch_add(1, Relaxed);
            return Err(EINVAL);
        }
        match command {
            Command::Version => {
                let r = self.version(&mut b).map_err(short)?;
                self.negotiated = r.is_ok();
                r
            }
            Command::DmaMap => self.dma_map(&mut b, &msg.fds).map_err(short)?,
            Command::DmaUnmap => self.dma_unmap(&mut b).map_err(short)?,
            Command::DeviceGetInfo => {
                let mut o = Out::default();
                o.u32(16).u32(VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET).u32(NUM_REGIONS).u32(NUM_IRQS);
                Ok((o.0, None))
            }
            Command::DeviceGetRegionInfo => self.region_info(&mut b).map_err(short)?,
            Command::DeviceGetIrqInfo => self.irq_info(&mut b).map_err(short)?,
            Command::DeviceSetIrqs => self.set_irqs(&mut b, &msg.fds).map_err(short)?,
            Command::RegionRead => self.region_read(&mut b).map_err(short)?,
            Command::RegionWrite => self.region_write(&mut b).map_err(short)?,
            Command::RegionWriteMulti => self.region_write_multi(&mut b).map_err(short)?,
            Command::DeviceReset => {
                let mut d = lock(&self.device);
                d.detach();
                d.reset();
                d.attach(self.ctx.clone());
                Ok((vec![], None))
            }
            // Valid protocol messages this server does not offer, and unknown commands.
            Command::DeviceGetRegionIoFds
            | Command::DmaRead
            | Command::DmaWrite
            | Command::DirtyPages
            | Command::Other(_) => Err(ENOTSUP),
        }
    }

    fn version(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let major = b.u16()?;
        let _minor = b.u16()?;
        if major != 0 {
            return Ok(Err(ENOTSUP));
        }
        let json = b.rest();
        let json = json.strip_suffix(&[0]).unwrap_or(json);
        if !json.is_empty() && serde_json::from_slice::<serde_json::Value>(json).is_err() {
            return Ok(Err(EINVAL));
        }
        let caps = serde_json::json!({
            "capabilities": {
                "max_msg_fds": wire::MAX_FDS,
                "max_data_xfer_size": wire::MAX_DATA_XFER,
                "pgsizes": 4096,
                "max_dma_maps": pcie_model::MAX_DMA_MAPS,
                "write_multiple": false,
            }
        });
        let mut o = Out::default();
        o.u16(0).u16(0).bytes(caps.to_string().as_bytes()).bytes(&[0]);
        Ok(Ok((o.0, None)))
    }

    fn dma_map(&mut self, b: &mut Body, fds: &[OwnedFd]) -> Result<Reply, Short> {
        let _argsz = b.u32()?;
        let flags = b.u32()?;
        let offset = b.u64()?;
        let iova = b.u64()?;
        let size = b.u64()?;
        self.stats.dma_maps.fetch_add(1, Relaxed);
        let fd = match fds.first().map(|f| f.try_clone()) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(_)) => return Ok(Err(EINVAL)),
            None => None,
        };
        let writable = flags & VFIO_DMA_MAP_FLAG_WRITE != 0;
        Ok(match self.mem.map(iova, size, fd, offset, writable) {
            Ok(()) => Ok((vec![], None)),
            Err(pcie_model::MapError::Overlap { .. }) => Err(EEXIST),
            Err(pcie_model::MapError::TooMany { .. }) => Err(ENOSPC),
            Err(e) => {
                tracing::warn!("DMA_MAP refused: {e}");
                Err(EINVAL)
            }
        })
    }

    fn dma_unmap(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let argsz = b.u32()?;
        let flags = b.u32()?;
        let iova = b.u64()?;
        let size = b.u64()?;
        self.stats.dma_unmaps.fetch_add(1, Relaxed);
        const GET_DIRTY_BITMAP: u32 = 1 << 0;
        const UNMAP_ALL: u32 = 1 << 1;
        if flags & GET_DIRTY_BITMAP != 0 || flags & !(GET_DIRTY_BITMAP | UNMAP_ALL) != 0 {
            return Ok(Err(ENOTSUP));
        }
        if flags & UNMAP_ALL != 0 {
            self.mem.unmap_all();
        } else {
            self.mem.unmap(iova, size);
        }
        // Unmap returns only once no DMA access can still be using the range (the map's
        // write lock waits for in-flight accesses), so the device is quiesced for it.
        let mut o = Out::default();
        o.u32(argsz).u32(flags).u64(iova).u64(size);
        Ok(Ok((o.0, None)))
    }

    fn region_size(&self, index: u32) -> u64 {
        let d = lock(&self.device);
        match index {
            0..=5 => d.config().bar(index as u8).map_or(0, |b| b.size),
            CONFIG_REGION => CONFIG_SIZE as u64,
            _ => 0,
        }
    }

    fn region_info(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let argsz = b.u32()?;
        let _flags = b.u32()?;
        let index = b.u32()?;
        if index >= NUM_REGIONS {
            return Ok(Err(EINVAL));
        }
        let size = self.region_size(index);
        let backing = if index <= 5 && size > 0 {
            lock(&self.device).bar_backing(index as u8)
        } else {
            BarBacking::Trapped
        };
        let mut flags = if size > 0 { VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE } else { 0 };
        let mut caps = Out::default();
        let mut fd = None;
        if let BarBacking::Shared { shm, areas } = &backing {
            let areas: Vec<_> = areas.iter().filter(|(o, l)| o + l <= shm.len() as u64).collect();
            if !areas.is_empty() {
                flags |= VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
                caps.u16(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).u16(1).u32(0);
                caps.u32(areas.len() as u32).u32(0);
                for (o, l) in areas {
                    caps.u64(*o).u64(*l);
                }
                fd = Some(shm.fd());
            }
        }
        let needed = (SIZEOF_REGION_INFO + caps.0.len()) as u32;
        let fits = argsz >= needed;
        let mut o = Out::default();
        let cap_offset = if fits && !caps.0.is_empty() { SIZEOF_REGION_INFO as u32 } else { 0 };
        if !fits {
            // Only the needed size: QEMU refuses a CAPS flag without a valid cap_offset,
            // and asks again with the larger argsz.
            flags &= !VFIO_REGION_INFO_FLAG_CAPS;
        }
        // The mmap offset within the fd is 0: each shared BAR has its own memfd.
        o.u32(needed).u32(flags).u32(index).u32(cap_offset).u64(size).u64(0);
        if fits {
            o.bytes(&caps.0);
        }
        Ok(Ok((o.0, fd)))
    }

    fn irq_info(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let _argsz = b.u32()?;
        let _flags = b.u32()?;
        let index = b.u32()?;
        if index >= NUM_IRQS {
            return Ok(Err(EINVAL));
        }
        let (flags, count) = if index == VFIO_PCI_MSIX_IRQ_INDEX {
            (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, self.vectors)
        } else {
            (VFIO_IRQ_INFO_EVENTFD, 0)
        };
        let mut o = Out::default();
        o.u32(16).u32(flags).u32(index).u32(count);
        Ok(Ok((o.0, None)))
    }

    fn set_irqs(&mut self, b: &mut Body, fds: &[OwnedFd]) -> Result<Reply, Short> {
        let _argsz = b.u32()?;
        let flags = b.u32()?;
        let index = b.u32()?;
        let start = b.u32()?;
        let count = b.u32()?;
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if index >= NUM_IRQS || data.count_ones() != 1 || action.count_ones() != 1 {
            return Ok(Err(EINVAL));
        }
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            // Only "disable" makes sense for interrupt types we do not have.
            return Ok(if count == 0 && data == VFIO_IRQ_SET_DATA_NONE {
                Ok((vec![], None))
            } else {
                Err(EINVAL)
            });
        }
        if start.checked_add(count).is_none_or(|end| end > self.vectors) {
            return Ok(Err(EINVAL));
        }
        if action != VFIO_IRQ_SET_ACTION_TRIGGER {
            // Mask/unmask: QEMU and the kernel emulate MSI-X masking above us.
            return Ok(Ok((vec![], None)));
        }
        match data {
            VFIO_IRQ_SET_DATA_EVENTFD => {
                if fds.is_empty() {
                    self.irqs.set(start as usize, (0..count).map(|_| None).collect());
                } else if fds.len() == count as usize {
                    let mut v = Vec::with_capacity(fds.len());
                    for f in fds {
                        match f.try_clone() {
                            Ok(f) => v.push(Some(f)),
                            Err(_) => return Ok(Err(EINVAL)),
                        }
                    }
                    self.irqs.set(start as usize, v);
                } else {
                    return Ok(Err(EINVAL));
                }
            }
            VFIO_IRQ_SET_DATA_NONE if count == 0 => self.irqs.clear(),
            VFIO_IRQ_SET_DATA_NONE => {
                for v in start..start + count {
                    let _ = self.ctx.raise_irq(v as u16);
                }
            }
            _ => return Ok(Err(ENOTSUP)),
        }
        Ok(Ok((vec![], None)))
    }

    fn check_range(&self, region: u32, offset: u64, count: usize) -> bool {
        count <= wire::MAX_DATA_XFER
            && region < NUM_REGIONS
            && offset.checked_add(count as u64).is_some_and(|e| e <= self.region_size(region))
    }

    fn access(&mut self, region: u32, offset: u64, data: &mut [u8], write: bool) {
        let mut d = lock(&self.device);
        if region == CONFIG_REGION {
            if write {
                let _ = d.config_mut().write(offset, data);
                self.bus_master.store(d.config().bus_master(), Ordering::Release);
            } else {
                let _ = d.config().read(offset, data);
            }
            return;
        }
        let counters = d.counters();
        if write {
            counters.mmio_write(data.len());
        } else {
            counters.mmio_read(data.len());
        }
        if let BarBacking::Shared { shm, areas } = d.bar_backing(region as u8) {
            let end = offset + data.len() as u64;
            if areas.iter().any(|(o, l)| offset >= *o && end <= o + l) {
                // A message-borne access to a shared page (a client that did not mmap it).
                if write {
                    shm.write_bytes(offset, data);
                } else {
                    shm.read_bytes(offset, data);
                }
                return;
            }
        }
        if write {
            d.bar_write(region as u8, offset, data);
        } else {
            d.bar_read(region as u8, offset, data);
        }
    }

    fn region_read(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let offset = b.u64()?;
        let region = b.u32()?;
        let count = b.u32()? as usize;
        if !self.check_range(region, offset, count) {
            return Ok(Err(EINVAL));
        }
        let mut data = vec![0u8; count];
        self.access(region, offset, &mut data, false);
        let mut o = Out::default();
        o.u64(offset).u32(region).u32(count as u32).bytes(&data);
        Ok(Ok((o.0, None)))
    }

    fn region_write(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let offset = b.u64()?;
        let region = b.u32()?;
        let count = b.u32()? as usize;
        let mut data = b.bytes(count)?.to_vec();
        if !self.check_range(region, offset, count) {
            return Ok(Err(EINVAL));
        }
        self.access(region, offset, &mut data, true);
        let mut o = Out::default();
        o.u64(offset).u32(region).u32(count as u32);
        Ok(Ok((o.0, None)))
    }

    fn region_write_multi(&mut self, b: &mut Body) -> Result<Reply, Short> {
        let n = b.u64()?;
        if n > 200 {
            return Ok(Err(EINVAL));
        }
        for _ in 0..n {
            let offset = b.u64()?;
            let region = b.u32()?;
            let count = b.u32()? as usize;
            let data = b.bytes(8)?;
            if count > 8 || !self.check_range(region, offset, count) {
                return Ok(Err(EINVAL));
            }
            let mut d = data[..count].to_vec();
            self.access(region, offset, &mut d, true);
        }
        Ok(Ok((vec![], None)))
    }
}
