//! Both motors, the deadman and the e-stop.
//!
//! No I/O of its own beyond the pins and no clock: every call that depends
//! on time takes `now`, so the deadman is tested with a controlled clock and
//! the caller decides how to wait. What the caller does:
//!
//! - [`MotorController::drive`] and [`MotorController::stop`] as requests
//!   arrive;
//! - [`MotorController::poll`] once [`MotorController::deadline`] is reached
//!   and, with an e-stop configured, every few tens of milliseconds;
//! - [`MotorController::stop`] on shutdown (the drivers also stop their
//!   motors when dropped, but drop does not run on SIGKILL).
//!
//! In robotd the core folds the deadline and the e-stop poll into the next
//! wake-up of the main loop ([`crate::daemon`]), which sleeps until then.
//! Sleeping until [`MotorController::deadline`] (rather than ticking) is what
//! keeps "motors off within `ms` + 20 ms". The daemon's controller
//! ([`MotorController::from_config`]) has a second line behind that loop: its
//! motors are [`GuardedMotor`]s, whose own thread stops them when a drive's
//! time has run out and the loop has not (see [`super::guard`]).

use std::time::{Duration, Instant};

use super::guard::{self, GuardedMotor};
use super::{AnyMotor, MotionError, Motor, mix, open_motors};
use crate::hal::config::StopMode;
use crate::hal::{BinarySensor, Hardware, Input, Sensor};

/// Longest a single `drive` may run before it must be renewed.
pub const MAX_DRIVE_MS: u32 = 1000;

/// A validated-on-use drive request: fractions of full speed and a duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriveCommand {
    /// Forward (+) / backward (-), -1..=1.
    pub linear: f64,
    /// Counter-clockwise (+, turn left) / clockwise (-), -1..=1.
    pub angular: f64,
    /// How long the command holds, 1..=1000 ms; the deadman stops the
    /// motors when it runs out unless another drive renews it.
    pub ms: u32,
}

impl DriveCommand {
    /// Checks all three fields; the error names the first bad one.
    pub fn validate(&self) -> Result<(f64, f64), MotionError> {
        if !(1..=MAX_DRIVE_MS).contains(&self.ms) {
            return Err(MotionError::InvalidCommand {
                field: "ms",
                expected: "an integer within 1..=1000",
                value: self.ms.to_string(),
            });
        }
        mix(self.linear, self.angular)
    }
}

/// What the motors are doing, for `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MotionState {
    /// Stopped.
    Idle,
    /// A drive command is in force.
    Driving,
}

impl MotionState {
    /// The protocol's spelling (`"idle"`, `"driving"`).
    pub fn as_str(self) -> &'static str {
        match self {
            MotionState::Idle => "idle",
            MotionState::Driving => "driving",
        }
    }
}

/// Why [`MotorController::poll`] stopped the motors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The last drive's `ms` ran out without renewal.
    Deadman,
    /// The e-stop input became active (now latched).
    Estop,
}

/// Both motors plus the safety logic around them.
///
/// Created stopped; stops on `stop`, deadman expiry, e-stop, and (through
/// the drivers) when dropped. The daemon uses the default type parameters
/// (the board's motors behind the motor-side deadman); tests substitute fakes.
#[derive(Debug)]
pub struct MotorController<M: Motor = GuardedMotor<AnyMotor>, E: BinarySensor = Sensor<Input>> {
    left: M,
    right: M,
    estop: Option<E>,
    stop_mode: StopMode,
    deadline: Option<Instant>,
    latched: bool,
}

impl MotorController {
    /// Opens the motors and e-stop described by `hw`'s config, the motors
    /// behind the motor-side deadman thread ([`guard::guard`]).
    pub fn from_config(hw: &mut Hardware) -> Result<Self, MotionError> {
        let (left, right) = open_motors(hw)?;
        let estop = hw.estop()?;
        let stop_mode = hw.config().stop_mode;
        let (left, right) = guard::guard(left, right, stop_mode)?;
        Self::new(left, right, estop, stop_mode)
    }

