//! What a service tells systemd, and what systemd hands a service:
//! readiness and state notifications (datagrams to `$NOTIFY_SOCKET`, as
//! `sd_notify(3)` sends them), the watchdog (`$WATCHDOG_USEC`,
//! `$WATCHDOG_PID`), and socket activation (`sd_listen_fds(3)`: listeners
//! from descriptor 3 on, counted by `$LISTEN_FDS`, named by
//! `$LISTEN_FDNAMES`, meant for `$LISTEN_PID`).
//!
//! The front takes the listeners and execs into the manager in place, so
//! the process systemd started — its main pid — is the one that notifies.
//! No child sees these variables ([`VARIABLES`], removed by
//! `spawn::supervised`): an app must not tell systemd we are ready.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment of the protocol, which children do not inherit.
pub const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Where notifications go; None outside systemd (no `$NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment (`get` reads a variable) of process `pid`. A
    /// socket it cannot use is an error; none is None.
    pub fn from_env(
        get: &dyn Fn(&str) -> Option<String>,
        pid: u32,
    ) -> Result<Option<Notifier>, String> {
        let Some(path) = get("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None if path.starts_with('/') => SocketAddr::from_pathname(&path),
            None => return Err(format!("NOTIFY_SOCKET={path}: not a unix socket path")),
        }
        .map_err(|e| format!("NOTIFY_SOCKET={path}: {e}"))?;
        let socket = UnixDatagram::unbound().map_err(|e| format!("cannot notify systemd: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("cannot notify systemd: {e}"))?;
        Ok(Some(Notifier {
            socket,
            to,
            watchdog: watchdog(get, pid)?,
        }))
    }

    /// Sends `state` (`KEY=value` lines). A lost notification is logged,
    /// never waited for.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!("cannot notify systemd ({}): {e}", state.replace('\n', " "));
        }
    }

    /// How often `WATCHDOG=1` is due: half the watchdog's timeout, as
    /// `sd_watchdog_enabled(3)` advises; None when there is no watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }
}

/// `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is absent or `pid`.
fn watchdog(get: &dyn Fn(&str) -> Option<String>, pid: u32) -> Result<Option<Duration>, String> {
    let Some(usec) = get("WATCHDOG_USEC") else {
        return Ok(None);
    };
    if get("WATCHDOG_PID").is_some_and(|p| p.parse() != Ok(pid)) {
        return Ok(None);
    }
    match usec.parse::<u64>() {
        Ok(usec) if usec > 0 => Ok(Some(Duration::from_micros(usec))),
        _ => Err(format!(
            "WATCHDOG_USEC={usec}: not a number of microseconds"
        )),
    }
}

/// `RELOADING=1` with the time it started, as systemd (≥ 253) wants it.
pub fn reloading() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Listeners systemd passed (socket activation): the one named `https`,
/// and the HTTP one (named `http`, or the one whatever its name).
#[derive(Debug, Default)]
pub struct Activated {
    pub http: Option<OwnedFd>,
    pub https: Option<OwnedFd>,
}

/// The first descriptor systemd passes.
const FIRST_FD: RawFd = 3;

/// The listeners passed to process `pid`, if any were (`$LISTEN_PID` is
/// `pid`). Each must be a listening stream socket; their names sort them
/// (`FileDescriptorName=` in the `.socket`: `http`, `https`).
pub fn listeners(get: &dyn Fn(&str) -> Option<String>, pid: u32) -> Result<Activated, String> {
    if get("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) != Some(pid) {
        return Ok(Activated::default());
    }
    let count = get("LISTEN_FDS").unwrap_or_default();
    let count: i32 = count
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count}: not a number"))?;
    let names = get("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let mut activated = Activated::default();
    for i in 0..count {
        let fd = FIRST_FD + i;
        // SAFETY: by the protocol, descriptors 3 to 3 + LISTEN_FDS - 1 are
        // open and meant for this process, which has not touched them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.get(i as usize).copied().unwrap_or("");
        check_listening(&owned)
            .map_err(|why| format!("socket activation: descriptor {fd} ({name}) {why}"))?;
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| format!("socket activation: descriptor {fd}: {e}"))?;
        let slot = match name {
            "https" => &mut activated.https,
            _ => &mut activated.http,
        };
        if slot.is_some() {
            return Err(format!(
                "socket activation passed {count} sockets; name them http and https (FileDescriptorName=)"
            ));
        }
        *slot = Some(owned);
    }
    Ok(activated)
}

fn check_listening(fd: &OwnedFd) -> Result<(), &'static str> {
    use nix::sys::socket::{getsockopt, sockopt};
    match getsockopt(fd, sockopt::SockType) {
        Ok(nix::sys::socket::SockType::Stream) => {}
        Ok(_) => return Err("is not a stream socket"),
        Err(_) => return Err("is not a socket"),
    }
    match getsockopt(fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        _ => Err("is not listening"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_watchdog_is_ours_only_when_its_pid_is_ours_or_unset() {
        let half = |vars: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let _listening = UnixDatagram::bind(&path).unwrap();
            let path = path.to_str().unwrap().to_string();
            let mut all = vec![("NOTIFY_SOCKET", path.as_str())];
            all.extend_from_slice(vars);
            Notifier::from_env(&env(&all), 42).map(|n| n.unwrap().watchdog_every())
        };
        assert_eq!(half(&[]), Ok(None));
        assert_eq!(
            half(&[("WATCHDOG_USEC", "3000000")]),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            half(&[("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "42")]),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            half(&[("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "43")]),
            Ok(None)
        );
        assert!(half(&[("WATCHDOG_USEC", "soon")]).is_err());
    }

    #[test]
    fn notifications_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listening = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_env(&env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]), 1)
            .unwrap()
            .unwrap();
        notifier.send("READY=1\nSTATUS=ok");
        let mut buf = [0; 64];
        let n = listening.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("rip-server-test-{}", std::process::id());
        let listening =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let at = format!("@{name}");
        let notifier = Notifier::from_env(&env(&[("NOTIFY_SOCKET", &at)]), 1)
            .unwrap()
            .unwrap();
        notifier.send("STOPPING=1");
        let n = listening.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(Notifier::from_env(&env(&[]), 1).unwrap().is_none());
        assert!(Notifier::from_env(&env(&[("NOTIFY_SOCKET", "vsock:2:9")]), 1).is_err());
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let before = monotonic_usec();
        let line = reloading();
        let usec: u64 = line
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= monotonic_usec());
    }

    #[test]
    fn listeners_meant_for_another_process_are_not_taken() {
        let vars = [("LISTEN_PID", "7"), ("LISTEN_FDS", "1")];
        let got = listeners(&env(&vars), 8).unwrap();
        assert!(got.http.is_none() && got.https.is_none());
    }
}
