//! `rip-server --stop [<app>]` (docs/DESIGN.md §8), and the check both it and the
//! front make: is the pid in a pid file really a running rip-server manager
//! of this user, for this prefix? Processes are never matched by name.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Config;
use crate::paths::Paths;
use crate::spawn::Process;
use crate::Failure;

/// How long `--stop` waits for a manager to exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The manager running for `paths`, if its pid file names a live
/// rip-server manager of this user with the same socket dir and prefix.
pub fn running(paths: &Paths) -> Option<Process> {
    running_from_pid_file(&paths.pid(), paths.dir(), paths.prefix())
}

fn running_from_pid_file(pid_file: &Path, dir: &Path, prefix: &str) -> Option<Process> {
    let text = fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    // Held first, checked second: if the check passes, the handle is that
    // manager (a signal through it never reaches a process that took the
    // pid in between).
    let process = Process::new(pid);
    is_manager(pid, dir, prefix).then_some(process)
}

/// Whether `pid` is a rip-server manager of this user serving `prefix` in `dir`.
fn is_manager(pid: u32, dir: &Path, prefix: &str) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(meta) = fs::metadata(&proc_dir) else {
        return false;
    };
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let want_prefix = format!("--socket-prefix={prefix}");
    let want_dir = format!("--socket-dir={}", dir.display());
    args.len() > 2
        && args[0] == b"rip-server"
        && args[1] == b"manager"
        && args.contains(&want_prefix.as_bytes())
        && args.contains(&want_dir.as_bytes())
}

/// Stops the server of `target`'s app, or every rip-server of this user
/// in the socket dir.
pub fn run(target: StopTarget) -> Result<(), Failure> {
    let found = find(&target);
    if found.is_empty() {
        // Nothing was stopped: a script that asked for a stop should know.
        return Err(Failure::fatal(format!(
            "no running server {}",
            describe(&target)
        )));
    }
    for (process, _) in &found {
        process.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_WAIT;
    let mut failed = Vec::new();
    for (process, prefix) in &found {
        let pid = process.pid();
        let running = || process.alive() && !is_zombie(pid);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if running() {
            failed.push(format!("{prefix} (pid {pid})"));
        } else {
            crate::output::STDOUT
                .line(format!("rip-server: stopped {prefix} (pid {pid})").as_bytes());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::fatal(format!(
            "still running after {}s: {}",
            STOP_WAIT.as_secs(),
            failed.join(", ")
        )))
    }
}

/// The running managers `target` names, each with its prefix.
pub fn find(target: &StopTarget) -> Vec<(Process, String)> {
    match target {
        StopTarget::App(config) => running(&config.paths)
            .map(|process| (process, config.paths.prefix().to_string()))
            .into_iter()
            .collect(),
        StopTarget::All(dir) => all_managers(dir),
    }
}

/// `for <app>` or `in <socket dir>`, for a line that found none.
pub fn describe(target: &StopTarget) -> String {
    match target {
        StopTarget::App(config) => format!("for {}", config.app.name),
        StopTarget::All(dir) => format!("in {}", dir.display()),
    }
}

/// What `--stop` stops and `status` shows: one app's server, or every
/// server of this user in a socket dir.
#[derive(Debug)]
pub enum StopTarget {
    App(Box<Config>),
    All(PathBuf),
}

fn all_managers(dir: &Path) -> Vec<(Process, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(Process, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let prefix = name.strip_prefix("rip_").and(name.strip_suffix(".pid"))?;
            let process = running_from_pid_file(&e.path(), dir, prefix)?;
            Some((process, prefix.to_string()))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}
