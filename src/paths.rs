//! Socket and pid-file paths (docs/DESIGN.md §4) and their safety checks.
//!
//! Everything lives in the socket dir under one prefix:
//! `<prefix>.ctl.sock`, `<prefix>.<id>.sock`, `<prefix>.pid`, plus the
//! module loader the workers run, `<prefix>.loader.mjs`. A path is only ever
//! removed when it is ours: a socket (or a regular file, for the pid file and
//! the loader) owned by this user, never a symlink.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// The longest worker id a path is checked for (ids only grow).
const LONGEST_ID: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    dir: PathBuf,
    prefix: String,
}

impl Paths {
    /// Builds the paths for `prefix` (or `rip_<variant>_<app>`) in `dir`,
    /// checking that every socket path fits the unix limit.
    pub fn new(
        dir: &Path,
        prefix: Option<String>,
        variant: &str,
        app_name: &str,
    ) -> Result<Paths, String> {
        let dir = absolute(dir).map_err(|e| format!("socket dir {}: {e}", dir.display()))?;
        let prefix = match prefix {
            Some(prefix) => {
                if prefix.is_empty() || prefix.contains(['/', '\0']) {
                    return Err(format!(
                        "--socket-prefix={prefix}: must be a non-empty file name prefix (no '/')"
                    ));
                }
                prefix
            }
            None => format!("rip_{}_{}", sanitize(variant), sanitize(app_name)),
        };
        let paths = Paths { dir, prefix };
        for path in [paths.worker(LONGEST_ID), paths.ctl()] {
            let len = path.as_os_str().len();
            if len > UNIX_PATH_MAX {
                return Err(format!(
                    "socket path {} is {len} bytes, over the {UNIX_PATH_MAX}-byte unix limit: use a shorter --socket-dir or --socket-prefix",
                    path.display()
                ));
            }
        }
        Ok(paths)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The control socket the LB listens on.
    pub fn ctl(&self) -> PathBuf {
        self.file("ctl.sock")
    }

    /// The socket worker `id`'s app listens on.
    pub fn worker(&self, id: u32) -> PathBuf {
        self.file(&format!("{id}.sock"))
    }

    /// The manager's pid file.
    pub fn pid(&self) -> PathBuf {
        self.file("pid")
    }

    /// Where the manager writes the module loader for the workers.
    pub fn loader(&self) -> PathBuf {
        self.file("loader.mjs")
    }

    /// `https:quick`'s self-signed certificate and key.
    pub fn quick_cert(&self) -> PathBuf {
        self.file("quick.crt")
    }

    pub fn quick_key(&self) -> PathBuf {
        self.file("quick.key")
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.prefix))
    }

    /// Whether `path` names a file directly inside the socket dir (no `..`,
    /// no subdirectory), as a joining worker's socket must.
    pub fn holds(&self, path: &Path) -> bool {
        path.is_absolute()
            && path.parent() == Some(self.dir.as_path())
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    }

    /// Every worker socket of this prefix present in the socket dir.
    pub fn worker_sockets(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let head = format!("{}.", self.prefix);
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_prefix(&head)?.strip_suffix(".sock")?;
                id.parse::<u32>().ok()?;
                Some(e.path())
            })
            .collect()
    }
}

/// Replaces what cannot stand in a file name prefix.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn absolute(dir: &Path) -> io::Result<PathBuf> {
    let joined = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    // Resolve symlinks (e.g. /tmp -> /private/tmp) where the dir exists, so
    // socket paths compare equal however they were spelled.
    Ok(fs::canonicalize(&joined).unwrap_or(joined))
}

/// What kind of file a path we may remove must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Socket,
    File,
}

/// Writes `contents` to `path`, mode 0600, replacing it whole (a reader
/// never sees half a file): in a directory made 0700 if missing, over a
/// leftover of ours only (see [`remove_ours`]).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |e: io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    // What is there must be ours to replace.
    remove_ours(path, Owned::File)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    remove_ours(&temp, Owned::File)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    // create_new honours the umask; make the mode exact.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    drop(file);
    fs::rename(&temp, path).map_err(fail)
}

