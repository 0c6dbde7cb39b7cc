//! The virtio-net frame path, free of any socket: gathering TX descriptor chains into
//! Ethernet frames, and writing received frames into RX chains behind a 12-byte
//! `virtio_net_hdr_v1`, split over several chains when mergeable RX buffers are on.
//!
//! Everything here works on a [`QueueT`] over any [`GuestMemory`], so it is tested against
//! `virtio_queue::mock::MockSplitQueue`.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1: `num_buffers` is always present).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame taken from the guest (64 KiB TSO frames are not offered, so this is
/// generous): a longer TX chain is counted as malformed.
pub const MAX_FRAME_LEN: usize = 65_535;

/// Counters of the frame path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames taken from the guest's TX queue and handed to the port.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// TX chains returned unsent: shorter than the header, too long, writable
    /// descriptors, or a descriptor outside guest memory.
    pub tx_malformed: u64,
    /// TX frames the port refused.
    pub tx_port_dropped: u64,
    /// Frames written into the guest's RX queue.
    pub rx_frames: u64,
    /// Their bytes (without the header).
    pub rx_bytes: u64,
    /// Frames dropped because the available RX buffers could not hold them whole.
    pub rx_dropped_no_room: u64,
    /// Frames dropped because an RX chain was malformed (readable descriptor, or one
    /// outside guest memory); the chains involved are returned with length 0.
    pub rx_malformed: u64,
}

/// Outcome of [`process_tx`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Chains returned to the used ring (sent or malformed).
    pub chains: usize,
}

/// Reads one TX chain: header + frame, in readable descriptors. `None` when malformed.
fn gather_tx<M, D>(mem: &M, chain: DescriptorChain<D>) -> Option<Vec<u8>>
where
    M: GuestMemory + ?Sized,
    D: Deref<Target = M> + Clone,
{
    let mut buf = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let len = desc.len() as usize;
        if buf.len() + len > NET_HDR_LEN + MAX_FRAME_LEN {
            return None;
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], desc.addr()).ok()?;
    }
    if buf.len() < NET_HDR_LEN {
        return None;
    }
    buf.drain(..NET_HDR_LEN);
    Some(buf)
}

/// Takes every available TX chain, sends each frame through `send` (false = refused), and
/// returns each chain to the used ring with length 0. Malformed chains are counted, never
/// sent, and returned too, so the guest gets its buffers back.
pub fn process_tx<M, Q>(
    mem: &M,
    queue: &mut Q,
    stats: &mut NetStats,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<TxOutcome, virtio_queue::Error>
where
    M: GuestMemory,
    Q: QueueT,
{
    let mut out = TxOutcome::default();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        match gather_tx(mem, chain) {
            Some(frame) => {
                let len = frame.len() as u64;
                if send(frame) {
                    stats.tx_frames += 1;
                    stats.tx_bytes += len;
                } else {
                    stats.tx_port_dropped += 1;
                }
            }
            None => stats.tx_malformed += 1,
        }
        queue.add_used(mem, head, 0)?;
        out.chains += 1;
    }
    Ok(out)
}

/// Outcome of [`write_rx_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written whole into this many chains (the header's `num_buffers`).
    Delivered { buffers: u16 },
    /// No RX chain available at all: nothing consumed, nothing counted; the caller keeps
    /// the frame and tries again after the guest's next RX kick.
    NoBuffers,
    /// Available chains could not hold the frame whole: nothing consumed or written, the
    /// frame is dropped and counted.
    DroppedNoRoom,
    /// A malformed chain was met: the chains taken for this frame are returned with
    /// length 0, the frame is dropped and counted.
    DroppedMalformed,
}

/// A writable chain, checked against guest memory.
struct RxChain {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    cap: usize,
}

fn check_rx_chain<M, D>(mem: &M, chain: DescriptorChain<D>) -> Result<RxChain, u16>
where
    M: GuestMemory + ?Sized,
    D: Deref<Target = M> + Clone,
{
    let head = chain.head_index();
    let mut segs = Vec::new();
    let mut cap = 0usize;
    for desc in chain {
        let len = desc.len() as usize;
        if !desc.is_write_only() || !mem.check_range(desc.addr(), len, Permissions::Write) {
            return Err(head);
        }
        cap += len;
        segs.push((desc.addr(), len));
    }
    Ok(RxChain { head, segs, cap })
}

/// Writes `data` at `pos` of a chain's concatenated segments.
fn write_at<M: GuestMemory>(mem: &M, c: &RxChain, mut pos: usize, mut data: &[u8]) -> bool {
    for &(addr, len) in &c.segs {
        if data.is_empty() {
            break;
        }
        if pos >= len {
            pos -= len;
            continue;
        }
        let n = (len - pos).min(data.len());
        if mem.write_slice(&data[..n], addr.unchecked_add(pos as u64)).is_err() {
            return false;
        }
        data = &data[n..];
        pos = 0;
    }
    data.is_empty()
}

