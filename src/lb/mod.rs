//! The load balancer role (docs/DESIGN.md §5): the public HTTP server, the control
//! socket, and the scheduling of requests onto workers.
//!
//! - [`pool`]: the scheduling core (LIFO idle stack, FIFO queue, deadlines).
//! - [`backlog`]: what a slow client has not taken yet of a response.
//! - [`balancer`]: the async layer around it (waiting, leases).
//! - [`client`]: one client connection, request after request.
//! - [`proxy`]: one request through the LB, to a worker and back.
//! - [`http1`]: request and response heads (no I/O).
//! - [`chunked`]: the chunked coding, decoded strictly (no I/O).
//! - [`body`]: which bytes belong to a body, and what goes on (no I/O).
//! - [`spool`]: request bodies held until a worker takes them.
//! - [`upstream`]: the kept-alive connections to worker sockets.
//! - [`io`]: sockets registered for read readiness only.
//! - [`control`]: the join/quit server on the control socket.
//! - [`access_log`]: the access log writer.

pub mod access_log;
pub mod backlog;
pub mod balancer;
pub mod body;
pub mod chunked;
pub mod client;
pub mod conn;
pub mod control;
pub mod exchange;
pub mod forwarded;
pub mod http1;
pub mod io;
mod memory;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod spool;
pub mod tls;
pub mod upstream;

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::link::{self, LinkMsg};
use crate::listeners::Fds;
use crate::paths::{remove_ours, Owned};
use crate::Failure;

use access_log::AccessLog;
use balancer::Balancer;
use client::OwnRoute;
use conn::Conn;
use http1::RequestHead;
use proxy::Proxy;

/// Where `--status-bind`'s listener answers the status when
/// `--status-path` gives none.
pub const DEFAULT_STATUS_PATH: &str = "/status";

pub fn run(config: Config, fds: Fds, link_fd: RawFd) -> Result<(), Failure> {
    let descriptors = raise_open_files_limit();
    // One thread by default: on 2 cores shared with the apps (and a load
    // generator), a second runtime thread costs more in cross-thread
    // wake-ups than it gains (measured: c=64 at 1.21× HAProxy with one thread, 1.11× with two; README "Performance").
    let mut builder = if config.lb_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.lb_threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))?;
    // Past this many clients the LB stops accepting (the rest wait in the
    // kernel's backlog) rather than run out of descriptors it needs itself.
    let max_clients = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
    runtime.block_on(serve(config, fds, link_fd, max_clients))
}

/// Thousands of client connections need thousands of descriptors: take the
/// whole hard limit. Returns the limit in force.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Descriptors kept free of client connections: for the connections to the
/// workers, the control socket, the link and the log.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Everything a public request may touch.
struct Lb {
    proxy: Proxy,
    timeouts: client::Timeouts,
    /// Forward request header names with underscores.
    underscore_headers: bool,
    /// Peers whose forwarding fields are kept.
    trusted_proxies: crate::flags::TrustedProxies,
    /// Where the LB answers its status and `ok` itself (None: the app).
    status_path: Option<String>,
    health_path: Option<String>,
    /// The status is answered on its own listener (`--status-bind`), not
    /// on the public one.
    status_apart: bool,
    app: String,
    /// `--redirect-http`: the HTTPS port plain requests are sent to.
    redirect_https: Option<u16>,
    /// `--hsts`, for HTTPS clients.
    hsts: proxy::Hsts,
    /// `{"http": <port>, "https": <port>}`, for `/status`.
    ports: serde_json::Value,
    workers: usize,
    started: Instant,
    /// True from SIGTERM on: connections close after their exchange, and
    /// the health route answers `503` while what is in flight and queued
    /// finishes (a readiness probe takes us out).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Open client connections.
    connections: memory::Connections,
    /// The manager's last `Stats` (for the metrics).
    from_manager: std::sync::Mutex<Option<(crate::link::Replaced, Vec<crate::link::WorkerStat>)>>,
}

