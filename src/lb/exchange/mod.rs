//! The life of one request in the LB, as one state machine.
//!
//! An [`Exchange`] owns the worker's [`Lease`] from the moment one is
//! handed out until the worker is given back, and every decision a
//! guarantee rests on is taken here, from its [`Phase`]:
//!
//! - **One request per app.** An exchange holds at most one lease, and
//!   takes another (a retry) only after it gave the last one back.
//! - **A worker is freed only when its app is done.** The lease goes back
//!   as free when the response was read to its end (or a tunnel closed),
//!   when no byte of the request reached the app's socket, or when the app
//!   answered busy; every other end abandons it, and the worker is retired
//!   (its app may still be busy with the request). A kept-alive connection
//!   is parked with the worker only when request and response both ended.
//! - **Never sent twice once the app may have seen it.** A retry is
//!   allowed only while no byte reached the app's socket, or after a busy
//!   answer when the LB holds the whole request.
//! - **One queue deadline.** It is fixed when the request first queues and
//!   kept across retries.
//! - **The read deadline starts when the request is out** (or the app
//!   stopped reading it), not at dispatch: an upload is not a slow app.
//!
//! `proxy` does the I/O and reports what happened; the exchange says what
//! follows. A report out of order is refused ([`Illegal`]) and changes
//! nothing. State is behind a mutex because the request body and the
//! response are driven by two futures of one task (uncontended: one lock
//! per report).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::balancer::Lease;
use super::pool::WorkerId;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod scripted_tests;

/// Where a request is on its way through the LB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its body is read whole before a worker is taken (pace: the body
    /// timeout and minimum rate).
    Reading,
    /// Waiting for a worker, until the queue deadline.
    Queued,
    /// A worker is leased and the request goes out to its app.
    Sending,
    /// The request is out; the response head is due by the read deadline.
    AwaitingHead,
    /// The response goes to the client (pace: the app idle and send
    /// timeouts). The request may still be going out: an app may answer
    /// before it has read a body.
    Relaying,
    /// The client has gone mid-response: the rest is read and dropped
    /// until the drain deadline, so that the app finishes.
    Draining,
    /// A WebSocket: bytes flow both ways; the worker stays leased.
    Tunnelled,
    /// Over.
    Done(End),
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The app finished: its worker is free.
    Freed,
    /// The LB answered itself, and no app holds the request.
    Answered,
    /// The app may still be busy with the request: its worker is retired.
    Abandoned,
    /// The client left before any app had the request.
    Left,
}

/// What follows a worker that did not take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Back in the queue: the request goes to another worker.
    Retry,
    /// The LB answers `503` (the request cannot be sent again, or every
    /// attempt is used up).
    Refuse,
    /// The app may have seen the request: abandoned, the LB answers `502`.
    Lost,
}

/// A report that does not fit the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    pub phase: Phase,
    pub event: &'static str,
}

impl std::fmt::Display for Illegal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} while {:?}", self.event, self.phase)
    }
}

/// The deadlines and tries an exchange is given.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// In the queue, from the first time the request queues.
    pub queue: Duration,
    /// For the response head, from the end of the request.
    pub read: Duration,
    /// For the rest of a response whose client has gone.
    pub drain: Duration,
    /// Workers tried, at most.
    pub attempts: usize,
}

pub struct Exchange<C> {
    state: Mutex<State<C>>,
    /// Wakes the wait for a response head when its deadline is set.
    out: Notify,
    limits: Limits,
}

struct State<C> {
    phase: Phase,
    /// Held from `Sending` to the end of `Tunnelled`, and only then.
    lease: Option<Lease<C>>,
    /// Bytes of the request reached the current app's socket.
    seen: bool,
    /// The request went out whole, or the app stopped reading it.
    out: bool,
    /// The LB holds the whole request and could send it again.
    whole: bool,
    /// Bytes of the response reached the client.
    begun: bool,
    attempts: usize,
    queue_deadline: Option<Instant>,
    head_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
}

type Result<T> = std::result::Result<T, Illegal>;

impl<C> Exchange<C> {
    /// A request whose body is to be read whole first.
    pub fn reading(limits: Limits) -> Exchange<C> {
        Exchange::start(limits, Phase::Reading, false)
    }

    /// A request that waits for a worker now; `whole`: the LB has all of
    /// it (no body, or held).
    pub fn queued(limits: Limits, whole: bool) -> Exchange<C> {
        let ex = Exchange::start(limits, Phase::Queued, whole);
        ex.state().queue_deadline = Some(Instant::now() + limits.queue);
        ex
    }

    fn start(limits: Limits, phase: Phase, whole: bool) -> Exchange<C> {
        Exchange {
            state: Mutex::new(State {
                phase,
                lease: None,
                seen: false,
                out: false,
                whole,
                begun: false,
                attempts: 0,
                queue_deadline: None,
                head_deadline: None,
                drain_deadline: None,
            }),
            out: Notify::new(),
            limits,
        }
    }

