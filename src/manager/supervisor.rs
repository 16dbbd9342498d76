//! The manager's event loop: processes, their lifecycles, and the stop.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::apps::{AppKind, LOADER};
use crate::config::{Config, HotReload};
use crate::control::WorkerId;
use crate::link::{self, LinkMsg};
use crate::listeners::Listeners;
use crate::paths::{answers, remove_ours, Owned, PidFile};
use crate::{cli, lb, spawn, Failure};

use super::watch;

/// A worker joined this long (or that served a request) is a casualty when
/// it dies: replaced at once, not backed off.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
/// Casualties of one slot are replaced at most this often, so that a
/// request that kills its app every time cannot make the slot spin.
const CASUALTY_GAP: Duration = Duration::from_millis(200);
/// Outside development, the server gives up once every slot has failed
/// its first start this many times (no worker ever ready).
const FIRST_START_TRIES: u32 = 3;
/// How much longer each consecutive LB crash waits before its restart.
const LB_RESTART_STEP: Duration = Duration::from_millis(100);
/// Extra time a stopping process gets beyond the shutdown timeout.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Exponential restart delay: 1 s doubling to 30 s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    streak: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    /// Records a crash and returns how long to wait before the restart.
    pub fn crashed(&mut self) -> Duration {
        let delay = Self::FIRST
            .saturating_mul(1u32 << self.streak.min(5))
            .min(Self::MAX);
        self.streak = self.streak.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.streak = 0;
    }
}

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started, not yet joined to the LB; killed (a crash) if still so at
    /// `deadline` (the worker enforces the boot timeout itself: this is for
    /// one that hangs).
    Starting { deadline: Instant },
    /// Joined: serving.
    Ready,
    /// Gets no new requests; stopped once its replacement has joined.
    Retiring,
    /// Sent SIGTERM; killed at `deadline` if still alive.
    Stopping { deadline: Instant },
}

/// One of the N places a worker fills. Replacements (crash, recycle,
/// reload) take their predecessor's slot, and each slot backs off on its
/// own, so one crashing worker does not slow the restarts of the others.
#[derive(Debug, Default)]
struct Slot {
    backoff: Backoff,
    /// No worker starts in this slot before then.
    respawn_at: Option<Instant>,
    /// When a casualty of this slot was last replaced.
    last_casualty: Option<Instant>,
    /// Workers of this slot that failed before they were ready, in a row.
    boot_failures: u32,
}

impl Slot {
    /// A worker that was serving died: its backoff is forgotten and it is
    /// replaced at once — but no sooner than [`CASUALTY_GAP`] after the
    /// last casualty. Returns when the replacement may start.
    fn casualty(&mut self, now: Instant) -> Instant {
        self.backoff.reset();
        let at = self
            .last_casualty
            .map_or(now, |last| (last + CASUALTY_GAP).max(now));
        self.last_casualty = Some(at);
        self.respawn_at = (at > now).then_some(at);
        at
    }

    /// A worker died before it was serving: the slot backs off. Returns
    /// the delay before its next start.
    fn crashed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.crashed();
        let at = now + delay;
        self.respawn_at = Some(self.respawn_at.map_or(at, |t| t.max(at)));
        delay
    }
}

#[derive(Debug)]
struct Worker {
    slot: usize,
    /// Signalled through a pidfd: never a process that took its pid.
    process: spawn::Process,
    version: u64,
    state: State,
    joined_at: Option<Instant>,
    /// It took a request (the LB said so).
    served: bool,
    /// The last line of its app's output (what it said before it died).
    last_words: std::sync::Arc<std::sync::Mutex<String>>,
}

/// A worker as the LB knows it, kept to replay to a restarted LB.
#[derive(Debug, Clone)]
struct Joined {
    pid: Option<u32>,
    socket: PathBuf,
    version: Option<u64>,
}

struct Lb {
    process: spawn::Process,
    generation: u64,
    link: mpsc::UnboundedSender<LinkMsg>,
    started: Instant,
}

#[derive(Debug)]
enum Event {
    WorkerExited(WorkerId, ExitStatus),
    LbExited(u64, ExitStatus),
    Link(u64, LinkMsg),
}

