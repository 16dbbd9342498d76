//! The server end to end (docs/DESIGN.md §3, §5): processes, the load balancer's
//! routes, queueing, timeouts, retries, header and body handling, the
//! access log, and the graceful stop. Built-in apps need no runtime; the
//! probe app (`tests/apps/probe`) is a threaded Python server that would
//! notice if it were ever sent two requests at once.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// Starts `path` on a client thread of its own.
fn get_async(port: u16, path: &str) -> thread::JoinHandle<Response> {
    let path = path.to_string();
    thread::spawn(move || try_request(port, "GET", &path, &[], b"").expect("request"))
}

/// The worker id of the worker process that is the parent of `app_pid`.
fn worker_of(app_pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{app_pid}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let argv = cmdline(ppid);
    assert_eq!(argv.get(1).map(String::as_str), Some("worker"), "{argv:?}");
    argv[2].parse().unwrap()
}

#[test]
fn roles_show_in_ps_and_the_worker_is_not_on_the_data_path() {
    let server = Server::start(&[&probe(), "w:2"]);
    server.wait_workers(2);
    let children = server.children();
    let roles: Vec<String> = children
        .iter()
        .map(|(_, argv)| argv[..2].join(" "))
        .collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "rip-server lb").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| *r == "rip-server worker").count(),
        2,
        "{roles:?}"
    );
    assert_eq!(cmdline(server.pid())[..2], ["rip-server", "manager"]);
    // Freeze every worker process: requests still flow LB → app directly.
    let workers: Vec<u32> = children
        .iter()
        .filter(|(_, argv)| argv[1] == "worker")
        .map(|(pid, _)| *pid)
        .collect();
    for &pid in &workers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    }
    let results: Vec<u16> = (0..5).map(|_| server.get("/pid").status).collect();
    for &pid in &workers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    }
    assert_eq!(results, vec![200; 5]);
}

#[test]
fn server_and_status_routes() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    let status = server.wait_workers(2);
    assert_eq!(status["app"], "hello");
    assert_eq!(status["ports"]["http"], server.port);
    assert!(status["uptime"].is_u64());
    let ok = server.get("/server");
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok"));
    assert_eq!(ok.header("content-type"), Some("text/plain"));
    // The app's own routes pass through.
    assert_eq!(server.get("/ping").text(), "pong");
    assert_eq!(server.get("/nowhere").status, 404);
}

#[test]
fn the_lbs_own_routes_can_move_or_go_to_the_app() {
    let server = Server::start(&[
        "builtin:hello",
        "w:1",
        "--status-path=/_rip/status",
        "--health-path=none",
    ]);
    let status = eventually("the moved status route", || {
        let r = try_request(server.port, "GET", "/_rip/status", &[], b"").ok()?;
        let json: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        (json["workers"] == 1).then_some(r)
    });
    assert_eq!(status.header("cache-control"), Some("no-cache"));
    assert_eq!(status.header("content-type"), Some("application/json"));
    // The old paths are the app's now (the built-in answers 404 for both).
    assert_eq!(server.get("/status").text(), "not found\n");
    assert_eq!(server.get("/server").text(), "not found\n");
    // The defaults answer with no-cache too.
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    assert_eq!(
        server.get("/server").header("cache-control"),
        Some("no-cache")
    );
    assert_eq!(
        server.get("/status").header("cache-control"),
        Some("no-cache")
    );
}

