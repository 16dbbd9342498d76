//! Counting client connections — to stop accepting before descriptors run
//! out, for the graceful stop — and giving memory back after a burst of
//! them.
//!
//! Each client connection holds its read buffer and heads (4 KiB and up)
//! and its task: about 10 KiB, so a thousand connections take some
//! 10 MiB. When they close, glibc keeps the freed memory in its heap,
//! fragmented, and the LB's RSS stays at the peak for good. So when the
//! number of open connections has fallen well below its recent peak, the
//! heap is trimmed (`malloc_trim`, which also returns free pages in the
//! middle of the heap). Steady load never triggers it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// A peak below this is not worth a trim.
const PEAK_WORTH_TRIMMING: usize = 128;
/// How often the count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Counts open client connections.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<AtomicUsize>,
    closed: Arc<Notify>,
}

/// One open connection; dropping it closes the count.
pub struct Open(Arc<AtomicUsize>, Arc<Notify>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.notify_one();
    }
}

impl Connections {
    pub fn open(&self) -> Open {
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(self.open.clone(), self.closed.clone())
    }

    /// How many are open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Waits until fewer than `max` connections are open.
    pub async fn room_for(&self, max: usize) {
        while self.open.load(Ordering::Relaxed) >= max {
            self.closed.notified().await;
        }
    }

    /// Waits until every connection has closed, up to `limit`; whether they did.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.open.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Runs forever: trims the heap once the count falls to a quarter of a
    /// peak of at least [`PEAK_WORTH_TRIMMING`].
    pub async fn trim_after_bursts(self) {
        let mut peak = 0;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            let now = self.open.load(Ordering::Relaxed);
            peak = peak.max(now);
            if peak >= PEAK_WORTH_TRIMMING && now <= peak / 4 {
                trim();
                peak = now;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases glibc's free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
