//! The command line (docs/DESIGN.md §2): bad input exits 2 with one line naming the
//! problem, before any process is spawned; `--help` and `--version`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use support::*;

/// Runs a start that must fail: exit 2, one line on stderr containing
/// `needle`, and nothing left in the socket dir.
fn refused(args: &[&str], env: &[(&str, &str)], needle: &str) -> String {
    let dir = socket_dir();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push(format!("--socket-dir={}", dir.path().display()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run(&all, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?} printed more than one line:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
    stderr
}

#[test]
fn bad_tokens_and_flags_exit_2_with_one_line() {
    refused(&["builtin:hello", "bogus"], &[], "'bogus'");
    refused(&["builtin:hello", "--bogus"], &[], "--bogus");
    refused(&["builtin:hello", "w:abc"], &[], "w:abc");
    refused(&["builtin:hello", "--status-path=status"], &[], "'status'");
    refused(&["builtin:hello", "--health-path=/x?y"], &[], "'/x?y'");
    refused(
        &["builtin:hello", "--ignore=a{b"],
        &[],
        "'a{b' is not a glob",
    );
    refused(
        &["builtin:hello"],
        &[("RIP_WATCH", "ok.js,[z-a]")],
        "'[z-a]' is not a glob",
    );
    refused(
        &["builtin:hello", "--trusted-proxies=10.0.0.0/33"],
        &[],
        "'10.0.0.0/33' is not an address",
    );
    refused(&["builtin:hello", "w:0"], &[], "w:0");
    refused(&["builtin:hello", "http:65536"], &[], "http:65536");
    refused(&["builtin:hello", "http:abc"], &[], "http:abc");
    refused(&["builtin:hello", "r:many"], &[], "r:many");
    refused(&["builtin:hello", "--max-queue=lots"], &[], "--max-queue");
    refused(
        &["builtin:hello", "--hot-reload=sometimes"],
        &[],
        "sometimes",
    );
    refused(
        &["builtin:hello", "--queue-timeout-ms=0"],
        &[],
        "--queue-timeout-ms",
    );
    refused(&["builtin:hello"], &[("PORT", "99999")], "PORT=99999");
}

#[test]
fn bad_apps_exit_2_with_one_line() {
    refused(&[], &[], "missing <app-path>");
    refused(&["/no/such/app"], &[], "does not exist");
    refused(&["builtin:nope"], &[], "builtin:nope");
    let empty = socket_dir();
    refused(&[empty.path().to_str().unwrap()], &[], "no app entry");
    let plain = empty.path().join("notes.txt");
    std::fs::write(&plain, "hi").unwrap();
    refused(&[plain.to_str().unwrap()], &[], "neither a module");
}

#[test]
fn a_missing_runtime_names_what_to_install() {
    let app = socket_dir();
    write_app(
        app.path(),
        "index.ts",
        "export default () => new Response('x')",
        false,
    );
    let err = refused(
        &[app.path().to_str().unwrap()],
        &[("PATH", "/nonexistent"), ("HOME", "/nonexistent")],
        "needs Bun",
    );
    assert!(err.contains("npm install -g bun"), "{err}");
    let js = socket_dir();
    write_app(
        js.path(),
        "index.js",
        "export default () => new Response('x')",
        false,
    );
    let err = refused(
        &[js.path().to_str().unwrap()],
        &[("PATH", "/nonexistent"), ("HOME", "/nonexistent")],
        "install Bun",
    );
    assert!(err.contains("Node.js"), "{err}");
    refused(
        &[app.path().to_str().unwrap(), "--runtime=node"],
        &[],
        "needs Bun",
    );
}

#[test]
fn a_socket_path_over_the_unix_limit_is_refused() {
    let out = run(
        &[
            "builtin:hello",
            &format!("--socket-dir=/tmp/{}", "d".repeat(90)),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("107-byte unix limit"), "{stderr}");
    assert!(!std::path::Path::new(&format!("/tmp/{}", "d".repeat(90))).exists());
}

#[test]
fn a_port_in_use_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    refused(
        &["builtin:hello", &format!("http:{port}")],
        &[],
        &format!("port {port} is already in use"),
    );
}

#[test]
fn a_second_server_with_the_same_prefix_is_refused() {
    let first = Server::start(&["builtin:hello", "w:1"]);
    let dir = first.dir.path().display().to_string();
    let out = run(
        &["builtin:hello", "http:0", &format!("--socket-dir={dir}")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    // The first one is untouched.
    assert_eq!(first.get("/ping").status, 200);
}

#[test]
fn help_documents_every_token_and_flag() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "http:<port>",
        "w:<N|auto>",
        "r:<N>",
        "--max-reloads",
        "--hot-reload",
        "--max-queue",
        "--queue-timeout-ms",
        "--connect-timeout-ms",
        "--read-timeout-ms",
        "--json-logging",
        "--no-access-log",
        "--variant",
        "--socket-prefix",
        "--socket-dir",
        "--stop",
        "--bind",
        "--shutdown-timeout-ms",
        "--boot-timeout-ms",
        "--runtime",
        "--max-requests-jitter",
        "--max-body",
        "--header-timeout-ms",
        "--idle-timeout-ms",
        "--lb-threads",
        "RIP_MAX_QUEUE",
        "PORT",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn env_overrides_apply_and_flags_win() {
    let server = Server::start_with(
        &["builtin:hello", "w:1", "--max-queue=3"],
        Start {
            env: vec![
                ("RIP_MAX_QUEUE", "7".into()),
                ("RIP_VARIANT", "envtest".into()),
            ],
            ..Start::default()
        },
    );
    assert_eq!(server.prefix(), "rip_envtest_hello");
    let manager = cmdline(server.pid());
    assert!(
        manager.contains(&"--max-queue=3".to_string()),
        "{manager:?}"
    );
}

#[test]
fn the_start_line_names_the_real_port_and_worker_count() {
    let server = Server::start(&["builtin:hello", "w:3"]);
    let line = server.stdout.text();
    assert!(line.contains(&format!(":{} ", server.port)), "{line}");
    assert!(line.contains("with 3 workers"), "{line}");
    assert_ne!(server.port, 0);
    assert_eq!(server.get("/server").text(), "ok");
}

#[test]
fn stop_stops_a_running_server_and_says_so() {
    let mut server = Server::start(&["builtin:hello", "w:1"]);
    server.wait_workers(1);
    let dir = format!("--socket-dir={}", server.dir.path().display());
    let out = run(&["--stop", "builtin:hello", &dir], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("stopped rip_server2_hello (pid {})", server.pid())),
        "{stdout}"
    );
    assert!(server.stop().success());
    // Nothing left to stop: exit 1 with one line.
    let out = run(&["--stop", &dir], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("rip-server: no running server"), "{stderr}");
}
