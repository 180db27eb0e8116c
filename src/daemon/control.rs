//! The local admin socket: `robotd pair`, `robotd owners`, `robotd status`.
//!
//! A Unix socket (default `/run/robotd/control.sock`, mode 0660, so only root
//! and the robotd group can connect; nothing here is reachable from the
//! network). One JSON request line in, one JSON response line out. The socket
//! task only moves bytes; requests are answered by the main loop, which owns
//! all robot state.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::robot::admin::AdminReply;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

/// Largest request line accepted.
const MAX_REQUEST: u64 = 4096;

pub use crate::robot::admin::Request;

/// An admin response: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl From<Result<AdminReply, String>> for Response {
    fn from(r: Result<AdminReply, String>) -> Self {
        match r {
            Ok(data) => {
                Response { ok: true, error: None, data: serde_json::to_value(data).expect("admin replies serialise") }
            }
            Err(msg) => Response { ok: false, error: Some(msg), data: serde_json::Value::Null },
        }
    }
}

impl Response {
    /// An error answer.
    pub fn err(msg: impl Into<String>) -> Self {
        Response { ok: false, error: Some(msg.into()), data: serde_json::Value::Null }
    }

    /// The answer's data as the type the request expects; an error answer
    /// becomes [`ControlError::Refused`].
    pub fn into_data<T: serde::de::DeserializeOwned>(self, path: &Path) -> Result<T, ControlError> {
        if !self.ok {
            return Err(ControlError::Refused(self.error.unwrap_or_default()));
        }
        serde_json::from_value(self.data)
            .map_err(|e| ControlError::Protocol { path: path.to_path_buf(), detail: e.to_string() })
    }
}

/// A request with the channel its answer goes back on.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// Errors of the admin socket, for both ends.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created. Check `control.socket` and that its
    /// directory is writable (systemd's `RuntimeDirectory=robotd` makes /run/robotd).
    #[error("cannot listen on admin socket {path}: {cause}")]
    Bind { path: PathBuf, cause: std::io::Error },
    /// The daemon is not running, or this user may not use its socket.
    #[error(
        "cannot reach robotd at {path}: {cause}; is the service running (systemctl status robotd) and are you root or in group robotd?"
    )]
    Connect { path: PathBuf, cause: std::io::Error },
    /// The daemon refused the request; the message says why.
    #[error("robotd: {0}")]
    Refused(String),
    /// The daemon closed the connection or sent something unreadable.
    #[error("bad answer from robotd at {path}: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

/// Create the socket (removing a stale one) with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |cause| ControlError::Bind { path: path.to_path_buf(), cause };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serve admin connections until shutdown; each request is handed to the
/// main loop through `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Envelope>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::daemon::shutdown::stopped(&mut shutdown) => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, requests).await {
                            debug!(error = %e, "admin connection");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Envelope>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timeout"))??;
    let resp = if n == 0 {
        return Ok(());
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((req, tx)).await.is_err() {
                    Response::err("robotd is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| Response::err("robotd is shutting down"))
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&resp).expect("response serialises");
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Client side: send one request to the daemon and wait for its answer.
pub fn call(path: &Path, req: &Request) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let conn_err = |cause| ControlError::Connect { path: path.to_path_buf(), cause };
    let proto_err = |detail: String| ControlError::Protocol { path: path.to_path_buf(), detail };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(conn_err)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(conn_err)?;
    let mut line = serde_json::to_vec(req).expect("request serialises");
    line.push(b'\n');
    s.write_all(&line).map_err(conn_err)?;
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer).map_err(|e| proto_err(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| proto_err(format!("{e}: {answer:?}")))
}

/// [`call`] and read the answer's data as `T` (e.g. [`crate::robot::admin::Status`]).
pub fn call_as<T: serde::de::DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ControlError> {
    call(path, req)?.into_data(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(serde_json::to_string(&Request::Pair).unwrap(), r#"{"cmd":"pair"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"owners_remove","id":"ab"}"#).unwrap(),
            Request::OwnersRemove { id: "ab".into() }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    #[tokio::test]
    async fn socket_roundtrip_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, tx, stop_rx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply
                    .send(Response::from(Ok(AdminReply::At(crate::robot::admin::AtPlace { at: format!("{req:?}") }))));
            }
        });
        let p = path.clone();
        let resp = tokio::task::spawn_blocking(move || call(&p, &Request::Status)).await.unwrap().unwrap();
        assert!(resp.ok);
        assert_eq!(resp.data["at"], "Status");
        // A second bind replaces the stale socket file.
        drop(bind(&path).unwrap());
    }

    #[test]
    fn connect_error_says_what_to_check() {
        let e = call(Path::new("/nonexistent/robotd.sock"), &Request::Status).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/robotd.sock") && e.contains("systemctl status robotd"), "{e}");
    }
}
