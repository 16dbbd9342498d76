//! `--metrics` (issue 16): the Prometheus exposition on its own listener,
//! checked by a real parser and linter (`promtool check metrics`, from
//! Debian's prometheus package), and what it counts after requests of
//! each kind — served, the app's 404, refused input, a full queue.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

/// The metrics port from the start-up line (`; metrics on http://A:P/metrics`).
fn metrics_port(server: &Server) -> u16 {
    let line = server.stdout.text();
    line.split("; metrics on http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
}

fn scrape(port: u16) -> String {
    let answer = try_request(port, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    answer.text()
}

/// The value of the sample named exactly `series` (with its labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn the_metrics_count_each_kind_of_answer_and_pass_promtool() {
    let server = Server::start(&[
        "builtin:hello",
        "w:1",
        "--max-queue=1",
        "--metrics=127.0.0.1:0",
    ]);
    server.wait_workers(1);
    let port = metrics_port(&server);
    let before = scrape(port);
    let (ok, said) = promtool(&before);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{before}"
    );
    assert_eq!(value(&before, "rip_workers_expected"), 1.0);
    assert_eq!(value(&before, "rip_workers_joined"), 1.0);

    for _ in 0..3 {
        assert_eq!(server.get("/ping").status, 200);
    }
    assert_eq!(server.get("/nope").status, 404);
    // Refused input: a request line the LB will not forward.
    let mut client = Client::connect(server.port).unwrap();
    client
        .write_raw(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response(false).unwrap().status, 400);
    // A full queue: one request in flight, one waiting, one turned away.
    let slow = {
        let port = server.port;
        std::thread::spawn(move || try_request(port, "GET", "/sleep?ms=800", &[], b"").unwrap())
    };
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    let waiting = {
        let port = server.port;
        std::thread::spawn(move || try_request(port, "GET", "/ping", &[], b"").unwrap())
    };
    eventually("the request queued", || {
        (server.status()?["queued"] == 1).then_some(())
    });
    assert_eq!(server.get("/ping").status, 503);
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(waiting.join().unwrap().status, 200);

    let after = scrape(port);
    let (ok, said) = promtool(&after);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{after}"
    );
    let grew = |series: &str| value(&after, series) - value(&before, series);
    // 3 pings, the slow one and the queued one; the status polls are 2xx
    // answers of the LB's own, counted as routes.
    let routes = grew("rip_lb_answers_total{cause=\"route\"}");
    assert_eq!(grew("rip_requests_total{code=\"2xx\"}"), 5.0 + routes);
    assert_eq!(grew("rip_requests_total{code=\"4xx\"}"), 2.0);
    assert_eq!(grew("rip_requests_total{code=\"5xx\"}"), 1.0);
    assert_eq!(grew("rip_lb_answers_total{cause=\"refused_input\"}"), 1.0);
    assert_eq!(grew("rip_lb_answers_total{cause=\"queue_full\"}"), 1.0);
    assert_eq!(grew("rip_lb_answers_total{cause=\"bad_gateway\"}"), 0.0);
    // The app's time: 6 answers of the app, one of them 800 ms or more.
    assert_eq!(grew("rip_app_seconds_count"), 6.0);
    assert!(grew("rip_app_seconds_sum") >= 0.8);
    assert_eq!(grew("rip_app_seconds_bucket{le=\"0.5\"}"), 5.0);
    // The queued request waited most of those 800 ms.
    assert!(value(&after, "rip_queue_depth_max") >= 1.0);
    assert!(grew("rip_queue_wait_seconds_sum") >= 0.3);
    assert!(grew("rip_received_bytes_total") > 0.0 && grew("rip_sent_bytes_total") > 0.0);
    assert!(value(&after, "rip_lb_resident_memory_bytes") > 1e6);
    assert!(value(&after, "rip_lb_open_fds") > 3.0);

    // The listener serves /metrics only.
    assert_eq!(
        try_request(port, "GET", "/status", &[], b"")
            .unwrap()
            .status,
        404
    );
}

