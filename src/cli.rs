//! The command-line grammar (docs/DESIGN.md §2) and the argv of the hidden roles.
//!
//! The public form is `rip-server <app> [http:<port>] [w:<N|auto>] [r:<N>]
//! [--flag[=value] ...]`. The manager, LB and workers are the same binary
//! started as `rip-server manager|lb|worker ...`; their argv is built by
//! [`role_args`] and read back by [`parse`], so every role sees exactly the
//! settings the front validated.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::apps::App;
use crate::config::Config;
pub use crate::flags::Options;
use crate::listeners::Fds;
use crate::stop::StopTarget;

const LONG_ABOUT: &str = "\
rip-server runs N copies of your app, each in its own worker process, behind
one load balancer. Every worker serves one request at a time; when all are
busy, requests wait in a bounded FIFO queue. Idle workers are picked
most-recently-used first (a LIFO stack), so a warm worker serves next.

APP is a directory (its entry is the first of index.rip, index.ts, index.js,
index.mjs, or an executable named `app`), a module file (.rip .ts .js .mjs:
`export default { fetch(req) { ... } }` run under Bun or Node), any
executable that serves HTTP/1.1 on the unix socket named in $RIP_SOCKET, or
`builtin:hello` (a built-in app: /ping, /echo, /sleep?ms=N, /big?n=BYTES).";

const AFTER_HELP: &str = "\
Tokens after APP come in any order:
  http:<port>    public HTTP port; http:0 picks a free one [env: PORT] [default: 5002]
  https:<port>   public HTTPS port, with --cert and --key (HTTP then only if http: is given too)
  w:<N|auto>     worker count; auto = CPU cores [default: auto]
  r:<N>          requests a worker serves before it is recycled; 0 = never [default: 10000]

Examples:
  rip-server examples/hello http:3000 w:2
  rip-server examples/python http:0 w:4 --no-access-log
  rip-server builtin:hello http:8080
  rip-server examples/hello http:80 https:443 --cert=fullchain.pem --key=privkey.pem
  rip-server examples/hello http:3000 https:quick      # a self-signed certificate
  rip-server examples/hello https:ca                   # signed by a development CA
  rip-server --stop examples/hello

The development CA (under $RIP_HOME, else ~/.rip-server):
  rip-server ca:init | ca:trust | ca:export | ca:info | ca:list | ca:clean";

#[derive(Parser, Debug)]
#[command(
    name = "rip-server",
    version,
    about = "A process-isolating HTTP application server: one load balancer, N one-request-at-a-time workers",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    override_usage = "rip-server <APP> [http:<port>] [w:<N|auto>] [r:<N>] [OPTIONS]\n       rip-server --stop [APP]\n       rip-server status [APP] [--json]"
)]
struct PublicCli {
    /// The app, then its tokens (http:<port> w:<N|auto> r:<N>)
    #[arg(value_name = "APP")]
    args: Vec<String>,

    /// Stop the running server of APP, or every server of this user in the socket dir
    #[arg(long)]
    stop: bool,

    #[command(flatten)]
    options: Options,
}

#[derive(Parser, Debug)]
#[command(name = "rip-server")]
struct RoleCli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Supervises the load balancer and the workers
    Manager {
        #[command(flatten)]
        fds: FdArgs,
        /// The locked pid file (see `paths::PidFile`).
        #[arg(long)]
        pid_fd: RawFd,
        #[command(flatten)]
        app: ResolvedApp,
        #[command(flatten)]
        options: Options,
        args: Vec<String>,
    },
    /// The public HTTP server and load balancer
    Lb {
        #[command(flatten)]
        fds: FdArgs,
        #[arg(long)]
        link_fd: RawFd,
        #[command(flatten)]
        app: ResolvedApp,
        #[command(flatten)]
        options: Options,
        args: Vec<String>,
    },
    /// Runs one app process and joins it to the load balancer
    Worker {
        id: u32,
        #[arg(long)]
        app_version: u64,
        #[command(flatten)]
        app: ResolvedApp,
        #[command(flatten)]
        options: Options,
        args: Vec<String>,
    },
}

