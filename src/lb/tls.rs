//! HTTPS client connections: a TLS session (rustls) over the LB's own
//! [`Socket`], with the same calls as a plain one ([`super::conn::Conn`]).
//!
//! Encrypted output goes through one writer task per connection, which
//! alone writes the socket: records leave in the order rustls made them
//! (the reader's alerts and tickets among the writers' data), and a write
//! that "went" has gone as far as a plain socket's — into a buffer that is
//! sent whatever the caller does next, up to [`OUT_LIMIT`] bytes of it.
//! Past that, writes wait, so a client that does not read holds back its
//! writer (and its send timeout cuts it off) as with plain TCP. Reading
//! never waits for writing, so a client that sends before it reads (an
//! early answer to a large upload) cannot deadlock the connection.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::io::Socket;
use crate::certs::Pair;

/// Encrypted bytes waiting for the socket before writes wait.
const OUT_LIMIT: usize = 256 * 1024;
/// Plaintext handed to rustls at a time (a record holds 16 KiB).
const PLAIN_CHUNK: usize = 16 * 1024;
/// Encrypted bytes read from the socket at a time.
const RAW_CHUNK: usize = 17 * 1024;
/// How long a closed connection's last bytes may take to leave.
const LINGER: Duration = Duration::from_secs(5);

/// The certificates served (rustls asks at each handshake): the one whose
/// names hold the name the client asked for (SNI) — an exact name before a
/// wildcard, which covers one label; case-insensitive — else the first.
#[derive(Debug)]
pub struct Certs {
    served: std::sync::RwLock<Vec<Served>>,
}

#[derive(Debug, Clone)]
struct Served {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl Certs {
    pub fn new(loaded: Vec<crate::certs::Loaded>) -> Certs {
        Certs {
            served: std::sync::RwLock::new(
                loaded
                    .into_iter()
                    .map(|l| Served {
                        names: l.info.names,
                        key: l.key,
                    })
                    .collect(),
            ),
        }
    }

    /// Serves `loaded` in place of pair `index` to the handshakes from now
    /// on (open connections keep the one they were made with).
    pub fn set(&self, index: usize, loaded: crate::certs::Loaded) {
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = served.get_mut(index) {
            *slot = Served {
                names: loaded.info.names,
                key: loaded.key,
            };
        }
    }

