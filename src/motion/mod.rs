//! Motors: H-bridge drivers, differential-drive mixing, the deadman.
//!
//! The layers, bottom up:
//! - [`drivers`]: one type per board ([`L298n`], [`Tb6612fng`], [`Drv8833`]),
//!   generic over the embedded-hal pin traits, all implementing [`Motor`];
//! - [`mix`]: `linear`/`angular` in -1..=1 to left/right wheel fractions;
//! - [`MotorController`]: both motors plus the deadman and the e-stop, with
//!   time passed in so tests control the clock;
//! - [`guard`]: the motor-side deadman, a thread that stops the daemon's
//!   motors when a drive runs out even if the main loop is stalled;
//! - [`safe_stop`]: makes the pins safe from a separate process.
//!
//! Every entry point validates its input before touching a pin: a NaN from
//! the network is an error, never a duty cycle. Nothing here knows about MQTT.

#![warn(missing_docs)]
mod controller;
pub mod drivers;
pub mod guard;

pub use controller::{DriveCommand, MAX_DRIVE_MS, MotionState, MotorController, StopReason};
pub use drivers::{Drv8833, L298n, MotorPin, MotorPwm, MotorSettings, Tb6612fng, check_speed};
pub use guard::GuardedMotor;

use crate::hal::config::{DriverKind, HardwareConfig, MotorConfig, StopMode};
use crate::hal::{self, Backend, HalError, Hardware, Output, Pwm, SharedOutput};

/// The cause of a pin failure, kept as the source of [`MotionError::Pin`]
/// and [`MotionError::EstopUnreadable`] (downcast to [`HalError`] to inspect it).
pub type PinError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a motion request failed.
#[derive(Debug, thiserror::Error)]
pub enum MotionError {
    /// A wheel speed was NaN, infinite or outside -1..=1. The caller must
    /// reject the request; no pin was touched.
    #[error("speed {value} is not a number within -1..=1; no pin was changed")]
    InvalidSpeed {
        /// The rejected value.
        value: f64,
    },
    /// A drive request field is out of range (answer `invalid_request`). No pin was touched.
    #[error("{field} must be {expected}, got {value}")]
    InvalidCommand {
        /// `linear`, `angular` or `ms`.
        field: &'static str,
        /// The accepted range.
        expected: &'static str,
        /// The rejected value, as text.
        value: String,
    },
    /// Duty limits that cannot work; fix `min_duty`/`max_duty` in `[hardware.left|right]`.
    #[error("motor settings: {detail}; fix min_duty/max_duty in [hardware.left] or [hardware.right]")]
    InvalidSettings {
        /// What is wrong.
        detail: String,
    },
    /// The e-stop fired and is latched: motors stay off until the switch is
    /// released and [`MotorController::clear_estop`] is called.
    #[error("e-stop is latched; release the e-stop switch, then run `robotd estop clear`")]
    EstopLatched,
    /// [`MotorController::clear_estop`] was called while the switch is still pressed.
    #[error("e-stop switch is still active; release it, then run `robotd estop clear`")]
    EstopStillActive,
    /// The e-stop input could not be read; the motors were stopped to be safe.
    #[error("cannot read the e-stop input ({source}); motors stopped, check [hardware.estop] wiring")]
    EstopUnreadable {
        /// The pin error (a [`HalError`] on the real and simulated backends),
        /// with its own remedy.
        source: PinError,
    },
    /// Writing a motor pin failed; the wiring or the backend is at fault.
    #[error("motor pin {pin}: {source}; check the wiring and the pins in [hardware]")]
    Pin {
        /// Role of the pin on the board (`in1`, `in2`, `en`, `pwm`, `stby`).
        pin: &'static str,
        /// The pin error (a [`HalError`] on the real and simulated backends),
        /// with its own remedy.
        source: PinError,
    },
    /// Opening the hardware failed (the message names the pin and the fix).
    #[error(transparent)]
    Hal(#[from] HalError),
    /// The motor-side deadman thread could not be started (out of memory or
    /// of threads: `TasksMax=` or `ulimit -u`); robotd does not drive motors
    /// without it.
    #[error("cannot start the motor-side deadman thread: {cause}; check TasksMax= / ulimit -u")]
    DeadmanThread {
        /// The OS error.
        cause: std::io::Error,
    },
}

/// One motor on an H-bridge.
pub trait Motor {
    /// Runs at `speed` (-1..=1, positive forward). Invalid values are
    /// rejected with [`MotionError::InvalidSpeed`] before any pin changes.
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError>;
    /// Shorts the motor: stops quickly.
    fn brake(&mut self) -> Result<(), MotionError>;
    /// Lets the motor spin freely.
    fn coast(&mut self) -> Result<(), MotionError>;
    /// Stops the configured way.
    fn stop(&mut self, mode: StopMode) -> Result<(), MotionError> {
        match mode {
            StopMode::Brake => self.brake(),
            StopMode::Coast => self.coast(),
        }
    }
    /// The motor-side deadman: a motor that can stop itself
    /// ([`GuardedMotor`]) stops unless it is told again (or stopped) within
    /// `within` from now, whatever its caller does meanwhile. Plain drivers
    /// have no clock and ignore it.
    fn stop_unless_renewed_within(&mut self, _within: std::time::Duration) {}
}

/// A motor on whichever board and backend the config names.
#[derive(Debug)]
pub enum AnyMotor {
    /// An L298N channel.
    L298n(L298n<Output, Pwm>),
    /// A TB6612FNG channel (its STBY may be shared with the other side).
    Tb6612fng(Tb6612fng<Output, Pwm, SharedOutput<Output>>),
    /// A DRV8833 channel.
    Drv8833(Drv8833<Pwm>),
}

impl Motor for AnyMotor {
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
        match self {
            AnyMotor::L298n(m) => m.set_speed(speed),
            AnyMotor::Tb6612fng(m) => m.set_speed(speed),
            AnyMotor::Drv8833(m) => m.set_speed(speed),
        }
    }
    fn brake(&mut self) -> Result<(), MotionError> {
        match self {
            AnyMotor::L298n(m) => m.brake(),
            AnyMotor::Tb6612fng(m) => m.brake(),
            AnyMotor::Drv8833(m) => m.brake(),
        }
    }
    fn coast(&mut self) -> Result<(), MotionError> {
        match self {
            AnyMotor::L298n(m) => m.coast(),
            AnyMotor::Tb6612fng(m) => m.coast(),
            AnyMotor::Drv8833(m) => m.coast(),
        }
    }
}

