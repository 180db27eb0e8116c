//! The executor: one goto, as a pure state machine of `(state, now, odometry,
//! obstacle) -> (motor command, statuses)`.
//!
//! # Legs with absolute targets
//! A route's steps become *legs* whose targets are poses in the map frame:
//! a drive leg runs along a line from one point to another, a turn leg ends
//! facing an absolute heading. The executor keeps a pose estimate from the
//! wheel odometry, so an overshoot in one leg is corrected by the next
//! (a turn that went 2° too far is taken out by the heading controller of
//! the following drive) instead of accumulating along the route. Every
//! place a route passes ends a segment with a turn to that place's
//! canonical heading; adjacent turns are merged into one, and turns take
//! the shortest way round.
//!
//! # Odometry
//! With encoders the wheel travel comes from their counts. Encoders without
//! a B channel only count up, so their sign is taken from the direction the
//! wheel was last commanded (a coasting wheel keeps turning that way).
//! Without encoders the travel is dead-reckoned from the commanded wheel
//! speeds (`fraction × hardware.max_speed_mps`) over the time they were in
//! force, capped at the deadman of one command ([`DRIVE_MS`]). That is as
//! good as `max_speed_mps` is calibrated (drive at full duty for a few
//! seconds and measure), and it cannot see a wheel slip or a collision.
//!
//! # Control
//! Speed follows a trapezoid: it ramps up at `nav.accel_mps2` from
//! `nav.min_speed`, cruises, and ramps down as `sqrt(2·a·remaining)`, with
//! a final proportional approach (`3/s × remaining`) so the robot creeps
//! onto the target instead of coasting past it. While driving, a P
//! controller steers on the heading error (the left/right wheel difference
//! integrated into the heading estimate) plus the sideways offset from the
//! line, so the robot drives straight and back onto its line.
//!
//! # Progress
//! `progress` counts turns as the distance a wheel travels in them
//! (`|angle| × wheel_base / 2`) so it keeps moving during a turn; it never
//! decreases and is capped at 0.999 until arrival, when a last `moving`
//! with `progress` 1 precedes `arrived`. `remaining_m` is metres still to
//! drive, turns excluded.

use std::time::{Duration, Instant};

use super::map::{NavConfig, Pose, Route, Segment, Step, wrap_rad};
use super::status::{CancelledBy, GotoState, Status};
use crate::hal::HardwareConfig;

/// The `ms` of every drive command the navigator asks for: the deadman
/// stops the robot this long after the daemon stops renewing it.
pub const DRIVE_MS: u32 = 200;
/// How often the daemon should call `tick` while navigating.
pub const TICK: Duration = Duration::from_millis(50);
/// How often a `moving` status is sent (the protocol asks for at least every second).
pub const MOVING_EVERY: Duration = Duration::from_millis(500);

const DRIVE_TOLERANCE_M: f64 = 0.005;
const TURN_TOLERANCE_RAD: f64 = 0.5 * std::f64::consts::PI / 180.0;
/// Final approach: commanded speed per metre remaining (1/s).
const K_APPROACH: f64 = 3.0;
/// Heading P gain: rad/s of turn per rad of heading error.
const K_HEADING: f64 = 3.0;
/// Line-following gain: rad of heading correction per metre off the line.
const K_CROSS: f64 = 2.0;
const MAX_CROSS_CORRECTION_RAD: f64 = 0.35;
/// An obstacle must stay away this long before the robot moves on.
const RESUME_AFTER: Duration = Duration::from_millis(300);
/// Arrived when a wheel moved less than this in one tick (encoders) ...
const SETTLE_STILL_M: f64 = 0.0005;
/// ... after at least this long ...
const SETTLE_MIN: Duration = Duration::from_millis(100);
/// ... or after this long at most (and always, without encoders).
const SETTLE_MAX: Duration = Duration::from_millis(500);
/// With encoders: failed `stalled` when the wheels moved less than
/// [`STALL_TRAVEL_M`] in this long while commanded to move.
const STALL_AFTER: Duration = Duration::from_secs(3);
const STALL_TRAVEL_M: f64 = 0.01;

