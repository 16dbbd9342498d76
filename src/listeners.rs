//! The listening sockets: bound by the front (a taken port fails before
//! any process starts), kept by the manager across LB restarts, served by
//! the LB. Each role gets them as inherited descriptors.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The descriptors, as a role's command line names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fds {
    /// The public HTTP port (`--listen-fd`).
    pub http: Option<RawFd>,
    /// The public HTTPS port (`--https-fd`).
    pub https: Option<RawFd>,
    /// `--status-bind` (`--status-fd`).
    pub status: Option<RawFd>,
    /// `--metrics` (`--metrics-fd`).
    pub metrics: Option<RawFd>,
}

impl Fds {
    /// The role flags that pass these on.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, fd) in [
            ("--listen-fd", self.http),
            ("--https-fd", self.https),
            ("--status-fd", self.status),
            ("--metrics-fd", self.metrics),
        ] {
            if let Some(fd) = fd {
                args.push(format!("{flag}={fd}"));
            }
        }
        args
    }

    pub fn all(&self) -> Vec<RawFd> {
        [self.http, self.https, self.status, self.metrics]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The listeners a process owns.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<OwnedFd>,
    pub https: Option<OwnedFd>,
    pub status: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
}

impl Listeners {
    /// Takes ownership of inherited descriptors.
    ///
    /// # Safety
    /// Each descriptor in `fds` must be open and owned by nothing else in
    /// this process.
    pub unsafe fn adopt(fds: Fds) -> Listeners {
        // SAFETY: as the caller promises.
        let own = |fd: Option<RawFd>| fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        Listeners {
            http: own(fds.http),
            https: own(fds.https),
            status: own(fds.status),
            metrics: own(fds.metrics),
        }
    }

    pub fn fds(&self) -> Fds {
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map(|fd| fd.as_raw_fd());
        Fds {
            http: raw(&self.http),
            https: raw(&self.https),
            status: raw(&self.status),
            metrics: raw(&self.metrics),
        }
    }

    /// Sets or clears close-on-exec on each: kept across the exec into the
    /// manager, kept out of the workers and apps.
    pub fn set_cloexec(&self, on: bool) -> nix::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let flag = if on {
            FdFlag::FD_CLOEXEC
        } else {
            FdFlag::empty()
        };
        for fd in [&self.http, &self.https, &self.status, &self.metrics]
            .into_iter()
            .flatten()
        {
            fcntl(fd.as_fd(), FcntlArg::F_SETFD(flag))?;
        }
        Ok(())
    }
}
