//! A simulated robot: pins that feed a small physics world.
//!
//! The world reads the motor pins the way the configured H-bridge board
//! would, turns the result into wheel speeds (first-order lag towards
//! `duty × max_speed_mps`), integrates a pose from them, generates encoder
//! ticks, and answers the obstacle sensor from a single forward-looking ray.
//! The robot is a circle; it cannot pass through obstacles and stops at contact.
//!
//! Time only moves on [`Sim::step`], so tests control the clock exactly;
//! the daemon calls [`Sim::run_realtime`] instead. [`Sim::snapshot`] shows
//! pose, wheel speeds and every pin; with `hardware.sim.state_file` set, the
//! pin levels are also mirrored to a JSON file for tools outside the process
//! (`robotd safe-stop` writes the safe levels there).
//!
//! The real-time runner sleeps while the world is at rest (both motors
//! commanded to zero by their pins and the wheels stopped): no 5 ms step then,
//! only a wake-up on the next pin write or world change (and once a second,
//! so the simulated clock and the ultrasonic sensor's readings still age the
//! way they would). While anything moves it steps exactly as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::{DriverKind, HardwareConfig, Level, MotorConfig, Obstacle, UltrasonicConfig};
use super::ultrasonic::{Clock, Readings, Ultrasonic};
use super::{EncoderCounter, HalError, PWM_MAX_DUTY};

/// Where the robot is: metres and radians, heading 0 along +x, counter-clockwise positive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Pose {
    /// Metres.
    pub x: f64,
    /// Metres.
    pub y: f64,
    /// Radians, normalised to (-π, π].
    pub heading: f64,
}

/// What a simulated pin is doing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum PinState {
    /// A digital output.
    Output {
        /// Driven high.
        high: bool,
    },
    /// A PWM output.
    Pwm {
        /// Duty fraction 0..=1.
        duty: f64,
        /// Frequency in hertz.
        frequency_hz: f64,
    },
    /// An input (level as last read, or as forced by [`Sim::set_input`]).
    Input {
        /// Reads high.
        high: bool,
    },
}

impl PinState {
    /// The average level 0..=1 the motor board sees.
    fn level(&self) -> f64 {
        match *self {
            PinState::Output { high } | PinState::Input { high } => f64::from(u8::from(high)),
            PinState::Pwm { duty, .. } => duty,
        }
    }

    /// True when the pin is in its safe state (low / zero duty).
    pub fn is_safe(&self) -> bool {
        self.level() == 0.0
    }
}

/// The pin-state file written by [`Sim::write_state_file`] and [`write_safe_state`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PinStateFile {
    /// Every claimed pin, by BCM number.
    pub pins: BTreeMap<u8, PinState>,
    /// Set by `robotd safe-stop`.
    #[serde(default)]
    pub safe_stopped: bool,
}

/// Everything observable about the world at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSnapshot {
    /// Simulated seconds since the world was built.
    pub time_s: f64,
    /// Robot pose.
    pub pose: Pose,
    /// Left and right ground speed of the wheels (m/s).
    pub wheel_speed_mps: [f64; 2],
    /// Left and right encoder counts.
    pub encoder_counts: [i64; 2],
    /// What each motor board is asked for, in -1..=1, after `invert`.
    pub motor_command: [f64; 2],
    /// The obstacle sensor sees something (regardless of its wiring level).
    pub obstacle_detected: bool,
    /// What the ultrasonic sensor would measure now (metres from the robot's
    /// front), `None` when nothing is within its range or none is fitted.
    pub ultrasonic_m: Option<f64>,
    /// The last step was cut short by a collision.
    pub blocked: bool,
    /// Every claimed pin.
    pub pins: BTreeMap<u8, PinState>,
}

struct World {
    cfg: HardwareConfig,
    pins: BTreeMap<u8, PinState>,
    claimed: Vec<u8>,
    forced_inputs: BTreeMap<u8, bool>,
    obstacles: Vec<Obstacle>,
    time_s: f64,
    pose: Pose,
    wheel: [f64; 2],
    command: [f64; 2],
    travel: [f64; 2],
    encoders: [Arc<AtomicI64>; 2],
    blocked: bool,
    /// Simulated time in microseconds, the clock of the simulated ultrasonic sensor.
    clock_us: Arc<AtomicU64>,
    sonar: Option<SimSonar>,
    /// Physics steps taken (the real-time runner's tests count them).
    steps: u64,
}

/// The simulated HC-SR04: measured every `period_ms` of simulated time.
struct SimSonar {
    cfg: UltrasonicConfig,
    readings: Arc<Readings>,
    next_at_s: f64,
    /// Forced silent (an unplugged echo wire): no more readings.
    silent: bool,
}

/// A handle on the simulated world; clones share it.
#[derive(Clone)]
pub struct Sim {
    world: Arc<Mutex<World>>,
    /// `hardware.sim.pin_events` (benchmark instrumentation, default off).
    pin_events: Option<Arc<PinEvents>>,
    /// Wakes the real-time runner while it sleeps at rest.
    wake: Arc<Wake>,
}

/// Below this wheel speed (m/s), with both motors commanded to zero, the
/// world is at rest: the wheels are set to exactly zero and the runner sleeps.
/// (A 1e-6 m/s residual would have covered under 1e-6 m before the lag decayed.)
const REST_MPS: f64 = 1e-6;

/// How long the runner sleeps at rest without a wake-up: the simulated clock
/// (and with it the ultrasonic sensor's reading age) moves at least this often.
const REST_TICK: Duration = Duration::from_secs(1);

/// The runner's sleep at rest: a flag it sleeps on, and whether it is asleep
/// (so that pin writes while it steps cost no system call).
#[derive(Debug, Default)]
struct Wake {
    asleep: AtomicBool,
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    /// Called after every change a sleeping runner must see.
    fn kick(&self) {
        if self.asleep.load(Ordering::SeqCst) {
            *self.kicked.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.cv.notify_one();
        }
    }
}

/// Sends one datagram per output pin change to `hardware.sim.pin_events`:
/// pin (u8), `CLOCK_MONOTONIC` ns (u64 LE), level 0..=1 (f64 LE).
struct PinEvents {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl PinEvents {
    fn open(path: &Path) -> Option<Arc<Self>> {
        let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Arc::new(PinEvents { socket, path: path.to_owned() }))
    }

