//! The navigator driving the simulated robot: the real motor controller on
//! simulated pins, the physics world stepped every 5 ms, the navigator
//! ticked every 50 ms exactly as the daemon does it.

use std::time::{Duration, Instant};

use super::*;
use crate::hal::sim::Sim;
use crate::hal::{
    BinarySensor, Encoder, EncoderCounter, EncodersConfig, Hardware, InputConfig, Level, Obstacle, ObstacleSensor,
    Pull, UltrasonicConfig,
};
use crate::motion::{DriveCommand, MotorController};

const STEP: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, PartialEq)]
enum Enc {
    /// Quadrature: signed counts.
    Signed,
    /// Channel A only: counts only go up.
    Unsigned,
    /// No encoders: dead reckoning.
    None,
}

/// The shut bedroom door: across the hall -> bedroom corridor at x = 3 m.
fn door() -> Obstacle {
    Obstacle::Box { min: [3.0, -0.6], max: [3.05, 0.6] }
}

fn hardware(enc: Enc, obstacles: Vec<Obstacle>) -> HardwareConfig {
    let mut hw = HardwareConfig {
        encoders: match enc {
            Enc::None => None,
            e => Some(EncodersConfig {
                left_pin: 5,
                right_pin: 6,
                left_b_pin: (e == Enc::Signed).then_some(7),
                right_b_pin: (e == Enc::Signed).then_some(8),
                ticks_per_metre: 2000.0,
            }),
        },
        obstacle: Some(InputConfig { pin: 4, active: Level::Low, pull: Pull::Up }),
        ..HardwareConfig::default()
    };
    hw.sim.obstacles = obstacles;
    hw
}

/// The same robot with an HC-SR04 instead of the IR sensor.
fn ultrasonic_only(enc: Enc, obstacles: Vec<Obstacle>) -> HardwareConfig {
    HardwareConfig { obstacle: None, ultrasonic: Some(UltrasonicConfig::new(20, 21)), ..hardware(enc, obstacles) }
}

struct Rig {
    dir: tempfile::TempDir,
    hw_cfg: HardwareConfig,
    nav_cfg: NavConfig,
    sim: Sim,
    motors: MotorController,
    encoders: Option<(EncoderCounter, EncoderCounter)>,
    obstacle: Option<ObstacleSensor>,
    nav: Navigator,
    now: Instant,
    /// Every status with the simulated time it was published at.
    log: Vec<(f64, Status)>,
}

impl Rig {
    fn new(enc: Enc, obstacles: Vec<Obstacle>) -> Rig {
        Rig::with(hardware(enc, obstacles), toml::from_str(testdata::FLAT).unwrap())
    }

