//! Pins, and the two worlds they can live in.
//!
//! Motor drivers and sensors are written against the embedded-hal 1.0 traits
//! ([`OutputPin`], [`SetDutyCycle`], [`InputPin`]) plus two small traits of our
//! own ([`Encoder`], [`BinarySensor`]), so the same driver code runs on:
//!
//! - [`rppal`]: real GPIO and PWM on a Raspberry Pi;
//! - [`sim`]: simulated pins feeding a small physics world, so the whole robot
//!   runs (and is tested) on a laptop;
//! - embedded-hal-mock pins in the drivers' unit tests.
//!
//! [`Hardware`] opens the backend chosen by `[hardware] backend` and hands out
//! pins of one concrete type per kind ([`Output`], [`Pwm`], [`Input`]), so the
//! daemon never has to be generic over the backend.
//!
//! This module knows nothing about MQTT or the protocol.

#![warn(missing_docs)]
pub mod config;
pub mod rppal;
pub mod sim;
pub mod ultrasonic;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

pub use embedded_hal::digital::{InputPin, OutputPin};
pub use embedded_hal::pwm::SetDutyCycle;

pub use config::{
    Backend, ConfigError, Decay, DriverKind, EncodersConfig, HardwareConfig, InputConfig, Level, MotorConfig, Obstacle,
    Pull, SimConfig, StopMode, UltrasonicConfig,
};
pub use ultrasonic::Ultrasonic;

/// The duty-cycle resolution of every backend PWM output ([`SetDutyCycle::max_duty_cycle`]).
pub const PWM_MAX_DUTY: u16 = u16::MAX;

/// Why a pin could not be opened or driven.
#[derive(Debug, thiserror::Error)]
pub enum HalError {
    /// The `[hardware]` section is inconsistent; fix the key named in the message.
    #[error("invalid hardware configuration: {0}")]
    Config(#[from] ConfigError),
    /// The process may not open the GPIO character device.
    #[error(
        "GPIO {pin}: permission denied opening {path}; add the robotd user to group `gpio` \
         (e.g. `usermod -aG gpio robotd`, or SupplementaryGroups=gpio in the unit)"
    )]
    PermissionDenied {
        /// BCM pin being opened.
        pin: u8,
        /// Device that refused access.
        path: String,
    },
    /// This is not a Raspberry Pi (or rppal does not know the model).
    #[error(
        "GPIO {pin}: this machine is not a Raspberry Pi known to rppal; \
         set `[hardware] backend = \"sim\"` to run without GPIO"
    )]
    NotAPi {
        /// BCM pin being opened.
        pin: u8,
    },
    /// The SoC does not expose this GPIO line.
    #[error("GPIO {pin} is not available on this board; pins are BCM numbers 0-27")]
    PinNotAvailable {
        /// BCM pin being opened.
        pin: u8,
    },
    /// The pin was already handed out in this process.
    #[error("GPIO {pin} is already in use by robotd; the configuration assigns it to two roles")]
    PinUsed {
        /// BCM pin being opened.
        pin: u8,
    },
    /// Any other GPIO failure.
    #[error("GPIO {pin}: {source}")]
    Gpio {
        /// BCM pin involved.
        pin: u8,
        /// What rppal reported.
        #[source]
        source: ::rppal::gpio::Error,
    },
    /// The hardware PWM channel is not exported by the kernel.
    #[error(
        "GPIO {pin}: hardware PWM channel {channel} is not enabled; add `dtoverlay=pwm-2chan,{overlay}` \
         to /boot/firmware/config.txt and reboot, or set `[hardware] software_pwm = true`"
    )]
    PwmNotEnabled {
        /// BCM pin.
        pin: u8,
        /// PWM channel it maps to.
        channel: u8,
        /// Overlay arguments that route the channel to this pin.
        overlay: &'static str,
    },
    /// The PWM sysfs files are not writable by this user.
    #[error(
        "GPIO {pin}: permission denied on /sys/class/pwm (channel {channel}); add the robotd user to \
         group `gpio` (Raspberry Pi OS grants it the PWM sysfs files) or install a udev rule for them"
    )]
    PwmPermission {
        /// BCM pin.
        pin: u8,
        /// PWM channel it maps to.
        channel: u8,
    },
    /// Any other PWM failure.
    #[error("GPIO {pin}: PWM: {source}")]
    Pwm {
        /// BCM pin involved.
        pin: u8,
        /// What rppal reported.
        #[source]
        source: ::rppal::pwm::Error,
    },
    /// The pin is not one the simulated world knows how to feed.
    #[error("GPIO {pin}: {what}; the simulated world only models the pins named in [hardware]")]
    SimPin {
        /// BCM pin.
        pin: u8,
        /// What was asked of it.
        what: &'static str,
    },
    /// The simulator's pin-state file could not be written or read.
    #[error("simulated pin state file {path}: {source}; check hardware.sim.state_file and its directory")]
    StateFile {
        /// The file.
        path: String,
        /// The I/O or JSON failure.
        #[source]
        source: std::io::Error,
    },
    /// The ultrasonic sensor has no recent measurement.
    #[error(
        "HC-SR04 (trigger GPIO {trigger_pin}, echo GPIO {echo_pin}): {}; check its 5 V supply, \
         the wiring and the voltage divider on ECHO",
        match age_ms { Some(ms) => format!("last measurement {ms} ms ago"), None => "no measurement yet".to_owned() }
    )]
    NoEcho {
        /// TRIG pin.
        trigger_pin: u8,
        /// ECHO pin.
        echo_pin: u8,
        /// Age of the last measurement, if there was one.
        age_ms: Option<u64>,
    },
    /// A shared pin's lock was poisoned by a panic elsewhere.
    #[error("a pin lock was poisoned by a panic in another thread; restart robotd")]
    Poisoned,
}

