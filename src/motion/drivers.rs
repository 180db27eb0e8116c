//! H-bridge drivers for the common small-robot boards, generic over the
//! embedded-hal 1.0 pin traits.
//!
//! Each driver validates its input before writing any pin, changes direction
//! only while the bridge is off (so a reversal never passes through "full
//! power the other way"), and leaves every pin low — the safe level that
//! `robotd safe-stop` also uses — when created and when dropped.
//!
//! Speeds are fractions in -1..=1; positive is forward. `min_duty`/`max_duty`
//! map the magnitude onto the duty range that actually moves the motor, and
//! zero always means duty zero.

use embedded_hal::digital::{OutputPin, PinState};
use embedded_hal::pwm::SetDutyCycle;

use super::{MotionError, Motor};
use crate::hal::config::{Decay, MotorConfig};
use crate::wire::payloads::is_speed_fraction;

/// An embedded-hal output pin whose error can be kept as the cause of a
/// [`MotionError::Pin`] (the backends' pins fail with a [`crate::hal::HalError`]).
pub trait MotorPin: OutputPin<Error: std::error::Error + Send + Sync + 'static> {}
impl<T> MotorPin for T where T: OutputPin<Error: std::error::Error + Send + Sync + 'static> {}

/// An embedded-hal PWM channel whose error can be kept as the cause of a
/// [`MotionError::Pin`].
pub trait MotorPwm: SetDutyCycle<Error: std::error::Error + Send + Sync + 'static> {}
impl<T> MotorPwm for T where T: SetDutyCycle<Error: std::error::Error + Send + Sync + 'static> {}

/// Wraps a pin's error, keeping it as the source, with the pin's role.
fn pin_err<E: std::error::Error + Send + Sync + 'static>(pin: &'static str) -> impl FnOnce(E) -> MotionError {
    move |e| MotionError::Pin { pin, source: Box::new(e) }
}

/// Rejects NaN, infinities and anything outside -1..=1
/// ([`is_speed_fraction`]).
pub fn check_speed(speed: f64) -> Result<f64, MotionError> {
    if is_speed_fraction(speed) { Ok(speed) } else { Err(MotionError::InvalidSpeed { value: speed }) }
}

/// Per-motor tuning shared by all boards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotorSettings {
    /// Swap forward and reverse (motor wired the other way round).
    pub invert: bool,
    /// Duty at the smallest non-zero speed.
    pub min_duty: f64,
    /// Duty at full speed.
    pub max_duty: f64,
    /// DRV8833 decay mode.
    pub decay: Decay,
}

impl Default for MotorSettings {
    fn default() -> Self {
        Self { invert: false, min_duty: 0.0, max_duty: 1.0, decay: Decay::Fast }
    }
}

impl From<&MotorConfig> for MotorSettings {
    fn from(c: &MotorConfig) -> Self {
        Self { invert: c.invert, min_duty: c.min_duty, max_duty: c.max_duty, decay: c.decay }
    }
}

impl MotorSettings {
    fn check(&self) -> Result<(), MotionError> {
        let ok = |d: f64| d.is_finite() && (0.0..=1.0).contains(&d);
        if ok(self.min_duty) && ok(self.max_duty) && self.min_duty < self.max_duty {
            Ok(())
        } else {
            Err(MotionError::InvalidSettings {
                detail: format!("need 0 <= min_duty < max_duty <= 1, got {} and {}", self.min_duty, self.max_duty),
            })
        }
    }

    /// Duty register value for a validated magnitude 0..=1.
    fn duty(&self, magnitude: f64, max: u16) -> u16 {
        if magnitude <= 0.0 {
            return 0;
        }
        let d = self.min_duty + magnitude.min(1.0) * (self.max_duty - self.min_duty);
        (d.clamp(0.0, 1.0) * f64::from(max)).round() as u16
    }

    /// Applies `invert` to a validated speed.
    fn oriented(&self, speed: f64) -> f64 {
        if self.invert { -speed } else { speed }
    }
}

