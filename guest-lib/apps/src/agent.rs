//! `testbed-guest agent`: the exec agent of long-lived guests (`testbed up`, `testbed exec`).
//!
//! It talks to the host over the virtio-serial port named [`PORT_NAME`] (QEMU:
//! `-device virtserialport,name=testbed.agent`), found through
//! `/sys/class/virtio-ports/*/name` (the character device is `/dev/<that directory's name>`).
//!
//! # Protocol
//!
//! Newline-delimited JSON in both directions, one object per line. Each line the agent sends
//! is written whole under a lock, so lines never interleave.
//!
//! When it opens the port (at start, and again after the host disconnected) the agent first
//! sends `{"event":"ready","kernel":"6.1.0-28-amd64","share":"/host"|null,
//! "share_error":"..."|null,"iommu_groups":N}` (the write waits until a host is connected).
//!
//! Requests (`id`: a non-negative integer chosen by the host; requests may interleave, each
//! exec runs in its own thread):
//!
//! - `{"id":N,"op":"hello"}` starts a new session: replies the ready event with the id,
//!   `{"id":N,"event":"ready",...}`, and from then on drops every reply to requests made
//!   before it. A host that connects should send it and skip lines until its reply:
//!   virtio-serial does not always let the guest notice a quick disconnect + reconnect (then
//!   no ready event is sent and replies meant for the old host could still arrive).
//! - `{"id":N,"op":"ping"}` → `{"id":N,"pong":true}`.
//! - `{"id":N,"op":"exec","argv":["cmd","arg"],"cwd":"/dir","env":{"K":"V"},"stdin":"<base64>",
//!   "timeout_ms":M}` (all but `argv` optional; `stdin` absent: /dev/null; given: written, then
//!   closed; `timeout_ms` absent or 0: none). Replies: `{"id":N,"stream":"stdout"|"stderr",
//!   "data":"<base64>"}` chunks as output arrives, then exactly one
//!   `{"id":N,"exit":CODE}` (a signal gives 128+signo; a timeout kills the process group and
//!   gives `{"id":N,"exit":124,"timed_out":true}`). If the process cannot be started (or the
//!   request is invalid) the only reply is `{"id":N,"error":"...","exit":127}`.
//!
//! The process runs in its own process group, in `cwd` (default `/`), with
//! `PATH=/sbin:/bin:/usr/sbin:/usr/bin:/host`, `HOME=/root` and the given `env` (which may
//! override both). After it exits, output still arriving is forwarded until its pipes have
//! been quiet for [`GRACE`] (at most [`GRACE_MAX`]); what a background process writes later
//! is discarded.
//!
//! Errors: a line that is not a JSON object with an integer `id` gets
//! `{"id":null,"error":"..."}`; one with an `id` but an unknown `op` gets
//! `{"id":N,"error":"..."}`; an exec request with bad fields gets `{"id":N,"error":"...",
//! "exit":127}`. Lines longer than [`MAX_LINE`] bytes are refused (`{"id":null,...}`) and
//! skipped up to the next newline.
//!
//! When the host disconnects (the port reads EOF) or the port goes away, the agent reopens
//! it and sends `ready` again. Running processes keep running, but the output and exit of
//! requests from an earlier connection (or session, see `hello`) are dropped, so a new host
//! sees no stale ids. A `ready` event without an id while requests are outstanding means
//! those requests get no further replies (the agent restarted or saw a reconnection).

use base64::Engine;
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The virtio-serial port name the agent serves.
pub const PORT_NAME: &str = "testbed.agent";
/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 16 << 20;
/// `PATH` of the processes the agent runs.
pub const PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin:/host";
/// After the process exits: stop forwarding output once the pipes were quiet this long...
pub const GRACE: Duration = Duration::from_millis(250);
/// ...or this long after the exit at the latest.
pub const GRACE_MAX: Duration = Duration::from_secs(5);
/// Output is read (and sent) in chunks of at most this many bytes.
const CHUNK: usize = 16 * 1024;
/// How long the agent waits for its port at start.
const PORT_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Requests

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello { id: u64 },
    Ping { id: u64 },
    Exec { id: u64, exec: ExecRequest },
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecRequest {
    /// Program and arguments (not empty).
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// Extra environment, in key order.
    pub env: Vec<(String, String)>,
    /// Bytes for stdin (then closed); None: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

/// A request that cannot be served, with its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The request's id, when it had a valid one.
    pub id: Option<u64>,
    /// An exec request: the reply also carries `"exit":127` (so the host's wait ends).
    pub exec: bool,
    pub message: String,
}

