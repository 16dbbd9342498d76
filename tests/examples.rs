//! The framework examples (`examples/`), started the way the README says:
//! Hono as a module app under Bun and Node, Express 5, FastAPI under
//! uvicorn and Flask under gunicorn as command apps. Each answers a route
//! and a POST body, sees the client as rip-server tells it (a client's own
//! `X-Forwarded-*` changes nothing), and stops cleanly.
//!
//! Their packages come from npm and PyPI: `.ci/run` installs them, and a
//! test installs what is missing itself; only when the registry cannot be
//! reached does a test skip, saying so.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// What a failed install says when the registry is out of reach.
const UNREACHABLE: [&str; 8] = [
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ETIMEDOUT",
    "ENETUNREACH",
    "Temporary failure in name resolution",
    "NewConnectionError",
    "Network is unreachable",
];

/// Runs an install; false (with the reason printed) when the registry
/// cannot be reached, a failing test when the install fails otherwise.
fn install(what: &str, command: &mut Command) -> bool {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if out.status.success() {
        return true;
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if UNREACHABLE.iter().any(|sign| text.contains(sign)) {
        eprintln!("SKIPPED: {what}: the package registry cannot be reached:\n{text}");
        return false;
    }
    panic!("{what} failed:\n{text}");
}

/// The example's npm packages, installed if missing.
fn npm_ready(example: &Path) -> bool {
    example.join("node_modules").is_dir()
        || install(
            &format!("npm install --prefix {}", example.display()),
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(example),
        )
}

/// The example's PyPI packages, installed if `module` cannot be imported.
fn pip_ready(example: &Path, module: &str) -> bool {
    let importable = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    importable
        || install(
            &format!("pip install -r {}/requirements.txt", example.display()),
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "-r"])
                .arg(example.join("requirements.txt")),
        )
}

/// A route, a POST body, the client as the app sees it, and a clean stop.
fn exercise(name: &str, args: &[&str]) {
    let mut server = Server::start(args);
    server.wait_workers(2);
    let hello = server.get("/");
    assert_eq!(
        (hello.status, hello.text()),
        (200, format!("Hello from {name}")),
        "{}",
        server.output()
    );
    let body: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let echoed = server.request(
        "POST",
        "/echo",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!((echoed.status, echoed.text()), (200, body), "{name}");
    let who = server.request(
        "GET",
        "/whoami",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Real-IP", "6.6.6.6"),
        ],
        b"",
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&who.body).unwrap_or_else(|e| panic!("{name}: {e}: {}", who.text()));
    assert_eq!(seen["ip"], "127.0.0.1", "{name}: {seen}");
    assert_eq!(seen["proto"], "http", "{name}: {seen}");
    assert!(
        seen["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1") || h == "localhost"),
        "{name}: {seen}"
    );
    assert_eq!(
        seen["id"].as_str(),
        who.header("x-request-id"),
        "{name}: {seen}"
    );
    let pids = server.descendants();
    assert!(server.stop().success(), "{name}: {}", server.output());
    for pid in pids {
        assert!(
            !alive(pid),
            "{name}: process {pid} ({:?}) outlived the server",
            cmdline(pid)
        );
    }
    let left: Vec<_> = std::fs::read_dir(server.dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{name} left files behind: {left:?}");
}

#[test]
fn hono_under_bun_and_node() {
    let example = repo().join("examples/hono");
    if !npm_ready(&example) {
        return;
    }
    let path = example.display().to_string();
    for runtime_name in ["bun", "node"] {
        runtime(runtime_name);
        let flag = format!("--runtime={runtime_name}");
        exercise("Hono", &[&path, "w:2", &flag]);
    }
}

#[test]
fn express_as_a_command_app() {
    runtime("node");
    let example = repo().join("examples/express");
    if !npm_ready(&example) {
        return;
    }
    exercise("Express", &[&example.display().to_string(), "w:2"]);
}

#[test]
fn fastapi_under_uvicorn() {
    let example = repo().join("examples/fastapi");
    if !pip_ready(&example, "fastapi, uvicorn") {
        return;
    }
    exercise("FastAPI", &[&example.display().to_string(), "w:2"]);
}

#[test]
fn flask_under_gunicorn() {
    let example = repo().join("examples/flask");
    if !pip_ready(&example, "flask, gunicorn") {
        return;
    }
    exercise("Flask", &[&example.display().to_string(), "w:2"]);
}
