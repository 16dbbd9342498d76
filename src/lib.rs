//! rip-server: a process-isolating HTTP application server.
//!
//! One binary runs in four roles (see `ARCHITECTURE.md`):
//!
//! - `front` (`rip-server <app> ...`): validates the command line, binds the
//!   public port and becomes the manager.
//! - `manager`: supervises the load balancer and the workers.
//! - `lb`: the public HTTP server and the load balancer.
//! - `worker`: starts one app process, joins it to the LB and watches it.
//!
//! Modules:
//!
//! - [`cli`]: the command-line grammar and the argv of the hidden roles.
//! - [`flags`]: the settings every role shares, as flags (a leaf).
//! - [`config`]: validated settings shared by every role.
//! - [`paths`]: socket and pid-file paths and their safety checks.
//! - [`control`]: the join/quit protocol spoken on the control socket.
//! - [`link`]: the private manager ↔ LB channel.
//! - [`spawn`]: how one role starts another (inherited fds, parent-death signal).
//! - [`front`], [`manager`], [`lb`], [`worker`]: the roles.
//! - [`apps`]: app resolution, the module loader and the built-in apps.
//! - [`http`]: small HTTP pieces shared by the roles (bodies, clients).
//! - [`output`]: stdout and stderr through bounded buffers: output never
//!   stops the server.

pub mod apps;
pub mod ca;
pub mod certs;
pub mod cli;
pub mod config;
pub mod control;
pub mod flags;
pub mod front;
pub mod http;
pub mod lb;
pub mod link;
pub mod listeners;
pub mod manager;
pub mod output;
pub mod paths;
pub mod procfs;
pub mod spawn;
pub mod status;
pub mod stop;
pub mod systemd;
pub mod worker;

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the process in the role its argv names and returns its exit status.
pub fn run(argv: Vec<OsString>) -> ExitCode {
    let code = run_role(argv);
    // What the role logged goes out before it exits (unless its stream is
    // stuck: then not for long).
    output::flush(std::time::Duration::from_millis(500));
    code
}

/// Says `message` on a stream of the process's own (never failing: a
/// closed stream loses it).
fn say(mut stream: impl std::io::Write, message: std::fmt::Arguments<'_>) {
    let _ = stream.write_fmt(message).and_then(|()| stream.flush());
}

fn run_role(argv: Vec<OsString>) -> ExitCode {
    let invocation = match cli::parse(argv) {
        Ok(invocation) => invocation,
        Err(cli::ParseOutcome::Exit(message, code)) => {
            say(std::io::stdout(), format_args!("{message}"));
            return ExitCode::from(code);
        }
        Err(cli::ParseOutcome::Usage(message)) => {
            say(std::io::stderr(), format_args!("rip-server: {message}\n"));
            return ExitCode::from(2);
        }
    };
    init_tracing(&invocation);
    let result = match invocation {
        cli::Invocation::Start(config) => front::run(config),
        cli::Invocation::Stop(target) => stop::run(target),
        cli::Invocation::Status(target, json) => status::run(target, json),
        cli::Invocation::Ca(command, home) => ca::run(command, &home),
        cli::Invocation::Manager {
            config,
            fds,
            pid_fd,
        } => manager::run(config, fds, pid_fd),
        cli::Invocation::Lb {
            config,
            fds,
            link_fd,
        } => lb::run(config, fds, link_fd),
        cli::Invocation::Worker {
            config,
            id,
            version,
        } => worker::run(config, id, version),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            output::STDERR.line(format!("rip-server: {message}").as_bytes());
            ExitCode::from(2)
        }
        Err(Failure::Fatal(message)) => {
            output::STDERR.line(format!("rip-server: {message}").as_bytes());
            ExitCode::from(1)
        }
        Err(Failure::Silent(code)) => ExitCode::from(code),
    }
}

/// How a role failed, and so which exit status it gets.
#[derive(Debug)]
pub enum Failure {
    /// Bad input from the user: exit 2 with one line.
    Usage(String),
    /// Something went wrong at run time: exit 1 with one line.
    Fatal(String),
    /// The reason was already logged: exit with this status.
    Silent(u8),
}

impl Failure {
    pub fn fatal(message: impl Into<String>) -> Self {
        Failure::Fatal(message.into())
    }
}

fn init_tracing(invocation: &cli::Invocation) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RIP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let role = match invocation {
        cli::Invocation::Start(_) | cli::Invocation::Manager { .. } => "manager".to_string(),
        cli::Invocation::Stop(_) => "stop".to_string(),
        cli::Invocation::Status(..) => "status".to_string(),
        cli::Invocation::Ca(..) => "ca".to_string(),
        cli::Invocation::Lb { .. } => "lb".to_string(),
        cli::Invocation::Worker { id, .. } => format!("worker {id}"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output::LogWriter)
        .with_target(false)
        .event_format(LineFormat { role })
        .try_init();
}

/// One log line: `rip-server[<role>] <LEVEL> message fields`.
struct LineFormat {
    role: String,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        let tag = match level {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            _ => "",
        };
        write!(writer, "rip-server[{}] {tag}", self.role)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