/// Issue 13: `--status-bind` puts the status on a listener of its own (here
/// loopback), answering nothing else; on the public port the app gets the
/// path. It survives an LB restart, and a taken address is exit 2.
#[test]
fn the_status_can_be_bound_apart_from_the_public_port() {
    let mut server = Server::start(&["builtin:hello", "w:1", "--status-bind=127.0.0.1:0"]);
    let line = server.stdout.text();
    let status_port: u16 = line
        .split("; status on http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/status\n").or(rest.split('/').next()))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no status address in {line:?}"));
    assert_ne!(status_port, server.port);
    let status = |path: &str| try_request(status_port, "GET", path, &[], b"");
    eventually("the status on its listener", || {
        let json: serde_json::Value = serde_json::from_slice(&status("/status").ok()?.body).ok()?;
        (json["workers"] == 1).then_some(())
    });
    assert_eq!(status("/server").unwrap().text(), "ok");
    let other = status("/ping").unwrap();
    assert_eq!((other.status, other.text().as_str()), (404, "Not Found"));
    // The public port: the status is the app's (the built-in's 404), the
    // health check and the app as ever.
    assert_eq!(server.get("/status").text(), "not found\n");
    assert_eq!(server.get("/server").text(), "ok");
    assert_eq!(server.get("/ping").text(), "pong");
    // The LB restarts with the same listener.
    let lb = server.lb_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lb as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the status after an LB restart", || {
        let restarted = server
            .children()
            .iter()
            .any(|(pid, argv)| *pid != lb && argv.get(1).map(String::as_str) == Some("lb"));
        (restarted && status("/server").ok()?.text() == "ok").then_some(())
    });
    assert!(server.stop().success());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = socket_dir();
    let out = run(
        &[
            "builtin:hello",
            "http:0",
            &format!("--status-bind=127.0.0.1:{port}"),
            &format!("--socket-dir={}", dir.path().display()),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} is already in use")),
        "{stderr}"
    );
}

#[test]
fn hop_by_hop_and_internal_headers_stop_at_the_lb() {
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    let seen = server.request(
        "GET",
        "/headers",
        &[
            ("Connection", "X-Drop"),
            ("X-Drop", "1"),
            ("Keep-Alive", "timeout=1"),
            ("Rip-Worker-Busy", "1"),
            ("X-Kept", "yes"),
        ],
        b"",
    );
    let pairs: Vec<(String, String)> = serde_json::from_slice(&seen.body).unwrap();
    let names: Vec<String> = pairs.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    for gone in ["x-drop", "keep-alive", "connection", "rip-worker-busy"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached the app: {names:?}"
        );
    }
    assert!(names.contains(&"x-kept".to_string()));
    assert!(pairs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("x-forwarded-for") && v == "127.0.0.1"));
    assert!(pairs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("host") && v == "localhost"));

    let weird = server.get("/weird");
    assert_eq!(weird.status, 200);
    assert_eq!(weird.all("date").len(), 1, "{:?}", weird.headers);
    assert!(!weird.header("date").unwrap().contains("2001"));
    for gone in [
        "x-secret",
        "keep-alive",
        "rip-worker-id",
        "rip-worker-other",
    ] {
        assert!(
            weird.header(gone).is_none(),
            "{gone} reached the client: {:?}",
            weird.headers
        );
    }
    assert_eq!(weird.header("x-app"), Some("kept"));
}

#[test]
fn bodies_stream_through_byte_exact() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    server.wait_workers(2);
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let echoed = server.request("POST", "/echo", &[], &body);
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "echo (content-length) differs");
    let echoed = server.request("POST", "/echo", &[("Transfer-Encoding", "chunked")], &body);
    assert!(echoed.body == body, "echo (chunked) differs");
    let big = server.get("/big?n=5000001");
    assert_eq!(big.body.len(), 5_000_001);
    // Empty bodies and HEAD.
    assert_eq!(server.request("POST", "/echo", &[], b"").body.len(), 0);
    assert_eq!(server.request("HEAD", "/ping", &[], b"").status, 200);

    let probe = Server::start(&[&probe(), "w:1"]);
    probe.wait_workers(1);
    let echoed = probe.request(
        "POST",
        "/echo",
        &[("Transfer-Encoding", "chunked")],
        &body[..1_000_000],
    );
    assert!(
        echoed.body == body[..1_000_000],
        "chunked echo through a command app differs"
    );
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["builtin:hello", "w:1", "--max-queue=1"]);
    server.wait_workers(1);
    let first = get_async(server.port, "/sleep?ms=1500");
    eventually("the first request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    let second = get_async(server.port, "/sleep?ms=10");
    eventually("the second request queued", || {
        (server.status()?["queued"] == 1).then_some(())
    });
    let third = server.get("/ping");
    assert_eq!(third.status, 503);
    assert_eq!(third.text(), "Server busy");
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
}

