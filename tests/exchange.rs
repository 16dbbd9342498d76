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

/// The temp files a process holds open that have no name (`O_TMPFILE`,
/// or unlinked).
fn unnamed_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains("(deleted)"))
        .collect()
}

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

/// Bodies are read whole before a worker takes them: a slow upload holds
/// LB memory, never a worker.
#[test]
fn a_slow_upload_does_not_hold_a_worker() {
    let server = Server::start(&[&probe(), "w:1", "--queue-timeout-ms=1000"]);
    server.wait_workers(1);
    let mut slow = Client::connect(server.port).unwrap();
    slow.write_raw(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
        .unwrap();
    // While it trickles (longer than the queue timeout), others are served
    // at once, and the app has seen nothing of it.
    for _ in 0..5 {
        assert_eq!(server.get("/pid").status, 200);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(server.status().unwrap()["busy"], 0);
    slow.write_raw(b"cdef").unwrap();
    let answer = slow.read_response(false).unwrap();
    assert_eq!(answer.text(), "abcdef");
    assert_eq!(server.get("/max").text(), "1");
}

/// A body over `--body-buffer` waits in a temp file that has no name: it
/// arrives whole, and nothing is left behind.
#[test]
fn a_large_body_is_held_in_a_file_that_leaves_nothing_behind() {
    let server = Server::start(&["builtin:hello", "w:1", "--body-buffer=16K"]);
    server.wait_workers(1);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let echoed = server.request("POST", "/echo", &[], &body);
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "{} bytes came back", echoed.body.len());
    // Chunked too (re-encoded, then held).
    let mut client = Client::connect(server.port).unwrap();
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_000) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    client.write_raw(&raw).unwrap();
    let echoed = client.read_response(false).unwrap();
    assert!(echoed.body == body, "{} bytes came back", echoed.body.len());
    let lb = server.lb_pid();
    let names: Vec<String> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".sock") && !n.ends_with(".pid") && !n.ends_with(".mjs"))
        .collect();
    assert!(names.is_empty(), "left in the socket dir: {names:?}");
    let open = unnamed_files(lb);
    assert!(open.is_empty(), "the LB still holds {open:?}");
}

#[test]
fn a_client_that_stalls_mid_body_gets_408() {
    let server = Server::start(&[&probe(), "w:1", "--body-timeout-ms=300"]);
    server.wait_workers(1);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(
        server.get("/count").text(),
        "1",
        "the app saw the stalled request"
    );
}

/// An app that stops in the middle of a body is cut off after
/// `--app-idle-timeout-ms`, and replaced (it may still be busy).
#[test]
fn an_app_that_stalls_mid_body_is_cut_off() {
    let server = Server::start(&[&probe(), "w:1", "--app-idle-timeout-ms=300"]);
    server.wait_workers(1);
    let mut client = Client::connect(server.port).unwrap();
    let cut = client.send("GET", "/pause?ms=2000", &[], b"");
    assert!(cut.is_err(), "a cut response was read whole: {cut:?}");
    server.wait_output("worker 1 ready");
    // Within the limit a pause is fine.
    assert_eq!(server.get("/pause?ms=100").text(), "0123456789");
}

/// A client that reads slower than the send timeout allows is let go, and
/// the app's response is read to its end so its worker is freed.
#[test]
fn a_client_that_stops_reading_is_let_go_and_costs_no_app_process() {
    let server = Server::start(&[&probe(), "w:1", "--send-timeout-ms=300"]);
    server.wait_workers(1);
    let pid = server.get("/pid").text();
    let stuck = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    (&stuck)
        .write_all(b"GET /big?n=20000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // It never reads; the app finishes anyway.
    server.wait_output("big done");
    assert_eq!(server.get("/pid").text(), pid);
    assert!(
        !server.output().contains("worker 1 ready"),
        "{}",
        server.output()
    );
    drop(stuck);
}

/// The LB reads a response as fast as the app writes it: a slow reader
/// of a large download holds LB memory and a temp file, not the worker.
#[test]
fn a_slow_reader_does_not_hold_a_worker() {
    let server = Server::start(&[&probe(), "w:1"]);
    server.wait_workers(1);
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"GET /big?n=20000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // The app is done long before the client is, and serves others.
    server.wait_output("big done");
    assert_eq!(server.get("/pid").status, 200);
    assert_eq!(server.status().unwrap()["busy"], 0);
    // What waits is in a file that has no name.
    let lb = server.lb_pid();
    let held = unnamed_files(lb);
    assert_eq!(held.len(), 1, "{held:?}");
    // The client then reads it all, byte for byte.
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let body_at = loop {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} bytes", all.len());
        all.extend_from_slice(&buf[..n]);
        if let Some(at) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    while all.len() - body_at < 20_000_000 {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} body bytes", all.len() - body_at);
        all.extend_from_slice(&buf[..n]);
    }
    assert!(all[body_at..].iter().all(|&b| b == b'x'));
    assert_eq!(all.len() - body_at, 20_000_000);
    // Then the file is gone.
    eventually("the backlog file closed", || {
        unnamed_files(lb).is_empty().then_some(())
    });
    assert!(
        !server.output().contains("worker 1 ready"),
        "{}",
        server.output()
    );
}

/// Past --buffer-disk the relay goes at the client's pace (the worker is
/// held again), says so, and still delivers every byte.
#[test]
fn past_the_buffer_bound_a_response_goes_at_the_clients_pace() {
    let server = Server::start(&[&probe(), "w:1", "--buffer-disk=1M"]);
    server.wait_workers(1);
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"GET /big?n=8000000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    server.wait_output("the buffers for slow clients are full");
    // The app cannot finish while the client does not read.
    assert_eq!(server.status().unwrap()["busy"], 1);
    let mut all = Vec::new();
    slow.read_to_end(&mut all).unwrap();
    let body_at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(all.len() - body_at, 8_000_000);
    server.wait_output("big done");
}

/// A trickle that never pauses long enough for the body timeout must still
/// average `--min-body-rate` once the body has taken longer than it.
#[test]
fn a_trickled_body_below_the_minimum_rate_gets_408() {
    let server = Server::start(&[
        &probe(),
        "w:1",
        "--body-timeout-ms=400",
        "--min-body-rate=1K",
    ]);
    server.wait_workers(1);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // A byte every 100 ms: 10 B/s, never a pause of 400 ms.
    for _ in 0..100 {
        if stream.write_all(b"x").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.get("/count").text(), "1", "the app saw the trickle");
}

/// A held body in a temp file goes to the app at the app's pace; the read
/// timeout starts when the app has all of it, not at dispatch.
#[test]
fn the_read_timeout_starts_when_the_app_has_a_held_body() {
    let server = Server::start(&[
        &probe(),
        "w:1",
        "--body-buffer=16K",
        "--read-timeout-ms=400",
    ]);
    server.wait_workers(1);
    // 1 MiB read 64 KiB every 60 ms: about a second, past the timeout.
    let body = vec![b'z'; 1 << 20];
    let answer = server.request("POST", "/slowread?ms=60", &[], &body);
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "1048576"),
        "{}",
        server.output()
    );
}
