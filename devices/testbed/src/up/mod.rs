//! Long-lived guests people work in: `testbed up [TOPOLOGY.toml]`, `ls`, `exec`, `console`
//! and `down`.
//!
//! `up` checks the topology, provisions QEMU and the image in the foreground, then starts a
//! daemon (this binary, `testbed __daemon`) in its own session with its output in the state
//! folder. The daemon serves every device, cables the ports, boots the guests, connects to
//! each guest's exec agent (a virtio-serial port) and answers `exec` and `down` on a control
//! socket. `up` returns once every guest's agent said it is ready.
//!
//! The state folder (`--state DIR`, `$TESTBED_STATE`, else `up/` under the runtime or cache
//! folder) holds `state.json` (what `ls` prints), the control socket, the device sockets,
//! each guest's console socket and logs, and the daemon's log.

pub mod cli;
pub mod topology;

use crate::rig::{BuiltPort, DeviceKind, Served};
use crate::scenarios::run::Env;
use crate::vm::{Viommu, Vm, VmExtras, VmSpec};
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use topology::Topology;

/// The PCI slot of a guest's first emulated function (on the root bus); the others follow.
const FIRST_SLOT: u8 = 0x10;

/// The state folder: `explicit`, else `$TESTBED_STATE`, else `up/` beside the default
/// sockets (the runtime folder, or the cache).
pub fn state_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("TESTBED_STATE").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| crate::serve::default_socket_dir().join("up"))
}

/// What `ls` shows of a device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceState {
    pub name: String,
    pub kind: DeviceKind,
    /// One entry per PCI function: name, guest PCI address, socket.
    pub functions: Vec<FunctionState>,
    /// The UDP address of the NIC's port, when it is attached to one.
    pub udp: Option<String>,
    /// What the port is cabled to (`guest.device`), when it is.
    pub cable: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionState {
    pub name: String,
    pub pci: String,
    pub socket: PathBuf,
}

/// One guest's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestState {
    pub name: String,
    /// booting, ready, exited, failed, down.
    pub state: String,
    pub qemu_pid: Option<u32>,
    pub viommu: Viommu,
    pub devices: Vec<DeviceState>,
    pub console_socket: PathBuf,
    pub console_log: PathBuf,
    pub share: Option<PathBuf>,
    /// Seconds from QEMU's start to the agent's ready line.
    pub ready_s: Option<f64>,
    /// What the agent reported when ready (kernel, share, IOMMU groups).
    pub agent: Value,
}

/// The daemon's state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub daemon_pid: u32,
    /// starting, ready, failed.
    pub state: String,
    pub error: Option<String>,
    pub accel: String,
    pub guests: Vec<GuestState>,
}

/// What `up` hands the daemon.
#[derive(Serialize, Deserialize)]
struct Plan {
    topology: Topology,
    share: PathBuf,
    accel: String,
    timeout_s: u64,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn control_socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Reads the state file, if there is one.
pub fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_str(&std::fs::read_to_string(state_file(dir)).ok()?).ok()
}

