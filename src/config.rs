//! Validated settings shared by every role.
//!
//! [`Config::from_cli`] turns flags, tokens and environment into a
//! [`Config`], resolving the app (its entry, kind and runtime); every problem
//! is one line for the user. [`Config::to_args`] spells a config back as
//! flags, so a role started with them rebuilds the same config.

use std::net::IpAddr;
use std::path::Path;

use std::time::Duration;

use crate::apps::App;
use crate::flags::{Options, TrustedProxies};
use crate::paths::Paths;

pub use crate::flags::HotReload;

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub app: App,
    pub bind: IpAddr,
    /// The HTTP listener's port (None: HTTPS only).
    pub port: Option<u16>,
    /// The HTTPS listener, if there is one.
    pub https: Option<Https>,
    /// `--redirect-http`: the HTTP port answers 308 to the HTTPS one.
    pub redirect_http: bool,
    /// `--hsts`: the max-age HTTPS answers carry.
    pub hsts: Option<u64>,
    pub workers: usize,
    /// Requests a worker serves before it is recycled; 0 = never.
    pub max_requests: u64,
    /// Up to this many more requests per worker, drawn at random.
    pub max_requests_jitter: u64,
    /// `--max-memory`: a worker whose process tree's RSS passes it is
    /// replaced.
    pub max_memory: Option<u64>,
    pub max_reloads: u32,
    pub hot_reload: HotReload,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub boot_timeout: Duration,
    pub access_log: AccessLog,
    /// `--access-log=<path>`: the LB writes it there (absolute), not to
    /// stdout, and reopens it on SIGUSR1.
    pub access_log_file: Option<std::path::PathBuf>,
    /// The largest request body accepted.
    pub max_body: u64,
    /// Bodies are read whole before a worker takes them.
    pub request_buffering: bool,
    /// The most of one body held in memory.
    pub body_buffer: u64,
    /// The most memory all held bodies take together.
    pub buffer_memory: u64,
    /// The most temp-file bytes waiting responses take together.
    pub buffer_disk: u64,
    /// Responses are read as fast as the app writes them.
    pub response_buffering: bool,
    /// The longest pause in a request body.
    pub body_timeout: Duration,
    /// The least a request body must average past the body timeout.
    pub min_body_rate: u64,
    /// The longest pause in an app's response body.
    pub app_idle_timeout: Duration,
    /// The longest a write to a client may wait.
    pub send_timeout: Duration,
    /// WebSocket tunnels open at once (`None`: one fewer than the workers).
    pub max_tunnels: Option<usize>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Forward request header names with underscores.
    pub underscore_headers: bool,
    /// Peers whose forwarding fields the LB keeps.
    pub trusted_proxies: TrustedProxies,
    /// `--watch` globs: the only changes that reload.
    pub watch: Vec<String>,
    /// `--ignore` globs: changes that never reload.
    pub ignore: Vec<String>,
    /// Where the LB answers its JSON status itself (None: the app does).
    pub status_path: Option<String>,
    /// Where the LB answers its status, if not on the public port (the
    /// real port once the front has bound it).
    pub status_bind: Option<std::net::SocketAddr>,
    /// Where the LB serves its Prometheus metrics (`--metrics`; the real
    /// port once the front has bound it).
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the LB answers `ok` itself (None: the app does).
    pub health_path: Option<String>,
    /// Threads of the LB's runtime; 1 = a current-thread runtime.
    pub lb_threads: usize,
    pub variant: String,
    pub paths: Paths,
}

pub use crate::apps::Env;

/// The HTTPS listener (`https:<port>`, `https:quick|ca|smart`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Https {
    pub port: u16,
    /// The files served: to clients that name none of `more`'s, or none.
    pub pair: crate::certs::Pair,
    /// More pairs, each served to the names its certificate is for (SNI).
    pub more: Vec<crate::certs::Pair>,
    /// A development certificate the front makes (or renews) as `pair`
    /// before anything starts; None: the files are the user's.
    pub dev: Option<Dev>,
}

/// Which development certificate `https:` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dev {
    /// Self-signed for localhost (`https:quick`), in the socket dir.
    Quick,
    /// Signed by the development CA in this home (`https:ca`, `https:smart`).
    Ca(crate::certs::Home),
}

/// The HTTPS port when `https:` names a mode but no port (the original's).
pub const DEFAULT_HTTPS_PORT: u16 = 3443;

/// `https:<mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quick,
    Ca,
    Smart,
}

/// `protocol:<which>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
    Both,
}

const DEFAULT_PORT: u16 = 5002;
const DEFAULT_MAX_REQUESTS: u64 = 10_000;

