//! A bare vfio-user client that sends exactly what it is told: well-formed requests,
//! malformed ones, fds of files it then resizes. The hostile-client tests, the fuzz
//! targets and `testbed soak` drive servers with it (a well-behaved driver uses the
//! `vfio_user` crate's client through `device-access`).

use crate::wire::{self, Header, HEADER_SIZE};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::VFIO_DMA_MAP_FLAG_READ;
use vfio_bindings::bindings::vfio::VFIO_DMA_MAP_FLAG_WRITE;

/// vfio-user command numbers.
pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DEVICE_RESET: u16 = 13;
    pub const REGION_WRITE_MULTI: u16 = 15;
}

/// The configuration-space region index.
pub const CONFIG_REGION: u32 = 7;

/// A reply: header flags, errno (0 on success), body and fds.
#[derive(Debug)]
pub struct Reply {
    pub flags: u32,
    pub error: u32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The reply reports success.
    pub fn ok(&self) -> bool {
        self.flags & wire::FLAG_ERROR == 0 && self.error == 0
    }
}

/// What REGION_INFO says about a region.
#[derive(Debug)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
    /// The region's fd, when the server offers it for mmap.
    pub fd: Option<OwnedFd>,
}

/// A raw vfio-user client over one socket.
pub struct RawClient {
    stream: UnixStream,
    id: u16,
    timeout: Duration,
}

