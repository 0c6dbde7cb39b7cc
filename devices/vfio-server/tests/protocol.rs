//! A misbehaving client must get errno replies, never a crash or a desynchronised stream.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testdev::SmokeDevice;
use vfio_server::Server;

fn sock_path(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vfio-server-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join("dev.sock")
}

struct Raw {
    s: UnixStream,
    id: u16,
}

#[derive(Debug)]
struct Reply {
    flags: u32,
    error: u32,
    body: Vec<u8>,
}

impl Raw {
    fn connect(p: &std::path::Path) -> Raw {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, id: 0 }
    }

    fn send_raw(&mut self, cmd: u16, size: u32, body: &[u8]) {
        self.id += 1;
        let mut m = vec![];
        m.extend_from_slice(&self.id.to_le_bytes());
        m.extend_from_slice(&cmd.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(body);
        self.s.write_all(&m).unwrap();
    }

    fn call(&mut self, cmd: u16, body: &[u8]) -> Reply {
        self.send_raw(cmd, 16 + body.len() as u32, body);
        self.reply()
    }

    fn reply(&mut self) -> Reply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let id = u16::from_le_bytes([h[0], h[1]]);
        assert_eq!(id, self.id, "reply matches the request");
        let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size - 16];
        self.s.read_exact(&mut body).unwrap();
        Reply {
            flags: u32::from_le_bytes(h[8..12].try_into().unwrap()),
            error: u32::from_le_bytes(h[12..16].try_into().unwrap()),
            body,
        }
    }

    fn version(&mut self) -> Reply {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":16}}\0");
        self.call(1, &b)
    }
}

