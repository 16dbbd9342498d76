//! The scheduling core of the load balancer: plain data, no I/O, no clock.
//!
//! Joined workers sit in a table; idle ones form a LIFO stack (the most
//! recently freed worker serves next, so a warm process and its caches stay
//! hot); requests that find no idle worker wait in a bounded FIFO queue with
//! a deadline each. A worker is checked out for exactly one request and
//! checked back in when that exchange is over — so no app ever holds two
//! requests. The async layer ([`super::balancer`]) owns the clock, the
//! channels and the connections; this file owns every decision.
//!
//! A worker is the pair (id, socket): a join of a live id on another socket
//! is refused, and a repeated join of the same pair changes nothing. Each
//! checkout carries an [`Epoch`], and only the check-in (or retirement, or
//! recycle) that carries the epoch of the worker's live checkout counts: a
//! stale one — an exchange that outlived a re-join, say — changes nothing,
//! so no worker is ever handed out while another request holds it.
//!
//! Generic over `C`, the kept-alive connection parked with an idle worker,
//! and `W`, a queued waiter (a channel sender in production).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::control::WorkerId;

/// Which checkout of a worker: every checkout gets a new one.
pub type Epoch = u64;

/// A worker handed out for one request.
#[derive(Debug)]
pub struct Checkout<C> {
    pub id: WorkerId,
    pub epoch: Epoch,
    pub socket: Arc<Path>,
    /// The connection parked with the worker, if one is open.
    pub conn: Option<C>,
    /// The worker is near the end of its request budget: ask the manager
    /// for a replacement now, so that it has joined by the time this worker
    /// stops taking requests (capacity never dips for a recycle).
    pub replace: bool,
    /// This checkout took the last request of the budget: the worker is
    /// spent.
    pub last: bool,
    /// The worker's first request.
    pub first: bool,
}

/// How long a spent worker waits for a fresh one to take its place before
/// it fills in again (see `Slot::spent`). Its replacement was asked for with
/// a tenth of its budget left, so it has usually joined by then.
pub const SPENT_GRACE: Duration = Duration::from_secs(1);

/// When a worker with `budget` requests asks for its replacement: with a
/// tenth of its budget left.
pub fn replace_at(budget: u64) -> u64 {
    budget - budget / 10
}

/// How an exchange with a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was read to its end: the app is free again.
    Done,
    /// The exchange was cut off (read timeout, client gone, worker lost):
    /// the app may still be busy, so it gets nothing more.
    Abandoned,
    /// The app answered busy without taking the request: it goes to the
    /// bottom of the idle stack, so a retry tries the others first.
    Busy,
}

/// What a check-in means beyond the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkin {
    Done,
    /// The worker went straight to a waiting request.
    HandedOver,
    /// The worker was retired just now (abandoned): replace it.
    Retired,
    /// The worker had quit while busy and is now gone: its quit may return.
    Drained,
    /// Not the worker's live checkout (an old epoch): nothing changed.
    Stale,
}

/// A join that would replace a live worker by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: WorkerId,
    /// Where the live worker with that id listens.
    pub socket: Arc<Path>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker {} has joined already, at {}",
            self.id,
            self.socket.display()
        )
    }
}

/// What became of a request that found no idle worker.
#[derive(Debug)]
pub enum Enqueue<W> {
    /// Queued under this key (to cancel it on timeout).
    Queued(u64),
    /// The queue is at capacity: the waiter comes back.
    Full(W),
}

/// Where a worker is in its life in the pool. (Whether it has a request
/// out is [`Slot::lease`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Takes requests.
    Serving,
    /// Its budget was used up (or its app asked to be recycled) at this
    /// time. From then on it gets no requests — unless, [`SPENT_GRACE`]
    /// later, the pool is still short of fresh workers: its replacement
    /// cannot start (a broken deploy), and the old code keeps serving
    /// rather than leave requests to queue and time out.
    Spent(Instant),
    /// Gets no further requests (abandoned, unreachable); its replacement
    /// has been asked for.
    Retired,
    /// Quit or died while it had a request out: forgotten at its check-in.
    Leaving,
}

#[derive(Debug)]
struct Slot<C> {
    socket: Arc<Path>,
    version: Option<u64>,
    life: Life,
    /// The epoch of the checkout out on this worker, if one is.
    lease: Option<Epoch>,
    served: u64,
    /// Requests this worker serves before it is retired; 0 = no limit.
    budget: u64,
    conn: Option<C>,
    joined: Instant,
    /// When it last took a request.
    last_used: Option<Instant>,
}

#[derive(Debug)]
struct Waiter<W> {
    key: u64,
    deadline: Instant,
    waiter: W,
}

