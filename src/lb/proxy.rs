//! One request through the LB: the I/O of an [`Exchange`]. Pick a worker,
//! forward the request over the worker's kept-alive connection, relay the
//! response, and free the worker once the app's response has been read to
//! its end (docs/DESIGN.md §5.3).
//!
//! The request body streams to the worker while the response streams back,
//! in one task, each through a bounded buffer. What may follow what — a
//! retry, a release, a retirement — is the exchange's to decide
//! (`lb::exchange`): this file reports what the sockets did.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::access_log::{AccessLog, Entry};
use super::backlog::Backlog;
use super::balancer::{Balancer, Reject};
use super::body::{BodyError, Output, Relayer, RequestBody};
use super::conn::Conn;
use super::exchange::{Exchange, Limits, Phase, Then};
use super::forwarded::RequestId;
use super::http1::{self, DateCache, Framing, Own, Parsed, RequestHead};
use super::io::{Socket, BODY_CHUNK, HEAD_CHUNK};
use super::metrics::{Cause, METRICS};
use super::spool::{Spool, Spools};
use super::upstream::Upstream;

/// Read size while a body is read to be held: small, as a thousand
/// clients may be sending at once.
const HOLD_CHUNK: usize = 16 * 1024;
/// Buffers grown past this for a large body are shrunk back after it.
pub const KEEP_CAPACITY: usize = 16 * 1024;
/// The most of a response's end that is copied aside, to be sent after the
/// worker is released: more would make every client connection's buffer
/// grow to the size of a body chunk (and the heap fragment with them).
const MAX_TAIL: usize = 8 * 1024;

/// The most of a response read and dropped after its client has gone.
const MAX_DRAIN: u64 = 64 * 1024 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the request path needs from the LB.
pub struct Proxy {
    pub balancer: Arc<Balancer>,
    pub log: AccessLog,
    pub read_timeout: Duration,
    /// The largest request body accepted (`413` beyond).
    pub max_body: u64,
    /// Workers tried for one request before giving up with 503.
    pub max_attempts: usize,
    /// Where request bodies wait for a worker, and responses for their
    /// clients.
    pub spools: Spools,
    /// Request bodies are read whole before a worker takes them (else they
    /// stream to the worker as they come).
    pub request_buffering: bool,
    /// Responses are read as fast as the app writes them (else at the
    /// client's pace).
    pub response_buffering: bool,
    /// The longest pause in a request body being held.
    pub body_timeout: Duration,
    /// The least a held body must average (bytes a second) once it has
    /// taken longer than `body_timeout`; 0: no minimum.
    pub min_body_rate: u64,
    /// The longest pause in an app's response body.
    pub app_idle_timeout: Duration,
    /// The longest a write to a client may wait.
    pub send_timeout: Duration,
    /// WebSocket tunnels open, against their cap.
    pub tunnels: Tunnels,
    /// The app cannot start (the manager says so).
    pub failing: Failing,
}

/// Whether the app is failing to start, and why: while it is and no worker
/// can serve, a request is answered `503` at once instead of waiting out
/// the queue timeout.
#[derive(Debug, Default)]
pub struct Failing {
    set: std::sync::atomic::AtomicBool,
    error: std::sync::Mutex<String>,
}

impl Failing {
    pub fn set(&self, error: Option<String>) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        *slot = error.clone().unwrap_or_default();
        self.set.store(error.is_some(), Ordering::Release);
    }

    /// The app's error, while it is failing.
    pub fn error(&self) -> Option<String> {
        self.set
            .load(Ordering::Acquire)
            .then(|| self.error.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }
}

/// Counts WebSocket tunnels: each holds a worker for its whole life, so
/// there may be at most `max` (by default one fewer than the workers, so
/// that plain requests always have one).
#[derive(Debug, Default)]
pub struct Tunnels {
    open: std::sync::atomic::AtomicUsize,
    pub max: usize,
}

/// One tunnel's place, given back when dropped.
struct TunnelSlot<'a>(&'a Tunnels);

impl Tunnels {
    pub fn new(max: usize) -> Tunnels {
        Tunnels {
            open: Default::default(),
            max,
        }
    }

    fn reserve(&self) -> Option<TunnelSlot<'_>> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| TunnelSlot(self))
    }
}

impl Drop for TunnelSlot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection's state, kept between its requests.
pub struct Client {
    pub socket: Conn,
    pub peer: Option<IpAddr>,
    /// What its HTTPS answers carry as `Strict-Transport-Security`.
    pub hsts: Hsts,
    /// Bytes read from the client; the current request's body (after its
    /// head has been parsed and dropped) comes first.
    pub buf: Vec<u8>,
    /// The current request's head as the worker gets it.
    pub req_head: Vec<u8>,
    /// The head of the response as the client gets it.
    pub resp_head: Vec<u8>,
    pub date: DateCache,
    /// The current request's path, for the access log.
    pub path: String,
    /// The start of the request body as it goes to the worker.
    pub out: Output,
    /// The local address the client reached, as a `Host` value.
    pub host: String,
    /// The port the client connected to.
    pub port: Option<u16>,
    /// The peer is a trusted proxy (`--trusted-proxies`).
    pub trusted: bool,
    /// The current request's id.
    pub request_id: RequestId,
    /// How long the current request waited for a worker.
    pub queued: Duration,
    /// The client has closed its end (it sends nothing more).
    pub eof: bool,
    /// What the client has not taken yet of a response.
    pub backlog: Backlog,
    /// The connection's byte counts at the last access log line.
    logged: std::cell::Cell<(u64, u64)>,
}