    /// How often the motor-side deadman had to stop the motors because the
    /// main loop was late (0 on a healthy robot).
    pub fn deadman_thread_stops(&self) -> u64 {
        self.left.deadman_stops()
    }
}

impl<M: Motor, E: BinarySensor> MotorController<M, E> {
    /// Takes both motors (already stopped by their constructors) and
    /// stops them again the configured way.
    pub fn new(left: M, right: M, estop: Option<E>, stop_mode: StopMode) -> Result<Self, MotionError> {
        let mut c = Self { left, right, estop, stop_mode, deadline: None, latched: false };
        c.stop()?;
        Ok(c)
    }

    /// Runs the motors per `cmd` until `now + cmd.ms` (renewing any earlier
    /// deadline). Invalid commands are rejected before any pin is touched;
    /// a latched or active e-stop refuses.
    pub fn drive(&mut self, cmd: DriveCommand, now: Instant) -> Result<(), MotionError> {
        let (l, r) = cmd.validate()?;
        if self.latched {
            return Err(MotionError::EstopLatched);
        }
        if self.estop_active()? {
            self.latch()?;
            return Err(MotionError::EstopLatched);
        }
        // Armed before the pins change, so the motors never run without it.
        let within = Duration::from_millis(u64::from(cmd.ms));
        self.left.stop_unless_renewed_within(within);
        self.right.stop_unless_renewed_within(within);
        let applied = self.left.set_speed(l).and_then(|()| self.right.set_speed(r));
        if let Err(e) = applied {
            // Half a command is worse than none.
            let _ = self.stop();
            return Err(e);
        }
        self.deadline = Some(now + Duration::from_millis(u64::from(cmd.ms)));
        Ok(())
    }

    /// Stops both motors (brake or coast per config) and clears the deadline.
    /// Both motors are tried even if one fails.
    pub fn stop(&mut self) -> Result<(), MotionError> {
        self.deadline = None;
        let l = self.left.stop(self.stop_mode);
        let r = self.right.stop(self.stop_mode);
        l.and(r)
    }

    /// Enforces the deadman and the e-stop at `now`. Call it when
    /// [`deadline`](Self::deadline) is reached and, with an e-stop, every
    /// few tens of milliseconds. Returns why it stopped the motors, if it did.
    pub fn poll(&mut self, now: Instant) -> Result<Option<StopReason>, MotionError> {
        if !self.latched && self.estop_active()? {
            self.latch()?;
            return Ok(Some(StopReason::Estop));
        }
        match self.deadline {
            Some(d) if now >= d => {
                self.stop()?;
                Ok(Some(StopReason::Deadman))
            }
            _ => Ok(None),
        }
    }

    /// When the current drive runs out; `None` when idle.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// `driving` while a drive command is in force, else `idle`.
    pub fn state(&self) -> MotionState {
        if self.deadline.is_some() { MotionState::Driving } else { MotionState::Idle }
    }

    /// Whether the e-stop has fired and not been cleared.
    pub fn estop_latched(&self) -> bool {
        self.latched
    }

    /// Re-arms after an e-stop, once the switch is released.
    pub fn clear_estop(&mut self) -> Result<(), MotionError> {
        if self.estop_active()? {
            return Err(MotionError::EstopStillActive);
        }
        self.latched = false;
        Ok(())
    }

    fn estop_active(&mut self) -> Result<bool, MotionError> {
        let Some(e) = &mut self.estop else {
            return Ok(false);
        };
        match e.is_active() {
            Ok(a) => Ok(a),
            Err(err) => {
                // An unreadable e-stop is treated as pressed.
                let _ = self.stop();
                Err(MotionError::EstopUnreadable { source: Box::new(err) })
            }
        }
    }