    /// The robot and map of `config/flat.toml`, the demo configuration.
    fn demo_flat() -> Rig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flat.toml");
        let cfg = crate::config::Config::load(&path).unwrap();
        Rig::with(cfg.hardware, cfg.nav.unwrap())
    }

    fn with(hw_cfg: HardwareConfig, nav_cfg: NavConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut hw = Hardware::open(&hw_cfg).unwrap();
        let sim = hw.sim().unwrap().clone();
        let motors = MotorController::from_config(&mut hw).unwrap();
        let encoders = hw.encoders().unwrap();
        let obstacle = hw.obstacle_sensor().unwrap();
        let nav = Navigator::new(&nav_cfg, &hw_cfg, dir.path()).unwrap();
        Rig { dir, hw_cfg, nav_cfg, sim, motors, encoders, obstacle, nav, now: Instant::now(), log: Vec::new() }
    }

    /// The navigator believes the robot is `factor` times as fast as it is
    /// (a badly calibrated `hardware.max_speed_mps`).
    fn miscalibrated(mut self, factor: f64) -> Rig {
        let mut believed = self.hw_cfg.clone();
        believed.max_speed_mps *= factor;
        self.nav = Navigator::new(&self.nav_cfg, &believed, self.dir.path()).unwrap();
        self
    }

    fn t(&self) -> f64 {
        self.sim.snapshot().time_s
    }

    fn record(&mut self, statuses: Vec<Status>) {
        let t = self.t();
        self.log.extend(statuses.into_iter().map(|s| (t, s)));
    }

    fn goto(&mut self, dest: &str) -> Result<Vec<Status>, Status> {
        let r = self.nav.goto(dest, self.now);
        let statuses = match &r {
            Ok(s) => s.clone(),
            Err(s) => vec![s.clone()],
        };
        self.record(statuses);
        r
    }

    fn cancel(&mut self, by: CancelledBy) -> Vec<Status> {
        let s = self.nav.cancel(self.now, by);
        self.motors.stop().unwrap();
        self.record(s.clone());
        s
    }

    /// One navigator period: read the sensors, tick, apply, then let 50 ms of the world pass.
    fn period(&mut self) {
        if self.nav.is_navigating() {
            let sensors = Sensors {
                encoders: self.encoders.as_ref().map(|(l, r)| [l.count(), r.count()]),
                obstacle: self.obstacle.as_mut().is_some_and(|s| s.is_active().unwrap_or(true)),
            };
            let t = self.nav.tick(self.now, &sensors);
            match t.motor {
                Some(MotorCmd::Drive { linear, angular }) => {
                    self.motors.drive(DriveCommand { linear, angular, ms: DRIVE_MS }, self.now).unwrap();
                }
                Some(MotorCmd::Stop) => self.motors.stop().unwrap(),
                None => {}
            }
            self.record(t.statuses);
        }
        for _ in 0..(TICK.as_millis() / STEP.as_millis()) {
            self.motors.poll(self.now).unwrap();
            self.sim.step(STEP);
            self.now += STEP;
        }
    }

    fn run_for(&mut self, secs: f64) {
        let end = self.t() + secs;
        while self.t() < end {
            self.period();
        }
    }

    /// Runs until the goto stream ends; returns the final status.
    fn run_to_end(&mut self, max_s: f64) -> Status {
        let end = self.t() + max_s;
        while self.t() < end {
            self.period();
            if let Some((_, s)) = self.log.last() {
                if s.is_final() {
                    return s.clone();
                }
            }
        }
        panic!("no final status within {max_s} s; log: {:#?}", self.log);
    }

    /// How far the simulated robot is from `place`'s pose: (metres, degrees).
    fn off(&self, place: &str) -> (f64, f64) {
        let want = self.nav.map().pose(place).unwrap();
        let p = self.sim.pose();
        let deg = map::normalize_deg((p.heading - want.heading).to_degrees()).abs();
        ((p.x - want.x).hypot(p.y - want.y), deg)
    }

    fn assert_at(&self, place: &str, tol_m: f64, tol_deg: f64) {
        let (m, deg) = self.off(place);
        assert!(m <= tol_m && deg <= tol_deg, "{place}: off by {m:.3} m, {deg:.1}°; sim pose {:?}", self.sim.pose());
    }

    fn stopped(&self) -> bool {
        let s = self.sim.snapshot();
        s.wheel_speed_mps.iter().all(|v| v.abs() < 1e-3) && s.motor_command == [0.0, 0.0]
    }

    /// A navigator freshly loaded from the same state directory (a restart).
    fn restarted(&self) -> Navigator {
        Navigator::new(&self.nav_cfg, &self.hw_cfg, self.dir.path()).unwrap()
    }

    fn states(&self) -> Vec<&GotoState> {
        self.log.iter().map(|(_, s)| &s.state).collect()
    }
}

