//! The `[hardware]` section: which backend, how the motor boards are wired,
//! and the simulated world.
//!
//! Everything here is plain data with serde defaults, so the main config module
//! can embed [`HardwareConfig`] as `[hardware]`. [`HardwareConfig::validate`]
//! runs before any pin is opened and names the offending key in its error, so
//! a wiring mistake is reported at start-up instead of as a twitching wheel.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Highest BCM GPIO number on the 40-pin header.
pub const MAX_BCM_PIN: u8 = 27;

/// A configuration value that cannot work, with the key that holds it.
///
/// Cause: a value in `[hardware]` is out of range, missing for the chosen
/// driver, or clashes with another key. Fix: edit the key named in the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `hardware.left.pwm_pin`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// Which implementation of the pins to use.
///
/// `sim` is the default so that a fresh checkout runs on a laptop; a robot
/// sets `backend = "rppal"` explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Real GPIO and PWM on a Raspberry Pi through the `rppal` crate.
    Rppal,
    /// Simulated pins driving a small physics world.
    #[default]
    Sim,
}

/// The H-bridge board a motor is wired to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// L298N: IN1/IN2 choose the direction, EN (`pwm_pin`) carries the PWM.
    L298n,
    /// TB6612FNG: IN1/IN2 choose the direction, PWM (`pwm_pin`) the speed,
    /// optional STBY (`stby_pin`, may be shared by both sides).
    Tb6612fng,
    /// DRV8833: two PWM inputs per motor (`in1_pin`, `in2_pin`), no enable pin.
    Drv8833,
}

impl DriverKind {
    fn name(self) -> &'static str {
        match self {
            DriverKind::L298n => "l298n",
            DriverKind::Tb6612fng => "tb6612fng",
            DriverKind::Drv8833 => "drv8833",
        }
    }
}

/// How a DRV8833 spends the off-part of each PWM period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Off-time coasts: simple, but speed falls off at low duty.
    #[default]
    Fast,
    /// Off-time brakes: speed follows duty more linearly at low duty.
    Slow,
}

/// What "stop" means for the motors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Short the motor terminals: the robot stops within centimetres.
    #[default]
    Brake,
    /// Let the motors spin freely: gentler, but the robot rolls on.
    Coast,
}

/// One motor and the board it is wired to (`[hardware.left]`, `[hardware.right]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotorConfig {
    /// Board type; decides which pins below are required.
    pub driver: DriverKind,
    /// IN1 (BCM). On a DRV8833 this is a PWM output.
    pub in1_pin: u8,
    /// IN2 (BCM). On a DRV8833 this is a PWM output.
    pub in2_pin: u8,
    /// EN on an L298N, PWMA/PWMB on a TB6612FNG; absent on a DRV8833.
    #[serde(default)]
    pub pwm_pin: Option<u8>,
    /// STBY on a TB6612FNG (absent when tied to VCC); both sides may name the same pin.
    #[serde(default)]
    pub stby_pin: Option<u8>,
    /// The motor is wired the other way round: swap directions in software.
    #[serde(default)]
    pub invert: bool,
    /// PWM frequency. 1-20 kHz suits most small motors; software PWM gets
    /// jittery above ~1 kHz, so use the hardware PWM pins (12, 13, 18, 19) for more.
    #[serde(default = "default_pwm_frequency")]
    pub pwm_frequency_hz: f64,
    /// Duty at the smallest non-zero speed; raise it until a gentle command
    /// starts the wheel moving (motors stall below some duty).
    #[serde(default)]
    pub min_duty: f64,
    /// Duty at full speed; lower it to run a 6 V motor from a higher supply.
    #[serde(default = "default_max_duty")]
    pub max_duty: f64,
    /// DRV8833 decay mode (ignored by the other boards).
    #[serde(default)]
    pub decay: Decay,
}

fn default_pwm_frequency() -> f64 {
    1000.0
}
fn default_max_duty() -> f64 {
    1.0
}