impl RawClient {
    /// Connects to `path`; a reply that takes longer than `timeout` is an error.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<RawClient> {
        let stream = UnixStream::connect(path)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RawClient { stream, id: 0, timeout })
    }

    /// A client over an already connected socket (one end of a socketpair).
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> io::Result<RawClient> {
        stream.set_write_timeout(Some(timeout))?;
        Ok(RawClient { stream, id: 0, timeout })
    }

    /// The socket (to send bytes that are not a message, or to shut it down).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Sends one message of `cmd` with `body` and `fds`, its header announcing `size` bytes
    /// (`None`: the true size). Returns the message id.
    pub fn send(&mut self, cmd: u16, body: &[u8], size: Option<u32>, fds: &[RawFd]) -> io::Result<u16> {
        self.id = self.id.wrapping_add(1);
        let h = Header {
            id: self.id,
            command: cmd,
            size: size.unwrap_or((HEADER_SIZE + body.len()) as u32),
            flags: 0,
            error: 0,
        };
        let mut msg = h.bytes().to_vec();
        msg.extend_from_slice(body);
        if fds.is_empty() {
            self.stream.write_all(&msg)?;
        } else {
            send_with_fds(&self.stream, &msg, fds)?;
        }
        Ok(self.id)
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + self.timeout;
        let mut fds = Vec::new();
        let mut hb = [0u8; HEADER_SIZE];
        let fill = |s: &UnixStream, b: &mut [u8], fds: &mut Vec<OwnedFd>| {
            wire::fill(s, b, fds, deadline, self.timeout, &stop).map_err(|e| match e {
                wire::ProtocolError::Io(e) => e,
                wire::ProtocolError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"),
                e => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
            })
        };
        fill(&self.stream, &mut hb, &mut fds)?;
        let h = Header::parse(&hb);
        let n = (h.size as usize).checked_sub(HEADER_SIZE).filter(|&n| n <= wire::MAX_MESSAGE);
        let n =
            n.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("reply size {}", h.size)))?;
        let mut body = vec![0u8; n];
        fill(&self.stream, &mut body, &mut fds)?;
        if h.id != self.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply {} to request {}", h.id, self.id),
            ));
        }
        Ok(Reply { flags: h.flags, error: h.error, body, fds })
    }

    /// Sends a request and reads its reply.
    pub fn call(&mut self, cmd: u16, body: &[u8], fds: &[RawFd]) -> io::Result<Reply> {
        self.send(cmd, body, None, fds)?;
        self.reply()
    }

    /// Negotiates version 0.0 with `max_msg_fds` 16.
    pub fn version(&mut self) -> io::Result<Reply> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":16}}\0");
        self.call(cmd::VERSION, &b, &[])
    }

    /// DMA_MAP of `size` bytes at `iova`, backed by `fd` at `offset` (or by nothing).
    pub fn dma_map(&mut self, iova: u64, size: u64, fd: Option<RawFd>, offset: u64) -> io::Result<Reply> {
        let mut b = 32u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE).to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.call(cmd::DMA_MAP, &b, &fds)
    }

    /// DMA_UNMAP of `[iova, iova + size)` (flags 2: all).
    pub fn dma_unmap(&mut self, iova: u64, size: u64, flags: u32) -> io::Result<Reply> {
        let mut b = 24u32.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        self.call(cmd::DMA_UNMAP, &b, &[])
    }

    /// REGION_INFO of region `index` (asking with room for the capabilities).
    pub fn region_info(&mut self, index: u32) -> io::Result<RegionInfo> {
        let mut b = 256u32.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        let mut r = self.call(cmd::DEVICE_GET_REGION_INFO, &b, &[])?;
        if !r.ok() || r.body.len() < 32 {
            return Err(io::Error::other(format!("REGION_INFO {index}: errno {}", r.error)));
        }
        let flags = u32::from_le_bytes(r.body[4..8].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(r.body[16..24].try_into().unwrap_or_default());
        Ok(RegionInfo { flags, size, fd: r.fds.pop() })
    }

    /// REGION_READ of `count` bytes; the data on success.
    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> io::Result<Result<Vec<u8>, u32>> {
        let mut b = offset.to_le_bytes().to_vec();
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        let r = self.call(cmd::REGION_READ, &b, &[])?;
        Ok(if r.ok() { Ok(r.body.get(16..).unwrap_or_default().to_vec()) } else { Err(r.error) })
    }

    /// A 32-bit REGION_READ (0 when refused).
    pub fn read32(&mut self, region: u32, offset: u64) -> io::Result<u32> {
        Ok(match self.region_read(region, offset, 4)? {
            Ok(d) if d.len() == 4 => u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            _ => 0,
        })
    }

    /// REGION_WRITE of `data`; the errno (0 on success).
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<u32> {
        let mut b = offset.to_le_bytes().to_vec();
        b.extend_from_slice(&region.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        Ok(self.call(cmd::REGION_WRITE, &b, &[])?.error)
    }

    /// A 32-bit REGION_WRITE; the errno.
    pub fn write32(&mut self, region: u32, offset: u64, v: u32) -> io::Result<u32> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// REGION_WRITE_MULTI of `(region, offset, value)` 32-bit writes, applied in order.
    pub fn write_multi(&mut self, writes: &[(u32, u64, u32)]) -> io::Result<u32> {
        let mut b = (writes.len() as u64).to_le_bytes().to_vec();
        for &(region, offset, v) in writes {
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&region.to_le_bytes());
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&(v as u64).to_le_bytes());
        }
        Ok(self.call(cmd::REGION_WRITE_MULTI, &b, &[])?.error)
    }

    /// Turns on memory decoding and bus mastering in the command register.
    pub fn enable_bus_master(&mut self) -> io::Result<u32> {
        self.region_write(CONFIG_REGION, 4, &0x6u16.to_le_bytes())
    }
}

fn send_with_fds(stream: &UnixStream, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut cbuf = [0u64; 24]; // room for 16 fds plus the cmsg header
    let bytes = std::mem::size_of_val(fds) as u32;
    let mut iov = libc::iovec { iov_base: msg.as_ptr().cast_mut().cast(), iov_len: msg.len() };
    // SAFETY: zeroed msghdr pointed at our iovec and control buffer.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE computes the space `bytes` of fds need.
    m.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
    if m.msg_controllen > std::mem::size_of_val(&cbuf) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    // SAFETY: the control buffer holds one cmsg with `fds.len()` ints (checked above).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: sends our buffers; the kernel reads within the given lengths.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if (n as usize) < msg.len() {
        (&*stream).write_all(&msg[n as usize..])?;
    }
    Ok(())
}

/// A memfd of `len` bytes, unsealed (a client's file it may resize at will).
pub fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    resize(&fd, len)?;
    Ok(fd)
}

/// Resizes a file (what a hostile client does to a file it handed over).
pub fn resize(fd: &OwnedFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate on a valid fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