/// One joined worker, for `rip-server status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerRow {
    pub id: WorkerId,
    pub version: Option<u64>,
    /// idle, busy, spent, outdated (an older version), retired, leaving.
    pub state: &'static str,
    /// Requests it has taken.
    pub served: u64,
    /// Seconds since it joined.
    pub joined_secs: f64,
    /// Seconds since it last took a request (None: never).
    pub idle_secs: Option<f64>,
}

/// Counts for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Joined workers of the newest version that have not left.
    pub workers: usize,
    pub idle: usize,
    pub busy: usize,
    pub queued: usize,
    /// Past their budget, waiting for their replacement.
    pub spent: usize,
}

#[derive(Debug)]
pub struct Pool<C, W> {
    slots: HashMap<WorkerId, Slot<C>>,
    idle: Vec<WorkerId>,
    queue: VecDeque<Waiter<W>>,
    max_queue: usize,
    /// Requests a worker serves before it is spent; 0 = never.
    max_requests: u64,
    /// How many workers the pool should have (`w:<N>`); spent workers fill
    /// in while fewer fresh ones have joined.
    expected: usize,
    /// Up to this many more, drawn per worker, so that workers started
    /// together are not all recycled together.
    jitter: u64,
    /// xorshift64* state for the jitter draws.
    rng: u64,
    /// The newest version any joined worker announced.
    newest: Option<u64>,
    next_key: u64,
    next_epoch: Epoch,
}

impl<C, W> Pool<C, W> {
    pub fn new(max_queue: usize, max_requests: u64) -> Self {
        Pool {
            slots: HashMap::new(),
            idle: Vec::new(),
            queue: VecDeque::new(),
            max_queue,
            max_requests,
            expected: 0,
            jitter: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            newest: None,
            next_key: 0,
            next_epoch: 0,
        }
    }

    /// Sets how many workers the pool should have (see [`Slot::spent`]).
    pub fn with_expected(mut self, expected: usize) -> Self {
        self.expected = expected;
        self
    }

    /// Adds up to `jitter` requests (drawn per worker from `seed`) to each
    /// worker's budget.
    pub fn with_jitter(mut self, jitter: u64, seed: u64) -> Self {
        self.jitter = jitter;
        self.rng = seed | 1;
        self
    }

    fn draw_budget(&mut self) -> u64 {
        if self.max_requests == 0 || self.jitter == 0 {
            return self.max_requests;
        }
        // xorshift64*: plenty for spreading recycles apart.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        self.max_requests + draw % (self.jitter + 1)
    }

    /// Adds a worker, or — for the same id and socket again — leaves it as
    /// it is (a worker retrying its join, a replay after an LB restart),
    /// unless it was retired and has no request out: then it is back, fresh
    /// (an external worker that restarted under its id, as the original's
    /// do after their request budget).
    /// If requests are waiting, the oldest live one gets it at once through
    /// `deliver`. A newer `version` than any seen makes every older worker
    /// ineligible for new requests; a worker without one is always current.
    /// True if the worker is new (or back after a quit).
    pub fn join(
        &mut self,
        id: WorkerId,
        socket: &Path,
        version: Option<u64>,
        now: Instant,
        deliver: impl FnMut(W, Checkout<C>) -> Result<(), Checkout<C>>,
    ) -> Result<bool, Conflict> {
        if let Some(slot) = self.slots.get_mut(&id) {
            if *slot.socket != *socket {
                return Err(Conflict {
                    id,
                    socket: slot.socket.clone(),
                });
            }
            match (slot.life, slot.lease) {
                (Life::Retired, None) => self.forget(id),
                // It quit while busy and says it is back: it serves again
                // once its request is over.
                (Life::Leaving, _) => {
                    slot.life = Life::Serving;
                    return Ok(true);
                }
                _ => return Ok(false),
            }
        }
        if let Some(v) = version {
            if self.newest.is_none_or(|n| v > n) {
                self.newest = Some(v);
                let slots = &self.slots;
                self.idle
                    .retain(|w| slots.get(w).is_some_and(|s| Self::current(Some(v), s)));
            }
        }
        let budget = self.draw_budget();
        self.slots.insert(
            id,
            Slot {
                socket: Arc::from(socket),
                version,
                life: Life::Serving,
                lease: None,
                served: 0,
                budget,
                conn: None,
                joined: now,
                last_used: None,
            },
        );
        if self.eligible(id, now) {
            self.hand_over(id, now, deliver);
        }
        Ok(true)
    }

    /// Removes a worker that quit or died. If it is mid-request it is
    /// forgotten when that request checks in.
    pub fn leave(&mut self, id: WorkerId) {
        match self.slots.get_mut(&id) {
            Some(slot) if slot.lease.is_some() => {
                slot.life = Life::Leaving;
                slot.conn = None;
                self.idle.retain(|&w| w != id);
            }
            Some(_) => self.forget(id),
            None => {}
        }
    }