impl embedded_hal::digital::Error for HalError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::pwm::Error for HalError {
    fn kind(&self) -> embedded_hal::pwm::ErrorKind {
        embedded_hal::pwm::ErrorKind::Other
    }
}

/// Counts encoder edges. Read from any thread; counting happens elsewhere
/// (an interrupt thread on the Pi, the physics step in the simulator).
pub trait Encoder {
    /// Edges counted since the encoder was opened; signed with a B channel.
    fn count(&self) -> i64;
}

/// A two-state input whose "on" level is configurable (obstacle sensor, e-stop).
pub trait BinarySensor {
    /// Error reading the underlying pin; kept as the cause of
    /// [`crate::motion::MotionError::EstopUnreadable`].
    type Error: std::error::Error + Send + Sync + 'static;
    /// True when the sensor reports its condition (obstacle seen, e-stop pressed).
    fn is_active(&mut self) -> Result<bool, Self::Error>;
}

/// An [`InputPin`] plus the level that means "active".
#[derive(Debug)]
pub struct Sensor<I> {
    pin: I,
    active_high: bool,
}

impl<I: InputPin> Sensor<I> {
    /// Wraps `pin`; `active` is the level that reports the condition.
    pub fn new(pin: I, active: Level) -> Self {
        Self { pin, active_high: active == Level::High }
    }

    /// Gives the pin back (tests use it to call `.done()` on mocks).
    pub fn into_inner(self) -> I {
        self.pin
    }
}

impl<I: InputPin<Error: std::error::Error + Send + Sync + 'static>> BinarySensor for Sensor<I> {
    type Error = I::Error;
    fn is_active(&mut self) -> Result<bool, I::Error> {
        let high = self.pin.is_high()?;
        Ok(high == self.active_high)
    }
}

/// The front obstacle sensing: an IR sensor or bumper, an HC-SR04, or both
/// (either one seeing something is an obstacle).
#[derive(Debug)]
pub struct ObstacleSensor {
    ir: Option<Sensor<Input>>,
    ultrasonic: Option<Ultrasonic>,
}

impl ObstacleSensor {
    /// Combines the configured sensors; `None` when there are none.
    pub fn new(ir: Option<Sensor<Input>>, ultrasonic: Option<Ultrasonic>) -> Option<Self> {
        (ir.is_some() || ultrasonic.is_some()).then_some(Self { ir, ultrasonic })
    }

    /// The ultrasonic sensor's latest distance, if one is fitted (see
    /// [`Ultrasonic::distance_m`]).
    pub fn distance_m(&self) -> Option<Result<Option<f64>, HalError>> {
        self.ultrasonic.as_ref().map(Ultrasonic::distance_m)
    }
}

