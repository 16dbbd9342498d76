//! What a client has not taken yet of a response: the LB reads an app's
//! response as fast as the app writes it, and what a slow client cannot
//! take at once waits here, so the worker is freed when the app is done,
//! not when the client is.
//!
//! A first-in first-out queue of bytes: in memory up to the per-request
//! threshold while the LB's total allows (the same bounds as held request
//! bodies, `lb::spool::Spools`), then in an unnamed temp file, up to the
//! disk bound for all waiting responses together. Past that,
//! [`Backlog::push`] says no and the relay goes at the client's pace.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::spool::Spools;

/// The most read back from the file at once.
const PIECE: usize = 64 * 1024;

#[derive(Debug)]
pub struct Backlog {
    spools: Spools,
    memory: Vec<u8>,
    /// Bytes of `memory` already sent.
    sent: usize,
    /// Bytes of `memory` counted against the shared memory bound.
    counted: u64,
    file: Option<File>,
    /// Read and write positions in the file.
    file_read: u64,
    file_write: u64,
    /// Bytes of the file counted against the shared disk bound.
    file_counted: u64,
    /// A piece of the file, read back to be sent.
    piece: Vec<u8>,
    piece_sent: usize,
}

impl Backlog {
    pub fn new(spools: Spools) -> Backlog {
        Backlog {
            spools,
            memory: Vec::new(),
            sent: 0,
            counted: 0,
            file: None,
            file_read: 0,
            file_write: 0,
            file_counted: 0,
            piece: Vec::new(),
            piece_sent: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting.
    pub fn len(&self) -> u64 {
        (self.memory.len() - self.sent) as u64
            + (self.piece.len() - self.piece_sent) as u64
            + (self.file_write - self.file_read)
    }

    /// Appends `bytes`; `Ok(false)` when the bounds leave no room (nothing
    /// was taken, and the caller must send at the client's pace).
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<bool> {
        if bytes.is_empty() {
            return Ok(true);
        }
        let n = bytes.len() as u64;
        // Memory only while nothing waits in the file: order is kept.
        let file_empty = self.file_write == self.file_read && self.piece_sent == self.piece.len();
        if file_empty
            && self.memory.len() - self.sent + bytes.len() <= self.spools.per_request()
            && self.spools.try_hold(n)
        {
            if self.sent > 0 && self.sent == self.memory.len() {
                self.memory.clear();
                self.sent = 0;
            }
            self.counted += n;
            self.memory.extend_from_slice(bytes);
            return Ok(true);
        }
        if !self.spools.try_hold_disk(n) {
            return Ok(false);
        }
        self.file_counted += n;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(self.spools.file()?),
        };
        file.write_all_at(bytes, self.file_write)?;
        self.file_write += n;
        Ok(true)
    }

    /// The next bytes to send (empty when none wait).
    pub fn front(&mut self) -> io::Result<&[u8]> {
        if self.sent < self.memory.len() {
            return Ok(&self.memory[self.sent..]);
        }
        if self.piece_sent == self.piece.len() && self.file_read < self.file_write {
            let want = (self.file_write - self.file_read).min(PIECE as u64) as usize;
            self.piece.resize(want, 0);
            let file = self
                .file
                .as_ref()
                .ok_or_else(|| io::Error::other("no file"))?;
            file.read_exact_at(&mut self.piece, self.file_read)?;
            self.file_read += want as u64;
            self.piece_sent = 0;
        }
        Ok(&self.piece[self.piece_sent..])
    }

    /// Marks `n` bytes of [`Backlog::front`] as sent.
    pub fn consume(&mut self, n: usize) {
        if self.sent < self.memory.len() {
            self.sent += n;
            if self.sent == self.memory.len() {
                self.memory.clear();
                self.sent = 0;
                self.spools.release(self.counted);
                self.counted = 0;
            }
            return;
        }
        self.piece_sent += n;
        if self.piece_sent == self.piece.len() && self.file_read == self.file_write {
            // All of the file is sent: it starts over.
            self.spools.release_disk(self.file_counted);
            self.file_counted = 0;
            self.file_read = 0;
            self.file_write = 0;
            if let Some(file) = &self.file {
                let _ = file.set_len(0);
            }
        }
    }

    /// Drops what waits (the client is gone).
    pub fn clear(&mut self) {
        self.memory.clear();
        self.sent = 0;
        self.spools.release(self.counted);
        self.counted = 0;
        self.piece.clear();
        self.piece_sent = 0;
        self.file = None;
        self.file_read = 0;
        self.file_write = 0;
        self.spools.release_disk(self.file_counted);
        self.file_counted = 0;
    }

    /// Gives back memory a slow client's response made the buffers grow to
    /// past `keep`, once nothing waits.
    pub fn shrink(&mut self, keep: usize) {
        if self.is_empty() {
            if self.memory.capacity() > keep {
                self.memory = Vec::new();
            }
            if self.piece.capacity() > 0 {
                self.piece = Vec::new();
            }
        }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(backlog: &mut Backlog, step: usize) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let front = backlog.front().unwrap();
            if front.is_empty() {
                return all;
            }
            let n = front.len().min(step);
            all.extend_from_slice(&front[..n]);
            backlog.consume(n);
        }
    }

    #[test]
    fn bytes_come_out_in_order_through_memory_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(dir.path().to_path_buf(), 8, 1 << 20, 1 << 20);
        let mut backlog = Backlog::new(spools.clone());
        let mut want = Vec::new();
        for (i, piece) in [&b"abc"[..], b"defgh", b"ijklmnop", b"q", b"rstuvwxyz"]
            .iter()
            .enumerate()
        {
            assert!(backlog.push(piece).unwrap());
            want.extend_from_slice(piece);
            if i == 2 {
                // Some go out while more come in.
                let front = backlog.front().unwrap().to_vec();
                backlog.consume(2);
                assert_eq!(&front[..2], b"ab");
                want.drain(..2);
            }
        }
        assert_eq!(backlog.len(), want.len() as u64);
        assert_eq!(drain(&mut backlog, 3), want);
        assert!(backlog.is_empty());
        assert_eq!(spools.held(), 0);
        // It starts over, in memory again.
        assert!(backlog.push(b"again").unwrap());
        assert_eq!(drain(&mut backlog, 100), b"again");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn past_the_disk_bound_a_push_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(dir.path().to_path_buf(), 4, 4, 10);
        let mut a = Backlog::new(spools.clone());
        let mut b = Backlog::new(spools.clone());
        assert!(a.push(b"1234").unwrap()); // memory
        assert!(a.push(b"12345678").unwrap()); // file
        assert!(!b.push(b"123").unwrap()); // memory full, disk over 10
        assert!(b.push(b"12").unwrap());
        drop(a);
        assert!(b.push(b"12345678").unwrap());
        assert_eq!(drain(&mut b, 5), b"1212345678");
    }
}