    fn send(&self, pin: u8, level: f64) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let mut msg = [0u8; 17];
        msg[0] = pin;
        msg[1..9].copy_from_slice(&ns.to_le_bytes());
        msg[9..17].copy_from_slice(&level.to_le_bytes());
        // Best effort: nobody listening, or a full queue, loses the event.
        let _ = self.socket.send_to(&msg, &self.path);
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

fn wrap_angle(a: f64) -> f64 {
    let mut a = a % std::f64::consts::TAU;
    if a > std::f64::consts::PI {
        a -= std::f64::consts::TAU;
    } else if a <= -std::f64::consts::PI {
        a += std::f64::consts::TAU;
    }
    a
}

/// Signed distance from `p` to the obstacle's surface (negative inside).
fn distance(o: &Obstacle, p: [f64; 2]) -> f64 {
    match o {
        Obstacle::Circle { center, radius } => (p[0] - center[0]).hypot(p[1] - center[1]) - radius,
        Obstacle::Box { min, max } => {
            let dx = (min[0] - p[0]).max(p[0] - max[0]);
            let dy = (min[1] - p[1]).max(p[1] - max[1]);
            if dx <= 0.0 && dy <= 0.0 { dx.max(dy) } else { dx.max(0.0).hypot(dy.max(0.0)) }
        }
    }
}

/// Distance along the ray `from + t·dir` (|dir| = 1, t ≥ 0) to the
/// obstacle's surface; 0 when `from` is inside it.
pub(crate) fn ray_hit(o: &Obstacle, from: [f64; 2], dir: [f64; 2]) -> Option<f64> {
    match o {
        Obstacle::Circle { center, radius } => {
            let oc = [from[0] - center[0], from[1] - center[1]];
            let b = oc[0] * dir[0] + oc[1] * dir[1];
            let c = oc[0] * oc[0] + oc[1] * oc[1] - radius * radius;
            if c <= 0.0 {
                return Some(0.0);
            }
            let disc = b * b - c;
            let t = -b - disc.sqrt();
            (disc >= 0.0 && t >= 0.0).then_some(t)
        }
        Obstacle::Box { min, max } => {
            // Slabs: the ray is inside the box between the latest entry and the earliest exit.
            let (mut enter, mut exit) = (f64::NEG_INFINITY, f64::INFINITY);
            for i in 0..2 {
                if dir[i].abs() < 1e-12 {
                    if from[i] < min[i] || from[i] > max[i] {
                        return None;
                    }
                } else {
                    let (a, b) = ((min[i] - from[i]) / dir[i], (max[i] - from[i]) / dir[i]);
                    enter = enter.max(a.min(b));
                    exit = exit.min(a.max(b));
                }
            }
            (enter <= exit && exit >= 0.0).then_some(enter.max(0.0))
        }
    }
}

impl World {
    /// The robot's front edge and heading direction.
    fn front(&self) -> ([f64; 2], [f64; 2]) {
        let r = self.cfg.sim.robot_radius_m;
        let (s, c) = self.pose.heading.sin_cos();
        ([self.pose.x + r * c, self.pose.y + r * s], [c, s])
    }

    /// The one sensor ray: distance from the robot's front edge straight
    /// ahead to the nearest obstacle within `range_m` (0 when the front is
    /// already inside one), `None` when nothing is that close. Both the
    /// obstacle sensor and the ultrasonic sensor look along it; the real
    /// beams' cones are not modelled.
    fn ray_distance(&self, range_m: f64) -> Option<f64> {
        let (from, dir) = self.front();
        self.obstacles
            .iter()
            .filter_map(|o| ray_hit(o, from, dir))
            .fold(None, |best: Option<f64>, t| Some(best.map_or(t, |b| b.min(t))))
            .filter(|&t| t <= range_m)
    }

    /// Takes an ultrasonic measurement when one is due.
    fn ping(&mut self) {
        let time_s = self.time_s;
        let Some(max) = self.sonar.as_ref().filter(|s| time_s + 1e-9 >= s.next_at_s).map(|s| s.cfg.max_range_m) else {
            return;
        };
        // What an ultrasonic sensor at the robot's front measures.
        let d = self.ray_distance(max);
        let at = self.clock_us.load(Ordering::Relaxed);
        if let Some(s) = &mut self.sonar {
            if !s.silent {
                s.readings.record(d, at);
            }
            s.next_at_s += s.cfg.period_ms as f64 / 1000.0;
        }
    }

    fn clearance(&self, p: [f64; 2]) -> f64 {
        self.obstacles.iter().map(|o| distance(o, p)).fold(f64::INFINITY, f64::min)
    }

    fn level(&self, pin: Option<u8>) -> f64 {
        pin.and_then(|p| self.pins.get(&p)).map_or(0.0, PinState::level)
    }

    /// What the board does with the motor: (command -1..=1, coasting).
    fn decode(&self, m: &MotorConfig) -> (f64, bool) {
        let in1 = self.level(Some(m.in1_pin));
        let in2 = self.level(Some(m.in2_pin));
        let (u, coast) = match m.driver {
            DriverKind::L298n => {
                let en = self.level(m.pwm_pin);
                let (a, b) = (in1 > 0.5, in2 > 0.5);
                let u = match (a, b) {
                    (true, false) => en,
                    (false, true) => -en,
                    _ => 0.0, // IN1 == IN2: brake while EN is on
                };
                (u, en == 0.0)
            }
            DriverKind::Tb6612fng => {
                if m.stby_pin.is_some() && self.level(m.stby_pin) < 0.5 {
                    (0.0, true)
                } else {
                    let p = self.level(m.pwm_pin);
                    match (in1 > 0.5, in2 > 0.5) {
                        (true, true) => (0.0, false),
                        (false, false) => (0.0, true),
                        (true, false) => (p, false),
                        (false, true) => (-p, false),
                    }
                }
            }
            // Fast decay: IN1 = d, IN2 = 0; slow decay: IN1 = 1, IN2 = 1 - d.
            // Either way the average drive is IN1 - IN2.
            DriverKind::Drv8833 => (in1 - in2, in1 == 0.0 && in2 == 0.0),
        };
        let u = u.clamp(-1.0, 1.0);
        (if m.invert { -u } else { u }, coast)
    }

    /// The obstacle sensor: something within `hardware.sim.sensor_range_m`
    /// of the robot's front, on the same ray as the ultrasonic sensor.
    fn obstacle_detected(&self) -> bool {
        self.ray_distance(self.cfg.sim.sensor_range_m).is_some()
    }

    fn input_high(&self, pin: u8) -> bool {
        if let Some(&high) = self.forced_inputs.get(&pin) {
            return high;
        }
        let as_level = |active: bool, level: Level| (level == Level::High) == active;
        if let Some(o) = &self.cfg.obstacle {
            if o.pin == pin {
                return as_level(self.obstacle_detected(), o.active);
            }
        }
        if let Some(e) = &self.cfg.estop {
            if e.pin == pin {
                return as_level(false, e.active);
            }
        }
        true // pulled up, nothing connected
    }

