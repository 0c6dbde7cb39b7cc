//! The seed's applications on both NICs over the native transport: every reply checked by
//! the source, and each app's own findings (backend spread, heavy hitters, GET hits, log
//! counts) checked against what the source knows.

use testbed::scenarios::apps::{check, run_native, AppOptions};
use testbed::scenarios::run::NicKind;

fn run(name: &str, nic: NicKind, frames: u64) {
    let dir = testbed::scenarios::run::private_dir(&format!("app-{name}")).unwrap();
    let o = AppOptions { name: name.into(), nic, frames, window: 32 };
    let r = run_native(&o, &dir).unwrap();
    for (what, pass, detail) in check(name, frames, &r.source, &r.app) {
        assert!(pass, "{name} on {}: {what}: {detail}", nic.name());
    }
    assert_eq!(r.io.frames, frames, "{name} on {}: the app handled every frame", nic.name());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn maglev_on_both_nics() {
    run("maglev", NicKind::Enso, 20_000);
    run("maglev", NicKind::Packetized, 20_000);
}

#[test]
fn nitrosketch_on_both_nics() {
    run("nitrosketch", NicKind::Enso, 20_000);
    run("nitrosketch", NicKind::Packetized, 20_000);
}

#[test]
fn mica_on_both_nics() {
    run("mica", NicKind::Enso, 20_000);
    run("mica", NicKind::Packetized, 20_000);
}

#[test]
fn logmon_on_both_nics() {
    run("logmon", NicKind::Enso, 20_000);
    run("logmon", NicKind::Packetized, 20_000);
}

#[test]
fn bench_apps_measures_all_four_on_both_nics() {
    let r = testbed::scenarios::apps::bench(3000, 32, 2).unwrap();
    assert_eq!(r.runs, 2);
    assert!(r.failures.is_empty() && r.failure().is_none(), "{:?}", r.failures);
    assert_eq!(r.results.len(), 8);
    assert!(r.results.iter().all(|x| x.correct && x.mfps > 0.0), "{:?}", r.results);
    let within = |s: &testbed::bench::Spread| s.min <= s.median && s.median <= s.max && s.min > 0.0;
    for x in &r.results {
        assert_eq!(x.runs.len(), 2, "{} on {}: one run per round", x.app, x.nic);
        // Each round runs the app on both NICs; Ensō goes first in round 0, second in round 1.
        let first = usize::from(x.nic != "enso");
        for (i, run) in x.runs.iter().enumerate() {
            assert_eq!((run.round, run.position), (i, if i == 0 { first } else { 1 - first }), "{x:?}");
            assert!(run.correct && run.error.is_none(), "{x:?}");
        }
        assert!(within(&x.spread.mfps) && within(&x.spread.busy_ns_per_frame), "{x:?}");
        assert_eq!(x.mfps, x.spread.mfps.median);
        let lo = x.runs.iter().map(|r| r.mfps).fold(f64::MAX, f64::min);
        assert_eq!(x.spread.mfps.min, lo, "{x:?}");
    }
    assert_eq!(r.ratios.len(), 4);
    for x in &r.ratios {
        assert!(x.throughput_ratio.is_finite() && x.throughput_ratio > 0.0, "{x:?}");
        assert!(within(&x.spread.throughput_ratio) && within(&x.spread.cost_ratio), "{x:?}");
    }
    let table = testbed::scenarios::apps::render_bench(&r);
    assert!(table.contains("maglev") && table.contains("logmon"));
    assert!(table.contains("median [min–max] of 2 runs"), "{table}");
    let svg = testbed::scenarios::apps::plot_bench(&r);
    assert!(svg.starts_with("<svg") && svg.contains("whisker: min–max of runs"), "{svg}");
    // A whisker per bar (four apps, two NICs), and each app's ratio above its pair.
    assert_eq!(svg.matches("stroke=\"#444444\"").count(), 8, "whiskers: {svg}");
    for x in &r.ratios {
        assert!(svg.contains(&format!("×{:.2}", x.throughput_ratio)), "{x:?} in {svg}");
    }
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["results"][0]["spread"]["mfps"]["median"].is_f64(), "{v}");
    assert!(v["ratios"][0]["spread"]["cost_ratio"]["max"].is_f64(), "{v}");
}
