//! The front role: what `rip-server <app> ...` does before any process is
//! spawned. It checks what can be checked (the socket dir, a server already
//! running under this prefix, leftovers that are not ours), binds the public
//! port — so a taken port fails fast, with exit status 2 — and then
//! re-executes itself in place as the manager, handing over the listener.
//! The manager keeps this pid, so a shell's job control and `--stop` see one
//! process from start to finish.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

use crate::config::Config;
use crate::listeners::Listeners;
use crate::paths::{answers, remove_ours, LockError, Owned, Paths, PidFile};
use crate::{cli, Failure};

/// Connections the kernel queues for the LB to accept (capped by somaxconn).
const BACKLOG: i32 = 4096;

pub fn run(config: Config) -> Result<(), Failure> {
    prepare_socket_dir(&config.paths)?;
    // Nothing is removed, bound or started before the lock is ours.
    let pid_file = lock_pid_file(&config)?;
    // Returns only if the manager could not be started.
    let failed = become_manager(config, &pid_file);
    let _ = pid_file.remove();
    failed
}

/// Checks, binds and execs into the manager, which keeps `pid_file`.
fn become_manager(mut config: Config, pid_file: &PidFile) -> Result<(), Failure> {
    refuse_running(&config.paths)?;
    clear_leftovers(&config.paths)?;
    // A development certificate is made (or renewed) now; a bad
    // certificate fails here, before anything is bound or started.
    if let Some(https) = &config.https {
        make_dev_certificate(https)?;
        let mut served = Vec::new();
        for pair in std::iter::once(&https.pair).chain(&https.more) {
            served.push(crate::certs::load(pair).map_err(Failure::Usage)?.info);
        }
        if https.dev.is_none() {
            let files: Vec<_> = std::iter::once(&https.pair)
                .chain(&https.more)
                .map(|p| p.cert.as_path())
                .collect();
            let served: Vec<_> = files.into_iter().zip(served.iter()).collect();
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok());
            for warning in crate::certs::name_warnings(&served, host.as_deref()) {
                crate::output::STDERR.line(format!("rip-server: warning: {warning}").as_bytes());
            }
        }
    }
    if let Some(path) = &config.access_log_file {
        // Created now if missing, as the LB will; its directory must exist.
        crate::lb::access_log::open(path).map_err(Failure::Usage)?;
    }
    let mut listeners = Listeners::default();
    // Listeners systemd passed (socket activation) are used as they are.
    let env = |name: &str| std::env::var(name).ok();
    let activated = crate::systemd::listeners(&env, std::process::id()).map_err(Failure::Usage)?;
    if let Some(fd) = activated.https {
        let Some(https) = &mut config.https else {
            return Err(Failure::Usage(
                "systemd passed an https socket: serving HTTPS needs https: (and --cert/--key)"
                    .into(),
            ));
        };
        let addr = local_addr(&fd)?;
        (config.bind, https.port) = (addr.ip(), addr.port());
        listeners.https = Some(fd);
    }
    if let Some(fd) = activated.http {
        let addr = local_addr(&fd)?;
        (config.bind, config.port) = (addr.ip(), Some(addr.port()));
        listeners.http = Some(fd);
    }
    if let (Some(port), None) = (config.port, &listeners.http) {
        let http = bind_public(config.bind, port)?;
        config.port = Some(local_port(&http)?);
        listeners.http = Some(http);
    }
    if let (Some(https), None) = (&mut config.https, &listeners.https) {
        let listener = bind_public(config.bind, https.port)?;
        https.port = local_port(&listener)?;
        listeners.https = Some(listener);
    }
    if let Some(addr) = config.status_bind {
        let status = bind_public(addr.ip(), addr.port())?;
        config.status_bind = Some(SocketAddr::new(addr.ip(), local_port(&status)?));
        listeners.status = Some(status);
    }
    if let Some(addr) = config.metrics {
        let metrics = bind_public(addr.ip(), addr.port())?;
        config.metrics = Some(SocketAddr::new(addr.ip(), local_port(&metrics)?));
        listeners.metrics = Some(metrics);
    }
    // The manager inherits the listeners across exec.
    listeners
        .set_cloexec(false)
        .map_err(|e| Failure::fatal(format!("cannot pass the listeners on: {e}")))?;
    let pid_fd = pid_file
        .pass_on()
        .map_err(|e| Failure::fatal(format!("cannot pass the pid file on: {e}")))?;
    let mut role = vec!["manager".to_string(), format!("--pid-fd={pid_fd}")];
    role.extend(listeners.fds().args());
    // exec replaces the process: what it logged goes out first.
    crate::output::flush(std::time::Duration::from_millis(500));
    let err = std::process::Command::new("/proc/self/exe")
        .arg0("rip-server")
        .args(cli::role_args(&role, &config))
        .exec();
    Err(Failure::fatal(format!("cannot start the manager: {err}")))
}