/// The tokens after the app path (docs/DESIGN.md §2).
#[derive(Debug, Default)]
struct Tokens {
    app: Option<String>,
    port: Option<u16>,
    https_port: Option<u16>,
    https_mode: Option<Mode>,
    protocol: Option<Protocol>,
    /// Bare `.pem`/`.crt`/`.key` arguments: a certificate and its key.
    pem_files: Vec<String>,
    workers: Option<usize>,
    max_requests: Option<u64>,
}

impl Tokens {
    fn parse(args: &[String]) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for arg in args {
            if arg == "https" {
                tokens.https_mode = Some(Mode::Smart);
            } else if let Some(what) = arg.strip_prefix("https:") {
                match what {
                    "quick" => tokens.https_mode = Some(Mode::Quick),
                    "ca" => tokens.https_mode = Some(Mode::Ca),
                    "smart" => tokens.https_mode = Some(Mode::Smart),
                    port => {
                        tokens.https_port = Some(
                            parse_port(port)
                                .map_err(|why| format!("{arg}: {why} (or quick, ca, smart)"))?,
                        )
                    }
                }
            } else if let Some(which) = arg.strip_prefix("protocol:") {
                tokens.protocol = Some(match which {
                    "http" => Protocol::Http,
                    "https" => Protocol::Https,
                    "http+https" => Protocol::Both,
                    _ => return Err(format!("{arg}: protocol is http, https or http+https")),
                });
            } else if let Some(port) = arg.strip_prefix("http:") {
                tokens.port = Some(parse_port(port).map_err(|why| format!("{arg}: {why}"))?);
            } else if let Some(n) = arg.strip_prefix("w:") {
                tokens.workers = Some(if n == "auto" {
                    cpu_count()
                } else {
                    match n.parse::<usize>() {
                        Ok(0) => return Err(format!("{arg}: need at least one worker")),
                        Ok(n) => n,
                        Err(_) => {
                            return Err(format!("{arg}: worker count must be a number or 'auto'"))
                        }
                    }
                });
            } else if let Some(n) = arg.strip_prefix("r:") {
                tokens.max_requests = Some(n.parse::<u64>().map_err(|_| {
                    format!("{arg}: requests per worker must be a whole number (0 = never recycle)")
                })?);
            } else if is_pem_name(arg) {
                tokens.pem_files.push(arg.clone());
            } else if tokens.app.is_none() {
                tokens.app = Some(arg.clone());
            } else {
                return Err(format!(
                    "unexpected argument '{arg}' (tokens are http:<port>, https:<port|quick|ca|smart>, protocol:<http|https|http+https>, w:<N|auto>, r:<N>)"
                ));
            }
        }
        Ok(tokens)
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| "port must be a number from 0 to 65535".to_string())
}

