//! Hostile clients: the outside reproducers of issue 17, run against any vfio-user socket
//! (`testbed serve DEVICE --socket PATH`), and the garbage client of `testbed soak`. Each
//! speaks the protocol well enough to reach the device, then abuses it. A reproducer
//! returns `Ok` when the server defended itself, and says what went wrong otherwise.

use crate::rig::DeviceKind;
use anyhow::{bail, ensure, Context, Result};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};
use testbed_regs::{accel, enso, packetized, smoke};
use vfio_server::client::{self, cmd, RawClient};

/// How long a reproducer waits for any one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(8);

/// The identity register value (BAR0 offset 0) of a device.
pub fn id_value(kind: DeviceKind) -> u32 {
    match kind {
        DeviceKind::Smoke => smoke::ID_VALUE,
        DeviceKind::Enso => enso::ext::ID_VALUE,
        DeviceKind::Packetized => packetized::reg::ID_VALUE,
        DeviceKind::Crypto | DeviceKind::Ml => accel::reg::ID_VALUE,
        DeviceKind::Nagare => testbed_regs::nagare::reg::ID_VALUE,
    }
}

/// Connects and negotiates.
pub fn connect(path: &Path) -> Result<RawClient> {
    let mut c =
        RawClient::connect(path, REPLY_TIMEOUT).with_context(|| format!("connect {}", path.display()))?;
    let v = c.version().context("VERSION")?;
    ensure!(v.ok(), "VERSION refused: errno {}", v.error);
    Ok(c)
}

/// A well-behaved client: negotiates, reads the identity register and the config space's
/// IDs. The check every device must pass after any abuse.
pub fn answers(path: &Path, kind: DeviceKind) -> Result<()> {
    let mut c = connect(path)?;
    if kind == DeviceKind::Enso {
        // The card's BAR0 identifies itself only to a driver that opts in.
        c.write32(0, enso::ext::EXT_ENABLE, enso::ext::extension::IDENTITY)?;
    }
    let id = c.read32(0, 0).context("read the ID register")?;
    ensure!(id == id_value(kind), "ID register reads {id:#x}, not {:#x}", id_value(kind));
    let vendor = c.read32(client::CONFIG_REGION, 0).context("read config space")? & 0xffff;
    ensure!(vendor == 0x1172, "vendor ID {vendor:#x}");
    Ok(())
}

/// Defect 3: REGION_INFO hands out each shared BAR's memfd; shrinking it must fail (the
/// fd is sealed). Returns how many fds were tried.
pub fn shrink_bar_fds(path: &Path) -> Result<usize> {
    let mut c = connect(path)?;
    let mut tried = 0;
    for index in 0..6 {
        let info = c.region_info(index).with_context(|| format!("REGION_INFO {index}"))?;
        if let Some(fd) = info.fd {
            tried += 1;
            if client::resize(&fd, 0).is_ok() {
                bail!("BAR{index}'s memfd could be shrunk to 0: the device thread will die of SIGBUS");
            }
            ensure!(client::resize(&fd, 1 << 30).is_err(), "BAR{index}'s memfd could be grown");
        }
    }
    Ok(tried)
}