    /// The certificate for a client that asked for `name`.
    pub fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let served = self.served.read().unwrap_or_else(|e| e.into_inner());
        let chosen = name.and_then(|name| {
            let exact = served.iter().find(|s| {
                s.names
                    .iter()
                    .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(name))
            });
            exact.or_else(|| {
                served.iter().find(|s| {
                    s.names
                        .iter()
                        .any(|n| n.starts_with("*.") && crate::certs::name_matches(n, name))
                })
            })
        });
        chosen.or_else(|| served.first()).map(|s| s.key.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The TLS settings of the HTTPS listener: TLS 1.2 and 1.3, ALPN
/// `http/1.1`, resumption by tickets and by session id; the certificates
/// served are `pairs`' (the first the default), swappable through the
/// returned [`Certs`].
pub fn server_config(pairs: &[Pair]) -> Result<(Arc<ServerConfig>, Arc<Certs>), String> {
    let loaded = pairs
        .iter()
        .map(crate::certs::load)
        .collect::<Result<Vec<_>, _>>()?;
    let certs = Arc::new(Certs::new(loaded));
    let mut config = ServerConfig::builder_with_provider(crate::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok((Arc::new(config), certs))
}

/// How often the certificate files are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long files that changed are left to settle before they are read
/// (certbot replaces the certificate and the key one after the other).
const SETTLE: Duration = Duration::from_millis(200);

/// What a file looks like from outside: changes when it is rewritten or
/// replaced (symlinks followed, as certbot's `live/` links are).
fn stamp(pair: &Pair) -> Option<[(std::time::SystemTime, u64, u64); 2]> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &std::path::Path| {
        let meta = std::fs::metadata(p).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    };
    Some([one(&pair.cert)?, one(&pair.key)?])
}

/// Watches `pair`'s files for as long as the LB runs, and reads them again
/// whenever `reread` ticks (SIGHUP): a changed pair that loads (readable,
/// matching, valid now) is served to new handshakes; one that does not
/// keeps the old pair, and the log says why.
pub async fn watch(
    certs: Arc<Certs>,
    index: usize,
    pair: Pair,
    mut reread: tokio::sync::watch::Receiver<u64>,
) {
    let mut seen = stamp(&pair);
    loop {
        let asked = tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => false,
            changed = reread.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
        };
        if !asked {
            if stamp(&pair) == seen {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
        }
        seen = stamp(&pair);
        match crate::certs::load(&pair) {
            Ok(loaded) => {
                tracing::info!(
                    "serving the {} certificate {} (serial {}, valid until {})",
                    if asked { "reread" } else { "renewed" },
                    pair.cert.display(),
                    loaded.info.serial,
                    crate::certs::date(loaded.info.not_after)
                );
                certs.set(index, loaded);
            }
            Err(why) => tracing::warn!("kept the certificate served so far: {why}"),
        }
    }
}

/// Why a handshake did not give a connection.
#[derive(Debug)]
pub enum Refused {
    /// A plain HTTP request came to the HTTPS port; it was answered `400`.
    PlainHttp,
    /// The handshake did not finish in time.
    Timeout,
    /// The client left, or the handshake failed (its alert was sent).
    Failed(String),
}

/// The answer to a plain HTTP request on the HTTPS port (as nginx's).
pub const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Connection: close\r\n\
Content-Length: 59\r\n\r\n\
The plain HTTP request was sent to HTTPS port; use https://\n";

/// Runs the server side of a handshake on `raw` until it is done or
/// `deadline` passes.
pub async fn accept(
    raw: Socket,
    config: Arc<ServerConfig>,
    deadline: Instant,
) -> Result<TlsSocket, Refused> {
    match tokio::time::timeout_at(deadline, handshake(&raw, config)).await {
        Ok(Ok(conn)) => Ok(TlsSocket::new(raw, conn)),
        Ok(Err(refused)) => {
            if matches!(refused, Refused::PlainHttp) {
                raw.shutdown_write();
                raw.drain(Duration::from_secs(1), Duration::from_secs(2), 64 * 1024)
                    .await;
            }
            Err(refused)
        }
        Err(_) => Err(Refused::Timeout),
    }
}

async fn handshake(raw: &Socket, config: Arc<ServerConfig>) -> Result<ServerConnection, Refused> {
    let failed = |e: &dyn std::fmt::Display| Refused::Failed(e.to_string());
    let mut conn = ServerConnection::new(config).map_err(|e| failed(&e))?;
    let mut input = Vec::with_capacity(RAW_CHUNK);
    let mut out = Vec::new();
    let mut first = true;
    while conn.is_handshaking() {
        input.clear();
        if raw
            .read_into(&mut input, RAW_CHUNK)
            .await
            .map_err(|e| failed(&e))?
            == 0
        {
            return Err(Refused::Failed(
                "the client closed during the handshake".into(),
            ));
        }
        // A TLS connection starts with a handshake record (22); a request
        // line with a method's capital letter.
        if std::mem::take(&mut first) && input[0].is_ascii_uppercase() {
            let _ = raw.write_all(&[PLAIN_HTTP_ANSWER]).await;
            return Err(Refused::PlainHttp);
        }
        let mut rd = &input[..];
        while !rd.is_empty() {
            conn.read_tls(&mut rd).map_err(|e| failed(&e))?;
            if let Err(e) = conn.process_new_packets() {
                // Its alert goes out before the connection closes.
                collect(&mut conn, &mut out);
                let _ = raw.write_all(&[&out]).await;
                return Err(failed(&e));
            }
        }
        collect(&mut conn, &mut out);
        if !out.is_empty() {
            raw.write_all(&[&out]).await.map_err(|e| failed(&e))?;
            out.clear();
        }
    }
    Ok(conn)
}

/// Moves the records rustls has ready into `out`.
fn collect(conn: &mut ServerConnection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        // Writing into a Vec cannot fail.
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// A TLS connection after its handshake.
pub struct TlsSocket {
    shared: Arc<Shared>,
    /// Encrypted input not yet given to rustls; only the reader uses it.
    input: tokio::sync::Mutex<Vec<u8>>,
}

struct Shared {
    raw: Socket,
    state: Mutex<State>,
    /// The writer task has something to do.
    work: Notify,
    /// Room came free in `out` (or writing failed).
    room: Notify,
}

struct State {
    conn: ServerConnection,
    /// Encrypted bytes for the writer task.
    out: Vec<u8>,
    /// Bytes the writer task is writing now.
    writing: usize,
    /// Why writing failed, once it has.
    failed: Option<io::ErrorKind>,
    /// Where the connection's close stands (`shutdown_write`).
    close: Close,
    /// The connection was dropped: the writer finishes and stops.
    dropped: bool,
}

/// A TLS connection's orderly close: asked for, its close_notify queued
/// after everything written before, then the socket's write side shut once
/// that has gone. The writer task takes each step ([`write_out`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Open,
    Asked,
    Notified,
    Shut,
}

impl State {
    /// Moves the records rustls has ready into `out`.
    fn collect(&mut self) {
        collect(&mut self.conn, &mut self.out);
    }

    fn queued(&self) -> usize {
        self.out.len() + self.writing
    }

    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "the TLS connection's writes failed")),
            None => Ok(()),
        }
    }

    /// Encrypts up to `room` bytes of `parts`; how many it took.
    fn take<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a [u8]>,
        mut room: usize,
    ) -> io::Result<usize> {
        let mut taken = 0;
        for part in parts {
            let mut at = 0;
            while at < part.len() && room > 0 {
                let n = (part.len() - at).min(PLAIN_CHUNK).min(room);
                let wrote = self.conn.writer().write(&part[at..at + n])?;
                at += wrote;
                taken += wrote;
                room -= wrote;
                if wrote == 0 {
                    return Ok(taken);
                }
            }
            if at < part.len() {
                break;
            }
        }
        self.collect();
        Ok(taken)
    }
}

