//! The switch: stream table programming, each pipeline stage, allow lists, CPU push,
//! credits and the upstream port.

use crate::fabric::{valid_graph, FabricSpace, Ingress, Port, Routed, StreamEntry, Tables};
use crate::pipeline::{self, Phv, PipelineConfig, Stage, Verdict};
use crate::{Fabric, Hop, Switch};
use pcie_model::{DmaSpace, GuestMemory, PciDevice, ShmRegion};
use std::sync::{Arc, Mutex};
use testbed_regs::nagare::{self as regs, reg, reg::counter as c};

use crate::workload::{Rng, BASE};

/// An input that records what it was given.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<(u64, Vec<u8>)>>,
    refuse: bool,
}

impl Ingress for Sink {
    fn push(&self, offset: u64, data: &[u8]) -> bool {
        self.got.lock().unwrap().push((offset, data.to_vec()));
        !self.refuse
    }
    fn window(&self) -> u64 {
        64 << 10
    }
}

struct Rig {
    sw: Switch,
    nic: u32,
    crypto: u32,
    ml: u32,
    sinks: [Arc<Sink>; 3],
    credits: Arc<Mutex<Vec<(u32, u32)>>>,
}

fn rig() -> Rig {
    let fabric = Fabric::new(PipelineConfig::default());
    let sinks: [Arc<Sink>; 3] = Default::default();
    let credits = Arc::new(Mutex::new(Vec::new()));
    let c2 = credits.clone();
    let nic = fabric.attach(Port {
        name: "nic".into(),
        pci_id: 0x1172_0000,
        input: Some(sinks[0].clone()),
        credits: Some(Arc::new(move |p, h| c2.lock().unwrap().push((p, h)))),
        doorbell: None,
        counters: None,
    });
    let crypto = fabric.attach(Port {
        name: "crypto".into(),
        pci_id: 0x1172_5a01,
        input: Some(sinks[1].clone()),
        ..Port::default()
    });
    let ml = fabric.attach(Port {
        name: "ml".into(),
        pci_id: 0x1172_5a02,
        input: Some(sinks[2].clone()),
        ..Port::default()
    });
    let sw = Switch::new(fabric).unwrap();
    Rig { sw, nic, crypto, ml, sinks, credits }
}