#[test]
fn the_queue_times_out_at_its_deadline() {
    let server = Server::start(&["builtin:hello", "w:1", "--queue-timeout-ms=300"]);
    server.wait_workers(1);
    let first = get_async(server.port, "/sleep?ms=3000");
    eventually("the first request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    let started = Instant::now();
    let waited = server.get("/ping");
    let elapsed = started.elapsed();
    assert_eq!(
        (waited.status, waited.text().as_str()),
        (504, "Queue timeout")
    );
    // Answered at the deadline, not when the worker freed up (3 s).
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
    assert_eq!(first.join().unwrap().status, 200);
}

#[test]
fn a_slow_app_gets_504_and_is_replaced() {
    let server = Server::start(&["builtin:hello", "w:1", "--read-timeout-ms=300"]);
    server.wait_workers(1);
    let started = Instant::now();
    let slow = server.get("/sleep?ms=5000");
    assert_eq!(
        (slow.status, slow.text().as_str()),
        (504, "Upstream timeout")
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    // Its app may still be busy: it gets nothing more, and a replacement joins.
    server.wait_output("worker 1 ready");
    assert_eq!(server.get("/ping").status, 200);
}

#[test]
fn a_worker_lost_mid_request_is_a_502() {
    let server = Server::start(&[&probe(), "w:2"]);
    server.wait_workers(2);
    let lost = server.get("/die");
    assert_eq!(lost.status, 502);
    // Lost after the head: the client sees the response cut short — the
    // head, the ten bytes the app sent of its hundred, and the end of the
    // connection.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut got).unwrap();
    let got = String::from_utf8_lossy(&got);
    let (head, body) = got.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100"),
        "{got}"
    );
    assert_eq!(body, "0123456789", "a cut-off body looked whole");
    // The other worker serves meanwhile; the lost ones come back.
    assert_eq!(server.get("/pid").status, 200);
    server.wait_workers(2);
    // A client that asked to close is told the connection closes.
    let lost = server.request("GET", "/die", &[("Connection", "close")], b"");
    assert_eq!(lost.status, 502);
    assert_eq!(lost.header("connection"), Some("close"));
}

#[test]
fn a_busy_worker_is_skipped() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    server.wait_workers(2);
    let prefix = server.prefix();
    for id in [0, 1] {
        // Someone else occupies this worker's app directly.
        let socket = server.dir.path().join(format!("{prefix}.{id}.sock"));
        let hog = thread::spawn(move || unix_request(&socket, "GET", "/sleep?ms=1500"));
        thread::sleep(Duration::from_millis(100)); // let the hog's request reach the app
        for _ in 0..4 {
            let r = server.get("/ping");
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "pong"),
                "with worker {id} busy"
            );
            // A body the LB holds whole goes to the other worker too: no
            // app took it.
            let r = server.request("POST", "/echo", &[], b"held");
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "held"),
                "with worker {id} busy"
            );
        }
        assert_eq!(hog.join().unwrap().unwrap().status, 200);
    }
    // Both busy: the LB answers 503, it does not hang or fail hard.
    let hogs: Vec<_> = [0, 1]
        .iter()
        .map(|id| {
            let socket = server.dir.path().join(format!("{prefix}.{id}.sock"));
            thread::spawn(move || unix_request(&socket, "GET", "/sleep?ms=1000"))
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    let r = server.get("/ping");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("rip-worker-busy"), None);
    for hog in hogs {
        hog.join().unwrap().unwrap();
    }
}

