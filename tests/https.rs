//! HTTPS (issue 15): the `https:<port>` listener with real certificates,
//! checked with real TLS clients (curl, openssl s_client) — the chain, TLS
//! 1.2 and 1.3, ALPN, resumption, what the app is told — and the bad input
//! an HTTPS port gets: plain HTTP, stalled handshakes, old protocols, and
//! certificate files that cannot be served.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A development CA and a leaf it signed for localhost and 127.0.0.1, made
/// with the openssl command line: `ca.pem`, `leaf.pem` + `leaf.key`, and
/// `chain.pem` (the leaf, then the CA).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=rip-server test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ]);
        run(&ca);
        Pki::leaf_in(dir.path(), "leaf", "DNS:localhost,IP:127.0.0.1", &run);
        Pki::leaf_in(dir.path(), "other", "DNS:other.example", &run);
        Pki::leaf_in(dir.path(), "renewed", "DNS:localhost,IP:127.0.0.1", &run);
        Pki::leaf_in(dir.path(), "wild", "DNS:*.wild.example", &run);
        let chain = [
            std::fs::read_to_string(dir.path().join("leaf.pem")).unwrap(),
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.path().join("chain.pem"), chain).unwrap();
        Pki { dir }
    }

    fn leaf_in(dir: &Path, name: &str, san: &str, run: &dyn Fn(&[&str])) {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .unwrap();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "30",
            "-extfile",
            &ext,
        ]);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn flags(&self) -> [String; 2] {
        [
            format!("--cert={}", self.path("chain.pem").display()),
            format!("--key={}", self.path("leaf.key").display()),
        ]
    }
}

/// The HTTPS port from the start-up line (`... and https://0.0.0.0:PORT ...`).
fn https_port(server: &Server) -> u16 {
    let text = server.stdout.text();
    let after = text
        .split("https://")
        .nth(1)
        .expect("an https:// URL in the start-up line");
    let host_port = after.split_whitespace().next().unwrap();
    host_port.rsplit(':').next().unwrap().parse().unwrap()
}

fn start_https(pki: &Pki, extra: &[&str]) -> (Server, u16) {
    let [cert, key] = pki.flags();
    let mut args = vec![probe(), "w:1".into(), "https:0".into(), cert, key];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    server.wait_workers(1);
    let port = https_port(&server);
    (server, port)
}

fn curl(pki: &Pki, port: u16, path: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl")
}

/// `openssl s_client` against the port, with `stdin` sent once connected.
fn s_client(port: u16, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const GET_PING: &[u8] = b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn https_serves_the_app_beside_http_with_the_chain_alpn_and_both_versions() {
    let pki = Pki::new();
    let (server, port) = start_https(&pki, &["http:0"]);
    let status = server.status().unwrap();
    assert_eq!(status["ports"]["https"], port, "{status}");
    assert_eq!(status["ports"]["http"], server.port, "{status}");

    // The app is told the client came over HTTPS, on this port.
    let got = curl(&pki, port, "/headers", &[]);
    assert!(
        got.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let pairs: Vec<(String, String)> = serde_json::from_slice(&got.stdout).unwrap();
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(value("x-forwarded-port"), Some(port.to_string()));
    // HTTP beside it is still HTTP.
    let plain = server.get("/headers");
    let pairs: Vec<(String, String)> = serde_json::from_slice(&plain.body).unwrap();
    assert!(pairs
        .iter()
        .any(|(k, v)| k == "x-forwarded-proto" && v == "http"));

    // A body both ways, larger than a TLS record and than the LB's buffers.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = pki.path("body.bin");
    std::fs::write(&file, &body).unwrap();
    let echoed = curl(
        &pki,
        port,
        "/echo",
        &[
            "--data-binary",
            &format!("@{}", file.display()),
            "-H",
            "Content-Type: application/octet-stream",
        ],
    );
    assert!(
        echoed.status.success(),
        "{}",
        String::from_utf8_lossy(&echoed.stderr)
    );
    assert!(
        echoed.stdout == body,
        "echo differs ({} bytes back)",
        echoed.stdout.len()
    );

    // The whole chain is sent; ALPN picks HTTP/1.1; TLS 1.2 and 1.3 both work.
    let shown = s_client(port, &["-showcerts", "-alpn", "h2,http/1.1"], GET_PING);
    assert_eq!(
        shown.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{shown}"
    );
    assert!(shown.contains("ALPN protocol: http/1.1"), "{shown}");
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let shown = s_client(port, &[flag], GET_PING);
        assert!(
            shown.contains(&format!("Protocol  : {version}"))
                || shown.contains(&format!("New, {version}")),
            "{flag}: {shown}"
        );
        assert!(shown.contains("HTTP/1.1 200"), "{flag}: {shown}");
    }
}

#[test]
fn a_session_is_resumed_by_ticket() {
    let pki = Pki::new();
    let (_server, port) = start_https(&pki, &[]);
    let session = pki.path("session.pem");
    let session_arg = session.display().to_string();
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let _ = std::fs::remove_file(&session);
        let first = s_client(port, &[flag, "-sess_out", &session_arg], GET_PING);
        assert!(first.contains("HTTP/1.1 200"), "{first}");
        assert!(session.exists(), "{flag}: no session saved\n{first}");
        let again = s_client(port, &[flag, "-sess_in", &session_arg], GET_PING);
        assert!(
            again.contains(&format!("Reused, {version}")),
            "{flag}: {again}"
        );
    }
}

