//! Hot reload (docs/DESIGN.md §7): module reloads in place, rolling restarts on a
//! change (process mode, and files other than the entry in module mode),
//! SIGHUP, and `none` — all without failing a request under load.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// A module app answering `text` on `/`; `/msg` answers what `msg.js` exports.
fn write_module(dir: &Path, text: &str) {
    write_app(
        dir,
        "index.js",
        &format!(
            "import {{ msg }} from './msg.js';\nexport default {{ fetch(req) {{\n  const p = new URL(req.url).pathname;\n  return new Response(p === '/msg' ? msg : {text:?});\n}} }};\n"
        ),
        false,
    );
}

fn write_msg(dir: &Path, text: &str) {
    write_app(
        dir,
        "msg.js",
        &format!("export const msg = {text:?};\n"),
        false,
    );
}

fn module_app() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ripapp")
        .tempdir_in("/tmp")
        .unwrap();
    write_msg(dir.path(), "m1");
    write_module(dir.path(), "v1");
    dir
}

/// Waits until `n` answers in a row from `path` are `want`; returns how long.
fn until_all(server: &Server, path: &str, want: &str, n: usize) -> Duration {
    let started = Instant::now();
    eventually(&format!("{n} answers of {want:?} in a row"), || {
        (0..n)
            .all(|_| server.get(path).text() == want)
            .then_some(())
    });
    started.elapsed()
}

/// Starts the module app under `runtime_name` with `w:<workers>` and
/// `--hot-reload=<mode>`, and waits for its workers.
fn serve(app: &Path, runtime_name: &str, workers: usize, mode: &str, extra: &[&str]) -> Server {
    runtime(runtime_name);
    let workers_token = format!("w:{workers}");
    let mode_flag = format!("--hot-reload={mode}");
    let runtime_flag = format!("--runtime={runtime_name}");
    let mut args = vec![
        app.to_str().unwrap(),
        &workers_token,
        &mode_flag,
        &runtime_flag,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    server.wait_workers(workers);
    server
}

/// With `clients` sending `path` continuously, makes `edit` and waits until
/// every worker answers `after`: within 3 s, with no request failed and
/// every answer `before` or `after`.
fn edit_under_load(
    server: &Server,
    clients: usize,
    path: &str,
    (before, after): (&str, &str),
    edit: impl FnOnce(),
) {
    let load = Load::start(server.port, clients, path);
    thread::sleep(Duration::from_millis(100));
    edit();
    let took = until_all(server, path, after, 10);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_clean(&load.finish(), &[before, after]);
}

fn sighup(server: &Server) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// Only 200s, and every answer one of `allowed`.
fn assert_clean(answers: &[(u16, String)], allowed: &[&str]) {
    assert!(answers.len() > 20, "only {} requests", answers.len());
    assert_eq!(failures(answers), vec![], "of {} requests", answers.len());
    for (_, body) in answers {
        assert!(
            allowed.contains(&body.as_str()),
            "unexpected answer {body:?}"
        );
    }
}

fn module_mode_reloads_the_entry_in_place(runtime_name: &str) {
    let app = module_app();
    let server = serve(app.path(), runtime_name, 2, "module", &["--no-access-log"]);
    edit_under_load(&server, 4, "/", ("v1", "v2"), || {
        write_module(app.path(), "v2")
    });
    // In place: the same processes, no restart.
    let out = server.output();
    assert!(!out.contains("rolling restart"), "{out}");
    assert!(!out.contains("worker 2 ready"), "{out}");
}

#[test]
fn module_mode_reloads_the_entry_in_place_under_node() {
    module_mode_reloads_the_entry_in_place("node");
}

#[test]
fn module_mode_reloads_the_entry_in_place_under_bun() {
    module_mode_reloads_the_entry_in_place("bun");
}

#[test]
fn a_broken_edit_keeps_the_last_good_code() {
    let app = module_app();
    let server = serve(app.path(), "node", 1, "module", &[]);
    assert_eq!(server.get("/").text(), "v1");
    write_app(
        app.path(),
        "index.js",
        "export default { fetch( { broken\n",
        false,
    );
    // The request that meets the broken edit, and every one after, gets the
    // old code; the error is logged.
    eventually("the failed reload to be logged", || {
        let r = server.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "v1"));
        server.output().contains("reload of").then_some(())
    });
    for _ in 0..5 {
        let r = server.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "v1"));
    }
    write_module(app.path(), "v3");
    until_all(&server, "/", "v3", 3);
}

