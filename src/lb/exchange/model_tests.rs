//! The exchange against a model: random sequences of reports on a real
//! [`Exchange`] over a real [`Scheduler`] (three workers, no sockets), a
//! small table of what each report may do in each phase, and after every
//! step the guarantees checked on what the pool saw: leases out, workers
//! given back free or retired, the request queued again or not.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{End, Exchange, Limits, Phase, Then};
use crate::lb::balancer::Scheduler;
use crate::lb::pool::Pool;
use crate::link::LinkMsg;

const LIMITS: Limits = Limits {
    queue: Duration::from_millis(2000),
    read: Duration::from_millis(5000),
    drain: Duration::from_millis(5000),
    attempts: 3,
};

#[derive(Debug, Clone, Copy)]
enum Event {
    Held,
    Lease,
    Sent(bool),
    Unreachable(bool),
    NothingSent,
    RequestOut,
    Head,
    Begun,
    ClientGone,
    Busy,
    Finished,
    Tunnel,
    TunnelClosed,
    Abandon,
    Answered,
    Left,
    Wait(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => Just(Event::Held),
        4 => Just(Event::Lease),
        3 => any::<bool>().prop_map(Event::Sent),
        1 => any::<bool>().prop_map(Event::Unreachable),
        1 => Just(Event::NothingSent),
        2 => Just(Event::RequestOut),
        2 => Just(Event::Head),
        1 => Just(Event::Begun),
        1 => Just(Event::ClientGone),
        2 => Just(Event::Busy),
        2 => Just(Event::Finished),
        1 => Just(Event::Tunnel),
        1 => Just(Event::TunnelClosed),
        1 => Just(Event::Abandon),
        1 => Just(Event::Answered),
        1 => Just(Event::Left),
        1 => (1u64..3000).prop_map(Event::Wait),
    ]
}

/// What the model expects a legal report to do to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    /// Given back as free (to the idle stack).
    Freed,
    /// Given back, and asked to be replaced.
    Retired,
}

/// The reference: the phase, and the facts the guarantees depend on.
#[derive(Debug, Clone)]
struct Model {
    phase: Phase,
    seen: bool,
    whole: bool,
    out: bool,
    attempts: usize,
}

fn leased(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Sending | Phase::AwaitingHead | Phase::Relaying | Phase::Draining | Phase::Tunnelled
    )
}

impl Model {
    /// The phase after a worker did not take the request.
    fn requeue(&self) -> Phase {
        if self.attempts >= LIMITS.attempts {
            Phase::Done(End::Answered)
        } else {
            Phase::Queued
        }
    }

    /// The phase and effect a legal event leads to, or None if illegal.
    /// (`Lease` is handled by the driver, which needs a worker first.)
    fn step(&self, event: Event) -> Option<(Phase, Effect)> {
        use Phase::*;
        let p = self.phase;
        Some(match (event, p) {
            (Event::Held, Reading) => (Queued, Effect::None),
            (Event::Sent(_), Sending) => (Sending, Effect::None),
            (Event::Unreachable(_), Sending) if self.seen => {
                (Done(End::Abandoned), Effect::Retired)
            }
            (Event::Unreachable(true), Sending) => (Done(End::Answered), Effect::Freed),
            (Event::Unreachable(false), Sending) => (self.requeue(), Effect::Retired),
            (Event::NothingSent, Sending) if !self.seen => (Done(End::Answered), Effect::Freed),
            (Event::RequestOut, Sending) => (AwaitingHead, Effect::None),
            (Event::RequestOut, Relaying | Draining) => (p, Effect::None),
            (Event::Head, Sending | AwaitingHead) => (Relaying, Effect::None),
            (Event::Begun, Relaying) => (Relaying, Effect::None),
            (Event::ClientGone, Relaying) => (Draining, Effect::None),
            (Event::Busy, Sending | AwaitingHead) if !self.whole => {
                (Done(End::Answered), Effect::Freed)
            }
            (Event::Busy, Sending | AwaitingHead) => (self.requeue(), Effect::Freed),
            (Event::Finished, Relaying | Draining) => (Done(End::Freed), Effect::Freed),
            (Event::Tunnel, Sending | AwaitingHead) => (Tunnelled, Effect::None),
            (Event::TunnelClosed, Tunnelled) => (Done(End::Freed), Effect::Freed),
            (Event::Abandon, _) if leased(p) => (Done(End::Abandoned), Effect::Retired),
            (Event::Answered, Reading | Queued) => (Done(End::Answered), Effect::None),
            (Event::Left, Reading | Queued) => (Done(End::Left), Effect::None),
            _ => return None,
        })
    }
}

struct Harness {
    scheduler: Arc<Scheduler<()>>,
    retired: mpsc::UnboundedReceiver<LinkMsg>,
}

impl Harness {
    fn new() -> Harness {
        let (tx, retired) = mpsc::unbounded_channel();
        let scheduler = Arc::new(Scheduler::new(Pool::new(8, 0), LIMITS.queue, tx));
        for id in 0..3 {
            scheduler
                .join(id, Path::new(&format!("/tmp/model.{id}.sock")), None)
                .unwrap();
        }
        Harness { scheduler, retired }
    }