/// The listeners a role inherits (`listeners::Fds::args`).
#[derive(Args, Debug)]
struct FdArgs {
    /// The public HTTP listener.
    #[arg(long)]
    listen_fd: Option<RawFd>,
    /// The public HTTPS listener.
    #[arg(long)]
    https_fd: Option<RawFd>,
    /// The `--status-bind` listener.
    #[arg(long)]
    status_fd: Option<RawFd>,
    /// The `--metrics` listener.
    #[arg(long)]
    metrics_fd: Option<RawFd>,
}

impl FdArgs {
    fn fds(&self) -> Fds {
        Fds {
            http: self.listen_fd,
            https: self.https_fd,
            status: self.status_fd,
            metrics: self.metrics_fd,
        }
    }
}

/// The app as the front resolved it (`App::resolved_args`): the roles take
/// it as it is, and never resolve it again.
#[derive(Args, Debug)]
struct ResolvedApp {
    #[arg(long)]
    app_kind: String,
    #[arg(long)]
    app_name: String,
    #[arg(long)]
    app_dir: PathBuf,
    #[arg(long)]
    app_runtime: Option<PathBuf>,
}

/// What this process was asked to do.
#[derive(Debug)]
pub enum Invocation {
    Start(Config),
    Stop(StopTarget),
    /// `rip-server status [<app>] [--json]`.
    Status(StopTarget, bool),
    /// `rip-server ca:<command>` (or `ca <command>`).
    Ca(crate::ca::Command, crate::certs::Home),
    Manager {
        config: Config,
        fds: Fds,
        pid_fd: RawFd,
    },
    Lb {
        config: Config,
        fds: Fds,
        link_fd: RawFd,
    },
    Worker {
        config: Config,
        id: u32,
        version: u64,
    },
}

/// Why parsing did not produce an [`Invocation`].
#[derive(Debug)]
pub enum ParseOutcome {
    /// `--help` or `--version`: print this and exit with this status.
    Exit(String, u8),
    /// Bad input: one line naming the problem (exit 2).
    Usage(String),
}

const ROLES: [&str; 3] = ["manager", "lb", "worker"];

/// Parses a whole argv (with the program name first).
pub fn parse(argv: Vec<OsString>) -> Result<Invocation, ParseOutcome> {
    let is_role = argv
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| ROLES.contains(&a));
    if is_role {
        let cli = RoleCli::try_parse_from(argv).map_err(clap_outcome)?;
        return Ok(match cli.role {
            Role::Manager {
                fds,
                pid_fd,
                app,
                options,
                args,
            } => Invocation::Manager {
                config: role_config(&app, &options, &args)?,
                fds: fds.fds(),
                pid_fd,
            },
            Role::Lb {
                fds,
                link_fd,
                app,
                options,
                args,
            } => Invocation::Lb {
                config: role_config(&app, &options, &args)?,
                fds: fds.fds(),
                link_fd,
            },
            Role::Worker {
                id,
                app_version,
                app,
                options,
                args,
            } => Invocation::Worker {
                config: role_config(&app, &options, &args)?,
                id,
                version: app_version,
            },
        });
    }
    if let Some(command) = ca_command(&argv)? {
        let home = crate::certs::Home::from_env(&|name| std::env::var(name).ok())
            .map_err(ParseOutcome::Usage)?;
        return Ok(Invocation::Ca(command, home));
    }
    let status = argv.get(1).and_then(|a| a.to_str()) == Some("status");
    let argv = if status {
        [&argv[..1], &argv[2..]].concat()
    } else {
        argv
    };
    let cli = PublicCli::try_parse_from(argv).map_err(clap_outcome)?;
    if status {
        if cli.stop || cli.args.len() > 1 {
            return Err(ParseOutcome::Usage(format!(
                "status takes at most one app and no --stop, got '{}'",
                cli.args.join(" ")
            )));
        }
        return Ok(Invocation::Status(servers(&cli)?, cli.options.json_logging));
    }
    if cli.stop {
        if cli.args.len() > 1 {
            return Err(ParseOutcome::Usage(format!(
                "--stop takes at most one app, got '{}'",
                cli.args.join(" ")
            )));
        }
        return Ok(Invocation::Stop(servers(&cli)?));
    }
    Ok(Invocation::Start(config_from(&cli.options, &cli.args)?))
}

