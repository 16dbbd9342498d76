//! The async layer around the [`Pool`]: waiting in the queue with a
//! deadline, leases that give the worker back when dropped, and telling the
//! manager which workers to retire.
//!
//! Lock discipline: the pool's mutex is never held across an `.await`, and
//! nothing that locks it (a [`Lease`] or a queued waiter) is dropped while
//! it is held.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::pool::{Checkin, Checkout, Conflict, Enqueue, Epoch, Outcome, Pool, Stats, WorkerId};
use super::upstream::Upstream;
use crate::link::{LinkMsg, Retirement};

pub type Waiter<C> = oneshot::Sender<Checkout<C>>;

/// Why a request got no worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The queue is at `--max-queue`: `503 Server busy`.
    QueueFull,
    /// No worker within `--queue-timeout-ms`: `504 Queue timeout`.
    QueueTimeout,
}

/// Generic over the connection type so the queue can be tested without
/// sockets; the LB uses [`Balancer`].
pub struct Scheduler<C> {
    pool: Mutex<Pool<C, Waiter<C>>>,
    /// Woken when a worker that quit mid-request checks in.
    drained: Notify,
    queue_timeout: Duration,
    manager: mpsc::UnboundedSender<LinkMsg>,
}

pub type Balancer = Scheduler<Upstream>;

impl<C> Scheduler<C> {
    pub fn new(
        pool: Pool<C, Waiter<C>>,
        queue_timeout: Duration,
        manager: mpsc::UnboundedSender<LinkMsg>,
    ) -> Self {
        Scheduler {
            pool: Mutex::new(pool),
            drained: Notify::new(),
            queue_timeout,
            manager,
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool<C, Waiter<C>>> {
        // A panic elsewhere cannot leave the pool half-updated in a way
        // that matters more than stopping the LB would.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a worker (see [`Pool::join`]: the same id on another socket is
    /// refused); true if it is new.
    pub fn join(
        &self,
        id: WorkerId,
        socket: &Path,
        version: Option<u64>,
    ) -> Result<bool, Conflict> {
        let now = Instant::now().into_std();
        self.pool().join(id, socket, version, now, deliver)
    }

    pub fn leave(&self, id: WorkerId) {
        self.pool().leave(id);
    }

    pub fn stats(&self) -> Stats {
        self.pool().stats()
    }

    /// Each joined worker (`rip-server status`).
    pub fn workers(&self) -> Vec<super::pool::WorkerRow> {
        self.pool().workers(Instant::now().into_std())
    }

    /// Takes a worker off the rotation and asks the manager to replace it.
    pub fn retire(&self, id: WorkerId) {
        if self.pool().retire(id) {
            let why = Retirement::Abandoned;
            let _ = self.manager.send(LinkMsg::Retire { id, why });
        }
    }

    /// Asks the manager to replace a worker whose app asked (during
    /// checkout `epoch`) to be recycled; it serves on only while the pool
    /// is short of fresh workers.
    fn recycle(&self, id: WorkerId, epoch: Epoch) {
        if self
            .pool()
            .spend_lease(id, epoch, Instant::now().into_std())
        {
            let why = Retirement::Reload;
            let _ = self.manager.send(LinkMsg::Retire { id, why });
        }
    }

    /// [`Scheduler::retire`], for the exchange holding checkout `epoch`.
    fn retire_lease(&self, id: WorkerId, epoch: Epoch) {
        if self.pool().retire_lease(id, epoch) {
            let why = Retirement::Abandoned;
            let _ = self.manager.send(LinkMsg::Retire { id, why });
        }
    }

    /// Runs forever: hands spent workers whose grace has run out to queued
    /// requests (see `pool::SPENT_GRACE`).
    pub async fn wake_spent(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            self.pool().wake(Instant::now().into_std(), deliver);
        }
    }

    /// Waits for a worker: the idle stack first, else the queue until the
    /// queue timeout.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<C>, Reject> {
        self.acquire_until(Instant::now() + self.queue_timeout)
            .await
    }

    /// How long a request may wait in the queue.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Waits for a worker until `deadline` (a request tried again keeps
    /// the deadline it was first queued with).
    pub async fn acquire_until(self: &Arc<Self>, deadline: Instant) -> Result<Lease<C>, Reject> {
        let (key, rx) = {
            let mut pool = self.pool();
            if let Some(checkout) = pool.checkout(Instant::now().into_std()) {
                drop(pool);
                return Ok(self.lease(checkout));
            }
            if deadline <= Instant::now() {
                return Err(Reject::QueueTimeout);
            }
            let (tx, rx) = oneshot::channel();
            match pool.enqueue(tx, deadline.into_std()) {
                Enqueue::Queued(key) => {
                    super::metrics::METRICS.queued(pool.queued());
                    (key, rx)
                }
                Enqueue::Full(_) => return Err(Reject::QueueFull),
            }
        };
        let mut waiting = Waiting {
            scheduler: self,
            key,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(checkout)) => {
                waiting.rx = None;
                Ok(self.lease(checkout))
            }
            // Timed out, or dropped from the queue at its deadline.
            Ok(Err(_)) | Err(_) => Err(Reject::QueueTimeout),
        }
    }

