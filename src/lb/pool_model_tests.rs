//! The pool against a model: random sequences of joins (also repeated, and
//! of a live id on another socket), quits, checkouts, check-ins (done,
//! busy, abandoned; also stale ones, with an old epoch), retirements,
//! recycles, version bumps, queued waiters that wait, leave or time out,
//! and LB restarts (a new pool, every serving worker joined again) — with
//! the guarantees checked after every step:
//!
//! - a worker is busy iff exactly one lease on it is live, with its epoch;
//! - no id is on the idle stack twice, and only free, serving, current
//!   workers are on it — every one of them;
//! - a retired, leaving or outdated worker is never checked out;
//! - a stale report (old epoch) changes nothing;
//! - a waiter is served before its deadline or not at all, and never
//!   waits while a fresh worker sits idle;
//! - a join of a live id on another socket is refused and changes nothing.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Checkin, Checkout, Epoch, Life, Outcome, Pool, WorkerId, SPENT_GRACE};

/// A waiter: its key in the model, and its deadline.
type W = (usize, Instant);
type P = Pool<(), W>;

#[derive(Debug, Clone)]
enum Op {
    Join {
        id: WorkerId,
        other_socket: bool,
        version: Option<u64>,
    },
    Leave(WorkerId),
    Checkout,
    /// Ends live lease `n % live`.
    Checkin(usize, Outcome),
    /// Reports again on ended lease `n % ended`.
    Stale(usize, Outcome),
    StaleRetire(usize),
    RetireLease(usize),
    Retire(WorkerId),
    Spend(WorkerId),
    Enqueue {
        ttl_ms: u64,
    },
    /// The waiter `n % waiting` leaves (its client went away).
    Cancel(usize),
    /// From now on, a delivery to waiter `n % waiting` fails (it left just
    /// as a worker came).
    Vanish(usize),
    Wake,
    Advance(u64),
    LbRestart,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Done),
        1 => Just(Outcome::Busy),
        1 => Just(Outcome::Abandoned),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u32..4;
    prop_oneof![
        4 => (id.clone(), prop::bool::weighted(0.2), prop::option::weighted(0.5, 1u64..4))
            .prop_map(|(id, other_socket, version)| Op::Join { id, other_socket, version }),
        1 => id.clone().prop_map(Op::Leave),
        5 => Just(Op::Checkout),
        5 => (any::<usize>(), outcome()).prop_map(|(n, o)| Op::Checkin(n, o)),
        2 => (any::<usize>(), outcome()).prop_map(|(n, o)| Op::Stale(n, o)),
        1 => any::<usize>().prop_map(Op::StaleRetire),
        1 => any::<usize>().prop_map(Op::RetireLease),
        1 => id.clone().prop_map(Op::Retire),
        1 => id.prop_map(Op::Spend),
        3 => (1u64..3000).prop_map(|ttl_ms| Op::Enqueue { ttl_ms }),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Vanish),
        1 => Just(Op::Wake),
        2 => (1u64..1500).prop_map(Op::Advance),
        1 => Just(Op::LbRestart),
    ]
}

fn socket(id: WorkerId, other: bool) -> PathBuf {
    if other {
        PathBuf::from(format!("/tmp/foreign.{id}.sock"))
    } else {
        PathBuf::from(format!("/tmp/model.{id}.sock"))
    }
}

/// What a joined worker announced (replayed after an LB restart).
#[derive(Debug, Clone)]
struct Announced {
    socket: PathBuf,
    version: Option<u64>,
}

#[derive(Debug, Default)]
struct Waiting {
    vanished: bool,
    done: bool,
}

struct Run {
    pool: P,
    now: Instant,
    /// Leases out: (worker, epoch).
    live: Vec<(WorkerId, Epoch)>,
    ended: Vec<(WorkerId, Epoch)>,
    waiters: Vec<Waiting>,
    announced: BTreeMap<WorkerId, Announced>,
}

/// The pool's observable state, to tell whether a report changed it.
fn snapshot(p: &P) -> String {
    let slots: BTreeMap<_, _> = p
        .slots
        .iter()
        .map(|(id, s)| (*id, (s.life, s.lease, s.served, s.version)))
        .collect();
    format!("{slots:?} {:?} {}", p.idle, p.queue.len())
}

impl Run {
    fn new() -> Run {
        Run {
            pool: Pool::new(4, 5).with_expected(2),
            now: Instant::now(),
            live: Vec::new(),
            ended: Vec::new(),
            waiters: Vec::new(),
            announced: BTreeMap::new(),
        }
    }