impl Client {
    pub fn new(socket: Conn, peer: Option<IpAddr>, host: String, spools: Spools) -> Client {
        Client {
            hsts: Hsts::default(),
            socket,
            peer,
            port: None,
            trusted: false,
            // Each request gets its own (`client::read_head`).
            request_id: RequestId::default(),
            queued: Duration::ZERO,
            buf: Vec::with_capacity(HEAD_CHUNK),
            req_head: Vec::new(),
            resp_head: Vec::new(),
            date: DateCache::default(),
            path: String::new(),
            out: Output::default(),
            host,
            eof: false,
            backlog: Backlog::new(spools),
            logged: std::cell::Cell::new((0, 0)),
        }
    }

    /// What went in and out of the connection since the last request's
    /// line, now added to the metrics' totals.
    fn bytes_since_logged(&self) -> (u64, u64) {
        let counted = self.socket.counted();
        let logged = self.logged.replace(counted);
        let (bytes_in, bytes_out) = (counted.0 - logged.0, counted.1 - logged.1);
        METRICS.bytes(bytes_in, bytes_out);
        (bytes_in, bytes_out)
    }

    /// The client came over TLS.
    pub fn https(&self) -> bool {
        self.socket.is_tls()
    }

    /// Sends a complete answer of the LB's own, logged like any other.
    pub async fn answer(
        &mut self,
        log: &AccessLog,
        head: Option<&RequestHead>,
        own: Own<'_>,
        received: Instant,
    ) -> bool {
        let own = if own.extra.is_empty() {
            Own {
                extra: self.hsts.line,
                ..own
            }
        } else {
            own
        };
        let date = self.date.now();
        http1::own_response(&own, date, self.request_id.as_bytes(), &mut self.resp_head);
        let bytes = if head.is_some_and(|h| h.method == hyper::Method::HEAD) {
            &self.resp_head[..self.resp_head.len() - own.body.len()]
        } else {
            &self.resp_head[..]
        };
        let sent = self.socket.write_all(&[bytes]).await.is_ok();
        let method = head.map(|h| h.method.clone()).unwrap_or(hyper::Method::GET);
        let path = if head.is_some() { &self.path } else { "-" };
        self.log(
            log,
            &method,
            path,
            own.status,
            Some(own.content_type),
            own.body.len() as u64,
            received,
            Answerer::Lb(Cause::of(&own)),
        );
        sent
    }

    /// The access log line of the current request, and its metrics.
    #[allow(clippy::too_many_arguments)] // the columns of a line
    pub fn log(
        &self,
        log: &AccessLog,
        method: &hyper::Method,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        length: u64,
        received: Instant,
        answerer: Answerer,
    ) {
        let (cause, worker, worker_id) = match answerer {
            Answerer::Lb(cause) => (Some(cause), Duration::ZERO, None),
            Answerer::App(took, id) => (None, took, id),
        };
        METRICS.answered(status, cause, self.queued, worker);
        let (bytes_in, bytes_out) = self.bytes_since_logged();
        log.log(&Entry {
            client: self.peer,
            worker_id,
            bytes_in,
            bytes_out,
            method,
            path,
            status,
            content_type,
            length,
            total: received.elapsed(),
            queued: self.queued,
            worker,
            request_id: self.request_id.as_str(),
        });
    }

    /// Sends an answer of the LB's own, closing the connection as well if
    /// `close` (or the answer) says so; whether the connection goes on.
    pub async fn reply(
        &mut self,
        log: &AccessLog,
        head: &RequestHead,
        own: Own<'_>,
        close: bool,
        received: Instant,
    ) -> Next {
        let own = Own {
            close: own.close || close,
            ..own
        };
        let close = own.close;
        if self.answer(log, Some(head), own, received).await && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Gives back memory a large body made the buffers grow to.
    pub fn shrink(&mut self) {
        for buf in [&mut self.buf, &mut self.resp_head, &mut self.req_head] {
            if buf.capacity() > KEEP_CAPACITY {
                buf.shrink_to(HEAD_CHUNK.max(buf.len()));
            }
        }
        self.backlog.shrink(KEEP_CAPACITY);
    }
}

impl Drop for Client {
    /// What the connection carried past its last line still counts.
    fn drop(&mut self) {
        self.bytes_since_logged();
    }
}

/// `Strict-Transport-Security` as the LB sends it on HTTPS answers
/// (`--hsts`): the value and the whole header line; empty when off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hsts {
    pub value: &'static [u8],
    pub line: &'static [u8],
}

impl Hsts {
    /// Made once per LB: the strings live as long as it does.
    pub fn new(max_age: u64) -> Hsts {
        let value: &'static str = Box::leak(format!("max-age={max_age}").into_boxed_str());
        let line: &'static str =
            Box::leak(format!("strict-transport-security: {value}\r\n").into_boxed_str());
        Hsts {
            value: value.as_bytes(),
            line: line.as_bytes(),
        }
    }
}

/// Whether the client connection goes on after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    /// Kept alive, but refused for a full queue (`503`, `Retry-After: 1`):
    /// not read again before that second (`client::serve`), so that
    /// refusing a client that resends at once is not a loop that starves
    /// the queue's service.
    Shed,
    Close,
}

/// Why the request body stopped.
enum PumpError {
    ClientGone,
    /// The client paused longer than the body timeout.
    ClientSlow,
    Body(BodyError),
    WorkerGone,
}