#[test]
fn an_unreachable_worker_is_skipped_and_replaced() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    server.wait_workers(2);
    std::fs::remove_file(server.socket("0.sock")).unwrap();
    let requests: Vec<_> = (0..2)
        .map(|_| get_async(server.port, "/sleep?ms=200"))
        .collect();
    for r in requests {
        assert_eq!(r.join().unwrap().status, 200);
    }
    server.wait_output("worker 2 ready");
    server.wait_workers(2);
}

#[test]
fn an_app_never_holds_two_requests() {
    let server = Server::start(&[&probe(), "w:2"]);
    server.wait_workers(2);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let port = server.port;
            thread::spawn(move || {
                let mut client = Client::connect(port).unwrap();
                (0..5)
                    .map(|_| client.send("GET", "/slow?ms=20", &[], b"").unwrap().status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), vec![200; 5]);
    }
    // A client that leaves mid-request: its app is still busy, so its
    // worker gets nothing more until the app has finished (and is then
    // freed, not replaced).
    let mut leaver = Client::connect(server.port).unwrap();
    leaver
        .write_raw(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    leaver.close();
    for _ in 0..10 {
        assert_eq!(server.get("/slow?ms=30").status, 200);
    }
    eventually("the left request finished", || {
        (server.status()?["busy"] == 0).then_some(())
    });
    assert!(
        !server.output().contains("CONCURRENT"),
        "{}",
        server.output()
    );
    // Both apps are still the first ones (the leaver's worker was freed,
    // not replaced), and neither ever held two requests.
    let prefix = server.prefix();
    for id in [0, 1] {
        let socket = server.dir.path().join(format!("{prefix}.{id}.sock"));
        let max = unix_request(&socket, "GET", "/max")
            .unwrap_or_else(|e| panic!("worker {id} is gone: {e}"));
        assert_eq!(
            max.text(),
            "1",
            "app of worker {id} held two requests at once"
        );
    }
    assert!(
        !server.dir.path().join(format!("{prefix}.2.sock")).exists(),
        "a worker was replaced"
    );
}

/// Issue 13: the app learns who the client is and how it came from the LB
/// alone, unless the peer is a trusted proxy; the request id is echoed.
#[test]
fn forwarding_fields_are_the_lbs_unless_a_trusted_proxy_sent_them() {
    let claims = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "shop.example"),
        ("X-Forwarded-Port", "443"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Request-Id", "req-42"),
        ("X-Request-Start", "t=1"),
    ];
    let seen = |server: &Server| {
        let before = micros_now();
        let r = server.request("GET", "/headers", &claims, b"");
        let after = micros_now();
        let pairs: Vec<(String, String)> = serde_json::from_slice(&r.body).unwrap();
        let values = move |name: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        };
        (r, values, before, after)
    };

    let plain = Server::start(&[&probe(), "w:1"]);
    plain.wait_workers(1);
    let (r, values, before, after) = seen(&plain);
    let port = plain.port.to_string();
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(values("x-forwarded-proto"), ["http"]);
    assert_eq!(values("x-forwarded-host"), ["localhost"]);
    assert_eq!(values("x-forwarded-port"), [port.as_str()]);
    assert!(values("forwarded").is_empty());
    let id = values("x-request-id");
    assert!(
        id.len() == 1 && id[0].len() == 36 && id[0] != "req-42",
        "{id:?}"
    );
    assert_eq!(r.header("x-request-id"), Some(id[0].as_str()));
    let start = values("x-request-start");
    let t: u64 = start[0].strip_prefix("t=").unwrap().parse().unwrap();
    assert!(
        start.len() == 1 && (before..=after).contains(&t),
        "{start:?} not in {before}..{after}"
    );

    let behind = Server::start(&[&probe(), "w:1", "--trusted-proxies=127.0.0.1,10.0.0.0/8"]);
    behind.wait_workers(1);
    let (r, values, ..) = seen(&behind);
    assert_eq!(values("x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(values("x-real-ip"), ["6.6.6.6"]);
    assert_eq!(values("x-forwarded-proto"), ["https"]);
    assert_eq!(values("x-forwarded-host"), ["shop.example"]);
    assert_eq!(values("x-forwarded-port"), ["443"]);
    assert_eq!(values("forwarded"), ["for=6.6.6.6"]);
    assert_eq!(values("x-request-id"), ["req-42"]);
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    assert_eq!(values("x-request-start"), ["t=1"]);
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Issue 16: `--access-log=<path>` writes the lines to a file, reopened on
/// SIGUSR1 once logrotate has moved it; a JSON line names the client, the
/// worker and the bytes in and out.
#[test]
fn the_access_log_goes_to_a_file_reopened_on_sigusr1() {
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let flag = format!("--access-log={}", path.display());
    let server = Server::start(&["builtin:hello", "w:1", "--json", &flag]);
    server.wait_workers(1);
    assert_eq!(server.get("/ping").status, 200);
    let r = server.request("POST", "/echo", &[], b"hello");
    assert_eq!(r.text(), "hello");
    let lines = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // Not the test's own polls of the status.
            .filter(|l| l["path"] != "/status")
            .collect()
    };
    let first = eventually("two lines in the file", || {
        let got = lines(&path);
        (got.len() == 2).then_some(got)
    });
    assert!(
        !server.stdout.text().contains("\"path\""),
        "the log is not on stdout"
    );
    let ping = &first[0];
    assert_eq!(
        (ping["path"].as_str(), ping["client"].as_str()),
        (Some("/ping"), Some("127.0.0.1"))
    );
    assert_eq!(ping["worker"], 0);
    let echo = &first[1];
    // Its request line, headers and 5 bytes in; its answer out.
    assert!(echo["bytesIn"].as_u64().unwrap() > 5 + 20, "{echo}");
    assert!(echo["bytesOut"].as_u64().unwrap() > 5 + 17, "{echo}");
    assert_eq!(echo["length"], 5);
    // The LB's own answer has no worker.
    server.get("/server");
    eventually("the health check's line", || {
        (lines(&path).len() == 3).then_some(())
    });
    assert_eq!(lines(&path)[2]["worker"], serde_json::Value::Null);

    // logrotate: move the file away, SIGUSR1 the manager.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        Signal::SIGUSR1,
    )
    .unwrap();
    server.wait_output("SIGUSR1: reopened the access log");
    server.get("/ping");
    let fresh = eventually("a line in the new file", || {
        let got = lines(&path);
        (got.len() == 1).then_some(got)
    });
    assert_eq!(fresh[0]["path"], "/ping");
    assert_eq!(lines(&rotated).len(), 3, "the old file keeps its lines");
    assert_eq!(server.get("/ping").status, 200, "the server lives on");

    let nowhere = run(
        &["builtin:hello", "--access-log=/nonexistent/dir/access.log"],
        &[],
    );
    assert_eq!(nowhere.status.code(), Some(2));
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        said.starts_with("rip-server: cannot write the access log /nonexistent/dir/access.log"),
        "{said}"
    );
    let both = run(&["builtin:hello", &flag, "--no-access-log"], &[]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn access_log_lines_human_json_and_off() {
    // Local time with its offset (a POSIX TZ: UTC+5:30, no tzdata needed).
    let human = Server::start_with(
        &["builtin:hello", "w:1"],
        Start {
            env: vec![("TZ", "XYZ-5:30".into())],
            ..Start::default()
        },
    );
    human.wait_workers(1);
    let r = human.get("/ping");
    let id = r.header("x-request-id").expect("a request id").to_string();
    assert_eq!(id.len(), 36, "{id}");
    let out = human.wait_output("GET /ping");
    let line = out.lines().find(|l| l.contains("GET /ping")).unwrap();
    // [2026-11-28 17:30:00.123 +0530  52µs  41µs] GET /ping → 200 plain 4B <id>
    assert!(line.starts_with('[') && line.contains(" +0530 "), "{line}");
    let shown: u32 = line[12..14].parse().unwrap();
    let utc_hour = (micros_now() / 3_600_000_000 % 24) as u32;
    let minute = (micros_now() / 60_000_000 % 60) as u32;
    // The hour shown is UTC's + 5 (or + 6 past the half hour), give or
    // take the hour turning over between the line and now.
    let want = (utc_hour + 5 + u32::from(minute >= 30)) % 24;
    assert!(
        shown == want || shown == (want + 23) % 24,
        "{line}: {shown} vs {want}"
    );
    assert!(
        line.ends_with(&format!("] GET /ping → 200 plain 4B {id}")),
        "{line}"
    );

    let json = Server::start(&["builtin:hello", "w:1", "--json-logging"]);
    json.wait_workers(1);
    let r = json.get("/ping");
    let out = json.wait_output("\"path\":\"/ping\"");
    let line = out
        .lines()
        .find(|l| l.contains("\"path\":\"/ping\""))
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["app"], "hello");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["type"], "text/plain");
    assert_eq!(entry["length"], 4);
    assert!(entry["t"].as_str().unwrap().ends_with('Z'));
    let (total, queue, worker) = (
        entry["totalSeconds"].as_f64().unwrap(),
        entry["queueSeconds"].as_f64().unwrap(),
        entry["workerSeconds"].as_f64().unwrap(),
    );
    assert!(
        total >= queue + worker && queue >= 0.0 && worker > 0.0,
        "{line}"
    );
    assert_eq!(
        entry["requestId"].as_str(),
        r.header("x-request-id"),
        "{line}"
    );

    let mut quiet = Server::start(&["builtin:hello", "w:1", "--no-access-log"]);
    quiet.wait_workers(1);
    quiet.get("/ping");
    assert!(quiet.stop().success());
    assert!(
        !quiet.stdout.text().contains("/ping"),
        "{}",
        quiet.stdout.text()
    );
}

