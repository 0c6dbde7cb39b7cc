//! The verilated RTL as a shared library, built at run time and cached, then loaded once
//! per process.
//!
//! Why at run time and not in build.rs: a build script runs when cargo decides its inputs
//! changed, and a Verilator installed after the first build (Debian keeps the package's file
//! times, years old) never looked like a change, so a build stayed without the model until
//! `cargo clean`. Here the model is provisioned the way QEMU and the guest image are: on
//! first use, with progress, in a cache folder keyed by the RTL sources, the C++ shim and the
//! Verilator and g++ versions. The crate itself builds with no system package at all.

use ::provision::cache::KeyHasher;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// What the library is built from: the RTL and the C ABI shim, compiled into the binary so a
/// `testbed` binary provisions its own model wherever it runs.
const SOURCES: [(&str, &str); 5] = [
    ("enso_queue_engine.sv", include_str!("../../../rtl/enso/enso_queue_engine.sv")),
    ("enso_io_ports.svh", include_str!("../../../rtl/enso/enso_io_ports.svh")),
    ("enso_queue_regs.sv", include_str!("../../../rtl/enso/enso_queue_regs.sv")),
    ("nagare_pipeline.sv", include_str!("../../../rtl/nagare/nagare_pipeline.sv")),
    ("engine.cpp", include_str!("../csrc/engine.cpp")),
];

/// The file name of the built library inside its cache folder.
const LIB_NAME: &str = "libenso_cosim.so";

/// The C ABI of csrc/engine.cpp. Pin structs are passed as untyped pointers here; an
/// [`Instance`] casts its own.
pub(crate) struct Library {
    pub eqe_new: unsafe extern "C" fn(i32) -> *mut c_void,
    pub eqr_new: unsafe extern "C" fn() -> *mut c_void,
    pub npl_new: unsafe extern "C" fn() -> *mut c_void,
    model_cycle: unsafe extern "C" fn(*mut c_void, *mut c_void),
    model_free: unsafe extern "C" fn(*mut c_void),
    /// Where it was loaded from.
    path: PathBuf,
    /// Keeps the code above mapped for the life of the process.
    _lib: libloading::Library,
}

/// The pins a verilated instance is clocked with: a repr(C) struct laid out as its pin
/// struct in csrc/engine.cpp.
pub(crate) trait Pins: Copy {
    /// The reset input.
    fn rst(&mut self) -> &mut u8;
}

/// One verilated instance: the C++ object, its pins, and the clock cycles it ran.
pub(crate) struct Instance<P> {
    obj: *mut c_void,
    lib: &'static Library,
    pub pins: P,
    pub cycles: u64,
}

// SAFETY: the C++ object has no thread affinity; its one owner uses it from one thread at a
// time (`&mut self`).
unsafe impl<P: Send> Send for Instance<P> {}

impl<P: Pins> Instance<P> {
    /// The object `make` creates, starting from `pins`, held in reset for two cycles.
    ///
    /// # Safety
    /// `make` is one of the library's `*_new` functions whose instance is clocked with pins
    /// laid out as `P`.
    pub unsafe fn new(lib: &'static Library, make: impl FnOnce() -> *mut c_void, pins: P) -> Self {
        let mut i = Instance { obj: make(), lib, pins, cycles: 0 };
        *i.pins.rst() = 1;
        i.cycle();
        i.cycle();
        *i.pins.rst() = 0;
        i.cycle();
        i
    }

    /// One clock cycle: the pins' inputs applied, its outputs read back after the edge.
    pub fn cycle(&mut self) {
        // SAFETY: the object is live (owned by self) and `pins` is laid out as its pin
        // struct (the contract of `new`).
        unsafe { (self.lib.model_cycle)(self.obj, (&mut self.pins as *mut P).cast()) };
        self.cycles += 1;
    }

    /// Clocks an offer set in the pins until the instance takes it: on the edge after
    /// `ready` was seen. Panics with `hung()` when `limit` cycles since `start` pass first.
    pub fn offer(&mut self, ready: impl Fn(&P) -> bool, start: u64, limit: u64, hung: impl Fn() -> String) {
        loop {
            let taken = ready(&self.pins);
            self.cycle();
            if taken {
                return;
            }
            assert!(self.cycles - start < limit, "{}", hung());
        }
    }
}