/// Checks a finished stream: `accepted` first, `moving` at least every
/// second with monotonic progress below 1 until the `moving` with 1 that
/// precedes `arrived`.
fn assert_stream_arrives(log: &[(f64, Status)], dest: &str) {
    let mine: Vec<_> = log.iter().filter(|(_, s)| s.destination == dest).collect();
    assert!(matches!(mine[0].1.state, GotoState::Accepted { .. }), "{mine:#?}");
    assert_eq!(mine.last().unwrap().1.state, GotoState::Arrived);
    let moving: Vec<(f64, f64, f64)> = mine
        .iter()
        .filter_map(|(t, s)| match s.state {
            GotoState::Moving { progress, remaining_m, .. } => Some((*t, progress, remaining_m)),
            _ => None,
        })
        .collect();
    assert!(moving.len() >= 3, "{moving:?}");
    let (&(_, last_p, last_rem), rest) = moving.split_last().unwrap();
    assert_eq!((last_p, last_rem), (1.0, 0.0), "the last moving has progress 1");
    assert!(rest.iter().all(|m| m.1 < 1.0), "progress reached 1 before arrival: {moving:?}");
    assert!(moving.windows(2).all(|w| w[1].1 >= w[0].1), "progress went back: {moving:?}");
    assert!(moving.windows(2).all(|w| w[1].0 - w[0].0 <= 1.0 + 1e-9), "a gap over a second: {moving:?}");
    assert!(mine[0].0 + 1.0 >= moving[0].0, "first moving too late");
    assert!(rest.iter().any(|m| m.1 > 0.3 && m.1 < 0.7), "no progress in between: {moving:?}");
}

#[test]
fn goto_bedroom_arrives_at_its_pose() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    assert_eq!(rig.nav.at(), Some("home"));
    let accepted = rig.goto("bedroom").unwrap();
    assert_eq!(
        accepted[0].to_json(),
        serde_json::json!({"destination":"bedroom","status":"accepted","route":["home","hall","bedroom"],"remaining_m":4.0})
    );
    assert!(rig.nav.is_navigating());
    assert_eq!(rig.nav.at(), None, "unknown while on the way");
    assert_eq!(rig.restarted().at(), None, "a power cut now leaves it unknown");

    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("bedroom", 0.10, 5.0);
    rig.run_for(0.5);
    assert!(rig.stopped(), "motors stopped after arrival: {:?}", rig.sim.snapshot().wheel_speed_mps);
    assert!(!rig.nav.is_navigating());
    assert_eq!(rig.nav.at(), Some("bedroom"));
    assert_eq!(rig.restarted().at(), Some("bedroom"), "kept durably");
    assert_stream_arrives(&rig.log, "bedroom");
}

#[test]
fn route_through_several_waypoints_and_back_over_reverse_edges() {
    // Encoders without a B channel: the sign comes from the commands.
    let mut rig = Rig::new(Enc::Unsigned, vec![]);
    rig.goto("kitchen").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("kitchen", 0.10, 5.0);
    assert_stream_arrives(&rig.log, "kitchen");

    // kitchen -> hall is a reverse edge, then on through the hall to the bedroom.
    rig.log.clear();
    match &rig.goto("bedroom").unwrap()[0].state {
        GotoState::Accepted { route, .. } => assert_eq!(route, &["kitchen", "hall", "bedroom"]),
        s => panic!("{s:?}"),
    }
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("bedroom", 0.10, 5.0);
    assert_stream_arrives(&rig.log, "bedroom");

    // And home over two reverse edges: back where it started, facing the same way.
    rig.goto("home").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("home", 0.10, 5.0);
    assert_eq!(rig.nav.at(), Some("home"));
}

/// `{"destination":"bedroom","status":"blocked","detail":...}`, the detail
/// naming the places on either side of the door.
fn assert_blocked_at_the_bedroom_door(end: &Status) {
    let json = end.to_json();
    assert_eq!((&json["destination"], &json["status"]), (&"bedroom".into(), &"blocked".into()), "{json}");
    let detail = json["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("something between hall and bedroom did not clear within 5 s; the robot stopped "),
        "{detail}"
    );
    assert!(detail.ends_with(" m before bedroom"), "{detail}");
}

