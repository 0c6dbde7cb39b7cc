//! Issue 17: what a hostile client did to a server, each as a regression test. The client
//! speaks the protocol correctly and then abuses the device: it resizes the files it
//! handed over, stalls mid-message, skips VERSION, maps without end.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed_regs::smoke::*;
use testdev::SmokeDevice;
use vfio_server::client::{self, cmd, RawClient};
use vfio_server::{Server, ServerHandle};

fn serve(tag: &str) -> (ServerHandle, PathBuf, Arc<Mutex<SmokeDevice>>) {
    let d = std::env::temp_dir().join(format!("vfio-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("dev.sock");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&path, dev.clone()).unwrap().spawn();
    (server, path, dev)
}

fn connect(path: &std::path::Path) -> RawClient {
    let mut c = RawClient::connect(path, Duration::from_secs(10)).unwrap();
    assert!(c.version().unwrap().ok());
    assert_eq!(c.enable_bus_master().unwrap(), 0);
    c
}

/// Runs one smoke command through message-borne writes to the doorbell page and waits for
/// its completion; returns (status, result).
fn smoke_command(c: &mut RawClient, seq: u32, op: u32, addr: u64, len: u32) -> (u32, u32) {
    let bar = DOORBELL_BAR as u32;
    for (off, v) in [
        (DB_OPCODE, op),
        (DB_ADDR_LO, addr as u32),
        (DB_ADDR_HI, (addr >> 32) as u32),
        (DB_LEN, len),
        (DB_SEED, 7),
        (DB_VECTOR, NO_VECTOR),
        (DB_SEQ, seq),
    ] {
        assert_eq!(c.write32(bar, off, v).unwrap(), 0);
    }
    let t = Instant::now();
    while c.read32(bar, DB_DONE_SEQ).unwrap() != seq {
        assert!(t.elapsed() < Duration::from_secs(10), "command {seq} never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    (c.read32(bar, DB_DONE_STATUS).unwrap(), c.read32(bar, DB_DONE_RESULT).unwrap())
}

/// Defect 1: map a 1 MiB memfd at 0x10000000, shrink it to 0, have the device DMA there.
#[test]
fn a_dma_file_shrunk_to_nothing_gives_a_refused_dma_not_sigbus() {
    let (server, path, _dev) = serve("shrink");
    let mut c = connect(&path);
    let f = client::memfd("ram", 1 << 20).unwrap();
    assert!(c.dma_map(0x1000_0000, 1 << 20, Some(f.as_raw_fd()), 0).unwrap().ok());
    assert_eq!(smoke_command(&mut c, 1, OP_WRITE_PATTERN, 0x1000_0000, 4096).0, CMD_OK);
    client::resize(&f, 0).unwrap();
    for (seq, op) in [(2, OP_WRITE_PATTERN), (3, OP_READ_CHECKSUM), (4, OP_WRITE_PATTERN)] {
        let (status, _) = smoke_command(&mut c, seq, op, 0x1000_0000 + 64, 64 << 10);
        assert_eq!(status, CMD_DMA_ERROR, "command {seq}: refused, as an IOMMU fault");
    }
    assert_eq!(c.read32(REG_BAR as u32, REG_DMA_ERRORS).unwrap(), 3, "each refusal counted");
    // The server lives on, and the file works again once it has memory.
    client::resize(&f, 1 << 20).unwrap();
    assert_eq!(smoke_command(&mut c, 5, OP_WRITE_PATTERN, 0x1000_0000, 4096).0, CMD_OK);
    drop(c);
    let mut c2 = connect(&path);
    assert_eq!(c2.read32(REG_BAR as u32, REG_ID).unwrap(), ID_VALUE);
    server.stop();
}

/// Defect 2: map a 4 KiB memfd, grow it to 64 MiB, map it again at another IOVA with file
/// offset 8 KiB and 32 MiB: the device must reach exactly the file's bytes there.
#[test]
fn a_grown_file_mapped_again_reaches_the_file_not_server_memory() {
    let (server, path, dev) = serve("grow");
    let mut c = connect(&path);
    let f = client::memfd("ram", 4096).unwrap();
    assert!(c.dma_map(0x1000_0000, 4096, Some(f.as_raw_fd()), 0).unwrap().ok());
    client::resize(&f, 64 << 20).unwrap();
    let mut seq = 0;
    for (iova, off) in [(0x2000_0000u64, 8192u64), (0x3000_0000, 32 << 20)] {
        assert!(c.dma_map(iova, 4096, Some(f.as_raw_fd()), off).unwrap().ok());
        seq += 1;
        assert_eq!(smoke_command(&mut c, seq, OP_WRITE_PATTERN, iova, 4096).0, CMD_OK);
        let mut b = vec![0u8; 4096];
        // SAFETY: reads the test's own file into its own buffer.
        let n = unsafe { libc::pread(f.as_raw_fd(), b.as_mut_ptr().cast(), 4096, off as i64) };
        assert_eq!(n, 4096);
        let want: Vec<u8> = (0..4096).map(|i| pattern_byte(7, i)).collect();
        assert_eq!(b, want, "the pattern landed in the file at {off:#x}");
        seq += 1;
        let (status, sum) = smoke_command(&mut c, seq, OP_READ_CHECKSUM, iova, 4096);
        assert_eq!((status, sum), (CMD_OK, fnv1a32(&want)), "the device read the file's bytes");
        assert_eq!(dev.lock().unwrap().last_checksum(), fnv1a32(&want));
    }
    server.stop();
}

/// Defect 3: a client shrinks the shared-BAR memfd REGION_INFO handed it.
#[test]
fn the_shared_bar_fd_cannot_be_shrunk() {
    let (server, path, _dev) = serve("bar");
    let mut c = connect(&path);
    let info = c.region_info(DOORBELL_BAR as u32).unwrap();
    let fd = info.fd.expect("the doorbell BAR is offered for mmap");
    let e = client::resize(&fd, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "sealed against shrinking");
    // The device thread keeps polling the page: commands still complete.
    let f = client::memfd("ram", 1 << 16).unwrap();
    assert!(c.dma_map(0x1000_0000, 1 << 16, Some(f.as_raw_fd()), 0).unwrap().ok());
    assert_eq!(smoke_command(&mut c, 1, OP_WRITE_PATTERN, 0x1000_0000, 4096).0, CMD_OK);
    server.stop();
}

/// Defect 5: a client that announces 100 body bytes, sends 20 and keeps the socket open
/// is disconnected after [`vfio_server::MESSAGE_TIMEOUT`]; the next client is served, and
/// `stop()` returns at once even while a client stalls.
#[test]
fn a_stalled_client_blocks_neither_the_next_client_nor_stop() {
    let (server, path, _dev) = serve("stall");
    let mut a = connect(&path);
    a.send(cmd::REGION_READ, &[0; 20], Some(16 + 100), &[]).unwrap();
    let t = Instant::now();
    let mut b = RawClient::connect(&path, Duration::from_secs(15)).unwrap();
    assert!(b.version().unwrap().ok(), "the next client is served");
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(8), "served after {waited:?}");
    assert_eq!(b.read32(REG_BAR as u32, REG_ID).unwrap(), ID_VALUE);
    let st = server.stats();
    assert_eq!((st.stalled, st.dropped_connections), (1, 1), "{st:?}");
    // A client that stops reading its replies is dropped too, instead of blocking the
    // server on a full socket.
    drop(b);
    let mut c = connect(&path);
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend_from_slice(&7u32.to_le_bytes()); // config space
    body.extend_from_slice(&256u32.to_le_bytes());
    for _ in 0..20_000 {
        if c.send(cmd::REGION_READ, &body, None, &[]).is_err() {
            break;
        }
    }
    let t = Instant::now();
    while server.stats().stalled < 2 {
        assert!(t.elapsed() < Duration::from_secs(15), "a client not reading replies is dropped");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop while a client is mid-message returns promptly.
    let mut d = RawClient::connect(&path, Duration::from_secs(10)).unwrap();
    d.send(cmd::VERSION, &[0; 3], Some(16 + 50), &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        server.stop();
        let _ = tx.send(t.elapsed());
    });
    let took = rx.recv_timeout(Duration::from_secs(3)).expect("stop() returns while a client stalls");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// Defect 6: `max_dma_maps` is advertised and enforced: the 65 536th map fails with
/// ENOSPC, and 65 535 maps cost linear time (about a second here).
#[test]
fn dma_map_limit_is_advertised_and_enforced() {
    let (server, path, _dev) = serve("maps");
    let mut c = RawClient::connect(&path, Duration::from_secs(10)).unwrap();
    let v = c.version().unwrap();
    let caps: serde_json::Value = serde_json::from_slice(&v.body[4..v.body.len() - 1]).unwrap();
    let max = caps["capabilities"]["max_dma_maps"].as_u64().unwrap();
    assert_eq!(max, 65535);
    let t = Instant::now();
    for i in 0..max {
        let r = c.dma_map(0x1_0000_0000 + i * 0x2000, 0x1000, None, 0).unwrap();
        assert!(r.ok(), "map {i}: errno {}", r.error);
    }
    let took = t.elapsed();
    let r = c.dma_map(0x9_0000_0000, 0x1000, None, 0).unwrap();
    assert_eq!(r.error, libc::ENOSPC as u32, "the 65 536th map");
    // Measured here at 0.5-4 s depending on load (quadratic inserts took 22 s): the bound
    // only catches a return to quadratic cost, it does not time the machine.
    eprintln!("{max} maps took {took:?}");
    assert!(took < Duration::from_secs(15), "{max} maps took {took:?}: quadratic again?");
    // Unmapping one makes room for one.
    assert!(c.dma_unmap(0x1_0000_0000, 0x1000, 0).unwrap().ok());
    assert!(c.dma_map(0x9_0000_0000, 0x1000, None, 0).unwrap().ok());
    assert_eq!(c.dma_map(0x9_1000_0000, 0x1000, None, 0).unwrap().error, libc::ENOSPC as u32);
    server.stop();
}

/// Defect 7: nothing but VERSION before VERSION (and VERSION only once).
#[test]
fn nothing_but_version_before_version() {
    let (server, path, _dev) = serve("version");
    let mut c = RawClient::connect(&path, Duration::from_secs(10)).unwrap();
    let f = client::memfd("ram", 4096).unwrap();
    assert_eq!(c.region_read(REG_BAR as u32, REG_ID, 4).unwrap(), Err(libc::EINVAL as u32));
    assert_eq!(c.dma_map(0x1000, 4096, Some(f.as_raw_fd()), 0).unwrap().error, libc::EINVAL as u32);
    assert_eq!(c.call(cmd::DEVICE_GET_INFO, &[0; 16], &[]).unwrap().error, libc::EINVAL as u32);
    assert_eq!(c.call(cmd::DEVICE_RESET, &[], &[]).unwrap().error, libc::EINVAL as u32);
    assert!(c.version().unwrap().ok());
    assert_eq!(c.version().unwrap().error, libc::EINVAL as u32, "VERSION once");
    assert_eq!(c.region_read(REG_BAR as u32, REG_ID, 4).unwrap(), Ok(ID_VALUE.to_le_bytes().to_vec()));
    assert!(c.dma_map(0x1000, 4096, Some(f.as_raw_fd()), 0).unwrap().ok(), "the refused map left no trace");
    let st = server.stats();
    assert_eq!((st.before_version, st.dma_maps), (5, 1), "{st:?}");
    server.stop();
}
