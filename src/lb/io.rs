//! The LB's sockets, registered with epoll for read readiness only.
//!
//! tokio registers every socket for read *and* write readiness, and Linux
//! signals write readiness to a writer each time its peer reads — so a
//! process sleeping between requests wakes once more per exchange for
//! nothing (PERF-NOTES: "spurious wake-ups on unix sockets"). A [`Socket`]
//! writes straight away and asks for write readiness (on a duplicate of the
//! descriptor, registered for that alone) only while a write is blocked.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Registers an owned descriptor with the runtime for `interest` alone.
fn register<T: AsRawFd>(owned: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its descriptor, which stays open and the same for
    // as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(owned, interest) }?)
}

pub struct Socket {
    read: AsyncFd<OwnedFd>,
    /// Registered for write readiness while writes block; dropped (and so
    /// deregistered) once a write goes through whole again.
    write: Option<AsyncFd<OwnedFd>>,
}

impl Socket {
    /// Wraps a connected, non-blocking stream socket.
    pub fn new(fd: OwnedFd) -> io::Result<Socket> {
        Ok(Socket {
            read: register(fd, Interest::READABLE)?,
            write: None,
        })
    }

    /// Connects to the unix socket at `path` without blocking: a listener
    /// with a full backlog is an error (`WouldBlock`), not a wait.
    pub fn connect_unix(path: &Path) -> io::Result<Socket> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        socket::connect(fd.as_raw_fd(), &addr)?;
        Socket::new(fd)
    }

    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&OwnedFd) -> io::Result<usize>,
        whole: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            match write(self.read.get_ref()) {
                Ok(n) => {
                    if n == whole {
                        self.write = None;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.write.is_none() {
                        let dup = self.read.get_ref().try_clone()?;
                        self.write = Some(register(dup, Interest::WRITABLE)?);
                    }
                    let waiting = self.write.as_mut().expect("set above");
                    let mut guard = ready!(waiting.poll_write_ready(cx))?;
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Read for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            // SAFETY: read(2) only writes into the unfilled part, and the
            // cursor advances by exactly what it wrote.
            let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.as_mut() };
            let len = unfilled.len();
            // SAFETY: `unfilled` is valid for `len` bytes of writes.
            let n = unsafe {
                nix::libc::read(
                    guard.get_inner().as_raw_fd(),
                    unfilled.as_mut_ptr().cast(),
                    len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => guard.clear_ready(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Err(e)),
                }
                continue;
            }
            let n = n as usize;
            // A short read drained the socket: the next read would only say
            // EAGAIN, so wait for the next event instead (as tokio does).
            if n > 0 && n < len {
                guard.clear_ready();
            }
            // SAFETY: read(2) initialized these `n` bytes.
            unsafe { buf.advance(n) };
            return Poll::Ready(Ok(()));
        }
    }
}

impl hyper::rt::Write for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let whole = buf.len();
        self.get_mut().write_with(
            cx,
            |fd| nix::unistd::write(fd, buf).map_err(io::Error::from),
            whole,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let whole = bufs.iter().map(|b| b.len()).sum();
        self.get_mut().write_with(
            cx,
            |fd| nix::sys::uio::writev(fd.as_fd(), bufs).map_err(io::Error::from),
            whole,
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket::shutdown(self.read.get_ref().as_raw_fd(), socket::Shutdown::Write) {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// The public listener, accepting [`Socket`]s.
pub struct Listener {
    inner: AsyncFd<std::net::TcpListener>,
}

impl Listener {
    pub fn new(listener: std::net::TcpListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            inner: register(listener, Interest::READABLE)?,
        })
    }

    /// The next client connection (non-blocking, `TCP_NODELAY`).
    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((stream, peer))) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    return Ok((Socket::new(OwnedFd::from(stream))?, peer));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