impl MotorConfig {
    /// Every motor pin with its role name, for duplicate checks and safe-stop.
    pub fn pins(&self) -> Vec<(&'static str, u8)> {
        let mut pins = vec![("in1_pin", self.in1_pin), ("in2_pin", self.in2_pin)];
        if let Some(p) = self.pwm_pin {
            pins.push(("pwm_pin", p));
        }
        if let Some(p) = self.stby_pin {
            pins.push(("stby_pin", p));
        }
        pins
    }

    /// The pins that carry PWM (as opposed to plain on/off).
    pub fn pwm_pins(&self) -> Vec<(&'static str, u8)> {
        match self.driver {
            DriverKind::Drv8833 => vec![("in1_pin", self.in1_pin), ("in2_pin", self.in2_pin)],
            _ => self.pwm_pin.map(|p| ("pwm_pin", p)).into_iter().collect(),
        }
    }
}

/// Wheel encoders (`[hardware.encoders]`).
///
/// Rising edges of channel A are counted. With a B channel (quadrature) the
/// count is signed (forward up, reverse down); without one it only grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodersConfig {
    /// Left encoder channel A (BCM).
    pub left_pin: u8,
    /// Right encoder channel A (BCM).
    pub right_pin: u8,
    /// Left channel B, for a signed count.
    #[serde(default)]
    pub left_b_pin: Option<u8>,
    /// Right channel B, for a signed count.
    #[serde(default)]
    pub right_b_pin: Option<u8>,
    /// Counted edges per metre of wheel travel (edges per wheel turn / (π · diameter)).
    pub ticks_per_metre: f64,
}

/// Logic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// 0 V.
    Low,
    /// 3.3 V.
    High,
}

/// Internal bias resistor for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Pull-up: an open switch or open-collector output reads high.
    #[default]
    Up,
    /// Pull-down.
    Down,
    /// No bias: the sensor drives the line itself.
    None,
}

/// A binary input such as an obstacle sensor or an e-stop switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// BCM pin number.
    pub pin: u8,
    /// Level that means "obstacle" / "e-stop pressed". Most IR obstacle
    /// modules pull their output low on detection, hence the default.
    #[serde(default = "default_active")]
    pub active: Level,
    /// Bias resistor.
    #[serde(default)]
    pub pull: Pull,
}

fn default_active() -> Level {
    Level::Low
}

/// An HC-SR04 ultrasonic range finder used as an obstacle sensor
/// (`[hardware.ultrasonic]`): an obstacle is reported while the measured
/// distance ahead is below `threshold_m`.
///
/// The HC-SR04 runs on 5 V and its ECHO output is 5 V: it must reach the Pi
/// through a voltage divider (e.g. 1 kΩ from ECHO to the GPIO, 2 kΩ from the
/// GPIO to ground). TRIG accepts the Pi's 3.3 V directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UltrasonicConfig {
    /// TRIG input of the module (BCM), driven by the Pi.
    pub trigger_pin: u8,
    /// ECHO output of the module (BCM), through the voltage divider.
    pub echo_pin: u8,
    /// Obstacle while the distance from the sensor is below this (metres).
    #[serde(default = "default_threshold_m")]
    pub threshold_m: f64,
    /// Farthest distance measured (metres, at most 4); an echo from farther
    /// away, or none, means "nothing in range". Sets the echo timeout.
    #[serde(default = "default_max_range_m")]
    pub max_range_m: f64,
    /// Time between measurements (milliseconds, at least 60: the module's
    /// cycle, so that one ping's late echoes are not taken for the next's).
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
}

fn default_threshold_m() -> f64 {
    0.25
}
fn default_max_range_m() -> f64 {
    2.0
}
fn default_period_ms() -> u64 {
    60
}

/// The HC-SR04's rated maximum range (metres).
pub const ULTRASONIC_MAX_RANGE_M: f64 = 4.0;

impl UltrasonicConfig {
    /// A module on `trigger_pin`/`echo_pin` with the default threshold, range and period.
    pub fn new(trigger_pin: u8, echo_pin: u8) -> Self {
        Self {
            trigger_pin,
            echo_pin,
            threshold_m: default_threshold_m(),
            max_range_m: default_max_range_m(),
            period_ms: default_period_ms(),
        }
    }

