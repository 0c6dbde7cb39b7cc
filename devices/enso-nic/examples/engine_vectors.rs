//! Writes a differential workload for the RTL queue engine (rtl/enso/enso_queue_engine.sv):
//! random `QueueEngine` calls, each with what *this* model's engine did through `EngineIo`
//! and the answers it got (see `enso_nic::engine::workload`). The RTL bench replays the
//! calls, answers the RTL's requests with the same answers, and checks every event against
//! the model's: a transaction-level differential test.
//!
//! Usage: `cargo run -p enso-nic --example engine_vectors -- OUT [CALLS] [SEED]`.

use enso_nic::engine::workload::Workload;
use enso_nic::engine::RxOutcome;
use std::io::Write;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map(String::as_str).unwrap_or("enso_engine_vectors.txt");
    let calls: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0x0e15_0e15);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut eng = Workload::engine();
    let mut work = Workload::new(seed);
    let mut rx = [0u64; 4];
    for _ in 0..calls {
        let step = work.step(&mut eng);
        if let Some(r) = step.rx {
            rx[match r {
                RxOutcome::Delivered => 0,
                RxOutcome::PipeDisabled => 1,
                RxOutcome::PipeFull => 2,
                RxOutcome::DmaFailed => 3,
            }] += 1;
        }
        file.write_all(step.text.as_bytes())?;
    }
    file.flush()?;
    eprintln!(
        "{calls} calls written to {path}: {} packets delivered, {} to disabled pipes, {} to full pipes, {} DMA failures",
        rx[0], rx[1], rx[2], rx[3]
    );
    Ok(())
}
