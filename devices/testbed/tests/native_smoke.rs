//! The smoke driver run natively over the vfio-user client against the real server and
//! model, with no VM: both sides checked, then a reconnect.

use device_access::vfio_user::VfioUserDevice;
use guest_apps::smoke::{self, SmokeParams};
use std::sync::{Arc, Mutex};
use testdev::SmokeDevice;
use vfio_server::Server;

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("testbed-native-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn smoke_over_vfio_user_both_sides_and_reconnect() {
    let dir = tempdir();
    let sock = dir.join("smoke.sock");
    let dev = Arc::new(Mutex::new(SmokeDevice::new().unwrap()));
    let server = Server::bind(&sock, dev.clone()).unwrap().spawn();

    for round in 0..2u32 {
        let params = SmokeParams { scratch: 0xabc0_0000 + round, seed: 11 + round, hold_ms: 0 };
        // The counters accumulate across clients: check this round's share.
        let before = pcie_model::PciDevice::counters(&*dev.lock().unwrap()).snapshot();
        let report = {
            let mut client = VfioUserDevice::connect(&sock).unwrap();
            let r = smoke::run(&mut client, params);
            // Device-side view while the client is still connected.
            let d = dev.lock().unwrap();
            assert_eq!(d.scratch(), params.scratch, "device saw the scratch write");
            assert_eq!(d.last_checksum() as u64, r.values["checksum"].as_u64().unwrap());
            let c = pcie_model::PciDevice::counters(&*d).snapshot().since(&before);
            assert!(c.dma_writes >= 2 && c.dma_reads >= 1, "{c:?}");
            assert!(c.irqs >= 1, "MSI-X delivered: {c:?}");
            assert_eq!(c.dma_errors, 1, "the one refused DMA was counted: {c:?}");
            assert!(c.mmio_reads >= 2, "ID and scratch reads trapped: {c:?}");
            // Seven registers per command, written into the polled page.
            let commands = r.values["commands"].as_u64().unwrap();
            assert_eq!(r.values["doorbell_writes"].as_u64(), Some(7 * commands), "{:?}", r.values);
            r
        };
        assert!(report.pass, "round {round}: {}", report.to_json_line());
        assert_eq!(report.transport, "vfio-user");
        // The device keeps its state after the client leaves (readable, like a card's
        // registers); the next connection starts from power-on state.
        assert_eq!(dev.lock().unwrap().scratch(), params.scratch);
    }
    // A third client sees a freshly reset device.
    let mut client = VfioUserDevice::connect(&sock).unwrap();
    let regs = device_access::DeviceAccess::bar(&mut client, 0).unwrap();
    assert_eq!(regs.read32(testbed_regs::smoke::REG_SCRATCH).unwrap(), 0, "reset on connect");
    assert_eq!(regs.read32(testbed_regs::smoke::REG_COMMANDS).unwrap(), 0);
    drop(client);
    let stats = server.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.error_replies, 0, "{stats:?}");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