impl BadRequest {
    fn new(id: Option<u64>, exec: bool, message: impl Into<String>) -> BadRequest {
        BadRequest { id, exec, message: message.into() }
    }

    /// The reply line (without the newline).
    pub fn reply(&self) -> String {
        error_line(self.id, &self.message, self.exec.then_some(127))
    }
}

/// Parses one request line (without its newline; a trailing `\r` is allowed).
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| BadRequest::new(None, false, "request is not UTF-8"))?;
    let v: Value = serde_json::from_str(text)
        .map_err(|e| BadRequest::new(None, false, format!("request is not JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(BadRequest::new(None, false, "request is not a JSON object"));
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(_) => return Err(BadRequest::new(None, false, "\"id\" must be a non-negative integer")),
        None => return Err(BadRequest::new(None, false, "request has no \"id\"")),
    };
    match obj.get("op").and_then(Value::as_str) {
        Some("ping") => Ok(Request::Ping { id }),
        Some("hello") => Ok(Request::Hello { id }),
        Some("exec") => parse_exec(&obj)
            .map(|exec| Request::Exec { id, exec })
            .map_err(|m| BadRequest::new(Some(id), true, m)),
        Some(op) => {
            Err(BadRequest::new(Some(id), false, format!("unknown op {op:?} (known: exec, hello, ping)")))
        }
        None => Err(BadRequest::new(Some(id), false, "request has no string \"op\"")),
    }
}

fn parse_exec(obj: &Map<String, Value>) -> Result<ExecRequest, String> {
    let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let argv: Vec<String> = match present("argv") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("\"argv\" must be an array of strings")?,
        Some(_) => return Err("\"argv\" must be an array of strings".into()),
        None => return Err("exec request has no \"argv\"".into()),
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("\"argv\" is empty".into());
    }
    let cwd = match present("cwd") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"cwd\" must be a string".into()),
        None => None,
    };
    let env = match present("env") {
        Some(Value::Object(m)) => {
            let mut env = vec![];
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| format!("\"env\": the value of {k:?} is not a string"))?;
                if k.is_empty() || k.contains('=') {
                    return Err(format!("\"env\": bad variable name {k:?}"));
                }
                env.push((k.clone(), v.to_string()));
            }
            env.sort();
            env
        }
        Some(_) => return Err("\"env\" must be an object of strings".into()),
        None => vec![],
    };
    let stdin = match present("stdin") {
        Some(Value::String(s)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("\"stdin\" is not base64: {e}"))?,
        ),
        Some(_) => return Err("\"stdin\" must be a base64 string".into()),
        None => None,
    };
    let timeout = match present("timeout_ms") {
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => return Err("\"timeout_ms\" must be a non-negative integer".into()),
        },
        None => None,
    };
    Ok(ExecRequest { argv, cwd, env, stdin, timeout })
}

/// Splits a byte stream into lines of at most `max` bytes; longer lines are reported once
/// and skipped up to their newline.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    skipping: bool,
    max: usize,
}

