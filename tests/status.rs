//! `rip-server status [<app>] [--json]` (issue 16): asks a running server
//! what it is doing — the queue, and per worker its pid, state, requests,
//! age, memory and CPU (its app's process included) — and says so in one
//! line, exit 1, when none runs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use support::*;

fn status(server: &Server, extra: &[&str]) -> std::process::Output {
    let dir = format!("--socket-dir={}", server.dir.path().display());
    let mut args = vec!["status"];
    args.extend_from_slice(extra);
    args.push(&dir);
    run(&args, &[])
}

fn kib_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4
}

#[test]
fn status_shows_the_queue_and_each_worker_with_its_app() {
    let server = Server::start(&[&probe(), "w:2"]);
    server.wait_workers(2);
    for _ in 0..5 {
        assert_eq!(server.get("/pid").status, 200);
    }
    let slow = {
        let port = server.port;
        std::thread::spawn(move || try_request(port, "GET", "/slow?ms=1500", &[], b"").unwrap())
    };
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });

    let out = status(&server, &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{json}");
    let s = &servers[0];
    assert_eq!(s["pid"], server.pid());
    assert_eq!(
        (s["expected"].as_u64(), s["joined"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(s["state"], "healthy");
    assert_eq!(s["version"], 1);
    assert_eq!(s["queue"]["now"], 0);
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{json}");
    let children: Vec<(u32, Vec<String>)> = server.children();
    for w in workers {
        let pid = w["pid"].as_u64().unwrap() as u32;
        let argv = &children
            .iter()
            .find(|(p, _)| *p == pid)
            .unwrap_or_else(|| panic!("{pid} is no child"))
            .1;
        assert_eq!(
            argv[1..3],
            ["worker".to_string(), w["id"].to_string()],
            "{argv:?}"
        );
        // The worker's process and its app's, together.
        let rss = w["rss_bytes"].as_u64().unwrap() / 1024;
        let apps = descendants(pid);
        assert!(!apps.is_empty(), "worker {pid} runs an app");
        assert!(rss > kib_of(pid), "{rss} KiB: the app's memory is left out");
        assert!(w["uptime_secs"].as_f64().unwrap() > 0.0);
        assert!(w["cpu_secs"].as_f64().unwrap() >= 0.0);
    }
    let states: Vec<&str> = workers
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"busy") && states.contains(&"idle"),
        "{states:?}"
    );
    let served: u64 = workers.iter().map(|w| w["served"].as_u64().unwrap()).sum();
    assert_eq!(served, 6, "5 requests and the one in flight");

    // The terminal's table: the server line, the queue, a row per worker.
    let out = status(&server, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{}  pid {}", server.prefix(), server.pid())),
        "{text}"
    );
    assert!(lines[0].ends_with("healthy  2/2 workers"), "{text}");
    assert!(lines[1].starts_with("queue: 0 now"), "{text}");
    assert!(lines[2].starts_with("ID  PID"), "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[3..].iter().any(|l| l.contains(" busy ")), "{text}");
    assert_eq!(slow.join().unwrap().status, 200);

    // Naming the app finds the same server.
    let app = probe();
    let out = status(&server, &[&app, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["servers"][0]["pid"], server.pid());
}

#[test]
fn status_without_a_running_server_says_so_and_exits_1() {
    let dir = socket_dir();
    let flag = format!("--socket-dir={}", dir.path().display());
    let out = run(&["status", &flag], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "rip-server: no running server in {}",
            dir.path().canonicalize().unwrap().display()
        )
    );
    assert!(out.stdout.is_empty());
    let out = run(&["status", "a", "b", &flag], &[]);
    assert_eq!(out.status.code(), Some(2));
}