    fn latch(&mut self) -> Result<(), MotionError> {
        self.latched = true;
        tracing::warn!("e-stop active: motors stopped and latched");
        self.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::config::{InputConfig, Level, Pull};
    use crate::hal::{HalError, HardwareConfig};
    use std::sync::{Arc, Mutex};

    /// Records what the controller asked of a motor.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Speed(f64),
        Brake,
        Coast,
    }

    #[derive(Clone, Default)]
    struct FakeMotor(Arc<Mutex<Vec<Call>>>);

    impl FakeMotor {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    impl Motor for FakeMotor {
        fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
            super::super::check_speed(speed)?;
            self.0.lock().unwrap().push(Call::Speed(speed));
            Ok(())
        }
        fn brake(&mut self) -> Result<(), MotionError> {
            self.0.lock().unwrap().push(Call::Brake);
            Ok(())
        }
        fn coast(&mut self) -> Result<(), MotionError> {
            self.0.lock().unwrap().push(Call::Coast);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct FakeSwitch(Arc<Mutex<bool>>);

    impl BinarySensor for FakeSwitch {
        type Error = std::convert::Infallible;
        fn is_active(&mut self) -> Result<bool, Self::Error> {
            Ok(*self.0.lock().unwrap())
        }
    }

    fn rig(estop: bool) -> (MotorController<FakeMotor, FakeSwitch>, FakeMotor, FakeMotor, FakeSwitch) {
        let (l, r, s) = (FakeMotor::default(), FakeMotor::default(), FakeSwitch::default());
        let c = MotorController::new(l.clone(), r.clone(), estop.then(|| s.clone()), StopMode::Brake).unwrap();
        assert_eq!(l.take(), vec![Call::Brake], "stopped on creation");
        r.take();
        (c, l, r, s)
    }

    fn cmd(linear: f64, angular: f64, ms: u32) -> DriveCommand {
        DriveCommand { linear, angular, ms }
    }

    #[test]
    fn drive_sets_both_wheels_and_a_deadline() {
        let (mut c, l, r, _) = rig(false);
        let t0 = Instant::now();
        assert_eq!(c.state(), MotionState::Idle);
        c.drive(cmd(0.5, 0.25, 300), t0).unwrap();
        assert_eq!(l.take(), vec![Call::Speed(0.25)]);
        assert_eq!(r.take(), vec![Call::Speed(0.75)]);
        assert_eq!(c.deadline(), Some(t0 + Duration::from_millis(300)));
        assert_eq!(c.state(), MotionState::Driving);
        assert_eq!(c.state().as_str(), "driving");
    }

    #[test]
    fn deadman_expires_on_time() {
        let (mut c, l, r, _) = rig(false);
        let t0 = Instant::now();
        c.drive(cmd(1.0, 0.0, 500), t0).unwrap();
        l.take();
        r.take();
        assert_eq!(c.poll(t0 + Duration::from_millis(499)).unwrap(), None);
        assert!(l.take().is_empty(), "still driving just before the deadline");
        assert_eq!(c.poll(t0 + Duration::from_millis(500)).unwrap(), Some(StopReason::Deadman));
        assert_eq!(l.take(), vec![Call::Brake]);
        assert_eq!(r.take(), vec![Call::Brake]);
        assert_eq!(c.state(), MotionState::Idle);
        assert_eq!(c.deadline(), None);
        // Nothing more to do once stopped.
        assert_eq!(c.poll(t0 + Duration::from_secs(5)).unwrap(), None);
        assert!(l.take().is_empty());
    }

    #[test]
    fn renewal_extends_the_deadline() {
        let (mut c, l, _r, _) = rig(false);
        let t0 = Instant::now();
        c.drive(cmd(1.0, 0.0, 500), t0).unwrap();
        let t1 = t0 + Duration::from_millis(400);
        c.drive(cmd(1.0, 0.0, 500), t1).unwrap();
        l.take();
        // The first deadline passes without a stop...
        assert_eq!(c.poll(t0 + Duration::from_millis(600)).unwrap(), None);
        assert!(l.take().is_empty());
        assert_eq!(c.deadline(), Some(t1 + Duration::from_millis(500)));
        // ...the renewed one stops.
        assert_eq!(c.poll(t1 + Duration::from_millis(500)).unwrap(), Some(StopReason::Deadman));
        assert_eq!(l.take(), vec![Call::Brake]);
    }

    #[test]
    fn a_shorter_renewal_shortens_it() {
        let (mut c, _l, _r, _) = rig(false);
        let t0 = Instant::now();
        c.drive(cmd(1.0, 0.0, 1000), t0).unwrap();
        c.drive(cmd(1.0, 0.0, 10), t0).unwrap();
        assert_eq!(c.deadline(), Some(t0 + Duration::from_millis(10)));
    }

    #[test]
    fn out_of_range_commands_touch_nothing() {
        let (mut c, l, r, _) = rig(false);
        let t0 = Instant::now();
        for (bad, field) in [
            (cmd(0.5, 0.0, 1001), "ms"),
            (cmd(0.5, 0.0, 0), "ms"),
            (cmd(f64::NAN, 0.0, 100), "linear"),
            (cmd(0.0, f64::INFINITY, 100), "angular"),
            (cmd(1.5, 0.0, 100), "linear"),
        ] {
            let e = c.drive(bad, t0).unwrap_err();
            assert!(matches!(e, MotionError::InvalidCommand { field: f, .. } if f == field), "{e}");
        }
        assert!(l.take().is_empty() && r.take().is_empty());
        assert_eq!(c.state(), MotionState::Idle);
        c.drive(cmd(0.5, 0.0, MAX_DRIVE_MS), t0).unwrap();
    }

    #[test]
    fn stop_cancels_the_drive() {
        let (mut c, l, r, _) = rig(false);
        let t0 = Instant::now();
        c.drive(cmd(-0.5, 0.0, 800), t0).unwrap();
        l.take();
        r.take();
        c.stop().unwrap();
        assert_eq!(l.take(), vec![Call::Brake]);
        assert_eq!(r.take(), vec![Call::Brake]);
        assert_eq!(c.state(), MotionState::Idle);
        assert_eq!(c.poll(t0 + Duration::from_secs(1)).unwrap(), None);
    }

    #[test]
    fn coast_mode_coasts() {
        let l = FakeMotor::default();
        let mut c: MotorController<FakeMotor, FakeSwitch> =
            MotorController::new(l.clone(), FakeMotor::default(), None, StopMode::Coast).unwrap();
        c.stop().unwrap();
        assert_eq!(l.take(), vec![Call::Coast, Call::Coast]);
    }

    #[test]
    fn estop_stops_and_latches_until_cleared() {
        let (mut c, l, _r, switch) = rig(true);
        let t0 = Instant::now();
        c.drive(cmd(1.0, 0.0, 1000), t0).unwrap();
        l.take();
        *switch.0.lock().unwrap() = true;
        assert_eq!(c.poll(t0 + Duration::from_millis(20)).unwrap(), Some(StopReason::Estop));
        assert_eq!(l.take(), vec![Call::Brake]);
        assert!(c.estop_latched());
        assert_eq!(c.state(), MotionState::Idle);

        // Refused while latched, even after the switch is released...
        *switch.0.lock().unwrap() = false;
        assert!(matches!(c.drive(cmd(1.0, 0.0, 100), t0), Err(MotionError::EstopLatched)));
        assert!(l.take().is_empty());
        // ...and clearing needs the switch released.
        *switch.0.lock().unwrap() = true;
        assert!(matches!(c.clear_estop(), Err(MotionError::EstopStillActive)));
        *switch.0.lock().unwrap() = false;
        c.clear_estop().unwrap();
        c.drive(cmd(1.0, 0.0, 100), t0).unwrap();
        assert_eq!(l.take(), vec![Call::Speed(1.0)]);
    }

    #[test]
    fn drive_with_estop_pressed_is_refused() {
        let (mut c, l, _r, switch) = rig(true);
        *switch.0.lock().unwrap() = true;
        assert!(matches!(c.drive(cmd(1.0, 0.0, 100), Instant::now()), Err(MotionError::EstopLatched)));
        assert_eq!(l.take(), vec![Call::Brake]);
        assert!(c.estop_latched());
    }

    #[test]
    fn unreadable_estop_stops_the_motors() {
        struct Broken;
        impl BinarySensor for Broken {
            type Error = HalError;
            fn is_active(&mut self) -> Result<bool, HalError> {
                Err(HalError::NoEcho { trigger_pin: 20, echo_pin: 21, age_ms: None })
            }
        }
        let l = FakeMotor::default();
        let r = FakeMotor::default();
        let mut c = MotorController {
            left: l.clone(),
            right: r,
            estop: Some(Broken),
            stop_mode: StopMode::Brake,
            deadline: Some(Instant::now() + Duration::from_secs(1)),
            latched: false,
        };
        let e = c.poll(Instant::now()).unwrap_err();
        assert!(matches!(e, MotionError::EstopUnreadable { .. }), "{e}");
        // The cause and its remedy survive: in the message and as the source.
        let cause = HalError::NoEcho { trigger_pin: 20, echo_pin: 21, age_ms: None }.to_string();
        assert!(e.to_string().contains(&cause), "{e}");
        let source = std::error::Error::source(&e).expect("the pin error is the source");
        assert!(matches!(source.downcast_ref::<HalError>(), Some(HalError::NoEcho { .. })), "{source:?}");
        assert_eq!(l.take(), vec![Call::Brake]);
        assert_eq!(c.state(), MotionState::Idle);
    }

    // --- whole robot on the simulated backend ---

    fn sim_config() -> HardwareConfig {
        HardwareConfig {
            estop: Some(InputConfig { pin: 25, active: Level::Low, pull: Pull::Up }),
            ..HardwareConfig::default()
        }
    }

    #[test]
    fn sim_robot_drives_forward_and_the_deadman_stops_it() {
        let mut hw = Hardware::open(&sim_config()).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut c = MotorController::from_config(&mut hw).unwrap();
        let step = Duration::from_millis(5);
        let t0 = Instant::now();
        let mut now = t0;
        c.drive(cmd(1.0, 0.0, 1000), now).unwrap();
        // Run the world and the controller on the same simulated clock.
        while now < t0 + Duration::from_millis(1500) {
            sim.step(step);
            now += step;
            c.poll(now).unwrap();
        }
        let s = sim.snapshot();
        assert_eq!(c.state(), MotionState::Idle);
        // ~1 s at 0.5 m/s (less the lag), then a short braking distance.
        assert!(s.pose.x > 0.4 && s.pose.x < 0.55, "x = {}", s.pose.x);
        assert!(s.pose.y.abs() < 1e-9);
        assert!(s.wheel_speed_mps.iter().all(|v| v.abs() < 0.01), "{s:?}");
        assert_eq!(s.motor_command, [0.0, 0.0]);
    }

    #[test]
    fn sim_robot_turns_left_for_positive_angular() {
        let mut hw = Hardware::open(&sim_config()).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut c = MotorController::from_config(&mut hw).unwrap();
        let t0 = Instant::now();
        c.drive(cmd(0.0, 0.5, 500), t0).unwrap();
        sim.run_for(Duration::from_millis(500), Duration::from_millis(5));
        c.poll(t0 + Duration::from_millis(500)).unwrap();
        let p = sim.pose();
        assert!(p.heading > 0.5, "heading = {}", p.heading);
        assert!(p.x.abs() < 1e-9);
    }

    #[test]
    fn sim_estop_button_latches() {
        let mut hw = Hardware::open(&sim_config()).unwrap();
        let sim = hw.sim().unwrap().clone();
        let mut c = MotorController::from_config(&mut hw).unwrap();
        let t0 = Instant::now();
        c.drive(cmd(1.0, 0.0, 1000), t0).unwrap();
        sim.set_input(25, Some(false)); // pressed (active low)
        assert_eq!(c.poll(t0).unwrap(), Some(StopReason::Estop));
        sim.step(Duration::from_millis(5));
        assert_eq!(sim.snapshot().motor_command, [0.0, 0.0]);
        sim.set_input(25, None);
        c.clear_estop().unwrap();
    }

    #[test]
    fn every_board_stops_on_drop_in_the_sim() {
        use crate::hal::config::DriverKind;
        use crate::hal::sim::PinState;
        for driver in [DriverKind::L298n, DriverKind::Tb6612fng, DriverKind::Drv8833] {
            let mut cfg = HardwareConfig::default();
            for (m, stby) in [(&mut cfg.left, 22), (&mut cfg.right, 22)] {
                m.driver = driver;
                match driver {
                    DriverKind::L298n => {}
                    DriverKind::Tb6612fng => m.stby_pin = Some(stby),
                    DriverKind::Drv8833 => {
                        m.in1_pin = m.pwm_pin.take().unwrap();
                    }
                }
            }
            let mut hw = Hardware::open(&cfg).unwrap();
            let sim = hw.sim().unwrap().clone();
            let mut c = MotorController::from_config(&mut hw).unwrap();
            c.drive(cmd(0.8, 0.0, 1000), Instant::now()).unwrap();
            sim.step(Duration::from_millis(5));
            let [l, r] = sim.snapshot().motor_command;
            assert!((l - 0.8).abs() < 1e-3 && (r - 0.8).abs() < 1e-3, "{driver:?}: {l} {r}");
            sim.run_for(Duration::from_millis(500), Duration::from_millis(5));
            assert!(sim.pose().x > 0.1, "{driver:?} did not move");
            drop(c);
            let s = sim.snapshot();
            for (pin, state) in &s.pins {
                assert!(state.is_safe(), "{driver:?}: GPIO {pin} left at {state:?}");
            }
            assert!(s.pins.values().any(|p| matches!(p, PinState::Pwm { .. })));
        }
    }

    // --- the whole controller over real drivers, arbitrary numbers ---
    //
    // Every board, with arbitrary (valid) duty settings and PWM resolution,
    // driven by arbitrary f64 (NaN, infinities, subnormals, -0.0, values just
    // outside -1..=1) and arbitrary `ms`: an invalid command writes no pin and
    // leaves the deadline alone; a valid one leaves each bridge driving the
    // mixed wheel speed in the right direction with a duty inside
    // [min_duty, max_duty] of the PWM range; every duty written is within
    // 0..=max_duty_cycle; stop, the deadman and drop leave nothing driving.

    mod whole {
        use super::*;
        use crate::hal::config::Decay;
        use crate::motion::{Drv8833, L298n, MotorSettings, Tb6612fng};
        use embedded_hal::digital::OutputPin;
        use embedded_hal::pwm::SetDutyCycle;
        use proptest::prelude::*;
        use std::cell::RefCell;
        use std::collections::HashMap;
        use std::convert::Infallible;
        use std::rc::Rc;

        type Log = Rc<RefCell<Vec<(&'static str, u16)>>>;

        /// A pin that logs every write; outputs log 0 or `max`.
        struct Rec(&'static str, u16, Log);

        impl embedded_hal::digital::ErrorType for Rec {
            type Error = Infallible;
        }
        impl OutputPin for Rec {
            fn set_low(&mut self) -> Result<(), Infallible> {
                self.2.borrow_mut().push((self.0, 0));
                Ok(())
            }
            fn set_high(&mut self) -> Result<(), Infallible> {
                self.2.borrow_mut().push((self.0, self.1));
                Ok(())
            }
        }
        impl embedded_hal::pwm::ErrorType for Rec {
            type Error = Infallible;
        }
        impl SetDutyCycle for Rec {
            fn max_duty_cycle(&self) -> u16 {
                self.1
            }
            fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Infallible> {
                self.2.borrow_mut().push((self.0, duty));
                Ok(())
            }
        }

        struct Dyn(Box<dyn Motor>);

        impl Motor for Dyn {
            fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
                self.0.set_speed(speed)
            }
            fn brake(&mut self) -> Result<(), MotionError> {
                self.0.brake()
            }
            fn coast(&mut self) -> Result<(), MotionError> {
                self.0.coast()
            }
        }

        #[derive(Debug, Clone, Copy)]
        enum Board {
            L298n,
            Tb6612fng,
            Drv8833(Decay),
        }

        fn motor(board: Board, max: u16, settings: MotorSettings, log: &Log) -> Dyn {
            let p = |n| Rec(n, max, log.clone());
            Dyn(match board {
                Board::L298n => Box::new(L298n::new(p("in1"), p("in2"), p("en"), settings).unwrap()),
                Board::Tb6612fng => {
                    Box::new(Tb6612fng::new(p("in1"), p("in2"), p("en"), Some(p("stby")), settings).unwrap())
                }
                Board::Drv8833(decay) => {
                    Box::new(Drv8833::new(p("in1"), p("in2"), MotorSettings { decay, ..settings }).unwrap())
                }
            })
        }

        /// What the bridge does with these levels: signed duty, 0 for off or brake.
        fn drive_of(board: Board, p: &HashMap<&'static str, u16>) -> i64 {
            let l = |k| i64::from(p.get(k).copied().unwrap_or(0));
            let dir = |en: i64| match (l("in1") > 0, l("in2") > 0) {
                (true, false) => en,
                (false, true) => -en,
                _ => 0,
            };
            match board {
                Board::L298n => dir(l("en")),
                Board::Tb6612fng if l("stby") == 0 => 0,
                Board::Tb6612fng => dir(l("en")),
                Board::Drv8833(_) => l("in1") - l("in2"),
            }
        }

        /// Numbers a phone (or a bug) could send: every float class.
        fn wild() -> impl Strategy<Value = f64> {
            prop_oneof![
                4 => -1.0f64..=1.0,
                2 => any::<f64>(),
                1 => prop::sample::select(vec![
                    f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1.0, -1.0,
                    f64::MIN_POSITIVE, -f64::MIN_POSITIVE, 5e-324, -5e-324, 1.0 + f64::EPSILON,
                    -1.0 - f64::EPSILON, f64::MAX, f64::MIN, 0.5 + f64::EPSILON / 4.0,
                ]),
                1 => -1e-300f64..1e-300,
            ]
        }

        #[derive(Debug, Clone)]
        enum Op {
            Drive(f64, f64, u32),
            Stop,
            Poll(u64),
        }

        fn ops() -> impl Strategy<Value = Vec<Op>> {
            let op = prop_oneof![
                6 => (wild(), wild(), prop_oneof![3 => 1u32..=MAX_DRIVE_MS, 1 => any::<u32>()])
                    .prop_map(|(l, a, ms)| Op::Drive(l, a, ms)),
                1 => Just(Op::Stop),
                2 => (0u64..1500).prop_map(Op::Poll),
            ];
            prop::collection::vec(op, 1..40)
        }

        fn settings() -> impl Strategy<Value = MotorSettings> {
            (any::<bool>(), 0.0f64..1.0, 0.0f64..=1.0).prop_filter_map("min < max", |(invert, a, b)| {
                let (min_duty, max_duty) = (a.min(b), a.max(b));
                (min_duty < max_duty).then_some(MotorSettings { invert, min_duty, max_duty, ..Default::default() })
            })
        }

        fn board() -> impl Strategy<Value = Board> {
            prop_oneof![
                Just(Board::L298n),
                Just(Board::Tb6612fng),
                Just(Board::Drv8833(Decay::Fast)),
                Just(Board::Drv8833(Decay::Slow)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn controller_keeps_every_pin_within_limits(
                board in board(),
                max in prop_oneof![Just(u16::MAX), Just(100u16), Just(1u16), 1u16..=u16::MAX],
                ls in settings(),
                rs in settings(),
                brake in any::<bool>(),
                ops in ops(),
            ) {
                let (ll, rl): (Log, Log) = (Rc::default(), Rc::default());
                let mode = if brake { StopMode::Brake } else { StopMode::Coast };
                let mut c: MotorController<Dyn, FakeSwitch> = MotorController::new(
                    motor(board, max, ls, &ll), motor(board, max, rs, &rl), None, mode,
                ).unwrap();
                let mut levels = [HashMap::new(), HashMap::new()];
                // Apply the writes since the last look, checking each duty against the range.
                let settle = |levels: &mut [HashMap<&'static str, u16>; 2]| -> Result<usize, TestCaseError> {
                    let mut n = 0;
                    for (i, log) in [&ll, &rl].into_iter().enumerate() {
                        for (pin, v) in log.borrow_mut().drain(..) {
                            prop_assert!(v <= max, "{pin} = {v} > max {max}");
                            levels[i].insert(pin, v);
                            n += 1;
                        }
                    }
                    Ok(n)
                };
                settle(&mut levels)?;
                let t0 = Instant::now();
                let mut now = t0;
                for op in ops {
                    match op {
                        Op::Drive(linear, angular, ms) => {
                            let before = c.deadline();
                            let valid = |v: f64| v.is_finite() && (-1.0..=1.0).contains(&v);
                            let ok = valid(linear) && valid(angular) && (1..=MAX_DRIVE_MS).contains(&ms);
                            let res = c.drive(DriveCommand { linear, angular, ms }, now);
                            prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
                            if !ok {
                                prop_assert_eq!(settle(&mut levels)?, 0, "an invalid command wrote a pin");
                                prop_assert_eq!(c.deadline(), before);
                                continue;
                            }
                            settle(&mut levels)?;
                            prop_assert_eq!(c.deadline(), Some(now + Duration::from_millis(u64::from(ms))));
                            let (l, r) = mix(linear, angular).unwrap();
                            for (i, (speed, s)) in [(l, ls), (r, rs)].into_iter().enumerate() {
                                let got = drive_of(board, &levels[i]);
                                let speed = if s.invert { -speed } else { speed };
                                if speed == 0.0 {
                                    prop_assert_eq!(got, 0);
                                    continue;
                                }
                                let duty = |d: f64| (d * f64::from(max)).round() as i64;
                                let want = duty(s.min_duty + speed.abs() * (s.max_duty - s.min_duty));
                                // DRV8833 slow decay writes max - duty on the other input: ±1 rounding.
                                prop_assert!((got.abs() - want).abs() <= 1, "wheel {i}: drive {got}, want {want}");
                                prop_assert!(got.abs() <= duty(s.max_duty) + 1 && got.abs() >= duty(s.min_duty) - 1);
                                if want > 1 {
                                    prop_assert_eq!(got.signum() as f64, speed.signum(), "wheel {} direction", i);
                                }
                            }
                        }
                        Op::Stop => {
                            c.stop().unwrap();
                            settle(&mut levels)?;
                            prop_assert_eq!(c.deadline(), None);
                            prop_assert_eq!(drive_of(board, &levels[0]), 0);
                            prop_assert_eq!(drive_of(board, &levels[1]), 0);
                        }
                        Op::Poll(step) => {
                            now += Duration::from_millis(step);
                            let expired = c.deadline().is_some_and(|d| now >= d);
                            let r = c.poll(now).unwrap();
                            settle(&mut levels)?;
                            prop_assert_eq!(r, expired.then_some(StopReason::Deadman));
                            if c.deadline().is_none() {
                                prop_assert_eq!(drive_of(board, &levels[0]), 0);
                                prop_assert_eq!(drive_of(board, &levels[1]), 0);
                            }
                        }
                    }
                }
                drop(c);
                settle(&mut levels)?;
                for l in &levels {
                    prop_assert!(l.values().all(|&v| v == 0), "not all low after drop: {:?}", l);
                }
            }
        }
    }
}
