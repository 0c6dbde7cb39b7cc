//! The smoke driver run natively over the vfio-user client against the real server and
//! model, with no VM: both sides checked, then a reconnect.

use device_access::vfio_user::VfioUserDevice;
use guest_apps::smoke::{self, SmokeParams};
use std::sync::{Arc, Mutex};
use testdev::SmokeDevice;
use vfio_server::Server;

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "testbed-native-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn smoke_over_vfio_user_both_sides_and_reconnect() {
    let dir = tempdir();
    let sock = dir.join("smoke.sock");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&sock, dev.clone()).unwrap().spawn();

    for round in 0..2u32 {
        let params = SmokeParams {
            scratch: 0xabc0_0000 + round,
            seed: 11 + round,
        };
        let report = {
            let mut client = VfioUserDevice::connect(&sock).unwrap();
            let r = smoke::run(&mut client, params);
            // Device-side view while the client is still connected.
            let d = dev.lock().unwrap();
            assert_eq!(d.scratch(), params.scratch, "device saw the scratch write");
            assert_eq!(d.last_result(), 0, "last command was a pattern write");
            let c = pcie_model::PciDevice::counters(&*d).snapshot();
            assert!(c.dma_writes >= 2 && c.dma_reads >= 1, "{c:?}");
            assert!(c.irqs >= 1, "MSI-X delivered: {c:?}");
            assert!(c.dma_errors >= 1, "the refused DMA was counted: {c:?}");
            assert!(c.mmio_reads >= 2, "ID and scratch reads trapped: {c:?}");
            r
        };
        assert!(report.pass, "round {round}: {}", report.to_json_line());
        assert_eq!(report.transport, "vfio-user");
        // Wait until the server noticed the disconnect and reset the device.
        let t = std::time::Instant::now();
        while dev.lock().unwrap().scratch() != 0 {
            assert!(
                t.elapsed().as_secs() < 10,
                "device not reset after disconnect"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let stats = server.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.error_replies, 0, "{stats:?}");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