/// What came back from the worker.
enum Answer {
    /// The app did not take the request (`Rip-Worker-Busy`).
    Busy,
    /// No usable response head: `502`.
    Lost(String),
    /// No response head in time: `504`.
    Timeout,
    /// The response went (or went as far as it could) to the client.
    Relayed(Relayed),
    /// The app switched to WebSocket: its `101` head (of this many bytes
    /// of the worker's buffer) is in the client's `resp_head`.
    Tunnel(usize),
}

struct Relayed {
    status: u16,
    worker: Duration,
    bytes: u64,
    /// The worker's response was read to its end: the app is free.
    upstream_done: bool,
    /// The worker's connection may take another request.
    reusable: bool,
    /// Everything was written to the client.
    client_ok: bool,
    /// The client connection closes after this response.
    close: bool,
    /// The app asked to be replaced (`Rip-Worker-Recycle`).
    recycle: bool,
    /// The end of the response is in the client's `resp_head`, to be sent
    /// once the worker has been freed.
    tail: bool,
    content_type: Option<String>,
}

impl Proxy {
    /// The deadlines and tries an exchange gets.
    pub(super) fn limits(&self) -> Limits {
        Limits {
            queue: self.balancer.queue_timeout(),
            read: self.read_timeout,
            drain: self.read_timeout,
            attempts: self.max_attempts,
        }
    }

    /// Forwards a request whose head has been parsed (and removed from
    /// `client.buf`) and answers the client. Afterwards `client.buf` holds
    /// only what followed the request.
    pub async fn exchange(
        &self,
        client: &mut Client,
        head: &RequestHead,
        received: Instant,
        closing: bool,
    ) -> Next {
        let bodiless = RequestBody::new(head.body, self.max_body).is_done();
        let ex = if self.request_buffering && !bodiless {
            Exchange::reading(self.limits())
        } else {
            Exchange::queued(self.limits(), bodiless)
        };
        self.run(&ex, client, head, received, closing).await
    }

    /// Drives `ex` from its first phase to its end.
    pub(super) async fn run(
        &self,
        ex: &Exchange<Upstream>,
        client: &mut Client,
        head: &RequestHead,
        received: Instant,
        closing: bool,
    ) -> Next {
        let mut body = RequestBody::new(head.body, self.max_body);
        let close = closing || !head.keep_alive;
        if let Framing::Length(n) = head.body {
            if n > self.max_body {
                // Refused before any app sees a byte of it.
                let _ = ex.answered();
                let own = BodyError::TooLarge.answer();
                client.answer(&self.log, Some(head), own, received).await;
                return Next::Close;
            }
        }
        // The whole body is read before a worker is taken: a slow upload
        // costs the LB memory or disk, never a worker.
        let mut spool = None;
        if ex.phase() == Phase::Reading {
            match self.hold_body(client, head, &mut body, &self.spools).await {
                Ok(held) => {
                    spool = Some(held);
                    let _ = ex.held();
                }
                Err(Hold::ClientGone) => {
                    let _ = ex.left();
                    return Next::Close;
                }
                Err(Hold::Refused(own)) => {
                    let _ = ex.answered();
                    return client.reply(&self.log, head, own, true, received).await;
                }
            }
        }
        let _tunnel = if head.websocket {
            match self.tunnels.reserve() {
                Some(slot) => Some(slot),
                None => {
                    let _ = ex.answered();
                    return client
                        .reply(&self.log, head, busy(true), true, received)
                        .await;
                }
            }
        } else {
            None
        };
        // Whether the connection holds a body not yet read (then it cannot
        // go on after an answer of the LB's own).
        let has_body = !body.is_done();
        if self.failing.is_set() && self.balancer.stats().workers == 0 {
            // Nothing will serve it in the queue time: say so now.
            let _ = ex.answered();
            let own = Own {
                retry_after: true,
                ..Own::text(503, "Service Unavailable", "App not ready", false)
            };
            return client
                .reply(&self.log, head, own, close || has_body, received)
                .await;
        }
        // A client that closes its end once its request is all here may be
        // waiting for the answer (a half-close): it is served. One whose
        // body is still to come cannot finish it: it leaves the queue.
        let complete = match head.body {
            _ if body.is_done() => true,
            Framing::Length(n) => client.buf.len() as u64 >= n,
            _ => false,
        };
        let queued = Instant::now();
        let mut first_lease = true;
        while let Some(deadline) = ex.queue_deadline() {
            let acquired = tokio::select! {
                acquired = self.balancer.acquire_until(deadline) => acquired,
                _ = client.socket.closed(), if !complete => {
                    let _ = ex.left();
                    return Next::Close;
                }
            };
            let lease = match acquired {
                Ok(lease) => lease,
                Err(reject) => {
                    let _ = ex.answered();
                    let own = match reject {
                        Reject::QueueFull => busy(false),
                        Reject::QueueTimeout => {
                            Own::text(504, "Gateway Timeout", "Queue timeout", false)
                        }
                    };
                    // An unread body cannot be skipped: the connection ends.
                    let next = client
                        .reply(&self.log, head, own, close || has_body, received)
                        .await;
                    return match (reject, next) {
                        (Reject::QueueFull, Next::KeepAlive) => Next::Shed,
                        _ => next,
                    };
                }
            };
            if std::mem::take(&mut first_lease) {
                client.queued = queued.elapsed();
            }
            if ex.leased(lease).is_err() {
                break;
            }
            let attempt = self
                .attempt(
                    ex,
                    client,
                    head,
                    body.clone(),
                    spool.as_mut(),
                    received,
                    close,
                )
                .await;
            match attempt {
                Attempt::Done(next) => return next,
                Attempt::Retry => {}
                Attempt::Answer(own) => {
                    return client.reply(&self.log, head, own, close, received).await;
                }
            }
        }
        client
            .reply(&self.log, head, busy(false), close || has_body, received)
            .await
    }