impl TlsSocket {
    fn new(raw: Socket, mut conn: ServerConnection) -> TlsSocket {
        // What is written is bounded here (OUT_LIMIT), not by rustls.
        conn.set_buffer_limit(None);
        let shared = Arc::new(Shared {
            raw,
            state: Mutex::new(State {
                conn,
                out: Vec::new(),
                writing: 0,
                failed: None,
                close: Close::Open,
                dropped: false,
            }),
            work: Notify::new(),
            room: Notify::new(),
        });
        tokio::spawn(write_out(shared.clone()));
        // Tickets and the like the handshake left queued.
        shared.work.notify_one();
        TlsSocket {
            shared,
            input: tokio::sync::Mutex::new(Vec::with_capacity(RAW_CHUNK)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// The name the client asked for (SNI), if it gave one.
    pub fn server_name(&self) -> Option<String> {
        self.state().conn.server_name().map(str::to_string)
    }

    /// Reads what is there (at least one byte, or 0 at the end) into the
    /// spare room of `buf`, up to `want` bytes.
    pub async fn read_into(&self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        let room = want.clamp(1, PLAIN_CHUNK);
        let mut input = self.input.lock().await;
        loop {
            {
                let mut state = self.state();
                let len = buf.len();
                buf.resize(len + room, 0);
                let read = state.conn.reader().read(&mut buf[len..]);
                let got = match &read {
                    Ok(n) => *n,
                    Err(_) => 0,
                };
                buf.truncate(len + got);
                match read {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // Closed without a close_notify, as many clients do.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if !input.is_empty() {
                    self.feed(&mut state, &mut input)?;
                    continue;
                }
            }
            let n = self.shared.raw.read_into(&mut input, RAW_CHUNK).await?;
            if n == 0 {
                // The end: rustls says whether it was a clean one.
                let mut state = self.state();
                let _ = state.conn.read_tls(&mut io::empty());
                if let Err(e) = state.conn.process_new_packets() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
    }

    /// Gives rustls what it takes of `input`.
    fn feed(&self, state: &mut State, input: &mut Vec<u8>) -> io::Result<()> {
        let mut rd = &input[..];
        let result = state.conn.read_tls(&mut rd);
        let used = input.len() - rd.len();
        input.drain(..used);
        if result? == 0 {
            // rustls took nothing though it has no plaintext to give.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input stalled",
            ));
        }
        let processed = state.conn.process_new_packets();
        if state.conn.wants_write() {
            // An alert, a key update's answer: the writer sends it.
            state.collect();
            self.shared.work.notify_one();
        }
        processed
            .map(drop)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes all of `parts`, in order: returns once they are encrypted and
    /// queued for the socket, waiting while too much is queued.
    pub async fn write_parts<'a, I>(&self, parts: I) -> io::Result<()>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        for part in parts {
            let mut at = 0;
            while at < part.len() {
                let room = self.wait_room().await?;
                let mut state = self.state();
                at += state.take(std::iter::once(&part[at..]), room)?;
                drop(state);
                self.shared.work.notify_one();
            }
        }
        Ok(())
    }

    pub async fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.write_parts(parts.iter().copied()).await
    }

    /// Takes what fits of `parts` now, without waiting; how many bytes.
    pub fn try_write_parts<'a, I>(&self, parts: I) -> io::Result<usize>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let mut state = self.state();
        state.check()?;
        let room = OUT_LIMIT.saturating_sub(state.queued());
        if room == 0 {
            return Ok(0);
        }
        let taken = state.take(parts, room)?;
        drop(state);
        self.shared.work.notify_one();
        Ok(taken)
    }