    fn retirements(&mut self) -> usize {
        let mut n = 0;
        while let Ok(msg) = self.retired.try_recv() {
            n += usize::from(matches!(msg, LinkMsg::Retire { .. }));
        }
        n
    }
}

/// Runs one sequence of events; an Err names the broken guarantee.
async fn run(start_reading: bool, whole: bool, events: Vec<Event>) -> Result<(), String> {
    let mut h = Harness::new();
    let ex: Exchange<()> = if start_reading {
        Exchange::reading(LIMITS)
    } else {
        Exchange::queued(LIMITS, whole)
    };
    let mut model = Model {
        phase: ex.phase(),
        seen: false,
        whole: whole && !start_reading,
        out: false,
        attempts: 0,
    };
    let mut first_deadline = ex.queue_deadline();
    for (i, &event) in events.iter().enumerate() {
        let before = h.scheduler.stats();
        let from = model.phase;
        let ctx = |what: &str| format!("step {i} {event:?} from {from:?}: {what}");
        if let Event::Wait(ms) = event {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            continue;
        }
        if let Event::Lease = event {
            let deadline = ex
                .queue_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(1));
            let Ok(lease) = h.scheduler.acquire_until(deadline).await else {
                continue; // no worker in time: nothing happened
            };
            let accepted = ex.leased(lease).is_ok();
            let legal = model.phase == Phase::Queued && model.attempts < LIMITS.attempts;
            if accepted != legal {
                return Err(ctx(&format!(
                    "leased accepted={accepted}, model says {legal}"
                )));
            }
            if legal {
                model.phase = Phase::Sending;
                model.attempts += 1;
                model.seen = false;
                model.out = false;
            }
            let after = h.scheduler.stats();
            // One request per app: this exchange holds at most one worker.
            let expected_busy = usize::from(leased(model.phase));
            if after.busy != expected_busy {
                return Err(ctx(&format!("{} workers busy", after.busy)));
            }
            if ex.phase() != model.phase {
                return Err(ctx(&format!(
                    "phase {:?}, model {:?}",
                    ex.phase(),
                    model.phase
                )));
            }
            continue;
        }
        let result = match event {
            Event::Held => ex.held().map(|()| None),
            Event::Sent(accepted) => ex.sent(accepted).map(|()| None),
            Event::Unreachable(ours) => ex.unreachable(ours).map(Some),
            Event::NothingSent => ex.nothing_sent().map(|()| None),
            Event::RequestOut => ex.request_out().map(|()| None),
            Event::Head => ex.head().map(|()| None),
            Event::Begun => ex.begun().map(|()| None),
            Event::ClientGone => ex.client_gone().map(|()| None),
            Event::Busy => ex.busy().map(Some),
            Event::Finished => ex.finished(Some(())).map(|_| None),
            Event::Tunnel => ex.tunnel().map(|()| None),
            Event::TunnelClosed => ex.tunnel_closed().map(|()| None),
            Event::Abandon => ex.abandon().map(|()| None),
            Event::Answered => ex.answered().map(|()| None),
            Event::Left => ex.left().map(|()| None),
            Event::Lease | Event::Wait(_) => unreachable!("handled above"),
        };
        let after = h.scheduler.stats();
        let retired = h.retirements();
        let expected = model.step(event);
        match (&result, expected) {
            (Err(_), None) => {
                // Refused: nothing changed.
                if ex.phase() != model.phase || after != before || retired != 0 {
                    return Err(ctx("a refused report changed something"));
                }
                continue;
            }
            (Ok(_), None) => return Err(ctx("accepted, the model refuses it")),
            (Err(e), Some(_)) => return Err(ctx(&format!("refused ({e}), the model accepts it"))),
            (Ok(_), Some(_)) => {}
        }
        let (phase, effect) = expected.unwrap();
        if ex.phase() != phase {
            return Err(ctx(&format!("phase {:?}, model {phase:?}", ex.phase())));
        }
        // What happened to the worker, as the pool saw it.
        let freed = before.busy == 1 && after.busy == 0;
        let wrong = match effect {
            Effect::None if freed => "a worker given back",
            Effect::Freed if !freed || retired != 0 => "the worker not freed",
            Effect::Retired if !freed || retired != 1 => "the worker not retired",
            _ => "",
        };
        if !wrong.is_empty() {
            return Err(ctx(wrong));
        }
        // The guarantees, independently of the table.
        if effect == Effect::Freed {
            // Freed only when the app is done, or never had the request.
            let done = matches!(event, Event::Finished | Event::TunnelClosed)
                || matches!(event, Event::Busy)
                || !model.seen;
            if !done {
                return Err(ctx("a worker freed while its app may be busy"));
            }
        }
        if leased(model.phase) && phase == Phase::Queued {
            // Queued again: only if no app can have seen the request.
            let resendable = !model.seen || (matches!(event, Event::Busy) && model.whole);
            if !resendable {
                return Err(ctx("sent again after the app may have seen it"));
            }
            let then = result.as_ref().ok().copied().flatten();
            if then != Some(Then::Retry) {
                return Err(ctx(&format!("queued again but told {then:?}")));
            }
        }
        if let Phase::Done(_) = model.phase {
            return Err(ctx("a report accepted after the end"));
        }
        if event_sets_whole(event) {
            model.whole = true;
        }
        if let Event::Sent(true) = event {
            model.seen = true;
        }
        if let Event::RequestOut = event {
            if model.phase == Phase::Sending
                && ex.head_deadline() != Some(Instant::now() + LIMITS.read)
            {
                return Err(ctx(
                    "the read deadline does not start at the end of the request",
                ));
            }
            model.out = true;
        }
        model.phase = phase;
        // One queue deadline: set once, kept across retries.
        let now_deadline = ex.queue_deadline();
        match (first_deadline, now_deadline) {
            (None, Some(d)) => first_deadline = Some(d),
            (Some(first), Some(d)) if d != first => {
                return Err(ctx("the queue deadline moved"));
            }
            _ => {}
        }
        if usize::from(leased(model.phase)) != after.busy {
            return Err(ctx(&format!("{} workers busy", after.busy)));
        }
    }
    Ok(())
}

