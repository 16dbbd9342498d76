//! The access log (docs/DESIGN.md §5.8): one line per request on stdout, human or JSON.
//!
//! Lines are formatted straight into the stdout sink's buffer (no
//! allocation per request, `crate::output`), whose own thread writes them
//! out, so the request path never blocks on stdout. If stdout cannot keep
//! up, lines are dropped (and counted) rather than memory growing or the
//! LB stalling.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;

use crate::config::AccessLog as Format;
use crate::output::STDOUT;

/// One request, as the log line describes it.
pub struct Entry<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub length: u64,
    pub total: Duration,
    /// Waiting for a worker.
    pub queued: Duration,
    /// From the request out to the response head.
    pub worker: Duration,
    pub request_id: &'a str,
    /// The connection's peer (a unix-socket or unknown peer: None).
    pub client: Option<std::net::IpAddr>,
    /// The worker whose app answered (None: the LB did).
    pub worker_id: Option<u32>,
    /// Bytes read from and written to the client's connection since the
    /// previous request's line (heads and bodies; plaintext under TLS).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Clone)]
pub struct AccessLog {
    inner: Option<Arc<Shared>>,
}

struct Shared {
    format: Format,
    app: String,
}

impl AccessLog {
    /// An access log in `format` (nothing when it is off).
    pub fn start(format: Format, app: &str) -> AccessLog {
        if format == Format::Off {
            return AccessLog { inner: None };
        }
        AccessLog {
            inner: Some(Arc::new(Shared {
                format,
                app: app.to_string(),
            })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn log(&self, entry: &Entry<'_>) {
        let Some(shared) = &self.inner else {
            return;
        };
        let now = SystemTime::now();
        STDOUT.append(|buffer| {
            let _ = match shared.format {
                Format::Json => write_json(buffer, &shared.app, now, entry),
                _ => write_human(buffer, now, entry),
            };
        });
    }

    /// Writes out what is buffered (at shutdown).
    pub fn flush(&self) {
        crate::output::flush(Duration::from_secs(1));
    }
}

/// Makes `path` (opened for appending, created 0640) this process'
/// stdout, where the access log goes: at the LB's start, and again on
/// SIGUSR1 once logrotate has moved the old file away. The writer thread
/// goes on writing to the same descriptor, which now is the new file.
pub fn write_to(path: &std::path::Path) -> Result<(), String> {
    let file = open(path)?;
    // dup2 replaces what descriptor 1 refers to in one step.
    nix::unistd::dup2_stdout(&file)
        .map_err(|e| format!("cannot write the access log {}: {e}", path.display()))?;
    Ok(())
}

/// `path`, opened to append access log lines (created 0640 if missing).
pub fn open(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot write the access log {}: {e}", path.display()))
}

/// The local time's offset from UTC at `secs` since the epoch, in seconds
/// (what `localtime_r` says: the TZ variable, else /etc/localtime), kept
/// for the minute it was asked for.
fn local_offset(secs: u64) -> i32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The minute (high 32 bits) and its offset (low 32).
    static CACHED: AtomicU64 = AtomicU64::new(u64::MAX);
    let minute = (secs / 60) as u32;
    let cached = CACHED.load(Ordering::Relaxed);
    if (cached >> 32) as u32 == minute {
        return cached as u32 as i32;
    }
    let t = secs as libc::time_t;
    // SAFETY: localtime_r only writes the tm it is given; a zeroed tm is a
    // valid one to start from.
    let offset = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff as i32
        }
    };
    CACHED.store(
        ((minute as u64) << 32) | offset as u32 as u64,
        Ordering::Relaxed,
    );
    offset
}

/// `[2026-11-28 13:00:00.123 +0100  52µs  41µs] GET /ping → 200 plain 4B <request id>`,
/// in local time with its offset (the original's format).
fn write_human(out: &mut Vec<u8>, now: SystemTime, e: &Entry<'_>) -> std::io::Result<()> {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    write_human_at(out, now, local_offset(secs), e)
}

