//! The driver against a minimal in-process fake of the Ensō device: BAR2 queue pages and
//! the prefetch page are shared memory, BAR0 page 0 and the state page are trapped (the
//! state bits mirror the ENABLE bits). A thread completes TX notifications and records
//! what was sent; the tests inject RX data and notifications themselves.

use device_access::bar::{Mapping, RegionIo};
use device_access::mem::{DmaMapper, DmaUnmap, SharedMem};
use device_access::{Bar, DeviceAccess, DmaBuffer, DmaOptions, Interrupt};
use enso::{Device, DeviceOptions, Error, PacketIter};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testbed_regs::enso::*;

const BAR2_MAPPED: usize = 36 << 20;

struct Mem {
    bar2: SharedMem,
    prefetch: SharedMem,
    /// (iova, host address, len) of live DMA buffers.
    dma: Mutex<Vec<(u64, usize, usize)>>,
    ack: AtomicBool,
    id: u32,
    trapped: AtomicU64,
    pipe_flits: u32,
}

// SAFETY (test fake): all access to the raw memory is volatile or confined to ranges the
// driver handed to the device.
fn rd32(base: *mut u8, off: u64) -> u32 {
    // SAFETY: callers pass offsets inside the mapping.
    unsafe { std::ptr::read_volatile(base.add(off as usize).cast::<u32>()) }
}

fn wr32(base: *mut u8, off: u64, v: u32) {
    // SAFETY: as above.
    unsafe { std::ptr::write_volatile(base.add(off as usize).cast::<u32>(), v) }
}

impl Mem {
    fn q(&self, page: u64, field: u64) -> u32 {
        rd32(self.bar2.as_ptr(), page + field)
    }

    fn enabled(&self, page: u64) -> bool {
        self.q(page, queue::RX_MEM_LOW) & queue::ENABLE != 0
    }

    fn translate(&self, iova: u64, len: usize) -> *mut u8 {
        let dma = self.dma.lock().unwrap();
        let &(base, host, _) = dma
            .iter()
            .find(|(b, _, l)| iova >= *b && iova + len as u64 <= b + *l as u64)
            .unwrap_or_else(|| panic!("DMA to unmapped {iova:#x}+{len}"));
        (host + (iova - base) as usize) as *mut u8
    }

    fn rx_mem(&self, page: u64) -> u64 {
        ((self.q(page, queue::RX_MEM_HIGH) as u64) << 32)
            | (self.q(page, queue::RX_MEM_LOW) & queue::PIPE_ADDR_MASK & !queue::ENABLE) as u64
    }
}

