//! The LB's side of a worker socket: one kept-alive HTTP/1.1 connection per
//! worker (opening one per request cost 30–50% here), parked with the
//! worker in the pool between requests.

use std::io;
use std::path::Path;

use super::body::Output;
use super::io::Socket;

/// A connection to a worker's app, with its buffers: what it answers, and
/// the request body on its way to it. They belong to the worker, not to the
/// client connection, so that thousands of clients waiting in the queue
/// hold no body buffers: the LB's memory grows with the workers, not with
/// the clients.
pub struct Upstream {
    pub socket: Socket,
    pub buf: Vec<u8>,
    /// What goes on to the client, for the response in `buf`.
    pub out: Output,
    pub body_buf: Vec<u8>,
    /// What goes on to the app, for the request body in `body_buf`.
    pub body_out: Output,
}

impl Upstream {
    /// Connects to the app at `path`. (A unix connect does not wait: it
    /// succeeds, or fails at once when nothing listens or the backlog is
    /// full.)
    pub fn connect(path: &Path) -> io::Result<Upstream> {
        Ok(Upstream {
            socket: Socket::connect_unix(path)?,
            buf: Vec::with_capacity(super::io::HEAD_CHUNK),
            out: Output::default(),
            body_buf: Vec::new(),
            body_out: Output::default(),
        })
    }
}