fn open_motor(hw: &mut Hardware, m: &MotorConfig, stby: Option<SharedOutput<Output>>) -> Result<AnyMotor, MotionError> {
    let settings = MotorSettings::from(m);
    let f = m.pwm_frequency_hz;
    Ok(match m.driver {
        DriverKind::L298n => {
            let in1 = hw.output(m.in1_pin)?;
            let in2 = hw.output(m.in2_pin)?;
            let en = hw.pwm(pwm_pin(m)?, f)?;
            AnyMotor::L298n(L298n::new(in1, in2, en, settings)?)
        }
        DriverKind::Tb6612fng => {
            let in1 = hw.output(m.in1_pin)?;
            let in2 = hw.output(m.in2_pin)?;
            let pwm = hw.pwm(pwm_pin(m)?, f)?;
            AnyMotor::Tb6612fng(Tb6612fng::new(in1, in2, pwm, stby, settings)?)
        }
        DriverKind::Drv8833 => {
            let in1 = hw.pwm(m.in1_pin, f)?;
            let in2 = hw.pwm(m.in2_pin, f)?;
            AnyMotor::Drv8833(Drv8833::new(in1, in2, settings)?)
        }
    })
}

fn pwm_pin(m: &MotorConfig) -> Result<u8, MotionError> {
    // validate() guarantees it; this keeps a bad hand-built config from panicking.
    m.pwm_pin.ok_or_else(|| {
        MotionError::Hal(HalError::Config(hal::ConfigError {
            key: "hardware.*.pwm_pin".into(),
            message: "required for this driver".into(),
        }))
    })
}

/// Opens the left and right motors described by the hardware's config,
/// each stopped. A TB6612FNG STBY named by both sides is opened once and shared.
pub fn open_motors(hw: &mut Hardware) -> Result<(AnyMotor, AnyMotor), MotionError> {
    let cfg = hw.config().clone();
    let left_stby = cfg.left.stby_pin.map(|p| hw.output(p).map(SharedOutput::new)).transpose()?;
    let right_stby = match (cfg.right.stby_pin, &left_stby) {
        (Some(p), Some(shared)) if cfg.left.stby_pin == Some(p) => Some(shared.clone()),
        (Some(p), _) => Some(SharedOutput::new(hw.output(p)?)),
        (None, _) => None,
    };
    let left = open_motor(hw, &cfg.left, left_stby)?;
    let right = open_motor(hw, &cfg.right, right_stby)?;
    Ok((left, right))
}

/// Maps `linear` (forward) and `angular` (counter-clockwise, i.e. turn
/// left) fractions to `(left, right)` wheel fractions.
///
/// `left = linear - angular`, `right = linear + angular`; when that exceeds
/// full speed both are scaled down together, which keeps the curve the
/// phone asked for rather than flattening it. NaN, infinities and values
/// outside -1..=1 are errors.
pub fn mix(linear: f64, angular: f64) -> Result<(f64, f64), MotionError> {
    let check = |field, v: f64| {
        if crate::wire::payloads::is_speed_fraction(v) {
            Ok(v)
        } else {
            Err(MotionError::InvalidCommand { field, expected: "a number within -1..=1", value: v.to_string() })
        }
    };
    let linear = check("linear", linear)?;
    let angular = check("angular", angular)?;
    let (l, r) = (linear - angular, linear + angular);
    let scale = l.abs().max(r.abs()).max(1.0);
    Ok(((l / scale).clamp(-1.0, 1.0), (r / scale).clamp(-1.0, 1.0)))
}

