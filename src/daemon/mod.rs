//! Wires the tasks together and owns the ordered shutdown.
//!
//! One task (the link) owns the MQTT event loop; this module's main loop owns
//! all robot state and reacts to link events, admin requests, timers and the
//! shutdown signal. Shutdown order: motors, then video, then MQTT, so the
//! robot is physically safe before it says goodbye.

pub mod control;
mod helper;
/// The media helper binary's name (next to robotd's own).
pub use helper::HELPER_NAME;
pub mod instance;
pub mod link;
pub mod logging;
pub mod media;
pub mod shutdown;
mod time;
pub mod twin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::daemon::link::{Link, LinkHandle};
use crate::daemon::media::Media;
use crate::hal::Hardware;
use crate::motion::MotorController;
use crate::robot::admin::LinkInfo;
use crate::robot::{Body, Core, Effect, MediaReport, Now};
use crate::state::DirStore;
use crate::wire::Profile;
use crate::wire::identity::{self, ClientId};

/// Tell systemd something, if we run under it (no-op otherwise).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, state);
}

/// The watchdog ping period requested by the unit (`WatchdogSec=`), halved.
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// **Test mode, off by default**: with this environment variable set to a
/// number of milliseconds, the main loop stalls (blocks its thread forever)
/// that long after start; set to `usr1`, it stalls when robotd receives
/// SIGUSR1. Tests use it to show that the systemd watchdog pings stop and
/// systemd would kill the daemon, and that the motor-side deadman stops a
/// drive the stalled loop cannot (tests/reliability_process.rs). The stall
/// is logged with the `CLOCK_MONOTONIC` time it began (`mono_ns`). Nothing
/// else reads it; without it robotd never stalls on purpose.
pub const TEST_STALL_ENV: &str = "ROBOTD_TEST_STALL_MAIN_LOOP_AFTER_MS";

/// What makes the main loop stall in the test mode above.
enum TestStall {
    At(std::time::Instant),
    OnSignal(tokio::signal::unix::Signal),
}

/// The test mode above, if it is on.
fn test_stall() -> Option<TestStall> {
    let value = std::env::var(TEST_STALL_ENV).ok()?;
    if value == "usr1" {
        tracing::warn!(env = TEST_STALL_ENV, "TEST MODE: the main loop will stall on purpose at SIGUSR1");
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok()?;
        return Some(TestStall::OnSignal(signal));
    }
    let ms: u64 = value.parse().ok()?;
    tracing::warn!(env = TEST_STALL_ENV, ms, "TEST MODE: the main loop will stall on purpose");
    Some(TestStall::At(std::time::Instant::now() + Duration::from_millis(ms)))
}

/// Resolves when the test mode wants the stall; never without it.
async fn test_stall_due(stall: &mut Option<TestStall>) {
    match stall {
        Some(TestStall::At(t)) => tokio::time::sleep_until((*t).into()).await,
        Some(TestStall::OnSignal(s)) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of the sim's `pin_events`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The process exit for a binary's result: errors are printed with their
/// causes (`error: ...: ...`, anyhow's alternate form) and exit with status 1.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The state directory could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// It did not exist and could not be created: check `robot.state_dir`
    /// and its parent's permissions (systemd's `StateDirectory=` makes it).
    #[error("cannot create robot.state_dir {}: {cause}", dir.display())]
    Create { dir: PathBuf, cause: std::io::Error },
    /// It exists but cannot be inspected, or is not a directory.
    #[error("robot.state_dir {} is unusable: {cause}", dir.display())]
    Unusable { dir: PathBuf, cause: std::io::Error },
    /// It is open to other users (the robot ID, owner keys and the pairing QR
    /// code live there) and robotd, not being its owner, cannot close it.
    #[error(
        "robot.state_dir {} has mode {mode:04o}, open to other users, and robotd cannot make it 0700: {cause}; \
         run `chmod 0700 {}` (as its owner or root)",
        dir.display(),
        dir.display()
    )]
    Loose { dir: PathBuf, mode: u32, cause: std::io::Error },
}

/// Make the state directory exist and be private to the robotd user (mode
/// 0700). It is created 0700 when missing; an existing one with a looser mode
/// (0755 would leave `robot-id` readable by every local user) is chmod'ed to
/// 0700 with a warning, or refused when that is not allowed.
pub fn ensure_state_dir(dir: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|cause| StateDirError::Create { dir: dir.to_path_buf(), cause })?;
    }
    let unusable = |cause| StateDirError::Unusable { dir: dir.to_path_buf(), cause };
    let meta = std::fs::metadata(dir).map_err(unusable)?;
    if !meta.is_dir() {
        return Err(unusable(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|cause| StateDirError::Loose { dir: dir.to_path_buf(), mode, cause })?;
        tracing::warn!(dir = %dir.display(), old_mode = %format!("{mode:04o}"), "robot.state_dir was open to other users; made it 0700");
    }
    Ok(())
}

