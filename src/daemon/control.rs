//! The local admin socket: `robotd pair`, `robotd owners`, `robotd status`.
//!
//! A Unix socket (default `/run/robotd/control.sock`, mode 0660, so only root
//! and the robotd group can connect; nothing here is reachable from the
//! network). One JSON request line in, one JSON response line out. The socket
//! task only moves bytes; requests are answered by the main loop, which owns
//! all robot state.
//!
//! Bounded so that idle or slow clients cannot exhaust robotd's file
//! descriptors or hold the admin commands up: at most [`MAX_CONNECTIONS`] at
//! once (more are closed as soon as they are accepted) and each must send its
//! request within [`REQUEST_TIMEOUT`]. A client that is closed without an
//! answer tries again ([`call`] does, until [`CALL_TIMEOUT`]): the request
//! was not read, so it was not executed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::robot::admin::AdminReply;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

/// Largest request line accepted.
const MAX_REQUEST: u64 = 4096;

pub use crate::robot::admin::Request;

/// Admin connections served at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Time a client has to send its request line after connecting. `robotd`
/// writes it right after connecting, so this only ever cuts off idle or
/// stuck clients (and such a client tries again).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the main loop may take to answer before the connection gets an
/// error answer (it answers in microseconds unless it is stuck).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`call`] keeps trying, busy socket included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two tries of [`call`] when the daemon was busy.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

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
    /// Every try within [`CALL_TIMEOUT`] found the admin socket full
    /// ([`MAX_CONNECTIONS`] clients at once) or was closed unanswered.
    /// Something is holding admin connections open: see who uses the socket
    /// (`ss -xp | grep control.sock`).
    #[error(
        "robotd at {path} did not take the request within {}s: its admin socket stays busy \
         ({MAX_CONNECTIONS} connections at most); see who holds it open: ss -xp | grep {}",
        CALL_TIMEOUT.as_secs(),
        path.display()
    )]
    Busy { path: PathBuf },
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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused = 0u64;
    loop {
        tokio::select! {
            _ = crate::daemon::shutdown::stopped(&mut shutdown) => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Closed at once: its descriptor is free again and the
                        // client sees EOF before any answer, so it may retry.
                        drop(stream);
                        refused += 1;
                        if refused == 1 || refused % 1000 == 0 {
                            warn!(refused, max = MAX_CONNECTIONS, "admin socket full; closing new connections at once");
                        }
                        continue;
                    };
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, requests).await {
                            debug!(error = %e, "admin connection");
                        }
                        drop(slot);
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

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Envelope>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line))
        .await
        .map_err(|_| timed_out("no request in time"))??;
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::err(format!("bad request: {e}")),
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if requests.send((req, tx)).await.is_err() {
                Response::err("robotd is shutting down")
            } else {
                match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                    Ok(answer) => answer.unwrap_or_else(|_| Response::err("robotd is shutting down")),
                    Err(_) => Response::err(format!(
                        "robotd's main loop did not answer within {}s; see journalctl -u robotd",
                        ANSWER_TIMEOUT.as_secs()
                    )),
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&resp).expect("response serialises");
    out.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        w.write_all(&out).await?;
        w.shutdown().await
    })
    .await
    .map_err(|_| timed_out("client did not read its answer"))?
}

/// Why one try of [`call`] failed.
enum Try {
    /// Closed without an answer (socket full, or the request was not read
    /// in time): the request was not executed, try again.
    Unanswered,
    Failed(ControlError),
}

/// Client side: send one request to the daemon and wait for its answer,
/// trying again while the daemon's admin socket is busy (up to [`CALL_TIMEOUT`]).
pub fn call(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match call_once(path, req, deadline) {
            Ok(resp) => return Ok(resp),
            Err(Try::Failed(e)) => return Err(e),
            Err(Try::Unanswered) if Instant::now() + RETRY_PAUSE < deadline => std::thread::sleep(RETRY_PAUSE),
            Err(Try::Unanswered) => return Err(ControlError::Busy { path: path.to_path_buf() }),
        }
    }
}

fn call_once(path: &Path, req: &Request, deadline: Instant) -> Result<Response, Try> {
    use std::io::{BufRead, ErrorKind, Write};
    let conn_err = |cause| Try::Failed(ControlError::Connect { path: path.to_path_buf(), cause });
    let proto_err = |detail: String| Try::Failed(ControlError::Protocol { path: path.to_path_buf(), detail });
    let unanswered = |e: &std::io::Error| matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset);
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(conn_err)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(conn_err)?;
    let mut line = serde_json::to_vec(req).expect("request serialises");
    line.push(b'\n');
    match s.write_all(&line) {
        Ok(()) => {}
        Err(e) if unanswered(&e) => return Err(Try::Unanswered),
        Err(e) => return Err(conn_err(e)),
    }
    let mut answer = String::new();
    match std::io::BufReader::new(s).read_line(&mut answer) {
        Ok(0) => return Err(Try::Unanswered),
        Ok(_) => {}
        Err(e) if unanswered(&e) => return Err(Try::Unanswered),
        Err(e) => return Err(proto_err(e.to_string())),
    }
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
        assert_eq!(serde_json::to_string(&Request::Pair { replace: None }).unwrap(), r#"{"cmd":"pair"}"#);
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

    /// With every slot held by an idle client, one more connection is closed
    /// at once (EOF before any answer), and `call` gets through once the idle
    /// ones have been cut off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_socket_closes_extra_connections_at_once_and_call_gets_through() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, tx, stop_rx));
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Response::from(Ok(AdminReply::Closed {})));
            }
        });
        let p = path.clone();
        let resp = tokio::task::spawn_blocking(move || {
            let idle: Vec<_> =
                (0..MAX_CONNECTIONS).map(|_| std::os::unix::net::UnixStream::connect(&p).unwrap()).collect();
            // Accepted in order, so this one finds every slot taken.
            let mut extra = std::os::unix::net::UnixStream::connect(&p).unwrap();
            extra.set_read_timeout(Some(REQUEST_TIMEOUT / 2)).unwrap();
            let mut buf = [0u8; 16];
            let n = extra.read(&mut buf).expect("closed at once, not left waiting until the request timeout");
            assert_eq!(n, 0, "an extra connection got bytes instead of EOF");
            let resp = call(&p, &Request::Status);
            drop(idle);
            resp
        })
        .await
        .unwrap();
        assert!(resp.unwrap().ok);
    }

    #[test]
    fn connect_error_says_what_to_check() {
        let e = call(Path::new("/nonexistent/robotd.sock"), &Request::Status).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/robotd.sock") && e.contains("systemctl status robotd"), "{e}");
    }
}
