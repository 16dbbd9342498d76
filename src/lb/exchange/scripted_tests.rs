//! The exchange with scripted I/O: [`Proxy::run`] drives a real
//! [`Exchange`] between a client (one end of a socket pair) and scripted
//! apps (unix listeners in a temp dir, each played by a task that reads
//! and writes exactly what the test says). Each test checks what the
//! client got, what every app was sent, the phase the exchange ended in,
//! and what the pool did with the worker (freed or retired).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{End, Exchange, Phase};
use crate::config::AccessLog as Format;
use crate::lb::access_log::AccessLog;
use crate::lb::balancer::Balancer;
use crate::lb::http1::{self, Context};
use crate::lb::io::Socket;
use crate::lb::pool::Pool;
use crate::lb::proxy::{Client, Next, Proxy, Tunnels};
use crate::lb::spool::Spools;
use crate::link::LinkMsg;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRip-Worker-Busy: 1\r\nContent-Length: 0\r\n\r\n";

struct Rig {
    proxy: Arc<Proxy>,
    retired: mpsc::UnboundedReceiver<LinkMsg>,
    apps: Vec<Option<UnixListener>>,
    _dir: tempfile::TempDir,
}

struct Settings {
    workers: usize,
    request_buffering: bool,
    read_timeout: Duration,
    body_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 1,
            request_buffering: true,
            read_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl Rig {
    fn new(settings: Settings) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (tx, retired) = mpsc::unbounded_channel();
        let balancer = Arc::new(Balancer::new(Pool::new(8, 0), Duration::from_secs(2), tx));
        let mut apps = Vec::new();
        for id in 0..settings.workers {
            let path: PathBuf = dir.path().join(format!("app.{id}.sock"));
            apps.push(Some(UnixListener::bind(&path).unwrap()));
            balancer.join(id as u32, &path, None).unwrap();
        }
        let proxy = Proxy {
            balancer,
            log: AccessLog::start(Format::Off, "test"),
            read_timeout: settings.read_timeout,
            max_body: 1 << 26,
            max_attempts: settings.workers + 1,
            spools: Spools::new(dir.path().to_path_buf(), 64 * 1024, 1 << 26, 1 << 30),
            request_buffering: settings.request_buffering,
            response_buffering: true,
            body_timeout: settings.body_timeout,
            min_body_rate: 0,
            app_idle_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            tunnels: Tunnels::new(1),
            failing: Default::default(),
        };
        Rig {
            proxy: Arc::new(proxy),
            retired,
            apps,
            _dir: dir,
        }
    }

    /// Takes the app listener of worker `id` (to be played by a task).
    fn app(&mut self, id: usize) -> UnixListener {
        self.apps[id].take().unwrap()
    }

    /// Starts an exchange for the request whose first bytes are `sent`:
    /// returns the client's end and the task that runs the exchange (its
    /// result: the phase it ended in and whether the connection goes on).
    async fn start(&self, sent: &[u8]) -> (UnixStream, tokio::task::JoinHandle<(Phase, Next)>) {
        let (lb_end, client_end) = std::os::unix::net::UnixStream::pair().unwrap();
        lb_end.set_nonblocking(true).unwrap();
        let mut client_end = UnixStream::from_std({
            client_end.set_nonblocking(true).unwrap();
            client_end
        })
        .unwrap();
        client_end.write_all(sent).await.unwrap();
        let proxy = self.proxy.clone();
        let task = tokio::spawn(async move {
            let socket = Socket::new(OwnedFd::from(lb_end)).unwrap();
            let mut client = Client::new(socket.into(), None, "lb:80".into(), proxy.spools.clone());
            let head = loop {
                client
                    .socket
                    .read_into(&mut client.buf, 4096)
                    .await
                    .unwrap();
                let context = Context {
                    hop: Default::default(),
                    host: Some("lb:80"),
                    underscores: false,
                };
                if let Some(head) =
                    http1::parse_request(&client.buf, &context, &mut client.req_head).unwrap()
                {
                    break head;
                }
            };
            client.buf.drain(..head.len);
            let ex = if proxy.request_buffering && head.body != http1::Framing::None {
                Exchange::reading(proxy.limits())
            } else {
                Exchange::queued(proxy.limits(), head.body == http1::Framing::None)
            };
            let next = proxy
                .run(&ex, &mut client, &head, Instant::now(), false)
                .await;
            (ex.phase(), next)
        });
        (client_end, task)
    }