impl Rig {
    fn w(&mut self, off: u64, v: u32) {
        self.sw.bar_write(regs::REG_BAR, off, &v.to_le_bytes());
    }
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.sw.bar_read(regs::REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn counter(&self, idx: u32) -> u64 {
        self.sw.fabric().counters.get(idx)
    }
    /// Programs stream `s`: nic (pipe 7) → crypto → ml → nic, allow list `acl`.
    fn chain(&mut self, s: u32, acl: u32) {
        self.w(reg::WINDOW_BASE_LO, BASE as u32);
        self.w(reg::WINDOW_BASE_HI, (BASE >> 32) as u32);
        self.w(reg::STREAM_SEL, s);
        self.w(reg::POLICY_HOPS, 4);
        let nodes = [
            (self.nic, reg::HOP_INGRESS),
            (self.crypto, reg::HOP_STREAM),
            (self.ml, reg::HOP_STREAM),
            (self.nic, reg::HOP_EGRESS),
        ];
        for (i, (port, kind)) in nodes.into_iter().enumerate() {
            self.w(reg::HOP_SEL, i as u32);
            self.w(reg::HOP_PORT, port);
            self.w(reg::HOP_KIND, kind);
            self.w(reg::HOP_PIPE, 7);
        }
        self.w(reg::ACL, acl);
        self.w(reg::STREAM_CTRL, 1);
    }
    fn window(&self, s: u32) -> u64 {
        BASE + s as u64 * regs::WINDOW_SIZE
    }
}

#[test]
fn identity_and_port_table() {
    let mut r = rig();
    assert_eq!(r.r(reg::ID), reg::ID_VALUE);
    assert_eq!(r.r(reg::NUM_PORTS), 4);
    assert_eq!(r.r(reg::PORT_ID), 0, "port 0 is the CPU");
    assert_eq!(r.r(reg::PORT_ID + 4 * r.crypto as u64), 0x1172_5a01);
    assert_eq!((r.r(reg::STAGES), r.r(reg::CYCLES_PER_STAGE), r.r(reg::CLOCK_MHZ)), (10, 10, 3000));
    let ns = PipelineConfig::default().latency_ns();
    assert!((ns - 33.33).abs() < 0.01, "{ns}");
    assert_eq!(r.sw.fabric().pipeline().stage_names().len(), 10);
}

#[test]
fn stream_table_programming_and_validation() {
    let mut r = rig();
    let all = (1 << r.nic) | (1 << r.crypto) | (1 << r.ml);
    r.chain(2, all);
    assert_eq!(r.r(reg::STREAM_CTRL), 1);
    assert_eq!(r.r(reg::POLICY_HOPS), 4);
    r.w(reg::HOP_SEL, 1);
    assert_eq!((r.r(reg::HOP_PORT), r.r(reg::HOP_KIND)), (r.crypto, reg::HOP_STREAM));
    // An open stream's graph is read-only.
    r.w(reg::HOP_PORT, r.ml);
    assert_eq!(r.r(reg::HOP_PORT), r.crypto);
    assert_eq!(r.counter(c::BAD_REGISTER_WRITES), 1);
    // Invalid graphs are refused at open: egress first, a device twice, the CPU as a hop.
    let ports = r.sw.fabric().tables().ports.clone();
    let h = |port, kind| Hop { port, kind, ..Hop::default() };
    let (i, s, e) = (reg::HOP_INGRESS, reg::HOP_STREAM, reg::HOP_EGRESS);
    assert!(valid_graph(&[h(r.nic, i), h(r.crypto, s), h(r.nic, e)], &ports));
    assert!(!valid_graph(&[h(r.nic, e), h(r.crypto, s), h(r.nic, i)], &ports));
    assert!(!valid_graph(&[h(r.nic, i), h(r.crypto, s), h(r.crypto, s), h(r.nic, e)], &ports));
    assert!(!valid_graph(&[h(r.nic, i), h(0, s), h(r.nic, e)], &ports));
    assert!(!valid_graph(&[h(r.nic, i)], &ports));
    r.w(reg::STREAM_SEL, 3);
    r.w(reg::POLICY_HOPS, 1);
    r.w(reg::STREAM_CTRL, 1);
    assert_eq!(r.r(reg::STREAM_CTRL), 0);
    assert_eq!(r.counter(c::BAD_POLICY), 1);
    // Reset clears streams, keeps ports.
    r.sw.reset();
    r.w(reg::STREAM_SEL, 2);
    assert_eq!(r.r(reg::STREAM_CTRL), 0);
    assert_eq!(r.r(reg::NUM_PORTS), 4);
}

fn tables(r: &Rig) -> Tables {
    r.sw.fabric().tables().clone()
}

#[test]
fn each_pipeline_stage() {
    let mut r = rig();
    let all = (1 << r.nic) | (1 << r.crypto) | (1 << r.ml);
    r.chain(1, all);
    let t = tables(&r);
    let w = r.window(1);

    // Address: in the windows → stream and offset; elsewhere → memory.
    let mut p = Phv::new(r.nic, w + 0x1040, 100);
    pipeline::MatchAddress.apply(&t, &mut p);
    assert_eq!((p.stream, p.offset, p.verdict), (Some(1), 0x1040, Verdict::Undecided));
    let mut p = Phv::new(r.nic, 0x1000, 100);
    pipeline::MatchAddress.apply(&t, &mut p);
    assert_eq!(p.verdict, Verdict::Memory);
    let mut p = Phv::new(r.nic, BASE + regs::WINDOW_BAR_SIZE - 10, 100);
    pipeline::MatchAddress.apply(&t, &mut p);
    assert_eq!(p.verdict, Verdict::Memory, "a write running past the windows is not a stream write");

    // Stream: closed streams drop.
    let mut p = Phv::new(r.nic, r.window(5), 8);
    pipeline::MatchAddress.apply(&t, &mut p);
    pipeline::MatchStream.apply(&t, &mut p);
    assert_eq!(p.verdict, Verdict::Drop(c::NO_ROUTE));

    // Access: a port off the list drops.
    let mut t2 = t.clone();
    t2.streams[1].acl = 1 << r.nic;
    let mut p = Phv::new(r.ml, w, 8);
    for s in [&pipeline::MatchAddress as &dyn Stage, &pipeline::MatchStream, &pipeline::AccessControl] {
        s.apply(&t2, &mut p);
    }
    assert_eq!(p.verdict, Verdict::Drop(c::ACL_DENIED));

    // Next hop: by requester; the CPU enters where the ingress does.
    let next = |src: u32| {
        let mut p = Phv::new(src, w + 64, 8);
        for s in [
            &pipeline::MatchAddress as &dyn Stage,
            &pipeline::MatchStream,
            &pipeline::AccessControl,
            &pipeline::NextHop,
        ] {
            s.apply(&t, &mut p);
        }
        (p.node, p.next.map(|h| h.port), p.egress)
    };
    assert_eq!(next(r.nic), (Some(0), Some(r.crypto), false));
    assert_eq!(next(r.crypto), (Some(1), Some(r.ml), false));
    assert_eq!(next(r.ml), (Some(2), Some(r.nic), true));
    let mut t3 = t.clone();
    t3.streams[1].acl |= 1;
    let mut p = Phv::new(0, w, 8);
    for s in [
        &pipeline::MatchAddress as &dyn Stage,
        &pipeline::MatchStream,
        &pipeline::AccessControl,
        &pipeline::NextHop,
    ] {
        s.apply(&t3, &mut p);
    }
    assert_eq!(p.next.map(|h| h.port), Some(r.crypto));

    // Rewrite: the offset modulo the next input window (64 KiB here).
    let mut p = Phv::new(r.nic, w + 0x1_0040, 8);
    for s in [
        &pipeline::MatchAddress as &dyn Stage,
        &pipeline::MatchStream,
        &pipeline::AccessControl,
        &pipeline::NextHop,
        &pipeline::Rewrite,
    ] {
        s.apply(&t, &mut p);
    }
    assert_eq!((p.dest, p.verdict), (Some((r.crypto, 0x40)), Verdict::Forward));

    // Credit: the ingress pipe's head moves past the write (in flits, modulo the ring).
    pipeline::Credit.apply(&t, &mut p);
    assert_eq!(p.credit, Some((r.nic, 7, (0x1_0040 + 8u32).div_ceil(64))));
    let mut p = Phv::new(r.crypto, w, 100);
    pipeline::Pipeline::new(PipelineConfig::default()).run(&t, &mut p);
    assert_eq!(p.credit, None, "only the ingress returns credits");
    let _ = StreamEntry::default();
}

#[test]
fn the_chain_routes_end_to_end_and_an_acl_deny_is_counted() {
    let mut r = rig();
    let all = (1 << r.nic) | (1 << r.crypto) | (1 << r.ml);
    r.chain(0, all);
    let f = r.sw.fabric().clone();
    let w = r.window(0);
    assert_eq!(f.route(r.nic, w + 128, b"sealed"), Routed::Delivered("crypto".into()));
    assert_eq!(f.route(r.crypto, w + 64, b"image"), Routed::Delivered("ml".into()));
    assert_eq!(f.route(r.ml, w, b"result"), Routed::Delivered("nic".into()));
    assert_eq!(r.sinks[1].got.lock().unwrap()[0], (128, b"sealed".to_vec()));
    assert_eq!(r.sinks[0].got.lock().unwrap()[0], (0, b"result".to_vec()));
    assert_eq!(*r.credits.lock().unwrap(), vec![(7, 3)]);
    r.w(reg::STREAM_SEL, 0);
    assert_eq!(r.r(reg::STREAM_EGRESS_LO), 1);
    assert_eq!(f.route(r.nic, 0x1000, b"x"), Routed::Memory);

    // Revoke ML: its push is dropped and counted, visible per stream; the others go on.
    r.w(reg::ACL, (1 << r.nic) | (1 << r.crypto));
    assert_eq!(f.route(r.ml, w + 64, b"rogue"), Routed::Dropped(c::ACL_DENIED));
    assert_eq!(r.counter(c::ACL_DENIED), 1);
    assert_eq!(r.r(reg::STREAM_DENIED), 1);
    assert_ne!(r.r(reg::ERROR_STATUS) & (1 << c::ACL_DENIED), 0);
    assert_eq!(f.route(r.nic, w + 256, b"next"), Routed::Delivered("crypto".into()));

    // The CPU pushes through BAR2 when its port is on the list.
    r.sw.bar_write(regs::WINDOW_BAR, 512, b"cpu data");
    assert_eq!(r.counter(c::ACL_DENIED), 2, "not on the list yet");
    r.w(reg::ACL, (1 << r.nic) | (1 << r.crypto) | 1);
    r.sw.bar_write(regs::WINDOW_BAR, 576, b"cpu data");
    assert_eq!(r.sinks[1].got.lock().unwrap().last().unwrap(), &(576, b"cpu data".to_vec()));
    assert_eq!(r.counter(c::CPU_PUSHES), 1);
}

#[test]
fn the_upstream_port_routes_stream_writes_and_passes_the_rest() {
    let mut r = rig();
    r.chain(0, (1 << r.nic) | (1 << r.crypto) | (1 << r.ml));
    let mem = Arc::new(GuestMemory::new());
    let ram = ShmRegion::new("ram", 4096).unwrap();
    mem.map(0x10_0000, 4096, Some(ram.dup_fd().unwrap()), 0, true).unwrap();
    let up = FabricSpace::new(r.sw.fabric().clone(), r.crypto, mem);
    assert_eq!(up.write_routed(r.window(0), b"abc").unwrap().as_deref(), Some("ml"));
    assert_eq!(up.write_routed(0x10_0000, b"abc").unwrap(), None);
    let mut b = [0u8; 3];
    up.read(0x10_0000, &mut b).unwrap();
    assert_eq!(&b, b"abc");
    assert!(up.read(r.window(0), &mut b).is_err(), "windows are write-only");
    assert_eq!(r.counter(c::WINDOW_READS), 1);
    // A refused delivery is counted.
    let sink = Arc::new(Sink { refuse: true, ..Sink::default() });
    let f = r.sw.fabric().clone();
    f.tables_mut().ports[r.ml as usize].input = Some(sink);
    assert_eq!(f.route(r.crypto, r.window(0), b"x"), Routed::Dropped(c::DELIVERY_DROPS));
    assert_eq!(r.counter(c::DELIVERY_DROPS), 1);
}

#[test]
fn a_denied_write_is_refused_and_traced_as_denied_never_as_a_routed_write() {
    use pcie_model::{Counters, Dma, DmaClass, DmaError, OpTrace, TraceTap};
    let mut r = rig();
    r.chain(0, (1 << r.nic) | (1 << r.crypto) | (1 << r.ml));
    let up: Arc<dyn DmaSpace> =
        Arc::new(FabricSpace::new(r.sw.fabric().clone(), r.ml, Arc::new(GuestMemory::new())));
    let counters = Arc::new(Counters::default());
    let trace = OpTrace::new();
    counters.trace_to(TraceTap::new(trace.clone(), "ml"));
    let dma = Dma::new(up, counters.clone(), Arc::new(std::sync::atomic::AtomicBool::new(true)));
    // On the allow list: ML's output is routed to the egress (the NIC).
    dma.write(r.window(0), b"result", DmaClass::Data).unwrap();
    // Revoked: the same write is refused to ML, counted as denied on both sides.
    r.w(reg::ACL, (1 << r.nic) | (1 << r.crypto));
    let err = dma.write(r.window(0) + 64, b"rogue", DmaClass::Data).unwrap_err();
    assert!(matches!(&err, DmaError::Denied { by, len: 5, .. } if by == "nagare"), "{err}");
    assert_eq!((r.counter(c::ROUTED), r.counter(c::ACL_DENIED)), (1, 1));
    let s = counters.snapshot();
    assert_eq!((s.dma_writes, s.dma_write_bytes), (1, 6), "the denied write is no DMA write: {s:?}");
    assert_eq!((s.dma_denied, s.dma_errors), (1, 1), "{s:?}");
    assert_eq!(r.sinks[0].got.lock().unwrap().len(), 1, "only the allowed write reached the NIC");
    let ops = trace.ops();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops[0].switched && !ops[0].denied && ops[0].critical && ops[0].dir == "ml->nic", "{:?}", ops[0]);
    assert!(ops[1].denied && !ops[1].switched && !ops[1].critical, "{:?}", ops[1]);
    assert_eq!((ops[1].dir.as_str(), ops[1].bytes), ("ml->nagare", 5));
    // A write into a closed stream has no route: refused the same way.
    r.w(reg::STREAM_CTRL, 0);
    let err = dma.write(r.window(0) + 128, b"late", DmaClass::Data).unwrap_err();
    assert!(matches!(err, DmaError::Denied { .. }), "{err}");
    assert_eq!(r.counter(c::NO_ROUTE), 1);
    assert_eq!(counters.snapshot().dma_denied, 2);
    assert_eq!(counters.snapshot().dma_writes, 1);
}