    /// A reading older than this counts as no reading (three periods).
    pub fn stale_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(3 * self.period_ms)
    }
}

/// An obstacle in the simulated world, in world coordinates (metres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Obstacle {
    /// A round obstacle (a bin, a chair leg).
    Circle {
        /// Centre `[x, y]`.
        center: [f64; 2],
        /// Radius.
        radius: f64,
    },
    /// An axis-aligned box (a wall, a shut door).
    Box {
        /// Lower-left corner `[x, y]`.
        min: [f64; 2],
        /// Upper-right corner `[x, y]`.
        max: [f64; 2],
    },
}

/// The simulated world (`[hardware.sim]`). Ignored by the rppal backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Time constant of the wheels' first-order response to a new duty (seconds).
    pub time_constant_s: f64,
    /// The robot's footprint is a circle of this radius around its centre.
    pub robot_radius_m: f64,
    /// The obstacle sensor sees this far ahead of the robot's front edge.
    pub sensor_range_m: f64,
    /// Starting pose `[x, y, heading]` (metres, radians; heading 0 faces +x).
    pub start: [f64; 3],
    /// Real-time step when run by the daemon (milliseconds).
    pub step_ms: u64,
    /// Where the daemon mirrors the simulated pin levels (JSON), so that
    /// `robotd safe-stop` and tests outside the process can see and set them.
    pub state_file: Option<PathBuf>,
    /// Benchmark instrumentation, off by default: a Unix datagram socket to
    /// which the simulator sends one 17-byte datagram whenever a simulated
    /// output pin changes: pin (u8), `CLOCK_MONOTONIC` nanoseconds (u64 LE)
    /// and the new level 0..=1 (f64 LE). Sent without blocking from the
    /// thread that set the pin; lost if nobody listens. `benches/system.rs`
    /// uses it to time "command published -> pin changed".
    pub pin_events: Option<PathBuf>,
    /// Walls, doors and furniture.
    pub obstacles: Vec<Obstacle>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            time_constant_s: 0.1,
            robot_radius_m: 0.12,
            sensor_range_m: 0.15,
            start: [0.0, 0.0, 0.0],
            step_ms: 5,
            state_file: None,
            pin_events: None,
            obstacles: Vec::new(),
        }
    }
}

/// The `[hardware]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    /// `"sim"` (default) or `"rppal"`.
    pub backend: Backend,
    /// Left motor.
    pub left: MotorConfig,
    /// Right motor.
    pub right: MotorConfig,
    /// Brake or coast when stopping.
    pub stop_mode: StopMode,
    /// Use software PWM even on the hardware PWM pins (12, 13, 18, 19), e.g.
    /// when the `pwm-2chan` overlay is not loaded or analogue audio needs the channels.
    pub software_pwm: bool,
    /// Distance between the wheel contact points (metres).
    pub wheel_base_m: f64,
    /// Ground speed at full duty (metres per second).
    pub max_speed_mps: f64,
    /// Wheel encoders, if fitted.
    pub encoders: Option<EncodersConfig>,
    /// Front obstacle sensor (IR or bumper), if fitted.
    pub obstacle: Option<InputConfig>,
    /// Front HC-SR04 ultrasonic sensor, if fitted (alone or with `obstacle`:
    /// either one seeing something is an obstacle).
    pub ultrasonic: Option<UltrasonicConfig>,
    /// Emergency-stop switch, if fitted: stops the motors and latches.
    pub estop: Option<InputConfig>,
    /// Simulated world.
    pub sim: SimConfig,
}

