//! What the LB counts for `--metrics` (Prometheus text exposition, 0.0.4):
//! requests by status class, the LB's own answers by cause, histograms of
//! queue wait and app time, bytes from and to clients, the queue's depth
//! and its maximum — beside what is read when scraped (the pool's counts,
//! the LB's memory, connections and descriptors).
//!
//! Counting is a handful of relaxed atomic adds per request, in one
//! process-wide [`METRICS`]. The counters start at zero with each LB
//! process: an LB restart resets them (`rip_lb_start_time_seconds` says
//! when; Prometheus' `rate()` takes resets in its stride).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::http1::Own;

/// Why the LB answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `--max-queue` was reached (503 Server busy).
    QueueFull,
    /// No worker within `--queue-timeout-ms` (504 Queue timeout).
    QueueTimeout,
    /// The app did not answer in time (504).
    UpstreamTimeout,
    /// The worker failed the request (502).
    BadGateway,
    /// No worker can start (503 App not ready).
    AppNotReady,
    /// The client's request was refused (4xx: malformed, too large, slow).
    RefusedInput,
    /// The LB's routes: health, status, the HTTPS redirect.
    Route,
}

impl Cause {
    const ALL: [Cause; 7] = [
        Cause::QueueFull,
        Cause::QueueTimeout,
        Cause::UpstreamTimeout,
        Cause::BadGateway,
        Cause::AppNotReady,
        Cause::RefusedInput,
        Cause::Route,
    ];

    fn label(self) -> &'static str {
        match self {
            Cause::QueueFull => "queue_full",
            Cause::QueueTimeout => "queue_timeout",
            Cause::UpstreamTimeout => "upstream_timeout",
            Cause::BadGateway => "bad_gateway",
            Cause::AppNotReady => "app_not_ready",
            Cause::RefusedInput => "refused_input",
            Cause::Route => "route",
        }
    }

    /// The cause of an answer of the LB's own, from what it says.
    pub fn of(own: &Own<'_>) -> Cause {
        match (own.status, own.body) {
            (503, b"Server busy") => Cause::QueueFull,
            (503, b"App not ready") => Cause::AppNotReady,
            (504, b"Queue timeout") => Cause::QueueTimeout,
            (504, _) => Cause::UpstreamTimeout,
            (502, _) => Cause::BadGateway,
            (400..=499, _) => Cause::RefusedInput,
            _ => Cause::Route,
        }
    }
}

/// Upper bounds of the histograms' buckets, in seconds (and `+Inf`).
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram: counts per bucket (not cumulative until
/// written), their sum in microseconds, and the count.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match BOUNDS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The LB's counters.
pub struct Metrics {
    /// Answers by status class: 1xx … 5xx.
    by_class: [AtomicU64; 5],
    own: [AtomicU64; Cause::ALL.len()],
    pub queue_wait: Histogram,
    pub app_time: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    queue_max: AtomicU64,
}

/// The one set of counters of this LB process.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            by_class: [const { AtomicU64::new(0) }; 5],
            own: [const { AtomicU64::new(0) }; Cause::ALL.len()],
            queue_wait: Histogram::new(),
            app_time: Histogram::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            queue_max: AtomicU64::new(0),
        }
    }

    /// A request answered with `status`: by the LB for `cause`, or by the
    /// app after `app_time` (the queue wait counts for both).
    pub fn answered(
        &self,
        status: u16,
        cause: Option<Cause>,
        queued: Duration,
        app_time: Duration,
    ) {
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.by_class[class as usize].fetch_add(1, Relaxed);
        }
        match cause {
            Some(cause) => {
                let i = Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
                self.own[i].fetch_add(1, Relaxed);
            }
            None => self.app_time.observe(app_time),
        }
        if cause != Some(Cause::Route) {
            self.queue_wait.observe(queued);
        }
    }

    /// Bytes a client connection carried, in and out (added once per
    /// request, not per read or write).
    pub fn bytes(&self, read: u64, written: u64) {
        self.bytes_in.fetch_add(read, Relaxed);
        self.bytes_out.fetch_add(written, Relaxed);
    }

    /// The most requests that waited at once.
    pub fn queue_max(&self) -> u64 {
        self.queue_max.load(Relaxed)
    }

    /// Answers of the LB's own for `cause` so far.
    pub fn answers(&self, cause: Cause) -> u64 {
        let i = Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
        self.own[i].load(Relaxed)
    }

    /// The queue holds `depth` requests now (called at each enqueue, so
    /// the maximum is never below the depth).
    pub fn queued(&self, depth: usize) {
        self.queue_max.fetch_max(depth as u64, Relaxed);
    }
}

