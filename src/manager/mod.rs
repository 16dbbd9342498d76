//! The manager role: supervises one load balancer and N workers (docs/DESIGN.md §3, §8).
//!
//! It owns the public listener (inherited from the front) and hands it to
//! each LB it starts, with one end of a private socketpair ([`crate::link`]).
//! Supervision reconciles what is wanted (N workers) against what is alive:
//! a crashed worker is replaced after an exponential backoff; a worker the
//! LB retires (request budget, abandoned request) or a rolling restart
//! replaces gets its replacement at once, and is stopped only after the
//! replacement has joined. SIGTERM/SIGINT stop everything in order: the LB
//! drains first (the workers still serve), then the workers, then the
//! sockets and pid file are removed.

mod supervisor;
pub mod watch;

use std::os::fd::RawFd;

use crate::config::Config;
use crate::listeners::{Fds, Listeners};
use crate::paths::PidFile;
use crate::Failure;

pub use supervisor::Backoff;

pub fn run(config: Config, fds: Fds, pid_fd: RawFd) -> Result<(), Failure> {
    // SAFETY: the front passed the locked pid file across exec as `pid_fd`.
    let pid_file = unsafe { PidFile::inherit(pid_fd, &config.paths.pid()) }
        .map_err(|e| Failure::fatal(format!("bad pid file fd {pid_fd}: {e}")))?;
    // SAFETY: the front passed these listening sockets across exec; nothing
    // else in this process owns them.
    let listeners = unsafe { Listeners::adopt(fds) };
    // Keep them for LB restarts, but out of the workers and apps.
    listeners
        .set_cloexec(true)
        .map_err(|e| Failure::fatal(format!("bad listener fds {fds:?}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        supervisor::Supervisor::start(config, listeners, pid_file)?
            .run()
            .await
    })
}