impl<P> Drop for Instance<P> {
    fn drop(&mut self) {
        // SAFETY: the object came from one of the library's `*_new` and is freed once, here.
        unsafe { (self.lib.model_free)(self.obj) }
    }
}

static LOADED: OnceLock<Library> = OnceLock::new();
/// Serializes provisioning within a process (tests run in parallel threads).
static PROVISIONING: Mutex<()> = Mutex::new(());

/// The loaded model, if [`provision`] succeeded in this process.
pub(crate) fn library() -> Result<&'static Library, String> {
    LOADED.get().ok_or_else(|| {
        "the RTL co-simulation model is not loaded in this process: it is provisioned on first use \
         of --model rtl (needs Debian's verilator, g++ and make; `testbed rtl` builds it)"
            .to_string()
    })
}

/// Whether the model is loaded in this process.
pub fn available() -> bool {
    LOADED.get().is_some()
}

/// Finds a program on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The first line a tool prints for `--version` (part of the cache key).
fn tool_version(tool: &Path) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The cache folder of the model for this build's sources and the installed tools.
fn model_dir(cache_root: &Path, verilator: &Path, gxx: &Path) -> PathBuf {
    let mut h = KeyHasher::default();
    for (name, text) in SOURCES {
        h.add(name, text.as_bytes());
    }
    h.add("verilator", tool_version(verilator).as_bytes());
    h.add("g++", tool_version(gxx).as_bytes());
    cache_root.join("rtl-cosim").join(h.hex16())
}