pub struct Supervisor {
    config: Config,
    /// The public (and `--status-bind`) listeners, kept for LB restarts.
    listeners: Listeners,
    /// Held (locked) until the manager exits: a server runs here.
    pid_file: PidFile,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    lb: Option<Lb>,
    lb_generation: u64,
    lb_crashes: u32,
    lb_restart_at: Option<Instant>,
    workers: BTreeMap<WorkerId, Worker>,
    joined: BTreeMap<WorkerId, Joined>,
    next_id: WorkerId,
    version: u64,
    slots: Vec<Slot>,
    all_ready_once: bool,
    /// The newest app version a worker of which has been ready; 0: none
    /// yet (versions start at 1), and the start-up line says `starting`.
    ready_version: u64,
    /// No worker of the current version has been ready, and one failed to
    /// start with this error: the LB is told, and `/status` says failing.
    failing: Option<String>,
    /// Every slot failed its first start: stop with this error.
    give_up: Option<String>,
    /// The app watcher (hot reload) and its debounced batches of changes.
    watch: Option<(watch::Watch, mpsc::Receiver<Vec<PathBuf>>)>,
    /// What systemd has been told, when it started us.
    systemd: Option<Systemd>,
    /// When the workers' memory was last sampled (`--max-memory`,
    /// `--metrics`).
    memory_sampled: Instant,
    /// Workers replaced so far, by reason (for the metrics).
    replaced: crate::link::Replaced,
}

/// How often `--max-memory` samples the workers' memory.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// The manager's side of `sd_notify`: `READY=1` once every worker is
/// ready, `STATUS=` as the counts change, `RELOADING=1` for a rolling
/// restart (then `READY=1` when it is over, or has failed), `STOPPING=1`,
/// and `WATCHDOG=1` from the main loop while it runs.
struct Systemd {
    notifier: crate::systemd::Notifier,
    told: Told,
    status: String,
    watchdog_at: Instant,
}

/// What systemd was last told of readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// Nothing yet: starting (→ `Ready` once every worker is ready).
    Starting,
    /// `READY=1` (→ `Reloading` at a rolling restart).
    Ready,
    /// `RELOADING=1` (→ `Ready` when the rolling restart is over).
    Reloading,
}