#[test]
fn a_metrics_address_that_is_taken_is_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = run(&["builtin:hello", &format!("--metrics={addr}")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("port {} is already in use", addr.port())),
        "{stderr}"
    );
    let bad = run(&["builtin:hello", "--metrics=9100"], &[]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Replacements by reason and per-slot worker series, from the manager.
#[test]
fn replacements_are_counted_by_reason_and_workers_by_slot() {
    let server = Server::start(&[&probe(), "w:2", "r:0", "--metrics=127.0.0.1:0"]);
    server.wait_workers(2);
    let port = metrics_port(&server);
    // The manager's part comes within a second.
    let first = eventually("the workers' series", || {
        let text = scrape(port);
        text.contains("rip_worker_resident_memory_bytes{slot=\"1\"}")
            .then_some(text)
    });
    for reason in [
        "crash",
        "recycle",
        "reload",
        "abandoned",
        "memory",
        "rolling_restart",
    ] {
        assert_eq!(
            value(
                &first,
                &format!("rip_worker_replacements_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    for slot in ["0", "1"] {
        assert!(
            value(
                &first,
                &format!("rip_worker_resident_memory_bytes{{slot=\"{slot}\"}}")
            ) > 1e6
        );
    }
    // A rolling restart replaces both; an app that dies is a crash.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    server.wait_output("worker 3 ready");
    server.wait_workers(2);
    assert_eq!(server.get("/die").status, 502);
    server.wait_output("worker 4 ready");
    for _ in 0..3 {
        assert_eq!(server.get("/pid").status, 200);
    }
    let after = eventually("the counts", || {
        let text = scrape(port);
        (value(&text, "rip_worker_replacements_total{reason=\"crash\"}") == 1.0).then_some(text)
    });
    let (ok, said) = promtool(&after);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{after}"
    );
    assert_eq!(
        value(
            &after,
            "rip_worker_replacements_total{reason=\"rolling_restart\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&after, "rip_worker_replacements_total{reason=\"recycle\"}"),
        0.0
    );
    // Two slots, however many workers have come and gone.
    assert_eq!(
        after
            .lines()
            .filter(|l| l.starts_with("rip_worker_resident_memory_bytes{"))
            .count(),
        2
    );
    let requests: f64 = ["0", "1"]
        .iter()
        .map(|slot| value(&after, &format!("rip_worker_requests{{slot=\"{slot}\"}}")))
        .sum();
    assert!(requests >= 3.0, "{after}");
}

/// A worker replaced for its request budget is a `recycle`, and one over
/// `--max-memory` a `memory`, in the metrics.
#[test]
fn recycling_and_memory_are_counted_as_their_reasons() {
    let server = Server::start(&["builtin:hello", "w:1", "r:5", "--metrics=127.0.0.1:0"]);
    server.wait_workers(1);
    let port = metrics_port(&server);
    for _ in 0..12 {
        assert_eq!(server.get("/ping").status, 200);
    }
    eventually("two recycles counted", || {
        let text = scrape(port);
        let counted = text.contains("rip_worker_replacements_total");
        (counted && value(&text, "rip_worker_replacements_total{reason=\"recycle\"}") >= 2.0)
            .then_some(())
    });

    let leaky = Server::start(&[
        &probe(),
        "w:1",
        "r:0",
        "--max-memory=64M",
        "--metrics=127.0.0.1:0",
    ]);
    leaky.wait_workers(1);
    let port = metrics_port(&leaky);
    let text = eventually("a memory replacement counted", || {
        if !leaky.output().contains("over --max-memory") {
            assert_eq!(leaky.get("/grow?mb=16").status, 200);
        }
        let text = scrape(port);
        (text.contains("rip_worker_replacements_total")
            && value(&text, "rip_worker_replacements_total{reason=\"memory\"}") == 1.0)
            .then_some(text)
    });
    assert_eq!(
        value(&text, "rip_worker_replacements_total{reason=\"crash\"}"),
        0.0
    );
}