/// One item from [`LineSplitter::push`].
#[derive(Debug, PartialEq)]
pub enum Line {
    Line(Vec<u8>),
    TooLong,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter { buf: vec![], skipping: false, max }
    }

    /// Feeds `data`; returns the lines it completed.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = vec![];
        while !data.is_empty() {
            let (part, rest, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if !self.skipping {
                if self.buf.len() + part.len() > self.max {
                    self.buf = vec![];
                    self.skipping = true;
                    out.push(Line::TooLong);
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            if complete {
                if !self.skipping {
                    out.push(Line::Line(std::mem::take(&mut self.buf)));
                }
                self.skipping = false;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

/// Which output stream a chunk is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What the `ready` event reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ready {
    pub kernel: String,
    pub share: Option<String>,
    pub share_error: Option<String>,
    pub iommu_groups: usize,
}

/// The ready event; with `id` when it answers a `hello`.
pub fn ready_line(r: &Ready, id: Option<u64>) -> String {
    let mut v = json!({
        "event": "ready",
        "kernel": r.kernel,
        "share": r.share,
        "share_error": r.share_error,
        "iommu_groups": r.iommu_groups,
    });
    if let Some(id) = id {
        v["id"] = id.into();
    }
    v.to_string()
}

pub fn chunk_line(id: u64, stream: Stream, data: &[u8]) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(data);
    json!({"id": id, "stream": stream.name(), "data": data}).to_string()
}

pub fn exit_line(id: u64, code: i32, timed_out: bool) -> String {
    if timed_out {
        json!({"id": id, "exit": code, "timed_out": true}).to_string()
    } else {
        json!({"id": id, "exit": code}).to_string()
    }
}

/// `{"id":N|null,"error":"..."}`, with `"exit":CODE` when given.
pub fn error_line(id: Option<u64>, message: &str, exit: Option<i32>) -> String {
    match exit {
        Some(code) => json!({"id": id, "error": message, "exit": code}).to_string(),
        None => json!({"id": id, "error": message}).to_string(),
    }
}

pub fn pong_line(id: u64) -> String {
    json!({"id": id, "pong": true}).to_string()
}

/// Where reply lines go. `send` writes one line (adding the newline) as a unit.
pub trait Sink: Send + Sync {
    fn send(&self, line: &str);
}

impl<W: Write + Send> Sink for Mutex<W> {
    fn send(&self, line: &str) {
        let mut w = self.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let _ = w.write_all(&bytes);
        let _ = w.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// Running a process

/// The exit code to report for a finished process: its code, or 128+signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(255)
}

/// A pidfd for `pid` (readable once the process exits), if the kernel has pidfd_open.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// poll(2) on `fds` for at most `timeout` (None: no limit). Returns false on EINTR.
fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> bool {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the whole call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    n >= 0
}

/// Runs the request's process and sends its output chunks and then its exit (or a spawn
/// error) to `sink`, as request `id`. Returns when the exit line has been sent.
pub fn run_exec(id: u64, req: &ExecRequest, sink: &dyn Sink) {
    let Some(program) = req.argv.first() else {
        sink.send(&error_line(Some(id), "\"argv\" is empty", Some(127)));
        return;
    };
    let cwd = req.cwd.as_deref().unwrap_or("/");
    if !Path::new(cwd).is_dir() {
        sink.send(&error_line(Some(id), &format!("cwd {cwd}: no such directory"), Some(127)));
        return;
    }
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .process_group(0)
        .stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            sink.send(&error_line(Some(id), &format!("cannot run {program}: {e}"), Some(127)));
            return;
        }
    };
    let pid = child.id() as i32;
    if let (Some(data), Some(mut w)) = (req.stdin.clone(), child.stdin.take()) {
        // Its own thread: the process may read stdin while we read its output.
        let _ = std::thread::Builder::new().name(format!("stdin-{id}")).spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    let streams = [Stream::Stdout, Stream::Stderr];
    let pidfd = pidfd_open(pid);
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let mut status = None;
    let mut exited_at = None;
    let mut last_output = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if status.is_none() {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                exited_at = Some(Instant::now());
            }
        }
        let now = Instant::now();
        let wait = match exited_at {
            Some(at) => {
                if pipes.iter().all(Option::is_none) {
                    break;
                }
                let quiet = GRACE.saturating_sub(now - last_output);
                let left = GRACE_MAX.saturating_sub(now - at);
                if quiet.is_zero() || left.is_zero() {
                    break;
                }
                Some(quiet.min(left))
            }
            None => {
                if !timed_out && deadline.is_some_and(|d| now >= d) {
                    // SAFETY: kill(2) with the child's process group id; no memory involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    timed_out = true;
                }
                let to_deadline = deadline.filter(|_| !timed_out).map(|d| d.saturating_duration_since(now));
                // Without a pidfd, the exit is noticed by polling.
                let poll_exit = pidfd.is_none().then_some(Duration::from_millis(50));
                match (to_deadline, poll_exit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        let mut fds: Vec<libc::pollfd> = vec![];
        let mut which = vec![];
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                fds.push(libc::pollfd { fd: p.raw_fd(), events: libc::POLLIN, revents: 0 });
                which.push(Some(i));
            }
        }
        if let (Some(fd), None) = (&pidfd, status) {
            fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            which.push(None);
        }
        if !poll_fds(&mut fds, wait) {
            continue;
        }
        for (f, w) in fds.iter().zip(&which) {
            let Some(i) = *w else { continue };
            if f.revents == 0 {
                continue;
            }
            let Some(p) = pipes[i].as_mut() else { continue };
            match p.read(&mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    sink.send(&chunk_line(id, streams[i], &buf[..n]));
                    last_output = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
    // Pipes still open belong to background processes: drain them so they do not get
    // SIGPIPE, but send nothing more for this request.
    for p in pipes.into_iter().flatten() {
        let _ = std::thread::Builder::new().name(format!("drain-{id}")).spawn(move || {
            let mut p = p;
            let mut buf = vec![0u8; CHUNK];
            while matches!(p.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    let code = if timed_out { 124 } else { status.map_or(255, exit_code) };
    sink.send(&exit_line(id, code, timed_out));
}

/// A readable pipe end with its fd.
trait ReadFd: Read + Send {
    fn raw_fd(&self) -> RawFd;
}

impl<T: Read + AsRawFd + Send> ReadFd for T {
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

// ---------------------------------------------------------------------------------------------
// The port

/// The agent's options (from init: `testbed-guest agent [share=/host] [share_error=MSG]`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where the host folder is mounted, if it is.
    pub share: Option<String>,
    /// Why mounting the host folder failed.
    pub share_error: Option<String>,
    /// The virtio-serial port name (default [`PORT_NAME`]).
    pub port_name: Option<String>,
}

/// The character device of the virtio-serial port called `name`, if there is one.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    let mut found: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    found.sort();
    found.into_iter().find(|p| p.exists())
}

fn wait_for_port(name: &str, limit: Option<Duration>) -> Option<PathBuf> {
    let start = Instant::now();
    let mut told = false;
    loop {
        if let Some(p) = find_port(name) {
            return Some(p);
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return None;
        }
        if !told && start.elapsed() >= PORT_WAIT {
            eprintln!("agent: still waiting for the virtio-serial port {name:?}");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port's write side: the current connection's file and its generation. Lines of an
/// older generation are dropped.
struct Port {
    gen: AtomicU64,
    out: Mutex<Option<(u64, Arc<std::fs::File>)>>,
}

impl Port {
    fn connect(&self, file: Arc<std::fs::File>) -> u64 {
        let gen = self.gen.fetch_add(1, Ordering::SeqCst) + 1;
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some((gen, file));
        gen
    }

    /// Starts a new generation on the same connection (a `hello`): older requests' lines are
    /// dropped from now on. Returns the new generation.
    fn new_session(&self) -> u64 {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let gen = self.gen.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((g, _)) = out.as_mut() {
            *g = gen;
        }
        gen
    }

    fn disconnect(&self) {
        // First the generation, so a writer waiting for the host gives up and frees the lock.
        self.gen.fetch_add(1, Ordering::SeqCst);
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Writes `line` for connection `gen`, waiting while the host is not reading. False if
    /// the connection is gone (or changed) before the whole line went out.
    fn send(&self, gen: u64, line: &str) -> bool {
        let guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some((cur, file)) = guard.as_ref() else { return false };
        if *cur != gen || self.gen.load(Ordering::SeqCst) != gen {
            return false;
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let mut off = 0;
        while off < bytes.len() {
            match (&**file).write(&bytes[off..]) {
                Ok(0) => return false,
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The host is not connected or not reading.
                    if self.gen.load(Ordering::SeqCst) != gen {
                        return false;
                    }
                    let mut fds = [libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
                    poll_fds(&mut fds, Some(Duration::from_millis(100)));
                    if fds[0].revents & libc::POLLOUT == 0 {
                        // Disconnected ports report POLLHUP at once: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }
}

/// A sink for the requests of one connection.
struct PortSink {
    port: Arc<Port>,
    gen: u64,
}

impl Sink for PortSink {
    fn send(&self, line: &str) {
        self.port.send(self.gen, line);
    }
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|rd| rd.count()).unwrap_or(0)
}

fn open_port(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)
}

/// The ready event's contents, as of now.
fn ready_info(opts: &Options) -> Ready {
    Ready {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        share: opts.share.clone(),
        share_error: opts.share_error.clone(),
        iommu_groups: count_dir("/sys/kernel/iommu_groups"),
    }
}

/// Serves one connection: reads requests until EOF or an error.
fn serve(port: &Arc<Port>, mut gen: u64, file: &std::fs::File, opts: &Options) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if !poll_fds(&mut fds, None) {
            continue;
        }
        let n = match (&*file).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("agent: reading the port: {e}");
                return;
            }
        };
        for line in splitter.push(&buf[..n]) {
            match line {
                Line::TooLong => {
                    port.send(gen, &error_line(None, &format!("line longer than {MAX_LINE} bytes"), None));
                }
                Line::Line(l) if l.trim_ascii().is_empty() => {}
                Line::Line(l) => gen = handle_line(port, gen, &l, opts),
            }
        }
    }
}

/// Handles one request line; returns the generation for the next ones.
fn handle_line(port: &Arc<Port>, gen: u64, line: &[u8], opts: &Options) -> u64 {
    match parse_request(line) {
        Ok(Request::Hello { id }) => {
            let gen = port.new_session();
            port.send(gen, &ready_line(&ready_info(opts), Some(id)));
            return gen;
        }
        Ok(Request::Ping { id }) => {
            port.send(gen, &pong_line(id));
        }
        Ok(Request::Exec { id, exec }) => {
            let sink = PortSink { port: port.clone(), gen };
            let spawned = std::thread::Builder::new()
                .name(format!("exec-{id}"))
                .spawn(move || run_exec(id, &exec, &sink));
            if let Err(e) = spawned {
                port.send(gen, &error_line(Some(id), &format!("cannot start a thread: {e}"), Some(127)));
            }
        }
        Err(bad) => {
            port.send(gen, &bad.reply());
        }
    }
    gen
}

/// Runs the agent; returns only when the port never appeared (exit code).
pub fn run(opts: Options) -> i32 {
    let name = opts.port_name.clone().unwrap_or_else(|| PORT_NAME.to_string());
    let Some(mut path) = wait_for_port(&name, Some(PORT_WAIT)) else {
        eprintln!(
            "agent: no virtio-serial port named {name:?} after {PORT_WAIT:?} \
             (QEMU: -device virtserialport,name={name})"
        );
        return 1;
    };
    let port = Arc::new(Port { gen: AtomicU64::new(0), out: Mutex::new(None) });
    let mut failures = 0u32;
    loop {
        let file = match open_port(&path) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("agent: cannot open {}: {e}; retrying", path.display());
                }
                std::thread::sleep(Duration::from_millis(200));
                if let Some(p) = wait_for_port(&name, None) {
                    path = p;
                }
                continue;
            }
        };
        failures = 0;
        let gen = port.connect(file.clone());
        let ready = ready_line(&ready_info(&opts), None);
        eprintln!("agent: serving {} (waiting for the host)", path.display());
        // Waits until the host connects.
        if port.send(gen, &ready) {
            serve(&port, gen, &file, &opts);
        }
        port.disconnect();
        drop(file);
        // Reading EOF means the host went away; the reopened port waits for the next one.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> ExecRequest {
        ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    /// Runs `req` through the exec handler; returns (stdout, stderr, the last line, all lines).
    fn run(req: &ExecRequest) -> (String, String, Value, Vec<Value>) {
        let sink = Mutex::new(Vec::<u8>::new());
        run_exec(9, req, &sink);
        let text = String::from_utf8(sink.into_inner().unwrap()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (mut out, mut err) = (vec![], vec![]);
        for l in &lines[..lines.len() - 1] {
            assert_eq!(l["id"], 9);
            let data = base64::engine::general_purpose::STANDARD.decode(l["data"].as_str().unwrap()).unwrap();
            match l["stream"].as_str().unwrap() {
                "stdout" => out.extend(data),
                "stderr" => err.extend(data),
                s => panic!("stream {s}"),
            }
        }
        let last = lines.last().unwrap().clone();
        (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), last, lines)
    }

    #[test]
    fn parse_requests() {
        assert_eq!(parse_request(br#"{"id":1,"op":"ping"}"#), Ok(Request::Ping { id: 1 }));
        assert_eq!(parse_request(b"{\"id\":2,\"op\":\"ping\"}\r"), Ok(Request::Ping { id: 2 }));
        assert_eq!(parse_request(br#"{"op":"hello","id":0}"#), Ok(Request::Hello { id: 0 }));
        let r = parse_request(
            br#"{"id":7,"op":"exec","argv":["ls","-l"],"cwd":"/host","env":{"B":"2","A":"1"},"stdin":"aGk=","timeout_ms":1500}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Exec {
                id: 7,
                exec: ExecRequest {
                    argv: vec!["ls".into(), "-l".into()],
                    cwd: Some("/host".into()),
                    env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                    stdin: Some(b"hi".to_vec()),
                    timeout: Some(Duration::from_millis(1500)),
                }
            }
        );
        let r = parse_request(br#"{"id":8,"op":"exec","argv":["true"],"cwd":null,"timeout_ms":0}"#).unwrap();
        assert_eq!(r, Request::Exec { id: 8, exec: exec(&["true"]) });
        // Unknown fields are ignored.
        assert!(parse_request(br#"{"id":3,"op":"ping","extra":[1]}"#).is_ok());
    }

    #[test]
    fn parse_bad_requests() {
        let bad = |l: &[u8]| parse_request(l).unwrap_err();
        for l in [
            &b"not json"[..],
            b"[1]",
            b"{\"op\":\"ping\"}",
            b"{\"id\":-1,\"op\":\"ping\"}",
            b"{\"id\":\"x\"}",
            b"\xff",
        ] {
            let b = bad(l);
            assert_eq!(b.id, None, "{l:?}");
            let v: Value = serde_json::from_str(&b.reply()).unwrap();
            assert_eq!(v["id"], Value::Null);
            assert!(v["error"].is_string());
            assert!(v.get("exit").is_none());
        }
        let b = bad(br#"{"id":4,"op":"reboot"}"#);
        assert_eq!((b.id, b.exec), (Some(4), false));
        assert_eq!(bad(br#"{"id":4}"#).id, Some(4));
        for l in [
            &br#"{"id":5,"op":"exec"}"#[..],
            br#"{"id":5,"op":"exec","argv":[]}"#,
            br#"{"id":5,"op":"exec","argv":"ls"}"#,
            br#"{"id":5,"op":"exec","argv":["ls",1]}"#,
            br#"{"id":5,"op":"exec","argv":["ls"],"env":{"A":1}}"#,
            br#"{"id":5,"op":"exec","argv":["ls"],"env":{"A=B":"1"}}"#,
            br#"{"id":5,"op":"exec","argv":["ls"],"stdin":"***"}"#,
            br#"{"id":5,"op":"exec","argv":["ls"],"timeout_ms":-3}"#,
            br#"{"id":5,"op":"exec","argv":["ls"],"cwd":7}"#,
        ] {
            let b = bad(l);
            assert_eq!((b.id, b.exec), (Some(5), true), "{}", String::from_utf8_lossy(l));
            let v: Value = serde_json::from_str(&b.reply()).unwrap();
            assert_eq!(v["id"], 5);
            assert_eq!(v["exit"], 127);
        }
    }

    #[test]
    fn reply_framing() {
        let v: Value = serde_json::from_str(&chunk_line(3, Stream::Stderr, b"a\n\"b\"\0")).unwrap();
        assert_eq!(v, json!({"id": 3, "stream": "stderr", "data": "YQoiYiIA"}));
        let v: Value = serde_json::from_str(&exit_line(3, 124, true)).unwrap();
        assert_eq!(v, json!({"id": 3, "exit": 124, "timed_out": true}));
        let v: Value = serde_json::from_str(&exit_line(3, 0, false)).unwrap();
        assert_eq!(v, json!({"id": 3, "exit": 0}));
        let v: Value = serde_json::from_str(&error_line(Some(3), "no \"such\"\nfile", Some(127))).unwrap();
        assert_eq!(v, json!({"id": 3, "error": "no \"such\"\nfile", "exit": 127}));
        let v: Value = serde_json::from_str(&error_line(None, "bad", None)).unwrap();
        assert_eq!(v, json!({"id": null, "error": "bad"}));
        assert_eq!(serde_json::from_str::<Value>(&pong_line(5)).unwrap(), json!({"id": 5, "pong": true}));
        let r = Ready {
            kernel: "6.1.0-28-amd64".into(),
            share: Some("/host".into()),
            share_error: None,
            iommu_groups: 4,
        };
        let v: Value = serde_json::from_str(&ready_line(&r, None)).unwrap();
        assert_eq!(
            v,
            json!({"event": "ready", "kernel": "6.1.0-28-amd64", "share": "/host", "share_error": null, "iommu_groups": 4})
        );
        let v: Value = serde_json::from_str(&ready_line(&r, Some(6))).unwrap();
        assert_eq!((v["event"].as_str(), v["id"].as_u64()), (Some("ready"), Some(6)));
        for l in
            [chunk_line(1, Stream::Stdout, b"x\ny"), error_line(Some(1), "a\nb", None), ready_line(&r, None)]
        {
            assert!(!l.contains('\n'), "one line: {l:?}");
        }
        // The sink writes each line whole, with its newline.
        let sink = Mutex::new(Vec::<u8>::new());
        sink.send("{}");
        sink.send("[]");
        assert_eq!(sink.into_inner().unwrap(), b"{}\n[]\n");
    }

    /// The request loop over a socket pair standing in for the port: replies, sessions.
    #[test]
    fn serve_requests_and_sessions() {
        use std::io::{BufRead, BufReader};
        use std::os::unix::net::UnixStream;
        let (agent_end, mut host) = UnixStream::pair().unwrap();
        agent_end.set_nonblocking(true).unwrap();
        let file = Arc::new(std::fs::File::from(OwnedFd::from(agent_end)));
        let port = Arc::new(Port { gen: AtomicU64::new(0), out: Mutex::new(None) });
        let gen = port.connect(file.clone());
        let opts = Options { share: Some("/host".into()), ..Default::default() };
        let server = {
            let port = port.clone();
            std::thread::spawn(move || serve(&port, gen, &file, &opts))
        };
        let mut lines = BufReader::new(host.try_clone().unwrap()).lines();
        let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
        host.write_all(b"{\"id\":1,\"op\":\"ping\"}\n\n garbage\n").unwrap();
        assert_eq!(next(), json!({"id": 1, "pong": true}));
        assert_eq!(next()["id"], Value::Null);
        // A request of the old session still running when the new session starts: its
        // replies are dropped.
        host.write_all(br#"{"id":2,"op":"exec","argv":["sh","-c","sleep 0.5; echo old"]}"#).unwrap();
        host.write_all(b"\n{\"id\":3,\"op\":\"hello\"}\n").unwrap();
        let v = next();
        assert_eq!(
            (v["event"].as_str(), v["id"].as_u64(), v["share"].as_str()),
            (Some("ready"), Some(3), Some("/host"))
        );
        host.write_all(br#"{"id":2,"op":"exec","argv":["sh","-c","sleep 1; echo new"]}"#).unwrap();
        host.write_all(b"\n").unwrap();
        let v = next();
        assert_eq!(
            (v["id"].as_u64(), v["stream"].as_str(), v["data"].as_str()),
            (Some(2), Some("stdout"), Some("bmV3Cg=="))
        );
        assert_eq!(next(), json!({"id": 2, "exit": 0}));
        // EOF ends the loop.
        host.shutdown(std::net::Shutdown::Both).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn line_splitting() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab"), vec![]);
        assert_eq!(
            s.push(b"c\nde\n\nf"),
            vec![Line::Line(b"abc".to_vec()), Line::Line(b"de".to_vec()), Line::Line(vec![])]
        );
        assert_eq!(s.push(b"123456789"), vec![Line::TooLong]);
        assert_eq!(s.push(b"more"), vec![]);
        assert_eq!(s.push(b"rest\nok\n"), vec![Line::Line(b"ok".to_vec())]);
        assert_eq!(s.push(b"12345678\n"), vec![Line::Line(b"12345678".to_vec())]);
    }

    #[test]
    fn exec_separates_streams_and_reports_exit() {
        let (out, err, last, _) = run(&exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
        assert_eq!(last, json!({"id": 9, "exit": 3}));
    }

    #[test]
    fn exec_stdin_env_cwd() {
        let mut req = exec(&["sh", "-c", "cat; echo \"$FOO $PATH\"; pwd"]);
        req.stdin = Some(b"in\n".to_vec());
        req.env = vec![("FOO".into(), "bar".into())];
        req.cwd = Some("/tmp".into());
        let (out, _, last, _) = run(&req);
        assert_eq!(out, format!("in\nbar {PATH}\n/tmp\n"));
        assert_eq!(last["exit"], 0);
        // Without stdin, stdin is /dev/null (cat ends at once).
        let (out, _, last, _) = run(&exec(&["sh", "-c", "cat; echo done"]));
        assert_eq!((out.as_str(), last["exit"].as_i64()), ("done\n", Some(0)));
    }

    #[test]
    fn exec_signal_timeout_and_spawn_failure() {
        let (_, _, last, _) = run(&exec(&["sh", "-c", "kill -9 $$"]));
        assert_eq!(last, json!({"id": 9, "exit": 137}));

        let mut req = exec(&["sh", "-c", "echo start; sleep 30 & sleep 30"]);
        req.timeout = Some(Duration::from_millis(300));
        let t = Instant::now();
        let (out, _, last, _) = run(&req);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(out, "start\n");
        assert_eq!(last, json!({"id": 9, "exit": 124, "timed_out": true}));

        let (_, _, last, lines) = run(&exec(&["/nonexistent/prog"]));
        assert_eq!(lines.len(), 1);
        assert_eq!(last["exit"], 127);
        assert!(last["error"].as_str().unwrap().contains("/nonexistent/prog"), "{last}");

        let mut req = exec(&["true"]);
        req.cwd = Some("/nonexistent-dir".into());
        let (_, _, last, _) = run(&req);
        assert_eq!(last["exit"], 127);
    }

    #[test]
    fn exec_does_not_wait_for_background_output_holders() {
        // The background sleep keeps stdout open; the exit is reported after the grace.
        let t = Instant::now();
        let (out, _, last, _) = run(&exec(&["sh", "-c", "echo hi; sleep 3 & exit 0"]));
        assert!(t.elapsed() < GRACE_MAX + Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(out, "hi\n");
        assert_eq!(last["exit"], 0);
    }

    #[test]
    fn exec_large_output() {
        let (out, err, last, lines) = run(&exec(&["sh", "-c", "head -c 300000 /dev/zero; echo e >&2"]));
        assert_eq!(out.len(), 300000);
        assert_eq!(err, "e\n");
        assert_eq!(last["exit"], 0);
        assert!(lines.len() > 3);
    }
}