    fn retirements(&mut self) -> usize {
        let mut n = 0;
        while let Ok(msg) = self.retired.try_recv() {
            n += usize::from(matches!(msg, LinkMsg::Retire { .. }));
        }
        n
    }
}

/// Reads until the end of a head (and returns it, with whatever followed).
async fn read_head(stream: &mut UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the end of a head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

/// Reads exactly `n` bytes.
async fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Reads to the end of the stream.
async fn read_all(stream: &mut UnixStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    buf
}

/// `f`'s output, or a failure (not a hang) if it takes over 10 s.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("nothing within 10 s")
}

/// Whether `listener` gets a connection within `wait`.
async fn connected(listener: &UnixListener, wait: Duration) -> bool {
    tokio::time::timeout(wait, listener.accept()).await.is_ok()
}

fn status(response: &[u8]) -> &str {
    std::str::from_utf8(&response[9..12.min(response.len())]).unwrap_or("???")
}

#[tokio::test]
async fn a_half_closed_client_gets_its_answer() {
    let mut rig = Rig::new(Settings::default());
    let app = rig.app(0);
    let (mut client, task) = rig.start(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    client.shutdown().await.unwrap(); // SHUT_WR: nothing more comes
    let (mut conn, _) = app.accept().await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with(b"GET /a HTTP/1.1\r\n"));
    conn.write_all(OK).await.unwrap();
    let (phase, _) = task.await.unwrap();
    let response = read_all(&mut client).await;
    assert_eq!(
        status(&response),
        "200",
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(response.ends_with(b"hi"));
    assert_eq!(phase, Phase::Done(End::Freed));
    assert_eq!(rig.retirements(), 0);
    assert_eq!(
        rig.proxy.balancer.stats().idle,
        1,
        "the worker is free again"
    );
}

#[tokio::test]
async fn a_request_the_app_has_read_is_never_sent_again() {
    let mut rig = Rig::new(Settings {
        workers: 2,
        ..Settings::default()
    });
    let (first, second) = (rig.app(1), rig.app(0)); // the LIFO stack: 1 first
    let (mut client, task) = rig.start(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn, _) = first.accept().await.unwrap();
    read_head(&mut conn).await;
    drop(conn); // the app read the request and died without an answer
    let response = read_all(&mut client).await;
    let (phase, next) = task.await.unwrap();
    assert_eq!(status(&response), "502");
    assert_eq!(phase, Phase::Done(End::Abandoned));
    assert_eq!(
        next,
        Next::KeepAlive,
        "a bodiless request's connection goes on"
    );
    assert!(
        !connected(&second, Duration::from_millis(300)).await,
        "the request went to a second app"
    );
    assert_eq!(rig.retirements(), 1, "the app that may be busy is replaced");
}

#[tokio::test]
async fn a_busy_app_passes_a_whole_request_on() {
    let mut rig = Rig::new(Settings {
        workers: 2,
        ..Settings::default()
    });
    let (first, second) = (rig.app(1), rig.app(0));
    // A held body: the LB has all of it, so it can go again.
    let (mut client, task) = rig
        .start(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let (mut conn, _) = first.accept().await.unwrap();
    read_head(&mut conn).await;
    conn.write_all(BUSY).await.unwrap();
    let (mut conn2, _) = second.accept().await.unwrap();
    let got = read_head(&mut conn2).await;
    let got = if got.ends_with(b"hello") {
        got
    } else {
        [got, read_n(&mut conn2, 5).await].concat()
    };
    assert!(got.starts_with(b"POST /up HTTP/1.1\r\n") && got.ends_with(b"\r\n\r\nhello"));
    conn2.write_all(OK).await.unwrap();
    let (phase, _) = task.await.unwrap();
    let mut response = vec![0u8; OK.len() + 200];
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "200");
    assert_eq!(phase, Phase::Done(End::Freed));
    assert_eq!(rig.retirements(), 0, "a busy app is not replaced");
}

#[tokio::test]
async fn a_streamed_body_answered_busy_is_not_sent_again() {
    let mut rig = Rig::new(Settings {
        workers: 2,
        request_buffering: false,
        ..Settings::default()
    });
    let (first, second) = (rig.app(1), rig.app(0));
    // Half the body: the rest is still with the client, so the LB could
    // not send it whole to another app.
    let (mut client, task) = rig
        .start(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await;
    let (mut conn, _) = first.accept().await.unwrap();
    read_head(&mut conn).await;
    conn.write_all(BUSY).await.unwrap();
    let response = read_all(&mut client).await;
    let (phase, next) = task.await.unwrap();
    assert_eq!(status(&response), "503");
    assert_eq!((phase, next), (Phase::Done(End::Answered), Next::Close));
    assert!(!connected(&second, Duration::from_millis(300)).await);
    assert_eq!(rig.retirements(), 0);
}

#[tokio::test]
async fn the_read_timeout_starts_when_the_request_is_out() {
    let mut rig = Rig::new(Settings {
        request_buffering: false,
        read_timeout: Duration::from_millis(800),
        ..Settings::default()
    });
    let app = rig.app(0);
    let (mut client, task) = rig
        .start(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        .await;
    let (mut conn, _) = app.accept().await.unwrap();
    let mut got = read_head(&mut conn).await;
    // An upload that takes twice the read timeout is not a slow app.
    let started = Instant::now();
    for byte in b"abcdef" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(&[*byte]).await.unwrap();
    }
    while !got.ends_with(b"abcdef") {
        got.extend(read_n(&mut conn, 1).await);
    }
    assert!(started.elapsed() > Duration::from_millis(1600));
    conn.write_all(OK).await.unwrap();
    let mut response = vec![0u8; 200];
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "200");
    let (phase, _) = task.await.unwrap();
    assert_eq!(phase, Phase::Done(End::Freed));
}

#[tokio::test]
async fn no_head_by_the_read_deadline_retires_the_worker() {
    let mut rig = Rig::new(Settings {
        read_timeout: Duration::from_millis(300),
        ..Settings::default()
    });
    let app = rig.app(0);
    let (mut client, task) = rig.start(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    let mut response = vec![0u8; 200];
    let n = within(client.read(&mut response)).await.unwrap();
    assert_eq!(status(&response[..n]), "504");
    let (phase, _) = task.await.unwrap();
    assert_eq!(phase, Phase::Done(End::Abandoned));
    assert_eq!(rig.retirements(), 1);
    drop(conn);
}

#[tokio::test]
async fn a_client_gone_mid_response_frees_the_worker() {
    let mut rig = Rig::new(Settings::default());
    let app = rig.app(0);
    let (mut client, task) = rig.start(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    let size = 8 << 20;
    conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let piece = vec![b'x'; 64 * 1024];
    conn.write_all(&piece).await.unwrap();
    // The client takes a little and leaves.
    let mut some = [0u8; 1024];
    let _ = client.read(&mut some).await.unwrap();
    drop(client);
    // The app writes the rest at its own pace, and is not cut off.
    for _ in 1..size / piece.len() {
        conn.write_all(&piece).await.unwrap();
    }
    let (phase, next) = task.await.unwrap();
    assert_eq!((phase, next), (Phase::Done(End::Freed), Next::Close));
    assert_eq!(rig.retirements(), 0, "an app that finished is not replaced");
    assert_eq!(rig.proxy.balancer.stats().idle, 1);
}

#[tokio::test]
async fn an_early_answer_is_relayed_and_the_connection_not_reused() {
    let mut rig = Rig::new(Settings {
        request_buffering: false,
        ..Settings::default()
    });
    let app = rig.app(0);
    let (mut client, task) = rig
        .start(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        .await;
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    // The app refuses the upload without reading it.
    conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 200];
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "413");
    let (phase, next) = task.await.unwrap();
    assert_eq!((phase, next), (Phase::Done(End::Freed), Next::Close));
    // The body was cut short: the connection is not parked for the next
    // request, which reaches the app on a new one.
    let (mut client, task) = rig.start(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn2, _) = app.accept().await.unwrap();
    assert!(read_head(&mut conn2).await.starts_with(b"GET /next "));
    conn2.write_all(OK).await.unwrap();
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "200");
    assert_eq!(task.await.unwrap().0, Phase::Done(End::Freed));
    drop(conn);
}

#[tokio::test]
async fn a_parked_connection_closed_by_its_app_is_replaced_not_counted() {
    let mut rig = Rig::new(Settings {
        workers: 2,
        ..Settings::default()
    });
    let (app, other) = (rig.app(1), rig.app(0));
    let (mut client, task) = rig.start(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    conn.write_all(OK).await.unwrap();
    let mut response = vec![0u8; 200];
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "200");
    assert_eq!(task.await.unwrap().0, Phase::Done(End::Freed));
    // The app closes its idle kept-alive connection.
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut client, task) = rig.start(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (mut conn, _) = app.accept().await.unwrap();
    assert!(read_head(&mut conn).await.starts_with(b"GET /2 "));
    conn.write_all(OK).await.unwrap();
    let n = client.read(&mut response).await.unwrap();
    assert_eq!(status(&response[..n]), "200");
    assert_eq!(task.await.unwrap().0, Phase::Done(End::Freed));
    assert_eq!(rig.retirements(), 0);
    assert!(!connected(&other, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn a_streamed_body_that_stops_is_cut_off() {
    let mut rig = Rig::new(Settings {
        request_buffering: false,
        body_timeout: Duration::from_millis(300),
        ..Settings::default()
    });
    let app = rig.app(0);
    let (mut client, task) = rig
        .start(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await;
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    // The other half never comes.
    let mut response = vec![0u8; 200];
    let n = within(client.read(&mut response)).await.unwrap();
    assert_eq!(status(&response[..n]), "408");
    let (phase, next) = task.await.unwrap();
    // The app has half a body: it may still be busy with it.
    assert_eq!((phase, next), (Phase::Done(End::Abandoned), Next::Close));
    assert_eq!(rig.retirements(), 1);
}

#[tokio::test]
async fn an_app_that_stops_reading_its_body_still_has_a_deadline() {
    let mut rig = Rig::new(Settings {
        request_buffering: false,
        read_timeout: Duration::from_millis(300),
        ..Settings::default()
    });
    let app = rig.app(0);
    let size = 16 << 20;
    let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let (client, task) = rig.start(head.as_bytes()).await;
    let (mut reader, mut writer) = client.into_split();
    let upload = tokio::spawn(async move {
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..size / piece.len() {
            if writer.write_all(&piece).await.is_err() {
                break;
            }
        }
    });
    let (mut conn, _) = app.accept().await.unwrap();
    read_head(&mut conn).await;
    // The app reads no more and never answers.
    let mut response = vec![0u8; 200];
    let n = within(reader.read(&mut response)).await.unwrap();
    assert_eq!(status(&response[..n]), "504");
    let (phase, _) = task.await.unwrap();
    assert_eq!(phase, Phase::Done(End::Abandoned));
    assert_eq!(rig.retirements(), 1);
    upload.abort();
    drop(conn);
}