/// Writes one received frame into the RX queue: a zeroed `virtio_net_hdr_v1` (no offloads,
/// `num_buffers` set) then the frame. With `mergeable` the frame may span several chains,
/// each returned to the used ring with the bytes written into it; without, it must fit one.
/// All chains needed are taken and checked before any byte is written, so a frame is
/// never partially delivered.
pub fn write_rx_frame<M, Q>(
    mem: &M,
    queue: &mut Q,
    frame: &[u8],
    mergeable: bool,
    stats: &mut NetStats,
) -> Result<RxOutcome, virtio_queue::Error>
where
    M: GuestMemory,
    Q: QueueT,
{
    let need = NET_HDR_LEN + frame.len();
    let start = queue.next_avail();
    let mut chains: Vec<RxChain> = Vec::new();
    let mut cap = 0usize;
    while cap < need && (mergeable || chains.is_empty()) && chains.len() < u16::MAX as usize {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        match check_rx_chain(mem, chain) {
            Ok(c) => {
                cap += c.cap;
                chains.push(c);
            }
            Err(bad) => {
                for c in &chains {
                    queue.add_used(mem, c.head, 0)?;
                }
                queue.add_used(mem, bad, 0)?;
                stats.rx_malformed += 1;
                return Ok(RxOutcome::DroppedMalformed);
            }
        }
    }
    if cap < need {
        queue.set_next_avail(start);
        if chains.is_empty() {
            return Ok(RxOutcome::NoBuffers);
        }
        stats.rx_dropped_no_room += 1;
        return Ok(RxOutcome::DroppedNoRoom);
    }

    let buffers = chains.len() as u16;
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&buffers.to_le_bytes());
    // Lay header + frame over the chains in order; each chain gets min(cap, rest).
    let mut rest_hdr: &[u8] = &hdr;
    let mut rest: &[u8] = frame;
    let mut lens = Vec::with_capacity(chains.len());
    for c in &chains {
        let mut pos = 0usize;
        let h = rest_hdr.len().min(c.cap);
        // Both writes were range-checked above; a failure here means the memory map
        // changed under us, which counts as a malformed chain.
        let mut ok = write_at(mem, c, 0, &rest_hdr[..h]);
        rest_hdr = &rest_hdr[h..];
        pos += h;
        let d = rest.len().min(c.cap - pos);
        ok &= write_at(mem, c, pos, &rest[..d]);
        rest = &rest[d..];
        pos += d;
        if !ok {
            for c in &chains {
                queue.add_used(mem, c.head, 0)?;
            }
            stats.rx_malformed += 1;
            return Ok(RxOutcome::DroppedMalformed);
        }
        lens.push(pos as u32);
    }
    for (c, len) in chains.iter().zip(lens) {
        queue.add_used(mem, c.head, len)?;
    }
    stats.rx_frames += 1;
    stats.rx_bytes += frame.len() as u64;
    Ok(RxOutcome::Delivered { buffers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: usize = 0x10_0000 * 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Adds one chain at table index `at`, linking its descriptors with NEXT.
    fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[RawDescriptor]) {
        let linked: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(*d);
                let last = i == descs.len() - 1;
                let flags = if last {
                    d.flags()
                } else {
                    d.flags() | virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { at + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect();
        vq.add_desc_chains(&linked, at).unwrap();
    }

    fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn used_idx(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        vq.used().idx().load()
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn tx_chain_with_header_and_payload_split_gives_one_frame() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(300);
        // The header in its own descriptor, then the frame over three more.
        m.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&f[..14], GuestAddress(0x10_1000)).unwrap();
        m.write_slice(&f[14..200], GuestAddress(0x10_2000)).unwrap();
        m.write_slice(&f[200..], GuestAddress(0x10_3000)).unwrap();
        add_chain(
            &vq,
            0,
            &[
                desc(0x10_0000, NET_HDR_LEN as u32, false),
                desc(0x10_1000, 14, false),
                desc(0x10_2000, 186, false),
                desc(0x10_3000, 100, false),
            ],
        );
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let mut sent = vec![];
        let out = process_tx(&m, &mut q, &mut stats, |fr| {
            sent.push(fr);
            true
        })
        .unwrap();
        assert_eq!(out.chains, 1);
        assert_eq!(sent, vec![f]);
        assert_eq!((stats.tx_frames, stats.tx_bytes, stats.tx_malformed), (1, 300, 0));
        assert_eq!(used_idx(&vq), 1);
        assert_eq!(used(&vq, 0), (0, 0));
    }

    #[test]
    fn tx_header_and_frame_sharing_a_descriptor() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(60);
        let mut buf = vec![0u8; NET_HDR_LEN];
        buf.extend_from_slice(&f);
        m.write_slice(&buf[..20], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&buf[20..], GuestAddress(0x10_8000)).unwrap();
        add_chain(&vq, 0, &[desc(0x10_0000, 20, false), desc(0x10_8000, buf.len() as u32 - 20, false)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let mut sent = vec![];
        process_tx(&m, &mut q, &mut stats, |fr| {
            sent.push(fr);
            true
        })
        .unwrap();
        assert_eq!(sent, vec![f]);
    }

    #[test]
    fn rx_1500_byte_frame_spans_three_small_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Three 1-descriptor chains of 600 B: 12 + 1500 = 1512 needs all three.
        for i in 0..3u16 {
            add_chain(&vq, i, &[desc(0x10_0000 + 0x1000 * i as u64, 600, true)]);
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let f = frame(1500);
        let out = write_rx_frame(&m, &mut q, &f, true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::Delivered { buffers: 3 });
        assert_eq!(used_idx(&vq), 3);
        assert_eq!(used(&vq, 0), (0, 600));
        assert_eq!(used(&vq, 1), (1, 600));
        assert_eq!(used(&vq, 2), (2, 312));
        let mut hdr = [0u8; NET_HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
        assert!(hdr[..10].iter().all(|&b| b == 0), "no offloads claimed");
        let mut got = vec![0u8; 1500];
        m.read_slice(&mut got[..588], GuestAddress(0x10_0000 + 12)).unwrap();
        m.read_slice(&mut got[588..1188], GuestAddress(0x10_1000)).unwrap();
        m.read_slice(&mut got[1188..], GuestAddress(0x10_2000)).unwrap();
        assert_eq!(got, f);
        assert_eq!((stats.rx_frames, stats.rx_bytes), (1, 1500));
    }

    #[test]
    fn rx_frame_larger_than_all_buffers_is_dropped_whole() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        for i in 0..3u16 {
            add_chain(&vq, i, &[desc(0x10_0000 + 0x1000 * i as u64, 256, true)]);
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let out = write_rx_frame(&m, &mut q, &frame(1500), true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::DroppedNoRoom);
        assert_eq!(stats.rx_dropped_no_room, 1);
        assert_eq!(used_idx(&vq), 0, "no chain consumed");
        let mut probe = [0u8; 256];
        m.read_slice(&mut probe, GuestAddress(0x10_0000)).unwrap();
        assert!(probe.iter().all(|&b| b == 0), "nothing written");
        // The buffers are still there for a frame that fits.
        let out = write_rx_frame(&m, &mut q, &frame(500), true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::Delivered { buffers: 2 }, "12 + 500 B in 2 x 256 B");
    }

    #[test]
    fn rx_without_mergeable_needs_one_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        for i in 0..2u16 {
            add_chain(&vq, i, &[desc(0x10_0000 + 0x1000 * i as u64, 600, true)]);
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        assert_eq!(
            write_rx_frame(&m, &mut q, &frame(1000), false, &mut stats).unwrap(),
            RxOutcome::DroppedNoRoom
        );
        assert_eq!(
            write_rx_frame(&m, &mut q, &frame(100), false, &mut stats).unwrap(),
            RxOutcome::Delivered { buffers: 1 }
        );
    }

    #[test]
    fn rx_with_no_buffers_keeps_the_frame() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let out = write_rx_frame(&m, &mut q, &frame(64), true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::NoBuffers);
        assert_eq!(stats, NetStats::default());
    }

    #[test]
    fn malformed_chains_are_counted_without_panic() {
        let m = mem();
        let beyond = MEM_SIZE as u64 + 0x1000;
        // TX: a descriptor outside guest memory, then a good chain.
        let vq = MockSplitQueue::new(&m, 16);
        add_chain(&vq, 0, &[desc(0x10_0000, 12, false), desc(beyond, 100, false)]);
        add_chain(&vq, 2, &[desc(0x10_1000, 72, false)]);
        add_chain(&vq, 3, &[desc(0x10_2000, 4, false)]); // shorter than the header
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let mut sent = 0;
        let out = process_tx(&m, &mut q, &mut stats, |_| {
            sent += 1;
            true
        })
        .unwrap();
        assert_eq!(out.chains, 3);
        assert_eq!(sent, 1);
        assert_eq!(stats.tx_malformed, 2);
        assert_eq!(used_idx(&vq), 3, "malformed chains returned too");

        // RX: a good chain, then one outside guest memory: the frame is dropped, both chains
        // go back with length 0, and nothing was written.
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        add_chain(&vq, 0, &[desc(0x10_0000, 256, true)]);
        add_chain(&vq, 1, &[desc(beyond, 4096, true)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let out = write_rx_frame(&m, &mut q, &frame(1500), true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::DroppedMalformed);
        assert_eq!(stats.rx_malformed, 1);
        assert_eq!(used_idx(&vq), 2);
        assert_eq!(used(&vq, 0), (0, 0));
        assert_eq!(used(&vq, 1), (1, 0));
        let mut probe = [0u8; 256];
        m.read_slice(&mut probe, GuestAddress(0x10_0000)).unwrap();
        assert!(probe.iter().all(|&b| b == 0));

        // RX: a device-readable descriptor in an RX chain is malformed too.
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        add_chain(&vq, 0, &[desc(0x10_0000, 2048, false)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut stats = NetStats::default();
        let out = write_rx_frame(&m, &mut q, &frame(100), true, &mut stats).unwrap();
        assert_eq!(out, RxOutcome::DroppedMalformed);
    }
}
