//! The LB's side of a worker socket: one kept-alive HTTP/1.1 connection per
//! worker (opening one per request cost 30–50% here), and the request body
//! type sent on it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::io::Socket;

/// A connection to a worker's app.
pub type Conn<B> = hyper::client::conn::http1::SendRequest<B>;

/// Opens a connection to the app at `socket` within `timeout`. (A unix
/// connect does not wait: it succeeds, or fails at once when nothing
/// listens or the backlog is full.)
pub async fn connect(socket: &Path, timeout: Duration) -> io::Result<Conn<Outgoing>> {
    let stream = Socket::connect_unix(socket)?;
    let (sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::Builder::new().handshake(stream),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of a request sent to a worker: the client's body, streamed as
/// it arrives, or nothing (so a bodiless request can be sent again to
/// another worker after a busy answer).
pub struct Outgoing(Option<Incoming>);

impl Outgoing {
    pub fn new(body: Incoming) -> Outgoing {
        if body.is_end_stream() {
            Outgoing(None)
        } else {
            Outgoing(Some(body))
        }
    }

    pub fn empty() -> Outgoing {
        Outgoing(None)
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.0 {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
