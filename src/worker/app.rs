//! The app a worker runs: a process (module app under Bun/Node through the
//! loader, or a command app), or a built-in app served in this process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use tracing::warn;

use crate::apps::{builtin, AppKind};
use crate::config::Config;
use crate::control::WorkerId;
use crate::{http, output, spawn, Failure};

// One per worker process, made once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum RunningApp {
    Process {
        child: Child,
        pid: u32,
        /// The tasks copying its stdout and stderr to ours.
        output: Vec<tokio::task::JoinHandle<()>>,
    },
    Builtin(builtin::Server),
}

/// How long the last of a stopped app's output may take to arrive.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// How to tell that an app is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Ready when its socket accepts a connection (command apps).
    Accepts,
    /// Ready when `GET /ready` answers 200 (the loader).
    ReadyRoute,
    /// Ready already (served in this process).
    Now,
}

impl RunningApp {
    pub fn start(config: &Config, id: WorkerId, socket: &Path) -> Result<RunningApp, Failure> {
        let app = &config.app;
        let mut command = match &app.kind {
            AppKind::Builtin(which) => {
                return builtin::Server::start(*which, socket, id)
                    .map(RunningApp::Builtin)
                    .map_err(|e| {
                        Failure::fatal(format!("cannot serve {}: {e}", socket.display()))
                    });
            }
            AppKind::Module { entry, runtime } => {
                let mut command = Command::new(&runtime.path);
                command
                    .arg(config.paths.loader())
                    .env("RIP_ENTRY", entry)
                    .env("RIP_HOT_RELOAD", config.hot_reload.as_str())
                    .env("RIP_MAX_RELOADS", config.max_reloads.to_string());
                command
            }
            AppKind::Command { program } => Command::new(program),
        };
        command
            .current_dir(&app.dir)
            .env("RIP_SOCKET", socket)
            .env("RIP_WORKER_ID", id.to_string())
            .env("RIP_APP_NAME", &app.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        spawn::supervised(&mut command, &[]);
        let mut child = command
            .spawn()
            .map_err(|e| Failure::fatal(format!("cannot start app {}: {e}", app.describe())))?;
        let pid = child.id().unwrap_or(0);
        let mut output = Vec::new();
        if let Some(out) = child.stdout.take() {
            output.push(tokio::spawn(forward_lines(out, id, false)));
        }
        if let Some(err) = child.stderr.take() {
            output.push(tokio::spawn(forward_lines(err, id, true)));
        }
        Ok(RunningApp::Process { child, pid, output })
    }

    pub fn readiness(&self, config: &Config) -> Readiness {
        match (self, &config.app.kind) {
            (RunningApp::Builtin(_), _) => Readiness::Now,
            (_, AppKind::Module { .. }) => Readiness::ReadyRoute,
            _ => Readiness::Accepts,
        }
    }

    /// Waits until the app exits; says how, and the exit code the worker
    /// passes on (the app's own, or 128 + the signal that killed it), so
    /// that the manager logs the app's real exit status. A built-in app
    /// never exits.
    pub async fn exited(&mut self) -> (String, u8) {
        use std::os::unix::process::ExitStatusExt;
        match self {
            RunningApp::Process { child, .. } => match child.wait().await {
                Ok(status) => {
                    let code = match (status.code(), status.signal()) {
                        (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
                        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
                        (None, None) => 1,
                    };
                    (status.to_string(), code)
                }
                Err(e) => (format!("cannot wait for it: {e}"), 1),
            },
            RunningApp::Builtin(_) => std::future::pending().await,
        }
    }

    /// Stops the app: SIGTERM to its process group (the loader finishes the
    /// in-flight request, then exits), SIGKILL after `grace`. Its last output
    /// — often why it died — is passed on before this returns.
    pub async fn stop(self, grace: Duration) {
        match self {
            RunningApp::Process {
                mut child,
                pid,
                output,
            } => {
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    spawn::signal_group(pid, Signal::SIGTERM);
                    if timeout(grace, child.wait()).await.is_err() {
                        warn!("app (pid {pid}) did not stop within {grace:?}; killing it");
                    }
                }
                // Whatever is left of its process group goes too.
                spawn::signal_group(pid, Signal::SIGKILL);
                let _ = child.wait().await;
                for task in output {
                    let _ = timeout(OUTPUT_DRAIN, task).await;
                }
            }
            RunningApp::Builtin(server) => server.stop(grace).await,
        }
    }
}

/// Polls until the app at `socket` is ready, or `deadline` passes.
pub async fn wait_ready(
    socket: &Path,
    readiness: Readiness,
    deadline: Instant,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(2);
    loop {
        let ready = match readiness {
            Readiness::Now => true,
            Readiness::Accepts => tokio::net::UnixStream::connect(socket).await.is_ok(),
            Readiness::ReadyRoute => {
                let request = hyper::Request::get("/ready")
                    .header(hyper::header::HOST, "localhost")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .map_err(|e| e.to_string())?;
                matches!(
                    http::unix_call(socket, request, Duration::from_secs(1)).await,
                    Ok((hyper::StatusCode::OK, _))
                )
            }
        };
        if ready {
            return Ok(());
        }
        if Instant::now() + pause >= deadline {
            return Err(format!(
                "app did not become ready on {} in time (--boot-timeout-ms)",
                socket.display()
            ));
        }
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Copies the app's output line by line to ours, marked with the worker id
/// (see [`output::forward`]).
async fn forward_lines(pipe: impl AsyncRead + Unpin, id: WorkerId, to_stderr: bool) {
    let sink = if to_stderr {
        &output::STDERR
    } else {
        &output::STDOUT
    };
    output::forward(pipe, &format!("[worker {id}] "), sink, None).await;
}