impl Default for HardwareConfig {
    /// Two L298N channels on the usual pins with hardware PWM on 12/13.
    fn default() -> Self {
        Self {
            backend: Backend::Sim,
            left: MotorConfig {
                driver: DriverKind::L298n,
                in1_pin: 17,
                in2_pin: 27,
                pwm_pin: Some(12),
                stby_pin: None,
                invert: false,
                pwm_frequency_hz: default_pwm_frequency(),
                min_duty: 0.0,
                max_duty: 1.0,
                decay: Decay::Fast,
            },
            right: MotorConfig {
                driver: DriverKind::L298n,
                in1_pin: 23,
                in2_pin: 24,
                pwm_pin: Some(13),
                stby_pin: None,
                invert: false,
                pwm_frequency_hz: default_pwm_frequency(),
                min_duty: 0.0,
                max_duty: 1.0,
                decay: Decay::Fast,
            },
            stop_mode: StopMode::Brake,
            software_pwm: false,
            wheel_base_m: 0.15,
            max_speed_mps: 0.5,
            encoders: None,
            obstacle: None,
            ultrasonic: None,
            estop: None,
            sim: SimConfig::default(),
        }
    }
}

/// The hardware PWM channel a pin is routed to on every Pi model (on a Pi 5
/// 18/19 have channels of their own, but this pairing is what the Pi 4 and
/// older impose, so a config that passes it works everywhere).
pub fn pwm_channel(pin: u8) -> Option<u8> {
    match pin {
        12 | 18 => Some(0),
        13 | 19 => Some(1),
        _ => None,
    }
}

fn check_pin(key: &str, pin: u8) -> Result<(), ConfigError> {
    if pin > MAX_BCM_PIN {
        return Err(ConfigError::new(
            key,
            format!("GPIO {pin} does not exist (BCM 0-{MAX_BCM_PIN}); use the BCM number, not the header pin number"),
        ));
    }
    Ok(())
}

fn check_positive(key: &str, value: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(ConfigError::new(key, format!("must be a positive number, got {value}")));
    }
    Ok(())
}

fn check_motor(side: &str, m: &MotorConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("hardware.{side}.{k}");
    for (role, pin) in m.pins() {
        check_pin(&key(role), pin)?;
    }
    let kind = m.driver.name();
    match m.driver {
        DriverKind::L298n | DriverKind::Tb6612fng => {
            if m.pwm_pin.is_none() {
                return Err(ConfigError::new(
                    key("pwm_pin"),
                    format!("required for driver {kind} (the EN/PWM input of the board)"),
                ));
            }
        }
        DriverKind::Drv8833 => {
            if m.pwm_pin.is_some() {
                return Err(ConfigError::new(
                    key("pwm_pin"),
                    "not used by driver drv8833 (its IN1/IN2 carry the PWM); remove it",
                ));
            }
        }
    }
    if m.stby_pin.is_some() && m.driver != DriverKind::Tb6612fng {
        return Err(ConfigError::new(
            key("stby_pin"),
            format!("only the tb6612fng has a STBY input, not {kind}; remove it"),
        ));
    }
    if !m.pwm_frequency_hz.is_finite() || m.pwm_frequency_hz < 1.0 || m.pwm_frequency_hz > 100_000.0 {
        return Err(ConfigError::new(
            key("pwm_frequency_hz"),
            format!("must be 1-100000 Hz, got {}", m.pwm_frequency_hz),
        ));
    }
    let duty_ok = |d: f64| d.is_finite() && (0.0..=1.0).contains(&d);
    if !duty_ok(m.min_duty) {
        return Err(ConfigError::new(key("min_duty"), format!("must be within 0.0-1.0, got {}", m.min_duty)));
    }
    if !duty_ok(m.max_duty) || m.max_duty <= 0.0 {
        return Err(ConfigError::new(
            key("max_duty"),
            format!("must be within 0.0 (exclusive) to 1.0, got {}", m.max_duty),
        ));
    }
    if m.min_duty >= m.max_duty {
        return Err(ConfigError::new(
            key("min_duty"),
            format!("must be below max_duty ({} >= {})", m.min_duty, m.max_duty),
        ));
    }
    Ok(())
}

