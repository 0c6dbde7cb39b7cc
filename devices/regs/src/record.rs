//! The record: one item as it travels on the wire and between devices.
//!
//! ```text
//! offset size field
//!  0     4    len     payload bytes (little endian)
//!  4     4    seq     item number, end to end
//!  8     1    kind    KIND_SEALED | KIND_IMAGE | KIND_RESULT
//!  9     1    stream  the stream (tenant) the item belongs to
//! 10     2    zero
//! 12    12    nonce   AES-GCM nonce (sealed records; zero otherwise)
//! 24    16    tag     AES-GCM tag (sealed records; zero otherwise)
//! 40   len    payload
//! ```
//! A sealed record is authenticated over its first 12 bytes (associated data) and its
//! payload. On the wire a record is the UDP payload of an Ethernet/IPv4/UDP frame to port
//! [`UDP_PORT`]; accelerators see records only, never frames. Who strips and adds the
//! 42 header bytes is the one thing the modes differ in: with the CPU in the chain the
//! application does (it hands the record inside the received frame to the accelerator
//! and has the last accelerator write its output just after a header it prepared); in a
//! Nagare chain the NIC does, with a per-stream header template.

/// Header size.
pub const HEADER: usize = 40;
/// Offset of `len`.
pub const LEN: usize = 0;
/// Offset of `seq`.
pub const SEQ: usize = 4;
/// Offset of `kind`.
pub const KIND: usize = 8;
/// Offset of `stream`.
pub const STREAM: usize = 9;
/// Offset of the nonce.
pub const NONCE: usize = 12;
/// Offset of the tag.
pub const TAG: usize = 24;
/// Bytes covered as associated data by the seal.
pub const AAD: usize = 12;
/// An encrypted, authenticated image.
pub const KIND_SEALED: u8 = 1;
/// A plain image.
pub const KIND_IMAGE: u8 = 2;
/// An inference result.
pub const KIND_RESULT: u8 = 3;
/// UDP destination port of chain traffic.
pub const UDP_PORT: u16 = 7000;
/// Ethernet + IPv4 + UDP header bytes in front of a record on the wire.
pub const FRAME_HEADER: usize = 42;
/// Largest payload a record may carry.
pub const MAX_PAYLOAD: usize = 8192;

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload bytes.
    pub len: u32,
    /// Item number.
    pub seq: u32,
    /// Kind.
    pub kind: u8,
    /// Stream.
    pub stream: u8,
    /// Nonce.
    pub nonce: [u8; 12],
    /// Tag.
    pub tag: [u8; 16],
}

impl Header {
    /// Parses the header at the start of `b`; None when `b` is shorter than a header,
    /// `len` exceeds [`MAX_PAYLOAD`] or the reserved bytes are not zero.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let h = b.get(..HEADER)?;
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let len = u32_at(LEN);
        if len as usize > MAX_PAYLOAD || h[10] != 0 || h[11] != 0 {
            return None;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&h[NONCE..NONCE + 12]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&h[TAG..TAG + 16]);
        Some(Header { len, seq: u32_at(SEQ), kind: h[KIND], stream: h[STREAM], nonce, tag })
    }

    /// Writes the header into the first [`HEADER`] bytes of `b` (which must hold them).
    pub fn write(&self, b: &mut [u8]) {
        let h = &mut b[..HEADER];
        h[LEN..LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        h[SEQ..SEQ + 4].copy_from_slice(&self.seq.to_le_bytes());
        h[KIND] = self.kind;
        h[STREAM] = self.stream;
        h[10] = 0;
        h[11] = 0;
        h[NONCE..NONCE + 12].copy_from_slice(&self.nonce);
        h[TAG..TAG + 16].copy_from_slice(&self.tag);
    }

    /// Header plus payload bytes.
    pub fn record_len(&self) -> usize {
        HEADER + self.len as usize
    }
}

/// Bytes in a stream that do not parse as a record (the assembler dropped what it held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotARecord;

