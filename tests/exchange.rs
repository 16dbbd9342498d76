//! How one exchange ends when the client does something other than wait
//! for its answer: it half-closes, it leaves mid-response, it sends its
//! whole body before reading a refusal.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::*;

/// Sends `bytes`, shuts the write side, and reads until the server closes.
fn half_closed(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_half_closed_client_gets_its_whole_answer() {
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    let answer = half_closed(server.port, b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow done"),
        "{answer:?}"
    );
    // Also while queued behind another request, and with a body.
    let busy = std::thread::spawn({
        let port = server.port;
        move || try_request(port, "GET", "/slow?ms=500", &[], b"").unwrap()
    });
    eventually("the worker busy", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    let answer = half_closed(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer:?}");
    assert_eq!(busy.join().unwrap().status, 200);
    // Nothing was abandoned: the same app served it all.
    assert!(
        !server.output().contains("worker 1 ready"),
        "{}",
        server.output()
    );
}

#[test]
fn a_client_gone_mid_response_costs_no_app_process() {
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    let pid = server.get("/pid").text();
    // A client that leaves while the app works...
    let mut leaver = Client::connect(server.port).unwrap();
    leaver
        .write_raw(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    eventually("the request in flight", || {
        (server.status()?["busy"] == 1).then_some(())
    });
    leaver.close();
    // ... and one that leaves in the middle of a 20 MB download.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .write_all(b"GET /big?n=20000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    stream.read_exact(&mut first).unwrap();
    drop(stream);
    server.wait_output("big done");
    // The app finished both and serves on; it was never replaced, and it
    // never held two requests.
    assert_eq!(server.get("/pid").text(), pid);
    assert_eq!(server.get("/max").text(), "1");
    assert!(
        !server.output().contains("worker 1 ready"),
        "{}",
        server.output()
    );
}

/// A client that sends its whole body before it reads (Python's
/// `http.client`, many SDKs) must read the `413`, not a reset: the LB
/// reads the rest of the body away before it closes.
#[test]
fn a_refusal_reaches_a_client_that_sends_everything_first() {
    let server = Server::start(&["builtin:hello", "w:1", "--max-body=1K"]);
    server.wait_workers(1);
    let script = r#"
import http.client, sys
port = int(sys.argv[1])
body = b"x" * (4 * 1024 * 1024)
seen = []
for i in range(20):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/echo", body=body)
        seen.append(str(conn.getresponse().status))
    except OSError as e:
        seen.append(type(e).__name__)
    conn.close()
chunked = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
try:
    chunked.request("POST", "/echo", body=iter([b"y" * 65536] * 64), encode_chunked=True)
    seen.append(str(chunked.getresponse().status))
except OSError as e:
    seen.append(type(e).__name__)
print(" ".join(seen))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &server.port.to_string()])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        seen.trim(),
        ["413"; 21].join(" "),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The read timeout runs from the end of the request: an honest upload
/// slower than `--read-timeout-ms` is not a slow app.
#[test]
fn an_upload_longer_than_the_read_timeout_succeeds() {
    let server = Server::start(&[&probe(), "w:1", "--read-timeout-ms=500"]);
    server.wait_workers(1);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    for byte in b"0123456789" {
        std::thread::sleep(Duration::from_millis(150));
        stream.write_all(&[*byte]).unwrap();
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("0123456789"),
        "{answer:?}"
    );
    // A slow app still times out, counted from the end of its request.
    let slow = server.request("POST", "/slow?ms=1500", &[], b"x");
    assert_eq!(slow.status, 504, "{}", slow.text());
}