/// Where wheel travel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdometrySource {
    /// Wheel encoders; `signed[i]` when that side has a B channel.
    Encoders {
        /// Left, right: the count goes down when the wheel turns backwards.
        signed: [bool; 2],
    },
    /// Commanded speeds integrated over time.
    DeadReckoning,
}

/// Everything the executor needs to know about the robot and the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriveParams {
    /// `hardware.wheel_base_m`.
    pub wheel_base_m: f64,
    /// `hardware.max_speed_mps`.
    pub max_speed_mps: f64,
    /// `nav.cruise_speed` (fraction).
    pub cruise: f64,
    /// `nav.turn_speed` (fraction).
    pub turn: f64,
    /// `nav.min_speed` (fraction).
    pub min: f64,
    /// `nav.accel_mps2`.
    pub accel_mps2: f64,
    /// `nav.obstacle_clear_s`.
    pub obstacle_clear: Duration,
    /// Encoders or dead reckoning.
    pub odometry: OdometrySource,
}

impl DriveParams {
    /// From the (validated) `[nav]` and `[hardware]` sections.
    pub fn new(nav: &NavConfig, hw: &HardwareConfig) -> Self {
        let odometry = match &hw.encoders {
            Some(e) => OdometrySource::Encoders { signed: [e.left_b_pin.is_some(), e.right_b_pin.is_some()] },
            None => OdometrySource::DeadReckoning,
        };
        Self {
            wheel_base_m: hw.wheel_base_m,
            max_speed_mps: hw.max_speed_mps,
            cruise: nav.cruise_speed,
            turn: nav.turn_speed,
            min: nav.min_speed,
            accel_mps2: nav.accel_mps2,
            obstacle_clear: Duration::from_secs_f64(nav.obstacle_clear_s),
            odometry,
        }
    }
}

/// What the motors should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MotorCmd {
    /// `MotorController::drive(DriveCommand { linear, angular, ms: DRIVE_MS }, now)`.
    Drive {
        /// Forward fraction, 0..=1.
        linear: f64,
        /// Counter-clockwise fraction, -1..=1.
        angular: f64,
    },
    /// `MotorController::stop()`.
    Stop,
}

/// How a goto ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// At the destination.
    Arrived,
    /// Stopped by an obstacle that did not clear.
    Blocked,
    /// Cancelled on request.
    Cancelled(CancelledBy),
    /// Could not finish.
    Failed {
        /// Machine-readable reason.
        reason: String,
    },
}

/// The result of one [`Goto::update`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// What to do with the motors; `None` once the goto is over.
    pub motor: Option<MotorCmd>,
    /// Statuses to publish, in order.
    pub statuses: Vec<Status>,
    /// Set on the update that ends the goto.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq)]
enum LegKind {
    Turn { heading: f64 },
    Drive { from: [f64; 2], to: [f64; 2], heading: f64 },
}