impl RegionIo for Mem {
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> device_access::Result<()> {
        self.trapped.fetch_add(1, Ordering::Relaxed);
        assert_eq!(index, 0, "only BAR0 is trapped");
        let v: u32 = match offset {
            ext::ID => self.id,
            ext::VERSION => ext::VERSION_VALUE,
            ext::NUM_PIPES => 64,
            ext::NUM_NB_PAIRS => 4,
            ext::PIPE_FLITS => self.pipe_flits,
            ext::NOTIF_ENTRIES => NOTIF_RING_ENTRIES,
            o if (state::PIPES..state::NB_PAIRS).contains(&o) => {
                let first = ((o - state::PIPES) / 4 * 32) as u32;
                (0..32u32)
                    .filter(|b| {
                        first + b < 64
                            && self.ack.load(Ordering::Relaxed)
                            && self.enabled(pipe_page(first + b))
                    })
                    .fold(0, |acc, b| acc | 1 << b)
            }
            o if (state::NB_PAIRS..EXT_SHARED_END).contains(&o) => (0..4u32)
                .filter(|&b| {
                    o == state::NB_PAIRS && self.ack.load(Ordering::Relaxed) && self.enabled(nb_page(b))
                })
                .fold(0, |acc, b| acc | 1 << b),
            o if o >= ext::COUNTERS => (o - ext::COUNTERS) as u32, // recognizable values
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        Ok(())
    }

    fn write(&self, _index: u32, _offset: u64, _data: &[u8]) -> device_access::Result<()> {
        self.trapped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl DmaUnmap for Mem {
    fn unmap(&self, iova: u64, _len: usize) {
        self.dma.lock().unwrap_or_else(|e| e.into_inner()).retain(|(b, _, _)| *b != iova);
    }
}

impl DmaMapper for Mem {
    fn map(&self, mem: &SharedMem, iova: u64) -> device_access::Result<()> {
        self.dma.lock().unwrap_or_else(|e| e.into_inner()).push((iova, mem.as_ptr() as usize, mem.len()));
        Ok(())
    }
}

struct FakeAccess {
    mem: Arc<Mem>,
    next_iova: u64,
}

impl DeviceAccess for FakeAccess {
    fn config_read(&mut self, _offset: u64, data: &mut [u8]) -> device_access::Result<()> {
        data.fill(0);
        Ok(())
    }
    fn config_write(&mut self, _offset: u64, _data: &[u8]) -> device_access::Result<()> {
        Ok(())
    }
    fn bar(&mut self, index: u8) -> device_access::Result<Bar> {
        let io: Arc<dyn RegionIo> = self.mem.clone();
        Ok(match index {
            0 => {
                let m = Mapping::new(self.mem.prefetch.as_fd(), 0, 0x2000)?;
                Bar::new(0, 0, EXT_BAR_SIZE, vec![(prefetch::PAGE, Arc::new(m))], io)
            }
            2 => {
                let m = Mapping::new(self.mem.bar2.as_fd(), 0, BAR2_MAPPED)?;
                Bar::new(2, 2, QUEUE_BAR_SIZE, vec![(0, Arc::new(m))], io)
            }
            _ => return Err(device_access::Error::Bar { index, why: "none".into() }),
        })
    }
    fn alloc_dma(&mut self, len: usize, opts: DmaOptions) -> device_access::Result<DmaBuffer> {
        // 4 KiB pages only, from a start that is not 2 MiB aligned: the requested IOVA
        // alignment is what gives the driver aligned rings.
        let mem = SharedMem::new(len, DmaOptions { huge: false, ..opts })?;
        let iova = self.next_iova.next_multiple_of(opts.alignment(4096));
        self.next_iova = iova + mem.len() as u64;
        self.mem.dma.lock().unwrap().push((iova, mem.as_ptr() as usize, mem.len()));
        Ok(DmaBuffer::new(mem, iova, self.mem.clone()))
    }
    fn enable_msix(&mut self, _count: u32) -> device_access::Result<Vec<Interrupt>> {
        Ok(vec![])
    }
    fn transport(&self) -> &'static str {
        "fake"
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mem.clone()
    }
    fn add_dma_peer(&mut self, _peer: Arc<dyn DmaMapper>) {}
}

#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Data(Vec<u8>),
    Config([u8; 64]),
}

struct Fake {
    mem: Arc<Mem>,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    rx_tail: Vec<u32>,
    notif_tail: u32,
}

impl Fake {
    fn new(id: u32, pipe_flits: u32) -> (Fake, Box<dyn DeviceAccess>) {
        let mem = Arc::new(Mem {
            bar2: SharedMem::new(BAR2_MAPPED, DmaOptions::default()).unwrap(),
            prefetch: SharedMem::new(0x2000, DmaOptions::default()).unwrap(),
            dma: Mutex::new(vec![]),
            ack: AtomicBool::new(true),
            id,
            trapped: AtomicU64::new(0),
            pipe_flits,
        });
        let sent = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mem, sent, stop) = (mem.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || tx_engine(&mem, &sent, &stop))
        };
        let access = Box::new(FakeAccess { mem: mem.clone(), next_iova: 0x1_0000_3000 });
        (Fake { mem, sent, stop, thread: Some(thread), rx_tail: vec![0; 64], notif_tail: 0 }, access)
    }

    /// Writes frames into pipe `id` (each on a flit boundary) and posts one notification.
    fn rx(&mut self, id: u32, frames: &[Vec<u8>]) {
        let ring = self.mem.pipe_flits as usize * FLIT;
        let mut tail = self.rx_tail[id as usize] as usize;
        for f in frames {
            let base = self.mem.translate(self.mem.rx_mem(pipe_page(id)), ring);
            for (i, b) in f.iter().enumerate() {
                // SAFETY: inside the pipe buffer (offset taken modulo the ring).
                unsafe { *base.add((tail * FLIT + i) % ring) = *b };
            }
            tail = (tail + f.len().div_ceil(FLIT)) % self.mem.pipe_flits as usize;
        }
        self.rx_tail[id as usize] = tail as u32;
        let nb = self.mem.translate(self.mem.rx_mem(nb_page(0)), NOTIF_RING_BYTES);
        // SAFETY: entry inside the RX notification ring.
        unsafe {
            let e = nb.add(self.notif_tail as usize * 64).cast::<u64>();
            std::ptr::write_volatile(e.add(1), id as u64);
            std::ptr::write_volatile(e.add(2), tail as u64);
            fence(Ordering::Release);
            std::ptr::write_volatile(e, 1);
        }
        self.notif_tail = (self.notif_tail + 1) % NOTIF_RING_ENTRIES;
    }

    fn set_rx_tail(&mut self, id: u32, tail: u32) {
        self.rx_tail[id as usize] = tail;
    }

    fn q(&self, page: u64, field: u64) -> u32 {
        self.mem.q(page, field)
    }

    fn wait_sent(&self, n: usize) -> Vec<Sent> {
        for _ in 0..2000 {
            if self.sent.lock().unwrap().len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tx_engine(mem: &Mem, sent: &Mutex<Vec<Sent>>, stop: &AtomicBool) {
    let page = nb_page(0);
    let mut head = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let tail = mem.q(page, queue::TX_TAIL);
        if !mem.enabled(page) || head == tail {
            std::thread::yield_now();
            continue;
        }
        fence(Ordering::Acquire);
        let tx = ((mem.q(page, queue::TX_MEM_HIGH) as u64) << 32)
            | (mem.q(page, queue::TX_MEM_LOW) & !0xfffff) as u64;
        let ring = mem.translate(tx, NOTIF_RING_BYTES);
        while head != tail {
            // SAFETY: entry inside the TX ring.
            unsafe {
                let e = ring.add(head as usize * 64).cast::<u64>();
                let signal = std::ptr::read_volatile(e);
                let item = match signal {
                    notif::SIGNAL_SEND => {
                        let (addr, len) =
                            (std::ptr::read_volatile(e.add(1)), std::ptr::read_volatile(e.add(2)) as usize);
                        assert!(
                            len as u64 <= MAX_TX_TRANSFER
                                && addr / TX_BOUNDARY == (addr + len as u64 - 1) / TX_BOUNDARY
                        );
                        Sent::Data(std::slice::from_raw_parts(mem.translate(addr, len), len).to_vec())
                    }
                    notif::SIGNAL_CONFIG => {
                        let mut raw = [0u8; 64];
                        std::ptr::copy_nonoverlapping(e.cast::<u8>(), raw.as_mut_ptr(), 64);
                        Sent::Config(raw)
                    }
                    s => panic!("bad TX signal {s}"),
                };
                sent.lock().unwrap().push(item);
                fence(Ordering::Release);
                std::ptr::write_volatile(e, 0);
            }
            head = (head + 1) % NOTIF_RING_ENTRIES;
        }
        wr32(mem.bar2.as_ptr(), page + queue::TX_HEAD, head);
    }
}

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[23] = 17;
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = tag.wrapping_add(i as u8);
    }
    f
}