    fn step(&mut self, dt: f64) {
        if dt <= 0.0 {
            return;
        }
        self.steps += 1;
        let tau = self.cfg.sim.time_constant_s;
        let vmax = self.cfg.max_speed_mps;
        for (i, m) in [self.cfg.left.clone(), self.cfg.right.clone()].iter().enumerate() {
            let (u, coast) = self.decode(m);
            self.command[i] = u;
            // Coasting motors spin down slower than driven or braked ones.
            let tau = if coast { 3.0 * tau } else { tau };
            let target = u * vmax;
            self.wheel[i] += (target - self.wheel[i]) * (1.0 - (-dt / tau).exp());
        }

        let b = self.cfg.wheel_base_m;
        let [vl, vr] = self.wheel;
        let v = (vl + vr) / 2.0;
        let w = (vr - vl) / b;
        let dtheta = w * dt;
        let ds = v * dt;
        let mid = self.pose.heading + dtheta / 2.0;
        let d = [ds * mid.cos(), ds * mid.sin()];
        let p0 = [self.pose.x, self.pose.y];
        let at = |t: f64| [p0[0] + t * d[0], p0[1] + t * d[1]];
        let r = self.cfg.sim.robot_radius_m;

        // How much of the translation is free of obstacles.
        let c0 = self.clearance(p0);
        let t = if self.clearance(at(1.0)) >= r {
            1.0
        } else if c0 < r {
            // Already touching: allow moves that back away only.
            if self.clearance(at(1.0)) > c0 { 1.0 } else { 0.0 }
        } else {
            let (mut lo, mut hi) = (0.0, 1.0);
            for _ in 0..30 {
                let mid = (lo + hi) / 2.0;
                if self.clearance(at(mid)) >= r {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        self.blocked = t < 1.0;
        let p = at(t);
        self.pose = Pose { x: p[0], y: p[1], heading: wrap_angle(self.pose.heading + dtheta) };
        // The wheels travel what the body did: translation cut short, rotation kept.
        let spin = w * b / 2.0 * dt;
        let travel = [t * ds - spin, t * ds + spin];
        if self.blocked {
            // Stalled against the obstacle: only the turning part survives.
            self.wheel = [vl - v, vr - v];
        }
        let enc = self.cfg.encoders.clone();
        if let Some(e) = enc {
            let signed = [e.left_b_pin.is_some(), e.right_b_pin.is_some()];
            for i in 0..2 {
                self.travel[i] += if signed[i] { travel[i] } else { travel[i].abs() };
                let ticks = (self.travel[i] * e.ticks_per_metre).trunc() as i64;
                self.encoders[i].store(ticks, Ordering::Relaxed);
            }
        }
        self.time_s += dt;
        self.clock_us.store((self.time_s * 1e6).round() as u64, Ordering::Release);
        self.ping();
    }

    /// True when both motors are commanded to zero by their pins now and the
    /// wheels have (all but) stopped; the wheels are then set to exactly zero.
    fn settle(&mut self) -> bool {
        let (l, r) = (self.cfg.left.clone(), self.cfg.right.clone());
        let still = self.decode(&l).0 == 0.0 && self.decode(&r).0 == 0.0;
        if still && self.wheel.iter().all(|v| v.abs() < REST_MPS) {
            self.wheel = [0.0; 2];
            self.command = [0.0; 2];
            true
        } else {
            false
        }
    }

    /// Moves the clock by `dt` of rest (nothing moves, so no physics): what
    /// steps of the motionless world would have done, at once. The
    /// ultrasonic sensor measures once, in the last period that fell due.
    fn rest(&mut self, dt: f64) {
        if dt <= 0.0 {
            return;
        }
        self.time_s += dt;
        self.clock_us.store((self.time_s * 1e6).round() as u64, Ordering::Release);
        let time_s = self.time_s;
        if let Some(s) = &mut self.sonar {
            let period = s.cfg.period_ms as f64 / 1000.0;
            if period > 0.0 && time_s > s.next_at_s + period {
                s.next_at_s += ((time_s - s.next_at_s) / period).floor() * period;
            }
        }
        self.ping();
    }

    fn claim(&mut self, pin: u8) -> Result<(), HalError> {
        if self.claimed.contains(&pin) {
            return Err(HalError::PinUsed { pin });
        }
        self.claimed.push(pin);
        Ok(())
    }
}

impl Sim {
    /// Builds the world from `[hardware]` (its motor wiring tells the world
    /// how to read the pins; `[hardware.sim]` holds the physics).
    pub fn new(config: &HardwareConfig) -> Result<Self, HalError> {
        config.validate()?;
        let [x, y, heading] = config.sim.start;
        let world = World {
            cfg: config.clone(),
            pins: BTreeMap::new(),
            claimed: Vec::new(),
            forced_inputs: BTreeMap::new(),
            obstacles: config.sim.obstacles.clone(),
            time_s: 0.0,
            pose: Pose { x, y, heading: wrap_angle(heading) },
            wheel: [0.0; 2],
            command: [0.0; 2],
            travel: [0.0; 2],
            encoders: [Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0))],
            blocked: false,
            clock_us: Arc::new(AtomicU64::new(0)),
            sonar: None,
            steps: 0,
        };
        let pin_events = config.sim.pin_events.as_deref().and_then(PinEvents::open);
        Ok(Self { world: Arc::new(Mutex::new(world)), pin_events, wake: Arc::default() })
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // The world holds plain numbers; a panic elsewhere leaves it usable.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the world by `dt`.
    pub fn step(&self, dt: Duration) {
        self.lock().step(dt.as_secs_f64());
    }

    /// Advances by `total` in steps of at most `step`, as the real-time
    /// runner would (tests use it to cover seconds in one call).
    pub fn run_for(&self, total: Duration, step: Duration) {
        let mut left = total;
        while !left.is_zero() {
            let dt = left.min(step);
            self.step(dt);
            left -= dt;
        }
    }

    /// Everything observable, at once.
    pub fn snapshot(&self) -> SimSnapshot {
        let w = self.lock();
        SimSnapshot {
            time_s: w.time_s,
            pose: w.pose,
            wheel_speed_mps: w.wheel,
            encoder_counts: [w.encoders[0].load(Ordering::Relaxed), w.encoders[1].load(Ordering::Relaxed)],
            motor_command: w.command,
            obstacle_detected: w.obstacle_detected(),
            ultrasonic_m: w.sonar.as_ref().and_then(|s| w.ray_distance(s.cfg.max_range_m)),
            blocked: w.blocked,
            pins: w.pins.clone(),
        }
    }

    /// The robot's pose.
    pub fn pose(&self) -> Pose {
        self.lock().pose
    }

    /// Moves the robot (for test set-up); wheel speeds are kept.
    pub fn set_pose(&self, pose: Pose) {
        self.lock().pose = Pose { heading: wrap_angle(pose.heading), ..pose };
        self.wake.kick();
    }

    /// The obstacles as they are now (what the simulated camera sees).
    pub fn obstacles(&self) -> Vec<Obstacle> {
        self.lock().obstacles.clone()
    }

    /// Replaces the obstacles, e.g. to shut a door in the robot's path.
    pub fn set_obstacles(&self, obstacles: Vec<Obstacle>) {
        self.lock().obstacles = obstacles;
        self.wake.kick();
    }

    /// Forces an input's level (pressing the e-stop, a stuck sensor);
    /// `None` returns it to the world's own answer.
    pub fn set_input(&self, pin: u8, high: Option<bool>) {
        let mut w = self.lock();
        match high {
            Some(h) => w.forced_inputs.insert(pin, h),
            None => w.forced_inputs.remove(&pin),
        };
        drop(w);
        self.wake.kick();
    }

    /// The ultrasonic sensor, measuring the world every `period_ms` of
    /// simulated time (the first measurement is taken now).
    pub fn ultrasonic(&self, cfg: &UltrasonicConfig) -> Result<Ultrasonic, HalError> {
        let mut w = self.lock();
        w.claim(cfg.trigger_pin)?;
        if let Err(e) = w.claim(cfg.echo_pin) {
            w.claimed.retain(|&p| p != cfg.trigger_pin);
            return Err(e);
        }
        w.pins.insert(cfg.trigger_pin, PinState::Output { high: false });
        w.pins.insert(cfg.echo_pin, PinState::Input { high: false });
        let readings = Arc::new(Readings::default());
        w.sonar = Some(SimSonar { cfg: cfg.clone(), readings: readings.clone(), next_at_s: w.time_s, silent: false });
        w.ping();
        let clock = Clock::Manual(w.clock_us.clone());
        let guard = SimClaim { sim: self.clone(), pins: vec![cfg.trigger_pin, cfg.echo_pin] };
        Ok(Ultrasonic::new(cfg, readings, clock, Some(Box::new(guard))))
    }

    /// Silences the ultrasonic sensor (as if its echo wire came loose) or
    /// lets it measure again.
    pub fn set_ultrasonic_silent(&self, silent: bool) {
        if let Some(s) = &mut self.lock().sonar {
            s.silent = silent;
        }
        self.wake.kick();
    }

    /// A simulated output, driven low.
    pub fn output(&self, pin: u8) -> Result<SimOutput, HalError> {
        let mut w = self.lock();
        w.claim(pin)?;
        w.pins.insert(pin, PinState::Output { high: false });
        Ok(SimOutput { pin, sim: self.clone() })
    }

    /// A simulated PWM output at duty 0.
    pub fn pwm(&self, pin: u8, frequency_hz: f64) -> Result<SimPwm, HalError> {
        let mut w = self.lock();
        w.claim(pin)?;
        w.pins.insert(pin, PinState::Pwm { duty: 0.0, frequency_hz });
        Ok(SimPwm { pin, frequency_hz, sim: self.clone() })
    }

    /// A simulated input: the obstacle sensor or e-stop named in the config,
    /// or an unconnected pin that reads high.
    pub fn input(&self, pin: u8) -> Result<SimInput, HalError> {
        let mut w = self.lock();
        w.claim(pin)?;
        let high = w.input_high(pin);
        w.pins.insert(pin, PinState::Input { high });
        Ok(SimInput { pin, sim: self.clone() })
    }

    /// The encoder whose channel A is `pin` (as configured in `[hardware.encoders]`).
    pub fn encoder(&self, pin: u8) -> Result<EncoderCounter, HalError> {
        let mut w = self.lock();
        let Some(e) = w.cfg.encoders.clone() else {
            return Err(HalError::SimPin { pin, what: "no [hardware.encoders] configured" });
        };
        let side = if pin == e.left_pin {
            0
        } else if pin == e.right_pin {
            1
        } else {
            return Err(HalError::SimPin { pin, what: "not an encoder pin" });
        };
        w.claim(pin)?;
        Ok(EncoderCounter::new(w.encoders[side].clone(), None))
    }

    fn set(&self, pin: u8, state: PinState) {
        let old = self.lock().pins.insert(pin, state);
        if let Some(ev) = &self.pin_events {
            if old.map(|o| o.level()) != Some(state.level()) {
                ev.send(pin, state.level());
            }
        }
        self.wake.kick();
    }

    fn release(&self, pin: u8) {
        self.lock().claimed.retain(|&p| p != pin);
    }

    /// The pin levels as they would go to the state file.
    pub fn pin_state(&self) -> PinStateFile {
        PinStateFile { pins: self.lock().pins.clone(), safe_stopped: false }
    }

    /// Writes the pin levels to `hardware.sim.state_file`, if configured.
    /// Returns whether a file was written.
    pub fn write_state_file(&self) -> Result<bool, HalError> {
        let path = self.lock().cfg.sim.state_file.clone();
        match path {
            Some(path) => write_state(&path, &self.pin_state()).map(|()| true),
            None => Ok(false),
        }
    }

    /// Steps the world in real time on its own thread every
    /// `hardware.sim.step_ms`, mirroring pin changes to the state file.
    /// At rest the thread sleeps until a pin write or a change to the world
    /// (or [`REST_TICK`]), then moves the clock over the rest at once.
    /// The world runs until the returned runner is stopped or dropped.
    pub fn run_realtime(&self) -> SimRunner {
        let stop = Arc::new(AtomicBool::new(false));
        let sim = self.clone();
        let flag = stop.clone();
        let period = Duration::from_millis(self.lock().cfg.sim.step_ms);
        let handle = std::thread::Builder::new()
            .name("robotd-sim".into())
            .spawn(move || {
                let mut last = Instant::now();
                let mut written: Option<BTreeMap<u8, PinState>> = None;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    let now = Instant::now();
                    // A stalled thread must not teleport the robot.
                    sim.step((now - last).min(Duration::from_millis(50)));
                    last = now;
                    sim.mirror(&mut written);
                    while !flag.load(Ordering::Relaxed) && sim.sleep_at_rest(&flag) {
                        let now = Instant::now();
                        sim.lock().rest((now - last).as_secs_f64());
                        last = now;
                        sim.mirror(&mut written);
                    }
                }
                sim.mirror(&mut written);
            })
            .expect("spawning the simulator thread");
        SimRunner { stop, wake: self.wake.clone(), handle: Some(handle) }
    }

    /// When the world is at rest, sleeps until kicked, stopped or
    /// [`REST_TICK`] has passed, and returns true; false (at once) otherwise.
    fn sleep_at_rest(&self, stop: &AtomicBool) -> bool {
        let mut kicked = self.wake.kicked.lock().unwrap_or_else(|e| e.into_inner());
        *kicked = false;
        // Asleep before looking at the pins: a write after the look kicks
        // (it waits for `kicked`, which this thread holds until it waits).
        self.wake.asleep.store(true, Ordering::SeqCst);
        if !self.lock().settle() || stop.load(Ordering::SeqCst) {
            self.wake.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        let deadline = Instant::now() + REST_TICK;
        while !*kicked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            kicked = self.wake.cv.wait_timeout(kicked, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        self.wake.asleep.store(false, Ordering::SeqCst);
        true
    }

    fn mirror(&self, written: &mut Option<BTreeMap<u8, PinState>>) {
        let state = self.pin_state();
        if written.as_ref() == Some(&state.pins) {
            return;
        }
        match self.write_state_file() {
            Ok(_) => *written = Some(state.pins),
            Err(e) => tracing::warn!(error = %e, "cannot mirror simulated pins"),
        }
    }
}

/// The thread that runs the world in real time; stops it when dropped.
#[derive(Debug)]
pub struct SimRunner {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    handle: Option<JoinHandle<()>>,
}

impl SimRunner {
    /// Stops the world and waits for the last step.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.kick();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SimRunner {
    fn drop(&mut self) {
        self.halt();
    }
}

fn state_err(path: &Path, source: std::io::Error) -> HalError {
    HalError::StateFile { path: path.display().to_string(), source }
}

fn write_state(path: &Path, state: &PinStateFile) -> Result<(), HalError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| state_err(path, e.into()))?;
    // Rename over the old file so readers never see half a file.
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    std::fs::write(&tmp, json).map_err(|e| state_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| state_err(path, e))
}

/// Reads a pin-state file (for tests and tools outside the daemon).
pub fn read_state_file(path: &Path) -> Result<PinStateFile, HalError> {
    let bytes = std::fs::read(path).map_err(|e| state_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| state_err(path, e.into()))
}

/// `robotd safe-stop` for the simulator: writes every motor pin's safe level
/// (low, duty 0) to the state file. Returns the pins written, or nothing
/// when no state file is configured (the world died with the daemon).
pub fn write_safe_state(config: &HardwareConfig) -> Result<Vec<u8>, HalError> {
    let Some(path) = &config.sim.state_file else {
        return Ok(Vec::new());
    };
    let mut state = match read_state_file(path) {
        Ok(s) => s,
        Err(HalError::StateFile { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            PinStateFile::default()
        }
        Err(e) => return Err(e),
    };
    let mut pins = Vec::new();
    for m in [&config.left, &config.right] {
        let pwm: Vec<u8> = m.pwm_pins().into_iter().map(|(_, p)| p).collect();
        for (_, pin) in m.pins() {
            let safe = if pwm.contains(&pin) {
                PinState::Pwm { duty: 0.0, frequency_hz: m.pwm_frequency_hz }
            } else {
                PinState::Output { high: false }
            };
            state.pins.insert(pin, safe);
            if !pins.contains(&pin) {
                pins.push(pin);
            }
        }
    }
    state.safe_stopped = true;
    write_state(path, &state)?;
    Ok(pins)
}

/// Releases pins claimed for a sensor when it is dropped.
struct SimClaim {
    sim: Sim,
    pins: Vec<u8>,
}

impl Drop for SimClaim {
    fn drop(&mut self) {
        for &p in &self.pins {
            self.sim.release(p);
        }
    }
}

/// A simulated digital output.
#[derive(Debug)]
pub struct SimOutput {
    pin: u8,
    sim: Sim,
}

impl SimOutput {
    /// Drives the pin low.
    pub fn set_low(&mut self) -> Result<(), HalError> {
        self.sim.set(self.pin, PinState::Output { high: false });
        Ok(())
    }
    /// Drives the pin high.
    pub fn set_high(&mut self) -> Result<(), HalError> {
        self.sim.set(self.pin, PinState::Output { high: true });
        Ok(())
    }
}

impl Drop for SimOutput {
    /// Like the rppal backend, the pin keeps its level; only the claim goes.
    fn drop(&mut self) {
        self.sim.release(self.pin);
    }
}

/// A simulated PWM output.
#[derive(Debug)]
pub struct SimPwm {
    pin: u8,
    frequency_hz: f64,
    sim: Sim,
}

impl SimPwm {
    /// Sets the duty as a fraction of [`PWM_MAX_DUTY`].
    pub fn set_duty_cycle(&mut self, duty: u16) -> Result<(), HalError> {
        let duty = f64::from(duty) / f64::from(PWM_MAX_DUTY);
        self.sim.set(self.pin, PinState::Pwm { duty, frequency_hz: self.frequency_hz });
        Ok(())
    }
}

impl Drop for SimPwm {
    fn drop(&mut self) {
        self.sim.release(self.pin);
    }
}

/// A simulated input.
#[derive(Debug)]
pub struct SimInput {
    pin: u8,
    sim: Sim,
}

impl SimInput {
    /// The level the world presents now.
    pub fn is_high(&mut self) -> Result<bool, HalError> {
        let mut w = self.sim.lock();
        let high = w.input_high(self.pin);
        w.pins.insert(self.pin, PinState::Input { high });
        Ok(high)
    }
}

impl Drop for SimInput {
    fn drop(&mut self) {
        self.sim.release(self.pin);
    }
}

impl embedded_hal::digital::ErrorType for SimOutput {
    type Error = HalError;
}

impl embedded_hal::digital::OutputPin for SimOutput {
    fn set_low(&mut self) -> Result<(), HalError> {
        SimOutput::set_low(self)
    }
    fn set_high(&mut self) -> Result<(), HalError> {
        SimOutput::set_high(self)
    }
}

impl embedded_hal::pwm::ErrorType for SimPwm {
    type Error = HalError;
}

impl embedded_hal::pwm::SetDutyCycle for SimPwm {
    fn max_duty_cycle(&self) -> u16 {
        PWM_MAX_DUTY
    }
    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), HalError> {
        SimPwm::set_duty_cycle(self, duty)
    }
}

impl embedded_hal::digital::ErrorType for SimInput {
    type Error = HalError;
}

impl embedded_hal::digital::InputPin for SimInput {
    fn is_high(&mut self) -> Result<bool, HalError> {
        SimInput::is_high(self)
    }
    fn is_low(&mut self) -> Result<bool, HalError> {
        SimInput::is_high(self).map(|h| !h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::config::{EncodersConfig, InputConfig, Pull};
    use crate::hal::{BinarySensor, Encoder, Hardware, SetDutyCycle};

    const MS5: Duration = Duration::from_millis(5);

    fn config() -> HardwareConfig {
        HardwareConfig {
            encoders: Some(EncodersConfig {
                left_pin: 5,
                right_pin: 6,
                left_b_pin: Some(7),
                right_b_pin: Some(8),
                ticks_per_metre: 1000.0,
            }),
            obstacle: Some(InputConfig { pin: 4, active: Level::Low, pull: Pull::Up }),
            ..HardwareConfig::default()
        }
    }

    /// Raw L298N pins of the default config, driven by hand.
    struct Pins {
        in1: [SimOutput; 2],
        in2: [SimOutput; 2],
        en: [SimPwm; 2],
    }

    fn pins(sim: &Sim) -> Pins {
        Pins {
            in1: [sim.output(17).unwrap(), sim.output(23).unwrap()],
            in2: [sim.output(27).unwrap(), sim.output(24).unwrap()],
            en: [sim.pwm(12, 1000.0).unwrap(), sim.pwm(13, 1000.0).unwrap()],
        }
    }

    /// Sets one wheel: positive forward, as an L298N would be driven.
    fn wheel(p: &mut Pins, side: usize, u: f64) {
        if u >= 0.0 {
            p.in1[side].set_high().unwrap();
            p.in2[side].set_low().unwrap();
        } else {
            p.in1[side].set_low().unwrap();
            p.in2[side].set_high().unwrap();
        }
        let duty = (u.abs() * f64::from(PWM_MAX_DUTY)).round() as u16;
        SetDutyCycle::set_duty_cycle(&mut p.en[side], duty).unwrap();
    }

    #[test]
    fn idle_robot_stays_put() {
        let sim = Sim::new(&config()).unwrap();
        let _p = pins(&sim);
        sim.run_for(Duration::from_secs(1), MS5);
        let s = sim.snapshot();
        assert_eq!(s.pose, Pose::default());
        assert_eq!(s.encoder_counts, [0, 0]);
        assert!((s.time_s - 1.0).abs() < 1e-9);
    }

    #[test]
    fn driving_forward_moves_by_speed_times_time() {
        let cfg = config();
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        wheel(&mut p, 0, 0.5);
        wheel(&mut p, 1, 0.5);
        sim.run_for(Duration::from_secs(2), MS5);
        let s = sim.snapshot();
        // 0.5 × 0.5 m/s for 2 s, less the lag (about v·τ = 0.025 m).
        let expected = 0.25 * 2.0 - 0.25 * cfg.sim.time_constant_s;
        assert!((s.pose.x - expected).abs() < 0.01, "x = {}", s.pose.x);
        assert!(s.pose.y.abs() < 1e-9 && s.pose.heading.abs() < 1e-9);
        assert!((s.wheel_speed_mps[0] - 0.25).abs() < 1e-3);
        // Encoders count the distance: 1000 ticks per metre.
        let ticks = (s.pose.x * 1000.0) as i64;
        for c in s.encoder_counts {
            assert!((c - ticks).abs() <= 1, "{c} vs {ticks}");
        }
    }

    #[test]
    fn reverse_counts_down_with_quadrature_and_up_without() {
        let mut cfg = config();
        cfg.encoders.as_mut().unwrap().right_b_pin = None;
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        wheel(&mut p, 0, -1.0);
        wheel(&mut p, 1, -1.0);
        sim.run_for(Duration::from_secs(1), MS5);
        let s = sim.snapshot();
        assert!(s.pose.x < -0.4, "x = {}", s.pose.x);
        assert!(s.encoder_counts[0] < -400, "{:?}", s.encoder_counts);
        assert!(s.encoder_counts[1] > 400, "{:?}", s.encoder_counts);
    }

    #[test]
    fn turning_in_place_changes_heading_only() {
        let cfg = config();
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        wheel(&mut p, 0, -0.5);
        wheel(&mut p, 1, 0.5);
        sim.run_for(Duration::from_millis(500), MS5);
        let s = sim.snapshot();
        // ω = (vr - vl) / b = 0.5 / 0.15 rad/s, less the lag.
        let expected = 0.5 / cfg.wheel_base_m * (0.5 - cfg.sim.time_constant_s);
        assert!(s.pose.heading > 0.0, "counter-clockwise");
        assert!((s.pose.heading - expected).abs() < 0.05, "{}", s.pose.heading);
        assert!(s.pose.x.abs() < 1e-9 && s.pose.y.abs() < 1e-9);
        assert!(s.encoder_counts[0] < 0 && s.encoder_counts[1] > 0);
    }

    #[test]
    fn brake_stops_faster_than_coast() {
        let stop_distance = |brake: bool| {
            let sim = Sim::new(&config()).unwrap();
            let mut p = pins(&sim);
            wheel(&mut p, 0, 1.0);
            wheel(&mut p, 1, 1.0);
            sim.run_for(Duration::from_secs(1), MS5);
            let x0 = sim.pose().x;
            for side in 0..2 {
                p.in1[side].set_low().unwrap();
                p.in2[side].set_low().unwrap();
                let duty = if brake { PWM_MAX_DUTY } else { 0 };
                SetDutyCycle::set_duty_cycle(&mut p.en[side], duty).unwrap();
            }
            sim.run_for(Duration::from_secs(2), MS5);
            assert!(sim.snapshot().wheel_speed_mps[0].abs() < 0.01);
            sim.pose().x - x0
        };
        let (braked, coasted) = (stop_distance(true), stop_distance(false));
        assert!(braked > 0.0 && braked < coasted, "{braked} vs {coasted}");
    }

    #[test]
    fn inverted_motor_is_rewired_in_the_world_too() {
        let mut cfg = config();
        cfg.left.invert = true;
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        // Pins say "forward" on both, but the left motor is wired backwards.
        wheel(&mut p, 0, 0.5);
        wheel(&mut p, 1, 0.5);
        sim.step(MS5);
        let [l, r] = sim.snapshot().motor_command;
        assert!((l + 0.5).abs() < 1e-4 && (r - 0.5).abs() < 1e-4, "{l} {r}");
    }

    #[test]
    fn door_trips_the_sensor_and_blocks_the_robot() {
        let mut cfg = config();
        // A shut door across the corridor 1 m ahead.
        cfg.sim.obstacles = vec![Obstacle::Box { min: [1.0, -1.0], max: [1.05, 1.0] }];
        let mut hw = Hardware::open(&cfg).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut sensor = hw.obstacle_sensor().unwrap().unwrap();
        let mut p = pins(&sim);
        assert!(!sensor.is_active().unwrap());
        wheel(&mut p, 0, 1.0);
        wheel(&mut p, 1, 1.0);

        // The sensor trips before contact.
        let mut tripped_at = None;
        for _ in 0..1000 {
            sim.step(MS5);
            if sensor.is_active().unwrap() {
                tripped_at = Some(sim.pose().x);
                break;
            }
        }
        let front_at_trip = tripped_at.expect("sensor never tripped") + cfg.sim.robot_radius_m;
        assert!(
            (1.0 - front_at_trip) <= cfg.sim.sensor_range_m + 0.01 && front_at_trip < 1.0,
            "front at {front_at_trip}"
        );
        // Raw pin level: active low.
        assert_eq!(sim.snapshot().pins[&4], PinState::Input { high: false });

        // Keep pushing: the robot stops at the door, front touching it.
        sim.run_for(Duration::from_secs(3), MS5);
        let s = sim.snapshot();
        assert!(s.blocked);
        let front = s.pose.x + cfg.sim.robot_radius_m;
        assert!(front <= 1.0 + 1e-6 && front > 0.99, "front at {front}");
        assert!(s.wheel_speed_mps.iter().all(|v| v.abs() < 1e-9));
        assert!(s.obstacle_detected);

        // Backing away is allowed and clears the sensor.
        wheel(&mut p, 0, -1.0);
        wheel(&mut p, 1, -1.0);
        sim.run_for(Duration::from_secs(1), MS5);
        assert!(sim.pose().x < 0.5);
        assert!(!sensor.is_active().unwrap());
    }

    #[test]
    fn round_obstacle_blocks_too() {
        let mut cfg = config();
        cfg.sim.obstacles = vec![Obstacle::Circle { center: [0.0, 1.0], radius: 0.2 }];
        cfg.sim.start = [0.0, 0.0, std::f64::consts::FRAC_PI_2];
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        wheel(&mut p, 0, 1.0);
        wheel(&mut p, 1, 1.0);
        sim.run_for(Duration::from_secs(4), MS5);
        let y = sim.pose().y;
        assert!((y - (1.0 - 0.2 - cfg.sim.robot_radius_m)).abs() < 0.01, "y = {y}");
        assert!(sim.snapshot().obstacle_detected);
    }

    #[test]
    fn forced_input_and_claims() {
        let mut cfg = config();
        cfg.estop = Some(InputConfig { pin: 25, active: Level::High, pull: Pull::Down });
        let mut hw = Hardware::open(&cfg).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut estop = hw.estop().unwrap().unwrap();
        assert!(!estop.is_active().unwrap());
        sim.set_input(25, Some(true));
        assert!(estop.is_active().unwrap());
        sim.set_input(25, None);
        assert!(!estop.is_active().unwrap());
        assert!(matches!(sim.encoder(9), Err(HalError::SimPin { pin: 9, .. })));
        let (l, r) = hw.encoders().unwrap().unwrap();
        assert_eq!((l.count(), r.count()), (0, 0));
    }

    #[test]
    fn state_file_mirrors_pins_and_safe_stop_rewrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let mut cfg = config();
        cfg.sim.state_file = Some(path.clone());
        cfg.sim.step_ms = 1;
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        wheel(&mut p, 0, 0.5);
        let runner = sim.run_realtime();
        let deadline = Instant::now() + Duration::from_secs(5);
        let state = loop {
            if let Ok(s) = read_state_file(&path) {
                if s.pins.get(&17) == Some(&PinState::Output { high: true }) {
                    break s;
                }
            }
            assert!(Instant::now() < deadline, "state file never written");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(!state.pins[&12].is_safe());
        runner.stop();
        assert!(sim.snapshot().time_s > 0.0, "real-time runner stepped the world");

        // As if the daemon was killed with the motor running:
        let written = write_safe_state(&cfg).unwrap();
        assert_eq!(written, vec![17, 27, 12, 23, 24, 13]);
        let state = read_state_file(&path).unwrap();
        assert!(state.safe_stopped);
        for pin in written {
            assert!(state.pins[&pin].is_safe(), "GPIO {pin}: {:?}", state.pins[&pin]);
        }
    }

    /// Waits (up to 20 s) until the runner has stopped stepping: no step in 300 ms.
    fn wait_for_rest(sim: &Sim) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = sim.lock().steps;
            std::thread::sleep(Duration::from_millis(300));
            if sim.lock().steps == before {
                return;
            }
            assert!(Instant::now() < deadline, "the runner never came to rest: {:?}", sim.snapshot());
        }
    }

