//! Small HTTP pieces shared by the roles: plain responses, and a one-shot
//! client call over a unix socket (control messages, readiness probes).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The most of a response body [`unix_call`] reads.
const MAX_CALL_BODY: usize = 64 * 1024;

/// A `text/plain` response.
pub fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Sends one request over a fresh connection to the unix socket at `path`
/// and reads the whole (small) response, all within `timeout`.
pub async fn unix_call(
    path: &Path,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let call = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_CALL_BODY)
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", path.display())))
}
