//! One client connection: read a request head, answer it (the LB's own
//! routes, a refusal, or through a worker), and go on while the connection
//! is kept alive.
//!
//! A connection waits at most `--idle-timeout-ms` for a next request and
//! `--header-timeout-ms` from a request's first byte to the end of its head
//! (a slowloris client is cut off); once the LB is stopping, an idle
//! connection closes and a busy one closes after its response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::Conn;
use super::forwarded::{Hop, RequestId};
use super::http1::{self, HeadError, Own, RequestHead};
use super::io::HEAD_CHUNK;
use super::proxy::{Client, Next};
use super::Lb;
use crate::flags::TrustedProxies;

/// How long a connection may wait.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a next request on a kept-alive connection.
    pub idle: Duration,
    /// From a request's first byte to the end of its head.
    pub header: Duration,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public port: the app's, but for the LB's own routes.
    Public,
    /// `--status-bind`: the LB's own routes only.
    Status,
    /// `--metrics`: `/metrics` only.
    Metrics,
}

pub(super) async fn serve(
    lb: Arc<Lb>,
    socket: Conn,
    peer: SocketAddr,
    local: SocketAddr,
    mut stop: watch::Receiver<bool>,
    on: Listener,
) {
    let mut client = Client::new(
        socket,
        Some(peer.ip()),
        local.to_string(),
        lb.proxy.spools.clone(),
    );
    client.port = Some(local.port());
    if client.https() {
        client.hsts = lb.hsts;
    }
    client.trusted = lb.trusted_proxies.contains(peer.ip());
    let reading = Reading {
        timeouts: lb.timeouts,
        underscores: lb.underscore_headers,
        proxies: &lb.trusted_proxies,
    };
    loop {
        let head = match read_head(&mut client, &mut stop, &reading).await {
            Some(Ok(head)) => head,
            Some(Err(refused)) => {
                let (status, reason) = refused.status();
                let own = Own::text(status, reason, reason, true);
                client.path.clear();
                client
                    .answer(&lb.proxy.log, None, own, Instant::now())
                    .await;
                break;
            }
            None => break,
        };
        let received = Instant::now();
        if lb.proxy.log.enabled() {
            client.path.clear();
            client.path.push_str(head.path(&client.buf));
        }
        let route = lb.route(&head, &client, on);
        client.buf.drain(..head.len);
        let closing = *stop.borrow();
        let next = match route {
            Some(own) => {
                // A body sent to the LB's own routes is not read: close.
                let close = closing || !head.keep_alive || head.body != http1::Framing::None;
                client
                    .reply(&lb.proxy.log, &head, own.as_own(), close, received)
                    .await
            }
            // Boxed: an exchange's state is ~10 KB, and the connection's
            // task would otherwise hold that much all the time it waits
            // for its next request (17 KB per idle connection, measured).
            None => Box::pin(lb.proxy.exchange(&mut client, &head, received, closing)).await,
        };
        if next == Next::Close || *stop.borrow() {
            break;
        }
        if next == Next::Shed {
            // As `Retry-After: 1` asked: a client refused for a full queue
            // that sends again at once (a load tool does) waits its second
            // here, idle, instead of spinning the LB on refusals while the
            // queued requests wait for it to dispatch them (measured: at
            // c=10000, 220 served req/s without this).
            tokio::select! {
                _ = tokio::time::sleep(SHED_PAUSE) => {}
                _ = stop.changed() => break,
            }
        }
        client.shrink();
    }
    client.socket.shutdown_write();
    if !client.eof {
        // The client may still be sending (a body the LB refused, a
        // request after a `Connection: close`): read it away before closing,
        // or the reset that closing with unread input causes may destroy
        // the answer before the client has read it.
        client
            .socket
            .drain(LINGER_IDLE, LINGER_LIMIT, LINGER_MAX)
            .await;
    }
}

/// How long a connection refused for a full queue is left unread: the
/// `Retry-After: 1` it was told.
const SHED_PAUSE: Duration = Duration::from_secs(1);

/// A lingering close waits at most this long for each next byte,
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// this long in all,
const LINGER_LIMIT: Duration = Duration::from_secs(5);
/// and reads at most this much.
const LINGER_MAX: usize = 64 * 1024 * 1024;

/// How a connection's request heads are read.
struct Reading<'a> {
    timeouts: Timeouts,
    /// `--allow-underscore-headers`.
    underscores: bool,
    /// `--trusted-proxies`.
    proxies: &'a TrustedProxies,
}

/// Reads until a whole request head is buffered. None: the connection
/// ended, timed out, or the LB is stopping while it was idle. The request
/// gets its id (the one a trusted proxy gave, or a new one).
async fn read_head(
    client: &mut Client,
    stop: &mut watch::Receiver<bool>,
    reading: &Reading<'_>,
) -> Option<Result<RequestHead, HeadError>> {
    let timeouts = reading.timeouts;
    let idle_deadline = Instant::now() + timeouts.idle;
    let mut head_deadline = None;
    client.request_id = RequestId::generate();
    client.queued = Duration::ZERO;
    loop {
        if !client.buf.is_empty() {
            let context = http1::Context {
                hop: Hop {
                    client: client.peer,
                    trusted: client.trusted.then_some(reading.proxies),
                    https: client.https(),
                    port: client.port,
                    request_id: client.request_id.as_bytes(),
                    received_us: micros_since_epoch(),
                },
                host: Some(&client.host),
                underscores: reading.underscores,
            };
            match http1::parse_request(&client.buf, &context, &mut client.req_head) {
                Ok(Some(head)) => {
                    if let Some(id) = head.request_id.clone() {
                        if let Some(id) = RequestId::from_bytes(&client.buf[id]) {
                            client.request_id = id;
                        }
                    }
                    return Some(Ok(head));
                }
                Ok(None) => {}
                Err(refused) => return Some(Err(refused)),
            }
            head_deadline.get_or_insert(Instant::now() + timeouts.header);
        }
        let deadline = head_deadline.unwrap_or(idle_deadline);
        let idle = client.buf.is_empty();
        tokio::select! {
            read = client.socket.read_into(&mut client.buf, HEAD_CHUNK) => match read {
                Ok(0) | Err(_) => {
                    client.eof = true;
                    return None;
                }
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = stop.changed(), if idle => return None,
        }
    }
}

fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An answer the LB owns, by route.
pub struct OwnRoute {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Header lines besides, each ending in CRLF (a redirect's `Location`).
    pub extra: Vec<u8>,
}

impl OwnRoute {
    pub fn new(
        status: u16,
        reason: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> OwnRoute {
        OwnRoute {
            status,
            reason,
            content_type,
            body,
            extra: Vec::new(),
        }
    }

    pub fn ok(content_type: &'static str, body: Vec<u8>) -> OwnRoute {
        OwnRoute::new(200, "OK", content_type, body)
    }

    pub fn not_found() -> OwnRoute {
        OwnRoute::new(404, "Not Found", "text/plain", b"Not Found".to_vec())
    }

    fn as_own(&self) -> Own<'_> {
        Own {
            status: self.status,
            reason: self.reason,
            content_type: self.content_type,
            body: &self.body,
            close: false,
            retry_after: false,
            no_cache: true,
            extra: &self.extra,
        }
    }
}
