//! What the integration tests share: starting the real `rip-server` binary
//! in a unique temp socket dir on `http:0`, reading the port it prints,
//! waiting on deadlines (never fixed sleeps), a small raw HTTP/1.1 client,
//! and printing the server's output when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rip-server");

/// How long anything may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The repository root (for `examples/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(name: &str) -> String {
    repo().join("examples").join(name).display().to_string()
}

/// The probe command app (`tests/apps/probe`): threaded, so it would
/// notice two requests at once.
pub fn probe() -> String {
    repo().join("tests/apps/probe").display().to_string()
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Polls `check` until it returns Some, or panics after `DEADLINE`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    eventually_within(DEADLINE, what, &mut check)
}

pub fn eventually_within<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A short, unique socket dir (unix socket paths are limited to 107 bytes).
pub fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rip")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// Finds a runtime on PATH, or fails the test saying how to install it.
/// Where `name` is on PATH, if it is.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn runtime(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!("{name} is not on PATH; the tests need Node.js and Bun ('npm install -g bun')")
    })
}

/// Output collected from a child's pipe.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn collect(self, pipe: impl Read + Send + 'static) {
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                self.0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A running rip-server, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub stdout: Output,
    pub stderr: Output,
    pub args: Vec<String>,
    status: Option<ExitStatus>,
}

/// Options for [`Server::start_with`].
#[derive(Default)]
pub struct Start<'a> {
    pub env: Vec<(&'a str, String)>,
    pub dir: Option<tempfile::TempDir>,
    /// Open-files limits (soft, hard) to start the server with.
    pub nofile: Option<(u64, u64)>,
}