    #[test]
    fn realtime_runner_sleeps_at_rest_and_wakes_on_a_pin_write() {
        let mut cfg = config();
        cfg.sim.step_ms = 1;
        let sim = Sim::new(&cfg).unwrap();
        let mut p = pins(&sim);
        let runner = sim.run_realtime();
        // Stopped motors: at most a step or two, not one a millisecond.
        wait_for_rest(&sim);
        let steps = sim.lock().steps;
        let t0 = sim.snapshot().time_s;
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(sim.lock().steps, steps, "stepped at rest");
        // The clock still moves (the ultrasonic sensor's readings age), a second at a time.
        let dt = sim.snapshot().time_s - t0;
        // (Each wake moves it by the rest since the last one, which may have begun before `t0`.)
        assert!((1.0..=3.6).contains(&dt), "simulated time moved {dt} s in 2.5 s of rest");

        // A pin write wakes it: the robot drives off.
        wheel(&mut p, 0, 0.5);
        wheel(&mut p, 1, 0.5);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim.pose().x < 0.05 {
            assert!(Instant::now() < deadline, "did not drive after a pin write: {:?}", sim.snapshot());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sim.lock().steps > steps + 10);

        // Coasting to a stop, then asleep again with the wheels exactly still.
        wheel(&mut p, 0, 0.0);
        wheel(&mut p, 1, 0.0);
        wait_for_rest(&sim);
        let s = sim.snapshot();
        assert_eq!(s.wheel_speed_mps, [0.0, 0.0]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sim.pose(), s.pose);
        runner.stop();
    }