impl BinarySensor for ObstacleSensor {
    type Error = HalError;
    /// Active when either sensor is; an error from one only counts when the
    /// other does not already report an obstacle.
    fn is_active(&mut self) -> Result<bool, HalError> {
        let ir = self.ir.as_mut().map_or(Ok(false), BinarySensor::is_active);
        let us = self.ultrasonic.as_mut().map_or(Ok(false), BinarySensor::is_active);
        match (ir, us) {
            (Ok(true), _) | (_, Ok(true)) => Ok(true),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(false), Ok(false)) => Ok(false),
        }
    }
}

/// An edge counter shared with whatever feeds it.
///
/// Cloning shares the count. The `_keep` slot holds the interrupt
/// registration (rppal input pins) alive for as long as any clone exists.
#[derive(Clone, Debug)]
pub struct EncoderCounter {
    count: Arc<AtomicI64>,
    _keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl EncoderCounter {
    /// A counter fed by `count`; `keep` is dropped with the last clone.
    pub fn new(count: Arc<AtomicI64>, keep: Option<Arc<dyn std::any::Any + Send + Sync>>) -> Self {
        Self { count, _keep: keep }
    }
}

impl Encoder for EncoderCounter {
    fn count(&self) -> i64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One output pin used by several owners, e.g. the STBY line of a TB6612FNG
/// that both motor channels share.
#[derive(Debug)]
pub struct SharedOutput<P>(Arc<Mutex<P>>);

impl<P> Clone for SharedOutput<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P: OutputPin> SharedOutput<P> {
    /// Wraps `pin` for sharing.
    pub fn new(pin: P) -> Self {
        Self(Arc::new(Mutex::new(pin)))
    }
}

impl<P: OutputPin> embedded_hal::digital::ErrorType for SharedOutput<P> {
    type Error = P::Error;
}

impl<P: OutputPin> OutputPin for SharedOutput<P> {
    fn set_low(&mut self) -> Result<(), P::Error> {
        // A poisoned lock still holds a usable pin; stopping must not fail on it.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).set_low()
    }
    fn set_high(&mut self) -> Result<(), P::Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).set_high()
    }
}

/// A digital output from whichever backend is in use.
#[derive(Debug)]
pub enum Output {
    /// A Raspberry Pi GPIO.
    Rppal(::rppal::gpio::OutputPin),
    /// A simulated pin.
    Sim(sim::SimOutput),
}

impl embedded_hal::digital::ErrorType for Output {
    type Error = HalError;
}

impl OutputPin for Output {
    fn set_low(&mut self) -> Result<(), HalError> {
        match self {
            Output::Rppal(p) => {
                p.set_low();
                Ok(())
            }
            Output::Sim(p) => p.set_low(),
        }
    }
    fn set_high(&mut self) -> Result<(), HalError> {
        match self {
            Output::Rppal(p) => {
                p.set_high();
                Ok(())
            }
            Output::Sim(p) => p.set_high(),
        }
    }
}

/// A PWM output from whichever backend is in use.
#[derive(Debug)]
pub enum Pwm {
    /// A hardware PWM channel (GPIO 12/13/18/19).
    Hardware(rppal::HardPwm),
    /// Software PWM on any other GPIO.
    Software(rppal::SoftPwm),
    /// A simulated PWM pin.
    Sim(sim::SimPwm),
}

impl embedded_hal::pwm::ErrorType for Pwm {
    type Error = HalError;
}

impl SetDutyCycle for Pwm {
    fn max_duty_cycle(&self) -> u16 {
        PWM_MAX_DUTY
    }
    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), HalError> {
        match self {
            Pwm::Hardware(p) => p.set_duty_cycle(duty),
            Pwm::Software(p) => p.set_duty_cycle(duty),
            Pwm::Sim(p) => p.set_duty_cycle(duty),
        }
    }
}

/// A digital input from whichever backend is in use.
#[derive(Debug)]
pub enum Input {
    /// A Raspberry Pi GPIO.
    Rppal(::rppal::gpio::InputPin),
    /// A simulated input.
    Sim(sim::SimInput),
}

impl embedded_hal::digital::ErrorType for Input {
    type Error = HalError;
}

