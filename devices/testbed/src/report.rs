//! The report every scenario returns: its assertions, what the devices, servers and
//! guests counted, and its two renderings (readable text, one JSON line).

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// One assertion of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Assertion {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

/// The outcome of `testbed run`, printed as JSON with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub pass: bool,
    pub accel: String,
    /// Seconds from QEMU start to the guest's init report (last boot).
    pub boot_s: Option<f64>,
    /// Seconds for the whole scenario (provisioning excluded).
    pub duration_s: f64,
    pub assertions: Vec<Assertion>,
    /// Device counters by device name.
    pub devices: serde_json::Map<String, Value>,
    /// vfio-user server statistics by device name.
    pub servers: serde_json::Map<String, Value>,
    /// What the guest program reported.
    pub guest: Value,
    /// Guests killed on purpose and booted again (`--kill-first-guest`).
    pub restarts: u32,
    pub qemu: String,
    pub kernel: String,
    /// Where the logs are (kept on failure or with --keep).
    pub logs: String,
    /// Traffic scenarios: what the generator sent and got back, drops by reason.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub traffic: Value,
    /// Traffic scenarios: what the datapath cost (notifications, trapped MMIO, DMA).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub datapath: Value,
    /// The chain scenario: per mode, the per-item operations and their cost.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub modes: Value,
    /// The chain scenario: the rules `modes` are counted by (`chain::convention`).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub convention: Value,
    /// `card-echo`: the pipe IDs the card-style program used.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub pipes_used: Value,
}

impl RunReport {
    /// An empty, passing report of `scenario` whose logs are in `dir`.
    pub(crate) fn with(scenario: &str, accel: String, qemu: String, kernel: String, dir: &Path) -> Self {
        RunReport {
            scenario: scenario.into(),
            pass: true,
            accel,
            boot_s: None,
            duration_s: 0.0,
            assertions: vec![],
            devices: Default::default(),
            servers: Default::default(),
            guest: Value::Null,
            restarts: 0,
            qemu,
            kernel,
            logs: dir.display().to_string(),
            traffic: Value::Null,
            datapath: Value::Null,
            modes: Value::Null,
            convention: Value::Null,
            pipes_used: Value::Null,
        }
    }

    /// Removes the run folder when the run passed (unless asked to keep it).
    pub(crate) fn finish(&mut self, dir: &Path, keep: bool, started: Instant) {
        self.duration_s = started.elapsed().as_secs_f64();
        if self.pass && !keep {
            let _ = std::fs::remove_dir_all(dir);
            self.logs = "(removed; pass --keep to keep them)".into();
        }
    }

    pub(crate) fn check(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        self.pass &= pass;
        self.assertions.push(Assertion { name: name.into(), pass, detail: detail.into() });
    }

    /// Adds the assertions of `sub` (one guest, or one mode, of this run) under
    /// `prefix:`; returns what that guest reported.
    pub(crate) fn absorb(&mut self, prefix: &str, sub: RunReport) -> Value {
        for a in sub.assertions {
            self.check(&format!("{prefix}:{}", a.name), a.pass, a.detail);
        }
        sub.guest
    }
}

