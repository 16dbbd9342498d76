//! A client connection: plain TCP or TLS. The plain one is the LB's own
//! [`Socket`] as it always was; TLS is a second kind beside it, not a layer
//! every connection pays for.

use std::io;
use std::time::Duration;

use super::io::Socket;
use super::metrics::METRICS;
use super::tls::TlsSocket;

pub enum Conn {
    Plain(Socket),
    Tls(Box<TlsSocket>),
}

impl From<Socket> for Conn {
    fn from(socket: Socket) -> Conn {
        Conn::Plain(socket)
    }
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// See [`Socket::read_into`]. (What a client sends and is sent is
    /// counted here, for the metrics.)
    pub async fn read_into(&self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        let read = match self {
            Conn::Plain(s) => s.read_into(buf, want).await,
            Conn::Tls(s) => s.read_into(buf, want).await,
        };
        if let Ok(n) = read {
            METRICS.bytes_in(n);
        }
        read
    }

    /// See [`Socket::write_all`].
    pub async fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let written = match self {
            Conn::Plain(s) => s.write_all(parts).await,
            Conn::Tls(s) => s.write_all(parts).await,
        };
        if written.is_ok() {
            METRICS.bytes_out(parts.iter().map(|p| p.len()).sum());
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
        let written = match self {
            Conn::Plain(s) => s.write_parts(parts).await,
            Conn::Tls(s) => s.write_parts(parts).await,
        };
        if written.is_ok() {
            METRICS.bytes_out(total);
        }
        written
    }

    /// See [`Socket::try_write_parts`].
    pub fn try_write_parts<'a, I>(&self, parts: I) -> io::Result<usize>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let written = match self {
            Conn::Plain(s) => s.try_write_parts(parts),
            Conn::Tls(s) => s.try_write_parts(parts),
        };
        if let Ok(n) = written {
            METRICS.bytes_out(n);
        }
        written
    }

    /// See [`Socket::wait_writable`].
    pub async fn wait_writable(&self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.wait_writable().await,
            Conn::Tls(s) => s.wait_writable().await,
        }
    }

    /// See [`Socket::closed`].
    pub async fn closed(&self) {
        match self {
            Conn::Plain(s) => s.closed().await,
            Conn::Tls(s) => s.closed().await,
        }
    }

    /// See [`Socket::drain`].
    pub async fn drain(&self, idle: Duration, limit: Duration, max: usize) {
        match self {
            Conn::Plain(s) => s.drain(idle, limit, max).await,
            Conn::Tls(s) => s.drain(idle, limit, max).await,
        }
    }

    /// See [`Socket::shutdown_write`]; TLS sends its close_notify first.
    pub fn shutdown_write(&self) {
        match self {
            Conn::Plain(s) => s.shutdown_write(),
            Conn::Tls(s) => s.shutdown_write(),
        }
    }
}