#[test]
fn shut_door_blocks_and_the_robot_stays_stopped() {
    let mut rig = Rig::new(Enc::Signed, vec![door()]);
    rig.goto("bedroom").unwrap();
    let end = rig.run_to_end(60.0);
    assert_blocked_at_the_bedroom_door(&end);
    // It waited obstacle_clear_s (5 s) standing still, without touching the door.
    let waits: Vec<f64> = rig
        .log
        .iter()
        .filter(|(_, s)| matches!(s.state, GotoState::Moving { waiting: Some("obstacle"), .. }))
        .map(|(t, _)| *t)
        .collect();
    let blocked_at = rig.log.last().unwrap().0;
    assert!(blocked_at - waits[0] >= 4.9 && blocked_at - waits[0] <= 5.6, "{waits:?} then {blocked_at}");
    let front = rig.sim.pose().x + rig.hw_cfg.sim.robot_radius_m;
    assert!(front < 3.0 && front > 2.8, "front at {front}");
    assert!(!rig.sim.snapshot().blocked, "never touched the door");

    rig.run_for(2.0);
    assert!(rig.stopped());
    assert!(!rig.nav.is_navigating());
    assert!(rig.nav.stopped_blocked(), "what the sim camera's overlay says");
    assert_eq!(rig.nav.at(), None);
    assert_eq!(rig.restarted().at(), None);
    // Lost until someone puts it back on a known place.
    let r = rig.goto("home").unwrap_err();
    assert!(matches!(&r.state, GotoState::Rejected { reason, .. } if reason == "position_unknown"), "{r:?}");
    rig.sim.set_pose(crate::hal::sim::Pose::default());
    rig.nav.set_at("home").unwrap();
    assert!(!rig.nav.stopped_blocked(), "put back on its dock, no longer blocked");
    assert_eq!(rig.restarted().at(), Some("home"));
    assert!(rig.nav.set_at("attic").is_err());
}

#[test]
fn ultrasonic_only_robot_is_blocked_at_the_shut_door() {
    let mut rig = Rig::with(ultrasonic_only(Enc::Signed, vec![door()]), toml::from_str(testdata::FLAT).unwrap());
    rig.goto("bedroom").unwrap();
    let end = rig.run_to_end(60.0);
    assert_blocked_at_the_bedroom_door(&end);
    // It saw the door at threshold_m (0.25 m) and stopped within a few
    // centimetres of that (ping period, tick and braking), without touching it.
    let front = rig.sim.pose().x + rig.hw_cfg.sim.robot_radius_m;
    assert!(front > 2.75 && front < 2.85, "front at {front}");
    assert!(!rig.sim.snapshot().blocked, "never touched the door");
    rig.run_for(2.0);
    assert!(rig.stopped());
    assert!(!rig.nav.is_navigating());
}

#[test]
fn a_silent_ultrasonic_stops_the_robot_like_an_obstacle() {
    let mut rig = Rig::with(ultrasonic_only(Enc::Signed, vec![]), toml::from_str(testdata::FLAT).unwrap());
    rig.goto("bedroom").unwrap();
    rig.run_for(2.0);
    assert!(rig.sim.snapshot().wheel_speed_mps[0] > 0.1, "cruising");
    rig.sim.set_ultrasonic_silent(true);
    rig.run_for(1.0);
    assert!(rig.stopped(), "stale readings stop the robot");
    assert!(rig.log.iter().any(|(_, s)| matches!(s.state, GotoState::Moving { waiting: Some("obstacle"), .. })));
    // Readings come back within the wait: it goes on and arrives.
    rig.sim.set_ultrasonic_silent(false);
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("bedroom", 0.10, 5.0);
}

#[test]
fn door_opened_within_the_wait_lets_it_arrive() {
    let mut rig = Rig::new(Enc::Signed, vec![door()]);
    rig.goto("bedroom").unwrap();
    // Drive until the robot waits at the door ...
    while !rig.log.iter().any(|(_, s)| matches!(s.state, GotoState::Moving { waiting: Some(_), .. })) {
        rig.period();
        assert!(rig.t() < 30.0, "never reached the door");
    }
    // ... then open it a second later.
    rig.run_for(1.0);
    assert!(rig.nav.is_navigating());
    assert!(rig.stopped(), "stopped while the door is shut");
    rig.sim.set_obstacles(vec![]);
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("bedroom", 0.10, 5.0);
    assert_stream_arrives(&rig.log, "bedroom");
}