/// The state the bridge was last put in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bridge {
    Forward,
    Reverse,
    Brake,
    Coast,
}

fn direction(speed: f64) -> Bridge {
    if speed < 0.0 { Bridge::Reverse } else { Bridge::Forward }
}

/// One channel of an L298N: IN1/IN2 set the direction, EN carries the PWM.
///
/// | state   | IN1 | IN2 | EN    |
/// |---------|-----|-----|-------|
/// | forward | H   | L   | duty  |
/// | reverse | L   | H   | duty  |
/// | brake   | L   | L   | H     |
/// | coast   | L   | L   | L     |
#[derive(Debug)]
pub struct L298n<O: MotorPin, P: MotorPwm> {
    in1: O,
    in2: O,
    en: P,
    max: u16,
    settings: MotorSettings,
    bridge: Bridge,
}

impl<O: MotorPin, P: MotorPwm> L298n<O, P> {
    /// Takes the pins and stops the motor (all low).
    pub fn new(in1: O, in2: O, en: P, settings: MotorSettings) -> Result<Self, MotionError> {
        settings.check()?;
        let max = en.max_duty_cycle();
        let mut d = Self { in1, in2, en, max, settings, bridge: Bridge::Coast };
        d.coast()?;
        Ok(d)
    }

    fn set_bridge(&mut self, b: Bridge) -> Result<(), MotionError> {
        let (a, c) = match b {
            Bridge::Forward => (true, false),
            Bridge::Reverse => (false, true),
            Bridge::Brake | Bridge::Coast => (false, false),
        };
        // Lower before raising, so IN1 = IN2 = H (a brake through the high
        // side) never appears; EN is already off when the direction changes.
        if a {
            self.in2.set_low().map_err(pin_err("in2"))?;
            self.in1.set_high().map_err(pin_err("in1"))?;
        } else {
            self.in1.set_low().map_err(pin_err("in1"))?;
            self.in2.set_state(PinState::from(c)).map_err(pin_err("in2"))?;
        }
        self.bridge = b;
        Ok(())
    }
}

impl<O: MotorPin, P: MotorPwm> Motor for L298n<O, P> {
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
        let speed = self.settings.oriented(check_speed(speed)?);
        let duty = self.settings.duty(speed.abs(), self.max);
        let dir = direction(speed);
        if duty != 0 && self.bridge != dir {
            self.en.set_duty_cycle(0).map_err(pin_err("en"))?;
            self.set_bridge(dir)?;
        }
        self.en.set_duty_cycle(duty).map_err(pin_err("en"))
    }

    fn brake(&mut self) -> Result<(), MotionError> {
        self.set_bridge(Bridge::Brake)?;
        self.en.set_duty_cycle(self.max).map_err(pin_err("en"))
    }

    fn coast(&mut self) -> Result<(), MotionError> {
        self.en.set_duty_cycle(0).map_err(pin_err("en"))?;
        self.set_bridge(Bridge::Coast)
    }
}

impl<O: MotorPin, P: MotorPwm> Drop for L298n<O, P> {
    fn drop(&mut self) {
        if let Err(e) = self.coast() {
            tracing::error!(error = %e, "L298N: could not stop the motor on drop");
        }
    }
}

/// One channel of a TB6612FNG: IN1/IN2 set the direction, PWM the speed,
/// STBY (optional, may be shared) wakes the chip.
///
/// | state   | IN1 | IN2 | PWM  | STBY |
/// |---------|-----|-----|------|------|
/// | forward | H   | L   | duty | H    |
/// | reverse | L   | H   | duty | H    |
/// | brake   | H   | H   | L    | -    |
/// | coast   | L   | L   | L    | -    |
/// | created / dropped | L | L | L | L |
///
/// PWM low with a direction set is a short brake on this chip, so speed zero
/// brakes gently.
#[derive(Debug)]
pub struct Tb6612fng<O: MotorPin, P: MotorPwm, S: MotorPin> {
    in1: O,
    in2: O,
    pwm: P,
    stby: Option<S>,
    max: u16,
    settings: MotorSettings,
    bridge: Bridge,
    awake: bool,
}