/// The number of CPU cores (for `w:auto`).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Builds a config from flags, tokens and the environment, resolving the
    /// app (unless `resolved` gives it: a role takes the front's). Errors
    /// are one line naming the problem.
    pub fn from_cli(
        options: &Options,
        args: &[String],
        env: Env,
        resolved: Option<App>,
    ) -> Result<Config, String> {
        let tokens = Tokens::parse(args)?;
        let app_arg = tokens
            .app
            .clone()
            .ok_or("missing <app-path> (for example: rip-server examples/hello http:3000)")?;
        let app = match resolved {
            Some(app) => app,
            None => App::resolve(&app_arg, &options.runtime, env)?,
        };
        let paths = Paths::new(
            &options.socket_dir,
            options.socket_prefix.clone(),
            &options.variant,
            &app.name,
        )?;
        let (port, https) = listeners(&tokens, options, env, &paths)?;
        if https.is_none() && (options.redirect_http || options.hsts.is_some()) {
            let flag = if options.redirect_http {
                "--redirect-http"
            } else {
                "--hsts"
            };
            return Err(format!("{flag} needs an HTTPS port (https:<port>)"));
        }
        if options.redirect_http && port.is_none() {
            return Err("--redirect-http needs an HTTP port to redirect from (http:<port>)".into());
        }
        let hot_reload = options
            .hot_reload
            .unwrap_or_else(|| default_hot_reload(env));
        if options.no_access_log && options.access_log.is_some() {
            return Err("--access-log names a file for the log --no-access-log turns off".into());
        }
        let access_log = match (options.no_access_log, options.json_logging) {
            (true, _) => AccessLog::Off,
            (false, true) => AccessLog::Json,
            (false, false) => AccessLog::Human,
        };
        for (flag, ms) in [
            ("--queue-timeout-ms", options.queue_timeout_ms),
            ("--connect-timeout-ms", options.connect_timeout_ms),
            ("--read-timeout-ms", options.read_timeout_ms),
            ("--boot-timeout-ms", options.boot_timeout_ms),
            ("--lb-threads", options.lb_threads as u64),
            ("--header-timeout-ms", options.header_timeout_ms),
            ("--idle-timeout-ms", options.idle_timeout_ms),
        ] {
            if ms == 0 {
                return Err(format!("{flag}=0: must be at least 1"));
            }
        }
        Ok(Config {
            app,
            bind: options.bind,
            port,
            https,
            redirect_http: options.redirect_http,
            hsts: options.hsts,
            workers: tokens.workers.unwrap_or_else(cpu_count),
            max_requests: tokens.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
            max_requests_jitter: options.max_requests_jitter,
            max_memory: options.max_memory,
            max_reloads: options.max_reloads,
            hot_reload,
            max_queue: options.max_queue,
            queue_timeout: Duration::from_millis(options.queue_timeout_ms),
            connect_timeout: Duration::from_millis(options.connect_timeout_ms),
            read_timeout: Duration::from_millis(options.read_timeout_ms),
            shutdown_timeout: Duration::from_millis(options.shutdown_timeout_ms),
            boot_timeout: Duration::from_millis(options.boot_timeout_ms),
            access_log,
            access_log_file: options.access_log.as_deref().map(absolute).transpose()?,
            max_body: options.max_body,
            request_buffering: options.request_buffering,
            body_buffer: options.body_buffer,
            buffer_memory: options.buffer_memory,
            buffer_disk: options.buffer_disk,
            response_buffering: options.response_buffering,
            body_timeout: Duration::from_millis(options.body_timeout_ms),
            min_body_rate: options.min_body_rate,
            app_idle_timeout: Duration::from_millis(options.app_idle_timeout_ms),
            send_timeout: Duration::from_millis(options.send_timeout_ms),
            max_tunnels: options.max_tunnels,
            header_timeout: Duration::from_millis(options.header_timeout_ms),
            idle_timeout: Duration::from_millis(options.idle_timeout_ms),
            underscore_headers: options.allow_underscore_headers,
            trusted_proxies: options.trusted_proxies.clone(),
            watch: options.watch.clone(),
            ignore: options.ignore.clone(),
            status_path: options.status_path.clone(),
            health_path: options.health_path.clone(),
            status_bind: options.status_bind,
            metrics: options.metrics,
            lb_threads: options.lb_threads,
            variant: options.variant.clone(),
            paths,
        })
    }

    /// This config spelled as public arguments; [`Config::from_cli`] on them
    /// gives the same config back.
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        let mut args = vec![
            self.app.arg(),
            format!("w:{}", self.workers),
            format!("r:{}", self.max_requests),
            format!("--max-requests-jitter={}", self.max_requests_jitter),
        ];
        if let Some(bytes) = self.max_memory {
            args.push(format!("--max-memory={bytes}"));
        }
        args.extend([
            format!("--bind={}", self.bind),
            format!("--max-reloads={}", self.max_reloads),
            format!("--hot-reload={}", self.hot_reload.as_str()),
            format!("--max-queue={}", self.max_queue),
            format!("--queue-timeout-ms={}", ms(self.queue_timeout)),
            format!("--connect-timeout-ms={}", ms(self.connect_timeout)),
            format!("--read-timeout-ms={}", ms(self.read_timeout)),
            format!("--shutdown-timeout-ms={}", ms(self.shutdown_timeout)),
            format!("--boot-timeout-ms={}", ms(self.boot_timeout)),
            format!("--max-body={}", self.max_body),
            format!(
                "--request-buffering={}",
                if self.request_buffering { "on" } else { "off" }
            ),
            format!("--body-buffer={}", self.body_buffer),
            format!("--buffer-memory={}", self.buffer_memory),
            format!("--buffer-disk={}", self.buffer_disk),
            format!(
                "--response-buffering={}",
                if self.response_buffering { "on" } else { "off" }
            ),
            format!("--body-timeout-ms={}", ms(self.body_timeout)),
            format!("--min-body-rate={}", self.min_body_rate),
            format!("--app-idle-timeout-ms={}", ms(self.app_idle_timeout)),
            format!("--send-timeout-ms={}", ms(self.send_timeout)),
            format!("--header-timeout-ms={}", ms(self.header_timeout)),
            format!("--idle-timeout-ms={}", ms(self.idle_timeout)),
            format!("--lb-threads={}", self.lb_threads),
            format!("--variant={}", self.variant),
            format!("--socket-prefix={}", self.paths.prefix()),
            format!("--socket-dir={}", self.paths.dir().display()),
            format!("--runtime={}", self.app.runtime_arg()),
        ]);
        if let Some(port) = self.port {
            args.push(format!("http:{port}"));
        }
        if let Some(https) = &self.https {
            args.push(format!("https:{}", https.port));
            for pair in std::iter::once(&https.pair).chain(&https.more) {
                args.push(format!("--cert={}", pair.cert.display()));
                args.push(format!("--key={}", pair.key.display()));
            }
        }
        if self.redirect_http {
            args.push("--redirect-http".into());
        }
        if let Some(max_age) = self.hsts {
            args.push(format!("--hsts={max_age}"));
        }
        if let Some(n) = self.max_tunnels {
            args.push(format!("--max-tunnels={n}"));
        }
        let route = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".to_string());
        args.push(format!("--status-path={}", route(&self.status_path)));
        args.push(format!("--health-path={}", route(&self.health_path)));
        args.push(format!("--trusted-proxies={}", self.trusted_proxies));
        if let Some(addr) = self.status_bind {
            args.push(format!("--status-bind={addr}"));
        }
        if let Some(addr) = self.metrics {
            args.push(format!("--metrics={addr}"));
        }
        args.extend(self.watch.iter().map(|g| format!("--watch={g}")));
        args.extend(self.ignore.iter().map(|g| format!("--ignore={g}")));
        if self.underscore_headers {
            args.push("--allow-underscore-headers".into());
        }
        if let Some(path) = &self.access_log_file {
            args.push(format!("--access-log={}", path.display()));
        }
        match self.access_log {
            AccessLog::Off => args.push("--no-access-log".into()),
            AccessLog::Json => args.push("--json-logging".into()),
            AccessLog::Human => {}
        }
        args
    }
}

