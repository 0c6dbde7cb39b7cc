//! The responder: a host's minimal IPv4 presence over Ensō pipes, for peers running
//! ordinary network tools. It answers ARP requests for its address, ICMP echo requests
//! (ping) and UDP datagrams to the echo port (7), and stops when a datagram to the discard
//! port (9) says `testbed:done`. Everything else is counted and ignored, as a host would.
//!
//! [`respond`] is the per-frame logic (no device); [`Responder`] wraps it as a
//! [`PacketApp`], which [`run`] serves on the Ensō NIC (the peer scenarios) or the
//! packetized one.

use crate::netapp::{serve_on, IoLimits, Serve};
use crate::report::Report;
use device_access::DeviceAccess;
use netapps::{Action, PacketApp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testbed_regs::inet::checksum;

/// UDP echo (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// UDP discard (RFC 863): where a peer says it is done.
pub const DONE_PORT: u16 = 9;
/// The payload that ends the run.
pub const DONE_MARK: &[u8] = b"testbed:done";

const ETH_HDR: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;
const MIN_FRAME: usize = 60;

/// Who the responder is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

/// What [`respond`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An ARP reply of this many bytes is in the output.
    Arp(usize),
    /// An ICMP echo reply.
    Icmp(usize),
    /// A UDP echo.
    Udp(usize),
    /// The peer's "done" datagram.
    Done,
    /// Not for us, or nothing to answer.
    Ignored,
    /// For us, but its IPv4 header or ICMP checksum is wrong (dropped, as a host would).
    BadChecksum,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Answers one received frame into `out` (at least 1518 bytes); see [`Answer`].
pub fn respond(frame: &[u8], me: &Identity, out: &mut [u8]) -> Answer {
    if frame.len() < ETH_HDR {
        return Answer::Ignored;
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => arp(frame, me, out),
        ETHERTYPE_IPV4 => ipv4(frame, me, out),
        _ => Answer::Ignored,
    }
}

fn pad(out: &mut [u8], len: usize) -> usize {
    let n = len.max(MIN_FRAME);
    out[len..n].fill(0);
    n
}

fn arp(frame: &[u8], me: &Identity, out: &mut [u8]) -> Answer {
    let a = &frame[ETH_HDR..];
    // Ethernet/IPv4 request for our address.
    if a.len() < 28 || be16(a, 0) != 1 || be16(a, 2) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return Answer::Ignored;
    }
    if be16(a, 6) != 1 || a[24..28] != me.ip {
        return Answer::Ignored;
    }
    let (sha, spa) = (&a[8..14], &a[14..18]);
    out[0..6].copy_from_slice(sha);
    out[6..12].copy_from_slice(&me.mac);
    out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let r = &mut out[ETH_HDR..ETH_HDR + 28];
    r[0..6].copy_from_slice(&a[0..6]);
    r[6..8].copy_from_slice(&2u16.to_be_bytes());
    r[8..14].copy_from_slice(&me.mac);
    r[14..18].copy_from_slice(&me.ip);
    r[18..24].copy_from_slice(sha);
    r[24..28].copy_from_slice(spa);
    Answer::Arp(pad(out, ETH_HDR + 28))
}

/// The header and total lengths of the IPv4 packet in `frame` (after the Ethernet header),
/// when it is whole, addressed to `to` (any address when None), its header checksum right
/// and not a fragment; otherwise what to make of it.
fn ipv4_packet(frame: &[u8], to: Option<[u8; 4]>) -> Result<(usize, usize), Answer> {
    let ip = frame.get(ETH_HDR..).unwrap_or_default();
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(Answer::Ignored);
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < 20 || total < ihl || total > ip.len() || to.is_some_and(|to| ip[16..20] != to) {
        return Err(Answer::Ignored);
    }
    if checksum(&ip[..ihl]) != 0 {
        return Err(Answer::BadChecksum);
    }
    // Fragments are not reassembled here.
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(Answer::Ignored);
    }
    Ok((ihl, total))
}

/// Whether a UDP datagram (header and payload) is the peer's "done".
fn is_done(udp: &[u8]) -> bool {
    udp.len() >= 8 && be16(udp, 2) == DONE_PORT && udp[8..].starts_with(DONE_MARK)
}