impl Supervisor {
    /// Writes the module loader, announces the server and starts the LB
    /// and the workers. (The front wrote and locked the pid file.)
    pub fn start(
        config: Config,
        listeners: Listeners,
        pid_file: PidFile,
    ) -> Result<Supervisor, Failure> {
        let paths = &config.paths;
        if matches!(config.app.kind, AppKind::Module { .. }) {
            crate::paths::write_private(&paths.loader(), LOADER.as_bytes())
                .map_err(Failure::fatal)?;
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        let mut supervisor = Supervisor {
            config,
            listeners,
            pid_file,
            events_tx,
            events,
            lb: None,
            lb_generation: 0,
            lb_crashes: 0,
            lb_restart_at: None,
            workers: BTreeMap::new(),
            joined: BTreeMap::new(),
            next_id: 0,
            version: 1,
            slots,
            all_ready_once: false,
            ready_version: 0,
            failing: None,
            give_up: None,
            watch: None,
            systemd: None,
            memory_sampled: Instant::now(),
            replaced: Default::default(),
        };
        let env = |name: &str| std::env::var(name).ok();
        match crate::systemd::Notifier::from_env(&env, std::process::id()) {
            Ok(notifier) => {
                supervisor.systemd = notifier.map(|notifier| Systemd {
                    notifier,
                    told: Told::Starting,
                    status: String::new(),
                    watchdog_at: Instant::now(),
                })
            }
            Err(why) => warn!("{why}; systemd is not notified"),
        }
        supervisor.watch = supervisor.start_watch();
        supervisor.announce("starting");
        if let Err(e) = supervisor.start_lb() {
            supervisor.cleanup();
            return Err(e);
        }
        supervisor.reconcile();
        Ok(supervisor)
    }

    /// The start-up line: `starting` at once (with the address), `serving`
    /// when the first worker is ready.
    fn announce(&self, what: &str) {
        let c = &self.config;
        let host = match c.bind {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let plural = if c.workers == 1 { "" } else { "s" };
        let status = match (c.status_bind, &c.status_path) {
            (Some(addr), path) => format!(
                "; status on http://{addr}{}",
                path.as_deref().unwrap_or(lb::DEFAULT_STATUS_PATH)
            ),
            (None, _) => String::new(),
        };
        let status = match c.metrics {
            Some(addr) => format!("{status}; metrics on http://{addr}/metrics"),
            None => status,
        };
        let urls: Vec<String> = [
            c.port.map(|port| format!("http://{host}:{port}")),
            c.https
                .as_ref()
                .map(|https| format!("https://{host}:{}", https.port)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let line = format!(
            "rip-server: {what} {} ({}) on {} with {} worker{plural} (pid {}){status}",
            c.app.name,
            c.app.describe(),
            urls.join(" and "),
            c.workers,
            std::process::id()
        );
        crate::output::STDOUT.line(line.as_bytes());
    }

    /// Watches the app's directory when a reload mode asks for it.
    fn start_watch(&self) -> Option<(watch::Watch, mpsc::Receiver<Vec<PathBuf>>)> {
        if self.config.hot_reload == HotReload::None
            || matches!(self.config.app.kind, AppKind::Builtin(_))
        {
            return None;
        }
        // The server's own output, redirected into the app's directory
        // (`rip-server . > log.txt`), is not the app's code.
        let own_output: Vec<PathBuf> = [1, 2]
            .iter()
            .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
            .filter(|path| path.is_file())
            .collect();
        let mut skip: Vec<&std::path::Path> = vec![self.config.paths.dir()];
        skip.extend(own_output.iter().map(PathBuf::as_path));
        let filter = watch::Filter::new(&self.config.app.dir, &skip)
            .with_globs(&self.config.watch, &self.config.ignore);
        match filter.and_then(watch::start) {
            Ok(watching) => Some(watching),
            Err(e) => {
                warn!("{e}; hot reload is off (SIGHUP still restarts the workers)");
                None
            }
        }
    }

    pub async fn run(mut self) -> Result<(), Failure> {
        let mut term = signal(SignalKind::terminate()).map_err(signal_failure)?;
        let mut int = signal(SignalKind::interrupt()).map_err(signal_failure)?;
        let mut hup = signal(SignalKind::hangup()).map_err(signal_failure)?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(signal_failure)?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => {
                    // The LB reopens its access log (logrotate).
                    if let Some(lb) = &self.lb {
                        lb.process.signal(Signal::SIGUSR1);
                    }
                }
                _ = hup.recv() => {
                    // The LB rereads its certificates; the workers roll.
                    if let Some(lb) = &self.lb {
                        lb.process.signal(Signal::SIGHUP);
                    }
                    self.rolling_restart();
                }
                Some(event) = self.events.recv() => {
                    self.handle(event);
                    if self.give_up.is_some() {
                        break;
                    }
                }
                Some(changed) = next_change(&mut self.watch) => self.app_changed(changed),
                _ = tick.tick() => {
                    self.restart_lb_if_due();
                    self.enforce_deadlines();
                    self.sample_workers();
                    self.reconcile();
                }
            }
            self.tell_systemd();
        }
        info!("stopping");
        if let Some(systemd) = &self.systemd {
            systemd.notifier.send("STOPPING=1");
        }
        let forced = self.stop(&mut int).await;
        self.cleanup();
        if forced {
            // As a process killed by SIGINT would report.
            return Err(Failure::Silent(130));
        }
        if let Some(error) = self.give_up.take() {
            return Err(Failure::fatal(format!(
                "the app cannot start ({} tries in each of {} slots): {error}",
                FIRST_START_TRIES, self.config.workers
            )));
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::WorkerExited(id, status) => self.worker_exited(id, status),
            Event::LbExited(generation, status) => {
                if self
                    .lb
                    .as_ref()
                    .is_some_and(|lb| lb.generation == generation)
                {
                    let lb = self.lb.take().expect("checked above");
                    if lb.started.elapsed() > HEALTHY_AFTER {
                        self.lb_crashes = 0;
                    }
                    // The listener stays open meanwhile: clients wait in
                    // the backlog, they are not refused. Only a crash loop
                    // slows the restarts down.
                    let delay = LB_RESTART_STEP * self.lb_crashes.min(20);
                    self.lb_crashes += 1;
                    error!("load balancer exited ({status}); restarting it");
                    self.lb_restart_at = Some(Instant::now() + delay);
                    self.restart_lb_if_due();
                }
            }
            Event::Link(generation, msg) => {
                if self
                    .lb
                    .as_ref()
                    .is_some_and(|lb| lb.generation == generation)
                {
                    self.link_message(msg);
                }
            }
        }
    }

    fn link_message(&mut self, msg: LinkMsg) {
        match msg {
            LinkMsg::Joined {
                id,
                pid,
                socket,
                version,
            } => {
                self.joined.insert(
                    id,
                    Joined {
                        pid,
                        socket,
                        version,
                    },
                );
                let Some(worker) = self.workers.get_mut(&id) else {
                    return; // a worker we did not start (e.g. an external one)
                };
                if let State::Starting { .. } = worker.state {
                    worker.state = State::Ready;
                }
                if let Some(slot) = self.slots.get_mut(worker.slot) {
                    slot.boot_failures = 0;
                }
                let first = self.ready_version == 0;
                self.ready_version = self.ready_version.max(worker.version);
                if worker.version >= self.version && self.failing.take().is_some() {
                    self.send_lb(LinkMsg::Failing { error: None });
                }
                if first {
                    self.announce("serving");
                }
                let Some(worker) = self.workers.get_mut(&id) else {
                    return;
                };
                worker.joined_at = Some(Instant::now());
                info!(
                    "worker {id} ready (pid {}, version {})",
                    worker.process.pid(),
                    worker.version
                );
                // The workers it replaces (recycled, reloaded) may go now;
                // a worker superseded before it joined replaces nothing.
                let (slot, version) = (worker.slot, worker.version);
                let replaced: Vec<WorkerId> = if worker.state == State::Ready {
                    self.workers
                        .iter()
                        .filter(|(_, w)| {
                            w.slot == slot && w.state == State::Retiring && w.version <= version
                        })
                        .map(|(old, _)| *old)
                        .filter(|old| *old != id)
                        .collect()
                } else {
                    Vec::new()
                };
                for old in replaced {
                    self.stop_worker(old);
                }
                let ready = self
                    .workers
                    .values()
                    .filter(|w| w.state == State::Ready)
                    .count();
                if !self.all_ready_once && ready >= self.config.workers {
                    self.all_ready_once = true;
                    info!("all {ready} workers ready");
                }
            }
            LinkMsg::Left { id } => {
                self.joined.remove(&id);
            }
            LinkMsg::Retire { id, why } => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    if matches!(worker.state, State::Starting { .. } | State::Ready) {
                        worker.state = State::Retiring;
                        let count = match why {
                            crate::link::Retirement::Recycle => &mut self.replaced.recycle,
                            crate::link::Retirement::Reload => &mut self.replaced.reload,
                            crate::link::Retirement::Abandoned => &mut self.replaced.abandoned,
                        };
                        *count += 1;
                        self.reconcile();
                    }
                }
            }
            LinkMsg::Served { id } => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.served = true;
                }
            }
            LinkMsg::Dead { .. }
            | LinkMsg::Rejoin { .. }
            | LinkMsg::Failing { .. }
            | LinkMsg::Stats { .. } => {}
        }
    }

    fn worker_exited(&mut self, id: WorkerId, status: ExitStatus) {
        self.joined.remove(&id);
        self.send_lb(LinkMsg::Dead { id });
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        if let State::Stopping { .. } = worker.state {
            self.reconcile();
            return; // planned: recycled, replaced or stopped
        }
        self.replaced.crash += 1;
        // It exited on its own: its app died (a retiring worker too — the LB
        // retires a worker whose app vanished mid-request). One that was
        // serving is a casualty (the OOM killer, a poison request): it is
        // replaced at once. One that died before it was ready, or soon
        // after without serving, is a crash loop: back off, so that it
        // never restarts in a tight loop.
        let casualty = worker
            .joined_at
            .is_some_and(|t| worker.served || t.elapsed() >= HEALTHY_AFTER);
        if casualty {
            let at = self.casualty(worker.slot);
            let when = match at.saturating_duration_since(Instant::now()) {
                d if d.is_zero() => "replacing it now".to_string(),
                d => format!("replacing it in {} ms", d.as_millis()),
            };
            error!(
                "worker {id} (pid {}) exited unexpectedly ({status}); {when}",
                worker.process.pid()
            );
            self.reconcile();
            return;
        }
        if worker.joined_at.is_none() {
            self.failed_to_start(&worker, &status);
        }
        let delay = self.crashed(worker.slot);
        if self.slot_filled(worker.slot) {
            error!(
                "worker {id} (pid {}) exited unexpectedly ({status}); its replacement is starting",
                worker.process.pid()
            );
        } else {
            error!(
                "worker {id} (pid {}) exited unexpectedly ({status}); {} worker(s) missing, restarting in {}s",
                worker.process.pid(),
                self.config.workers.saturating_sub(self.active()),
                delay.as_secs()
            );
        }
        self.reconcile();
    }

    /// A worker died before it was ready: while no worker of the current
    /// version has been, the LB is told the app is failing (with the app's
    /// last words); outside development, once every slot has failed its
    /// first start `FIRST_START_TRIES` times, the server gives up.
    fn failed_to_start(&mut self, worker: &Worker, status: &ExitStatus) {
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            slot.boot_failures += 1;
        }
        if worker.version < self.version || self.ready_version >= self.version {
            return;
        }
        let said = worker
            .last_words
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let said = says_why(said.as_bytes()).map(String::from_utf8_lossy);
        let said = said.as_deref().unwrap_or("");
        let error = if said.is_empty() {
            format!("it exited ({status}) before it was ready")
        } else {
            said.to_string()
        };
        if self.failing.as_ref() != Some(&error) {
            self.failing = Some(error.clone());
            self.send_lb(LinkMsg::Failing {
                error: Some(error.clone()),
            });
        }
        let everywhere = self
            .slots
            .iter()
            .all(|s| s.boot_failures >= FIRST_START_TRIES);
        let never_ready = self.ready_version == 0;
        if everywhere && never_ready && self.config.hot_reload == HotReload::None {
            self.give_up = Some(error);
        }
    }

    /// Records a casualty in `slot`; returns when its replacement may
    /// start.
    fn casualty(&mut self, slot: usize) -> Instant {
        let now = Instant::now();
        self.slots.get_mut(slot).map_or(now, |s| s.casualty(now))
    }

    /// Records a crash in `slot`; returns the delay before its next start.
    fn crashed(&mut self, slot: usize) -> Duration {
        let now = Instant::now();
        self.slots
            .get_mut(slot)
            .map_or(Duration::ZERO, |s| s.crashed(now))
    }

    /// Workers that are or will be serving (not on their way out).
    fn active(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, State::Starting { .. } | State::Ready))
            .count()
    }

    /// Whether `slot` has a worker that is or will be serving.
    fn slot_filled(&self, slot: usize) -> bool {
        self.workers
            .values()
            .any(|w| w.slot == slot && matches!(w.state, State::Starting { .. } | State::Ready))
    }

    /// Fills every empty slot whose backoff has run out. (A slot whose
    /// worker is retiring is empty: its replacement starts now.)
    /// About once a second, with `--max-memory` or `--metrics`: reads each
    /// serving worker's memory (its process tree: it and its app) and
    /// tells the LB (the metrics); a worker over `--max-memory` is replaced
    /// the way a recycled one is — its replacement starts now, and it is
    /// stopped (its request in flight finished) once the replacement has
    /// joined.
    fn sample_workers(&mut self) {
        if self.config.max_memory.is_none() && self.config.metrics.is_none() {
            return;
        }
        if self.memory_sampled.elapsed() < MEMORY_EVERY {
            return;
        }
        self.memory_sampled = Instant::now();
        let table = crate::procfs::table();
        let limit = self.config.max_memory.unwrap_or(u64::MAX);
        let mut stats = Vec::new();
        for (id, worker) in &mut self.workers {
            if worker.state != State::Ready {
                continue;
            }
            let (rss, _) = crate::procfs::tree_totals(worker.process.pid(), &table);
            stats.push(crate::link::WorkerStat {
                slot: worker.slot,
                id: *id,
                rss,
            });
            if rss > limit {
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                warn!(
                    "worker {id} (pid {}) holds {:.1} MiB with its app, over --max-memory ({:.1} MiB): replacing it",
                    worker.process.pid(),
                    mib(rss),
                    mib(limit)
                );
                worker.state = State::Retiring;
                self.replaced.memory += 1;
            }
        }
        if self.config.metrics.is_some() {
            let replaced = self.replaced.clone();
            self.send_lb(LinkMsg::Stats {
                replaced,
                workers: stats,
            });
        }
    }

    /// Tells systemd what changed since it was last told (see [`Systemd`]).
    fn tell_systemd(&mut self) {
        let Some(systemd) = &self.systemd else {
            return;
        };
        let current = |w: &&Worker| w.state == State::Ready && w.version >= self.version;
        let ready = self.workers.values().filter(current).count();
        let expected = self.config.workers;
        let retiring = self.workers.values().any(|w| w.state == State::Retiring);
        let status = match &self.failing {
            Some(error) => format!("the app (version {}) cannot start: {error}", self.version),
            None if retiring => format!(
                "rolling restart to version {}: {ready}/{expected} workers ready",
                self.version
            ),
            None => format!(
                "{ready}/{expected} workers ready (version {})",
                self.version
            ),
        };
        let now_ready = match systemd.told {
            Told::Starting => self.all_ready_once,
            Told::Ready => false,
            // A rolling restart is over when the old workers are gone, or
            // the new code cannot start (the old ones serve on).
            Told::Reloading => !retiring && ready >= expected || self.failing.is_some(),
        };
        let Some(systemd) = &mut self.systemd else {
            return;
        };
        if now_ready {
            systemd.notifier.send(&format!("READY=1\nSTATUS={status}"));
            systemd.told = Told::Ready;
        } else if status != systemd.status {
            systemd.notifier.send(&format!("STATUS={status}"));
        }
        systemd.status = status;
        if let Some(every) = systemd.notifier.watchdog_every() {
            if systemd.watchdog_at.elapsed() >= every {
                systemd.notifier.send("WATCHDOG=1");
                systemd.watchdog_at = Instant::now();
            }
        }
    }

    fn reconcile(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slot_filled(slot) {
                continue;
            }
            if self.slots[slot].respawn_at.is_some_and(|at| now < at) {
                continue;
            }
            self.slots[slot].respawn_at = None;
            self.spawn_worker(slot);
        }
    }

    /// The watcher saw the app change: roll the workers onto the new code.
    /// In module mode the loader reloads the entry itself, so a change to
    /// the entry alone needs no restart.
    fn app_changed(&mut self, mut changed: Vec<PathBuf>) {
        if self.config.hot_reload == HotReload::Module {
            if let AppKind::Module { entry, .. } = &self.config.app.kind {
                changed.retain(|p| p != entry);
            }
        }
        let Some(first) = changed.first() else {
            return;
        };
        let shown = first.strip_prefix(&self.config.app.dir).unwrap_or(first);
        let more = match changed.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        info!("{}{more} changed", shown.display());
        self.rolling_restart();
    }

    /// Every serving worker gets a replacement of the next version (SIGHUP,
    /// or a change to the app). New code gets a fresh start: crash backoffs
    /// are forgotten.
    fn rolling_restart(&mut self) {
        self.version += 1;
        info!("rolling restart to version {}", self.version);
        if let Some(systemd) = self.systemd.as_mut().filter(|s| s.told != Told::Starting) {
            systemd.notifier.send(&crate::systemd::reloading());
            systemd.told = Told::Reloading;
        }
        for slot in &mut self.slots {
            slot.backoff.reset();
            slot.respawn_at = None;
        }
        for worker in self.workers.values_mut() {
            if matches!(worker.state, State::Starting { .. } | State::Ready) {
                worker.state = State::Retiring;
                self.replaced.rolling_restart += 1;
            }
        }
        self.reconcile();
    }

    fn spawn_worker(&mut self, slot: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let version = self.version;
        let role = [
            "worker".to_string(),
            id.to_string(),
            format!("--app-version={version}"),
        ];
        let mut command = spawn::role(cli::role_args(&role, &self.config), &[]);
        // Its stderr comes through us: what its app last said is the
        // reason it gives when it cannot start.
        command.stdin(Stdio::null()).stderr(Stdio::piped());
        match command.spawn() {
            Ok(mut child) => {
                // Held before the task below can reap it.
                let process = spawn::Process::new(child.id().unwrap_or(0));
                let last_words = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                let forwarding = child.stderr.take().map(|stderr| {
                    let last = last_words.clone();
                    tokio::spawn(async move {
                        let app_line = |line: &[u8]| says_why(line).is_some();
                        crate::output::forward(
                            stderr,
                            "",
                            &crate::output::STDERR,
                            Some((&last, app_line)),
                        )
                        .await
                    })
                });
                self.workers.insert(
                    id,
                    Worker {
                        slot,
                        process,
                        version,
                        state: State::Starting {
                            deadline: Instant::now() + self.config.boot_timeout + KILL_GRACE * 2,
                        },
                        joined_at: None,
                        served: false,
                        last_words,
                    },
                );
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    if let Ok(status) = child.wait().await {
                        // Its last lines first, then its exit.
                        if let Some(task) = forwarding {
                            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
                        }
                        let _ = events.send(Event::WorkerExited(id, status));
                    }
                });
            }
            Err(e) => {
                let delay = self.crashed(slot);
                error!(
                    "cannot start worker {id}: {e}; retrying in {}s",
                    delay.as_secs()
                );
            }
        }
    }

    fn stop_worker(&mut self, id: WorkerId) {
        let deadline = Instant::now() + self.config.shutdown_timeout + KILL_GRACE;
        if let Some(worker) = self.workers.get_mut(&id) {
            if !matches!(worker.state, State::Stopping { .. }) {
                worker.state = State::Stopping { deadline };
                worker.process.signal(Signal::SIGTERM);
            }
        }
    }

    /// Kills workers that outlived their stop deadline, or hang before
    /// they are ready (that exit then counts as a crash).
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        for (id, worker) in &self.workers {
            match worker.state {
                State::Stopping { deadline } if now >= deadline => {
                    warn!("worker {id} did not stop in time; killing it");
                    worker.process.signal_group(Signal::SIGKILL);
                }
                State::Starting { deadline } if now >= deadline => {
                    warn!("worker {id} did not get ready in time (--boot-timeout-ms); killing it");
                    worker.process.signal_group(Signal::SIGKILL);
                }
                _ => {}
            }
        }
    }

    fn restart_lb_if_due(&mut self) {
        if self.lb_restart_at.is_some_and(|at| Instant::now() >= at) {
            self.lb_restart_at = None;
            if let Err(e) = self.start_lb() {
                error!("{e:?}");
                self.lb_restart_at = Some(Instant::now() + Backoff::FIRST);
            }
        }
    }

    fn start_lb(&mut self) -> Result<(), Failure> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Failure::fatal(format!("cannot create the LB link: {e}")))?;
        let fds = self.listeners.fds();
        let mut role = vec![
            "lb".to_string(),
            format!("--link-fd={}", theirs.as_raw_fd()),
        ];
        role.extend(fds.args());
        let mut keep = fds.all();
        keep.push(theirs.as_raw_fd());
        let mut command = spawn::role(cli::role_args(&role, &self.config), &keep);
        command.stdin(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| Failure::fatal(format!("cannot start the load balancer: {e}")))?;
        drop(theirs);
        self.lb_generation += 1;
        let generation = self.lb_generation;
        let (mut reader, mut writer) = link::from_fd(mine)
            .map_err(|e| Failure::fatal(format!("cannot use the LB link: {e}")))?;
        let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkMsg>();
        tokio::spawn(async move {
            while let Some(msg) = link_rx.recv().await {
                if writer.send(&msg).await.is_err() {
                    break;
                }
            }
        });
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(msg) = reader.next().await {
                if events.send(Event::Link(generation, msg)).is_err() {
                    break;
                }
            }
        });
        let events = self.events_tx.clone();
        // Held before the task below can reap it.
        let process = spawn::Process::new(child.id().unwrap_or(0));
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = events.send(Event::LbExited(generation, status));
            }
        });
        // A restarted LB learns the workers that had joined its predecessor,
        // and whether the app is failing.
        for msg in replay(&self.joined, &self.workers) {
            let _ = link_tx.send(msg);
        }
        if let Some(error) = &self.failing {
            let _ = link_tx.send(LinkMsg::Failing {
                error: Some(error.clone()),
            });
        }
        self.lb = Some(Lb {
            process,
            generation,
            link: link_tx,
            started: Instant::now(),
        });
        Ok(())
    }

    fn send_lb(&self, msg: LinkMsg) {
        if let Some(lb) = &self.lb {
            let _ = lb.link.send(msg);
        }
    }

    /// The graceful stop, all within the shutdown timeout: the LB drains
    /// while the workers serve, then the workers stop (they get at least
    /// `KILL_GRACE`, having nothing in flight by then). What is left at the
    /// deadline is killed. A second SIGINT kills everything at once; returns
    /// whether that happened.
    async fn stop(&mut self, int: &mut tokio::signal::unix::Signal) -> bool {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        if let Some(lb) = &self.lb {
            lb.process.signal(Signal::SIGTERM);
        }
        // No LB will be started again: once the draining one has let go of
        // the public ports too they are closed, and a new client is refused
        // (and tries elsewhere) rather than left in the backlog.
        self.listeners = Listeners::default();
        let mut forced = false;
        let mut killed = false;
        while self.lb.is_some() {
            tokio::select! {
                Some(event) = self.events.recv() => match event {
                    Event::LbExited(..) => self.lb = None,
                    Event::WorkerExited(id, _) => { self.workers.remove(&id); }
                    Event::Link(..) => {}
                },
                _ = int.recv() => {
                    warn!("second interrupt: killing everything");
                    forced = true;
                    self.kill_all();
                }
                _ = tokio::time::sleep_until(deadline + KILL_GRACE), if !killed => {
                    warn!("load balancer did not drain in time; killing it");
                    self.kill_lb();
                    killed = true;
                }
            }
        }
        if !forced {
            for id in self.workers.keys().copied().collect::<Vec<_>>() {
                self.stop_worker(id);
            }
        }
        let deadline = deadline.max(Instant::now() + KILL_GRACE);
        let mut killed = forced;
        while !self.workers.is_empty() {
            tokio::select! {
                Some(event) = self.events.recv() => {
                    if let Event::WorkerExited(id, _) = event {
                        self.workers.remove(&id);
                    }
                }
                _ = int.recv() => {
                    forced = true;
                    self.kill_all();
                }
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    warn!("{} worker(s) did not stop in time; killing them", self.workers.len());
                    self.kill_all();
                    killed = true;
                }
            }
        }
        info!("stopped");
        forced
    }

    fn kill_lb(&mut self) {
        if let Some(lb) = &self.lb {
            lb.process.signal(Signal::SIGKILL);
        }
    }

    fn kill_all(&mut self) {
        self.kill_lb();
        for worker in self.workers.values() {
            // The worker's app is in its own group and dies with its worker.
            worker.process.signal(Signal::SIGKILL);
        }
    }

    /// Removes every path this server made.
    /// Removes every path this server made. A worker socket that still
    /// answers belongs to a live process we did not start (an external
    /// worker): it stays. The pid file goes last, still locked.
    fn cleanup(&self) {
        let paths = &self.config.paths;
        let mut sockets = paths.worker_sockets();
        sockets.retain(|path| !answers(path));
        sockets.push(paths.ctl());
        for path in sockets {
            if let Err(e) = remove_ours(&path, Owned::Socket) {
                warn!("{e}");
            }
        }
        for file in [paths.loader(), paths.quick_cert(), paths.quick_key()] {
            if let Err(e) = remove_ours(&file, Owned::File) {
                warn!("{e}");
            }
        }
        if let Err(e) = self.pid_file.remove() {
            warn!("{e}");
        }
    }
}

