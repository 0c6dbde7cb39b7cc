//! Packets inside a batch of received (or to-be-sent) bytes: each packet starts on a
//! 64-byte boundary and its length is its IPv4 total length + 14, the rule the device
//! uses on both RX and TX.

use crate::ring::round_up_to_flit;

/// Ethernet header length.
pub const ETH_HEADER: usize = 14;
/// Offset of the IPv4 total-length field in an Ethernet frame.
const IPV4_TOTAL_LEN: usize = ETH_HEADER + 2;
/// Smallest IPv4 header.
const IPV4_MIN_HEADER: usize = 20;

/// Ethertypes whose length rule differs from IPv4's.
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// An ARP frame for IPv4 over Ethernet (without the padding to 60 bytes).
const ARP_LEN: usize = 42;

/// Length of the frame starting at `buf[0]`, if `buf` holds the whole frame: the IPv4
/// total length + 14, as the device delimits frames; for ARP 42 bytes and for IPv6 the
/// payload length + 54, as the device's TX path does (a host stack needs ARP).
#[inline]
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let ty = [*buf.get(12)?, *buf.get(13)?];
    let len = match ty {
        ETHERTYPE_ARP => ARP_LEN,
        ETHERTYPE_IPV6 => {
            let p = u16::from_be_bytes([*buf.get(ETH_HEADER + 4)?, *buf.get(ETH_HEADER + 5)?]) as usize;
            p + ETH_HEADER + 40
        }
        _ => {
            let hi = *buf.get(IPV4_TOTAL_LEN)?;
            let lo = *buf.get(IPV4_TOTAL_LEN + 1)?;
            let total = u16::from_be_bytes([hi, lo]) as usize;
            if total < IPV4_MIN_HEADER {
                return None;
            }
            total + ETH_HEADER
        }
    };
    (len <= buf.len()).then_some(len)
}

/// Iterator over the packets in a received slice. Stops at the end or at the first frame
/// that is malformed or incomplete; [`PacketIter::consumed`] tells how many bytes (whole
/// flits) the yielded packets covered, what to confirm or send.
#[derive(Clone, Debug)]
pub struct PacketIter<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> PacketIter<'a> {
    /// Packets of `buf`, the first at `buf[0]`.
    pub fn new(buf: &'a [u8]) -> Self {
        PacketIter { buf, off: 0 }
    }

    /// Bytes (a multiple of 64, capped at the slice length) covered by the packets
    /// yielded so far.
    pub fn consumed(&self) -> usize {
        self.off.min(self.buf.len())
    }

    /// Bytes not yet walked.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.consumed()
    }
}

impl<'a> Iterator for PacketIter<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.off..)?;
        let len = frame_len(rest)?;
        self.off += round_up_to_flit(len);
        Some(&rest[..len])
    }
}

/// Mutable counterpart of [`PacketIter`], for in-place edits before an echo.
#[derive(Debug)]
pub struct PacketIterMut<'a> {
    buf: &'a mut [u8],
    consumed: usize,
}

impl<'a> PacketIterMut<'a> {
    /// Packets of `buf`, the first at `buf[0]`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        PacketIterMut { buf, consumed: 0 }
    }

    /// As [`PacketIter::consumed`].
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a> Iterator for PacketIterMut<'a> {
    type Item = &'a mut [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a mut [u8]> {
        let len = frame_len(self.buf)?;
        let step = round_up_to_flit(len).min(self.buf.len());
        let buf = std::mem::take(&mut self.buf);
        let (pkt, rest) = buf.split_at_mut(step);
        self.buf = rest;
        self.consumed += step;
        Some(&mut pkt[..len])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP frame of `len` bytes (len >= 42) with a recognizable payload.
    pub(crate) fn frame(len: usize, tag: u8) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12] = 0x08; // IPv4 ethertype
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - ETH_HEADER) as u16).to_be_bytes());
        f[23] = 17; // UDP
        for (i, b) in f[42..].iter_mut().enumerate() {
            *b = tag.wrapping_add(i as u8);
        }
        f
    }

    /// Frames laid out as the device writes them: each on a 64-byte boundary.
    pub(crate) fn batch(lens: &[usize]) -> Vec<u8> {
        let mut b = vec![];
        for (i, &l) in lens.iter().enumerate() {
            b.extend_from_slice(&frame(l, i as u8));
            b.resize(round_up_to_flit(b.len()), 0xee);
        }
        b
    }

    #[test]
    fn several_packets() {
        let lens = [60, 64, 65, 1514, 128, 42];
        let b = batch(&lens);
        let mut it = PacketIter::new(&b);
        let got: Vec<usize> = it.by_ref().map(|p| p.len()).collect();
        assert_eq!(got, lens);
        assert_eq!(it.consumed(), b.len());
        assert_eq!(it.remaining(), 0);
        let expect: usize = lens.iter().map(|&l| round_up_to_flit(l)).sum();
        assert_eq!(b.len(), expect);
    }

    #[test]
    fn packet_ending_exactly_on_flit_boundary() {
        // 128 bytes = 2 flits exactly: the next packet starts right after, no padding.
        let b = batch(&[128, 64, 60]);
        assert_eq!(b.len(), 128 + 64 + 64);
        let p: Vec<&[u8]> = PacketIter::new(&b).collect();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].len(), 128);
        assert_eq!(p[1].as_ptr() as usize - b.as_ptr() as usize, 128);
        assert_eq!(p[1][42], 1, "second frame's payload");
        assert_eq!(p[2].as_ptr() as usize - b.as_ptr() as usize, 192);
    }

    #[test]
    fn stops_at_incomplete_or_malformed() {
        let mut b = batch(&[100, 200]);
        let cut = b.len() - 64;
        let mut it = PacketIter::new(&b[..cut]);
        assert_eq!(it.next().map(|p| p.len()), Some(100));
        assert!(it.next().is_none(), "second frame is cut");
        assert_eq!(it.consumed(), 128);
        b[16] = 0;
        b[17] = 3; // total length below an IPv4 header
        assert_eq!(PacketIter::new(&b).count(), 0);
        assert_eq!(PacketIter::new(&[]).count(), 0);
        assert_eq!(PacketIter::new(&[0u8; 10]).count(), 0);
    }

    #[test]
    fn arp_and_ipv6_frames_between_ipv4_ones() {
        let mut b = batch(&[100]);
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[16..18].copy_from_slice(&[0x08, 0x00]); // ptype: not a length
        b.extend_from_slice(&arp);
        b.resize(round_up_to_flit(b.len()), 0);
        let mut v6 = vec![0u8; 54 + 30];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[18..20].copy_from_slice(&30u16.to_be_bytes());
        b.extend_from_slice(&v6);
        b.resize(round_up_to_flit(b.len()), 0);
        b.extend_from_slice(&frame(70, 9));
        let lens: Vec<usize> = PacketIter::new(&b).map(|p| p.len()).collect();
        assert_eq!(lens, [100, 42, 84, 70]);
    }

    #[test]
    fn mutable_iteration_edits_in_place() {
        let mut b = batch(&[60, 100, 64]);
        let mut it = PacketIterMut::new(&mut b);
        let mut n = 0;
        for p in it.by_ref() {
            p[42] = p[42].wrapping_add(1);
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(it.consumed(), 64 + 128 + 64);
        let p: Vec<&[u8]> = PacketIter::new(&b).collect();
        assert_eq!((p[0][42], p[1][42], p[2][42]), (1, 2, 3));
    }
}