    /// One try with the worker `ex` holds.
    #[allow(clippy::too_many_arguments)] // the pieces of one exchange
    async fn attempt(
        &self,
        ex: &Exchange<Upstream>,
        client: &mut Client,
        head: &RequestHead,
        mut body: RequestBody,
        spool: Option<&mut Spool>,
        received: Instant,
        close: bool,
    ) -> Attempt {
        // Whether the LB has all of the request, and could send it again.
        let whole = body.is_done() || spool.is_some();
        // The head goes out with whatever of the body is already here (or
        // held in memory).
        client.out.clear();
        let held: &[u8] = spool.as_ref().map_or(&[], |s| s.memory());
        let initial = match body.take(&client.buf, &mut client.out) {
            Ok(n) => n,
            Err(refused) => {
                let _ = ex.nothing_sent();
                return Attempt::Answer(refused.answer());
            }
        };
        let written = self
            .send_head(
                ex,
                &client.req_head,
                &client.out,
                &client.buf[..initial],
                held,
            )
            .await;
        let mut upstream = match written {
            Ok(upstream) => upstream,
            Err(why) => {
                let ours = is_our_shortage(&why);
                if let Some((id, socket)) = ex.worker() {
                    if ours {
                        warn!("cannot reach worker {id}: {why}");
                    } else {
                        warn!("worker {id} unreachable at {}: {why}", socket.display());
                    }
                }
                return match ex.unreachable(ours) {
                    Ok(Then::Retry) => Attempt::Retry,
                    Ok(Then::Refuse) => Attempt::Answer(busy(!body.is_done())),
                    Ok(Then::Lost) | Err(_) => Attempt::Answer(bad_gateway(true)),
                };
            }
        };
        client.buf.drain(..initial);
        let log = self.log.enabled();
        let head_request = head.method == hyper::Method::HEAD;

        let Client {
            socket: client_socket,
            buf: client_buf,
            resp_head,
            date,
            backlog,
            ..
        } = client;
        let Upstream {
            socket: upstream_socket,
            buf: upstream_buf,
            body_buf,
            body_out,
            out: upstream_out,
        } = &mut upstream;
        // What of a held body is in its file still has to be sent.
        let spooled = spool.filter(|s| s.has_file());
        if body.is_done() && spooled.is_none() {
            let _ = ex.request_out();
        }
        let respond = respond(
            ex,
            &*client_socket,
            resp_head,
            date,
            &*upstream_socket,
            upstream_buf,
            upstream_out,
            backlog,
            Shape {
                head_request,
                http10: head.http10,
                close,
                log,
                app_idle: self.app_idle_timeout,
                send_timeout: self.send_timeout,
                buffering: self.response_buffering,
                websocket: head.websocket,
                request_id: client.request_id,
                hsts: client.hsts.value,
            },
        );
        let worker_id = ex.worker().map(|(id, _)| id);
        let answer = if ex.phase() == Phase::AwaitingHead {
            // The client may close its end now (a half-close) and still
            // read the answer; one that has gone is found out when the
            // answer is written, and the app's response is then read to its
            // end (`respond`), so that the worker is freed, not retired.
            respond.await
        } else {
            if head.expect_continue
                && spooled.is_none()
                && client_socket.write_all(&[CONTINUE]).await.is_err()
            {
                let _ = ex.abandon();
                return Attempt::Done(Next::Close);
            }
            let pump = async {
                match spooled {
                    Some(spool) => {
                        send_held(spool, body_buf, &*upstream_socket, self.read_timeout).await
                    }
                    None => {
                        pump(
                            &*client_socket,
                            client_buf,
                            body_buf,
                            body_out,
                            &mut body,
                            &*upstream_socket,
                            Paces {
                                client: self.body_timeout,
                                app: self.read_timeout,
                            },
                        )
                        .await
                    }
                }
            };
            tokio::pin!(pump, respond);
            let mut pumped = false;
            loop {
                tokio::select! {
                    result = &mut pump, if !pumped => match result {
                        // The app stopped reading (`WorkerGone`); its answer
                        // may still come.
                        Ok(()) | Err(PumpError::WorkerGone) => {
                            pumped = true;
                            let _ = ex.request_out();
                        }
                        Err(PumpError::ClientGone) => {
                            let _ = ex.abandon();
                            return Attempt::Done(Next::Close);
                        }
                        Err(PumpError::ClientSlow) => {
                            let begun = ex.has_begun();
                            let _ = ex.abandon();
                            if begun {
                                return Attempt::Done(Next::Close);
                            }
                            return Attempt::Answer(request_timeout());
                        }
                        // The app has seen part of the body: abandoned.
                        Err(PumpError::Body(refused)) => {
                            let begun = ex.has_begun();
                            let _ = ex.abandon();
                            if begun {
                                return Attempt::Done(Next::Close);
                            }
                            return Attempt::Answer(refused.answer());
                        }
                    },
                    answer = &mut respond => break answer,
                }
            }
        };
        match answer {
            Answer::Busy => match ex.busy() {
                Ok(Then::Retry) => Attempt::Retry,
                _ => Attempt::Answer(busy(!whole)),
            },
            Answer::Tunnel(len) => {
                let _ = ex.tunnel();
                // The head goes to the client with whatever of the stream
                // came along, and what the client sent past its request to
                // the app; then bytes flow both ways until either side
                // closes. The worker is busy all along: its app holds the
                // connection.
                let started = Instant::now();
                let Upstream {
                    socket: upstream_socket,
                    buf: upstream_buf,
                    body_buf,
                    ..
                } = &mut upstream;
                let early = upstream_buf.split_off(len);
                upstream_buf.clear();
                let sent = client
                    .socket
                    .write_all(&[&client.resp_head, &early])
                    .await
                    .is_ok()
                    && upstream_socket.write_all(&[&client.buf]).await.is_ok();
                client.buf.clear();
                let mut bytes = early.len() as u64;
                if sent {
                    bytes += tunnel(&client.socket, upstream_socket, body_buf, upstream_buf).await;
                }
                let _ = ex.tunnel_closed();
                client.log(
                    &self.log,
                    &head.method,
                    &client.path,
                    101,
                    None,
                    bytes,
                    received,
                    Answerer::App(started.elapsed(), worker_id),
                );
                Attempt::Done(Next::Close)
            }
            Answer::Timeout => {
                let _ = ex.abandon();
                Attempt::Answer(Own::text(
                    504,
                    "Gateway Timeout",
                    "Upstream timeout",
                    !body.is_done(),
                ))
            }
            Answer::Lost(why) => {
                if let Some((id, _)) = ex.worker() {
                    warn!("worker {id} lost mid-request: {why}");
                }
                let _ = ex.abandon();
                Attempt::Answer(bad_gateway(!body.is_done()))
            }
            Answer::Relayed(relayed) => {
                let Relayed {
                    status,
                    worker,
                    bytes,
                    upstream_done,
                    reusable,
                    client_ok,
                    close: closed,
                    recycle,
                    tail,
                    content_type,
                } = relayed;
                if recycle {
                    ex.recycle();
                }
                let mut handed_over = false;
                if upstream_done {
                    // The worker's buffers stay as large as its bodies made
                    // them: there is one set per worker, not per client.
                    let keep = reusable && body.is_done() && upstream.buf.is_empty();
                    handed_over = ex.finished(keep.then_some(upstream)).unwrap_or(false);
                } else {
                    let _ = ex.abandon(); // cut short mid-body
                }
                let mut client_ok = client_ok;
                if client_ok && !client.backlog.is_empty() {
                    // The worker is free: what the client has not taken
                    // yet goes on at its pace.
                    client_ok = flush(&client.socket, &mut client.backlog, self.send_timeout).await;
                }
                client.backlog.clear();
                if tail {
                    if handed_over {
                        // Let the request that was waiting for this worker
                        // go first: the app works while we write.
                        tokio::task::yield_now().await;
                    }
                    let tail = [&client.resp_head[..]];
                    client_ok &= sent(self.send_timeout, client.socket.write_all(&tail)).await;
                }
                client.log(
                    &self.log,
                    &head.method,
                    &client.path,
                    status,
                    content_type.as_deref(),
                    bytes,
                    received,
                    Answerer::App(worker, worker_id),
                );
                let next = if client_ok && !closed && body.is_done() {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
                Attempt::Done(next)
            }
        }
    }

    /// Writes the request head (and the first of the body) on the worker's
    /// connection: the parked one if it is still good, else a new one. A
    /// parked connection found closed before it took a byte is replaced
    /// once. Every write reports to `ex` whether the app's socket took
    /// bytes: from then on the request cannot go to another worker.
    async fn send_head(
        &self,
        ex: &Exchange<Upstream>,
        req_head: &[u8],
        body: &Output,
        input: &[u8],
        held: &[u8],
    ) -> std::io::Result<Upstream> {
        let parts = || {
            std::iter::once(req_head)
                .chain(body.parts(input))
                .chain(std::iter::once(held))
        };
        let parked = ex.take_conn().filter(|u| !u.socket.stale());
        if let Some(upstream) = parked {
            match send_reported(ex, &upstream.socket, parts()).await {
                Ok(()) => return Ok(upstream),
                // The app may have read some of it: it cannot go again.
                Err(e) if ex.has_seen() => return Err(e),
                Err(_) => {}
            }
        }
        let (_, path) = ex.worker().ok_or(std::io::ErrorKind::NotConnected)?;
        let upstream = Upstream::connect(&path)?;
        send_reported(ex, &upstream.socket, parts()).await?;
        Ok(upstream)
    }
}

/// Writes `parts` to the app, and tells `ex` whether its socket took any.
async fn send_reported<'a>(
    ex: &Exchange<Upstream>,
    socket: &Socket,
    parts: impl Iterator<Item = &'a [u8]>,
) -> std::io::Result<()> {
    let mut accepted = 0;
    let result = socket.send_parts(parts, &mut accepted).await;
    let _ = ex.sent(accepted > 0);
    result
}