/// Cuts records out of a stream window (the window contract of `docs/nagare.md`): a
/// writer writes at its running offset modulo the window; a forward gap is padding, since
/// every record starts on a 64-byte boundary of the stream. The one home of that contract
/// for every device with a stream window (the NIC's TX window, the accelerators, the
/// switch's glue).
#[derive(Debug, Default, Clone)]
pub struct Assembler {
    /// Bytes accepted (the writer's running offset, padding included).
    in_off: u64,
    /// Stream offset of `pending[0]`.
    consumed: u64,
    pending: Vec<u8>,
}

impl Assembler {
    /// Accepts a write of `data` at window `offset` of a `window`-byte window: at or after
    /// the current end, less than half a window ahead, and fitting beside what is held.
    /// False (nothing taken) otherwise.
    pub fn accept(&mut self, offset: u64, data: &[u8], window: u64) -> bool {
        let w = window;
        let gap = (offset % w + w - self.in_off % w) % w;
        if gap >= w / 2 || self.pending.len() as u64 + gap + data.len() as u64 > w {
            return false;
        }
        self.pending.resize(self.pending.len() + gap as usize, 0);
        self.pending.extend_from_slice(data);
        self.in_off += gap + data.len() as u64;
        true
    }

    /// The next complete record and its stream offset; an error when the bytes at the
    /// next record boundary are not a record header (everything held is dropped).
    pub fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, NotARecord> {
        let skip = ((64 - self.consumed % 64) % 64) as usize;
        if self.pending.len() < skip + HEADER {
            return Ok(None);
        }
        let Some(h) = Header::parse(&self.pending[skip..]) else {
            self.consumed += self.pending.len() as u64;
            self.pending.clear();
            return Err(NotARecord);
        };
        let n = h.record_len();
        if self.pending.len() < skip + n {
            return Ok(None);
        }
        let at = self.consumed + skip as u64;
        let rec = self.pending[skip..skip + n].to_vec();
        self.pending.drain(..skip + n);
        self.consumed = at + n as u64;
        Ok(Some((at, rec)))
    }

    /// The writer's running offset (bytes accepted, padding included).
    pub fn offset(&self) -> u64 {
        self.in_off
    }

    /// Whether no accepted bytes wait.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops the bytes held, keeping the offsets (a stream turned off).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let h = Header { len: 784, seq: 7, kind: KIND_SEALED, stream: 2, nonce: [1; 12], tag: [2; 16] };
        let mut b = [0u8; HEADER];
        h.write(&mut b);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(h.record_len(), 824);
        assert_eq!(Header::parse(&b[..HEADER - 1]), None);
        b[10] = 1;
        assert_eq!(Header::parse(&b), None, "reserved bytes must be zero");
        b[10] = 0;
        b[LEN..LEN + 4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(Header::parse(&b), None, "oversized payload");
    }

    #[test]
    fn the_assembler_cuts_records_on_64_byte_boundaries() {
        let rec = |seq: u32, len: u32| {
            let mut b = vec![seq as u8; HEADER + len as usize];
            Header { len, seq, kind: KIND_IMAGE, stream: 0, nonce: [0; 12], tag: [0; 16] }.write(&mut b);
            b
        };
        let (a, b) = (rec(1, 50), rec(2, 10));
        let mut s = Assembler::default();
        assert!(s.accept(0, &a[..30], 4096));
        assert_eq!(s.next_record(), Ok(None), "incomplete");
        assert!(s.accept(30, &a[30..], 4096));
        assert!(s.accept(128, &b, 4096), "a forward gap is padding");
        assert_eq!(s.next_record(), Ok(Some((0, a))));
        assert_eq!(s.next_record(), Ok(Some((128, b))));
        assert_eq!(s.next_record(), Ok(None));
        assert_eq!(s.offset(), 128 + 50);
        assert!(!s.accept(5, &[0; 10], 4096), "behind the end: refused");
        assert!(!s.accept(178 + 2048, &[0; 10], 4096), "half a window ahead: refused");
        assert!(!s.accept(178, &vec![0; 4097], 4096), "larger than the window: refused");
        assert!(s.accept(192, &[0xff; 64], 4096));
        assert_eq!(s.next_record(), Err(NotARecord));
        assert!(s.is_empty(), "the bad bytes are dropped");
    }
}