#[test]
fn legacy_glue_writes_descriptors_rings_doorbells_and_reaps_completions() {
    use testbed_regs::accel::{cqe, desc, status};
    use testbed_regs::record::{Header, HEADER, KIND_SEALED};
    let fabric = Fabric::new(PipelineConfig::default());
    let rang = Arc::new(Mutex::new(Vec::new()));
    let r2 = rang.clone();
    let nic_in = Arc::new(Sink::default());
    let nic = fabric.attach(Port { name: "nic".into(), input: Some(nic_in.clone()), ..Port::default() });
    let qat = fabric.attach(Port {
        name: "crypto".into(),
        doorbell: Some(Arc::new(move |t| r2.lock().unwrap().push(t))),
        ..Port::default()
    });
    {
        let mut t = fabric.tables_mut();
        t.base = BASE;
        let key = [9u8; 32];
        t.streams[0].hops = vec![
            Hop { port: nic, kind: reg::HOP_INGRESS, ..Hop::default() },
            Hop { port: qat, kind: reg::HOP_GLUE, op: desc::OP_DECRYPT as u32, state: key, ..Hop::default() },
            Hop { port: nic, kind: reg::HOP_EGRESS, ..Hop::default() },
        ];
        t.streams[0].acl = (1 << nic) | (1 << qat);
    }
    assert!(fabric.open_stream(0));
    let ring = fabric.glue_ring(0, 1);
    assert_eq!(ring, BASE + regs::GLUE_SRAM + regs::GLUE_REGION, "stream 0, node 1");

    // The NIC writes a record in two pieces: one command once it is complete.
    let mut rec = vec![5u8; HEADER + 100];
    Header { len: 100, seq: 1, kind: KIND_SEALED, stream: 0, nonce: [0; 12], tag: [0; 16] }.write(&mut rec);
    assert_eq!(fabric.route(nic, BASE, &rec[..50]), Routed::Delivered("nagare".into()));
    assert!(rang.lock().unwrap().is_empty());
    fabric.route(nic, BASE + 50, &rec[50..]);
    assert_eq!(*rang.lock().unwrap(), vec![1], "doorbell with tail 1");
    assert_eq!(fabric.counters.get(c::GLUE_COMMANDS), 1);

    // What the device sees: the descriptor, then the staged input, both in glue memory.
    let mut d = [0u8; desc::SIZE];
    assert!(fabric.glue_read(ring, &mut d));
    assert_eq!(d[desc::OPCODE], desc::OP_DECRYPT);
    assert_eq!(&d[desc::STATE..desc::STATE + 32], &[9u8; 32]);
    let src = u64::from_le_bytes(d[desc::SRC_ADDR..desc::SRC_ADDR + 8].try_into().unwrap());
    let len = u32::from_le_bytes(d[desc::SRC_LEN..desc::SRC_LEN + 4].try_into().unwrap());
    let dst = u64::from_le_bytes(d[desc::DST_ADDR..desc::DST_ADDR + 8].try_into().unwrap());
    let mut input = vec![0u8; len as usize];
    assert!(fabric.glue_read(src, &mut input));
    assert_eq!(input, rec);
    assert_eq!(dst, BASE, "output into the stream's window");
    // Its output goes on to the egress; its error completion is reaped and counted.
    assert_eq!(fabric.route(qat, dst, b"out"), Routed::Delivered("nic".into()));
    assert_eq!(nic_in.got.lock().unwrap()[0].1, b"out".to_vec());
    let mut e = [0u8; cqe::SIZE];
    e[cqe::STATUS..cqe::STATUS + 2].copy_from_slice(&status::AUTH_FAILED.to_le_bytes());
    e[cqe::PHASE] = 1;
    assert!(fabric.glue_write(ring + regs::GLUE_CQ, &e));
    assert_eq!(fabric.counters.get(c::GLUE_ERRORS), 1);

    // A full ring drops (and counts) records instead of overwriting commands.
    let mut off = 192u64;
    for _ in 0..regs::GLUE_ENTRIES {
        fabric.route(nic, BASE + off, &rec);
        off = (off + rec.len() as u64).next_multiple_of(64);
    }
    // (The first command completed: 63 more fit, the 64th record is dropped.)
    assert_eq!(fabric.counters.get(c::GLUE_COMMANDS), regs::GLUE_ENTRIES as u64);
    assert_eq!(fabric.counters.get(c::GLUE_DROPS), 1);
    // Glue memory outside any glued node is not the device's to read.
    assert!(!fabric.glue_read(BASE + regs::GLUE_SRAM, &mut d));
}

