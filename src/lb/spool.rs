//! A request body held by the LB until a worker takes it, so that a slow
//! upload costs the LB memory or disk, never a worker's time: in memory up
//! to a per-request threshold while the LB's total stays under its bound,
//! beyond that in a temp file.
//!
//! The temp file has no name (`O_TMPFILE`, through `tempfile::tempfile_in`
//! in the socket dir): it is private to the LB, it goes when the request
//! does, and nothing is left behind even if the LB is killed. What is held
//! is the body as the worker gets it (`lb::body` has already re-encoded a
//! chunked body), so it can be sent as it is — to another worker, too, if
//! the first could not take it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What every spool of the LB shares: where files go, and the memory that
/// all of them may hold at once.
#[derive(Debug, Clone)]
pub struct Spools {
    dir: PathBuf,
    /// The most of one body held in memory.
    per_request: usize,
    /// The most memory all bodies may hold together.
    total: u64,
    held: Arc<AtomicU64>,
    /// The most bytes the responses waiting for their clients may hold in
    /// files together (`lb::backlog`).
    disk_total: u64,
    disk_held: Arc<AtomicU64>,
}

impl Spools {
    pub fn new(dir: PathBuf, per_request: usize, total: u64, disk_total: u64) -> Spools {
        Spools {
            dir,
            per_request,
            total,
            held: Arc::new(AtomicU64::new(0)),
            disk_total,
            disk_held: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes held in memory by all spools now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The most of one body held in memory.
    pub fn per_request(&self) -> usize {
        self.per_request
    }

    /// Counts `n` more bytes in memory, if the total allows.
    pub fn try_hold(&self, n: u64) -> bool {
        try_add(&self.held, n, self.total)
    }

    pub fn release(&self, n: u64) {
        // (Most exchanges hold nothing: no atomic operation for them.)
        if n > 0 {
            self.held.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` more bytes on disk, if the total allows.
    pub fn try_hold_disk(&self, n: u64) -> bool {
        try_add(&self.disk_held, n, self.disk_total)
    }

    pub fn release_disk(&self, n: u64) {
        if n > 0 {
            self.disk_held.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// A new unnamed temp file.
    pub fn file(&self) -> io::Result<File> {
        tempfile::tempfile_in(&self.dir)
    }

    /// A new spool for a body of `expected` bytes, if known.
    pub fn spool(&self, expected: Option<u64>) -> Spool {
        // Room for the whole of a body that will stay in memory, and no
        // more: a thousand waiting uploads hold what they weigh.
        let room = expected
            .filter(|&n| n <= self.per_request as u64)
            .map_or(0, |n| n as usize);
        Spool {
            spools: self.clone(),
            memory: Vec::new(),
            room,
            counted: 0,
            file: None,
            file_len: 0,
        }
    }
}

/// One request body on hold.
#[derive(Debug)]
pub struct Spool {
    spools: Spools,
    memory: Vec<u8>,
    /// What `memory` is given at its first byte (the whole body, when it
    /// is known and small): allocated only once memory has been granted.
    room: usize,
    /// Bytes of `memory` counted against the shared total.
    counted: u64,
    file: Option<File>,
    file_len: u64,
}

impl Spool {
    /// Adds `bytes` at the end: to memory while this body and the LB's
    /// total stay under their bounds, else to the file.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.file.is_none()
            && self.memory.len() + bytes.len() <= self.spools.per_request
            && self.spools.try_hold(bytes.len() as u64)
        {
            self.counted += bytes.len() as u64;
            if self.memory.capacity() == 0 {
                self.memory.reserve_exact(self.room.max(bytes.len()));
            }
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(self.spools.file()?),
        };
        // A write to a new file lands in the page cache: it does not wait
        // for the disk, so it may run on the LB's event loop.
        file.write_all(bytes)?;
        self.file_len += bytes.len() as u64;
        Ok(())
    }

    /// The start of the body, held in memory.
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }

    /// Whether some of the body is in a file.
    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes held in all.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.file_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the part in the file from its start, calling `each` with
    /// pieces of at most `buf`'s capacity (at least 16 KiB).
    pub fn rewind(&mut self) -> io::Result<FileReader<'_>> {
        if let Some(file) = &mut self.file {
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(FileReader {
            file: self.file.as_mut(),
        })
    }
}

/// Reads a spool's file part, piece by piece.
pub struct FileReader<'a> {
    file: Option<&'a mut File>,
}

impl FileReader<'_> {
    /// Reads the next piece into `buf` (cleared first); 0 at the end.
    pub fn next_piece(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        buf.clear();
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        buf.resize(max, 0);
        let n = loop {
            match file.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        buf.truncate(n);
        Ok(n)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.spools.release(self.counted);
    }
}

/// Adds `n` to `counter` if the sum stays within `max`.
fn try_add(counter: &AtomicU64, n: u64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            (held + n <= max).then_some(held + n)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(spool: &mut Spool) -> Vec<u8> {
        let mut all = spool.memory().to_vec();
        let mut buf = Vec::new();
        let mut reader = spool.rewind().unwrap();
        while reader.next_piece(&mut buf, 7).unwrap() > 0 {
            all.extend_from_slice(&buf);
        }
        all
    }

    #[test]
    fn a_small_body_stays_in_memory_and_a_large_one_goes_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(dir.path().to_path_buf(), 10, 1 << 20, 1 << 20);
        let mut small = spools.spool(Some(5));
        small.write(b"hello").unwrap();
        assert!(!small.has_file());
        assert_eq!(spools.held(), 5);
        let mut large = spools.spool(None);
        large.write(b"0123456789").unwrap();
        large.write(b"abcdef").unwrap();
        assert!(large.has_file());
        assert_eq!(large.len(), 16);
        assert_eq!(read_all(&mut large), b"0123456789abcdef");
        // Read again, for a second worker.
        assert_eq!(read_all(&mut large), b"0123456789abcdef");
        // The file has no name: the directory stays empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(small);
        drop(large);
        assert_eq!(spools.held(), 0);
    }

    #[test]
    fn the_total_in_memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(dir.path().to_path_buf(), 100, 12, 1 << 20);
        let mut a = spools.spool(Some(8));
        let mut b = spools.spool(Some(8));
        a.write(b"12345678").unwrap();
        b.write(b"12345678").unwrap();
        assert!(!a.has_file() && b.has_file());
        assert_eq!(spools.held(), 8);
        assert_eq!(read_all(&mut b), b"12345678");
        drop(a);
        assert_eq!(spools.held(), 0);
    }
}