impl InputPin for Input {
    fn is_high(&mut self) -> Result<bool, HalError> {
        match self {
            Input::Rppal(p) => Ok(::rppal::gpio::InputPin::is_high(p)),
            Input::Sim(p) => p.is_high(),
        }
    }
    fn is_low(&mut self) -> Result<bool, HalError> {
        Ok(!self.is_high()?)
    }
}

enum BackendImpl {
    Rppal(rppal::RppalBackend),
    Sim(sim::Sim),
}

/// The open backend: hands out pins by BCM number.
///
/// Built once at start from `[hardware]`; the motion layer asks it for the
/// pins its drivers need ([`crate::motion::MotorController::from_config`]).
pub struct Hardware {
    config: HardwareConfig,
    backend: BackendImpl,
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware").field("backend", &self.config.backend).finish_non_exhaustive()
    }
}

impl Hardware {
    /// Validates `config` and opens its backend (for `sim`, builds the world).
    pub fn open(config: &HardwareConfig) -> Result<Self, HalError> {
        config.validate()?;
        let backend = match config.backend {
            Backend::Rppal => BackendImpl::Rppal(rppal::RppalBackend::open(config)?),
            Backend::Sim => BackendImpl::Sim(sim::Sim::new(config)?),
        };
        Ok(Self { config: config.clone(), backend })
    }

    /// The configuration this hardware was opened with.
    pub fn config(&self) -> &HardwareConfig {
        &self.config
    }

    /// The simulated world, when the backend is `sim` (to step it, run it in
    /// real time, or look at it in tests).
    pub fn sim(&self) -> Option<&sim::Sim> {
        match &self.backend {
            BackendImpl::Sim(s) => Some(s),
            BackendImpl::Rppal(_) => None,
        }
    }

    /// A push-pull output, driven low before it is returned.
    pub fn output(&mut self, pin: u8) -> Result<Output, HalError> {
        match &mut self.backend {
            BackendImpl::Rppal(b) => b.output(pin).map(Output::Rppal),
            BackendImpl::Sim(s) => s.output(pin).map(Output::Sim),
        }
    }

    /// A PWM output at duty 0: hardware PWM on 12/13/18/19 unless
    /// `software_pwm` is set, software PWM elsewhere.
    pub fn pwm(&mut self, pin: u8, frequency_hz: f64) -> Result<Pwm, HalError> {
        let hardware = self.config.uses_hardware_pwm(pin);
        match &mut self.backend {
            BackendImpl::Rppal(b) if hardware => b.hard_pwm(pin, frequency_hz).map(Pwm::Hardware),
            BackendImpl::Rppal(b) => b.soft_pwm(pin, frequency_hz).map(Pwm::Software),
            BackendImpl::Sim(s) => s.pwm(pin, frequency_hz).map(Pwm::Sim),
        }
    }

    /// An input with its bias and active level.
    pub fn input(&mut self, cfg: &InputConfig) -> Result<Sensor<Input>, HalError> {
        let pin = match &mut self.backend {
            BackendImpl::Rppal(b) => Input::Rppal(b.input(cfg.pin, cfg.pull)?),
            BackendImpl::Sim(s) => Input::Sim(s.input(cfg.pin)?),
        };
        Ok(Sensor::new(pin, cfg.active))
    }

    /// The obstacle sensing: `[hardware.obstacle]` and/or
    /// `[hardware.ultrasonic]`, or `None` when neither is configured.
    pub fn obstacle_sensor(&mut self) -> Result<Option<ObstacleSensor>, HalError> {
        let ir = match self.config.obstacle.clone() {
            Some(cfg) => Some(self.input(&cfg)?),
            None => None,
        };
        let ultrasonic = match self.config.ultrasonic.clone() {
            Some(cfg) => Some(self.ultrasonic(&cfg)?),
            None => None,
        };
        Ok(ObstacleSensor::new(ir, ultrasonic))
    }

    /// An HC-SR04 measuring on its own thread (Pi) or from the world (sim).
    pub fn ultrasonic(&mut self, cfg: &UltrasonicConfig) -> Result<Ultrasonic, HalError> {
        match &mut self.backend {
            BackendImpl::Rppal(b) => b.ultrasonic(cfg),
            BackendImpl::Sim(s) => s.ultrasonic(cfg),
        }
    }

