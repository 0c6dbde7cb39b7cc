//! The record formats devices parse from untrusted memory: the accelerators' descriptors
//! and stream records (header, then the crypto and ML computations on whatever follows),
//! the Ensō TX stream window's record reassembly and framing, and the Ensō packet parsers
//! (RX flow key, TX frame length and framing).
#![no_main]
use accel::function::{Crypto, Function, Inference};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use testbed_regs::accel::desc;
use testbed_regs::record;

#[derive(Arbitrary, Debug)]
enum Item {
    /// A command descriptor's op and state with an input, to both functions.
    Command { op: u8, state: [u8; 32], input: Vec<u8> },
    /// A stream record: a header (made plausible or raw) and its body.
    Record { len: u32, seq: u32, kind: u8, stream: u8, plausible: bool, raw: Vec<u8> },
    /// Writes into the Ensō TX stream window.
    TxWindow(Vec<(u16, Vec<u8>)>),
    /// A received frame's flow key, and a TX buffer's framing.
    Frame(Vec<u8>),
}

static ML: OnceLock<Mutex<Inference>> = OnceLock::new();

fuzz_target!(|items: Vec<Item>| {
    let ml = ML.get_or_init(|| Mutex::new(Inference::default()));
    let mut out = Vec::new();
    for item in items.iter().take(64) {
        match item {
            Item::Command { op, state, input } => {
                let input = &input[..input.len().min(accel::device::MAX_INPUT as usize)];
                let op = [desc::OP_DECRYPT, desc::OP_ENCRYPT, desc::OP_INFER, *op][(*op % 4) as usize];
                Crypto.execute(op, state, input, &mut out);
                ml.lock().unwrap().execute(op, state, input, &mut out);
            }
            Item::Record { len, seq, kind, stream, plausible, raw } => {
                let mut r = vec![0u8; record::HEADER];
                if *plausible {
                    let len = len % 4096;
                    record::Header {
                        len,
                        seq: *seq,
                        kind: *kind,
                        stream: *stream,
                        nonce: [0; 12],
                        tag: [0; 16],
                    }
                    .write(&mut r);
                } else {
                    r.copy_from_slice(
                        &raw.iter()
                            .copied()
                            .chain(std::iter::repeat(0))
                            .take(record::HEADER)
                            .collect::<Vec<_>>(),
                    );
                }
                r.extend_from_slice(raw);
                if let Some(h) = record::Header::parse(&r) {
                    let n = h.record_len();
                    assert!(n >= record::HEADER);
                    let rec = &r[..n.min(r.len())];
                    for op in [desc::OP_DECRYPT, desc::OP_INFER] {
                        Crypto.execute(op, &[7; 32], rec, &mut out);
                        ml.lock().unwrap().execute(op, &[0; 32], rec, &mut out);
                    }
                }
            }
            Item::TxWindow(writes) => {
                let mut s = enso_nic::stream::TxStream { enabled: true, ..Default::default() };
                let mut frame = Vec::new();
                for (off, data) in writes.iter().take(32) {
                    s.push(*off as u64, data);
                    loop {
                        match s.next_record() {
                            Ok(Some(rec)) => s.frame(&rec, &mut frame),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            Item::Frame(f) => {
                let _ = enso_nic::packet::rx_flow_key(f);
                let _ = enso_nic::packet::tx_frame(f);
                let _ = enso_nic::packet::tx_frame_len(f);
            }
        }
    }
});