/// Removes `path` if it is a leftover of ours (a socket or regular file, as
/// `kind` says, owned by this user, not a symlink). Returns whether
/// something was removed; refuses, with a reason, anything else.
pub fn remove_ours(path: &Path, kind: Owned) -> Result<bool, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return Err(format!(
            "refusing to remove {}: it is a symlink",
            path.display()
        ));
    }
    let right_kind = match kind {
        Owned::Socket => file_type.is_socket(),
        Owned::File => file_type.is_file(),
    };
    if !right_kind {
        let what = match kind {
            Owned::Socket => "a socket",
            Owned::File => "a regular file",
        };
        return Err(format!(
            "refusing to remove {}: it is not {what}",
            path.display()
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "refusing to remove {}: it belongs to uid {}",
            path.display(),
            meta.uid()
        ));
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_replaced_whole_and_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/dir/file.key");
        write_private(&path, b"one").expect("write");
        write_private(&path, b"two").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        let left: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .collect();
        assert_eq!(left.len(), 1, "a temp file was left");
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"theirs").expect("write target");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = write_private(&link, b"mine").expect_err("through a symlink");
        assert!(err.contains("symlink"), "{err}");
        assert_eq!(fs::read(&target).expect("read target"), b"theirs");
    }

    #[test]
    fn prefix_defaults_to_variant_and_app() {
        let paths = Paths::new(Path::new("/tmp"), None, "server2", "my app").expect("paths");
        assert_eq!(paths.prefix(), "rip_server2_my_app");
        assert_eq!(
            paths.ctl(),
            PathBuf::from("/tmp/rip_server2_my_app.ctl.sock")
        );
        assert_eq!(
            paths.worker(3),
            PathBuf::from("/tmp/rip_server2_my_app.3.sock")
        );
        assert_eq!(paths.pid(), PathBuf::from("/tmp/rip_server2_my_app.pid"));
    }

    #[test]
    fn long_socket_paths_are_refused() {
        let dir = PathBuf::from(format!("/tmp/{}", "d".repeat(80)));
        let err = Paths::new(&dir, None, "server2", "app").unwrap_err();
        assert!(err.contains("107-byte unix limit"), "{err}");
    }

    #[test]
    fn holds_only_direct_children() {
        let paths = Paths::new(Path::new("/tmp"), Some("p".into()), "v", "a").expect("paths");
        assert!(paths.holds(Path::new("/tmp/p.1.sock")));
        assert!(!paths.holds(Path::new("/tmp/sub/p.1.sock")));
        assert!(!paths.holds(Path::new("/tmp/../etc/p.1.sock")));
        assert!(!paths.holds(Path::new("/var/p.1.sock")));
        assert!(!paths.holds(Path::new("p.1.sock")));
    }

    #[test]
    fn remove_ours_refuses_what_is_not_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("x.sock");
        fs::write(&file, "not a socket").expect("write");
        assert!(remove_ours(&file, Owned::Socket)
            .unwrap_err()
            .contains("not a socket"));
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(remove_ours(&link, Owned::File)
            .unwrap_err()
            .contains("symlink"));
        assert!(file.exists() && link.exists());
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        assert_eq!(remove_ours(&sock, Owned::Socket), Ok(true));
        assert!(!sock.exists());
        assert_eq!(remove_ours(&sock, Owned::Socket), Ok(false));
    }
}

/// Whether something listens on the unix socket at `path` (a live
/// process's socket is never removed as a leftover).
pub fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The pid file, locked (`flock`) for the server's whole life: the lock —
/// not the file's existence, nor a pid in it — says a server runs under
/// this prefix, so two starts at once cannot both run, and a start never
/// removes anything of a live server. The front takes it and passes it on
/// across `exec` to the manager (same pid), which holds it until it exits.
#[derive(Debug)]
pub struct PidFile {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

/// Why the pid file could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// A live server holds it; its pid, as the file says.
    Held(Option<u32>),
    Failed(String),
}

impl PidFile {
    /// Locks the pid file at `path` (made 0600 if missing) and writes this
    /// process's pid into it.
    pub fn lock(path: &Path) -> Result<PidFile, LockError> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::stat::Mode;
        use std::os::fd::{AsFd, AsRawFd};
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            LockError::Failed(format!("cannot {what} {}: {e}", path.display()))
        };
        loop {
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
            let fd = match open(path, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ELOOP) => {
                    return Err(LockError::Failed(format!(
                        "refusing to use {}: it is a symlink",
                        path.display()
                    )))
                }
                Err(e) => return Err(failed("open", &e)),
            };
            let meta = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| failed("inspect", &e))?;
            if meta.st_uid != nix::unistd::geteuid().as_raw()
                || (meta.st_mode & nix::libc::S_IFMT) != nix::libc::S_IFREG
            {
                return Err(LockError::Failed(format!(
                    "refusing to use {}: it is not a regular file of this user",
                    path.display()
                )));
            }
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let locked = unsafe {
                nix::libc::flock(fd.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)
            };
            if locked != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(nix::libc::EWOULDBLOCK) {
                    // Its holder writes its pid just after locking: a start
                    // at the same moment may read it a little late.
                    let read =
                        || -> Option<u32> { fs::read_to_string(path).ok()?.trim().parse().ok() };
                    let deadline =
                        std::time::Instant::now() + std::time::Duration::from_millis(500);
                    let mut pid = read();
                    while pid.is_none() && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        pid = read();
                    }
                    return Err(LockError::Held(pid));
                }
                return Err(failed("lock", &e));
            }
            // Its last holder may have removed it between our open and our
            // lock: then the lock is on a file nobody else can find.
            let same = fs::symlink_metadata(path).is_ok_and(|now| {
                now.ino() == meta.st_ino as u64 && now.dev() == meta.st_dev as u64
            });
            if !same {
                continue;
            }
            let file = fs::File::from(fd);
            file.set_len(0).map_err(|e| failed("truncate", &e))?;
            let pid = format!("{}\n", std::process::id());
            nix::sys::uio::pwrite(file.as_fd(), pid.as_bytes(), 0)
                .map_err(|e| failed("write", &e))?;
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| failed("restrict", &e))?;
            return Ok(PidFile {
                fd: file.into(),
                path: path.to_path_buf(),
            });
        }
    }

    /// Keeps the lock across `exec` (for the manager, which takes it back
    /// with [`PidFile::inherit`]); returns the descriptor's number.
    pub fn pass_on(&self) -> io::Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        nix::fcntl::fcntl(
            self.fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        Ok(self.fd.as_raw_fd())
    }

    /// Takes back the lock on `path` passed across `exec` as `fd`, out of
    /// reach of the processes this one starts.
    ///
    /// # Safety
    /// `fd` must be the descriptor [`PidFile::pass_on`] returned before the
    /// exec, and nothing else in this process may own it.
    pub unsafe fn inherit(fd: std::os::fd::RawFd, path: &Path) -> io::Result<PidFile> {
        use std::os::fd::{AsFd, FromRawFd};
        // SAFETY: as the caller guarantees.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(PidFile {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Removes the pid file (while still holding its lock); the lock goes
    /// when this is dropped, or the process exits.
    pub fn remove(&self) -> Result<bool, String> {
        remove_ours(&self.path, Owned::File)
    }
}
