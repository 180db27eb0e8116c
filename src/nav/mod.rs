//! Navigation: "go to the bedroom".
//!
//! - [`map`]: the `[nav]` config (places, edges of drive/turn steps), its
//!   validation, place poses, reverse edges and route planning (Dijkstra).
//! - [`exec`]: one goto as a pure state machine: legs, odometry, speed
//!   ramps, heading control, obstacle waits, progress.
//! - [`status`]: the `goto` status stream as the protocol spells it.
//! - [`Navigator`]: what the daemon holds: the map, the current place (kept
//!   durably in `{state_dir}/place.json`) and the goto in progress.
//!
//! Nothing here does MQTT, sleeps or reads a clock: time is an argument.
//!
//! # How the robot drives it
//! The robot's core ([`crate::robot`]) holds one [`Navigator`], made once at
//! start by [`Navigator::new`] from `[nav]`, the hardware configuration and
//! the state directory; the encoders and the obstacle sensor are opened once
//! beside it. Then:
//!
//! - A `goto` request calls [`Navigator::goto`]; every status it returns,
//!   `Ok` or `Err`, is published on `goto/response`.
//! - While [`Navigator::is_navigating`], [`Navigator::tick`] runs every
//!   [`TICK`] with the [`Sensors`] read just before, and the returned
//!   [`NavTick`] is applied at once: [`MotorCmd::Drive`] becomes a drive of
//!   [`DRIVE_MS`], [`MotorCmd::Stop`] a stop, and its statuses are
//!   published. When the motors refuse a drive (a latched e-stop), the goto
//!   ends with [`Navigator::fail`] (`estop`) and the motors stop.
//! - A `stop` request ends the goto with [`Navigator::cancel`]
//!   ([`CancelledBy::Stop`]); a moving `drive` request first calls
//!   [`Navigator::manual_drive`] (the robot then no longer knows its place);
//!   the end of the call and shutdown cancel it ([`CancelledBy::Hangup`],
//!   [`CancelledBy::Shutdown`]) while the call's topics still exist; losing
//!   the broker connection ends it with [`Navigator::fail`] (`link_lost`).
//!   Each time the motors stop.
//! - `ping` reports `navigating` while a goto runs and the place from
//!   [`Navigator::at_or_unknown`]; `destinations` lists
//!   [`Navigator::destinations`].
//!
//! An unreadable obstacle sensor counts as an obstacle. The drive commands
//! are short ([`DRIVE_MS`]), so if ticks stop (a stalled daemon, a lost
//! call) the deadman stops the robot within 200 ms.
//!
//! # Where the robot is
//! `at` is a place while the robot stands at it, and unknown otherwise.
//! It is written to `place.json` as unknown *before* a goto moves the robot
//! and as the destination on arrival, so a power cut mid-route leaves it
//! unknown, never wrong. A missing file means the robot is on its dock
//! (home): a new robot starts there. After an interrupted move (blocked,
//! cancelled, failed, or a manual `drive`) the robot is lost: `goto` is
//! rejected with `position_unknown` until someone puts it on a known place
//! (usually drives it back to the dock) and says so with
//! [`Navigator::set_at`] (the admin command `robotd at home`).

#![warn(missing_docs)]
pub mod exec;
pub mod map;
pub mod status;

#[cfg(test)]
mod sim_tests;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use exec::{DRIVE_MS, DriveParams, Goto, MOVING_EVERY, MotorCmd, OdometrySource, Outcome, TICK};
pub use map::{EdgeConfig, Map, NavConfig, NavConfigError, Pose, Route, Step, StepConfig, UNKNOWN};
pub use status::{CancelledBy, GotoState, Status};

use crate::hal::HardwareConfig;
use crate::state::{DirStore, StateFileError, StateStore};

/// The file under the state directory that remembers the current place.
pub const PLACE_FILE: &str = "place.json";