    /// Waits until more bytes may be written.
    pub async fn wait_writable(&self) -> io::Result<()> {
        self.wait_room().await.map(drop)
    }

    /// Waits until fewer than [`OUT_LIMIT`] bytes are queued; how much room.
    async fn wait_room(&self) -> io::Result<usize> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let state = self.state();
                state.check()?;
                if state.queued() < OUT_LIMIT {
                    return Ok(OUT_LIMIT - state.queued());
                }
            }
            room.await;
        }
    }

    /// Waits until the client has closed its end (see [`Socket::closed`]).
    pub async fn closed(&self) {
        self.shared.raw.closed().await
    }

    /// Reads and drops what the client still sends (see [`Socket::drain`]).
    pub async fn drain(&self, idle: Duration, limit: Duration, max: usize) {
        self.shared.raw.drain(idle, limit, max).await
    }

    /// Sends a close_notify after what is queued, then closes the write side.
    pub fn shutdown_write(&self) {
        let mut state = self.state();
        if state.close == Close::Open {
            state.close = Close::Asked;
        }
        drop(state);
        self.shared.work.notify_one();
    }
}

impl Drop for TlsSocket {
    fn drop(&mut self) {
        self.state().dropped = true;
        self.shared.work.notify_one();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer task: sends what is queued, in order, until the connection
/// is dropped (then for at most [`LINGER`] more) or a write fails.
async fn write_out(shared: Arc<Shared>) {
    let mut spare = Vec::new();
    let mut linger: Option<Instant> = None;
    loop {
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let chunk = {
            let mut state = shared.state();
            state.collect();
            if state.out.is_empty() {
                // All that came before the close has gone: its next step.
                match state.close {
                    Close::Asked => {
                        state.conn.send_close_notify();
                        state.collect();
                        state.close = Close::Notified;
                    }
                    Close::Notified => {
                        shared.raw.shutdown_write();
                        state.close = Close::Shut;
                    }
                    Close::Open | Close::Shut => {}
                }
            }
            if state.out.is_empty() {
                if state.dropped {
                    return;
                }
                None
            } else {
                if state.dropped && linger.is_none() {
                    linger = Some(Instant::now() + LINGER);
                }
                let chunk = std::mem::replace(&mut state.out, std::mem::take(&mut spare));
                state.writing = chunk.len();
                Some(chunk)
            }
        };
        let Some(mut chunk) = chunk else {
            work.await;
            continue;
        };
        let parts: [&[u8]; 1] = [&chunk];
        let write = shared.raw.write_all(&parts);
        let wrote = match linger {
            Some(until) => tokio::time::timeout_at(until, write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        {
            let mut state = shared.state();
            state.writing = 0;
            if let Err(e) = &wrote {
                state.failed = Some(e.kind());
            }
        }
        shared.room.notify_waiters();
        if wrote.is_err() {
            return;
        }
        chunk.clear();
        spare = chunk;
    }
}