async fn serve(
    config: Config,
    fds: Fds,
    link_fd: RawFd,
    max_clients: usize,
) -> Result<(), Failure> {
    // First, so that a signal from the manager never finds the default
    // action (which would end the LB).
    let signal_failure = |e| Failure::fatal(format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_failure)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_failure)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(signal_failure)?;
    if let Some(path) = &config.access_log_file {
        access_log::write_to(path).map_err(Failure::fatal)?;
    }
    let listen = |fd: RawFd| {
        // SAFETY: the manager passed these descriptors to this process alone.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        io::Listener::new(listener)
            .map_err(|e| Failure::fatal(format!("bad listener fd {fd}: {e}")))
    };
    let listener = fds.http.map(listen).transpose()?;
    // SIGHUP (sent on by the manager) rereads the certificates.
    let (reread, _) = tokio::sync::watch::channel(0u64);
    let https = match (fds.https, &config.https) {
        (Some(fd), Some(https)) => {
            let pairs: Vec<_> = std::iter::once(&https.pair)
                .chain(&https.more)
                .cloned()
                .collect();
            let (tls, certs) = tls::server_config(&pairs).map_err(Failure::fatal)?;
            // Renewed files are served without a restart.
            for (i, pair) in pairs.into_iter().enumerate() {
                tokio::spawn(tls::watch(certs.clone(), i, pair, reread.subscribe()));
            }
            Some((listen(fd)?, tls))
        }
        _ => None,
    };
    let status_listener = fds.status.map(listen).transpose()?;
    let metrics_listener = fds.metrics.map(listen).transpose()?;
    // SAFETY: as above.
    let (mut from_manager, mut to_manager) = unsafe { link::from_raw_fd(link_fd) }
        .map_err(|e| Failure::fatal(format!("bad link fd {link_fd}: {e}")))?;

    let (manager_tx, mut manager_rx) = mpsc::unbounded_channel::<LinkMsg>();
    tokio::spawn(async move {
        while let Some(msg) = manager_rx.recv().await {
            if to_manager.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let pool = pool::Pool::new(config.max_queue, config.max_requests)
        .with_expected(config.workers)
        .with_jitter(config.max_requests_jitter, seed);
    let balancer = Arc::new(Balancer::new(
        pool,
        config.queue_timeout,
        manager_tx.clone(),
    ));
    let log = AccessLog::start(config.access_log, &config.app.name);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lb = Arc::new(Lb {
        proxy: Proxy {
            balancer: balancer.clone(),
            log: log.clone(),
            read_timeout: config.read_timeout,
            max_body: config.max_body,
            max_attempts: config.workers + 1,
            spools: spool::Spools::new(
                config.paths.dir().to_path_buf(),
                config.body_buffer as usize,
                config.buffer_memory,
                config.buffer_disk,
            ),
            request_buffering: config.request_buffering,
            response_buffering: config.response_buffering,
            body_timeout: config.body_timeout,
            min_body_rate: config.min_body_rate,
            app_idle_timeout: config.app_idle_timeout,
            send_timeout: config.send_timeout,
            failing: proxy::Failing::default(),
            tunnels: proxy::Tunnels::new(
                config
                    .max_tunnels
                    .unwrap_or_else(|| config.workers.saturating_sub(1).max(1)),
            ),
        },
        timeouts: client::Timeouts {
            idle: config.idle_timeout,
            header: config.header_timeout,
        },
        underscore_headers: config.underscore_headers,
        trusted_proxies: config.trusted_proxies.clone(),
        status_path: config.status_path.clone(),
        health_path: config.health_path.clone(),
        status_apart: config.status_bind.is_some(),
        app: config.app.name.clone(),
        ports: ports(&config),
        redirect_https: config
            .https
            .as_ref()
            .filter(|_| config.redirect_http)
            .map(|h| h.port),
        hsts: config.hsts.map(proxy::Hsts::new).unwrap_or_default(),
        workers: config.workers,
        started: Instant::now(),
        stopping: stop.clone(),
        connections: memory::Connections::default(),
        from_manager: Default::default(),
    });

    let ctl_path = config.paths.ctl();
    let ctl = bind_control(&ctl_path)?;
    tokio::spawn(control::serve(
        ctl,
        Arc::new(control::Control {
            balancer: balancer.clone(),
            drain_limit: config.shutdown_timeout,
            paths: config.paths.clone(),
            manager: manager_tx,
            expected: config.workers,
        }),
    ));

    let (manager_gone_tx, mut manager_gone) = tokio::sync::oneshot::channel::<()>();
    let link_balancer = balancer.clone();
    let link_lb = lb.clone();
    tokio::spawn(async move {
        while let Some(msg) = from_manager.next().await {
            match msg {
                LinkMsg::Dead { id } => link_balancer.leave(id),
                LinkMsg::Failing { error } => link_lb.proxy.failing.set(error),
                LinkMsg::Stats { replaced, workers } => {
                    *link_lb
                        .from_manager
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some((replaced, workers));
                }
                LinkMsg::Rejoin {
                    id,
                    socket,
                    version,
                    ..
                } => {
                    if let Err(conflict) = link_balancer.join(id, &socket, version) {
                        tracing::warn!(
                            "cannot restore worker {id} at {}: {conflict}",
                            socket.display()
                        );
                    }
                }
                _ => {}
            }
        }
        let _ = manager_gone_tx.send(());
    });

    let memory = lb.connections.clone();
    tokio::spawn(memory.clone().trim_after_bursts());
    tokio::spawn(balancer.clone().wake_spent());
    if let Some(status_listener) = status_listener {
        let on = client::Listener::Status;
        tokio::spawn(serve_own(status_listener, lb.clone(), stop.clone(), on));
    }
    if let Some(metrics_listener) = metrics_listener {
        let on = client::Listener::Metrics;
        tokio::spawn(serve_own(metrics_listener, lb.clone(), stop.clone(), on));
    }
    loop {
        tokio::select! {
            (accepted, tls) = async {
                memory.room_for(max_clients).await;
                tokio::select! {
                    accepted = accept(listener.as_ref()) => (accepted, None),
                    accepted = accept(https.as_ref().map(|(l, _)| l)) => {
                        (accepted, https.as_ref().map(|(_, c)| c.clone()))
                    }
                }
            } => {
                let (stream, peer, local) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: wait a moment rather than spin.
                        warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let open = memory.open();
                let (lb, stop) = (lb.clone(), stop.clone());
                tokio::spawn(async move {
                    let conn = match tls {
                        None => stream.into(),
                        Some(tls) => {
                            let deadline = Instant::now() + lb.timeouts.header;
                            match tls::accept(stream, tls, deadline).await {
                                Ok(tls) => Conn::tls(tls),
                                Err(refused) => {
                                    tracing::debug!("TLS handshake with {peer}: {refused:?}");
                                    return;
                                }
                            }
                        }
                    };
                    client::serve(lb, conn, peer, local, stop, client::Listener::Public).await;
                    drop(open);
                });
            }
            _ = term.recv() => break,
            _ = usr1.recv() => {
                // logrotate moved the file away: write to a new one.
                // Lines still buffered go to the new file.
                if let Some(path) = &config.access_log_file {
                    match access_log::write_to(path) {
                        Ok(()) => info!("SIGUSR1: reopened the access log {}", path.display()),
                        Err(why) => warn!("SIGUSR1: {why}; writing on to the old file"),
                    }
                }
            }
            _ = hup.recv() => {
                if https.is_some() {
                    info!("SIGHUP: rereading the certificates");
                    reread.send_modify(|n| *n += 1);
                }
            }
            _ = &mut manager_gone => {
                error!("the manager is gone; stopping");
                break;
            }
        }
    }
    // Stop accepting; finish what is in flight and queued, close the idle.
    // The status listener answers until the end: the health route `503`.
    let _ = stop_tx.send(true);
    drop(listener);
    drop(https);
    if !memory.wait_closed(config.shutdown_timeout).await {
        warn!("requests still in flight after the shutdown timeout; closing them");
    }
    log.flush();
    if let Err(why) = remove_ours(&ctl_path, Owned::Socket) {
        warn!("{why}");
    }
    Ok(())
}

/// The ports the server listens on, by protocol.
fn ports(config: &Config) -> serde_json::Value {
    let mut ports = serde_json::Map::new();
    if let Some(port) = config.port {
        ports.insert("http".into(), port.into());
    }
    if let Some(https) = &config.https {
        ports.insert("https".into(), https.port.into());
    }
    ports.into()
}

/// The next connection on `listener`; never, if there is none.
async fn accept(
    listener: Option<&io::Listener>,
) -> std::io::Result<(io::Socket, std::net::SocketAddr, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A listener of the LB's own (`--status-bind`, `--metrics`): its routes
/// and nothing else, a few connections at a time, until the LB exits
/// (while it drains too, when the health route says `503`).
async fn serve_own(
    listener: io::Listener,
    lb: Arc<Lb>,
    stop: tokio::sync::watch::Receiver<bool>,
    on: client::Listener,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(STATUS_CONNECTIONS));
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer, local)) => {
                let (lb, mut stop) = (lb.clone(), stop.clone());
                // A stop already under way must not end this connection
                // before its request is read (it is then closed after it).
                stop.borrow_and_update();
                tokio::spawn(async move {
                    client::serve(lb, stream.into(), peer, local, stop, on).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("accept on the {on:?} listener: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connections a listener of the LB's own serves at once.
const STATUS_CONNECTIONS: usize = 16;

fn bind_control(path: &std::path::Path) -> Result<UnixListener, Failure> {
    remove_ours(path, Owned::Socket).map_err(Failure::Fatal)?;
    let listener = UnixListener::bind(path).map_err(|e| {
        Failure::fatal(format!(
            "cannot bind control socket {}: {e}",
            path.display()
        ))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        Failure::fatal(format!(
            "cannot restrict control socket {}: {e}",
            path.display()
        ))
    })?;
    Ok(listener)
}

impl Lb {
    /// The LB's own routes: `GET` (and `HEAD`) of `--health-path`
    /// (`/server`) and `--status-path` (`/status`), either of which may be
    /// `none` (left to the app). With `--status-bind` the status is only on
    /// its own listener (at `/status` if the path is `none`), which answers
    /// nothing else (`404`). With `--redirect-http`, every other request on
    /// the public HTTP port is answered `308` to the HTTPS port.
    fn route(
        &self,
        head: &RequestHead,
        client: &proxy::Client,
        on: client::Listener,
    ) -> Option<OwnRoute> {
        let buf = &client.buf;
        let path = head.path(buf);
        let is = |route: Option<&str>| route == Some(path);
        let status_path = match on {
            client::Listener::Public if self.status_apart => None,
            client::Listener::Public => self.status_path.as_deref(),
            client::Listener::Status => {
                Some(self.status_path.as_deref().unwrap_or(DEFAULT_STATUS_PATH))
            }
            client::Listener::Metrics => None,
        };
        let get = matches!(head.method, Method::GET | Method::HEAD);
        let redirect = self
            .redirect_https
            .filter(|_| on == client::Listener::Public && !client.https());
        match () {
            _ if on == client::Listener::Metrics && get && path == "/metrics" => Some(
                OwnRoute::ok("text/plain; version=0.0.4; charset=utf-8", self.metrics()),
            ),
            _ if on == client::Listener::Metrics => Some(OwnRoute::not_found()),
            _ if get && is(self.health_path.as_deref()) => Some(if self.draining() {
                OwnRoute::new(
                    503,
                    "Service Unavailable",
                    "text/plain",
                    b"draining".to_vec(),
                )
            } else {
                OwnRoute::ok("text/plain", b"ok".to_vec())
            }),
            _ if redirect.is_some() => {
                let port = redirect?;
                let location = self.redirect(head, buf, &client.host, port);
                Some(OwnRoute {
                    extra: format!("location: {location}\r\n").into_bytes(),
                    ..OwnRoute::new(308, "Permanent Redirect", "text/plain", Vec::new())
                })
            }
            _ if get && is(status_path) => Some(OwnRoute::ok("application/json", self.status())),
            _ if on == client::Listener::Status => Some(OwnRoute::not_found()),
            _ => None,
        }
    }

    /// Where `--redirect-http` sends a plain request: the same host (the
    /// one it asked for, else the address it reached) and target on the
    /// HTTPS port.
    fn redirect(&self, head: &RequestHead, buf: &[u8], reached: &str, port: u16) -> String {
        let asked = head
            .host
            .clone()
            .and_then(|r| std::str::from_utf8(&buf[r]).ok())
            .unwrap_or(reached);
        let host = match asked.strip_prefix('[') {
            // An IPv6 literal keeps its brackets.
            Some(rest) => rest
                .split_once(']')
                .map_or(asked, |(ip, _)| &asked[..ip.len() + 2]),
            None => asked.rsplit_once(':').map_or(asked, |(host, _)| host),
        };
        let target = match head.target(buf) {
            "" => "/",
            target => target,
        };
        if port == 443 {
            format!("https://{host}{target}")
        } else {
            format!("https://{host}:{port}{target}")
        }
    }

    /// `--metrics`: the counters, and what is read now.
    fn metrics(&self) -> Vec<u8> {
        let stats = self.proxy.balancer.stats();
        let gauges = metrics::Gauges {
            start_time: (std::time::SystemTime::now() - self.started.elapsed())
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            queue: stats.queued,
            expected: self.workers,
            joined: stats.workers,
            idle: stats.idle,
            busy: stats.busy,
            spent: stats.spent,
            connections: self.connections.count(),
            rss_bytes: metrics::rss_bytes(),
            descriptors: metrics::descriptors(),
            draining: self.draining(),
        };
        let mut text = metrics::METRICS.render(&gauges);
        let from_manager = self.from_manager.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((replaced, workers)) = from_manager.as_ref() {
            let rows = self.proxy.balancer.workers();
            let served = |id: u32| rows.iter().find(|r| r.id == id).map(|r| r.served);
            metrics::render_workers(&mut text, replaced, workers, &served);
        }
        text.into_bytes()
    }

    fn draining(&self) -> bool {
        *self.stopping.borrow()
    }

    fn status(&self) -> Vec<u8> {
        let stats = self.proxy.balancer.stats();
        let healthy = stats.workers >= self.workers;
        let error = self.proxy.failing.error().filter(|_| stats.workers == 0);
        let status = match (&error, healthy) {
            _ if self.draining() => "draining",
            (Some(_), _) => "failing",
            (None, true) => "healthy",
            (None, false) => "degraded",
        };
        let mut body = serde_json::json!({
            "status": status,
            "app": self.app,
            "workers": stats.workers,
            "expected": self.workers,
            "missing": self.workers.saturating_sub(stats.workers),
            "idle": stats.idle,
            "busy": stats.busy,
            "queued": stats.queued,
            "ports": self.ports,
            "uptime": self.started.elapsed().as_secs(),
        });
        if let Some(error) = error {
            body["error"] = error.into();
        }
        body.to_string().into_bytes()
    }
}

/// A property-test runner for the LB's model tests: `cases` cases, or
/// `PROPTEST_CASES` of them; nothing persisted.
#[cfg(test)]
fn model_runner(cases: u32) -> proptest::test_runner::TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}