/// The HTTP port and the HTTPS listener the tokens and flags ask for.
fn listeners(
    tokens: &Tokens,
    options: &Options,
    env: Env,
    paths: &Paths,
) -> Result<(Option<u16>, Option<Https>), String> {
    if options.cert.len() != options.key.len() {
        return Err(if options.cert.len() > options.key.len() {
            "each --cert needs its --key=<pem>".into()
        } else {
            "each --key needs its --cert=<pem>".into()
        });
    }
    let mut pairs = options
        .cert
        .iter()
        .zip(&options.key)
        .map(|(cert, key)| {
            Ok(crate::certs::Pair {
                cert: absolute(cert)?,
                key: absolute(key)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !tokens.pem_files.is_empty() {
        if !pairs.is_empty() {
            return Err(format!(
                "{}: give certificate files either bare or as --cert/--key, not both",
                tokens.pem_files.join(" ")
            ));
        }
        pairs.push(bare_pair(&tokens.pem_files)?);
    }
    let files = (!pairs.is_empty()).then(|| pairs.remove(0));
    // Bare certificate files ask for HTTPS by themselves.
    let asked =
        tokens.https_port.is_some() || tokens.https_mode.is_some() || !tokens.pem_files.is_empty();
    if files.is_some()
        && !asked
        && tokens.protocol != Some(Protocol::Https)
        && tokens.protocol != Some(Protocol::Both)
    {
        return Err("--cert and --key need an https:<port> listener".into());
    }
    let (http, https) = match tokens.protocol {
        None => (tokens.port.is_some() || !asked, asked),
        Some(Protocol::Http) if asked => {
            return Err("protocol:http opens no HTTPS port: drop the https: token".into())
        }
        Some(Protocol::Http) => (true, false),
        Some(Protocol::Https) if tokens.port.is_some() => {
            return Err("protocol:https opens no HTTP port: drop the http: token".into())
        }
        Some(Protocol::Https) => (false, true),
        Some(Protocol::Both) => (true, true),
    };
    let port = if http {
        Some(match (tokens.port, env("PORT")) {
            (Some(port), _) => port,
            (None, Some(text)) => parse_port(&text).map_err(|why| format!("PORT={text}: {why}"))?,
            (None, None) => DEFAULT_PORT,
        })
    } else {
        None
    };
    if !https {
        return Ok((port, None));
    }
    let https_port = tokens.https_port.unwrap_or(DEFAULT_HTTPS_PORT);
    let mode = tokens.https_mode;
    let (pair, dev) = match (files, mode) {
        (Some(_), Some(_)) => {
            return Err(
                "--cert/--key are your certificate: drop https:quick, https:ca or https:smart"
                    .into(),
            )
        }
        (Some(pair), None) => (pair, None),
        (None, Some(Mode::Quick)) => (
            crate::certs::Pair {
                cert: paths.quick_cert(),
                key: paths.quick_key(),
            },
            Some(Dev::Quick),
        ),
        (None, mode) => {
            let home = crate::certs::Home::from_env(env)?;
            let own = home.own();
            if mode != Some(Mode::Ca) && own.cert.exists() && own.key.exists() {
                // https:smart: your own certificate files, when you put them there.
                (own, None)
            } else {
                (home.leaf("localhost"), Some(Dev::Ca(home)))
            }
        }
    };
    if dev.is_some() && production(env) {
        return Err(format!(
            "https:{} serves a development certificate, and this is production ({}): give --cert=<pem> --key=<pem>",
            match mode {
                Some(Mode::Quick) => "quick",
                Some(Mode::Ca) => "ca",
                _ => "smart",
            },
            environment(env).map(|(name, value)| format!("{name}={value}")).unwrap_or_default()
        ));
    }
    Ok((
        port,
        Some(Https {
            port: https_port,
            pair,
            more: pairs,
            dev,
        }),
    ))
}

/// A certificate or key file's name.
fn is_pem_name(arg: &str) -> bool {
    let lower = arg.to_ascii_lowercase();
    [".pem", ".crt", ".key"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// Two bare files, in any order: the one holding a private key is the key.
fn bare_pair(files: &[String]) -> Result<crate::certs::Pair, String> {
    let [a, b] = files else {
        return Err(format!(
            "{}: bare certificate files come as two, a certificate and its key",
            files.join(" ")
        ));
    };
    let holds_key = |file: &str| {
        std::fs::read_to_string(file)
            .map(|text| text.contains("PRIVATE KEY-----"))
            .map_err(|e| format!("{file}: cannot read it: {e}"))
    };
    let (cert, key) = match (holds_key(a)?, holds_key(b)?) {
        (false, true) => (a, b),
        (true, false) => (b, a),
        _ => {
            return Err(format!(
                "{a} and {b}: one must be a certificate and the other its private key"
            ))
        }
    };
    Ok(crate::certs::Pair {
        cert: absolute(Path::new(cert))?,
        key: absolute(Path::new(key))?,
    })
}

/// The environment the server runs in: `RIP_ENV` if set (even empty), else
/// `NODE_ENV`; the variable's name and its value. Hot reload's default and
/// the production rule for certificates both read it here.
fn environment(env: Env) -> Option<(&'static str, String)> {
    match env("RIP_ENV") {
        Some(value) => Some(("RIP_ENV", value)),
        None => env("NODE_ENV").map(|value| ("NODE_ENV", value)),
    }
}

/// Whether the environment says production.
fn production(env: Env) -> bool {
    matches!(environment(env), Some((_, v)) if v == "production" || v == "prod")
}

/// `path` made absolute (the roles run in the app's directory).
fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `module` in development (NODE_ENV/RIP_ENV unset, `development` or `dev`), else `none`.
fn default_hot_reload(env: Env) -> HotReload {
    match environment(env).as_ref().map(|(_, value)| value.as_str()) {
        None | Some("") | Some("development") | Some("dev") => HotReload::Module,
        Some(_) => HotReload::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_reload_defaults_follow_the_environment() {
        let unset = |_: &str| None;
        assert_eq!(default_hot_reload(&unset), HotReload::Module);
        let dev = |k: &str| (k == "NODE_ENV").then(|| "development".to_string());
        assert_eq!(default_hot_reload(&dev), HotReload::Module);
        let prod = |k: &str| (k == "NODE_ENV").then(|| "production".to_string());
        assert_eq!(default_hot_reload(&prod), HotReload::None);
        let rip_wins = |k: &str| match k {
            "RIP_ENV" => Some("dev".to_string()),
            "NODE_ENV" => Some("production".to_string()),
            _ => None,
        };
        assert_eq!(default_hot_reload(&rip_wins), HotReload::Module);
        // The production rule reads the same setting the same way: an
        // empty RIP_ENV wins over NODE_ENV for both.
        assert!(!production(&rip_wins));
        assert!(production(&prod));
        let empty_rip = |k: &str| match k {
            "RIP_ENV" => Some(String::new()),
            "NODE_ENV" => Some("production".to_string()),
            _ => None,
        };
        assert_eq!(default_hot_reload(&empty_rip), HotReload::Module);
        assert!(!production(&empty_rip));
    }

    #[test]
    fn tokens_reject_a_second_app() {
        let err = Tokens::parse(&["a".into(), "b".into()]).unwrap_err();
        assert!(err.contains("'b'"), "{err}");
    }
}