fn data(sent: &[Sent]) -> Vec<u8> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Data(d) => Some(d.clone()),
            Sent::Config(_) => None,
        })
        .flatten()
        .collect()
}

#[test]
fn setup_programs_the_pair_aligned_and_enabled() {
    let (fake, access) = Fake::new(ext::ID_VALUE, PIPE_FLITS);
    let dev = Device::new(access, 0).unwrap();
    assert_eq!(dev.info().num_pipes, 64);
    let low = fake.q(nb_page(0), queue::RX_MEM_LOW);
    assert_ne!(low & queue::ENABLE, 0);
    let rx = fake.mem.rx_mem(nb_page(0));
    assert_eq!(rx % (2 << 20), 0, "RX notification ring 2 MiB aligned despite 4 KiB DMA pages");
    let tx = ((fake.q(nb_page(0), queue::TX_MEM_HIGH) as u64) << 32)
        | fake.q(nb_page(0), queue::TX_MEM_LOW) as u64;
    assert_eq!(tx, rx + NOTIF_RING_BYTES as u64);
    drop(dev);
    assert_eq!(fake.q(nb_page(0), queue::RX_MEM_LOW) & queue::ENABLE, 0, "disabled on drop");
}

#[test]
fn wrong_id_and_missing_ack_are_clear_errors() {
    let (_fake, access) = Fake::new(0xdead_beef, PIPE_FLITS);
    let e = Device::new(access, 0).err().unwrap();
    assert!(matches!(e, Error::NotEnso { found: 0xdead_beef, .. }), "{e}");

    let (fake, access) = Fake::new(ext::ID_VALUE, PIPE_FLITS);
    let e = Device::new(access, 9).err().unwrap();
    assert!(matches!(e, Error::BadNbId { nb_id: 9, available: 4 }), "{e}");

    fake.mem.ack.store(false, Ordering::Relaxed);
    let (_, access2) = (0, Box::new(FakeAccess { mem: fake.mem.clone(), next_iova: 0x2_0000_0000 }));
    let opts = DeviceOptions { ack_timeout: Duration::from_millis(50), ..DeviceOptions::new(0) };
    let e = Device::with_options(access2, opts).err().unwrap();
    assert!(matches!(e, Error::NotAcknowledged { id: 0, enable: true, .. }), "{e}");
    assert!(e.to_string().contains("never enabled"), "{e}");
}