/// Why the daemon could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `robot.state_dir` cannot be made ready (created, or made private).
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// Another robotd runs on this state directory, or its lock cannot be taken.
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    /// The robot ID or MQTT client identifier file cannot be read or written.
    #[error(transparent)]
    Identity(#[from] crate::state::StateFileError),
    /// The pins or the simulator cannot be opened.
    #[error(transparent)]
    Hal(#[from] crate::hal::HalError),
    /// The motor drivers cannot be set up.
    #[error(transparent)]
    Motion(#[from] crate::motion::MotionError),
    /// The core cannot start (owners file, sensors, map).
    #[error(transparent)]
    Core(#[from] crate::robot::CoreError),
    /// The MQTT link cannot be set up (TLS or password files).
    #[error(transparent)]
    Link(#[from] link::LinkError),
    /// The admin socket cannot be created.
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// The time now, as the core takes it.
fn now() -> Now {
    Now { mono: std::time::Instant::now(), wall_ms: crate::wire::props::now_ms() }
}

/// What the shell owns besides the core: the link and the media.
struct Shell {
    link: LinkHandle,
    media: Media,
    broker_url: String,
    webrtc: crate::config::webrtc::WebRtcConfig,
}

impl Shell {
    /// Carry out the core's effects, in order.
    fn execute(&mut self, core: &mut Core, effects: Vec<Effect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Publish { topic, payload, props } => self.link.publish(topic, payload, false, Some(props)),
                Effect::Subscribe(filter) => self.link.subscribe(filter),
                Effect::Unsubscribe(filter) => self.link.unsubscribe(&filter),
                Effect::SessionGate(gate) => self.link.set_session_gate(gate),
                Effect::StartMedia(req) => self.media.start(req),
                Effect::StartWebRtc(req) => match self.ice_servers() {
                    Ok(ice) => self.media.start_webrtc(req, ice),
                    Err(e) => {
                        let report = MediaReport::Failed { session: req.session, detail: e.to_string() };
                        queue.extend(core.on_media(report, now()));
                    }
                },
                Effect::RemoteCandidates { session, candidates, end } => {
                    self.media.remote_candidates(&session, candidates, end)
                }
                Effect::StopMedia => self.media.stop(),
                Effect::AdjustVideo { session, change, answer } => {
                    let report = self.media.adjust(session, change, answer);
                    queue.extend(core.on_media(report, now()));
                }
            }
        }
    }

    /// This call's STUN/TURN servers: TURN credentials are made now from
    /// the secret on disk; the helper only gets the result.
    fn ice_servers(&self) -> Result<crate::webrtc::IceConfig, crate::config::webrtc::TurnCredentialError> {
        let unix_s = crate::wire::props::now_ms() / 1000;
        let s = self.webrtc.ice_servers(self.link.robot().as_str(), unix_s)?;
        Ok(crate::webrtc::IceConfig { stun: s.stun, turn: s.turn, relay_only: s.relay_only })
    }

    fn link_info(&self) -> LinkInfo {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.link.stats();
        LinkInfo {
            url: self.broker_url.clone(),
            connected: self.link.is_connected(),
            connects: st.connects.load(Relaxed),
            dropped_topic: st.dropped_topic.load(Relaxed),
            dropped_size: st.dropped_size.load(Relaxed),
            dropped_backlog: st.dropped_backlog.load(Relaxed),
            taken_over: st.taken_over.load(Relaxed),
            last_takeover_ms: Some(st.last_takeover_ms.load(Relaxed)).filter(|&ms| ms != 0),
        }
    }
}

/// Run the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, mut shutdown: shutdown::Signal) -> Result<(), DaemonError> {
    ensure_state_dir(&cfg.robot.state_dir)?;
    // One robotd per robot: before the hardware, the admin socket or the
    // broker, so a second one cannot stop our motors, take our socket or
    // fight over our client ID. Held until this function returns.
    let instance = instance::InstanceLock::acquire(&cfg.robot.state_dir)?;
    let robot: ClientId = identity::load_or_create_robot_id(&cfg.robot.state_dir)?;
    // Private, unlike the robot ID in every topic: knowing the robot ID is
    // not enough to make the broker drop the robot (protocol 2.1).
    let client_id = identity::load_or_create_mqtt_client_id(&cfg.robot.state_dir)?;
    // Counts starts on this directory, so that a twin on a copy of it can be
    // told from this robotd's own earlier run (daemon::twin).
    let generation = twin::next_generation(&cfg.robot.state_dir)?;
    info!(robot = %robot, lock = %instance.path().display(), "robot identity");

    let profile = Profile::robot(&cfg.robot.nickname, cfg.robot.photo.as_deref(), &cfg.robot.model).to_json();
    // Hardware first: motors are stopped when their drivers are created.
    let mut hw = Hardware::open(&cfg.hardware)?;
    let motors = MotorController::from_config(&mut hw)?;
    info!(backend = ?cfg.hardware.backend, "hardware ready, motors stopped");
    // Keeps the simulated world stepping in real time (sim backend only).
    let _sim = hw.sim().map(|s| s.run_realtime());
    let sim = hw.sim().cloned();
    let store = DirStore::new(&cfg.robot.state_dir);
    // Stale temporary files of an interrupted owners write may hold keys.
    crate::state::owners::remove_stale_temp_files(&cfg.robot.state_dir);
    let body = Body::open(&cfg, hw, motors, Box::new(store.clone()))?;
    let rng = Box::new(<rand::rngs::StdRng as rand::SeedableRng>::from_os_rng());
    let mut core = Core::new(cfg.clone(), robot.clone(), body, Box::new(store), rng, now())?;

    let (media_tx, mut media_events) = mpsc::unbounded_channel();
    let link = Link::new(&cfg, robot, &client_id, generation, profile)?;
    let mut shell = Shell {
        link: link.handle(),
        media: Media::new(cfg.video.clone(), cfg.audio.clone(), media_tx).with_sim(sim.clone()),
        broker_url: cfg.mqtt.url.clone(),
        webrtc: cfg.webrtc.clone(),
    };
    // The first call's helper, started now (`[video] prestart_helper`).
    shell.media.prepare_spare();
    let first = core.take_effects();
    shell.execute(&mut core, first);

    let (link_stop, link_stop_rx) = shutdown::channel();
    let (events_tx, mut events) = mpsc::channel(256);
    // The current call's authenticated requests have a queue of their own,
    // served first, so a flood of forged messages cannot crowd them out.
    let (priority_tx, mut priority) = mpsc::channel(256);
    let link_task = tokio::spawn(link.run(events_tx, priority_tx, link_stop_rx));

    let (admin_tx, mut admin) = mpsc::channel(16);
    let listener = control::bind(&cfg.control.socket)?;
    let control_task = tokio::spawn(control::serve(listener, admin_tx, shutdown.clone()));

    // Config loaded, hardware safe: ready (not gated on the broker, so a
    // robot without network still boots and keeps its motors stopped).
    notify(&[sd_notify::NotifyState::Ready]);
    let mut watchdog = watchdog_period().map(tokio::time::interval);
    let mut stall = test_stall();
    // The simulated camera follows the robot (only with a sim to follow).
    let mut pose_tick = sim.as_ref().map(|_| {
        let mut t = tokio::time::interval(media::POSE_PERIOD);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    });

    loop {
        // The call's own requests first, whatever else is queued.
        while let Ok(ev) = priority.try_recv() {
            let fx = core.on_link(ev, now());
            shell.execute(&mut core, fx);
        }
        let wakeup = core.next_wakeup(now());
        let fx = tokio::select! {
            _ = shutdown::stopped(&mut shutdown) => break,
            _ = time::sleep_until_opt(wakeup) => core.on_timer(now()),
            Some(ev) = priority.recv() => core.on_link(ev, now()),
            Some(ev) = media_events.recv() => match shell.media.on_event(ev) {
                Some(report) => core.on_media(report, now()),
                None => Vec::new(),
            },
            ev = events.recv() => match ev {
                Some(ev) => core.on_link(ev, now()),
                None => break,
            },
            Some((req, reply)) = admin.recv() => {
                let (mut answer, fx) = core.on_admin(req, &shell.link_info(), now());
                if let Ok(crate::robot::admin::AdminReply::Status(s)) = &mut answer {
                    s.media = shell.media.status();
                }
                let _ = reply.send(control::Response::from(answer));
                fx
            }
            // Pinged from this loop, not a side timer, so a stuck loop is caught.
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                Vec::new()
            }
            _ = async { pose_tick.as_mut().unwrap().tick().await }, if pose_tick.is_some() && shell.media.wants_pose() => {
                let blocked = core.body().nav.as_ref().is_some_and(crate::nav::Navigator::stopped_blocked);
                shell.media.send_pose(blocked);
                Vec::new()
            }
            _ = test_stall_due(&mut stall) => {
                tracing::error!(env = TEST_STALL_ENV, mono_ns = monotonic_ns(), "TEST MODE: main loop stalled on purpose");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        };
        shell.execute(&mut core, fx);
    }

    info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    let fx = core.shutdown(now());
    shell.execute(&mut core, fx);
    shell.media.stop_and_wait().await;
    let _ = link_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), link_task).await;
    let _ = control_task.await;
    let _ = std::fs::remove_file(&cfg.control.socket);
    info!("stopped");
    drop(instance);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_private_and_a_loose_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/state");
        ensure_state_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        for loose in [0o755, 0o750, 0o701, 0o1777] {
            std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(loose)).unwrap();
            ensure_state_dir(&fresh).unwrap();
            assert_eq!(mode(&fresh), 0o700, "from {loose:o}");
        }
        // Stricter than 0700 is left alone.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o500)).unwrap();
        ensure_state_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o500);
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = ensure_state_dir(&file).unwrap_err().to_string();
        assert!(e.contains("robot.state_dir") && e.contains("not a directory"), "{e}");
    }
}
