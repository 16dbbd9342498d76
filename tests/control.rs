//! The control socket (docs/DESIGN.md §4): the join/quit protocol, wire-compatible
//! with the original, its refusals, versions, and who may use it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::*;

fn post(ctl: &Path, body: &str) -> Response {
    unix_send(ctl, "POST", "/worker", body.as_bytes()).unwrap()
}

fn error_of(response: &Response) -> String {
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["ok"], false);
    body["error"].as_str().unwrap().to_string()
}

/// A probe app we run ourselves, as an external worker would.
struct External(Child);

impl External {
    fn start(socket: &Path) -> External {
        let child = Command::new(repo().join("tests/apps/probe/app"))
            .env("RIP_SOCKET", socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually("the external app to listen", || {
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        External(child)
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bad_payloads_get_400_with_a_reason_and_change_nothing() {
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let ctl = server.socket("ctl.sock");
    for (payload, needle) in [
        ("not json", "bad control message"),
        (r#"{"op":"dance","workerId":1}"#, "unknown variant"),
        (
            r#"{"op":"join","workerId":"x","socket":"/tmp/a.sock"}"#,
            "bad control message",
        ),
        (r#"{"op":"join","socket":"/tmp/a.sock"}"#, "workerId"),
        (
            r#"{"op":"join","workerId":5,"socket":"/etc/passwd"}"#,
            "not in the socket dir",
        ),
    ] {
        let response = post(&ctl, payload);
        assert_eq!(response.status, 400, "{payload}");
        let error = error_of(&response);
        assert!(error.contains(needle), "{payload}: {error}");
    }
    let huge = format!(
        r#"{{"op":"quit","workerId":1,"pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(post(&ctl, &huge).status, 400);
    let elsewhere = unix_request(&ctl, "GET", "/anything").unwrap();
    assert_eq!(elsewhere.status, 404);
    assert_eq!(server.status().unwrap()["workers"], 1);
    assert_eq!(server.get("/ping").status, 200);
}

#[test]
fn an_external_worker_joins_and_quits_in_the_original_format() {
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let ctl = server.socket("ctl.sock");
    let socket = server.socket("100.sock");
    let _app = External::start(&socket);
    // The original's worker sends no pid and no version.
    let join = format!(
        r#"{{"op":"join","workerId":100,"socket":"{}"}}"#,
        socket.display()
    );
    let response = post(&ctl, &join);
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, r#"{"ok":true}"#)
    );
    assert_eq!(server.status().unwrap()["workers"], 2);
    // The newest idle worker serves next: the probe answers /pid.
    let pid = server.get("/pid");
    assert_eq!(pid.status, 200, "{}", pid.text());
    assert_eq!(post(&ctl, r#"{"op":"quit","workerId":100}"#).status, 200);
    assert_eq!(server.status().unwrap()["workers"], 1);
    // The built-in app has no /pid.
    assert_eq!(server.get("/pid").status, 404);
}

#[test]
fn a_join_with_a_live_id_on_another_socket_gets_409_and_changes_nothing() {
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let ctl = server.socket("ctl.sock");
    let socket = server.socket("foreign.sock");
    let _app = External::start(&socket);
    // Worker 0 is ours (the first the manager started).
    let join = format!(
        r#"{{"op":"join","workerId":0,"socket":"{}"}}"#,
        socket.display()
    );
    let response = post(&ctl, &join);
    assert_eq!(response.status, 409, "{}", response.text());
    let error = error_of(&response);
    assert!(error.contains("worker 0 has joined already"), "{error}");
    // Ours still serves every request (the probe would answer /pid).
    for _ in 0..4 {
        assert_eq!(server.get("/pid").status, 404);
        assert_eq!(server.get("/ping").status, 200);
    }
    assert_eq!(server.status().unwrap()["workers"], 1);
    // A repeated join of one pair (a worker retrying) is idempotent: one
    // more worker, not two.
    let join = format!(
        r#"{{"op":"join","workerId":300,"socket":"{}"}}"#,
        socket.display()
    );
    assert_eq!(post(&ctl, &join).status, 200);
    assert_eq!(post(&ctl, &join).status, 200);
    assert_eq!(server.status().unwrap()["workers"], 2);
}

#[test]
fn only_the_newest_version_gets_new_requests() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    server.wait_workers(2);
    let ctl = server.socket("ctl.sock");
    let socket = server.socket("200.sock");
    let _app = External::start(&socket);
    let join = format!(
        r#"{{"op":"join","workerId":200,"pid":1,"socket":"{}","version":99}}"#,
        socket.display()
    );
    assert_eq!(post(&ctl, &join).status, 200);
    // Every request now goes to the version-99 worker, never the built-ins.
    for _ in 0..6 {
        assert_eq!(server.get("/pid").status, 200);
    }
}

#[test]
#[cfg_attr(
    not(as_root),
    ignore = "acting as another user needs root (the mode-0600 socket keeps others out: serve.rs)"
)]
fn another_user_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "built as root, run as another user"
    );
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let ctl = server.socket("ctl.sock");
    // Open the way so that only the peer-credential check stands.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX)
s.connect({ctl:?})
print("connected")
try:
    s.sendall(b'POST /worker HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n{{"op":"quit","workerId":0}}')
    print("answer:" + repr(s.recv(100)))
except OSError as e:
    print("refused:", e)
"#,
        ctl = ctl.display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // It reached the socket (so only the credential check stood in the
    // way) and got no answer.
    assert!(
        stdout.contains("connected"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("answer:b''") || stdout.contains("refused:"),
        "another user got an answer: {stdout}"
    );
    assert_eq!(
        server.status().unwrap()["workers"],
        1,
        "the quit took effect"
    );
}
