//! vfio-user wire format: the message header, commands, and socket I/O with fds.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Largest data transfer we accept or offer in one message.
pub const MAX_DATA_XFER: usize = 1 << 20;
/// Largest message we read whole; bigger ones are drained and refused.
pub const MAX_MESSAGE: usize = MAX_DATA_XFER + 4096;
/// Most fds we accept with one message (QEMU sends up to 16 eventfds).
pub const MAX_FDS: usize = 16;

/// Header flag: the message is a reply.
pub const FLAG_REPLY: u32 = 0x1;
/// Header flag: the sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// Header flag: the reply reports an error in `error`.
pub const FLAG_ERROR: u32 = 0x20;

/// vfio-user commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Version,
    DmaMap,
    DmaUnmap,
    DeviceGetInfo,
    DeviceGetRegionInfo,
    DeviceGetRegionIoFds,
    DeviceGetIrqInfo,
    DeviceSetIrqs,
    RegionRead,
    RegionWrite,
    DmaRead,
    DmaWrite,
    DeviceReset,
    DirtyPages,
    RegionWriteMulti,
    /// Anything else (answered with ENOTSUP).
    Other(u16),
}

impl Command {
    /// Decodes a command number.
    pub fn from_u16(v: u16) -> Command {
        match v {
            1 => Command::Version,
            2 => Command::DmaMap,
            3 => Command::DmaUnmap,
            4 => Command::DeviceGetInfo,
            5 => Command::DeviceGetRegionInfo,
            6 => Command::DeviceGetRegionIoFds,
            7 => Command::DeviceGetIrqInfo,
            8 => Command::DeviceSetIrqs,
            9 => Command::RegionRead,
            10 => Command::RegionWrite,
            11 => Command::DmaRead,
            12 => Command::DmaWrite,
            13 => Command::DeviceReset,
            14 => Command::DirtyPages,
            15 => Command::RegionWriteMulti,
            n => Command::Other(n),
        }
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    /// Decodes 16 header bytes.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the header.
    pub fn bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }
}

/// Why a connection had to be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("message size {0} is smaller than the header: the stream cannot be resynchronised")]
    BadSize(u32),
    #[error("client disconnected")]
    Closed,
    #[error("a message stayed incomplete for {0:?}: the client stalled")]
    Stalled(Duration),
    #[error("the server is stopping")]
    Stopped,
}

/// A little-endian field reader over a message body that never panics: reading past
/// the end is an error the handler turns into EINVAL.
pub struct Body<'a> {
    data: &'a [u8],
    pos: usize,
}

/// The body was too short for the command.
#[derive(Debug)]
pub struct Short;

impl<'a> Body<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Body { data, pos: 0 }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n).ok_or(Short)?;
        let s = self.data.get(self.pos..end).ok_or(Short)?;
        self.pos = end;
        Ok(s)
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().map_err(|_| Short)?))
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().map_err(|_| Short)?))
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().map_err(|_| Short)?))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        s
    }
}

