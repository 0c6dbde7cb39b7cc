//! The vfio-user client transport: the same driver, run natively on the host against the
//! device server's socket. DMA memory is our own memfd, mapped into the server with
//! DMA_MAP; shared-memory BARs are mmap'd from the fds the server offers.

use crate::bar::{Bar, Mapping, RegionIo};
use crate::mem::{DmaBuffer, DmaMapper, DmaUnmap, SharedMem, HUGE_PAGE, PAGE};
use crate::{DeviceAccess, DmaOptions, Error, Interrupt, Result};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vfio_bindings::bindings::vfio::*;

/// First IOVA handed out; the range above it is ours (there is no IOMMU to consult).
const IOVA_BASE: u64 = 0x1_0000_0000;

struct Shared {
    client: Mutex<vfio_user::Client>,
}

impl Shared {
    fn client(&self) -> std::sync::MutexGuard<'_, vfio_user::Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RegionIo for Shared {
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        self.client().region_read(index, offset, data).map_err(|e| Error::VfioUser(e.to_string()))
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.client().region_write(index, offset, data).map_err(|e| Error::VfioUser(e.to_string()))
    }
}

impl DmaUnmap for Shared {
    fn unmap(&self, iova: u64, len: usize) {
        let _ = self.client().dma_unmap(iova, len as u64);
    }
}

impl DmaMapper for Shared {
    fn map(&self, mem: &SharedMem, iova: u64) -> Result<()> {
        self.client()
            .dma_map(0, iova, mem.len() as u64, mem.fd())
            .map_err(|e| Error::VfioUser(format!("DMA_MAP {iova:#x}: {e}")))
    }
}

/// A device reached over a vfio-user socket.
pub struct VfioUserDevice {
    shared: Arc<Shared>,
    bars: Vec<Option<Bar>>,
    next_iova: u64,
    peers: Vec<Arc<dyn DmaMapper>>,
}

impl VfioUserDevice {
    /// Connects to the server at `socket`, negotiates, and enables memory decoding and
    /// bus mastering.
    pub fn connect(socket: &Path) -> Result<Self> {
        let client = vfio_user::Client::new(socket)
            .map_err(|e| Error::VfioUser(format!("connect to {}: {e}", socket.display())))?;
        let mut dev = VfioUserDevice {
            shared: Arc::new(Shared { client: Mutex::new(client) }),
            bars: vec![None; 6],
            next_iova: IOVA_BASE,
            peers: Vec::new(),
        };
        let mut cmd = [0u8; 2];
        dev.config_read(4, &mut cmd)?;
        let cmd = u16::from_le_bytes(cmd) | 0x6; // memory space + bus master
        dev.config_write(4, &cmd.to_le_bytes())?;
        Ok(dev)
    }
}

impl DeviceAccess for VfioUserDevice {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<()> {
        self.shared.read(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.shared.write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
    }

    fn bar(&mut self, index: u8) -> Result<Bar> {
        if let Some(Some(b)) = self.bars.get(index as usize) {
            return Ok(b.clone());
        }
        let (size, mapped) = {
            let client = self.shared.client();
            let region = client
                .region(index as u32)
                .filter(|r| r.size > 0)
                .ok_or_else(|| Error::Bar { index, why: "the device has no such BAR".into() })?;
            let mut mapped = vec![];
            if region.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
                if let Some(fo) = &region.file_offset {
                    for a in &region.sparse_areas {
                        let m = Mapping::new(fo.file().as_fd(), fo.start() + a.offset, a.size as usize)?;
                        mapped.push((a.offset, Arc::new(m)));
                    }
                }
            }
            (region.size, mapped)
        };
        let bar = Bar::new(index, index as u32, size, mapped, self.shared.clone());
        if let Some(slot) = self.bars.get_mut(index as usize) {
            *slot = Some(bar.clone());
        }
        Ok(bar)
    }

    fn alloc_dma(&mut self, len: usize, opts: DmaOptions) -> Result<DmaBuffer> {
        let mem = SharedMem::new(len, opts)?;
        let align = opts.alignment(if mem.huge() { HUGE_PAGE } else { PAGE } as u64);
        let iova = self.next_iova.max(crate::mem::iova_floor()).next_multiple_of(align);
        let iova = crate::mem::skip_reserved(iova, mem.len() as u64, align);
        let end = iova.checked_add(mem.len() as u64).ok_or(Error::IovaExhausted(mem.len()))?;
        self.shared.map(&mem, iova)?;
        self.next_iova = end;
        crate::mem::raise_iova_floor(end);
        let mut buf = DmaBuffer::new(mem, iova, self.shared.clone());
        for p in &self.peers {
            buf.share_with(p.clone())?;
        }
        Ok(buf)
    }

    fn enable_msix(&mut self, count: u32) -> Result<Vec<Interrupt>> {
        let irqs: Vec<Interrupt> = (0..count).map(|_| Interrupt::new()).collect::<Result<_>>()?;
        let fds: Vec<i32> = irqs.iter().map(|i| i.raw_fd()).collect();
        let info = self
            .shared
            .client()
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| Error::VfioUser(e.to_string()))?;
        if count > info.count {
            return Err(Error::VfioUser(format!("{count} MSI-X vectors asked, device has {}", info.count)));
        }
        self.shared
            .client()
            .set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                count,
                &fds,
            )
            .map_err(|e| Error::VfioUser(e.to_string()))?;
        // The server received duplicates of the eventfds; the caller owns ours.
        Ok(irqs)
    }

    fn transport(&self) -> &'static str {
        "vfio-user"
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.shared.clone()
    }

    fn add_dma_peer(&mut self, peer: Arc<dyn DmaMapper>) {
        self.peers.push(peer);
    }
}
