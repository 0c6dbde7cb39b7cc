//! The seed's applications on both NICs over the native transport: every reply checked by
//! the source, and each app's own findings (backend spread, heavy hitters, GET hits, log
//! counts) checked against what the source knows.

use testbed::apps::{check, run_native, AppOptions};
use testbed::run::NicKind;

fn run(name: &str, nic: NicKind, frames: u64) {
    let dir = testbed::run::private_dir(&format!("app-{name}")).unwrap();
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
    let r = testbed::apps::bench(3000, 32).unwrap();
    assert_eq!(r.results.len(), 8);
    assert!(r.results.iter().all(|x| x.correct && x.mfps > 0.0), "{:?}", r.results);
    assert_eq!(r.ratios.len(), 4);
    assert!(r.ratios.iter().all(|x| x.throughput_ratio.is_finite() && x.throughput_ratio > 0.0));
    let table = testbed::apps::render_bench(&r);
    assert!(table.contains("maglev") && table.contains("logmon"));
    assert!(testbed::apps::plot_bench(&r).starts_with("<svg"));
}