/// Why the navigator cannot start or change its place.
#[derive(Debug, thiserror::Error)]
pub enum NavError {
    /// `[nav]` is inconsistent; fix the key named in the message.
    #[error("invalid navigation map: {0}")]
    Config(#[from] NavConfigError),
    /// `place.json` cannot be read or written (see the message for the fix).
    #[error(transparent)]
    State(#[from] StateFileError),
    /// [`Navigator::set_at`] named a place the map does not have.
    #[error("{0:?} is not a place on the map; the places are {1}")]
    UnknownPlace(String, String),
    /// [`Navigator::set_at`] while a goto is in progress.
    #[error("the robot is navigating; stop it first")]
    Navigating,
}

/// What the navigator reads from the hardware each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sensors {
    /// Left and right encoder counts ([`crate::hal::Encoder::count`]), if
    /// encoders are configured.
    pub encoders: Option<[i64; 2]>,
    /// The obstacle input is active (or unreadable).
    pub obstacle: bool,
}

/// The result of [`Navigator::tick`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NavTick {
    /// What to do with the motors; `None` when the navigator is not driving.
    pub motor: Option<MotorCmd>,
    /// Statuses to publish on `goto/response`, in order.
    pub statuses: Vec<Status>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceFile {
    version: u32,
    /// `null` when the robot does not know where it is.
    at: Option<String>,
}

/// The map, where the robot is, and the goto in progress.
#[derive(Debug)]
pub struct Navigator {
    map: Map,
    params: DriveParams,
    ticks_per_metre: Option<f64>,
    store: Box<dyn StateStore>,
    at: Option<String>,
    goto: Option<Goto>,
    /// The last goto ended `blocked` and the robot has not moved since.
    blocked: bool,
}

impl Navigator {
    /// Validates the map and loads the current place from
    /// `{state_dir}/place.json` (missing: home).
    pub fn new(cfg: &NavConfig, hw: &HardwareConfig, state_dir: &Path) -> Result<Self, NavError> {
        Self::with_store(cfg, hw, Box::new(DirStore::new(state_dir)))
    }

    /// [`Navigator::new`] with the place kept in any state store.
    pub fn with_store(cfg: &NavConfig, hw: &HardwareConfig, store: Box<dyn StateStore>) -> Result<Self, NavError> {
        let map = Map::from_config(cfg)?;
        let path = store.path(PLACE_FILE);
        let at = match store.read(PLACE_FILE)? {
            None => Some(map.home().to_owned()),
            Some(bytes) => {
                let corrupt = |detail: String| StateFileError::Corrupt { path: path.clone(), detail };
                let f: PlaceFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if f.version != 1 {
                    return Err(corrupt(format!("version {} is not 1", f.version)).into());
                }
                match f.at {
                    Some(p) if !map.contains(&p) => {
                        tracing::warn!(place = %p, "the last place is no longer on the map; position unknown");
                        None
                    }
                    other => other,
                }
            }
        };
        Ok(Self {
            params: DriveParams::new(cfg, hw),
            ticks_per_metre: hw.encoders.as_ref().map(|e| e.ticks_per_metre),
            map,
            store,
            at,
            goto: None,
            blocked: false,
        })
    }

    /// The map.
    pub fn map(&self) -> &Map {
        &self.map
    }

    /// Every place (home first), for `destinations`.
    pub fn destinations(&self) -> &[String] {
        self.map.places()
    }

    /// The place the robot stands at; `None` while moving or lost.
    pub fn at(&self) -> Option<&str> {
        if self.is_navigating() { None } else { self.at.as_deref() }
    }

    /// [`at`](Self::at) with `"unknown"` for `None`.
    pub fn at_or_unknown(&self) -> &str {
        self.at().unwrap_or(UNKNOWN)
    }

    /// Whether a goto is in progress (tick every [`TICK`] while it is).
    pub fn is_navigating(&self) -> bool {
        self.goto.as_ref().is_some_and(|g| !g.is_done())
    }

    /// The goto in progress (for tests and diagnostics).
    pub fn current(&self) -> Option<&Goto> {
        self.goto.as_ref().filter(|g| !g.is_done())
    }

    fn persist(&mut self, at: Option<&str>) -> Result<(), StateFileError> {
        let body = PlaceFile { version: 1, at: at.map(str::to_owned) };
        let json = serde_json::to_vec_pretty(&body).expect("place file serialises");
        self.store.write(PLACE_FILE, &json, 0o644)
    }