#[test]
fn garbage_register_writes_and_pushes_never_break_the_switch() {
    let mut r = rig();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let x = rng.next();
        let off = ((x >> 8) % regs::REG_BAR_SIZE) & !3;
        match x % 4 {
            0 | 1 => r.w(off, (x >> 32) as u32),
            2 => r.sw.bar_write(regs::WINDOW_BAR, (x >> 16) % regs::WINDOW_BAR_SIZE, &x.to_le_bytes()),
            _ => {
                let f = r.sw.fabric().clone();
                let src = (x >> 40) as u32 % 6;
                f.route(src, BASE + (x >> 12) % (2 * regs::WINDOW_BAR_SIZE), &[0u8; 40]);
            }
        }
    }
    // Reset (a new client) and a clean chain routes.
    r.sw.reset();
    r.chain(0, (1 << r.nic) | (1 << r.crypto) | (1 << r.ml));
    let f = r.sw.fabric().clone();
    assert_eq!(f.route(r.nic, r.window(0), b"ok"), Routed::Delivered("crypto".into()));
}

/// Found by fuzzing (issue 17, `nagare_tables`): a window base so high that the switch's
/// BAR2 would wrap the address space made address arithmetic overflow (a panic in debug
/// builds on the next register read, wrapped addresses in release). Such a base is refused
/// and counted, and nothing the driver reads or routes afterwards overflows.
#[test]
fn a_window_base_that_wraps_the_address_space_is_refused() {
    let mut r = rig();
    let bad = r.counter(c::BAD_REGISTER_WRITES);
    r.w(reg::WINDOW_BASE_HI, 0xffff_ffff);
    r.w(reg::WINDOW_BASE_LO, 0xffff_f000);
    assert_eq!(r.counter(c::BAD_REGISTER_WRITES), bad + 1, "the wrapping base is refused");
    let base = (r.r(reg::WINDOW_BASE_HI) as u64) << 32 | r.r(reg::WINDOW_BASE_LO) as u64;
    assert!(base.checked_add(regs::WINDOW_BAR_SIZE).is_some(), "{base:#x}");
    for off in (0..regs::REG_BAR_SIZE).step_by(4) {
        r.r(off);
    }
    for addr in [u64::MAX - 10, 0xffff_ffff_0000_0000, base, base + regs::WINDOW_BAR_SIZE - 1] {
        let _ = r.sw.fabric().route(r.nic, addr, &[1; 64]);
    }
    r.chain(0, 0xf);
}