fn write_human_at(
    out: &mut Vec<u8>,
    now: SystemTime,
    offset: i32,
    e: &Entry<'_>,
) -> std::io::Result<()> {
    out.push(b'[');
    let local = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now.checked_sub(Duration::from_secs(offset.unsigned_abs() as u64))
            .unwrap_or(now)
    };
    write_time(out, local, b' ')?;
    let (sign, abs) = if offset < 0 {
        ('-', -offset)
    } else {
        ('+', offset)
    };
    write!(out, " {sign}{:02}{:02} ", abs / 3600, abs % 3600 / 60)?;
    write_scaled(out, e.total.as_secs_f64())?;
    out.push(b' ');
    write_scaled(out, e.worker.as_secs_f64())?;
    write!(out, "] {} {} → {} ", e.method, e.path, e.status)?;
    let subtype = media_type(e.content_type)
        .map(|t| t.split_once('/').map_or(t, |(_, sub)| sub))
        .unwrap_or("");
    out.extend_from_slice(subtype.as_bytes());
    writeln!(out, " {}B {}", e.length, e.request_id)
}

/// `{"t":"2026-11-28T12:00:00.123Z","app":"hello","method":"GET",...}`
fn write_json(out: &mut Vec<u8>, app: &str, now: SystemTime, e: &Entry<'_>) -> std::io::Result<()> {
    out.extend_from_slice(b"{\"t\":\"");
    write_time(out, now, b'T')?;
    out.extend_from_slice(b"Z\",\"app\":");
    write_json_str(out, app);
    out.extend_from_slice(b",\"method\":");
    write_json_str(out, e.method.as_str());
    out.extend_from_slice(b",\"path\":");
    write_json_str(out, e.path);
    write!(
        out,
        ",\"status\":{},\"totalSeconds\":{},\"queueSeconds\":{},\"workerSeconds\":{}",
        e.status,
        e.total.as_secs_f64(),
        e.queued.as_secs_f64(),
        e.worker.as_secs_f64()
    )?;
    if let Some(media) = media_type(e.content_type) {
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, media);
    }
    write!(out, ",\"length\":{},\"requestId\":", e.length)?;
    write_json_str(out, e.request_id);
    match e.client {
        Some(ip) => write!(out, ",\"client\":\"{ip}\"")?,
        None => out.extend_from_slice(b",\"client\":null"),
    }
    match e.worker_id {
        Some(id) => write!(out, ",\"worker\":{id}")?,
        None => out.extend_from_slice(b",\"worker\":null"),
    }
    writeln!(
        out,
        ",\"bytesIn\":{},\"bytesOut\":{}}}",
        e.bytes_in, e.bytes_out
    )
}