fn event_sets_whole(event: Event) -> bool {
    matches!(event, Event::Held)
}

#[test]
fn sequences_keep_the_guarantees() {
    let mut runner = crate::lb::model_runner(2000);
    let rt = paused_runtime();
    let strategy = (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(event(), 1..40),
    );
    runner
        .run(&strategy, |(reading, whole, events)| {
            rt.block_on(run(reading, whole, events))
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

/// The sequences the guarantees are about, spelled out.
#[test]
fn the_named_paths() {
    let rt = paused_runtime();
    use Event::*;
    let paths: &[(&str, bool, bool, &[Event])] = &[
        (
            "a plain request",
            false,
            true,
            &[Lease, Sent(true), RequestOut, Head, Begun, Finished],
        ),
        (
            "a held upload, busy, resent",
            true,
            false,
            &[
                Held,
                Lease,
                Sent(true),
                RequestOut,
                Busy,
                Lease,
                Sent(true),
                Head,
                Finished,
            ],
        ),
        (
            "a streamed upload, busy: not resent",
            false,
            false,
            &[Lease, Sent(true), Busy, Lease],
        ),
        (
            "a stale socket: retried",
            false,
            false,
            &[
                Lease,
                Sent(false),
                Unreachable(false),
                Lease,
                Sent(true),
                RequestOut,
            ],
        ),
        (
            "the app had bytes: not retried",
            false,
            true,
            &[Lease, Sent(true), Unreachable(false), Lease],
        ),
        (
            "the client left mid-response: drained and freed",
            false,
            true,
            &[
                Lease,
                Sent(true),
                RequestOut,
                Head,
                Begun,
                ClientGone,
                Finished,
            ],
        ),
        (
            "a tunnel",
            false,
            true,
            &[Lease, Sent(true), RequestOut, Tunnel, TunnelClosed],
        ),
        (
            "attempts run out",
            false,
            true,
            &[
                Lease,
                Sent(false),
                Unreachable(false),
                Lease,
                Sent(false),
                Unreachable(false),
                Lease,
                Sent(false),
                Unreachable(false),
                Lease,
            ],
        ),
    ];
    for (name, reading, whole, events) in paths {
        rt.block_on(run(*reading, *whole, events.to_vec()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn a_connection_is_parked_only_after_a_whole_request() {
    let rt = paused_runtime();
    rt.block_on(async {
        let h = Harness::new();
        // The app answered before the body was out: its connection goes.
        let ex: Exchange<()> = Exchange::queued(LIMITS, false);
        ex.leased(h.scheduler.acquire().await.unwrap()).unwrap();
        let id = ex.worker().unwrap().0;
        ex.sent(true).unwrap();
        ex.head().unwrap();
        ex.finished(Some(())).unwrap();
        let mut next = h.scheduler.acquire().await.unwrap();
        assert_eq!(next.id(), id, "the freed worker is the next one out");
        assert!(
            next.take_conn().is_none(),
            "parked after a request cut short"
        );
        next.release(None);
        // A whole request and a whole response: the connection is kept.
        let ex: Exchange<()> = Exchange::queued(LIMITS, true);
        ex.leased(h.scheduler.acquire().await.unwrap()).unwrap();
        ex.sent(true).unwrap();
        ex.request_out().unwrap();
        ex.head().unwrap();
        ex.finished(Some(())).unwrap();
        assert_eq!(ex.phase(), Phase::Done(End::Freed));
        let mut next = h.scheduler.acquire().await.unwrap();
        assert!(next.take_conn().is_some(), "not parked");
        next.release(None);
    });
}

/// A runtime whose clock stands still unless every task waits.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}
