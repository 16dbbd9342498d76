//! The LB's sockets, registered with epoll for read readiness only.
//!
//! tokio registers every socket for read *and* write readiness, and Linux
//! signals write readiness to a writer each time its peer reads — so a
//! process sleeping between requests wakes once more per exchange for
//! nothing (measured on the prototype with strace: 480 write-only wake-ups
//! per 896 requests; registering for read readiness only raised a worker
//! from 38k to 48k req/s at c=64). A [`Socket`] writes straight away and
//! asks for write readiness (on a duplicate of the descriptor, registered
//! for that alone) only while a write is blocked.
//!
//! Reads and writes take `&self`, so one task can stream a request body to
//! a worker while it relays the worker's response.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Registers an owned descriptor with the runtime for `interest` alone.
fn register<T: AsRawFd>(owned: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its descriptor, which stays open and the same for
    // as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(owned, interest) }?)
}

/// Read size while a head is incomplete.
pub const HEAD_CHUNK: usize = 4096;
/// Read size while a body streams.
pub const BODY_CHUNK: usize = 64 * 1024;

/// The most pieces one `writev` call is given.
const MAX_PARTS: usize = 16;

pub struct Socket {
    fd: AsyncFd<OwnedFd>,
    /// Registered for write readiness while writes block; dropped (and so
    /// deregistered) once a write goes through whole again.
    blocked: Mutex<Option<AsyncFd<OwnedFd>>>,
}

impl Socket {
    /// Wraps a connected, non-blocking stream socket.
    pub fn new(fd: OwnedFd) -> io::Result<Socket> {
        Ok(Socket {
            fd: register(fd, Interest::READABLE)?,
            blocked: Mutex::new(None),
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

    /// Reads what is there (at least one byte, or 0 at the end) into the
    /// spare room of `buf`, making room for up to `want` bytes.
    pub async fn read_into(&self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let spare = buf.spare_capacity_mut();
            let len = spare.len();
            // SAFETY: read(2) writes at most `len` bytes into the spare
            // capacity; `set_len` below covers exactly what it wrote.
            let n = unsafe {
                nix::libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => guard.clear_ready(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
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
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
    }

    /// Writes all of `parts`, in order, with as few system calls as the
    /// socket allows (one, usually).
    pub async fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.write_parts(parts.iter().copied()).await
    }

    /// Writes every piece `parts` yields, in order, gathering up to
    /// [`MAX_PARTS`] of them into each `writev`.
    pub async fn write_parts<'a, I>(&self, parts: I) -> io::Result<()>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        self.send_parts(parts, &mut 0).await
    }

    /// [`Socket::write_parts`], counting in `sent` the bytes the socket
    /// took, also when it fails part way.
    pub async fn send_parts<'a, I>(&self, mut parts: I, sent: &mut usize) -> io::Result<()>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        loop {
            let mut storage = [IoSlice::new(&[]); MAX_PARTS];
            let count = gather(&mut parts, &mut storage);
            if count == 0 {
                break;
            }
            let mut slices = &mut storage[..count];
            while !slices.is_empty() {
                match nix::sys::uio::writev(self.fd.get_ref().as_fd(), slices) {
                    Ok(n) => {
                        *sent += n;
                        IoSlice::advance_slices(&mut slices, n)
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(nix::errno::Errno::EAGAIN) => self.wait_writable().await?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if self.is_blocked() {
            *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(())
    }

    /// Writes what the socket takes of `parts` now, without waiting;
    /// returns how many bytes went (0 when it takes none).
    pub fn try_write_parts<'a, I>(&self, mut parts: I) -> io::Result<usize>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let mut storage = [IoSlice::new(&[]); MAX_PARTS];
        let count = gather(&mut parts, &mut storage);
        if count == 0 {
            return Ok(0);
        }
        loop {
            match nix::sys::uio::writev(self.fd.get_ref().as_fd(), &storage[..count]) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn is_blocked(&self) -> bool {
        self.blocked.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Waits until the socket takes more bytes, registering for write
    /// readiness for as long as writes block. (One task writes a socket at a
    /// time, so the registration is taken out while it is waited on.)
    pub async fn wait_writable(&self) -> io::Result<()> {
        let parked = self
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let registration = match parked {
            Some(registration) => registration,
            None => register(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?,
        };
        let ready = registration
            .writable()
            .await
            .map(|mut guard| guard.clear_ready());
        *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = Some(registration);
        ready
    }

    /// Whether a parked connection was closed (or sent something) while it
    /// sat idle. Costs a syscall only if the socket was signalled readable.
    pub fn stale(&self) -> bool {
        use futures_lite_poll::poll_once;
        match poll_once(self.fd.readable()) {
            None => false,
            Some(Err(_)) => true,
            Some(Ok(mut guard)) => {
                let mut byte = [0u8; 1];
                match socket::recv(
                    self.fd.get_ref().as_raw_fd(),
                    &mut byte,
                    MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
                ) {
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        false
                    }
                    // EOF, an error, or bytes nobody asked for.
                    _ => true,
                }
            }
        }
    }

    /// Waits until the peer has closed its end (EOF), ignoring (but not
    /// consuming) data it sends meanwhile: a pipelined request is not a close.
    pub async fn closed(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return;
            };
            let mut byte = [0u8; 1];
            match socket::recv(
                self.fd.get_ref().as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return,
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(_) => return,
                // Data is waiting (a pipelined request): nothing more to
                // learn here until the exchange reads it.
                Ok(_) => std::future::pending::<()>().await,
            }
        }
    }

    /// Reads and drops what the peer still sends, until it closes, `idle`
    /// passes without a byte, `limit` passes in all, or `max` bytes came.
    /// (A lingering close: closing a socket with unread input resets the
    /// connection, and the peer may lose the answer it has not read yet.)
    pub async fn drain(&self, idle: Duration, limit: Duration, max: usize) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = max;
        let mut scratch = [0u8; 4096];
        while left > 0 {
            let until = deadline.min(tokio::time::Instant::now() + idle);
            let Ok(Ok(mut guard)) = tokio::time::timeout_at(until, self.fd.readable()).await else {
                return;
            };
            match socket::recv(
                self.fd.get_ref().as_raw_fd(),
                &mut scratch,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = socket::shutdown(self.fd.get_ref().as_raw_fd(), socket::Shutdown::Write);
    }
}

/// Fills `storage` with the next non-empty pieces of `parts`; how many.
fn gather<'a>(
    parts: &mut impl Iterator<Item = &'a [u8]>,
    storage: &mut [IoSlice<'a>; MAX_PARTS],
) -> usize {
    let mut count = 0;
    while count < MAX_PARTS {
        match parts.next() {
            Some([]) => {}
            Some(part) => {
                storage[count] = IoSlice::new(part);
                count += 1;
            }
            None => break,
        }
    }
    count
}

/// Polls a future once, without a real waker: `Some` if it was ready.
mod futures_lite_poll {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    pub fn poll_once<F: Future>(future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
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

    /// The next client connection (non-blocking, `TCP_NODELAY`), with the
    /// client's address and the local address it reached.
    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr, SocketAddr)> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((stream, peer))) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let local = stream.local_addr()?;
                    return Ok((Socket::new(OwnedFd::from(stream))?, peer, local));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
