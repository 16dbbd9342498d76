//! One request through the LB: pick a worker, forward over its kept-alive
//! connection, stream the response back, and free the worker when the
//! response body is done (DESIGN §5).
//!
//! A request is sent again to another worker only when no app can have
//! seen it: the connection could not be made, the connection refused it
//! before a byte was written, or the app answered busy (`Rip-Worker-Busy`)
//! to a bodiless request. Anything else that goes wrong after sending is
//! answered here (`502`, `504`) and the worker is retired.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;
use tracing::warn;

use super::access_log::{AccessLog, Entry};
use super::balancer::{Balancer, Lease, Reject};
use super::headers;
use super::upstream::{self, Conn, Outgoing};

/// What the request path needs from the LB.
pub struct Proxy {
    pub balancer: Arc<Balancer>,
    pub log: AccessLog,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Workers tried for one request before giving up with 503.
    pub max_attempts: usize,
}

/// The response body the LB sends: a worker's, relayed, or its own.
// Boxing the relay would cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Relay(Relay),
    Own(Full<Bytes>),
}

type WorkerLease = Lease<Conn<Outgoing>>;

/// What a request looked like, for the access log and a resend.
struct Sent {
    method: Method,
    uri: Uri,
    received: Instant,
}

/// A bodiless request's head, kept so it can go to another worker after a
/// busy answer.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(request: &Request<Outgoing>) -> Option<Replay> {
        request.body().is_end_stream().then(|| Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(self) -> Request<Outgoing> {
        let mut request = Request::new(Outgoing::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

enum Step {
    Answer(Response<ProxyBody>),
    /// No app saw the request: try another worker.
    Retry(Request<Outgoing>),
}

impl Proxy {
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client: Option<IpAddr>,
        received: Instant,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        headers::request(&mut parts.headers, client);
        let sent = Sent {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            received,
        };
        let mut request = Request::from_parts(parts, Outgoing::new(body));
        for _ in 0..self.max_attempts {
            let lease = match self.balancer.acquire().await {
                Ok(lease) => lease,
                Err(Reject::QueueFull) => {
                    return self.own(&sent, StatusCode::SERVICE_UNAVAILABLE, "Server busy", true)
                }
                Err(Reject::QueueTimeout) => {
                    return self.own(&sent, StatusCode::GATEWAY_TIMEOUT, "Queue timeout", false)
                }
            };
            match self.exchange(lease, request, &sent).await {
                Step::Answer(response) => return response,
                Step::Retry(back) => request = back,
            }
        }
        self.own(&sent, StatusCode::SERVICE_UNAVAILABLE, "Server busy", true)
    }

    async fn exchange(
        &self,
        mut lease: WorkerLease,
        request: Request<Outgoing>,
        sent: &Sent,
    ) -> Step {
        let parked = lease.take_conn().filter(|c| !c.is_closed());
        let reused = parked.is_some();
        let mut conn = match parked {
            Some(conn) => conn,
            None => match upstream::connect(lease.socket(), self.connect_timeout).await {
                Ok(conn) => conn,
                Err(e) => return self.unreachable(lease, request, &e.to_string()),
            },
        };
        if conn.ready().await.is_err() {
            // The app closed the kept-alive connection between requests.
            conn = match upstream::connect(lease.socket(), self.connect_timeout).await {
                Ok(conn) => conn,
                Err(e) => return self.unreachable(lease, request, &e.to_string()),
            };
            if let Err(e) = conn.ready().await {
                return self.unreachable(lease, request, &e.to_string());
            }
        }
        let replay = Replay::of(&request);
        let dispatched = Instant::now();
        let answer = tokio::time::timeout(self.read_timeout, conn.try_send_request(request)).await;
        let response = match answer {
            Err(_elapsed) => {
                // The app may still be working on it: the lease is dropped
                // unfinished, which retires the worker.
                return Step::Answer(self.own(
                    sent,
                    StatusCode::GATEWAY_TIMEOUT,
                    "Upstream timeout",
                    false,
                ));
            }
            Ok(Err(mut failed)) => match failed.take_message() {
                // Refused before a byte was written: safe to send elsewhere.
                Some(request) if reused => {
                    lease.release(None);
                    return Step::Retry(request);
                }
                Some(request) => {
                    return self.unreachable(lease, request, &failed.into_error().to_string())
                }
                None => {
                    warn!(
                        "worker {} lost mid-request: {}",
                        lease.id(),
                        failed.into_error()
                    );
                    return Step::Answer(self.own(
                        sent,
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway",
                        false,
                    ));
                }
            },
            Ok(Ok(response)) => response,
        };
        let worker_time = dispatched.elapsed();
        let (mut parts, body) = response.into_parts();
        let signals = headers::response(&mut parts.headers);
        if signals.busy && parts.status == StatusCode::SERVICE_UNAVAILABLE {
            // The app did not take the request; its connection still holds
            // the unread busy answer, so it is not kept.
            lease.busy(None);
            return match replay {
                Some(replay) => Step::Retry(replay.request()),
                None => Step::Answer(self.own(
                    sent,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Server busy",
                    true,
                )),
            };
        }
        if signals.recycle {
            lease.retire();
        }
        let log = self.log.enabled().then(|| LogLine {
            log: self.log.clone(),
            method: sent.method.clone(),
            uri: sent.uri.clone(),
            status: parts.status.as_u16(),
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            received: sent.received,
            worker: worker_time,
        });
        let relay = Relay {
            body,
            bytes: 0,
            finish: Some(Finish { lease, conn, log }),
        };
        Step::Answer(Response::from_parts(parts, ProxyBody::Relay(relay)))
    }

    /// The worker's socket cannot be reached: take it out of rotation (the
    /// manager replaces it) and try another.
    fn unreachable(&self, lease: WorkerLease, request: Request<Outgoing>, why: &str) -> Step {
        warn!(
            "worker {} unreachable at {}: {why}",
            lease.id(),
            lease.socket().display()
        );
        lease.retire();
        lease.release(None);
        Step::Retry(request)
    }

    /// An answer the LB makes itself, logged.
    fn own(
        &self,
        sent: &Sent,
        status: StatusCode,
        text: &'static str,
        retry_after: bool,
    ) -> Response<ProxyBody> {
        own_response(
            &self.log,
            &sent.method,
            &sent.uri,
            sent.received,
            status,
            text,
            retry_after,
        )
    }
}

/// A plain-text answer of the LB's own, logged like any other.
pub fn own_response(
    log: &AccessLog,
    method: &Method,
    uri: &Uri,
    received: Instant,
    status: StatusCode,
    text: &'static str,
    retry_after: bool,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Own(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    log.log(&Entry {
        method,
        path: uri.path(),
        status: status.as_u16(),
        content_type: headers.get(CONTENT_TYPE),
        length: text.len() as u64,
        total: received.elapsed(),
        worker: Duration::ZERO,
    });
    response
}

/// What the access log line of a relayed response needs.
struct LogLine {
    log: AccessLog,
    method: Method,
    uri: Uri,
    status: u16,
    content_type: Option<HeaderValue>,
    received: Instant,
    worker: Duration,
}

/// Frees the worker when the relayed body ends.
struct Finish {
    lease: WorkerLease,
    conn: Conn<Outgoing>,
    log: Option<LogLine>,
}

/// A worker's response body on its way to the client. The worker is
/// released on the body's last frame — or when hyper drops a body whose
/// end it has already seen — and abandoned if the body is dropped early.
pub struct Relay {
    body: Incoming,
    bytes: u64,
    finish: Option<Finish>,
}

impl Relay {
    fn finish(&mut self, complete: bool) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        if complete {
            finish.lease.release(Some(finish.conn));
        } else {
            drop(finish.conn);
            drop(finish.lease); // abandoned: the worker is retired
        }
        if let Some(line) = finish.log {
            line.log.log(&Entry {
                method: &line.method,
                path: line.uri.path(),
                status: line.status,
                content_type: line.content_type.as_ref(),
                length: self.bytes,
                total: line.received.elapsed(),
                worker: line.worker,
            });
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let complete = self.body.is_end_stream();
        self.finish(complete);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Own(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            ProxyBody::Relay(relay) => {
                let polled = Pin::new(&mut relay.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            relay.bytes += data.len() as u64;
                        }
                        if relay.body.is_end_stream() {
                            relay.finish(true);
                        }
                    }
                    Poll::Ready(None) => relay.finish(true),
                    Poll::Ready(Some(Err(_))) => relay.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Own(full) => full.is_end_stream(),
            ProxyBody::Relay(relay) => relay.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Own(full) => full.size_hint(),
            ProxyBody::Relay(relay) => relay.body.size_hint(),
        }
    }
}