/// Who answered a request, for its log line and metrics.
#[derive(Debug, Clone, Copy)]
pub enum Answerer {
    /// The LB itself, for this cause.
    Lb(Cause),
    /// The app of this worker, its response head this long after the
    /// request went out.
    App(Duration, Option<u32>),
}

/// `503 Server busy`, with `Retry-After`.
pub(super) fn busy(close: bool) -> Own<'static> {
    Own {
        retry_after: true,
        ..Own::text(503, "Service Unavailable", "Server busy", close)
    }
}

pub(super) fn request_timeout() -> Own<'static> {
    Own::text(408, "Request Timeout", "Request Timeout", true)
}

pub(super) fn bad_gateway(close: bool) -> Own<'static> {
    Own::text(502, "Bad Gateway", "Bad Gateway", close)
}

/// Why a request body could not be held.
enum Hold {
    ClientGone,
    /// Answered with this, and the connection closed.
    Refused(Own<'static>),
}

impl Proxy {
    /// Reads the rest of a request body into a [`Spool`] (re-encoded as
    /// the worker gets it). What the client sent past the body stays in
    /// `client.buf`.
    async fn hold_body(
        &self,
        client: &mut Client,
        head: &RequestHead,
        body: &mut RequestBody,
        spools: &Spools,
    ) -> Result<Spool, Hold> {
        let started = Instant::now();
        let mut received = client.buf.len() as u64;
        let mut spool = spools.spool(match head.body {
            Framing::Length(n) => Some(n),
            _ => None,
        });
        if head.expect_continue
            && client.buf.is_empty()
            && client.socket.write_all(&[CONTINUE]).await.is_err()
        {
            return Err(Hold::ClientGone);
        }
        loop {
            if !client.buf.is_empty() {
                client.out.clear();
                let n = body
                    .take(&client.buf, &mut client.out)
                    .map_err(|refused| Hold::Refused(refused.answer()))?;
                for part in client.out.parts(&client.buf[..n]) {
                    if let Err(e) = spool.write(part) {
                        warn!("cannot hold a request body: {e}");
                        return Err(Hold::Refused(Own {
                            retry_after: true,
                            ..Own::text(503, "Service Unavailable", "Server busy", true)
                        }));
                    }
                }
                client.buf.drain(..n);
                if body.is_done() {
                    // While it waits for a worker, the connection holds its
                    // body once, not twice.
                    if client.buf.capacity() > KEEP_CAPACITY {
                        client.buf.shrink_to(HEAD_CHUNK.max(client.buf.len()));
                    }
                    return Ok(spool);
                }
            }
            let timed_out = || Hold::Refused(request_timeout());
            let read = client.socket.read_into(&mut client.buf, HOLD_CHUNK);
            match tokio::time::timeout(self.body_timeout, read).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Hold::ClientGone),
                Ok(Ok(n)) => received += n as u64,
            }
            // Past the first body timeout, a trickle that keeps within the
            // pause limit must still average the minimum rate.
            let elapsed = started.elapsed();
            if self.min_body_rate > 0
                && elapsed > self.body_timeout
                && (received as f64) < self.min_body_rate as f64 * elapsed.as_secs_f64()
            {
                return Err(timed_out());
            }
        }
    }
}