    fn state(&self) -> MutexGuard<'_, State<C>> {
        // A panic elsewhere leaves nothing here half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.state().phase
    }

    /// Checks the phase against `allowed`, or refuses `event`.
    fn expect(&self, event: &'static str, allowed: &[Phase]) -> Result<MutexGuard<'_, State<C>>> {
        let state = self.state();
        if allowed.contains(&state.phase) {
            Ok(state)
        } else {
            Err(Illegal {
                phase: state.phase,
                event,
            })
        }
    }

    /// The body has been read whole: the request queues.
    pub fn held(&self) -> Result<()> {
        let mut s = self.expect("held", &[Phase::Reading])?;
        s.whole = true;
        s.phase = Phase::Queued;
        s.queue_deadline = Some(Instant::now() + self.limits.queue);
        Ok(())
    }

    /// When waiting in the queue ends (while queued).
    pub fn queue_deadline(&self) -> Option<Instant> {
        self.deadline_in(Phase::Queued, |s| s.queue_deadline)
    }

    /// A deadline of `phase`, if the exchange is in it.
    fn deadline_in(&self, phase: Phase, pick: fn(&State<C>) -> Option<Instant>) -> Option<Instant> {
        let s = self.state();
        if s.phase == phase {
            pick(&s)
        } else {
            None
        }
    }

    /// A worker was handed out: the request goes to it. Refused (and the
    /// worker given back untouched) unless queued with attempts left.
    pub fn leased(&self, lease: Lease<C>) -> Result<()> {
        let mut s = match self.expect("leased", &[Phase::Queued]) {
            Ok(s) if s.attempts < self.limits.attempts => s,
            Ok(s) => {
                let phase = s.phase;
                drop(s);
                lease.release(None);
                return Err(Illegal {
                    phase,
                    event: "leased past the last attempt",
                });
            }
            Err(illegal) => {
                lease.release(None);
                return Err(illegal);
            }
        };
        debug_assert!(s.lease.is_none(), "queued with a lease");
        s.lease = Some(lease);
        s.attempts += 1;
        s.seen = false;
        s.out = false;
        s.begun = false;
        s.head_deadline = None;
        s.phase = Phase::Sending;
        Ok(())
    }

    /// The leased worker and its socket.
    pub fn worker(&self) -> Option<(WorkerId, Arc<Path>)> {
        let s = self.state();
        s.lease.as_ref().map(|l| (l.id(), l.socket().clone()))
    }

    /// The kept-alive connection parked with the leased worker.
    pub fn take_conn(&self) -> Option<C> {
        let mut s = self.expect("take_conn", &[Phase::Sending]).ok()?;
        s.lease.as_mut().and_then(Lease::take_conn)
    }

    /// Bytes of the request (`accepted`: some) went to the app's socket.
    pub fn sent(&self, accepted: bool) -> Result<()> {
        let mut s = self.expect("sent", &[Phase::Sending])?;
        s.seen |= accepted;
        Ok(())
    }

    /// Whether bytes of the request reached the current app's socket.
    pub fn has_seen(&self) -> bool {
        self.state().seen
    }

    /// The worker's socket could not be reached or refused the request
    /// (`ours`: for want of the LB's own descriptors or memory, not the
    /// worker's fault).
    pub fn unreachable(&self, ours: bool) -> Result<Then> {
        let mut s = self.expect("unreachable", &[Phase::Sending])?;
        if s.seen {
            s.abandon();
            return Ok(Then::Lost);
        }
        let lease = s.lease.take().expect("leased while sending");
        if ours {
            lease.release(None);
            s.phase = Phase::Done(End::Answered);
            return Ok(Then::Refuse);
        }
        lease.retire();
        lease.release(None);
        Ok(s.requeue(self.limits.attempts))
    }

    /// The request was refused before any of it went out: the worker is
    /// given back untouched.
    pub fn nothing_sent(&self) -> Result<()> {
        let mut s = self.expect("nothing_sent", &[Phase::Sending])?;
        if s.seen {
            return Err(Illegal {
                phase: s.phase,
                event: "nothing_sent after bytes went",
            });
        }
        if let Some(lease) = s.lease.take() {
            lease.release(None);
        }
        s.phase = Phase::Done(End::Answered);
        Ok(())
    }

    /// The request is out whole, or the app stopped reading it: the read
    /// deadline starts now.
    pub fn request_out(&self) -> Result<()> {
        let mut s = self.expect(
            "request_out",
            &[Phase::Sending, Phase::Relaying, Phase::Draining],
        )?;
        s.out = true;
        if s.phase == Phase::Sending {
            s.phase = Phase::AwaitingHead;
            s.head_deadline = Some(Instant::now() + self.limits.read);
            drop(s);
            self.out.notify_one();
        }
        Ok(())
    }

    /// When the response head is due (None while the request is still
    /// going out).
    pub fn head_deadline(&self) -> Option<Instant> {
        self.deadline_in(Phase::AwaitingHead, |s| s.head_deadline)
    }

    /// Resolves once the request is out (see [`Exchange::request_out`]).
    pub async fn wait_out(&self) {
        self.out.notified().await
    }

    /// The app's response head came.
    pub fn head(&self) -> Result<()> {
        let mut s = self.expect("head", &[Phase::Sending, Phase::AwaitingHead])?;
        s.phase = Phase::Relaying;
        Ok(())
    }

    /// The app answered busy: it did not take the request.
    pub fn busy(&self) -> Result<Then> {
        let mut s = self.expect("busy", &[Phase::Sending, Phase::AwaitingHead])?;
        let lease = s.lease.take().expect("leased while sending");
        // Its busy answer is unread on the connection: the connection goes.
        lease.busy(None);
        if !s.whole {
            s.phase = Phase::Done(End::Answered);
            return Ok(Then::Refuse);
        }
        Ok(s.requeue(self.limits.attempts))
    }

    /// Bytes of the response reached the client (a refusal of the request
    /// body can no longer be answered, only cut short).
    pub fn begun(&self) -> Result<()> {
        let mut s = self.expect("begun", &[Phase::Relaying])?;
        s.begun = true;
        Ok(())
    }

    pub fn has_begun(&self) -> bool {
        self.state().begun
    }

    /// The client has gone mid-response: the rest is drained.
    pub fn client_gone(&self) -> Result<()> {
        let mut s = self.expect("client_gone", &[Phase::Relaying])?;
        s.phase = Phase::Draining;
        s.drain_deadline = Some(Instant::now() + self.limits.drain);
        Ok(())
    }

    /// Until when a response whose client has gone is read on.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.deadline_in(Phase::Draining, |s| s.drain_deadline)
    }

    /// The app has asked to be replaced after this request.
    pub fn recycle(&self) {
        if let Some(lease) = &self.state().lease {
            lease.recycle();
        }
    }

    /// The response was read to its end: the app is free. `conn` is
    /// parked with the worker if the request went out whole too. True if
    /// a waiting request got the worker at once.
    pub fn finished(&self, conn: Option<C>) -> Result<bool> {
        let mut s = self.expect("finished", &[Phase::Relaying, Phase::Draining])?;
        let lease = s.lease.take().expect("leased while relaying");
        let conn = conn.filter(|_| s.out);
        s.phase = Phase::Done(End::Freed);
        drop(s);
        Ok(lease.release(conn))
    }

    /// The app switched protocols: the connection becomes a tunnel.
    pub fn tunnel(&self) -> Result<()> {
        let mut s = self.expect("tunnel", &[Phase::Sending, Phase::AwaitingHead])?;
        s.phase = Phase::Tunnelled;
        Ok(())
    }

    /// The tunnel closed, and the app has seen it close: it is free (its
    /// connection is not reused).
    pub fn tunnel_closed(&self) -> Result<()> {
        let mut s = self.expect("tunnel_closed", &[Phase::Tunnelled])?;
        let lease = s.lease.take().expect("leased while tunnelled");
        s.phase = Phase::Done(End::Freed);
        drop(s);
        lease.release(None);
        Ok(())
    }

    /// Nothing good can come of the worker's connection any more (a read
    /// timeout, a broken response, a request cut short): the app may still
    /// be busy with the request, so its worker is retired.
    pub fn abandon(&self) -> Result<()> {
        let mut s = self.expect(
            "abandon",
            &[
                Phase::Sending,
                Phase::AwaitingHead,
                Phase::Relaying,
                Phase::Draining,
                Phase::Tunnelled,
            ],
        )?;
        s.abandon();
        Ok(())
    }

    /// The LB answered itself, before any worker took the request.
    pub fn answered(&self) -> Result<()> {
        let mut s = self.expect("answered", &[Phase::Reading, Phase::Queued])?;
        s.phase = Phase::Done(End::Answered);
        Ok(())
    }

    /// The client left before any worker took the request.
    pub fn left(&self) -> Result<()> {
        let mut s = self.expect("left", &[Phase::Reading, Phase::Queued])?;
        s.phase = Phase::Done(End::Left);
        Ok(())
    }
}

impl<C> State<C> {
    fn abandon(&mut self) {
        self.phase = Phase::Done(End::Abandoned);
        // Dropped unfinished: the pool retires the worker.
        drop(self.lease.take());
    }

    /// The worker did not take the request and has been given back: the
    /// request queues again (with its first deadline) if it has attempts
    /// left.
    fn requeue(&mut self, attempts: usize) -> Then {
        if self.attempts >= attempts {
            self.phase = Phase::Done(End::Answered);
            return Then::Refuse;
        }
        self.phase = Phase::Queued;
        Then::Retry
    }
}
