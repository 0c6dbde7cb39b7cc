//! Header parsing the datapath needs: the RX flow key and the TX frame length.
//! Everything is bounds-checked; malformed input yields `None`, never a panic.

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
/// An ARP frame for IPv4 over Ethernet.
const ARP_LEN: usize = 42;
/// The Ethernet minimum without FCS: ARP frames padded to it are sent padded.
const ETH_MIN: usize = 60;

/// The demux key, in host order (upstream's `{src IP, dst IP, src port, dst port}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The lookup key of a received frame with upstream's quirks: TCP SYN and UDP look up
/// with src IP = src port = 0; other IPv4 protocols with the destination IP only. `None`
/// for frames that are not IPv4 (they go straight to the fallback queues).
pub fn rx_flow_key(frame: &[u8]) -> Option<FlowKey> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ihl = (*frame.get(ETH_HDR)? as usize & 0xf) * 4;
    if ihl < 20 {
        return None;
    }
    let proto = *frame.get(ETH_HDR + 9)?;
    let src_ip = be32(frame, ETH_HDR + 12)?;
    let dst_ip = be32(frame, ETH_HDR + 16)?;
    let l4 = ETH_HDR + ihl;
    match proto {
        PROTO_TCP => {
            let (src_port, dst_port) = (be16(frame, l4)?, be16(frame, l4 + 2)?);
            let flags = *frame.get(l4 + 13)?;
            if flags & TCP_SYN != 0 {
                Some(FlowKey { src_ip: 0, dst_ip, src_port: 0, dst_port })
            } else {
                Some(FlowKey { src_ip, dst_ip, src_port, dst_port })
            }
        }
        PROTO_UDP => Some(FlowKey { src_ip: 0, dst_ip, src_port: 0, dst_port: be16(frame, l4 + 2)? }),
        _ => Some(FlowKey { dst_ip, ..FlowKey::default() }),
    }
}

/// What the TX framer can tell about the frame starting at `data[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFrame {
    /// A whole frame of this many bytes is in `data`.
    Complete(usize),
    /// The frame continues past the end of `data` (or its header does): wait for the
    /// next transfer of the stream.
    Partial,
    /// Not a frame the TX path can delimit (unknown ethertype, bad or oversized length).
    Invalid,
}

/// Largest frame the TX path accepts.
pub const MAX_TX_FRAME: usize = testbed_regs::enso::MAX_RX_PACKET;

/// Delimits the frame at the start of `data`, which may be cut short by the end of a
/// transfer (TX is a byte stream: a frame may continue in the next transfer).
pub fn tx_frame(data: &[u8]) -> TxFrame {
    if data.len() < ETH_HDR + 6 {
        // Not enough for the ethertype and the IP length fields yet.
        return match be16(data, 12) {
            Some(t) if t != ETHERTYPE_IPV4 && t != ETHERTYPE_IPV6 && t != ETHERTYPE_ARP => TxFrame::Invalid,
            _ => TxFrame::Partial,
        };
    }
    let len = match be16(data, 12) {
        Some(ETHERTYPE_IPV4) => match be16(data, ETH_HDR + 2) {
            Some(total) if total >= 20 => total as usize + ETH_HDR,
            _ => return TxFrame::Invalid,
        },
        Some(ETHERTYPE_IPV6) => match be16(data, ETH_HDR + 4) {
            Some(p) => p as usize + ETH_HDR + 40,
            None => return TxFrame::Partial,
        },
        Some(ETHERTYPE_ARP) => data.len().clamp(ARP_LEN, ETH_MIN),
        _ => return TxFrame::Invalid,
    };
    if len > MAX_TX_FRAME {
        TxFrame::Invalid
    } else if len <= data.len() {
        TxFrame::Complete(len)
    } else {
        TxFrame::Partial
    }
}

/// The length of the frame starting at `data[0]` in a TX transfer, or `None` when it
/// cannot be parsed or runs past the end of `data`. IPv4: total length + 14; IPv6:
/// payload length + 54; ARP: 42 bytes (60 when the transfer holds the padding).
pub fn tx_frame_len(data: &[u8]) -> Option<usize> {
    let len = match be16(data, 12)? {
        ETHERTYPE_IPV4 => {
            let total = be16(data, ETH_HDR + 2)? as usize;
            if total < 20 {
                return None;
            }
            total + ETH_HDR
        }
        ETHERTYPE_IPV6 => be16(data, ETH_HDR + 4)? as usize + ETH_HDR + 40,
        ETHERTYPE_ARP => data.len().clamp(ARP_LEN, ETH_MIN),
        _ => return None,
    };
    (len <= data.len()).then_some(len)
}

/// Test helpers: build frames.
#[cfg(test)]
pub mod build {
    /// An IPv4 frame of `len` bytes (≥ 42 for UDP, ≥ 54 for TCP) with the given header
    /// fields; `proto` 6 (TCP, `tcp_flags`) or 17 (UDP) or anything else.
    pub fn ipv4(len: usize, proto: u8, src: u32, dst: u32, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = proto;
        f[26..30].copy_from_slice(&src.to_be_bytes());
        f[30..34].copy_from_slice(&dst.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 && len > 47 {
            f[47] = tcp_flags;
        }
        for (i, b) in f.iter_mut().enumerate().skip(54) {
            *b = i as u8;
        }
        f
    }

    /// A UDP frame of `len` bytes to `dst:dport`.
    pub fn udp(len: usize, dst: u32, dport: u16) -> Vec<u8> {
        ipv4(len, 17, 0x0a00_0001, dst, 1234, dport, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn keys_follow_upstream_quirks() {
        let tcp = ipv4(64, 6, 1, 2, 10, 20, 0x10);
        assert_eq!(rx_flow_key(&tcp), Some(FlowKey { src_ip: 1, dst_ip: 2, src_port: 10, dst_port: 20 }));
        let syn = ipv4(64, 6, 1, 2, 10, 20, 0x02);
        assert_eq!(rx_flow_key(&syn), Some(FlowKey { src_ip: 0, dst_ip: 2, src_port: 0, dst_port: 20 }));
        let udp = ipv4(64, 17, 1, 2, 10, 20, 0);
        assert_eq!(rx_flow_key(&udp), Some(FlowKey { src_ip: 0, dst_ip: 2, src_port: 0, dst_port: 20 }));
        let icmp = ipv4(64, 1, 1, 2, 10, 20, 0);
        assert_eq!(rx_flow_key(&icmp), Some(FlowKey { dst_ip: 2, ..Default::default() }));
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(rx_flow_key(&arp), None);
        assert_eq!(rx_flow_key(&tcp[..30]), None, "truncated");
        assert_eq!(rx_flow_key(&[]), None);
    }

    #[test]
    fn tx_lengths() {
        let f = udp(100, 2, 3);
        assert_eq!(tx_frame_len(&f), Some(100));
        assert_eq!(tx_frame_len(&f[..99]), None, "runs past the transfer");
        let mut arp = vec![0u8; 64];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(tx_frame_len(&arp), Some(60));
        assert_eq!(tx_frame_len(&arp[..42]), Some(42));
        assert_eq!(tx_frame_len(&arp[..41]), None);
        let mut v6 = vec![0u8; 80];
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        v6[18..20].copy_from_slice(&26u16.to_be_bytes());
        assert_eq!(tx_frame_len(&v6), Some(80));
        assert_eq!(tx_frame_len(&[0u8; 64]), None, "unknown ethertype");
        assert_eq!(tx_frame_len(&[0u8; 5]), None);
    }
}
