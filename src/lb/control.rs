//! The LB's side of the control socket (docs/DESIGN.md §4): workers join and
//! quit, and `rip-server status` asks for the workers (`GET /workers`).
//!
//! Only processes of this user may connect (checked with the peer's
//! credentials), a joining worker's socket must lie in the socket dir, and
//! every refusal is a `400` naming the problem — or a `409` for a join
//! that would replace a live worker (the same id on another socket);
//! nothing else changes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tracing::warn;

use super::balancer::Balancer;
use crate::control::{self, Message, MAX_BODY};
use crate::link::LinkMsg;
use crate::paths::Paths;

pub struct Control {
    pub balancer: Arc<Balancer>,
    /// The longest a quit waits for the worker's request in flight.
    pub drain_limit: std::time::Duration,
    pub paths: Paths,
    pub manager: mpsc::UnboundedSender<LinkMsg>,
    /// `w:<N>`.
    pub expected: usize,
}

/// Accepts control connections until the listener fails.
pub async fn serve(listener: UnixListener, control: Arc<Control>) {
    let uid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == uid => {}
            Ok(cred) => {
                warn!("refused a control connection from uid {}", cred.uid());
                continue;
            }
            Err(e) => {
                warn!("refused a control connection: no peer credentials: {e}");
                continue;
            }
        }
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(control.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Control {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/workers" && req.method() == Method::GET {
            return self.workers();
        }
        if req.uri().path() != "/worker" {
            return answer(StatusCode::NOT_FOUND, Bytes::from_static(b"not-found"));
        }
        if req.method() != Method::POST {
            return refuse("use POST /worker");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return refuse(&format!(
                    "cannot read the payload (at most {MAX_BODY} bytes): {e}"
                ))
            }
        };
        let message = match Message::parse(&body) {
            Ok(message) => message,
            Err(why) => return refuse(&why),
        };
        let quit = match &message {
            Message::Quit { worker_id } => Some(*worker_id),
            Message::Join { .. } => None,
        };
        if let Err((status, why)) = self.apply(message) {
            return answer(status, control::error_body(&why));
        }
        // A quitting worker stops its app when we answer: answer once its
        // request in flight, if any, is done (drained), not before.
        if let Some(id) = quit {
            self.balancer.drain(id, self.drain_limit).await;
        }
        answer(StatusCode::OK, control::ok_body())
    }

    /// `GET /workers`: the queue and each joined worker, as the LB sees them.
    fn workers(&self) -> Response<Full<Bytes>> {
        use super::metrics::{Cause, METRICS};
        let stats = self.balancer.stats();
        let body = serde_json::json!({
            "expected": self.expected,
            "joined": stats.workers,
            "queue": {
                "now": stats.queued,
                "max": METRICS.queue_max(),
                "timeouts": METRICS.answers(Cause::QueueTimeout),
                "full": METRICS.answers(Cause::QueueFull),
            },
            "workers": self.balancer.workers(),
        });
        answer(StatusCode::OK, Bytes::from(body.to_string()))
    }

    fn apply(&self, message: Message) -> Result<(), (StatusCode, String)> {
        match message {
            Message::Join {
                worker_id,
                pid,
                socket,
                version,
            } => {
                if !self.paths.holds(&socket) {
                    let why = format!(
                        "socket {} is not in the socket dir {}",
                        socket.display(),
                        self.paths.dir().display()
                    );
                    return Err((StatusCode::BAD_REQUEST, why));
                }
                match self.balancer.join(worker_id, &socket, version) {
                    Ok(true) => {}
                    // A join retried (its answer was late): nothing new.
                    Ok(false) => return Ok(()),
                    Err(conflict) => {
                        warn!(
                            "refused a join: {conflict}; this one is at {}",
                            socket.display()
                        );
                        return Err((StatusCode::CONFLICT, conflict.to_string()));
                    }
                }
                tracing::debug!("worker {worker_id} joined at {}", socket.display());
                let _ = self.manager.send(LinkMsg::Joined {
                    id: worker_id,
                    pid,
                    socket,
                    version,
                });
            }
            Message::Quit { worker_id } => {
                self.balancer.leave(worker_id);
                tracing::debug!("worker {worker_id} quit");
                let _ = self.manager.send(LinkMsg::Left { id: worker_id });
            }
        }
        Ok(())
    }
}

fn refuse(why: &str) -> Response<Full<Bytes>> {
    answer(StatusCode::BAD_REQUEST, control::error_body(why))
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let json = body.first() == Some(&b'{');
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let content_type = if json {
        "application/json"
    } else {
        "text/plain"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
