//! Apps (docs/DESIGN.md §6): module apps under Node and Bun through the loader, a
//! command app in Python, what the loader answers on a worker socket, and
//! app output marked with the worker id.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use std::path::Path;
use std::thread;

use support::*;

fn exercise_hello(server: &Server) {
    assert_eq!(server.get("/ping").text(), "pong");
    assert_eq!(server.get("/").text(), "Hello from rip-server\n");
    assert_eq!(server.get("/slow?ms=20").text(), "slept 20 ms\n");
    assert_eq!(server.get("/missing").status, 404);
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = server.request("POST", "/echo", &[], &body);
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "echo differs");
    let echoed = server.request("POST", "/echo", &[("Transfer-Encoding", "chunked")], &body);
    assert!(echoed.body == body, "chunked echo differs");
    // An HTTP/1.0 request without Host reaches the handler (the LB gives it
    // the address the client connected to), under either runtime.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("Hello from rip-server\n"), "{answer}");
}

#[test]
fn the_example_module_app_runs_under_node() {
    runtime("node");
    // An ES module index.js with no package.json saying "type": "module".
    assert!(!repo().join("examples/hello/package.json").exists());
    let mut server = Server::start(&[&example("hello"), "w:2", "--runtime=node"]);
    server.wait_workers(2);
    assert!(server.stdout.text().contains("index.js under node"));
    exercise_hello(&server);
    let pids = server.descendants();
    assert_eq!(pids.len(), 5, "lb + 2 workers + 2 apps");
    assert!(server.stop().success());
    for pid in pids {
        assert!(
            !alive(pid),
            "process {pid} ({:?}) outlived the server",
            cmdline(pid)
        );
    }
}

#[test]
fn the_example_module_app_runs_under_bun() {
    runtime("bun");
    let server = Server::start(&[&example("hello"), "w:2", "--runtime=bun"]);
    server.wait_workers(2);
    assert!(server.stdout.text().contains("index.js under bun"));
    exercise_hello(&server);
}

#[test]
fn the_example_command_app_runs() {
    let server = Server::start(&[&example("python"), "w:2"]);
    server.wait_workers(2);
    assert!(server
        .get("/")
        .text()
        .starts_with("Hello from Python worker"));
    assert_eq!(server.get("/ping").text(), "pong");
    let body = vec![b'z'; 300_000];
    assert!(server.request("POST", "/echo", &[], &body).body == body);
}

#[test]
fn typescript_and_default_function_exports_run() {
    runtime("bun");
    let dir = socket_dir();
    write_app(
        dir.path(),
        "index.ts",
        "export default function (req: Request): Response {\n  return new Response(`ts:${new URL(req.url).pathname}:${process.env.RIP_WORKER_ID}`);\n}\n",
        false,
    );
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1"]);
    server.wait_workers(1);
    assert_eq!(server.get("/x").text(), "ts:/x:0");

    runtime("node");
    let dir = socket_dir();
    write_app(
        dir.path(),
        "app.mjs",
        "export default function (req) { return new Response('fn ' + req.method); }\n",
        false,
    );
    let entry = dir.path().join("app.mjs");
    let server = Server::start(&[entry.to_str().unwrap(), "w:1", "--runtime=node"]);
    server.wait_workers(1);
    assert_eq!(server.request("DELETE", "/", &[], b"").text(), "fn DELETE");
}

/// A module app that reports its working directory and logs on start.
fn chatty_app(dir: &Path) {
    write_app(
        dir,
        "index.js",
        "console.log('hello from the app');\nconsole.error('warning from the app');\nexport default { fetch() { return new Response(process.cwd()); } };\n",
        false,
    );
}

#[test]
fn apps_run_in_their_directory_with_output_marked() {
    for runtime_name in ["node", "bun"] {
        runtime(runtime_name);
        let dir = socket_dir();
        chatty_app(dir.path());
        let server = Server::start(&[
            dir.path().to_str().unwrap(),
            "w:1",
            &format!("--runtime={runtime_name}"),
        ]);
        server.wait_workers(1);
        let cwd = server.get("/").text();
        assert_eq!(
            Path::new(&cwd),
            dir.path().canonicalize().unwrap(),
            "{runtime_name}"
        );
        eventually("marked stdout", || {
            server
                .stdout
                .text()
                .contains("[worker 0] hello from the app")
                .then_some(())
        });
        eventually("marked stderr", || {
            server
                .stderr
                .text()
                .contains("[worker 0] warning from the app")
                .then_some(())
        });
    }
}

