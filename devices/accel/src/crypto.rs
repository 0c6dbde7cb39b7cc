//! The crypto accelerator's function: AES-256-GCM over records (`testbed_regs::record`),
//! with the `aes-gcm` crate. A sealed record's tag covers its first
//! [`record::AAD`] header bytes and its payload; opening checks it and refuses the record
//! on a mismatch, never passing unauthenticated bytes on.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use testbed_regs::record::{self, Header};

/// An AES-256 key.
pub type Key = [u8; 32];

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The header is malformed, the kind is not what the operation takes, or the
    /// length disagrees with the bytes given.
    #[error("malformed record")]
    Malformed,
    /// The tag does not match: the record was altered or sealed with another key.
    #[error("authentication failed")]
    AuthFailed,
}

fn aad(h: &Header) -> [u8; record::AAD] {
    let mut b = [0u8; record::HEADER];
    h.write(&mut b);
    b[..record::AAD].try_into().unwrap_or_default()
}

/// Seals `payload` as a record of item `seq` on `stream` (kind [`record::KIND_SEALED`]).
pub fn seal(key: &Key, seq: u32, stream: u8, nonce: [u8; 12], payload: &[u8]) -> Vec<u8> {
    let mut h =
        Header { len: payload.len() as u32, seq, kind: record::KIND_SEALED, stream, nonce, tag: [0; 16] };
    let mut out = vec![0u8; record::HEADER + payload.len()];
    out[record::HEADER..].copy_from_slice(payload);
    let cipher = Aes256Gcm::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad(&h), &mut out[record::HEADER..])
        .expect("payloads are far below AES-GCM's length limit");
    h.tag.copy_from_slice(&tag);
    h.write(&mut out);
    out
}

/// Seals a plain record `rec` (kind [`record::KIND_IMAGE`]) into `out`, with the nonce
/// its header carries.
pub fn seal_record(key: &Key, rec: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let h = Header::parse(rec).filter(|h| h.kind == record::KIND_IMAGE).ok_or(CryptoError::Malformed)?;
    if rec.len() != h.record_len() {
        return Err(CryptoError::Malformed);
    }
    *out = seal(key, h.seq, h.stream, h.nonce, &rec[record::HEADER..]);
    Ok(())
}

/// Opens a sealed record `rec` into `out` as a plain record (kind
/// [`record::KIND_IMAGE`], same seq, stream and nonce, zero tag).
pub fn open(key: &Key, rec: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let h = Header::parse(rec).filter(|h| h.kind == record::KIND_SEALED).ok_or(CryptoError::Malformed)?;
    if rec.len() != h.record_len() {
        return Err(CryptoError::Malformed);
    }
    out.clear();
    out.extend_from_slice(rec);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&h.nonce),
            &aad(&h),
            &mut out[record::HEADER..],
            Tag::from_slice(&h.tag),
        )
        .map_err(|_| {
            out.clear();
            CryptoError::AuthFailed
        })?;
    Header { kind: record::KIND_IMAGE, tag: [0; 16], ..h }.write(out);
    Ok(())
}

/// The key of `stream` in the testbed's scenarios (both ends derive it; a real tenant
/// would provision it).
pub fn stream_key(stream: u8) -> Key {
    let mut k = [0u8; 32];
    let mut rng = crate::ml::SplitMix(0x6b65_7900 ^ stream as u64);
    for c in k.chunks_mut(8) {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    k
}

/// The nonce of item `seq` of `stream` (unique per key).
pub fn item_nonce(stream: u8, seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = stream;
    n[4..8].copy_from_slice(&seq.to_le_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// NIST GCM test vectors (gcmEncryptExtIV256), through the same cipher calls.
    #[test]
    fn nist_vectors() {
        // Test case 13 of the GCM spec: zero key, zero IV, empty input.
        let c = Aes256Gcm::new(&[0u8; 32].into());
        let mut empty = [0u8; 0];
        let tag = c.encrypt_in_place_detached(Nonce::from_slice(&[0; 12]), &[], &mut empty).unwrap();
        assert_eq!(tag.to_vec(), hex("530f8afbc74536b9a963b4f1c4cb738b"));
        // Test case 14: one zero block.
        let mut block = [0u8; 16];
        let tag = c.encrypt_in_place_detached(Nonce::from_slice(&[0; 12]), &[], &mut block).unwrap();
        assert_eq!(block.to_vec(), hex("cea7403d4d606b6e074ec5d3baf39d18"));
        assert_eq!(tag.to_vec(), hex("d0d1c8a799996bf0265b98b5d48ab919"));
        // Test case 16: key/IV/AAD/plaintext of the spec.
        let key: [u8; 32] =
            hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308").try_into().unwrap();
        let iv = hex("cafebabefacedbaddecaf888");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let mut pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let c = Aes256Gcm::new(&key.into());
        let tag = c.encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut pt).unwrap();
        assert_eq!(
            pt,
            hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
        );
        assert_eq!(tag.to_vec(), hex("76fc6ece0f4e1768cddf8853bb2d551b"));
    }

    #[test]
    fn records_round_trip_and_tampering_is_refused() {
        let key = stream_key(1);
        let img: Vec<u8> = (0..784).map(|i| i as u8).collect();
        let sealed = seal(&key, 42, 1, item_nonce(1, 42), &img);
        assert_ne!(&sealed[record::HEADER..], &img[..], "payload is encrypted");
        let mut out = Vec::new();
        open(&key, &sealed, &mut out).unwrap();
        let h = Header::parse(&out).unwrap();
        assert_eq!((h.kind, h.seq, h.stream, h.tag), (record::KIND_IMAGE, 42, 1, [0; 16]));
        assert_eq!(&out[record::HEADER..], &img[..]);
        let mut again = Vec::new();
        seal_record(&key, &out, &mut again).unwrap();
        assert_eq!(again, sealed, "sealing the opened record gives the same bytes");

        // A flipped payload bit, a changed seq (associated data), another key.
        let mut bad = sealed.clone();
        bad[record::HEADER + 5] ^= 1;
        assert_eq!(open(&key, &bad, &mut out), Err(CryptoError::AuthFailed));
        assert!(out.is_empty(), "nothing of a refused record is passed on");
        let mut bad = sealed.clone();
        bad[record::SEQ] ^= 1;
        assert_eq!(open(&key, &bad, &mut out), Err(CryptoError::AuthFailed));
        assert_eq!(open(&stream_key(2), &sealed, &mut out), Err(CryptoError::AuthFailed));
        // Malformed: truncated, wrong kind.
        assert_eq!(open(&key, &sealed[..100], &mut out), Err(CryptoError::Malformed));
        let mut plain = sealed.clone();
        plain[record::KIND] = record::KIND_IMAGE;
        assert_eq!(open(&key, &plain, &mut out), Err(CryptoError::Malformed));
    }
}