    /// Forgets the place (durably) if one was known; a failed write is
    /// logged: the file then still names the old place, which the next
    /// successful write corrects.
    fn lose_place(&mut self) {
        if self.at.take().is_some() {
            if let Err(e) = self.persist(None) {
                tracing::error!(error = %e, "cannot record that the robot left its place");
            }
        }
    }

    fn rejected(dest: &str, reason: &str, detail: String) -> Status {
        Status::new(dest, GotoState::Rejected { reason: reason.into(), detail })
    }

    /// Starts (or redirects to) a goto. `Ok` holds the statuses to publish
    /// now (`accepted`, preceded by the old goal's `cancelled` on a
    /// redirect; followed by `arrived` when the robot is already there);
    /// `Err` holds the one `rejected` status.
    pub fn goto(&mut self, destination: &str, now: Instant) -> Result<Vec<Status>, Status> {
        if !self.map.contains(destination) {
            let detail = format!("{destination:?} is not on the map; the places are {}", self.map.places().join(", "));
            return Err(Self::rejected(destination, "unknown_destination", detail));
        }
        if let Some(g) = self.goto.as_mut().filter(|g| !g.is_done()) {
            if g.destination() == destination {
                return Ok(vec![g.accepted()]);
            }
            let from = g.next_place().to_owned();
            let route = self.map.route(&from, destination).expect("places on a validated map are connected");
            return Ok(g.redirect(destination, &route, now));
        }
        let Some(from) = self.at.clone() else {
            let detail = "the robot does not know where it is (an earlier move was interrupted); put it on its \
                          dock and run `robotd at home`"
                .to_string();
            return Err(Self::rejected(destination, "position_unknown", detail));
        };
        let route = self.map.route(&from, destination).expect("places on a validated map are connected");
        let goto = Goto::new(destination, &route, self.params, now);
        let accepted = goto.accepted();
        if route.segments.is_empty() {
            let done = |state| Status::new(destination, state);
            let moving = GotoState::Moving { progress: 1.0, remaining_m: 0.0, waiting: None };
            return Ok(vec![accepted, done(moving), done(GotoState::Arrived)]);
        }
        // Unknown on disk before the first wheel turns: a power cut mid-route
        // must not leave the robot believing it is still at `from`.
        if let Err(e) = self.persist(None) {
            tracing::error!(error = %e, "cannot record the departure; goto refused");
            return Err(Self::rejected(destination, "internal_error", format!("cannot record the departure: {e}")));
        }
        self.at = None;
        self.goto = Some(goto);
        self.blocked = false;
        Ok(vec![accepted])
    }

    /// Advances the goto in progress. Call every [`TICK`] while
    /// [`is_navigating`](Self::is_navigating), and apply `motor` at once.
    pub fn tick(&mut self, now: Instant, sensors: &Sensors) -> NavTick {
        let Some(g) = self.goto.as_mut().filter(|g| !g.is_done()) else {
            return NavTick::default();
        };
        let odometry = match (sensors.encoders, self.ticks_per_metre) {
            (Some([l, r]), Some(tpm)) => Some([l as f64 / tpm, r as f64 / tpm]),
            _ => None,
        };
        let u = g.update(now, odometry, sensors.obstacle);
        if let Some(outcome) = &u.outcome {
            tracing::info!(destination = g.destination(), ?outcome, "goto finished");
            if *outcome == Outcome::Arrived {
                let place = g.destination().to_owned();
                if let Err(e) = self.persist(Some(&place)) {
                    // Unknown on disk is the safe side; only a restart loses the place.
                    tracing::error!(error = %e, "cannot record the arrival");
                }
                self.at = Some(place);
            }
            self.blocked = *outcome == Outcome::Blocked;
            self.goto = None;
        }
        NavTick { motor: u.motor, statuses: u.statuses }
    }

    /// Ends the goto in progress (`stop`, hangup, shutdown): returns its
    /// `cancelled` status, or nothing when idle. The robot is then lost.
    /// The caller stops the motors.
    pub fn cancel(&mut self, _now: Instant, by: CancelledBy) -> Vec<Status> {
        match self.goto.take().filter(|g| !g.is_done()) {
            Some(mut g) => vec![g.cancel(by)],
            None => Vec::new(),
        }
    }

