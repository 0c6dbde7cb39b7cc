//! What an accelerator computes, apart from how commands reach it: one [`Function`] per
//! device kind, shared by the legacy ring and the stream interface.

use crate::{crypto, ml};
use testbed_regs::accel::{desc, reg, status};
use testbed_regs::record::{self, Header};

/// A device's computation on one record.
pub trait Function: Send {
    /// The `FUNCTION` register value.
    fn id(&self) -> u32;
    /// A short name ("crypto", "ml") for reports and traces.
    fn name(&self) -> &'static str;
    /// Runs `op` on `input` with the per-command `state`, writing the output record to
    /// `out`; returns a `status` code (`out` is meaningful only with [`status::OK`]).
    fn execute(&mut self, op: u8, state: &[u8; 32], input: &[u8], out: &mut Vec<u8>) -> u16;
}

/// AES-256-GCM (see [`crate::crypto`]); the state is the key.
#[derive(Debug, Default)]
pub struct Crypto;

impl Function for Crypto {
    fn id(&self) -> u32 {
        reg::FUNCTION_CRYPTO
    }

    fn name(&self) -> &'static str {
        "crypto"
    }

    fn execute(&mut self, op: u8, key: &[u8; 32], input: &[u8], out: &mut Vec<u8>) -> u16 {
        let r = match op {
            desc::OP_DECRYPT => crypto::open(key, input, out),
            desc::OP_ENCRYPT => crypto::seal_record(key, input, out),
            _ => return status::BAD_OPCODE,
        };
        match r {
            Ok(()) => status::OK,
            Err(crypto::CryptoError::Malformed) => status::BAD_LENGTH,
            Err(crypto::CryptoError::AuthFailed) => status::AUTH_FAILED,
        }
    }
}

/// Int8 MLP inference (see [`crate::ml`]); the state's first u32 is the model ID.
#[derive(Debug)]
pub struct Inference {
    engine: ml::Engine,
}

impl Default for Inference {
    fn default() -> Self {
        Inference { engine: ml::Engine::new(&ml::Model::shipped()) }
    }
}

impl Function for Inference {
    fn id(&self) -> u32 {
        reg::FUNCTION_ML
    }

    fn name(&self) -> &'static str {
        "ml"
    }

    fn execute(&mut self, op: u8, state: &[u8; 32], input: &[u8], out: &mut Vec<u8>) -> u16 {
        if op != desc::OP_INFER {
            return status::BAD_OPCODE;
        }
        if u32::from_le_bytes([state[0], state[1], state[2], state[3]]) != ml::MODEL_ID {
            return status::BAD_MODEL;
        }
        let Some(h) = Header::parse(input).filter(|h| input.len() == h.record_len()) else {
            return status::BAD_LENGTH;
        };
        if h.kind != record::KIND_IMAGE {
            return status::BAD_LENGTH;
        }
        let Some(r) = self.engine.infer(&input[record::HEADER..]) else {
            return status::BAD_MODEL;
        };
        out.clear();
        out.resize(record::HEADER + ml::RESULT_BYTES, 0);
        Header {
            len: ml::RESULT_BYTES as u32,
            seq: h.seq,
            kind: record::KIND_RESULT,
            stream: h.stream,
            nonce: [0; 12],
            tag: [0; 16],
        }
        .write(out);
        out[record::HEADER..].copy_from_slice(&r.to_bytes());
        status::OK
    }
}

/// The result record the ML function produces for `image_record` (the reference path,
/// for checkers): None when the input is not an image record.
pub fn expected_result(image_record: &[u8]) -> Option<Vec<u8>> {
    let h = Header::parse(image_record).filter(|h| h.kind == record::KIND_IMAGE)?;
    let img = image_record.get(record::HEADER..h.record_len())?;
    if img.len() != ml::INPUTS {
        return None;
    }
    static MODEL: std::sync::OnceLock<ml::Model> = std::sync::OnceLock::new();
    let r = ml::reference::infer(MODEL.get_or_init(ml::Model::shipped), img);
    let mut out = vec![0u8; record::HEADER + ml::RESULT_BYTES];
    Header { len: ml::RESULT_BYTES as u32, kind: record::KIND_RESULT, nonce: [0; 12], tag: [0; 16], ..h }
        .write(&mut out);
    out[record::HEADER..].copy_from_slice(&r.to_bytes());
    Some(out)
}
