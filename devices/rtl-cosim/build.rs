//! Verilates the RTL (rtl/enso/enso_queue_engine.sv twice, rtl/nagare/nagare_pipeline.sv)
//! and links it with the C ABI shim in csrc/, when the `verilator` feature is on (the
//! default) and Verilator is installed. Otherwise the crate still builds (cfg `verilated`
//! unset) and `RtlEngine::factory` / `nagare_pipeline` say what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(verilated)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let sv = manifest.join("../../rtl/enso/enso_queue_engine.sv");
    let nagare = manifest.join("../../rtl/nagare/nagare_pipeline.sv");
    println!("cargo:rerun-if-changed={}", sv.display());
    println!("cargo:rerun-if-changed={}", nagare.display());
    println!("cargo:rerun-if-changed=csrc/engine.cpp");
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("CARGO_FEATURE_VERILATOR").is_none() {
        return;
    }
    let Some(verilator) = which("verilator") else {
        // Installing Verilator later makes this file appear and the build run again.
        println!("cargo:rerun-if-changed=/usr/bin/verilator");
        println!(
            "cargo:warning=verilator not found: the RTL co-simulation (--model rtl) is not built; \
             install Debian's verilator and rebuild"
        );
        return;
    };
    println!("cargo:rerun-if-changed={}", verilator.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // The queue engine twice: the NIC's sizes (the module's defaults) and the small one the
    // differential workload uses (enso_nic::engine::workload); the Nagare pipeline once.
    let small: &[&str] = &["-GNPIPES=8", "-GNNB=4", "-GPIPE_LOG2=6", "-GENTRIES_LOG2=4"];
    let instances: [(&str, &str, &Path, &[&str]); 3] = [
        ("Venso_queue_engine", "enso_queue_engine", &sv, &[]),
        ("Venso_queue_engine_small", "enso_queue_engine", &sv, small),
        ("Vnagare_pipeline", "nagare_pipeline", &nagare, &[]),
    ];
    let mut objs = vec![];
    for (prefix, top, sv, params) in instances {
        let obj = out.join(prefix);
        let _ = std::fs::remove_dir_all(&obj);
        let status = Command::new(&verilator)
            .args(["--cc", "--top-module", top, "-Wno-fatal", "-Wno-WIDTH", "--prefix", prefix])
            .args(params)
            .arg("-Mdir")
            .arg(&obj)
            .arg(sv)
            .output()
            .expect("run verilator");
        if !status.status.success() {
            panic!(
                "verilator failed on {}:\n{}{}",
                sv.display(),
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr)
            );
        }
        objs.push(obj);
    }
    let root = Command::new(&verilator)
        .args(["--getenv", "VERILATOR_ROOT"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/share/verilator".into());
    let inc = Path::new(&root).join("include");
    // One static library: the model's classes, Verilator's runtime and the shim (they
    // refer to each other, so separate archives would need a link order).
    let mut model: Vec<PathBuf> = vec![];
    for obj in &objs {
        model.extend(
            std::fs::read_dir(obj)
                .expect("read the verilator output")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cpp")),
        );
    }
    model.sort();
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").warnings(false).opt_level(2).include(&inc).include(inc.join("vltstd"));
    for obj in &objs {
        build.include(obj);
    }
    build
        .files(&model)
        .file("csrc/engine.cpp")
        .file(inc.join("verilated.cpp"))
        .file(inc.join("verilated_threads.cpp"))
        .compile("enso_engine_cosim");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-cfg=verilated");
}