impl<O: MotorPin, P: MotorPwm, S: MotorPin> Tb6612fng<O, P, S> {
    /// Takes the pins and stops the motor (all low, chip in standby).
    pub fn new(in1: O, in2: O, pwm: P, stby: Option<S>, settings: MotorSettings) -> Result<Self, MotionError> {
        settings.check()?;
        let max = pwm.max_duty_cycle();
        let mut d = Self { in1, in2, pwm, stby, max, settings, bridge: Bridge::Coast, awake: true };
        d.standby()?;
        Ok(d)
    }

    fn standby(&mut self) -> Result<(), MotionError> {
        self.coast()?;
        if let Some(s) = &mut self.stby {
            s.set_low().map_err(pin_err("stby"))?;
        }
        self.awake = false;
        Ok(())
    }

    fn set_bridge(&mut self, b: Bridge) -> Result<(), MotionError> {
        let (a, c) = match b {
            Bridge::Forward => (true, false),
            Bridge::Reverse => (false, true),
            Bridge::Brake => (true, true),
            Bridge::Coast => (false, false),
        };
        self.in1.set_state(PinState::from(a)).map_err(pin_err("in1"))?;
        self.in2.set_state(PinState::from(c)).map_err(pin_err("in2"))?;
        self.bridge = b;
        Ok(())
    }
}

impl<O: MotorPin, P: MotorPwm, S: MotorPin> Motor for Tb6612fng<O, P, S> {
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
        let speed = self.settings.oriented(check_speed(speed)?);
        let duty = self.settings.duty(speed.abs(), self.max);
        let dir = direction(speed);
        if duty != 0 && self.bridge != dir {
            self.pwm.set_duty_cycle(0).map_err(pin_err("pwm"))?;
            self.set_bridge(dir)?;
        }
        if duty != 0 && !self.awake {
            if let Some(s) = &mut self.stby {
                s.set_high().map_err(pin_err("stby"))?;
            }
            self.awake = true;
        }
        self.pwm.set_duty_cycle(duty).map_err(pin_err("pwm"))
    }

    fn brake(&mut self) -> Result<(), MotionError> {
        self.pwm.set_duty_cycle(0).map_err(pin_err("pwm"))?;
        self.set_bridge(Bridge::Brake)
    }

    fn coast(&mut self) -> Result<(), MotionError> {
        self.pwm.set_duty_cycle(0).map_err(pin_err("pwm"))?;
        self.set_bridge(Bridge::Coast)
    }
}

impl<O: MotorPin, P: MotorPwm, S: MotorPin> Drop for Tb6612fng<O, P, S> {
    fn drop(&mut self) {
        if let Err(e) = self.standby() {
            tracing::error!(error = %e, "TB6612FNG: could not stop the motor on drop");
        }
    }
}

/// One channel of a DRV8833: both inputs carry PWM.
///
/// | state   | fast decay      | slow decay          |
/// |---------|-----------------|---------------------|
/// | forward | IN1 duty, IN2 0 | IN1 max, IN2 1-duty |
/// | reverse | IN1 0, IN2 duty | IN1 1-duty, IN2 max |
/// | brake   | IN1 max, IN2 max | same               |
/// | coast   | IN1 0, IN2 0    | same                |
///
/// The two inputs are written one after the other, so for a moment the
/// chip sees the new value on one and the old on the other. The order is
/// chosen so that moment is coast/brake where possible (every reversal) and
/// otherwise drives the way the motor was or will be going, never against
/// both: between coast and brake a brief drive one way cannot be avoided
/// with two independent PWM inputs.
#[derive(Debug)]
pub struct Drv8833<P: MotorPwm> {
    in1: P,
    in2: P,
    max1: u16,
    max2: u16,
    settings: MotorSettings,
    /// Last written fractions of full duty.
    current: (f64, f64),
}

