//! How one process starts another.
//!
//! Roles are the same binary re-executed (`/proc/self/exe`, shown as
//! `rip-server <role> ...` in `ps`) with the argv `cli::role_args` builds
//! (the caller's: this module knows no settings). Every child — roles and apps alike — gets its own process group,
//! so a terminal's Ctrl-C reaches only the manager, which stops everything
//! in order; dies with its parent (`PR_SET_PDEATHSIG`), so no process
//! outlives a killed manager; and inherits only the descriptors named.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpid, getppid, setpgid, Pid};

/// A command that starts this binary with `args` (a role's argv, from
/// `cli::role_args`), inheriting the descriptors in `keep`.
pub fn role(args: Vec<String>, keep: &[RawFd]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command.arg0("rip-server").args(args);
    supervised(&mut command, keep);
    command
}

/// Sets up `command` as a supervised child: own process group, killed when
/// this process dies, inheriting `keep` (and stdio) but nothing else.
pub fn supervised(command: &mut tokio::process::Command, keep: &[RawFd]) {
    // systemd's protocol is the manager's alone.
    for name in crate::systemd::VARIABLES {
        command.env_remove(name);
    }
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
/// Only for a leader that cannot have been reaped yet (the caller waits for
/// it); see [`Process::signal_group`] otherwise.
pub fn signal_group(pid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// A child process, held by a pidfd (Linux ≥ 5.3): a signal through it
/// reaches that process or none — never another one that was given its
/// pid after it was reaped, which a task of ours may have done already.
/// Without pidfds (an older kernel) it falls back to the pid.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Process {
    /// Holds the child `pid`, which must not have been reaped yet (call it
    /// right after spawning, before anything waits for the child).
    pub fn new(pid: u32) -> Process {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor (or -1); no memory is passed.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as i32, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) }
        });
        Process { pid, pidfd }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has not been reaped (a zombie counts as alive).
    pub fn alive(&self) -> bool {
        self.send(0)
    }

    /// Sends `signal`; false if the process is gone (reaped).
    pub fn signal(&self, signal: Signal) -> bool {
        self.send(signal as i32)
    }

    fn send(&self, signal: i32) -> bool {
        use std::os::fd::AsRawFd;
        match &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
            Some(fd) => unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<nix::libc::siginfo_t>(),
                    0,
                ) == 0
            },
            // SAFETY: kill(2) with a pid and a signal number.
            None => unsafe { nix::libc::kill(self.pid as i32, signal) == 0 },
        }
    }

    /// Sends `signal` to the process group it leads, if it has not been
    /// reaped: a leader that has not been reaped keeps its pid, so its
    /// group id cannot have gone to anyone else. False if it is gone.
    pub fn signal_group(&self, signal: Signal) -> bool {
        self.send(0) && killpg(Pid::from_raw(self.pid as i32), signal).is_ok()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    #[test]
    fn a_reaped_process_is_never_signalled_through_its_handle() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let process = Process::new(child.id());
        assert!(process.pidfd.is_some(), "no pidfd on this kernel");
        assert!(process.signal(Signal::SIGSTOP), "a live process");
        assert!(process.signal_group(Signal::SIGKILL), "its group");
        let status = child.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Reaped: its pid may belong to anyone now. Nothing goes out.
        assert!(!process.signal(Signal::SIGTERM));
        assert!(!process.signal_group(Signal::SIGTERM));
    }
}