/// The servers `--stop` or `status` is about: the app's, or all in the
/// socket dir.
fn servers(cli: &PublicCli) -> Result<StopTarget, ParseOutcome> {
    Ok(match cli.args.first() {
        Some(_) => StopTarget::App(Box::new(config_from(&cli.options, &cli.args)?)),
        None => {
            let dir = &cli.options.socket_dir;
            StopTarget::All(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()))
        }
    })
}

/// `ca:<command>` or `ca <command>` as the first argument.
fn ca_command(argv: &[OsString]) -> Result<Option<crate::ca::Command>, ParseOutcome> {
    let arg = |i: usize| argv.get(i).and_then(|a| a.to_str());
    let (name, rest) = match (arg(1), arg(2)) {
        (Some("ca"), Some(name)) => (name, 3),
        (Some("ca"), None) => {
            return Err(ParseOutcome::Usage(format!(
                "ca needs a command: {}",
                crate::ca::Command::NAMES
            )))
        }
        (Some(first), _) if first.starts_with("ca:") => (&first[3..], 2),
        _ => return Ok(None),
    };
    if argv.len() > rest {
        return Err(ParseOutcome::Usage(format!(
            "ca:{name} takes no arguments, got '{}'",
            argv[rest..]
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    crate::ca::Command::parse(name)
        .map(Some)
        .map_err(ParseOutcome::Usage)
}

fn config_from(options: &Options, args: &[String]) -> Result<Config, ParseOutcome> {
    Config::from_cli(options, args, &|name| std::env::var(name).ok(), None)
        .map_err(ParseOutcome::Usage)
}

/// A role's config, with the app the front resolved.
fn role_config(
    app: &ResolvedApp,
    options: &Options,
    args: &[String],
) -> Result<Config, ParseOutcome> {
    let arg = args.first().map(String::as_str).unwrap_or("");
    let app = App::from_resolved(
        &app.app_kind,
        &app.app_name,
        &app.app_dir,
        arg,
        &options.runtime,
        app.app_runtime.as_deref(),
    )
    .map_err(ParseOutcome::Usage)?;
    Config::from_cli(options, args, &|name| std::env::var(name).ok(), Some(app))
        .map_err(ParseOutcome::Usage)
}

/// Turns a clap error into one line (or the help/version text).
fn clap_outcome(err: clap::Error) -> ParseOutcome {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            ParseOutcome::Exit(err.render().to_string(), 0)
        }
        _ => {
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            ParseOutcome::Usage(format!("{first} (see 'rip-server --help')"))
        }
    }
}

/// The argv (after the program name) that starts `role` with `config`.
/// `role` is e.g. `["worker", "3", "--app-version=1"]`.
pub fn role_args(role: &[String], config: &Config) -> Vec<String> {
    let mut args: Vec<String> = role.to_vec();
    args.extend(config.app.resolved_args());
    args.extend(config.to_args());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("rip-server")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn start(args: &[&str]) -> Config {
        match parse(argv(args)) {
            Ok(Invocation::Start(config)) => config,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    fn usage(args: &[&str]) -> String {
        match parse(argv(args)) {
            Err(ParseOutcome::Usage(line)) => line,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn tokens_come_in_any_order() {
        let a = start(&["builtin:hello", "http:0", "w:3", "r:7"]);
        let b = start(&["builtin:hello", "r:7", "w:3", "http:0"]);
        assert_eq!((a.port, a.workers, a.max_requests), (Some(0), 3, 7));
        assert_eq!(a, b);
    }

    #[test]
    fn https_alone_opens_no_http_port_and_needs_its_certificate() {
        let alone = start(&["builtin:hello", "https:0", "--cert=c.pem", "--key=k.pem"]);
        assert_eq!(alone.port, None);
        assert_eq!(alone.https.as_ref().map(|h| h.port), Some(0));
        let both = start(&[
            "builtin:hello",
            "http:8080",
            "https:0",
            "--cert=c.pem",
            "--key=k.pem",
        ]);
        assert_eq!(both.port, Some(8080));
        // Without files, https: is a development certificate (https:smart).
        let smart = start(&["builtin:hello", "https:0"]);
        assert_eq!(smart.port, None);
        assert!(smart.https.is_some());
        let quick = start(&["builtin:hello", "https:quick"]);
        let https = quick.https.unwrap();
        assert_eq!(https.port, crate::config::DEFAULT_HTTPS_PORT);
        assert_eq!(https.dev, Some(crate::config::Dev::Quick));
        assert!(https.pair.cert.ends_with("rip_server2_hello.quick.crt"));
        let only = start(&[
            "builtin:hello",
            "protocol:https",
            "--cert=c.pem",
            "--key=k.pem",
        ]);
        assert_eq!((only.port, only.https.map(|h| h.port)), (None, Some(3443)));
        let both = start(&[
            "builtin:hello",
            "protocol:http+https",
            "http:0",
            "https:quick",
        ]);
        assert_eq!((both.port, both.https.is_some()), (Some(0), true));
        assert!(usage(&["builtin:hello", "protocol:http", "https:0"]).contains("protocol:http"));
        assert!(usage(&["builtin:hello", "protocol:https", "http:0"]).contains("protocol:https"));
        assert!(usage(&["builtin:hello", "protocol:ftp"]).contains("protocol:ftp"));
        assert!(usage(&[
            "builtin:hello",
            "https:quick",
            "--cert=c.pem",
            "--key=k.pem"
        ])
        .contains("drop https:quick"));
        assert!(usage(&["builtin:hello", "https:0", "--cert=c.pem"]).contains("--key"));
        assert!(usage(&["builtin:hello", "--key=k.pem"]).contains("--cert"));
        assert!(usage(&["builtin:hello", "--cert=c.pem", "--key=k.pem"]).contains("https:<port>"));
        assert!(usage(&["builtin:hello", "https:x"]).contains("https:x"));
    }

    #[test]
    fn bad_tokens_name_the_problem() {
        assert!(usage(&["builtin:hello", "w:abc"]).contains("w:abc"));
        assert!(usage(&["builtin:hello", "w:0"]).contains("w:0"));
        assert!(usage(&["builtin:hello", "http:70000"]).contains("http:70000"));
        assert!(usage(&["builtin:hello", "r:-1"]).contains("r:-1"));
        assert!(usage(&["builtin:hello", "bogus"]).contains("bogus"));
        assert!(usage(&["builtin:hello", "--bogus"]).contains("--bogus"));
        assert!(usage(&[]).contains("missing"));
        assert!(usage(&["builtin:nope"]).contains("builtin:nope"));
    }

    #[test]
    fn role_argv_round_trips() {
        let config = start(&[
            "builtin:hello",
            "http:0",
            "w:2",
            "r:5",
            "--json",
            "--no-access-log",
            "--max-requests-jitter=3",
            "--lb-threads=2",
            "--max-body=5M",
            "--header-timeout-ms=77",
            "--idle-timeout-ms=88",
            "--hot-reload=process",
            "--queue-timeout-ms=123",
            "--socket-dir=/tmp",
            "--socket-prefix=rip_test_x",
            "https:0",
            "--cert=site.pem",
            "--key=/etc/site.key",
        ]);
        let https = config.https.as_ref().expect("https");
        assert!(https.pair.cert.is_absolute() && https.pair.cert.ends_with("site.pem"));
        let role = [
            "worker".to_string(),
            "4".to_string(),
            "--app-version=9".to_string(),
        ];
        let mut full = vec![OsString::from("rip-server")];
        full.extend(role_args(&role, &config).into_iter().map(OsString::from));
        match parse(full) {
            Ok(Invocation::Worker {
                config: back,
                id,
                version,
            }) => {
                assert_eq!((id, version), (4, 9));
                assert_eq!(back, config);
            }
            other => panic!("expected a worker, got {other:?}"),
        }
    }

    #[test]
    fn help_documents_tokens_and_flags() {
        match parse(argv(&["--help"])) {
            Err(ParseOutcome::Exit(text, 0)) => {
                for needle in [
                    "http:<port>",
                    "https:<port>",
                    "--cert",
                    "w:<N|auto>",
                    "r:<N>",
                    "--socket-dir",
                    "--stop",
                ] {
                    assert!(text.contains(needle), "help lacks {needle}");
                }
            }
            other => panic!("expected help, got {other:?}"),
        }
    }
}
