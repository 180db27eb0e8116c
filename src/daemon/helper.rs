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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
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
    /// Set by [`Helper::stop`]: the time by which the helper must be gone.
    stop_by: Arc<OnceLock<Instant>>,
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
        Self::spawn_exe(&helper_path()?, session, start, events)
    }

    /// [`Helper::spawn`], taking `spare`'s process when it is still there
    /// (a spare that has exited is dropped and a fresh helper started).
    pub fn spawn_or_take(
        spare: Option<Spare>,
        session: ClientId,
        start: ToHelper,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<Helper, String> {
        match spare.map(|mut s| (s.alive(), s)) {
            Some((true, s)) => Self::run(s.child, s.ours, session, start, events, true),
            Some((false, _)) => {
                info!("the spare media helper has gone; starting a fresh one");
                Self::spawn(session, start, events)
            }
            None => Self::spawn(session, start, events),
        }
    }

    fn spawn_exe(
        exe: &std::path::Path,
        session: ClientId,
        start: ToHelper,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<Helper, String> {
        let (child, ours) = start_process(exe, &[])?;
        Self::run(child, ours, session, start, events, false)
    }

    /// Send `start` and supervise the helper from now on.
    fn run(
        child: tokio::process::Child,
        ours: std::os::unix::net::UnixStream,
        session: ClientId,
        start: ToHelper,
        events: mpsc::UnboundedSender<MediaEvent>,
        spare: bool,
    ) -> Result<Helper, String> {
        let spawned = Instant::now();
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket: {e}"))?;
        let (rd, wr) = stream.into_split();
        let (to_helper, rx) = mpsc::unbounded_channel();
        let _ = to_helper.send(start);
        info!(session = %session, pid = child.id(), spare, "media helper started");
        let stop_by = Arc::new(OnceLock::new());
        tokio::spawn(write_loop(wr, rx));
        tokio::spawn(read_loop(session.clone(), rd, child, events, stop_by.clone(), spawned));
        Ok(Helper { session, to_helper, stop_by })
    }

    /// Pass a message on (candidates); a helper that is gone drops it.
    pub fn send(&self, msg: ToHelper) {
        let _ = self.to_helper.send(msg);
    }

    /// Ask the helper to stop; it is killed if it has not exited after
    /// [`STOP_GRACE`], even if it is still talking (heartbeats) then.
    pub fn stop(self) {
        let _ = self.stop_by.set(Instant::now() + STOP_GRACE);
        let _ = self.to_helper.send(ToHelper::Stop);
    }
}

/// A media helper started ahead of its call ([`crate::webrtc::helper::SPARE_ARG`]):
/// it loads GStreamer and its plugins and makes its DTLS certificate, and
/// waits on its control socket until [`Helper::spawn_or_take`] gives it a
/// call (which, if it comes during that warm-up, waits for the rest of it).
/// Nobody reads it until then (it sends nothing); dropping it kills it.
pub struct Spare {
    child: tokio::process::Child,
    ours: std::os::unix::net::UnixStream,
}

impl Spare {
    /// Start one. Called from the main loop's thread, as [`Helper::spawn`].
    pub fn spawn() -> Result<Spare, String> {
        let (child, ours) = start_process(&helper_path()?, &[crate::webrtc::helper::SPARE_ARG])?;
        info!(pid = child.id(), "spare media helper started");
        Ok(Spare { child, ours })
    }

    /// Whether it is still running (not exited, killed or crashed).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Start `exe args` with one end of a new socket pair as its fd 0; the other
/// end, blocking, is returned with the child.
fn start_process(
    exe: &std::path::Path,
    args: &[&str],
) -> Result<(tokio::process::Child, std::os::unix::net::UnixStream), String> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the media helper {}: {e}", exe.display()))?;
    ours.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
    Ok((child, ours))
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
    stop_by: Arc<OnceLock<Instant>>,
    spawned: Instant,
) {
    let mut ended = false;
    let mut overdue = false;
    let why = loop {
        // Told to stop, the helper has until `stop_by` to exit; it is seen
        // at the next frame at the latest (a heartbeat every second).
        let heartbeat_by = Instant::now() + HEARTBEAT_TIMEOUT;
        let by = stop_by.get().map_or(heartbeat_by, |&t| t.min(heartbeat_by));
        match tokio::time::timeout_at(by, read_frame(&mut rd)).await {
            Err(_) if stop_by.get().is_some_and(|&t| Instant::now() >= t) => {
                overdue = true;
                break Some(format!("media helper did not stop within {} s of being told to", STOP_GRACE.as_secs()));
            }
            Err(_) => break Some(format!("media helper unresponsive (nothing for {} s)", HEARTBEAT_TIMEOUT.as_secs())),
            Ok(Ok(None)) => break None,
            Ok(Err(e)) => break Some(format!("media helper spoke nonsense: {e}")),
            // Liveness only.
            Ok(Ok(Some(FromHelper::Heartbeat))) => {}
            Ok(Ok(Some(msg))) => {
                match &msg {
                    FromHelper::State { ice } => debug!(session = %session, %ice, "ICE state"),
                    // Where a call's set-up time goes (the helper logs its own steps).
                    FromHelper::Answer { .. } => info!(
                        session = %session,
                        since_spawn_ms = format!("{:.1}", spawned.elapsed().as_secs_f64() * 1e3),
                        "media helper answered"
                    ),
                    _ => {}
                }
                ended |= matches!(msg, FromHelper::Ended { .. });
                let _ = events.send(MediaEvent::Helper { session: session.clone(), msg });
            }
        }
    };
    // Past its stop deadline: no second grace period.
    let grace = if overdue { Duration::ZERO } else { STOP_GRACE };
    let status = match tokio::time::timeout(grace, child.wait()).await {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A helper that keeps its heartbeat going but ignores `Stop` (and the
    /// end of its input) is killed [`STOP_GRACE`] after being told to stop,
    /// with a detail that says so; it is not left running.
    #[tokio::test]
    async fn a_helper_that_heartbeats_but_ignores_stop_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hb"), ipc::encode(&FromHelper::Heartbeat).unwrap()).unwrap();
        let exe = dir.path().join("stubborn-helper");
        let script = format!("#!/bin/sh\nwhile :; do cat '{}' >&0; sleep 0.2; done\n", dir.path().join("hb").display());
        std::fs::write(&exe, script).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        let session = ClientId::from_bytes([7; 16]);
        let helper = Helper::spawn_exe(&exe, session.clone(), ToHelper::Stop, tx).unwrap();
        // Heartbeats only: nothing to report while it runs (well past the grace).
        let quiet = tokio::time::timeout(STOP_GRACE * 2, rx.recv()).await;
        assert!(quiet.is_err(), "a heartbeating helper was reported: {quiet:?}");

        let told = Instant::now();
        helper.stop();
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        let Ok(Some(MediaEvent::Failed { session: s, detail })) = event else {
            panic!("no report of the stubborn helper's end: {event:?}")
        };
        assert_eq!(s, session);
        assert!(detail.contains("did not stop within 2 s"), "{detail}");
        assert!(told.elapsed() >= STOP_GRACE, "killed before its grace: {:?}", told.elapsed());
    }
}