fn check_ultrasonic(u: &UltrasonicConfig) -> Result<(), ConfigError> {
    check_positive("hardware.ultrasonic.max_range_m", u.max_range_m)?;
    if u.max_range_m > ULTRASONIC_MAX_RANGE_M {
        return Err(ConfigError::new(
            "hardware.ultrasonic.max_range_m",
            format!("the HC-SR04 measures at most {ULTRASONIC_MAX_RANGE_M} m, got {}", u.max_range_m),
        ));
    }
    check_positive("hardware.ultrasonic.threshold_m", u.threshold_m)?;
    if u.threshold_m >= u.max_range_m {
        return Err(ConfigError::new(
            "hardware.ultrasonic.threshold_m",
            format!("must be below max_range_m ({} >= {})", u.threshold_m, u.max_range_m),
        ));
    }
    if !(60..=1000).contains(&u.period_ms) {
        return Err(ConfigError::new(
            "hardware.ultrasonic.period_ms",
            format!("must be 60-1000 ms (the HC-SR04 needs 60 ms between pings), got {}", u.period_ms),
        ));
    }
    Ok(())
}

impl HardwareConfig {
    /// Every configured pin with the key that names it.
    pub fn pin_roles(&self) -> Vec<(String, u8)> {
        let mut roles = Vec::new();
        for (side, m) in [("left", &self.left), ("right", &self.right)] {
            for (role, pin) in m.pins() {
                roles.push((format!("hardware.{side}.{role}"), pin));
            }
        }
        if let Some(e) = &self.encoders {
            roles.push(("hardware.encoders.left_pin".into(), e.left_pin));
            roles.push(("hardware.encoders.right_pin".into(), e.right_pin));
            if let Some(p) = e.left_b_pin {
                roles.push(("hardware.encoders.left_b_pin".into(), p));
            }
            if let Some(p) = e.right_b_pin {
                roles.push(("hardware.encoders.right_b_pin".into(), p));
            }
        }
        if let Some(i) = &self.obstacle {
            roles.push(("hardware.obstacle.pin".into(), i.pin));
        }
        if let Some(u) = &self.ultrasonic {
            roles.push(("hardware.ultrasonic.trigger_pin".into(), u.trigger_pin));
            roles.push(("hardware.ultrasonic.echo_pin".into(), u.echo_pin));
        }
        if let Some(i) = &self.estop {
            roles.push(("hardware.estop.pin".into(), i.pin));
        }
        roles
    }

    /// Whether `pin`, used as a PWM output, gets a hardware PWM channel.
    pub fn uses_hardware_pwm(&self, pin: u8) -> bool {
        !self.software_pwm && pwm_channel(pin).is_some()
    }

    /// Checks everything that can be checked without touching a pin.
    ///
    /// Errors name the key, e.g.
    /// `hardware.left.pwm_pin: GPIO 40 does not exist (BCM 0-27)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_motor("left", &self.left)?;
        check_motor("right", &self.right)?;
        check_positive("hardware.wheel_base_m", self.wheel_base_m)?;
        check_positive("hardware.max_speed_mps", self.max_speed_mps)?;
        if let Some(e) = &self.encoders {
            check_positive("hardware.encoders.ticks_per_metre", e.ticks_per_metre)?;
        }
        if let Some(u) = &self.ultrasonic {
            check_ultrasonic(u)?;
        }
        for (key, pin) in self.pin_roles() {
            check_pin(&key, pin)?;
        }

        // One pin, one role. The exception is a TB6612FNG STBY shared by both
        // channels of the same board.
        let shared_stby = match (self.left.stby_pin, self.right.stby_pin) {
            (Some(l), Some(r)) if l == r => Some(l),
            _ => None,
        };
        let mut seen: BTreeMap<u8, String> = BTreeMap::new();
        for (key, pin) in self.pin_roles() {
            if let Some(first) = seen.get(&pin) {
                let both_stby = shared_stby == Some(pin) && first.ends_with(".stby_pin") && key.ends_with(".stby_pin");
                if !both_stby {
                    return Err(ConfigError::new(
                        key,
                        format!("GPIO {pin} is already used by {first}; give each role its own pin"),
                    ));
                }
            } else {
                seen.insert(pin, key);
            }
        }

