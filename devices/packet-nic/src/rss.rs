//! RSS on the hot path: the Toeplitz hash of `testbed_regs::packetized::toeplitz`, as one
//! table lookup per input byte (the table is rebuilt when software changes the key).

use testbed_regs::packetized::{key_window, rss_input, RSS_KEY_LEN};

/// Bytes of the longest hash input (IPv4 addresses and ports).
const INPUT: usize = 12;

/// A Toeplitz hash precomputed for one key.
pub struct Rss {
    /// `table[i][b]`: the hash contribution of byte value `b` at input position `i`.
    table: Box<[[u32; 256]; INPUT]>,
}

impl Rss {
    /// The table for `key`.
    pub fn new(key: &[u8; RSS_KEY_LEN]) -> Self {
        let mut rss = Rss { table: Box::new([[0; 256]; INPUT]) };
        rss.set_key(key);
        rss
    }

    /// Rebuilds the table for `key`.
    pub fn set_key(&mut self, key: &[u8; RSS_KEY_LEN]) {
        for (i, row) in self.table.iter_mut().enumerate() {
            let windows: [u32; 8] = std::array::from_fn(|bit| key_window(key, i * 8 + bit));
            for (b, v) in row.iter_mut().enumerate() {
                *v = (0..8).filter(|bit| b & (0x80 >> bit) != 0).fold(0, |h, bit| h ^ windows[bit]);
            }
        }
    }

    /// The frame's RSS hash (0 for frames RSS does not hash).
    #[inline]
    pub fn hash(&self, frame: &[u8]) -> u32 {
        let mut input = [0u8; INPUT];
        let n = rss_input(frame, &mut input);
        input[..n].iter().zip(self.table.iter()).fold(0, |h, (&b, row)| h ^ row[b as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_regs::packetized::{toeplitz, RSS_KEY_DEFAULT};

    #[test]
    fn table_matches_the_reference() {
        let mut key = RSS_KEY_DEFAULT;
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 6;
        for round in 0..3u8 {
            let rss = Rss::new(&key);
            for i in 0..50u8 {
                f[26..38]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(k, b)| *b = i.wrapping_mul(31).wrapping_add(k as u8));
                let mut input = [0u8; 12];
                let n = rss_input(&f, &mut input);
                assert_eq!(rss.hash(&f), toeplitz(&key, &input[..n]));
            }
            key[round as usize] ^= 0x5a;
        }
    }
}
