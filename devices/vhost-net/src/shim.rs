//! A message-level shim between the vhost-user front end (QEMU) and the `vhost` crate's
//! backend handler, for one ordering the two disagree on.
//!
//! QEMU's virtio-net enables its queue pair with `SET_VRING_ENABLE` when the device is
//! realized or reset, as soon as the backend offers `VHOST_USER_F_PROTOCOL_FEATURES`, and
//! before `SET_FEATURES` has acked that feature; it then needs the message to succeed
//! (`vhost_net_start` replays the enable state and gives up on an error). The `vhost`
//! crate follows the spec's letter ("only when PROTOCOL_FEATURES has been negotiated") and
//! drops the connection. With `PROTOCOL_FEATURES` acked, rings start disabled and QEMU's
//! `vhost_dev_start` enables them again after `SET_FEATURES`, so an enable that arrives
//! early carries no state the backend needs: the shim answers it itself (with the
//! `REPLY_ACK` reply when one is asked for) and forwards everything else untouched, file
//! descriptors included.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Message header: request, flags, payload size (little-endian u32 each).
pub const HDR: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// Most file descriptors one message carries (the memory table's region limit).
const MAX_FDS: usize = 32;
/// Largest payload accepted (the protocol's messages are far smaller).
const MAX_PAYLOAD: u32 = 1 << 16;

/// What to do with one front-end message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass it to the backend.
    Forward,
    /// Pass it, then these messages of the shim's own (they need no reply).
    ForwardThen(Vec<Vec<u8>>),
    /// Do not pass it; send this reply to the front end, if any.
    Answer(Option<Vec<u8>>),
}

/// The per-connection state of the shim.
#[derive(Debug, Default)]
pub struct Shim {
    protocol_acked: bool,
    /// Early enables answered by the shim.
    pub early_enables: u64,
    /// The last early enable state per ring, replayed after `SET_FEATURES`: QEMU counts on
    /// it lasting (rings start disabled once `PROTOCOL_FEATURES` is acked).
    pending: std::collections::BTreeMap<u32, u32>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Shim {
    /// Decides about a front-end message (header and payload).
    pub fn on_frontend(&mut self, hdr: &[u8; HDR], payload: &[u8]) -> Action {
        let (req, flags) = (u32_at(hdr, 0), u32_at(hdr, 4));
        match req {
            SET_FEATURES if payload.len() >= 8 => {
                let f = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                self.protocol_acked = f & PROTOCOL_FEATURES_BIT != 0;
                if !self.protocol_acked || self.pending.is_empty() {
                    return Action::Forward;
                }
                let replay = std::mem::take(&mut self.pending)
                    .into_iter()
                    .map(|(index, num)| {
                        let mut m = Vec::with_capacity(HDR + 8);
                        m.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                        m.extend_from_slice(&FLAG_VERSION.to_le_bytes());
                        m.extend_from_slice(&8u32.to_le_bytes());
                        m.extend_from_slice(&index.to_le_bytes());
                        m.extend_from_slice(&num.to_le_bytes());
                        m
                    })
                    .collect();
                Action::ForwardThen(replay)
            }
            SET_VRING_ENABLE if !self.protocol_acked => {
                self.early_enables += 1;
                if payload.len() >= 8 {
                    self.pending.insert(u32_at(payload, 0), u32_at(payload, 4));
                }
                let reply = (flags & FLAG_NEED_REPLY != 0).then(|| {
                    let mut r = Vec::with_capacity(HDR + 8);
                    r.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    r.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    r.extend_from_slice(&8u32.to_le_bytes());
                    r.extend_from_slice(&0u64.to_le_bytes()); // success
                    r
                });
                Action::Answer(reply)
            }
            _ => Action::Forward,
        }
    }
}

/// Reads one message (header with any file descriptors, then the payload); None at EOF.
/// One message: header, payload, and the file descriptors that came with it.
type Message = ([u8; HDR], Vec<u8>, Vec<OwnedFd>);

fn recv_message(s: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR];
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec { iov_base: hdr.as_mut_ptr().cast(), iov_len: HDR }];
    // SAFETY: the iovec covers `hdr`, which outlives the call and may hold any bytes.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
    // SAFETY: recvmsg gave us ownership of the first `nfds` descriptors.
    let fds: Vec<OwnedFd> = raw[..nfds].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    if n == 0 {
        return Ok(None);
    }
    let mut r = s;
    if n < HDR {
        r.read_exact(&mut hdr[n..])?;
    }
    let size = u32_at(&hdr, 8);
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((hdr, payload, fds)))
}

fn send_message(s: &UnixStream, hdr: &[u8], payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut msg = Vec::with_capacity(hdr.len() + payload.len());
    msg.extend_from_slice(hdr);
    msg.extend_from_slice(payload);
    let n = s.send_with_fds(&[&msg[..]], &raw).map_err(io::Error::from)?;
    if n < msg.len() {
        let mut w = s;
        w.write_all(&msg[n..])?;
    }
    Ok(())
}