fn smoke_command(c: &mut RawClient, seq: u32, op: u32, addr: u64, len: u32) -> Result<u32> {
    let bar = smoke::DOORBELL_BAR as u32;
    for (off, v) in [
        (smoke::DB_OPCODE, op),
        (smoke::DB_ADDR_LO, addr as u32),
        (smoke::DB_ADDR_HI, (addr >> 32) as u32),
        (smoke::DB_LEN, len),
        (smoke::DB_SEED, seq),
        (smoke::DB_VECTOR, smoke::NO_VECTOR),
        (smoke::DB_SEQ, seq),
    ] {
        ensure!(c.write32(bar, off, v)? == 0, "doorbell write refused");
    }
    let t = Instant::now();
    while c.read32(bar, smoke::DB_DONE_SEQ)? != seq {
        ensure!(t.elapsed() < REPLY_TIMEOUT, "command {seq} never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(c.read32(bar, smoke::DB_DONE_STATUS)?)
}

/// Defect 1 (smoke): maps a 1 MiB memfd at 0x10000000, truncates it to 0, and has the
/// device write its pattern there: the DMA must be refused, and the server live on.
pub fn shrink_dma(path: &Path) -> Result<()> {
    let mut c = connect(path)?;
    ensure!(c.enable_bus_master()? == 0, "bus master");
    let f = client::memfd("hostile-ram", 1 << 20)?;
    ensure!(c.dma_map(0x1000_0000, 1 << 20, Some(f.as_raw_fd()), 0)?.ok(), "DMA_MAP refused");
    ensure!(smoke_command(&mut c, 1, smoke::OP_WRITE_PATTERN, 0x1000_0000, 4096)? == smoke::CMD_OK);
    client::resize(&f, 0)?;
    let status = smoke_command(&mut c, 2, smoke::OP_WRITE_PATTERN, 0x1000_0000, 4096)
        .context("the server did not survive a DMA into a shrunk file")?;
    ensure!(status == smoke::CMD_DMA_ERROR, "status {status}, not a refused DMA");
    Ok(())
}

/// Defect 4 (crypto, ml): a 4096-entry ring runs to head 3000; then one REGION_WRITE_MULTI
/// disables it, resizes it to 2 entries, re-enables it and writes tail 3000 again. The
/// server must keep answering.
pub fn ring_reset(path: &Path) -> Result<()> {
    use accel::{db, reg};
    let mut c = connect(path)?;
    ensure!(c.enable_bus_master()? == 0, "bus master");
    let f = client::memfd("hostile-ring", 1 << 20)?;
    let (sq, cq) = (0x1000_0000u64, 0x1008_0000u64);
    ensure!(c.dma_map(sq, 1 << 20, Some(f.as_raw_fd()), 0)?.ok(), "DMA_MAP refused");
    for (off, v) in [
        (reg::SQ_BASE_LO, sq as u32),
        (reg::SQ_BASE_HI, (sq >> 32) as u32),
        (reg::CQ_BASE_LO, cq as u32),
        (reg::CQ_BASE_HI, (cq >> 32) as u32),
        (reg::RING_ENTRIES, 4096),
        (reg::CTRL, reg::CTRL_ENABLE),
    ] {
        ensure!(c.write32(0, off, v)? == 0, "register write refused");
    }
    ensure!(c.write32(2, db::SQ_TAIL, 3000)? == 0);
    let t = Instant::now();
    while c.read32(2, db::SQ_HEAD)? != 3000 {
        ensure!(t.elapsed() < Duration::from_secs(30), "3000 commands never completed");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let e = c.write_multi(&[
        (0, reg::CTRL, 0),
        (0, reg::RING_ENTRIES, 2),
        (0, reg::CTRL, reg::CTRL_ENABLE),
        (2, db::SQ_TAIL, 3000),
    ])?;
    ensure!(e == 0, "REGION_WRITE_MULTI refused: errno {e}");
    std::thread::sleep(Duration::from_millis(50));
    let status = c.read32(0, reg::STATUS).context("the server stopped answering after the ring reset")?;
    ensure!(status & reg::STATUS_ENABLED != 0, "ring not enabled: status {status:#x}");
    Ok(())
}

/// Defect 5: a client announces 100 body bytes, sends 20 and keeps the socket open; the
/// next client must be served within the server's message timeout (plus a margin).
/// Returns how long the next client waited.
pub fn stall(path: &Path) -> Result<Duration> {
    let mut a = connect(path)?;
    a.send(cmd::REGION_READ, &[0; 20], Some(16 + 100), &[])?;
    let t = Instant::now();
    let mut b = RawClient::connect(path, Duration::from_secs(10))?;
    let v = b.version().context("the next client was not served while one stalled")?;
    ensure!(v.ok(), "VERSION refused");
    drop(a);
    Ok(t.elapsed())
}

/// Defect 7: requests before VERSION must be refused.
pub fn before_version(path: &Path) -> Result<()> {
    let mut c = RawClient::connect(path, REPLY_TIMEOUT)?;
    let r = c.region_read(0, 0, 4)?;
    ensure!(r.is_err(), "REGION_READ answered before VERSION: {r:?}");
    let f = client::memfd("hostile-early", 4096)?;
    let m = c.dma_map(0x1000, 4096, Some(f.as_raw_fd()), 0)?;
    ensure!(!m.ok(), "DMA_MAP accepted before VERSION");
    ensure!(c.version()?.ok(), "VERSION after refused requests");
    Ok(())
}

/// The hostile clients' deterministic generator: the seeded splitmix64 stream the ML
/// model is synthesized from.
pub use ::accel::ml::SplitMix as Rng;

/// What a garbage client did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GarbageReport {
    pub messages: u64,
    pub refused: u64,
    pub region_writes: u64,
    pub dma_maps: u64,
    pub resizes: u64,
    /// The slowest step's round trip, in microseconds.
    pub max_step_us: u64,
}

/// A garbage client: `n` steps of random register writes (trapped and shared pages),
/// message-borne garbage, DMA maps of memfds it scribbles over and resizes (never below
/// what the device may be using: shrinking is the reproducers' job), resets. Returns what
/// it did; an error only when the server stopped answering.
pub fn garbage(path: &Path, rng: &mut Rng, n: u64) -> Result<GarbageReport> {
    let mut c = connect(path)?;
    let mut rep = GarbageReport::default();
    let _ = c.enable_bus_master()?;
    let mut sizes = [0u64; 6];
    for (i, s) in sizes.iter_mut().enumerate() {
        *s = c.region_info(i as u32).map(|r| r.size).unwrap_or(0);
    }
    let ram = client::memfd("garbage-ram", 4 << 20)?;
    let mut ram_len = 4u64 << 20;
    let iova = 0x1_0000_0000u64;
    if c.dma_map(iova, ram_len, Some(ram.as_raw_fd()), 0)?.ok() {
        rep.dma_maps += 1;
    }
    let mut scribble = vec![0u8; 64 << 10];
    for _ in 0..n {
        rep.messages += 1;
        let step = Instant::now();
        let ok = match rng.below(16) {
            0..=8 => {
                // A register write somewhere in a BAR: pointers into our RAM half the time.
                let bars: Vec<u32> = (0..6).filter(|&i| sizes[i as usize] > 0).collect();
                let bar = bars[rng.below(bars.len() as u64) as usize];
                let off = rng.below(sizes[bar as usize]) & !3;
                let v = match rng.below(4) {
                    0 => (iova + rng.below(ram_len)) as u32,
                    1 => (iova >> 32) as u32,
                    2 => rng.below(8192) as u32,
                    _ => rng.next_u64() as u32,
                };
                rep.region_writes += 1;
                c.write32(bar, off, v)? == 0
            }
            9 => {
                // Scribble over the memory the device may be reading.
                for b in scribble.iter_mut() {
                    *b = rng.next_u64() as u8;
                }
                let off = rng.below(ram_len.saturating_sub(scribble.len() as u64).max(1));
                // SAFETY: pwrite from our buffer into our own file.
                unsafe {
                    libc::pwrite(ram.as_raw_fd(), scribble.as_ptr().cast(), scribble.len(), off as i64)
                };
                true
            }
            10 => {
                let r = c.region_read(rng.below(9) as u32, rng.below(1 << 16), rng.below(64) as u32)?;
                r.is_ok()
            }
            11 => {
                // A random message, well framed.
                let len = rng.below(64) as usize;
                let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                c.call(rng.below(20) as u16, &body, &[])?.ok()
            }
            12 => {
                // Grow the file, then map a window of the grown part.
                ram_len += 1 << 20;
                client::resize(&ram, ram_len)?;
                rep.resizes += 1;
                let at = iova + (64 << 20) + rng.below(64) * 0x10_0000;
                let r = c.dma_map(at, 1 << 20, Some(ram.as_raw_fd()), ram_len - (1 << 20))?;
                rep.dma_maps += r.ok() as u64;
                r.ok()
            }
            13 => c.dma_unmap(iova + (64 << 20) + rng.below(64) * 0x10_0000, 1 << 20, 0)?.ok(),
            14 => c.write_multi(&[(0, rng.below(4096) & !3, rng.next_u64() as u32); 3])? == 0,
            _ => {
                if rng.below(8) == 0 {
                    c.call(cmd::DEVICE_RESET, &[], &[])?.ok()
                } else {
                    c.enable_bus_master()? == 0
                }
            }
        };
        rep.refused += (!ok) as u64;
        rep.max_step_us = rep.max_step_us.max(step.elapsed().as_micros() as u64);
    }
    Ok(rep)
}