impl Server {
    /// Starts `rip-server <args> http:0 --socket-dir=<fresh dir>` and waits
    /// for its start-up line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, Start::default())
    }

    pub fn start_with(args: &[&str], options: Start<'_>) -> Server {
        let dir = options.dir.unwrap_or_else(socket_dir);
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("http:")) {
            all.push("http:0".into());
        }
        all.push(format!("--socket-dir={}", dir.path().display()));
        let mut command = Command::new(BIN);
        command
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("PORT")
            .env("RIP_LOG", "info");
        for (key, value) in &options.env {
            command.env(key, value);
        }
        if let Some((soft, hard)) = options.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command.spawn().expect("start rip-server");
        let stdout = Output::default();
        let stderr = Output::default();
        stdout.clone().collect(child.stdout.take().expect("stdout"));
        stderr.clone().collect(child.stderr.take().expect("stderr"));
        let mut server = Server {
            child,
            port: 0,
            dir,
            stdout,
            stderr,
            args: all,
            status: None,
        };
        server.port = eventually("the start-up line", || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "rip-server {:?} exited early ({status})\nstdout:\n{}\nstderr:\n{}",
                    server.args,
                    server.stdout.text(),
                    server.stderr.text()
                );
            }
            parse_port(&server.stdout.text())
        });
        server
    }

    /// `builtin:hello w:1` in `dir` (a socket dir that may hold a crashed
    /// run's leftovers), its worker joined.
    pub fn hello_in(dir: tempfile::TempDir) -> Server {
        let server = Server::start_with(
            &["builtin:hello", "w:1"],
            Start {
                dir: Some(dir),
                ..Start::default()
            },
        );
        server.wait_workers(1);
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/status` reports `n` joined workers and is healthy.
    pub fn wait_workers(&self, n: usize) -> serde_json::Value {
        eventually(&format!("{n} workers joined"), || {
            let status = self.status()?;
            (status["workers"] == n && status["status"] == "healthy").then_some(status)
        })
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let response = try_request(self.port, "GET", "/status", &[], b"").ok()?;
        serde_json::from_slice(&response.body).ok()
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        try_request(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.output()))
    }

    pub fn socket(&self, suffix: &str) -> PathBuf {
        let prefix = self.prefix();
        self.dir.path().join(format!("{prefix}.{suffix}"))
    }

    /// The socket prefix, read from the pid file's name.
    pub fn prefix(&self) -> String {
        eventually("the pid file", || {
            std::fs::read_dir(self.dir.path()).ok()?.find_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".pid").map(str::to_string)
            })
        })
    }

    /// Waits until the server's combined output contains `needle`.
    pub fn wait_output(&self, needle: &str) -> String {
        eventually(&format!("output containing {needle:?}"), || {
            let all = self.output();
            all.contains(needle).then_some(all)
        })
    }

    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal);
        let status = eventually("rip-server to exit", || {
            self.child.try_wait().ok().flatten()
        });
        self.status = Some(status);
        status
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// The pids of this server's processes (the manager's descendants).
    pub fn descendants(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    /// The load balancer's pid.
    pub fn lb_pid(&self) -> u32 {
        self.children()
            .into_iter()
            .find(|(_, argv)| argv.get(1).map(String::as_str) == Some("lb"))
            .map(|(pid, _)| pid)
            .expect("an lb process")
    }

    /// `(pid, argv)` of the manager's direct children.
    pub fn children(&self) -> Vec<(u32, Vec<String>)> {
        children_of(self.pid())
            .into_iter()
            .map(|pid| (pid, cmdline(pid)))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("rip-server {:?}\n{}", self.args, self.output());
        }
        if self.status.is_none() {
            let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn parse_port(stdout: &str) -> Option<u16> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rip-server: starting") || l.starts_with("rip-server: serving"))?;
    let after = line.split("http://").nth(1)?;
    let host_port = after.split_whitespace().next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// The argv of a process.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

pub fn descendants(root: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for child in children_of(pid) {
            all.push(child);
            todo.push(child);
        }
    }
    all
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection to 127.0.0.1:`port`.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut client = Client::connect(port)?;
    client.send(method, path, headers, body)
}

/// A byte stream a [`Client`] can talk over.
pub trait Stream: Read + Write + Send {
    fn close(&self);
}

impl Stream for TcpStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Stream for UnixStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// One request on a fresh connection to the unix socket at `path`.
pub fn unix_request(path: &Path, method: &str, target: &str) -> std::io::Result<Response> {
    unix_send(path, method, target, b"")
}

/// One request with a body on a fresh connection to the unix socket at `path`.
pub fn unix_send(
    path: &Path,
    method: &str,
    target: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut client = Client {
        reader: BufReader::new(Box::new(stream)),
    };
    client.send(method, target, &[], body)
}

/// A kept-alive HTTP/1.1 client connection.
pub struct Client {
    reader: BufReader<Box<dyn Stream>>,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(Box::new(stream)),
        })
    }

    /// Sends raw bytes (for requests the client would not make).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Closes the connection (a client going away).
    pub fn close(self) {
        self.reader.get_ref().close();
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        if !chunked && (!body.is_empty() || method == "POST" || method == "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        if chunked {
            for piece in body.chunks(64 * 1024) {
                write!(stream, "{:x}\r\n", piece.len())?;
                stream.write_all(piece)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
        } else {
            stream.write_all(body)?;
        }
        self.read_response(method == "HEAD")
    }

    /// Reads one response off the connection.
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let _version = parts.next();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (k, v) = trimmed
                .split_once(':')
                .ok_or_else(|| std::io::Error::other(format!("bad header {trimmed:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().map_err(std::io::Error::other)?;
            response.body = vec![0; len];
            self.reader.read_exact(&mut response.body)?;
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(std::io::Error::other)?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        line.clear();
                        self.reader.read_line(&mut line)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = response.body.len();
                response.body.resize(start + size, 0);
                self.reader.read_exact(&mut response.body[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
            }
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }
}

/// SIGKILLs, in `round`'s turn, a worker process (even rounds) or its
/// app process (odd rounds) of `server`; false if there was none to kill.
pub fn kill_worker_or_app(server: &Server, round: usize) -> bool {
    let workers: Vec<u32> = server
        .children()
        .into_iter()
        .filter(|(_, argv)| argv.get(1).is_some_and(|a| a == "worker"))
        .map(|(pid, _)| pid)
        .collect();
    let Some(&worker) = workers.get(round % workers.len().max(1)) else {
        return false;
    };
    let target = if round % 2 == 0 {
        worker
    } else {
        match children_of(worker).first() {
            Some(&app) => app,
            None => return false,
        }
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

/// Sends SIGTERM, when dropped, to the processes it names that still run,
/// so that a test that fails midway leaves no server behind.
pub struct StopOnDrop(pub Vec<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

/// A command app that says why it cannot start, on stderr, and exits 1.
pub const CRASHING_APP: &str = "#!/bin/sh\necho 'cannot start: config missing' >&2\nexit 1\n";

/// Writes an app file (mode 0755 when `executable`) into `dir`.
pub fn write_app(dir: &Path, name: &str, source: &str, executable: bool) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, source).expect("write app");
    if executable {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}

/// Runs the binary to completion (for bad-input checks).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null()).env_remove("PORT");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rip-server");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rip-server {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Clients sending one request after another, each on a kept-alive
/// connection, until finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<thread::JoinHandle<Vec<(u16, String)>>>,
}

impl Load {
    /// Starts `threads` clients sending `GET path` to 127.0.0.1:`port`.
    pub fn start(port: u16, threads: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..threads)
            .map(|_| {
                let path = path.to_string();
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut answers = Vec::new();
                    let mut client = Client::connect(port).ok();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match client.as_mut() {
                            Some(c) => c.send("GET", &path, &[], b""),
                            None => Err(std::io::Error::other("no connection")),
                        };
                        match answer {
                            Ok(r) => {
                                let close = r.header("connection") == Some("close");
                                answers.push((r.status, r.text()));
                                if close {
                                    client = Client::connect(port).ok();
                                }
                            }
                            Err(e) => {
                                answers.push((0, e.to_string()));
                                client = Client::connect(port).ok();
                            }
                        }
                    }
                    answers
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients; returns every answer (status 0: a transport error).
    pub fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("load client"))
            .collect()
    }
}

/// The answers that were not 200.
pub fn failures(answers: &[(u16, String)]) -> Vec<(u16, String)> {
    answers.iter().filter(|(s, _)| *s != 200).cloned().collect()
}

/// The request-smuggling harness (corpora, recorder, three-parser oracle).
pub mod framing;
