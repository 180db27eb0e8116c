//! Supervision of the media helper (`robotd-media`, installed next to
//! robotd's binary; one per call, version 1 or 2): robotd spawns it with one
//! end of a Unix socket pair as its fd 0,
//! speaks [`crate::webrtc::ipc`] frames with it, and turns what it says into
//! [`MediaEvent`]s tagged with the call's session.
//!
//! The helper parses the internet's input (STUN, DTLS, RTCP, SRTP) in
//! GStreamer, so it runs in its own process (and robotd's own process does
//! not link GStreamer at all, which keeps it small), sandboxed by itself
//! (`webrtc::helper::sandbox`), and this side trusts nothing it says beyond
//! the frame limits: it dies, hangs (no heartbeat for
//! [`HEARTBEAT_TIMEOUT`]) or talks nonsense, and the call ends
//! `media_failed` with what happened; the motors never depend on it.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::media::MediaEvent;
use crate::webrtc::ipc::{self, FromHelper, ToHelper};
use crate::wire::identity::ClientId;

/// A helper that sent nothing (its heartbeat is every second) for this long
/// is taken for hung: it is killed and the call ends `media_failed`.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a helper told to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The helper of the current call.
pub struct Helper {
    pub session: ClientId,
    to_helper: mpsc::UnboundedSender<ToHelper>,
}

impl Helper {
    /// Spawn `robotd-media` for `session` and send it `start` (a version 2
    /// call's offer, or a version 1 call's destination and keys). Events
    /// (and the helper's end, whatever it is) arrive on `events`.
    ///
    /// Called from the main loop's thread: the helper's
    /// `PR_SET_PDEATHSIG` fires when the thread that spawned it ends, so it
    /// must not be a short-lived blocking-pool thread.
    pub fn spawn(
        session: ClientId,
        start: ToHelper,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<Helper, String> {
        let exe = helper_path()?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let child = tokio::process::Command::new(&exe)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the media helper {}: {e}", exe.display()))?;
        ours.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket: {e}"))?;
        let (rd, wr) = stream.into_split();
        let (to_helper, rx) = mpsc::unbounded_channel();
        let _ = to_helper.send(start);
        info!(session = %session, pid = child.id(), "media helper started");
        tokio::spawn(write_loop(wr, rx));
        tokio::spawn(read_loop(session.clone(), rd, child, events));
        Ok(Helper { session, to_helper })
    }

    /// Pass a message on (candidates); a helper that is gone drops it.
    pub fn send(&self, msg: ToHelper) {
        let _ = self.to_helper.send(msg);
    }

    /// Ask the helper to stop; it is killed if it has not exited after
    /// [`STOP_GRACE`] (the read loop waits for it).
    pub fn stop(self) {
        let _ = self.to_helper.send(ToHelper::Stop);
    }
}

/// The helper's file name, next to robotd's own binary.
pub const HELPER_NAME: &str = "robotd-media";

/// `robotd-media` next to robotd's own binary (`/usr/bin/robotd-media` as
/// packaged, `target/<profile>/robotd-media` in a build); an error naming
/// the path when it is not there.
pub fn helper_path() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find robotd's own binary: {e}"))?;
    let helper = exe.with_file_name(HELPER_NAME);
    match std::fs::metadata(&helper) {
        Ok(m) if m.is_file() => Ok(helper),
        Ok(_) => Err(format!("the media helper {} is not a file; reinstall robotd", helper.display())),
        Err(e) => Err(format!(
            "the media helper {} is missing ({e}): it is installed next to robotd (the package ships \
             /usr/bin/robotd-media; from source, `cargo build` builds it into the same directory)",
            helper.display()
        )),
    }
}

async fn write_loop(mut wr: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<ToHelper>) {
    while let Some(msg) = rx.recv().await {
        let stop = matches!(msg, ToHelper::Stop);
        let bytes = match ipc::encode(&msg) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "media helper message not sent");
                continue;
            }
        };
        if wr.write_all(&bytes).await.is_err() || stop {
            break;
        }
    }
    // Dropping the write half tells the helper to stop (EOF on its fd 0).
}

/// Read frames until the helper ends; then make sure it is gone and say how.
async fn read_loop(
    session: ClientId,
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut child: tokio::process::Child,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    let mut ended = false;
    let why = loop {
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, read_frame(&mut rd)).await {
            Err(_) => break Some(format!("media helper unresponsive (nothing for {} s)", HEARTBEAT_TIMEOUT.as_secs())),
            Ok(Ok(None)) => break None,
            Ok(Err(e)) => break Some(format!("media helper spoke nonsense: {e}")),
            // Liveness only.
            Ok(Ok(Some(FromHelper::Heartbeat))) => {}
            Ok(Ok(Some(msg))) => {
                if let FromHelper::State { ice } = &msg {
                    debug!(session = %session, %ice, "ICE state");
                }
                ended |= matches!(msg, FromHelper::Ended { .. });
                let _ = events.send(MediaEvent::Helper { session: session.clone(), msg });
            }
        }
    };
    let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            let _ = child.start_kill();
            match child.wait().await {
                Ok(s) => s,
                Err(e) => return report_gone(&events, session, ended, format!("media helper lost: {e}")),
            }
        }
    };
    let detail = match (why, describe(status)) {
        (Some(why), _) => why,
        (None, how) => how,
    };
    report_gone(&events, session, ended, detail);
}

fn report_gone(events: &mpsc::UnboundedSender<MediaEvent>, session: ClientId, ended: bool, detail: String) {
    info!(session = %session, %detail, "media helper gone");
    // After its own `Ended` the helper's exit is expected: nothing more to say.
    if !ended {
        let _ = events.send(MediaEvent::Failed { session, detail });
    }
}

/// "media helper killed by signal 9", "media helper exited with status 3".
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "media helper exited".into(),
        (Some(c), _) => format!("media helper exited with status {c}"),
        (None, Some(s)) => format!("media helper killed by signal {s}"),
        (None, None) => format!("media helper ended ({status})"),
    }
}

async fn read_frame(rd: &mut tokio::net::unix::OwnedReadHalf) -> Result<Option<FromHelper>, ipc::IpcError> {
    let mut header = [0u8; 4];
    match rd.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; ipc::frame_len(header)?];
    rd.read_exact(&mut body).await?;
    ipc::decode(&body).map(Some)
}