/// Sends the part of a held body that is in its file. An app that takes
/// none of it for `stall` counts as having stopped reading.
async fn send_held(
    spool: &mut Spool,
    buf: &mut Vec<u8>,
    upstream: &Socket,
    stall: Duration,
) -> Result<(), PumpError> {
    let mut file = spool.rewind().map_err(|_| PumpError::WorkerGone)?;
    loop {
        match file.next_piece(buf, BODY_CHUNK) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                if !sent(stall, upstream.write_all(&[buf])).await {
                    return Err(PumpError::WorkerGone);
                }
            }
            Err(e) => {
                warn!("cannot read a held request body back: {e}");
                return Err(PumpError::WorkerGone);
            }
        }
    }
}

/// Copies bytes both ways between a client and an app until either side
/// closes; returns the bytes that went from the app to the client.
async fn tunnel(client: &Conn, upstream: &Socket, up: &mut Vec<u8>, down: &mut Vec<u8>) -> u64 {
    let mut bytes = 0u64;
    let to_app = async {
        loop {
            up.clear();
            match client.read_into(up, BODY_CHUNK).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if upstream.write_all(&[up]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async {
        loop {
            down.clear();
            match upstream.read_into(down, BODY_CHUNK).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes += n as u64,
            }
            if client.write_all(&[down]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_app => {}
        _ = to_client => {}
    }
    upstream.shutdown_write();
    bytes
}

/// Out of descriptors or buffers: the LB's shortage, not the worker's.
fn is_our_shortage(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

enum Attempt {
    Done(Next),
    Retry,
    Answer(Own<'static>),
}

/// The longest pauses of a streamed body.
struct Paces {
    /// Between pieces from the client.
    client: Duration,
    /// In the app's reading: past it, the app counts as having stopped.
    app: Duration,
}

/// Streams the rest of the request body from the client to the worker,
/// through the worker's `body_buf`. What the client sent past the body (a
/// pipelined request) ends up in `client_buf`, where its next head is read.
async fn pump(
    client: &Conn,
    client_buf: &mut Vec<u8>,
    body_buf: &mut Vec<u8>,
    out: &mut Output,
    body: &mut RequestBody,
    upstream: &Socket,
    paces: Paces,
) -> Result<(), PumpError> {
    body_buf.clear();
    while !body.is_done() {
        if body_buf.is_empty() {
            let read = client.read_into(body_buf, BODY_CHUNK);
            match tokio::time::timeout(paces.client, read).await {
                Err(_) => return Err(PumpError::ClientSlow),
                Ok(Ok(0) | Err(_)) => return Err(PumpError::ClientGone),
                Ok(Ok(_)) => {}
            }
        }
        out.clear();
        let n = body.take(body_buf, out).map_err(PumpError::Body)?;
        if !sent(paces.app, upstream.write_parts(out.parts(body_buf))).await {
            return Err(PumpError::WorkerGone);
        }
        body_buf.drain(..n);
    }
    client_buf.extend_from_slice(body_buf);
    body_buf.clear();
    Ok(())
}

/// Sends `parts` to the client: at once as far as it takes them, the rest
/// into `backlog` (when `buffer`) to follow later, or — when the backlog's
/// bounds leave no room, or not buffering — at the client's pace. Whether
/// the client is still there (if not, what waited for it is dropped).
async fn deliver<'a, I>(
    client: &Conn,
    backlog: &mut Backlog,
    buffer: bool,
    shape: Shape,
    parts: I,
) -> bool
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    let there = send_or_keep(client, backlog, buffer, shape, parts).await;
    if !there {
        backlog.clear();
    }
    there
}

async fn send_or_keep<'a, I>(
    client: &Conn,
    backlog: &mut Backlog,
    buffer: bool,
    shape: Shape,
    parts: I,
) -> bool
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    if !buffer {
        return sent(shape.send_timeout, client.write_parts(parts)).await;
    }
    let mut skip = 0;
    if backlog.is_empty() {
        match client.try_write_parts(parts.clone()) {
            Ok(n) => skip = n,
            Err(_) => return false,
        }
    }
    // Where the backlog had no more room: part `i`, from byte `at`.
    let mut rest = None;
    for (i, part) in parts.clone().enumerate() {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let at = std::mem::take(&mut skip);
        match backlog.push(&part[at..]) {
            Ok(true) => {}
            Ok(false) => {
                warn_full_buffers();
                rest = Some((i, at));
                break;
            }
            Err(e) => {
                warn!("cannot keep a response for a slow client: {e}");
                rest = Some((i, at));
                break;
            }
        }
    }
    let Some((i, at)) = rest else {
        return flush_ready(client, backlog).is_ok();
    };
    // No room: what waits goes first, then the rest, at the client's pace.
    if !flush(client, backlog, shape.send_timeout).await {
        return false;
    }
    let rest: Vec<&[u8]> = parts
        .enumerate()
        .skip(i)
        .map(|(j, part)| if j == i { &part[at..] } else { part })
        .collect();
    sent(shape.send_timeout, client.write_parts(rest.into_iter())).await
}

/// Says (at most every 10 s) that responses go at their clients' pace
/// because the buffers for slow clients are full: workers are then held
/// by slow readers again.
fn warn_full_buffers() {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(
            "the buffers for slow clients are full (--buffer-memory, --buffer-disk): \
             responses go at their clients' pace and hold their workers"
        );
    }
}

/// Sends what the client takes of the backlog now, without waiting.
fn flush_ready(client: &Conn, backlog: &mut Backlog) -> std::io::Result<()> {
    loop {
        let front = backlog.front()?;
        if front.is_empty() {
            return Ok(());
        }
        let n = client.try_write_parts(std::iter::once(front))?;
        if n == 0 {
            return Ok(());
        }
        backlog.consume(n);
    }
}

/// Sends all of the backlog at the client's pace; whether it went.
async fn flush(client: &Conn, backlog: &mut Backlog, timeout: Duration) -> bool {
    loop {
        let Ok(front) = backlog.front() else {
            return false;
        };
        if front.is_empty() {
            return true;
        }
        let n = front.len();
        if !sent(timeout, client.write_all(&[front])).await {
            return false;
        }
        backlog.consume(n);
    }
}

/// Whether a write to the client went through within `timeout`.
async fn sent(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> bool {
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

/// What shapes the response the client gets.
#[derive(Clone, Copy)]
struct Shape {
    head_request: bool,
    http10: bool,
    close: bool,
    log: bool,
    /// The longest pause in the app's response body.
    app_idle: Duration,
    /// The longest a write to the client may wait.
    send_timeout: Duration,
    /// What a slow client cannot take at once may wait in its backlog.
    buffering: bool,
    /// A WebSocket handshake: a `101` opens a tunnel.
    websocket: bool,
    /// Echoed to the client unless the app sends its own.
    request_id: RequestId,
    /// `Strict-Transport-Security` unless the app sends its own.
    hsts: &'static [u8],
}

/// Reads the worker's response head (by the exchange's read deadline) and
/// relays the response to the client. If the client is gone, the rest of
/// the response is read and dropped until the drain deadline and for up to
/// [`MAX_DRAIN`] bytes, so that the app finishes and its worker can be
/// freed rather than retired.
#[allow(clippy::too_many_arguments)] // the halves of two borrowed connections
async fn respond(
    ex: &Exchange<Upstream>,
    client: &Conn,
    resp_head: &mut Vec<u8>,
    date: &mut DateCache,
    upstream: &Socket,
    buf: &mut Vec<u8>,
    out: &mut Output,
    backlog: &mut Backlog,
    shape: Shape,
) -> Answer {
    let since = Instant::now();
    buf.clear();
    let (head, relay, close) = loop {
        if shape.websocket {
            match http1::parse_switch(buf, date.now(), shape.request_id.as_bytes(), resp_head) {
                Ok(Some(len)) => return Answer::Tunnel(len),
                Ok(None) => {}
                Err(why) => return Answer::Lost(why.to_string()),
            }
        }
        let asked = http1::Asked {
            head_request: shape.head_request,
            client_http10: shape.http10,
            close: shape.close,
            request_id: shape.request_id.as_bytes(),
            hsts: shape.hsts,
        };
        let parsed = http1::parse_response(buf, &asked, date.now(), resp_head);
        match parsed {
            Err(why) => return Answer::Lost(why.to_string()),
            Ok((Parsed::Final(head), relay, close)) => break (head, relay, close),
            Ok((Parsed::Interim(len), ..)) => {
                buf.drain(..len);
                continue;
            }
            Ok((Parsed::Incomplete, ..)) => {}
        }
        let read = upstream.read_into(buf, HEAD_CHUNK);
        let read = match ex.head_deadline() {
            Some(at) => tokio::time::timeout_at(at, read).await,
            // The request is still on its way: no deadline yet.
            None => tokio::select! {
                read = read => Ok(read),
                _ = ex.wait_out() => continue,
            },
        };
        match read {
            Err(_) => return Answer::Timeout,
            Ok(Ok(0)) => return Answer::Lost("the app closed the connection".into()),
            Ok(Err(e)) => return Answer::Lost(e.to_string()),
            Ok(Ok(_)) => {}
        }
    };
    if head.busy {
        return Answer::Busy;
    }
    let _ = ex.head();
    let worker = since.elapsed();
    let content_type = match (&head.content_type, shape.log) {
        (Some(range), true) => std::str::from_utf8(&buf[range.clone()])
            .ok()
            .map(str::to_string),
        _ => None,
    };
    // What the client cannot take at once waits in the backlog, so the
    // worker is done when the app is — unless the response must flow as it
    // is produced (then it goes at the client's pace).
    let buffer = shape.buffering && !head.stream;
    let mut relayer = Relayer::new(relay, head.body);
    let mut pos = head.len;
    let mut head_pending = true;
    // Whether `resp_head` holds the end of the response, still to be sent.
    let mut tail = false;
    // How much of a response whose client is gone was read on.
    let mut drained = 0u64;
    let mut bytes = 0u64;
    loop {
        if relayer.is_done() {
            break;
        }
        if pos < buf.len() {
            out.clear();
            let input = &buf[pos..];
            let consumed = match relayer.take(input, out) {
                Ok(consumed) => consumed,
                Err(why) => {
                    warn!("bad response body from the app: {why}");
                    break;
                }
            };
            bytes += out.data_len();
            pos += consumed;
            if ex.phase() == Phase::Draining {
                drained += consumed as u64;
                if drained > MAX_DRAIN {
                    break;
                }
                continue;
            }
            if relayer.is_done() && out.len() <= MAX_TAIL && backlog.is_empty() {
                // The last of the response: it goes out after the worker is
                // free again, so the next request reaches the app sooner.
                if !head_pending {
                    resp_head.clear();
                }
                out.copy_into(input, resp_head);
                head_pending = false;
                tail = true;
                break;
            }
            let head_part: &[u8] = if head_pending { resp_head } else { &[] };
            head_pending = false;
            let _ = ex.begun();
            let parts = std::iter::once(head_part).chain(out.parts(input));
            if !deliver(client, backlog, buffer, shape, parts).await {
                let _ = ex.client_gone();
            }
            continue;
        }
        // Nothing buffered: the head goes out now if it has not, so a
        // streamed body's first bytes are not held back.
        if head_pending {
            head_pending = false;
            let _ = ex.begun();
            let parts = std::iter::once(&resp_head[..]);
            if !deliver(client, backlog, buffer, shape, parts).await {
                let _ = ex.client_gone();
            }
        }
        buf.clear();
        pos = 0;
        let draining = ex.drain_deadline();
        let until = draining.unwrap_or_else(|| Instant::now() + shape.app_idle);
        let read = upstream.read_into(buf, BODY_CHUNK);
        let read = if backlog.is_empty() {
            tokio::time::timeout_at(until, read).await
        } else {
            // While the app is quiet, what waits goes on to the client.
            tokio::select! {
                read = tokio::time::timeout_at(until, read) => read,
                writable = client.wait_writable() => {
                    if writable.is_err() || flush_ready(client, backlog).is_err() {
                        let _ = ex.client_gone();
                        backlog.clear();
                    }
                    continue;
                }
            }
        };
        let read = match read {
            Ok(read) => read,
            Err(_) => {
                if draining.is_none() {
                    warn!(
                        "the app sent nothing for {:?} mid-body: response cut short",
                        shape.app_idle
                    );
                }
                break;
            }
        };
        match read {
            Ok(0) => {
                out.clear();
                match relayer.end(out) {
                    Ok(()) if draining.is_none() => {
                        if !deliver(client, backlog, buffer, shape, out.parts(&[])).await {
                            let _ = ex.client_gone();
                        }
                    }
                    Ok(()) => {}
                    Err(why) => warn!("the app closed the connection {why}"),
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("reading the app's response: {e}");
                break;
            }
        }
    }
    let client_ok = ex.phase() != Phase::Draining;
    if head_pending {
        // A response without a body: its head is its end.
        tail = true;
    }
    let upstream_done = relayer.is_done();
    // Bytes past the end of the response: the connection is not trusted.
    let clean = pos >= buf.len();
    buf.clear();
    Answer::Relayed(Relayed {
        status: head.status,
        worker,
        bytes,
        upstream_done,
        reusable: head.reusable && clean && relayer.reusable(),
        client_ok,
        close: close || !upstream_done,
        recycle: head.recycle,
        tail,
        content_type,
    })
}