impl LegKind {
    fn heading(&self) -> f64 {
        match *self {
            LegKind::Turn { heading } | LegKind::Drive { heading, .. } => heading,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Leg {
    kind: LegKind,
    /// Wheel metres: the drive distance, or `|angle| × wheel_base / 2`.
    len_m: f64,
    /// Places reached when this leg is done.
    reaches: Vec<String>,
}

fn push_leg(legs: &mut Vec<Leg>, leg: Leg) {
    if let (LegKind::Turn { heading }, Some(last)) = (&leg.kind, legs.last_mut()) {
        if let LegKind::Turn { heading: h } = &mut last.kind {
            *h = *heading;
            last.reaches.extend(leg.reaches);
            return;
        }
    }
    legs.push(leg);
}

fn turn_leg(heading: f64, reaches: Option<&str>) -> Leg {
    Leg { kind: LegKind::Turn { heading }, len_m: 0.0, reaches: reaches.map(str::to_owned).into_iter().collect() }
}

/// Legs from `start`, each segment ending with a turn to its place's heading.
fn build_legs(start: Pose, segments: &[Segment]) -> Vec<Leg> {
    let mut legs = Vec::new();
    push_leg(&mut legs, turn_leg(start.heading, None));
    let mut pose = start;
    for seg in segments {
        for step in &seg.steps {
            match *step {
                Step::Drive(d) => {
                    let to = [pose.x + d * pose.heading.cos(), pose.y + d * pose.heading.sin()];
                    let kind = LegKind::Drive { from: [pose.x, pose.y], to, heading: pose.heading };
                    legs.push(Leg { kind, len_m: d, reaches: Vec::new() });
                    (pose.x, pose.y) = (to[0], to[1]);
                }
                Step::Turn(a) => {
                    pose.heading = wrap_rad(pose.heading + a.to_radians());
                    push_leg(&mut legs, turn_leg(pose.heading, None));
                }
            }
        }
        // Snap to the place's pose: loops agree only within tolerance.
        pose = seg.to_pose;
        push_leg(&mut legs, turn_leg(pose.heading, Some(&seg.to)));
    }
    legs
}

/// Sets each turn leg's length from the heading before it.
fn set_turn_lengths(legs: &mut [Leg], mut heading: f64, wheel_base_m: f64) {
    for leg in legs {
        if let LegKind::Turn { heading: h } = leg.kind {
            leg.len_m = wrap_rad(h - heading).abs() * wheel_base_m / 2.0;
        }
        heading = leg.kind.heading();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    Paused { since: Instant, clear_since: Option<Instant> },
    Settling { since: Instant },
    Done,
}

/// One goto in progress.
#[derive(Debug, Clone)]
pub struct Goto {
    destination: String,
    route: Vec<String>,
    legs: Vec<Leg>,
    idx: usize,
    p: DriveParams,
    pose: Pose,
    last_odo: Option<[f64; 2]>,
    last_tick: Option<Instant>,
    /// Wheel fractions commanded at the last update, in force until the next.
    cmd_wheels: [f64; 2],
    /// Sign of the last non-zero command per wheel.
    last_dir: [f64; 2],
    phase: Phase,
    leg_start: Instant,
    /// Speed (m/s) the current leg's ramp starts from.
    leg_v0: f64,
    /// The forward speed last commanded (m/s).
    last_linear_mps: f64,
    /// +1 / -1: the way the current turn leg goes.
    turn_dir: f64,
    total_m: f64,
    done_before_m: f64,
    best_progress: f64,
    last_moving: Option<Instant>,
    deadline: Instant,
    stall_mark: (Instant, f64),
    travel_abs_m: f64,
}

fn round_to(v: f64, step: f64) -> f64 {
    (v / step).round() * step
}

impl Goto {
    /// Starts executing `route` (planned from the place the robot is at,
    /// facing its canonical heading).
    pub fn new(destination: &str, route: &Route, params: DriveParams, now: Instant) -> Self {
        let mut legs = build_legs(route.from_pose, &route.segments);
        set_turn_lengths(&mut legs, route.from_pose.heading, params.wheel_base_m);
        let mut g = Goto {
            destination: destination.to_owned(),
            route: route.places.clone(),
            legs,
            idx: 0,
            p: params,
            pose: route.from_pose,
            last_odo: None,
            last_tick: None,
            cmd_wheels: [0.0; 2],
            last_dir: [1.0; 2],
            phase: Phase::Running,
            leg_start: now,
            leg_v0: 0.0,
            last_linear_mps: 0.0,
            turn_dir: 1.0,
            total_m: 0.0,
            done_before_m: 0.0,
            best_progress: 0.0,
            last_moving: None,
            deadline: now,
            stall_mark: (now, 0.0),
            travel_abs_m: 0.0,
        };
        g.reset_progress(now);
        g.start_leg(now);
        g
    }

    /// The destination.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The pose estimate in the map frame.
    pub fn pose(&self) -> Pose {
        self.pose
    }

    /// Whether the goto has ended.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The `accepted` status for the current destination and route.
    pub fn accepted(&self) -> Status {
        let remaining_m = round_to(self.remaining_drive_m(), 0.01);
        Status::new(&self.destination, GotoState::Accepted { route: self.route.clone(), remaining_m })
    }

    /// Where the robot stands blocked, for people: between the last place it
    /// passed (or started from) and the next one, and how far before it.
    fn blocked_detail(&self) -> String {
        let idx = self.idx.min(self.legs.len());
        let passed = self.legs[..idx].iter().rev().find_map(|l| l.reaches.last()).or(self.route.first());
        let next = self.next_place();
        let before_m: f64 = self.leg_remaining_m()
            + self.legs.iter().skip(idx + 1).take_while(|l| l.reaches.is_empty()).map(|l| l.len_m).sum::<f64>();
        let secs = self.p.obstacle_clear.as_secs_f64();
        let between = match passed {
            Some(a) if a != next => format!("between {a} and {next}"),
            _ => format!("on the way to {next}"),
        };
        format!("something {between} did not clear within {secs} s; the robot stopped {before_m:.1} m before {next}")
    }

    /// The next place the robot will reach (the one a redirect plans from).
    pub fn next_place(&self) -> &str {
        self.legs[self.idx.min(self.legs.len() - 1)..]
            .iter()
            .find_map(|l| l.reaches.first())
            .map_or(&self.destination, |s| s.as_str())
    }

    /// Sends the robot elsewhere without stopping: it finishes the way to
    /// [`next_place`](Self::next_place) (the map only knows ways between
    /// places), then follows `route`, which must start there. Returns the
    /// `cancelled` status of the old destination and the new `accepted`.
    pub fn redirect(&mut self, destination: &str, route: &Route, now: Instant) -> Vec<Status> {
        let old = Status::new(&self.destination, GotoState::Cancelled { by: CancelledBy::Goto });
        let start = self.idx.min(self.legs.len());
        let keep_to = self.legs[start..].iter().position(|l| !l.reaches.is_empty()).map_or(start, |j| start + j);
        let mut legs: Vec<Leg> = self.legs[start..keep_to].to_vec();
        for leg in build_legs(route.from_pose, &route.segments) {
            push_leg(&mut legs, leg);
        }
        let current_kept = keep_to > start;
        let before = if start > 0 { self.legs[start - 1].kind.heading() } else { self.pose.heading };
        set_turn_lengths(&mut legs, if current_kept { before } else { self.pose.heading }, self.p.wheel_base_m);
        self.legs = legs;
        self.idx = 0;
        self.destination = destination.to_owned();
        self.route = route.places.clone();
        match self.phase {
            Phase::Paused { clear_since, .. } => self.phase = Phase::Paused { since: now, clear_since },
            _ => self.phase = Phase::Running,
        }
        if !current_kept {
            self.start_leg(now);
        }
        self.reset_progress(now);
        vec![old, self.accepted()]
    }

    /// Ends the goto on request; the caller stops the motors.
    pub fn cancel(&mut self, by: CancelledBy) -> Status {
        self.phase = Phase::Done;
        Status::new(&self.destination, GotoState::Cancelled { by })
    }

    /// Ends the goto as failed (e.g. the motors refused: `estop`).
    pub fn fail(&mut self, reason: &str, detail: &str) -> Status {
        self.phase = Phase::Done;
        Status::new(&self.destination, GotoState::Failed { reason: reason.into(), detail: detail.into() })
    }

    fn reset_progress(&mut self, now: Instant) {
        self.total_m = self.legs[self.idx..].iter().map(|l| l.len_m).sum();
        self.done_before_m = 0.0;
        self.done_before_m = -self.leg_done_m();
        self.best_progress = 0.0;
        self.last_moving = None;
        let v = self.p.max_speed_mps;
        let budget: f64 = self.legs[self.idx..]
            .iter()
            .map(|l| {
                let speed = if matches!(l.kind, LegKind::Turn { .. }) { self.p.turn } else { self.p.cruise };
                l.len_m / (speed * v) + 2.0
            })
            .sum();
        self.deadline = now + Duration::from_secs_f64(2.0 * budget + 10.0);
        self.stall_mark = (now, self.travel_abs_m);
    }

    fn start_leg(&mut self, now: Instant) {
        self.leg_start = now;
        // A drive straight on from a drive keeps its speed; anything else starts slow.
        let vmin = self.p.min * self.p.max_speed_mps;
        let drive = matches!(self.legs.get(self.idx), Some(Leg { kind: LegKind::Drive { .. }, .. }));
        self.leg_v0 = if drive { self.last_linear_mps.max(vmin) } else { vmin };
        if let Some(Leg { kind: LegKind::Turn { heading }, .. }) = self.legs.get(self.idx) {
            let e = wrap_rad(heading - self.pose.heading);
            self.turn_dir = if e >= 0.0 { 1.0 } else { -1.0 };
        }
    }

    /// Remaining wheel metres of the current leg (may be negative when past it).
    fn leg_remaining_m(&self) -> f64 {
        let Some(leg) = self.legs.get(self.idx) else { return 0.0 };
        match leg.kind {
            LegKind::Turn { heading } => {
                // Measured the way the turn goes: up to 270° still to go, up to
                // 90° past. A half turn that first drifts a little the other
                // way (a coasting wheel) is then still a half turn, not done.
                let mut e = wrap_rad(heading - self.pose.heading) * self.turn_dir;
                if e < -std::f64::consts::FRAC_PI_2 {
                    e += std::f64::consts::TAU;
                }
                e * self.p.wheel_base_m / 2.0
            }
            LegKind::Drive { to, heading, .. } => {
                (to[0] - self.pose.x) * heading.cos() + (to[1] - self.pose.y) * heading.sin()
            }
        }
    }

    fn leg_finished(&self) -> bool {
        let Some(leg) = self.legs.get(self.idx) else { return true };
        let rem = self.leg_remaining_m();
        match leg.kind {
            LegKind::Turn { .. } => rem <= TURN_TOLERANCE_RAD * self.p.wheel_base_m / 2.0,
            LegKind::Drive { .. } => rem <= DRIVE_TOLERANCE_M,
        }
    }

    fn leg_done_m(&self) -> f64 {
        self.legs.get(self.idx).map_or(0.0, |l| (l.len_m - self.leg_remaining_m()).clamp(0.0, l.len_m))
    }

    fn remaining_drive_m(&self) -> f64 {
        let mut m = 0.0;
        for (i, leg) in self.legs.iter().enumerate().skip(self.idx) {
            if let LegKind::Drive { .. } = leg.kind {
                m += if i == self.idx { self.leg_remaining_m().clamp(0.0, leg.len_m) } else { leg.len_m };
            }
        }
        m
    }

    fn moving(&mut self, now: Instant, waiting: Option<&'static str>) -> Status {
        let done = self.done_before_m + self.leg_done_m();
        let p = if self.total_m > 0.0 { done / self.total_m } else { 0.0 };
        let p = ((p.clamp(0.0, 0.999)) * 1000.0).floor() / 1000.0;
        self.best_progress = self.best_progress.max(p);
        self.last_moving = Some(now);
        let remaining_m = round_to(self.remaining_drive_m(), 0.01);
        Status::new(&self.destination, GotoState::Moving { progress: self.best_progress, remaining_m, waiting })
    }

    fn finish(&mut self, out: &mut Update, outcome: Outcome, state: GotoState) {
        self.phase = Phase::Done;
        self.command(MotorCmd::Stop);
        out.motor = Some(MotorCmd::Stop);
        out.statuses.push(Status::new(&self.destination, state));
        out.outcome = Some(outcome);
    }

    /// Records a command (for dead reckoning and encoder signs) and returns it.
    fn command(&mut self, cmd: MotorCmd) -> MotorCmd {
        self.last_linear_mps = match cmd {
            MotorCmd::Drive { linear, .. } => linear * self.p.max_speed_mps,
            MotorCmd::Stop => 0.0,
        };
        self.cmd_wheels = match cmd {
            MotorCmd::Stop => [0.0; 2],
            MotorCmd::Drive { linear, angular } => {
                let (l, r) = crate::motion::mix(linear, angular).unwrap_or((0.0, 0.0));
                [l, r]
            }
        };
        for i in 0..2 {
            if self.cmd_wheels[i] != 0.0 {
                self.last_dir[i] = self.cmd_wheels[i].signum();
            }
        }
        cmd
    }

    /// Folds the wheel travel since the last update into the pose estimate;
    /// returns it (left, right metres).
    fn integrate(&mut self, now: Instant, odo: Option<[f64; 2]>) -> [f64; 2] {
        let dt = self.last_tick.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_tick = Some(now);
        let d = match (self.p.odometry, odo) {
            (OdometrySource::Encoders { signed }, Some(m)) => {
                let raw = self.last_odo.map_or([0.0; 2], |l| [m[0] - l[0], m[1] - l[1]]);
                self.last_odo = Some(m);
                [0, 1].map(|i| if signed[i] { raw[i] } else { raw[i].abs() * self.last_dir[i] })
            }
            _ => {
                // No count this tick: dead-reckon it and take the next count as a new baseline.
                self.last_odo = None;
                let dt = dt.min(f64::from(DRIVE_MS) / 1000.0);
                self.cmd_wheels.map(|w| w * self.p.max_speed_mps * dt)
            }
        };
        let ds = (d[0] + d[1]) / 2.0;
        let dth = (d[1] - d[0]) / self.p.wheel_base_m;
        let mid = self.pose.heading + dth / 2.0;
        self.pose.x += ds * mid.cos();
        self.pose.y += ds * mid.sin();
        self.pose.heading = wrap_rad(self.pose.heading + dth);
        self.travel_abs_m += d[0].abs() + d[1].abs();
        d
    }

    /// Speed (m/s) for a leg with `rem` wheel metres to go.
    fn profile(&self, rem: f64, now: Instant, fraction: f64) -> f64 {
        let vmax = self.p.max_speed_mps;
        let a = self.p.accel_mps2;
        let t = now.saturating_duration_since(self.leg_start).as_secs_f64();
        let vmin = self.p.min * vmax;
        let rem = rem.max(0.0);
        (fraction * vmax).min(self.leg_v0 + a * t).min((2.0 * a * rem).sqrt()).min(K_APPROACH * rem).max(vmin)
    }

    /// Metres of drive legs straight on after the current one (through
    /// places passed without turning), so the robot does not slow down there.
    fn straight_on_m(&self, heading: f64) -> f64 {
        let same = |h: f64| wrap_rad(h - heading).abs() < 1f64.to_radians();
        let mut m = 0.0;
        for leg in self.legs.iter().skip(self.idx + 1) {
            match leg.kind {
                LegKind::Drive { heading: h, .. } if same(h) => m += leg.len_m,
                LegKind::Turn { heading: h } if same(h) => {}
                _ => break,
            }
        }
        m
    }

    fn leg_command(&mut self, now: Instant) -> MotorCmd {
        let vmax = self.p.max_speed_mps;
        let rem = self.leg_remaining_m();
        let cmd = match self.legs[self.idx].kind {
            LegKind::Turn { .. } => {
                let v = self.profile(rem, now, self.p.turn);
                MotorCmd::Drive { linear: 0.0, angular: (self.turn_dir * v / vmax).clamp(-1.0, 1.0) }
            }
            LegKind::Drive { from, heading, .. } => {
                let ahead = self.straight_on_m(heading);
                let linear = (self.profile(rem + ahead, now, self.p.cruise) / vmax).clamp(0.0, 1.0);
                let (s, c) = heading.sin_cos();
                // Positive: left of the line.
                let off = c * (self.pose.y - from[1]) - s * (self.pose.x - from[0]);
                let want = heading - (K_CROSS * off).clamp(-MAX_CROSS_CORRECTION_RAD, MAX_CROSS_CORRECTION_RAD);
                let omega = K_HEADING * wrap_rad(want - self.pose.heading);
                let limit = (0.5 * linear).max(0.5 * self.p.min);
                let angular = (omega * self.p.wheel_base_m / (2.0 * vmax)).clamp(-limit, limit);
                MotorCmd::Drive { linear, angular }
            }
        };
        self.command(cmd)
    }

    /// Advances the goto to `now`. `odometry` is the cumulative travel of
    /// the left and right wheels in metres (from the encoder counts), or
    /// `None` without encoders; `obstacle` is the obstacle input.
    pub fn update(&mut self, now: Instant, odometry: Option<[f64; 2]>, obstacle: bool) -> Update {
        let d = self.integrate(now, odometry);
        let mut out = Update::default();
        let was_paused = matches!(self.phase, Phase::Paused { .. });
        if let Phase::Paused { since, clear_since } = self.phase {
            if obstacle {
                if now.saturating_duration_since(since) >= self.p.obstacle_clear {
                    let detail = self.blocked_detail();
                    self.finish(&mut out, Outcome::Blocked, GotoState::Blocked { detail });
                    return out;
                }
                self.phase = Phase::Paused { since, clear_since: None };
            } else {
                let c = clear_since.unwrap_or(now);
                if now.saturating_duration_since(c) >= RESUME_AFTER {
                    self.phase = Phase::Running;
                    self.deadline += now.saturating_duration_since(since);
                    self.stall_mark = (now, self.travel_abs_m);
                    self.leg_start = now;
                } else {
                    self.phase = Phase::Paused { since, clear_since: Some(c) };
                }
            }
            if let Phase::Paused { .. } = self.phase {
                out.motor = Some(self.command(MotorCmd::Stop));
            }
        }
        if let Phase::Settling { since } = self.phase {
            let waited = now.saturating_duration_since(since);
            let still = matches!(self.p.odometry, OdometrySource::Encoders { .. })
                && odometry.is_some()
                && d[0].abs().max(d[1].abs()) < SETTLE_STILL_M;
            if (still && waited >= SETTLE_MIN) || waited >= SETTLE_MAX {
                self.best_progress = 1.0;
                out.statuses.push(Status::new(
                    &self.destination,
                    GotoState::Moving { progress: 1.0, remaining_m: 0.0, waiting: None },
                ));
                self.finish(&mut out, Outcome::Arrived, GotoState::Arrived);
                return out;
            }
            out.motor = Some(self.command(MotorCmd::Stop));
            return out;
        }
        if self.phase == Phase::Done {
            return out;
        }
        if self.phase == Phase::Running {
            if now >= self.deadline {
                let detail = "the route took far longer than it should; check the map and the wheels";
                let state = GotoState::Failed { reason: "timeout".into(), detail: detail.into() };
                self.finish(&mut out, Outcome::Failed { reason: "timeout".into() }, state);
                return out;
            }
            while self.idx < self.legs.len() && self.leg_finished() {
                self.done_before_m += self.legs[self.idx].len_m;
                self.idx += 1;
                self.start_leg(now);
            }
            if self.idx >= self.legs.len() {
                self.phase = Phase::Settling { since: now };
                out.motor = Some(self.command(MotorCmd::Stop));
                return out;
            }
            if obstacle && matches!(self.legs[self.idx].kind, LegKind::Drive { .. }) {
                // Turning in place cannot hit anything the sensor sees; driving can.
                self.phase = Phase::Paused { since: now, clear_since: None };
                out.motor = Some(self.command(MotorCmd::Stop));
            } else {
                out.motor = Some(self.leg_command(now));
                if let OdometrySource::Encoders { .. } = self.p.odometry {
                    if self.travel_abs_m - self.stall_mark.1 >= STALL_TRAVEL_M {
                        self.stall_mark = (now, self.travel_abs_m);
                    } else if now.saturating_duration_since(self.stall_mark.0) >= STALL_AFTER {
                        let detail = "the wheels do not turn although driven; check the motors, the encoders \
                                      and whether the robot is stuck";
                        let state = GotoState::Failed { reason: "stalled".into(), detail: detail.into() };
                        self.finish(&mut out, Outcome::Failed { reason: "stalled".into() }, state);
                        return out;
                    }
                }
            }
        }
        // Waiting for an obstacle, and going on again, are told at once.
        let changed = was_paused != matches!(self.phase, Phase::Paused { .. });
        let due = changed || self.last_moving.is_none_or(|t| now.saturating_duration_since(t) >= MOVING_EVERY);
        if due {
            let waiting = matches!(self.phase, Phase::Paused { .. }).then_some("obstacle");
            let s = self.moving(now, waiting);
            out.statuses.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nav::map::Map;

    fn params() -> DriveParams {
        DriveParams::new(&NavConfig::default(), &HardwareConfig::default())
    }

    fn flat() -> Map {
        let cfg: NavConfig = toml::from_str(crate::nav::testdata::FLAT).unwrap();
        Map::from_config(&cfg).unwrap()
    }

    #[test]
    fn legs_merge_turns_and_mark_places() {
        let m = flat();
        let r = m.route("kitchen", "bedroom").unwrap();
        let legs = build_legs(r.from_pose, &r.segments);
        let kinds: Vec<_> = legs
            .iter()
            .map(|l| match l.kind {
                LegKind::Turn { heading } => format!("T{:.0}", heading.to_degrees()),
                LegKind::Drive { to, .. } => format!("D({:.1},{:.1})", to[0], to[1]),
            })
            .collect();
        assert_eq!(kinds, ["T-90", "D(2.0,0.0)", "T0", "D(4.0,0.0)", "T0"]);
        assert_eq!(legs[2].reaches, ["hall"]);
        assert_eq!(legs[4].reaches, ["bedroom"]);
    }

    #[test]
    fn a_half_turn_that_drifts_back_first_is_not_done() {
        let m = flat();
        let r = m.route("kitchen", "hall").unwrap();
        let mut g = Goto::new("hall", &r, params(), Instant::now());
        assert!(matches!(g.legs[0].kind, LegKind::Turn { .. }));
        let half = std::f64::consts::PI * g.p.wheel_base_m / 2.0;
        assert!((g.leg_remaining_m() - half).abs() < 1e-9);
        g.pose.heading = wrap_rad(g.pose.heading - g.turn_dir * 1f64.to_radians());
        assert!(!g.leg_finished());
        assert!(g.leg_remaining_m() > half, "{}", g.leg_remaining_m());
        g.pose.heading = wrap_rad(r.from_pose.heading + g.turn_dir * 181f64.to_radians());
        assert!(g.leg_finished(), "1° past the target");
    }

    #[test]
    fn dead_reckoning_follows_the_commands() {
        let m = flat();
        let r = m.route("home", "hall").unwrap();
        let t0 = Instant::now();
        let mut g = Goto::new("hall", &r, params(), t0);
        let mut now = t0;
        let mut last = None;
        for _ in 0..2000 {
            now += TICK;
            let u = g.update(now, None, false);
            if u.outcome.is_some() {
                last = u.outcome;
                break;
            }
        }
        assert_eq!(last, Some(Outcome::Arrived));
        let p = g.pose();
        assert!((p.x - 2.0).abs() < 0.01 && p.y.abs() < 0.01, "{p:?}");
        assert!((p.heading.to_degrees() - 90.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn obstacle_pauses_then_blocks() {
        let m = flat();
        let r = m.route("home", "hall").unwrap();
        let t0 = Instant::now();
        let mut g = Goto::new("hall", &r, params(), t0);
        let u = g.update(t0 + TICK, None, true);
        assert_eq!(u.motor, Some(MotorCmd::Stop));
        assert!(matches!(u.statuses[0].state, GotoState::Moving { waiting: Some("obstacle"), .. }));
        let u = g.update(t0 + Duration::from_millis(4000), None, true);
        assert!(u.outcome.is_none());
        let u = g.update(t0 + Duration::from_millis(5100), None, true);
        assert_eq!(u.outcome, Some(Outcome::Blocked));
        let GotoState::Blocked { detail } = &u.statuses.last().unwrap().state else { panic!("{u:?}") };
        assert!(
            detail.starts_with("something between home and hall did not clear within 5 s; the robot stopped"),
            "{detail}"
        );
        assert!(g.is_done());
        assert_eq!(g.update(t0 + Duration::from_secs(6), None, true), Update::default());
    }

    #[test]
    fn stalled_wheels_fail() {
        let m = flat();
        let r = m.route("home", "hall").unwrap();
        let t0 = Instant::now();
        let p = DriveParams { odometry: OdometrySource::Encoders { signed: [true, true] }, ..params() };
        let mut g = Goto::new("hall", &r, p, t0);
        let mut now = t0;
        let outcome = loop {
            now += TICK;
            let u = g.update(now, Some([0.0, 0.0]), false);
            if let Some(o) = u.outcome {
                break o;
            }
        };
        assert_eq!(outcome, Outcome::Failed { reason: "stalled".into() });
        assert!(now - t0 <= STALL_AFTER + TICK * 2, "{:?}", now - t0);
    }
}
