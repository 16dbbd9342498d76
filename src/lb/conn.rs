//! A client connection: plain TCP or TLS. The plain one is the LB's own
//! [`Socket`] as it always was; TLS is a second kind beside it, not a layer
//! every connection pays for.

use std::io;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::io::Socket;
use super::tls::TlsSocket;

pub struct Conn {
    kind: Kind,
    /// Bytes read and written so far (for the access log and the
    /// metrics). Only the connection's own task counts, so a plain load
    /// and store does (atomics only because the type must be `Sync`).
    read: AtomicU64,
    written: AtomicU64,
}

enum Kind {
    Plain(Socket),
    Tls(Box<TlsSocket>),
}

impl From<Socket> for Conn {
    fn from(socket: Socket) -> Conn {
        Conn::new(Kind::Plain(socket))
    }
}

impl Conn {
    pub fn tls(socket: TlsSocket) -> Conn {
        Conn::new(Kind::Tls(Box::new(socket)))
    }

    fn new(kind: Kind) -> Conn {
        Conn {
            kind,
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls(_))
    }

    /// Bytes read from and written to this connection so far.
    pub fn counted(&self) -> (u64, u64) {
        (self.read.load(Relaxed), self.written.load(Relaxed))
    }

    fn count_in(&self, n: usize) {
        self.read.store(self.read.load(Relaxed) + n as u64, Relaxed);
    }

    fn count_out(&self, n: usize) {
        self.written
            .store(self.written.load(Relaxed) + n as u64, Relaxed);
    }

    /// See [`Socket::read_into`]. (What a client sends and is sent is
    /// counted here.)
    pub async fn read_into(&self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        let read = match &self.kind {
            Kind::Plain(s) => s.read_into(buf, want).await,
            Kind::Tls(s) => s.read_into(buf, want).await,
        };
        if let Ok(n) = read {
            self.count_in(n);
        }
        read
    }

    /// See [`Socket::write_all`].
    pub async fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let written = match &self.kind {
            Kind::Plain(s) => s.write_all(parts).await,
            Kind::Tls(s) => s.write_all(parts).await,
        };
        if written.is_ok() {
            self.count_out(parts.iter().map(|p| p.len()).sum());
        }
        written
    }

    /// See [`Socket::write_parts`].
    pub async fn write_parts<'a, I>(&self, parts: I) -> io::Result<()>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let mut total = 0;
        let parts = parts.inspect(|p| total += p.len());
        let written = match &self.kind {
            Kind::Plain(s) => s.write_parts(parts).await,
            Kind::Tls(s) => s.write_parts(parts).await,
        };
        if written.is_ok() {
            self.count_out(total);
        }
        written
    }

    /// See [`Socket::try_write_parts`].
    pub fn try_write_parts<'a, I>(&self, parts: I) -> io::Result<usize>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let written = match &self.kind {
            Kind::Plain(s) => s.try_write_parts(parts),
            Kind::Tls(s) => s.try_write_parts(parts),
        };
        if let Ok(n) = written {
            self.count_out(n);
        }
        written
    }

    /// See [`Socket::wait_writable`].
    pub async fn wait_writable(&self) -> io::Result<()> {
        match &self.kind {
            Kind::Plain(s) => s.wait_writable().await,
            Kind::Tls(s) => s.wait_writable().await,
        }
    }

    /// See [`Socket::closed`].
    pub async fn closed(&self) {
        match &self.kind {
            Kind::Plain(s) => s.closed().await,
            Kind::Tls(s) => s.closed().await,
        }
    }

    /// See [`Socket::drain`].
    pub async fn drain(&self, idle: Duration, limit: Duration, max: usize) {
        match &self.kind {
            Kind::Plain(s) => s.drain(idle, limit, max).await,
            Kind::Tls(s) => s.drain(idle, limit, max).await,
        }
    }

    /// See [`Socket::shutdown_write`]; TLS sends its close_notify first.
    pub fn shutdown_write(&self) {
        match &self.kind {
            Kind::Plain(s) => s.shutdown_write(),
            Kind::Tls(s) => s.shutdown_write(),
        }
    }
}
