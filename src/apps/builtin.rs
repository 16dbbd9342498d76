//! Built-in apps, served by the worker process itself (docs/DESIGN.md §6): no
//! runtime needed, so the server's own overhead can be measured and a quick
//! start needs nothing but the binary.
//!
//! `builtin:hello` answers `/` (a greeting), `/ping` (`pong`), `/echo` (the
//! request body streamed back), `/sleep?ms=N` and `/big?n=BYTES` (N bytes,
//! streamed), plus `/ready` and the busy guard every worker socket has.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::control::WorkerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Hello,
}

impl Builtin {
    pub const NAMES: [&'static str; 1] = ["hello"];

    pub fn from_name(name: &str) -> Option<Builtin> {
        match name {
            "hello" => Some(Builtin::Hello),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Hello => "hello",
        }
    }
}

/// A built-in app serving a worker socket.
pub struct Server {
    in_flight: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Server {
    /// Binds `socket` (mode 0600) and serves it in the background.
    pub fn start(which: Builtin, socket: &Path, id: WorkerId) -> std::io::Result<Server> {
        let listener = std::os::unix::net::UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let state = Arc::new(State {
            which,
            id: HeaderValue::from(id),
            in_flight: in_flight.clone(),
        });
        tokio::spawn(accept(listener, state, stopped));
        Ok(Server { in_flight, stop })
    }

    /// Stops accepting and waits (up to `grace`) for the request in flight.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct State {
    which: Builtin,
    id: HeaderValue,
    in_flight: Arc<AtomicUsize>,
}

async fn accept(listener: UnixListener, state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<HelloBody> {
    if req.uri().path() == "/ready" {
        return text(StatusCode::OK, "ok");
    }
    if state.in_flight.fetch_add(1, Ordering::AcqRel) > 0 {
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut busy = text(StatusCode::SERVICE_UNAVAILABLE, "busy");
        let headers = busy.headers_mut();
        headers.insert("rip-worker-busy", HeaderValue::from_static("1"));
        headers.insert("retry-after", HeaderValue::from_static("0"));
        headers.insert("rip-worker-id", state.id.clone());
        return busy;
    }
    // The request stays in flight until its response body is done.
    let guard = InFlight(state.in_flight.clone());
    let mut response = match state.which {
        Builtin::Hello => hello(req).await,
    };
    response.body_mut().guard = Some(guard);
    response
}

async fn hello(req: Request<Incoming>) -> Response<HelloBody> {
    match req.uri().path() {
        "/" => text(StatusCode::OK, "Hello from rip-server (builtin:hello)\n"),
        "/ping" => text(StatusCode::OK, "pong"),
        "/echo" => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let mut response = Response::new(HelloBody::new(Kind::Echo(req.into_body())));
            response.headers_mut().insert(CONTENT_TYPE, content_type);
            response
        }
        "/sleep" => {
            let ms = query_number(req.uri().query(), "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms} ms\n"))
        }
        "/big" => {
            let n = query_number(req.uri().query(), "n").unwrap_or(1 << 20);
            let mut response = Response::new(HelloBody::new(Kind::Repeat { remaining: n }));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<HelloBody> {
    let mut response = Response::new(HelloBody::new(Kind::Full(Full::new(body.into()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn query_number(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The chunk `/big` repeats.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

enum Kind {
    Full(Full<Bytes>),
    Echo(Incoming),
    Repeat { remaining: u64 },
}

/// A built-in response body; it holds the in-flight guard until it is done.
pub struct HelloBody {
    kind: Kind,
    guard: Option<InFlight>,
}

impl HelloBody {
    fn new(kind: Kind) -> HelloBody {
        HelloBody { kind, guard: None }
    }
}

impl Body for HelloBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never: Infallible| match never {}))),
            Kind::Echo(incoming) => Pin::new(incoming).poll_frame(cx),
            Kind::Repeat { remaining } => {
                if *remaining == 0 {
                    Poll::Ready(None)
                } else {
                    let n = (*remaining).min(CHUNK.len() as u64) as usize;
                    *remaining -= n as u64;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
                }
            }
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.is_end_stream() {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Echo(incoming) => incoming.is_end_stream(),
            Kind::Repeat { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(full) => full.size_hint(),
            Kind::Echo(incoming) => incoming.size_hint(),
            Kind::Repeat { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}
