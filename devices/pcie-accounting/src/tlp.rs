//! The TLP rules: how a DMA operation splits into TLPs and what each costs on the link
//! (see the crate documentation for the sources).

use serde::Serialize;
use thiserror::Error;

/// The 4 KiB boundary no request may cross.
pub const PAGE: u64 = 4096;
/// Overhead of a memory write or read request with a 64-bit address: 16 B header + 8 B
/// of framing, sequence number and LCRC.
pub const REQUEST_OVERHEAD: u64 = 24;
/// Overhead of a completion: 12 B header + 8 B of framing, sequence number and LCRC.
pub const COMPLETION_OVERHEAD: u64 = 20;
/// Data bytes of an MSI-X message.
pub const MSIX_BYTES: u64 = 4;

/// A [`LinkConfig`] or [`TlpRules`] value the model does not accept.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LinkConfigError {
    #[error("PCIe generation {0} is not one of 1..=6")]
    Gen(u8),
    #[error("{0} lanes is not one of 1, 2, 4, 8, 12, 16, 32")]
    Lanes(u8),
    #[error("max payload size {0} is not a power of two in 128..=4096")]
    MaxPayload(u32),
    #[error("max read request size {0} is not a power of two in 128..=4096")]
    MaxReadRequest(u32),
    #[error("read completion boundary {0} is not 64 or 128")]
    ReadCompletionBoundary(u32),
    #[error("one-way latency {0} ns is not a finite non-negative number")]
    Latency(f64),
}

/// The settings that decide how DMA operations split into TLPs. Fixed per [`Counters`]
/// (TLPs are counted when the operation is recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TlpRules {
    /// Max payload size (bytes per memory write or completion).
    pub max_payload: u32,
    /// Max read request size.
    pub max_read_request: u32,
    /// Read completion boundary of the root complex.
    pub read_completion_boundary: u32,
}

impl Default for TlpRules {
    fn default() -> Self {
        TlpRules { max_payload: 256, max_read_request: 512, read_completion_boundary: 64 }
    }
}

fn pow2_in(v: u32, lo: u32, hi: u32) -> bool {
    v.is_power_of_two() && (lo..=hi).contains(&v)
}

/// `ceil(x / 2^shift)`.
#[inline]
fn ceil_shift(x: u64, shift: u32) -> u64 {
    (x >> shift) + u64::from(x & ((1 << shift) - 1) != 0)
}

/// Pieces of `[addr, addr + len)` cut at 4 KiB boundaries and then every `2^shift` bytes
/// from the start of each 4 KiB piece (`2^shift <= 4096`).
#[inline]
fn split_count(addr: u64, len: u64, shift: u32) -> u64 {
    if len == 0 {
        return 0;
    }
    let first = (PAGE - (addr & (PAGE - 1))).min(len);
    let rest = len - first;
    ceil_shift(first, shift) + ((rest >> 12) << (12 - shift)) + ceil_shift(rest & (PAGE - 1), shift)
}

/// Dword padding of a transfer of `len` bytes at `addr` (0 for an empty transfer).
#[inline]
pub fn dw_padding(addr: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let span = (addr & 3) + len;
    span.next_multiple_of(4) - len
}

impl TlpRules {
    /// Rules with these sizes, checked.
    pub fn new(
        max_payload: u32,
        max_read_request: u32,
        read_completion_boundary: u32,
    ) -> Result<Self, LinkConfigError> {
        if !pow2_in(max_payload, 128, 4096) {
            return Err(LinkConfigError::MaxPayload(max_payload));
        }
        if !pow2_in(max_read_request, 128, 4096) {
            return Err(LinkConfigError::MaxReadRequest(max_read_request));
        }
        if !matches!(read_completion_boundary, 64 | 128) {
            return Err(LinkConfigError::ReadCompletionBoundary(read_completion_boundary));
        }
        Ok(TlpRules { max_payload, max_read_request, read_completion_boundary })
    }

    /// Bytes per completion: `min(RCB, MPS)`.
    pub fn completion_size(&self) -> u32 {
        self.read_completion_boundary.min(self.max_payload)
    }

    /// Memory-write TLPs of a DMA write of `len` bytes at `addr`.
    #[inline]
    pub fn write_tlps(&self, addr: u64, len: u64) -> u64 {
        split_count(addr, len, self.max_payload.trailing_zeros())
    }

    /// Read-request TLPs of a DMA read of `len` bytes at `addr`.
    #[inline]
    pub fn read_requests(&self, addr: u64, len: u64) -> u64 {
        split_count(addr, len, self.max_read_request.trailing_zeros())
    }

    /// Completion TLPs answering a DMA read of `len` bytes at `addr`.
    ///
    /// The completion-size blocks the range touches, plus one per request boundary that
    /// falls inside a block. Requests after the first 4 KiB piece start on 4 KiB
    /// boundaries, and all request starts of the first piece are congruent to `addr`
    /// modulo the completion size (which divides MRRS), so only the first piece's inner
    /// request boundaries can split a block, and they all do iff `addr` is unaligned.
    #[inline]
    pub fn read_completions(&self, addr: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let c = u64::from(self.completion_size());
        let off = addr & (c - 1);
        let blocks = (off + len).div_ceil(c);
        if off == 0 {
            return blocks;
        }
        let first = (PAGE - (addr & (PAGE - 1))).min(len);
        blocks + ceil_shift(first, self.max_read_request.trailing_zeros()) - 1
    }
}