    /// Ends the goto in progress as `failed` (e.g. `estop` when the motors
    /// refuse a drive). The caller stops the motors.
    pub fn fail(&mut self, _now: Instant, reason: &str, detail: &str) -> Vec<Status> {
        match self.goto.take().filter(|g| !g.is_done()) {
            Some(mut g) => vec![g.fail(reason, detail)],
            None => Vec::new(),
        }
    }

    /// A manual `drive` (with any non-zero speed) is about to move the
    /// robot: cancels a goto in progress and forgets the place.
    pub fn manual_drive(&mut self, now: Instant) -> Vec<Status> {
        let s = self.cancel(now, CancelledBy::Drive);
        self.lose_place();
        self.blocked = false;
        s
    }

    /// Someone put the robot on `place` facing its canonical heading
    /// (usually: drove it onto its dock). Recorded durably.
    pub fn set_at(&mut self, place: &str) -> Result<(), NavError> {
        if self.is_navigating() {
            return Err(NavError::Navigating);
        }
        if !self.map.contains(place) {
            return Err(NavError::UnknownPlace(place.into(), self.map.places().join(", ")));
        }
        self.persist(Some(place))?;
        self.at = Some(place.to_owned());
        self.blocked = false;
        Ok(())
    }

    /// Whether the last goto ended `blocked` and nothing has moved the
    /// robot since (what the simulated camera's overlay says).
    pub fn stopped_blocked(&self) -> bool {
        self.blocked && !self.is_navigating()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat() -> NavConfig {
        toml::from_str(testdata::FLAT).unwrap()
    }

    #[test]
    fn departure_that_cannot_be_recorded_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("no-such-dir");
        let mut nav = Navigator::new(&flat(), &HardwareConfig::default(), &gone).unwrap();
        assert_eq!(nav.at(), Some("home"), "no file: on the dock");
        let r = nav.goto("kitchen", Instant::now()).unwrap_err();
        assert!(matches!(&r.state, GotoState::Rejected { reason, .. } if reason == "internal_error"), "{r:?}");
        assert!(!nav.is_navigating());
        assert_eq!(nav.at(), Some("home"));
    }

    #[test]
    fn place_file_is_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let hw = HardwareConfig::default();
        let path = dir.path().join(PLACE_FILE);
        std::fs::write(&path, b"{\"version\":1,\"at\":\"kitchen\"}").unwrap();
        assert_eq!(Navigator::new(&flat(), &hw, dir.path()).unwrap().at(), Some("kitchen"));
        std::fs::write(&path, b"{\"version\":1,\"at\":\"attic\"}").unwrap();
        assert_eq!(Navigator::new(&flat(), &hw, dir.path()).unwrap().at(), None, "no longer on the map");
        std::fs::write(&path, b"{\"version\":1,\"at\":null}").unwrap();
        assert_eq!(Navigator::new(&flat(), &hw, dir.path()).unwrap().at_or_unknown(), "unknown");
        std::fs::write(&path, b"kitchen").unwrap();
        let e = Navigator::new(&flat(), &hw, dir.path()).unwrap_err();
        assert!(e.to_string().contains("place.json") && e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn a_bad_map_is_refused_naming_the_key() {
        let mut cfg = flat();
        cfg.edges[1].to = "kitchn".into();
        let dir = tempfile::tempdir().unwrap();
        let e = Navigator::new(&cfg, &HardwareConfig::default(), dir.path()).unwrap_err();
        assert!(e.to_string().contains("nav.edges[1].to: unknown place \"kitchn\""), "{e}");
    }
}

/// Test data shared by the nav tests.
#[cfg(test)]
pub(crate) mod testdata {
    /// The example flat (the `[nav]` of `config/flat.toml` without its comments):
    /// home -> hall (2 m, then face left), hall -> kitchen (1.5 m on),
    /// hall -> bedroom (face right again, 2 m).
    pub const FLAT: &str = r#"
        places = ["hall", "kitchen", "bedroom"]
        [[edges]]
        from = "home"
        to = "hall"
        steps = [{ drive_m = 2.0 }, { turn_deg = 90 }]
        [[edges]]
        from = "hall"
        to = "kitchen"
        steps = [{ drive_m = 1.5 }]
        [[edges]]
        from = "hall"
        to = "bedroom"
        steps = [{ turn_deg = -90 }, { drive_m = 2.0 }]
    "#;
}
