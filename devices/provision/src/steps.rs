//! Long steps with progress: each step's output goes to a log file; the terminal (stderr)
//! shows the step name and elapsed time, and a failure names the step and its log.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs `cmd`, appending its stdout and stderr to `log`. Lines of the form `::step NAME`
/// printed by the command start a new step in the progress display. `what` names the
/// whole job in messages.
pub fn run_logged(what: &str, mut cmd: Command, log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log {}", log.display()))?;
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let writer2 = writer.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    drop(cmd);
    let start = Instant::now();
    let mut step = String::from("start");
    let mut step_start = Instant::now();
    eprintln!("[testbed] {what}: log in {}", log.display());
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        let _ = writeln!(logf, "{line}");
        if let Some(name) = line.strip_prefix("::step ") {
            if step != "start" {
                eprintln!("[testbed] {what}: {step} done in {:.0?}", step_start.elapsed());
            }
            step = name.to_string();
            step_start = Instant::now();
            eprintln!("[testbed] {what}: {step} ... ({:.0?} so far)", start.elapsed());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed in step '{step}' ({status}); see the log: {}", log.display());
    }
    eprintln!("[testbed] {what}: finished in {:.0?}", start.elapsed());
    Ok(())
}

/// Runs a step in-process with the same progress lines.
pub fn step<T>(what: &str, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    eprintln!("[testbed] {what}: {name} ...");
    let r = f().with_context(|| format!("{what} failed in step '{name}'"))?;
    eprintln!("[testbed] {what}: {name} done in {:.1?}", t.elapsed());
    Ok(r)
}