/// Makes the development certificate `https:quick|ca|smart` asked for.
fn make_dev_certificate(https: &crate::config::Https) -> Result<(), Failure> {
    use crate::config::Dev;
    let say = |line: String| crate::output::STDERR.line(format!("rip-server: {line}").as_bytes());
    match &https.dev {
        None => Ok(()),
        Some(Dev::Quick) => {
            crate::certs::quick(&https.pair).map_err(Failure::Usage)?;
            say("https:quick: a self-signed certificate for localhost, for development only (browsers will warn; https:ca makes one they can trust)".into());
            Ok(())
        }
        Some(Dev::Ca(home)) => {
            let made = home.init_ca().map_err(Failure::Usage)?;
            home.issue("localhost").map_err(Failure::Usage)?;
            if made {
                say(format!(
                    "made the development CA {} (trust it once: rip-server ca:trust)",
                    home.ca().cert.display()
                ));
            }
            Ok(())
        }
    }
}

/// Creates the socket dir (mode 0700) if it is missing.
fn prepare_socket_dir(paths: &Paths) -> Result<(), Failure> {
    let dir = paths.dir();
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Failure::Usage(format!(
            "socket dir {} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Failure::Usage(format!("cannot create socket dir {}: {e}", dir.display()))
            }),
        Err(e) => Err(Failure::Usage(format!("socket dir {}: {e}", dir.display()))),
    }
}

/// One server per prefix: refuse to start while another one runs.
/// Locks the pid file (`paths::PidFile`): exit 2 naming the server that
/// holds it.
fn lock_pid_file(config: &Config) -> Result<PidFile, Failure> {
    let paths = &config.paths;
    match PidFile::lock(&paths.pid()) {
        Ok(pid_file) => Ok(pid_file),
        Err(LockError::Held(pid)) => {
            let pid = pid.map_or("?".to_string(), |p| p.to_string());
            // `--stop` with this app stops this server only (without an
            // app it would stop every server in the socket dir).
            let dir = if paths.dir() == std::path::Path::new("/tmp") {
                String::new()
            } else {
                format!(" --socket-dir={}", paths.dir().display())
            };
            Err(Failure::Usage(format!(
                "a server with socket prefix {} is already running (pid {pid}); stop it with 'rip-server --stop {}{dir}' or 'kill {pid}'",
                paths.prefix(),
                config.app.arg()
            )))
        }
        Err(LockError::Failed(why)) => Err(Failure::Usage(why)),
    }
}

fn refuse_running(paths: &Paths) -> Result<(), Failure> {
    // A server without our pid file (the original Bun server2, say) may
    // still own the control socket.
    if std::os::unix::net::UnixStream::connect(paths.ctl()).is_ok() {
        return Err(Failure::Usage(format!(
            "another server answers on {}; stop it or pick another --socket-prefix",
            paths.ctl().display()
        )));
    }
    Ok(())
}

/// Removes a crashed run's sockets and loader, refusing paths not ours.
/// (The pid file is ours: locked.)
fn clear_leftovers(paths: &Paths) -> Result<(), Failure> {
    let mut sockets = paths.worker_sockets();
    // A worker socket that answers is a live external worker's: it stays.
    sockets.retain(|path| !answers(path));
    sockets.push(paths.ctl());
    for path in sockets {
        remove_ours(&path, Owned::Socket).map_err(Failure::Usage)?;
    }
    for file in [paths.loader(), paths.quick_cert(), paths.quick_key()] {
        remove_ours(&file, Owned::File).map_err(Failure::Usage)?;
    }
    Ok(())
}

fn bind_public(ip: IpAddr, port: u16) -> Result<OwnedFd, Failure> {
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Failure::fatal(format!("cannot create a socket: {e}")))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| Failure::fatal(format!("cannot set SO_REUSEADDR: {e}")))?;
    let addr = SockaddrStorage::from(SocketAddr::new(ip, port));
    bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
        Errno::EADDRINUSE => Failure::Usage(format!("port {port} is already in use on {ip}")),
        Errno::EACCES => Failure::Usage(format!(
            "no permission to bind port {port} on {ip} (ports below 1024 need privileges)"
        )),
        Errno::EADDRNOTAVAIL => {
            Failure::Usage(format!("--bind={ip}: not an address of this machine"))
        }
        e => Failure::fatal(format!("cannot bind {ip}:{port}: {e}")),
    })?;
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog)
        .map_err(|e| Failure::fatal(format!("cannot listen on {ip}:{port}: {e}")))?;
    Ok(fd)
}

fn local_port(fd: &OwnedFd) -> Result<u16, Failure> {
    local_addr(fd).map(|addr| addr.port())
}

fn local_addr(fd: &OwnedFd) -> Result<SocketAddr, Failure> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd())
        .map_err(|e| Failure::fatal(format!("cannot read the bound address: {e}")))?;
    addr.as_sockaddr_in()
        .map(|a| SocketAddr::new(a.ip().into(), a.port()))
        .or_else(|| {
            addr.as_sockaddr_in6()
                .map(|a| SocketAddr::new(a.ip().into(), a.port()))
        })
        .ok_or_else(|| {
            Failure::Usage("a listener that is not on an IP address (TCP) cannot serve".into())
        })
}