/// Issue 16: from SIGTERM until the last request in flight is answered,
/// the health route says `503 draining` (a readiness probe takes the
/// server out of its Service) and the status `draining`, on the status
/// listener, which answers until the end.
#[test]
fn a_draining_server_answers_its_health_route_503_until_it_exits() {
    let mut server = Server::start(&["builtin:hello", "w:1", "--status-bind=127.0.0.1:0"]);
    let line = server.stdout.text();
    let status_port: u16 = line
        .split("; status on http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no status address in {line:?}"));
    let status = || -> Option<serde_json::Value> {
        let answer = try_request(status_port, "GET", "/status", &[], b"").ok()?;
        serde_json::from_slice(&answer.body).ok()
    };
    eventually("the worker", || (status()?["workers"] == 1).then_some(()));
    let health = || try_request(status_port, "GET", "/server", &[], b"");
    assert_eq!(health().unwrap().text(), "ok");
    let in_flight = get_async(server.port, "/sleep?ms=1500");
    eventually("the request in flight", || {
        (status()?["busy"] == 1).then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let drained = eventually("the health route saying 503", || {
        let answer = health().ok()?;
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(drained.text(), "draining");
    let json = status().unwrap();
    assert_eq!(json["status"], "draining", "{json}");
    // The public port takes no new connection meanwhile.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err());
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 1500 ms\n"));
    assert!(server.stop().success());
}

#[test]
fn sigterm_finishes_in_flight_requests_and_leaves_nothing_behind() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut server = Server::start(&["builtin:hello", "w:2"]);
        server.wait_workers(2);
        let pids = server.descendants();
        assert_eq!(pids.len(), 3, "lb + 2 workers");
        let in_flight = get_async(server.port, "/sleep?ms=1000");
        eventually("the request in flight", || {
            (server.status()?["busy"] == 1).then_some(())
        });
        let status = server.stop_with(signal);
        assert!(status.success(), "{signal:?}: {status}");
        let r = in_flight.join().unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "slept 1000 ms\n"),
            "{signal:?}"
        );
        let left: Vec<_> = std::fs::read_dir(server.dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{signal:?} left {left:?}");
        for pid in pids {
            assert!(!alive(pid), "{signal:?}: process {pid} outlived the server");
        }
    }
}

