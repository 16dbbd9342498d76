//! The private channel between the manager and the load balancer (docs/DESIGN.md §3).
//!
//! An inherited unix socketpair carrying one JSON object per line. The LB
//! tells the manager which workers joined or left and which to retire; the
//! manager tells the LB which worker processes died, and replays the joined
//! workers to a restarted LB.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::control::WorkerId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum LinkMsg {
    /// LB → manager: a worker joined the pool.
    Joined {
        id: WorkerId,
        pid: Option<u32>,
        socket: PathBuf,
        version: Option<u64>,
    },
    /// LB → manager: a worker quit the pool.
    Left { id: WorkerId },
    /// LB → manager: this worker took its first request (from then on a
    /// crash of it is a casualty, not a crash loop).
    Served { id: WorkerId },
    /// LB → manager: replace this worker. It may take requests until its
    /// replacement has joined (a recycle asks ahead of time), or none at
    /// all (an abandoned request, an unreachable socket).
    Retire {
        id: WorkerId,
        #[serde(default)]
        why: Retirement,
    },
    /// Manager → LB: no worker of the app's current version has ever been
    /// ready, and one failed to start with this error (its last line of
    /// output); `None`: one is ready now.
    Failing { error: Option<String> },
    /// Manager → LB: this worker's process is gone.
    Dead { id: WorkerId },
    /// Manager → LB, about once a second with `--metrics`: workers
    /// replaced so far by reason (the manager's counts, which outlive an
    /// LB), and each serving worker's slot and memory.
    Stats {
        replaced: Replaced,
        workers: Vec<WorkerStat>,
    },
    /// Manager → LB (after an LB restart): this worker had joined.
    Rejoin {
        id: WorkerId,
        pid: Option<u32>,
        socket: PathBuf,
        version: Option<u64>,
    },
}

/// Why the LB asks for a worker to be replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Retirement {
    /// Its request budget (`r:<N>`) is (nearly) used up.
    #[default]
    Recycle,
    /// Its app asked to be replaced (the loader does after `--max-reloads`).
    Reload,
    /// A request of it was abandoned, or its socket is unreachable: its app
    /// may still be busy.
    Abandoned,
}

/// Workers replaced, by reason, since the manager started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub crash: u64,
    pub recycle: u64,
    pub reload: u64,
    pub abandoned: u64,
    pub memory: u64,
    pub rolling_restart: u64,
}

impl Replaced {
    /// Each reason's label and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("crash", self.crash),
            ("recycle", self.recycle),
            ("reload", self.reload),
            ("abandoned", self.abandoned),
            ("memory", self.memory),
            ("rolling_restart", self.rolling_restart),
        ]
    }
}

/// A serving worker, as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStat {
    pub slot: usize,
    pub id: WorkerId,
    /// Its process tree's resident memory (it and its app).
    pub rss: u64,
}

/// Wraps an inherited (or freshly made) socketpair end.
///
/// # Safety
/// `fd` must be an open unix stream socket this process owns and nothing
/// else will close.
pub unsafe fn from_raw_fd(fd: RawFd) -> std::io::Result<(LinkReader, LinkWriter)> {
    // SAFETY: the caller guarantees `fd` is an owned, open socket.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    from_fd(owned)
}

pub fn from_fd(fd: OwnedFd) -> std::io::Result<(LinkReader, LinkWriter)> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(std_stream)?.into_split();
    Ok((
        LinkReader {
            lines: BufReader::new(read),
            buf: String::new(),
        },
        LinkWriter { write },
    ))
}

pub struct LinkReader {
    lines: BufReader<OwnedReadHalf>,
    buf: String,
}

impl LinkReader {
    /// The next message; None when the other side is gone. Lines that do
    /// not parse are skipped with a warning.
    pub async fn next(&mut self) -> Option<LinkMsg> {
        loop {
            self.buf.clear();
            match self.lines.read_line(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => match serde_json::from_str(self.buf.trim_end()) {
                    Ok(msg) => return Some(msg),
                    Err(e) => tracing::warn!("ignoring a bad link message: {e}"),
                },
            }
        }
    }
}

pub struct LinkWriter {
    write: OwnedWriteHalf,
}

impl LinkWriter {
    pub async fn send(&mut self, msg: &LinkMsg) -> std::io::Result<()> {
        let mut line = serde_json::to_string(msg).map_err(std::io::Error::other)?;
        line.push('\n');
        self.write.write_all(line.as_bytes()).await
    }
}
