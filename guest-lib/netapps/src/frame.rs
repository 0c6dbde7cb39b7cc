//! Ethernet/IPv4/UDP/TCP parsing and the few rewrites the apps need.

use testbed_regs::inet;

/// Ethernet + IPv4 (no options) header bytes.
pub const L4: usize = inet::UDP;

/// A flow's 5-tuple (addresses and ports in host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FiveTuple {
    /// The tuple of an IPv4 TCP or UDP frame (None for anything else).
    pub fn parse(f: &[u8]) -> Option<FiveTuple> {
        if f.len() < L4 + 4 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 {
            return None;
        }
        let proto = f[23];
        if proto != 6 && proto != 17 {
            return None;
        }
        let u32_at = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
        let u16_at = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
        Some(FiveTuple {
            src_ip: u32_at(26),
            dst_ip: u32_at(30),
            src_port: u16_at(L4),
            dst_port: u16_at(L4 + 2),
            proto,
        })
    }

    /// A 64-bit hash of the tuple (FNV-1a over its fields, then a finalizer).
    pub fn hash(&self, seed: u64) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&self.src_ip.to_be_bytes());
        eat(&self.dst_ip.to_be_bytes());
        eat(&self.src_port.to_be_bytes());
        eat(&self.dst_port.to_be_bytes());
        eat(&[self.proto]);
        mix(h)
    }
}

/// A 64-bit finalizer (splitmix64's).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rewrites the destination MAC and IPv4 address (fixing the IPv4 checksum; UDP/TCP
/// checksums are left as the sender computed them, as with checksum offload).
pub fn rewrite_destination(f: &mut [u8], mac: [u8; 6], ip: u32) {
    f[0..6].copy_from_slice(&mac);
    f[30..34].copy_from_slice(&ip.to_be_bytes());
    inet::set_ipv4_checksum(f);
}

/// Writes into `out` a UDP reply to request frame `req` carrying `payload`: addresses and
/// ports swapped, lengths and IPv4 checksum set.
pub fn udp_reply(req: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&req[..L4 + 8]);
    out.extend_from_slice(payload);
    let (a, b) = out.split_at_mut(6);
    a.swap_with_slice(&mut b[..6]);
    let mut ips = [0u8; 8];
    ips.copy_from_slice(&out[26..34]);
    out[26..30].copy_from_slice(&ips[4..8]);
    out[30..34].copy_from_slice(&ips[0..4]);
    let mut ports = [0u8; 4];
    ports.copy_from_slice(&out[L4..L4 + 4]);
    out[L4..L4 + 2].copy_from_slice(&ports[2..4]);
    out[L4 + 2..L4 + 4].copy_from_slice(&ports[0..2]);
    inet::set_udp_lengths(out, payload.len());
}

/// Builds an Ethernet/IPv4/UDP frame (for tests and generators).
pub fn udp_frame(t: &FiveTuple, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; L4 + 8 + payload.len()];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = t.proto;
    f[26..30].copy_from_slice(&t.src_ip.to_be_bytes());
    f[30..34].copy_from_slice(&t.dst_ip.to_be_bytes());
    f[L4..L4 + 2].copy_from_slice(&t.src_port.to_be_bytes());
    f[L4 + 2..L4 + 4].copy_from_slice(&t.dst_port.to_be_bytes());
    inet::set_udp_lengths(&mut f, payload.len());
    f[L4 + 8..].copy_from_slice(payload);
    f
}

/// A Zipf(s) sampler over `0..n` (inverse CDF over precomputed weights; ranks 0 = most
/// popular), driven by a deterministic generator.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    /// `n` items with exponent `s`, seeded.
    pub fn new(n: usize, s: f64, seed: u64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        let total = acc;
        cdf.iter_mut().for_each(|c| *c /= total);
        Zipf { cdf, state: seed }
    }

    /// The next rank.
    pub fn next_rank(&mut self) -> usize {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let u = (mix(self.state) >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rewrite_and_reply() {
        let t =
            FiveTuple { src_ip: 0x0a00_0002, dst_ip: 0x0a01_0001, src_port: 5000, dst_port: 80, proto: 17 };
        let mut f = udp_frame(&t, b"hello");
        assert_eq!(FiveTuple::parse(&f), Some(t));
        assert_eq!(inet::checksum(&f[inet::IPV4]), 0);
        rewrite_destination(&mut f, [9; 6], 0x0b00_0001);
        assert_eq!(FiveTuple::parse(&f).unwrap().dst_ip, 0x0b00_0001);
        assert_eq!(inet::checksum(&f[inet::IPV4]), 0, "checksum fixed");
        let mut r = Vec::new();
        udp_reply(&f, b"world!", &mut r);
        let rt = FiveTuple::parse(&r).unwrap();
        assert_eq!((rt.src_ip, rt.dst_ip, rt.src_port, rt.dst_port), (0x0b00_0001, t.src_ip, 80, 5000));
        assert_eq!(&r[L4 + 8..], b"world!");
        assert_eq!(inet::checksum(&r[inet::IPV4]), 0);
        assert_eq!(FiveTuple::parse(&f[..20]), None);
    }

    #[test]
    fn zipf_is_skewed() {
        let mut z = Zipf::new(1000, 1.1, 7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.next_rank()] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        assert!(counts[0] > 10_000, "rank 0 gets a large share: {}", counts[0]);
    }
}