/// Runs a tool, returning its combined output as the error when it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} failed ({}):\n{}{}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Verilates the three instances and compiles them with Verilator's runtime and the shim
/// into `dir/libenso_cosim.so`, in `dir.work` first so a failed build leaves nothing behind.
fn build(dir: &Path, verilator: &Path, gxx: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<(), String> {
    let work = dir.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    for (name, text) in SOURCES {
        std::fs::write(work.join(name), text).map_err(|e| format!("write {name}: {e}"))?;
    }
    // The queue engine twice: the NIC's sizes (the module's defaults) and the small one the
    // differential workload uses (enso_nic::engine::workload); the register front end with
    // the engine behind it (register mode mmio); the Nagare pipeline once.
    let small: &[&str] = &["-GNPIPES=8", "-GNNB=4", "-GPIPE_LOG2=6", "-GENTRIES_LOG2=4"];
    let engine: &[&str] = &["enso_queue_engine.sv"];
    let instances: [(&str, &str, &[&str], &[&str]); 4] = [
        ("Venso_queue_engine", "enso_queue_engine", engine, &[]),
        ("Venso_queue_engine_small", "enso_queue_engine", engine, small),
        ("Venso_queue_regs", "enso_queue_regs", &["enso_queue_regs.sv", "enso_queue_engine.sv"], &[]),
        ("Vnagare_pipeline", "nagare_pipeline", &["nagare_pipeline.sv"], &[]),
    ];
    progress("verilate");
    for (prefix, top, svs, params) in instances {
        run(Command::new(verilator)
            .args(["--cc", "--top-module", top, "-Wno-fatal", "-Wno-WIDTH", "--prefix", prefix])
            .args(params)
            // `include files (enso_io_ports.svh) sit next to the sources.
            .arg(format!("-I{}", work.display()))
            .arg("-Mdir")
            .arg(work.join(prefix))
            .args(svs.iter().map(|sv| work.join(sv))))?;
    }
    let root = Command::new(verilator)
        .args(["--getenv", "VERILATOR_ROOT"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/share/verilator".into());
    let inc = Path::new(&root).join("include");
    let mut sources: Vec<PathBuf> = vec![work.join("engine.cpp"), inc.join("verilated.cpp")];
    if inc.join("verilated_threads.cpp").is_file() {
        sources.push(inc.join("verilated_threads.cpp"));
    }
    for (prefix, ..) in instances {
        let mut cpp: Vec<PathBuf> = std::fs::read_dir(work.join(prefix))
            .map_err(|e| format!("read the verilator output: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
            .collect();
        cpp.sort();
        sources.extend(cpp);
    }
    let mut include = vec![format!("-I{}", inc.display()), format!("-I{}", inc.join("vltstd").display())];
    include.extend(instances.iter().map(|(prefix, ..)| format!("-I{}", work.join(prefix).display())));
    // Compile on every core, one file per job, then link.
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let objects: Vec<PathBuf> =
        (0..sources.len()).map(|i| work.join(format!("obj{i}.o"))).collect::<Vec<_>>();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= sources.len() || first_error.lock().is_ok_and(|e| e.is_some()) {
                    return;
                }
                let r = run(Command::new(gxx)
                    .args(["-std=c++17", "-O2", "-fPIC", "-w", "-c"])
                    .args(&include)
                    .arg(&sources[i])
                    .arg("-o")
                    .arg(&objects[i]));
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(sources.len().div_ceil(4)) || n == sources.len() {
                    progress(&format!("compile {n}/{}", sources.len()));
                }
                if let Err(e) = r {
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    progress("link");
    run(Command::new(gxx).arg("-shared").arg("-o").arg(work.join(LIB_NAME)).args(&objects).arg("-lpthread"))?;
    for o in &objects {
        let _ = std::fs::remove_file(o);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).map_err(|e| format!("move {} into place: {e}", work.display()))
}

/// Builds the model under `cache_root` if this build's sources and the installed tools have
/// none yet, then loads it into the process (once; later calls return at once). `progress`
/// hears each step of a build. Fails with what is missing when Verilator or g++ is absent.
pub fn provision(cache_root: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<PathBuf, String> {
    let _guard = PROVISIONING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded.path.clone());
    }
    let verilator = which("verilator").ok_or(
        "Verilator is not installed: the RTL co-simulation needs Debian's verilator, g++ and make \
         (`testbed rtl` installs them)",
    )?;
    let gxx = which("g++").ok_or("g++ is not installed: the RTL co-simulation compiles the model with it")?;
    let dir = model_dir(cache_root, &verilator, &gxx);
    let lib = dir.join(LIB_NAME);
    if !lib.is_file() {
        build(&dir, &verilator, &gxx, progress)?;
    }
    let loaded = load(&lib)?;
    let _ = LOADED.set(loaded);
    Ok(lib)
}

/// Loads the library and looks up the shim's five functions.
fn load(path: &Path) -> Result<Library, String> {
    let err = |e: libloading::Error| format!("load {}: {e}", path.display());
    // SAFETY: the library is the one `build` made from csrc/engine.cpp: its initializers are
    // Verilator's and the C++ runtime's, with no side effects on this process beyond its own
    // statics, and it stays loaded (never unloaded) for the life of the process.
    let lib = unsafe { libloading::Library::new(path) }.map_err(err)?;
    // SAFETY: the symbols are the extern "C" functions of csrc/engine.cpp, whose
    // signatures are exactly the types they are read as.
    unsafe {
        let eqe_new = *lib.get(b"eqe_new\0").map_err(err)?;
        let eqr_new = *lib.get(b"eqr_new\0").map_err(err)?;
        let npl_new = *lib.get(b"npl_new\0").map_err(err)?;
        let model_cycle = *lib.get(b"model_cycle\0").map_err(err)?;
        let model_free = *lib.get(b"model_free\0").map_err(err)?;
        Ok(Library {
            eqe_new,
            eqr_new,
            npl_new,
            model_cycle,
            model_free,
            path: path.to_path_buf(),
            _lib: lib,
        })
    }
}

/// Provisions the model for a test in the testbed's cache ([`::provision::cache::root`]),
/// failing loudly when it cannot: the co-simulation is part of the test suite, and the
/// differential tests must never vanish because Verilator is missing.
#[doc(hidden)]
pub fn provisioned_for_tests() {
    if let Err(e) = provision(&::provision::cache::root(), &|step| eprintln!("rtl-cosim: {step}")) {
        panic!("the RTL co-simulation model could not be provisioned: {e}");
    }
}
