//! DMA memory at the alignment the device needs.

use crate::{Error, Result};
use device_access::{DeviceAccess, DmaBuffer, DmaOptions};

/// 2 MiB: pipe buffers and notification rings must start on this boundary (the low bits of
/// `rx_mem_low` carry the pair ID and the enable bit).
pub(crate) const ALIGN: u64 = 2 << 20;

/// Allocates `len` bytes whose IOVA is [`ALIGN`]-aligned. With huge pages the transports
/// align by themselves; on 4 KiB pages (no huge pages configured) they align to 4 KiB
/// only, so we pad their (bump) IOVA allocators up to the next boundary and retry.
pub(crate) fn alloc_aligned(
    access: &mut dyn DeviceAccess,
    len: usize,
    opts: DmaOptions,
) -> Result<DmaBuffer> {
    let mut last = 0;
    for _ in 0..4 {
        let buf = access.alloc_dma(len, opts)?;
        if buf.iova() & (ALIGN - 1) == 0 {
            return Ok(buf);
        }
        last = buf.iova();
        let next = buf.iova() + buf.len() as u64;
        drop(buf);
        let pad = (ALIGN - next % ALIGN) % ALIGN;
        if pad > 0 {
            drop(access.alloc_dma(pad as usize, DmaOptions::default())?);
        }
    }
    Err(Error::Misaligned { iova: last, align: ALIGN })
}