/// What is read when scraped, beside the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    pub start_time: u64,
    pub queue: usize,
    pub expected: usize,
    pub joined: usize,
    pub idle: usize,
    pub busy: usize,
    pub spent: usize,
    pub connections: usize,
    pub rss_bytes: u64,
    pub descriptors: usize,
    pub draining: bool,
}

impl Metrics {
    /// The exposition, in Prometheus' text format.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "rip_lb_start_time_seconds",
            "gauge",
            "When this LB process started (counters start at 0 with it), seconds since the epoch.",
            g.start_time.to_string(),
        );
        one(
            "rip_draining",
            "gauge",
            "1 from SIGTERM until the LB exits.",
            u8::from(g.draining).to_string(),
        );
        one(
            "rip_queue_depth",
            "gauge",
            "Requests waiting for a worker now.",
            g.queue.to_string(),
        );
        one(
            "rip_queue_depth_max",
            "gauge",
            "The most requests that waited at once since the LB started.",
            self.queue_max.load(Relaxed).to_string(),
        );
        one(
            "rip_workers_expected",
            "gauge",
            "Workers asked for (w:N).",
            g.expected.to_string(),
        );
        one(
            "rip_workers_joined",
            "gauge",
            "Workers of the newest version that can serve.",
            g.joined.to_string(),
        );
        one(
            "rip_workers_missing",
            "gauge",
            "Workers expected but not joined.",
            g.expected.saturating_sub(g.joined).to_string(),
        );
        one(
            "rip_workers_idle",
            "gauge",
            "Workers waiting for a request.",
            g.idle.to_string(),
        );
        one(
            "rip_workers_busy",
            "gauge",
            "Workers with a request out.",
            g.busy.to_string(),
        );
        one(
            "rip_workers_spent",
            "gauge",
            "Workers past their request budget, waiting for their replacement.",
            g.spent.to_string(),
        );
        one(
            "rip_lb_connections",
            "gauge",
            "Client connections open.",
            g.connections.to_string(),
        );
        one(
            "rip_lb_resident_memory_bytes",
            "gauge",
            "The LB process' resident memory.",
            g.rss_bytes.to_string(),
        );
        one(
            "rip_lb_open_fds",
            "gauge",
            "The LB process' open file descriptors.",
            g.descriptors.to_string(),
        );
        one(
            "rip_received_bytes_total",
            "counter",
            "Bytes read from clients (after TLS).",
            self.bytes_in.load(Relaxed).to_string(),
        );
        one(
            "rip_sent_bytes_total",
            "counter",
            "Bytes written to clients (before TLS).",
            self.bytes_out.load(Relaxed).to_string(),
        );
        let _ = writeln!(out, "# HELP rip_requests_total Requests answered, by status class.\n# TYPE rip_requests_total counter");
        for (i, count) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "rip_requests_total{{code=\"{}xx\"}} {}",
                i + 1,
                count.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP rip_lb_answers_total Requests the LB answered itself, by cause.\n# TYPE rip_lb_answers_total counter");
        for (cause, count) in Cause::ALL.iter().zip(&self.own) {
            let _ = writeln!(
                out,
                "rip_lb_answers_total{{cause=\"{}\"}} {}",
                cause.label(),
                count.load(Relaxed)
            );
        }
        self.queue_wait.write(
            &mut out,
            "rip_queue_wait_seconds",
            "How long requests waited for a worker.",
        );
        self.app_time.write(
            &mut out,
            "rip_app_seconds",
            "From a request sent to its worker to the response head.",
        );
        out
    }
}