/// `text/plain` of `text/plain; charset=utf-8`.
fn media_type(value: Option<&str>) -> Option<&str> {
    let media = value?.split(';').next()?.trim();
    (!media.is_empty()).then_some(media)
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// UTC `YYYY-MM-DD?HH:MM:SS.mmm`, `sep` between date and time.
fn write_time(out: &mut Vec<u8>, now: SystemTime, sep: u8) -> std::io::Result<()> {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    write!(out, "{year:04}-{month:02}-{day:02}")?;
    out.push(sep);
    write!(
        out,
        "{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds as three characters and an SI prefix, as docs/DESIGN.md §5 shows them:
/// `  0 s`, ` 52µs`, `1.5ms`, `2.0 s` (the original switched units at 0.05,
/// printing 52µs as `0.1ms`).
fn write_scaled(out: &mut Vec<u8>, seconds: f64) -> std::io::Result<()> {
    const PREFIXES: [&str; 9] = ["T", "G", "M", "k", " ", "m", "µ", "n", "p"];
    if !(seconds > 0.0 && seconds.is_finite()) {
        out.extend_from_slice(b"  0 s");
        return Ok(());
    }
    let mut value = seconds;
    let mut slot = 4usize;
    while value < 1.0 && slot < PREFIXES.len() - 1 {
        value *= 1000.0;
        slot += 1;
    }
    while value >= 999.5 && slot > 0 {
        value /= 1000.0;
        slot -= 1;
    }
    let tenths = (value * 10.0).round() / 10.0;
    if tenths >= 10.0 {
        write!(out, "{:>3}", value.round() as u64)?;
    } else {
        write!(out, "{tenths:>3.1}")?;
    }
    write!(out, "{}s", PREFIXES[slot])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(seconds: f64) -> String {
        let mut out = Vec::new();
        write_scaled(&mut out, seconds).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn durations_scale_like_the_original() {
        assert_eq!(scaled(0.0), "  0 s");
        assert_eq!(scaled(0.000052), " 52µs");
        assert_eq!(scaled(0.0015), "1.5ms");
        assert_eq!(scaled(2.0), "2.0 s");
        assert_eq!(scaled(0.123), "123ms");
        assert_eq!(scaled(0.0009996), "1.0ms");
        assert_eq!(scaled(1500.0), "1.5ks");
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    fn entry<'a>(method: &'a Method, content_type: &'a str) -> Entry<'a> {
        Entry {
            method,
            path: "/ping",
            status: 200,
            content_type: Some(content_type),
            length: 4,
            total: Duration::from_micros(52),
            queued: Duration::from_micros(7),
            worker: Duration::from_micros(41),
            request_id: "5f0c7d2e-1b1a-4c4e-9a52-0b1c2d3e4f50",
            client: Some("192.0.2.7".parse().expect("ip")),
            worker_id: Some(3),
            bytes_in: 78,
            bytes_out: 131,
        }
    }

    #[test]
    fn human_lines_match_the_design() {
        let method = Method::GET;
        let ct = "text/plain; charset=utf-8";
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_millis(1_764_331_200_123);
        write_human_at(&mut out, at, 0, &entry(&method, ct)).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "[2025-11-28 12:00:00.123 +0000  52µs  41µs] GET /ping → 200 plain 4B 5f0c7d2e-1b1a-4c4e-9a52-0b1c2d3e4f50\n"
        );
        // Local time, with its offset: east and west of UTC, by the minute.
        for (offset, shown) in [
            (3600 + 1800, "[2025-11-28 13:30:00.123 +0130 "),
            (-5 * 3600, "[2025-11-28 07:00:00.123 -0500 "),
        ] {
            let mut out = Vec::new();
            write_human_at(&mut out, at, offset, &entry(&method, ct)).expect("write");
            let line = String::from_utf8(out).expect("utf8");
            assert!(line.starts_with(shown), "{line}");
        }
    }

    #[test]
    fn json_lines_have_the_original_keys() {
        let method = Method::GET;
        let ct = "text/plain";
        let mut out = Vec::new();
        write_json(&mut out, "hello", UNIX_EPOCH, &entry(&method, ct)).expect("write");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(line["t"], "1970-01-01T00:00:00.000Z");
        assert_eq!(line["app"], "hello");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/ping");
        assert_eq!(line["status"], 200);
        assert_eq!(line["type"], "text/plain");
        assert_eq!(line["length"], 4);
        assert!(line["totalSeconds"].as_f64().expect("f64") > 0.0);
        assert!(line["workerSeconds"].as_f64().expect("f64") > 0.0);
        assert_eq!(line["queueSeconds"].as_f64(), Some(0.000007));
        assert_eq!(line["requestId"], "5f0c7d2e-1b1a-4c4e-9a52-0b1c2d3e4f50");
        assert_eq!(line["client"], "192.0.2.7");
        assert_eq!(line["worker"], 3);
        assert_eq!(
            (line["bytesIn"].as_u64(), line["bytesOut"].as_u64()),
            (Some(78), Some(131))
        );
    }
}
