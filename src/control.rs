//! The join/quit protocol of the control socket (docs/DESIGN.md §4), both sides.
//!
//! Wire-compatible with the original Bun server2: a worker `POST`s
//! `{"op":"join","workerId":3,"pid":4242,"socket":"/tmp/p.3.sock","version":7}`
//! or `{"op":"quit","workerId":3}` to `/worker` and gets `200 {"ok":true}`;
//! a malformed payload gets `400 {"ok":false,"error":"..."}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::http;

/// A worker's id, as the protocol names it (`workerId`): the manager gives
/// each worker it starts a new one; a worker is the pair (id, socket).
pub type WorkerId = u32;

/// A message a worker sends the load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Message {
    Join {
        #[serde(rename = "workerId")]
        worker_id: WorkerId,
        /// Optional on the wire: the original's LB never needed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        socket: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    Quit {
        #[serde(rename = "workerId")]
        worker_id: WorkerId,
    },
}

/// The largest control payload accepted.
pub const MAX_BODY: usize = 16 * 1024;

impl Message {
    pub fn parse(body: &[u8]) -> Result<Message, String> {
        serde_json::from_slice(body).map_err(|e| format!("bad control message: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("control messages always serialize")
    }
}

/// The success body.
pub fn ok_body() -> Bytes {
    Bytes::from_static(b"{\"ok\":true}")
}

/// The failure body, naming the problem.
pub fn error_body(error: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "ok": false, "error": error }).to_string())
}

/// Sends one message to the control socket at `ctl`; Ok when the LB took it.
pub async fn send(ctl: &Path, message: &Message, timeout: Duration) -> Result<(), String> {
    let request = hyper::Request::post("/worker")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(message.to_json())))
        .map_err(|e| e.to_string())?;
    let (status, body) = http::unix_call(ctl, request, timeout).await?;
    if status == hyper::StatusCode::OK {
        Ok(())
    } else {
        Err(format!(
            "control socket answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_original_wire_format() {
        let join = Message::parse(
            br#"{"op":"join","workerId":3,"pid":4242,"socket":"/tmp/rip_server2_app.3.sock","version":7}"#,
        )
        .expect("join");
        assert_eq!(
            join,
            Message::Join {
                worker_id: 3,
                pid: Some(4242),
                socket: "/tmp/rip_server2_app.3.sock".into(),
                version: Some(7),
            }
        );
        assert_eq!(
            join.to_json(),
            r#"{"op":"join","workerId":3,"pid":4242,"socket":"/tmp/rip_server2_app.3.sock","version":7}"#
        );
        // The original's join may omit pid and version.
        let bare = Message::parse(br#"{"op":"join","workerId":1,"socket":"/tmp/x.1.sock"}"#);
        assert!(matches!(
            bare,
            Ok(Message::Join {
                pid: None,
                version: None,
                ..
            })
        ));
        assert_eq!(
            Message::parse(br#"{"op":"quit","workerId":3}"#),
            Ok(Message::Quit { worker_id: 3 })
        );
    }

    #[test]
    fn bad_payloads_are_named() {
        for bad in [
            &br#"{"op":"dance","workerId":1}"#[..],
            br#"{"op":"join","workerId":"x","socket":"/tmp/a"}"#,
            br#"{"op":"join","socket":"/tmp/a"}"#,
            b"not json",
            b"",
        ] {
            let err = Message::parse(bad).unwrap_err();
            assert!(err.starts_with("bad control message"), "{err}");
        }
    }
}