fn write_state(dir: &Path, st: &State) -> Result<()> {
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    std::fs::rename(&tmp, state_file(dir))?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Options of `testbed up`.
pub struct UpOptions {
    pub topology: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub share: Option<PathBuf>,
    pub accel: crate::accel::AccelChoice,
    pub timeout: Duration,
}

/// Reads and checks a topology file (line and field on error).
pub fn load_topology(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    topology::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `testbed up`: returns the state once every guest is ready.
pub fn up(o: &UpOptions) -> Result<State> {
    let topology = match &o.topology {
        Some(p) => load_topology(p)?,
        None => topology::default_topology(),
    };
    let share = match &o.share {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let share = share.canonicalize().with_context(|| format!("share folder {}", share.display()))?;
    if !share.is_dir() {
        bail!("--share {}: not a folder", share.display());
    }
    let dir = state_dir(o.state.clone());
    if let Some(st) = read_state(&dir) {
        if alive(st.daemon_pid) {
            bail!(
                "guests are already up in {} (daemon {}); `testbed down` first, or use --state DIR",
                dir.display(),
                st.daemon_pid
            );
        }
    }
    let env = Env::provision(o.accel)?;
    crate::rig::private_dir(&dir)?;
    // A stale state from a daemon that died: its files go.
    for f in ["state.json", "control.sock", "daemon.pid"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("sock"));
    let plan = Plan { topology, share, accel: env.accel.name().into(), timeout_s: o.timeout.as_secs() };
    std::fs::write(dir.join("plan.json"), serde_json::to_vec_pretty(&plan)?)?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("__daemon").arg("--state").arg(&dir);
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches only the child: it leaves the caller's
    // session and process group so the daemon outlives the terminal and `testbed up | cat`.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the daemon")?;
    let deadline = Instant::now() + o.timeout + Duration::from_secs(30);
    eprintln!("[testbed] up: booting {} guest(s); logs in {}", plan.topology.guests.len(), dir.display());
    loop {
        if let Some(st) = read_state(&dir) {
            match st.state.as_str() {
                "ready" => return Ok(st),
                "failed" => {
                    let _ = child.wait();
                    bail!(
                        "up failed: {}\n{}",
                        st.error.unwrap_or_default(),
                        crate::vm::tail(&dir.join("daemon.log"), 15)
                    );
                }
                _ => {}
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the daemon exited ({status}) before the guests were ready:\n{}",
                crate::vm::tail(&dir.join("daemon.log"), 20)
            );
        }
        if Instant::now() > deadline {
            let _ = down(Some(dir.clone()), None);
            bail!(
                "the guests were not ready within {:?}; see {}",
                o.timeout,
                dir.join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `up` prints: each guest, its devices' PCI addresses, and how to reach it.
pub fn render_up(st: &State, dir: &Path) -> String {
    let mut s = String::new();
    for g in &st.guests {
        s += &format!(
            "{}: {} ({}, vIOMMU {:?}, ready in {:.1}s)\n",
            g.name,
            g.state,
            st.accel,
            g.viommu,
            g.ready_s.unwrap_or(0.0)
        );
        for d in &g.devices {
            for f in &d.functions {
                s += &format!("  {:<10} {:<10} {}\n", d.name, f.name, f.pci);
            }
            if let Some(u) = &d.udp {
                s += &format!(
                    "  {:<10} port: UDP {u} (one Ethernet frame per datagram; QEMU: -netdev dgram,...,remote.host={},remote.port={})\n",
                    d.name,
                    u.rsplit_once(':').map_or("", |x| x.0),
                    u.rsplit_once(':').map_or("", |x| x.1)
                );
            }
            if let Some(c) = &d.cable {
                s += &format!("  {:<10} port: cabled to {c}\n", d.name);
            }
        }
        if let Some(sh) = &g.share {
            s += &format!("  /host = {}\n", sh.display());
        }
        s += &format!("  exec:    testbed exec {} -- CMD...   console: testbed console {}\n", g.name, g.name);
    }
    s += &format!("state: {} (testbed down stops everything)\n", dir.display());
    s
}

/// `testbed ls`: guests of a live daemon (none when nothing is up).
pub fn ls(state: Option<PathBuf>) -> Vec<GuestState> {
    let dir = state_dir(state);
    match read_state(&dir) {
        Some(st) if alive(st.daemon_pid) => st.guests.into_iter().filter(|g| g.state != "down").collect(),
        _ => vec![],
    }
}

/// `ls --json`: `[{name, state, devices: [{kind, pci}]}]` (one entry per PCI function).
pub fn ls_json(guests: &[GuestState]) -> Value {
    Value::Array(
        guests
            .iter()
            .map(|g| {
                let devices: Vec<Value> = g
                    .devices
                    .iter()
                    .flat_map(|d| {
                        d.functions
                            .iter()
                            .map(move |f| json!({"kind": f.name, "pci": f.pci, "device": d.name}))
                    })
                    .collect();
                json!({"name": g.name, "state": g.state, "devices": devices})
            })
            .collect(),
    )
}

/// Sends one request to the daemon and returns the connection for its replies.
fn request(dir: &Path, req: &Value) -> Result<BufReader<UnixStream>> {
    let sock = control_socket(dir);
    let mut s = UnixStream::connect(&sock).with_context(|| {
        format!("no guests are up in {} (cannot reach {})", dir.display(), sock.display())
    })?;
    s.write_all(format!("{req}\n").as_bytes())?;
    Ok(BufReader::new(s))
}

/// `testbed exec VM -- CMD…`: runs CMD in the guest, copying its stdout and stderr to ours
/// (kept apart); returns its exit status.
pub fn exec(
    state: Option<PathBuf>,
    vm: &str,
    argv: &[String],
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> Result<i32> {
    let dir = state_dir(state);
    let mut req = json!({"op": "exec", "vm": vm, "argv": argv});
    if let Some(data) = stdin {
        req["stdin"] = json!(base64::engine::general_purpose::STANDARD.encode(data));
    }
    if let Some(t) = timeout {
        req["timeout_ms"] = json!(t.as_millis() as u64);
    }
    let r = request(&dir, &req)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for line in r.lines() {
        let v: Value = serde_json::from_str(&line?).context("a reply from the daemon")?;
        if let Some(stream) = v["stream"].as_str() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap_or(""))
                .unwrap_or_default();
            if stream == "stderr" {
                err.write_all(&data)?;
            } else {
                out.write_all(&data)?;
                out.flush()?;
            }
        }
        if let Some(e) = v["error"].as_str() {
            if v["exit"].is_null() {
                bail!("{e}");
            }
            writeln!(err, "testbed exec: {e}")?;
        }
        if let Some(code) = v["exit"].as_i64() {
            return Ok(code as i32);
        }
    }
    bail!("the daemon closed the connection before the command's exit status came")
}

/// `testbed console VM`: the guest's console on this terminal until Ctrl-] (or the guest's
/// end).
pub fn console(state: Option<PathBuf>, vm: &str) -> Result<()> {
    let dir = state_dir(state);
    let st = read_state(&dir)
        .filter(|s| alive(s.daemon_pid))
        .with_context(|| format!("no guests are up in {}", dir.display()))?;
    let g = st.guests.iter().find(|g| g.name == vm).with_context(|| format!("no guest named {vm}"))?;
    let sock = UnixStream::connect(&g.console_socket).with_context(|| {
        format!("connect to {}'s console {} (is another console open?)", vm, g.console_socket.display())
    })?;
    eprintln!("[testbed] connected to {vm}'s console; Ctrl-] leaves");
    let raw = RawTerminal::enter();
    let mut from = sock.try_clone()?;
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut to = sock;
    let mut buf = [0u8; 1024];
    let mut stdin = std::io::stdin();
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == 0x1d) {
            let _ = to.write_all(&buf[..i]);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
    drop(raw);
    eprintln!("\n[testbed] left {vm}'s console");
    Ok(())
}

/// The terminal in raw mode while alive (when stdin is a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios buffer.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `enter` on fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// `testbed down [VM]`: stops one guest, or everything (then the daemon exits and leaves
/// no QEMU, server, socket or state behind). Returns the guests stopped.
pub fn down(state: Option<PathBuf>, vm: Option<&str>) -> Result<Vec<String>> {
    let dir = state_dir(state);
    let Some(st) = read_state(&dir) else {
        return Ok(vec![]);
    };
    let mut stopped = vec![];
    if alive(st.daemon_pid) {
        if let Some(name) = vm {
            if !st.guests.iter().any(|g| g.name == name) {
                bail!(
                    "no guest named {name} (up: {})",
                    st.guests.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        match request(&dir, &json!({"op": "down", "vm": vm})) {
            Ok(r) => {
                for line in r.lines() {
                    let v: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
                    stopped.extend(
                        v["stopped"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(String::from)),
                    );
                }
            }
            Err(_) => {
                // SAFETY: plain kill(2) of the daemon whose pid the state file names.
                unsafe { libc::kill(st.daemon_pid as i32, libc::SIGTERM) };
            }
        }
        if vm.is_none() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(st.daemon_pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    if vm.is_none() || !alive(st.daemon_pid) {
        // Whatever a dead daemon left: its guests' QEMUs and files.
        for g in &st.guests {
            if let Some(pid) = g.qemu_pid.filter(|&p| alive(p) && is_qemu(p)) {
                // SAFETY: kill(2) of a QEMU this state started (checked by its command name).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            if !stopped.contains(&g.name) && g.state != "down" {
                stopped.push(g.name.clone());
            }
        }
        remove_runtime_files(&dir);
    }
    Ok(stopped)
}

fn is_qemu(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with("qemu"))
}

fn remove_runtime_files(dir: &Path) {
    for f in ["state.json", "control.sock", "daemon.pid", "plan.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("sock"));
    if let Ok(entries) = std::fs::read_dir(dir.join("guests")) {
        for e in entries.flatten() {
            for f in ["console.sock", "agent.sock"] {
                let _ = std::fs::remove_file(e.path().join(f));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon.

/// One guest's exec agent: requests go out on its socket, replies come back by id.
struct Agent {
    out: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Value>>>,
    next: AtomicU64,
}

impl Agent {
    /// Connects to the agent's socket (QEMU listens on it) and waits for its ready line.
    fn connect(sock: &Path, vm: &mut Vm, timeout: Duration) -> Result<(Arc<Agent>, Value)> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline && vm.running() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => bail!("cannot reach the guest agent at {}: {e}", sock.display()),
            }
        };
        let mut reader = BufReader::new(stream.try_clone()?);
        // A new session: the agent answers with its ready line and drops replies to requests of
        // any earlier connection (virtio-serial may not tell it that the host reconnected).
        (&stream).write_all(b"{\"id\":0,\"op\":\"hello\"}\n")?;
        let (tx, rx) = mpsc::channel::<Value>();
        // The reader thread: the first ready line, then replies by id.
        let agent = Arc::new(Agent {
            out: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        let a2 = agent.clone();
        std::thread::Builder::new().name("agent-reader".into()).spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Ok(v) = serde_json::from_str::<Value>(line.trim()) else { continue };
                // A ready line (ours to `hello`, id 0, or unprompted after the agent restarted).
                if v["event"] == "ready" {
                    let _ = tx.send(v);
                    continue;
                }
                let Some(id) = v["id"].as_u64() else { continue };
                let done = !v["exit"].is_null();
                let mut p = a2.pending.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(s) = p.get(&id) {
                    let _ = s.send(v);
                }
                if done {
                    p.remove(&id);
                }
            }
            // The guest went away: every waiting exec ends with an error.
            let mut p = a2.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (_, s) in p.drain() {
                let _ = s.send(json!({"error": "the guest agent disconnected", "exit": 255}));
            }
        })?;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(ready) => return Ok((agent, ready)),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline && vm.running() => {}
                Err(_) => bail!("the guest agent did not report ready (QEMU running: {})", vm.running()),
            }
        }
    }

    /// Sends an exec request; replies arrive on the returned channel.
    fn exec(&self, mut req: Value) -> Result<mpsc::Receiver<Value>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        req["id"] = json!(id);
        req["op"] = json!("exec");
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(format!("{req}\n").as_bytes())?;
        Ok(rx)
    }
}

/// A guest the daemon runs.
struct Running {
    vm: Vm,
    agent: Option<Arc<Agent>>,
    served: Vec<Served>,
}

struct Daemon {
    dir: PathBuf,
    state: Mutex<State>,
    guests: Mutex<HashMap<String, Running>>,
    stop: AtomicBool,
}

impl Daemon {
    fn save(&self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = write_state(&self.dir, &st);
    }

    fn set_guest(&self, name: &str, f: impl FnOnce(&mut GuestState)) {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = st.guests.iter_mut().find(|g| g.name == name) {
                f(g);
            }
        }
        self.save();
    }

    /// Stops one guest: QEMU, then its device servers (sockets removed).
    fn stop_guest(&self, name: &str) -> bool {
        let r = self.guests.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let Some(mut r) = r else { return false };
        r.vm.kill();
        for s in r.served {
            s.stop();
        }
        let gdir = self.dir.join("guests").join(name);
        for f in ["console.sock", "agent.sock"] {
            let _ = std::fs::remove_file(gdir.join(f));
        }
        self.set_guest(name, |g| {
            g.state = "down".into();
            g.qemu_pid = None;
        });
        true
    }

    fn stop_all(&self) -> Vec<String> {
        let names: Vec<String> =
            self.guests.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        names.into_iter().filter(|n| self.stop_guest(n)).collect()
    }

    fn handle(&self, stream: UnixStream) -> Result<()> {
        let mut w = stream.try_clone()?;
        let mut line = String::new();
        BufReader::new(stream).take(64 << 20).read_line(&mut line)?;
        let req: Value = serde_json::from_str(line.trim()).context("a request")?;
        match req["op"].as_str() {
            Some("exec") => {
                let vm = req["vm"].as_str().unwrap_or("");
                let agent = {
                    let g = self.guests.lock().unwrap_or_else(|e| e.into_inner());
                    g.get(vm).and_then(|r| r.agent.clone())
                };
                let Some(agent) = agent else {
                    let known: Vec<String> =
                        self.guests.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    writeln!(
                        w,
                        "{}",
                        json!({"error": format!("no running guest named '{vm}' (running: {})", known.join(", "))})
                    )?;
                    return Ok(());
                };
                let mut fwd = json!({"argv": req["argv"]});
                for k in ["stdin", "timeout_ms", "cwd", "env"] {
                    if !req[k].is_null() {
                        fwd[k] = req[k].clone();
                    }
                }
                let rx = agent.exec(fwd)?;
                for mut v in rx {
                    let done = !v["exit"].is_null();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("id");
                    }
                    if writeln!(w, "{v}").is_err() {
                        break;
                    }
                    if done {
                        break;
                    }
                }
            }
            Some("down") => {
                let stopped = match req["vm"].as_str() {
                    Some(vm) => {
                        if self.stop_guest(vm) {
                            vec![vm.to_string()]
                        } else {
                            vec![]
                        }
                    }
                    None => self.stop_all(),
                };
                let none_left = self.guests.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
                writeln!(w, "{}", json!({"ok": true, "stopped": stopped}))?;
                if none_left {
                    self.stop.store(true, Ordering::Relaxed);
                    // Wake the accept loop.
                    let _ = UnixStream::connect(control_socket(&self.dir));
                }
            }
            Some("ping") => writeln!(w, "{}", json!({"ok": true}))?,
            _ => writeln!(w, "{}", json!({"error": "unknown request"}))?,
        }
        Ok(())
    }
}

/// `testbed __daemon --state DIR`: runs what `up` planned until `down`.
pub fn daemon(dir: &Path) -> Result<()> {
    let plan: Plan = serde_json::from_slice(&std::fs::read(dir.join("plan.json"))?)?;
    std::fs::write(dir.join("daemon.pid"), std::process::id().to_string())?;
    let accel =
        if plan.accel == "kvm" { crate::accel::AccelChoice::Kvm } else { crate::accel::AccelChoice::Tcg };
    let d = Arc::new(Daemon {
        dir: dir.to_path_buf(),
        state: Mutex::new(State {
            daemon_pid: std::process::id(),
            state: "starting".into(),
            error: None,
            accel: plan.accel.clone(),
            guests: vec![],
        }),
        guests: Mutex::new(HashMap::new()),
        stop: AtomicBool::new(false),
    });
    d.save();
    let r = start_everything(&d, &plan, accel);
    if let Err(e) = &r {
        eprintln!("daemon: {e:#}");
        d.stop_all();
        {
            let mut st = d.state.lock().unwrap_or_else(|e| e.into_inner());
            st.state = "failed".into();
            st.error = Some(format!("{e:#}"));
        }
        d.save();
        for f in ["control.sock", "daemon.pid", "plan.json"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir_all(dir.join("sock"));
        return r;
    }
    // Serve requests until everything is down.
    let listener = UnixListener::bind(control_socket(dir))?;
    std::fs::set_permissions(control_socket(dir), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    {
        d.state.lock().unwrap_or_else(|e| e.into_inner()).state = "ready".into();
    }
    d.save();
    let d2 = d.clone();
    std::thread::spawn(move || watch_guests(&d2));
    for conn in listener.incoming() {
        if d.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let d2 = d.clone();
        std::thread::spawn(move || {
            if let Err(e) = d2.handle(conn) {
                eprintln!("daemon: request: {e:#}");
            }
        });
    }
    d.stop_all();
    remove_runtime_files(dir);
    eprintln!("daemon: everything is down");
    Ok(())
}

/// Marks guests whose QEMU ended by itself.
fn watch_guests(d: &Daemon) {
    while !d.stop.load(Ordering::Relaxed) {
        let exited: Vec<String> = d
            .guests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter_map(|(n, r)| (!r.vm.running()).then(|| n.clone()))
            .collect();
        for n in exited {
            let known = d
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .guests
                .iter()
                .any(|g| g.name == n && g.state == "ready");
            if known {
                d.set_guest(&n, |g| g.state = "exited".into());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn start_everything(d: &Arc<Daemon>, plan: &Plan, accel: crate::accel::AccelChoice) -> Result<()> {
    let env = Env::provision(accel)?;
    let dir = &d.dir;
    // Cables first: each wired port gets its end.
    let mut ends: HashMap<(String, String), (wire::CableEnd, String)> = HashMap::new();
    for w in &plan.topology.wires {
        let (x, y) = wire::cable(1024);
        ends.insert(w.a.clone(), (x, format!("{}.{}", w.b.0, w.b.1)));
        ends.insert(w.b.clone(), (y, format!("{}.{}", w.a.0, w.a.1)));
    }
    // Every device of every guest, served.
    let mut served_by_guest: Vec<(Vec<Served>, Vec<DeviceState>)> = vec![];
    for g in &plan.topology.guests {
        let sdir = dir.join("sock").join(&g.name);
        crate::rig::private_dir(&sdir)?;
        let mut served = vec![];
        let mut states = vec![];
        let mut slot = FIRST_SLOT;
        for dev in &g.devices {
            let place = if dev.kind == DeviceKind::Nagare {
                sdir.join(&dev.name)
            } else {
                sdir.join(format!("{}.sock", dev.name))
            };
            let key = (g.name.clone(), dev.name.clone());
            let (port, cable) = match ends.remove(&key) {
                Some((end, to)) => (Some(BuiltPort::cable(end, &to)), Some(to)),
                None if dev.kind.has_port() => (Some(BuiltPort::build(&dev.port)?), None),
                None => (None, None),
            };
            let s = Served::start_with_port(&dev.config(), port, &place)
                .with_context(|| format!("{}.{}", g.name, dev.name))?;
            let functions = s
                .functions
                .iter()
                .map(|f| {
                    let fs = FunctionState {
                        name: f.name.clone(),
                        pci: format!("0000:00:{slot:02x}.0"),
                        socket: f.socket.clone(),
                    };
                    slot += 1;
                    fs
                })
                .collect();
            states.push(DeviceState {
                name: dev.name.clone(),
                kind: dev.kind,
                functions,
                udp: s.udp_addr().map(|a| a.to_string()),
                cable,
            });
            served.push(s);
        }
        served_by_guest.push((served, states));
    }
    // Boot every guest, then wait for each agent.
    let mut booting = vec![];
    for (g, (served, states)) in plan.topology.guests.iter().zip(served_by_guest) {
        let gdir = dir.join("guests").join(&g.name);
        crate::rig::private_dir(&gdir)?;
        let sockets: Vec<PathBuf> =
            served.iter().flat_map(|s| s.functions.iter().map(|f| f.socket.clone())).collect();
        let spec = VmSpec {
            name: g.name.clone(),
            accel: env.accel,
            memory_mb: g.memory_mb,
            vfio_user: sockets,
            scenario: "agent".into(),
            args: vec![],
            dir: gdir.clone(),
            net: vec![],
            files: vec![],
        };
        let extras = VmExtras {
            cpus: g.cpus,
            viommu: g.viommu,
            share: Some(plan.share.clone()),
            agent: Some(gdir.join("agent.sock")),
            console: Some(gdir.join("console.sock")),
            first_slot: Some(FIRST_SLOT),
            kernel_args: g.kernel_args.clone(),
            ..VmExtras::default()
        };
        let vm = Vm::start_with(&spec, &extras, &env.qemu, &env.image)
            .with_context(|| format!("boot {}", g.name))?;
        {
            let mut st = d.state.lock().unwrap_or_else(|e| e.into_inner());
            st.guests.push(GuestState {
                name: g.name.clone(),
                state: "booting".into(),
                qemu_pid: Some(vm.pid()),
                viommu: g.viommu,
                devices: states,
                console_socket: gdir.join("console.sock"),
                console_log: vm.console.clone(),
                share: Some(plan.share.clone()),
                ready_s: None,
                agent: Value::Null,
            });
        }
        d.save();
        booting.push((g.name.clone(), gdir.join("agent.sock"), Running { vm, agent: None, served }));
    }
    let timeout = Duration::from_secs(plan.timeout_s.max(10));
    for (name, sock, mut r) in booting {
        let got = Agent::connect(&sock, &mut r.vm, timeout);
        let ready_s = r.vm.elapsed();
        let console_log = r.vm.console.clone();
        d.guests.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), r);
        let (agent, ready) = got.with_context(|| {
            format!("guest {name} did not come up; its console:\n{}", crate::vm::tail(&console_log, 15))
        })?;
        if let Some(r) = d.guests.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&name) {
            r.agent = Some(agent);
        }
        d.set_guest(&name, |g| {
            g.state = "ready".into();
            g.ready_s = Some(ready_s);
            g.agent = ready;
        });
    }
    Ok(())
}