fn region_read(offset: u64, region: u32, count: u32) -> Vec<u8> {
    let mut b = offset.to_le_bytes().to_vec();
    b.extend_from_slice(&region.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b
}

const ERR: u32 = 0x20;

#[test]
fn malformed_messages_get_errno_replies_and_the_stream_stays_in_sync() {
    let path = sock_path("malformed");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&path, dev).unwrap().spawn();
    let mut c = Raw::connect(&path);

    let v = c.version();
    assert_eq!(v.flags & ERR, 0);
    let caps: serde_json::Value = serde_json::from_slice(&v.body[4..v.body.len() - 1]).unwrap();
    assert_eq!(caps["capabilities"]["max_msg_fds"], 16);

    // Unknown command with a payload: ENOTSUP, payload drained.
    let r = c.call(99, &[0xab; 100]);
    assert_eq!((r.flags & ERR, r.error), (ERR, libc::ENOTSUP as u32));
    // DMA_READ from a client is not something this server offers.
    let r = c.call(11, &[0; 64]);
    assert_eq!(r.error, libc::ENOTSUP as u32);
    // A huge REGION_READ count is refused without allocating it.
    let r = c.call(9, &region_read(0, 0, 64 << 20));
    assert_eq!(r.error, libc::EINVAL as u32);
    // Reads past the end of a region, and of regions that do not exist.
    assert_eq!(c.call(9, &region_read(4094, 0, 4)).error, libc::EINVAL as u32);
    assert_eq!(c.call(9, &region_read(0, 42, 4)).error, libc::EINVAL as u32);
    assert_eq!(c.call(9, &region_read(u64::MAX, 7, 4)).error, libc::EINVAL as u32);
    // Truncated bodies.
    assert_eq!(c.call(5, &[1, 2, 3]).error, libc::EINVAL as u32);
    assert_eq!(c.call(2, &[0; 7]).error, libc::EINVAL as u32);
    // A REGION_WRITE whose count is bigger than the data it carries.
    let mut w = region_read(8, 0, 64);
    w.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(c.call(10, &w).error, libc::EINVAL as u32);
    // Malformed VERSION JSON.
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(b"{not json\0");
    assert_eq!(c.call(1, &b).error, libc::EINVAL as u32);
    // SET_IRQS for MSI-X with eventfd data but a count that does not match the fds.
    let mut s = vec![];
    for v in [20u32, 4 | 32, 2, 0, 3] {
        s.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(c.call(8, &s[..]).error, 0, "no fds: vectors 0..3 disconnected");
    let mut s2 = vec![];
    for v in [20u32, 4 | 32, 2, 3, 5] {
        s2.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(c.call(8, &s2).error, libc::EINVAL as u32, "vectors beyond the table");
    // An oversized message is drained whole and refused.
    let big = vec![0u8; (2 << 20) + 100];
    c.send_raw(10, 16 + big.len() as u32, &big);
    assert_eq!(c.reply().error, libc::E2BIG as u32);

    // After all that, the stream is still in sync and the device still answers.
    let r = c.call(9, &region_read(0, 0, 4));
    assert_eq!(r.flags & ERR, 0);
    assert_eq!(&r.body[16..20], &testbed_regs::smoke::ID_VALUE.to_le_bytes());

    // A header whose size is below the header size cannot be resynchronised: the server
    // drops that client and serves the next one.
    c.send_raw(9, 4, &[]);
    let mut probe = [0u8; 1];
    assert_eq!(c.s.read(&mut probe).unwrap_or(0), 0, "connection closed");
    let mut c2 = Raw::connect(&path);
    assert_eq!(c2.version().flags & ERR, 0);
    drop(c2);
    std::thread::sleep(Duration::from_millis(200));
    let st = server.stats();
    assert_eq!(st.dropped_connections, 1);
    assert!(st.error_replies >= 12, "{st:?}");
    server.stop();
}

#[test]
fn dma_map_overlap_and_unmap_all() {
    let path = sock_path("dma");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&path, dev).unwrap().spawn();
    let mut c = Raw::connect(&path);
    c.version();
    let map = |iova: u64, size: u64| {
        let mut b = 32u32.to_le_bytes().to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b
    };
    // Maps without an fd are accepted (QEMU sends those for ROMs and other BARs).
    assert_eq!(c.call(2, &map(0x10000, 0x1000)).error, 0);
    assert_eq!(c.call(2, &map(0x10800, 0x1000)).error, libc::EEXIST as u32);
    assert_eq!(c.call(2, &map(0, 0)).error, libc::EINVAL as u32);
    // QEMU's VFIO_DMA_UNMAP_FLAG_ALL is bit 1, with iova 0 and size 0.
    let mut u = 24u32.to_le_bytes().to_vec();
    u.extend_from_slice(&2u32.to_le_bytes());
    u.extend_from_slice(&0u64.to_le_bytes());
    u.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(c.call(3, &u).error, 0);
    assert_eq!(c.call(2, &map(0x10800, 0x1000)).error, 0, "space free after unmap-all");
    // Dirty-page tracking is not offered.
    u[4] = 1;
    assert_eq!(c.call(3, &u).error, libc::ENOTSUP as u32);
    server.stop();
}

#[test]
fn region_info_bar_sizing_and_config_through_the_glue() {
    let path = sock_path("regions");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&path, dev).unwrap().spawn();
    let mut c = Raw::connect(&path);
    c.version();
    let mut lines = vec![];
    for index in 0..9u32 {
        let mut b = 32u32.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        let r = c.call(5, &b);
        let u32_at = |o: usize| u32::from_le_bytes(r.body[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(r.body[o..o + 8].try_into().unwrap());
        let mut line =
            format!("region {index}: argsz {} flags {:#x} size {:#x}", u32_at(0), u32_at(4), u64_at(16));
        if u32_at(0) > 32 {
            // Ask again with room for the capabilities.
            let mut b2 = u32_at(0).to_le_bytes().to_vec();
            b2.extend_from_slice(&b[4..]);
            let r2 = c.call(5, &b2);
            let cap_off = u32::from_le_bytes(r2.body[12..16].try_into().unwrap()) as usize;
            let caps = &r2.body[cap_off..];
            let n = u32::from_le_bytes(caps[8..12].try_into().unwrap());
            let area = |i: usize| {
                let o = 16 + 16 * i;
                (
                    u64::from_le_bytes(caps[o..o + 8].try_into().unwrap()),
                    u64::from_le_bytes(caps[o + 8..o + 16].try_into().unwrap()),
                )
            };
            line += &format!(
                " | cap id {} areas {:?}",
                u16::from_le_bytes([caps[0], caps[1]]),
                (0..n as usize).map(area).collect::<Vec<_>>()
            );
        }
        lines.push(line);
    }
    insta::assert_snapshot!(lines.join("\n"));

    // BAR sizing through config-space messages, as QEMU and the guest kernel do it.
    let cfg = |off: u64, v: Option<u32>, c: &mut Raw| -> u32 {
        if let Some(v) = v {
            let mut w = off.to_le_bytes().to_vec();
            w.extend_from_slice(&7u32.to_le_bytes());
            w.extend_from_slice(&4u32.to_le_bytes());
            w.extend_from_slice(&v.to_le_bytes());
            assert_eq!(c.call(10, &w).error, 0);
        }
        let r = c.call(9, &region_read(off, 7, 4));
        u32::from_le_bytes(r.body[16..20].try_into().unwrap())
    };
    assert_eq!(cfg(0x10, Some(0xffff_ffff), &mut c), 0xffff_f000, "BAR0: 4 KiB");
    assert_eq!(cfg(0x18, Some(0xffff_ffff), &mut c), 0xffff_f00c, "BAR2: 4 KiB, 64-bit, prefetchable");
    assert_eq!(cfg(0x0, None, &mut c), 0x5301_1172);
    server.stop();
}