#[test]
fn an_app_that_fails_to_load_shows_its_error_and_is_failing() {
    runtime("node");
    let dir = socket_dir();
    write_app(
        dir.path(),
        "index.mjs",
        "throw new Error('boom at import');\n",
        false,
    );
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:2", "--runtime=node"]);
    server.wait_output("boom at import");
    let status = eventually("failing in /status", || {
        let status = server.status()?;
        (status["status"] == "failing").then_some(status)
    });
    assert_eq!(status["error"], "Error: boom at import", "{status}");
    assert_eq!(status["workers"], 0);
    assert_eq!(status["missing"], 2);
    // No worker will come in the queue time: the answer comes at once.
    let started = Instant::now();
    let r = server.request("GET", "/", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (503, "App not ready"));
    assert!(started.elapsed() < Duration::from_millis(1000));
}

/// What the loader answers on a worker socket itself.
fn loader_contract(runtime_name: &str) {
    runtime(runtime_name);
    let server = Server::start(&[
        &example("hello"),
        "w:1",
        &format!("--runtime={runtime_name}"),
    ]);
    server.wait_workers(1);
    let socket = server.socket("0.sock");
    let ready = unix_request(&socket, "GET", "/ready").unwrap();
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (200, "ok"),
        "{runtime_name}"
    );
    let slow = {
        let socket = socket.clone();
        thread::spawn(move || unix_request(&socket, "GET", "/slow?ms=800").unwrap())
    };
    let busy = eventually("a busy answer", || {
        let r = unix_request(&socket, "GET", "/ping").ok()?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(busy.text(), "busy");
    assert_eq!(busy.header("rip-worker-busy"), Some("1"));
    assert_eq!(busy.header("retry-after"), Some("0"));
    assert_eq!(busy.header("rip-worker-id"), Some("0"));
    assert_eq!(slow.join().unwrap().status, 200);
    // Through the LB a client never sees any of it.
    let through = server.get("/ping");
    assert_eq!(through.status, 200);
    assert!(through.header("rip-worker-id").is_none());
}

#[test]
fn the_loader_answers_ready_and_busy_under_node() {
    loader_contract("node");
}

#[test]
fn the_loader_answers_ready_and_busy_under_bun() {
    loader_contract("bun");
}

#[test]
fn a_command_app_socket_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket_dir();
    // Binds with the default umask and never chmods its socket.
    write_app(
        dir.path(),
        "app",
        "#!/usr/bin/env python3\nimport os, socketserver, http.server\nos.umask(0o022)\nclass H(http.server.BaseHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n    def address_string(self): return 'unix'\n    def do_GET(self):\n        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')\nsocketserver.UnixStreamServer(os.environ['RIP_SOCKET'], H).serve_forever()\n",
        true,
    );
    let server = Server::start(&[dir.path().to_str().unwrap(), "w:1"]);
    server.wait_workers(1);
    assert_eq!(server.get("/").text(), "ok");
    let mode = std::fs::metadata(server.socket("0.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// `tests/apps/hono-node`, its packages installed.
fn hono_node() -> std::path::PathBuf {
    let dir = repo().join("tests/apps/hono-node");
    assert!(
        dir.join("node_modules/hono").is_dir(),
        "run 'npm install --prefix tests/apps/hono-node' first (.ci/run does)"
    );
    dir
}

/// Issue 13: after a plain `npm init -y` (`"type": "commonjs"`), an
/// ES-module entry (and the app's own ES modules it imports) loads under
/// Node, and so does a CommonJS entry (`module.exports = app`); both with
/// Hono from npm, both reloaded on an edit.
#[test]
fn hono_loads_under_node_as_an_es_module_in_a_commonjs_package_and_as_commonjs() {
    runtime("node");
    let source = hono_node();
    for (entry, greeting) in [("esm.js", "hello from esm"), ("cjs.js", "hello from cjs")] {
        // A copy, so that an edit is the test's own.
        let dir = tempfile::tempdir().unwrap();
        for name in ["package.json", "esm.js", "cjs.js", "greeting.js"] {
            std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
        }
        std::os::unix::fs::symlink(source.join("node_modules"), dir.path().join("node_modules"))
            .unwrap();
        let path = dir.path().join(entry);
        let mut server = Server::start(&[path.to_str().unwrap(), "w:1", "--runtime=node"]);
        server.wait_workers(1);
        assert_eq!(server.get("/").text(), greeting, "{}", server.output());
        let echoed = server.request("POST", "/echo", &[], b"a body");
        assert_eq!(echoed.text(), "a body");
        let text = std::fs::read_to_string(&path).unwrap();
        let kind = &entry[..3];
        std::fs::write(
            &path,
            text.replace(&format!("from {kind}"), &format!("edited {kind}")),
        )
        .unwrap();
        let edited = greeting.replace("from", "edited");
        eventually(&format!("{entry} reloaded"), || {
            (server.get("/").text() == edited).then_some(())
        });
        assert!(server.stop().success());
        assert!(
            !server.output().contains("Cannot use import statement"),
            "{}",
            server.output()
        );
    }
}

/// Issue 13: a response body that fails midway is logged with the app's
/// error and stack under both runtimes (Bun says nothing by itself), and
/// the client gets what came before the failure, then the connection ends.
#[test]
fn a_failing_response_stream_is_logged_with_the_apps_stack() {
    const APP: &str = "const later = () => new Promise((r) => setTimeout(r, 30));\nconst bytes = (s) => new TextEncoder().encode(s);\nexport default {\n  fetch(req) {\n    const path = new URL(req.url).pathname;\n    if (path === '/ok') return new Response('fine');\n    if (path === '/gen') {\n      async function* gen() { yield bytes('first\\n'); await later(); throw new Error('the generator broke'); }\n      return new Response(gen());\n    }\n    return new Response(new ReadableStream({\n      async start(c) { c.enqueue(bytes('first\\n')); await later(); c.error(new Error('the stream broke')); },\n    }));\n  },\n};\n";
    for name in ["node", "bun"] {
        runtime(name);
        let dir = tempfile::tempdir().unwrap();
        let entry = write_app(dir.path(), "index.mjs", APP, false);
        let runtime_flag = format!("--runtime={name}");
        let server = Server::start(&[entry.to_str().unwrap(), "w:1", &runtime_flag]);
        server.wait_workers(1);
        for (path, error) in [
            ("/stream", "the stream broke"),
            ("/gen", "the generator broke"),
        ] {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.contains("first\n"),
                "{name} {path}: {answer}"
            );
            // The error, then a frame of the app's own (lines arrive one by one).
            eventually(&format!("{name} {path}: {error} with a stack"), || {
                let out = server.output();
                let at = out.find(error)?;
                out[at..].contains("index.mjs:").then_some(())
            });
        }
        assert_eq!(server.get("/ok").text(), "fine", "{name}");
    }
}

/// The loader's socket is private from the moment it exists (the worker
/// makes it private too, but only once the app is ready), while the app
/// itself keeps the umask it was started with. The loader runs alone here,
/// as a worker starts it.
fn loader_socket_is_private_from_the_start(runtime_name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let bin = runtime(runtime_name);
    let dir = socket_dir();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    // The app creates a file as it is imported.
    write_app(
        &app,
        "index.js",
        "import fs from 'node:fs';\nfs.writeFileSync('made-by-app', 'x');\nexport default { fetch() { return new Response('ok'); } };\n",
        false,
    );
    let socket = dir.path().join("app.sock");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$1\"")
        .arg(&bin)
        .arg(repo().join("src/apps/loader.mjs"))
        .current_dir(&app)
        .env("RIP_SOCKET", &socket)
        .env("RIP_ENTRY", app.join("index.js"))
        .env("RIP_HOT_RELOAD", "none")
        .spawn()
        .unwrap();
    let _stop = StopOnDrop(vec![child.id()]);
    let mode = eventually("the loader's socket", || {
        let meta = std::fs::symlink_metadata(&socket).ok()?;
        Some(meta.permissions().mode() & 0o777)
    });
    assert_eq!(
        mode, 0o600,
        "{runtime_name}: socket mode {mode:o} when first seen"
    );
    let ready = eventually("the app ready", || {
        let r = unix_request(&socket, "GET", "/ready").ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(ready.text(), "ok");
    let made = std::fs::metadata(app.join("made-by-app")).unwrap();
    assert_eq!(
        made.permissions().mode() & 0o777,
        0o644,
        "{runtime_name}: the app's own files follow its umask"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "{runtime_name}");
}

#[test]
fn the_loaders_socket_is_private_from_the_start_under_bun() {
    loader_socket_is_private_from_the_start("bun");
}

#[test]
fn the_loaders_socket_is_private_from_the_start_under_node() {
    loader_socket_is_private_from_the_start("node");
}
