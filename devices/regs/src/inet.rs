//! Ethernet/IPv4/UDP headers as the devices, the drivers and the host tools build and
//! check them: the one home of the Internet checksum and of the length fields.

/// Ethernet header bytes.
pub const ETH_HDR: usize = 14;
/// The IPv4 header (no options) inside a frame.
pub const IPV4: std::ops::Range<usize> = ETH_HDR..ETH_HDR + 20;
/// Offset of the UDP header in a frame whose IPv4 header has no options.
pub const UDP: usize = IPV4.end;
/// Ethernet + IPv4 + UDP header bytes.
pub const UDP_FRAME_HEADER: usize = UDP + 8;

/// The Internet checksum (RFC 1071) of `data`; an odd last byte counts as a high byte.
/// Over a header whose checksum field is filled in, a valid header sums to zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u32 = chunks.by_ref().map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of `frame` (an Ethernet frame with an option-less
/// IPv4 header).
pub fn set_ipv4_checksum(frame: &mut [u8]) {
    frame[IPV4.start + 10..IPV4.start + 12].fill(0);
    let c = checksum(&frame[IPV4]);
    frame[IPV4.start + 10..IPV4.start + 12].copy_from_slice(&c.to_be_bytes());
}

/// Sets the IPv4 total length and the UDP length of `frame` for `payload` UDP payload
/// bytes, clears the UDP checksum (none, as with checksum offload) and recomputes the
/// IPv4 header checksum.
pub fn set_udp_lengths(frame: &mut [u8], payload: usize) {
    frame[IPV4.start + 2..IPV4.start + 4].copy_from_slice(&((20 + 8 + payload) as u16).to_be_bytes());
    frame[UDP + 4..UDP + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    frame[UDP + 6..UDP + 8].fill(0);
    set_ipv4_checksum(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 1071 section 3 (the one's complement sum of these words
    /// is 0xddf2).
    #[test]
    fn rfc1071_example_and_odd_length() {
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&words), !0xddf2);
        assert_eq!(checksum(&[0xab]), !0xab00, "an odd byte is the high byte of a word");
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn a_filled_in_header_sums_to_zero_and_a_changed_byte_shows() {
        let mut f = vec![0u8; UDP_FRAME_HEADER + 5];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[IPV4.start] = 0x45;
        f[IPV4.start + 8] = 64;
        f[IPV4.start + 9] = 17;
        f[IPV4.start + 12..IPV4.start + 20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f[UDP + 6] = 0x55;
        set_udp_lengths(&mut f, 5);
        assert_eq!(checksum(&f[IPV4]), 0);
        assert_eq!(&f[IPV4.start + 2..IPV4.start + 4], &[0, 33]);
        assert_eq!(&f[UDP + 4..UDP + 8], &[0, 13, 0, 0]);
        f[IPV4.start + 8] = 63;
        assert_ne!(checksum(&f[IPV4]), 0);
    }
}