#[test]
fn plain_http_to_the_https_port_gets_a_400_saying_so() {
    let pki = Pki::new();
    let (_server, port) = start_https(&pki, &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("The plain HTTP request was sent to HTTPS port; use https://\n"),
        "{answer}"
    );
}

/// Waits (polling) until the server closes `stream`; how long it took
/// since `start`.
fn closed_within(stream: &mut TcpStream, start: Instant, limit: Duration) -> Duration {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(start.elapsed() < limit, "still open after {limit:?}");
    }
}

#[test]
fn a_handshake_that_does_not_finish_in_the_header_timeout_is_cut() {
    let pki = Pki::new();
    let (server, port) = start_https(&pki, &["--header-timeout-ms=500"]);
    // Nothing at all, and the start of a ClientHello that never ends.
    let start = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        let took = closed_within(stream, start, Duration::from_secs(10));
        assert!(
            took >= Duration::from_millis(300),
            "cut after {took:?}, before the timeout"
        );
    }
    // And the port still serves.
    assert!(curl(&pki, port, "/pid", &[]).status.success());
    drop(server);
}

#[test]
fn a_client_offering_only_old_protocols_gets_an_alert() {
    let pki = Pki::new();
    let (_server, port) = start_https(&pki, &[]);
    // SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all.
    let shown = s_client(
        port,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        GET_PING,
    );
    assert!(!shown.contains("HTTP/1.1 200"), "{shown}");
    // rustls answers with a handshake_failure alert (40).
    assert!(shown.contains("SSL alert number 40"), "{shown}");
}

/// `rip-server <args>` exits 2 with one line, starting nothing.
fn refused(args: &[&str]) -> String {
    refused_with(args, &[])
}