    fn lease(self: &Arc<Self>, checkout: Checkout<C>) -> Lease<C> {
        if checkout.replace {
            let why = Retirement::Recycle;
            let _ = self.manager.send(LinkMsg::Retire {
                id: checkout.id,
                why,
            });
        }
        if checkout.first {
            let _ = self.manager.send(LinkMsg::Served { id: checkout.id });
        }
        Lease {
            scheduler: self.clone(),
            id: checkout.id,
            epoch: checkout.epoch,
            socket: checkout.socket,
            conn: checkout.conn,
            finished: false,
        }
    }

    fn checkin(&self, id: WorkerId, epoch: Epoch, conn: Option<C>, outcome: Outcome) -> Checkin {
        let now = Instant::now().into_std();
        let checkin = self.pool().checkin(id, epoch, conn, outcome, now, deliver);
        match checkin {
            Checkin::Done | Checkin::HandedOver | Checkin::Stale => {}
            Checkin::Retired => {
                let why = Retirement::Abandoned;
                let _ = self.manager.send(LinkMsg::Retire { id, why });
            }
            Checkin::Drained => self.drained.notify_waiters(),
        }
        checkin
    }

    /// Waits (up to `limit`) until worker `id`, which quit, has no request
    /// in flight — so that its app is stopped only once nothing of ours is
    /// on its connection.
    pub async fn drain(&self, id: WorkerId, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.pool().in_flight(id) {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }
}

fn deliver<C>(waiter: Waiter<C>, checkout: Checkout<C>) -> Result<(), Checkout<C>> {
    waiter.send(checkout)
}

/// A queued request; leaving the queue early (timeout, client gone) takes
/// it out, or gives back a worker handed to it in that very moment.
struct Waiting<'a, C> {
    scheduler: &'a Scheduler<C>,
    key: u64,
    rx: Option<oneshot::Receiver<Checkout<C>>>,
}

impl<C> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let now = Instant::now().into_std();
        let mut pool = self.scheduler.pool();
        if !pool.cancel(self.key) {
            if let Ok(checkout) = rx.try_recv() {
                pool.give_back(checkout, now, deliver);
            }
        }
    }
}

/// One worker, held for one request. Dropping it unfinished counts as an
/// abandoned exchange: the worker is retired, since its app may still be
/// busy with the request.
pub struct Lease<C> {
    scheduler: Arc<Scheduler<C>>,
    id: WorkerId,
    /// Which checkout of the worker this is: the pool acts on this lease's
    /// reports only while it is the worker's live one.
    epoch: Epoch,
    socket: Arc<Path>,
    conn: Option<C>,
    finished: bool,
}

impl<C> Lease<C> {
    pub fn id(&self) -> WorkerId {
        self.id
    }

    pub fn socket(&self) -> &Arc<Path> {
        &self.socket
    }

    /// The kept-alive connection parked with this worker, if any.
    pub fn take_conn(&mut self) -> Option<C> {
        self.conn.take()
    }

    /// The exchange is over and the app is free: park `conn` with the
    /// worker and give it to the next request. True if a waiting request
    /// got it.
    pub fn release(mut self, conn: Option<C>) -> bool {
        self.finished = true;
        self.scheduler
            .checkin(self.id, self.epoch, conn, Outcome::Done)
            == Checkin::HandedOver
    }

    /// The app answered busy (it serves someone else): the worker goes to
    /// the bottom of the idle stack, so the retry tries another one.
    pub fn busy(mut self, conn: Option<C>) {
        self.finished = true;
        self.scheduler
            .checkin(self.id, self.epoch, conn, Outcome::Busy);
    }

    /// Takes the worker out of rotation and asks for its replacement.
    pub fn retire(&self) {
        self.scheduler.retire_lease(self.id, self.epoch);
    }

