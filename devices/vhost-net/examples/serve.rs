//! Serves the vhost-user-net backend on a socket with a loopback port (every frame the
//! guest sends comes back to it), for trying the backend with your own QEMU:
//! `cargo run -p vhost-net --example serve -- /tmp/net.sock`, then
//! `qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on
//! -machine memory-backend=mem -chardev socket,id=c,path=/tmp/net.sock
//! -netdev vhost-user,id=n,chardev=c -device virtio-net-pci,netdev=n`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()),
        )
        .init();
    let Some(sock) = std::env::args().nth(1) else {
        eprintln!("usage: serve SOCKET");
        std::process::exit(2);
    };
    let (a, b) = wire::cable(1024);
    // The far end echoes every frame back.
    std::thread::spawn(move || {
        use wire::EthPort;
        let mut b = b;
        let mut v = vec![];
        loop {
            v.clear();
            b.recv_timeout(&mut v, 64, std::time::Duration::from_millis(100));
            for f in v.drain(..) {
                tracing::info!("loopback: frame of {} bytes", f.len());
                b.send(f);
            }
            b.flush();
        }
    });
    let be = Arc::new(vhost_net::VhostNetBackend::new(vhost_net::NetConfig::default(), a).expect("backend"));
    if let Err(e) = vhost_net::serve(be, std::path::Path::new(&sock), Arc::new(AtomicBool::new(false))) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