/// Whether `frame` is a peer's "done" datagram, to any address (what a capture stops on).
pub fn is_done_datagram(frame: &[u8]) -> bool {
    frame.len() >= ETH_HDR
        && be16(frame, 12) == ETHERTYPE_IPV4
        && ipv4_packet(frame, None).is_ok_and(|(ihl, total)| {
            frame[ETH_HDR + 9] == PROTO_UDP && is_done(&frame[ETH_HDR + ihl..ETH_HDR + total])
        })
}

fn ipv4(frame: &[u8], me: &Identity, out: &mut [u8]) -> Answer {
    let (ihl, total) = match ipv4_packet(frame, Some(me.ip)) {
        Ok(lengths) => lengths,
        Err(a) => return a,
    };
    let ip = &frame[ETH_HDR..];
    let len = ETH_HDR + total;
    let body = ihl..total;
    match ip[9] {
        PROTO_ICMP => {
            let icmp = &ip[body.clone()];
            // Any code, as Linux answers (busybox `ping -p` writes its pattern there too);
            // the reply keeps it.
            if icmp.len() < 8 || icmp[0] != 8 {
                return Answer::Ignored;
            }
            if checksum(icmp) != 0 {
                return Answer::BadChecksum;
            }
            reply_ip(frame, me, out, len, ihl);
            let o = &mut out[ETH_HDR + ihl..len];
            o[0] = 0; // echo reply
            o[2..4].fill(0);
            let c = checksum(o);
            o[2..4].copy_from_slice(&c.to_be_bytes());
            Answer::Icmp(pad(out, len))
        }
        PROTO_UDP => {
            let udp = &ip[body];
            if udp.len() < 8 {
                return Answer::Ignored;
            }
            if is_done(udp) {
                return Answer::Done;
            }
            if be16(udp, 2) != ECHO_PORT {
                return Answer::Ignored;
            }
            reply_ip(frame, me, out, len, ihl);
            // Swapping the ports and addresses leaves the UDP checksum (pseudo header
            // included) unchanged: the one's-complement sum does not depend on order.
            let o = &mut out[ETH_HDR + ihl..len];
            o[0..2].copy_from_slice(&udp[2..4]);
            o[2..4].copy_from_slice(&udp[0..2]);
            Answer::Udp(pad(out, len))
        }
        _ => Answer::Ignored,
    }
}

/// Copies the frame with the Ethernet and IPv4 addresses swapped, a fresh TTL and header
/// checksum.
fn reply_ip(frame: &[u8], me: &Identity, out: &mut [u8], len: usize, ihl: usize) {
    out[..len].copy_from_slice(&frame[..len]);
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&me.mac);
    let o = &mut out[ETH_HDR..ETH_HDR + ihl];
    o[12..16].copy_from_slice(&me.ip);
    o[16..20].copy_from_slice(&frame[ETH_HDR + 12..ETH_HDR + 16]);
    o[8] = 64;
    o[10..12].fill(0);
    let c = checksum(o);
    o[10..12].copy_from_slice(&c.to_be_bytes());
}

/// What the responder is asked to do.
#[derive(Clone, Debug)]
pub struct ResponderParams {
    pub me: Identity,
    /// Give up when nothing arrives for this long (the peer's "done" normally ends the run).
    pub limit: Duration,
}

/// What it did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    pub frames: u64,
    pub arp: u64,
    pub icmp: u64,
    pub udp: u64,
    pub ignored: u64,
    pub bad_checksum: u64,
}

/// The responder as a [`PacketApp`], so it runs on either NIC's I/O wrapper.
pub struct Responder {
    me: Identity,
    pub stats: ResponderStats,
    /// Raised by the peer's "done" datagram; the I/O loop stops on it.
    pub done: Arc<AtomicBool>,
}

impl Responder {
    pub fn new(me: Identity) -> Self {
        Responder { me, stats: ResponderStats::default(), done: Arc::new(AtomicBool::new(false)) }
    }
}

