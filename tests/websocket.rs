//! WebSocket through the LB: the handshake reaches the app with its
//! `Upgrade`, a `101` turns the exchange into a tunnel for as long as
//! either side keeps it open, and tunnels are capped so that plain requests
//! keep a worker. The client is a real one (Python's `websockets`), the app
//! a real one (Express with `ws`, `tests/apps/ws-express`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::*;

fn ws_express() -> String {
    let dir = repo().join("tests/apps/ws-express");
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "run 'npm install --prefix tests/apps/ws-express' first (.ci/run does)"
    );
    dir.join("app").display().to_string()
}

/// Runs a Python `websockets` client script with the port as argv[1];
/// returns what it printed.
fn client(script: &str, port: u16) -> String {
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const ECHO: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(f"ws://127.0.0.1:{sys.argv[1]}/ws") as ws:
        got = []
        for m in ["hello", "x" * 100000, "pid"]:
            await ws.send(m)
            got.append(await ws.recv())
        print(got[0], len(got[1]), got[2])
asyncio.run(main())
"#;

#[test]
fn a_websocket_reaches_an_express_app_and_back() {
    runtime("node");
    let server = Server::start(&[&ws_express(), "w:2"]);
    server.wait_workers(2);
    let said = client(ECHO, server.port);
    let mut words = said.split(' ');
    assert_eq!(words.next(), Some("echo:"), "{said}");
    assert_eq!(words.next(), Some("hello"), "{said}");
    assert_eq!(words.next(), Some("100006"), "{said}");
    let pid: u32 = words.next().unwrap().parse().unwrap();
    assert!(alive(pid));
    // Plain requests still work beside it, and the access log has the 101.
    assert_eq!(server.get("/ping").text(), "pong");
    server.wait_output("GET /ws → 101");
}

const HOLD_TWO: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
async def main():
    url = f"ws://127.0.0.1:{sys.argv[1]}/ws"
    async with connect(url) as first:
        await first.send("one")
        print(await first.recv())
        try:
            async with connect(url) as second:
                print("second opened")
        except InvalidStatus as e:
            print("second refused", e.response.status_code)
asyncio.run(main())
"#;

#[test]
fn tunnels_are_capped_so_plain_requests_keep_a_worker() {
    runtime("node");
    // w:2: one tunnel at most by default.
    let server = Server::start(&[&ws_express(), "w:2"]);
    server.wait_workers(2);
    let said = client(HOLD_TWO, server.port);
    assert_eq!(said, "echo: one\nsecond refused 503");
    // With room for two, both open.
    let server = Server::start(&[&ws_express(), "w:2", "--max-tunnels=2"]);
    server.wait_workers(2);
    let said = client(HOLD_TWO, server.port);
    assert_eq!(said, "echo: one\nsecond opened");
}

const ONE: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(f"ws://127.0.0.1:{sys.argv[1]}/ws") as ws:
        await ws.send("hello")
        print(await ws.recv())
asyncio.run(main())
"#;

/// Bun's own convention works through the loader: `server.upgrade(req)` in
/// `fetch`, handlers in `websocket`.
#[test]
fn a_websocket_reaches_a_bun_module_app() {
    runtime("bun");
    let app = repo().join("tests/apps/ws-bun").display().to_string();
    let server = Server::start(&[&app, "w:2", "--hot-reload=none"]);
    server.wait_workers(2);
    assert_eq!(client(ONE, server.port), "bun: hello");
    assert_eq!(server.get("/ping").text(), "pong");
}
