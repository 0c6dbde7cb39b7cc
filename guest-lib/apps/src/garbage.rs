//! A deliberately buggy driver: writes garbage into every Ensō register page it can reach
//! and posts bad TX notifications, then leaves. The device must count all of it, never
//! crash or hang, and serve the next (well-behaved) driver as if nothing happened.

use crate::report::Report;
use device_access::{DeviceAccess, DmaOptions};
use testbed_regs::enso::{self, ext, queue};

/// A small xorshift: garbage that is the same on every run for a seed.
pub struct Garbage(u64);

impl Garbage {
    /// A generator from `seed` (non-zero).
    pub fn new(seed: u64) -> Self {
        Garbage(seed | 1)
    }

    /// The next 32 bits of garbage.
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u32
    }
}

fn scribble(dev: &mut dyn DeviceAccess, seed: u64, r: &mut Report) -> Result<(), String> {
    let mut g = Garbage::new(seed);
    let e = |e: device_access::Error| e.to_string();
    let bar0 = dev.bar(enso::EXT_BAR).map_err(e)?;
    let bar2 = dev.bar(enso::QUEUE_BAR).map_err(e)?;
    let pipes = bar0.read32(ext::NUM_PIPES).map_err(e)?.min(enso::MAX_PIPES);
    let nbs = bar0.read32(ext::NUM_NB_PAIRS).map_err(e)?.min(enso::MAX_NB_PAIRS);
    let ram = dev.alloc_dma(4 << 20, DmaOptions { iova_align: 2 << 20, ..Default::default() }).map_err(e)?;
    let mut writes = 0u64;
    // Garbage in every register of every queue page the device serves...
    for page in (0..pipes).map(enso::pipe_page).chain((0..nbs).map(enso::nb_page)) {
        for off in (0..enso::QUEUE_PAGE).step_by(4) {
            bar2.write32(page + off, g.next_u32()).map_err(e)?;
            writes += 1;
        }
    }
    // ... in the shared extension pages, and in trapped registers.
    for off in (enso::EXT_SHARED_START..enso::EXT_SHARED_END).step_by(4) {
        bar0.write32(off, g.next_u32()).map_err(e)?;
        writes += 1;
    }
    for _ in 0..200 {
        let off = (g.next_u32() as u64 % 0x1000) & !3;
        bar0.write32(off, g.next_u32()).map_err(e)?;
        writes += 1;
    }
    // A pair whose rings are real memory, full of bad TX notifications, and a pipe whose
    // buffer lies outside mapped memory.
    let nb = enso::nb_page(1.min(nbs.saturating_sub(1)));
    bar2.write32(nb + queue::RX_MEM_LOW, 0).map_err(e)?;
    bar2.write32(nb + queue::RX_HEAD, 0).map_err(e)?;
    bar2.write32(nb + queue::TX_TAIL, 0).map_err(e)?;
    let (rx, tx) = (ram.iova(), ram.iova() + enso::NOTIF_RING_BYTES as u64);
    let mut notes = vec![0u8; 64 * 512];
    for (i, w) in notes.chunks_mut(4).enumerate() {
        let v = match i % 16 {
            0 => [1, 2, 3, 0xdead][g.next_u32() as usize % 4],
            _ => g.next_u32(),
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
    ram.write_slice(&notes, enso::NOTIF_RING_BYTES);
    bar2.write32(nb + queue::TX_MEM_HIGH, (tx >> 32) as u32).map_err(e)?;
    bar2.write32(nb + queue::TX_MEM_LOW, tx as u32).map_err(e)?;
    bar2.write32(nb + queue::RX_MEM_HIGH, (rx >> 32) as u32).map_err(e)?;
    bar2.write32(nb + queue::RX_MEM_LOW, rx as u32 | queue::ENABLE).map_err(e)?;
    let pipe = enso::pipe_page(3.min(pipes.saturating_sub(1)));
    bar2.write32(pipe + queue::RX_HEAD, 0).map_err(e)?;
    bar2.write32(pipe + queue::RX_MEM_HIGH, 0x7f).map_err(e)?;
    bar2.write32(pipe + queue::RX_MEM_LOW, 1 | queue::ENABLE).map_err(e)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    bar2.write32(nb + queue::TX_TAIL, 500).map_err(e)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    bar2.write32(nb + queue::TX_TAIL, enso::NOTIF_RING_ENTRIES + 7).map_err(e)?;
    bar2.write32(pipe + queue::RX_HEAD, 0xffff_fff0).map_err(e)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    r.value("register_writes", writes);
    Ok(())
}

/// Scribbles over the device reached through `dev` (garbage from `seed`) and reports how
/// many writes it made. It "passes" when every write went through: judging the device is
/// the host's job (its counters must show the errors).
pub fn run(mut dev: Box<dyn DeviceAccess>, seed: u64) -> Report {
    let mut r = Report::new("garbage", dev.transport());
    match scribble(dev.as_mut(), seed, &mut r) {
        Ok(()) => {
            r.check("scribbled", true, "garbage written to every register page, bad TX notifications posted");
        }
        Err(e) => r.fail("scribbled", e),
    }
    r
}
