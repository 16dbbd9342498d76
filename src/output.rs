//! The process's own output — log lines on stderr, the access log and the
//! start-up line on stdout, apps' output forwarded by their workers — goes
//! through one [`Sink`] per stream: writers append to a bounded buffer and
//! a thread of the sink's own writes it out. So output never stops the
//! server: a full pipe that nobody reads blocks that thread only, and a
//! closed one (`EPIPE`, e.g. `rip-server ... | head -1`) loses lines and
//! nothing else. What does not fit is dropped and counted, and the count
//! is written once the stream takes lines again.
//!
//! A role that exits calls [`flush`] first, so its last lines are not lost
//! when the stream is healthy (and it does not wait long when it is not).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most a sink buffers; past it, lines are dropped.
const MAX_BUFFER: usize = 4 << 20;
/// How long the writer lets lines gather once the first of a batch has
/// come (it sleeps, untroubled, while there are none).
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// The longest forwarded line; longer ones are cut there.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

pub struct Sink {
    stream: Stream,
    buffer: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Signalled when the writer has written what it took.
    written: Condvar,
    /// The writer is writing a batch it took out of the buffer.
    busy: AtomicBool,
    started: AtomicBool,
    dropped: AtomicU64,
}

pub static STDOUT: Sink = Sink::new(Stream::Stdout);
pub static STDERR: Sink = Sink::new(Stream::Stderr);

impl Sink {
    const fn new(stream: Stream) -> Sink {
        Sink {
            stream,
            buffer: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            written: Condvar::new(),
            busy: AtomicBool::new(false),
            started: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what `write` puts in the buffer (one or more whole lines),
    /// unless the buffer is full: then the lines are dropped and counted.
    /// Never blocks on the stream.
    pub fn append(&'static self, write: impl FnOnce(&mut Vec<u8>)) {
        self.start();
        let mut buffer = self.lock();
        if buffer.len() >= MAX_BUFFER {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = buffer.is_empty();
        write(&mut buffer);
        if first {
            // The writer waits for a first line (one wake per batch).
            self.wake.notify_one();
        }
    }

    /// Appends one line (`line` ends with a newline, or gets one).
    pub fn line(&'static self, line: &[u8]) {
        self.append(|buffer| {
            buffer.extend_from_slice(line);
            if line.last() != Some(&b'\n') {
                buffer.push(b'\n');
            }
        });
    }

    /// How many lines were dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn start(&'static self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let name = match self.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        // Without a thread (none can be had) lines stay buffered, and are
        // dropped once the buffer is full: the server goes on regardless.
        let _ = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || self.run());
    }

    fn run(&self) {
        loop {
            {
                let mut buffer = self.lock();
                while buffer.is_empty() {
                    buffer = self.wake.wait(buffer).unwrap_or_else(|e| e.into_inner());
                }
            }
            // Let a batch gather: one write for many lines under load.
            std::thread::sleep(FLUSH_EVERY);
            let pending = {
                let mut buffer = self.lock();
                self.busy.store(true, Ordering::Release);
                std::mem::replace(&mut *buffer, Vec::with_capacity(64 * 1024))
            };
            self.write_out(&pending);
            self.busy.store(false, Ordering::Release);
            self.written.notify_all();
        }
    }

    fn write_out(&self, pending: &[u8]) {
        let dropped = self.dropped();
        let note = (dropped > 0).then(|| {
            format!(
                "rip-server: {dropped} lines of output dropped (the stream was full or closed)\n"
            )
        });
        let bytes = [note.as_deref().unwrap_or("").as_bytes(), pending];
        let ok = match self.stream {
            Stream::Stdout => write_all(&mut std::io::stdout().lock(), &bytes),
            Stream::Stderr => write_all(&mut std::io::stderr().lock(), &bytes),
        };
        if ok {
            self.dropped.fetch_sub(dropped, Ordering::Relaxed);
        } else {
            // The stream is closed or broken: these lines are lost too.
            let lines = pending.iter().filter(|&&b| b == b'\n').count();
            self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        }
    }

    /// Waits (up to `limit`) until what was appended so far is written.
    fn flush(&self, limit: Duration) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        let deadline = Instant::now() + limit;
        let mut buffer = self.lock();
        self.wake.notify_one();
        while !buffer.is_empty() || self.busy.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            buffer = self
                .written
                .wait_timeout(buffer, left.min(FLUSH_EVERY))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Writes all of `parts`; false if the stream failed.
fn write_all(out: &mut impl Write, parts: &[&[u8]]) -> bool {
    parts.iter().all(|part| out.write_all(part).is_ok()) && out.flush().is_ok()
}

/// Waits (up to `limit` for each stream) until the output appended so far
/// is written.
pub fn flush(limit: Duration) {
    STDOUT.flush(limit);
    STDERR.flush(limit);
}

/// A `tracing` writer into [`STDERR`]: each event is formatted whole and
/// then appended in one piece.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        STDERR.append(|buffer| buffer.extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// Where [`forward`] keeps the last line that passes the test.
pub type LastLine<'a> = (&'a Mutex<String>, fn(&[u8]) -> bool);

/// Copies `pipe` line by line into `sink`, each line after `tag`, without
/// ever blocking on the stream (a full or closed one loses lines). A line
/// longer than [`MAX_LINE`] is cut into pieces of that size. `last`, if
/// given, holds the last line (without its tag) that its test accepts.
pub async fn forward(
    pipe: impl tokio::io::AsyncRead + Unpin,
    tag: &str,
    sink: &'static Sink,
    last: Option<LastLine<'_>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut line = Vec::with_capacity(256);
    let emit = |line: &[u8]| {
        sink.append(|buffer| {
            buffer.extend_from_slice(tag.as_bytes());
            buffer.extend_from_slice(line);
            buffer.push(b'\n');
        });
        if let Some((last, keep)) = last {
            if keep(line) {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                last.clear();
                last.push_str(&String::from_utf8_lossy(line));
            }
        }
    };
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    emit(&line);
                }
                return;
            }
            Ok(bytes) => {
                let room = MAX_LINE - line.len();
                match bytes.iter().take(room).position(|&b| b == b'\n') {
                    Some(end) => {
                        line.extend_from_slice(&bytes[..end]);
                        (true, end + 1)
                    }
                    None => {
                        let n = bytes.len().min(room);
                        line.extend_from_slice(&bytes[..n]);
                        (line.len() >= MAX_LINE, n)
                    }
                }
            }
        };
        reader.consume(used);
        if done {
            emit(&line);
            line.clear();
        }
    }
}