/// The manager's part (its last `Stats`): workers replaced by reason, and
/// per slot (`w:<N>` of them, so the series stay few however many workers
/// come and go) the memory of the worker serving in it and the requests it
/// has taken (`served`: by worker id, from the pool).
pub fn render_workers(
    out: &mut String,
    replaced: &crate::link::Replaced,
    workers: &[crate::link::WorkerStat],
    served: &dyn Fn(u32) -> Option<u64>,
) {
    let _ = writeln!(out, "# HELP rip_worker_replacements_total Workers replaced, by reason (counted by the manager: they outlive an LB restart).\n# TYPE rip_worker_replacements_total counter");
    for (reason, count) in replaced.by_reason() {
        let _ = writeln!(
            out,
            "rip_worker_replacements_total{{reason=\"{reason}\"}} {count}"
        );
    }
    let mut slots: Vec<&crate::link::WorkerStat> = workers.iter().collect();
    slots.sort_by_key(|w| (w.slot, w.id));
    let _ = writeln!(out, "# HELP rip_worker_resident_memory_bytes Memory of the worker serving in a slot, its app's included.\n# TYPE rip_worker_resident_memory_bytes gauge");
    for w in &slots {
        let _ = writeln!(
            out,
            "rip_worker_resident_memory_bytes{{slot=\"{}\"}} {}",
            w.slot, w.rss
        );
    }
    let _ = writeln!(out, "# HELP rip_worker_requests Requests the worker serving in a slot has taken (from 0 for each new worker).\n# TYPE rip_worker_requests gauge");
    for w in &slots {
        if let Some(n) = served(w.id) {
            let _ = writeln!(out, "rip_worker_requests{{slot=\"{}\"}} {n}", w.slot);
        }
    }
}

/// This process' resident memory, in bytes (`/proc/self/statm`).
pub fn rss_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// This process' open descriptors (`/proc/self/fd`).
pub fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_of_the_lbs_own_has_its_cause() {
        use crate::lb::proxy;
        assert_eq!(Cause::of(&proxy::busy(false)), Cause::QueueFull);
        assert_eq!(Cause::of(&proxy::bad_gateway(false)), Cause::BadGateway);
        assert_eq!(Cause::of(&proxy::request_timeout()), Cause::RefusedInput);
        assert_eq!(
            Cause::of(&Own::text(504, "Gateway Timeout", "Queue timeout", false)),
            Cause::QueueTimeout
        );
        assert_eq!(
            Cause::of(&Own::text(504, "Gateway Timeout", "Gateway Timeout", false)),
            Cause::UpstreamTimeout
        );
        assert_eq!(
            Cause::of(&Own::text(
                503,
                "Service Unavailable",
                "App not ready",
                false
            )),
            Cause::AppNotReady
        );
        assert_eq!(
            Cause::of(&Own::text(
                431,
                "Request Header Fields Too Large",
                "x",
                true
            )),
            Cause::RefusedInput
        );
        assert_eq!(Cause::of(&Own::text(200, "OK", "ok", false)), Cause::Route);
        assert_eq!(
            Cause::of(&Own::text(503, "Service Unavailable", "draining", false)),
            Cause::Route
        );
    }

    #[test]
    fn histograms_are_cumulative_and_counters_count() {
        let m = Metrics::new();
        m.answered(
            200,
            None,
            Duration::from_micros(100),
            Duration::from_millis(3),
        );
        m.answered(
            204,
            None,
            Duration::from_millis(30),
            Duration::from_secs(20),
        );
        m.answered(503, Some(Cause::QueueFull), Duration::ZERO, Duration::ZERO);
        m.answered(
            200,
            Some(Cause::Route),
            Duration::from_secs(9),
            Duration::ZERO,
        );
        m.queued(7);
        m.queued(3);
        m.bytes(10, 32);
        let text = m.render(&Gauges {
            queue: 2,
            ..Gauges::default()
        });
        for line in [
            "rip_requests_total{code=\"2xx\"} 3",
            "rip_requests_total{code=\"5xx\"} 1",
            "rip_lb_answers_total{cause=\"queue_full\"} 1",
            "rip_lb_answers_total{cause=\"route\"} 1",
            // The app's time: 3 ms and 20 s.
            "rip_app_seconds_bucket{le=\"0.0025\"} 0",
            "rip_app_seconds_bucket{le=\"0.005\"} 1",
            "rip_app_seconds_bucket{le=\"10\"} 1",
            "rip_app_seconds_bucket{le=\"+Inf\"} 2",
            "rip_app_seconds_sum 20.003",
            "rip_app_seconds_count 2",
            // The queue: 100 µs, 30 ms, 0 (the route's 9 s not counted).
            "rip_queue_wait_seconds_bucket{le=\"0.0005\"} 2",
            "rip_queue_wait_seconds_bucket{le=\"0.05\"} 3",
            "rip_queue_wait_seconds_count 3",
            "rip_queue_depth 2",
            "rip_queue_depth_max 7",
            "rip_received_bytes_total 10",
            "rip_sent_bytes_total 32",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