fn refused_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = socket_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rip-server"))
        .args(args)
        .arg(format!("--socket-dir={}", dir.path().display()))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal is immediate; a server that started instead is stopped
    // and the test fails (rather than waiting on it for ever).
    let _stop = StopOnDrop(vec![child.id()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{args:?} started a server instead of refusing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
    stderr
}

#[test]
fn certificates_that_cannot_be_served_exit_2_before_anything_starts() {
    let pki = Pki::new();
    let app = probe();
    let cert = |name: &str| format!("--cert={}", pki.path(name).display());
    let key = |name: &str| format!("--key={}", pki.path(name).display());

    let missing = refused(&[&app, "https:0", &cert("nope.pem"), &key("leaf.key")]);
    assert!(
        missing.contains("nope.pem") && missing.contains("cannot read"),
        "{missing}"
    );
    let not_pem = refused(&[&app, "https:0", &cert("leaf.ext"), &key("leaf.key")]);
    assert!(not_pem.contains("no certificate"), "{not_pem}");
    let no_key = refused(&[&app, "https:0", &cert("leaf.pem"), &key("leaf.pem")]);
    assert!(no_key.contains("no private key"), "{no_key}");
    let mismatch = refused(&[&app, "https:0", &cert("leaf.pem"), &key("other.key")]);
    assert!(mismatch.contains("does not match"), "{mismatch}");
    let half = refused(&[&app, "https:0", &cert("leaf.pem")]);
    assert!(half.contains("--key"), "{half}");
    let stray = refused(&[&app, &cert("leaf.pem"), &key("leaf.key")]);
    assert!(stray.contains("https:<port>"), "{stray}");
}

/// A fresh `$RIP_HOME` for the development CA.
fn rip_home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn start_dev(args: &[&str], home: &Path, env: &[(&str, &str)]) -> (Server, u16) {
    let mut all = vec![probe()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.push("w:1".into());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut vars = vec![("RIP_HOME", home.display().to_string())];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let server = Server::start_with(
        &all,
        Start {
            env: vars,
            ..Start::default()
        },
    );
    server.wait_workers(1);
    let port = https_port(&server);
    (server, port)
}

fn curl_with_ca(ca: &Path, url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl")
}

#[test]
fn https_quick_serves_a_self_signed_localhost_certificate_and_leaves_nothing() {
    let home = rip_home();
    let (mut server, port) = start_dev(&["https:0", "https:quick"], home.path(), &[]);
    let (cert, key) = (server.socket("quick.crt"), server.socket("quick.key"));
    assert!(
        server.stderr.text().contains("for development only"),
        "{}",
        server.stderr.text()
    );
    // Self-signed: the certificate is its own authority.
    let got = curl_with_ca(&cert, &format!("https://localhost:{port}/pid"));
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(
        std::fs::read_dir(home.path()).unwrap().next().is_none(),
        "quick wrote to RIP_HOME"
    );
    assert!(server.stop().success());
    assert!(!cert.exists() && !key.exists(), "quick files left behind");
}

#[test]
fn https_ca_makes_its_ca_once_and_a_leaf_that_curl_trusts_for_localhost() {
    let home = rip_home();
    let root = home.path().join("ca/root.crt");
    let (mut server, port) = start_dev(&["https:0", "https:ca"], home.path(), &[]);
    assert!(
        server.stderr.text().contains("made the development CA"),
        "{}",
        server.stderr.text()
    );
    for url in [
        format!("https://localhost:{port}/pid"),
        format!("https://127.0.0.1:{port}/pid"),
    ] {
        let got = curl_with_ca(&root, &url);
        assert!(
            got.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
    let first = std::fs::read(&root).unwrap();
    assert!(server.stop().success());
    // Again: the same CA and the same leaf, nothing made.
    let (server, port) = start_dev(&["https:0", "https:ca"], home.path(), &[]);
    assert!(!server.stderr.text().contains("made the development CA"));
    assert_eq!(std::fs::read(&root).unwrap(), first);
    assert!(
        curl_with_ca(&root, &format!("https://localhost:{port}/pid"))
            .status
            .success()
    );
    drop(server);
}

#[test]
fn https_smart_takes_your_own_files_in_rip_home_else_the_ca() {
    let pki = Pki::new();
    let home = rip_home();
    std::fs::create_dir_all(home.path().join("certs")).unwrap();
    std::fs::copy(pki.path("chain.pem"), home.path().join("certs/server.crt")).unwrap();
    std::fs::copy(pki.path("leaf.key"), home.path().join("certs/server.key")).unwrap();
    // Bare `https` is https:smart (on port 3443 unless https:<port> says
    // otherwise: this test stays off a fixed port).
    let (server, port) = start_dev(&["https", "https:0"], home.path(), &[]);
    let got = curl_with_ca(
        &pki.path("ca.pem"),
        &format!("https://localhost:{port}/pid"),
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(
        !home.path().join("ca").exists(),
        "no CA made when your files are there"
    );
    drop(server);
}

#[test]
fn production_refuses_development_certificates() {
    let home = rip_home();
    let app = probe();
    let home_var = home.path().display().to_string();
    for mode in ["https:quick", "https:ca", "https:smart", "https"] {
        let line = refused_with(
            &[&app, "https:0", mode],
            &[("NODE_ENV", "production"), ("RIP_HOME", &home_var)],
        );
        assert!(
            line.contains("production") && line.contains("--cert"),
            "{mode}: {line}"
        );
    }
    // https:<port> alone is https:smart.
    let line = refused_with(
        &[&app, "https:0"],
        &[("RIP_ENV", "production"), ("RIP_HOME", &home_var)],
    );
    assert!(line.contains("--cert"), "{line}");
    assert!(
        std::fs::read_dir(home.path()).unwrap().next().is_none(),
        "something was made"
    );
}

fn rip(args: &[&str], home: &Path, cwd: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rip-server"))
        .args(args)
        .env("RIP_HOME", home)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_ca_commands_make_show_export_list_and_clean_the_ca() {
    let home = rip_home();
    let cwd = tempfile::tempdir().unwrap();
    let (h, c) = (home.path(), cwd.path());
    let (code, _, err) = rip(&["ca:info"], h, c);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ca:init"), "{err}");
    let (code, out, err) = rip(&["ca:init"], h, c);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("made") && out.contains("CN=Rip Server Development CA"),
        "{out}"
    );
    // The fingerprint is openssl's.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(h.join("ca/root.crt"))
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&openssl.stdout);
    let theirs = theirs.trim().rsplit('=').next().unwrap().to_string();
    assert!(out.contains(&theirs), "{out} lacks {theirs}");
    let (code, out, _) = rip(&["ca", "init"], h, c);
    assert_eq!(code, Some(0));
    assert!(out.contains("kept the existing"), "{out}");
    let (code, _, err) = rip(&["ca:export"], h, c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read(c.join("rip-server-ca.crt")).unwrap(),
        std::fs::read(h.join("ca/root.crt")).unwrap()
    );
    let (_, out, _) = rip(&["ca:list"], h, c);
    assert!(out.contains("no certificates"), "{out}");
    // A server with https:ca issues the localhost certificate; list shows it.
    let (server, _) = start_dev(&["https:0", "https:ca"], h, &[]);
    drop(server);
    let (_, out, _) = rip(&["ca:list"], h, c);
    assert!(
        out.contains("localhost.crt") && out.contains("127.0.0.1"),
        "{out}"
    );
    let (code, out, _) = rip(&["ca:clean"], h, c);
    assert_eq!(code, Some(0));
    assert!(out.contains("removed"), "{out}");
    assert!(!h.join("ca").exists() && !h.join("certs").exists());
    let (code, _, err) = rip(&["ca:bogus"], h, c);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The serial of the certificate a new handshake gets.
fn served_serial(port: u16) -> Option<String> {
    let shown = s_client(port, &[], GET_PING);
    let start = shown.find("-----BEGIN CERTIFICATE-----")?;
    let end = shown.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    serial_of_pem(&shown[start..end])
}

fn serial_of_pem(pem: &str) -> Option<String> {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.strip_prefix("serial=").map(str::to_string)
}

/// Replaces `to` whole (a rename), as certbot and editors do.
fn replace(from: &Path, to: &Path) {
    let temp = to.with_extension("new");
    std::fs::copy(from, &temp).unwrap();
    std::fs::rename(&temp, to).unwrap();
}

/// A server on `cert` and `key` (files the test may replace), serving
/// leaf.pem's serial; returns it, its HTTPS port, and the serials of
/// leaf.pem and renewed.pem.
fn serve_replaceable(pki: &Pki, cert: &Path, key: &Path) -> (Server, u16, String, String) {
    let args = [
        probe(),
        "w:1".into(),
        "https:0".into(),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    server.wait_workers(1);
    let port = https_port(&server);
    let serial =
        |file: &str| serial_of_pem(&std::fs::read_to_string(pki.path(file)).unwrap()).unwrap();
    let (first, renewed) = (serial("leaf.pem"), serial("renewed.pem"));
    assert_eq!(served_serial(port).as_deref(), Some(first.as_str()));
    (server, port, first, renewed)
}

#[test]
fn renewed_certificate_files_are_served_without_a_restart_and_a_bad_pair_is_not() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (
        work.path().join("served.crt"),
        work.path().join("served.key"),
    );
    std::fs::copy(pki.path("chain.pem"), &cert).unwrap();
    std::fs::copy(pki.path("leaf.key"), &key).unwrap();
    let (server, port, _, renewed) = serve_replaceable(&pki, &cert, &key);

    // Requests go on while the files are replaced; none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, ca) = (stop.clone(), pki.path("ca.pem"));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = curl_with_ca(&ca, &format!("https://localhost:{port}/pid"));
                if got.status.success() {
                    ok += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&got.stderr).to_string());
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    replace(&pki.path("renewed.key"), &key);
    replace(&pki.path("renewed.pem"), &cert);
    let swapped = Instant::now();
    eventually_within(
        Duration::from_secs(10),
        "the renewed certificate served",
        || (served_serial(port).as_deref() == Some(renewed.as_str())).then_some(()),
    );
    let took = swapped.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "served {took:?} after the files changed"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 0);

    // A key that is not the certificate's: the renewed pair stays.
    replace(&pki.path("other.key"), &key);
    server.wait_output("kept the certificate served so far");
    assert_eq!(served_serial(port).as_deref(), Some(renewed.as_str()));
}

/// Writes `from` over `to` in place, padded to `len` bytes, with `to`'s
/// inode, size and modification time kept: a change no watcher of the
/// file's metadata can see.
fn overwrite_unseen(from: &Path, to: &Path, len: usize) {
    let mut text = std::fs::read(from).unwrap();
    assert!(text.len() <= len, "{} is longer than {len}", from.display());
    text.resize(len, b'\n');
    let modified = std::fs::metadata(to).ok().map(|m| m.modified().unwrap());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .unwrap();
    file.write_all(&text).unwrap();
    if let Some(modified) = modified {
        file.set_modified(modified).unwrap();
    }
}

#[test]
fn sighup_rereads_the_certificates_without_restarting_the_lb() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (
        work.path().join("served.crt"),
        work.path().join("served.key"),
    );
    overwrite_unseen(&pki.path("leaf.pem"), &cert, 4096);
    overwrite_unseen(&pki.path("leaf.key"), &key, 1024);
    let (server, port, first, renewed) = serve_replaceable(&pki, &cert, &key);
    let lb = server.lb_pid();

    overwrite_unseen(&pki.path("renewed.key"), &key, 1024);
    overwrite_unseen(&pki.path("renewed.pem"), &cert, 4096);
    // The watcher cannot see this change: the old pair is still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served_serial(port).as_deref(), Some(first.as_str()));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually_within(
        Duration::from_secs(5),
        "the reread certificate served",
        || (served_serial(port).as_deref() == Some(renewed.as_str())).then_some(()),
    );
    server.wait_output("SIGHUP: rereading the certificates");
    assert_eq!(server.lb_pid(), lb, "the LB was not restarted");
    let got = curl_with_ca(
        &pki.path("ca.pem"),
        &format!("https://localhost:{port}/pid"),
    );
    assert!(got.status.success(), "{got:?}");
}

#[test]
fn a_thousand_half_open_handshakes_do_not_starve_service() {
    let pki = Pki::new();
    let (server, port) = start_https(&pki, &[]);
    // Each sends the start of a ClientHello and stops.
    let stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    for _ in 0..5 {
        let got = curl(&pki, port, "/pid", &[]);
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "5 requests took {:?} beside 1000 stalled handshakes",
        start.elapsed()
    );
    let rss = peak_rss_kib(server.lb_pid());
    assert!(rss < 96 * 1024, "the LB peaked at {rss} KiB");
    drop(stalled);
}

#[test]
fn redirect_http_sends_plain_requests_to_https_and_hsts_marks_https_answers() {
    let pki = Pki::new();
    let [cert, key] = pki.flags();
    let server = Server::start(&[
        &probe(),
        "w:1",
        "http:0",
        "https:0",
        &cert,
        &key,
        "--redirect-http",
        "--hsts",
    ]);
    let port = https_port(&server);
    // /status on HTTP is redirected too: ask over HTTPS.
    eventually("the worker joined", || {
        let got = curl(&pki, port, "/status", &[]);
        String::from_utf8_lossy(&got.stdout)
            .contains("\"workers\":1")
            .then_some(())
    });
    let ask = |raw: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let moved =
        ask("GET /a/b?x=1 HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n");
    assert!(
        moved.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{moved}"
    );
    assert!(
        moved.contains(&format!(
            "\r\nlocation: https://shop.example:{port}/a/b?x=1\r\n"
        )),
        "{moved}"
    );
    assert!(
        !moved
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{moved}"
    );
    let literal = ask("GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n");
    assert!(
        literal.contains(&format!("\r\nlocation: https://[::1]:{port}/\r\n")),
        "{literal}"
    );
    // The health route stays on HTTP (a load balancer's probe).
    let health = ask("GET /server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );

    // Over HTTPS: the app's answers and the LB's own carry HSTS.
    for path in ["/pid", "/status"] {
        let got = curl(&pki, port, path, &["-i"]);
        let text = String::from_utf8_lossy(&got.stdout).to_ascii_lowercase();
        assert!(
            text.contains("\r\nstrict-transport-security: max-age=31536000\r\n"),
            "{path}: {text}"
        );
    }
    // curl follows the redirect to the app.
    let followed = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg(format!("http://localhost:{}/pid", server.port))
        .output()
        .unwrap();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let _: u32 = String::from_utf8_lossy(&followed.stdout)
        .trim()
        .parse()
        .unwrap();

    let app = probe();
    let line = refused(&[&app, "http:0", "--redirect-http"]);
    assert!(
        line.contains("--redirect-http") && line.contains("https"),
        "{line}"
    );
    let line = refused(&[&app, "http:0", "--hsts=60"]);
    assert!(line.contains("--hsts"), "{line}");
}

/// The serial of the certificate served to a client asking for `name`
/// (None: no SNI at all).
fn serial_for(port: u16, name: Option<&str>) -> Option<String> {
    let mut command = Command::new("openssl");
    command.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-ign_eof",
    ]);
    match name {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(GET_PING).unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let start = shown.find("-----BEGIN CERTIFICATE-----")?;
    let end = shown.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    serial_of_pem(&shown[start..end])
}

#[test]
fn sni_picks_the_exact_name_then_a_one_label_wildcard_then_the_first_pair() {
    let pki = Pki::new();
    let flags = |name: &str, key: &str| {
        [
            format!("--cert={}", pki.path(name).display()),
            format!("--key={}", pki.path(key).display()),
        ]
    };
    let mut args = vec![probe(), "w:1".into(), "https:0".into()];
    args.extend(flags("chain.pem", "leaf.key"));
    args.extend(flags("wild.pem", "wild.key"));
    args.extend(flags("other.pem", "other.key"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    server.wait_workers(1);
    let port = https_port(&server);
    let serial = |file: &str| serial_of_pem(&std::fs::read_to_string(pki.path(file)).unwrap());
    let (default, wild, other) = (serial("leaf.pem"), serial("wild.pem"), serial("other.pem"));
    for (name, want) in [
        (Some("other.example"), &other),
        (Some("OTHER.Example"), &other),
        (Some("api.wild.example"), &wild),
        (Some("API.WILD.EXAMPLE"), &wild),
        (Some("a.b.wild.example"), &default),
        (Some("wild.example"), &default),
        (Some("localhost"), &default),
        (Some("unknown.example"), &default),
        (None, &default),
    ] {
        assert_eq!(&serial_for(port, name), want, "{name:?}");
    }
    assert!(!server.output().contains("never served"));
    // A pair whose every name an earlier one takes is never served: said.
    let mut args = vec![probe(), "w:1".into(), "https:0".into()];
    args.extend(flags("leaf.pem", "leaf.key"));
    args.extend(flags("renewed.pem", "renewed.key"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shadowed = Server::start(&args);
    shadowed.wait_workers(1);
    let warned = shadowed.wait_output("never served");
    assert!(
        warned.contains(&format!(
            "{}: never served",
            pki.path("renewed.pem").display()
        )),
        "{warned}"
    );
    drop(shadowed);
    let app = probe();
    let line = refused(&[
        &app,
        "https:0",
        &flags("leaf.pem", "leaf.key")[0],
        &flags("leaf.pem", "leaf.key")[1],
        &flags("other.pem", "x")[0],
    ]);
    assert!(line.contains("--key"), "{line}");
}

#[test]
fn two_bare_certificate_files_in_either_order_are_the_certificate_and_its_key() {
    let pki = Pki::new();
    let (key, cert) = (pki.path("leaf.key"), pki.path("chain.pem"));
    for (first, second) in [(&key, &cert), (&cert, &key)] {
        let args = [
            probe(),
            "w:1".into(),
            "https:0".into(),
            first.display().to_string(),
            second.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&args);
        server.wait_workers(1);
        let port = https_port(&server);
        let got = curl(&pki, port, "/pid", &[]);
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
    }

    let app = probe();
    let (leaf, other) = (pki.path("leaf.pem"), pki.path("other.pem"));
    let one = refused(&[&app, "https:0", &cert.display().to_string()]);
    assert!(one.contains("come as two"), "{one}");
    let two_certs = refused(&[
        &app,
        "https:0",
        &leaf.display().to_string(),
        &other.display().to_string(),
    ]);
    assert!(two_certs.contains("private key"), "{two_certs}");
    let both = refused(&[
        &app,
        "https:0",
        &leaf.display().to_string(),
        &key.display().to_string(),
        &format!("--cert={}", cert.display()),
        &format!("--key={}", key.display()),
    ]);
    assert!(both.contains("not both"), "{both}");
}