/// Relays one connection until either side closes; returns the early enables answered.
pub fn relay(front: UnixStream, back: UnixStream) -> io::Result<u64> {
    let front_w = Arc::new(Mutex::new(front.try_clone()?));
    let back_r = back.try_clone()?;
    let fw = front_w.clone();
    let front_for_close = front.try_clone()?;
    // Backend → front end: replies (and nothing else; no backend channel is offered).
    let up = std::thread::spawn(move || -> io::Result<()> {
        while let Some((hdr, payload, fds)) = recv_message(&back_r)? {
            let f = fw.lock().unwrap_or_else(|e| e.into_inner());
            send_message(&f, &hdr, &payload, &fds)?;
        }
        Ok(())
    });
    let mut shim = Shim::default();
    let down = (|| -> io::Result<()> {
        while let Some((hdr, payload, fds)) = recv_message(&front)? {
            tracing::trace!(
                "vhost-user: request {} flags {:#x} size {} fds {}",
                u32_at(&hdr, 0),
                u32_at(&hdr, 4),
                payload.len(),
                fds.len()
            );
            match shim.on_frontend(&hdr, &payload) {
                Action::Forward => send_message(&back, &hdr, &payload, &fds)?,
                Action::ForwardThen(more) => {
                    send_message(&back, &hdr, &payload, &fds)?;
                    for m in more {
                        send_message(&back, &m, &[], &[])?;
                    }
                }
                Action::Answer(Some(reply)) => {
                    let f = front_w.lock().unwrap_or_else(|e| e.into_inner());
                    send_message(&f, &reply, &[], &[])?;
                }
                Action::Answer(None) => {}
            }
        }
        Ok(())
    })();
    // Either side ending ends both.
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front_for_close.shutdown(std::net::Shutdown::Both);
    let up = up.join().unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    down.and(up).map(|_| shim.early_enables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(req: u32, flags: u32, size: u32) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0..4].copy_from_slice(&req.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&size.to_le_bytes());
        h
    }

    #[test]
    fn early_enable_is_answered_later_ones_forwarded() {
        let mut s = Shim::default();
        let enable = |ring: u32, on: u32| [ring.to_le_bytes(), on.to_le_bytes()].concat();
        // Before SET_FEATURES: answered here, with an ack when asked for.
        let Action::Answer(Some(r)) =
            s.on_frontend(&hdr(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, 8), &enable(0, 0))
        else {
            panic!("not answered")
        };
        assert_eq!(u32_at(&r, 0), SET_VRING_ENABLE);
        assert_eq!(u32_at(&r, 4), FLAG_VERSION | FLAG_REPLY);
        assert_eq!(u32_at(&r, 8), 8);
        assert_eq!(&r[12..], &[0; 8], "success");
        assert_eq!(s.on_frontend(&hdr(SET_VRING_ENABLE, 1, 8), &enable(1, 1)), Action::Answer(None));
        assert_eq!(s.on_frontend(&hdr(SET_VRING_ENABLE, 1, 8), &enable(0, 1)), Action::Answer(None));
        assert_eq!(s.early_enables, 3);
        // SET_FEATURES with PROTOCOL_FEATURES: the last state of each ring is replayed (no
        // reply asked), and from now on the backend handles them.
        let f = (PROTOCOL_FEATURES_BIT | 1 << 32).to_le_bytes();
        let Action::ForwardThen(replay) = s.on_frontend(&hdr(SET_FEATURES, 1, 8), &f) else {
            panic!("no replay")
        };
        assert_eq!(replay.len(), 2);
        for (m, ring) in replay.iter().zip([0u32, 1]) {
            assert_eq!((u32_at(m, 0), u32_at(m, 4), u32_at(m, 8)), (SET_VRING_ENABLE, FLAG_VERSION, 8));
            assert_eq!((u32_at(m, 12), u32_at(m, 16)), (ring, 1), "ring {ring} enabled");
        }
        assert_eq!(s.on_frontend(&hdr(SET_FEATURES, 1, 8), &f), Action::Forward, "nothing left to replay");
        assert_eq!(s.on_frontend(&hdr(SET_VRING_ENABLE, 1, 8), &enable(0, 0)), Action::Forward);
        assert_eq!(s.on_frontend(&hdr(1, 1, 0), &[]), Action::Forward, "GET_FEATURES");
    }

    #[test]
    fn relay_forwards_payloads_and_file_descriptors_both_ways() {
        let (qemu, front) = UnixStream::pair().unwrap();
        let (back, backend) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(front, back));
        // An early enable needing a reply is answered by the shim.
        send_message(&qemu, &hdr(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, 8), &[0; 8], &[]).unwrap();
        let (h, p, _) = recv_message(&qemu).unwrap().unwrap();
        assert_eq!((u32_at(&h, 0), p.len()), (SET_VRING_ENABLE, 8));
        // A message with a file descriptor reaches the backend with a working descriptor.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = OwnedFd::from(file);
        send_message(&qemu, &hdr(5, 1, 4), &[1, 2, 3, 4], std::slice::from_ref(&fd)).unwrap();
        let (h, p, fds) = recv_message(&backend).unwrap().unwrap();
        assert_eq!((u32_at(&h, 0), p), (5, vec![1, 2, 3, 4]));
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).unwrap();
        assert_eq!(&magic, b"\x7fELF");
        // The backend's reply comes back.
        send_message(&backend, &hdr(1, 1 | FLAG_REPLY, 8), &7u64.to_le_bytes(), &[]).unwrap();
        let (_, p, _) = recv_message(&qemu).unwrap().unwrap();
        assert_eq!(p, 7u64.to_le_bytes());
        // The front end leaving ends the relay, and the backend sees EOF.
        drop(qemu);
        assert_eq!(t.join().unwrap().unwrap(), 1);
        assert!(recv_message(&backend).unwrap().is_none());
    }
}
