//! How one process starts another.
//!
//! Roles are the same binary re-executed (`/proc/self/exe`, shown as
//! `rip-server <role> ...` in `ps`) with the argv [`crate::cli::role_args`]
//! builds. Every child — roles and apps alike — gets its own process group,
//! so a terminal's Ctrl-C reaches only the manager, which stops everything
//! in order; dies with its parent (`PR_SET_PDEATHSIG`), so no process
//! outlives a killed manager; and inherits only the descriptors named.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpid, getppid, setpgid, Pid};

use crate::cli;
use crate::config::Config;

/// A command that starts this binary in `role` (e.g. `["lb"]`) with
/// `config`, inheriting the descriptors in `keep`.
pub fn role(role: &[String], config: &Config, keep: &[RawFd]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0("rip-server")
        .args(cli::role_args(role, config));
    supervised(&mut command, keep);
    command
}

/// Sets up `command` as a supervised child: own process group, killed when
/// this process dies, inheriting `keep` (and stdio) but nothing else.
pub fn supervised(command: &mut tokio::process::Command, keep: &[RawFd]) {
    let parent = getpid();
    let keep = keep.to_vec();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (setpgid, prctl, getppid, fcntl).
    unsafe {
        command.pre_exec(move || {
            setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the line above took effect.
            if getppid() != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            for &fd in &keep {
                // `fd` is open in the parent, so in this child too.
                let borrowed = BorrowedFd::borrow_raw(fd);
                fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group led by `pid` (a supervised child).
pub fn signal_group(pid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// Sends `signal` to the process `pid`.
pub fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
}

/// Marks `fd` close-on-exec, so children do not inherit it by accident.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}