impl<P: MotorPwm> Drv8833<P> {
    /// Takes the pins and stops the motor (both low).
    pub fn new(in1: P, in2: P, settings: MotorSettings) -> Result<Self, MotionError> {
        settings.check()?;
        let max1 = in1.max_duty_cycle();
        let max2 = in2.max_duty_cycle();
        let mut d = Self { in1, in2, max1, max2, settings, current: (0.0, 0.0) };
        d.coast()?;
        Ok(d)
    }

    /// Writes both inputs as fractions of full duty, in the safer order.
    fn write(&mut self, f1: f64, f2: f64) -> Result<(), MotionError> {
        let (c1, c2) = self.current;
        let (before, after) = (c1 - c2, f1 - f2);
        // Drive seen between the two writes, for either order, scored:
        // off is best, then the smaller drive in a direction that is the old
        // or the new one; a drive against both is worst.
        let score = |mid: f64| {
            let along = |end: f64| end != 0.0 && mid.signum() == end.signum();
            if mid == 0.0 {
                0.0
            } else if along(before) || along(after) {
                mid.abs()
            } else {
                10.0 + mid.abs()
            }
        };
        let in1_first = score(f1 - c2) <= score(c1 - f2);
        let d1 = (f1 * f64::from(self.max1)).round() as u16;
        let d2 = (f2 * f64::from(self.max2)).round() as u16;
        if in1_first {
            self.in1.set_duty_cycle(d1).map_err(pin_err("in1"))?;
            self.current.0 = f1;
            self.in2.set_duty_cycle(d2).map_err(pin_err("in2"))?;
        } else {
            self.in2.set_duty_cycle(d2).map_err(pin_err("in2"))?;
            self.current.1 = f2;
            self.in1.set_duty_cycle(d1).map_err(pin_err("in1"))?;
        }
        self.current = (f1, f2);
        Ok(())
    }
}

impl<P: MotorPwm> Motor for Drv8833<P> {
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
        let speed = self.settings.oriented(check_speed(speed)?);
        // Work in fractions of full duty; both pins may differ in resolution.
        let d = f64::from(self.settings.duty(speed.abs(), u16::MAX)) / f64::from(u16::MAX);
        let (f1, f2) = match (self.settings.decay, speed < 0.0) {
            (Decay::Fast, false) => (d, 0.0),
            (Decay::Fast, true) => (0.0, d),
            (Decay::Slow, false) => (1.0, 1.0 - d),
            (Decay::Slow, true) => (1.0 - d, 1.0),
        };
        self.write(f1, f2)
    }

    fn brake(&mut self) -> Result<(), MotionError> {
        self.write(1.0, 1.0)
    }

    fn coast(&mut self) -> Result<(), MotionError> {
        self.write(0.0, 0.0)
    }
}