#[test]
fn a_stale_socket_from_a_crashed_run_is_cleared() {
    let dir = socket_dir();
    let stale = dir.path().join("rip_server2_hello.0.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let server = Server::hello_in(dir);
    assert_eq!(server.get("/ping").status, 200);
}

#[test]
fn sockets_and_pid_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    for suffix in ["ctl.sock", "0.sock", "pid"] {
        let mode = std::fs::metadata(server.socket(suffix))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{suffix} has mode {mode:o}");
    }
}

#[test]
fn worker_ids_are_never_reused() {
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    let first = worker_of(server.get("/pid").text().parse().unwrap());
    assert_eq!(first, 0);
    assert_eq!(server.get("/die").status, 502);
    server.wait_workers(1);
    let second = worker_of(server.get("/pid").text().parse().unwrap());
    assert_eq!(second, 1);
}

#[test]
fn large_bodies_stream_through_in_bounded_memory() {
    use std::io::{Read, Write};
    let server = Server::start(&["builtin:hello", "w:1", "--no-access-log", "--max-body=1G"]);
    server.wait_workers(1);
    const TOTAL: u64 = 256 * 1024 * 1024;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        write!(
            writer,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n"
        )
        .unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut sent = 0;
        while sent < TOTAL {
            writer.write_all(&chunk).unwrap();
            sent += chunk.len() as u64;
        }
    });
    // Read the head, then count and check the echoed bytes as they come.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    while received < TOTAL {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {received} bytes");
        for (i, b) in buf[..n].iter().enumerate() {
            let at = received + i as u64;
            assert_eq!(
                *b,
                ((at % 65536) as u32 * 7 % 256) as u8,
                "byte {at} differs"
            );
        }
        received += n as u64;
    }
    sender.join().unwrap();
    // Neither the LB nor the worker held the body.
    for (pid, argv) in server.children() {
        let peak = peak_rss_kib(pid);
        assert!(
            peak < 64 * 1024,
            "{argv:?} peaked at {peak} KiB for a {TOTAL}-byte body"
        );
    }
}