#[test]
fn module_mode_restarts_workers_for_other_files() {
    let app = module_app();
    let server = serve(app.path(), "node", 2, "module", &["--no-access-log"]);
    edit_under_load(&server, 4, "/msg", ("m1", "m2"), || {
        write_msg(app.path(), "m2")
    });
    server.wait_output("rolling restart to version 2");
}

#[test]
fn used_up_module_reloads_recycle_the_worker() {
    let app = module_app();
    let server = serve(app.path(), "node", 1, "module", &["--max-reloads=1"]);
    write_module(app.path(), "v2");
    until_all(&server, "/", "v2", 2);
    thread::sleep(Duration::from_millis(150)); // the loader checks at most every 100 ms
    write_module(app.path(), "v3");
    let r = eventually("v3", || {
        let r = server.get("/");
        (r.text() == "v3").then_some(r)
    });
    assert!(r.header("rip-worker-recycle").is_none(), "{:?}", r.headers);
    // Past its reloads the worker is replaced (by one that loads v3 afresh).
    server.wait_output("worker 1 ready");
    until_all(&server, "/", "v3", 3);
}

#[test]
fn process_mode_rolls_every_worker_without_failing_a_request() {
    let app = module_app();
    let server = serve(app.path(), "node", 2, "process", &["--no-access-log"]);
    edit_under_load(&server, 8, "/", ("v1", "v2"), || {
        write_module(app.path(), "v2")
    });
    let out = server.wait_output("worker 3 ready");
    assert!(out.contains("rolling restart to version 2"), "{out}");
    // The old workers left only after their replacements joined.
    server.wait_workers(2);
}

fn a_broken_edit_keeps_the_old_code_serving(extra: &[&str], hold: Duration) {
    let app = module_app();
    let server = serve(app.path(), "node", 2, "process", extra);
    let load = Load::start(server.port, 4, "/");
    write_app(
        app.path(),
        "index.js",
        "export default { fetch( { broken\n",
        false,
    );
    server.wait_output("rolling restart to version 2");
    // The new version cannot start; the old one keeps serving.
    server.wait_output("exited unexpectedly");
    thread::sleep(hold);
    assert_eq!(server.get("/").text(), "v1");
    write_module(app.path(), "v3");
    until_all(&server, "/", "v3", 10);
    let answers = load.finish();
    assert_clean(&answers, &["v1", "v3"]);
}

#[test]
fn process_mode_keeps_the_old_code_through_a_broken_edit() {
    a_broken_edit_keeps_the_old_code_serving(&[], Duration::from_millis(300));
}

#[test]
fn a_broken_edit_survives_the_old_workers_using_up_their_budgets() {
    // Each old worker is soon past its 25 requests, and its replacements
    // cannot start: a second later it serves on. (Before, it served no
    // more, and for longer than the queue timeout every request got 504.)
    a_broken_edit_keeps_the_old_code_serving(&["r:25"], Duration::from_millis(3000));
}

#[test]
fn sighup_rolls_the_workers_in_every_mode() {
    let server = Server::start(&[
        "builtin:hello",
        "w:2",
        "--hot-reload=none",
        "--no-access-log",
    ]);
    server.wait_workers(2);
    let load = Load::start(server.port, 8, "/ping");
    thread::sleep(Duration::from_millis(100));
    sighup(&server);
    server.wait_output("worker 3 ready");
    thread::sleep(Duration::from_millis(200));
    let answers = load.finish();
    assert_clean(&answers, &["pong"]);
    server.wait_workers(2);
}

#[test]
fn none_mode_ignores_edits_until_sighup() {
    let app = module_app();
    let server = serve(app.path(), "node", 1, "none", &[]);
    write_module(app.path(), "v2");
    write_msg(app.path(), "m2");
    // Well past the debounce and a worker's start: still the old code.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(server.get("/").text(), "v1");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(!server.output().contains("changed"));
    sighup(&server);
    until_all(&server, "/", "v2", 3);
}