/// Named counters as a JSON object.
pub(crate) fn counters_json(c: &[(&'static str, u64)]) -> serde_json::Map<String, Value> {
    c.iter().map(|(n, v)| ((*n).to_string(), json!(v))).collect()
}

/// The drop counters that are not zero, as "name value".
pub(crate) fn nonzero_drops(c: &[(&'static str, u64)]) -> Vec<String> {
    c.iter().filter(|(n, v)| n.contains("drop") && *v > 0).map(|(n, v)| format!("{n} {v}")).collect()
}

pub(crate) fn counter_of(c: &[(&'static str, u64)], name: &str) -> u64 {
    c.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
}

/// What a request/reply source counted (the app and chain sources; flattened into their
/// JSON reports, so the fields read as the source's own).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Replies that passed the check.
    pub matched: u64,
    /// Replies that failed it or answered a request not in flight.
    pub mismatched: u64,
    /// Requests written off (no reply within the loss timeout).
    pub lost: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
}

impl Tally {
    /// Counts a mismatch; the first one's description is kept.
    pub fn mismatch(&mut self, why: impl Into<String>) {
        self.mismatched += 1;
        self.first_mismatch.get_or_insert_with(|| why.into());
    }

    /// Writes off the requests at the front of `in_flight` (oldest first, with their send
    /// time) that have waited longer than `timeout`.
    pub fn expire<T>(&mut self, in_flight: &mut VecDeque<(T, Instant)>, timeout: Duration) {
        let now = Instant::now();
        while in_flight.front().is_some_and(|(_, t)| now - *t > timeout) {
            in_flight.pop_front();
            self.lost += 1;
        }
    }

    /// Every one of `n` requests matched, none mismatched or lost.
    pub fn all_matched(&self, n: u64) -> bool {
        self.matched == n && self.mismatched == 0 && self.lost == 0
    }

    /// The counts in a line, for a check's detail.
    pub fn summary(&self) -> String {
        format!(
            "sent {}, received {}, matched {}, mismatched {}, lost {}{}",
            self.sent,
            self.received,
            self.matched,
            self.mismatched,
            self.lost,
            self.first_mismatch.as_ref().map_or(String::new(), |w| format!(" (first: {w})"))
        )
    }
}

/// A human-readable rendering of a report.
pub fn render(r: &RunReport) -> String {
    let mut s = String::new();
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    s += &format!("scenario {}: {verdict}\n", r.scenario);
    s += &format!(
        "  accelerator {}, guest booted in {}, scenario took {:.1}s\n",
        r.accel,
        r.boot_s.map_or("-".into(), |b| format!("{b:.1}s")),
        r.duration_s
    );
    s += &format!("  kernel {}, QEMU {}\n", r.kernel, r.qemu);
    if r.restarts > 0 {
        s += &format!("  guests killed and restarted: {}\n", r.restarts);
    }
    s += "  checks:\n";
    for a in &r.assertions {
        s += &format!(
            "    [{}] {:<28} {}\n",
            if a.pass { " ok " } else { "FAIL" },
            a.name,
            a.detail.replace('\n', "\n         ")
        );
    }
    if let Some(modes) = r.modes.as_object() {
        if let Some(c) = r.convention.as_object() {
            s += &format!(
                "  counted as live traces under the seed's convention: a read costs {} RTT, a write {} \
                 (merge and item rules: `convention` in --json)\n",
                c["read_rtt"].as_f64().unwrap_or(f64::NAN),
                c["write_rtt"].as_f64().unwrap_or(f64::NAN)
            );
        }
        for (name, m) in modes {
            let t = &r.traffic[name];
            s += &format!(
                "  {name} source: sent {}, matched {}, mismatched {}, lost {}, round trip p50 {:.1} µs\n",
                t["sent"],
                t["matched"],
                t["mismatched"],
                t["lost"],
                t["latency_p50_us"].as_f64().unwrap_or(0.0)
            );
            if let Ok(m) = serde_json::from_value::<crate::scenarios::chain::ModeReport>(m.clone()) {
                s += &crate::scenarios::chain::render_trace(name, &m);
                s += &format!("    CPU per item: {:.0} ns\n", m.cpu_ns_per_item);
            }
        }
    } else if !r.traffic.is_null() && r.traffic.get("matched").is_none() {
        s += &format!("  traffic: {}\n", r.traffic);
    } else if !r.traffic.is_null() {
        let t = &r.traffic;
        s += &format!(
            "  traffic: sent {}, matched {}, {} B frames, {} flows, {:.3} Mpps, latency p50 {} µs p99 {} µs\n",
            t["sent"], t["matched"], t["size"], t["flows"], t["mpps"].as_f64().unwrap_or(0.0),
            t["latency_us"]["p50"], t["latency_us"]["p99"]
        );
        let d = &r.datapath;
        let wb = d["descriptor_writebacks"].as_u64().unwrap_or(0);
        let signals = if wb > 0 {
            format!("{wb} descriptor write-backs")
        } else {
            format!(
                "{} RX notifications ({:.4} per packet, {} packets per notification)",
                d["rx_notifications"],
                d["notifications_per_packet"].as_f64().unwrap_or(0.0),
                d["packets_per_notification"].as_f64().map_or("-".to_string(), |p| format!("{p:.1}"))
            )
        };
        s += &format!(
            "  datapath: {} packets, {signals}, {} driver doorbells, {} trapped MMIO, {} B DMA metadata; \
             interface metadata (doorbells included) = {:.2} % of PCIe payload + metadata\n",
            d["packets"],
            d["doorbell_writes"],
            d["trapped_mmio"],
            d["dma_metadata_bytes"],
            100.0 * d["pcie"]["metadata_fraction"].as_f64().unwrap_or(0.0)
        );
    }
    for (name, c) in &r.devices {
        let Some(m) = c.as_object() else { continue };
        if m.values().all(|v| v.is_object()) && !r.modes.is_null() {
            // Per mode, then per device.
            for (dev, counters) in m {
                s += &format!("  {name}: device {dev} counters:");
                for (k, v) in counters.as_object().into_iter().flatten() {
                    s += &format!(" {k} {v},");
                }
                s.pop();
                s += "\n";
            }
            continue;
        }
        s += &format!("  device {name} counters:\n");
        for (k, v) in m {
            s += &format!("    {k:<22} {v}\n");
        }
    }
    s += &format!("  logs: {}\n", r.logs);
    s
}

/// The report as one JSON line.
pub fn json_line(r: &RunReport) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| json!({"pass": false, "error": e.to_string()}).to_string())
}