impl<P: MotorPwm> Drop for Drv8833<P> {
    fn drop(&mut self) {
        if let Err(e) = self.coast() {
            tracing::error!(error = %e, "DRV8833: could not stop the motor on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Exact pin sequences, one mock per pin. Each test also drops the driver
    //! and expects the stop-on-drop writes, then checks every expectation
    //! was consumed (`done`).

    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as D};
    use embedded_hal_mock::eh1::pwm::{Mock as Pwm, Transaction as P};

    const MAX: u16 = 1000;
    const H: State = State::High;
    const L: State = State::Low;

    fn set(levels: &[State]) -> Vec<D> {
        levels.iter().map(|&s| D::set(s)).collect()
    }

    fn duty(values: &[u16]) -> Vec<P> {
        let mut t = vec![P::max_duty_cycle(MAX)];
        t.extend(values.iter().map(|&d| P::set_duty_cycle(d)));
        t
    }

    struct L298nRig {
        in1: Pin,
        in2: Pin,
        en: Pwm,
    }

    impl L298nRig {
        /// Expectations after the creation writes (EN 0, IN1 L, IN2 L) and
        /// before the drop writes (EN 0, IN1 L, IN2 L).
        fn new(in1: &[State], in2: &[State], en: &[u16]) -> Self {
            let wrap_d = |mid: &[State]| {
                let mut v = vec![L];
                v.extend_from_slice(mid);
                v.push(L);
                set(&v)
            };
            let mut e = vec![0];
            e.extend_from_slice(en);
            e.push(0);
            Self { in1: Pin::new(&wrap_d(in1)), in2: Pin::new(&wrap_d(in2)), en: Pwm::new(&duty(&e)) }
        }

        fn driver(&self, settings: MotorSettings) -> L298n<Pin, Pwm> {
            L298n::new(self.in1.clone(), self.in2.clone(), self.en.clone(), settings).unwrap()
        }

        fn done(mut self) {
            self.in1.done();
            self.in2.done();
            self.en.done();
        }
    }

    #[test]
    fn l298n_forward_then_faster_then_reverse() {
        let rig = L298nRig::new(&[H, L], &[L, H], &[0, 500, 1000, 0, 250]);
        let mut m = rig.driver(MotorSettings::default());
        m.set_speed(0.5).unwrap(); // EN 0, IN2 L, IN1 H, EN 500
        m.set_speed(1.0).unwrap(); // same direction: EN only
        m.set_speed(-0.25).unwrap(); // EN 0, IN1 L, IN2 H, EN 250
        drop(m);
        rig.done();
    }

    #[test]
    fn l298n_brake_and_coast() {
        let rig = L298nRig::new(&[H, L, L], &[L, L, L], &[0, 700, 1000, 0]);
        let mut m = rig.driver(MotorSettings::default());
        m.set_speed(0.7).unwrap();
        m.brake().unwrap(); // IN1 L, IN2 L, EN full
        m.coast().unwrap(); // EN 0, IN1 L, IN2 L
        drop(m);
        rig.done();
    }

    #[test]
    fn l298n_zero_speed_is_duty_zero() {
        let rig = L298nRig::new(&[H], &[L], &[0, 300, 0]);
        let mut m = rig.driver(MotorSettings::default());
        m.set_speed(0.3).unwrap();
        m.set_speed(0.0).unwrap();
        drop(m);
        rig.done();
    }

    #[test]
    fn l298n_invert_and_duty_range() {
        let settings = MotorSettings { invert: true, min_duty: 0.2, max_duty: 0.8, ..MotorSettings::default() };
        // Forward command on an inverted motor drives the bridge in reverse;
        // 0.5 maps to 0.2 + 0.5 × 0.6 = 0.5 and 1.0 to 0.8.
        let rig = L298nRig::new(&[L], &[H], &[0, 500, 800]);
        let mut m = rig.driver(settings);
        m.set_speed(0.5).unwrap();
        m.set_speed(1.0).unwrap();
        drop(m);
        rig.done();
    }

    #[test]
    fn l298n_invalid_speed_touches_no_pin() {
        let rig = L298nRig::new(&[], &[], &[]);
        let mut m = rig.driver(MotorSettings::default());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0001, -2.0] {
            let e = m.set_speed(bad).unwrap_err();
            assert!(matches!(e, MotionError::InvalidSpeed { .. }), "{e}");
        }
        drop(m);
        rig.done();
    }

    #[test]
    fn invalid_settings_are_rejected_before_any_pin() {
        let (mut a, mut b, mut e) = (Pin::new(&[]), Pin::new(&[]), Pwm::new(&[]));
        let bad = MotorSettings { min_duty: 0.9, max_duty: 0.5, ..MotorSettings::default() };
        assert!(L298n::new(a.clone(), b.clone(), e.clone(), bad).is_err());
        a.done();
        b.done();
        e.done();
    }

    struct TbRig {
        in1: Pin,
        in2: Pin,
        pwm: Pwm,
        stby: Pin,
    }

    impl TbRig {
        /// Creation writes: PWM 0, IN1 L, IN2 L, STBY L; drop writes the same.
        fn new(in1: &[State], in2: &[State], pwm: &[u16], stby: &[State]) -> Self {
            let wrap_d = |mid: &[State]| {
                let mut v = vec![L];
                v.extend_from_slice(mid);
                v.push(L);
                set(&v)
            };
            let mut p = vec![0];
            p.extend_from_slice(pwm);
            p.push(0);
            Self {
                in1: Pin::new(&wrap_d(in1)),
                in2: Pin::new(&wrap_d(in2)),
                pwm: Pwm::new(&duty(&p)),
                stby: Pin::new(&wrap_d(stby)),
            }
        }

        fn driver(&self) -> Tb6612fng<Pin, Pwm, Pin> {
            Tb6612fng::new(
                self.in1.clone(),
                self.in2.clone(),
                self.pwm.clone(),
                Some(self.stby.clone()),
                MotorSettings::default(),
            )
            .unwrap()
        }

        fn done(mut self) {
            self.in1.done();
            self.in2.done();
            self.pwm.done();
            self.stby.done();
        }
    }

    #[test]
    fn tb6612_forward_wakes_then_reverse() {
        let rig = TbRig::new(&[H, L], &[L, H], &[0, 400, 0, 600], &[H]);
        let mut m = rig.driver();
        m.set_speed(0.4).unwrap(); // PWM 0, IN1 H, IN2 L, STBY H, PWM 400
        m.set_speed(-0.6).unwrap(); // PWM 0, IN1 L, IN2 H, PWM 600
        drop(m); // PWM 0, IN1 L, IN2 L, STBY L
        rig.done();
    }

    #[test]
    fn tb6612_brake_coast_and_turn_pair() {
        let rig = TbRig::new(&[H, H, L], &[L, H, L], &[0, 1000, 0, 0], &[H]);
        let mut m = rig.driver();
        m.set_speed(1.0).unwrap();
        m.brake().unwrap(); // PWM 0, IN1 H, IN2 H
        m.coast().unwrap(); // PWM 0, IN1 L, IN2 L
        drop(m);
        rig.done();
    }

    #[test]
    fn tb6612_invalid_speed_and_no_stby() {
        let rig = TbRig::new(&[], &[], &[], &[]);
        let mut m = rig.driver();
        assert!(m.set_speed(f64::NAN).is_err());
        assert!(m.set_speed(-1.5).is_err());
        drop(m);
        rig.done();

        // STBY tied to VCC: same sequences minus the STBY writes.
        let mut in1 = Pin::new(&set(&[L, H, L]));
        let mut in2 = Pin::new(&set(&[L, L, L]));
        let mut pwm = Pwm::new(&duty(&[0, 0, 1000, 0]));
        let mut m: Tb6612fng<Pin, Pwm, Pin> =
            Tb6612fng::new(in1.clone(), in2.clone(), pwm.clone(), None, MotorSettings::default()).unwrap();
        m.set_speed(1.0).unwrap();
        drop(m);
        in1.done();
        in2.done();
        pwm.done();
    }

    fn drv(in1: &[u16], in2: &[u16], decay: Decay) -> (Drv8833<Pwm>, Pwm, Pwm) {
        // Creation and drop both coast: 0 on both.
        let wrap = |mid: &[u16]| {
            let mut v = vec![0];
            v.extend_from_slice(mid);
            v.push(0);
            duty(&v)
        };
        let a = Pwm::new(&wrap(in1));
        let b = Pwm::new(&wrap(in2));
        let settings = MotorSettings { decay, ..MotorSettings::default() };
        (Drv8833::new(a.clone(), b.clone(), settings).unwrap(), a, b)
    }

    #[test]
    fn drv8833_fast_decay() {
        let (mut m, mut a, mut b) = drv(&[500, 0, 1000, 0], &[0, 250, 1000, 0], Decay::Fast);
        m.set_speed(0.5).unwrap(); // IN1 500, IN2 0
        m.set_speed(-0.25).unwrap(); // IN1 0, IN2 250
        m.brake().unwrap(); // both full
        m.coast().unwrap(); // both 0
        drop(m);
        a.done();
        b.done();
    }

    #[test]
    fn drv8833_slow_decay() {
        // Forward 0.75: IN1 full, IN2 at 1 - 0.75; reverse 0.25: IN1 at 0.75, IN2 full.
        let (mut m, mut a, mut b) = drv(&[1000, 750, 1000], &[250, 1000, 1000], Decay::Slow);
        m.set_speed(0.75).unwrap();
        m.set_speed(-0.25).unwrap();
        m.set_speed(0.0).unwrap(); // zero in slow decay is a brake
        drop(m);
        a.done();
        b.done();
    }

    #[test]
    fn drv8833_invalid_speed_touches_no_pin() {
        let (mut m, mut a, mut b) = drv(&[], &[], Decay::Slow);
        assert!(m.set_speed(f64::NAN).is_err());
        assert!(m.set_speed(f64::INFINITY).is_err());
        drop(m);
        a.done();
        b.done();
    }

    #[test]
    fn pin_errors_are_reported_with_the_pin() {
        use embedded_hal_mock::eh1::MockError;
        let mut in1 = Pin::new(&[D::set(L), D::set(H).with_error(MockError::Io(std::io::ErrorKind::Other)), D::set(L)]);
        let mut in2 = Pin::new(&set(&[L, L, L]));
        let mut en = Pwm::new(&duty(&[0, 0, 0]));
        let mut m = L298n::new(in1.clone(), in2.clone(), en.clone(), MotorSettings::default()).unwrap();
        let e = m.set_speed(0.5).unwrap_err();
        assert!(matches!(e, MotionError::Pin { pin: "in1", .. }), "{e}");
        // The pin's own error is kept: in the message and as the source.
        let cause = MockError::Io(std::io::ErrorKind::Other);
        assert!(e.to_string().contains(&cause.to_string()), "{e}");
        let source = std::error::Error::source(&e).expect("the pin error is the source");
        assert_eq!(source.downcast_ref::<MockError>(), Some(&cause));
        drop(m);
        in1.done();
        in2.done();
        en.done();
    }

    // --- cross-pin order ---
    //
    // Per-pin mocks cannot see the order of writes across pins, so these
    // tests log every write to one list and replay it through a model of the
    // board: while a command is being applied, the bridge may keep doing the
    // old thing or be off, but never anything else (no pulse of "full speed
    // the wrong way" during a reversal).

    use std::cell::RefCell;
    use std::convert::Infallible;
    use std::rc::Rc;

    type Log = Rc<RefCell<Vec<(&'static str, u16)>>>;

    struct LogPin(&'static str, Log);

    impl embedded_hal::digital::ErrorType for LogPin {
        type Error = Infallible;
    }
    impl OutputPin for LogPin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.1.borrow_mut().push((self.0, 0));
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.1.borrow_mut().push((self.0, 100));
            Ok(())
        }
    }
    impl embedded_hal::pwm::ErrorType for LogPin {
        type Error = Infallible;
    }
    impl SetDutyCycle for LogPin {
        fn max_duty_cycle(&self) -> u16 {
            100
        }
        fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Infallible> {
            self.1.borrow_mut().push((self.0, duty));
            Ok(())
        }
    }

    type Levels = std::collections::HashMap<&'static str, u16>;

    /// What the bridge does with these levels: -100..=100, 0 for off or brake.
    fn l298n_drive(p: &Levels) -> i32 {
        let en = i32::from(p["en"]);
        match (p["in1"] > 0, p["in2"] > 0) {
            (true, false) => en,
            (false, true) => -en,
            _ => 0,
        }
    }

    fn tb6612_drive(p: &Levels) -> i32 {
        if p["stby"] == 0 {
            return 0;
        }
        l298n_drive(&Levels::from([("in1", p["in1"]), ("in2", p["in2"]), ("en", p["pwm"])]))
    }

    fn drv8833_drive(p: &Levels) -> i32 {
        i32::from(p["in1"]) - i32::from(p["in2"])
    }

    enum Op {
        Speed(f64),
        Brake,
        Coast,
    }

    /// Applies every op after every other op and checks each transition.
    fn check_transitions(
        strict: bool,
        pins: &[&'static str],
        mut build: impl FnMut(&Log) -> Box<dyn Motor>,
        drive: fn(&Levels) -> i32,
    ) {
        let ops =
            || [Op::Speed(1.0), Op::Speed(0.3), Op::Speed(0.0), Op::Speed(-0.6), Op::Speed(-1.0), Op::Brake, Op::Coast];
        let apply = |m: &mut Box<dyn Motor>, op: &Op| match *op {
            Op::Speed(s) => m.set_speed(s).unwrap(),
            Op::Brake => m.brake().unwrap(),
            Op::Coast => m.coast().unwrap(),
        };
        for first in ops() {
            for second in ops() {
                let log: Log = Rc::default();
                let mut m = build(&log);
                apply(&mut m, &first);
                let mut levels: Levels = pins.iter().map(|&p| (p, 0)).collect();
                for (pin, v) in log.borrow_mut().drain(..) {
                    levels.insert(pin, v);
                }
                let before = drive(&levels);
                apply(&mut m, &second);
                let writes: Vec<_> = log.borrow_mut().drain(..).collect();
                let mut seen = Vec::new();
                for (pin, v) in &writes {
                    levels.insert(pin, *v);
                    seen.push(drive(&levels));
                }
                let after = *seen.last().unwrap_or(&before);
                let along = |d: i32, end: i32| end != 0 && d.signum() == end.signum();
                for &d in &seen[..seen.len().saturating_sub(1)] {
                    let ok = if strict {
                        d == before || d == 0
                    } else {
                        // Between coast (both low) and brake (both high) one
                        // input must change first: a momentary drive is unavoidable.
                        let coast_brake = before == 0 && after == 0;
                        d == 0 || along(d, before) || along(d, after) || coast_brake
                    };
                    assert!(ok, "passing through drive {d} between {before} and {after}: {writes:?}");
                }
                drop(m);
                let mut end: Levels = levels.clone();
                for (pin, v) in log.borrow_mut().drain(..) {
                    end.insert(pin, v);
                }
                assert!(end.values().all(|&v| v == 0), "not all low after drop: {end:?}");
            }
        }
    }

    #[test]
    fn l298n_never_passes_through_a_wrong_drive() {
        check_transitions(
            true,
            &["in1", "in2", "en"],
            |log| {
                Box::new(
                    L298n::new(
                        LogPin("in1", log.clone()),
                        LogPin("in2", log.clone()),
                        LogPin("en", log.clone()),
                        MotorSettings::default(),
                    )
                    .unwrap(),
                )
            },
            l298n_drive,
        );
    }

    #[test]
    fn tb6612_never_passes_through_a_wrong_drive() {
        check_transitions(
            true,
            &["in1", "in2", "pwm", "stby"],
            |log| {
                Box::new(
                    Tb6612fng::new(
                        LogPin("in1", log.clone()),
                        LogPin("in2", log.clone()),
                        LogPin("pwm", log.clone()),
                        Some(LogPin("stby", log.clone())),
                        MotorSettings::default(),
                    )
                    .unwrap(),
                )
            },
            tb6612_drive,
        );
    }

    #[test]
    fn drv8833_never_passes_through_a_wrong_drive() {
        for decay in [Decay::Fast, Decay::Slow] {
            check_transitions(
                false,
                &["in1", "in2"],
                |log| {
                    Box::new(
                        Drv8833::new(
                            LogPin("in1", log.clone()),
                            LogPin("in2", log.clone()),
                            MotorSettings { decay, ..MotorSettings::default() },
                        )
                        .unwrap(),
                    )
                },
                drv8833_drive,
            );
        }
    }
}
