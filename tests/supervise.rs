//! Supervision (docs/DESIGN.md §3, §8): crash restarts with backoff, boot timeout,
//! recycling without failed requests, LB restarts, no orphans, `--stop`,
//! one server per prefix, and the signals.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

fn role_pids(server: &Server, role: &str) -> Vec<u32> {
    server
        .children()
        .into_iter()
        .filter(|(_, argv)| argv.get(1).map(String::as_str) == Some(role))
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_worker_that_served_is_replaced_at_once() {
    // A casualty (the OOM killer, a poison request), not a crash loop: no
    // backoff, even when it happens again at once.
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    for round in 1..=3 {
        assert_eq!(server.get("/die").status, 502);
        let died = Instant::now();
        eventually("the casualty to be replaced", || {
            (server.stderr.text().matches("exited unexpectedly").count() >= round).then_some(())
        });
        server.wait_workers(1);
        assert!(
            died.elapsed() < Duration::from_millis(900),
            "round {round}: replaced after {:?}:\n{}",
            died.elapsed(),
            server.output()
        );
    }
    let log = server.stderr.text();
    assert!(!log.contains("restarting in"), "backed off:\n{log}");
    assert_eq!(server.get("/pid").status, 200);
}

#[test]
fn a_crash_loop_backs_off_and_shows_the_apps_error() {
    let dir = socket_dir();
    write_app(dir.path(), "app", CRASHING_APP, true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1"]);
    server.wait_output("[worker 0] cannot start: config missing");
    // 1 s, then 2 s: by 2.5 s there have been at most two restarts.
    thread::sleep(Duration::from_millis(2500));
    let crashes = server.stderr.text().matches("exited unexpectedly").count();
    assert!(
        (1..=3).contains(&crashes),
        "{crashes} crashes in 2.5 s:\n{}",
        server.output()
    );
    // It never started: failing, not merely degraded.
    let status = server.status().unwrap();
    assert_eq!(
        (status["status"].as_str(), status["missing"].as_u64()),
        (Some("failing"), Some(1))
    );
}

#[test]
fn an_app_that_cannot_start_is_said_so_at_once() {
    let dir = socket_dir();
    write_app(dir.path(), "app", CRASHING_APP, true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:2"]);
    // No worker ever ready: /status says so, with the app's words...
    let status = eventually("failing in /status", || {
        let status = server.status()?;
        (status["status"] == "failing").then_some(status)
    });
    assert_eq!(status["error"], "cannot start: config missing", "{status}");
    // ...and a request is answered at once, not after the queue timeout.
    let started = Instant::now();
    let r = server.get("/");
    assert_eq!((r.status, r.text().as_str()), (503, "App not ready"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    // The start-up line said it was starting, never that it serves.
    assert!(server.stdout.text().contains("rip-server: starting"));
    assert!(!server.stdout.text().contains("rip-server: serving"));
}

#[test]
fn in_development_a_failing_app_serves_after_a_good_edit() {
    // Hot reload on (the default outside production): the server waits,
    // and the first ready worker of the fixed code ends the failing state.
    let dir = socket_dir();
    write_app(dir.path(), "app", CRASHING_APP, true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1"]);
    eventually("failing in /status", || {
        (server.status()?["status"] == "failing").then_some(())
    });
    let probe_source = std::fs::read_to_string(repo().join("tests/apps/probe/app")).unwrap();
    // Written aside and renamed in, as an editor saves.
    write_app(dir.path(), "app.new", &probe_source, true);
    std::fs::rename(dir.path().join("app.new"), dir.path().join("app")).unwrap();
    let status = server.wait_workers(1);
    assert!(status.get("error").is_none(), "{status}");
    assert_eq!(server.get("/pid").status, 200);
    assert!(server.stdout.text().contains("rip-server: serving"));
    // The app works now: a later death is a gap, not a failing app (the
    // LB was told so), while its replacement boots.
    assert_eq!(server.get("/die").status, 502);
    let gap = eventually("the gap before the replacement", || {
        let status = server.status()?;
        (status["workers"] == 0).then_some(status)
    });
    assert_eq!(gap["status"], "degraded", "{gap}");
    server.wait_workers(1);
}

#[test]
fn outside_development_a_server_whose_app_cannot_start_gives_up() {
    let dir = socket_dir();
    let app_dir = tempfile::tempdir().unwrap();
    write_app(app_dir.path(), "app", CRASHING_APP, true);
    let dir_arg = format!("--socket-dir={}", dir.path().display());
    let started = Instant::now();
    let out = run(
        &[app_dir.path().to_str().unwrap(), "w:2", "http:0", &dir_arg],
        &[("RIP_ENV", "production")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // 3 tries per slot: at once, after 1 s, after 2 s more.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("rip-server: the app cannot start")
            && last.ends_with("cannot start: config missing"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_worker_started_while_the_entry_is_gone_for_a_moment_does_not_exit_2() {
    // The front resolved the app; roles do not resolve it again, so an
    // editor's atomic save (the file missing for a moment) costs at most
    // a failed app start, never a worker that cannot parse its argv.
    let app = tempfile::tempdir().unwrap();
    let probe_source = std::fs::read_to_string(repo().join("tests/apps/probe/app")).unwrap();
    let entry = write_app(app.path(), "app", &probe_source, true);
    let server = Server::start(&[app.path().to_str().unwrap(), "w:1", "--hot-reload=none"]);
    server.wait_workers(1);
    let moved = app.path().join("app.saving");
    std::fs::rename(&entry, &moved).unwrap();
    // The app dies; its replacement starts while the entry is missing.
    assert_eq!(server.get("/die").status, 502);
    server.wait_output("worker 1 (pid");
    std::fs::rename(&moved, &entry).unwrap();
    eventually("a worker serving again", || {
        let status = server.status()?;
        (status["status"] == "healthy").then_some(())
    });
    let log = server.stderr.text();
    assert!(!log.contains("exit status: 2"), "a worker exited 2:\n{log}");
    assert!(
        !log.contains("does not exist"),
        "a role resolved the app again:\n{log}"
    );
}

#[test]
fn the_log_names_the_apps_own_exit_status() {
    let dir = socket_dir();
    write_app(dir.path(), "app", "#!/bin/sh\nexit 3\n", true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1"]);
    server.wait_output("worker 0 (pid");
    let log = server.stderr.text();
    assert!(
        log.contains("exited unexpectedly (exit status: 3)"),
        "the manager did not name the app's exit status:\n{log}"
    );
}

#[test]
fn an_app_that_never_gets_ready_times_out_and_is_restarted() {
    let dir = socket_dir();
    write_app(dir.path(), "app", "#!/bin/sh\nexec sleep 60\n", true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1", "--boot-timeout-ms=300"]);
    server.wait_output("did not become ready");
    server.wait_output("restarting in 1s");
    // The stuck app was stopped, not left behind.
    eventually("the stuck app to be gone", || {
        let sleeping = server
            .descendants()
            .into_iter()
            .filter(|&p| cmdline(p).first().is_some_and(|a| a.ends_with("sleep")))
            .count();
        (sleeping <= 1).then_some(())
    });
}

#[test]
fn a_worker_that_hangs_before_it_is_ready_is_killed_and_replaced() {
    // The worker enforces the boot timeout itself; one that cannot (it
    // hangs: here, stopped) is killed by the manager a little later.
    let dir = socket_dir();
    write_app(dir.path(), "app", "#!/bin/sh\nexec sleep 60\n", true);
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1", "--boot-timeout-ms=300"]);
    let worker = eventually("worker 0", || {
        server
            .children()
            .into_iter()
            .find(|(_, argv)| argv.get(1).is_some_and(|a| a == "worker") && argv[2] == "0")
            .map(|(pid, _)| pid)
    });
    kill(Pid::from_raw(worker as i32), Signal::SIGSTOP).unwrap();
    server.wait_output("worker 0 did not get ready in time");
    eventually("worker 0 gone", || (!alive(worker)).then_some(()));
    // It counts as a crash: the slot is refilled after its backoff.
    server.wait_output("[worker 1] error: app did not become ready");
}

fn recycling_under_load_fails_no_request(runtime_name: &str) {
    runtime(runtime_name);
    let server = Server::start(&[
        &example("hello"),
        "w:2",
        "r:40",
        &format!("--runtime={runtime_name}"),
        "--hot-reload=none",
        "--no-access-log",
    ]);
    server.wait_workers(2);
    let load = Load::start(server.port, 8, "/ping");
    // Let many generations come and go.
    server.wait_output("worker 20 ready");
    let answers = load.finish();
    assert!(answers.len() > 500, "only {} requests", answers.len());
    assert_eq!(failures(&answers), vec![], "of {} requests", answers.len());
    server.wait_workers(2);
}

#[test]
fn recycling_under_load_fails_no_request_under_node() {
    recycling_under_load_fails_no_request("node");
}

#[test]
fn recycling_under_load_fails_no_request_under_bun() {
    recycling_under_load_fails_no_request("bun");
}

/// Issue 16: `--max-memory` replaces a worker whose app leaks, the
/// graceful way, under load: the replacement joins first, no request fails.
#[test]
fn a_worker_over_max_memory_is_recycled_under_load_failing_no_request() {
    // r:0: no recycling by request count, which would replace it too.
    let server = Server::start(&[
        &probe(),
        "w:1",
        "r:0",
        "--max-memory=64M",
        "--no-access-log",
    ]);
    server.wait_workers(1);
    let first_app = server.get("/pid").text();
    let load = Load::start(server.port, 4, "/pid");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !server.output().contains("over --max-memory"),
        "replaced before it grew: {}",
        server.output()
    );
    // The app leaks 16 MiB a request until the manager notices.
    eventually("the worker replaced for its memory", || {
        if server
            .output()
            .contains("over --max-memory (64.0 MiB): replacing it")
        {
            return Some(());
        }
        assert_eq!(server.get("/grow?mb=16").status, 200);
        std::thread::sleep(std::time::Duration::from_millis(100));
        None
    });
    server.wait_output("worker 1 ready");
    eventually("the leaking app stopped", || {
        (!alive(first_app.parse().unwrap())).then_some(())
    });
    let answers = load.finish();
    assert_eq!(failures(&answers), vec![], "of {} requests", answers.len());
    let apps: std::collections::BTreeSet<&str> =
        answers.iter().map(|(_, pid)| pid.as_str()).collect();
    assert!(
        apps.len() >= 2 && apps.contains(first_app.as_str()),
        "{apps:?}"
    );
    assert_ne!(server.get("/pid").text(), first_app);
}

#[test]
fn jitter_spreads_recycling() {
    let server = Server::start(&["builtin:hello", "w:1", "r:10", "--max-requests-jitter=10"]);
    server.wait_workers(1);
    let mut client = Client::connect(server.port).unwrap();
    for _ in 0..100 {
        assert_eq!(client.send("GET", "/ping", &[], b"").unwrap().status, 200);
    }
    // Budgets of 10..=20 requests: between 5 and 10 replacements.
    let out = server.wait_output("worker 5 ready");
    assert!(!out.contains("worker 11 ready"), "{out}");
}

#[test]
fn a_killed_lb_is_replaced_and_connections_are_not_refused() {
    let server = Server::start(&["builtin:hello", "w:2"]);
    server.wait_workers(2);
    let lb = role_pids(&server, "lb");
    assert_eq!(lb.len(), 1);
    signal(lb[0], Signal::SIGKILL);
    // Right away, new connections are accepted (the listener outlives the
    // LB) and answered once the new LB is up.
    for _ in 0..20 {
        let mut client =
            Client::connect(server.port).expect("connection refused while the LB restarted");
        let r = client.send("GET", "/ping", &[], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    let now = role_pids(&server, "lb");
    assert_eq!(now.len(), 1);
    assert_ne!(now, lb);
    // The new LB knows the workers that joined the old one.
    server.wait_workers(2);
}

#[test]
fn a_killed_manager_leaves_no_orphans() {
    runtime("node");
    let mut server = Server::start(&[&example("hello"), "w:2", "--runtime=node"]);
    server.wait_workers(2);
    let pids = server.descendants();
    assert_eq!(pids.len(), 5, "lb + 2 workers + 2 apps");
    let killed = Instant::now();
    server.stop_with(Signal::SIGKILL);
    eventually_within(Duration::from_secs(3), "every process to exit", || {
        pids.iter().all(|&p| !alive(p)).then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_crashed_run_is_cleaned_up_on_the_next_start() {
    let dir = socket_dir();
    let path = dir.path().to_path_buf();
    let mut crashed = Server::hello_in(dir);
    let pids = crashed.descendants();
    crashed.stop_with(Signal::SIGKILL);
    eventually("the crashed run's processes to exit", || {
        pids.iter().all(|&p| !alive(p)).then_some(())
    });
    assert!(
        path.join("rip_server2_hello.pid").exists(),
        "a SIGKILL leaves the pid file"
    );
    let dir = std::mem::replace(&mut crashed.dir, socket_dir());
    let server = Server::hello_in(dir);
    assert_eq!(server.get("/ping").status, 200);
}

/// Starts `builtin:hello` in `dir` expecting exit 2; returns its stderr.
fn refused_start(dir: &std::path::Path) -> String {
    let out = run(
        &[
            "builtin:hello",
            "http:0",
            &format!("--socket-dir={}", dir.display()),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn two_starts_at_once_give_one_server() {
    // The running check and the pid file are one step (a lock): whichever
    // start gets it runs; the other exits 2 naming it and removes nothing.
    for round in 0..5 {
        let dir = socket_dir();
        let dir_arg = format!("--socket-dir={}", dir.path().display());
        let start = || {
            std::process::Command::new(BIN)
                .args(["builtin:hello", "w:1", "http:0", &dir_arg])
                .env_remove("PORT")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (start(), start());
        let _guard = StopOnDrop(vec![a.id(), b.id()]);
        let loser = eventually("one start to give up", || {
            if let Ok(Some(status)) = a.try_wait() {
                return Some((status, 'a'));
            }
            b.try_wait().ok().flatten().map(|status| (status, 'b'))
        });
        let (mut winner, mut lost) = if loser.1 == 'a' { (b, a) } else { (a, b) };
        assert_eq!(loser.0.code(), Some(2), "round {round}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(lost.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains(&format!("already running (pid {})", winner.id())),
            "round {round}: {stderr}"
        );
        let _ = lost.wait();
        // The winner serves, its control socket and pid file intact.
        let mut out = std::io::BufReader::new(winner.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let port = parse_port(&line).unwrap_or_else(|| panic!("round {round}: {line}"));
        eventually("the winner to serve", || {
            let status = try_request(port, "GET", "/status", &[], b"").ok()?;
            (status.status == 200 && status.text().contains("healthy")).then_some(())
        });
        let ctl = dir.path().join("rip_server2_hello.ctl.sock");
        assert!(
            unix_request(&ctl, "GET", "/nothing").is_ok(),
            "round {round}"
        );
        let pid = std::fs::read_to_string(dir.path().join("rip_server2_hello.pid")).unwrap();
        assert_eq!(pid.trim(), winner.id().to_string());
        kill(Pid::from_raw(winner.id() as i32), Signal::SIGTERM).unwrap();
        assert!(winner.wait().unwrap().success());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "round {round}: left behind {left:?}");
    }
}

#[test]
fn paths_that_are_not_ours_are_refused_and_kept() {
    let dir = socket_dir();
    let ctl = dir.path().join("rip_server2_hello.ctl.sock");
    std::fs::write(&ctl, "not a socket").unwrap();
    let stderr = refused_start(dir.path());
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&ctl).unwrap(), "not a socket");
    std::fs::remove_file(&ctl).unwrap();

    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "keep me").unwrap();
    let pid = dir.path().join("rip_server2_hello.pid");
    std::os::unix::fs::symlink(&target, &pid).unwrap();
    let stderr = refused_start(dir.path());
    assert!(stderr.contains("symlink"), "{stderr}");
    assert!(pid.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}

#[test]
fn stop_only_signals_real_managers() {
    let dir = socket_dir();
    // A pid file naming a process that is not a rip-server manager.
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(
        dir.path().join("rip_server2_other.pid"),
        format!("{}\n", bystander.id()),
    )
    .unwrap();
    let a = Server::start_with(
        &["builtin:hello", "w:1", "--variant=a"],
        Start {
            dir: Some(dir),
            ..Start::default()
        },
    );
    let dir_arg = format!("--socket-dir={}", a.dir.path().display());
    let out = run(&["--stop", &dir_arg], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("stopped rip_a_hello (pid {})", a.pid())),
        "{stdout}"
    );
    assert!(!stdout.contains("other"), "{stdout}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "--stop signalled a process that is not ours"
    );
    bystander.kill().unwrap();
    let _ = bystander.wait();
    eventually("the server to stop", || (!alive(a.pid())).then_some(()));
}

#[test]
fn stop_without_an_app_stops_every_server_in_the_dir() {
    let a = Server::start(&["builtin:hello", "w:1", "--variant=one"]);
    let shared = a.dir.path().to_path_buf();
    // A second server in the same dir, under another prefix.
    let mut b = std::process::Command::new(BIN)
        .args(["builtin:hello", "http:0", "w:1", "--variant=two"])
        .arg(format!("--socket-dir={}", shared.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("the second server's pid file", || {
        shared.join("rip_two_hello.pid").exists().then_some(())
    });
    // And one elsewhere, which must be left alone.
    let c = Server::start(&["builtin:hello", "w:1", "--variant=three"]);
    let out = run(
        &["--stop", &format!("--socket-dir={}", shared.display())],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("stopped rip_one_hello"), "{stdout}");
    assert!(stdout.contains("stopped rip_two_hello"), "{stdout}");
    let b_status = eventually("the second server to exit", || b.try_wait().ok().flatten());
    assert!(b_status.success(), "{b_status}");
    eventually("the first server to exit", || {
        (!alive(a.pid())).then_some(())
    });
    assert!(alive(c.pid()), "a server in another dir was stopped");
}

#[test]
fn the_shutdown_timeout_bounds_a_stop() {
    let mut server = Server::start(&["builtin:hello", "w:1", "--shutdown-timeout-ms=500"]);
    server.wait_workers(1);
    let stuck = thread::spawn({
        let port = server.port;
        move || try_request(port, "GET", "/sleep?ms=20000", &[], b"")
    });
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    let started = Instant::now();
    let status = server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");
    let _ = stuck.join();
    assert!(
        std::fs::read_dir(server.dir.path())
            .unwrap()
            .next()
            .is_none(),
        "files left behind"
    );
}

#[test]
fn a_second_interrupt_stops_at_once() {
    let mut server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let pids = server.descendants();
    let stuck = thread::spawn({
        let port = server.port;
        move || try_request(port, "GET", "/sleep?ms=20000", &[], b"")
    });
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    signal(server.pid(), Signal::SIGINT);
    server.wait_output("stopping");
    let started = Instant::now();
    let status = server.stop_with(Signal::SIGINT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    let _ = stuck.join();
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the forced stop");
    }
    assert!(
        std::fs::read_dir(server.dir.path())
            .unwrap()
            .next()
            .is_none(),
        "files left behind"
    );
}

#[test]
fn killing_a_worker_or_app_every_second_fails_no_more_requests_than_kills() {
    // w:2 and a kill every second, alternating worker and app processes:
    // with a backoff for casualties both slots would sit out their delays
    // and the queue would time out (504).
    runtime("node");
    let server = Server::start(&[
        &example("hello"),
        "w:2",
        "--runtime=node",
        "--hot-reload=none",
        "--no-access-log",
    ]);
    server.wait_workers(2);
    let load = Load::start(server.port, 16, "/ping");
    let mut kills = 0;
    for round in 0..8 {
        thread::sleep(Duration::from_millis(1000));
        if kill_worker_or_app(&server, round) {
            kills += 1;
        }
    }
    thread::sleep(Duration::from_millis(500));
    let answers = load.finish();
    let failed = failures(&answers);
    assert!(kills >= 6, "only {kills} kills");
    assert!(
        !failed.iter().any(|(status, _)| *status == 504),
        "504s: {failed:?}"
    );
    assert!(
        failed.len() <= kills,
        "{} failures for {kills} kills: {failed:?}",
        failed.len()
    );
    assert!(answers.len() > 500, "only {} requests", answers.len());
    server.wait_workers(2);
}
