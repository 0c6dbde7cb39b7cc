//! `testbed run card-echo`: software written the way software for the Ensō card is written
//! (`guest-lib/apps/src/cardecho.rs`: no driver, sysfs `resource2`, physical addresses,
//! pipes from 8191 down, upstream's register order, prefetch by head rewrite, reset by
//! write-0-and-read-back) runs in a guest without a translating IOMMU, against the
//! emulated NIC in either register mode and with either queue engine. The host generator
//! checks every reply: byte 63 incremented (upstream's echo), every other byte intact, per
//! flow in order.

use crate::scenarios::run::{
    self, counter_of, finish_guest_checks, private_dir, DriverExtensions, EngineModel, EnsoChecks, EnsoSetup,
    Env, Registers, RunOptions, RunReport, VmLock,
};
use crate::vm::{Viommu, Vm, VmExtras, VmSpec};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::Instant;

/// The destination of the generator's flows (a parameter of the generator; the card-style
/// program installs one flow-table entry per flow).
pub const DST_IP: [u8; 4] = [10, 1, 0, 2];

/// Parameters of `testbed run card-echo`.
#[derive(Clone, Copy, Debug)]
pub struct CardEchoOptions {
    pub packets: u64,
    /// Frame size (at least 64: the program increments byte 63).
    pub size: usize,
    pub flows: u32,
    /// Pipes the program takes, from 8191 down.
    pub pipes: u32,
    pub window: usize,
    pub registers: Registers,
    pub model: EngineModel,
    /// The guest's IOMMU: off or passthrough (the program gives physical addresses).
    pub viommu: Viommu,
}

impl Default for CardEchoOptions {
    fn default() -> Self {
        CardEchoOptions {
            packets: 5000,
            size: 64,
            flows: 16,
            pipes: 2,
            window: 64,
            registers: Registers::Shared,
            model: EngineModel::Rust,
            viommu: Viommu::Off,
        }
    }
}