        // Two PWM outputs on one hardware channel would carry the same signal.
        if !self.software_pwm {
            let mut channels: BTreeMap<u8, (String, u8)> = BTreeMap::new();
            for (side, m) in [("left", &self.left), ("right", &self.right)] {
                for (role, pin) in m.pwm_pins() {
                    let Some(ch) = pwm_channel(pin) else { continue };
                    let key = format!("hardware.{side}.{role}");
                    if let Some((first, first_pin)) = channels.get(&ch) {
                        let spare = if ch == 0 { "12 or 18" } else { "13 or 19" };
                        return Err(ConfigError::new(
                            key,
                            format!(
                                "GPIO {pin} shares hardware PWM channel {ch} with {first} (GPIO {first_pin}); \
                                 move one to a pin of the other channel or to a non-PWM pin \
                                 (only one of GPIO {spare} can use channel {ch}), or set hardware.software_pwm = true"
                            ),
                        ));
                    }
                    channels.insert(ch, (key, pin));
                }
            }
        }

        let s = &self.sim;
        check_positive("hardware.sim.time_constant_s", s.time_constant_s)?;
        check_positive("hardware.sim.robot_radius_m", s.robot_radius_m)?;
        if !s.sensor_range_m.is_finite() || s.sensor_range_m < 0.0 {
            return Err(ConfigError::new(
                "hardware.sim.sensor_range_m",
                format!("must be zero or positive, got {}", s.sensor_range_m),
            ));
        }
        if s.start.iter().any(|v| !v.is_finite()) {
            return Err(ConfigError::new("hardware.sim.start", "must be three finite numbers [x, y, heading]"));
        }
        if !(1..=100).contains(&s.step_ms) {
            return Err(ConfigError::new("hardware.sim.step_ms", format!("must be 1-100 ms, got {}", s.step_ms)));
        }
        for (i, o) in s.obstacles.iter().enumerate() {
            let key = format!("hardware.sim.obstacles[{i}]");
            match o {
                Obstacle::Circle { center, radius } => {
                    if center.iter().any(|v| !v.is_finite()) {
                        return Err(ConfigError::new(key, "center must be finite"));
                    }
                    check_positive(&format!("{key}.radius"), *radius)?;
                }
                Obstacle::Box { min, max } => {
                    let finite = min.iter().chain(max.iter()).all(|v| v.is_finite());
                    if !finite || min[0] >= max[0] || min[1] >= max[1] {
                        return Err(ConfigError::new(key, "box needs finite corners with min < max on both axes"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // one changed field per case reads best
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HardwareConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn default_is_sim_and_valid() {
        let c = HardwareConfig::default();
        assert_eq!(c.backend, Backend::Sim);
        c.validate().unwrap();
        assert_eq!(parse("").unwrap(), c);
    }

    #[test]
    fn example_section_parses() {
        let c = parse(
            r#"
            backend = "rppal"
            stop_mode = "coast"
            wheel_base_m = 0.2
            max_speed_mps = 0.4
            [left]
            driver = "tb6612fng"
            in1_pin = 5
            in2_pin = 6
            pwm_pin = 12
            stby_pin = 22
            [right]
            driver = "tb6612fng"
            in1_pin = 20
            in2_pin = 21
            pwm_pin = 13
            stby_pin = 22
            invert = true
            min_duty = 0.2
            [encoders]
            left_pin = 16
            right_pin = 26
            ticks_per_metre = 1200.0
            [obstacle]
            pin = 4
            [estop]
            pin = 25
            active = "high"
            [sim]
            [[sim.obstacles]]
            kind = "box"
            min = [1.0, -1.0]
            max = [1.1, 1.0]
            [[sim.obstacles]]
            kind = "circle"
            center = [0.0, 2.0]
            radius = 0.3
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.backend, Backend::Rppal);
        assert_eq!(c.right.stby_pin, Some(22));
        assert!(c.right.invert);
        assert_eq!(c.estop.as_ref().unwrap().active, Level::High);
        assert_eq!(c.obstacle.as_ref().unwrap().active, Level::Low);
        assert_eq!(c.sim.obstacles.len(), 2);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse("bakend = \"sim\"").is_err());
        let e = parse("[left]\ndriver = \"l298n\"\nin1_pin = 1\nin2_pin = 2\nenable = 3\n").unwrap_err();
        assert!(e.to_string().contains("enable"), "{e}");
        assert!(parse("[[sim.obstacles]]\nkind = \"box\"\nmin=[0.0,0.0]\nmax=[1.0,1.0]\nr=1\n").is_err());
    }

    fn err_of(c: &HardwareConfig) -> ConfigError {
        c.validate().expect_err("config should be rejected")
    }

    #[test]
    fn nonexistent_pin_names_the_key() {
        let mut c = HardwareConfig::default();
        c.left.pwm_pin = Some(40);
        let e = err_of(&c);
        assert_eq!(e.key, "hardware.left.pwm_pin");
        assert!(e.to_string().starts_with("hardware.left.pwm_pin: GPIO 40 does not exist (BCM 0-27)"), "{e}");
    }

    #[test]
    fn duplicate_pins_are_rejected() {
        let mut c = HardwareConfig::default();
        c.obstacle = Some(InputConfig { pin: 17, active: Level::Low, pull: Pull::Up });
        let e = err_of(&c);
        assert_eq!(e.key, "hardware.obstacle.pin");
        assert!(e.message.contains("hardware.left.in1_pin"), "{e}");
    }

    #[test]
    fn ultrasonic_section_parses_with_defaults() {
        let c = parse("[ultrasonic]\ntrigger_pin = 20\necho_pin = 21\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.ultrasonic, Some(UltrasonicConfig::new(20, 21)));
        let u = c.ultrasonic.unwrap();
        assert_eq!((u.threshold_m, u.max_range_m, u.period_ms), (0.25, 2.0, 60));
        assert_eq!(u.stale_after(), std::time::Duration::from_millis(180));
        let e = parse("[ultrasonic]\ntrigger_pin = 20\necho_pin = 21\nrange = 3\n").unwrap_err();
        assert!(e.to_string().contains("range"), "{e}");
    }

    #[test]
    fn commented_ultrasonic_example_in_robotd_toml_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/robotd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let section: String = text
            .lines()
            .skip_while(|l| *l != "# [hardware.ultrasonic]")
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", l.trim_start_matches("# ").replace("[hardware.ultrasonic]", "[ultrasonic]")))
            .collect();
        let c = parse(&section).unwrap_or_else(|e| panic!("{e}\n{section}"));
        c.validate().unwrap();
        assert_eq!(c.ultrasonic, Some(UltrasonicConfig::new(20, 21)));
    }

    #[test]
    fn ultrasonic_is_validated_and_errors_name_the_key() {
        let with = |f: &dyn Fn(&mut UltrasonicConfig)| {
            let mut c = HardwareConfig::default();
            let mut u = UltrasonicConfig::new(20, 21);
            f(&mut u);
            c.ultrasonic = Some(u);
            c
        };
        with(&|_| {}).validate().unwrap();
        let e = err_of(&with(&|u| u.echo_pin = 28));
        assert_eq!(e.key, "hardware.ultrasonic.echo_pin");
        assert!(e.message.contains("GPIO 28 does not exist"), "{e}");
        // Clashes with a motor pin, and trigger = echo.
        let e = err_of(&with(&|u| u.trigger_pin = 23));
        assert_eq!(e.key, "hardware.ultrasonic.trigger_pin");
        assert!(e.message.contains("hardware.right.in1_pin"), "{e}");
        let e = err_of(&with(&|u| u.echo_pin = 20));
        assert_eq!(e.key, "hardware.ultrasonic.echo_pin");
        assert!(e.message.contains("hardware.ultrasonic.trigger_pin"), "{e}");
        // And with the IR sensor's pin.
        let mut c = with(&|u| u.echo_pin = 4);
        c.obstacle = Some(InputConfig { pin: 4, active: Level::Low, pull: Pull::Up });
        let e = err_of(&c);
        assert_eq!(e.key, "hardware.ultrasonic.echo_pin");
        assert!(e.message.contains("hardware.obstacle.pin"), "{e}");

        let e = err_of(&with(&|u| u.threshold_m = 2.0));
        assert_eq!(e.key, "hardware.ultrasonic.threshold_m");
        assert!(e.message.contains("below max_range_m"), "{e}");
        assert_eq!(err_of(&with(&|u| u.threshold_m = 0.0)).key, "hardware.ultrasonic.threshold_m");
        assert_eq!(err_of(&with(&|u| u.threshold_m = f64::NAN)).key, "hardware.ultrasonic.threshold_m");
        assert_eq!(err_of(&with(&|u| u.max_range_m = -1.0)).key, "hardware.ultrasonic.max_range_m");
        assert_eq!(err_of(&with(&|u| u.max_range_m = 5.0)).key, "hardware.ultrasonic.max_range_m");
        assert_eq!(err_of(&with(&|u| u.period_ms = 20)).key, "hardware.ultrasonic.period_ms");
        assert_eq!(err_of(&with(&|u| u.period_ms = 5000)).key, "hardware.ultrasonic.period_ms");
    }

    #[test]
    fn shared_stby_is_allowed_but_stby_as_other_role_is_not() {
        let mut c = HardwareConfig::default();
        for m in [&mut c.left, &mut c.right] {
            m.driver = DriverKind::Tb6612fng;
            m.stby_pin = Some(22);
        }
        c.validate().unwrap();
        c.right.stby_pin = Some(17);
        assert_eq!(err_of(&c).key, "hardware.right.stby_pin");
    }

    #[test]
    fn hardware_pwm_channel_clash() {
        let mut c = HardwareConfig::default();
        c.right.pwm_pin = Some(18); // channel 0, like GPIO 12 on the left
        let e = err_of(&c);
        assert_eq!(e.key, "hardware.right.pwm_pin");
        assert!(e.message.contains("channel 0"), "{e}");
        c.software_pwm = true;
        c.validate().unwrap();
    }

    #[test]
    fn drv8833_counts_both_inputs_as_pwm() {
        let mut c = HardwareConfig::default();
        c.left = MotorConfig { driver: DriverKind::Drv8833, in1_pin: 12, in2_pin: 18, pwm_pin: None, ..c.left.clone() };
        c.right.pwm_pin = Some(19);
        assert_eq!(err_of(&c).key, "hardware.left.in2_pin");
    }

    #[test]
    fn driver_pin_requirements() {
        let mut c = HardwareConfig::default();
        c.left.pwm_pin = None;
        assert_eq!(err_of(&c).key, "hardware.left.pwm_pin");
        let mut c = HardwareConfig::default();
        c.left.stby_pin = Some(22);
        assert_eq!(err_of(&c).key, "hardware.left.stby_pin");
        let mut c = HardwareConfig::default();
        c.right.driver = DriverKind::Drv8833;
        assert_eq!(err_of(&c).key, "hardware.right.pwm_pin");
    }

    #[test]
    fn numeric_ranges() {
        let mut c = HardwareConfig::default();
        c.left.min_duty = 0.5;
        c.left.max_duty = 0.4;
        assert_eq!(err_of(&c).key, "hardware.left.min_duty");
        let mut c = HardwareConfig::default();
        c.right.max_duty = f64::NAN;
        assert_eq!(err_of(&c).key, "hardware.right.max_duty");
        let mut c = HardwareConfig::default();
        c.left.pwm_frequency_hz = 0.0;
        assert_eq!(err_of(&c).key, "hardware.left.pwm_frequency_hz");
        let mut c = HardwareConfig::default();
        c.wheel_base_m = -1.0;
        assert_eq!(err_of(&c).key, "hardware.wheel_base_m");
        let mut c = HardwareConfig::default();
        c.sim.obstacles.push(Obstacle::Box { min: [1.0, 1.0], max: [0.0, 2.0] });
        assert_eq!(err_of(&c).key, "hardware.sim.obstacles[0]");
    }
}
