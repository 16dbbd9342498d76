//! systemd (issue 16): the notifications the manager sends, read from a
//! real unix datagram socket given as `NOTIFY_SOCKET`; listeners passed the
//! way systemd passes them (descriptor 3, `LISTEN_PID` = the pid that
//! execs rip-server, `LISTEN_FDS`, `LISTEN_FDNAMES`); and the unit files in
//! `contrib/systemd/`, checked by `systemd-analyze verify`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Every datagram sent to a fresh notification socket, as it arrives.
struct Notified {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn new() -> Notified {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Notified {
            path,
            got,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits for a message that starts with `prefix`; returns it.
    fn wait(&self, prefix: &str) -> String {
        eventually_within(Duration::from_secs(15), prefix, || {
            self.all().into_iter().find(|m| m.starts_with(prefix))
        })
    }

    fn position(&self, message: &str) -> usize {
        self.all().iter().position(|m| m == message).unwrap()
    }
}

fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n")
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

#[test]
fn the_manager_tells_systemd_ready_status_reloading_watchdog_and_stopping() {
    let notified = Notified::new();
    let mut server = Server::start_with(
        &["builtin:hello", "w:2"],
        Start {
            env: vec![
                ("NOTIFY_SOCKET", notified.path.display().to_string()),
                ("WATCHDOG_USEC", "600000".into()),
            ],
            ..Start::default()
        },
    );
    let ready = notified.wait("READY=1");
    assert_eq!(ready, "READY=1\nSTATUS=2/2 workers ready (version 1)");
    // READY=1 comes once every worker is, not with the first.
    assert_eq!(server.status().unwrap()["workers"], 2);

    // The watchdog, every half of WATCHDOG_USEC (the main loop ticks
    // every 250 ms): at least 3 in 1.5 s.
    let from = notified.all().len();
    std::thread::sleep(Duration::from_millis(1500));
    let pings = notified.all()[from..]
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count();
    assert!(
        pings >= 3,
        "{pings} watchdog pings in 1.5 s: {:?}",
        notified.all()
    );

    // No child may notify in the manager's name.
    for (pid, argv) in server.children() {
        let env = environ(pid);
        assert!(
            !env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"),
            "{argv:?} has {env}"
        );
    }

    let before = monotonic_usec();
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGHUP).unwrap();
    let reloading = notified.wait("RELOADING=1");
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(before <= usec && usec <= monotonic_usec(), "{usec} not now");
    let reloaded = "READY=1\nSTATUS=2/2 workers ready (version 2)";
    notified.wait(reloaded);
    assert!(notified.position(&reloading) < notified.position(reloaded));
    assert!(notified.position(&ready) < notified.position(&reloading));

    assert!(server.stop().success());
    notified.wait("STOPPING=1");
    assert!(notified.position(reloaded) < notified.position("STOPPING=1"));
}

/// Starts rip-server the way systemd does with socket activation: `sh`
/// sets `LISTEN_PID` to its own pid and execs rip-server in its place, with
/// `listener` as descriptor 3.
fn activated(
    listener: &impl std::os::fd::AsRawFd,
    names: &str,
    args: &[&str],
    dir: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rip-server"))
        .args(args)
        .arg(format!("--socket-dir={}", dir.display()))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", names)
        .env("RIP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if fd != 3 {
                let from = std::os::fd::BorrowedFd::borrow_raw(fd);
                // Descriptor 3 stays open for the exec: not dropped.
                let three = nix::unistd::dup2_raw(from, 3).map_err(std::io::Error::from)?;
                std::mem::forget(three);
            }
            let three = std::os::fd::BorrowedFd::borrow_raw(3);
            nix::fcntl::fcntl(
                three,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    command.spawn().unwrap()
}

#[test]
fn a_listener_systemd_passes_is_served_instead_of_binding() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = socket_dir();
    // http:1 is not bound: the passed socket is used instead.
    let mut child = activated(
        &listener,
        "http",
        &["builtin:hello", "w:1", "http:1"],
        dir.path(),
    );
    // Stopped even if an assertion below fails.
    let _stop = StopOnDrop(vec![child.id()]);
    drop(listener);
    let stdout = support::Output::default();
    stdout.clone().collect(child.stdout.take().unwrap());
    let stderr = support::Output::default();
    stderr.clone().collect(child.stderr.take().unwrap());
    let line = eventually("the start-up line", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited {status}: {}", stderr.text());
        }
        stdout
            .text()
            .lines()
            .find(|l| l.contains(" on http://"))
            .map(str::to_string)
    });
    assert!(
        line.contains(&format!("on http://127.0.0.1:{port} with")),
        "{line}"
    );
    eventually("the worker", || {
        let r = try_request(port, "GET", "/ping", &[], b"").ok()?;
        (r.status == 200).then_some(())
    });
    assert_eq!(
        try_request(port, "GET", "/ping", &[], b"").unwrap().text(),
        "pong"
    );
    // The manager is the process systemd started (sh exec'd it).
    assert_eq!(
        cmdline(child.id()).get(1).map(String::as_str),
        Some("manager")
    );
    for pid in descendants(child.id()) {
        assert!(!environ(pid).contains("LISTEN_FDS"), "{:?}", cmdline(pid));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_passed_descriptor_that_is_not_a_listener_is_exit_2() {
    let dir = socket_dir();
    let file = tempfile::tempfile().unwrap();
    let child = activated(
        &file,
        "http",
        &["builtin:hello", "w:1", "http:0"],
        dir.path(),
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.trim() == "rip-server: socket activation: descriptor 3 (http) is not a socket",
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let child = activated(
        &listener,
        "https",
        &["builtin:hello", "w:1", "http:0"],
        dir.path(),
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs https:"), "{stderr}");
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let analyze = on_path("systemd-analyze").expect("systemd-analyze (apt-get install systemd)");
    let dir = tempfile::tempdir().unwrap();
    let contrib = repo().join("contrib/systemd");
    for unit in ["rip-server.service", "rip-server.socket"] {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        // The one line that differs here: where the binary is.
        let text = text.replace(
            "/usr/local/bin/rip-server",
            env!("CARGO_BIN_EXE_rip-server"),
        );
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("rip-server.socket"))
        .arg(dir.path().join("rip-server.service"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify says:\n{said}"
    );
}