    #[test]
    fn rest_moves_the_clock_and_measures_once_in_the_last_period_due() {
        let sim = Sim::new(&sonar_config(vec![])).unwrap();
        let sensor = sim.ultrasonic(&UltrasonicConfig::new(20, 21)).unwrap();
        sim.set_obstacles(vec![Obstacle::Box { min: [0.5, -0.5], max: [0.6, 0.5] }]);
        // 1 s of rest in one go: the clock is at 1 s and the reading fresh (a period is 60 ms).
        sim.lock().rest(1.0);
        assert!((sim.snapshot().time_s - 1.0).abs() < 1e-9);
        let d = sensor.distance_m().unwrap().expect("sees the box");
        assert!((d - (0.5 - sim.lock().cfg.sim.robot_radius_m)).abs() < 1e-9, "{d}");
        // The next measurement is the next period's, not a catch-up of the missed ones.
        let next = sim.lock().sonar.as_ref().unwrap().next_at_s;
        assert!(next > 1.0 && next <= 1.06 + 1e-9, "next ping at {next}");
    }

    fn sonar_config(obstacles: Vec<Obstacle>) -> HardwareConfig {
        let mut cfg = HardwareConfig { ultrasonic: Some(UltrasonicConfig::new(20, 21)), ..HardwareConfig::default() };
        cfg.sim.obstacles = obstacles;
        cfg
    }

