//! Writes test vectors for the RTL pipeline (rtl/nagare/nagare_pipeline.sv): the switch
//! configuration as register writes, then random TLP headers with the verdict *this*
//! model's pipeline gives each one. The RTL bench replays them and must agree on every
//! header: a differential test between the Rust model and the RTL.
//!
//! Usage: `cargo run -p nagare --example vectors -- OUT [COUNT] [SEED]`.

use nagare::pipeline::{rtl_registers, Phv, Pipeline, PipelineConfig, Verdict};
use nagare::workload::{self, Rng, BASE};
use nagare::{Fabric, Hop};
use std::io::Write;
use testbed_regs::nagare::reg;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().map(String::as_str).unwrap_or("nagare_vectors.txt");
    let count: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut rng = Rng(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0x5eed));
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);

    let fabric = Fabric::new(PipelineConfig::default());
    for p in workload::ports() {
        fabric.attach(p);
    }
    let h = |port, kind, pipe| Hop { port, kind, pipe, ..Hop::default() };
    let (i, s, e, g) = (reg::HOP_INGRESS, reg::HOP_STREAM, reg::HOP_EGRESS, reg::HOP_GLUE);
    let streams: [(usize, Vec<Hop>, u32, bool); 4] = [
        (0, vec![h(1, i, 7), h(2, s, 0), h(3, s, 0), h(1, e, 0)], 0b1110, true),
        (1, vec![h(1, i, 9), h(4, g, 0), h(1, e, 0)], 0b10011, true),
        (2, vec![h(1, i, 3), h(3, s, 0), h(1, e, 0)], 0b1011, false),
        (5, vec![h(2, i, 1), h(3, s, 0), h(2, s, 0), h(1, e, 0)], 0b1111, true),
    ];
    {
        let mut t = fabric.tables_mut();
        t.base = BASE;
        for (sn, hops, acl, open) in &streams {
            let st = &mut t.streams[*sn];
            st.hops = hops.clone();
            st.acl = *acl;
            st.open = *open;
        }
    }
    // The same tables as register writes for the RTL (its flattened layout).
    for (addr, value) in rtl_registers(&fabric.tables()) {
        writeln!(f, "C {addr:03x} {value:08x}")?;
    }

    let t = fabric.tables().clone();
    let pipeline = Pipeline::new(PipelineConfig::default());
    for _ in 0..count {
        let (src, addr, len) = rng.header();
        let mut p = Phv::new(src, addr, len);
        pipeline.run(&t, &mut p);
        let (verdict, reason) = match p.verdict {
            Verdict::Memory | Verdict::Undecided => (0, 0),
            Verdict::Forward => (1, 0),
            Verdict::Drop(why) => (2, why),
        };
        let (dport, doff) = p.dest.unwrap_or((0, 0));
        let (credit, cpipe, chead) = p.credit.map_or((0, 0, 0), |(_, pipe, head)| (1, pipe, head));
        writeln!(
            f,
            "T {src} {addr:x} {len} {verdict} {reason} {dport} {doff:x} {} {} {credit} {cpipe} {chead}",
            p.egress as u32,
            p.glue.is_some() as u32,
        )?;
    }
    f.flush()?;
    eprintln!("wrote {count} vectors to {out}");
    Ok(())
}