#[test]
fn rx_pipe_recv_confirm_and_misuse() {
    let (mut fake, access) = Fake::new(ext::ID_VALUE, PIPE_FLITS);
    let mut dev = Device::new(access, 0).unwrap();
    let mut pipe = dev.alloc_rx_pipe().unwrap();
    assert_eq!(pipe.id(), 0);
    let low = fake.q(pipe_page(0), queue::RX_MEM_LOW);
    assert_eq!(low & queue::ENABLE, queue::ENABLE);
    assert_eq!(low & queue::NB_ID_MASK, 0);
    assert_eq!(fake.mem.rx_mem(pipe_page(0)) % (2 << 20), 0);
    assert!(dev.next_rx_pipe_to_recv().is_none());

    let trapped_before = fake.mem.trapped.load(Ordering::Relaxed);
    let frames = vec![frame(60, 1), frame(128, 2), frame(1514, 3)];
    fake.rx(0, &frames);
    assert_eq!(dev.next_rx_pipe_to_recv(), Some(0));
    assert!(dev.next_rx_pipe_to_recv().is_none());
    assert_eq!(fake.q(nb_page(0), queue::RX_HEAD), 1, "NB rx_head written");
    assert_eq!(pipe.peek(usize::MAX).len(), 64 + 128 + 1536);
    let got: Vec<Vec<u8>> = pipe.recv_packets(usize::MAX).map(|p| p.to_vec()).collect();
    assert_eq!(got, frames);
    assert!(pipe.recv(usize::MAX).is_empty());

    let e = pipe.confirm_bytes(64 + 128 + 1536 + 1).unwrap_err();
    assert!(matches!(e, Error::ConfirmTooMany { received: 1728, .. }), "{e}");
    pipe.confirm_bytes(100).unwrap(); // rounds to 2 flits
    assert_eq!(fake.q(pipe_page(0), queue::RX_HEAD), 2);
    pipe.confirm_bytes(pipe.unconfirmed()).unwrap();
    assert_eq!(fake.q(pipe_page(0), queue::RX_HEAD), 1 + 2 + 24);
    pipe.prefetch();
    pipe.prefetch();
    let slot = prefetch::slot(0) - prefetch::PAGE;
    assert_eq!(rd32(fake.mem.prefetch.as_ptr(), slot + prefetch::PIPE_ID), 0);
    assert_eq!(rd32(fake.mem.prefetch.as_ptr(), slot + prefetch::SEQ), 2);
    assert_eq!(fake.mem.trapped.load(Ordering::Relaxed), trapped_before, "datapath used trapped MMIO");
    assert_eq!(dev.stats().rx_notifications, 1);
    // Every doorbell into the polled pages is counted, each prefetch as two writes: the
    // pair's rx_head once, the pipe's head twice, two prefetches.
    let st = dev.stats();
    assert_eq!((st.rx_head_writes, st.pipe_head_writes, st.prefetches), (1, 2, 2), "{st:?}");
    assert_eq!(st.polled_doorbell_writes, 1 + 2 + 2 * 2, "{st:?}");

    // A notification for a pipe nobody owns is counted, not delivered.
    fake.rx(5, &[]);
    assert!(dev.next_rx_pipe_to_recv().is_none());
    assert_eq!(dev.stats().stray_notifications, 1);

    let e = dev.alloc_rx_pipe_with_id(0).err().unwrap();
    assert!(matches!(e, Error::PipeInUse(0)), "{e}");
    drop(pipe);
    assert_eq!(fake.q(pipe_page(0), queue::RX_MEM_LOW) & queue::ENABLE, 0);
    let again = dev.alloc_rx_pipe_with_id(0).unwrap();
    assert_eq!(again.id(), 0, "ID freed on drop");
}

