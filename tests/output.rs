//! Output never stops the server: with its stdout and stderr closed (as
//! `rip-server ... | head -1` leaves them) or full (a pipe nobody reads),
//! every request is still served, a rolling restart still happens, and a
//! stop still leaves nothing behind. Log lines are lost, nothing else.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Starts `builtin:hello w:2` with stdout and stderr both on one pipe, and
/// returns the child, the port from its start-up line, and the pipe's
/// reading end (with whatever was read past that line).
fn start_on_a_pipe(dir: &tempfile::TempDir) -> (Child, u16, BufReader<std::fs::File>) {
    // Close-on-exec, so that the server does not hold the reading end.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // A small pipe, so that a few requests' log lines fill it.
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let write2: OwnedFd = write.try_clone().unwrap();
    let child = Command::new(BIN)
        .args(["builtin:hello", "w:2", "http:0"])
        .arg(format!("--socket-dir={}", dir.path().display()))
        .env_remove("PORT")
        .env("RIP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(std::fs::File::from(read));
    let mut seen = String::new();
    let port = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no start-up line: {seen}"
        );
        seen.push_str(&line);
        if let Some(port) = parse_port(&line) {
            break port;
        }
    };
    (child, port, reader)
}

/// Every one of `n` requests is answered `200`.
fn serve_all(port: u16, n: usize) {
    for i in 0..n {
        let response =
            try_request(port, "GET", "/", &[], b"").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status, 200, "request {i}");
    }
}

/// Stops the server with SIGTERM and checks that it exits in time and
/// leaves nothing in its socket dir.
fn stop_and_check(mut child: Child, dir: &tempfile::TempDir) {
    let pid = child.id();
    assert!(child.try_wait().unwrap().is_none(), "the manager died");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a stop exits 0, got {status}");
    eventually("no descendants left", || {
        descendants(pid).is_empty().then_some(())
    });
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waits until `/status` says `healthy` with `n` workers.
fn healthy(port: u16, n: u64) {
    eventually("the workers to be back", || {
        let response = try_request(port, "GET", "/status", &[], b"").ok()?;
        let status: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        (status["status"] == "healthy" && status["workers"] == n).then_some(())
    });
}

/// A rolling restart (it logs from every role): workers 0 and 1 are
/// replaced by 2 and 3, which then serve.
fn rolling_restart(child: &Child, port: u16) {
    let manager = child.id();
    kill(Pid::from_raw(manager as i32), Signal::SIGHUP).unwrap();
    eventually("the rolling restart", || {
        let workers: Vec<String> = children_of(manager)
            .into_iter()
            .map(|pid| cmdline(pid).join(" "))
            .filter(|c| c.contains(" worker "))
            .collect();
        let new = |id: &str| {
            workers
                .iter()
                .any(|c| c.contains(&format!(" worker {id} ")))
        };
        (new("2") && new("3") && workers.len() == 2).then_some(())
    });
    healthy(port, 2);
}

#[test]
fn a_closed_output_stops_nothing() {
    let dir = socket_dir();
    let (child, port, reader) = start_on_a_pipe(&dir);
    healthy(port, 2);
    // As `| head -1` does: the reader goes away.
    drop(reader);
    serve_all(port, 300); // each one writes an access log line
    rolling_restart(&child, port);
    serve_all(port, 100);
    stop_and_check(child, &dir);
}

#[test]
fn a_full_pipe_nobody_reads_stops_nothing() {
    let dir = socket_dir();
    let (child, port, reader) = start_on_a_pipe(&dir);
    healthy(port, 2);
    // The reader stays open and reads no more: the pipe (4 KiB) fills
    // with access log lines long before these are done.
    let started = Instant::now();
    serve_all(port, 5000);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "requests waited for the log"
    );
    rolling_restart(&child, port);
    serve_all(port, 100);
    stop_and_check(child, &dir);
    drop(reader);
}

/// Voluntary context switches of every thread of `pid` so far.
fn wakes(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// An idle server sleeps: its output threads wait for lines instead of
/// waking every 5 ms to look for some (they did: ~190 wakes a second in the
/// LB, ~390 in the manager, for nothing).
#[test]
fn an_idle_server_does_not_wake_for_its_output() {
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    // The access log and the manager's log have been written: their
    // threads run.
    assert_eq!(server.get("/ping").status, 200);
    server.wait_output("GET /ping");
    std::thread::sleep(Duration::from_millis(300));
    let processes = [("manager", server.pid()), ("lb", server.lb_pid())];
    let before: Vec<u64> = processes.iter().map(|&(_, pid)| wakes(pid)).collect();
    std::thread::sleep(Duration::from_secs(1));
    for ((name, pid), before) in processes.iter().zip(before) {
        let woke = wakes(*pid) - before;
        assert!(woke < 100, "the idle {name} woke {woke} times in a second");
    }
}
