//! Wires the tasks together and owns the ordered shutdown.
//!
//! One task (the link) owns the MQTT event loop; this module's main loop owns
//! all robot state and reacts to link events, admin requests, timers and the
//! shutdown signal. Shutdown order: motors, then video, then MQTT, so the
//! robot is physically safe before it says goodbye.

pub mod control;
pub mod link;
pub mod logging;
pub mod media;
pub mod shutdown;
mod time;

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::daemon::link::{Link, LinkHandle};
use crate::daemon::media::Media;
use crate::hal::Hardware;
use crate::motion::MotorController;
use crate::robot::admin::LinkInfo;
use crate::robot::{Body, Core, Effect, Now};
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
/// that long after start, so tests can show that the systemd watchdog pings
/// stop and systemd would kill the daemon (tests/reliability_process.rs).
/// Nothing else reads it; without it robotd never stalls on purpose.
pub const TEST_STALL_ENV: &str = "ROBOTD_TEST_STALL_MAIN_LOOP_AFTER_MS";

/// When the test mode above asks the main loop to stall, if it does.
fn test_stall_at() -> Option<std::time::Instant> {
    let ms: u64 = std::env::var(TEST_STALL_ENV).ok()?.parse().ok()?;
    tracing::warn!(env = TEST_STALL_ENV, ms, "TEST MODE: the main loop will stall on purpose");
    Some(std::time::Instant::now() + Duration::from_millis(ms))
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

/// Create the state directory if it does not exist (systemd's
/// `StateDirectory=` normally does this); private to the robotd user.
pub fn ensure_state_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|cause| DaemonError::StateDir { path: dir.to_path_buf(), cause })?;
    }
    Ok(())
}

/// Why the daemon could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `robot.state_dir` cannot be created: check the path and its parent's
    /// permissions (systemd's `StateDirectory=robotd` makes /var/lib/robotd).
    #[error("cannot create robot.state_dir {path}: {cause}")]
    StateDir { path: std::path::PathBuf, cause: std::io::Error },
    /// The robot ID file cannot be read or written.
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
                Effect::StopMedia => self.media.stop(),
                Effect::AdjustVideo { session, change, answer } => {
                    let report = self.media.adjust(session, change, answer);
                    queue.extend(core.on_media(report, now()));
                }
            }
        }
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
        }
    }
}

/// Run the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, mut shutdown: shutdown::Signal) -> Result<(), DaemonError> {
    ensure_state_dir(&cfg.robot.state_dir)?;
    let robot: ClientId = identity::load_or_create_robot_id(&cfg.robot.state_dir)?;
    info!(robot = %robot, "robot identity");

    let profile = Profile::robot(&cfg.robot.nickname, cfg.robot.photo.as_deref(), &cfg.robot.model).to_json();
    // Hardware first: motors are stopped when their drivers are created.
    let mut hw = Hardware::open(&cfg.hardware)?;
    let motors = MotorController::from_config(&mut hw)?;
    info!(backend = ?cfg.hardware.backend, "hardware ready, motors stopped");
    // Keeps the simulated world stepping in real time (sim backend only).
    let _sim = hw.sim().map(|s| s.run_realtime());
    let store = DirStore::new(&cfg.robot.state_dir);
    // Stale temporary files of an interrupted owners write may hold keys.
    crate::state::owners::remove_stale_temp_files(&cfg.robot.state_dir);
    let body = Body::open(&cfg, hw, motors, Box::new(store.clone()))?;
    let rng = Box::new(<rand::rngs::StdRng as rand::SeedableRng>::from_os_rng());
    let mut core = Core::new(cfg.clone(), robot.clone(), body, Box::new(store), rng, now())?;

    let (media_tx, mut media_events) = mpsc::unbounded_channel();
    let link = Link::new(&cfg, robot, profile)?;
    let mut shell = Shell {
        link: link.handle(),
        media: Media::new(cfg.video.clone(), cfg.audio.clone(), media_tx),
        broker_url: cfg.mqtt.url.clone(),
    };
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
    let stall_at = test_stall_at();

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
                let (answer, fx) = core.on_admin(req, &shell.link_info(), now());
                let _ = reply.send(control::Response::from(answer));
                fx
            }
            // Pinged from this loop, not a side timer, so a stuck loop is caught.
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                Vec::new()
            }
            _ = time::sleep_until_opt(stall_at), if stall_at.is_some() => {
                tracing::error!(env = TEST_STALL_ENV, "TEST MODE: main loop stalled on purpose");
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
    Ok(())
}