#[test]
fn rx_tx_echo_frees_after_completion_and_wraps() {
    let (mut fake, access) = Fake::new(ext::ID_VALUE, 1024); // 64 KiB rings
    let mut dev = Device::new(access, 0).unwrap();
    let _p0 = dev.alloc_rx_tx_pipe().unwrap();
    let mut pipe = dev.alloc_rx_tx_pipe().unwrap();
    assert_eq!(pipe.id(), 1);
    let ring_flits = 1024u32;
    // Start 3 flits before the end so the batch wraps.
    fake.set_rx_tail(1, ring_flits - 3);
    // The driver's cursors start at 0: bring them to the same place by a first batch that
    // fills up to ring_flits - 3 with 64-byte frames, echoed and completed.
    let fill: Vec<Vec<u8>> = (0..ring_flits - 3).map(|i| frame(64, i as u8)).collect();
    fake.set_rx_tail(1, 0);
    fake.rx(1, &fill);
    assert_eq!(dev.next_rx_pipe_to_recv(), Some(1));
    let n = pipe.recv(usize::MAX).len();
    assert_eq!(n, (ring_flits as usize - 3) * 64);
    pipe.send_and_free(&mut dev, n).unwrap();
    dev.wait_tx_idle(Duration::from_secs(5)).unwrap();
    assert_eq!(fake.q(pipe_page(1), queue::RX_HEAD), ring_flits - 3, "freed on completion");
    fake.wait_sent(1);

    let frames = vec![frame(100, 7), frame(200, 8), frame(64, 9)];
    fake.rx(1, &frames);
    assert_eq!(dev.next_rx_pipe_to_recv(), Some(1));
    let mut count = 0;
    let mut it = pipe.recv_packets_mut(usize::MAX);
    for p in it.by_ref() {
        p[42] = p[42].wrapping_add(1);
        count += 1;
    }
    let used = it.consumed();
    assert_eq!((count, used), (3, 128 + 256 + 64), "packets read contiguously across the wrap");
    let e = pipe.send_and_free(&mut dev, used + 64).unwrap_err();
    assert!(matches!(e, Error::SendExceedsReceived { .. }), "{e}");
    pipe.send_and_free(&mut dev, used).unwrap();
    assert_eq!(fake.q(pipe_page(1), queue::RX_HEAD), ring_flits - 3, "not freed before completion");
    let sent = fake.wait_sent(2);
    assert_eq!(sent.len(), 2, "split at the ring end: {sent:?}");
    let mut expect = vec![];
    for f in &frames {
        let mut f = f.clone();
        f[42] = f[42].wrapping_add(1);
        expect.extend_from_slice(&f);
        expect.resize(expect.len().next_multiple_of(64), 0);
    }
    let got = data(&sent);
    let got_frames: Vec<&[u8]> = PacketIter::new(&got).collect();
    let exp_frames: Vec<&[u8]> = PacketIter::new(&expect).collect();
    assert_eq!(got_frames, exp_frames);
    dev.wait_tx_idle(Duration::from_secs(5)).unwrap();
    assert_eq!(fake.q(pipe_page(1), queue::RX_HEAD), (ring_flits - 3 + 7) % ring_flits);
    // One free per completed batch (the split batch frees once, on its last chunk).
    let st = dev.stats();
    assert_eq!((st.rx_frees_on_completion, st.pipe_head_writes), (2, 2), "{st:?}");
}