/// Of a line a worker passed on from its app (`[worker N] ...`), what may
/// say why the app failed: the app's words, trimmed — not an empty line,
/// nor a frame of a stack trace (`at ...`), which the error line precedes.
fn says_why(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"[worker ")?;
    let end = rest.iter().position(|&b| b == b']')?;
    let said = rest[end + 1..].trim_ascii();
    (!said.is_empty() && !said.starts_with(b"at ")).then_some(said)
}

/// What a restarted LB is told of the workers that had joined its
/// predecessor: only those that may serve. A worker on its way out
/// (retiring: recycled, reloaded, or retired because its app may be busy
/// with an abandoned request; stopping) is left out, so it gets no request
/// again. Workers we did not start (external ones) are replayed as joined.
fn replay(
    joined: &BTreeMap<WorkerId, Joined>,
    workers: &BTreeMap<WorkerId, Worker>,
) -> Vec<LinkMsg> {
    joined
        .iter()
        .filter(|(id, _)| {
            workers
                .get(id)
                .is_none_or(|w| matches!(w.state, State::Ready | State::Starting { .. }))
        })
        .map(|(&id, joined)| LinkMsg::Rejoin {
            id,
            pid: joined.pid,
            socket: joined.socket.clone(),
            version: joined.version,
        })
        .collect()
}