#[test]
fn stop_mid_route_cancels_and_the_place_becomes_unknown() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    rig.goto("kitchen").unwrap();
    rig.run_for(2.0);
    assert!(rig.nav.is_navigating());
    let s = rig.cancel(CancelledBy::Stop);
    assert_eq!(s[0].to_json(), serde_json::json!({"destination":"kitchen","status":"cancelled","by":"stop"}));
    rig.run_for(1.0);
    assert!(rig.stopped());
    assert!(!rig.nav.is_navigating());
    assert_eq!(rig.nav.at_or_unknown(), "unknown");
    assert_eq!(rig.restarted().at(), None);
    assert!(rig.cancel(CancelledBy::Stop).is_empty(), "nothing left to cancel");
    // Ticks while idle do nothing.
    assert_eq!(rig.nav.tick(rig.now, &Sensors::default()), NavTick::default());
}

#[test]
fn manual_drive_cancels_and_loses_the_place() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    assert!(rig.nav.manual_drive(rig.now).is_empty());
    assert_eq!(rig.nav.at(), None, "driven off the dock by hand");
    assert_eq!(rig.restarted().at(), None);
}

#[test]
fn a_new_goto_redirects_via_the_next_place() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    rig.goto("bedroom").unwrap();
    rig.run_for(2.0);
    let s = rig.goto("kitchen").unwrap();
    assert_eq!(s[0].state, GotoState::Cancelled { by: CancelledBy::Goto });
    assert_eq!(s[0].destination, "bedroom");
    match &s[1].state {
        GotoState::Accepted { route, .. } => assert_eq!(route, &["hall", "kitchen"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("kitchen", 0.10, 5.0);
    assert_stream_arrives(&rig.log, "kitchen");
}

#[test]
fn dead_reckoning_without_encoders_arrives_roughly() {
    let mut rig = Rig::new(Enc::None, vec![]);
    rig.goto("kitchen").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("kitchen", 0.20, 10.0);
    rig.goto("bedroom").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("bedroom", 0.25, 10.0);
}

#[test]
fn dead_reckoning_with_a_miscalibrated_speed_still_gets_close() {
    // The robot is 3 % slower than the config says: every distance and angle comes out 3 % short.
    let mut rig = Rig::new(Enc::None, vec![]).miscalibrated(1.03);
    rig.goto("kitchen").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("kitchen", 0.25, 10.0);
}

#[test]
fn the_deadman_stops_the_robot_when_ticks_stop_mid_route() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    rig.goto("bedroom").unwrap();
    rig.run_for(3.0);
    assert!(rig.sim.snapshot().wheel_speed_mps[0] > 0.1, "cruising");
    // The daemon stalls: no more ticks, the world and the deadman go on.
    for _ in 0..(DRIVE_MS / 5 + 10) {
        rig.motors.poll(rig.now).unwrap();
        rig.sim.step(STEP);
        rig.now += STEP;
    }
    assert_eq!(rig.sim.snapshot().motor_command, [0.0, 0.0], "stopped within DRIVE_MS");
}

#[test]
fn demo_flat_config_reaches_the_kitchen_and_is_blocked_by_the_bedroom_door() {
    let mut rig = Rig::demo_flat();
    rig.goto("kitchen").unwrap();
    assert_eq!(rig.run_to_end(60.0).state, GotoState::Arrived);
    rig.assert_at("kitchen", 0.10, 5.0);

    let mut rig = Rig::demo_flat();
    rig.goto("bedroom").unwrap();
    let GotoState::Blocked { detail } = rig.run_to_end(60.0).state else { panic!("not blocked") };
    // The door is at x = 3 m, the bedroom beyond it.
    assert!(detail.starts_with("something between hall and bedroom did not clear within 5 s"), "{detail}");
    assert!(rig.sim.pose().x < 3.0 && !rig.sim.snapshot().blocked, "stopped short of the door");
}

#[test]
fn unknown_place_is_rejected_and_here_is_arrived_at_once() {
    let mut rig = Rig::new(Enc::Signed, vec![]);
    let r = rig.goto("attic").unwrap_err();
    assert!(matches!(&r.state, GotoState::Rejected { reason, .. } if reason == "unknown_destination"), "{r:?}");
    let s = rig.goto("home").unwrap();
    let states: Vec<_> = s.iter().map(|s| s.to_json()["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states, ["accepted", "moving", "arrived"]);
    assert!(!rig.nav.is_navigating());
    assert_eq!(rig.nav.at(), Some("home"));
    assert_eq!(rig.states().len(), 4);
}
