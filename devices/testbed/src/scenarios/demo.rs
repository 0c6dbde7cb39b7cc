//! The demo (`testbed demo`): six steps that show every part of the testbed, each run as a
//! scenario, ending in a one-screen summary: each step, pass or fail, and its key figure. The
//! full reports go to a log that the summary names.

use crate::scenarios::run::{self, EchoOptions, EngineModel, Env, NicKind, RunOptions, RunReport};
use crate::scenarios::{chain, peer};
use anyhow::Result;
use provision::cache;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// One step's outcome.
pub struct StepResult {
    pub title: &'static str,
    pub pass: bool,
    /// The step's key figure, or why it failed.
    pub figure: String,
    pub seconds: f64,
}

/// The demo's outcome: every step, and where the full reports are.
pub struct Demo {
    pub steps: Vec<StepResult>,
    pub log: PathBuf,
}

impl Demo {
    pub fn pass(&self) -> bool {
        self.steps.iter().all(|s| s.pass)
    }

    /// The one-screen summary.
    pub fn summary(&self) -> String {
        let mut s = String::from("\nEnsō testbed demo: summary\n");
        for (i, st) in self.steps.iter().enumerate() {
            s += &format!(
                "  {}. [{}] {:<34} {:>5.1}s  {}\n",
                i + 1,
                if st.pass { "PASS" } else { "FAIL" },
                st.title,
                st.seconds,
                st.figure
            );
        }
        let passed = self.steps.iter().filter(|s| s.pass).count();
        s += &format!("  {passed}/{} steps passed. Full reports: {}\n", self.steps.len(), self.log.display());
        s
    }
}

/// The demo's echo: 20 000 packets of 64 B over 16 flows and 4 pipes.
fn echo_options(nic: NicKind, model: EngineModel, packets: u64) -> EchoOptions {
    EchoOptions {
        packets,
        size: 64,
        flows: 16,
        pipes: 4,
        window: 256,
        garbage_first: false,
        nic,
        model,
        setup: Default::default(),
    }
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64)
}

fn checks(r: &RunReport) -> String {
    let ok = r.assertions.iter().filter(|a| a.pass).count();
    format!("{ok}/{} checks", r.assertions.len())
}

/// The key figure of a traffic step: replies matched, and what the datapath's metadata cost.
fn echo_figure(r: &RunReport) -> String {
    let t = &r.traffic;
    let mut s = format!("{}/{} replies matched", t["matched"], t["sent"]);
    if let Some(m) = f64_at(&r.datapath, &["pcie", "metadata_fraction"]) {
        s += &format!(", PCIe metadata {:.1} %", 100.0 * m);
    }
    if let Some(p) = f64_at(&r.datapath, &["packets_per_notification"]) {
        s += &format!(", {p:.0} packets/notification");
    }
    if let Some(c) = f64_at(&r.datapath, &["rtl_cycles_per_packet"]) {
        s += &format!(", {c:.1} RTL cycles/packet");
    }
    s
}

/// The key figure of the chain: items matched and one item's operations in each mode.
fn chain_figure(r: &RunReport) -> String {
    let mut parts = vec![];
    for (name, m) in r.modes.as_object().into_iter().flatten() {
        parts.push(format!(
            "{name}: {}/{} items, {} ops {} RTT",
            m["matched"],
            m["items"],
            m["ops"],
            m["rtt_units"].as_f64().unwrap_or(0.0)
        ));
    }
    parts.join("; ")
}

/// Runs the demo. Each step's full report (or its error) goes to the log; progress lines go
/// to stderr as the steps run.
pub fn run(env: &Env, opts: &RunOptions) -> Result<Demo> {
    let dir = cache::root().join("demo");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let log = dir.join(format!("demo-{stamp}.log"));
    let mut logf = std::fs::File::create(&log)?;
    let mut demo = Demo { steps: vec![], log: log.clone() };
    type Step<'a> =
        (&'static str, &'static str, Box<dyn FnOnce() -> Result<RunReport> + 'a>, fn(&RunReport) -> String);
    let steps: Vec<Step> = vec![
        (
            "smoke device (VFIO in a guest)",
            "the smoke device, served over vfio-user to a QEMU guest running our driver",
            Box::new(|| run::smoke(env, opts, false)),
            |r| format!("{}, guest booted in {:.1}s", checks(r), r.boot_s.unwrap_or(0.0)),
        ),
        (
            "Ensō NIC echo",
            "the Ensō NIC: the guest's echo app answers 20 000 packets from the host generator",
            Box::new(|| run::echo(env, opts, echo_options(NicKind::Enso, EngineModel::Rust, 20_000))),
            echo_figure,
        ),
        (
            "packetized NIC echo (baseline)",
            "the same echo on the packetized baseline NIC (per-packet descriptors and buffers)",
            Box::new(|| run::echo(env, opts, echo_options(NicKind::Packetized, EngineModel::Rust, 20_000))),
            echo_figure,
        ),
        (
            "accelerator chain: CPU vs Nagare",
            "the chain NIC → crypto → ML → NIC, CPU in the middle (seed Table 2), then on the Nagare switch (Table 3)",
            Box::new(|| {
                let o = chain::ChainOptions { items: 100, mode: chain::Mode::Both, ..Default::default() };
                chain::run(Some(env), opts, &o)
            }),
            chain_figure,
        ),
        (
            "stock Linux peer on the wire",
            "a second guest with a stock Linux stack on virtio-net (our vhost-user backend), cabled to the \
             Ensō NIC: ping, arping and nc answered by the Rust responder",
            Box::new(|| peer::peer_echo(env, opts, peer::PeerOptions::default())),
            checks,
        ),
        (
            "Ensō echo on the RTL queue engine",
            "the echo again, the Ensō NIC's queue engine being the RTL under Verilator (provisioned on first use)",
            Box::new(|| {
                crate::rtl::ensure()?;
                run::echo(env, opts, echo_options(NicKind::Enso, EngineModel::Rtl, 2000))
            }),
            echo_figure,
        ),
    ];
    let total = steps.len();
    for (i, (title, what, step, figure)) in steps.into_iter().enumerate() {
        eprintln!("[testbed] demo {}/{total}: {what}", i + 1);
        let t = Instant::now();
        let r = step();
        let seconds = t.elapsed().as_secs_f64();
        let _ = writeln!(logf, "===== step {}/{total}: {title} ({seconds:.1}s)", i + 1);
        let result = match r {
            Ok(r) => {
                let _ = write!(logf, "{}", run::render(&r));
                let _ = writeln!(logf, "json: {}", run::json_line(&r));
                StepResult { title, pass: r.pass, figure: figure(&r), seconds }
            }
            Err(e) => {
                let _ = writeln!(logf, "error: {e:#}");
                StepResult { title, pass: false, figure: format!("error: {e:#}"), seconds }
            }
        };
        eprintln!(
            "[testbed] demo {}/{total}: {} in {seconds:.1}s",
            i + 1,
            if result.pass { "passed" } else { "FAILED" }
        );
        demo.steps.push(result);
    }
    Ok(demo)
}