/// `testbed run card-echo`.
pub fn card_echo(env: &Env, opts: &RunOptions, o: CardEchoOptions) -> Result<RunReport> {
    if o.size < 64 {
        bail!("card-echo frames are at least 64 bytes (the program increments byte 63)");
    }
    if o.viommu == Viommu::On {
        bail!("card-echo gives the device physical addresses: boot it with the vIOMMU off or passthrough");
    }
    let gen_config = wire::generator::GenConfig {
        packets: o.packets,
        size: o.size,
        flows: o.flows,
        window: o.window,
        rate_pps: None,
        timestamp_offset: None,
        touch_offset: guest_apps::cardecho::MARK,
        dst_ip: DST_IP,
    };
    gen_config.validate().map_err(|e| anyhow::anyhow!("invalid card-echo traffic: {e}"))?;
    let started = Instant::now();
    let _lock = VmLock::acquire()?;
    let dir = private_dir("card-echo")?;
    let (nic_end, mut gen_end) = wire::cable(1024);
    // Card software knows nothing of our extensions: their pages trap, so any access would
    // be counted.
    let setup = EnsoSetup { registers: o.registers, extensions: DriverExtensions::None };
    let nic = run::NicUnderTest::with_setup(run::NicKind::Enso, Box::new(nic_end), o.model, setup)?;
    let sock = dir.join("enso.sock");
    let server = vfio_server::Server::bind(&sock, nic.device.clone())?.spawn();
    let mut report = RunReport::new("card-echo", env, &dir);
    let ip = std::net::Ipv4Addr::from(DST_IP);
    let spec = VmSpec {
        name: "guest".into(),
        accel: env.accel,
        memory_mb: 512,
        vfio_user: vec![sock.clone()],
        scenario: "card-echo".into(),
        args: vec![
            format!("pipes={}", o.pipes),
            format!("flows={}", o.flows),
            format!("dst={ip}"),
            format!("dst_port={}", wire::generator::DST_PORT),
            format!("packets={}", o.packets),
            "idle_ms=3000".into(),
        ],
        dir: dir.clone(),
        net: vec![],
        files: vec![],
    };
    let extras = VmExtras { viommu: o.viommu, ..VmExtras::default() };
    let mut vm = Vm::start_with(&spec, &extras, &env.qemu, &env.image)?;
    let (console, qemu_log) = (vm.console.clone(), vm.qemu_log.clone());
    let ready =
        vm.wait_for(opts.timeout, |ev| ev.iter().any(|e| e["event"] == "ready" || e["event"] == "result"));
    let ready = ready && vm.events().0.iter().any(|e| e["event"] == "ready");
    let before = nic.traffic();
    let nic_before = nic.counters();
    let mut gen = wire::generator::Generator::new(gen_config);
    let traffic = ready.then(|| gen.run(&mut gen_end, Instant::now() + opts.timeout));
    let after = nic.traffic();
    let nic_after = nic.counters();
    let out = vm.wait(opts.timeout);
    finish_guest_checks(&mut report, &out, &console, &qemu_log);
    report.check("guest_ready", ready, "the program set up its pair, pipes and flow entries");
    report.pipes_used = report.guest["values"]["pipes_used"].clone();
    let used: Vec<u64> =
        report.pipes_used.as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    let want: Vec<u64> = (0..u64::from(o.pipes.max(1))).map(|i| 8191 - i).collect();
    report.check("guest:pipes_from_8191_down", used == want, format!("{used:?}"));

    let delta = |name: &str| counter_of(&nic_after, name) - counter_of(&nic_before, name);
    let mut traffic_pcie = after.since(&before);
    // The program's datapath register writes (pair rx_head and tx_tail, pipe heads, head
    // rewrites): stores into mapped pages. Polled ones the device cannot count; trapped
    // ones (mmio) it counted already.
    let writes = report.guest["values"]["register_writes"].as_u64();
    if o.registers == Registers::Shared {
        traffic_pcie.add_doorbells(writes.unwrap_or(0), 4);
    }
    let pc = traffic_pcie.counters;
    match traffic {
        Some(t) => {
            let traffic = run::generator_checks(
                &mut report,
                &t,
                o.packets,
                " (byte 63 incremented)",
                (&nic_before, &nic_after),
                json!({
                    "size": o.size,
                    "flows": o.flows,
                    "model": o.model,
                    "registers": o.registers,
                    "extensions": DriverExtensions::None,
                    "viommu": o.viommu,
                    "window": o.window,
                    "touch_offset": guest_apps::cardecho::MARK,
                    "destination": ip.to_string(),
                }),
            );
            let checks = EnsoChecks::new(setup, (&nic_before, &nic_after), &traffic_pcie, writes, t.matched);
            checks.check(&mut report);
            let refused = ["bad_config", "rx_drop_no_flow", "bad_register_writes"]
                .map(|n| (n, counter_of(&nic_after, n)));
            report.check(
                "device:card_registers_only",
                refused.iter().all(|(_, v)| *v == 0),
                refused.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", "),
            );
            run::rtl_checks(&mut report, nic.rtl_cycles.as_deref(), t.matched, o.registers, &nic_after);
            report.traffic = traffic;
            report.datapath = run::datapath_json(
                &t,
                &traffic_pcie,
                &delta,
                (checks.device_doorbells, writes),
                true,
                json!({
                    "prefetches": delta("prefetches"),
                    "register_writes_per_packet": report.guest["values"]["register_writes_per_packet"],
                }),
            );
        }
        None => report.check("traffic:all_matched", false, "no traffic: the program never became ready"),
    }
    run::file_nic(&mut report, "enso", &nic_after, pc, &server)?;
    server.stop();
    if opts.console {
        eprintln!("----- guest console -----\n{}", std::fs::read_to_string(&console).unwrap_or_default());
    }
    report.finish(&dir, opts.keep, started);
    Ok(report)
}
