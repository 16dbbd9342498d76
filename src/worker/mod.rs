//! The worker role (docs/DESIGN.md §6): one app process, joined to the LB while it
//! serves, watched until it exits or the worker is told to stop.
//!
//! The worker is not on the data path: the LB talks straight to the socket
//! the app listens on (except for built-in apps, which the worker serves
//! itself). Its life: remove a stale socket → start the app → wait until it
//! is ready → join the LB → watch. If the app exits, the worker quits the LB
//! and exits 1 (the manager replaces it). On SIGTERM it quits the LB, lets
//! the in-flight request finish (the app's own graceful stop, bounded by
//! the shutdown timeout), stops the app and exits 0.

mod app;

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep, Instant};
use tracing::{error, warn};

use crate::config::Config;
use crate::control::WorkerId;
use crate::control::{self, Message};
use crate::paths::{remove_ours, Owned};
use crate::Failure;

use app::RunningApp;

/// How long one control call may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(config: Config, id: WorkerId, version: u64) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config, id, version))
}

async fn serve(config: Config, id: WorkerId, version: u64) -> Result<(), Failure> {
    let socket = config.paths.worker(id);
    remove_ours(&socket, Owned::Socket).map_err(Failure::Fatal)?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::fatal(format!("cannot install signal handlers: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::fatal(format!("cannot install signal handlers: {e}")))?;
    let boot_deadline = Instant::now() + config.boot_timeout;

    let mut app = RunningApp::start(&config, id, &socket)?;
    let readiness = app.readiness(&config);
    let booted = tokio::select! {
        ready = app::wait_ready(&socket, readiness, boot_deadline) => ready.map_err(|why| (why, 1)),
        (status, code) = app.exited() => Err((format!("app exited while starting ({status})"), code)),
        _ = term.recv() => return finish(app, &config, &socket, Ok(())).await,
        _ = int.recv() => return finish(app, &config, &socket, Ok(())).await,
    };
    if let Err((why, code)) = booted {
        error!("{why}");
        return finish(app, &config, &socket, Err(Failure::Silent(code))).await;
    }
    // Worker sockets are private (docs/DESIGN.md §4), whatever the app's umask made.
    if let Err(why) = make_private(&socket) {
        error!("{why}");
        return finish(app, &config, &socket, Err(Failure::Silent(1))).await;
    }

    let join = Message::Join {
        worker_id: id,
        pid: Some(std::process::id()),
        socket: socket.clone(),
        version: Some(version),
    };
    let ctl = config.paths.ctl();
    let joined = tokio::select! {
        joined = join_until(&ctl, &join, boot_deadline) => joined.map_err(|why| (why, 1)),
        (status, code) = app.exited() => Err((format!("app exited while joining ({status})"), code)),
        _ = term.recv() => return finish(app, &config, &socket, Ok(())).await,
        _ = int.recv() => return finish(app, &config, &socket, Ok(())).await,
    };
    if let Err((why, code)) = joined {
        error!("{why}");
        return finish(app, &config, &socket, Err(Failure::Silent(code))).await;
    }

    // A worker whose app exits passes its exit code on, so that the
    // manager's log names the app's real exit status.
    let outcome = tokio::select! {
        (status, code) = app.exited() => {
            error!("app exited ({status})");
            Err(Failure::Silent(code))
        }
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    };
    quit(&config, id).await;
    finish(app, &config, &socket, outcome).await
}

/// Sets the app's socket to mode 0600, if it is a socket of ours.
fn make_private(socket: &Path) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(socket)
        .map_err(|e| format!("app socket {}: {e}", socket.display()))?;
    if !meta.file_type().is_socket() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is not a socket of this user; refusing to join it",
            socket.display()
        ));
    }
    if meta.permissions().mode() & 0o777 != 0o600 {
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
    }
    Ok(())
}

/// Joins the LB, retrying while it starts up, until `deadline`.
async fn join_until(ctl: &Path, join: &Message, deadline: Instant) -> Result<(), String> {
    let mut pause = Duration::from_millis(5);
    loop {
        match control::send(ctl, join, CONTROL_TIMEOUT).await {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() + pause >= deadline => {
                return Err(format!("could not join the load balancer: {why}"))
            }
            Err(_) => {
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Quits the LB. It answers once our request in flight, if any, is done,
/// so the app is stopped only with nothing of the LB's on its connection.
async fn quit(config: &Config, id: WorkerId) {
    let quit = Message::Quit { worker_id: id };
    let limit = config.shutdown_timeout + CONTROL_TIMEOUT;
    if let Err(why) = control::send(&config.paths.ctl(), &quit, limit).await {
        // The LB may be gone already (server stopping); the manager tells a
        // live LB about dead workers anyway.
        tracing::debug!("quit: {why}");
    }
}

/// Stops the app (gracefully, within the shutdown timeout), removes the
/// socket and returns `outcome`.
async fn finish(
    app: RunningApp,
    config: &Config,
    socket: &Path,
    outcome: Result<(), Failure>,
) -> Result<(), Failure> {
    app.stop(config.shutdown_timeout).await;
    if let Err(why) = remove_ours(socket, Owned::Socket) {
        warn!("{why}");
    }
    outcome
}
