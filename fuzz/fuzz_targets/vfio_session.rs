//! A vfio-user session with structure: negotiation (or not), DMA maps of a memfd the
//! client resizes at will (shrunk under the device, grown and mapped again), region reads
//! and writes to every BAR and the config space, REGION_WRITE_MULTI, interrupts, resets
//! and raw messages, against the smoke device, the crypto accelerator and the packetized
//! NIC, each driven by its own device thread.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use vfio_server::client::{self, RawClient};
use vfio_server::{Server, ServerStats};

#[derive(Arbitrary, Debug)]
enum Step {
    Version,
    Map { iova_page: u16, pages: u8, file_page: u16, with_fd: bool },
    Unmap { iova_page: u16, pages: u8, all: bool },
    Resize { pages: u16 },
    Info(u8),
    Read { region: u8, off: u32, count: u16 },
    Write { region: u8, off: u32, value: testbed_fuzz::Value, len: u8 },
    Multi(Vec<(u8, u16, testbed_fuzz::Value)>),
    Irqs { start: u8, count: u8, eventfds: bool },
    Reset,
    BusMaster,
    Raw { cmd: u8, body: Vec<u8> },
    Scribble { page: u16, byte: u8 },
}

#[derive(Arbitrary, Debug)]
struct Session {
    device: u8,
    steps: Vec<Step>,
}

type Dev = Arc<Mutex<dyn pcie_model::PciDevice>>;
static DEVS: OnceLock<Vec<Dev>> = OnceLock::new();

fn devices() -> &'static Vec<Dev> {
    DEVS.get_or_init(|| {
        let packetized = packet_nic::PacketNic::new(
            packet_nic::PacketNicConfig { num_queues: 4 },
            Box::new(wire::Disconnected),
        );
        vec![
            Arc::new(Mutex::new(testdev::SmokeDevice::new().unwrap())) as Dev,
            Arc::new(Mutex::new(accel::Accelerator::crypto().unwrap())) as Dev,
            Arc::new(Mutex::new(packetized.unwrap())) as Dev,
        ]
    })
}

const PAGE: u64 = 4096;

fuzz_target!(|s: Session| {
    let devs = devices();
    let dev = devs[s.device as usize % devs.len()].clone();
    let (c, server) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let stats = Arc::new(ServerStats::default());
        Server::serve_client(dev, server, &stats, &AtomicBool::new(false), Duration::from_millis(500));
    });
    let mut c = RawClient::from_stream(c, Duration::from_secs(5)).unwrap();
    let ram = client::memfd("fuzz-ram", 64 * PAGE).unwrap();
    let mut sizes = [0u64; 10];
    let eventfd = unsafe_eventfd();
    for step in s.steps.iter().take(256) {
        let r = match step {
            Step::Version => c.version().map(|_| ()),
            Step::Map { iova_page, pages, file_page, with_fd } => {
                let fd = with_fd.then(|| ram.as_raw_fd());
                let iova = 0x1000_0000 + *iova_page as u64 % 256 * PAGE;
                c.dma_map(iova, (*pages as u64 % 32 + 1) * PAGE, fd, *file_page as u64 % 128 * PAGE)
                    .map(|_| ())
            }
            Step::Unmap { iova_page, pages, all } => {
                let iova = 0x1000_0000 + *iova_page as u64 % 256 * PAGE;
                c.dma_unmap(if *all { 0 } else { iova }, *pages as u64 * PAGE, if *all { 2 } else { 0 })
                    .map(|_| ())
            }
            Step::Resize { pages } => {
                let _ = client::resize(&ram, *pages as u64 % 256 * PAGE);
                Ok(())
            }
            Step::Info(i) => {
                let i = *i as u32 % 10;
                match c.region_info(i) {
                    Ok(info) => {
                        sizes[i as usize] = info.size;
                        if let Some(fd) = info.fd {
                            // A hostile client tries to shrink what it was handed.
                            let _ = client::resize(&fd, 0);
                        }
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Other => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Step::Read { region, off, count } => {
                let region = *region as u32 % 10;
                let size = sizes[region as usize].max(1);
                c.region_read(region, *off as u64 % size, *count as u32 % 512).map(|_| ())
            }
            Step::Write { region, off, value, len } => {
                let region = *region as u32 % 10;
                let size = sizes[region as usize].max(1);
                let v = (value.get() as u64).to_le_bytes();
                c.region_write(region, (*off as u64 % size) & !3, &v[..(*len as usize % 8) + 1]).map(|_| ())
            }
            Step::Multi(w) => {
                let w: Vec<(u32, u64, u32)> =
                    w.iter().take(200).map(|(r, o, v)| (*r as u32 % 8, *o as u64 & !3, v.get())).collect();
                c.write_multi(&w).map(|_| ())
            }
            Step::Irqs { start, count, eventfds } => {
                let (start, count) = (*start as u32 % 8, *count as u32 % 8);
                let mut b = vec![];
                for v in [20u32, if *eventfds { 4 | 32 } else { 1 | 32 }, 2, start, count] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                let fds: Vec<i32> = if *eventfds { vec![eventfd; count as usize] } else { vec![] };
                c.call(vfio_server::client::cmd::DEVICE_SET_IRQS, &b, &fds).map(|_| ())
            }
            Step::Reset => c.call(vfio_server::client::cmd::DEVICE_RESET, &[], &[]).map(|_| ()),
            Step::BusMaster => c.enable_bus_master().map(|_| ()),
            Step::Raw { cmd, body } => c.call(*cmd as u16 % 20, body, &[]).map(|_| ()),
            Step::Scribble { page, byte } => {
                let b = [*byte; 64];
                // SAFETY: writes our own buffer into our own file.
                unsafe {
                    libc::pwrite(ram.as_raw_fd(), b.as_ptr().cast(), 64, (*page as u64 % 256 * PAGE) as i64)
                };
                Ok(())
            }
        };
        if let Err(e) = r {
            // The only acceptable way for the server to stop answering is a refused stream
            // (it closed on us); a timeout is a hang.
            assert!(
                e.kind() != std::io::ErrorKind::TimedOut,
                "the server stopped answering: {e} after {step:?}"
            );
            break;
        }
    }
    drop(c);
    t.join().unwrap();
    // SAFETY: closes the eventfd made below.
    unsafe { libc::close(eventfd) };
});

fn unsafe_eventfd() -> i32 {
    // SAFETY: creates an eventfd; closed at the end of the input.
    unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }
}
