//! DMA memory at the alignment the device needs.

use crate::{Error, Result};
use device_access::{DeviceAccess, DmaBuffer, DmaOptions};

/// 2 MiB: pipe buffers and notification rings must start on this boundary (the low bits of
/// `rx_mem_low` carry the pair ID and the enable bit).
pub(crate) const ALIGN: u64 = 2 << 20;

/// Allocates `len` bytes whose IOVA is [`ALIGN`]-aligned, whether or not huge pages back
/// them; a transport that ignores the requested alignment is caught here.
pub(crate) fn alloc_aligned(
    access: &mut dyn DeviceAccess,
    len: usize,
    opts: DmaOptions,
) -> Result<DmaBuffer> {
    let buf = access.alloc_dma(len, DmaOptions { iova_align: ALIGN, ..opts })?;
    if buf.iova() & (ALIGN - 1) != 0 {
        return Err(Error::Misaligned { iova: buf.iova(), align: ALIGN });
    }
    Ok(buf)
}