#[test]
fn a_command_app_is_restarted_on_any_edit_in_module_mode() {
    let dir = tempfile::Builder::new()
        .prefix("ripapp")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::copy(repo().join("examples/python/app"), dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("greeting.txt"), "one").unwrap();
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1", "--hot-reload=module"]);
    server.wait_workers(1);
    std::fs::write(dir.path().join("greeting.txt"), "two").unwrap();
    server.wait_output("greeting.txt changed");
    server.wait_output("worker 1 ready");
    // Ignored paths do not restart anything.
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/index"), "x").unwrap();
    std::fs::write(dir.path().join("app.swp"), "x").unwrap();
    std::fs::write(dir.path().join("greeting.txt"), "three").unwrap();
    server.wait_output("worker 2 ready");
    let out = server.stderr.text();
    assert_eq!(out.matches("rolling restart").count(), 2, "{out}");
    assert!(!out.contains(".git") && !out.contains("swp"), "{out}");
}

#[test]
fn what_the_app_and_the_server_write_into_the_app_dir_reloads_nothing() {
    // `cd app && rip-server . > log.txt 2>&1`, and an app that appends to
    // a log and writes a database file on every request: no reload.
    runtime("node");
    let app = tempfile::tempdir().unwrap();
    let sockets = socket_dir();
    write_app(
        app.path(),
        "index.mjs",
        "import fs from 'node:fs';\nexport default { fetch(req) {\n  fs.appendFileSync('visits.log', req.url + '\\n');\n  fs.writeFileSync('data.sqlite3', String(Date.now()));\n  fs.mkdirSync('tmp', { recursive: true });\n  fs.writeFileSync('tmp/last', req.url);\n  return new Response('ok');\n} };\n",
        false,
    );
    let log = app.path().join("log.txt");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            ".",
            "w:2",
            "http:0",
            "--runtime=node",
            "--hot-reload=process",
        ])
        .arg(format!("--socket-dir={}", sockets.path().display()))
        .current_dir(app.path())
        .env_remove("PORT")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _stop = StopOnDrop(vec![child.id()]);
    let port = eventually("the start-up line", || {
        parse_port(&std::fs::read_to_string(&log).ok()?)
    });
    eventually("both workers", || {
        let r = try_request(port, "GET", "/status", &[], b"").ok()?;
        r.text().contains("\"workers\":2").then_some(())
    });
    for i in 0..50 {
        assert_eq!(
            try_request(port, "GET", &format!("/r{i}"), &[], b"")
                .unwrap()
                .status,
            200
        );
    }
    // Past the debounce, with every write seen by the watcher.
    thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&log).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.wait();
    assert!(!text.contains("rolling restart"), "reloaded:\n{text}");
    assert!(!text.contains("changed"), "reloaded:\n{text}");
    assert!(
        text.contains("GET /r49"),
        "the requests were served:\n{text}"
    );
}

/// Issue 13: files the app's `.gitignore` names, or `--ignore` globs, never
/// reload it (an app writing a file per request into its own directory);
/// its code still does.
#[test]
fn gitignored_and_ignored_files_reload_nothing_but_code_does() {
    runtime("node");
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join(".gitignore"), "uploads/\n").unwrap();
    std::fs::write(app.path().join("lib.txt"), "one").unwrap();
    write_app(
        app.path(),
        "index.mjs",
        "import fs from 'node:fs';\nlet n = 0;\nexport default { fetch(req) {\n  fs.mkdirSync('uploads', { recursive: true });\n  fs.writeFileSync(`uploads/${n++}.txt`, req.url);\n  fs.writeFileSync('cache.json', String(n));\n  return new Response('ok');\n} };\n",
        false,
    );
    let dir = app.path().to_str().unwrap();
    let server = Server::start(&[
        dir,
        "w:1",
        "--runtime=node",
        "--hot-reload=process",
        "--ignore=cache.json",
    ]);
    server.wait_workers(1);
    for i in 0..30 {
        assert_eq!(server.get(&format!("/u{i}")).status, 200);
    }
    assert!(app.path().join("uploads/29.txt").is_file());
    // Past the debounce, with every write seen by the watcher.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        !server.stderr.text().contains("rolling restart"),
        "{}",
        server.output()
    );
    // The control: a change to the app reloads it.
    std::fs::write(app.path().join("lib.txt"), "two").unwrap();
    server.wait_output("rolling restart");
    assert!(
        server.stderr.text().contains("lib.txt"),
        "{}",
        server.output()
    );
}
