//! The vfio-user message decoder and server loop, fed raw bytes: whatever arrives on the
//! socket (headers with any size, command, flags; truncated bodies; garbage) must be
//! answered or cause a clean disconnect, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use vfio_server::{Server, ServerStats};

type Dev = Arc<Mutex<dyn pcie_model::PciDevice>>;
static DEV: OnceLock<Dev> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dev = DEV.get_or_init(|| Arc::new(Mutex::new(testdev::SmokeDevice::new().unwrap()))).clone();
    let (mut client, server) = UnixStream::pair().unwrap();
    // Prefix a valid VERSION half the time, so inputs get past negotiation easily.
    let mut input = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        let body = b"\0\0\0\0{}\0";
        input.extend_from_slice(&1u16.to_le_bytes());
        input.extend_from_slice(&1u16.to_le_bytes());
        input.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
        input.extend_from_slice(&[0; 8]);
        input.extend_from_slice(body);
    }
    input.extend_from_slice(data.get(1..).unwrap_or_default());
    let reader = {
        let mut c = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut sink = [0u8; 65536];
            while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
        })
    };
    let _ = client.write_all(&input);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let stats = Arc::new(ServerStats::default());
    let stop = AtomicBool::new(false);
    Server::serve_client(dev, server, &stats, &stop, Duration::from_millis(200));
    drop(client);
    let _ = reader.join();
});