    #[test]
    fn rays_hit_boxes_and_circles() {
        let b = Obstacle::Box { min: [1.0, -0.5], max: [1.1, 0.5] };
        assert!((ray_hit(&b, [0.0, 0.0], [1.0, 0.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(ray_hit(&b, [0.0, 0.0], [-1.0, 0.0]), None, "behind");
        assert_eq!(ray_hit(&b, [0.0, 0.0], [0.0, 1.0]), None, "beside");
        assert_eq!(ray_hit(&b, [0.0, 0.6], [1.0, 0.0]), None, "passes above");
        assert_eq!(ray_hit(&b, [1.05, 0.0], [1.0, 0.0]), Some(0.0), "inside");
        let (s, c) = (0.3f64).sin_cos();
        let t = ray_hit(&b, [0.0, 0.0], [c, s]).unwrap();
        assert!((t - 1.0 / c).abs() < 1e-12, "slanted: {t}");
        let circle = Obstacle::Circle { center: [0.0, 2.0], radius: 0.5 };
        assert!((ray_hit(&circle, [0.0, 0.0], [0.0, 1.0]).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(ray_hit(&circle, [0.0, 0.0], [0.0, -1.0]), None);
        assert_eq!(ray_hit(&circle, [1.0, 0.0], [0.0, 1.0]), None);
    }

    #[test]
    fn ultrasonic_sees_a_box_ahead_at_its_distance_and_nothing_behind_or_beside() {
        let r = HardwareConfig::default().sim.robot_radius_m;
        let ahead = Obstacle::Box { min: [1.0, -0.5], max: [1.1, 0.5] };
        let mut hw = Hardware::open(&sonar_config(vec![ahead.clone()])).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut sensor = hw.obstacle_sensor().unwrap().expect("ultrasonic alone is an obstacle sensor");
        let d = sensor.distance_m().unwrap().unwrap().unwrap();
        assert!((d - (1.0 - r)).abs() <= 0.02, "measured {d}");
        assert_eq!(sim.snapshot().ultrasonic_m, Some(d));
        assert!(!sensor.is_active().unwrap(), "0.88 m is beyond the 0.25 m threshold");

        let behind = Obstacle::Box { min: [-1.1, -0.5], max: [-1.0, 0.5] };
        let beside = Obstacle::Box { min: [-0.2, 0.3], max: [0.2, 0.6] };
        sim.set_obstacles(vec![behind.clone(), beside.clone()]);
        sim.run_for(Duration::from_millis(60), MS5);
        assert_eq!(sensor.distance_m().unwrap().unwrap(), None);
        assert!(!sensor.is_active().unwrap());

        // Turned to face the one beside: seen (y 0.3 from the front edge at y 0.12).
        sim.set_pose(Pose { heading: std::f64::consts::FRAC_PI_2, ..Pose::default() });
        sim.run_for(Duration::from_millis(60), MS5);
        let d = sensor.distance_m().unwrap().unwrap().unwrap();
        assert!((d - (0.3 - r)).abs() <= 0.02, "measured {d}");
        assert!(sensor.is_active().unwrap(), "0.18 m is within the threshold");

        // Beyond max_range_m (2 m): nothing in range.
        sim.set_pose(Pose::default());
        sim.set_obstacles(vec![Obstacle::Box { min: [2.5, -0.5], max: [2.6, 0.5] }]);
        sim.run_for(Duration::from_millis(60), MS5);
        assert_eq!(sensor.distance_m().unwrap().unwrap(), None);
    }

    #[test]
    fn obstacle_sensor_and_ultrasonic_look_along_the_same_ray() {
        // A wall running 1 mm beside the ray, and a box 0.1 m ahead: marching
        // by the clearance would crawl along the wall and never reach the box.
        let r = HardwareConfig::default().sim.robot_radius_m;
        let wall = Obstacle::Box { min: [r, -1.0], max: [2.0, -0.001] };
        let ahead = Obstacle::Box { min: [r + 0.1, -0.5], max: [r + 0.2, 0.5] };
        let mut cfg = sonar_config(vec![wall.clone(), ahead]);
        cfg.sim.sensor_range_m = 0.15;
        let mut hw = Hardware::open(&cfg).unwrap();
        let sim = hw.sim().unwrap().clone();
        let _sonar = hw.obstacle_sensor().unwrap().expect("ultrasonic configured");
        let s = sim.snapshot();
        assert!(s.obstacle_detected, "the box 0.1 m ahead is within the 0.15 m sensor range");
        assert!((s.ultrasonic_m.unwrap() - 0.1).abs() < 1e-9, "{:?}", s.ultrasonic_m);
        // The wall alone is beside the ray, not on it: neither sensor sees it.
        sim.set_obstacles(vec![wall]);
        let s = sim.snapshot();
        assert!(!s.obstacle_detected && s.ultrasonic_m.is_none(), "{s:?}");
    }

    #[test]
    fn ultrasonic_measures_once_a_period_and_goes_stale_when_silent() {
        let mut hw = Hardware::open(&sonar_config(vec![])).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut sensor = hw.obstacle_sensor().unwrap().unwrap();
        assert!(!sensor.is_active().unwrap());
        // A box appears just ahead: not seen before the next ping, 60 ms after the first.
        sim.set_obstacles(vec![Obstacle::Box { min: [0.2, -0.5], max: [0.3, 0.5] }]);
        sim.run_for(Duration::from_millis(55), MS5);
        assert!(!sensor.is_active().unwrap());
        sim.run_for(Duration::from_millis(5), MS5);
        assert!(sensor.is_active().unwrap());

        // The echo wire comes loose: the last reading holds for three periods, then it is an error.
        sim.set_obstacles(vec![]);
        sim.run_for(Duration::from_millis(60), MS5);
        assert!(!sensor.is_active().unwrap());
        sim.set_ultrasonic_silent(true);
        sim.run_for(Duration::from_millis(180), MS5);
        assert!(!sensor.is_active().unwrap(), "180 ms old is still fresh");
        sim.run_for(Duration::from_millis(5), MS5);
        let e = sensor.is_active().unwrap_err();
        assert!(matches!(e, HalError::NoEcho { age_ms: Some(185), .. }), "{e:?}");
        sim.set_ultrasonic_silent(false);
        sim.run_for(Duration::from_millis(60), MS5);
        assert!(!sensor.is_active().unwrap());
    }

    #[test]
    fn ir_and_ultrasonic_combine() {
        let mut cfg = sonar_config(vec![]);
        cfg.obstacle = Some(InputConfig { pin: 4, active: Level::Low, pull: Pull::Up });
        let mut hw = Hardware::open(&cfg).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut sensor = hw.obstacle_sensor().unwrap().unwrap();
        assert!(!sensor.is_active().unwrap());
        sim.set_input(4, Some(false)); // IR sees something
        assert!(sensor.is_active().unwrap());
        sim.set_input(4, None);
        sim.set_obstacles(vec![Obstacle::Circle { center: [0.4, 0.0], radius: 0.1 }]);
        sim.run_for(Duration::from_millis(60), MS5);
        assert!(sensor.is_active().unwrap(), "ultrasonic alone");
        // A stale ultrasonic is an error, unless the IR already reports an obstacle.
        sim.set_obstacles(vec![]);
        sim.set_ultrasonic_silent(true);
        sim.run_for(Duration::from_millis(300), MS5);
        assert!(sensor.is_active().is_err());
        sim.set_input(4, Some(false));
        assert!(sensor.is_active().unwrap());
        // The pins are claimed while the sensor lives.
        assert!(matches!(sim.input(21), Err(HalError::PinUsed { pin: 21 })));
        drop(sensor);
        sim.input(21).unwrap();
        // Without either sensor there is none.
        let mut hw = Hardware::open(&HardwareConfig::default()).unwrap();
        assert!(hw.obstacle_sensor().unwrap().is_none());
    }

    #[test]
    fn distances() {
        let b = Obstacle::Box { min: [0.0, 0.0], max: [1.0, 1.0] };
        assert!((distance(&b, [2.0, 0.5]) - 1.0).abs() < 1e-12);
        assert!((distance(&b, [2.0, 2.0]) - 2f64.sqrt()).abs() < 1e-12);
        assert!((distance(&b, [0.5, 0.25]) + 0.25).abs() < 1e-12);
        let c = Obstacle::Circle { center: [0.0, 0.0], radius: 1.0 };
        assert!((distance(&c, [3.0, 0.0]) - 2.0).abs() < 1e-12);
        assert!((wrap_angle(3.0 * std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-9);
    }
}