    /// A checkout handed out (directly or to a waiter): it must be a
    /// worker that may serve, and none that is already out.
    fn handed(
        &mut self,
        c: &Checkout<()>,
        before: &BTreeMap<WorkerId, (Life, bool)>,
    ) -> Result<(), String> {
        // As it was before this step (or as it joined during it).
        let after = self.lives();
        let Some(&(life, current)) = before.get(&c.id).or(after.get(&c.id)) else {
            return Err(format!("checked out worker {} that had not joined", c.id));
        };
        if matches!(life, Life::Retired | Life::Leaving) {
            return Err(format!("checked out worker {} while {life:?}", c.id));
        }
        if !current {
            return Err(format!("checked out worker {} of an old version", c.id));
        }
        if self.live.iter().any(|&(id, _)| id == c.id) {
            return Err(format!("worker {} handed out twice", c.id));
        }
        self.live.push((c.id, c.epoch));
        Ok(())
    }

    fn lives(&self) -> BTreeMap<WorkerId, (Life, bool)> {
        self.pool
            .slots
            .iter()
            .map(|(id, s)| (*id, (s.life, self.pool.is_current(s))))
            .collect()
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let before = self.lives();
        let mut joined = false;
        let now = self.now;
        let mut delivered: Vec<(W, Checkout<()>)> = Vec::new();
        let waiters = &self.waiters;
        let mut deliver = |w: W, c: Checkout<()>| {
            if waiters[w.0].vanished {
                return Err(c);
            }
            delivered.push((w, c));
            Ok(())
        };
        match op.clone() {
            Op::Join {
                id,
                other_socket,
                version,
            } => {
                let path = socket(id, other_socket);
                let was = self.pool.slots.get(&id).map(|s| s.socket.clone());
                let snap = snapshot(&self.pool);
                let result = self.pool.join(id, &path, version, now, &mut deliver);
                // A retired worker that joins again is back (fresh): judge
                // what the join hands out by the pool after it.
                joined = true;
                match (was, result) {
                    (Some(s), Err(conflict)) if *s != *path => {
                        if snapshot(&self.pool) != snap {
                            return Err("a refused join changed the pool".into());
                        }
                        if conflict.socket != s {
                            return Err("the conflict names the wrong socket".into());
                        }
                    }
                    (Some(s), Ok(_)) if *s != *path => {
                        return Err(format!("worker {id} replaced by another socket"));
                    }
                    (_, Err(c)) => return Err(format!("refused without a conflict: {c}")),
                    (_, Ok(_)) => {
                        self.announced.insert(
                            id,
                            Announced {
                                socket: path,
                                version,
                            },
                        );
                    }
                }
            }
            Op::Leave(id) => {
                self.pool.leave(id);
                self.announced.remove(&id);
            }
            Op::Checkout => {
                if let Some(c) = self.pool.checkout(now) {
                    self.handed(&c, &before)?;
                }
            }
            Op::Checkin(n, outcome) => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let (id, epoch) = self.live.remove(n % self.live.len());
                self.ended.push((id, epoch));
                let checkin = self
                    .pool
                    .checkin(id, epoch, None, outcome, now, &mut deliver);
                if checkin == Checkin::Stale {
                    return Err(format!("the live lease on {id} was taken for stale"));
                }
            }
            Op::Stale(n, outcome) => {
                if self.ended.is_empty() {
                    return Ok(());
                }
                let (id, epoch) = self.ended[n % self.ended.len()];
                let snap = snapshot(&self.pool);
                let checkin = self
                    .pool
                    .checkin(id, epoch, None, outcome, now, &mut deliver);
                if checkin != Checkin::Stale || snapshot(&self.pool) != snap {
                    return Err(format!("a stale check-in on {id} counted ({checkin:?})"));
                }
            }
            Op::StaleRetire(n) => {
                if self.ended.is_empty() {
                    return Ok(());
                }
                let (id, epoch) = self.ended[n % self.ended.len()];
                let snap = snapshot(&self.pool);
                if self.pool.retire_lease(id, epoch) || self.pool.spend_lease(id, epoch, now) {
                    return Err(format!("a stale lease retired or spent {id}"));
                }
                if snapshot(&self.pool) != snap {
                    return Err("a stale report changed the pool".into());
                }
            }
            Op::RetireLease(n) => {
                if let Some(&(id, epoch)) = self.live.get(n % self.live.len().max(1)) {
                    self.pool.retire_lease(id, epoch);
                    if self.pool.slots[&id].life == Life::Serving {
                        return Err(format!("a live lease could not retire {id}"));
                    }
                }
            }
            Op::Retire(id) => {
                self.pool.retire(id);
            }
            Op::Spend(id) => {
                self.pool.spend(id, now);
            }
            Op::Enqueue { ttl_ms } => {
                let before_idle = self.pool.checkout(now);
                if let Some(c) = before_idle {
                    // As the balancer does: a free worker first.
                    self.handed(&c, &before)?;
                } else {
                    let key = self.waiters.len();
                    let deadline = now + Duration::from_millis(ttl_ms);
                    if let super::Enqueue::Queued(_) = self.pool.enqueue((key, deadline), deadline)
                    {
                        self.waiters.push(Waiting::default());
                    } else {
                        self.waiters.push(Waiting {
                            done: true,
                            ..Waiting::default()
                        });
                    }
                }
            }
            Op::Cancel(n) => {
                let open: Vec<usize> = (0..self.waiters.len())
                    .filter(|&k| !self.waiters[k].done)
                    .collect();
                if let Some(&k) = open.get(n % open.len().max(1)) {
                    let key = self
                        .pool
                        .queue
                        .iter()
                        .find(|w| w.waiter.0 == k)
                        .map(|w| w.key);
                    if let Some(key) = key {
                        if !self.pool.cancel(key) {
                            return Err("a queued waiter could not be cancelled".into());
                        }
                    }
                    self.waiters[k].done = true;
                }
            }
            Op::Vanish(n) => {
                if !self.waiters.is_empty() {
                    let k = n % self.waiters.len();
                    self.waiters[k].vanished = true;
                }
            }
            Op::Wake => self.pool.wake(now, &mut deliver),
            Op::Advance(ms) => self.now += Duration::from_millis(ms),
            Op::LbRestart => {
                // The old LB and its exchanges are gone; the manager
                // replays every worker that may serve.
                self.pool = Pool::new(4, 5).with_expected(2);
                self.live.clear();
                self.ended.clear();
                for w in &mut self.waiters {
                    w.done = true;
                }
                for (id, a) in self.announced.clone() {
                    self.pool
                        .join(id, &a.socket, a.version, now, |_, c| Err(c))
                        .map_err(|c| format!("replay refused: {c}"))?;
                }
            }
        }
        let before = if joined { self.lives() } else { before };
        for ((key, deadline), c) in delivered {
            if deadline <= now {
                return Err(format!("waiter {key} served after its deadline"));
            }
            if self.waiters[key].done {
                return Err(format!("waiter {key} served twice or after it left"));
            }
            self.waiters[key].done = true;
            self.handed(&c, &before)?;
        }
        self.check()
    }

    /// The invariants that hold between any two steps.
    fn check(&self) -> Result<(), String> {
        let p = &self.pool;
        for (id, slot) in &p.slots {
            let leases: Vec<Epoch> = self
                .live
                .iter()
                .filter(|(w, _)| w == id)
                .map(|&(_, e)| e)
                .collect();
            match (slot.lease, leases.as_slice()) {
                (None, []) => {}
                (Some(e), [l]) if e == *l => {}
                (lease, leases) => {
                    return Err(format!("worker {id}: lease {lease:?}, live {leases:?}"));
                }
            }
        }
        for (id, _) in &self.live {
            if !p.slots.contains_key(id) {
                // It left mid-request and was forgotten at check-in only.
                return Err(format!("live lease on forgotten worker {id}"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &p.idle {
            if !seen.insert(id) {
                return Err(format!("worker {id} twice on the idle stack"));
            }
            let slot = p
                .slots
                .get(id)
                .ok_or(format!("unknown worker {id} on the idle stack"))?;
            if !P::free(p.newest, slot) {
                return Err(format!("worker {id} on the idle stack but not free"));
            }
        }
        for (id, slot) in &p.slots {
            if P::free(p.newest, slot) && !seen.contains(id) {
                return Err(format!("free worker {id} is not on the idle stack"));
            }
        }
        let waiting = p.queue.iter().any(|w| w.deadline > self.now);
        let fresh_idle = p
            .idle
            .iter()
            .any(|id| p.slots[id].life == Life::Serving && p.eligible(*id, self.now));
        if waiting && fresh_idle {
            return Err("a waiter waits while a fresh worker is idle".into());
        }
        if p.stats().busy != self.live.len() {
            return Err(format!(
                "{} busy, {} leases",
                p.stats().busy,
                self.live.len()
            ));
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut run = Run::new();
    for (i, op) in ops.iter().enumerate() {
        run.step(op)
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
    }
    // In the end every waiter was served, left, or runs out of time: after
    // its deadline, no worker is handed to it.
    run.now += Duration::from_secs(10) + SPENT_GRACE;
    run.step(&Op::Join {
        id: 9,
        other_socket: false,
        version: None,
    })
    .map_err(|e| TestCaseError::fail(format!("at the end: {e}")))?;
    Ok(())
}

#[test]
fn random_sequences_keep_the_pool_true() {
    let mut runner = crate::lb::model_runner(3000);
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| run(&ops))
        .unwrap();
}