#[test]
fn tx_pipe_splits_and_checks_allocation() {
    let (fake, access) = Fake::new(ext::ID_VALUE, PIPE_FLITS);
    let mut dev = Device::new(access, 0).unwrap();
    let mut tx = dev.alloc_tx_pipe().unwrap();
    let buf = tx.allocate_buf(&mut dev, 300 << 10).unwrap();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8;
    }
    let e = tx.send_and_free(&mut dev, (300 << 10) + 1).unwrap_err();
    assert!(matches!(e, Error::SendExceedsAllocation { allocated: 307200, .. }), "{e}");
    tx.send_and_free(&mut dev, 300 << 10).unwrap();
    let sent = fake.wait_sent(3);
    let lens: Vec<usize> = sent
        .iter()
        .map(|s| match s {
            Sent::Data(d) => d.len(),
            Sent::Config(_) => 0,
        })
        .collect();
    assert_eq!(lens, vec![128 << 10, 128 << 10, 44 << 10]);
    assert!(data(&sent).iter().enumerate().all(|(i, b)| *b == i as u8));
    dev.wait_tx_idle(Duration::from_secs(5)).unwrap();
    assert_eq!(tx.free(), TX_BOUNDARY as usize);
    let e = tx.allocate_buf(&mut dev, (2 << 20) + 1).unwrap_err();
    assert!(matches!(e, Error::TxBufferFull { .. }), "{e}");
}

#[test]
fn configuration_notifications() {
    let (fake, access) = Fake::new(ext::ID_VALUE, PIPE_FLITS);
    let mut dev = Device::new(access, 0).unwrap();
    dev.configure_fallback_queues(3, false).unwrap();
    dev.enable_round_robin().unwrap();
    let pipe = dev.alloc_rx_pipe().unwrap();
    let flow =
        enso::Flow { dst_port: 80, src_port: 1234, dst_ip: 0x0a00_0001, src_ip: 0x0a00_0002, protocol: 17 };
    pipe.bind(&mut dev, flow).unwrap();
    dev.enable_timestamp(None).unwrap();
    dev.enable_rate_limit(3, 10).unwrap();
    assert!(matches!(dev.enable_rate_limit(0, 10), Err(Error::Invalid(_))));
    let sent = fake.wait_sent(5);
    let cfg: Vec<[u8; 64]> = sent
        .into_iter()
        .filter_map(|s| match s {
            Sent::Config(c) => Some(c),
            Sent::Data(_) => None,
        })
        .collect();
    assert_eq!(cfg.len(), 5);
    let u32_at = |c: &[u8; 64], o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    let u64_at = |c: &[u8; 64], o: usize| u64::from_le_bytes(c[o..o + 8].try_into().unwrap());
    assert_eq!(u64_at(&cfg[0], notif::CONFIG_ID), config::FALLBACK_QUEUES);
    assert_eq!(
        (
            u32_at(&cfg[0], config::FB_COUNT),
            u32_at(&cfg[0], config::FB_MASK),
            u64_at(&cfg[0], config::FB_ENABLE_RR)
        ),
        (3, 1, 0)
    );
    assert_eq!(u64_at(&cfg[1], config::FB_ENABLE_RR), 1);
    assert_eq!(u32_at(&cfg[1], config::FB_COUNT), 3);
    assert_eq!(u64_at(&cfg[2], notif::CONFIG_ID), config::FLOW_TABLE);
    assert_eq!(u16::from_le_bytes([cfg[2][16], cfg[2][17]]), 80);
    assert_eq!(u16::from_le_bytes([cfg[2][18], cfg[2][19]]), 1234);
    assert_eq!(u32_at(&cfg[2], config::FT_DST_IP), 0x0a00_0001);
    assert_eq!(u32_at(&cfg[2], config::FT_SRC_IP), 0x0a00_0002);
    assert_eq!(u32_at(&cfg[2], config::FT_PROTOCOL), 17);
    assert_eq!(u32_at(&cfg[2], config::FT_PIPE_ID), 0);
    assert_eq!(u64_at(&cfg[3], config::TS_ENABLE), 1);
    assert_eq!(cfg[3][config::TS_OFFSET], 18);
    assert_eq!(u16::from_le_bytes([cfg[4][16], cfg[4][17]]), 10, "denominator");
    assert_eq!(u16::from_le_bytes([cfg[4][18], cfg[4][19]]), 3, "numerator");
    let c = dev.counters().unwrap();
    assert_eq!(c.get("rx_packets"), Some(4u64 << 32), "low then high half");
    assert_eq!(c.get("tx_packets"), Some(16 | (20u64 << 32)));
    assert!(matches!(dev.counter("bogus"), Err(Error::UnknownCounter(_))));
}
