//! Generator → cable → trivial echo thread → generator, against the raw ring ceiling.
//!
//! `cargo run --release -p wire --example gen_bench [packets]`; prints one JSON line per
//! case.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::generator::TOUCH_OFFSET;
use wire::{cable, GenConfig, Generator};

fn main() {
    let packets: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    for (size, flows, window) in [(64, 1, 256), (64, 16, 256), (64, 16, 1024), (1500, 16, 256)] {
        let (mut gen_end, mut echo_end) = cable(64);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let echo = std::thread::spawn(move || wire::loopback::echo(&mut echo_end, TOUCH_OFFSET, &s2));
        let mut g = Generator::new(GenConfig { packets, size, flows, window, ..Default::default() });
        let r = g.run(&mut gen_end, Instant::now() + Duration::from_secs(60));
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
        let ring = wire::ring::ring_run(packets, size, false);
        println!(
            "{}",
            serde_json::json!({
                "size": size, "flows": flows, "window": window,
                "clean": r.clean(), "gen_mpps": r.rx_mpps, "ring_ceiling_mpps": ring.mpps,
                "p50_us": r.latency_p50_us, "p99_us": r.latency_p99_us, "report": r,
            })
        );
    }
}