    /// The e-stop switch, if `[hardware.estop]` is configured.
    pub fn estop(&mut self) -> Result<Option<Sensor<Input>>, HalError> {
        match self.config.estop.clone() {
            Some(cfg) => self.input(&cfg).map(Some),
            None => Ok(None),
        }
    }

    /// Left and right encoder counters, if `[hardware.encoders]` is configured.
    pub fn encoders(&mut self) -> Result<Option<(EncoderCounter, EncoderCounter)>, HalError> {
        let Some(e) = self.config.encoders.clone() else {
            return Ok(None);
        };
        let left = self.encoder(e.left_pin, e.left_b_pin)?;
        let right = self.encoder(e.right_pin, e.right_b_pin)?;
        Ok(Some((left, right)))
    }

    fn encoder(&mut self, a: u8, b: Option<u8>) -> Result<EncoderCounter, HalError> {
        match &mut self.backend {
            BackendImpl::Rppal(r) => r.encoder(a, b),
            BackendImpl::Sim(s) => s.encoder(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as T};

    #[test]
    fn sensor_honours_active_level() {
        let pin = PinMock::new(&[T::get(State::Low), T::get(State::High)]);
        let mut low_active = Sensor::new(pin, Level::Low);
        assert!(low_active.is_active().unwrap());
        assert!(!low_active.is_active().unwrap());
        low_active.into_inner().done();

        let pin = PinMock::new(&[T::get(State::Low), T::get(State::High)]);
        let mut high_active = Sensor::new(pin, Level::High);
        assert!(!high_active.is_active().unwrap());
        assert!(high_active.is_active().unwrap());
        high_active.into_inner().done();
    }

    #[test]
    fn shared_output_drives_the_one_pin() {
        let pin = PinMock::new(&[T::set(State::High), T::set(State::Low)]);
        let mut check = pin.clone();
        let mut a = SharedOutput::new(pin);
        let mut b = a.clone();
        a.set_high().unwrap();
        b.set_low().unwrap();
        drop((a, b));
        check.done();
    }

    #[test]
    fn sim_is_the_default_backend_and_opens_anywhere() {
        let mut hw = Hardware::open(&HardwareConfig::default()).unwrap();
        assert!(hw.sim().is_some());
        let _in1 = hw.output(17).unwrap();
        assert!(matches!(hw.output(17), Err(HalError::PinUsed { pin: 17 })));
    }

    #[test]
    fn open_validates_first() {
        let mut c = HardwareConfig::default();
        c.left.in1_pin = 99;
        let e = Hardware::open(&c).unwrap_err();
        assert!(e.to_string().contains("hardware.left.in1_pin"), "{e}");
    }
}

/// Turns a polled push button into press events: a press counts once the
/// input has read active for [`Debounced::SETTLE`] and the button was
/// released before, so contact bounce and a held button give one event.
#[derive(Debug, Default)]
pub struct Debounced {
    /// When the input started reading active, if it does now.
    active_since: Option<std::time::Instant>,
    /// The current press was already reported.
    reported: bool,
}

impl Debounced {
    /// How long the input must read active to count as a press (the core
    /// polls the pairing button every second: two readings this far apart).
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

    /// Feed one reading; true exactly once per press.
    pub fn update(&mut self, active: bool, now: std::time::Instant) -> bool {
        if !active {
            self.active_since = None;
            self.reported = false;
            return false;
        }
        let since = *self.active_since.get_or_insert(now);
        if !self.reported && now.duration_since(since) >= Self::SETTLE {
            self.reported = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod debounce_tests {
    use super::Debounced;
    use std::time::{Duration, Instant};

    #[test]
    fn one_event_per_settled_press_and_none_for_bounce() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = Debounced::default();
        // Bounce, or a brush: active for less than SETTLE, then released.
        assert!(!b.update(true, ms(0)));
        assert!(!b.update(true, ms(999)));
        assert!(!b.update(false, ms(1020)));
        // A real press: one event, however long it is held.
        assert!(!b.update(true, ms(2000)));
        assert!(b.update(true, ms(3000)));
        assert!(!b.update(true, ms(4000)));
        assert!(!b.update(true, ms(7000)));
        // Release and press again: a second event.
        assert!(!b.update(false, ms(7500)));
        assert!(!b.update(true, ms(8000)));
        assert!(b.update(true, ms(9000)));
    }
}
