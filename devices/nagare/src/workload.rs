//! The differential workload of the pipeline: the ports and the random TLP headers that the
//! Rust model and the RTL (rtl/nagare/nagare_pipeline.sv) both rule on, in the RTL bench's
//! vectors (examples/vectors.rs) and in the co-simulation's side-by-side test.

use crate::fabric::{Ingress, Port};
use std::sync::Arc;
use testbed_regs::nagare as regs;

/// The stream windows' base address.
pub const BASE: u64 = 0x40_0000_0000;

/// An input window of the given size that takes every push.
pub struct Window(pub u64);

impl Ingress for Window {
    fn push(&self, _: u64, _: &[u8]) -> bool {
        true
    }
    fn window(&self) -> u64 {
        self.0
    }
}

/// A port named `name`, with an input window of `win` bytes if it takes pushes.
pub fn port(name: &str, win: Option<u64>) -> Port {
    Port { name: name.into(), input: win.map(|w| Arc::new(Window(w)) as Arc<dyn Ingress>), ..Port::default() }
}

/// The workload's device ports, 1 to 4 behind the CPU's port 0: the NIC (TX window
/// 32 KiB), crypto and ML (64 KiB), and a legacy device (no window).
pub fn ports() -> Vec<Port> {
    [("nic", Some(1 << 15)), ("crypto", Some(1 << 16)), ("ml", Some(1 << 16)), ("legacy", None)]
        .into_iter()
        .map(|(name, win)| port(name, win))
        .collect()
}

/// The workload's random source (xorshift64), seeded with a non-zero value.
pub struct Rng(pub u64);

impl Rng {
    /// The next random word.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random header (requester, address, length): every requester, in the stream windows
    /// (two streams past the last) or, one time in sixteen, a plain memory address.
    pub fn header(&mut self) -> (u32, u64, usize) {
        let r = self.next();
        let src = (r & 7) as u32;
        let stream = (r >> 3) % (u64::from(regs::STREAMS) + 2);
        let len = 1 + ((r >> 8) & 2047) as usize;
        let mut addr = BASE + stream * regs::WINDOW_SIZE + ((r >> 20) & 0x1f_ffff);
        if (r >> 44) & 15 == 0 {
            addr = 0x1000 + ((r >> 48) & 0xffff);
        }
        (src, addr, len)
    }
}