/// Drives every configured motor pin to its safe level and disables PWM,
/// without the daemon: `robotd safe-stop`, for `ExecStopPost=` (PWM keeps
/// running after a crash or SIGKILL, and `Drop` never ran).
///
/// rppal: all motor pins become GPIO outputs driven low, hardware PWM
/// channels are disabled. sim: the safe levels are written to
/// `hardware.sim.state_file` (nothing to do without one). Returns the pins
/// made safe.
pub fn safe_stop(config: &HardwareConfig) -> Result<Vec<u8>, MotionError> {
    config.validate().map_err(HalError::from)?;
    let pins = match config.backend {
        Backend::Rppal => hal::rppal::safe_stop(config)?,
        Backend::Sim => hal::sim::write_safe_state(config)?,
    };
    tracing::info!(?pins, backend = ?config.backend, "motor pins made safe");
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mix_examples() {
        assert_eq!(mix(0.5, 0.0).unwrap(), (0.5, 0.5));
        assert_eq!(mix(-1.0, 0.0).unwrap(), (-1.0, -1.0));
        // Turning left in place: left wheel back, right wheel forward.
        assert_eq!(mix(0.0, 1.0).unwrap(), (-1.0, 1.0));
        // Full forward and full turn: scaled, the inner wheel stops.
        assert_eq!(mix(1.0, 1.0).unwrap(), (0.0, 1.0));
        assert_eq!(mix(1.0, -0.5).unwrap(), (1.0, 1.0 / 3.0));
    }

    #[test]
    fn mix_rejects_bad_numbers_naming_the_field() {
        let e = mix(f64::NAN, 0.0).unwrap_err();
        assert!(e.to_string().starts_with("linear must be"), "{e}");
        let e = mix(0.0, 1.5).unwrap_err();
        assert!(e.to_string().starts_with("angular must be"), "{e}");
        assert!(mix(f64::INFINITY, 0.0).is_err());
    }

    proptest! {
        #[test]
        fn mix_stays_within_limits(linear in -1.0f64..=1.0, angular in -1.0f64..=1.0) {
            let (l, r) = mix(linear, angular).unwrap();
            prop_assert!((-1.0..=1.0).contains(&l) && (-1.0..=1.0).contains(&r));
            // Direction of travel and of turn are kept.
            if linear.abs() > 1e-9 && angular == 0.0 {
                prop_assert_eq!(l.signum(), linear.signum());
            }
            prop_assert!(((r - l) * angular) >= 0.0);
        }

        #[test]
        fn mix_never_passes_bad_input(linear in any::<f64>(), angular in any::<f64>()) {
            let valid = |v: f64| v.is_finite() && (-1.0..=1.0).contains(&v);
            match mix(linear, angular) {
                Ok((l, r)) => {
                    prop_assert!(valid(linear) && valid(angular));
                    prop_assert!(valid(l) && valid(r));
                }
                Err(_) => prop_assert!(!valid(linear) || !valid(angular)),
            }
        }

        #[test]
        fn nan_never_reaches_a_duty(speed in prop_oneof![
            Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY),
            any::<f64>(), -1.0f64..=1.0,
        ]) {
            use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as D};
            use embedded_hal_mock::eh1::pwm::{Mock as Pwm, Transaction as P};
            // Only creation and drop are expected, plus one duty write if the speed is valid.
            let valid = speed.is_finite() && (-1.0..=1.0).contains(&speed);
            let mut pwm_t = vec![P::max_duty_cycle(100), P::set_duty_cycle(0)];
            let mut in1_t = vec![D::set(State::Low)];
            let mut in2_t = vec![D::set(State::Low)];
            if valid {
                let duty = (speed.abs() * 100.0).round() as u16;
                if duty != 0 {
                    pwm_t.push(P::set_duty_cycle(0));
                    let fwd = speed > 0.0;
                    if fwd {
                        in2_t.push(D::set(State::Low));
                        in1_t.push(D::set(State::High));
                    } else {
                        in1_t.push(D::set(State::Low));
                        in2_t.push(D::set(State::High));
                    }
                }
                pwm_t.push(P::set_duty_cycle(duty));
            }
            pwm_t.push(P::set_duty_cycle(0));
            in1_t.push(D::set(State::Low));
            in2_t.push(D::set(State::Low));
            let (mut a, mut b, mut e) = (Pin::new(&in1_t), Pin::new(&in2_t), Pwm::new(&pwm_t));
            let mut m = L298n::new(a.clone(), b.clone(), e.clone(), MotorSettings::default()).unwrap();
            prop_assert_eq!(m.set_speed(speed).is_ok(), valid);
            drop(m);
            a.done();
            b.done();
            e.done();
        }
    }

    #[test]
    fn safe_stop_sim_without_state_file_is_a_no_op() {
        assert_eq!(safe_stop(&HardwareConfig::default()).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn safe_stop_rejects_a_bad_config() {
        let mut c = HardwareConfig::default();
        c.right.in2_pin = 30;
        let e = safe_stop(&c).unwrap_err();
        assert!(e.to_string().contains("hardware.right.in2_pin"), "{e}");
    }
}