    /// Asks for the worker's replacement (its app asked to be recycled).
    pub fn recycle(&self) {
        self.scheduler.recycle(self.id, self.epoch);
    }
}

impl<C> Drop for Lease<C> {
    fn drop(&mut self) {
        if !self.finished {
            self.scheduler
                .checkin(self.id, self.epoch, None, Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quit_waits_for_the_request_in_flight() {
        let (s, _rx) = scheduler(8);
        s.join(0, Path::new("/tmp/x.0.sock"), None).unwrap();
        let lease = s.acquire().await.expect("worker");
        s.leave(0);
        let drain = tokio::spawn({
            let s = s.clone();
            async move {
                s.drain(0, Duration::from_secs(10)).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!drain.is_finished(), "returned with a request in flight");
        let released = Instant::now();
        lease.release(None);
        assert_eq!(drain.await.expect("task"), released);
        // An idle worker's quit does not wait at all.
        s.join(1, Path::new("/tmp/x.1.sock"), None).unwrap();
        s.leave(1);
        let started = Instant::now();
        s.drain(1, Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    fn scheduler(max_queue: usize) -> (Arc<Scheduler<()>>, mpsc::UnboundedReceiver<LinkMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Arc::new(Scheduler::new(
            Pool::new(max_queue, 0),
            Duration::from_millis(2000),
            tx,
        ));
        (s, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_times_out_at_its_deadline() {
        let (s, _rx) = scheduler(8);
        s.join(0, Path::new("/tmp/x.0.sock"), None).unwrap();
        let busy = s.acquire().await.expect("idle worker");
        let started = Instant::now();
        assert_eq!(s.acquire().await.err(), Some(Reject::QueueTimeout));
        assert_eq!(started.elapsed(), Duration::from_millis(2000));
        assert_eq!(s.stats().queued, 0, "the waiter left the queue");
        busy.release(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_worker_goes_to_the_oldest_waiter() {
        let (s, _rx) = scheduler(8);
        s.join(0, Path::new("/tmp/x.0.sock"), None).unwrap();
        let lease = s.acquire().await.expect("idle worker");
        let waiter = |s: Arc<Scheduler<()>>| async move {
            s.acquire().await.map(|lease| {
                let got = (lease.id(), Instant::now());
                lease.release(None);
                got
            })
        };
        let first = tokio::spawn(waiter(s.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = tokio::spawn(waiter(s.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.stats().queued, 2);
        let freed_at = Instant::now();
        lease.release(None);
        let (id, at) = first.await.expect("task").expect("worker");
        assert_eq!((id, at), (0, freed_at), "the oldest waiter, at once");
        let (id, _) = second.await.expect("task").expect("worker");
        assert_eq!(id, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_answers_at_once() {
        let (s, _rx) = scheduler(1);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.acquire().await.err() }
        });
        tokio::task::yield_now().await;
        assert_eq!(s.acquire().await.err(), Some(Reject::QueueFull));
        assert_eq!(waiting.await.expect("task"), Some(Reject::QueueTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_joining_worker_serves_the_queue() {
        let (s, _rx) = scheduler(8);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.acquire().await.map(|l| l.id()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.join(5, Path::new("/tmp/x.5.sock"), None).unwrap();
        assert_eq!(waiting.await.expect("task").ok(), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_lease_retires_its_worker() {
        let (s, mut rx) = scheduler(8);
        s.join(0, Path::new("/tmp/x.0.sock"), None).unwrap();
        s.join(1, Path::new("/tmp/x.1.sock"), None).unwrap();
        let lease = s.acquire().await.expect("worker");
        assert_eq!(lease.id(), 1);
        assert_eq!(rx.recv().await, Some(LinkMsg::Served { id: 1 }));
        drop(lease);
        assert_eq!(
            rx.recv().await,
            Some(LinkMsg::Retire {
                id: 1,
                why: Retirement::Abandoned
            })
        );
        let next = s.acquire().await.expect("worker");
        assert_eq!(next.id(), 0);
        next.release(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_gives_its_worker_back() {
        let (s, _rx) = scheduler(8);
        s.join(0, Path::new("/tmp/x.0.sock"), None).unwrap();
        let lease = s.acquire().await.expect("worker");
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.acquire().await.map(|l| l.id()) }
        });
        tokio::task::yield_now().await;
        // The worker is delivered and the waiter is cancelled before it runs.
        lease.release(None);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(s.stats().idle, 1, "the delivered worker came back");
        assert_eq!(s.acquire().await.expect("worker").id(), 0);
    }
}