#[test]
fn a_worker_is_busy_until_its_response_body_is_done() {
    use std::io::Read;
    // A client takes the head of a large response, then stops reading.
    let slow_reader = |port: u16| {
        let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(
            &mut slow,
            b"GET /big?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            slow.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        slow
    };
    let read_all = |mut slow: std::net::TcpStream| {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while total < 67_108_864 {
            let n = slow.read(&mut buf).unwrap();
            assert!(n > 0);
            total += n;
        }
    };
    // Relayed at the client's pace, the worker is still sending that body:
    // the next request must wait.
    let server = Server::start(&[
        "builtin:hello",
        "w:1",
        "--queue-timeout-ms=300",
        "--response-buffering=off",
    ]);
    server.wait_workers(1);
    let slow = slow_reader(server.port);
    let waited = server.get("/ping");
    assert_eq!(
        (waited.status, waited.text().as_str()),
        (504, "Queue timeout")
    );
    // Once the body is read to its end, the worker is free again.
    read_all(slow);
    eventually("the worker to be free", || {
        let r = try_request(server.port, "GET", "/ping", &[], b"").ok()?;
        (r.status == 200).then_some(())
    });
    drop(server);
    // By default the LB reads the response as fast as the app writes it
    // and keeps what the client has not taken: the worker is free once the
    // app is done.
    let server = Server::start(&["builtin:hello", "w:1", "--queue-timeout-ms=300"]);
    server.wait_workers(1);
    let slow = slow_reader(server.port);
    eventually("the worker to be free", || {
        let r = try_request(server.port, "GET", "/ping", &[], b"").ok()?;
        (r.status == 200).then_some(())
    });
    read_all(slow);
}
