//! The driver against the accelerator models over vfio-user: commands, a full ring, error
//! completions, authentication failure.

use accel::{crypto, function, ml, Accelerator};
use accel_driver::{Accel, Command, Error, Function};
use device_access::vfio_user::VfioUserDevice;
use device_access::{DeviceAccess, DmaOptions};
use pcie_model::PciDevice;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testbed_regs::accel::status;
use testbed_regs::record::{self, Header};

fn serve(dev: Accelerator, tag: &str) -> (vfio_server::ServerHandle, Box<dyn DeviceAccess>) {
    let dir = std::env::temp_dir().join(format!("accel-driver-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let _ = std::fs::remove_file(&sock);
    let shared: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(dev));
    let h = vfio_server::Server::bind(&sock, shared).unwrap().spawn();
    (h, Box::new(VfioUserDevice::connect(&sock).unwrap()))
}

const T: Duration = Duration::from_secs(10);

#[test]
fn crypto_commands_errors_and_a_full_ring() {
    let (server, access) = serve(Accelerator::crypto().unwrap(), "crypto");
    let mut a = Accel::open(access, 4).unwrap();
    assert_eq!(a.function(), Function::Crypto);
    let buf = a.access().alloc_dma(64 << 10, DmaOptions::default()).unwrap();
    let (src, dst) = (buf.iova(), buf.iova() + 32768);
    let key = crypto::stream_key(4);
    let sealed = crypto::seal(&key, 11, 4, crypto::item_nonce(4, 11), &[9u8; 784]);
    buf.write_slice(&sealed, 0);

    // Fill the ring (entries − 1 commands) before ringing once: the next post is refused.
    let cmd = Command::decrypt(src, sealed.len() as u32, dst, 4096, key);
    let tags: Vec<u32> = (0..3).map(|_| a.post(&cmd).unwrap()).collect();
    assert!(matches!(a.post(&cmd), Err(Error::RingFull(3))));
    a.ring().unwrap();
    for t in tags {
        let c = a.wait(T).unwrap();
        assert_eq!((c.tag, c.status, c.out_len), (t, status::OK, sealed.len() as u32));
    }
    let out = &buf.to_vec(32768, sealed.len())[..];
    assert_eq!(Header::parse(out).unwrap().kind, record::KIND_IMAGE);
    assert_eq!(&out[record::HEADER..], &[9u8; 784][..]);

    // Wrong key: authentication failure, reported. A bad length: error completion.
    let c = a.submit(&Command::decrypt(src, sealed.len() as u32, dst, 4096, crypto::stream_key(5))).unwrap();
    assert_eq!((a.wait(T).unwrap().tag, a.in_flight()), (c, 0));
    let counters = a.counters().unwrap();
    assert_eq!(counters.iter().find(|(n, _)| *n == "auth_failures").unwrap().1, 1);
    a.submit(&Command::decrypt(src, 0, dst, 4096, key)).unwrap();
    let c = a.wait(T).unwrap();
    assert_eq!((c.status, c.status_name()), (status::BAD_LENGTH, "bad_length"));
    drop(a);
    server.stop();
}

#[test]
fn inference_through_the_driver_matches_the_reference() {
    let (server, access) = serve(Accelerator::ml().unwrap(), "ml");
    let mut a = Accel::open(access, 8).unwrap();
    assert_eq!(a.function(), Function::Ml);
    let buf = a.access().alloc_dma(64 << 10, DmaOptions::default()).unwrap();
    for seq in 0..20u32 {
        let (_, img) = ml::synthetic_image(seq);
        let mut rec = vec![0u8; record::HEADER + img.len()];
        Header {
            len: img.len() as u32,
            seq,
            kind: record::KIND_IMAGE,
            stream: 0,
            nonce: [0; 12],
            tag: [0; 16],
        }
        .write(&mut rec);
        rec[record::HEADER..].copy_from_slice(&img);
        buf.write_slice(&rec, 0);
        a.submit(&Command::infer(buf.iova(), rec.len() as u32, buf.iova() + 8192, 256, ml::MODEL_ID))
            .unwrap();
        let c = a.wait(T).unwrap();
        assert!(c.ok(), "{}", c.status_name());
        let want = function::expected_result(&rec).unwrap();
        assert_eq!(buf.to_vec(8192, c.out_len as usize), want);
    }
    drop(a);
    server.stop();
}
