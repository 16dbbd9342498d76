//! The settings every role shares, spelled as flags (docs/DESIGN.md §2):
//! their names, environment variables, defaults and value parsers. A leaf:
//! `cli` builds its grammar from it, `config` validates what it parsed.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

/// The `--hot-reload` modes (docs/DESIGN.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HotReload {
    None,
    Process,
    Module,
}

impl HotReload {
    pub fn as_str(self) -> &'static str {
        match self {
            HotReload::None => "none",
            HotReload::Process => "process",
            HotReload::Module => "module",
        }
    }
}

/// A byte count: digits with an optional K, M or G (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let scale: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => return Err(format!("'{text}': the unit must be K, M or G")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 1048576, 512K, 100M, 1G)"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// A path the LB answers itself, or none (the app gets it).
pub type Route = Option<String>;

/// `none`, or an absolute path without a query (`/status`).
pub fn parse_route(text: &str) -> Result<Route, String> {
    if text == "none" {
        return Ok(None);
    }
    let valid = text.starts_with('/')
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
    if !valid {
        return Err(format!(
            "'{text}': expected a path such as /status (no query), or none"
        ));
    }
    Ok(Some(text.to_string()))
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view of an
/// IPv4 client) as the IPv4 address it is.
pub fn plain_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `--trusted-proxies`: the addresses whose forwarding fields the LB
/// keeps (docs/DESIGN.md §5.7), as CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// `none`, or comma-separated addresses and ranges: `10.0.0.0/8`,
    /// `127.0.0.1`, `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let mut ranges = Vec::new();
        if text.trim() == "none" {
            return Ok(TrustedProxies { ranges });
        }
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad =
                || format!("'{item}' is not an address or a CIDR range (e.g. 10.0.0.0/8, ::1)");
            let (addr, bits) = match item.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (item, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|&b| b <= max)
                    .ok_or_else(bad)?,
                None => max,
            };
            ranges.push((addr, bits));
        }
        if ranges.is_empty() {
            return Err("expected addresses or CIDR ranges (e.g. 10.0.0.0/8,::1), or none".into());
        }
        Ok(TrustedProxies { ranges })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` (an IPv4 address mapped into IPv6 taken as IPv4) is in
    /// one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = plain_ip(ip);
        self.ranges.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, (addr, bits)) in self.ranges.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            write!(f, "{sep}{addr}/{bits}")?;
        }
        Ok(())
    }
}

/// A `--watch` / `--ignore` glob: a line of a `.gitignore`.
pub fn parse_glob(text: &str) -> Result<String, String> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
    builder
        .add_line(None, text)
        .map_err(|e| format!("'{text}' is not a glob: {e}"))?;
    builder
        .build()
        .map_err(|e| format!("'{text}' is not a glob: {e}"))?;
    Ok(text.to_string())
}

/// `--status-bind`: an address and a port.
pub fn parse_status_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("'{text}': expected an address and a port, such as 127.0.0.1:9000 or [::1]:9000")
    })
}

/// `on` or `off`.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{text}': expected on or off")),
    }
}

/// The settings every role shares, spelled as flags.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Address the public port listens on
    #[arg(long, env = "RIP_BIND", value_name = "ADDR", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Up to N more requests per worker before it is recycled, drawn at random, so workers started together do not recycle together
    #[arg(
        long,
        env = "RIP_MAX_REQUESTS_JITTER",
        value_name = "N",
        default_value_t = 0
    )]
    pub max_requests_jitter: u64,

    /// Recycle a worker (gracefully) once it and its app use more memory than this (K, M, G)
    #[arg(long, env = "RIP_MAX_MEMORY", value_name = "BYTES", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Module reloads a worker takes before it is recycled
    #[arg(long, env = "RIP_MAX_RELOADS", value_name = "N", default_value_t = 10)]
    pub max_reloads: u32,

    /// Reload mode [default: module when NODE_ENV/RIP_ENV is unset or development/dev, else none]
    #[arg(long, env = "RIP_HOT_RELOAD", value_name = "MODE", value_enum)]
    pub hot_reload: Option<HotReload>,

    /// Reload only on changes to files matching this glob (.gitignore syntax, relative to the app's directory; repeatable; reaches into ignored directories)
    #[arg(long = "watch", env = "RIP_WATCH", value_name = "GLOB", value_delimiter = ',', value_parser = parse_glob)]
    pub watch: Vec<String>,

    /// Never reload on changes to files matching this glob (.gitignore syntax; repeatable), besides the app's .gitignore, .ignore and the built-in rules
    #[arg(long = "ignore", env = "RIP_IGNORE", value_name = "GLOB", value_delimiter = ',', value_parser = parse_glob)]
    pub ignore: Vec<String>,

    /// Capacity of the load balancer's queue
    #[arg(long, env = "RIP_MAX_QUEUE", value_name = "N", default_value_t = 8192)]
    pub max_queue: usize,

    /// Longest wait in the queue before `504 Queue timeout`
    #[arg(
        long,
        env = "RIP_QUEUE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 2000
    )]
    pub queue_timeout_ms: u64,

    /// Accepted for compatibility with the original; a connect to a worker's unix socket never waits (it succeeds, or fails at once and the next worker is tried)
    #[arg(
        long,
        env = "RIP_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 200
    )]
    pub connect_timeout_ms: u64,

    /// How long the LB waits for a worker's response head, from the end of the request, before `504 Upstream timeout`
    #[arg(
        long,
        env = "RIP_READ_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 5000
    )]
    pub read_timeout_ms: u64,

    /// How long a graceful stop may take before what is left is killed
    #[arg(
        long,
        env = "RIP_SHUTDOWN_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10000
    )]
    pub shutdown_timeout_ms: u64,

    /// How long an app may take to become ready before its start counts as a crash
    #[arg(
        long,
        env = "RIP_BOOT_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 30000
    )]
    pub boot_timeout_ms: u64,

    /// Largest request body accepted (bytes; K, M, G suffixes are powers of 1024); larger is `413`
    #[arg(long, env = "RIP_MAX_BODY", value_name = "BYTES", default_value = "100M", value_parser = parse_size)]
    pub max_body: u64,

    /// Read a request's whole body before a worker takes it (on), or stream it to the worker as it comes (off)
    #[arg(long, env = "RIP_REQUEST_BUFFERING", value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub request_buffering: bool,

    /// The most of one request body held in memory while it is read (beyond: an unnamed temp file)
    #[arg(long, env = "RIP_BODY_BUFFER", value_name = "BYTES", default_value = "64K", value_parser = parse_size)]
    pub body_buffer: u64,

    /// The most memory all request bodies being held may take together (beyond: temp files)
    #[arg(long, env = "RIP_BUFFER_MEMORY", value_name = "BYTES", default_value = "64M", value_parser = parse_size)]
    pub buffer_memory: u64,

    /// The most temp-file bytes all responses waiting for slow clients may take together (beyond: the client's pace)
    #[arg(long, env = "RIP_BUFFER_DISK", value_name = "BYTES", default_value = "1G", value_parser = parse_size)]
    pub buffer_disk: u64,

    /// Read an app's response as fast as it comes and keep what a slow client has not taken (on), or relay at the client's pace (off)
    #[arg(long, env = "RIP_RESPONSE_BUFFERING", value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub response_buffering: bool,

    /// WebSocket tunnels open at once; each holds a worker for its life (default: one fewer than the workers, at least 1)
    #[arg(long, env = "RIP_MAX_TUNNELS", value_name = "N")]
    pub max_tunnels: Option<usize>,

    /// How long a client may pause while sending a request body
    #[arg(
        long,
        env = "RIP_BODY_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10000
    )]
    pub body_timeout_ms: u64,

    /// The least a request body must average once it has taken longer than the body timeout (bytes a second, K/M suffixes; 0: none), else `408`
    #[arg(long, env = "RIP_MIN_BODY_RATE", value_name = "BYTES", default_value = "500", value_parser = parse_size)]
    pub min_body_rate: u64,

    /// How long an app may pause in the middle of a response body before the response is cut short
    #[arg(
        long,
        env = "RIP_APP_IDLE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 60000
    )]
    pub app_idle_timeout_ms: u64,

    /// How long a write to a client may wait (a client that reads slower is let go)
    #[arg(
        long,
        env = "RIP_SEND_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 60000
    )]
    pub send_timeout_ms: u64,

    /// How long a client may take to send a request head, from its first byte
    #[arg(
        long,
        env = "RIP_HEADER_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10000
    )]
    pub header_timeout_ms: u64,

    /// How long a kept-alive client connection may sit idle between requests
    #[arg(
        long,
        env = "RIP_IDLE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 60000
    )]
    pub idle_timeout_ms: u64,

    /// Threads of the load balancer's runtime (1: a single-threaded event loop, the fastest here)
    #[arg(long, env = "RIP_LB_THREADS", value_name = "N", default_value_t = 1)]
    pub lb_threads: usize,

    /// Addresses whose X-Forwarded-*, X-Real-IP, Forwarded, X-Request-Id and X-Request-Start the app may believe (CIDR ranges, comma-separated); from any other client they are replaced
    #[arg(long, env = "RIP_TRUSTED_PROXIES", value_name = "CIDR,...|none", default_value = "none", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,

    /// Forward request header names that contain '_' (dropped by default: CGI-style apps read them as '-')
    #[arg(long, env = "RIP_ALLOW_UNDERSCORE_HEADERS")]
    pub allow_underscore_headers: bool,

    /// The path the load balancer answers with its JSON status itself, or 'none' to leave it to the app
    #[arg(long, env = "RIP_STATUS_PATH", value_name = "PATH|none", default_value = "/status", value_parser = parse_route)]
    pub status_path: Route,

    /// The certificate (PEM, its chain after it) served on the https:<port> listener; repeat with --key for more names (chosen by SNI, the first is the default)
    #[arg(long, env = "RIP_CERT", value_name = "PEM", action = clap::ArgAction::Append)]
    pub cert: Vec<std::path::PathBuf>,

    /// The private key (PEM) of --cert (the n-th --key is the n-th --cert's)
    #[arg(long, env = "RIP_KEY", value_name = "PEM", action = clap::ArgAction::Append)]
    pub key: Vec<std::path::PathBuf>,

    /// Answer every request on the HTTP port with a 308 to the same URL on the HTTPS port (the health route excepted)
    #[arg(long, env = "RIP_REDIRECT_HTTP")]
    pub redirect_http: bool,

    /// Send Strict-Transport-Security: max-age=<seconds> on HTTPS answers (the app's own wins) [default max-age: 31536000]
    #[arg(long, env = "RIP_HSTS", value_name = "MAX-AGE", num_args = 0..=1, default_missing_value = "31536000")]
    pub hsts: Option<u64>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (meant for loopback or a private network)
    #[arg(long, env = "RIP_METRICS", value_name = "ADDR:PORT", value_parser = parse_status_bind)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Answer the status route on this address only (e.g. 127.0.0.1:9000), not on the public port, where the app then gets it
    #[arg(long, env = "RIP_STATUS_BIND", value_name = "ADDR:PORT", value_parser = parse_status_bind)]
    pub status_bind: Option<std::net::SocketAddr>,

    /// The path the load balancer answers 'ok' on itself (a health check), or 'none' to leave it to the app
    #[arg(long, env = "RIP_HEALTH_PATH", value_name = "PATH|none", default_value = "/server", value_parser = parse_route)]
    pub health_path: Route,

    /// Write access log lines as JSON
    #[arg(long = "json-logging", visible_alias = "json")]
    pub json_logging: bool,

    /// Write the access log to this file (reopened on SIGUSR1, for logrotate) instead of stdout
    #[arg(long, env = "RIP_ACCESS_LOG", value_name = "PATH")]
    pub access_log: Option<std::path::PathBuf>,

    /// Write no access log
    #[arg(long)]
    pub no_access_log: bool,

    /// Label in the socket prefix (rip_<variant>_<app>)
    #[arg(
        long,
        env = "RIP_VARIANT",
        value_name = "NAME",
        default_value = "server2"
    )]
    pub variant: String,

    /// Whole socket prefix [default: rip_<variant>_<app>]
    #[arg(long, value_name = "PREFIX")]
    pub socket_prefix: Option<String>,

    /// Directory for the sockets and the pid file
    #[arg(
        long,
        env = "RIP_SOCKET_DIR",
        value_name = "DIR",
        default_value = "/tmp"
    )]
    pub socket_dir: PathBuf,

    /// JavaScript runtime for module apps: auto (Bun if installed, else Node), bun or node
    #[arg(long, env = "RIP_RUNTIME", value_name = "NAME", default_value = "auto")]
    pub runtime: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100m"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn trusted_proxies_are_cidr_ranges() {
        let p = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1,::1,fd00::/8").expect("valid");
        let yes = ["10.1.2.3", "127.0.0.1", "::1", "fd12::5", "::ffff:10.0.0.9"];
        let no = ["11.0.0.1", "127.0.0.2", "::2", "fe80::1", "::ffff:11.0.0.1"];
        for ip in yes {
            assert!(p.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in no {
            assert!(!p.contains(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(p.to_string(), "10.0.0.0/8,127.0.0.1/32,::1/128,fd00::/8");
        assert_eq!(TrustedProxies::parse(&p.to_string()), Ok(p));
        let all = TrustedProxies::parse("0.0.0.0/0").expect("valid");
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        assert!(TrustedProxies::parse("none").expect("none").is_empty());
        for bad in [
            "",
            ",",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/x",
            "1.2.3",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }
}
