//! Wires the tasks together and owns the ordered shutdown.
//!
//! One task (the link) owns the MQTT event loop; this module's main loop owns
//! all robot state and reacts to link events, admin requests, timers and the
//! shutdown signal. Shutdown order: motors, then video, then MQTT, so the
//! robot is physically safe before it says goodbye.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::identity::{self, ClientId};
use crate::link::{Link, LinkEvent};
use crate::protocol::Profile;

/// Tell systemd something, if we run under it (no-op otherwise).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, state);
}

/// The watchdog ping period requested by the unit (`WatchdogSec=`), halved.
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Create the state directory if it does not exist (systemd's
/// `StateDirectory=` normally does this); private to the robotd user.
pub fn ensure_state_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create robot.state_dir {}", dir.display()))?;
    }
    Ok(())
}

/// Run the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    ensure_state_dir(&cfg.robot.state_dir)?;
    let robot: ClientId = identity::load_or_create_robot_id(&cfg.robot.state_dir)?;
    info!(robot = %robot, "robot identity");

    let profile = Profile::robot(&cfg.robot.nickname, cfg.robot.photo.as_deref(), &cfg.robot.model).to_json();
    let link = Link::new(&cfg, robot.clone(), profile)?;
    let _handle = link.handle();
    let (events_tx, mut events) = mpsc::channel(256);
    let (link_stop_tx, link_stop_rx) = watch::channel(false);
    let link_task = tokio::spawn(link.run(events_tx, link_stop_rx));

    // Config loaded, hardware safe: ready (not gated on the broker, so a
    // robot without network still boots and keeps its motors stopped).
    notify(&[sd_notify::NotifyState::Ready]);
    let mut watchdog = watchdog_period().map(tokio::time::interval);

    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut shutdown) => break,
            ev = events.recv() => match ev {
                Some(LinkEvent::Connected) => info!("presence announced"),
                Some(LinkEvent::Disconnected) => warn!("broker connection lost"),
                Some(LinkEvent::Message(m)) => tracing::debug!(topic = %m.topic_str, "message"),
                None => break,
            },
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }

    info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = link_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), link_task).await;
    info!("stopped");
    Ok(())
}