impl PacketApp for Responder {
    fn handle(&mut self, frame: &mut [u8], out: &mut Vec<u8>) -> Action {
        self.stats.frames += 1;
        out.clear();
        out.resize(2048, 0);
        let s = &mut self.stats;
        let n = match respond(frame, &self.me, out) {
            Answer::Arp(n) => {
                s.arp += 1;
                n
            }
            Answer::Icmp(n) => {
                s.icmp += 1;
                n
            }
            Answer::Udp(n) => {
                s.udp += 1;
                n
            }
            Answer::Done => {
                self.done.store(true, Ordering::Relaxed);
                return Action::Consume;
            }
            Answer::Ignored => {
                s.ignored += 1;
                return Action::Consume;
            }
            Answer::BadChecksum => {
                s.bad_checksum += 1;
                return Action::Consume;
            }
        };
        out.truncate(n);
        Action::Reply
    }
}

/// Runs the responder on the NIC `nic` ("enso": one fallback pipe; "packetized": one
/// queue pair) until the peer says it is done.
pub fn run(access: Box<dyn DeviceAccess>, params: ResponderParams, nic: &str) -> Report {
    let mut r = Report::new("responder", access.transport());
    r.value("nic", nic);
    let mut app = Responder::new(params.me);
    let limits = IoLimits { frames: None, idle: Some(params.limit), start_timeout: Some(params.limit) };
    let ready = || {
        crate::report::announce(serde_json::json!({"event": "ready", "scenario": "responder", "nic": nic}));
    };
    // The app's own flag is the loop's stop flag: "done" ends the run once the NIC is idle.
    let stop = app.done.clone();
    let res = serve_on(nic, access, &mut app, Serve::new(limits, &stop), ready);
    let s = &app.stats;
    match res {
        Ok(_) => {
            let done = app.done.load(Ordering::Relaxed);
            r.check("peer_done", done, format!("{} frames; the peer's done datagram seen: {done}", s.frames));
            r.check(
                "answered",
                s.arp + s.icmp + s.udp > 0,
                format!("arp {}, icmp {}, udp {}", s.arp, s.icmp, s.udp),
            );
        }
        Err(e) => r.fail("responder", e),
    }
    r.value("frames", s.frames);
    r.value("arp_replies", s.arp);
    r.value("icmp_replies", s.icmp);
    r.value("udp_replies", s.udp);
    r.value("ignored", s.ignored);
    r.value("bad_checksum", s.bad_checksum);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity { mac: [2, 0, 0, 0, 0, 2], ip: [10, 0, 0, 2] };
    const PEER_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const PEER_IP: [u8; 4] = [10, 0, 0, 1];

    fn eth(dst: [u8; 6], ty: u16) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ty.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, body: &[u8]) -> Vec<u8> {
        let mut f = eth(ME.mac, ETHERTYPE_IPV4);
        let total = (20 + body.len()) as u16;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&PEER_IP);
        h[16..20].copy_from_slice(&ME.ip);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(body);
        f
    }

    fn ping(payload: &[u8]) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7];
        icmp.extend_from_slice(payload);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(PROTO_ICMP, &icmp)
    }

    /// UDP with a checksum over the pseudo header.
    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = vec![];
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        let c = udp_checksum(&PEER_IP, &ME.ip, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        ipv4(PROTO_UDP, &u)
    }

    fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
        let mut p = src.to_vec();
        p.extend_from_slice(dst);
        p.extend_from_slice(&[0, PROTO_UDP]);
        p.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        p.extend_from_slice(udp);
        checksum(&p)
    }

    #[test]
    fn arp_request_for_us_gets_a_reply() {
        let mut f = eth([0xff; 6], ETHERTYPE_ARP);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&PEER_IP);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&ME.ip);
        let mut out = vec![0u8; 2048];
        assert_eq!(respond(&f, &ME, &mut out), Answer::Arp(60));
        assert_eq!(&out[0..6], &PEER_MAC);
        assert_eq!(&out[6..12], &ME.mac);
        assert_eq!(be16(&out, 20), 2, "ARP reply");
        assert_eq!(&out[22..28], &ME.mac);
        assert_eq!(&out[28..32], &ME.ip);
        assert_eq!(&out[32..38], &PEER_MAC);
        assert_eq!(&out[38..42], &PEER_IP);
        // For someone else: no answer.
        f[38..42].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(respond(&f, &ME, &mut out), Answer::Ignored);
    }

    #[test]
    fn ping_gets_an_echo_reply_with_valid_checksums() {
        let payload: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
        let f = ping(&payload);
        let mut out = vec![0u8; 2048];
        let Answer::Icmp(n) = respond(&f, &ME, &mut out) else { panic!("no reply") };
        assert_eq!(n, f.len());
        let o = &out[..n];
        assert_eq!(&o[0..6], &PEER_MAC);
        assert_eq!(&o[26..30], &ME.ip);
        assert_eq!(&o[30..34], &PEER_IP);
        assert_eq!(checksum(&o[14..34]), 0, "IPv4 header checksum");
        assert_eq!(o[34], 0, "echo reply");
        assert_eq!(checksum(&o[34..]), 0, "ICMP checksum");
        assert_eq!(&o[38..42], &f[38..42], "id and sequence kept");
        assert_eq!(&o[42..], &payload[..], "payload kept");
        // A request with a non-zero code is answered too, the code kept.
        let mut odd = ping(b"abc");
        odd[35] = 0xa5;
        odd[36..38].fill(0);
        let c = checksum(&odd[34..]);
        odd[36..38].copy_from_slice(&c.to_be_bytes());
        let Answer::Icmp(n) = respond(&odd, &ME, &mut out) else { panic!("no reply") };
        assert_eq!((out[34], out[35]), (0, 0xa5));
        assert_eq!(checksum(&out[34..14 + 20 + 11]), 0);
        assert!(n >= 60);
    }

    #[test]
    fn udp_echo_swaps_ports_and_keeps_the_checksum_valid() {
        let f = udp(40000, ECHO_PORT, b"hello over udp");
        let mut out = vec![0u8; 2048];
        let Answer::Udp(n) = respond(&f, &ME, &mut out) else { panic!("no echo") };
        assert_eq!(n, 60, "padded to the Ethernet minimum");
        let len = 14 + usize::from(be16(&out, 16));
        let u = &out[34..len];
        assert_eq!(be16(u, 0), ECHO_PORT);
        assert_eq!(be16(u, 2), 40000);
        assert_eq!(&u[8..], b"hello over udp");
        assert_eq!(udp_checksum(&ME.ip, &PEER_IP, u), 0, "UDP checksum still valid");
        assert_eq!(checksum(&out[14..34]), 0);
    }

    #[test]
    fn done_other_ports_bad_checksums_and_fragments() {
        let mut out = vec![0u8; 2048];
        assert_eq!(respond(&udp(5555, DONE_PORT, b"testbed:done\n"), &ME, &mut out), Answer::Done);
        // A capture stops on it whoever it is addressed to, but only on a valid one.
        let mut elsewhere = udp(5555, DONE_PORT, b"testbed:done\n");
        elsewhere[30..34].copy_from_slice(&[10, 0, 0, 9]);
        elsewhere[24..26].fill(0);
        let c = checksum(&elsewhere[14..34]);
        elsewhere[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(is_done_datagram(&elsewhere));
        assert_eq!(respond(&elsewhere, &ME, &mut out), Answer::Ignored);
        elsewhere[25] ^= 1;
        assert!(!is_done_datagram(&elsewhere), "bad checksum");
        assert!(!is_done_datagram(&udp(5555, DONE_PORT, b"other")));
        assert!(!is_done_datagram(&[0u8; 10]));
        assert_eq!(respond(&udp(5555, DONE_PORT, b"other"), &ME, &mut out), Answer::Ignored);
        assert_eq!(respond(&udp(5555, 53, b"dns?"), &ME, &mut out), Answer::Ignored);
        let mut bad = ping(b"x");
        bad[24] ^= 0xff; // IPv4 checksum
        assert_eq!(respond(&bad, &ME, &mut out), Answer::BadChecksum);
        let mut bad = ping(b"abcd");
        bad[45] ^= 1; // ICMP payload
        assert_eq!(respond(&bad, &ME, &mut out), Answer::BadChecksum);
        let mut frag = ping(b"abcd");
        frag[20] = 0x20; // MF
        frag[24..26].fill(0);
        let c = checksum(&frag[14..34]);
        frag[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(respond(&frag, &ME, &mut out), Answer::Ignored);
        assert_eq!(respond(&[0u8; 10], &ME, &mut out), Answer::Ignored, "runt");
        let mut short = ping(b"abcd");
        short[16..18].copy_from_slice(&900u16.to_be_bytes()); // total length past the frame
        assert_eq!(respond(&short, &ME, &mut out), Answer::Ignored);
    }
}