/// The next batch of changes, or never when nothing is watched.
async fn next_change(
    watch: &mut Option<(watch::Watch, mpsc::Receiver<Vec<PathBuf>>)>,
) -> Option<Vec<PathBuf>> {
    match watch {
        Some((_, batches)) => batches.recv().await,
        None => std::future::pending().await,
    }
}

fn signal_failure(e: std::io::Error) -> Failure {
    Failure::fatal(format!("cannot install signal handlers: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_lb_is_told_only_of_workers_that_may_serve() {
        let now = Instant::now();
        let worker = |state| Worker {
            slot: 0,
            process: spawn::Process::new(std::process::id()),
            version: 1,
            state,
            joined_at: Some(now),
            served: true,
            last_words: Default::default(),
        };
        let workers: BTreeMap<WorkerId, Worker> = [
            (0, worker(State::Ready)),
            (1, worker(State::Retiring)),
            (2, worker(State::Stopping { deadline: now })),
        ]
        .into_iter()
        .collect();
        let joined: BTreeMap<WorkerId, Joined> = [0, 1, 2, 7]
            .into_iter()
            .map(|id| {
                let socket = PathBuf::from(format!("/tmp/w.{id}.sock"));
                (
                    id,
                    Joined {
                        pid: None,
                        socket,
                        version: Some(1),
                    },
                )
            })
            .collect();
        let ids: Vec<WorkerId> = replay(&joined, &workers)
            .into_iter()
            .map(|msg| match msg {
                LinkMsg::Rejoin { id, .. } => id,
                other => panic!("not a rejoin: {other:?}"),
            })
            .collect();
        // 7 joined on its own (an external worker): it is replayed.
        assert_eq!(ids, vec![0, 7]);
    }

    #[test]
    fn a_casualty_is_replaced_at_once_but_never_in_a_tight_loop() {
        let now = Instant::now();
        let mut slot = Slot::default();
        // A crash loop first: the slot backs off...
        assert_eq!(slot.crashed(now), Duration::from_secs(1));
        assert_eq!(slot.crashed(now), Duration::from_secs(2));
        // ...and a casualty forgets it: replaced now.
        assert_eq!(slot.casualty(now), now);
        assert_eq!(slot.respawn_at, None);
        // A poison request killing each replacement at once: spaced out.
        let next = slot.casualty(now);
        assert_eq!(next, now + CASUALTY_GAP);
        assert_eq!(slot.respawn_at, Some(next));
        assert_eq!(slot.casualty(now), now + CASUALTY_GAP * 2);
        // Once the gap has passed, at once again.
        let later = now + Duration::from_secs(5);
        assert_eq!(slot.casualty(later), later);
        assert_eq!(
            slot.crashed(later),
            Duration::from_secs(1),
            "the backoff was reset"
        );
    }

    #[test]
    fn the_apps_last_words_skip_stack_frames() {
        assert_eq!(
            says_why(b"[worker 3]  Error: boom at import"),
            Some(&b"Error: boom at import"[..])
        );
        assert_eq!(
            says_why(b"[worker 3]     at file:///app/index.mjs:1:7"),
            None
        );
        assert_eq!(says_why(b"[worker 3] "), None);
        assert_eq!(says_why(b"rip-server[worker 3] error: app exited"), None);
        assert_eq!(
            says_why(b"[worker 12] ValueError: no config"),
            Some(&b"ValueError: no config"[..])
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.crashed().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.crashed(), Duration::from_secs(1));
    }
}