    fn forget(&mut self, id: WorkerId) {
        self.slots.remove(&id);
        self.idle.retain(|&w| w != id);
    }

    /// Marks a worker as getting no further requests. Returns true the first
    /// time, when the manager should be asked for a replacement.
    pub fn retire(&mut self, id: WorkerId) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        if matches!(slot.life, Life::Retired | Life::Leaving) {
            return false;
        }
        slot.life = Life::Retired;
        slot.conn = None;
        self.idle.retain(|&w| w != id);
        true
    }

    /// [`Pool::retire`], asked by the exchange holding checkout `epoch`;
    /// nothing if that is not the worker's live checkout.
    pub fn retire_lease(&mut self, id: WorkerId, epoch: Epoch) -> bool {
        self.is_live(id, epoch) && self.retire(id)
    }

    /// Marks a worker as spent (its app asked to be recycled). Returns true
    /// the first time, when the manager should be asked for a replacement.
    pub fn spend(&mut self, id: WorkerId, now: Instant) -> bool {
        match self.slots.get_mut(&id) {
            Some(slot) if slot.life == Life::Serving => {
                slot.life = Life::Spent(now);
                true
            }
            _ => false,
        }
    }

    /// [`Pool::spend`], asked by the exchange holding checkout `epoch`.
    pub fn spend_lease(&mut self, id: WorkerId, epoch: Epoch, now: Instant) -> bool {
        self.is_live(id, epoch) && self.spend(id, now)
    }

    /// Whether `epoch` is the live checkout of worker `id`.
    fn is_live(&self, id: WorkerId, epoch: Epoch) -> bool {
        self.slots.get(&id).is_some_and(|s| s.lease == Some(epoch))
    }

    /// Takes the most recently freed eligible worker, if any — a fresh one
    /// before a spent one.
    pub fn checkout(&mut self, now: Instant) -> Option<Checkout<C>> {
        // The common case: a fresh worker on top.
        while let Some(&id) = self.idle.last() {
            if !self.stackable(id) {
                self.idle.pop();
            } else if !self.is_spent(id) {
                self.idle.pop();
                return Some(self.check_out(id, now));
            } else {
                break;
            }
        }
        // Spent workers stay stacked, so that they can fill in later.
        let slots = &self.slots;
        let newest = self.newest;
        self.idle
            .retain(|w| slots.get(w).is_some_and(|s| Self::free(newest, s)));
        let pos = self
            .idle
            .iter()
            .rposition(|&w| !self.is_spent(w))
            .or_else(|| self.idle.iter().rposition(|&w| self.eligible(w, now)))?;
        let id = self.idle.remove(pos);
        Some(self.check_out(id, now))
    }

    /// Hands spent workers that may fill in now (see [`Life::Spent`]) to
    /// waiting requests; called now and then, since nothing else happens
    /// when a grace runs out.
    pub fn wake(
        &mut self,
        now: Instant,
        mut deliver: impl FnMut(W, Checkout<C>) -> Result<(), Checkout<C>>,
    ) {
        while !self.queue.is_empty() {
            let Some(pos) = self.idle.iter().rposition(|&w| self.eligible(w, now)) else {
                return;
            };
            let id = self.idle.remove(pos);
            if !self.hand_over(id, now, &mut deliver) {
                return;
            }
        }
    }

    fn is_spent(&self, id: WorkerId) -> bool {
        self.slots
            .get(&id)
            .is_some_and(|s| matches!(s.life, Life::Spent(_)))
    }

    fn stackable(&self, id: WorkerId) -> bool {
        self.slots
            .get(&id)
            .is_some_and(|s| Self::free(self.newest, s))
    }

    /// Queues a waiter until `deadline`, unless the queue is full.
    pub fn enqueue(&mut self, waiter: W, deadline: Instant) -> Enqueue<W> {
        if self.queue.len() >= self.max_queue {
            return Enqueue::Full(waiter);
        }
        let key = self.next_key;
        self.next_key += 1;
        self.queue.push_back(Waiter {
            key,
            deadline,
            waiter,
        });
        Enqueue::Queued(key)
    }

    /// Takes a waiter out of the queue (its deadline passed or its client
    /// left). False if it was no longer queued: a worker was handed to it.
    pub fn cancel(&mut self, key: u64) -> bool {
        // Deadlines expire in FIFO order, so the waiter is nearly always first.
        match self.queue.iter().position(|w| w.key == key) {
            Some(i) => {
                self.queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// Returns a worker after the exchange of checkout `epoch`.
    pub fn checkin(
        &mut self,
        id: WorkerId,
        epoch: Epoch,
        conn: Option<C>,
        outcome: Outcome,
        now: Instant,
        deliver: impl FnMut(W, Checkout<C>) -> Result<(), Checkout<C>>,
    ) -> Checkin {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Checkin::Stale;
        };
        if slot.lease != Some(epoch) {
            return Checkin::Stale;
        }
        slot.lease = None;
        if slot.life == Life::Leaving {
            self.forget(id);
            return Checkin::Drained;
        }
        if outcome == Outcome::Abandoned {
            return if self.retire(id) {
                Checkin::Retired
            } else {
                Checkin::Done
            };
        }
        if slot.life != Life::Retired {
            slot.conn = conn;
        }
        if self.eligible(id, now) {
            if outcome == Outcome::Busy && self.queue.is_empty() {
                self.idle.insert(0, id);
            } else if self.hand_over(id, now, deliver) {
                return Checkin::HandedOver;
            }
        } else if self.stackable(id) {
            self.idle.push(id); // spent: it may fill in later
        }
        Checkin::Done
    }

    /// Whether `id` is registered and has a request in flight.
    pub fn in_flight(&self, id: WorkerId) -> bool {
        self.slots.get(&id).is_some_and(|s| s.lease.is_some())
    }

    /// Gives back a checkout that was never used (its waiter left just as
    /// it was delivered): it does not count as a served request.
    pub fn give_back(
        &mut self,
        checkout: Checkout<C>,
        now: Instant,
        deliver: impl FnMut(W, Checkout<C>) -> Result<(), Checkout<C>>,
    ) {
        if let Some(id) = self.undo(checkout) {
            if self.eligible(id, now) {
                self.hand_over(id, now, deliver);
            } else if self.stackable(id) {
                self.idle.push(id);
            }
        }
    }

    /// Each joined worker, by id, as `rip-server status` shows it.
    pub fn workers(&self, now: Instant) -> Vec<WorkerRow> {
        let mut rows: Vec<WorkerRow> = self
            .slots
            .iter()
            .map(|(&id, s)| WorkerRow {
                id,
                version: s.version,
                state: match (s.life, s.lease) {
                    (Life::Leaving, _) => "leaving",
                    (Life::Retired, _) => "retired",
                    (_, Some(_)) => "busy",
                    (Life::Spent(_), None) => "spent",
                    (Life::Serving, None) if !self.is_current(s) => "outdated",
                    (Life::Serving, None) => "idle",
                },
                served: s.served,
                joined_secs: now.saturating_duration_since(s.joined).as_secs_f64(),
                idle_secs: s
                    .last_used
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn stats(&self) -> Stats {
        let workers = self
            .slots
            .values()
            .filter(|s| Self::serving(s) && self.is_current(s))
            .count();
        let busy = self.slots.values().filter(|s| s.lease.is_some()).count();
        let spent = self
            .slots
            .values()
            .filter(|s| matches!(s.life, Life::Spent(_)))
            .count();
        Stats {
            workers,
            idle: self.idle.len(),
            busy,
            queued: self.queue.len(),
            spent,
        }
    }

    fn is_current(&self, slot: &Slot<C>) -> bool {
        Self::current(self.newest, slot)
    }

    fn current(newest: Option<u64>, slot: &Slot<C>) -> bool {
        // As the original: a worker without a version is always current.
        match (newest, slot.version) {
            (Some(newest), Some(v)) => v >= newest,
            _ => true,
        }
    }

    /// Serving, or spent but not yet replaced.
    fn serving(slot: &Slot<C>) -> bool {
        matches!(slot.life, Life::Serving | Life::Spent(_))
    }

    /// Free and serving: it may stay on the idle stack (a spent one too,
    /// see [`Life::Spent`]).
    fn free(newest: Option<u64>, slot: &Slot<C>) -> bool {
        slot.lease.is_none() && Self::serving(slot) && Self::current(newest, slot)
    }

    /// Whether `id` may take a new request.
    fn eligible(&self, id: WorkerId, now: Instant) -> bool {
        self.slots.get(&id).is_some_and(|s| {
            Self::free(self.newest, s)
                && match s.life {
                    Life::Spent(t) => now >= t + SPENT_GRACE && self.short_of_fresh(),
                    _ => true,
                }
        })
    }

    /// Whether fewer fresh (unspent, serving, current) workers have joined
    /// than the pool should have.
    fn short_of_fresh(&self) -> bool {
        let fresh = self
            .slots
            .values()
            .filter(|s| s.life == Life::Serving && self.is_current(s))
            .count();
        fresh < self.expected
    }

    fn check_out(&mut self, id: WorkerId, now: Instant) -> Checkout<C> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let slot = self
            .slots
            .get_mut(&id)
            .expect("check_out is only called for an eligible worker");
        debug_assert!(slot.lease.is_none(), "worker {id} checked out twice");
        slot.lease = Some(epoch);
        slot.served += 1;
        slot.last_used = Some(now);
        let limited = slot.budget > 0;
        let replace = limited && slot.served == replace_at(slot.budget);
        // (A spent worker filling in stays spent since it first was.)
        let last = limited && slot.served >= slot.budget && slot.life == Life::Serving;
        if last {
            slot.life = Life::Spent(now);
        }
        Checkout {
            id,
            epoch,
            socket: slot.socket.clone(),
            conn: slot.conn.take(),
            replace,
            last,
            first: slot.served == 1,
        }
    }

    /// Reverts a checkout that was never used; returns the worker's id if
    /// it is still registered (it is then free but not on the stack).
    fn undo(&mut self, checkout: Checkout<C>) -> Option<WorkerId> {
        let id = checkout.id;
        let slot = self.slots.get_mut(&id)?;
        if slot.lease != Some(checkout.epoch) {
            return None;
        }
        slot.lease = None;
        slot.served -= 1;
        if checkout.last && matches!(slot.life, Life::Spent(_)) {
            slot.life = Life::Serving;
        }
        match slot.life {
            Life::Leaving => {
                self.forget(id);
                None
            }
            Life::Retired => None,
            _ => {
                slot.conn = checkout.conn;
                Some(id)
            }
        }
    }

    /// Hands an eligible, unstacked worker to the oldest waiter whose
    /// deadline has not passed (true), or pushes it on the idle stack.
    fn hand_over(
        &mut self,
        id: WorkerId,
        now: Instant,
        mut deliver: impl FnMut(W, Checkout<C>) -> Result<(), Checkout<C>>,
    ) -> bool {
        while let Some(waiter) = self.queue.pop_front() {
            if waiter.deadline <= now {
                // Its timer is answering 504 right now; dropping the waiter
                // tells it so even if the timer has not run yet.
                continue;
            }
            let checkout = self.check_out(id, now);
            match deliver(waiter.waiter, checkout) {
                Ok(()) => return true,
                Err(checkout) => {
                    if self.undo(checkout).is_none() || !self.eligible(id, now) {
                        return false;
                    }
                }
            }
        }
        self.idle.push(id);
        false
    }
}

#[cfg(test)]
#[path = "pool_model_tests.rs"]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiters are names; delivery records who got which worker.
    type TestPool = Pool<&'static str, &'static str>;

    fn pool(max_queue: usize, max_requests: u64) -> TestPool {
        Pool::new(max_queue, max_requests)
    }

    fn join(
        p: &mut TestPool,
        id: WorkerId,
        version: Option<u64>,
        now: Instant,
    ) -> Vec<(&'static str, WorkerId)> {
        let mut got = Vec::new();
        p.join(
            id,
            Path::new(&format!("/tmp/p.{id}.sock")),
            version,
            now,
            |w, c| {
                got.push((w, c.id));
                Ok(())
            },
        )
        .expect("no conflict");
        got
    }

    fn checkin(
        p: &mut TestPool,
        id: WorkerId,
        outcome: Outcome,
        now: Instant,
    ) -> (bool, Vec<(&'static str, WorkerId)>) {
        let mut got = Vec::new();
        let checkin = p.checkin(id, live(p, id), Some("conn"), outcome, now, |w, c| {
            got.push((w, c.id));
            Ok(())
        });
        (checkin == Checkin::Retired, got)
    }

    /// The epoch of worker `id`'s live checkout.
    fn live(p: &TestPool, id: WorkerId) -> Epoch {
        p.slots[&id].lease.expect("checked out")
    }

    fn take(p: &mut TestPool) -> Option<WorkerId> {
        take_at(p, Instant::now())
    }

    fn take_at(p: &mut TestPool, now: Instant) -> Option<WorkerId> {
        p.checkout(now).map(|c| c.id)
    }

    #[test]
    fn idle_workers_are_a_lifo_stack() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        for id in 0..3 {
            join(&mut p, id, None, now);
        }
        assert_eq!(take(&mut p), Some(2));
        assert_eq!(take(&mut p), Some(1));
        checkin(&mut p, 2, Outcome::Done, now);
        checkin(&mut p, 1, Outcome::Done, now);
        // The most recently freed worker serves next.
        assert_eq!(take(&mut p), Some(1));
        assert_eq!(take(&mut p), Some(2));
        assert_eq!(take(&mut p), Some(0));
        assert_eq!(take(&mut p), None);
    }

    #[test]
    fn the_connection_stays_with_its_worker() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        let c = p.checkout(now).expect("worker");
        assert_eq!(c.conn, None);
        checkin(&mut p, 0, Outcome::Done, now);
        assert_eq!(p.checkout(now).expect("worker").conn, Some("conn"));
    }

    #[test]
    fn waiters_are_served_first_in_first_out() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        assert_eq!(take(&mut p), Some(0));
        assert!(matches!(p.enqueue("first", later), Enqueue::Queued(_)));
        assert!(matches!(p.enqueue("second", later), Enqueue::Queued(_)));
        let (_, got) = checkin(&mut p, 0, Outcome::Done, now);
        assert_eq!(got, vec![("first", 0)]);
        let (_, got) = checkin(&mut p, 0, Outcome::Done, now);
        assert_eq!(got, vec![("second", 0)]);
        let (_, got) = checkin(&mut p, 0, Outcome::Done, now);
        assert!(got.is_empty());
        assert_eq!(p.stats().idle, 1);
    }

    #[test]
    fn a_joining_worker_takes_the_oldest_waiter() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        p.enqueue("a", now + Duration::from_secs(1));
        p.enqueue("b", now + Duration::from_secs(1));
        assert_eq!(join(&mut p, 7, None, now), vec![("a", 7)]);
        assert_eq!(p.stats().queued, 1);
    }

    #[test]
    fn a_full_queue_refuses() {
        let now = Instant::now();
        let mut p = pool(2, 0);
        assert!(matches!(p.enqueue("a", now), Enqueue::Queued(_)));
        assert!(matches!(p.enqueue("b", now), Enqueue::Queued(_)));
        assert!(matches!(p.enqueue("c", now), Enqueue::Full("c")));
    }

    #[test]
    fn expired_waiters_are_passed_over() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        take(&mut p);
        p.enqueue("late", now + Duration::from_millis(10));
        p.enqueue("fresh", now + Duration::from_secs(5));
        let (_, got) = checkin(&mut p, 0, Outcome::Done, now + Duration::from_millis(10));
        assert_eq!(got, vec![("fresh", 0)]);
    }

    #[test]
    fn a_cancelled_waiter_gets_nothing() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        take(&mut p);
        let Enqueue::Queued(key) = p.enqueue("gone", now + Duration::from_secs(1)) else {
            panic!("queued")
        };
        assert!(p.cancel(key));
        assert!(!p.cancel(key));
        let (_, got) = checkin(&mut p, 0, Outcome::Done, now);
        assert!(got.is_empty());
        assert_eq!(take(&mut p), Some(0));
    }

    #[test]
    fn a_failed_delivery_falls_through_to_the_next_waiter() {
        let now = Instant::now();
        let mut p = pool(8, 3);
        join(&mut p, 0, None, now);
        take(&mut p);
        p.enqueue("dropped", now + Duration::from_secs(1));
        p.enqueue("alive", now + Duration::from_secs(1));
        let mut got = Vec::new();
        p.checkin(0, live(&p, 0), None, Outcome::Done, now, |w, c| {
            if w == "dropped" {
                Err(c)
            } else {
                got.push((w, c.id, c.last));
                Ok(())
            }
        });
        // Second of a budget of 3: the failed delivery did not count.
        assert_eq!(got, vec![("alive", 0, false)]);
        checkin(&mut p, 0, Outcome::Done, now);
        assert!(p.checkout(now).expect("third").last);
    }

    #[test]
    fn a_given_back_checkout_does_not_count() {
        let now = Instant::now();
        let mut p = pool(8, 2);
        join(&mut p, 0, None, now);
        let c = p.checkout(now).expect("worker");
        p.give_back(c, now, |_, c| Err(c));
        assert!(!p.checkout(now).expect("first").last);
        checkin(&mut p, 0, Outcome::Done, now);
        assert!(p.checkout(now).expect("second").last);
    }

    #[test]
    fn a_worker_is_spent_after_its_request_budget() {
        let now = Instant::now();
        let mut p = pool(8, 20);
        join(&mut p, 0, None, now);
        let mut replace_asked = Vec::new();
        for n in 1..=20 {
            let c = p.checkout(now).expect("within the budget");
            if c.replace {
                replace_asked.push(n);
            }
            assert_eq!(c.last, n == 20);
            let (newly, _) = checkin(&mut p, 0, Outcome::Done, now);
            assert!(!newly);
        }
        // The replacement is asked for with a tenth of the budget left.
        assert_eq!(replace_asked, vec![18]);
        assert_eq!(take(&mut p), None, "nothing past the budget");
        // Still counted until it quits, so /status does not flap.
        assert_eq!(p.stats().workers, 1);
        p.leave(0);
        assert_eq!(p.stats().workers, 0);
    }

    #[test]
    fn spent_workers_fill_in_while_the_pool_is_short_of_fresh_ones() {
        let now = Instant::now();
        let later = now + SPENT_GRACE;
        let mut p = pool(8, 0).with_expected(2);
        join(&mut p, 0, None, now);
        join(&mut p, 1, None, now);
        assert!(p.spend(1, now), "the first recycle asks for a replacement");
        assert!(!p.spend(1, now), "once");
        // A fresh worker goes first, though the spent one is on top; the
        // spent one gets nothing while its replacement may be booting.
        assert_eq!(take_at(&mut p, now), Some(0));
        assert_eq!(take_at(&mut p, now), None);
        // Still short of fresh workers a grace later (the replacement cannot
        // start): the spent one serves rather than let requests queue.
        assert_eq!(take_at(&mut p, later), Some(1));
        checkin(&mut p, 0, Outcome::Done, later);
        checkin(&mut p, 1, Outcome::Done, later);
        // Its replacement joins: the pool is whole, the spent one idles
        // until the manager stops it.
        join(&mut p, 2, None, later);
        let mut got: Vec<_> = (0..3).map(|_| take_at(&mut p, later)).collect();
        got.sort();
        assert_eq!(got, vec![None, Some(0), Some(2)]);
        assert_eq!(p.stats().workers, 3, "counted until it quits");
    }

    #[test]
    fn used_up_budgets_keep_serving_while_replacements_fail() {
        let now = Instant::now();
        let later = now + SPENT_GRACE;
        let mut p = pool(8, 3).with_expected(2);
        join(&mut p, 0, None, now);
        join(&mut p, 1, None, now);
        for _ in 0..6 {
            let id = take_at(&mut p, now).expect("within the budgets");
            checkin(&mut p, id, Outcome::Done, now);
        }
        assert_eq!(take_at(&mut p, now), None, "nothing past the budgets");
        // No replacement has joined a grace later (a broken deploy): the
        // old code keeps serving.
        for _ in 0..10 {
            let id = take_at(&mut p, later).expect("spent but not replaced");
            let (retired, _) = checkin(&mut p, id, Outcome::Done, later);
            assert!(!retired);
        }
        // An abandoned exchange still retires a spent worker for good.
        let id = take_at(&mut p, later).expect("a worker");
        checkin(&mut p, id, Outcome::Abandoned, later);
        let other = take_at(&mut p, later).expect("the other");
        assert_ne!(other, id);
        checkin(&mut p, other, Outcome::Done, later);
        assert_eq!(take_at(&mut p, later), Some(other));
    }

    #[test]
    fn a_queued_request_gets_a_spent_worker_once_its_grace_is_over() {
        let now = Instant::now();
        let mut p = pool(8, 1).with_expected(1);
        join(&mut p, 0, None, now);
        assert_eq!(take_at(&mut p, now), Some(0));
        checkin(&mut p, 0, Outcome::Done, now);
        assert!(matches!(
            p.enqueue("a", now + SPENT_GRACE * 2),
            Enqueue::Queued(_)
        ));
        let mut got = Vec::new();
        p.wake(now, |w, c| {
            got.push((w, c.id));
            Ok(())
        });
        assert_eq!(got, vec![], "its replacement may still be booting");
        p.wake(now + SPENT_GRACE, |w, c| {
            got.push((w, c.id));
            Ok(())
        });
        assert_eq!(got, vec![("a", 0)]);
    }

    #[test]
    fn jitter_spreads_budgets_within_its_range() {
        let now = Instant::now();
        let mut p = pool(8, 10).with_jitter(5, 42);
        let mut budgets = Vec::new();
        for id in 0..20 {
            join(&mut p, id, None, now);
            let mut served = 0;
            loop {
                let c = p.checkout(now).expect("worker");
                served += 1;
                let last = c.last;
                checkin(&mut p, c.id, Outcome::Done, now);
                if last {
                    break;
                }
            }
            budgets.push(served);
        }
        assert!(budgets.iter().all(|b| (10..=15).contains(b)), "{budgets:?}");
        budgets.sort();
        budgets.dedup();
        assert!(budgets.len() > 2, "jitter drew almost nothing: {budgets:?}");
    }

    #[test]
    fn an_abandoned_worker_gets_nothing_more() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        join(&mut p, 1, None, now);
        assert_eq!(take(&mut p), Some(1));
        p.enqueue("waiting", now + Duration::from_secs(1));
        let (newly, got) = checkin(&mut p, 1, Outcome::Abandoned, now);
        assert!(newly);
        assert!(
            got.is_empty(),
            "an abandoned worker must not serve the queue"
        );
        assert!(!p.retire(1), "retired once only");
        assert_eq!(take(&mut p), Some(0));
    }

    #[test]
    fn only_the_newest_version_gets_new_requests() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, Some(1), now);
        join(&mut p, 1, Some(1), now);
        assert_eq!(take(&mut p), Some(1));
        join(&mut p, 2, Some(2), now);
        assert_eq!(take(&mut p), Some(2));
        assert_eq!(take(&mut p), None, "version 1 workers are out");
        // A version 1 worker finishing its request is not restacked.
        checkin(&mut p, 1, Outcome::Done, now);
        assert_eq!(take(&mut p), None);
        assert_eq!(p.stats().workers, 1);
    }

    #[test]
    fn a_worker_leaving_mid_request_is_forgotten_at_checkin() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        take(&mut p);
        p.leave(0);
        assert_eq!(p.stats().workers, 0);
        assert!(p.in_flight(0), "it finishes its request first");
        p.enqueue("w", now + Duration::from_secs(1));
        let drained = p.checkin(0, live(&p, 0), None, Outcome::Done, now, |_, c| Err(c));
        assert_eq!(drained, Checkin::Drained);
        assert!(!p.in_flight(0));
        assert_eq!(take(&mut p), None);
    }

    #[test]
    fn a_busy_worker_goes_to_the_bottom_of_the_stack() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        join(&mut p, 1, None, now);
        assert_eq!(take(&mut p), Some(1));
        checkin(&mut p, 1, Outcome::Busy, now);
        assert_eq!(take(&mut p), Some(0));
        assert_eq!(take(&mut p), Some(1));
    }

    #[test]
    fn a_repeated_join_changes_nothing() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        join(&mut p, 0, None, now);
        assert_eq!(p.stats().idle, 1);
        assert_eq!(take(&mut p), Some(0));
        assert_eq!(take(&mut p), None);
    }

    #[test]
    fn a_rejoin_while_busy_never_hands_the_worker_out_twice() {
        // The worker's join was retried after a slow answer (or replayed
        // after an LB restart) while its first request is out.
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        let first = p.checkout(now).expect("worker");
        join(&mut p, 0, None, now);
        assert_eq!(take(&mut p), None, "handed out while busy");
        // The first request ends: the worker is free again, once.
        let checkin = p.checkin(0, first.epoch, None, Outcome::Done, now, |_, c| Err(c));
        assert_eq!(checkin, Checkin::Done);
        let second = p.checkout(now).expect("free again");
        assert_eq!(take(&mut p), None);
        // A late report from the first exchange changes nothing.
        let late = p.checkin(0, first.epoch, None, Outcome::Done, now, |_, c| Err(c));
        assert_eq!(late, Checkin::Stale);
        assert!(!p.retire_lease(0, first.epoch), "a stale lease retired it");
        assert_eq!(take(&mut p), None, "a stale check-in freed a busy worker");
        assert!(p.in_flight(0));
        p.checkin(0, second.epoch, None, Outcome::Done, now, |_, c| Err(c));
        assert_eq!(take(&mut p), Some(0));
    }

    #[test]
    fn a_retired_worker_that_joins_again_is_back() {
        // An external worker that died (found unreachable, so retired) and
        // was restarted under its id and socket, as the original's are.
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 7, None, now);
        assert_eq!(take(&mut p), Some(7));
        checkin(&mut p, 7, Outcome::Abandoned, now);
        assert_eq!(take(&mut p), None, "retired");
        join(&mut p, 7, None, now);
        assert_eq!(p.stats().workers, 1);
        assert_eq!(take(&mut p), Some(7), "back after its join");
    }

    #[test]
    fn a_join_of_a_live_id_on_another_socket_is_refused() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        let foreign = p.join(0, Path::new("/tmp/foreign.sock"), None, now, |_, c| Err(c));
        let conflict = foreign.expect_err("replaced a live worker");
        assert_eq!(&*conflict.socket, Path::new("/tmp/p.0.sock"));
        assert_eq!(
            conflict.to_string(),
            "worker 0 has joined already, at /tmp/p.0.sock"
        );
        let c = p.checkout(now).expect("ours still serves");
        assert_eq!(&*c.socket, Path::new("/tmp/p.0.sock"));
        assert_eq!(p.stats().workers, 1);
    }

    #[test]
    fn a_worker_without_a_version_stays_current_through_rolling_restarts() {
        // As the protocol says: no version means current, everywhere.
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        join(&mut p, 1, Some(1), now);
        join(&mut p, 2, Some(2), now);
        let mut got: Vec<_> = (0..3).map(|_| take(&mut p)).collect();
        got.sort();
        assert_eq!(got, vec![None, Some(0), Some(2)]);
        assert_eq!(p.stats().workers, 2);
    }

    #[test]
    fn a_retired_worker_is_not_counted() {
        let now = Instant::now();
        let mut p = pool(8, 0);
        join(&mut p, 0, None, now);
        join(&mut p, 1, None, now);
        assert_eq!(take(&mut p), Some(1));
        checkin(&mut p, 1, Outcome::Abandoned, now);
        assert_eq!(
            p.stats().workers,
            1,
            "/status counts a worker that cannot serve"
        );
    }
}