/// Builds a little-endian reply body.
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Receives into `buf` (at least one byte), collecting any fds that arrive with it.
fn recv_some(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const CMSG_SPACE: usize = 256; // room for MAX_FDS ints plus the cmsg header
    let mut cbuf = [0u64; CMSG_SPACE / 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: zeroed msghdr, then pointed at our iovec and control buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE as _;
    // SAFETY: recvmsg writes at most iov_len bytes into `buf` and msg_controllen bytes into
    // `cbuf`, both owned by this frame.
    let n =
        unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walks the control messages recvmsg filled in, within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` points at a valid control message header inside `cbuf`.
        let (level, ty, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is the header length of this cmsg.
            let hdr = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(hdr) / std::mem::size_of::<RawFd>();
            // SAFETY: the data of an SCM_RIGHTS message is `count` ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: reads fd `i` of the array (possibly unaligned).
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                if fd >= 0 {
                    // SAFETY: the kernel just installed this fd for us; we own it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // SAFETY: advances within the control buffer per the cmsg macros.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n as usize)
}

/// A received message: header, body, and the fds that came with it.
pub struct Message {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// The body was bigger than [`MAX_MESSAGE`] and was drained, not kept.
    pub oversized: bool,
}

/// How long a waiting read sleeps in `poll` before it looks at the stop flag again.
const POLL_SLICE_MS: i32 = 50;

/// Receives until `buf` is full, waiting in short slices: gives up when the client closes,
/// when `stop` is raised, or when `deadline` passes (a client that stalls mid-message
/// must not hold the server).
pub(crate) fn fill(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    deadline: Instant,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<(), ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match recv_some(stream, &mut buf[got..], fds) {
            Ok(0) => return Err(ProtocolError::Closed),
            Ok(n) => {
                got += n;
                // A message carries at most MAX_FDS fds: extras are closed at once, so a
                // client cannot fill our fd table with one long message.
                fds.truncate(MAX_FDS);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if stop.load(Ordering::Acquire) {
            return Err(ProtocolError::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProtocolError::Stalled(timeout));
        }
        let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = (left.as_millis() as i32).clamp(1, POLL_SLICE_MS);
        // SAFETY: polls one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
    Ok(())
}

/// Reads one message, which must arrive whole within `timeout` of its first byte. Bodies
/// larger than [`MAX_MESSAGE`] are read and discarded so the stream stays in sync. Never
/// blocks longer than `timeout`, and returns soon after `stop` is raised.
pub fn read_message(
    stream: &mut UnixStream,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<Message, ProtocolError> {
    let deadline = Instant::now() + timeout;
    let mut hb = [0u8; HEADER_SIZE];
    let mut fds = Vec::new();
    fill(stream, &mut hb, &mut fds, deadline, timeout, stop)?;
    let header = Header::parse(&hb);
    let size = header.size as usize;
    if size < HEADER_SIZE {
        return Err(ProtocolError::BadSize(header.size));
    }
    let body_len = size - HEADER_SIZE;
    if body_len > MAX_MESSAGE {
        let mut left = body_len;
        let mut sink = vec![0u8; 64 << 10];
        while left > 0 {
            let n = left.min(sink.len());
            fill(stream, &mut sink[..n], &mut fds, deadline, timeout, stop)?;
            left -= n;
        }
        return Ok(Message { header, body: vec![], fds, oversized: true });
    }
    let mut body = vec![0u8; body_len];
    // Fds may also ride on a later segment of the message.
    fill(stream, &mut body, &mut fds, deadline, timeout, stop)?;
    Ok(Message { header, body, fds, oversized: false })
}

/// Sends a reply to `req` with `body`, or an error reply when `errno` is non-zero, passing
/// `fd` along if given.
pub fn send_reply(
    stream: &mut UnixStream,
    req: &Header,
    body: &[u8],
    errno: u32,
    fd: Option<RawFd>,
) -> io::Result<()> {
    let body = if errno != 0 { &[][..] } else { body };
    let h = Header {
        id: req.id,
        command: req.command,
        size: (HEADER_SIZE + body.len()) as u32,
        flags: FLAG_REPLY | if errno != 0 { FLAG_ERROR } else { 0 },
        error: errno,
    };
    let mut msg = Vec::with_capacity(HEADER_SIZE + body.len());
    msg.extend_from_slice(&h.bytes());
    msg.extend_from_slice(body);
    match fd {
        None => stream.write_all(&msg),
        Some(fd) => {
            let mut cbuf = [0u64; 4];
            let mut iov = libc::iovec { iov_base: msg.as_mut_ptr().cast(), iov_len: msg.len() };
            // SAFETY: zeroed msghdr pointed at our iovec and control buffer.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE computes the space one int needs.
            m.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
            // SAFETY: the control buffer (32 bytes) holds one cmsg with one fd.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(4) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
            }
            // SAFETY: sends our buffers; the kernel reads within the given lengths.
            let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if (n as usize) < msg.len() {
                stream.write_all(&msg[n as usize..])?;
            }
            Ok(())
        }
    }
}
